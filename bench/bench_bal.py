"""Bundle adjustment end to end: nlls's Levenberg-Marquardt with the Schur complement and with the
default sparse Cholesky, beside GTSAM, on BAL files, in this process.

Problems: the synthetic scenes of ``problems_bal_synthetic.py`` (20 cameras x 5,000 points and
60 cameras x 30,000 points, about 5 observations a point, 1 pixel noise, a start a few pixels
off; written once into ``bench/results/bal/``) and the real ``../shared/data/dubrovnik-3-7-pre.txt``.
Methods, each timed end to end (read the file, build the problem, solve), phase by phase:

* ``nlls_schur``: ``nlls.LevenbergMarquardt(objective, linear_solver="schur")`` (the points
  eliminated, the reduced camera system factored dense);
* ``nlls_sparse``: the same with ``linear_solver="sparse_cholesky"`` (its ``"auto"`` backend);
* ``gtsam``: GTSAM 4.3's ``LevenbergMarquardtOptimizer`` with default parameters on
  ``SfmData.FromBalFile`` and one ``GeneralSFMFactorCal3Bundler`` per observation (sigma 1
  pixel, no prior), as in GTSAM's own BAL example; skipped with the reason when it does not import.

Columns: read, build (nlls: the objective, the optimizer and its one-off analysis, ``prepare()``;
GTSAM: the factor graph and values), solve, total seconds; iterations; initial and final cost
``0.5 * sum r^2`` as each library computes it; ``vs_gtsam``: total time over GTSAM's;
``cost_gap``: the final cost's relative difference to GTSAM's. One JSON line per measurement on
stdout, a markdown table on stderr.

    python bench/bench_bal.py                        # all problems and methods (minutes)
    python bench/bench_bal.py --quick                # dubrovnik and the 20-camera scene
    python bench/bench_bal.py --problems bal_60x30000 --methods nlls_schur,gtsam
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional

import harness
from methods_gtsam import bal_graph, gtsam_missing
from problems_bal_synthetic import SCENES, scene_file

import nlls
from nlls.io import read_bal

DATA = Path(harness.ROOT).parent / "shared" / "data"
REAL = {"dubrovnik": DATA / "dubrovnik-3-7-pre.txt"}
PROBLEMS = tuple(REAL) + tuple(SCENES)
QUICK = ("dubrovnik", "bal_20x5000")
METHODS = ("nlls_schur", "nlls_sparse", "gtsam")
MAX_ITERATIONS = 100


def problem_path(name: str, seed: int) -> Path:
    """The BAL file of a problem (a synthetic scene is written on first use)."""
    if name in REAL:
        return REAL[name]
    cameras, points = SCENES[name]
    return scene_file(cameras, points, seed)




def run_nlls(path: Path, solver: str, device) -> Dict:
    """Read, build, solve with nlls; the phases' seconds, iterations and costs."""
    times: Dict[str, float] = {}
    problem = harness.clock(lambda: read_bal(path), times, "read_s")

    def build():
        objective = problem.objective(device=device)
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=MAX_ITERATIONS)
        optimizer.prepare()
        return objective, optimizer

    objective, optimizer = harness.clock(build, times, "build_s")
    initial = float(objective.error_metric()[0])
    info = harness.clock(optimizer.optimize, times, "solve_s")
    return {**times, "iterations": int(info.iterations[0]), "initial_cost": initial,
            "final_cost": float(objective.error_metric()[0]),
            "converged": bool(info.status[0] == nlls.Status.CONVERGED),
            "linear_solver": repr(optimizer.linear_solver)}


def run_gtsam(path: Path) -> Dict:
    """GTSAM's BAL example: ``GeneralSFMFactorCal3Bundler`` per observation, LM with defaults."""
    import gtsam

    times: Dict[str, float] = {}
    data = harness.clock(lambda: gtsam.SfmData.FromBalFile(str(path)), times, "read_s")

    graph, initial = harness.clock(lambda: bal_graph(gtsam, data), times, "build_s")

    def solve():
        optimizer = gtsam.LevenbergMarquardtOptimizer(graph, initial, gtsam.LevenbergMarquardtParams())
        return optimizer, optimizer.optimize()

    optimizer, result = harness.clock(solve, times, "solve_s")
    return {**times, "iterations": int(optimizer.iterations()), "initial_cost": float(graph.error(initial)),
            "final_cost": float(graph.error(result)), "converged": True}




def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma list of {PROBLEMS}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    harness.add_common_options(parser, warmup=0, repeats=1)
    args = parser.parse_args(argv)
    problems = QUICK if args.quick else harness.split(args.problems)
    methods = harness.split(args.methods)
    harness.check_choices(parser, problems, PROBLEMS, "problems")
    harness.check_choices(parser, methods, METHODS, "methods")
    emit = harness.start(parser, args, "bal")
    missing = {"gtsam": gtsam_missing()}
    table = []
    for name in problems:
        path = problem_path(name, args.seed)
        gtsam_record: Optional[Dict] = None
        for method in sorted(methods, key=lambda m: m != "gtsam"):  # GTSAM first: the reference
            if missing.get(method):
                emit({"problem": name, "method": method, "skipped": missing[method]})
                continue
            runs = []
            for _ in range(args.warmup + args.repeats):
                if method == "gtsam":
                    runs.append(run_gtsam(path))
                else:
                    solver = "schur" if method == "nlls_schur" else "sparse_cholesky"
                    runs.append(run_nlls(path, solver, args.device))
            record = min(runs[args.warmup:], key=lambda r: r["read_s"] + r["build_s"] + r["solve_s"])
            record["total_s"] = record["read_s"] + record["build_s"] + record["solve_s"]
            if method == "gtsam":
                gtsam_record = record
            if gtsam_record is not None:
                record["vs_gtsam"] = record["total_s"] / gtsam_record["total_s"]
                record["cost_gap"] = ((record["final_cost"] - gtsam_record["final_cost"])
                                      / abs(gtsam_record["final_cost"]))
            emit({"problem": name, "method": method, **record})
            table.append((name, method, f"{record['read_s']:.2f}", f"{record['build_s']:.2f}",
                          f"{record['solve_s']:.2f}", f"{record['total_s']:.2f}", record["iterations"],
                          f"{record['final_cost']:.10g}", harness.fmt(record.get("vs_gtsam"), ".2f"),
                          harness.fmt(record.get("cost_gap"), ".1e")))
    harness.report(harness.markdown_table(
        ("problem", "method", "read s", "build s", "solve s", "total s", "iterations", "final cost",
         "vs GTSAM", "cost gap"), table, "llrrrrrrrr"))


if __name__ == "__main__":
    main()
