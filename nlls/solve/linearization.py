"""Linearization: from residuals and Jacobians to the normal equations ``A delta = -g``.

Around the current estimate the residual is ``r(x (+) delta) ~ r + J delta``, and minimizing
``0.5 ||r + J delta||^2`` gives the normal equations with ``A = J^T J`` and ``g = J^T r`` (``g`` is
also the gradient of the objective). ``J`` is never formed whole: each cost group contributes
``J_k^T J_k`` and ``J_k^T r_k`` for its members, and these small blocks are added into ``A`` and
``g`` at positions computed once per objective structure.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from .evaluate import Evaluator, State, _half_squared_norm


@dataclass
class DenseSystem:
    """The normal equations of a batch: ``A (B, D, D)``, ``g (B, D)``, the error ``(B,)``."""

    A: torch.Tensor
    g: torch.Tensor
    error: torch.Tensor

    def damped(self, damping: torch.Tensor, diagonal_scaling: bool = False,
               min_diagonal: float = 1e-6) -> torch.Tensor:
        """``A + damping * D`` with ``D = I`` or, with ``diagonal_scaling``, ``diag(A)``
        clamped below by ``min_diagonal`` (Marquardt's scaling).

        Args:
            damping: ``(B,)`` per batch element.
        """
        if diagonal_scaling:
            diagonal = self.A.diagonal(dim1=-2, dim2=-1).clamp_min(min_diagonal)
        else:
            diagonal = torch.ones_like(self.g)
        return self.A + torch.diag_embed(damping[:, None] * diagonal)

    def quadratic_decrease(self, delta: torch.Tensor) -> torch.Tensor:
        """Decrease of the linear model ``-(g.delta + 0.5 delta^T A delta)``, ``(B,)``."""
        a_delta = (self.A @ delta[..., None])[..., 0]
        return -((self.g * delta).sum(-1) + 0.5 * (delta * a_delta).sum(-1))


class DenseLinearization:
    """Accumulates the dense ``A = J^T J`` and ``g = J^T r`` group by group.

    The scatter positions of every group's blocks are computed once here. When a single group of
    a single cost function covers every column in order (a curve fit), its blocks *are* ``A`` and
    ``g`` and nothing is scattered.
    """

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        dof = evaluator.dof
        self._direct = False
        self._flat_A = []
        self._flat_g = []
        groups = evaluator.groups
        if len(groups) == 1 and groups[0].size == 1:
            cols = groups[0].offsets[0]
            self._direct = cols.tolist() == list(range(dof))
        for group in groups:
            cols = group.offsets  # (K, Dg)
            self._flat_A.append((cols[:, :, None] * dof + cols[:, None, :]).reshape(-1))
            self._flat_g.append(cols.reshape(-1))

    def _indices(self, device):
        if self._flat_A and self._flat_A[0].device != device:
            self._flat_A = [f.to(device) for f in self._flat_A]
            self._flat_g = [f.to(device) for f in self._flat_g]
        return self._flat_A, self._flat_g

    def linearize(self, state: State, aux) -> DenseSystem:
        """``A``, ``g`` and the error at ``state`` (see :mod:`nlls.solve.evaluate`)."""
        parts = self.evaluator.jacobians(state, aux)
        error = _half_squared_norm([r for _, r in parts])
        if self._direct:
            jac, r = parts[0]
            jt = jac[0].transpose(-1, -2)
            return DenseSystem(jt @ jac[0], (jt @ r[0][..., None])[..., 0], error)
        batch, dof = error.shape[0], self.evaluator.dof
        flat_A, flat_g = self._indices(error.device)
        A = error.new_zeros(batch, dof * dof)
        g = error.new_zeros(batch, dof)
        for (jac, r), index_A, index_g in zip(parts, flat_A, flat_g):
            jt = jac.transpose(-1, -2)
            jtj = (jt @ jac).transpose(0, 1).reshape(batch, -1)  # (B, K * Dg * Dg)
            jtr = (jt @ r[..., None])[..., 0].transpose(0, 1).reshape(batch, -1)
            A = A.index_add(1, index_A, jtj)
            g = g.index_add(1, index_g, jtr)
        return DenseSystem(A.reshape(batch, dof, dof), g, error)

    def gradient(self, state: State, aux) -> torch.Tensor:
        """Only ``g = J^T r``, ``(B, D)``: the gradient of the objective on the tangent."""
        parts = self.evaluator.jacobians(state, aux)
        if self._direct:
            jac, r = parts[0]
            return (jac[0].transpose(-1, -2) @ r[0][..., None])[..., 0]
        batch = parts[0][1].shape[1]
        _, flat_g = self._indices(parts[0][1].device)
        g = parts[0][1].new_zeros(batch, self.evaluator.dof)
        for (jac, r), index_g in zip(parts, flat_g):
            jtr = (jac.transpose(-1, -2) @ r[..., None])[..., 0].transpose(0, 1).reshape(batch, -1)
            g = g.index_add(1, index_g, jtr)
        return g
