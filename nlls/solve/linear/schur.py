"""The Schur complement: eliminate the points of a bundle adjustment, solve for the cameras.

In bundle adjustment no cost function links two points, so the points' part of the normal
matrix is block diagonal, one ``3 x 3`` block ``A_pp`` per point. Ordering the step as kept
variables ``x_R`` (cameras) and eliminated ones ``x_E`` (points)::

    [ A_RR  A_RE ] [x_R]   [b_R]        S x_R = b_R - A_RE A_EE^{-1} b_E,
    [ A_ER  A_EE ] [x_E] = [b_E]   =>   x_E = A_EE^{-1} (b_E - A_ER x_R),
                                        S = A_RR - A_RE A_EE^{-1} A_ER   (the reduced camera system)

``A_EE^{-1}`` costs one small Cholesky per point (batched), and ``S`` has the size of the
cameras' unknowns only: a few hundred numbers a side where the whole matrix has hundreds of
thousands. With ``A_pp = L_p L_p^T`` and each camera-point coupling ``F_up`` (a block of
``A_RE``), ``Z_up = F_up L_p^{-T}`` and ``S_uv = A_uv - sum_p Z_up Z_vp^T`` (exactly symmetric).
The structure (which couplings, which pairs of them meet at a point, where each lands in ``S``) is
analysed once per pattern (:mod:`nlls.solve.linear.schur_structure`); each ``factor`` is gathers,
batched small products and one factorization of ``S``:

* ``reduced="dense"``: ``S`` is a ``(B, nR, nR)`` tensor, factored by batched Cholesky; right for
  up to a few thousand kept unknowns (``max_dense``, the default switch of ``"auto"``);
* ``reduced="sparse"``: ``S`` keeps its own sparsity (cameras that see no common point do not
  meet) and is factored by :class:`~nlls.solve.linear.sparse.SparseCholesky` (``backend=``).

What is eliminated (``eliminate=``): by default, chosen in ``setup`` from the objective's
structure: among the variable types no cost function links two variables of, the one with the
most unknowns (BAL's points). Or a type (``nlls.Point3`` or its name ``"Point3"``), a list of
variables or their names, or an ``(n, d)`` tensor of step columns (a system built by hand).

Batched over ``B``, on any device, differentiable: everything but the sparse factorization is
torch operations, and :class:`SparseCholesky` solves are differentiable. The matrix ``factor``
receives is whatever the step rule hands it (Levenberg-Marquardt's damping is on its diagonal).
An element is ``ok`` when its values are finite, every point block and ``S`` are positive
definite (together: ``A`` is); a failed element computes with identity blocks and gets zeros,
never touching the others.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from ..checks import check_choice, check_number, short_repr
from ..systems import SparseMatrix, SparsePattern
from .base import SINGULAR_ADVICE, Factorization, LinearSolver
from .schur_columns import eliminated_columns
from .schur_structure import SchurStructure
from .sparse import BACKENDS, SparseCholesky

#: elements of the largest temporary of the pairwise products (per chunk of pairs)
CHUNK_ELEMENTS = 1 << 20


def _safe_cholesky(matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(L, ok)`` of a batch of matrices ``(..., n, n)``: failed ones factor the identity, so no
    NaN enters a graph (their flag is False)."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    if matrix.requires_grad:
        with torch.no_grad():
            ok = torch.linalg.cholesky_ex(matrix.detach())[1] == 0
        return torch.linalg.cholesky_ex(torch.where(ok[..., None, None], matrix, eye))[0], ok
    factor, info = torch.linalg.cholesky_ex(matrix)
    ok = info == 0
    return torch.where(ok[..., None, None], factor, eye), ok


def _rows(table: torch.Tensor, index: torch.Tensor, *shape: int) -> torch.Tensor:
    """``table[index]`` along the first dimension, reshaped to ``(*index.shape, *shape)``: one
    gather of contiguous rows (much faster on the CPU than indexing a middle dimension)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *shape)


