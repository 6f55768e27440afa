"""The shared optimization loop.

Every nonlinear least-squares method here repeats the same iteration, per batch element::

    linearize:  A = J^T J, g = J^T r at the current estimate x
    step:       a step rule turns (A, g) into a tangent step delta     (GaussNewton, LM, ...)
    try:        x' = x (+) step_size * delta, evaluate the error at x'
    accept:     the step rule says whether x' replaces x (and adapts its own state)
    converge:   an accepted step with error <= abs_err_tolerance, or a relative change
                |e - e'| <= rel_err_tolerance * e (of an accepted or rejected step), or an
                increase of an error already eps times its start (rounding noise), ends that
                element's run

This module owns all of it but the step rule: iteration, per-element freezing (an element that
converged or failed keeps its values while the rest of the batch goes on), best-solution tracking,
error history and the :class:`OptimizerInfo`. Per-element decisions are boolean masks applied
with ``torch.where``, so the loop never reads a value back to the host except for the "all
done?" test, made every ``check_every`` iterations.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch

from ..core.objective import Objective
from ..core.evaluation import Evaluator, State
from .linear import LinearSolver, make_linear_solver
from .linearization import (DenseLinearization, DenseSystem, JacobianLinearization, Linearization,
                            SparseLinearization)

LINEARIZATIONS = {
    "dense": DenseLinearization, "sparse": SparseLinearization, "jacobian": JacobianLinearization,
}


class Status(enum.IntEnum):
    """Why a batch element stopped (``OptimizerInfo.status``)."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITERATIONS = 2
    FAILED = 3


