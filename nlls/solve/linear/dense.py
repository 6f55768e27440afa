"""Dense batched linear solvers for the normal equations: Cholesky and LU."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from ..tracing import is_compiling
from .base import SINGULAR_ADVICE, Factorization, LinearSolver


def _eye_like(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[-1]
    return torch.eye(n, dtype=matrix.dtype, device=matrix.device).expand_as(matrix)


class _CholeskyFactorization(Factorization):
    def __init__(self, matrix: torch.Tensor):
        if matrix.requires_grad:
            with torch.no_grad():
                _, info = torch.linalg.cholesky_ex(matrix.detach())
            self.ok = info == 0
            # factor a safe matrix so failed elements put no NaN into the graph
            safe = torch.where(self.ok[:, None, None], matrix, _eye_like(matrix))
            self.factor = torch.linalg.cholesky_ex(safe)[0]
        else:
            factor, info = torch.linalg.cholesky_ex(matrix)
            self.ok = info == 0
            self.factor = torch.where(self.ok[:, None, None], factor, _eye_like(matrix))

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = torch.linalg.solve_triangular(self.factor, rhs[..., None], upper=False)
        x = torch.linalg.solve_triangular(self.factor.mT, y, upper=True)[..., 0]
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class _SmallCholeskyFactorization(Factorization):
    """Cholesky of many ``D x D`` matrices, ``D <= 3``, written out entry by entry.

    For thousands of tiny matrices the library kernels pay per-matrix overhead; the explicit
    formulas are a handful of elementwise operations on ``(B,)`` columns (much faster for large
    batches on the CPU, and fusable by ``torch.compile``). Same failure semantics: a pivot that is
    not positive (or not finite) marks the element as failed, and it gets a zero solution.
    """

    def __init__(self, matrix: torch.Tensor):
        size = matrix.shape[-1]
        ok = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)
        # row i holds the entries (i, 0..i); column j is filled at step j, so rows grow in order
        lower: List[List[torch.Tensor]] = [[] for _ in range(size)]
        for j in range(size):
            pivot = matrix[:, j, j] - sum((lower[j][k] ** 2 for k in range(j)), torch.zeros_like(ok, dtype=matrix.dtype))
            good = pivot > 0
            ok = ok & good
            lower[j].append(torch.where(good, pivot, torch.ones_like(pivot)).sqrt())
            for i in range(j + 1, size):
                dot = sum((lower[i][k] * lower[j][k] for k in range(j)), torch.zeros_like(pivot))
                lower[i].append((matrix[:, i, j] - dot) / lower[j][j])
        self.lower = lower
        self.ok = ok

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        L, size = self.lower, len(self.lower)
        y: List[torch.Tensor] = []
        for i in range(size):  # L y = rhs
            y.append((rhs[:, i] - sum((L[i][k] * y[k] for k in range(i)), torch.zeros_like(rhs[:, i]))) / L[i][i])
        entries: Dict[int, torch.Tensor] = {}
        for i in reversed(range(size)):  # L^T x = y
            entries[i] = (y[i] - sum((L[k][i] * entries[k] for k in range(i + 1, size)), torch.zeros_like(y[i]))) / L[i][i]
        x = torch.stack([entries[i] for i in range(size)], dim=-1)
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class DenseCholesky(LinearSolver):
    """Batched Cholesky factorization (``torch.linalg.cholesky_ex``) of the normal matrix.

    The fastest choice for symmetric positive definite systems. An element whose matrix is not
    positive definite is reported in ``ok`` and gets a zero step; no NaN is returned.
    Two triangular solves are used instead of ``cholesky_solve`` (capturable in CUDA graphs).
    Batches of at least ``small_batch`` matrices of size ``D <= 3`` use explicit formulas
    instead (:class:`_SmallCholeskyFactorization`: faster than the library for large batches on
    the CPU, slower for small ones; ``bench/bench_curve_fit.py`` measures both), so results
    agree across batch sizes to rounding, not bit for bit. Under ``torch.compile``
    (``optimize(compile=True)``) ``D <= 3`` systems use them at every batch size: compiled,
    they fuse into the surrounding kernels.

    Args:
        small_batch: batch size from which ``D <= 3`` systems use the explicit formulas.
    """

    name = "dense_cholesky"
    capturable = True
    failure_advice = SINGULAR_ADVICE

    def __init__(self, small_batch: int = 1024):
        if isinstance(small_batch, bool) or not isinstance(small_batch, int) or small_batch < 1:
            raise ValueError(f"DenseCholesky: small_batch must be a positive int, got {small_batch!r}")
        self.small_batch = small_batch

    def factor(self, matrix: torch.Tensor) -> Factorization:
        if matrix.shape[-1] <= 3 and (matrix.shape[0] >= self.small_batch or is_compiling()):
            return _SmallCholeskyFactorization(matrix)
        return _CholeskyFactorization(matrix)


class _LUFactorization(Factorization):
    def __init__(self, matrix: torch.Tensor):
        self.LU, self.pivots, info = torch.linalg.lu_factor_ex(matrix)
        self.ok = info == 0

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if rhs.device.type == "cuda":
            # lu_solve may take a MAGMA path on CUDA that cannot be captured in a CUDA graph;
            # the permutation and two triangular solves can (and eager runs the same thing)
            P, L, U = torch.lu_unpack(self.LU, self.pivots)
            y = torch.linalg.solve_triangular(L, P.mT @ rhs[..., None], upper=False, unitriangular=True)
            x = torch.linalg.solve_triangular(U, y, upper=True)[..., 0]
        else:
            x = torch.linalg.lu_solve(self.LU, self.pivots, rhs[..., None])[..., 0]
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class DenseLU(LinearSolver):
    """Batched LU factorization with partial pivoting (``torch.linalg.lu_factor_ex``).

    Slower than Cholesky but does not need positive definiteness; an exactly singular matrix is
    reported in ``ok`` and gets a zero step. On CUDA the solve is a permutation and two
    triangular solves (capturable in CUDA graphs).
    """

    name = "dense_lu"
    capturable = True
    failure_advice = SINGULAR_ADVICE

    def factor(self, matrix: torch.Tensor) -> Factorization:
        return _LUFactorization(matrix)
