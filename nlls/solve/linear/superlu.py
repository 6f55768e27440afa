"""SciPy's SuperLU as a Cholesky-like factorization (the ``"scipy"`` backend of
:class:`~nlls.SparseCholesky`): symmetric mode, diagonal pivots, the column order of a structure
found once and kept."""
from __future__ import annotations

import numpy as np


def superlu(csc, permc_spec: str):
    """SuperLU in symmetric mode with diagonal pivots (a Cholesky's work, done as an LU)."""
    import scipy.sparse.linalg

    return scipy.sparse.linalg.splu(csc, permc_spec=permc_spec, diag_pivot_thresh=0.0,
                                    options={"SymmetricMode": True})


class SuperLUOrdering:
    """SuperLU's fill-reducing order of one structure, applied symmetrically: ``order`` lists the
    original index of each permuted row and column, and ``permuted(data)`` is the CSC matrix
    ``A[order][:, order]`` from ``A``'s CSC values ``data`` (one gather: the positions were found
    once, by permuting the matrix of the entries' own indices)."""

    def __init__(self, csc, perm_c: np.ndarray):
        import scipy.sparse

        self.order = np.argsort(perm_c)
        size = csc.shape[0]
        # the entries' indices (1-based: a stored 0 would be dropped) through the permutation
        marked = scipy.sparse.csc_matrix((np.arange(1, csc.nnz + 1, dtype=np.float64), csc.indices, csc.indptr),
                                         shape=csc.shape)
        permuted = marked[self.order][:, self.order].tocsc()
        permuted.sort_indices()
        self.source = permuted.data.astype(np.int64) - 1
        self.indices, self.indptr, self.size = permuted.indices, permuted.indptr, size

    def permuted(self, data: np.ndarray):
        import scipy.sparse

        return scipy.sparse.csc_matrix((data[self.source], self.indices, self.indptr), shape=(self.size, self.size))

    def factor(self, data: np.ndarray) -> "PermutedLU":
        """SuperLU of the permuted matrix of ``A``'s CSC values ``data`` (no ordering of its own)."""
        return PermutedLU(superlu(self.permuted(data), "NATURAL"), self.order)


class PermutedLU:
    """SuperLU's factors of ``A[order][:, order]``, solving with ``A`` itself."""

    def __init__(self, lu, order: np.ndarray):
        self.lu, self.order = lu, order

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        x = np.empty_like(rhs)
        x[self.order] = self.lu.solve(rhs[self.order])
        return x
