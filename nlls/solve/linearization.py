"""Linearization: from residuals and Jacobians to the normal equations ``A delta = -g``.

Around the current estimate the residual is ``r(x (+) delta) ~ r + J delta``, and minimizing
``0.5 ||r + J delta||^2`` gives the normal equations with ``A = J^T J`` and ``g = J^T r`` (``g`` is
also the gradient of the objective). ``J`` is never formed whole: each cost group contributes
``J_k^T J_k`` and ``J_k^T r_k`` for its members (:mod:`nlls.solve.normal_equations`), and these
small blocks are added into ``A`` and ``g`` at positions computed once per objective structure
(:meth:`Linearization.assemble`, the one assembly loop). The system types are in
:mod:`nlls.solve.systems`. Solvers that work on ``J`` itself (QR) get it assembled dense instead
(:class:`DenseJacobianLinearization`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch

from ..core.evaluation import Evaluator, State
from .normal_equations import gradient_blocks, normal_blocks, normal_rule, upper_rows
from .systems import (
    DenseJacobian,
    DenseJacobianSystem,
    DenseSystem,
    JacobianOperator,
    JacobianSystem,
    SparseMatrix,
    SparsePattern,
    SparseSystem,
)


class Linearization:
    """Base of the linearizations: the scatter positions of every group's ``J^T r`` blocks, and
    the loop that adds the blocks of every group into ``g`` (and ``A``)."""

    #: the attributes holding per-group index tensors, moved to the data's device once
    INDEX_LISTS: Tuple[str, ...] = ("_flat_g",)

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self._flat_g = [group.offsets.reshape(-1) for group in evaluator.groups]
        self._device = torch.device("cpu")
        self._permuted: Dict[tuple, tuple] = {}  # index -> its reordering, per group

    def single_block(self) -> bool:
        """Whether a single group of a single cost function covers every column in order (a curve
        fit): its blocks are then the whole system, and nothing needs scattering."""
        groups = self.evaluator.groups
        return (len(groups) == 1 and groups[0].size == 1
                and groups[0].offsets[0].tolist() == list(range(self.evaluator.dof)))

    def _on(self, device: torch.device) -> None:
        """Move the index tensors to ``device`` once (no host copy per iteration)."""
        if device != self._device:
            for name in self.INDEX_LISTS:
                setattr(self, name, [index.to(device) for index in getattr(self, name)])
            self._device = device

    def assemble(self, parts, index_A: Optional[Sequence[torch.Tensor]] = None,
                 size_A: int = 0) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """``(A (B, size_A) or None, g (B, D))`` from the per-group ``(J, r)`` blocks ``parts``:
        ``J^T r`` scattered into ``g``, and with ``index_A`` (one scatter index per group) the
        ``J^T J`` blocks scattered into the flat ``A``."""
        ref = parts[0][1]
        self._on(ref.device)
        batch = ref.shape[1]
        g = ref.new_zeros(batch, self.evaluator.dof)
        A = None if index_A is None else ref.new_zeros(batch, size_A)
        for k, (jac, r) in enumerate(parts):
            if A is not None and index_A is not None and normal_rule(jac) == "outer":
                rows, jtr = upper_rows(jac, r)  # A (made here) gets each row and its mirror
                for row, (upper, lower) in zip(rows, self._row_indices(k, index_A[k], len(rows))):
                    A = A.index_add_(1, upper, row.reshape(-1, batch).t())
                    if lower is not None:
                        A = A.index_add_(1, lower, row[1:].reshape(-1, batch).t())
            elif A is not None and index_A is not None:
                jtj, jtr = normal_blocks(jac, r)
                A = A.index_add_(1, *self._scatter(("A", k), index_A[k], jtj, 2))
            else:
                jtr = gradient_blocks(jac, r)
            g = g.index_add(1, *self._scatter(("g", k), self._flat_g[k], jtr, 1))
        return A, g

    def _row_indices(self, k: int, index: torch.Tensor,
                     size: int) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Per row ``i`` of group ``k``'s ``J^T J`` blocks (:func:`~nlls.solve.normal_equations.
        upper_rows`): where ``A[i, i:]`` and, mirrored, ``A[i + 1:, i]`` go, ordered as the rows
        ``(D - i, K, B)`` are; from ``index`` (laid out ``(K, D, D)``), once per index."""
        cached = self._permuted.get(("rows", k))
        if cached is None or cached[0] is not index:
            full = index.reshape(-1, size, size)
            rows = [(full[:, i, i:].t().reshape(-1),
                     full[:, i + 1:, i].t().reshape(-1) if i + 1 < size else None) for i in range(size)]
            cached = (index, rows)
            self._permuted[("rows", k)] = cached
        return cached[1]

    def _scatter(self, key, index: torch.Tensor, blocks: torch.Tensor,
                 entries: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(index, source (B, K * E))`` to add ``blocks (K, B, *E)`` at ``index`` (laid out as
        ``(K, *E)``): the blocks in their memory's order when it is entry-major (``(*E, K, B)``,
        as :mod:`~nlls.solve.normal_equations`' outer products give it) with the index permuted to match
        (once per index), so nothing is copied; else the blocks copied into ``(B, K, *E)``."""
        count, batch = blocks.shape[:2]
        moved = blocks.movedim((0, 1), (-2, -1))
        if blocks.is_contiguous() or not moved.is_contiguous():
            return index, blocks.transpose(0, 1).reshape(batch, -1)
        cached = self._permuted.get(key)
        if cached is None or cached[0] is not index:
            cached = (index, index.reshape(count, -1).t().reshape(-1))
            self._permuted[key] = cached
        return cached[1], moved.reshape(-1, batch).t()

    def gradient(self, state: State, aux) -> torch.Tensor:
        """Only ``g = J^T r``, ``(B, D)``: the gradient of the objective on the tangent."""
        return self.assemble(self.evaluator.jacobians(state, aux))[1]

    def linearize(self, state: State, aux):
        """The normal equations at ``state`` (a system of :mod:`nlls.solve.systems`)."""
        raise NotImplementedError


class DenseLinearization(Linearization):
    """Accumulates the dense ``A = J^T J`` and ``g = J^T r`` group by group.

    When a single group of a single cost function covers every column in order (a curve fit),
    its blocks *are* ``A`` and ``g`` and nothing is scattered.
    """

    INDEX_LISTS = ("_flat_g", "_flat_A")

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        dof = evaluator.dof
        groups = evaluator.groups
        self._direct = self.single_block()
        self._flat_A = [(g.offsets[:, :, None] * dof + g.offsets[:, None, :]).reshape(-1) for g in groups]

    def linearize(self, state: State, aux) -> DenseSystem:
        parts = self.evaluator.jacobians(state, aux)
        if self._direct:
            jac, r = parts[0]
            return DenseSystem(*normal_blocks(jac[0], r[0]))
        dof = self.evaluator.dof
        A, g = self.assemble(parts, self._flat_A, dof * dof)
        assert A is not None, "assemble returns A when given its scatter index"
        return DenseSystem(A.reshape(-1, dof, dof), g)


class SparseLinearization(Linearization):
    """Accumulates ``A = J^T J`` into the values of a fixed :class:`SparsePattern`.

    The pattern and the scatter indices are built once; each iteration only adds every group's
    ``J^T J`` blocks into ``(B, nnz)`` values with one ``index_add`` per group.
    """

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        starts = torch.cat([b.offset + torch.arange(len(b.variables) + (k == len(evaluator.blocks) - 1)) * b.dof
                            for k, b in enumerate(evaluator.blocks)])
        self.pattern = SparsePattern(evaluator.dof, [g.offsets for g in evaluator.groups], starts)

    def linearize(self, state: State, aux) -> SparseSystem:
        parts = self.evaluator.jacobians(state, aux)
        _, _, _, scatter = self.pattern.on(parts[0][1].device)
        values, g = self.assemble(parts, scatter, self.pattern.nnz)
        assert values is not None, "assemble returns A when given its scatter index"
        return SparseSystem(SparseMatrix(self.pattern, values), g)

    def assemble_blocks(self, blocks: Sequence[torch.Tensor]) -> SparseMatrix:
        """A :class:`SparseMatrix` from one ``(K, B, Dg, Dg)`` block per group (in group order,
        columns in the order of ``group.offsets``), added at the positions of the groups'
        ``J^T J`` blocks: how the exact Hessian (:mod:`nlls.backward.exact_hessian`), which has
        the pattern of ``J^T J``, is assembled."""
        ref = blocks[0]
        _, _, _, scatter = self.pattern.on(ref.device)
        batch = ref.shape[1]
        values = ref.new_zeros(batch, self.pattern.nnz)
        for block, index in zip(blocks, scatter):
            values = values.index_add(1, index, block.transpose(0, 1).reshape(batch, -1))
        return SparseMatrix(self.pattern, values)


class JacobianLinearization(Linearization):
    """Keeps the Jacobian blocks and ``g``; ``A`` is only ever applied (matrix-free solvers)."""

    INDEX_LISTS = ("_flat_g", "_columns")

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        self._columns = [group.offsets for group in evaluator.groups]  # (K, Dg) columns per member

    def linearize(self, state: State, aux) -> JacobianSystem:
        parts = self.evaluator.jacobians(state, aux)
        _, g = self.assemble(parts)
        operator = JacobianOperator(self.evaluator, parts, self._columns, self._flat_g)
        return JacobianSystem(operator, g)


class DenseJacobianLinearization(Linearization):
    """Assembles the whole dense Jacobian ``J (B, M, D)`` and residual ``r (B, M)`` (``M`` the
    residual rows of every cost function, group after group) for solvers that factor ``J`` itself
    (QR): one ``index_add`` per group at positions computed once. Memory: ``B * M * D`` numbers.

    When a single group of a single cost function covers every column in order (a curve fit),
    its block *is* ``J`` and nothing is scattered.
    """

    INDEX_LISTS = ("_flat_g", "_flat_J")

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        dof = evaluator.dof
        groups = evaluator.groups
        self._direct = self.single_block()
        self.rows = 0  # M
        self._flat_J = []
        for group in groups:
            rows = self.rows + torch.arange(group.size * group.dim).reshape(group.size, group.dim)
            self._flat_J.append((rows[:, :, None] * dof + group.offsets[:, None, :]).reshape(-1))
            self.rows += group.size * group.dim

    def linearize(self, state: State, aux) -> DenseJacobianSystem:
        parts = self.evaluator.jacobians(state, aux)
        if self._direct:
            jac, r = parts[0]
            return DenseJacobianSystem(DenseJacobian(jac[0], r[0]), gradient_blocks(jac[0], r[0]))
        _, g = self.assemble(parts)  # (moves the index lists to the data's device)
        ref = parts[0][1]
        batch, dof = ref.shape[1], self.evaluator.dof
        jacobian = ref.new_zeros(batch, self.rows * dof)
        for (jac, _), index in zip(parts, self._flat_J):
            jacobian = jacobian.index_add(1, index, jac.transpose(0, 1).reshape(batch, -1))
        residual = torch.cat([r.transpose(0, 1).reshape(batch, -1) for _, r in parts], dim=1)
        return DenseJacobianSystem(DenseJacobian(jacobian.reshape(batch, self.rows, dof), residual), g)


#: what ``LinearSolver.linearization`` names
LINEARIZATIONS: Dict[str, Type[Linearization]] = {
    "dense": DenseLinearization, "sparse": SparseLinearization, "jacobian": JacobianLinearization,
    "dense_jacobian": DenseJacobianLinearization,
}
__all__: List[str] = ["Linearization", "DenseLinearization", "SparseLinearization",
                      "JacobianLinearization", "DenseJacobianLinearization", "LINEARIZATIONS"]
