"""Building and preparing an objective: the readers' grouped objectives (one ``FactorGroup`` for
the edges or observations) against one cost-function object per factor.

Per problem and formulation (``grouped``, ``objects``), in one process, each stage timed on its
own (wall clock, the median of ``--repeats`` builds, one warm-up build first):

* ``read``: ``nlls.io.read(path)`` (tokenizing, numbers, checks, and for an edge-only graph the
  spanning-tree initialization);
* ``gtsam_read`` (``--gtsam``, where GTSAM is installed; ``grouped`` rows): GTSAM's reader of the
  same file in the same process (``load2D``/``readG2o``/``SfmData.FromBalFile``), for comparison;
* ``objective``: ``problem.objective()`` (``vectorized=False`` for ``objects``);
* ``evaluator``: ``Evaluator(objective)`` (grouping, blocks, index tensors);
* ``pattern``: ``SparseLinearization(evaluator)`` (the sparse pattern of ``J^T J`` and the scatter
  indices);
* ``prepare``: ``LevenbergMarquardt(objective, linear_solver=...).prepare()`` on a fresh objective
  (evaluator, linearization and the solver's analysis);
* ``total``: ``objective`` + ``prepare``.

One JSON line per (problem, formulation, stage): ``ms`` (median), ``samples``; a markdown table on
stderr. Problems: ``w10000`` (``../shared/data/w10000.graph``: 10,000 SE2 poses, 64,311 edges; ``w100``
for a quick run), ``edge_only_20000`` (``bench_scale.edge_only_file``: 20,000 poses, ``EDGE_SE2``
records only, so the read includes the initialization) and
the synthetic BAL scenes of ``problems_bal_synthetic.py`` (``bal_60x30000``: 150k observations).

    .venv/bin/python bench/bench_build.py                         # w10000 and bal_60x30000
    .venv/bin/python bench/bench_build.py --problems w10000 --formulations grouped --repeats 5
    .venv/bin/python bench/bench_build.py --problems w10000,edge_only_20000,bal_60x30000 \
        --formulations grouped --gtsam
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import harness
from methods_gtsam import gtsam_missing
from problems_bal_synthetic import SCENES, scene_file

import nlls
from nlls.core.evaluation import Evaluator
from nlls.solve.linearization import SparseLinearization

DATA = Path(harness.ROOT).parent / "shared" / "data"
GRAPHS = {"w100": DATA / "w100.graph", "w10000": DATA / "w10000.graph"}
EDGE_ONLY = {"edge_only_20000": 20000}
PROBLEMS = [*GRAPHS, *EDGE_ONLY, *SCENES]
FORMULATIONS = ["grouped", "objects"]
STAGES = ["read", "objective", "evaluator", "pattern", "prepare", "total"]


def _path(name: str) -> Path:
    if name in GRAPHS:
        return GRAPHS[name]
    if name in EDGE_ONLY:
        from bench_scale import edge_only_file  # its synthetic graph, written once

        return edge_only_file(Path(harness.RESULTS) / "scale", EDGE_ONLY[name])
    return scene_file(*SCENES[name])


def _gtsam_reader(path: Path) -> Callable[[], object]:
    """GTSAM's reader of ``path`` (as ``methods_gtsam`` calls it)."""
    import gtsam

    if path.suffix == ".graph":
        return lambda: gtsam.load2D(str(path), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
    if path.suffix == ".g2o":
        return lambda: gtsam.readG2o(str(path), False)
    return lambda: gtsam.SfmData.FromBalFile(str(path))


def _clock(function: Callable[[], object]):
    gc.collect()
    start = time.perf_counter()
    out = function()
    return (time.perf_counter() - start) * 1e3, out


def _one_build(path: Path, vectorized: bool, solver: str,
               gtsam_reader: Optional[Callable[[], object]] = None) -> Dict[str, float]:
    times: Dict[str, float] = {}
    if gtsam_reader is not None:  # just before nlls's read, for a comparison on the same load
        times["gtsam_read"], _ = _clock(gtsam_reader)
    times["read"], problem = _clock(lambda: nlls.io.read(path))
    times["objective"], objective = _clock(lambda: problem.objective(vectorized=vectorized))
    times["evaluator"], evaluator = _clock(lambda: Evaluator(objective))
    times["pattern"], _ = _clock(lambda: SparseLinearization(evaluator))
    fresh = problem.objective(vectorized=vectorized)
    times["prepare"], _ = _clock(lambda: nlls.LevenbergMarquardt(fresh, linear_solver=solver).prepare())
    times["total"] = times["objective"] + times["prepare"]
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="w10000,bal_60x30000", help=f"comma-separated, of {PROBLEMS}")
    parser.add_argument("--formulations", default="grouped,objects", help=f"comma-separated, of {FORMULATIONS}")
    parser.add_argument("--linear-solver", default="sparse_cholesky", help="the solver prepare() analyses")
    parser.add_argument("--objects-repeats", type=int, default=2,
                        help="builds of the slow per-object formulation (default 2)")
    parser.add_argument("--gtsam", action="store_true",
                        help="also time GTSAM's reader of each file (stage gtsam_read)")
    harness.add_common_options(parser, warmup=1, repeats=5)
    args = parser.parse_args(argv)
    problems, formulations = harness.split(args.problems), harness.split(args.formulations)
    harness.check_choices(parser, problems, PROBLEMS, "problems")
    harness.check_choices(parser, formulations, FORMULATIONS, "formulations")
    emit = harness.start(parser, args, "build")
    gtsam = args.gtsam and gtsam_missing() is None
    stages = STAGES + (["gtsam_read"] if gtsam else [])
    rows: List[list] = []
    for name in problems:
        path = _path(name)
        for formulation in formulations:
            vectorized = formulation == "grouped"
            repeats = args.repeats if vectorized else min(args.repeats, args.objects_repeats)
            reader = _gtsam_reader(path) if gtsam and vectorized else None
            for _ in range(args.warmup):
                _one_build(path, vectorized, args.linear_solver, reader)
            samples = [_one_build(path, vectorized, args.linear_solver, reader) for _ in range(repeats)]
            medians = {stage: statistics.median(s[stage] for s in samples) if stage in samples[0]
                       else None for stage in stages}
            for stage in stages:
                if medians[stage] is None:
                    continue
                emit({"measure": "build", "problem": name, "formulation": formulation, "stage": stage,
                      "ms": round(medians[stage], 2), "samples": len(samples),
                      "linear_solver": args.linear_solver})
            rows.append([name, formulation] + [harness.fmt(medians[s], ".0f") for s in stages])
    harness.report(harness.markdown_table(["problem", "formulation"] + [f"{s} ms" for s in stages], rows,
                                          "ll" + "r" * len(stages)))


if __name__ == "__main__":
    main()
