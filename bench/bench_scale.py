"""Scale beside GTSAM: every file of ``../shared/data``, a 20,000-pose edge-only graph and the
synthetic BAL scenes, end to end with the settings ``nlls solve`` uses by default, in one process.

Methods, each timed end to end (read the file, build the problem, solve), best of ``--repeats``:

* ``nlls``: ``nlls.io.read(path)`` (an edge-only file gets its default spanning-tree start),
  ``problem.objective(dtype=float64)`` (pose graphs ``anchor=True``), ``nlls.build_optimizer(objective, config)`` with the CLI's
  ``DEFAULT_CONFIG`` (pose graphs) or ``BAL_CONFIG`` (BAL files), ``prepare()``, ``optimize()``;
  peak resident memory of the process during the run (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; ``ru_maxrss`` where that cannot be reset).
* ``gtsam``: GTSAM 4.3 as its own examples read the files: ``load2D(path, NoiseFormatTORO)`` for
  ``.graph``, ``readG2o(path, is3D)`` otherwise (a file without vertex records is initialized by
  GTSAM's reader, which chains the edges in file order), a prior on the first pose at its initial
  value (sigma 1e-6), ``LevenbergMarquardtOptimizer`` with ``LevenbergMarquardtParams()``
  defaults; BAL files as ``bench_bal.run_gtsam`` (``GeneralSFMFactorCal3Bundler``, sigma 1 px).

The edge-only graph (``edge_only_<N>``, :func:`edge_only_file`): ``problems_pose_graph``'s city-block
walk with about one loop closure for every two poses (Manhattan-world density), odometry noise
0.05 m / 0.05 m / 0.01 rad, written as g2o ``EDGE_SE2`` records in time order (each pose's
odometry edge, then its closures to earlier poses) and no ``VERTEX_SE2`` record.

Columns: ``ratio`` nlls's total over GTSAM's, ``cost_rel_diff`` (nlls - GTSAM) / GTSAM of the final
costs, ``iteration_diff`` nlls's iterations minus GTSAM's, ``peak_mb``. The load average is on
the environment line. ``--profile``: where nlls's solve of w10000 spends its time
(``profile_pose_graph.py``). One JSON line per measurement on stdout, a markdown table on stderr.

    python bench/bench_scale.py --threads 1                  # everything (several minutes)
    python bench/bench_scale.py --problems w10000.graph --profile
    python bench/bench_scale.py --problems w100.graph,edge_only --edge-only-poses 300 --repeats 1
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
from pathlib import Path
from typing import Callable, Dict, List, Optional

import harness
import numpy as np
import torch
from bench_bal import run_gtsam as run_gtsam_bal
from methods_gtsam import gtsam_missing
from problems_bal_synthetic import SCENES, scene_file
from problems_pose_graph import DATA, README_GTSAM, Problem, synthetic_pose_graph
from profile_pose_graph import profile_nlls, profile_table

import nlls
from nlls.cli import BAL_CONFIG, DEFAULT_CONFIG

FILES = ("noisyToyGraph.txt", "w100.graph", "pose3example.txt", "pose3example-grid.txt",
         "w10000.graph", "dubrovnik-3-7-pre.txt")
EDGE_ONLY = "edge_only"
PROBLEMS = FILES + (EDGE_ONLY,) + tuple(SCENES)
EDGE_ONLY_POSES = 20000
CLOSURES_PER_POSE = 0.5
ODOMETRY_SIGMA = (0.05, 0.05, 0.01)
PROFILED = "w10000.graph"


# ---- the edge-only graph -----------------------------------------------------------------
def edge_only_file(folder: Path, num_poses: int, seed: int = 0) -> Path:
    """``edge_only_<N>-seed<S>.g2o`` in ``folder``: the graph's ``EDGE_SE2`` records in time order,
    no vertex records (written once, then reused: it is deterministic)."""
    path = Path(folder) / f"edge_only_{num_poses}-seed{seed}.g2o"
    if path.exists():
        return path
    _, _, edges, measurements, information = synthetic_pose_graph(
        num_poses, seed=seed, closure_fraction=CLOSURES_PER_POSE, sigma=ODOMETRY_SIGMA)
    later, earlier = edges.max(1), edges.min(1)
    closure = (later - earlier) != 1
    order = np.lexsort((earlier, closure, later))  # pose by pose: odometry, then closures
    xx, yy, tt = information
    lines = [f"EDGE_SE2 {i} {j} {z[0]:.17g} {z[1]:.17g} {z[2]:.17g} {xx:.17g} 0 0 {yy:.17g} 0 {tt:.17g}"
             for (i, j), z in zip(edges[order].tolist(), measurements[order])]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)
    return path


# ---- memory ---------------------------------------------------------------------------------
def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Resets the process's peak resident size to its current one (Linux); False if it cannot.

    Some kernels and sandboxes accept the write and ignore it, so the reset counts only when the
    recorded peak afterwards is the current resident size (within a few MB).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    peak, resident = _status_mb("VmHWM"), _status_mb("VmRSS")
    return peak is not None and resident is not None and peak <= resident + 4.0


def peak_mb() -> float:
    """Peak resident size of the process in MB (``VmHWM``, else ``ru_maxrss``)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- the methods --------------------------------------------------------------------------
