"""Where nlls's warm solve of a pose graph spends its time (``bench_pose_graph.py --profile``).

The solve is run by hand through the optimizer's public loop protocol, as the eager driver runs
it (``state = optimizer.init()``; ``state = optimizer.step(state)`` and
``optimizer.terminate(state)`` per iteration; ``optimizer.postprocess(state)``), each call timed.
Before each ``step``, the phases of that iteration are called once more, directly and in its order,
on the same state, each timed on its own: ``optimizer.linearization.linearize(values, aux)``,
``evaluator.jacobians``, the step rule (``optimizer.compute_step``; for Levenberg-Marquardt also
its parts: ``system.damped``, ``optimizer.linear_solver.factor(A)``, ``.solve(-g)``),
``evaluator.retract``, ``evaluator.error_metric`` at the candidate and ``optimizer.accept``. At
the start ``evaluator.gather`` and ``evaluator.aux`` are timed apart too. Wall clock, ms per
iteration (or per call), medians of three warm solves; then cProfile's top functions of one warm
``optimize()`` (cProfile inflates Python-heavy code; the wall-clock table is the one to read).
"""
from __future__ import annotations

import cProfile
import io
import pstats
import statistics
from pathlib import Path
from typing import Callable, Dict, List

import harness
import torch
from methods_nlls import nlls_pose_graph_runner

PER_CALL = " (per call)"


class PhaseLog:
    """Wall-clock seconds of each labelled call, summed per label."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}

    def __call__(self, label: str, function: Callable, *args):
        seconds, out = harness.seconds(lambda: function(*args))
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        return out


def iteration_phases(optimizer, state, log: PhaseLog) -> None:
    """The phases of one iteration from ``state``, called directly in ``optimizer.step``'s
    order, each timed."""
    evaluator, values, aux = optimizer.evaluator, state.values, state.aux
    system = log("linearize: all", optimizer.linearization.linearize, values, aux)
    log("linearize: residuals and Jacobians", evaluator.jacobians, values, aux)
    delta, solved = log("step rule: damp, factor, solve (compute_step)", optimizer.compute_step,
                        system, state.step_state)
    damping = getattr(state.step_state, "damping", None)
    if damping is not None:  # Levenberg-Marquardt: its parts
        matrix = log("damp: A + lambda D", system.damped, damping,
                     getattr(optimizer, "diagonal_scaling", False))
        factorization = log("factor: CSC build + numeric factorization",
                            optimizer.linear_solver.factor, matrix)
        log("solve: triangular solves", factorization.solve, -system.g)
    candidate = log("retract", evaluator.retract, values, delta * optimizer.step_size)
    new_error = log("error at the candidate", evaluator.error_metric, candidate, aux)
    log("accept: gain ratio (A delta)", optimizer.accept, system, state.step_state, delta, solved,
        state.error, new_error)


def protocol_solve(optimizer, log: PhaseLog):
    """One solve through the public protocol, as the eager driver runs it, every call timed
    (and each iteration's phases, :func:`iteration_phases`); returns the info and the
    iterations run."""
    evaluator = optimizer.prepare()
    log("start: gather values into blocks" + PER_CALL, evaluator.gather)
    log("start: stack aux data (measurements, weights)" + PER_CALL, evaluator.aux)
    state = log("start: all" + PER_CALL, optimizer.init)
    iterations = 0
    for count in range(1, optimizer.max_iterations + 1):
        iteration_phases(optimizer, state, log)
        state = log("one iteration, all of it", optimizer.step, state)
        iterations = count
        if count % optimizer.check_every == 0 and log("terminate: the all-stopped read",
                                                      optimizer.terminate, state):
            break
    info = log("finish: scatter back, info" + PER_CALL, optimizer.postprocess, state)
    return info, iterations


def profile_nlls(problem, backend: str, top: int, solves: int = 3) -> Dict:
    """The ``"measure": "profile"`` record of nlls on ``problem`` (see the module doc)."""
    runner = nlls_pose_graph_runner(problem, backend)
    runner.solve()  # the first solve builds the structure
    optimizer = runner.extra["optimizer"]
    resets, warm, logs, iterations = [], [], [], 1
    for _ in range(solves):
        reset_s, _ = harness.seconds(runner.reset)
        solve_s, _ = harness.seconds(runner.solve)  # a plain warm optimize()
        resets.append(reset_s)
        warm.append(solve_s)
        runner.reset()
        log = PhaseLog()
        _, iterations = protocol_solve(optimizer, log)
        logs.append(log.seconds)
    iterations = max(iterations, 1)
    phases = {}
    for label in logs[0]:
        per = 1 if label.endswith(PER_CALL) else iterations
        phases[label] = round(1e3 * statistics.median(log[label] for log in logs) / per, 3)
    runner.reset()
    profiler = cProfile.Profile()
    profiler.enable()
    runner.solve()
    profiler.disable()
    stats = pstats.Stats(profiler)
    ranked = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    stream = io.StringIO()
    stats.stream = stream
    stats.sort_stats("tottime").print_stats(top)
    harness.report(f"== cProfile of nlls ({backend}) on {problem.name}, one warm optimize() ==\n"
                   + stream.getvalue())
    return {"problem": problem.name, "method": f"nlls_{backend}", "measure": "profile",
            "threads": torch.get_num_threads(), "iterations": iterations,
            "reset_ms": round(1e3 * statistics.median(resets), 3),
            "median_ms": round(1e3 * statistics.median(warm), 3),
            "ms_by_phase": phases,
            "cprofile_top_tottime_ms_per_iteration": {
                f"{Path(path).name}:{line}({name})": round(1e3 * v[2] / iterations, 3)
                for (path, line, name), v in ranked}}


def profile_table(record: Dict) -> str:
    """The wall-clock phases of one profile record, in markdown."""
    head = (f"{record['method']} on {record['problem']}: warm solve {record['median_ms']:.1f} ms, "
            f"{record['iterations']} iterations; objective.update {record['reset_ms']:.1f} ms; "
            "wall clock, ms per iteration unless per call:")
    rows: List = [[k, f"{v:.2f}"] for k, v in record["ms_by_phase"].items()]
    return head + "\n\n" + harness.markdown_table(["phase", "ms"], rows, "lr")
