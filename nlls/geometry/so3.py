"""SO(3): rotations of space.

**Storage.** A rotation is stored as its ``(B, 3, 3)`` matrix ``R``. A unit quaternion would take
4 numbers instead of 9, but the matrix makes every operation the solver repeats a plain product
(compose ``R1 R2``, rotate ``R p``, ``Ad(R) = R``), has no sign ambiguity (``q`` and ``-q`` are
the same rotation, which would make ``local`` pick a branch), and is what ``SE3``'s ``(3, 4)``
storage extends. ``retract`` projects the product back onto the rotations (one Newton-Schulz
step, ``R (3 I - R^T R) / 2``), so rounding never accumulates over iterations. Quaternions
``(w, x, y, z)`` (scalar first) are accepted and returned by :class:`SO3`.

**Maps.** With ``W = hat(w)`` the skew matrix of the axis-angle vector ``w`` (angle ``t = |w|``),

    exp(w)   = I + A W + B W^2                         (Rodrigues)
    Jr(w)    = I - B W + C W^2,     Jr^-1(w) = I + W/2 + D W^2
    Jl(w)    = I + B W + C W^2,     Jl^-1(w) = I - W/2 + D W^2     (Jl(w) = Jr(-w))

with ``A = sin t / t``, ``B = (1 - cos t)/t^2``, ``C = (t - sin t)/t^3`` and
``D = 1/t^2 - (1 + cos t)/(2 t sin t)``, each a Taylor series for small ``t``.

**Logarithm.** ``cos t = (tr R - 1)/2`` and ``sin t * axis = vee(R - R^T)/2``. Away from ``pi``,
``w = (t / sin t) vee(R - R^T)/2`` with ``t = atan2(sin t, cos t)``. Near ``pi`` the skew part
vanishes and carries no direction; there the axis comes from the symmetric part,
``(R + R^T)/2 - cos t I = (1 - cos t) axis axis^T``: its column with the largest diagonal entry,
normalized, gives ``+-axis``, and ``w = atan2(axis . skew, cos t) * axis`` is the same for either
sign. Both branches are computed for every element and one is selected with ``torch.where``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.variable import as_tensor
from .lie_group import Rotation
from .numerics import RotationAngle, eye, horner, safe_sqrt, small_angle, tolerance

_T_OVER_SIN = (1.0, 1.0 / 6.0, 3.0 / 40.0, 5.0 / 112.0)  # asin(s)/s, in s^2 = sin^2 t


def hat(w: torch.Tensor) -> torch.Tensor:
    """The skew matrix ``(..., 3, 3)`` of ``w (..., 3)``: ``hat(w) p = w x p``."""
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*w.shape, 3)


def vee(m: torch.Tensor) -> torch.Tensor:
    """The vector ``(..., 3)`` of a skew matrix ``(..., 3, 3)`` (inverse of :func:`hat`)."""
    return torch.stack([m[..., 2, 1], m[..., 0, 2], m[..., 1, 0]], dim=-1)


def exp_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: ``(N, 3)`` axis-angle to ``(N, 3, 3)`` rotation matrices."""
    angle, W = RotationAngle(w), hat(w)
    return eye(3, w, w.shape[:-1]) + angle.a() * W + angle.b() * (W @ W)


def right_jacobian(w: torch.Tensor) -> torch.Tensor:
    """``Jr(w) (N, 3, 3)``: ``exp(w + d) ~ exp(w) exp(Jr(w) d)``."""
    angle, W = RotationAngle(w), hat(w)
    return eye(3, w, w.shape[:-1]) - angle.b() * W + angle.c() * (W @ W)


def right_jacobian_inverse(w: torch.Tensor) -> torch.Tensor:
    """``Jr(w)^-1 (N, 3, 3)``; ``Jl^-1(w) = Jr^-1(-w)``."""
    angle, W = RotationAngle(w), hat(w)
    return eye(3, w, w.shape[:-1]) + 0.5 * W + angle.d() * (W @ W)


