"""Linearization: from residuals and Jacobians to the normal equations ``A delta = -g``.

Around the current estimate the residual is ``r(x (+) delta) ~ r + J delta``, and minimizing
``0.5 ||r + J delta||^2`` gives the normal equations with ``A = J^T J`` and ``g = J^T r`` (``g`` is
also the gradient of the objective). ``J`` is never formed whole: each cost group contributes
``J_k^T J_k`` and ``J_k^T r_k`` for its members, and these small blocks are added into ``A`` and
``g`` at positions computed once per objective structure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .compiled import is_compiling as _is_compiling
from ..core.evaluation import Evaluator, State


# ---- J^T J and J^T r of many small blocks ----------------------------------------------------
# Curve fits and small factors give thousands of tall, thin blocks J (dim x D, dim >> D); how
# their products are formed decides the time of a batched solve. Measured on CPU (one thread)
# with bench/bench_normal_equations.py (eager and torch.compile'd products alone) and
# bench/bench_optimistix.py (whole optimize(compile=True) solves); see _normal_rule.

_LARGE = 4096  # rows * dim from which the bmm of the transposed view stops being the fastest
_TALL = 20  # dim from which the contiguous transposed copy pays off
_FUSED_BYTES = 4 * 2 ** 20  # largest J for which compiled per-entry reductions win


def _normal_bmm(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``J^T J`` and ``J^T r`` as two matrix products on the transposed view of ``J``."""
    jt = jac.transpose(-1, -2)
    return jt @ jac, (jt @ r[..., None])[..., 0]


