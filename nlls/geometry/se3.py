"""SE(3): rigid motions of space (3-D poses).

A pose ``g = (R, t)`` maps a point ``p`` of its frame to ``R p + t``; it is stored as the top
``(B, 3, 4)`` block ``[R | t]`` of its homogeneous matrix (the last row is always ``0 0 0 1``).
The tangent is ``(v, w)``: translation first, then the rotation's axis-angle vector.

With the rotation's left Jacobian ``Jl(w) = I + B W + C W^2`` (see :mod:`nlls.geometry.so3`),

    exp(v, w) = [exp(w) | Jl(w) v],        log(R, t) = (Jl(w)^-1 t, w),  w = log(R).

The right Jacobian of ``exp`` is block triangular,

    Jr(v, w) = [[Jr(w), Q(-v, -w)], [0, Jr(w)]],

where ``Q(v, w)`` is Barfoot's coupling term (State Estimation for Robotics, eq. 7.86),

    Q = V/2 + C (WV + VW + WVW) + E (WWV + VWW - 3 WVW) + F (WVWW + WWVW),

with ``V = hat(v)``, ``W = hat(w)``, ``t = |w|``, ``E = (t^2 + 2 cos t - 2)/(2 t^4)`` and
``F = (2 t - 3 sin t + t cos t)/(2 t^5)`` (Taylor series near 0), and ``Jr^-1`` follows from the
block structure. The adjoint for this tangent order is ``Ad(R, t) = [[R, hat(t) R], [0, R]]``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.variable import as_tensor
from .lie_group import LieGroup
from .numerics import RotationAngle, eye, tolerance
from .so3 import (
    SO3,
    exp_matrix,
    hat,
    log_matrix,
    matrix_to_quaternion,
    orthonormalize,
    quaternion_to_matrix,
    right_jacobian,
    right_jacobian_inverse,
    unit_quaternion,
)


def _coupling(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Barfoot's ``Q(v, w)`` ``(N, 3, 3)``, the upper-right block of ``Jl(v, w)``."""
    angle = RotationAngle(w)
    V, W = hat(v), hat(w)
    WV, VW = W @ V, V @ W
    WVW = WV @ W
    return (0.5 * V + angle.c() * (WV + VW + WVW) + angle.e() * (W @ WV + VW @ W - 3.0 * WVW)
            + angle.f() * (WVW @ W + W @ WVW))


def _blocks(top_left, top_right, bottom_right):
    """``[[a, b], [0, c]]`` from ``(N, 3, 3)`` blocks, ``(N, 6, 6)``."""
    top = torch.cat([top_left, top_right], dim=-1)
    bottom = torch.cat([torch.zeros_like(bottom_right), bottom_right], dim=-1)
    return torch.cat([top, bottom], dim=-2)


