"""Sparse covariance of a large pose graph: the first and last poses' marginals, time and memory.

Reads a pose graph (default ``../shared/data/w10000.graph``: 10,000 SE2 poses, 64,311 edges,
30,000 unknowns), solves it (Levenberg-Marquardt, sparse Cholesky; ``--at-initial`` skips this and
measures at the file's values, where ``w10000``'s normal matrix is nearly singular), then for each
gauge (``pseudo_inverse``, ``first``: the first pose held fixed) times
``nlls.Covariance(objective, linear_solver="sparse_cholesky", gauge=...)``: ``compute()`` (the
linearization, the null directions and the factorization) and ``joint([first, last])``.
Memory: the peak resident set of the process during the measurement above what it held before
(``VmHWM``, reset through ``/proc/self/clear_refs``; ``null`` where Linux does not allow it), and
``tracemalloc``'s peak of Python and NumPy allocations.

One JSON line per gauge: ``graph``, ``poses``, ``unknowns``, ``gauge``, ``at`` (``initial`` or
``solution``), ``linear_solver`` (the backend used), ``null_space_dim``, ``ok``, ``compute_ms``,
``marginals_ms``, ``total_ms``, ``peak_rss_mb`` (above the start), ``tracemalloc_peak_mb``,
``first_std``, ``last_std`` (the marginal standard deviations, tangent order).

    .venv/bin/python bench/bench_covariance.py --repeats 3       # w10000, solved first (~1 min)
    .venv/bin/python bench/bench_covariance.py --graph ../shared/data/w100.graph --at-initial
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path
from typing import Dict, List, Optional

import harness

import nlls

DEFAULT = Path(harness.ROOT).parent / "shared" / "data" / "w10000.graph"


def _rss_peak_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _rss_now_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(objective, first: str, last: str, gauge: str) -> Dict:
    """One timed covariance of ``first`` and ``last`` with memory peaks."""
    base = _rss_now_mb()
    resettable = _reset_rss_peak()
    tracemalloc.start()
    started = time.perf_counter()
    cov = nlls.Covariance(objective, linear_solver="sparse_cholesky",
                          gauge="pseudo_inverse" if gauge == "pseudo_inverse" else first)
    cov.compute()
    computed = time.perf_counter()
    joint = cov.joint([first, last])
    finished = time.perf_counter()
    traced = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    peak = _rss_peak_mb()
    dof = joint.shape[-1] // 2
    std = joint[0].diagonal().clamp_min(0).sqrt()
    return {
        "gauge": gauge, "linear_solver": repr(cov.linear_solver),
        "null_space_dim": int(cov.null_space_dim[0]), "ok": bool(cov.ok.all()),
        "compute_ms": 1e3 * (computed - started), "marginals_ms": 1e3 * (finished - computed),
        "total_ms": 1e3 * (finished - started),
        "peak_rss_mb": (peak - base) if resettable and peak is not None and base is not None else None,
        "tracemalloc_peak_mb": traced,
        "first_std": std[:dof].tolist(), "last_std": std[dof:].tolist(),
    }


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser, threads=1, warmup=False, repeats=1, seed=False,
                               help={"threads": "torch intra-op threads (default 1: steadier on a shared machine)"})
    parser.add_argument("--graph", default=str(DEFAULT), help="a pose graph file (default: w10000.graph)")
    parser.add_argument("--at-initial", action="store_true", help="measure at the file's values (no solve)")
    parser.add_argument("--gauges", default="pseudo_inverse,first", help="pseudo_inverse and/or first")
    args = parser.parse_args(argv)
    emit = harness.start(parser, args, "covariance")
    gauges = harness.split(args.gauges)
    harness.check_choices(parser, gauges, ["pseudo_inverse", "first"], "gauges")
    problem = nlls.io.read(args.graph)
    objective = problem.objective(device=args.device)
    if not args.at_initial:
        nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky", max_iterations=100,
                                abs_err_tolerance=0.0, rel_err_tolerance=1e-10).optimize()
    names = [f"x{int(i)}" for i in problem.vertex_ids if f"x{int(i)}" in objective.optim_vars]
    context = {"graph": Path(args.graph).name, "poses": len(names), "unknowns": objective.evaluator().dof,
               "at": "initial" if args.at_initial else "solution"}
    for gauge in gauges:
        for _ in range(args.repeats):
            emit({"measure": "first_last_marginals", **context, **measure(objective, names[0], names[-1], gauge)})
    harness.report(harness.markdown_table(
        ["gauge", "null dims", "compute ms", "marginals ms", "total ms", "peak RSS MB", "tracemalloc MB"],
        [(r["gauge"], r["null_space_dim"], f"{r['compute_ms']:.0f}", f"{r['marginals_ms']:.0f}",
          f"{r['total_ms']:.0f}", harness.fmt(r["peak_rss_mb"], ".0f"), f"{r['tracemalloc_peak_mb']:.0f}")
         for r in emit.rows], "lrrrrrr"))
    return emit.rows


if __name__ == "__main__":
    main()
