"""QDLDL, the default CPU backend of :class:`~nlls.SparseCholesky`: an ``L D L^T`` factorization
whose symbolic analysis (an approximate minimum degree ordering and the elimination tree) is done
once per sparsity pattern and batch size, and whose numeric factorization is redone in place
every iteration.

The ``qdldl`` package (Apache 2.0, wheels for Linux, macOS and Windows, x86-64 and ARM) factors
quasi-definite matrices: a negative pivot does not stop it, only an exactly zero one does. So
whether the factorization is a Cholesky one is read from ``D``: an element of the batch is ``ok``
when every one of its pivots is positive (by Sylvester's law of inertia the matrix is then
positive definite). A batch is one block-diagonal matrix, so each element's pivots depend on its
own block only and one factorization tells the elements apart; after an exactly zero pivot the
later pivots are stale, and the caller factors the elements one by one instead.

A ``qdldl.Solver`` holds its numeric factors and ``update`` overwrites them. A factorization
still in use (an autograd graph keeps it for its backward solve, e.g. under the unroll backward
mode) must not be overwritten, so solvers are pooled: a factorization takes a solver no live
owner holds, or makes a new one (one more analysis).
"""
from __future__ import annotations

import importlib.util
import weakref
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

from ..systems import SparsePattern


def qdldl_available() -> bool:
    """Whether the ``qdldl`` package is installed."""
    return importlib.util.find_spec("qdldl") is not None


def upper_triangle(pattern: SparsePattern, batch: int) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The CSC upper triangle of ``batch`` copies of ``pattern`` on a block diagonal.

    The pattern is CSR and symmetric: its lower triangle (``col <= row``), read column-major, is
    the CSC upper triangle, already sorted.

    Returns:
        ``(positions (nnz_upper,), indptr (batch * dof + 1,), indices (batch * nnz_upper,))``:
        where each upper entry's value sits in the pattern's values, and the CSC arrays (int64).
    """
    rows, cols, dof = pattern.rows.numpy(), pattern.cols.numpy(), pattern.dof
    lower = cols <= rows
    positions = np.nonzero(lower)[0]
    counts = np.bincount(rows[lower], minlength=dof)
    offsets = np.arange(batch)[:, None]
    indptr = np.concatenate([[0], np.cumsum(np.tile(counts, batch))]).astype(np.int64)
    indices = (cols[lower][None, :] + offsets * dof).reshape(-1).astype(np.int64)
    return torch.from_numpy(positions), indptr, indices


class Pooled:
    """A numeric factorization object and, weakly, the object whose factorization it holds."""

    def __init__(self, factor: Any):
        self.factor = factor
        self.owner: Optional[weakref.ref] = None

    def free(self) -> bool:
        return self.owner is None or self.owner() is None

    def hold(self, owner: Optional[object]) -> None:
        """Keep the factorization for ``owner`` (``None``: reusable at once)."""
        self.owner = None if owner is None else weakref.ref(owner)


class FactorPool:
    """Numeric factorizations of one analysis that later ones must not overwrite while their
    owners live (see the module's description): a factorization takes an entry no live owner
    holds, or a new one."""

    def __init__(self) -> None:
        self.entries: List[Pooled] = []

    def acquire(self, owner: Optional[object], make: Callable[[], Any]) -> Pooled:
        """A free entry (``make()`` gives a new factorization object when none is), held for
        ``owner``."""
        entry = next((e for e in self.entries if e.free()), None)
        if entry is None:
            entry = Pooled(make())
            self.entries.append(entry)
        entry.hold(owner)
        return entry


class LDLAnalysis:
    """The symbolic analysis of one pattern and batch size, and the solvers that reuse it.

    Args:
        pattern: the sparsity pattern of one element.
        batch: the number of elements, factored as one block-diagonal matrix.
    """

    def __init__(self, pattern: SparsePattern, batch: int):
        import scipy.sparse

        self.batch, self.dof = batch, pattern.dof
        self.positions, indptr, indices = upper_triangle(pattern, batch)
        size = batch * pattern.dof
        # the identity on the pattern, to analyse with: its factorization never fails
        diagonal = indices == np.repeat(np.arange(size), np.diff(indptr))
        self._identity = scipy.sparse.csc_matrix((diagonal.astype(np.float64), indices, indptr),
                                                 shape=(size, size))
        self.matrix = self._identity.copy()  # the values to factor, set in place
        self._pool = FactorPool()

    def _new_solver(self) -> Any:
        import qdldl

        return qdldl.Solver(self._identity, upper=True)

    def factor(self, values: torch.Tensor, owner: Optional[object] = None) -> Tuple[Any, Optional[np.ndarray]]:
        """Factor ``values (batch, nnz)`` in place of a pooled solver.

        Args:
            values: the matrices' values on the pattern.
            owner: the object that keeps the factorization; the solver is not reused while it
                lives (``None``: reusable at once).

        Returns:
            ``(solver, ok)``: ``ok (batch,)`` bool, or ``None`` when an exactly zero pivot stopped
            the factorization (then only the failure is known, not which elements). A solver
            whose factorization failed somewhere is released at once: its factors are not used.
        """
        upper = values.detach()[:, self.positions.to(values.device)].to(torch.float64)
        self.matrix.data = np.ascontiguousarray(upper.cpu().numpy().reshape(-1))
        entry = self._pool.acquire(owner, self._new_solver)
        entry.factor.update(self.matrix, upper=True)
        _, pivots, order = entry.factor.factors()  # order: the AMD permutation of the analysis
        ok: Optional[np.ndarray] = None
        if not np.any(pivots == 0.0):
            in_original_order = np.empty_like(pivots)
            in_original_order[order] = pivots
            ok = (in_original_order.reshape(self.batch, self.dof) > 0).all(axis=1)
        if ok is None or not ok.all():
            entry.hold(None)
        return entry.factor, ok

    @property
    def solvers(self) -> int:
        """How many solvers (numeric factorizations alive at once) the pool holds."""
        return len(self._pool.entries)
