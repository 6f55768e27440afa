"""When a batch element stops: the convergence rules of every optimizer, per element.

The rules are Ceres's (``Solver::Options``), applied per batch element with masks:

* ``gradient_tolerance``: ``max_i |pg_i| <= gradient_tolerance``, ``pg`` the gradient ``J^T r`` on
  the tangent (with box bounds the projected one, ``x - clamp(x - g)``). It is tested at the start
  of an iteration on the gradient the linearization computes anyway: the element stops there
  without taking that iteration's step (one iteration after the step that reached the point;
  Ceres evaluates the gradient at the new point of an accepted step instead).
* ``function_tolerance``: ``|cost - cost'| <= function_tolerance * cost`` for an accepted step,
  or for a rejected one at a point stationary to working precision (see below); a tolerance below
  100 machine epsilons of the dtype counts as 100 of them (smaller changes are rounding noise,
  and a run must not stop at an iteration the noise picks); the gradient and parameter
  tolerances give more precision than the cost can. The rule ends a run only where the cosine
  of the stationarity test (below) is at most ``PROGRESS_COSINE * sqrt(function_tolerance)``
  (1e-3 by default): a heavily damped or radius-bound step also changes the cost little, far
  from any minimum (Levenberg-Marquardt with scaled damping on Chebyquad10 from 10 x0, at a cost
  of 1e28). A change within the noise ends a run only at a stationary point for a step rule
  that judges steps: Levenberg-Marquardt and the dogleg take a step the cost cannot judge as a
  good one, on a plateau too.
* ``parameter_tolerance``: ``||step|| <= parameter_tolerance * (||x|| + parameter_tolerance)`` for
  an **accepted** step: ``||step||`` the norm of the tangent step taken (after projection into the
  box), ``||x||`` the norm of every entry of the element's optim variables. Like the function
  tolerance, the rule ends a run only where the cosine of the stationarity test (below) is at most
  ``PARAMETER_COSINE`` (1e-3): a step held short by the trust
  region, or small next to one huge coordinate, is no sign of convergence (the dogleg from a large
  initial radius on Meyer's problem reached ``x1 ~ 1e19`` on a far plateau, where every step was
  below 1e-10 of ``||x||`` at a cosine of 8e-3). A tolerance below 10
  machine epsilons of the dtype counts as 10 of them (smaller steps move ``x`` by its rounding:
  a float32 exact fit otherwise steps back and forth at the rounding of its cost to the end).
* ``abs_err_tolerance``: ``cost <= abs_err_tolerance`` (at the start, or after an accepted step).
  Off by default (0: only an exact zero cost stops a run by it): a zero-residual problem is left
  to the gradient and parameter tolerances, which stop it a few quadratically convergent
  iterations below any fixed threshold.
* ``NO_FURTHER_DECREASE``: the step rule cannot decrease the cost any more (Levenberg-Marquardt's
  damping past ``max_damping``, a trust region radius below its minimum).

Ceres tests the function and parameter tolerances on rejected steps too. Here the parameter
tolerance counts only accepted steps and the function tolerance only rejected steps at a
stationary point: a rejected step's size and cost change say how large the damping has grown, not
that the element has converged, and a plateau on which every step is rejected would otherwise end
"converged" anywhere (at a minimum, where the model's decrease is below the cost's rounding, a
rejected step ends the run at once, as in Ceres). Such an element reaches ``NO_FURTHER_DECREASE``. Ceres reports its analogue
(the minimum trust region radius) as a convergence; here it is a convergence only at a point that
is stationary to working precision by MINPACK's scale-invariant measure, the largest cosine
between the residual and a column of the Jacobian, ``max_j |pg_j| / (||J_j|| ||r||) <= eps^(1/3)``
(:func:`stationary`; unchanged by a rescaling of ``x``, of ``r`` or of single unknowns, which a
size of the gradient, absolute or relative to the cost, is not: at a cost of 1e30 it calls any
point stationary), or at a cost ``eps`` times the start's (a zero-residual minimum, where the
cosine stays large); elsewhere the element fails with ``Failure.NO_DECREASE`` and the message says so.

When several rules fire in one iteration the first of gradient, absolute error, function,
parameter, no further decrease is recorded. A tolerance of 0 switches its rule off; with every
tolerance 0 a solve runs exactly ``max_iterations`` iterations (a fixed count: its elements stop
early only at an exact zero cost or a stall, and its steps track no termination codes, which are
settled once at the end, :func:`fixed_count_codes`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .checks import check_number
from .state import Failure, SolveState, Status, Termination, Values
from .tracing import is_compiling

#: the defaults, measured on the Moré-Garbow-Hillstrom problems (docs/guide/optimizers.md)
FUNCTION_TOLERANCE = 1e-10
GRADIENT_TOLERANCE = 1e-13
PARAMETER_TOLERANCE = 1e-10
#: off: an absolute cost says nothing about convergence unless the problem's scale is known (1e-10
#: stopped the zero-residual MGH problems 1e-5 from their minima); Ceres and SciPy have no such rule
ABS_ERR_TOLERANCE = 0.0

_NAMES = {
    Termination.FUNCTION_TOLERANCE: "function tolerance",
    Termination.GRADIENT_TOLERANCE: "gradient tolerance",
    Termination.PARAMETER_TOLERANCE: "parameter tolerance",
    Termination.ABSOLUTE_ERROR: "absolute error",
    Termination.NO_FURTHER_DECREASE: "no further decrease",
}


def set_tolerances(optimizer, rel_err_tolerance, function_tolerance: float, gradient_tolerance: float,
                   parameter_tolerance: float) -> None:
    """Check the tolerances and set them on ``optimizer``. ``rel_err_tolerance`` (the older name of
    ``function_tolerance``) replaces it when given, and the gradient and parameter tolerances are
    lowered to it where larger: a run asked to be tight stays so, and exactly 0 keeps its old meaning,
    no relative test at all (function, gradient and parameter tolerances 0)."""
    for name, value in (("function_tolerance", function_tolerance), ("gradient_tolerance", gradient_tolerance),
                        ("parameter_tolerance", parameter_tolerance)):
        check_number(optimizer, name, value, minimum=0)
    if rel_err_tolerance is not None:
        check_number(optimizer, "rel_err_tolerance", rel_err_tolerance, minimum=0)
        if function_tolerance not in (FUNCTION_TOLERANCE, rel_err_tolerance):
            raise ValueError(f"{type(optimizer).__name__}: rel_err_tolerance is the older name of "
                             f"function_tolerance; give one of them, not both "
                             f"({rel_err_tolerance!r} and {function_tolerance!r})")
        function_tolerance = rel_err_tolerance
        # it asked for a relative precision: the newer rules are no looser (a tight solve stays tight)
        gradient_tolerance = min(gradient_tolerance, rel_err_tolerance)
        parameter_tolerance = min(parameter_tolerance, rel_err_tolerance)
    optimizer.function_tolerance = float(function_tolerance)
    optimizer.gradient_tolerance = float(gradient_tolerance)
    optimizer.parameter_tolerance = float(parameter_tolerance)


def values_norm(values: Values) -> torch.Tensor:
    """``(B,)`` Euclidean norm of every entry of the element's variable blocks ``(N, B, ...)``."""
    total = None
    for block in values:
        squares = block.pow(2).reshape(block.shape[0], block.shape[1], -1).sum(dim=(0, 2))
        total = squares if total is None else total + squares
    assert total is not None, "an objective with optim variables has blocks"
    return total.sqrt()


