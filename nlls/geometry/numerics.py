"""Numeric helpers the Lie groups share: Taylor series of the functions of a rotation angle,
small-angle branches, the tolerance on user data, and Jacobians by forward-mode differentiation.

Formulas such as ``sin(t)/t`` are 0/0 at ``t = 0`` and lose precision near it. Each is evaluated
per batch element as a Taylor series (four terms, in ``t^2``) below a small angle and in closed
form above it, chosen with ``torch.where``; the unused branch is fed a safe angle, so neither
values nor gradients see a NaN. The tables list the coefficients of ``t^0, t^2, t^4, t^6``.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

#: largest deviation from the group (``|R^T R - I|``, ``|cos^2 + sin^2 - 1|``) accepted at construction
TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-4}
TOLERANCE_OTHER = 1e-2  # half precision

A_SERIES = (1.0, -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0)  # A = sin t / t
B_SERIES = (0.5, -1.0 / 24.0, 1.0 / 720.0, -1.0 / 40320.0)  # B = (1 - cos t) / t^2
C_SERIES = (1.0 / 6.0, -1.0 / 120.0, 1.0 / 5040.0, -1.0 / 362880.0)  # C = (t - sin t) / t^3
D_SERIES = (1.0 / 12.0, 1.0 / 720.0, 1.0 / 30240.0, 1.0 / 1209600.0)  # D = 1/t^2 - (1 + cos t)/(2 t sin t)
E_SERIES = (1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0, -1.0 / 3628800.0)  # E = (t^2 + 2 cos t - 2)/(2 t^4)
F_SERIES = (1.0 / 120.0, -1.0 / 2520.0, 1.0 / 120960.0, -1.0 / 9979200.0)  # F = (2t - 3 sin t + t cos t)/(2 t^5)


def tolerance(dtype: torch.dtype) -> float:
    """The largest deviation from the group accepted in user data of this dtype."""
    return TOLERANCE.get(dtype, TOLERANCE_OTHER)


def check_on_group(deviation: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, group: str,
                   name: str, storage: str) -> None:
    """Raise ``ValueError`` naming the variable ``name`` of ``group`` (holding ``storage``) and the
    first batch element of ``tensor`` whose ``deviation`` from the group ``(N,)`` exceeds the
    tolerance of the dtype (NaN too)."""
    if tensor.shape[0] == 0:
        return
    with torch.no_grad():
        measured = deviation(tensor.detach())
    limit = tolerance(tensor.dtype)
    bad = ~(measured <= limit)  # also catches NaN
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(f"{group} {name!r}: batch element {index} is not a valid {group} ({storage}; deviation "
                         f"{float(measured[index]):.2e} > tolerance {limit:.0e} for {tensor.dtype})")


def small_angle(theta2: torch.Tensor, float64: float = 1e-3, other: float = 0.25) -> torch.Tensor:
    """Where the squared angle takes the Taylor branch: below ``float64`` in double precision,
    ``other`` in single and half. The series keep four terms, exact to rounding there, and the
    closed forms lose little to cancellation above."""
    return theta2 < (float64 if theta2.dtype == torch.float64 else other)


def horner(x: torch.Tensor, coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_k coefficients[k] * x**k``."""
    out = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


def safe_sqrt(x2: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``sqrt(x2)`` where not ``small``, 1 elsewhere (a value whose gradient is finite)."""
    return torch.sqrt(torch.where(small, torch.ones_like(x2), x2))


def eye(n: int, like: torch.Tensor, batch_shape: Tuple[int, ...]) -> torch.Tensor:
    """The ``n x n`` identity in ``like``'s dtype and device, expanded to ``(*batch_shape, n, n)``."""
    return torch.eye(n, dtype=like.dtype, device=like.device).expand(*batch_shape, n, n)


class RotationAngle:
    """The angle ``t = |w|`` of axis-angle vectors ``w (N, 3)`` and the coefficients ``A`` to ``F``
    of ``t`` (each ``(N, 1, 1)``, ready to scale ``(N, 3, 3)`` matrices), safe at ``t = 0``."""

    def __init__(self, w: torch.Tensor):
        self.t2 = (w * w).sum(-1)
        self.small = small_angle(self.t2)
        self.t = safe_sqrt(self.t2, self.small)  # 1 where small: only feeds the unused branch
        self.sin, self.cos = torch.sin(self.t), torch.cos(self.t)

    def _pick(self, coefficients, closed_form):
        return torch.where(self.small, horner(self.t2, coefficients), closed_form)[..., None, None]

    def a(self):
        return self._pick(A_SERIES, self.sin / self.t)

    def b(self):
        half = torch.sin(0.5 * self.t)
        return self._pick(B_SERIES, 2.0 * half * half / (self.t * self.t))

    def c(self):
        return self._pick(C_SERIES, (self.t - self.sin) / (self.t * self.t * self.t))

    def d(self):
        # (1 + cos t) / sin t = sin t / (1 - cos t): finite at t = pi
        one_minus_cos = 2.0 * torch.sin(0.5 * self.t) ** 2
        return self._pick(D_SERIES, 1.0 / (self.t * self.t) - self.sin / (2.0 * self.t * one_minus_cos))

    def e(self):
        t2 = self.t * self.t
        return self._pick(E_SERIES, (t2 + 2.0 * self.cos - 2.0) / (2.0 * t2 * t2))

    def f(self):
        t = self.t
        return self._pick(F_SERIES, (2.0 * t - 3.0 * self.sin + t * self.cos) / (2.0 * t ** 5))


def tangent_jacobian(function: Callable[[torch.Tensor], torch.Tensor], dof: int,
                     like: torch.Tensor) -> torch.Tensor:
    """The Jacobian ``(N, dof, dof)`` of ``function(d)``, ``(N, dof) -> (N, dof)``, at ``d = 0``.

    One forward-mode product per tangent direction (``dof`` of them, never one per batch
    element); ``function`` must treat batch rows independently. Works under ``torch.func``
    transforms and keeps the autograd graph of whatever ``function`` closes over.

    Args:
        function: the map of a batch of tangent steps.
        dof: the tangent size.
        like: a tensor with the batch size ``N``, dtype and device of the steps.
    """
    zero = torch.zeros(like.shape[0], dof, dtype=like.dtype, device=like.device)
    basis = torch.eye(dof, dtype=like.dtype, device=like.device)
    columns = [torch.func.jvp(function, (zero,), (basis[k].expand_as(zero),))[1] for k in range(dof)]
    return torch.stack(columns, dim=-1)
