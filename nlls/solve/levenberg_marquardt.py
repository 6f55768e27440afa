"""Levenberg-Marquardt: Gauss-Newton with a damping that adapts per batch element.

The step solves ``(J^T J + lambda D) delta = -J^T r``. A small ``lambda`` gives the Gauss-Newton
step, a large one a short gradient-descent step, and any ``lambda > 0`` makes the system solvable
even when some variable is unconstrained. ``D`` is the identity or, with ``diagonal_scaling``,
Marquardt's ``diag(J^T J)`` (clamped below by 1e-6, as Ceres does), which makes the step invariant
to the scale of each unknown.

With ``jacobi_scaling`` (Ceres's default) the columns of ``J`` are scaled by
``s_j = 1 / (1 + sqrt((J^T J)_jj))``, computed once at the start of the solve, and the damping is
applied in the scaled space: ``D~ = clamp(diag(S J^T J S), 1e-6, 1e32)`` with ``diagonal_scaling``
(Ceres's Levenberg-Marquardt), the identity without. Solving ``(S A S + lambda D~) y = -S g`` and
unscaling ``delta = S y`` is the same as solving ``(A + lambda S^-1 D~ S^-1) delta = -g``, which is
what is done (one damped system for every linear solver; Cholesky's accuracy does not depend on a
diagonal scaling of the matrix). The scaling makes the damping of an unknown follow its own
curvature at the start, so one damping value suits unknowns of very different scales.

With ``adaptive_damping`` a step is judged by the ratio of the actual to the predicted decrease,
``rho = (e - e') / (-(g.delta + 0.5 delta^T A delta))``. It is accepted when ``rho`` exceeds
``min_relative_decrease`` and ``lambda`` is then scaled by ``max(1/3, 1 - (2 rho - 1)^3)``;
otherwise it is rejected, the values stay, and ``lambda`` grows by a factor that doubles with each
consecutive rejection (Nielsen's rule, as in Ceres). With ``damping_factor`` ``f`` the damping
is instead divided by ``f`` after every accepted step and multiplied by ``f`` after every rejected
one (GTSAM's default rule, ``f = 10``): on large, mildly nonlinear problems such as pose graphs
it reaches Gauss-Newton's fast convergence in fewer steps, while Nielsen's rule is the more
careful one on hard small problems (the library default). An element whose damping passes
``max_damping`` can decrease no further and stops as converged. Without ``adaptive_damping`` the
damping stays fixed and every finite step is taken (a damped Gauss-Newton, convenient to unroll).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..core.objective import Objective
from .checks import check_bool, check_number
from .linear import LinearSolver
from .optimizer import Optimizer
from .termination import ABS_ERR_TOLERANCE, FUNCTION_TOLERANCE, GRADIENT_TOLERANCE, PARAMETER_TOLERANCE

MIN_DIAGONAL, MAX_DIAGONAL = 1e-6, 1e32  # Ceres's clamp of the scaled diagonal
MIN_FACTOR_DAMPING = 1e-10  # with damping_factor, the damping's floor relative to the initial one
RESOLUTION = 64  # cost changes within this many eps of the cost are rounding noise


@dataclass
class DampingState:
    """Levenberg-Marquardt's state per batch element: the damping ``lambda``, the factor by
    which it grows at the next rejected step, and with ``jacobi_scaling`` the column scales
    ``(B, D)`` (0 until the first step sets them)."""

    damping: torch.Tensor
    growth: torch.Tensor
    scale: Optional[torch.Tensor] = None


class LevenbergMarquardt(Optimizer):
    """Levenberg-Marquardt with per-element adaptive damping.

    ``objective``, ``linear_solver``, ``max_iterations``, ``step_size``, ``abs_err_tolerance``,
    ``rel_err_tolerance``, ``check_every``, ``function_tolerance``, ``gradient_tolerance`` and
    ``parameter_tolerance`` are :class:`~nlls.solve.optimizer.Optimizer`'s.

    Args:
        damping: initial ``lambda``.
        adaptive_damping: adapt ``lambda`` and reject steps that do not decrease the error.
        diagonal_scaling: damp with ``diag(J^T J)`` instead of the identity.
        min_relative_decrease: smallest ``rho`` for an accepted step.
        max_damping: past it an element stops (it cannot decrease further).
        jacobi_scaling: damp in the space of Jacobian columns scaled to unit size (see the
            module's description).
        damping_factor: ``None`` for Nielsen's rule, or a number ``> 1``: the fixed factor by
            which an accepted step divides the damping (never below 1e-10 times ``damping``) and
            a rejected one multiplies it.
    """

    # the base's keyword arguments are restated (not **kwargs): one signature for users, editors and
    # the YAML configuration, which reads its defaults from it
    def __init__(
        self,
        objective: Objective,
        linear_solver: Union[str, LinearSolver] = "dense_cholesky",
        max_iterations: int = 20,
        step_size: float = 1.0,
        abs_err_tolerance: float = ABS_ERR_TOLERANCE,
        rel_err_tolerance: Optional[float] = None,
        damping: float = 1e-3,
        adaptive_damping: bool = True,
        diagonal_scaling: bool = False,
        min_relative_decrease: float = 1e-3,
        max_damping: float = 1e16,
        check_every: int = 1,
        function_tolerance: float = FUNCTION_TOLERANCE,
        gradient_tolerance: float = GRADIENT_TOLERANCE,
        parameter_tolerance: float = PARAMETER_TOLERANCE,
        jacobi_scaling: bool = False,
        damping_factor: Optional[float] = None,
    ):
        super().__init__(
            objective, linear_solver=linear_solver, max_iterations=max_iterations,
            step_size=step_size, abs_err_tolerance=abs_err_tolerance,
            rel_err_tolerance=rel_err_tolerance, check_every=check_every,
            function_tolerance=function_tolerance, gradient_tolerance=gradient_tolerance,
            parameter_tolerance=parameter_tolerance,
        )
        check_number(self, "damping", damping, minimum=0, open_minimum=True)
        check_number(self, "min_relative_decrease", min_relative_decrease, minimum=0)
        check_number(self, "max_damping", max_damping, minimum=damping, open_minimum=True)
        check_bool("LevenbergMarquardt", "adaptive_damping", adaptive_damping)
        check_bool("LevenbergMarquardt", "diagonal_scaling", diagonal_scaling)
        check_bool("LevenbergMarquardt", "jacobi_scaling", jacobi_scaling)
        if damping_factor is not None:
            check_number(self, "damping_factor", damping_factor, minimum=1, open_minimum=True)
        self.damping_factor = None if damping_factor is None else float(damping_factor)
        self.jacobi_scaling = jacobi_scaling
        self.damping = float(damping)
        self.adaptive_damping = adaptive_damping
        self.diagonal_scaling = diagonal_scaling
        self.min_relative_decrease = float(min_relative_decrease)
        self.max_damping = float(max_damping)

    def init_step_state(self, error) -> DampingState:
        scale = error.new_zeros(error.shape[0], self.evaluator.dof) if self.jacobi_scaling else None
        return DampingState(damping=torch.full_like(error, self.damping),
                            growth=torch.full_like(error, 2.0), scale=scale)

    def _scale(self, system, step_state: DampingState) -> Optional[torch.Tensor]:
        """The column scales: those of the first step, set from this system where still 0."""
        if step_state.scale is None:
            return None
        fresh = 1.0 / (1.0 + system.operator().diagonal().clamp_min(0.0).sqrt())
        return torch.where(step_state.scale > 0, step_state.scale, fresh)

    def damped(self, system, step_state: DampingState):
        """``A + lambda D`` for the step, ``D`` as the settings say (see the module's description)."""
        diagonal = self._diagonal(system, step_state)
        if diagonal is None:
            return system.damped(step_state.damping)
        return system.operator().add_diagonal(step_state.damping[:, None] * diagonal)

    def _diagonal(self, system, step_state: DampingState) -> Optional[torch.Tensor]:
        """``D``'s diagonal ``(B, D)`` (``None``: the identity)."""
        scale = self._scale(system, step_state)
        if scale is None:
            return system.operator().diagonal().clamp_min(MIN_DIAGONAL) if self.diagonal_scaling else None
        if self.diagonal_scaling:
            return (system.operator().diagonal() * scale ** 2).clamp(MIN_DIAGONAL, MAX_DIAGONAL) / scale ** 2
        return scale ** -2

    def _model_decrease(self, system, step_state: DampingState, delta) -> torch.Tensor:
        """The linear model's decrease ``-(g.s + 0.5 s^T A s)`` for the step ``s = step_size delta``.

        A direct solver of a sparse or Schur system (``linear_solver.model_from_solve``) solved
        ``(A + lambda D) delta = -g``, so ``delta^T A delta = -g.delta - lambda delta^T D delta``
        and no product with ``A`` is needed (on bundle adjustment that product costs a third of a
        factorization). Otherwise, and with box bounds (their steps are projected), ``A`` is
        applied: the dense solvers' products are cheap and exact to rounding on ill-conditioned
        problems."""
        if not self.linear_solver.model_from_solve or self.objective.bounds:
            return system.quadratic_decrease(delta * self.step_size)
        diagonal = self._diagonal(system, step_state)
        g_delta = (system.g * delta).sum(-1)
        d_delta = (delta * delta if diagonal is None else diagonal * delta * delta).sum(-1)
        a_delta = -g_delta - step_state.damping * d_delta  # delta^T A delta
        size = self.step_size
        return -(size * g_delta + 0.5 * size * size * a_delta)

    @property
    def checks_steps(self) -> bool:
        return self.adaptive_damping

    def damping_of(self, step_state: DampingState):
        return step_state.damping

    def compute_step(self, system, step_state: DampingState):
        return self.linear_solver.factor(self.damped(system, step_state)).least_squares_step(system.g)

    def accept(self, system, step_state: DampingState, delta, solved, error, new_error):
        finite = solved & torch.isfinite(new_error)
        if not self.adaptive_damping:
            return finite, ~finite, torch.zeros_like(finite), step_state
        predicted = self._model_decrease(system, step_state, delta)
        actual = error - new_error
        ratio = actual / torch.where(predicted > 0, predicted, 1.0)
        if self.gradient_tolerance > 0 or self.parameter_tolerance > 0:
            # below the cost's rounding (a few eps of it) the cost cannot judge a step the model
            # says descends: it is taken as a good one, so that the parameters converge to the
            # precision of the gradient rather than of the cost (sqrt(eps)), and the gradient or
            # parameter tolerance ends the run (without them, the damping grows past max_damping)
            resolution = RESOLUTION * torch.finfo(error.dtype).eps * error.abs()
            unresolved = (predicted > 0) & (predicted <= resolution) & (actual.abs() <= resolution)
            ratio = torch.where(unresolved, torch.ones_like(ratio), ratio)
        # a step the model predicts no decrease for (at a minimum, g = 0) is taken when it does
        # not increase the error
        accept = finite & torch.where(
            predicted > 0, ratio > self.min_relative_decrease, actual >= 0
        )
        damping, growth = step_state.damping, step_state.growth
        if self.damping_factor is not None:
            # never below MIN_FACTOR_DAMPING times the initial damping: ten rejections climb back
            smaller = torch.clamp(damping / self.damping_factor, min=MIN_FACTOR_DAMPING * self.damping)
            damping = torch.where(accept, smaller, damping * self.damping_factor)
        else:
            shrink = torch.clamp(1.0 - (2.0 * ratio - 1.0) ** 3, min=1.0 / 3.0)
            damping = torch.where(accept, damping * shrink, damping * growth)
            growth = torch.where(accept, 2.0, growth * 2.0)
        stalled = ~accept & (damping > self.max_damping)
        return accept, torch.zeros_like(accept), stalled, DampingState(damping, growth, self._scale(system, step_state))
