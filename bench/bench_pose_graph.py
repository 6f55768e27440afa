"""Sparse problems from files: pose graphs and a bundle adjustment, nlls beside GTSAM, SciPy and
Theseus, each solved to convergence from the same file in this process.

Problems (``problems_pose_graph.py``): synthetic 2-D pose graphs (a grid walk with 10 % loop
closures, written as g2o files in a temporary folder), the real files of ``../shared/data``
(GTSAM's examples: TORO and g2o pose graphs, 2-D and 3-D) and the BAL file there. Methods, each
skipped with the reason where its library does not import:

* ``nlls_cholmod``, ``nlls_scipy`` (``methods_nlls.py``): ``nlls.LevenbergMarquardt`` with
  ``SparseCholesky`` on each CPU backend (``auto`` picks one; the JSON lines say which);
* ``gtsam`` (``methods_gtsam.py``): GTSAM 4.3.0's ``LevenbergMarquardtOptimizer`` (C++), set up
  as the data README says;
* ``scipy_trf`` (``methods_scipy.py``): ``scipy.optimize.least_squares(method="trf")`` with a
  ``jac_sparsity`` pattern (finite differences, LSMR), 2-D pose graphs and BAL;
* ``theseus`` (``methods_theseus.py``): Theseus 0.2.3, ``th.LevenbergMarquardt`` with
  ``th.CholmodSparseSolver`` (vectorized), pose graphs.

For every problem and method: build time (file to a solver ready to run), the first solve
(nlls builds its evaluator, sparsity pattern and CHOLMOD analysis there), the warm solve (start
values set again, median of repetitions interleaved across methods), iterations, initial and final
cost ``0.5 * sum e^T Omega e`` as each library reports it, and the gap of the final cost to
GTSAM's. ``--profile``: where nlls's warm solve spends its time (``profile_pose_graph.py``). One
JSON line per measurement on stdout, a markdown table on stderr. See bench/README.md.

    python bench/bench_pose_graph.py                 # full run, about a minute and a half
    python bench/bench_pose_graph.py --quick         # smaller graphs, a smoke run (~15 s)
    python bench/bench_pose_graph.py --profile       # + where nlls's warm solve spends its time
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import harness
import torch
from methods_gtsam import gtsam_runner
from methods_nlls import auto_backend, nlls_pose_graph_runner
from methods_scipy import scipy_pose_graph_runner
from methods_theseus import BAL_REASON, theseus_pose_graph_runner
from problems_pose_graph import BAL_FILES, DATA, REAL_POSE_GRAPHS, SAME_COST, Problem, Runner, synthetic_problem
from profile_pose_graph import profile_nlls, profile_table

METHODS = ("nlls_cholmod", "nlls_scipy", "gtsam", "scipy_trf", "theseus")
IMPORTS = {"nlls_cholmod": ("sksparse.cholmod",), "gtsam": ("gtsam",),
           "theseus": ("theseus", "sksparse.cholmod")}


def _import(module: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        __import__(module)


def missing(method: str, problem: Problem) -> Optional[str]:
    """Why ``method`` cannot run on ``problem`` (None when it can)."""
    for module in IMPORTS.get(method, ()):
        try:
            _import(module)
        except Exception as exc:  # any import failure skips the method
            return f"{method} not importable: {type(exc).__name__}: {exc}"
    if method == "scipy_trf" and not problem.is_bal and problem.dimension == 3:
        return "SciPy residuals are written for SE(2) pose graphs and BAL only"
    if method == "theseus" and problem.is_bal:
        return BAL_REASON
    return None


def make_runner(method: str, problem: Problem, args) -> Runner:
    if method.startswith("nlls_"):
        return nlls_pose_graph_runner(problem, method.split("_", 1)[1])
    if method == "gtsam":
        return gtsam_runner(problem)
    if method == "scipy_trf":
        return scipy_pose_graph_runner(problem, args.scipy_max_nfev)
    return theseus_pose_graph_runner(problem)


class WarmSolve:
    """A timer of one warm solve: the reset first (its ms kept in ``reset_ms``, not in the time
    returned), then the solve; ``result`` is the solve's dict."""

    def __init__(self, runner: Runner):
        self.reset, self.solve = harness.Timed(runner.reset), harness.Timed(runner.solve)
        self.reset_ms: List[float] = []

    def __call__(self) -> float:
        self.reset_ms.append(self.reset())
        return self.solve()

    @property
    def result(self) -> Dict:
        return self.solve.result


