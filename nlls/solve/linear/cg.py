"""Conjugate gradient: matrix-free, batched, on any device.

Solves ``A x = b`` for the symmetric positive definite ``A = J^T J (+ damping)`` using only
products ``A v = J^T (J v)`` computed from the Jacobian blocks (``JacobianLinearization``), so
``A`` is never formed: memory stays linear in the number of Jacobian entries, which suits very
large problems and GPUs. Every batch element runs its own recurrence; an element whose relative
residual ``||b - A x|| / ||b||`` falls below ``tolerance`` stops changing (a mask, no host sync).

Preconditioners: ``"jacobi"`` divides by ``diag(A)``; ``"block_jacobi"`` solves with the
``dof x dof`` diagonal block of each variable (better for rotations and poses, whose tangent
coordinates are coupled); ``None`` for plain CG.

CG returns an approximate solution after ``max_iterations``; inside Levenberg-Marquardt an
inexact step is still judged by the actual decrease, so this is safe. Such elements keep
``ok = True``; the factorization's ``converged (B,)`` says which elements reached ``tolerance``
in the last solve. Solves are differentiable by autograd through the iterations (unrolled); the
implicit backward runs CG again on the adjoint.

A singular system is not solved quietly: CG converges on a consistent singular system (the normal
equations of Gauss-Newton always are) without ever seeing its null directions, so an element is
reported failed (``ok = False``, the optimizer then names the unconstrained variables) when

* the diagonal of ``A`` has a zero (or negative, or non-finite) entry, or with ``block_jacobi`` a
  diagonal block of some variable is not positive definite (its Cholesky fails): a coordinate, or
  a combination of one variable's coordinates, that no residual constrains (damping removes it);
* a search direction ``p`` with no curvature, ``p^T A p <= eps * |p|^2 * max diag(A)``, is met
  before the residual reaches ``tolerance`` (a singular or indefinite system along ``p``).

A gauge freedom spread over many variables (a pose graph without a prior) shows in neither; the
Gauss-Newton step CG returns there is the minimum-norm one, and ``nlls.diagnose`` finds it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..checks import check_choice, check_number
from .base import Factorization, LinearSolver

PRECONDITIONERS = (None, "jacobi", "block_jacobi")


class _CGFactorization(Factorization):
    def __init__(self, solver: "ConjugateGradient", operator):
        self.solver = solver
        self.operator = operator
        diagonal = operator.diagonal()
        with torch.no_grad():
            self.scale = diagonal.detach().abs().amax(dim=-1)  # (B,)
            self.ok = torch.isfinite(diagonal).all(dim=-1) & (diagonal > 0).all(dim=-1)
        self.converged = torch.ones_like(self.ok)  # set by solve
        self._precondition = self._make_preconditioner(diagonal)

    def _make_preconditioner(self, diagonal: torch.Tensor):
        kind = self.solver.preconditioner
        if kind is None:
            return lambda r: r
        if kind == "jacobi":
            inverse = 1.0 / diagonal.clamp_min(1e-12)
            return lambda r: inverse * r
        evaluator = self.operator.evaluator
        inverses = []
        for block, values in zip(evaluator.blocks, self.operator.diagonal_blocks()):
            with torch.no_grad():  # a block that is not positive definite: an unconstrained direction
                info = torch.linalg.cholesky_ex(values.detach())[1]  # (N, B)
                self.ok = self.ok & (info == 0).all(dim=0)
            eye = torch.eye(block.dof, dtype=values.dtype, device=values.device)
            scale = values.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)[..., None]
            safe = values + 1e-12 * (scale + 1.0) * eye  # guard unconstrained variables
            inverses.append(torch.linalg.inv(safe))  # (N, B, dof, dof)

        def apply(r):
            pieces = []
            for block, inverse in zip(evaluator.blocks, inverses):
                local = r[:, block.offset: block.offset + block.size]
                local = local.reshape(r.shape[0], len(block.variables), block.dof).transpose(0, 1)
                z = (inverse @ local[..., None])[..., 0]
                pieces.append(z.transpose(0, 1).reshape(r.shape[0], -1))
            return torch.cat(pieces, dim=1)

        return apply

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        matvec, precondition = self.operator.matvec, self._precondition
        tolerance = self.solver.tolerance
        x = torch.zeros_like(rhs)
        r = rhs
        z = precondition(r)
        p = z
        rz = (r * z).sum(-1)
        target = tolerance * rhs.norm(dim=-1)
        flat = torch.finfo(rhs.dtype).eps * self.scale.to(rhs.dtype)  # no curvature below this
        broken = torch.zeros_like(self.ok)
        for _ in range(self.solver.max_iterations):
            active = (r.norm(dim=-1) > target) & ~broken
            ap = matvec(p)
            pap = (p * ap).sum(-1)
            curved = pap > flat * (p * p).sum(-1)
            broken = broken | (active & ~curved).detach()
            active = active & curved
            alpha = torch.where(active, rz / torch.where(curved, pap, torch.ones_like(pap)),
                                torch.zeros_like(pap))
            x = x + alpha[:, None] * p
            r = r - alpha[:, None] * ap
            z = precondition(r)
            rz_new = (r * z).sum(-1)
            beta = torch.where(active & (rz != 0), rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)),
                               torch.zeros_like(rz))
            p = torch.where(active[:, None], z + beta[:, None] * p, p)
            rz = torch.where(active, rz_new, rz)
        self.converged = (r.norm(dim=-1) <= target).detach()
        ok = torch.isfinite(x).all(dim=-1) & self.ok & ~broken
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class ConjugateGradient(LinearSolver):
    """Preconditioned conjugate gradient on ``J^T J`` products (see the module docs).

    Args:
        max_iterations: CG iterations per solve.
        tolerance: relative residual at which an element stops (finite, >= 0).
        preconditioner: ``"block_jacobi"`` (default), ``"jacobi"`` or ``None``.
    """

    name = "cg"
    linearization = "jacobian"
    failure_advice = ("conjugate gradient met a singular system (a variable or coordinate no residual "
                      "constrains: add a prior, or use LevenbergMarquardt, whose damping makes it solvable) "
                      "or produced non-finite values")

    def __init__(self, max_iterations: int = 100, tolerance: float = 1e-10,
                 preconditioner: Optional[str] = "block_jacobi"):
        try:
            check_number(self, "max_iterations", max_iterations, integer=True, minimum=1)
            check_number(self, "tolerance", tolerance, minimum=0)
        except TypeError as exc:  # a wrong type is a bad value of the option, as before
            raise ValueError(str(exc)) from None
        check_choice(type(self).__name__, "preconditioner", preconditioner, PRECONDITIONERS)
        self.max_iterations = max_iterations
        self.tolerance = float(tolerance)
        self.preconditioner = preconditioner

    @property
    def capturable(self) -> bool:
        # a fixed number of masked iterations: no host round-trip; the block-Jacobi
        # preconditioner inverts with torch.linalg.inv, which may take uncapturable paths on CUDA
        return self.preconditioner != "block_jacobi"

    def factor(self, operator) -> Factorization:
        return _CGFactorization(self, operator)

    def __repr__(self) -> str:
        return (f"ConjugateGradient(max_iterations={self.max_iterations}, tolerance={self.tolerance}, "
                f"preconditioner={self.preconditioner!r})")