def run_nlls(path: Path, backend: str = "auto") -> Dict:
    """``nlls solve``'s defaults on ``path``, phase by phase, with the run's peak memory (pose
    graphs: ``backend`` for the sparse Cholesky)."""
    gc.collect()
    resettable = reset_peak()
    before = _status_mb("VmRSS")
    times: Dict[str, float] = {}
    problem = harness.clock(lambda: nlls.io.read(path), times, "read_s")
    bal = isinstance(problem, nlls.io.BALProblem)

    def build():
        # as nlls solve does: pose graphs with the first pose anchored
        objective = problem.objective(dtype=torch.float64, **({} if bal else {"anchor": True}))
        config = nlls.load_config(BAL_CONFIG if bal else DEFAULT_CONFIG)
        if not bal:
            config.linear_solver.options["backend"] = backend
        return objective, nlls.build_optimizer(objective, config)

    objective, optimizer = harness.clock(build, times, "build_s")
    harness.clock(optimizer.prepare, times, "prepare_s")
    info = harness.clock(optimizer.optimize, times, "solve_s")
    iterations = int(info.iterations[0])
    return {**times, "iterations": iterations, "initial_cost": float(info.initial_error[0]),
            "final_cost": float(info.final_error[0]),
            "termination": nlls.Status(int(info.status[0])).name.lower(), "message": info.message,
            "solve_per_iteration_s": times["solve_s"] / max(iterations, 1),
            "linear_solver": repr(optimizer.linear_solver), "peak_mb": round(peak_mb(), 1),
            "rss_before_mb": None if before is None else round(before, 1),
            "peak_is_this_run": resettable}


def _is_3d(path: Path) -> bool:
    with open(path) as f:
        return any("SE3" in line.split(maxsplit=1)[0] for line in f if line.strip())


