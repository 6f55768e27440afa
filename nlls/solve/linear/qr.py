"""Dense QR on the Jacobian itself: least squares without forming ``J^T J``.

Cholesky and LU factor the normal matrix ``A = J^T J``, whose condition number is the square of
``J``'s: with ``cond(J) = 1e10`` in float64 the normal equations keep no digit, while a QR
factorization of ``J`` keeps about six. :class:`DenseQR` receives the dense Jacobian
(``linearization = "dense_jacobian"``, :class:`~nlls.solve.systems.DenseJacobian`) and factors,
batched (``torch.linalg.qr`` on ``(B, M + D, D)``), the stacked matrix::

    [ J             ]  = Q R        (J^T J + diag(shift) = R^T R)
    [ diag(sqrt(shift)) ]

where ``shift`` is Levenberg-Marquardt's ``lambda D`` (absent for Gauss-Newton). The optimizers'
step (:meth:`~nlls.solve.linear.base.Factorization.least_squares_step`) is then the least-squares
solution ``R^{-1} Q^T [-r; 0]``, from the residual ``r`` itself; any other right side
(``solve(rhs)``, e.g. the implicit backward's adjoint system with the same matrix) is two
triangular solves with ``R^T R``. Robust losses need nothing more: the linearization hands over
the corrected ``(J', r')``.

A rank-deficient ``J`` (Gauss-Newton on an unconstrained variable, fewer residuals than unknowns)
is reported per element: ``ok`` is false where a diagonal entry of ``R`` is not above
``max(M, D) * eps`` times the largest one (Householder QR without pivoting: a column that
depends on the ones before it leaves a rounding-sized pivot), and that element's solution is
zero, never NaN; under autograd the failed elements are factored as a safe identity, so the
gradients of the others stay finite.

Given a plain square ``(B, D, D)`` matrix instead (the implicit backward's ``hessian="exact"``
builds one), it factors that matrix by QR and solves with it the same way.

Memory: ``J`` and ``Q`` hold ``B * (M + D) * D`` numbers each; the time per factorization is
``O(B M D^2)``, about twice a Cholesky's on ``J^T J`` plus forming it. Use it when accuracy on
ill-conditioned problems matters more than speed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..systems import DenseJacobian
from .base import Factorization, LinearSolver

QR_ADVICE = (
    "the Jacobian is rank deficient: some variable may be unconstrained by any cost function, "
    "or there are fewer residuals than unknowns (add a prior), or use LevenbergMarquardt, whose "
    "damping makes the least-squares problem full rank"
)


def _stacked(matrix: DenseJacobian) -> torch.Tensor:
    """``[J; diag(sqrt(shift))]`` (``J`` alone without a shift), padded with zero rows to at least
    ``D`` rows so that ``R`` is square."""
    jacobian = matrix.jacobian
    batch, rows, dof = jacobian.shape
    pieces = [jacobian]
    if matrix.shift is not None:
        shift = matrix.shift
        positive = shift > 0
        # sqrt at 0 has an infinite derivative: zero shifts (no damping) take a constant 0
        root = torch.where(positive, torch.where(positive, shift, torch.ones_like(shift)).sqrt(),
                           torch.zeros_like(shift))
        pieces.append(torch.diag_embed(root))
        rows += dof
    if rows < dof:
        pieces.append(jacobian.new_zeros(batch, dof - rows, dof))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def _full_rank(R: torch.Tensor, rows: int) -> torch.Tensor:
    """``(B,)``: every diagonal entry of ``R`` above ``max(rows, D) * eps`` times the largest."""
    pivots = R.diagonal(dim1=-2, dim2=-1).abs()
    largest = pivots.amax(dim=-1)
    tolerance = max(rows, R.shape[-1]) * torch.finfo(R.dtype).eps
    return torch.isfinite(pivots).all(dim=-1) & (largest > 0) & (pivots.amin(dim=-1) > tolerance * largest)


def _safe(matrix: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``matrix (B, rows, D)`` with the failed elements replaced by ``[I; 0]``."""
    eye = torch.eye(matrix.shape[-2], matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return torch.where(ok[:, None, None], matrix, eye.expand_as(matrix))


class _QRFactorization(Factorization):
    """``Q R`` of a batch of tall matrices ``(B, rows, D)``; ``residual`` (B, M) the right side of
    the least-squares problem in the first ``M`` rows (``None`` for a square system)."""

    def __init__(self, matrix: torch.Tensor, residual: Optional[torch.Tensor]):
        rows = matrix.shape[-2]
        if matrix.requires_grad:
            with torch.no_grad():
                self.ok = _full_rank(torch.linalg.qr(matrix.detach(), mode="r")[1], rows)
            # factor a safe matrix so failed elements put no NaN into the graph
            self.Q, R = torch.linalg.qr(_safe(matrix, self.ok))
        else:
            self.Q, R = torch.linalg.qr(matrix)
            self.ok = _full_rank(R, rows)
            eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
            R = torch.where(self.ok[:, None, None], R, eye.expand_as(R))
        self.R = R
        self.residual = residual

    def _finish(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.residual is None:  # a square matrix M = Q R: x = R^-1 Q^T rhs
            y = self.Q.mT @ rhs[..., None]
        else:  # M = R^T R
            y = torch.linalg.solve_triangular(self.R.mT, rhs[..., None], upper=False)
        return self._finish(torch.linalg.solve_triangular(self.R, y, upper=True)[..., 0])

    def least_squares_step(self, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.residual is None:
            return self.solve(-g)
        top = self.Q[:, : self.residual.shape[-1]]  # the rows of J; the others' right side is 0
        y = top.mT @ (-self.residual)[..., None]
        return self._finish(torch.linalg.solve_triangular(self.R, y, upper=True)[..., 0])


class DenseQR(LinearSolver):
    """Batched Householder QR of the Jacobian (``torch.linalg.qr``), never forming ``J^T J``.

    The accurate choice for ill-conditioned problems (the normal equations square the condition
    number; see the module's description). Gauss-Newton's step is the least-squares solution of
    ``J delta = -r``, Levenberg-Marquardt's that of ``[J; sqrt(lambda D)] delta = [-r; 0]``. A
    rank-deficient ``J`` is reported per element in ``ok`` (zero step, no NaN). Works with every
    optimizer and backward mode, compiled too; not declared capturable in CUDA graphs
    (``torch.linalg.qr`` may take library paths on CUDA that synchronize with the host).
    """

    name = "dense_qr"
    linearization = "dense_jacobian"
    failure_advice = QR_ADVICE

    def factor(self, matrix) -> Factorization:
        if isinstance(matrix, DenseJacobian):
            return _QRFactorization(_stacked(matrix), matrix.residual)
        if isinstance(matrix, torch.Tensor) and matrix.ndim == 3 and matrix.shape[-1] == matrix.shape[-2]:
            return _QRFactorization(matrix, None)
        raise TypeError(f"DenseQR factors the DenseJacobian of a dense_jacobian linearization or a "
                        f"(B, D, D) tensor, got {type(matrix).__name__}")
