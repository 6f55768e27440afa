"""Null directions of ``A = J^T J`` and the matrix operations the covariance is built from.

``A`` comes in one of two kinds, as the linearizations make it (:mod:`nlls.solve.systems`): a
dense ``(B, D, D)`` tensor or a :class:`~nlls.solve.systems.SparseMatrix` (batched values on one
pattern). The helpers here work on both, differentiably where the covariance needs it.

**Which eigenvalues are zero.** An eigenvalue ``lambda`` of an element's ``A`` counts as zero when
``lambda <= threshold``, ``threshold = rcond * scale`` with ``scale`` the largest diagonal entry
of that element's ``A`` (which is at least ``lambda_max / n`` for ``n`` nonzeros per row, and at
most ``lambda_max``).

**Finding the null directions.** Dense: the eigendecomposition of ``A`` (float64).
Sparse: block inverse iteration. ``A + sigma I`` (``sigma = SHIFT * scale``, far above rounding
noise) is factored once with the sparse solver; ``m`` random vectors (8 to start) are multiplied
by its inverse and orthonormalized, and after each round the Rayleigh-Ritz values of ``A`` on
their span say how many are null. A null direction is amplified by ``1 / sigma`` per round, an
eigenvector of ``lambda`` by ``1 / (lambda + sigma)``, so the null space separates in a few rounds
when the smallest nonzero eigenvalue is well above ``sigma`` (on the 10,000-pose ``w10000.graph``
it is ``1e-9 * scale``, and two rounds do). ``sigma`` is ``1e-10`` times the scale (``1e4`` machine
epsilons of the objective's dtype for float32). The rounds stop when the count of null Ritz
values and the smallest non-null one have settled; the block doubles whenever fewer than
``GUARD`` of its vectors are non-null. Limits:
eigenvalues between ``threshold`` and about ``sigma`` separate slowly (at most
``MAX_ROUNDS`` rounds); a direction not found null leaves the gauge-fixed matrix singular, which
:func:`near_singular` then reports.
"""
from __future__ import annotations

from typing import Callable, Tuple, Union

import numpy as np
import torch

from ..solve.systems import SparseMatrix

Matrix = Union[torch.Tensor, SparseMatrix]

SHIFT = 1e-10  # the shift of the inverse iteration, relative to the scale (at least 100 thresholds)
BLOCK = 8  # vectors of the inverse iteration to start with
GUARD = 2  # non-null vectors kept in the block beside the null ones (it doubles to keep them)
SETTLED = 1e-2  # relative change of the first non-null Ritz value at which the rounds stop
MAX_ROUNDS = 50


def to_float64(matrix) -> Matrix:
    """``A`` (a dense tensor or a :class:`SparseMatrix`) in float64, differentiably."""
    if isinstance(matrix, torch.Tensor):
        return matrix.to(torch.float64)
    if not isinstance(matrix, SparseMatrix):
        raise TypeError(f"expected a dense tensor or a SparseMatrix, got {type(matrix).__name__}")
    return SparseMatrix(matrix.pattern, matrix.values.to(torch.float64))


def detach(matrix: Matrix) -> Matrix:
    if isinstance(matrix, torch.Tensor):
        return matrix.detach()
    return SparseMatrix(matrix.pattern, matrix.values.detach())


def diagonal(matrix: Matrix) -> torch.Tensor:
    """``(B, D)`` diagonal of ``A``."""
    if isinstance(matrix, torch.Tensor):
        return matrix.diagonal(dim1=-2, dim2=-1)
    return matrix.diagonal()


def matmul(matrix: Matrix, x: torch.Tensor) -> torch.Tensor:
    """``A X`` for ``X (B, D, m)``. Sparse: column by column and differentiable while autograd
    records; else, on the CPU, one SciPy CSR product per element (no graph needed there)."""
    if isinstance(matrix, torch.Tensor):
        return matrix @ x
    records = torch.is_grad_enabled() and (matrix.values.requires_grad or x.requires_grad)
    if records or x.device.type != "cpu":
        return torch.stack([matrix.matvec(column) for column in x.unbind(-1)], dim=-1)
    import scipy.sparse

    pattern, size = matrix.pattern, matrix.pattern.dof
    values, dense_x = matrix.values.detach().to(torch.float64).numpy(), x.detach().to(torch.float64).numpy()
    products = [scipy.sparse.csr_matrix((values[b], pattern.cols.numpy(), pattern.crow.numpy()),
                                        shape=(size, size)) @ dense_x[b] for b in range(values.shape[0])]
    return torch.from_numpy(np.stack(products)).to(x.dtype)


