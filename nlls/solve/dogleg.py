"""Powell's dogleg: a trust-region method on the Gauss-Newton model, per batch element.

Each element keeps a trust radius ``Delta``. Around the current estimate the model
``m(delta) = e - (g.delta + 0.5 delta^T A delta)`` (``A = J^T J``, ``g = J^T r``) is trusted within
``||D delta|| <= Delta``, with ``D = I`` or, with ``diagonal_scaling``, ``D^2 = diag(A)`` clamped
below by 1e-6 (an ellipsoid that follows the scale of each unknown). The step follows the dogleg
path from 0 to the Cauchy point ``-alpha D^-2 g`` (the model's minimum along the scaled steepest
descent, ``alpha = ||D^-1 g||^2 / (h^T A h)``, ``h = D^-2 g``) and on to the Gauss-Newton point
``-A^-1 g``:

* the Gauss-Newton step when it lies inside the region;
* else the steepest-descent step to the boundary when the Cauchy point lies outside it;
* else the point where the segment from the Cauchy point to the Gauss-Newton point crosses the
  boundary.

The Gauss-Newton step comes from the linear solver (with :class:`~nlls.solve.linear.DenseQR`,
as the least-squares solution from ``J`` itself). When it cannot be computed (a singular ``A``)
the element's step is void for that iteration, and the next solves add ``mu diag(A)`` (clamped
as above): ``mu`` starts at 1e-8, grows tenfold at each failed solve and shrinks by 5 (to no less
than 1e-8) at each accepted step, as in Ceres' dogleg; an element that still fails at ``mu = 1``
stops as failed.

Trust-region rules: with ``rho`` the ratio of the actual to the predicted decrease, a step is
accepted when ``rho > min_relative_decrease``; the radius then shrinks to half the step's length
when ``rho < 0.25`` and doubles (at most ``max_radius``) when ``rho > 0.75`` and the step was held
by the boundary (``||D delta|| >= 0.99 Delta``), as in Moré's and SciPy's ``trf`` rule; a good
step well inside the region (the Gauss-Newton step) leaves the radius. Ceres instead grows the
radius to ``max(Delta, 3 ||D delta||)`` after every good step: on badly scaled problems whose
Gauss-Newton steps are long but poor (Meyer's from ``10 x0``, where ``x`` spans five orders) the
radius then runs ahead of the model and the iterates wander along a far valley (3.4e6 after 3,000
iterations, against the minimum 44 in 223 with the rule here; ``bench/bench_mgh.py``). A
rejected step (or one whose error is not finite) keeps the values and sets the radius to half the
step's length (Ceres halves the radius: after a Gauss-Newton step well inside the region that
tries the same step again at every halving). An
element whose radius falls below ``min_radius``, or whose rejected step was predicted to decrease
the cost by less than its rounding error (16 machine epsilons of it: the ratio is noise there,
and smaller radii predict less), can decrease no further and stops
(``Termination.NO_FURTHER_DECREASE``). As in Levenberg-Marquardt, a step whose predicted and actual
decreases are both below the cost's rounding (64 machine epsilons of it) counts as a good one when
a gradient or parameter tolerance is set: the cost cannot judge it, and those tolerances then end
the run with ``x`` as precise as the gradient allows.

Everything is per element with masks, without host reads. A rejected step is recomputed from a
new linearization at the unchanged values (the same Gauss-Newton step, at the cost of the
linearization and the factorization; the batch runs in lockstep, so skipping them would need
every element to have rejected).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..core.objective import Objective
from .checks import check_bool, check_number
from .levenberg_marquardt import RESOLUTION
from .linear import LinearSolver
from .optimizer import Optimizer
from .termination import ABS_ERR_TOLERANCE, FUNCTION_TOLERANCE, GRADIENT_TOLERANCE, PARAMETER_TOLERANCE

MIN_DIAGONAL = 1e-6  # the floor of diag(A) in the scaling and the fallback damping (as LM's)
MIN_MU, MAX_MU, MU_GROWTH = 1e-8, 1.0, 10.0  # the Gauss-Newton fallback damping (Ceres' values)
SHRINK_BELOW, GROW_ABOVE = 0.25, 0.75  # the ratios that shrink and grow the radius
HELD = 0.99  # a step this close to the radius was held by the boundary (the radius may grow)
NOISE = 16  # predicted decreases below NOISE * eps * cost are rounding noise


@dataclass
class TrustRegionState:
    """The dogleg's state per batch element: the trust ``radius`` and the damping ``mu`` added to
    the Gauss-Newton solve (0 until a solve fails)."""

    radius: torch.Tensor
    mu: torch.Tensor


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a zero (not infinite) derivative at 0, for masked branches."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x != 0, x, torch.ones_like(x))


class Dogleg(Optimizer):
    """Powell's dogleg trust-region method with per-element radii (see the module's description).

    ``objective``, ``linear_solver``, ``max_iterations``, ``step_size``, ``abs_err_tolerance``,
    ``rel_err_tolerance``, ``check_every``, ``function_tolerance``, ``gradient_tolerance`` and
    ``parameter_tolerance`` are :class:`~nlls.solve.optimizer.Optimizer`'s.

    Args:
        initial_radius: the trust radius at the start.
        max_radius: the radius never grows beyond it.
        min_radius: an element whose radius falls below it can decrease no further and stops
            (converged where the point is stationary; see :mod:`nlls.solve.termination`).
        diagonal_scaling: measure steps by ``||D delta||``, ``D^2 = diag(J^T J)`` (clamped below
            by 1e-6), instead of ``||delta||``.
        min_relative_decrease: smallest ratio of actual to predicted decrease for an accepted step.
    """

    #: the name verbose output gives :meth:`damping_of` (read by its printer; "damping" without one)
    damping_name = "radius"

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
        initial_radius: float = 1e4,
        max_radius: float = 1e16,
        min_radius: float = 1e-32,
        diagonal_scaling: bool = False,
        min_relative_decrease: float = 1e-3,
        check_every: int = 1,
        function_tolerance: float = FUNCTION_TOLERANCE,
        gradient_tolerance: float = GRADIENT_TOLERANCE,
        parameter_tolerance: float = PARAMETER_TOLERANCE,
    ):
        super().__init__(
            objective, linear_solver=linear_solver, max_iterations=max_iterations,
            step_size=step_size, abs_err_tolerance=abs_err_tolerance,
            rel_err_tolerance=rel_err_tolerance, check_every=check_every,
            function_tolerance=function_tolerance, gradient_tolerance=gradient_tolerance,
            parameter_tolerance=parameter_tolerance,
        )
        check_number(self, "initial_radius", initial_radius, minimum=0, open_minimum=True)
        check_number(self, "max_radius", max_radius, minimum=initial_radius)
        check_number(self, "min_radius", min_radius, minimum=0)
        if min_radius >= initial_radius:
            raise ValueError(f"Dogleg: min_radius must be < initial_radius ({initial_radius!r}), "
                             f"got {min_radius!r}")
        check_number(self, "min_relative_decrease", min_relative_decrease, minimum=0)
        if min_relative_decrease >= 1:
            raise ValueError(f"Dogleg: min_relative_decrease must be < 1, got {min_relative_decrease!r}")
        check_bool("Dogleg", "diagonal_scaling", diagonal_scaling)
        self.initial_radius = float(initial_radius)
        self.max_radius = float(max_radius)
        self.min_radius = float(min_radius)
        self.diagonal_scaling = diagonal_scaling
        self.min_relative_decrease = float(min_relative_decrease)

    def init_step_state(self, error) -> TrustRegionState:
        return TrustRegionState(radius=torch.full_like(error, self.initial_radius),
                                mu=torch.zeros_like(error))

    @property
    def checks_steps(self) -> bool:
        return True

    def damping_of(self, step_state: TrustRegionState):
        """The trust radius (shown as ``radius`` in verbose output)."""
        return step_state.radius

    def _metric(self, system) -> torch.Tensor:
        """``D^2`` ``(B, D)``: the squared scale of each unknown in the trust region's norm."""
        if self.diagonal_scaling:
            return system.operator().diagonal().clamp_min(MIN_DIAGONAL)
        return torch.ones_like(system.g)

    def compute_step(self, system, step_state: TrustRegionState):
        g, radius, mu = system.g, step_state.radius, step_state.mu
        matrix = system.damped(mu, diagonal_scaling=True, min_diagonal=MIN_DIAGONAL)
        newton, solved = self.linear_solver.factor(matrix).least_squares_step(g)
        solved = solved & (mu < MAX_MU)
        metric = self._metric(system)

        def norm(x):
            return _safe_sqrt((metric * x * x).sum(-1))

        # the Cauchy point -alpha h, h = D^-2 g: the model's minimum along the scaled gradient
        h = g / metric
        gh = (g * h).sum(-1)  # ||D^-1 g||^2
        curvature = (h * system.operator().matvec(h)).sum(-1)
        positive = curvature > 0
        alpha = gh / torch.where(positive, curvature, torch.ones_like(curvature))
        cauchy = -alpha[:, None] * h
        gradient_norm = _safe_sqrt(gh)
        # the steepest-descent step to the boundary (also where the model has no curvature)
        boundary = -(radius / _nonzero(gradient_norm))[:, None] * h
        cauchy_outside = ~positive | (alpha * gradient_norm >= radius)
        # from the Cauchy point towards the Gauss-Newton point, up to the boundary:
        # ||D (c + beta d)||^2 = radius^2, beta in [0, 1]
        d = newton - cauchy
        a = (metric * d * d).sum(-1)
        b = (metric * cauchy * d).sum(-1)
        c = (metric * cauchy * cauchy).sum(-1) - radius * radius  # < 0: the Cauchy point inside
        root = _safe_sqrt(b * b - a * c)
        beta = torch.where(b <= 0, (root - b) / _nonzero(a), -c / _nonzero(b + root))
        dogleg = torch.where(cauchy_outside[:, None], boundary, cauchy + beta[:, None] * d)
        inside = norm(newton) <= radius
        step = torch.where(inside[:, None], newton, dogleg)
        return torch.where(solved[:, None], step, torch.zeros_like(step)), solved

    def accept(self, system, step_state: TrustRegionState, delta, solved, error, new_error):
        finite = solved & torch.isfinite(new_error)
        delta = delta * self.step_size
        predicted = system.quadratic_decrease(delta)
        actual = error - new_error
        has_model = predicted > 0
        ratio = actual / torch.where(has_model, predicted, torch.ones_like(predicted))
        if self.gradient_tolerance > 0 or self.parameter_tolerance > 0:
            # as Levenberg-Marquardt's: a step the model says descends by less than the cost's
            # rounding cannot be judged by the cost; it is taken as a good one, so that x converges
            # to the precision of the gradient (the gradient or parameter tolerance ends the run)
            resolution = RESOLUTION * torch.finfo(error.dtype).eps * error.abs()
            unresolved = has_model & (predicted <= resolution) & (actual.abs() <= resolution)
            ratio = torch.where(unresolved, torch.ones_like(ratio), ratio)
        # a step the model predicts no decrease for (at a minimum, g = 0) is taken when it does
        # not increase the error, and leaves the radius; the relative tolerance then ends the run
        accept = finite & torch.where(has_model, ratio > self.min_relative_decrease, actual >= 0)
        radius, mu = step_state.radius, step_state.mu
        step_norm = _safe_sqrt((self._metric(system) * delta * delta).sum(-1))
        # shrinking goes below the step taken (a Gauss-Newton step well inside the region would
        # otherwise be tried again at every halving)
        shrunk = 0.5 * torch.where(step_norm > 0, torch.minimum(radius, step_norm), radius)
        kept = torch.where(has_model & (ratio < SHRINK_BELOW), shrunk,
                           torch.where(has_model & (ratio > GROW_ABOVE),
                                       torch.where(step_norm >= HELD * radius, 2.0 * radius, radius), radius))
        # a void step (the solve failed) leaves the radius and raises mu; a rejected one shrinks it
        radius = torch.where(accept, kept.clamp_max(self.max_radius),
                             torch.where(solved, shrunk, radius))
        mu = torch.where(solved, torch.where(accept & (mu > 0), (mu / (MU_GROWTH / 2)).clamp_min(MIN_MU), mu),
                         torch.where(mu > 0, mu * MU_GROWTH, torch.full_like(mu, MIN_MU)))
        failed = ~solved & (mu >= MAX_MU)
        # a rejected step whose predicted decrease is at the cost's rounding level: the ratio is
        # noise, and smaller radii predict less (a point stationary to working precision)
        noise = predicted.abs() <= NOISE * torch.finfo(error.dtype).eps * error.abs()
        stalled = ~accept & ((radius < self.min_radius) | (solved & noise))
        return accept, failed, stalled, TrustRegionState(radius, mu)
