"""CHOLMOD through CVXOPT's wheel: :class:`~nlls.SparseCholesky`'s ``"cholmod"`` backend when
``cvxopt`` is installed (``pip install "nlls[cholmod]"``; no compiler or system library needed).

CHOLMOD picks a supernodal factorization where the fill is large (dense blocks through BLAS),
which is what makes it fast on graphs whose factor fills in: on the normal matrix of a 20,000-pose
pose graph it factors five times faster than QDLDL's scalar ``L D L^T``
(``bench/bench_sparse_factor.py``). The symbolic analysis (ordering, supernodes) is done once per
sparsity pattern and batch size; each iteration redoes the numeric factorization into a factor
object that no live factorization holds (CVXOPT's ``numeric`` overwrites its factor, so factors
are pooled as QDLDL's solvers are, :class:`~nlls.solve.linear.ldl.FactorPool`). A matrix that is not positive
definite makes CHOLMOD's Cholesky stop; which elements of a batch failed is then found by the
caller, one element at a time.

CVXOPT is GPL-3 licensed (CHOLMOD's supernodal module is GPL too), which is why it is an opt-in
extra and not part of the default install.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Optional

import numpy as np
import torch

from ..systems import SparsePattern
from .ldl import FactorPool, upper_triangle


def cvxopt_available() -> bool:
    """Whether the ``cvxopt`` package (with its CHOLMOD module) is installed."""
    return importlib.util.find_spec("cvxopt") is not None


class NotPositiveDefinite(Exception):
    """CHOLMOD stopped on a pivot that is not positive."""


class CholmodAnalysis:
    """The symbolic analysis of one pattern and batch size, and the factors that reuse it.

    Args:
        pattern: the sparsity pattern of one element.
        batch: the number of elements, factored as one block-diagonal matrix.
    """

    def __init__(self, pattern: SparsePattern, batch: int):
        from cvxopt import matrix

        self.positions, indptr, indices = upper_triangle(pattern, batch)
        self.size = batch * pattern.dof
        columns = np.repeat(np.arange(self.size), np.diff(indptr))
        self._rows = matrix(indices.astype(np.int64).tolist(), tc="i")
        self._columns = matrix(columns.astype(np.int64).tolist(), tc="i")
        self._pool = FactorPool()

    def _matrix(self, values: torch.Tensor):
        from cvxopt import matrix, spmatrix

        upper = values.detach()[:, self.positions.to(values.device)].to(torch.float64).cpu().numpy()
        return spmatrix(matrix(np.ascontiguousarray(upper.reshape(-1))), self._rows, self._columns,
                        (self.size, self.size))

    def factor(self, values: torch.Tensor, owner: Optional[object] = None) -> Any:
        """The CHOLMOD factor of ``values (batch, nnz)``, kept for ``owner`` (``None``: reusable
        at once).

        Raises:
            NotPositiveDefinite: some element is not positive definite.
        """
        from cvxopt import cholmod

        cholmod.options["supernodal"] = 2  # CHOLMOD's own choice of simplicial or supernodal
        matrix = self._matrix(values)
        entry = self._pool.acquire(owner, lambda: cholmod.symbolic(matrix, uplo="U"))
        try:
            cholmod.numeric(matrix, entry.factor)
        except ArithmeticError as exc:
            entry.hold(None)
            raise NotPositiveDefinite(str(exc)) from None
        return entry.factor

    @staticmethod
    def solve(factor: Any, rhs: np.ndarray) -> np.ndarray:
        """``A^{-1} rhs`` with a factor from :meth:`factor`."""
        from cvxopt import cholmod, matrix

        b = matrix(np.ascontiguousarray(rhs, dtype=np.float64))
        cholmod.solve(factor, b)
        return np.asarray(b).reshape(-1)

    @property
    def factors(self) -> int:
        """How many factors (numeric factorizations alive at once) the pool holds."""
        return len(self._pool.entries)