def bench_problem(problem: Problem, args, emit, auto: str) -> None:
    base = {"problem": problem.name, "kind": problem.kind, "dimension": problem.dimension,
            **problem.size, "dtype": "float64", "device": "cpu",
            "threads": torch.get_num_threads()}
    records, runners, first_seconds = {}, {}, {}
    for method in args.methods:
        why = missing(method, problem)
        if why:
            records[method] = {**base, "method": method, "skipped": why}
            continue
        try:
            build, runner = harness.seconds(lambda m=method: make_runner(m, problem, args))
            first, result = harness.seconds(runner.solve)
        except Exception as exc:  # a baseline that fails is reported, the rest goes on
            records[method] = {**base, "method": method,
                               "skipped": f"failed: {type(exc).__name__}: {exc}"}
            continue
        runners[method], first_seconds[method] = runner, first
        records[method] = {**base, "method": method, "build_ms": round(1e3 * build, 3),
                           "first_solve_ms": round(1e3 * first, 3), **result}
        if method.startswith("nlls_"):
            records[method]["auto_backend"] = auto
    # warm solves, interleaved: one call of each method per repetition (a slow spell of the
    # machine hits neighbours alike); a method is repeated as often as max_seconds allows
    timers = {m: WarmSolve(runner) for m, runner in runners.items()}
    allowed = {m: max(1, min(args.repeats, int(args.max_seconds / max(first_seconds[m], 1e-3))))
               for m in runners}
    solve_ms = harness.interleaved(timers, args.repeats, allowed=allowed)
    reset_ms = {m: timer.reset_ms for m, timer in timers.items()}
    for method, timer in timers.items():
        records[method].update(timer.result)  # the warm run's numbers (the same as the first's)
        records[method].update(median_ms=round(harness.median(solve_ms[method]), 3),
                               reset_ms=round(harness.median(reset_ms[method]), 4),
                               repeats=len(solve_ms[method]))
    compare(records, solve_ms, reset_ms, problem)
    for method, runner in runners.items():
        record = records[method]
        if method.startswith("nlls_") and not record["converged"] and "reference" in record:
            record.update(time_to_reference(runner, records[record["reference"]], args))
    for method in args.methods:
        emit(records[method])


def time_to_reference(runner: Runner, reference: Dict, args) -> Dict:
    """For an nlls run that did not converge (BAL, where the cost creeps down a valley of
    minimisers for ever): the iterations until the cost first reaches the reference's final cost
    (+0.1 %), and the time of a solve stopped there (median of a few), beside the reference's."""
    optimizer = runner.extra["optimizer"]
    runner.reset()
    history = optimizer.optimize(track_err_history=True).err_history[0]
    hit = torch.nonzero(history <= reference["final_cost"] * (1.0 + SAME_COST))
    if hit.numel() == 0:
        return {"iterations_to_reference_cost": None}
    iterations, kept = max(int(hit[0, 0]), 1), optimizer.max_iterations
    optimizer.max_iterations = iterations
    try:
        timer = WarmSolve(Runner(lambda: optimizer.optimize(), runner.reset))
        times = harness.interleaved({"solve": timer}, max(1, min(args.repeats, 3)))["solve"]
    finally:
        optimizer.max_iterations = kept
    ms = harness.median(times)
    return {"iterations_to_reference_cost": iterations, "ms_to_reference_cost": round(ms, 3),
            "ratio_to_reference_at_its_cost": round(ms / reference["median_ms"], 3)}


def _ratio(numerators: List[float], denominators: List[float]) -> Optional[float]:
    ratio = harness.paired_median(numerators, denominators)
    return None if ratio is None else round(ratio, 3)


def compare(records: Dict[str, Dict], solve_ms, reset_ms, problem: Problem) -> None:
    """Cost gaps to the reference (GTSAM's final cost, else the lowest converged one) and the
    ratios of nlls's times to GTSAM's and Theseus's."""
    done = {m: r for m, r in records.items() if "final_cost" in r}
    if not done:
        return
    ref_name = "gtsam" if "gtsam" in done else min(done, key=lambda m: done[m]["final_cost"])
    reference = done[ref_name]["final_cost"]
    initial_reference = done.get("nlls_cholmod", next(iter(done.values())))["initial_cost"]
    for record in done.values():
        gap = (record["final_cost"] - reference) / abs(reference)
        # BAL's minimiser is not unique (more unknowns than residuals): any cost at or below
        # the reference's is as good; elsewhere the final costs must agree to 0.1 %
        same = gap <= SAME_COST if problem.is_bal else abs(gap) <= SAME_COST
        initial_gap = (record["initial_cost"] - initial_reference) / initial_reference
        record.update(reference=ref_name, final_cost_gap=float(f"{gap:.3g}"), same_cost=same,
                      initial_cost_gap=float(f"{initial_gap:.3g}"))
        if problem.readme:
            record["readme_gtsam_final_cost"] = problem.readme[1]
            record["readme_gap"] = float(
                f"{(record['final_cost'] - problem.readme[1]) / problem.readme[1]:.3g}")
    for method, record in done.items():
        if not method.startswith("nlls_"):
            continue
        for other in ("gtsam", "theseus"):
            if other in done:
                n = min(len(solve_ms[method]), len(solve_ms[other]))
                record[f"ratio_to_{other}"] = _ratio(solve_ms[method][:n], solve_ms[other][:n])
                with_reset = [s + r for s, r in zip(solve_ms[method], reset_ms[method])]
                other_total = [s + r for s, r in zip(solve_ms[other], reset_ms[other])]
                record[f"ratio_to_{other}_with_reset"] = _ratio(with_reset[:n], other_total[:n])
                record[f"first_ratio_to_{other}"] = round(
                    record["first_solve_ms"] / done[other]["first_solve_ms"], 3)


