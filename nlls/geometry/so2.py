"""SO(2): rotations of the plane.

A 2-D rotation by ``theta`` is stored as the unit complex number ``(cos theta, sin theta)``:
composing rotations multiplies complex numbers, inverting conjugates, and no angle ever wraps
inside the solver. The tangent is the angle itself (``dof = 1``), ``exp(theta) = (cos, sin)`` and
``log = atan2(sin, cos)`` in ``(-pi, pi]``. The group is commutative, so ``Ad = 1`` and the right
Jacobians of ``exp`` and ``log`` are 1: every Jacobian here is exact and cheap.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core.variable import as_tensor
from .lie_group import Rotation


def rotation_matrix(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``[[c, -s], [s, c]]`` from ``(N,)`` cosines and sines, ``(N, 2, 2)``."""
    return torch.stack([c, -s, s, c], dim=-1).reshape(*c.shape, 2, 2)


def rotate(c, s, p):
    """``R p`` for ``(N,)`` cosines/sines and points ``(N, 2)``."""
    x, y = p[..., 0], p[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], dim=-1)


def perp(p: torch.Tensor) -> torch.Tensor:
    """``J p = (-p_y, p_x)``, the derivative of a rotation of ``p`` by a small angle."""
    return torch.stack([-p[..., 1], p[..., 0]], dim=-1)


def complex_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The product of unit complex numbers ``(..., 2)`` ``(cos, sin)``: the composed rotation."""
    ca, sa, cb, sb = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    return torch.stack([ca * cb - sa * sb, sa * cb + ca * sb], dim=-1)


def unit(a: torch.Tensor) -> torch.Tensor:
    """``a / |a|`` along the last dimension."""
    return a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)


class SO2(Rotation):
    """A batch of 2-D rotations, stored as ``(B, 2)`` = ``(cos theta, sin theta)``.

    Args:
        tensor: ``(B, 2)`` unit ``(cos, sin)`` pairs; the identity when neither this nor
            ``theta`` is given.
        name: unique name inside an objective.
        dtype: cast the data to this dtype.
        theta: ``(B, 1)`` angles in radians, instead of ``tensor``.

    Raises:
        ValueError: wrong shapes, or ``cos^2 + sin^2`` off 1 by more than the dtype's tolerance.
    """

    DOF = 1
    EVENT_SHAPE = (2,)
    POINT_DIM = 2
    STORAGE = "(cos, sin) with cos^2 + sin^2 = 1"

    def __init__(self, tensor: Optional[torch.Tensor] = None, name: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, *, theta: Optional[torch.Tensor] = None):
        if theta is not None:
            if tensor is not None:
                raise ValueError(f"SO2 {name!r}: give either theta or tensor, not both")
            theta = as_tensor(theta, f"SO2 {name!r} theta")
            if theta.ndim != 2 or theta.shape[1] != 1:
                raise ValueError(f"SO2 {name!r}: theta must have shape (B, 1), got {tuple(theta.shape)}")
            if dtype is not None:
                theta = theta.to(dtype)
            tensor = self.exp_tensor(theta)
        super().__init__(tensor, name=name, dtype=dtype)

    def theta(self) -> torch.Tensor:
        """The angle ``(B, 1)`` in ``(-pi, pi]``."""
        return self.log_tensor(self.tensor)

    # ---- tensor-level maps --------------------------------------------------------------------
    @classmethod
    def identity_tensor(cls, batch_size, dtype, device):
        out = torch.zeros(batch_size, 2, dtype=dtype, device=device)
        out[:, 0] = 1.0
        return out

    @classmethod
    def rand_tensor(cls, batch_size, generator, dtype, device):
        theta = torch.rand(batch_size, 1, generator=generator, dtype=dtype, device=device)
        return cls.exp_tensor(math.pi * (2.0 * theta - 1.0))

    @classmethod
    def deviation(cls, tensor):
        return ((tensor * tensor).sum(-1) - 1.0).abs()

    @classmethod
    def exp_tensor(cls, tangent):
        return torch.cat([torch.cos(tangent), torch.sin(tangent)], dim=-1)

    @classmethod
    def log_tensor(cls, tensor):
        return torch.atan2(tensor[..., 1:], tensor[..., :1])

    @classmethod
    def compose_tensor(cls, a, b):
        return complex_mul(a, b)

    @classmethod
    def inverse_tensor(cls, a):
        return torch.stack([a[..., 0], -a[..., 1]], dim=-1)

    @classmethod
    def normalize_tensor(cls, a):
        return unit(a)

    @classmethod
    def adjoint_tensor(cls, a):
        return torch.ones_like(a[..., :1, None])

    @classmethod
    def jr_tensor(cls, tangent):
        return torch.ones_like(tangent[..., None])

    @classmethod
    def jr_inv_tensor(cls, tangent):
        return torch.ones_like(tangent[..., None])

    @classmethod
    def to_matrix_tensor(cls, tensor):
        return rotation_matrix(tensor[..., 0], tensor[..., 1])

    @classmethod
    def transform_from_tensor(cls, tensor, point, with_jacobians):
        c, s = tensor[..., 0], tensor[..., 1]
        out = rotate(c, s, point)
        if not with_jacobians:
            return out, None, None
        return out, perp(out)[..., None], rotation_matrix(c, s)

    @classmethod
    def transform_to_tensor(cls, tensor, point, with_jacobians):
        c, s = tensor[..., 0], tensor[..., 1]
        out = rotate(c, -s, point)
        if not with_jacobians:
            return out, None, None
        return out, -perp(out)[..., None], rotation_matrix(c, -s)
