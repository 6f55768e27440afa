"""Dense batched linear solvers for the normal equations: Cholesky and LU."""
from __future__ import annotations

from typing import Tuple

import torch

from .base import Factorization, LinearSolver

_ADVICE = (
    "the normal matrix is singular or not positive definite: some variable may be "
    "unconstrained by any cost function (add a prior), or use LevenbergMarquardt, whose damping "
    "makes the system solvable"
)


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


class DenseCholesky(LinearSolver):
    """Batched Cholesky factorization (``torch.linalg.cholesky_ex``) of the normal matrix.

    The fastest choice for symmetric positive definite systems. An element whose matrix is not
    positive definite is reported in ``ok`` and gets a zero step; no NaN is returned.
    Two triangular solves are used instead of ``cholesky_solve`` (capturable in CUDA graphs).
    """

    name = "dense_cholesky"
    failure_advice = _ADVICE

    def factor(self, matrix: torch.Tensor) -> Factorization:
        return _CholeskyFactorization(matrix)


class _LUFactorization(Factorization):
    def __init__(self, matrix: torch.Tensor):
        self.LU, self.pivots, info = torch.linalg.lu_factor_ex(matrix)
        self.ok = info == 0

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.linalg.lu_solve(self.LU, self.pivots, rhs[..., None])[..., 0]
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class DenseLU(LinearSolver):
    """Batched LU factorization with partial pivoting (``torch.linalg.lu_factor_ex``).

    Slower than Cholesky but does not need positive definiteness; an exactly singular matrix is
    reported in ``ok`` and gets a zero step.
    """

    name = "dense_lu"
    failure_advice = _ADVICE

    def factor(self, matrix: torch.Tensor) -> Factorization:
        return _LUFactorization(matrix)