def stationary(gradient: torch.Tensor, diagonal: torch.Tensor, error: torch.Tensor,
               initial_error: torch.Tensor, cosine: Optional[float] = None) -> torch.Tensor:
    """``(B,)`` whether the point is stationary to working precision: MINPACK's scale-invariant
    measure, the largest cosine between the residual and a column of ``J``,
    ``max_j |g_j| / (||J_j|| ||r||) <= eps^(1/3)`` (or ``<= cosine``), from ``g = J^T r``
    ``(B, D)`` (projected, with bounds), ``diagonal = diag(J^T J)`` ``(B, D)`` and the cost
    ``0.5 ||r||^2``. It does not change when ``x`` or ``r`` is rescaled (a gradient's size,
    relative or not, does: a run of costs in the 1e30 is "stationary" by it). Near a zero-residual
    minimum the cosine does not vanish (``r`` and ``J^T r`` shrink together): a cost at most
    ``eps`` times the ``initial_error`` (the start's cost at its rounding) counts as that minimum.
    A column of zeros, or the zero gradient a bound gives a coordinate, counts 0."""
    return within(column_measure(gradient, diagonal), error, initial_error, cosine)


def column_measure(gradient: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``max_j g_j^2 / ||J_j||^2`` (0 where both are 0): the squared cosine of
    :func:`stationary` times ``||r||^2``, without roots (fewer operations per step)."""
    return (gradient * gradient / diagonal.clamp_min(torch.finfo(diagonal.dtype).tiny)).amax(dim=-1)


def within(column: torch.Tensor, error: torch.Tensor, initial_error: torch.Tensor,
           cosine: Optional[float] = None) -> torch.Tensor:
    """:func:`stationary` from :func:`column_measure`'s ``column``."""
    measure, floor = _limits(error, initial_error, cosine)
    return (column <= measure) | (error <= floor)


def beyond(column: torch.Tensor, error: torch.Tensor, initial_error: torch.Tensor) -> torch.Tensor:
    """``~within(column, error, initial_error)`` in fewer operations."""
    measure, floor = _limits(error, initial_error, None)
    return (column > measure) & (error > floor)


def _limits(error: torch.Tensor, initial_error: torch.Tensor, cosine: Optional[float]):
    """The bounds of :func:`within`: of ``column`` (``2 cosine^2`` times the cost) and of the cost."""
    eps = torch.finfo(error.dtype).eps
    cosine = eps ** (1.0 / 3.0) if cosine is None else cosine
    return (2.0 * cosine * cosine) * error, eps * initial_error


#: the function tolerance ends a run only where the cosine of :func:`stationary` is at most this
#: many times ``sqrt(function_tolerance)`` (1e-3 at the default): a small change of the cost says
#: the run has converged when the step is near the Gauss-Newton one (then the cosine is at most
#: about the root of the relative change), not when a large damping or a small radius made it short
PROGRESS_COSINE = 100.0
#: the parameter tolerance ends a run only where the cosine of :func:`stationary` is at most this
#: (MINPACK's measure as the tests judge a stationary point: a step's size says nothing of it)
PARAMETER_COSINE = 1e-3


def gradient_test(optimizer, gradient: torch.Tensor, active: torch.Tensor) -> Optional[torch.Tensor]:
    """Where the max-norm of the (projected) gradient is at most ``gradient_tolerance`` (``None``
    when the rule is off: fewer operations per step)."""
    if optimizer.gradient_tolerance > 0:
        return gradient.abs().amax(dim=-1) <= optimizer.gradient_tolerance
    return None


def fired(optimizer, state: SolveState, *, small_gradient, accept, stalled, failed, new_error, step,
          values_size, settled, still=None, near=None, near_parameter=None) -> torch.Tensor:
    """``(B,)`` int8: the :class:`Termination` of the first rule that fired in this iteration
    (``RUNNING`` where none did), from the masks of the iteration (see the module's description).
    A ``failed`` element gets ``NONFINITE`` (the lowest priority; the reason is classified at the
    end, :func:`final_termination`); ``stalled`` is ``None`` for a step rule that never stalls."""
    code = torch.zeros_like(state.status)  # RUNNING
    rules = [(failed, Termination.NONFINITE)]
    if stalled is not None:
        rules.append((stalled, Termination.NO_FURTHER_DECREASE))
    if optimizer.parameter_tolerance > 0:
        # a step below 10 eps of ||x|| moves x by its rounding (float32: 1e-10 is below its eps)
        tolerance = max(optimizer.parameter_tolerance, 10 * torch.finfo(new_error.dtype).eps)
        # near a stationary point only (PARAMETER_COSINE): a step held short by a small radius
        # or a large damping is short far from any minimum, and so is any step beside a huge ||x||
        moved = accept if near_parameter is None else accept & near_parameter
        rules.append((moved & (step.norm(dim=-1) <= tolerance * (values_size + tolerance)),
                      Termination.PARAMETER_TOLERANCE))
    if optimizer.function_tolerance > 0:
        change = (state.error - new_error).abs()
        # a relative change below 100 eps is rounding noise: a lower tolerance would make the
        # iteration that stops depend on the noise (and the solve jump with its data)
        noise = 100 * torch.finfo(new_error.dtype).eps
        tolerance = max(optimizer.function_tolerance, noise)
        # an accepted step ends the run near a stationary point only (PROGRESS_COSINE), and one
        # the cost cannot judge (its change is noise; the step rules take such steps as good
        # ones) only at a stationary point
        judged = accept if near is None else accept & near
        if still is not None:
            judged = judged & (still | (change > noise * state.error))
        taken = judged if settled is None else judged | settled
        rules.append((taken & (change <= tolerance * state.error),
                      Termination.FUNCTION_TOLERANCE))
    rules.append((accept & (new_error <= optimizer.abs_err_tolerance), Termination.ABSOLUTE_ERROR))
    if small_gradient is not None:
        rules.append((small_gradient, Termination.GRADIENT_TOLERANCE))
    for mask, rule in rules:  # the last assignment wins: the list runs from the lowest priority
        code = torch.where(mask, int(rule), code)  # (a plain int: torch.compile mistraces IntEnum here)
    return code


def conclude(optimizer, state: SolveState, system, gradient: torch.Tensor, running: Optional[torch.Tensor],
             **masks) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(done, termination, plateau)`` of an iteration: where a rule fired or the step failed
    (:func:`fired`, with the ``masks`` of active elements restricted to the ``running`` ones;
    ``running`` is ``None`` when every active element runs), the elements' termination codes so
    far (the first rule that fired stays; ``None`` in a fixed-count solve, which settles them at
    the end: :func:`fixed_count_codes`), and the stalled elements that are not stationary
    (:func:`stationary`, from the iteration's ``system`` and ``gradient``): they fail (``None``
    for a step rule that takes every step, ``optimizer.checks_steps`` false: it never stalls)."""
    tried = masks.pop("tried")
    if optimizer.fixed_count:  # every tolerance 0: no codes tracked (see fixed_count_codes)
        done, stalled = masks["accept"] & (masks["new_error"] <= optimizer.abs_err_tolerance), masks["stalled"]
        if stalled is None or not optimizer.checks_steps or defers_stalls(optimizer, state):
            return (done if stalled is None else done | stalled), None, None
        return done | stalled, None, plateaus(stalled, system, gradient, state)
    if running is not None:  # (converged elements step on: their rules have fired)
        masks.update({key: masks[key] & running for key in ("accept", "stalled", "failed") if masks[key] is not None})
    size = values_norm(state.values) if optimizer.parameter_tolerance > 0 else None
    can_stall, still, near = optimizer.checks_steps and masks["stalled"] is not None, None, None
    near_parameter = None
    if can_stall or optimizer.function_tolerance > 0 or optimizer.parameter_tolerance > 0:
        column = column_measure(gradient, system.operator().diagonal())
        still = within(column, state.error, state.initial_error) if can_stall else None
        if optimizer.function_tolerance > 0:
            cosine = PROGRESS_COSINE * max(optimizer.function_tolerance, 100 * torch.finfo(state.error.dtype).eps) ** 0.5
            near = within(column, state.error, state.initial_error, min(cosine, 1.0))
        if optimizer.parameter_tolerance > 0:
            near_parameter = within(column, state.error, state.initial_error, PARAMETER_COSINE)
    settled = None if still is None or tried is None else tried & still  # (tried: None without a function tolerance)
    rule = fired(optimizer, state, values_size=size, settled=settled, still=still, near=near,
                 near_parameter=near_parameter, **masks)
    plateau = None if still is None else masks["stalled"] & ~still
    done = rule > 0  # (every mask is of running elements: a rule that fired is the element's first)
    termination = rule if state.termination is None else torch.where(done, rule, state.termination)
    return done, termination, plateau


def plateaus(stalled: torch.Tensor, system, gradient: torch.Tensor, state: SolveState) -> torch.Tensor:
    """``(B,)`` the ``stalled`` elements that are not stationary (:func:`stationary`, from the
    ``system`` and ``gradient`` at their values): they fail."""
    column = column_measure(gradient, system.operator().diagonal())
    return stalled & beyond(column, state.error, state.initial_error)


def defers_stalls(optimizer, state: SolveState) -> bool:
    """Whether this step leaves its stalls to be judged at the end (``state.stalls_pending`` from
    then on): an eager step of a fixed-count solve whose converged elements stop. There the test
    that tells a stall at a stationary point from a plateau costs more in every iteration than
    one linearization at the end (:func:`~nlls.solve.report.classify_stalls`), and it gives the
    same answer: a stalled element stops where it stalled. Compiled steps fuse the test into
    the iteration's code and keep it."""
    return state.stalls_pending or (optimizer.fixed_count and optimizer.checks_steps
                                    and state.freeze_converged and not is_compiling())


def initial_codes(optimizer, finite: torch.Tensor, active: torch.Tensor) -> Optional[torch.Tensor]:
    """``(B,)`` int8 codes at the start: ``ABSOLUTE_ERROR`` where the start's cost stops the run,
    ``NONFINITE`` where it is not finite; ``None`` in a fixed-count solve (:func:`fixed_count_codes`)."""
    if optimizer.fixed_count:
        return None
    return torch.where(finite, (~active).to(torch.int8) * int(Termination.ABSOLUTE_ERROR), int(Termination.NONFINITE))


def fixed_count_codes(optimizer, state: SolveState, status: torch.Tensor) -> SolveState:
    """``state`` with the termination codes of a fixed-count solve (every tolerance 0), which its
    steps do not track: there only an exact zero cost (``ABSOLUTE_ERROR``: a cost at most
    ``abs_err_tolerance``, which is 0) and a stall (``NO_FURTHER_DECREASE``) end an element as
    converged, and the cost tells them apart (a stall away from a stationary point has failed in
    its step, as in every solve). The steps of such a solve do the least work per iteration (a
    fixed-count solve is the one compiled or captured whole)."""
    converged = torch.where(state.error <= optimizer.abs_err_tolerance, int(Termination.ABSOLUTE_ERROR),
                            int(Termination.NO_FURTHER_DECREASE))
    failed = int(Termination.NONFINITE) if state.failure is None else torch.where(  # (a plateau's, or
        state.failure == int(Failure.NO_DECREASE), int(Termination.NO_FURTHER_DECREASE),  # the provisional
        int(Termination.NONFINITE))  # code of a failure in a step)
    code = torch.where(status == int(Status.CONVERGED), converged,
                       torch.where(status == int(Status.FAILED), failed, 0))
    return state.replace(termination=code.to(torch.int8))


def _by_status_table(device: torch.device) -> torch.Tensor:
    """``(len(Status) * len(Failure),)`` int8: the termination an element that no rule stopped
    ends with, indexed by ``status * len(Failure) + failure`` (``status`` before ``RUNNING``
    becomes ``MAX_ITERATIONS``). One lookup instead of a chain of ``torch.where`` s: a solve of
    one element spends most of its time in such small operations."""
    table = _TABLES.get(device)
    if table is None:
        codes = []
        for status in Status:
            for failure in Failure:
                if status in (Status.RUNNING, Status.MAX_ITERATIONS):
                    code = Termination.MAX_ITERATIONS
                elif status == Status.STOPPED:
                    code = Termination.STOPPED_BY_CALLBACK
                elif status == Status.FAILED:
                    code = {Failure.LINEAR_SOLVE: Termination.LINEAR_SOLVER_FAILURE,
                            Failure.NO_DECREASE: Termination.NO_FURTHER_DECREASE}.get(failure, Termination.NONFINITE)
                else:  # converged: a rule always fired (kept as RUNNING otherwise)
                    code = Termination.RUNNING
                codes.append(int(code))
        table = _TABLES[device] = torch.tensor(codes, dtype=torch.int8, device=device)
    return table


_TABLES: Dict[torch.device, torch.Tensor] = {}


def final_termination(state: SolveState, status: torch.Tensor, running: torch.Tensor,
                      unchanged: bool = False, out_of_iterations: bool = False) -> torch.Tensor:
    """``(B,)`` int8 termination codes at the end of a run: the rule that fired, else what the
    status and failure say (out of iterations, stopped, a non-finite cost, a linear solve).
    ``status`` is the final one (``MAX_ITERATIONS`` for the elements still ``running``);
    ``unchanged``: no failure needed classifying at the end (``report.classify_failures``);
    ``out_of_iterations``: every element ran out of iterations (one operation)."""
    if out_of_iterations:
        return torch.full_like(status, int(Termination.MAX_ITERATIONS))
    if unchanged and state.termination is not None and state.callback is None:
        # every stopped element has its code (a failure's provisional one is right when no failure
        # needed classifying): one operation, for the elements still running
        return torch.where(running, int(Termination.MAX_ITERATIONS), state.termination)
    key = status.long() * len(Failure)
    if state.failure is not None:
        key = key + state.failure
    by_status = _by_status_table(status.device)[key]
    if state.termination is None:
        return by_status
    # an element stopped by a callback keeps the callback as its reason even if a rule fired later
    # NONFINITE is the provisional code of an element that failed in a step (its reason is known
    # here: a linear solve, a non-finite error)
    unset = (state.termination == 0) | (state.termination == int(Termination.NONFINITE))
    return torch.where(unset | (status == int(Status.STOPPED)), by_status, state.termination)


def converged_reasons(counts: List[int]) -> str:
    """``"2 gradient tolerance, 1 function tolerance"``: the rules that ended the converged
    elements, most frequent first ("" when none converged), from the number of converged
    elements per :class:`Termination` code."""
    parts: List[str] = [f"{counts[code]} {name}" for code, name in
                        sorted(_NAMES.items(), key=lambda item: -counts[item[0]]) if counts[code]]
    return ", ".join(parts)
