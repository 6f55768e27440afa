"""Batched curve fits: nlls beside a hand-written torch loop, SciPy and (when installed) Theseus.

Two problems (``problems_curve.py``), ``num_points`` samples each, ``B`` independent fits solved
together:

* ``quadratic``:   y = a x^2 + b,          Gauss-Newton,         15 iterations, float32;
* ``exponential``: y = a exp(-b x) + c,    Levenberg-Marquardt,  20 iterations, float64.

Every method runs a fixed number of iterations (tolerances off) from the same start, is timed in
this process (warm-up runs, then the median of several repetitions) and is compared with the
hand-written, fully vectorized torch loop (``handwritten``), the speed limit for a framework. One
JSON line per measurement goes to stdout; a markdown table goes to stderr at the end.
See bench/README.md for the columns and for how each method is made comparable.

    python bench/bench_curve_fit.py --batch-sizes 1,256,4096 --device cpu
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional

# SciPy solves one small problem at a time, where BLAS threads only spin; spinning threads
# would also slow the torch calls timed next to it (set before numpy is first imported)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import harness  # noqa: E402
import torch  # noqa: E402
from methods_handwritten import handwritten_run  # noqa: E402
from methods_nlls import nlls_run  # noqa: E402
from methods_scipy import scipy_curve_fit_run  # noqa: E402
from methods_theseus import theseus_curve_fit_run, theseus_missing  # noqa: E402
from problems_curve import CURVE_PROBLEMS, QUADRATIC, dtype_name, make_data  # noqa: E402

METHODS = ("handwritten", "nlls_analytic", "nlls_autodiff", "scipy_lm", "theseus_analytic",
           "theseus_autodiff")


def make_run(method, problem, start, x, y, iterations, stats):
    """One call of ``method`` solves the batch from ``start``; ``stats`` gets extra columns."""
    if method == "handwritten":
        return handwritten_run(problem, start, x, y, iterations)
    if method.startswith("nlls_"):
        return nlls_run(problem, start, x, y, autodiff=method.endswith("autodiff"),
                        iterations=iterations)
    if method == "scipy_lm":
        return scipy_curve_fit_run(problem, start, x, y, iterations, stats)
    return theseus_curve_fit_run(problem, start, x, y, iterations,
                                 autodiff=method.endswith("autodiff"))


def _timed(runs, args) -> Dict[str, harness.Timed]:
    """``runs`` as timers, warmed up and timed interleaved; each timer keeps its last result."""
    timers = {name: harness.Timed(run, args.sync) for name, run in runs.items()}
    for timer in timers.values():
        harness.warm_up(timer, args.warmup, enough_ms=1000.0)
    return timers


def bench_problem(problem, batch, args, emit):
    """Every method on one problem and batch size, each timed interleaved with ``handwritten``."""
    x, y, _, start = make_data(problem, batch, args.num_points, args.device, seed=args.seed)
    base = {"problem": problem.name, "batch_size": batch, "iterations": problem.iterations,
            "dtype": dtype_name(problem.dtype), "device": str(args.device),
            "threads": torch.get_num_threads()}
    missing = theseus_missing() if any(m.startswith("theseus") for m in args.methods) else None
    handwritten = make_run("handwritten", problem, start, x, y, problem.iterations, {})
    reference = handwritten()
    for method in ["handwritten"] + [m for m in args.methods if m != "handwritten"]:
        if method.startswith("theseus") and missing:
            emit({**base, "method": method, "skipped": missing})
            continue
        stats: Dict = {}
        runs = {"handwritten": handwritten}
        if method != "handwritten":
            runs[method] = make_run(method, problem, start, x, y, problem.iterations, stats)
        timers = _timed(runs, args)
        times = harness.interleaved(timers, args.repeats, args.max_seconds)
        solution = timers[method].result
        emit({**base, "method": method, "median_ms": round(harness.median(times[method]), 3),
              "handwritten_ms": round(harness.median(times["handwritten"]), 3),
              "ratio_to_handwritten": round(harness.paired_median(times[method],
                                                                  times["handwritten"]), 3),
              "max_param_diff_to_handwritten": float((solution - reference).abs().max()),
              "repeats": len(times[method]), **stats})


def bench_per_iteration(args, emit):
    """B = 1 quadratic Gauss-Newton: ms per iteration = slope of the time over the iteration
    count (5 and 25 iterations, interleaved; median of the per-repetition slopes), and the
    fixed cost per solve left over."""
    problem = QUADRATIC
    x, y, _, start = make_data(problem, 1, args.num_points, args.device, seed=args.seed)
    few, many = 5, 25
    for method in ("handwritten", "nlls_analytic", "nlls_autodiff"):
        runs = {n: make_run(method, problem, start, x, y, n, {}) for n in (few, many)}
        timers = {n: harness.Timed(run, args.sync) for n, run in runs.items()}
        for timer in timers.values():
            harness.warm_up(timer, args.warmup + 3, enough_ms=1000.0)
        times = harness.interleaved(timers, 5 * args.repeats, args.max_seconds)
        t_few, t_many = times[few], times[many]
        per_iteration = harness.median((b - a) / (many - few) for a, b in zip(t_few, t_many))
        emit({"problem": problem.name, "method": method, "measure": "per_iteration",
              "batch_size": 1, "dtype": "float32", "device": str(args.device),
              "threads": torch.get_num_threads(),
              "ms_per_iteration": round(per_iteration, 4),
              "ms_fixed": round(harness.median(t_few) - few * per_iteration, 4),
              "repeats": len(t_few)})


def table(rows: List[Dict]) -> str:
    text = harness.markdown_table(
        ["problem", "B", "method", "median ms", "hand-written ms", "× hand-written", "max Δp"],
        [[r["problem"], r["batch_size"], r["method"], f"{r['median_ms']:.2f}",
          f"{r['handwritten_ms']:.2f}", f"{r['ratio_to_handwritten']:.2f}",
          f"{r['max_param_diff_to_handwritten']:.1e}"] for r in rows if "median_ms" in r],
        "lrlrrrr")
    per_iteration = [r for r in rows if r.get("measure") == "per_iteration"]
    if per_iteration:
        text += "\n\n" + harness.markdown_table(
            ["B=1 quadratic GN", "ms per iteration", "fixed ms per solve"],
            [[r["method"], f"{r['ms_per_iteration']:.3f}", f"{r['ms_fixed']:.3f}"]
             for r in per_iteration], "lrr")
    return text


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,256,4096",
                        help="comma-separated batch sizes (default 1,256,4096)")
    parser.add_argument("--problems", default="quadratic,exponential")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--num-points", type=int, default=100)
    harness.add_common_options(parser, threads=0, warmup=2, repeats=7, max_seconds=15.0)
    parser.add_argument("--no-per-iteration", action="store_true",
                        help="skip the B=1 per-iteration overhead measurement")
    args = parser.parse_args(argv)
    args.methods = harness.split(args.methods)
    harness.check_choices(parser, args.methods, METHODS, "methods")
    problems = harness.split(args.problems)
    harness.check_choices(parser, problems, CURVE_PROBLEMS, "problems")
    emit = harness.start(parser, args, "curve_fit")
    for name in problems:
        for batch in harness.split(args.batch_sizes, int):
            bench_problem(CURVE_PROBLEMS[name], batch, args, emit)
    if not args.no_per_iteration:
        bench_per_iteration(args, emit)
    harness.report(table(emit.rows))
    return emit.rows


if __name__ == "__main__":
    main()
