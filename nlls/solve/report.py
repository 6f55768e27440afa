"""The message of a finished solve: how many elements converged, and why the others did not.

A failed element is described by what happened to it (:class:`~nlls.solve.state.Failure`), with the
advice that fits: a non-finite initial cost names the cost function that produced it; a step that
made the error non-finite, or a linear solve that failed once the parameters had run off to huge
values, is a divergence; only a singular system gets the linear solver's advice.
"""
from __future__ import annotations

import time
from typing import List, Optional

import torch

from .state import Failure, SolveState, Status
from .termination import converged_reasons

HUGE = 1e20  # parameters beyond this magnitude have run off: a divergence, not a singular model


def solve_message(optimizer, state: SolveState, status: torch.Tensor) -> str:
    """One line: converged / ran out of iterations / failed, and why, for ``state``."""
    counts = torch.bincount(status.long().flatten(), minlength=len(Status)).tolist()
    parts = [f"{counts[Status.CONVERGED]}/{status.numel()} converged"]
    if state.termination is not None and counts[Status.CONVERGED]:
        parts[0] += f": {converged_reasons(state.termination, status)}"
    if counts[Status.MAX_ITERATIONS]:
        parts.append(
            f"{counts[Status.MAX_ITERATIONS]} reached max_iterations={optimizer.max_iterations} "
            f"(increase max_iterations or loosen the tolerances)"
        )
    if counts[Status.STOPPED]:
        parts.append(f"{counts[Status.STOPPED]} stopped by the callback")
    if counts[Status.FAILED]:
        parts.extend(_failures(optimizer, state, status))
    return "; ".join(parts)


def _failures(optimizer, state: SolveState, status: torch.Tensor) -> List[str]:
    failed = status == Status.FAILED
    failure = state.failure if state.failure is not None else torch.full_like(status, Failure.LINEAR_SOLVE)
    huge = torch.zeros_like(failed)
    for block in state.values:  # (N, B, ...): the largest magnitude per element
        magnitude = block.detach().abs().reshape(block.shape[0], block.shape[1], -1).amax(dim=(0, 2))
        huge = huge | ~(magnitude <= HUGE)
    start = failed & (failure == Failure.NONFINITE_START)
    diverged = failed & ((failure == Failure.NONFINITE_STEP) | ((failure == Failure.LINEAR_SOLVE) & huge))
    plateau = failed & (failure == Failure.NO_DECREASE)
    singular = failed & ~start & ~diverged & ~plateau
    parts = []
    if bool(start.any()):
        parts.append(f"{int(start.sum())} failed at the start: the initial cost is not finite"
                     f"{_culprit(optimizer, state, start)} (check the data and the initial values)")
    if bool(diverged.any()):
        advice = "a better start or a smaller step_size" if optimizer.checks_steps else (
            "a better start, a smaller step_size, or LevenbergMarquardt, whose steps are checked "
            "before they are taken")
        parts.append(f"{int(diverged.sum())} diverged: a step made the error or the parameters "
                     f"non-finite or huge (try {advice})")
    if bool(plateau.any()):
        parts.append(f"{int(plateau.sum())} stalled: no step decreases the error although the point "
                     f"is not stationary (a plateau or a badly scaled problem: try jacobi_scaling=True, "
                     f"another start, or a larger max_damping)")
    if bool(singular.any()):
        advice = optimizer.linear_solver.failure_advice or "the linear solve failed"
        parts.append(f"{int(singular.sum())} failed: {advice}{_unconstrained(optimizer, state, singular)}")
    return parts


def _unconstrained(optimizer, state: SolveState, elements: torch.Tensor) -> str:
    """`` (no residual depends on 'ab'[1]; ...)``: what leaves the system of ``elements``
    singular, from the structure and one evaluation of the Jacobians (empty when nothing shows)."""
    from ..uncertainty.structure import describe_unconstrained  # imports no solver module

    return describe_unconstrained(optimizer.evaluator, state.values, state.aux, elements)


def _culprit(optimizer, state: SolveState, elements: torch.Tensor) -> str:
    """`` (cost function 'name' gives NaN or inf for element(s) [...])`` for the first cost
    function whose error is not finite in one of ``elements``, when it can be found."""
    index = torch.nonzero(elements).flatten().tolist()
    try:
        with torch.no_grad():
            errors = optimizer.evaluator.errors(state.values, state.aux)
    except Exception:  # noqa: BLE001 - the message must not fail on what it describes
        return f" for element(s) {index[:10]}"
    for group, error in zip(optimizer.evaluator.groups, errors):  # error (K, B, dim)
        bad = ~torch.isfinite(error[:, elements]).all(dim=-1)  # (K, failed elements)
        if bool(bad.any()):
            member = int(torch.nonzero(bad.any(dim=1)).flatten()[0])
            return (f" (cost function {group.members[member].name!r} gives NaN or inf for "
                    f"element(s) {index[:10]})")
    return f" for element(s) {index[:10]}"


def classify_failures(optimizer, state: SolveState, status: torch.Tensor) -> SolveState:
    """``state`` with the reason of every failure that happened in a step: a failed element
    keeps the values from before its failing step, so that step's linear solve is repeated
    there (host work, only when some element failed in a step)."""
    if state.failure is None:
        return state
    unknown = (status == Status.FAILED) & (state.failure == Failure.NONE)
    if not bool(unknown.any()):
        return state
    with torch.no_grad():
        system = optimizer.linearization.linearize(state.values, state.aux)
        _, solved = optimizer.compute_step(system, state.step_state)
    reason = torch.where(solved, Failure.NONFINITE_STEP, Failure.LINEAR_SOLVE).to(torch.int8)
    return state.replace(failure=torch.where(unknown, reason, state.failure))


def print_iteration(optimizer, state: SolveState, step: Optional[torch.Tensor] = None,
                    active: Optional[torch.Tensor] = None) -> None:
    """The verbose line of an iteration (the start, without ``step``)."""
    if step is None or active is None:
        print(f"iteration   0  error {_fmt(state.error)}")
        return
    damping = optimizer.damping_of(state.step_state)
    step_norm = step.norm(dim=-1)[active]
    print(
        f"iteration {state.iteration:3d}  error {_fmt(state.error)}"
        + (f"  {getattr(optimizer, 'damping_name', 'damping')} {damping.mean().item():.2e}" if damping is not None else "")
        + f"  step {step_norm.max().item() if step_norm.numel() else 0.0:.2e}"
        + f"  active {int(active.sum())}/{state.active.numel()}"
        + f"  time {1e3 * (time.perf_counter() - state.started):.1f} ms"
    )


def _fmt(error: torch.Tensor) -> str:
    if error.numel() == 1:
        return f"{error.item():.6e}"
    return f"{error.mean().item():.6e} (mean of {error.numel()})"