def log_matrix(R: torch.Tensor) -> torch.Tensor:
    """The axis-angle vector ``(N, 3)`` of rotation matrices ``(N, 3, 3)``, angle in ``[0, pi]``."""
    cos = ((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0) * 0.5).clamp(-1.0, 1.0)
    skew = 0.5 * vee(R - R.transpose(-1, -2))  # sin t * axis
    sin2 = (skew * skew).sum(-1)
    # away from pi: w = (t / sin t) * skew
    small = small_angle(sin2, float64=1e-4, other=1e-2)
    sin = safe_sqrt(sin2, small)
    t_over_sin = torch.where(small, horner(sin2, _T_OVER_SIN), torch.atan2(sin, cos) / sin)
    regular = t_over_sin[..., None] * skew
    # near pi: the axis is the largest column of the symmetric part (1 - cos t) axis axis^T
    near_pi = cos < -0.9
    sym = 0.5 * (R + R.transpose(-1, -2)) - cos[..., None, None] * eye(3, R, R.shape[:-2])
    k = sym.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)
    column = torch.gather(sym, -1, k[..., None, None].expand(*k.shape, 3, 1))[..., 0]
    safe = torch.cat([torch.ones_like(column[..., :1]), torch.zeros_like(column[..., 1:])], dim=-1)
    column = torch.where(near_pi[..., None], column, safe)
    axis = column / torch.linalg.vector_norm(column, dim=-1, keepdim=True)
    # the column fixes the axis up to its sign; the signed angle atan2(axis . skew, cos) flips
    # with it, so theta * axis is the same either way
    theta = torch.atan2((axis * skew).sum(-1), cos)
    return torch.where(near_pi[..., None], theta[..., None] * axis, regular)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(N, 4)`` ``(w, x, y, z)`` to rotation matrices ``(N, 3, 3)``."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(N, 3, 3)`` to unit quaternions ``(N, 4)`` ``(w, x, y, z)``, ``w >= 0``.

    Shepperd's method: of the four ways to read the quaternion off ``R``, each element uses the
    one whose divisor (``4 w``, ``4 x``, ``4 y`` or ``4 z``) is largest.
    """
    r = R
    diag = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    traces = torch.stack([
        1 + diag[0] + diag[1] + diag[2], 1 + diag[0] - diag[1] - diag[2],
        1 - diag[0] + diag[1] - diag[2], 1 - diag[0] - diag[1] + diag[2],
    ], dim=-1)
    # the largest of the four is >= 1 (they sum to 4); the others are clamped to stay safe
    root = torch.sqrt(traces.clamp_min(1.0))  # = 2 * (|w|, |x|, |y|, |z|) where chosen
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    s01, s02, s12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    candidates = torch.stack([
        torch.stack([root[..., 0] ** 2, d21, d02, d10], dim=-1) / (2 * root[..., :1]),
        torch.stack([d21, root[..., 1] ** 2, s01, s02], dim=-1) / (2 * root[..., 1:2]),
        torch.stack([d02, s01, root[..., 2] ** 2, s12], dim=-1) / (2 * root[..., 2:3]),
        torch.stack([d10, s02, s12, root[..., 3] ** 2], dim=-1) / (2 * root[..., 3:]),
    ], dim=-2)
    best = traces.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    return torch.where(q[..., :1] < 0, -q, q)


class SO3(Rotation):
    """A batch of 3-D rotations, stored as ``(B, 3, 3)`` rotation matrices.

    Args:
        tensor: ``(B, 3, 3)`` rotation matrices (``matrix`` is a synonym); the identity when no
            data is given.
        name: unique name inside an objective.
        dtype: cast the data to this dtype.
        matrix: ``(B, 3, 3)`` rotation matrices.
        quaternion: ``(B, 4)`` unit quaternions ``(w, x, y, z)``; normalized after the check.

    Raises:
        ValueError: wrong shapes, a quaternion whose norm is off 1, or a matrix with
            ``|R^T R - I|`` or ``|det R - 1|`` above the dtype's tolerance.
    """

    DOF = 3
    EVENT_SHAPE = (3, 3)
    POINT_DIM = 3
    STORAGE = "a rotation matrix, R^T R = I and det R = 1"

    def __init__(self, tensor: Optional[torch.Tensor] = None, name: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, *, matrix: Optional[torch.Tensor] = None,
                 quaternion: Optional[torch.Tensor] = None):
        given = [k for k, v in (("tensor", tensor), ("matrix", matrix), ("quaternion", quaternion))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"SO3 {name!r}: give one of tensor, matrix, quaternion; got {given}")
        if matrix is not None:
            tensor = matrix
        if quaternion is not None:
            tensor = quaternion_to_matrix(unit_quaternion(quaternion, f"SO3 {name!r}", dtype))
        super().__init__(tensor, name=name, dtype=dtype)

    def to_quaternion(self) -> torch.Tensor:
        """``(B, 4)`` unit quaternions ``(w, x, y, z)`` with ``w >= 0``."""
        return matrix_to_quaternion(self.tensor)

    # ---- tensor-level maps --------------------------------------------------------------------
    @classmethod
    def identity_tensor(cls, batch_size, dtype, device):
        return torch.eye(3, dtype=dtype, device=device).repeat(batch_size, 1, 1)

    @classmethod
    def rand_tensor(cls, batch_size, generator, dtype, device):
        q = torch.randn(batch_size, 4, generator=generator, dtype=dtype, device=device)
        return quaternion_to_matrix(q / torch.linalg.vector_norm(q, dim=-1, keepdim=True))

    @classmethod
    def deviation(cls, tensor):
        gram = tensor.transpose(-1, -2) @ tensor - eye(3, tensor, tensor.shape[:1])
        return torch.maximum(gram.abs().amax(dim=(-2, -1)), (torch.linalg.det(tensor) - 1.0).abs())

    @classmethod
    def exp_tensor(cls, tangent):
        return exp_matrix(tangent)

    @classmethod
    def log_tensor(cls, tensor):
        return log_matrix(tensor)

    @classmethod
    def compose_tensor(cls, a, b):
        return a @ b

    @classmethod
    def inverse_tensor(cls, a):
        return a.transpose(-1, -2)

    @classmethod
    def normalize_tensor(cls, a):
        return orthonormalize(a)

    @classmethod
    def adjoint_tensor(cls, a):
        return a

    @classmethod
    def jr_tensor(cls, tangent):
        return right_jacobian(tangent)

    @classmethod
    def jr_inv_tensor(cls, tangent):
        return right_jacobian_inverse(tangent)

    @classmethod
    def to_matrix_tensor(cls, tensor):
        return tensor

    @classmethod
    def transform_from_tensor(cls, tensor, point, with_jacobians):
        out = (tensor @ point[..., None])[..., 0]
        if not with_jacobians:
            return out, None, None
        return out, -tensor @ hat(point), tensor

    @classmethod
    def transform_to_tensor(cls, tensor, point, with_jacobians):
        rt = tensor.transpose(-1, -2)
        out = (rt @ point[..., None])[..., 0]
        if not with_jacobians:
            return out, None, None
        return out, hat(out), rt


def orthonormalize(R: torch.Tensor) -> torch.Tensor:
    """One Newton-Schulz step towards the nearest rotation: exact to first order, identity on
    rotations (and its derivative there keeps tangent directions)."""
    gram = R.transpose(-1, -2) @ R
    return R @ (1.5 * eye(3, R, R.shape[:-2]) - 0.5 * gram)


def unit_quaternion(q, what: str, dtype) -> torch.Tensor:
    """User quaternions ``(B, 4)`` checked (shape, norm within the dtype's tolerance of 1; errors
    name ``what``), cast to ``dtype`` when given, and normalized."""
    q = as_tensor(q, f"{what} quaternion")
    if dtype is not None:
        q = q.to(dtype)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"{what}: quaternion must have shape (B, 4) (w, x, y, z), got {tuple(q.shape)}")
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    deviation = (norm[:, 0] - 1.0).abs()
    bad = ~(deviation <= tolerance(q.dtype))
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{what}: quaternion {index} is not a unit quaternion (norm {float(norm[index]):.6g}, "
            f"tolerance {tolerance(q.dtype):.0e} for {q.dtype})"
        )
    return q / norm
