"""The solve-state protocol: what one run of an optimizer carries from iteration to iteration.

Every driver (the eager loop, compiled chunks, a CUDA graph; :mod:`nlls.solve.drivers`) and every
backward mode of :class:`~nlls.OptimizationLayer` runs a solve through four documented methods of
:class:`~nlls.Optimizer`, in the spirit of ``init / step / terminate / postprocess``::

    state = optimizer.init()                 # values gathered, error, masks, step-rule state
    while not optimizer.terminate(state):    # a host read: has every element stopped?
        state = optimizer.step(state)        # one iteration of every active element
    info = optimizer.postprocess(state)      # OptimizerInfo, solution written back

:class:`SolveState` is that state. Its tensor fields are per batch element and change only by
device operations (masks and ``torch.where``), so ``step`` never reads a value back to the host;
drivers decide when to call ``terminate``.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

Values = Tuple[torch.Tensor, ...]  # one (N, B, *shape) tensor per variable block


class Status(enum.IntEnum):
    """Why a batch element stopped (``OptimizerInfo.status``)."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITERATIONS = 2
    FAILED = 3
    STOPPED = 4  # a callback asked it to stop


class Failure(enum.IntEnum):
    """Why a batch element failed (``OptimizerInfo.failure``; ``NONE`` for the others)."""

    NONE = 0
    NONFINITE_START = 1  # the initial cost is NaN or inf (data or initial values)
    NONFINITE_STEP = 2  # a step made the error NaN or inf (divergence, or out of a residual's domain)
    LINEAR_SOLVE = 3  # the linear system could not be solved (singular, or not positive definite)
    NO_DECREASE = 4  # no step decreases the error although the point is not stationary (a plateau)


class Termination(enum.IntEnum):
    """Which rule stopped a batch element (``OptimizerInfo.termination``).

    The first five end a run as converged (``Status.CONVERGED``), except that
    ``NO_FURTHER_DECREASE`` away from a stationary point is a failure (``Failure.NO_DECREASE``);
    see :mod:`nlls.solve.termination` for the rules and their order.
    """

    RUNNING = 0  # not stopped (yet)
    FUNCTION_TOLERANCE = 1  # |cost change| <= function_tolerance * cost, on an accepted step
    GRADIENT_TOLERANCE = 2  # max-norm of the (projected) gradient <= gradient_tolerance
    PARAMETER_TOLERANCE = 3  # ||step|| <= parameter_tolerance * (||x|| + parameter_tolerance)
    ABSOLUTE_ERROR = 4  # cost <= abs_err_tolerance
    NO_FURTHER_DECREASE = 5  # damping past max_damping (or a trust radius below its minimum)
    MAX_ITERATIONS = 6
    LINEAR_SOLVER_FAILURE = 7
    NONFINITE = 8  # the initial cost, or a step's, is NaN or inf
    STOPPED_BY_CALLBACK = 9


@dataclass
class OptimizerInfo:
    """What ``optimize()`` reports, per batch element.

    Attributes:
        converged: ``(B,)`` bool, the element met a tolerance (or could decrease no further).
        iterations: ``(B,)`` iterations the element ran before it stopped.
        initial_error, final_error: ``(B,)`` objective values ``0.5 * sum ||w r||^2``.
        status: ``(B,)`` :class:`Status` codes.
        failure: ``(B,)`` :class:`Failure` codes: why an element failed (``NONE`` otherwise).
        termination: ``(B,)`` int8 :class:`Termination` codes: the rule that stopped each element.
        active_bounds: with box bounds (``Objective.set_bounds``), variable name -> ``(B, n)``
            int8: ``-1`` at its lower bound with the gradient pushing outward, ``+1`` at its
            upper bound likewise, ``0`` free; ``None`` without bounds.
        best_solution: name -> ``(B, ...)`` tensor of the lowest-error iterate, when tracked.
        best_error: ``(B,)`` error of ``best_solution``, when tracked.
        err_history: ``(B, iterations run + 1)`` error after each iteration, when tracked.
        linear_solver: the linear solver used.
        message: why the run stopped, in words.
    """

    converged: torch.Tensor
    iterations: torch.Tensor
    initial_error: torch.Tensor
    final_error: torch.Tensor
    status: torch.Tensor
    linear_solver: str
    message: str
    failure: Optional[torch.Tensor] = None
    termination: Optional[torch.Tensor] = None
    active_bounds: Optional[Dict[str, torch.Tensor]] = None
    best_solution: Optional[Dict[str, torch.Tensor]] = None
    best_error: Optional[torch.Tensor] = None
    err_history: Optional[torch.Tensor] = None
    elapsed: float = field(default=0.0)

    def __repr__(self) -> str:
        return f"OptimizerInfo({self.message})"