@dataclass
class OptimizerInfo:
    """What ``optimize()`` reports, per batch element.

    Attributes:
        converged: ``(B,)`` bool, the element met a tolerance (or could decrease no further).
        iterations: ``(B,)`` iterations the element ran before it stopped.
        initial_error, final_error: ``(B,)`` objective values ``0.5 * sum ||w r||^2``.
        status: ``(B,)`` :class:`Status` codes.
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
    best_solution: Optional[Dict[str, torch.Tensor]] = None
    best_error: Optional[torch.Tensor] = None
    err_history: Optional[torch.Tensor] = None
    elapsed: float = field(default=0.0)

    def __repr__(self) -> str:
        return f"OptimizerInfo({self.message})"


@dataclass
class _Loop:
    """The mutable state of one run."""

    state: State
    aux: list
    error: torch.Tensor
    active: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    memory: dict
    initial_error: torch.Tensor
    started: float
    verbose: bool = False
    count: int = 0  # iterations run
    best_state: Optional[State] = None
    best_error: Optional[torch.Tensor] = None
    history: Optional[List[torch.Tensor]] = None


def _where(mask: torch.Tensor, new: State, old: State) -> State:
    out = []
    for n, o in zip(new, old):
        m = mask.reshape(1, -1, *([1] * (n.ndim - 2)))
        out.append(torch.where(m, n, o))
    return tuple(out)


class Optimizer:
    """Base of the nonlinear least-squares optimizers: the loop; subclasses give the step rule.

    Args:
        objective: the problem; its optim variables are updated in place by :meth:`optimize`.
        linear_solver: a name (``"dense_cholesky"``, ``"dense_lu"``) or a LinearSolver instance.
        max_iterations: iterations at most.
        step_size: the step taken is ``step_size * delta``.
        abs_err_tolerance: an element whose error falls to this value has converged.
        rel_err_tolerance: an element whose step changes the error by at most this fraction has
            converged (raised to 100 machine epsilons of the dtype, as smaller changes are
            rounding noise; exactly 0 switches the test off, for fixed iteration counts).
        check_every: iterations between the reads of "has every element stopped?" (a host
            sync). The default 1 comes from ``bench/bench_check_every.py``: on the CPU the reads
            cost 0-4% of a fixed-count run, while checking every 5 (10) iterations ran solves
            that converge in 2-14 iterations up to 2.4x (4.7x) longer. Frozen elements make the
            results the same for every value; for fixed-count solves on CUDA,
            ``cuda_graph=True`` makes no reads at all.
    """

    def __init__(
        self,
        objective: Objective,
        linear_solver: Union[str, LinearSolver] = "dense_cholesky",
        max_iterations: int = 20,
        step_size: float = 1.0,
        abs_err_tolerance: float = 1e-10,
        rel_err_tolerance: float = 1e-8,
        check_every: int = 1,
    ):
        if not isinstance(objective, Objective):
            raise TypeError(f"{type(self).__name__}: objective must be an nlls.Objective, got {type(objective).__name__}")
        _check_number(self, "max_iterations", max_iterations, integer=True, minimum=0)
        _check_number(self, "step_size", step_size, minimum=0, open_minimum=True)
        _check_number(self, "abs_err_tolerance", abs_err_tolerance, minimum=0)
        _check_number(self, "rel_err_tolerance", rel_err_tolerance, minimum=0)
        _check_number(self, "check_every", check_every, integer=True, minimum=1)
        self.objective = objective
        self.linear_solver = make_linear_solver(linear_solver)
        self.max_iterations = int(max_iterations)
        self.step_size = float(step_size)
        self.abs_err_tolerance = float(abs_err_tolerance)
        self.rel_err_tolerance = float(rel_err_tolerance)
        self.check_every = int(check_every)
        self._evaluator: Optional[Evaluator] = None
        self._linearization: Optional[Linearization] = None
        self._compiled: dict = {}  # compiled iteration chunks (nlls.solve.compiled)
        self._cuda_graphs: dict = {}  # captured solves (nlls.solve.cuda_graph)
        self._cuda_graph_structure: Optional[int] = None

    def reset_cuda_graphs(self) -> None:
        """Drop the CUDA graphs captured by ``optimize(cuda_graph=True)`` (and their memory);
        needed before solving again after the objective's structure changed."""
        self._cuda_graphs = {}
        self._cuda_graph_structure = None

    # ---- step rule: what subclasses define ----------------------------------------------
    def _init_memory(self, error: torch.Tensor) -> dict:
        """Per-element state of the step rule (e.g. the damping), given the initial error."""
        return {}

    def _compute_step(self, system: DenseSystem, memory: dict):
        """Returns ``(delta (B, D), solved (B,) bool)``."""
        raise NotImplementedError

    def _accept(self, system, memory, delta, solved, error, new_error):
        """Returns ``(accept (B,), failed (B,), stalled (B,), memory)``. ``stalled`` elements
        cannot decrease further and stop as converged."""
        raise NotImplementedError

    def _damping_for_display(self, memory: dict) -> Optional[torch.Tensor]:
        return None

    # ---- structure ----------------------------------------------------------------------
    def _prepare(self) -> Evaluator:
        version = self.objective._structure_version
        if self._evaluator is None or self._evaluator.structure_version != version:
            if not self.objective.optim_vars:
                raise ValueError(f"{type(self).__name__}: the objective has no optim variables")
            self._evaluator = Evaluator(self.objective)
            kind = LINEARIZATIONS[self.linear_solver.linearization]
            self._linearization = kind(self._evaluator)
            self._compiled = {}
            self.linear_solver.setup(self._linearization)
        return self._evaluator

    # ---- the loop -----------------------------------------------------------------------
    def _start(self, track_best_solution: bool = False, track_err_history: bool = False,
               verbose: bool = False) -> _Loop:
        started = time.perf_counter()
        evaluator = self._prepare()
        batch = evaluator.batch_size()
        loop = self._begin(evaluator.gather(batch), evaluator.aux(batch), track_best_solution,
                           track_err_history)
        loop.started, loop.verbose = started, verbose
        if verbose:
            print(f"{type(self).__name__} with {self.linear_solver!r}: batch {batch}, "
                  f"{evaluator.dof} unknowns, {len(evaluator.groups)} cost group(s)")
            print(f"iteration   0  error {_fmt(loop.error)}")
        return loop

    def _begin(self, state: State, aux, track_best_solution: bool = False,
               track_err_history: bool = False) -> _Loop:
        """The loop's starting point from values and aux data: device work only, no host
        read-back (a captured CUDA graph runs this too)."""
        error = self._evaluator.error_metric(state, aux)
        active = torch.isfinite(error) & (error > self.abs_err_tolerance)
        status = torch.where(
            torch.isfinite(error),
            torch.where(active, Status.RUNNING, Status.CONVERGED),
            Status.FAILED,
        ).to(torch.int8)
        loop = _Loop(
            state=state, aux=aux, error=error, active=active, status=status,
            iterations=torch.zeros_like(error, dtype=torch.long),
            memory=self._init_memory(error), initial_error=error, started=0.0,
        )
        if track_best_solution:
            loop.best_state, loop.best_error = state, error
        if track_err_history:
            loop.history = [error]
        return loop

    def _iterate(self, loop: _Loop, stop_on_convergence: bool = True) -> dict:
        """One iteration of every active element; returns numbers for the verbose line."""
        evaluator = self._evaluator
        system = self._linearization.linearize(loop.state, loop.aux)
        delta, solved = self._compute_step(system, loop.memory)
        step = delta * self.step_size if self.step_size != 1.0 else delta
        candidate = evaluator.retract(loop.state, step)
        new_error = evaluator.error_metric(candidate, loop.aux)
        accept, failed, stalled, loop.memory = self._accept(
            system, loop.memory, delta, solved, loop.error, new_error
        )
        active = loop.active
        accept = accept & active
        failed = failed & active & ~accept
        stalled = stalled & active & ~accept & ~failed
        converged = accept & (new_error <= self.abs_err_tolerance)
        if self.rel_err_tolerance > 0:  # exactly 0 switches the relative tests off (fixed counts)
            # a relative change below the dtype's resolution is rounding noise: never ask for less
            eps = torch.finfo(new_error.dtype).eps
            rel_tolerance = max(self.rel_err_tolerance, 100 * eps)
            change = (loop.error - new_error).abs()
            # as in Ceres, a rejected step that changes the error by less than the relative
            # tolerance also ends the run: the model has nothing left to gain
            evaluated = active & solved & torch.isfinite(new_error) & ~failed
            converged = converged | (evaluated & (change <= rel_tolerance * loop.error))
            # once the error is eps times its start, a step that raises it is rounding noise
            # (a zero-residual solve at its floor): relative changes mean nothing from there on
            at_floor = (new_error > loop.error) & (new_error <= eps * loop.initial_error)
            converged = converged | (accept & at_floor)
        loop.state = _where(accept, candidate, loop.state)
        loop.error = torch.where(accept, new_error, loop.error)
        loop.iterations = loop.iterations + active.long()
        done = converged | stalled
        loop.status = torch.where(done, Status.CONVERGED, loop.status)
        loop.status = torch.where(failed, Status.FAILED, loop.status).to(torch.int8)
        # without stop_on_convergence converged elements keep stepping (the truncated backward)
        loop.active = active & ~failed & (~done if stop_on_convergence else True)
        if loop.best_state is not None:
            better = loop.error < loop.best_error
            loop.best_state = _where(better, loop.state, loop.best_state)
            loop.best_error = torch.where(better, loop.error, loop.best_error)
        if loop.history is not None:
            loop.history.append(loop.error)
        return {"step": step, "active": active}

    def _finish(self, loop: _Loop, write_back: bool = True) -> OptimizerInfo:
        """The info of a run; with ``write_back`` the solution goes into the objective."""
        evaluator = self._evaluator
        running = loop.status == Status.RUNNING
        status = torch.where(running, Status.MAX_ITERATIONS, loop.status).to(torch.int8)
        if write_back:
            evaluator.scatter(loop.state)
        info = OptimizerInfo(
            converged=status == Status.CONVERGED,
            iterations=loop.iterations,
            initial_error=loop.initial_error,
            final_error=loop.error,
            status=status,
            linear_solver=repr(self.linear_solver),
            message=self._message(status),
            elapsed=time.perf_counter() - loop.started,
        )
        if loop.best_state is not None:
            info.best_solution = evaluator.as_dict(loop.best_state)
            info.best_error = loop.best_error
        if loop.history is not None:
            info.err_history = torch.stack(loop.history, dim=1)
        if loop.verbose:
            print(info.message)
        return info

    def _message(self, status: torch.Tensor) -> str:
        counts = {s: int((status == s).sum()) for s in Status}
        total = status.numel()
        parts = [f"{counts[Status.CONVERGED]}/{total} converged"]
        if counts[Status.MAX_ITERATIONS]:
            parts.append(
                f"{counts[Status.MAX_ITERATIONS]} reached max_iterations={self.max_iterations} "
                f"(increase max_iterations or loosen the tolerances)"
            )
        if counts[Status.FAILED]:
            advice = getattr(self.linear_solver, "failure_advice", "")
            parts.append(f"{counts[Status.FAILED]} failed: {advice or 'linear solve failed'}")
        return "; ".join(parts)

    def optimize(
        self,
        verbose: bool = False,
        track_best_solution: bool = False,
        track_err_history: bool = False,
        compile: bool = False,
        cuda_graph: bool = False,
    ) -> OptimizerInfo:
        """Run the optimizer and write the solution into the objective's optim variables.

        Args:
            verbose: print one line per iteration (iteration, error, damping, step norm, time).
            track_best_solution: report the lowest-error iterate in ``info.best_solution``.
            track_err_history: report the error after every iteration in ``info.err_history``.
            compile: run the iterations through ``torch.compile`` in chunks of ``check_every``
                (see :mod:`nlls.solve.compiled`): much less overhead per iteration on small
                problems, after a one-off compilation per problem structure and shape.
            cuda_graph: capture the whole solve (``max_iterations`` iterations, converged
                elements frozen by their masks) in a CUDA graph once per problem structure and
                shape, and replay it with the current data on every call (see
                :mod:`nlls.solve.cuda_graph`): one launch instead of thousands of kernel
                launches. CUDA only, dense linear solvers, no autograd graph through the solve.

        Returns:
            :class:`OptimizerInfo`. Non-convergence is reported there, not raised.
        """
        for key, value in (("verbose", verbose), ("track_best_solution", track_best_solution),
                           ("track_err_history", track_err_history), ("compile", compile),
                           ("cuda_graph", cuda_graph)):
            if not isinstance(value, bool):
                raise TypeError(f"{type(self).__name__}.optimize: {key} must be a bool, got {value!r}")
        if cuda_graph:
            if compile:
                raise ValueError(
                    f"{type(self).__name__}.optimize: compile=True and cuda_graph=True are "
                    f"exclusive (pick cuda_graph on CUDA, compile on the CPU)"
                )
            from .cuda_graph import run_cuda_graph

            loop = run_cuda_graph(self, self.max_iterations, True, track_best_solution,
                                  track_err_history, verbose)
            return self._finish(loop)
        loop = self._start(track_best_solution, track_err_history, verbose)
        self._run(loop, self.max_iterations, compile=compile)
        return self._finish(loop)

    # ---- phases, composed by optimize() and by OptimizationLayer ---------------------------
    def _run(self, loop: _Loop, num_iterations: int, stop_on_convergence: bool = True,
             compile: bool = False) -> None:
        """Run up to ``num_iterations`` iterations (fewer once every element has stopped).

        With ``stop_on_convergence=False`` every element that has not failed takes exactly
        ``num_iterations`` steps (the truncated backward mode differentiates such steps).
        """
        if compile:
            from .compiled import run_compiled

            if not stop_on_convergence:
                loop.active = loop.status != Status.FAILED
            return run_compiled(self, loop, num_iterations, stop_on_convergence)
        if not stop_on_convergence:
            loop.active = loop.status != Status.FAILED
        for _ in range(num_iterations):
            loop.count += 1
            numbers = self._iterate(loop, stop_on_convergence)
            if loop.verbose:
                self._print_iteration(loop, numbers)
            if (
                stop_on_convergence
                and loop.count % self.check_every == 0
                and not bool(loop.active.any())
            ):
                break

    def _print_iteration(self, loop: _Loop, numbers: dict) -> None:
        damping = self._damping_for_display(loop.memory)
        step_norm = numbers["step"].norm(dim=-1)[numbers["active"]]
        print(
            f"iteration {loop.count:3d}  error {_fmt(loop.error)}"
            + (f"  damping {damping.mean().item():.2e}" if damping is not None else "")
            + f"  step {step_norm.max().item() if step_norm.numel() else 0.0:.2e}"
            + f"  active {int(numbers['active'].sum())}/{loop.active.numel()}"
            + f"  time {1e3 * (time.perf_counter() - loop.started):.1f} ms"
        )


def _fmt(error: torch.Tensor) -> str:
    if error.numel() == 1:
        return f"{error.item():.6e}"
    return f"{error.mean().item():.6e} (mean of {error.numel()})"


def _check_number(owner, key, value, integer=False, minimum=None, open_minimum=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(
            f"{type(owner).__name__}: {key} must be {'an int' if integer else 'a number'}, "
            f"got {value!r}"
        )
    if minimum is not None and (value < minimum or (open_minimum and value == minimum)):
        bound = f"> {minimum}" if open_minimum else f">= {minimum}"
        raise ValueError(f"{type(owner).__name__}: {key} must be {bound}, got {value!r}")