def _normal_transposed(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``J^T`` copied contiguous first, ``(..., D, dim)``: the products then run along memory
    (the batched GEMM of the transposed view is 2-3x slower than the copy and the GEMM)."""
    jt = jac.transpose(-1, -2).contiguous()
    return jt @ jt.transpose(-1, -2), (jt @ r[..., None])[..., 0]


def _normal_entries(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One product-and-sum per entry of the upper triangle of ``J^T J`` and per entry of
    ``J^T r``, mirrored into an exactly symmetric ``A``: elementwise work and reductions that
    ``torch.compile`` fuses into one loop over ``J`` (as XLA does), for small ``D``."""
    size = jac.shape[-1]
    columns = jac.unbind(-1)
    upper = {}
    for i in range(size):
        for j in range(i, size):
            upper[i, j] = (columns[i] * columns[j]).sum(-1)
    rows = [torch.stack([upper[min(i, j), max(i, j)] for j in range(size)], dim=-1)
            for i in range(size)]
    g = torch.stack([(column * r).sum(-1) for column in columns], dim=-1)
    return torch.stack(rows, dim=-2), g


_NORMAL_VARIANTS = {"bmm": _normal_bmm, "transposed": _normal_transposed, "entries": _normal_entries}


def _normal_rule(jac: torch.Tensor) -> str:
    """Which of ``_NORMAL_VARIANTS`` forms the blocks of ``jac (..., dim, D)``.

    With ``rows`` the number of blocks (the product of the leading sizes):

    * not on CPU, ``D > 3``, or ``rows * dim < 4096``: ``bmm`` (the GPU rule is not measured
      yet; with ``D = 6`` the alternatives are mixed, 0.8-1.3x; small batches are overhead);
    * under ``torch.compile`` with ``J`` at most 4 MiB: ``entries``;
    * ``dim >= 20``: ``transposed``;
    * else ``bmm``.

    Numbers (one thread, AMD EPYC, torch 2.13; time / time of ``bmm``). Eager, ``(A, g)``
    alone (bench_normal_equations.py): ``transposed`` 0.59-0.87 at ``B = 4096, 256`` and
    ``dim = 20, 100``, ``D = 2, 3``, 0.84-0.91 at ``B = 64, dim = 100``; 1.0-1.3 at ``dim = 3``
    or ``B * dim < 4096``; ``entries`` is never the fastest eagerly (0.74-2.5 at ``B = 4096``,
    3-16x at ``B = 1``). Compiled whole solves (``optimize(compile=True)``, ms, medians over 6
    processes): quadratic fit float32 ``B = 4096`` (``J`` 3.1 MiB) ``bmm`` 40.5, ``entries``
    29.6, ``transposed`` 31.6; float64 (6.25 MiB) ``bmm`` 55.4, ``entries`` 79.9,
    ``transposed`` 46.7; exponential fit float64 (9.4 MiB) ``bmm`` 137, ``entries`` 176,
    ``transposed`` 137; rotation fit float64 ``dim = 60`` (5.6 MiB) ``bmm`` 254, ``entries``
    254, ``transposed`` 236; at ``B = 256`` ``entries`` 0.74-0.88 of ``bmm`` (quadratic
    float32 and float64, exponential float64); at ``B = 1`` ``entries`` 1.15-1.45x, ``bmm``
    best. Compiled, the fused reductions read ``J`` across 16 rows at a time, fast while ``J``
    stays in cache and slower than the library GEMM beyond (the 4 MiB bound is this machine's).
    """
    size = jac.shape[-1]
    if size > 3 or not jac.is_cpu or jac.numel() < _LARGE * size:  # rows * dim < _LARGE
        return "bmm"
    if _is_compiling() and jac.numel() * jac.element_size() <= _FUSED_BYTES:
        return "entries"
    return "transposed" if jac.shape[-2] >= _TALL else "bmm"


def _normal_blocks(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(J^T J (..., D, D), J^T r (..., D))`` of the blocks ``jac (..., dim, D)``,
    ``r (..., dim)``, by the fastest way for their shape (:func:`_normal_rule`).
    Differentiable, also under ``torch.func`` and ``torch.compile``.

    ``J^T J`` is exactly symmetric with ``entries`` (by construction) and was with
    ``transposed`` in every case checked (MKL, ``D <= 3``); ``bmm`` on the transposed view, as
    before, can round ``A_ij`` and ``A_ji`` differently. Symmetrizing, ``0.5 (A + A^T)``, would
    cost 6 us at ``B = 1`` (+50 % of the products) and 110 us at ``B = 4096`` (+8 %), and the
    Cholesky factorization reads one triangle only, so it is not done.
    """
    return _NORMAL_VARIANTS[_normal_rule(jac)](jac, r)


def _gradient_blocks(jac: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``J^T r (..., D)`` alone. Up to 16 blocks (on CPU) or under ``torch.compile`` as a
    product and a sum (eager: 0.62-0.95 of the matrix-vector product at ``B <= 16``, 0.8-1.4 at
    ``B = 64-128``, up to 3x at ``B = 4096``; compiled, the compiler makes the product this
    anyway; the GPU rule is not measured yet); else one matrix-vector product per block."""
    rows = jac.numel() // max(jac.shape[-1] * jac.shape[-2], 1)
    if _is_compiling() or (rows <= 16 and jac.is_cpu):
        return (jac * r[..., None]).sum(-2)
    return (jac.transpose(-1, -2) @ r[..., None])[..., 0]


@dataclass
class _NormalEquations:
    """``A delta = -g`` for a batch; ``A`` is a matrix or an operator with ``diagonal()``,
    ``add_diagonal(d)`` and ``matvec(x)``."""

    A: object
    g: torch.Tensor

    def damped(self, damping: torch.Tensor, diagonal_scaling: bool = False,
               min_diagonal: float = 1e-6):
        """``A + damping * D`` with ``D = I`` or, with ``diagonal_scaling``, ``diag(A)``
        clamped below by ``min_diagonal`` (Marquardt's scaling).

        Args:
            damping: ``(B,)`` per batch element.
        """
        if diagonal_scaling:
            diagonal = self.A.diagonal().clamp_min(min_diagonal)
        else:
            diagonal = torch.ones_like(self.g)
        return self.A.add_diagonal(damping[:, None] * diagonal)

    def quadratic_decrease(self, delta: torch.Tensor) -> torch.Tensor:
        """Decrease of the linear model ``-(g.delta + 0.5 delta^T A delta)``, ``(B,)``."""
        a_delta = self.A.matvec(delta)
        return -((self.g * delta).sum(-1) + 0.5 * (delta * a_delta).sum(-1))


class _Dense:
    """The operator interface on a dense ``(B, D, D)`` tensor."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix

    def diagonal(self) -> torch.Tensor:
        return self.matrix.diagonal(dim1=-2, dim2=-1)

    def add_diagonal(self, diagonal: torch.Tensor) -> torch.Tensor:
        return self.matrix + torch.diag_embed(diagonal)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return (self.matrix @ x[..., None])[..., 0]


class DenseSystem(_NormalEquations):
    """The normal equations of a batch: ``A (B, D, D)`` a tensor, ``g (B, D)``."""

    def damped(self, damping, diagonal_scaling=False, min_diagonal=1e-6) -> torch.Tensor:
        return _NormalEquations(_Dense(self.A), self.g).damped(damping, diagonal_scaling, min_diagonal)

    def quadratic_decrease(self, delta: torch.Tensor) -> torch.Tensor:
        return _NormalEquations(_Dense(self.A), self.g).quadratic_decrease(delta)


class Linearization:
    """Base of the linearizations: the gradient ``g = J^T r`` scattered by cached indices."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self._flat_g = [group.offsets.reshape(-1) for group in evaluator.groups]
        self._device = torch.device("cpu")

    def _move(self, device: torch.device) -> None:
        if device != self._device:
            self._flat_g = [f.to(device) for f in self._flat_g]
            self._device = device

    def gradient(self, state: State, aux) -> torch.Tensor:
        """Only ``g = J^T r``, ``(B, D)``: the gradient of the objective on the tangent."""
        parts = self.evaluator.jacobians(state, aux)
        ref = parts[0][1]
        self._move(ref.device)
        g = ref.new_zeros(ref.shape[1], self.evaluator.dof)
        for (jac, r), index_g in zip(parts, self._flat_g):
            jtr = _gradient_blocks(jac, r).transpose(0, 1).reshape(g.shape[0], -1)
            g = g.index_add(1, index_g, jtr)
        return g


class DenseLinearization(Linearization):
    """Accumulates the dense ``A = J^T J`` and ``g = J^T r`` group by group.

    The scatter positions of every group's blocks are computed once here. When a single group of
    a single cost function covers every column in order (a curve fit), its blocks *are* ``A`` and
    ``g`` and nothing is scattered.
    """

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        dof = evaluator.dof
        groups = evaluator.groups
        self._direct = (
            len(groups) == 1 and groups[0].size == 1
            and groups[0].offsets[0].tolist() == list(range(dof))
        )
        self._flat_A = [(g.offsets[:, :, None] * dof + g.offsets[:, None, :]).reshape(-1) for g in groups]

    def _move(self, device: torch.device) -> None:
        if device != self._device:
            self._flat_A = [f.to(device) for f in self._flat_A]
        super()._move(device)

    def linearize(self, state: State, aux) -> DenseSystem:
        """``A``, ``g`` and the error at ``state`` (see :mod:`nlls.core.evaluation`)."""
        parts = self.evaluator.jacobians(state, aux)
        if self._direct:
            jac, r = parts[0]
            return DenseSystem(*_normal_blocks(jac[0], r[0]))
        ref = parts[0][1]
        batch, dof = ref.shape[1], self.evaluator.dof
        self._move(ref.device)
        A = ref.new_zeros(batch, dof * dof)
        g = ref.new_zeros(batch, dof)
        for (jac, r), index_A, index_g in zip(parts, self._flat_A, self._flat_g):
            jtj, jtr = _normal_blocks(jac, r)
            jtj = jtj.transpose(0, 1).reshape(batch, -1)  # (B, K * Dg * Dg)
            jtr = jtr.transpose(0, 1).reshape(batch, -1)
            A = A.index_add(1, index_A, jtj)
            g = g.index_add(1, index_g, jtr)
        return DenseSystem(A.reshape(batch, dof, dof), g)


class SparsePattern:
    """The scalar sparsity pattern of ``A = J^T J`` (symmetric, both triangles, rows sorted).

    Computed once per objective structure from the columns each cost function touches; holds
    CSR arrays, the positions of the diagonal, and per cost group the scatter index of every
    entry of its members' ``J^T J`` blocks into the values.
    """

    def __init__(self, dof: int, columns):
        self.dof = dof
        flats = [(c[:, :, None] * dof + c[:, None, :]).reshape(-1) for c in columns]
        diagonal = torch.arange(dof) * (dof + 1)  # keep the diagonal even where nothing touches it
        unique = torch.unique(torch.cat(flats + [diagonal]))  # sorted: row-major CSR order
        self.rows = torch.div(unique, dof, rounding_mode="floor")
        self.cols = unique % dof
        self.nnz = unique.numel()
        self.crow = torch.searchsorted(self.rows, torch.arange(dof + 1))
        self.diagonal = torch.searchsorted(unique, diagonal)
        self.scatter = [torch.searchsorted(unique, f) for f in flats]
        self._device_cache = {}

    def on(self, device: torch.device):
        """``(rows, cols, diagonal, scatter)`` on ``device`` (moved once, then cached)."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = (
                self.rows.to(device), self.cols.to(device), self.diagonal.to(device),
                [s.to(device) for s in self.scatter],
            )
        return self._device_cache[key]

    def __repr__(self) -> str:
        return f"SparsePattern(dof={self.dof}, nnz={self.nnz})"


class SparseMatrix:
    """A batch of symmetric sparse matrices sharing one pattern: ``values (B, nnz)``."""

    def __init__(self, pattern: SparsePattern, values: torch.Tensor):
        self.pattern = pattern
        self.values = values

    @property
    def shape(self):
        return (self.values.shape[0], self.pattern.dof, self.pattern.dof)

    def diagonal(self) -> torch.Tensor:
        _, _, diagonal, _ = self.pattern.on(self.values.device)
        return self.values[:, diagonal]

    def add_diagonal(self, diagonal: torch.Tensor) -> "SparseMatrix":
        _, _, positions, _ = self.pattern.on(self.values.device)
        return SparseMatrix(self.pattern, self.values.index_add(1, positions, diagonal))

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x (B, D)``."""
        rows, cols, _, _ = self.pattern.on(self.values.device)
        return torch.zeros_like(x).index_add(1, rows, self.values * x[:, cols])

    def to_dense(self) -> torch.Tensor:
        rows, cols, _, _ = self.pattern.on(self.values.device)
        dof = self.pattern.dof
        dense = self.values.new_zeros(self.values.shape[0], dof * dof)
        return dense.index_copy(1, rows * dof + cols, self.values).reshape(-1, dof, dof)


class SparseSystem(_NormalEquations):
    """Sparse normal equations: ``A`` a :class:`SparseMatrix`, ``g (B, D)``."""


class SparseLinearization(Linearization):
    """Accumulates ``A = J^T J`` into the values of a fixed :class:`SparsePattern`.

    The pattern and the scatter indices are built once; each iteration only adds every group's
    ``J^T J`` blocks into ``(B, nnz)`` values with one ``index_add`` per group.
    """

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        self.pattern = SparsePattern(evaluator.dof, [g.offsets for g in evaluator.groups])

    def linearize(self, state: State, aux) -> SparseSystem:
        parts = self.evaluator.jacobians(state, aux)
        ref = parts[0][1]
        batch, dof = ref.shape[1], self.evaluator.dof
        self._move(ref.device)
        flat_g = self._flat_g
        _, _, _, scatter = self.pattern.on(ref.device)
        values = ref.new_zeros(batch, self.pattern.nnz)
        g = ref.new_zeros(batch, dof)
        for (jac, r), index_A, index_g in zip(parts, scatter, flat_g):
            jtj, jtr = _normal_blocks(jac, r)
            jtj = jtj.transpose(0, 1).reshape(batch, -1)
            jtr = jtr.transpose(0, 1).reshape(batch, -1)
            values = values.index_add(1, index_A, jtj)
            g = g.index_add(1, index_g, jtr)
        return SparseSystem(SparseMatrix(self.pattern, values), g)


class JacobianOperator:
    """``A = J^T J + diag(shift)`` as an operator: products through the Jacobian blocks, never
    forming ``A`` (for matrix-free solvers such as conjugate gradient)."""

    def __init__(self, linearization: "JacobianLinearization", parts, shift=None):
        self.linearization = linearization
        self.parts = parts
        self.shift = shift  # (B, D) or None

    @property
    def batch(self) -> int:
        return self.parts[0][1].shape[1]

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x (B, D)``: gather ``x`` per member, ``J^T (J x)``, scatter back."""
        out = torch.zeros_like(x)
        for (jac, _), columns, index in zip(self.parts, self.linearization._columns, self.linearization._flat_g):
            local = x[:, columns].permute(1, 0, 2)  # (K, B, Dg)
            jx = (jac @ local[..., None])  # (K, B, dim, 1)
            jtjx = (jac.transpose(-1, -2) @ jx)[..., 0]
            out = out.index_add(1, index, jtjx.transpose(0, 1).reshape(x.shape[0], -1))
        if self.shift is not None:
            out = out + self.shift * x
        return out

    def diagonal(self) -> torch.Tensor:
        """``diag(A)``, ``(B, D)``."""
        ref = self.parts[0][0]
        out = ref.new_zeros(ref.shape[1], self.linearization.evaluator.dof)
        for (jac, _), index in zip(self.parts, self.linearization._flat_g):
            squares = (jac * jac).sum(dim=2)  # (K, B, Dg)
            out = out.index_add(1, index, squares.transpose(0, 1).reshape(out.shape[0], -1))
        return out + (self.shift if self.shift is not None else 0.0)

    def add_diagonal(self, diagonal: torch.Tensor) -> "JacobianOperator":
        shift = diagonal if self.shift is None else self.shift + diagonal
        return JacobianOperator(self.linearization, self.parts, shift)

    def diagonal_blocks(self):
        """Per variable block: ``(N, B, dof, dof)`` diagonal blocks of ``A`` (block Jacobi)."""
        evaluator = self.linearization.evaluator
        ref = self.parts[0][0]
        blocks = [ref.new_zeros(len(b.variables), ref.shape[1], b.dof, b.dof) for b in evaluator.blocks]
        for (jac, _), group in zip(self.parts, evaluator.groups):
            start = 0
            for dof, slot_index in zip(group.dofs, group.slot_of_position):
                slot = group.optim_slots[slot_index]
                piece = jac[..., start:start + dof]
                blocks[slot.block] = blocks[slot.block].index_add(
                    0, slot.index_on(ref.device), piece.transpose(-1, -2) @ piece)
                start += dof
        if self.shift is not None:
            for b, block in zip(evaluator.blocks, range(len(blocks))):
                shift = self.shift[:, b.offset: b.offset + b.size].reshape(-1, len(b.variables), b.dof)
                blocks[block] = blocks[block] + torch.diag_embed(shift.transpose(0, 1))
        return blocks


class JacobianSystem(_NormalEquations):
    """Normal equations kept as Jacobian blocks: ``A`` a :class:`JacobianOperator`, ``g``."""


class JacobianLinearization(Linearization):
    """Keeps the Jacobian blocks and ``g``; ``A`` is only ever applied (matrix-free solvers)."""

    def __init__(self, evaluator: Evaluator):
        super().__init__(evaluator)
        self._columns = [group.offsets for group in evaluator.groups]  # (K, Dg) columns per member

    def _move(self, device: torch.device) -> None:
        if device != self._device:
            self._columns = [c.to(device) for c in self._columns]
        super()._move(device)

    def linearize(self, state: State, aux) -> JacobianSystem:
        parts = self.evaluator.jacobians(state, aux)
        ref = parts[0][1]
        self._move(ref.device)
        batch = ref.shape[1]
        g = ref.new_zeros(batch, self.evaluator.dof)
        for (jac, r), index_g in zip(parts, self._flat_g):
            jtr = _gradient_blocks(jac, r).transpose(0, 1).reshape(batch, -1)
            g = g.index_add(1, index_g, jtr)
        return JacobianSystem(JacobianOperator(self, parts), g)
