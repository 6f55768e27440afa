"""The shared optimization loop, as a protocol of four methods.

Every nonlinear least-squares method here repeats the same iteration, per batch element::

    linearize:  A = J^T J, g = J^T r at the current estimate x
    converge?:  the gradient test (max-norm of g, projected into the box with bounds)
    step:       a step rule turns (A, g) into a tangent step delta     (GaussNewton, LM, ...)
    try:        x' = x (+) step_size * delta (clamped into the box), evaluate the error at x'
    accept:     the step rule says whether x' replaces x (and adapts its own state)
    converge?:  function, parameter and absolute-error tests of an accepted step; a step rule
                that can decrease no further

The rules, their order and their defaults are in :mod:`nlls.solve.termination`; box bounds
(``Objective.set_bounds``) in :mod:`nlls.solve.bounds`. :class:`Optimizer` owns all of it but the
step rule, through the documented protocol of :mod:`nlls.solve.state`: :meth:`~Optimizer.init`,
:meth:`~Optimizer.step`, :meth:`~Optimizer.terminate` and :meth:`~Optimizer.postprocess`. Drivers
(:mod:`nlls.solve.drivers`: the eager loop, compiled chunks, CUDA graphs) and the backward modes
of the layer use nothing else. Per-element decisions are boolean masks applied with
``torch.where``, so a step never reads a value back to the host; only ``terminate`` does.

A step rule (a subclass) defines :meth:`~Optimizer.compute_step` and :meth:`~Optimizer.accept`,
and, when it keeps state of its own, :meth:`~Optimizer.init_step_state`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from ..core.evaluation import Evaluator
from ..core.objective import Objective
from . import termination as rules
from .bounds import bounds_report, box_candidate, box_start, box_system
from .callbacks import call_back
from .checks import check_bool, check_number
from .drivers.base import Driver
from .drivers.select import select_driver
from .guard import finite_start, finite_trial, guarded_inputs, recording, records
from .linear import LinearSolver, make_linear_solver
from .linearization import LINEARIZATIONS, Linearization
from .report import classify_failures, print_iteration, settle, solve_message
from .state import Failure, OptimizerInfo, SolveState, Status, Values, flatten, select, unflatten
from .tracing import is_compiling


class Optimizer:
    """Base of the nonlinear least-squares optimizers: the loop; subclasses give the step rule.

    Args:
        objective: the problem; its optim variables are updated in place by :meth:`optimize`.
        linear_solver: a name (``"dense_cholesky"``, ``"dense_lu"``) or a LinearSolver instance.
        max_iterations: iterations at most.
        step_size: the step taken is ``step_size * delta``.
        abs_err_tolerance: an element whose error falls to this value has converged (0: off but at 0).
        rel_err_tolerance: the older name of ``function_tolerance``; when given it sets it and
            caps the gradient and parameter tolerances (exactly 0 switches every relative test
            off, for fixed iteration counts, as it always did).
        check_every: iterations between the reads of "has every element stopped?" (a host
            sync). The default 1 comes from ``bench/bench_check_every.py`` (the reads cost little
            on the CPU, and a larger value runs solves that converge early for longer). Frozen
            elements make the results the same for every value; for fixed-count solves on CUDA,
            ``cuda_graph=True`` makes no reads at all.
        function_tolerance: an accepted step that changes the cost by at most this fraction of it
            ends the element's run (Ceres's rule; 0 switches it off).
        gradient_tolerance: a max-norm of the gradient (projected into the box, with bounds) at
            most this ends the run (0 switches it off).
        parameter_tolerance: an accepted step of norm at most ``parameter_tolerance * (||x|| +
            parameter_tolerance)`` ends the run (0 switches it off).

    The rules and the measurements behind the defaults: :mod:`nlls.solve.termination`.
    """

    def __init__(
        self,
        objective: Objective,
        linear_solver: Union[str, LinearSolver] = "dense_cholesky",
        max_iterations: int = 20,
        step_size: float = 1.0,
        abs_err_tolerance: float = rules.ABS_ERR_TOLERANCE,
        rel_err_tolerance: Optional[float] = None,
        check_every: int = 1,
        function_tolerance: float = rules.FUNCTION_TOLERANCE,
        gradient_tolerance: float = rules.GRADIENT_TOLERANCE,
        parameter_tolerance: float = rules.PARAMETER_TOLERANCE,
    ):
        if not isinstance(objective, Objective):
            raise TypeError(f"{type(self).__name__}: objective must be an nlls.Objective, got {type(objective).__name__}")
        check_number(self, "max_iterations", max_iterations, integer=True, minimum=0)
        check_number(self, "step_size", step_size, minimum=0, open_minimum=True)
        check_number(self, "abs_err_tolerance", abs_err_tolerance, minimum=0)
        check_number(self, "check_every", check_every, integer=True, minimum=1)
        self.objective = objective
        self.linear_solver = make_linear_solver(linear_solver)
        self.max_iterations = int(max_iterations)
        self.step_size = float(step_size)
        self.abs_err_tolerance = float(abs_err_tolerance)
        self.function_tolerance = self.gradient_tolerance = self.parameter_tolerance = 0.0
        rules.set_tolerances(self, rel_err_tolerance, function_tolerance, gradient_tolerance, parameter_tolerance)
        self.check_every = int(check_every)
        self._evaluator: Optional[Evaluator] = None
        self._linearization: Optional[Linearization] = None
        self._caches: Dict[str, dict] = {}  # per driver: compiled code, captured graphs

    # ---- step rule: what subclasses define ----------------------------------------------
    def init_step_state(self, error: torch.Tensor) -> Any:
        """The step rule's per-element state (e.g. the damping), given the initial error; a
        dataclass of ``(B,)`` tensors, or ``None`` (the default) for a rule without state."""
        return None

    def compute_step(self, system, step_state) -> Tuple[torch.Tensor, torch.Tensor]:
        """The step of every element: ``(delta (B, D), solved (B,) bool)``, from the normal
        equations ``system`` (``system.A``, ``system.g``; see :mod:`nlls.solve.systems`)."""
        raise NotImplementedError(f"{type(self).__name__} defines no compute_step")

    def accept(self, system, step_state, delta, solved, error, new_error):
        """Judge the trial step: returns ``(accept (B,), failed (B,), stalled (B,), step_state)``.
        ``stalled`` elements cannot decrease further and stop as converged."""
        raise NotImplementedError(f"{type(self).__name__} defines no accept")

    @property
    def rel_err_tolerance(self) -> float:
        """The older name of :attr:`function_tolerance` (read-only)."""
        return self.function_tolerance

    @property
    def fixed_count(self) -> bool:
        """Whether every stopping rule is off: a solve runs ``max_iterations`` iterations."""
        return not any((self.abs_err_tolerance, self.function_tolerance, self.gradient_tolerance, self.parameter_tolerance))

    def damping_of(self, step_state) -> Optional[torch.Tensor]:
        """The damping to show in verbose output, if the rule has one."""
        return None

    @property
    def checks_steps(self) -> bool:
        """Whether the step rule rejects a trial step that does not decrease the error (instead
        of taking every finite step); failure messages advise accordingly."""
        return False

    # ---- structure ----------------------------------------------------------------------
    def prepare(self) -> Evaluator:
        """Build (once per objective structure) the evaluator, the linearization and the linear
        solver's analysis; returns the evaluator."""
        version = self.objective.structure_version
        if self._evaluator is None or self._evaluator.structure_version != version:
            if not self.objective.optim_vars:
                raise ValueError(f"{type(self).__name__}: the objective has no optim variables")
            evaluator = self.objective.evaluator()
            assert evaluator is not None, "an objective with optim variables has cost functions"
            self._evaluator = evaluator
            kind = LINEARIZATIONS[self.linear_solver.linearization]
            self._linearization = kind(evaluator)
            self._caches.pop("compiled", None)
            self.linear_solver.setup(self._linearization)
        return self._evaluator

    @property
    def evaluator(self) -> Evaluator:
        """The vectorized evaluator of the objective (built by :meth:`prepare`)."""
        return self.prepare()

    @property
    def linearization(self) -> Linearization:
        """What turns residuals and Jacobians into the linear solver's system."""
        self.prepare()
        return self._built()[1]

    def _built(self) -> Tuple[Evaluator, Linearization]:
        """The evaluator and linearization :meth:`prepare` built (the protocol starts with ``init``)."""
        assert self._evaluator is not None and self._linearization is not None, "prepare() builds them"
        return self._evaluator, self._linearization

    def cache(self, name: str) -> dict:
        """A driver's cache on this optimizer (compiled code, captured graphs), kept while the
        objective's structure stays."""
        return self._caches.setdefault(name, {})

    def reset_cuda_graphs(self) -> None:
        """Drop the CUDA graphs captured by ``optimize(cuda_graph=True)`` (and their memory);
        needed before solving again after the objective's structure changed."""
        self._caches.pop("cuda_graph", None)

    # ---- the protocol -----------------------------------------------------------------------
    def init(self, track_best_solution: bool = False, track_err_history: bool = False,
             verbose: bool = False, callback: Optional[Callable] = None) -> SolveState:
        """The start of a solve from the objective's current values; ``callback`` is called by
        :meth:`terminate` (see :meth:`optimize`)."""
        if callback is not None and not callable(callback):
            raise TypeError(f"{type(self).__name__}: callback must be callable, got {callback!r}")
        started = time.perf_counter()
        evaluator = self.prepare()
        batch = evaluator.batch_size()
        state = self.initial_state(evaluator.gather(batch), evaluator.aux(batch),
                                   track_best_solution, track_err_history)
        state.started, state.verbose, state.callback = started, verbose, callback
        if callback is not None:  # the steps' norms are tracked for it
            state.step_norm = torch.zeros_like(state.error)
        if verbose:
            print(f"{type(self).__name__} with {self.linear_solver!r}: batch {batch}, "
                  f"{evaluator.dof} unknowns, {len(evaluator.groups)} cost group(s)")
            print_iteration(self, state)
        return state

    def initial_state(self, values: Values, aux, track_best_solution: bool = False,
                      track_err_history: bool = False) -> SolveState:
        """The start of a solve from block values and aux data (as
        :meth:`~nlls.core.evaluation.Evaluator.gather` and ``aux`` give them): device work only,
        no host read-back, so compiled and captured solves run it too."""
        values, lower, upper = box_start(self, self._built()[0], values)  # projected into the box
        error = self.error_at(values, aux)
        finite = torch.isfinite(error)
        active = finite & (error > self.abs_err_tolerance)
        status = torch.where(finite, torch.where(active, int(Status.RUNNING), int(Status.CONVERGED)),
                             int(Status.FAILED)).to(torch.int8)  # (plain ints: see step)
        failure = (~finite).to(torch.int8) * int(Failure.NONFINITE_START)  # NONE elsewhere (0)
        termination = rules.initial_codes(self, finite, active)
        return SolveState(
            values=values, aux=aux, error=error, active=active, status=status,
            iterations=torch.zeros_like(error, dtype=torch.long),
            step_state=self.init_step_state(error), initial_error=error, failure=failure,
            termination=termination, lower=lower, upper=upper,
            best_values=values if track_best_solution else None,
            best_error=error if track_best_solution else None,
            history=[error] if track_err_history else None,
        )

    def error_at(self, values: Values, aux) -> torch.Tensor:
        """The objective value ``(B,)`` at block ``values``; while autograd records, a non-finite
        element's value is data, not a graph (see :mod:`nlls.solve.guard`)."""
        evaluator = self._built()[0]
        error = evaluator.error_metric(values, aux)
        if records(values, aux) and (is_compiling() or not bool(torch.isfinite(error).all())):
            error = finite_start(evaluator, values, aux, error)
        return error

    def step(self, state: SolveState) -> SolveState:
        """One iteration of every active element; returns the new state.

        While autograd records it, elements that are not active compute with a healthy element's
        inputs and a trial step whose error is not finite is evaluated again at the current
        values (:mod:`nlls.solve.guard`): the results are the same, and no failed element puts
        NaN into the gradient the batch shares."""
        evaluator, linearization = self._built()
        guard = recording(state)
        values, aux, error_in, step_state_in = (
            guarded_inputs(state) if guard and (is_compiling() or not bool(state.active.all()))
            else (state.values, state.aux, state.error, state.step_state))
        system = linearization.linearize(values, aux)
        system, gradient, x = box_system(evaluator, system, values, state.lower, state.upper)
        small_gradient = rules.gradient_test(self, gradient, state.active)
        delta, solved = self.compute_step(system, step_state_in)
        step = delta * self.step_size if self.step_size != 1.0 else delta
        candidate = evaluator.retract(values, step)
        if x is not None:  # projected into the box
            candidate, step = box_candidate(evaluator, candidate, x, step, state.lower, state.upper)
            delta = step / self.step_size if self.step_size != 1.0 else step
        new_error = evaluator.error_metric(candidate, aux)
        if guard and (is_compiling() or not bool(torch.isfinite(new_error).all())):
            with torch.no_grad():  # the decisions, from the trial as it is
                accept, failed, stalled, raw_state = self.accept(
                    system, step_state_in, delta, solved, error_in, new_error)
            candidate, safe_error, finite = finite_trial(evaluator, candidate, values, aux, new_error)
            step_state = self.accept(system, step_state_in, delta, solved, error_in, safe_error)[3]
            step_state = unflatten(step_state, iter(  # a non-finite trial's rule state: no graph
                torch.where(finite.reshape(-1, *[1] * (s.ndim - 1)), s, r) if s.ndim else s
                for s, r in zip(flatten(step_state), flatten(raw_state))))
            new_error = torch.where(finite, safe_error, new_error.detach())
        else:
            accept, failed, stalled, step_state = self.accept(
                system, step_state_in, delta, solved, error_in, new_error)
        active = state.active
        running = active if state.freeze_converged else active & (state.status == int(Status.RUNNING))  # (frozen: the same)
        if small_gradient is not None:  # stops where it is, this step not taken (None: the rule is off)
            small_gradient = small_gradient & running
            accept, failed, stalled = accept & ~small_gradient, failed & ~small_gradient, stalled & ~small_gradient
        if not state.freeze_converged:  # truncated: converged elements' steps are taken (their dependence on the data)
            accept = accept | ((state.status == int(Status.CONVERGED)) & solved & torch.isfinite(new_error))
        accept = accept & active
        failed = failed & active & ~accept
        stalled = stalled & active & ~accept & ~failed if self.checks_steps else None  # (else never)
        done, termination, plateau = rules.conclude(  # (frozen: every active element is running)
            self, state, system, gradient, None if state.freeze_converged else running,
            small_gradient=small_gradient, accept=accept, stalled=stalled, failed=failed,
            new_error=new_error, step=step, tried=(running & solved & torch.isfinite(new_error) & ~failed & ~accept)
            if self.function_tolerance > 0 else None)
        values, error = select(accept, candidate, state.values), torch.where(accept, new_error, state.error)
        failure = state.failure
        if plateau is not None:  # (done already: NO_FURTHER_DECREASE fired)
            failed = failed | plateau
            failure = None if failure is None else failure.masked_fill(plateau, int(Failure.NO_DECREASE))
        status = torch.where(failed, int(Status.FAILED), torch.where(done, int(Status.CONVERGED), state.status))
        new = SolveState(  # all fields spelled out: dataclasses.replace costs more per step
            values=values, aux=state.aux, error=error, status=status, step_state=step_state,
            active=active & ~done if state.freeze_converged else active & ~failed,  # (else: the truncated backward)
            iterations=state.iterations + active.long(), initial_error=state.initial_error,
            failure=failure,  # other failures are classified in postprocess (no work per step)
            termination=termination, lower=state.lower, upper=state.upper,
            best_values=state.best_values, best_error=state.best_error, history=state.history,
            freeze_converged=state.freeze_converged, iteration=state.iteration + 1, started=state.started,
            verbose=state.verbose, callback=state.callback, stalls_pending=rules.defers_stalls(self, state),
            step_norm=None if state.step_norm is None else torch.where(
                accept, step.norm(dim=-1), torch.zeros_like(state.step_norm)),
        )
        if state.best_values is not None:
            assert state.best_error is not None, "tracked together with best_values"
            better = error < state.best_error
            new.best_values = select(better, values, state.best_values)
            new.best_error = torch.where(better, error, state.best_error)
        if state.history is not None:
            new.history = state.history + [error]
        if state.verbose:
            print_iteration(self, new, step, active)
        return new

    def terminate(self, state: SolveState) -> bool:
        """Whether the run is over: every element has stopped (a host read). Never true while
        ``state.freeze_converged`` is off (elements then take every step they are given), unless a
        callback stopped every element. Calls ``state.callback`` first, if any: the elements it
        stops end with ``Status.STOPPED`` (``state`` is updated in place)."""
        if state.callback is not None:
            call_back(self, state)
            if not bool(state.active.any()) and bool((state.status == Status.STOPPED).any()):
                return True
        return state.freeze_converged and not bool(state.active.any())

    def postprocess(self, state: SolveState, write_back: bool = True) -> OptimizerInfo:
        """The :class:`OptimizerInfo` of a run; with ``write_back`` the solution goes into the variables."""
        evaluator = self._built()[0]
        running = state.status == int(Status.RUNNING)  # (plain ints: an IntEnum costs a conversion)
        status = torch.where(running, int(Status.MAX_ITERATIONS), state.status)
        state, status, outcome = settle(self, state, status)  # (one read: the counts the rest needs)
        state, before = classify_failures(self, state, status, outcome), state
        termination = rules.final_termination(state, status, running, unchanged=state is before,
                                              out_of_iterations=outcome.of(Status.MAX_ITERATIONS) == outcome.size)
        if write_back:
            evaluator.scatter(state.values)
        info = OptimizerInfo(
            converged=status == Status.CONVERGED, iterations=state.iterations,
            initial_error=state.initial_error, final_error=state.error, status=status,
            linear_solver=repr(self.linear_solver), message=solve_message(self, state, status, outcome),
            failure=state.failure, termination=termination, elapsed=time.perf_counter() - state.started,
            active_bounds=bounds_report(self, state),
        )
        if state.best_values is not None:
            info.best_solution = evaluator.as_dict(state.best_values)
            info.best_error = state.best_error
        if state.history is not None:
            info.err_history = torch.stack(state.history, dim=1)
        if state.verbose:
            print(info.message)
        return info

    # ---- the user's entry point ---------------------------------------------------------------
    def optimize(
        self,
        verbose: bool = False,
        track_best_solution: bool = False,
        track_err_history: bool = False,
        compile: bool = False,
        cuda_graph: bool = False,
        driver: Optional[Driver] = None,
        callback: Optional[Callable] = None,
    ) -> OptimizerInfo:
        """Run the optimizer and write the solution into the objective's optim variables.

        Args:
            verbose: print one line per iteration (iteration, error, damping, step norm, time).
            track_best_solution: report the lowest-error iterate in ``info.best_solution``.
            track_err_history: report the error after every iteration in ``info.err_history``.
            compile: run the iterations through ``torch.compile`` in chunks of ``check_every``
                (see :mod:`nlls.solve.drivers.compiled`): much less overhead per iteration on
                small problems, after a one-off compilation per problem structure and shape.
                With ``check_every >= max_iterations`` the whole solve is one compiled call.
            cuda_graph: capture the whole solve (``max_iterations`` iterations, converged
                elements frozen by their masks) in a CUDA graph once per problem structure and
                shape, and replay it with the current data on every call (see
                :mod:`nlls.solve.drivers.cuda_graph`): one launch instead of thousands of kernel
                launches. CUDA only, dense linear solvers, no autograd graph through the solve.
            driver: an execution strategy (:mod:`nlls.solve.drivers`) instead of the two flags.
            callback: ``fn(info)`` with an :class:`~nlls.solve.state.IterationInfo` (per-element
                error, damping, step norm, status; iteration, elapsed time), called every
                ``check_every`` iterations (eagerly, or between compiled chunks; once after a
                CUDA-graph replay); returning ``True`` stops every element, a ``(B,)`` bool tensor
                stops those (they end with ``Status.STOPPED``). Without one, nothing is added to
                the loop.

        Returns:
            :class:`OptimizerInfo`. Non-convergence is reported there, not raised.
        """
        name = f"{type(self).__name__}.optimize"
        for key, value in (("verbose", verbose), ("track_best_solution", track_best_solution),
                           ("track_err_history", track_err_history), ("compile", compile),
                           ("cuda_graph", cuda_graph)):
            check_bool(name, key, value)
        runner = select_driver(name, compile, cuda_graph, driver)
        state = runner.solve(self, self.max_iterations, track_best_solution=track_best_solution,
                             track_err_history=track_err_history, verbose=verbose, callback=callback)
        return self.postprocess(state)