def run_gtsam_pose_graph(path: Path) -> Dict:
    """GTSAM's pose-graph examples: read, a prior on the first pose, LM with default parameters."""
    import gtsam

    times: Dict[str, float] = {}
    three_d = path.suffix != ".graph" and _is_3d(path)
    if path.suffix == ".graph":
        graph, initial = harness.clock(lambda: gtsam.load2D(
            str(path), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO), times, "read_s")
    else:
        graph, initial = harness.clock(lambda: gtsam.readG2o(str(path), three_d), times, "read_s")

    def build():
        first = min(initial.keys())
        if three_d:
            graph.add(gtsam.PriorFactorPose3(first, initial.atPose3(first),
                                             gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
        else:
            graph.add(gtsam.PriorFactorPose2(first, initial.atPose2(first),
                                             gtsam.noiseModel.Isotropic.Sigma(3, 1e-6)))

    harness.clock(build, times, "build_s")

    def solve():
        optimizer = gtsam.LevenbergMarquardtOptimizer(graph, initial, gtsam.LevenbergMarquardtParams())
        return optimizer, optimizer.optimize()

    optimizer, result = harness.clock(solve, times, "solve_s")
    return {**times, "iterations": int(optimizer.iterations()), "initial_cost": float(graph.error(initial)),
            "final_cost": float(graph.error(result))}




def best_of(run: Callable[[], Dict], repeats: int, max_seconds: float) -> Dict:
    """The fastest of up to ``repeats`` runs (fewer once ``max_seconds`` are spent), by total."""
    runs: List[Dict] = []
    spent = 0.0
    for _ in range(max(repeats, 1)):
        record = run()
        record["total_s"] = record["read_s"] + record["build_s"] + record.get("prepare_s", 0.0) + record["solve_s"]
        runs.append(record)
        spent += record["total_s"]
        if spent >= max_seconds:
            break
    best = min(runs, key=lambda r: r["total_s"])
    best["runs"] = len(runs)
    if "peak_mb" in best:  # the highest peak of the runs (they are alike)
        best["peak_mb"] = max(r["peak_mb"] for r in runs)
    return best


# ---- the run --------------------------------------------------------------------------------
def problem_path(name: str, args) -> Path:
    if name in FILES:
        return Path(args.data_dir) / name
    if name == EDGE_ONLY:
        return edge_only_file(Path(args.work_dir), args.edge_only_poses, args.seed)
    return scene_file(*SCENES[name], seed=args.seed)


def compare(nlls_record: Dict, gtsam_record: Dict) -> Dict:
    reference = gtsam_record["final_cost"]
    return {"ratio": round(nlls_record["total_s"] / gtsam_record["total_s"], 3),
            "solve_ratio": round(nlls_record["solve_s"] / gtsam_record["solve_s"], 3),
            "cost_rel_diff": float(f"{(nlls_record['final_cost'] - reference) / abs(reference):.3g}"),
            "iteration_diff": nlls_record["iterations"] - gtsam_record["iterations"]}


def bench_problem(name: str, path: Path, args, emit, gtsam_why: Optional[str]) -> Dict:
    base = {"problem": name if name != EDGE_ONLY else f"{EDGE_ONLY}_{args.edge_only_poses}",
            "file": path.name, "threads": torch.get_num_threads()}
    harness.report(f"== {base['problem']}")
    bal = name in SCENES or name.startswith("dubrovnik")
    nlls_record = best_of(lambda: run_nlls(path, args.backend), args.repeats, args.max_seconds)
    row = {**base, "nlls": nlls_record}
    if gtsam_why is None:
        run = (lambda: run_gtsam_bal(path)) if bal else (lambda: run_gtsam_pose_graph(path))
        gtsam_record = best_of(run, args.repeats, args.max_seconds)
        gtsam_record.pop("converged", None)
        nlls_record.update(compare(nlls_record, gtsam_record))
        row["gtsam"] = gtsam_record
        emit({**base, "method": "gtsam", **gtsam_record}, keep=False)
    else:
        emit({**base, "method": "gtsam", "skipped": gtsam_why}, keep=False)
    if path.name in README_GTSAM:
        nlls_record["readme_gtsam_final_cost"] = README_GTSAM[path.name][1]
        nlls_record["readme_gtsam_iterations"] = README_GTSAM[path.name][2]
    emit({**base, "method": "nlls", **nlls_record}, keep=False)
    return row


def table(rows: List[Dict]) -> str:
    cells = []
    for row in rows:
        n, g = row["nlls"], row.get("gtsam", {})
        cells.append([row["problem"], f"{n['total_s']:.3f}", harness.fmt(g.get("total_s"), ".3f"),
                      harness.fmt(n.get("ratio"), ".2f"), n["iterations"], harness.fmt(g.get("iterations")),
                      harness.fmt(n.get("readme_gtsam_iterations")),
                      harness.fmt(n.get("cost_rel_diff"), ".1e"), f"{n['peak_mb']:.0f}"])
    return harness.markdown_table(["problem", "nlls s", "GTSAM s", "ratio", "nlls iters", "GTSAM iters",
                                   "GTSAM iters (README's tolerances)", "cost rel diff", "peak MB"], cells,
                                  "lrrrrrrrr")


def phases_table(rows: List[Dict]) -> str:
    cells = []
    for row in rows:
        for method in ("nlls", "gtsam"):
            r = row.get(method)
            if r is not None:
                cells.append([row["problem"], method, f"{r['read_s']:.3f}", f"{r['build_s']:.3f}",
                              harness.fmt(r.get("prepare_s"), ".3f"), f"{r['solve_s']:.3f}",
                              f"{r['solve_s'] / max(r['iterations'], 1):.3f}", r["iterations"],
                              f"{r['final_cost']:.10g}", r.get("termination", "")])
    return harness.markdown_table(["problem", "method", "read s", "build s", "prepare s", "solve s",
                                   "s / iteration", "iters", "final cost", "termination"], cells, "llrrrrrrrl")


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma list of {PROBLEMS}")
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--work-dir", default=str(Path(harness.RESULTS) / "scale"),
                        help="where the edge-only graph is written (once)")
    parser.add_argument("--edge-only-poses", type=int, default=EDGE_ONLY_POSES)
    parser.add_argument("--backend", default="auto",
                        help="the sparse Cholesky's backend for pose graphs (default auto, as nlls solve)")
    parser.add_argument("--profile", action="store_true", help=f"also profile nlls's solve of {PROFILED}")
    parser.add_argument("--profile-top", type=int, default=12)
    harness.add_common_options(parser, threads=1, warmup=False, repeats=3, max_seconds=30.0, help={
        "repeats": "runs of each method per problem (the fastest is kept)",
        "max_seconds": "a method's runs stop after about this many seconds",
        "device": "cpu only (GTSAM is CPU code); anything else prints one skipped line",
        "threads": "torch intra-op threads (default 1: steady on a shared machine)"})
    args = parser.parse_args(argv)
    problems = harness.split(args.problems)
    harness.check_choices(parser, problems, PROBLEMS, "problems")
    if args.edge_only_poses < 2:
        parser.error(f"--edge-only-poses must be >= 2, got {args.edge_only_poses}")
    if args.device != "cpu":  # one skipped line, so run_all.sh --device cuda goes on
        harness.Emitter("scale")({"device": args.device, "skipped": "CPU-only benchmark (GTSAM is CPU "
                                  "code); run it without --device"}, keep=False)
        return []
    emit = harness.start(parser, args, "scale")
    emit({"measure": "setup", "load_average": os.getloadavg()}, keep=False)
    gtsam_why = gtsam_missing()
    rows = []
    for name in problems:
        path = problem_path(name, args)
        if not path.is_file():
            emit({"problem": name, "skipped": f"{path} not found"}, keep=False)
            continue
        rows.append(bench_problem(name, path, args, emit, gtsam_why))
    text = harness.markdown_table(["load average (1, 5, 15 min)"],
                                  [[", ".join(f"{v:.2f}" for v in os.getloadavg())]])
    text += "\n\n" + table(rows) + "\n\n" + phases_table(rows)
    if args.profile:
        record = profile_nlls(Problem(PROFILED, Path(args.data_dir) / PROFILED, "real"), "auto",
                              args.profile_top)
        emit(record, keep=False)
        text += "\n\n" + profile_table(record)
    emit.rows.extend(rows)
    harness.report(text)
    return rows


if __name__ == "__main__":
    main()