def table(rows: List[Dict]) -> str:
    header = ["problem", "method", "build ms", "first solve ms", "warm solve ms", "reset ms",
              "iters", "initial cost", "final cost", "gap to ref", "converged", "× GTSAM",
              "× Theseus"]
    cells = []
    for r in rows:
        if r.get("measure") == "profile" or "problem" not in r:
            continue
        if "skipped" in r:
            cells.append([r["problem"], r.get("method", "–"), f"skipped: {r['skipped']}"] + [""] * 10)
            continue
        cells.append([r["problem"], r["method"], f"{r['build_ms']:.1f}", f"{r['first_solve_ms']:.1f}",
                      f"{r['median_ms']:.1f}", f"{r['reset_ms']:.1f}", r["iterations"],
                      f"{r['initial_cost']:.10g}", f"{r['final_cost']:.10g}",
                      harness.fmt(r.get("final_cost_gap"), ".1e", ""),
                      "yes" if r["converged"] else "no", harness.fmt(r.get("ratio_to_gtsam"), ".2f", ""),
                      harness.fmt(r.get("ratio_to_theseus"), ".3f", "")])
    text = harness.markdown_table(header, cells, "llrrrrrrrrlrr")
    for p in (r for r in rows if r.get("measure") == "profile" and "skipped" not in r):
        text += "\n\n" + profile_table(p)
    return text


def _preload(methods) -> None:
    """Imports are not part of any first solve."""
    for module in ["scipy.optimize", "scipy.sparse.linalg"] + [m for k in methods
                                                               for m in IMPORTS.get(k, ())]:
        try:
            _import(module)
        except Exception:  # reported per method by missing()
            pass


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000,3000",
                        help="poses of the synthetic 2-D graphs (comma-separated)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: sizes 100,300, 2 repetitions")
    parser.add_argument("--real", default=",".join(REAL_POSE_GRAPHS + BAL_FILES),
                        help="files of --data-dir to run (comma-separated; '' for none)")
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    harness.add_common_options(parser, threads=1, warmup=False, repeats=7, max_seconds=10.0, help={
        "repeats": "warm solves per method",
        "max_seconds": "warm solves of a method stop after about this many seconds",
        "device": "cpu only (GTSAM, SciPy and Theseus's CHOLMOD path are CPU code); anything else "
                  "prints one skipped line, so run_all.sh --device cuda goes on",
        "threads": "torch intra-op threads (default 1: steady on a shared machine)"})
    parser.add_argument("--scipy-max-nfev", type=int, default=200)
    parser.add_argument("--keep-files", default=None,
                        help="write the synthetic g2o files here (default: a temporary folder)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile nlls's warm solve on the largest synthetic graph")
    parser.add_argument("--profile-top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = "100,300", 2
    args.methods = harness.split(args.methods)
    harness.check_choices(parser, args.methods, METHODS, "methods")
    emit = harness.Emitter("pose_graph")
    if args.device != "cpu":
        emit({"device": args.device, "skipped": "CPU-only benchmark (GTSAM, SciPy and Theseus's "
              "CHOLMOD path run on the CPU); run it without --device"})
        return emit.rows
    torch.set_num_threads(max(args.threads, 1))
    emit.environment("cpu")
    sizes = harness.split(args.sizes, int)
    _preload(args.methods)
    auto = auto_backend()
    with tempfile.TemporaryDirectory(prefix="nlls-pose-graphs-") as tmp:
        folder = Path(args.keep_files or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        problems = [synthetic_problem(folder, n, args.seed) for n in sizes]
        for name in harness.split(args.real):
            path = Path(args.data_dir) / name
            if not path.is_file():
                emit({"problem": name, "skipped": f"{path} not found"})
                continue
            problems.append(Problem(name, path, "real"))
        for problem in problems:
            harness.report(f"== {problem.name} {problem.size}")
            bench_problem(problem, args, emit, auto)
        if args.profile and sizes:
            largest = next(p for p in problems if p.name == f"synthetic_{max(sizes)}")
            for method in (m for m in args.methods if m.startswith("nlls_")):
                if why := missing(method, largest):
                    emit({"problem": largest.name, "method": method, "measure": "profile",
                          "skipped": why})
                    continue
                emit(profile_nlls(largest, method.split("_", 1)[1], args.profile_top))
    harness.report(table(emit.rows))
    return emit.rows


if __name__ == "__main__":
    main()
