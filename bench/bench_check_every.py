"""How often should the loop ask "has every element stopped?": the data behind ``check_every``.

The test reads one boolean back to the host (a device synchronization on CUDA). Checking every
iteration costs that read per iteration; checking every ``k`` iterations saves it but runs up to
``k - 1`` iterations too many after the last element converged. Two measurements per problem,
batch size and device, nlls with analytic Jacobians, default tolerances:

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
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import nlls  # noqa: E402
from bench_curve_fit import PROBLEMS, _AnalyticFit, make_data  # noqa: E402


def build(problem, batch, device, check_every, fixed):
    x, y, _, start = make_data(problem, batch, 100, device)
    p = nlls.Vector(tensor=start.clone(), name="p")
    objective = nlls.Objective()
    objective.add(_AnalyticFit(problem, p, nlls.Variable(x, name="x"), nlls.Variable(y, name="y"), name="fit"))
    kwargs = dict(max_iterations=problem.iterations if fixed else 50, check_every=check_every)
    if fixed:
        kwargs.update(abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    cls = nlls.GaussNewton if problem.optimizer == "gauss_newton" else nlls.LevenbergMarquardt
    optimizer = cls(objective, **kwargs)

    def run():
        p.tensor = start.clone()
        if device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        info = optimizer.optimize()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - begin, info

    return run


def timed(runs, repeats):
    for run in runs.values():
        run()  # warm-up
    times = {k: [] for k in runs}
    counts = {}
    for _ in range(repeats):
        for key, run in runs.items():
            seconds, info = run()
            times[key].append(seconds)
            counts[key] = int(info.iterations.max())
    return times, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,256,4096")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name, problem in PROBLEMS.items():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            base = {"problem": name, "batch_size": batch, "device": str(device),
                    "threads": torch.get_num_threads()}
            runs = {k: build(problem, batch, device, k, fixed=True) for k in (1, problem.iterations)}
            times, _ = timed(runs, args.repeats)
            ratio = statistics.median(a / b for a, b in zip(times[1], times[problem.iterations]))
            print(json.dumps({**base, "measure": "fixed", "iterations": problem.iterations,
                              "ms_check_every_1": 1e3 * statistics.median(times[1]),
                              "ms_check_at_end": 1e3 * statistics.median(times[problem.iterations]),
                              "ratio_check_every_1": round(ratio, 3)}), flush=True)
            runs = {k: build(problem, batch, device, k, fixed=False) for k in (1, 2, 5, 10)}
            times, counts = timed(runs, args.repeats)
            for k in runs:
                ratio = statistics.median(a / b for a, b in zip(times[k], times[1]))
                loop = -(-counts[k] // k) * k  # the loop stops at the first check after the last element
                print(json.dumps({**base, "measure": "to_convergence", "check_every": k,
                                  "element_iterations": counts[k], "loop_iterations": loop,
                                  "ms": 1e3 * statistics.median(times[k]),
                                  "ratio_to_check_every_1": round(ratio, 3)}), flush=True)


if __name__ == "__main__":
    main()
