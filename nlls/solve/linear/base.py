"""The linear-solver interface: analyse structure once, factor per iteration, solve per right side.

A solver is configured once (constructor), told the problem's structure once (``setup``), then
per iteration factors the (damped) normal matrix (``factor``) and solves with the factorization
as many right-hand sides as needed (``Factorization.solve``): the step, and in the implicit
backward of ``OptimizationLayer`` the adjoint system with the same matrix.

What ``factor`` receives is declared by the class attribute ``linearization``
(:mod:`nlls.solve.systems`):

=============  ===========================================  ===============================
linearization  ``factor(matrix)`` receives                   built by
=============  ===========================================  ===============================
``"dense"``    a ``(B, D, D)`` tensor                        ``DenseLinearization``
``"sparse"``   a :class:`~nlls.solve.systems.SparseMatrix`    ``SparseLinearization``
``"jacobian"`` a :class:`~nlls.solve.systems.JacobianOperator` ``JacobianLinearization``
``"dense_jacobian"`` a :class:`~nlls.solve.systems.DenseJacobian` ``DenseJacobianLinearization``
=============  ===========================================  ===============================

The implicit backward with ``hessian="exact"`` builds a dense ``(B, D, D)`` matrix and needs a
``"dense"`` solver (or ``DenseQR``, which also factors a dense square matrix).

Failure is data, not an exception: ``Factorization.ok`` is ``(B,)`` and failed batch elements
get a zero solution (never NaN); the optimizer records them in its info, with the solver's
``failure_advice``.

A new solver is one subclass; registering it by name (for ``linear_solver="name"`` and YAML
configurations) is one line: ``nlls.solve.linear.register_linear_solver(MySolver)``.
"""
from __future__ import annotations

from typing import Tuple

import torch

SINGULAR_ADVICE = (
    "the normal matrix is singular or not positive definite: some variable may be "
    "unconstrained by any cost function (add a prior), or use LevenbergMarquardt, whose damping "
    "makes the system solvable"
)


class Factorization:
    """A factored batch of matrices; ``ok`` marks the elements whose factorization succeeded."""

    ok: torch.Tensor

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Solve ``M x = rhs`` for ``rhs (B, D)``.

        Returns:
            ``(x (B, D), ok (B,))``; failed elements have ``x = 0`` and ``ok = False``.
        """
        raise NotImplementedError

    def least_squares_step(self, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The step ``x = -M^{-1} g`` of the system that was factored, ``g (B, D)`` its gradient
        ``J^T r``; what the optimizers call for their step. By default ``solve(-g)``; a
        factorization of ``J`` itself (``DenseQR``) solves the least-squares problem from ``r``
        instead, which loses fewer digits when ``J`` is ill-conditioned."""
        return self.solve(-g)


class LinearSolver:
    """Base class of linear solvers.

    Attributes:
        name: the registry and config name (``linear_solver="name"``).
        linearization: what ``factor`` receives, ``"dense"``, ``"sparse"`` or ``"jacobian"``
            (see the module's table).
        capturable: ``factor`` and ``solve`` run on the device without host round-trips or
            uncapturable library routines, so a whole solve can be captured in a CUDA graph
            (``optimize(cuda_graph=True)``).
        failure_advice: what the optimizer's message tells the user when elements fail.
        model_from_solve: the step solves the damped system exactly (a direct factorization),
            and applying ``A`` costs enough that Levenberg-Marquardt should take its model's
            decrease from the solve's identity instead (the sparse and Schur solvers).
    """

    name = ""
    linearization = "dense"
    failure_advice = ""
    model_from_solve = False

    @property
    def capturable(self) -> bool:
        """Read-only: a subclass sets a class attribute, or a property where it depends on options."""
        return False

    def setup(self, linearization) -> None:
        """Called once per objective structure, before the first ``factor``, with the
        linearization (e.g. its sparsity pattern, for a symbolic analysis)."""

    def factor(self, matrix) -> Factorization:
        """Factor a batch of matrices of the declared ``linearization`` kind: ``(B, D, D)``
        tensor, :class:`~nlls.solve.systems.SparseMatrix` or
        :class:`~nlls.solve.systems.JacobianOperator`. Must not raise for a matrix it cannot
        factor: report it in ``Factorization.ok``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
