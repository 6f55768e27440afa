"""How often should the loop ask "has every element stopped?": the data behind ``check_every``.

The test reads one boolean back to the host (a device synchronization on CUDA). Checking every
iteration costs that read per iteration; checking every ``k`` iterations saves it but runs up to
``k - 1`` iterations too many after the last element converged. Two measurements per problem,
batch size and device, nlls with analytic Jacobians (``problems_curve.py``'s curve fits):

* ``fixed``: the time of exactly ``iterations`` iterations with ``check_every=1`` against
  ``check_every=iterations`` (tolerances off): the price of the reads alone;
* ``to_convergence``: the time until every element has converged (default tolerances), for
  ``check_every`` in 1, 2, 5, 10, with the iterations run; the baseline is ``check_every=1``.

One JSON line per measurement on stdout (ratios to the ``check_every=1`` run of the same
process). Timings interleave the variants and take medians.

    .venv/bin/python bench/bench_check_every.py              # CPU, 1 thread
    python bench/bench_check_every.py --device cuda          # on a GPU machine
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import harness
import torch
from methods_nlls import build_nlls
from problems_curve import CURVE_PROBLEMS, make_data


def build(problem, batch, device, check_every, fixed):
    """A call that restarts from the start and solves; ``result`` of its timer is the info."""
    x, y, _, start = make_data(problem, batch, 100, device)
    if fixed:
        objective, optimizer, name = build_nlls(problem, start, x, y, check_every=check_every)
    else:
        objective, optimizer, name = build_nlls(problem, start, x, y, fixed=False, max_iterations=50,
                                                check_every=check_every)
    unknown = objective.optim_vars[name]

    def run():
        unknown.tensor = start.clone()
        return optimizer.optimize()
    return run


def timed(runs, repeats, sync):
    """Median-ready times (ms) of the runs, interleaved after one warm-up call each, and the
    iterations the last call of each ran (the most over the batch)."""
    timers = {k: harness.Timed(run, sync) for k, run in runs.items()}
    for timer in timers.values():
        harness.warm_up(timer, 1)
    times = harness.interleaved(timers, repeats)
    return times, {k: int(timer.result.iterations.max()) for k, timer in timers.items()}


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser, threads=1, warmup=False, repeats=15, seed=False,
                               help={"threads": "torch intra-op threads (default 1)"})
    parser.add_argument("--batch-sizes", default="1,256,4096")
    args = parser.parse_args(argv)
    emit = harness.start(parser, args, "check_every")
    device, sync = args.device, args.sync
    for name, problem in CURVE_PROBLEMS.items():
        for batch in harness.split(args.batch_sizes, int):
            base = {"problem": name, "batch_size": batch, "device": str(device),
                    "threads": torch.get_num_threads()}
            n = problem.iterations
            runs = {k: build(problem, batch, device, k, fixed=True) for k in (1, n)}
            times, _ = timed(runs, args.repeats, sync)
            emit({**base, "measure": "fixed", "iterations": n,
                  "ms_check_every_1": harness.median(times[1]),
                  "ms_check_at_end": harness.median(times[n]),
                  "ratio_check_every_1": round(harness.paired_median(times[1], times[n]), 3)})
            runs = {k: build(problem, batch, device, k, fixed=False) for k in (1, 2, 5, 10)}
            times, counts = timed(runs, args.repeats, sync)
            for k in runs:
                loop = -(-counts[k] // k) * k  # the loop stops at the first check after the last element
                emit({**base, "measure": "to_convergence", "check_every": k,
                      "element_iterations": counts[k], "loop_iterations": loop,
                      "ms": harness.median(times[k]),
                      "ratio_to_check_every_1": round(harness.paired_median(times[k], times[1]), 3)})
    return emit.rows


if __name__ == "__main__":
    main()