def finite(matrix: Matrix) -> torch.Tensor:
    """``(B,)``: the elements whose ``A`` is finite."""
    if isinstance(matrix, torch.Tensor):
        return torch.isfinite(matrix.detach()).flatten(1).all(dim=1)
    return torch.isfinite(matrix.values.detach()).all(dim=1)


def identity_where(matrix: Matrix, elements: torch.Tensor) -> Matrix:
    """``A`` with the matrices of ``elements (B,)`` replaced by the identity."""
    if isinstance(matrix, torch.Tensor):
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
        return torch.where(elements[:, None, None], eye, matrix)
    values = matrix.values
    _, _, positions, _ = matrix.pattern.on(values.device)
    identity = torch.zeros_like(values).index_fill(1, positions, 1.0)
    return SparseMatrix(matrix.pattern, torch.where(elements[:, None], identity, values))


def with_fixed(matrix: Matrix, fixed: torch.Tensor, scale: torch.Tensor) -> Matrix:
    """``A`` with the rows and columns of the ``fixed (B, D)`` coordinates cleared and ``scale
    (B,)`` on their diagonal: the free block ``A_ff`` beside a scaled identity (differentiable)."""
    on_diagonal = fixed.to(scale.dtype) * scale[:, None]
    if isinstance(matrix, torch.Tensor):
        keep = ~(fixed[:, :, None] | fixed[:, None, :])
        return torch.where(keep, matrix, torch.zeros_like(matrix)) + torch.diag_embed(on_diagonal)
    rows, cols, _, _ = matrix.pattern.on(matrix.values.device)
    keep = ~(fixed[:, rows] | fixed[:, cols])
    values = torch.where(keep, matrix.values, torch.zeros_like(matrix.values))
    return SparseMatrix(matrix.pattern, values).add_diagonal(on_diagonal)