class SE3(LieGroup):
    """A batch of 3-D poses, stored as ``(B, 3, 4)`` = ``[R | t]``.

    Args:
        tensor: ``(B, 3, 4)`` data (a ``(B, 4, 4)`` homogeneous matrix is accepted too); the
            identity when no data is given.
        name: unique name inside an objective.
        dtype: cast the data to this dtype.
        matrix: ``(B, 3, 4)`` or ``(B, 4, 4)`` (last row ``0 0 0 1``).
        x_y_z_quaternion: ``(B, 7)`` translation and unit quaternion ``(x, y, z, qw, qx, qy, qz)``
            (scalar first; g2o files list ``qx qy qz qw``).

    Raises:
        ValueError: wrong shapes, a bad last row, a quaternion whose norm is off 1, or a rotation
            block off the rotations by more than the dtype's tolerance.
    """

    DOF = 6
    EVENT_SHAPE = (3, 4)
    POINT_DIM = 3
    STORAGE = "[R | t] with R a rotation matrix"

    def __init__(self, tensor: Optional[torch.Tensor] = None, name: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, *, matrix: Optional[torch.Tensor] = None,
                 x_y_z_quaternion: Optional[torch.Tensor] = None):
        given = [k for k, v in (("tensor", tensor), ("matrix", matrix),
                                ("x_y_z_quaternion", x_y_z_quaternion)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"SE3 {name!r}: give one of tensor, matrix, x_y_z_quaternion; got {given}")
        if tensor is not None:
            tensor = as_tensor(tensor, f"SE3 {name!r}")
            if tuple(tensor.shape[1:]) == (4, 4):
                matrix, tensor = tensor, None
        if matrix is not None:
            tensor = _top_rows(as_tensor(matrix, f"SE3 {name!r} matrix"), name)
        if x_y_z_quaternion is not None:
            pose = as_tensor(x_y_z_quaternion, f"SE3 {name!r} x_y_z_quaternion")
            if pose.ndim != 2 or pose.shape[1] != 7:
                raise ValueError(
                    f"SE3 {name!r}: x_y_z_quaternion must have shape (B, 7) "
                    f"(x, y, z, qw, qx, qy, qz), got {tuple(pose.shape)}"
                )
            if dtype is not None:
                pose = pose.to(dtype)
            rotation = quaternion_to_matrix(unit_quaternion(pose[:, 3:], f"SE3 {name!r}", dtype))
            tensor = torch.cat([rotation, pose[:, :3, None]], dim=-1)
        super().__init__(tensor, name=name, dtype=dtype)

    def translation(self) -> torch.Tensor:
        """``(B, 3)``."""
        return self.tensor[:, :, 3]

    def rotation(self) -> SO3:
        """The rotation part as an :class:`SO3`."""
        return SO3.from_tensor(self.tensor[:, :, :3])

    def x_y_z_quaternion(self) -> torch.Tensor:
        """``(B, 7)``: translation and unit quaternion ``(qw, qx, qy, qz)``, ``qw >= 0``."""
        return torch.cat([self.tensor[:, :, 3], matrix_to_quaternion(self.tensor[:, :, :3])], dim=1)

    # ---- tensor-level maps --------------------------------------------------------------------
    @classmethod
    def identity_tensor(cls, batch_size, dtype, device):
        return torch.eye(3, 4, dtype=dtype, device=device).repeat(batch_size, 1, 1)

    @classmethod
    def rand_tensor(cls, batch_size, generator, dtype, device):
        rotation = SO3.rand_tensor(batch_size, generator, dtype, device)
        t = torch.randn(batch_size, 3, 1, generator=generator, dtype=dtype, device=device)
        return torch.cat([rotation, t], dim=-1)

    @classmethod
    def deviation(cls, tensor):
        return SO3.deviation(tensor[:, :, :3])

    @classmethod
    def exp_tensor(cls, tangent):
        v, w = tangent[..., :3], tangent[..., 3:]
        t = right_jacobian(-w) @ v[..., None]  # Jl(w) v
        return torch.cat([exp_matrix(w), t], dim=-1)

    @classmethod
    def log_tensor(cls, tensor):
        w = log_matrix(tensor[..., :3])
        v = (right_jacobian_inverse(-w) @ tensor[..., 3:])[..., 0]  # Jl(w)^-1 t
        return torch.cat([v, w], dim=-1)

    @classmethod
    def compose_tensor(cls, a, b):
        ra = a[..., :3]
        return torch.cat([ra @ b[..., :3], ra @ b[..., 3:] + a[..., 3:]], dim=-1)

    @classmethod
    def inverse_tensor(cls, a):
        rt = a[..., :3].transpose(-1, -2)
        return torch.cat([rt, -rt @ a[..., 3:]], dim=-1)

    @classmethod
    def normalize_tensor(cls, a):
        return torch.cat([orthonormalize(a[..., :3]), a[..., 3:]], dim=-1)

    @classmethod
    def adjoint_tensor(cls, a):
        r = a[..., :3]
        return _blocks(r, hat(a[..., 3]) @ r, r)

    @classmethod
    def jr_tensor(cls, tangent):
        v, w = tangent[..., :3], tangent[..., 3:]
        jr = right_jacobian(w)
        return _blocks(jr, _coupling(-v, -w), jr)

    @classmethod
    def jr_inv_tensor(cls, tangent):
        v, w = tangent[..., :3], tangent[..., 3:]
        jr_inv = right_jacobian_inverse(w)
        return _blocks(jr_inv, -jr_inv @ _coupling(-v, -w) @ jr_inv, jr_inv)

    @classmethod
    def to_matrix_tensor(cls, tensor):
        last = torch.zeros_like(tensor[..., :1, :])
        last = torch.cat([last[..., :3], torch.ones_like(last[..., 3:])], dim=-1)
        return torch.cat([tensor, last], dim=-2)

    @classmethod
    def transform_from_tensor(cls, tensor, point, with_jacobians):
        r = tensor[..., :3]
        out = (r @ point[..., None])[..., 0] + tensor[..., 3]
        if not with_jacobians:
            return out, None, None
        return out, torch.cat([r, -r @ hat(point)], dim=-1), r

    @classmethod
    def transform_to_tensor(cls, tensor, point, with_jacobians):
        rt = tensor[..., :3].transpose(-1, -2)
        out = (rt @ (point - tensor[..., 3])[..., None])[..., 0]
        if not with_jacobians:
            return out, None, None
        jac_g = torch.cat([-eye(3, out, out.shape[:-1]), hat(out)], dim=-1)
        return out, jac_g, rt


def _top_rows(matrix: torch.Tensor, name) -> torch.Tensor:
    """``(B, 3, 4)`` from a ``(B, 3, 4)`` or ``(B, 4, 4)`` matrix, checking the last row."""
    if matrix.ndim != 3 or tuple(matrix.shape[1:]) not in ((3, 4), (4, 4)):
        raise ValueError(
            f"SE3 {name!r}: matrix must have shape (B, 3, 4) or (B, 4, 4), got {tuple(matrix.shape)}"
        )
    if matrix.shape[1] == 3:
        return matrix
    last = matrix[:, 3, :]
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=matrix.dtype, device=matrix.device)
    deviation = (last - expected).abs().amax(dim=-1)
    bad = ~(deviation <= tolerance(matrix.dtype))
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"SE3 {name!r}: matrix {index} has last row {last[index].tolist()}, expected [0, 0, 0, 1]"
        )
    return matrix[:, :3, :]