def _all_finite(piece: torch.Tensor) -> torch.Tensor:
    """``(B,)``: every entry of ``piece (n, B, ...)`` of an element is finite."""
    return torch.isfinite(piece).transpose(0, 1).reshape(piece.shape[1], -1).all(dim=1)


class _SchurFactorization(Factorization):
    """The point blocks' inverse Cholesky factors, the couplings ``Z^T`` and the factored ``S``.

    Pieces are kept entity first, ``(n, B, ...)``: gathers read contiguous rows."""

    def __init__(self, solver: "Schur", structure: SchurStructure, matrix: SparseMatrix):
        values, shift = matrix.unshifted()  # (the damping's shift goes on the blocks, not a copy of A)
        batch = values.shape[0]
        self.structure = st = structure.on(values.device)
        self.batch, self.dof = batch, matrix.pattern.dof
        table = values.t().contiguous()  # (nnz, B): free for B = 1
        if st.needs_zero:  # an entry a block reads is not in the pattern: read it as zero
            table = torch.cat([table, table.new_zeros(1, batch)])
        d = st.d
        blocks = _rows(table, st.block_index, batch).reshape(st.num_eliminated, d, d, batch)
        blocks = blocks.permute(0, 3, 1, 2)  # (nE, B, d, d)
        couplings = [_rows(table, c.index, batch).permute(0, 3, 1, 2) for c in st.classes]
        kept = table.index_select(0, st.rr_source)  # (n, B)
        if shift is not None:  # on the points' blocks here, on S's diagonal below
            blocks = blocks + torch.diag_embed(shift[:, st.eliminated].reshape(batch, st.num_eliminated, d).transpose(0, 1))
        finite = _all_finite(blocks) & _all_finite(kept)
        if shift is not None:
            finite = finite & torch.isfinite(shift).all(dim=1)
        for piece in couplings:
            finite = finite & _all_finite(piece)
        eye = torch.eye(d, dtype=values.dtype, device=values.device)
        # a non-finite element computes with identity blocks and zero couplings, and fails (on
        # the CPU, where asking costs no synchronization, only when some element is not finite)
        if not (values.is_cpu and bool(finite.all())):
            blocks = torch.where(finite[:, None, None], blocks, eye)
            couplings = [torch.where(finite[:, None, None], f, 0.0) for f in couplings]
            kept = torch.where(finite, kept, 0.0)
        factor, block_ok = _safe_cholesky(blocks)
        self.inverse = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
        # Z^T = L^{-1} F^T per coupling class: (K + 1, B, d, s), the last one zero (the padding:
        # its point is the zero block appended to the inverses)
        inverses = torch.cat([self.inverse, self.inverse.new_zeros(1, batch, d, d)])
        padded = [_rows(inverses, c.point, batch, d, d) @ f.mT for c, f in zip(st.classes, couplings)]
        self.zt = [z[:-1] for z in padded]
        reduced = values.new_zeros(batch, st.size).index_add(1, st.rr_positions, kept.t())
        if shift is not None:
            reduced = reduced.index_add(1, st.diagonal, torch.where(finite[:, None], shift[:, st.kept], 0.0))
        for bucket in st.buckets:
            reduced = reduced - _pair_sum(padded[bucket.c1], padded[bucket.c2], bucket, st.size)
        ok = finite & block_ok.all(dim=0)
        self.reduced_factor: Union[torch.Tensor, Factorization, None] = None
        if st.num_kept and st.pattern is None:
            self.reduced_factor, reduced_ok = _safe_cholesky(
                reduced.reshape(batch, st.num_kept, st.num_kept))
            ok = ok & reduced_ok
        elif st.num_kept:
            assert st.pattern is not None
            self.reduced_factor = solver.sparse.factor(SparseMatrix(st.pattern, reduced))
            ok = ok & self.reduced_factor.ok
        self.ok = ok

    def _solve_reduced(self, rhs: torch.Tensor) -> torch.Tensor:
        """``S^{-1} rhs`` for ``rhs (B, nR)``."""
        factor = self.reduced_factor
        if isinstance(factor, torch.Tensor):
            y = torch.linalg.solve_triangular(factor, rhs[..., None], upper=False)
            return torch.linalg.solve_triangular(factor.mT, y, upper=True)[..., 0]
        if isinstance(factor, Factorization):
            return factor.solve(rhs)[0]
        return rhs

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if rhs.shape != (self.batch, self.dof):
            raise ValueError(f"Schur: the right-hand side has shape {tuple(rhs.shape)}, expected "
                             f"(B={self.batch}, D={self.dof})")
        st = self.structure
        batch, d = self.batch, st.d
        columns = rhs.to(self.inverse.dtype).t()  # (D, B)
        b_e = _rows(columns, st.eliminated, batch).reshape(st.num_eliminated, d, batch)
        y = (self.inverse @ b_e.permute(0, 2, 1)[..., None])[..., 0]  # L^{-1} b_E: (nE, B, d)
        b_r = columns.index_select(0, st.kept)  # (nR, B)
        for c, zt in zip(st.classes, self.zt):  # b_R - A_RE A_EE^{-1} b_E
            moved = (zt.mT @ _rows(y, c.point[:-1], batch, d)[..., None])[..., 0]  # (K, B, s)
            b_r = b_r.index_add(0, c.rows.reshape(-1), -moved.transpose(1, 2).reshape(-1, batch))
        x_r = self._solve_reduced(b_r.t()).t()  # (nR, B)
        for c, zt in zip(st.classes, self.zt):  # L^{-1} (b_E - A_ER x_R)
            local = _rows(x_r, c.rows, batch).transpose(1, 2)  # (K, B, s)
            y = y.index_add(0, c.point[:-1], -(zt @ local[..., None])[..., 0])
        x_e = (self.inverse.mT @ y[..., None])[..., 0].transpose(1, 2).reshape(-1, batch)
        x = rhs.new_zeros(self.dof, batch).index_copy(0, st.kept, x_r).index_copy(0, st.eliminated, x_e).t()
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