def solve_columns(factorization, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(M^-1 X (B, D, m), ok (B,))`` with a linear solver's factorization, column by column."""
    ok = torch.ones(rhs.shape[0], dtype=torch.bool, device=rhs.device)
    columns = []
    for column in rhs.unbind(-1):
        x, solved = factorization.solve(column)
        columns.append(x)
        ok = ok & solved
    if not columns:
        return rhs, ok
    return torch.stack(columns, dim=-1), ok


def _random(batch: int, size: int, count: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    out = torch.randn(batch, size, count, generator=generator, dtype=torch.float64)
    return out.to(device=like.device, dtype=like.dtype)


def orthonormalize(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the span of ``basis (B, D, m)``, ``D >> m``: shifted Cholesky QR
    followed by two plain ones (Fukaya et al., "Shifted Cholesky QR for computing the QR
    factorization of ill-conditioned matrices", 2020), matrix products instead of Householder
    steps; Householder QR where a Cholesky fails (a basis beyond ``1 / eps`` in condition)."""
    size, width = basis.shape[-2:]
    eye = torch.eye(width, dtype=basis.dtype, device=basis.device)
    q = basis / basis.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(basis.dtype).tiny)
    for shifted in (True, False, False):
        gram = q.mT @ q
        if shifted:
            gram = gram + 11 * (size * width + width * (width + 1)) * torch.finfo(basis.dtype).eps * (
                gram.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] * eye)
        factor, info = torch.linalg.cholesky_ex(gram)
        if bool((info != 0).any()):
            return torch.linalg.qr(basis).Q
        q = torch.linalg.solve_triangular(factor, q.mT, upper=False).mT
    return q


def _ritz(matrix: Matrix, basis: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rayleigh-Ritz of ``A`` on the span of ``basis (B, D, m)``: ascending values ``(B, m)`` and
    their vectors ``(B, D, m)``."""
    q = orthonormalize(basis)
    small = q.mT @ matmul(matrix, q)
    values, vectors = torch.linalg.eigh(0.5 * (small + small.mT))
    return values, q @ vectors


def null_space_dense(matrix: torch.Tensor, threshold: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(count (B,), basis (B, D, k))``: the eigenvectors of the eigenvalues at most
    ``threshold (B,)``, padded with zero columns to the largest count ``k``."""
    values, vectors = torch.linalg.eigh(matrix.detach())
    null = values <= threshold[:, None]
    return _padded(null.sum(dim=1), vectors)


def _padded(count: torch.Tensor, vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` columns of ``vectors`` (ascending eigenvalues), zero beyond."""
    width = int(count.max()) if count.numel() else 0
    basis = vectors[..., :width]
    keep = torch.arange(width, device=count.device)[None, :] < count[:, None]
    return count, basis * keep[:, None, :].to(basis.dtype)


def null_space_iterative(matrix: Matrix, factor: Callable, threshold: torch.Tensor, scale: torch.Tensor,
                         noise: float = 2.0 ** -52, seed: int = 0
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(count (B,), basis (B, D, k), ok (B,))`` by block inverse iteration (the module docs);
    ``factor(M)`` factors a matrix of ``A``'s kind with the sparse solver, ``noise`` is the
    machine epsilon of the dtype ``A`` was computed in (the shift stays above its rounding)."""
    matrix = detach(matrix)
    shift = scale * max(SHIFT, 1e4 * noise)
    ones = torch.ones_like(diagonal(matrix))
    shifted = factor(matrix + torch.diag_embed(shift[:, None] * ones) if isinstance(matrix, torch.Tensor)
                     else matrix.add_diagonal(shift[:, None] * ones))
    batch, size = ones.shape
    width = min(BLOCK, size)
    x = _random(batch, size, width, ones, seed)
    ok = torch.ones(batch, dtype=torch.bool, device=ones.device)
    previous = None
    with torch.no_grad():
        for _ in range(MAX_ROUNDS):
            y, solved = solve_columns(shifted, x)
            ok = ok & solved
            values, x = _ritz(matrix, y)
            count = (values <= threshold[:, None]).sum(dim=1)
            if bool((count > width - GUARD).any()) and width < size:  # room for guard vectors
                grown = min(2 * width, size)
                x = torch.cat([x, _random(batch, size, grown - width, ones, seed + width)], dim=-1)
                width, previous = grown, None
                continue
            guard = values.gather(1, count.clamp_max(width - 1)[:, None])[:, 0]  # the first non-null
            if previous is not None and bool((count == previous[0]).all()) and bool(
                    ((guard - previous[1]).abs() <= SETTLED * guard.abs()).all()):
                break
            previous = (count, guard)
    count, basis = _padded(count, x)
    return count, basis, ok


def choose_gauge(basis: torch.Tensor, count: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinates to hold fixed so that the rest of ``A`` is nonsingular: per element ``count``
    coordinates on which the null basis ``(B, D, k)`` has the best-conditioned rows (greedy
    column-pivoted QR of ``basis^T``).

    Returns:
        ``fixed (B, D)`` bool, ``picks (B, k)`` the chosen coordinates and ``valid (B, k)``
        (``picks[b, j]`` is used when ``j < count[b]``).
    """
    batch, size, width = basis.shape
    rest = basis.clone()
    fixed = torch.zeros(batch, size, dtype=torch.bool, device=basis.device)
    picks = torch.zeros(batch, width, dtype=torch.long, device=basis.device)
    rows = torch.arange(batch, device=basis.device)
    for j in range(width):
        norms = rest.norm(dim=-1).masked_fill(fixed, -1.0)
        pick = norms.argmax(dim=-1)
        direction = rest[rows, pick]
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(basis.dtype).tiny)
        rest = rest - (rest @ direction[:, :, None]) * direction[:, None, :]
        valid = count > j
        picks[:, j] = pick
        fixed[rows[valid], pick[valid]] = True
    valid = torch.arange(width, device=basis.device)[None, :] < count[:, None]
    return fixed, picks, valid


def near_singular(matrix: Matrix, factorization, threshold: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``(B,)``: elements whose (factored) ``M`` has an eigenvalue at most ``threshold``.

    Dense: the eigenvalues themselves. Sparse: two rounds of inverse iteration on two vectors
    with the factorization of ``M`` itself (a near-null direction is amplified by the inverse of
    its tiny eigenvalue, so it dominates at once); its smallest Ritz value bounds the smallest
    eigenvalue from above."""
    matrix = detach(matrix)
    with torch.no_grad():
        if isinstance(matrix, torch.Tensor):
            return torch.linalg.eigvalsh(matrix)[:, 0] <= threshold
        ones = diagonal(matrix)
        x = _random(ones.shape[0], ones.shape[1], min(2, ones.shape[1]), ones, seed)
        for _ in range(2):
            x = orthonormalize(solve_columns(factorization, x)[0])
        values, _ = _ritz(matrix, x)
        return values[:, 0] <= threshold


__all__ = ["orthonormalize", "Matrix", "SHIFT", "BLOCK", "GUARD", "SETTLED", "MAX_ROUNDS", "to_float64", "detach",
           "diagonal", "matmul", "finite", "identity_where", "with_fixed", "solve_columns", "null_space_dense",
           "null_space_iterative", "choose_gauge", "near_singular"]
