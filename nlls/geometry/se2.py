"""SE(2): rigid motions of the plane (2-D poses).

A pose ``g = (R, t)`` maps a point ``p`` of its own frame to ``R p + t`` in the outer frame. It is
stored as ``(x, y, cos theta, sin theta)``: the translation and the rotation as a unit complex
number, so composing never wraps an angle. The tangent is ``(vx, vy, omega)``, translation first.

The exponential moves along a circular arc: with ``A = sin(w)/w`` and ``B = (1 - cos w)/w^2``,

    exp(v, w) = (R(w), V(w) v),     V(w) = [[A, -w B], [w B, A]],

and the logarithm inverts it with ``V^-1 = [[a, w/2], [-w/2, a]]``, ``a = (w/2) cot(w/2)`` (finite
up to ``|w| = pi``). The right Jacobian of ``exp`` is

    Jr(v, w) = [[ A,   w B, vx w C - vy B],
                [-w B, A,   vx B + vy w C],
                [ 0,   0,   1            ]],     C = (w - sin w) / w^3,

and ``Jr^-1`` follows from the block structure. Each of ``A, B, C, a`` is a Taylor series for
small ``w`` (see :mod:`nlls.geometry.numerics`). The adjoint for this tangent order is
``Ad(R, t) = [[R, (y, -x)^T], [0, 1]]``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core.variable import as_tensor
from .lie_group import LieGroup
from .numerics import A_SERIES, B_SERIES, C_SERIES, horner, small_angle
from .so2 import SO2, complex_mul, perp, rotate, rotation_matrix, unit

_HALF_COT = (1.0, -1.0 / 12.0, -1.0 / 720.0, -1.0 / 30240.0)  # (w/2) cot(w/2)


def _terms(w: torch.Tensor, with_a: bool = True):
    """``(A, w B, w C, B)`` of the angles ``w`` ``(N,)``, safe at 0 (``A`` ``None`` unless
    ``with_a``)."""
    w2 = w * w
    small = small_angle(w2)
    ws = torch.where(small, torch.ones_like(w), w)
    half_sin = torch.sin(0.5 * ws)
    sin = torch.sin(ws)
    a = torch.where(small, horner(w2, A_SERIES), sin / ws) if with_a else None
    b = torch.where(small, horner(w2, B_SERIES), 2.0 * half_sin * half_sin / (ws * ws))
    c = torch.where(small, horner(w2, C_SERIES), (ws - sin) / (ws * ws * ws))
    return a, w * b, w * c, b


def _half_cot(w: torch.Tensor) -> torch.Tensor:
    """``(w/2) cot(w/2)`` of ``(N,)`` angles in ``(-pi, pi]``, safe at 0."""
    w2 = w * w
    small = small_angle(w2)
    half = 0.5 * torch.where(small, torch.ones_like(w), w)
    return torch.where(small, horner(w2, _HALF_COT), half * torch.cos(half) / torch.sin(half))


def _between(a, b):
    """The components of ``a^-1 ∘ b`` from those of ``a`` and ``b`` (``(x, y, cos, sin)``, each
    ``(N,)``), in the very operations of ``compose(inverse(a), b)``, unstacked."""
    xa, ya, ca, sa = a
    xb, yb, cb, sb = b
    return ((ca * xb + sa * yb) - (ca * xa + sa * ya), (ca * yb - sa * xb) - (ca * ya - sa * xa),
            ca * cb + sa * sb, ca * sb - sa * cb)


def _log(x, y, c, s):
    """``(vx, vy, w)`` of :meth:`SE2.log_tensor` from unstacked components, and ``(w/2) cot(w/2)``."""
    w = torch.atan2(s, c)
    alpha = _half_cot(w)
    return alpha * x + 0.5 * w * y, alpha * y - 0.5 * w * x, w, alpha


def _entry_major(entries, rows: int):
    """``(N, rows, len(entries) // rows)`` from its entries ``(N,)`` in row-major order, as a view
    of the ``(rows, cols, N)`` stack: each entry lands contiguous (an entry-major layout, which
    the matrix cost weight reads without a copy)."""
    return torch.stack(entries).reshape(rows, -1, *entries[0].shape).movedim((0, 1), (-2, -1))


def _matrix(rows):
    """Stack nested lists of ``(N,)`` tensors into ``(N, len(rows), len(rows[0]))``."""
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


class SE2(LieGroup):
    """A batch of 2-D poses, stored as ``(B, 4)`` = ``(x, y, cos theta, sin theta)``.

    Args:
        tensor: ``(B, 4)`` data; the identity when neither this nor ``x_y_theta`` is given.
        name: unique name inside an objective.
        dtype: cast the data to this dtype.
        x_y_theta: ``(B, 3)`` translation and angle (radians), instead of ``tensor``.

    Raises:
        ValueError: wrong shapes, or ``cos^2 + sin^2`` off 1 by more than the dtype's tolerance.
    """

    DOF = 3
    EVENT_SHAPE = (4,)
    POINT_DIM = 2
    STORAGE = "(x, y, cos, sin) with cos^2 + sin^2 = 1"

    def __init__(self, tensor: Optional[torch.Tensor] = None, name: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, *, x_y_theta: Optional[torch.Tensor] = None):
        if x_y_theta is not None:
            if tensor is not None:
                raise ValueError(f"SE2 {name!r}: give either x_y_theta or tensor, not both")
            x_y_theta = as_tensor(x_y_theta, f"SE2 {name!r} x_y_theta")
            if x_y_theta.ndim != 2 or x_y_theta.shape[1] != 3:
                raise ValueError(
                    f"SE2 {name!r}: x_y_theta must have shape (B, 3), got {tuple(x_y_theta.shape)}"
                )
            if dtype is not None:
                x_y_theta = x_y_theta.to(dtype)
            theta = x_y_theta[:, 2:]
            tensor = torch.cat([x_y_theta[:, :2], torch.cos(theta), torch.sin(theta)], dim=1)
        super().__init__(tensor, name=name, dtype=dtype)

    def x_y_theta(self) -> torch.Tensor:
        """``(B, 3)``: translation and angle in ``(-pi, pi]``."""
        return torch.cat([self.tensor[:, :2], self.theta()], dim=1)

    def theta(self) -> torch.Tensor:
        """The rotation angle ``(B, 1)`` in ``(-pi, pi]``."""
        return torch.atan2(self.tensor[:, 3:], self.tensor[:, 2:3])

    def translation(self) -> torch.Tensor:
        """``(B, 2)``."""
        return self.tensor[:, :2]

    def rotation(self) -> SO2:
        """The rotation part as an :class:`SO2`."""
        return SO2.from_tensor(self.tensor[:, 2:])

    # ---- tensor-level maps --------------------------------------------------------------------
    @classmethod
    def identity_tensor(cls, batch_size, dtype, device):
        out = torch.zeros(batch_size, 4, dtype=dtype, device=device)
        out[:, 2] = 1.0
        return out

    @classmethod
    def rand_tensor(cls, batch_size, generator, dtype, device):
        xy = torch.randn(batch_size, 2, generator=generator, dtype=dtype, device=device)
        theta = torch.rand(batch_size, 1, generator=generator, dtype=dtype, device=device)
        theta = math.pi * (2.0 * theta - 1.0)
        return torch.cat([xy, torch.cos(theta), torch.sin(theta)], dim=1)

    @classmethod
    def deviation(cls, tensor):
        return ((tensor[:, 2:] ** 2).sum(-1) - 1.0).abs()

    @classmethod
    def exp_tensor(cls, tangent):
        vx, vy, w = tangent[..., 0], tangent[..., 1], tangent[..., 2]
        a, wb, _, _ = _terms(w)
        return torch.stack([a * vx - wb * vy, wb * vx + a * vy, torch.cos(w), torch.sin(w)], dim=-1)

    @classmethod
    def log_tensor(cls, tensor):
        x, y = tensor[..., 0], tensor[..., 1]
        w = torch.atan2(tensor[..., 3], tensor[..., 2])
        alpha = _half_cot(w)
        return torch.stack([alpha * x + 0.5 * w * y, alpha * y - 0.5 * w * x, w], dim=-1)

    @classmethod
    def between_tensor(cls, tensor, other):
        return torch.stack(_between(tensor.unbind(-1), other.unbind(-1)), dim=-1)

    @classmethod
    def between_error_tensor(cls, a, b, measurement, with_jacobians):
        """The ``Between`` factor's error ``e = log(measurement^-1 ∘ a^-1 ∘ b)`` and, when
        ``with_jacobians``, its Jacobians by ``a`` and ``b`` (else ``None``, ``None``), in closed
        form from the components (no intermediate stack, no matrix product): with
        ``z = a^-1 ∘ b``, the Jacobian by ``b`` is ``Jr^-1(e) = [[alpha, -w/2, u0], [w/2, alpha,
        u1], [0, 0, 1]]`` and the one by ``a``, ``-Jr^-1(e) Ad(z^-1)``, written out is
        ``[[-P, Q, Q zx + P zy - u0], [-Q, -P, Q zy - P zx - u1], [0, 0, -1]]`` with
        ``P = alpha zc + (w/2) zs``, ``Q = (w/2) zc - alpha zs``. The Jacobians are laid out
        entry-major (each entry contiguous over the rows), as the matrix weights read them."""
        zx, zy, zc, zs = z = _between(a.unbind(-1), b.unbind(-1))
        vx, vy, w, alpha = _log(*_between(measurement.unbind(-1), z))
        error = torch.stack([vx, vy, w], dim=-1)
        if not with_jacobians:
            return error, None, None
        _, _, wc, b_ = _terms(w, with_a=False)
        m1, m2 = vx * wc - vy * b_, vx * b_ + vy * wc
        hw = 0.5 * w
        u0, u1 = -(alpha * m1 - hw * m2), -(hw * m1 + alpha * m2)
        p, q = alpha * zc + hw * zs, hw * zc - alpha * zs
        zero, one = torch.zeros_like(w), torch.ones_like(w)
        jac_a = _entry_major([-p, q, q * zx + p * zy - u0, -q, -p, q * zy - p * zx - u1, zero, zero, -one], 3)
        jac_b = _entry_major([alpha, -hw, u0, hw, alpha, u1, zero, zero, one], 3)
        return error, jac_a, jac_b

    @classmethod
    def compose_tensor(cls, a, b):
        c, s = a[..., 2], a[..., 3]
        t = rotate(c, s, b[..., :2]) + a[..., :2]
        return torch.cat([t, complex_mul(a[..., 2:], b[..., 2:])], dim=-1)

    @classmethod
    def inverse_tensor(cls, a):
        c, s = a[..., 2], a[..., 3]
        t = -rotate(c, -s, a[..., :2])
        return torch.cat([t, torch.stack([c, -s], dim=-1)], dim=-1)

    @classmethod
    def normalize_tensor(cls, a):
        return torch.cat([a[..., :2], unit(a[..., 2:])], dim=-1)

    @classmethod
    def adjoint_tensor(cls, a):
        x, y, c, s = a.unbind(-1)
        zero, one = torch.zeros_like(x), torch.ones_like(x)
        return _matrix([[c, -s, y], [s, c, -x], [zero, zero, one]])

    @classmethod
    def jr_tensor(cls, tangent):
        vx, vy, w = tangent.unbind(-1)
        a, wb, wc, b = _terms(w)
        zero, one = torch.zeros_like(w), torch.ones_like(w)
        return _matrix([
            [a, wb, vx * wc - vy * b],
            [-wb, a, vx * b + vy * wc],
            [zero, zero, one],
        ])

    @classmethod
    def jr_inv_tensor(cls, tangent):
        vx, vy, w = tangent.unbind(-1)
        _, wb, wc, b = _terms(w, with_a=False)
        alpha = _half_cot(w)
        m1, m2 = vx * wc - vy * b, vx * b + vy * wc
        hw = 0.5 * w
        zero, one = torch.zeros_like(w), torch.ones_like(w)
        return _matrix([
            [alpha, -hw, -(alpha * m1 - hw * m2)],
            [hw, alpha, -(hw * m1 + alpha * m2)],
            [zero, zero, one],
        ])

    @classmethod
    def to_matrix_tensor(cls, tensor):
        x, y, c, s = tensor.unbind(-1)
        zero, one = torch.zeros_like(x), torch.ones_like(x)
        return _matrix([[c, -s, x], [s, c, y], [zero, zero, one]])

    @classmethod
    def transform_from_tensor(cls, tensor, point, with_jacobians):
        c, s = tensor[..., 2], tensor[..., 3]
        rotated = rotate(c, s, point)
        out = rotated + tensor[..., :2]
        if not with_jacobians:
            return out, None, None
        rotation = rotation_matrix(c, s)
        return out, torch.cat([rotation, perp(rotated)[..., None]], dim=-1), rotation

    @classmethod
    def transform_to_tensor(cls, tensor, point, with_jacobians):
        c, s = tensor[..., 2], tensor[..., 3]
        out = rotate(c, -s, point - tensor[..., :2])
        if not with_jacobians:
            return out, None, None
        qx, qy = out[..., 0], out[..., 1]
        zero, one = torch.zeros_like(qx), torch.ones_like(qx)
        jac_g = _matrix([[-one, zero, qy], [zero, -one, -qx]])
        return out, jac_g, rotation_matrix(c, -s)