def _pair_sum(zt1: torch.Tensor, zt2: torch.Tensor, bucket, size: int) -> torch.Tensor:
    """``sum Z_u Z_v^T`` of the destination blocks of ``bucket`` into the ``(B, size)`` storage
    of ``S`` (both triangles), from the transposed couplings ``(K + 1, B, d, s)`` (the last zero)."""
    batch, d, s1, s2 = zt1.shape[1], zt1.shape[2], zt1.shape[3], zt2.shape[3]
    count, width = bucket.first.shape
    chunk = max(1, CHUNK_ELEMENTS // max(1, batch * width * max(s1, s2) * d))
    flat1, flat2 = zt1.reshape(zt1.shape[0], -1), zt2.reshape(zt2.shape[0], -1)
    blocks = []
    for start in range(0, count, chunk):
        first, second = bucket.first[start:start + chunk], bucket.second[start:start + chunk]
        n = first.shape[0]
        left = _rows(flat1, first, batch, d, s1).permute(2, 0, 1, 3, 4).reshape(batch, n, width * d, s1)
        right = left if bucket.same else _rows(flat2, second, batch, d, s2).permute(
            2, 0, 1, 3, 4).reshape(batch, n, width * d, s2)
        blocks.append((left.mT @ right).reshape(batch, -1))
    flat = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
    out = zt1.new_zeros(batch, size).index_add(1, bucket.positions, flat)
    mirrored = flat.reshape(batch, count, s1 * s2)[:, bucket.mirror].reshape(batch, -1)
    return out.index_add(1, bucket.mirror_positions, mirrored)


Eliminate = Union[None, str, type, Sequence, torch.Tensor]


class Schur(LinearSolver):
    """Schur complement of the normal matrix: eliminate variables that no cost function links
    to each other (bundle adjustment's points), factor the reduced system, back-substitute.

    Args:
        eliminate: what to eliminate: ``None`` (chosen in ``setup``: the variable type with
            the most unknowns among those no cost function links two variables of), a
            variable type or its name (``nlls.Point3``, ``"Point3"``), a list of variables or
            variable names (all of one ``dof``), or an ``(n, d)`` int64 tensor of step columns.
        reduced: ``"auto"``, ``"dense"`` or ``"sparse"``: how the reduced system ``S`` is
            stored and factored (``"auto"``: dense up to ``max_dense`` kept unknowns).
        max_dense: the largest reduced system ``"auto"`` factors dense.
        backend: the :class:`~nlls.solve.linear.sparse.SparseCholesky` backend of the sparse
            reduced system.

    Raises:
        TypeError, ValueError: a bad option (the message names it); in ``setup``, an
            ``eliminate`` that names nothing in the objective or variables a cost function
            links.
    """

    name = "schur"
    linearization = "sparse"
    model_from_solve = True  # a direct factorization of a matrix whose products are not cheap
    failure_advice = SINGULAR_ADVICE

    def __init__(self, eliminate: Eliminate = None, reduced: str = "auto", max_dense: int = 2000,
                 backend: str = "auto"):
        if not (eliminate is None or isinstance(eliminate, (str, type, torch.Tensor))
                or (isinstance(eliminate, Sequence) and not isinstance(eliminate, bytes))):
            raise TypeError("Schur: eliminate must be None, a variable type or its name, a list of "
                            f"variables or names, or a tensor of columns; got {short_repr(eliminate)}")
        check_choice("Schur", "reduced", reduced, ("auto", "dense", "sparse"))
        check_number("Schur", "max_dense", max_dense, integer=True, minimum=0)
        check_choice("Schur", "backend", backend, BACKENDS)
        self.eliminate = eliminate
        self.reduced = reduced
        self.max_dense = max_dense
        self.backend = backend
        self.sparse = SparseCholesky(backend)
        self.columns: Optional[torch.Tensor] = None
        self.eliminated = ""  # what was eliminated, in words (set by setup)
        self._structures: Dict[int, Tuple[SparsePattern, SchurStructure]] = {}

    def __repr__(self) -> str:
        used = f", eliminated={self.eliminated!r}" if self.eliminated else ""
        return f"Schur(reduced={self.reduced!r}{used})"

    def setup(self, linearization) -> None:
        """Choose the eliminated columns from the linearization's evaluator (or take the given
        ones) and analyse the structure of its pattern (another pattern handed to ``factor`` is
        analysed there, once)."""
        self._structures = {}
        self.sparse.setup(linearization)
        if isinstance(self.eliminate, torch.Tensor):
            self.columns, self.eliminated = self._given_columns(), "given columns"
        else:
            self.columns, self.eliminated = eliminated_columns(linearization.evaluator, self.eliminate)
        pattern = getattr(linearization, "pattern", None)
        if isinstance(pattern, SparsePattern):
            self.structure(pattern)

    def _given_columns(self) -> torch.Tensor:
        columns = self.eliminate
        assert isinstance(columns, torch.Tensor)
        if columns.ndim != 2 or columns.dtype != torch.long:
            raise ValueError(f"Schur: eliminate columns must be an (n, d) int64 tensor, got "
                             f"{tuple(columns.shape)} {columns.dtype}")
        return columns.cpu()

    def structure(self, pattern: SparsePattern) -> SchurStructure:
        """The analysis of ``pattern`` (once per pattern)."""
        entry = self._structures.get(id(pattern))
        if entry is None or entry[0] is not pattern:
            if self.columns is None:
                if not isinstance(self.eliminate, torch.Tensor):
                    raise RuntimeError("Schur: setup(linearization) must run before factor (the "
                                       "optimizer calls it), or give eliminate= as columns")
                self.columns = self._given_columns()
            kept = pattern.dof - self.columns.numel()
            sparse = self.reduced == "sparse" or (self.reduced == "auto" and kept > self.max_dense)
            entry = (pattern, SchurStructure(pattern, self.columns, "sparse" if sparse else "dense"))
            self._structures[id(pattern)] = entry
        return entry[1]

    def factor(self, matrix: SparseMatrix) -> Factorization:
        if not isinstance(matrix, SparseMatrix):
            raise TypeError(f"Schur factors the SparseMatrix of a sparse linearization, got "
                            f"{type(matrix).__name__}")
        return _SchurFactorization(self, self.structure(matrix.pattern), matrix)