@dataclass
class SolveState:
    """The state of one solve, per batch element (``B`` elements).

    Attributes:
        values: the optim variables' values, one ``(N, B, *shape)`` tensor per variable block
            (see :class:`~nlls.core.evaluation.Evaluator`).
        aux: the stacked aux data the residuals read (``Evaluator.aux``).
        error: ``(B,)`` objective value at ``values``.
        active: ``(B,)`` bool, the element still iterates.
        status: ``(B,)`` int8 :class:`Status` codes.
        failure: ``(B,)`` int8 :class:`Failure` codes.
        termination: ``(B,)`` int8 :class:`Termination` codes of the rules that have fired
            (``NONFINITE`` for a failed element until ``postprocess`` knows its reason).
        lower, upper: ``(B, D)`` box bounds on the step's coordinates (vector variables only,
            infinite elsewhere), or ``None`` without bounds.
        iterations: ``(B,)`` iterations each element has run.
        step_state: the step rule's own state (e.g. Levenberg-Marquardt's damping), a
            dataclass of ``(B,)`` tensors or ``None``.
        initial_error: ``(B,)`` error at the start.
        best_values, best_error: the lowest-error iterate so far, when tracked (else ``None``).
        history: the error after each iteration, when tracked (else ``None``).
        freeze_converged: converged elements stop stepping (``True``); the truncated backward
            mode turns it off so that every element that has not failed takes its steps.
        step_norm: ``(B,)`` norm of the step each element took in the last iteration (0 when it
            did not step), tracked when a ``callback`` is given (else ``None``).
        iteration: iterations run by the driver (host-side count).
        started: ``time.perf_counter()`` at ``init``; verbose: print progress.
        callback: called by ``Optimizer.terminate`` with an :class:`IterationInfo` (see
            ``optimize(callback=...)``).
        stalls_pending: some step left its stalls to be judged at the end (an eager step of a
            fixed-count solve: :func:`nlls.solve.termination.defers_stalls`).
    """

    values: Values
    aux: List[List[torch.Tensor]]
    error: torch.Tensor
    active: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    step_state: Any
    initial_error: torch.Tensor
    failure: Optional[torch.Tensor] = None
    termination: Optional[torch.Tensor] = None
    lower: Optional[torch.Tensor] = None
    upper: Optional[torch.Tensor] = None
    step_norm: Optional[torch.Tensor] = None
    best_values: Optional[Values] = None
    best_error: Optional[torch.Tensor] = None
    history: Optional[List[torch.Tensor]] = None
    freeze_converged: bool = True
    iteration: int = 0
    started: float = 0.0
    verbose: bool = False
    callback: Optional[Callable] = None
    stalls_pending: bool = False

    # ---- what drivers use to pass the device part through compiled or captured code ----------
    def device_part(self) -> Dict[str, Any]:
        """The fields that change by device operations, as a dict of tensors, tuples of tensors
        and the step-rule state (a pytree ``torch.compile`` accepts as input and output)."""
        return {name: getattr(self, name) for name in DEVICE_FIELDS}

    def replace(self, **changes) -> "SolveState":
        """A copy with ``changes`` (the host-side fields are kept)."""
        return dataclasses.replace(self, **changes)

    def tensors(self) -> List[torch.Tensor]:
        """Every tensor of the device part, in a fixed order (for copying in and out of buffers)."""
        out: List[torch.Tensor] = []
        for value in self.device_part().values():
            out.extend(flatten(value))
        return out


#: the fields of :class:`SolveState` that device code reads and writes
DEVICE_FIELDS = ("values", "error", "active", "status", "iterations", "step_state", "initial_error",
                 "failure", "termination", "lower", "upper", "step_norm", "best_values", "best_error", "history")


@dataclass
class IterationInfo:
    """What a callback (``optimize(callback=fn)``) receives every ``check_every`` iterations.

    Attributes:
        iteration: iterations run so far.
        error: ``(B,)`` objective value of every element (at its accepted values).
        damping: ``(B,)`` the step rule's damping (Levenberg-Marquardt), else ``None``.
        step_norm: ``(B,)`` norm of the step each element took in the last iteration (0 if none).
        status: ``(B,)`` :class:`Status` codes (``RUNNING`` while an element iterates).
        active: ``(B,)`` the elements still iterating.
        elapsed: seconds since the solve started.

    The callback returns ``None``/``False`` to go on, ``True`` to stop every element, or a ``(B,)``
    bool tensor to stop those elements; stopped elements that were running end with
    ``Status.STOPPED`` and keep their current values.
    """

    iteration: int
    error: torch.Tensor
    damping: Optional[torch.Tensor]
    step_norm: torch.Tensor
    status: torch.Tensor
    active: torch.Tensor
    elapsed: float


def flatten(value) -> List[torch.Tensor]:
    """The tensors inside ``value`` (a tensor, ``None``, a list/tuple, a dict or a dataclass of
    them), in a fixed order."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        value = [value[k] for k in sorted(value)]
    out: List[torch.Tensor] = []
    for item in value:
        out.extend(flatten(item))
    return out


def map_tensors(fn, value):
    """``value`` with every tensor inside replaced by ``fn(tensor)`` (same structure)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # an instance, not the class
        return dataclasses.replace(value, **{f.name: map_tensors(fn, getattr(value, f.name))
                                             for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: map_tensors(fn, value[k]) for k in sorted(value)}
    return type(value)(map_tensors(fn, v) for v in value)


def unflatten(template, tensors):
    """The structure of ``template`` filled with ``tensors`` (an iterator), in :func:`flatten`'s
    order: the inverse of ``flatten``."""
    return map_tensors(lambda _: next(tensors), template)


def select(mask: torch.Tensor, new: Values, old: Values) -> Values:
    """Per batch element, the blocks of ``new`` where ``mask (B,)`` holds, else of ``old``."""
    out = []
    for n, o in zip(new, old):
        m = mask.reshape(1, -1, *([1] * (n.ndim - 2)))
        out.append(torch.where(m, n, o))
    return tuple(out)
