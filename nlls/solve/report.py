"""The message of a finished solve: how many elements converged, and why the others did not.

A failed element is described by what happened to it (:class:`~nlls.solve.state.Failure`), with the
advice that fits: a non-finite initial cost names the cost function that produced it; a step that
made the error non-finite, or a linear solve that failed once the parameters had run off to huge
values, is a divergence; only a singular system gets the linear solver's advice.
"""
from __future__ import annotations

import time
from itertools import repeat
from typing import Dict, List, Optional, Tuple

import torch

from .bounds import box_system
from .state import Failure, SolveState, Status, Termination
from .termination import converged_reasons, fixed_count_codes, plateaus

HUGE = 1e20  # parameters beyond this magnitude have run off: a divergence, not a singular model


class Outcome:
    """How many elements of a finished run ended how, per ``(status, failure, termination)``
    (the codes of ``state`` as the steps left them, ``status`` the final one): read back to the
    host once for everything :meth:`~nlls.Optimizer.postprocess` asks (whether a failure needs
    classifying, the message's counts). A solve of one element spends more time in such small
    reads than in its compiled iterations."""

    #: up to this many elements the codes are read as lists and counted on the host (tiny reads
    #: cost less than the device operations of a bincount); more are counted on the device
    FEW = 64

    def __init__(self, state: SolveState, status: torch.Tensor):
        self.size = status.numel()
        self.terminations = state.termination is not None
        self.counts: Dict[Tuple[int, int, int], int] = {}
        if self.size <= self.FEW:
            failures = repeat(0) if state.failure is None else state.failure.flatten().tolist()
            terminations = repeat(0) if state.termination is None else state.termination.flatten().tolist()
            for codes in zip(status.flatten().tolist(), failures, terminations):
                self.counts[codes] = self.counts.get(codes, 0) + 1
        else:
            per_failure, per_status = len(Termination), len(Failure) * len(Termination)
            key = status.flatten().long() * per_status
            if state.failure is not None:
                key = key + state.failure.flatten() * per_failure
            if state.termination is not None:
                key = key + state.termination.flatten()
            histogram = torch.bincount(key, minlength=len(Status) * per_status).tolist()
            self.counts = {(k // per_status, k % per_status // per_failure, k % per_failure): n
                           for k, n in enumerate(histogram) if n}
        self.by_status = [0] * len(Status)
        for (code, _, _), n in self.counts.items():
            self.by_status[code] += n

    def of(self, status: Status, failure: Optional[Failure] = None, termination: Optional[Termination] = None) -> int:
        """The number of elements with ``status`` (and ``failure``, ``termination``, when given)."""
        if failure is None and termination is None:
            return self.by_status[status]
        return sum(n for (s, f, t), n in self.counts.items()
                   if s == status and failure in (None, f) and termination in (None, t))

    def converged_by(self) -> List[int]:
        """Per :class:`Termination` code, the number of converged elements it stopped."""
        out = [0] * len(Termination)
        for (s, _, t), n in self.counts.items():
            if s == Status.CONVERGED:
                out[t] += n
        return out


def settle(optimizer, state: SolveState, status: torch.Tensor) -> Tuple[SolveState, torch.Tensor, Outcome]:
    """``(state, status, outcome)`` at the end of a run: the :class:`Outcome` counts, and a
    fixed-count solve's termination codes, which its steps do not track, settled where some
    element converged (:func:`~nlls.solve.termination.fixed_count_codes`), with the stalls its
    eager steps left pending judged (:func:`classify_stalls`)."""
    outcome = Outcome(state, status)
    if state.termination is None and optimizer.fixed_count and outcome.of(Status.CONVERGED):
        state = fixed_count_codes(optimizer, state, status)
        outcome = Outcome(state, status)
        if state.stalls_pending and outcome.of(Status.CONVERGED, termination=Termination.NO_FURTHER_DECREASE):
            state, status = classify_stalls(optimizer, state, status)
            outcome = Outcome(state, status)
    return state, status, outcome


def classify_stalls(optimizer, state: SolveState, status: torch.Tensor) -> Tuple[SolveState, torch.Tensor]:
    """``(state, status)`` with the stalled elements that are not at a stationary point failed
    (``Failure.NO_DECREASE``), as a step that tests them fails them: judged at the values where
    they stopped, from one linearization (host work, only where some element stalled)."""
    assert state.termination is not None, "fixed_count_codes set them"
    stalled = (status == Status.CONVERGED) & (state.termination == Termination.NO_FURTHER_DECREASE)
    with torch.no_grad():
        system = optimizer.linearization.linearize(state.values, state.aux)
        system, gradient, _ = box_system(optimizer.evaluator, system, state.values, state.lower, state.upper)
        failed = plateaus(stalled, system, gradient, state)
    failure = torch.zeros_like(state.termination) if state.failure is None else state.failure
    state = state.replace(failure=failure.masked_fill(failed, int(Failure.NO_DECREASE)))
    return state, torch.where(failed, int(Status.FAILED), status).to(status.dtype)


def solve_message(optimizer, state: SolveState, status: torch.Tensor, outcome: Optional[Outcome] = None) -> str:
    """One line: converged / ran out of iterations / failed, and why, for ``state`` (``outcome``:
    its counts, when already read)."""
    outcome = Outcome(state, status) if outcome is None else outcome
    converged = outcome.of(Status.CONVERGED)
    parts = [f"{converged}/{outcome.size} converged"]
    if outcome.terminations and converged:
        parts[0] += f": {converged_reasons(outcome.converged_by())}"
    if outcome.of(Status.MAX_ITERATIONS):
        parts.append(
            f"{outcome.of(Status.MAX_ITERATIONS)} reached max_iterations={optimizer.max_iterations} "
            f"(increase max_iterations or loosen the tolerances)"
        )
    if outcome.of(Status.STOPPED):
        parts.append(f"{outcome.of(Status.STOPPED)} stopped by the callback")
    if outcome.of(Status.FAILED):
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


def classify_failures(optimizer, state: SolveState, status: torch.Tensor, outcome: Optional[Outcome] = None) -> SolveState:
    """``state`` with the reason of every failure that happened in a step: a failed element
    keeps the values from before its failing step, so that step's linear solve is repeated
    there (host work, only when some element failed in a step; ``outcome``: the counts of
    ``state``, when already read)."""
    if state.failure is None:
        return state
    outcome = Outcome(state, status) if outcome is None else outcome
    if not outcome.of(Status.FAILED, Failure.NONE):
        return state
    unknown = (status == Status.FAILED) & (state.failure == Failure.NONE)
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
