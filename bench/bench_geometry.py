"""Between factors: analytic Jacobians (``nlls.Between``) beside the same error as an
``nlls.AutoDiffCostFunction`` (Jacobians by ``torch.func``).

A random pose graph of ``--poses`` poses and ``--factors`` Between factors (a chain plus random
pairs), for SE2 and SE3. For each we time, in this process (warm-up, then the median of several
repetitions):

* ``jacobians``:   one vectorized evaluation of all factors' weighted Jacobians and residuals
  (``Evaluator.jacobians``): where analytic and autodiff differ;
* ``linearize``:   one ``DenseLinearization.linearize`` (the above plus ``J^T J``, ``J^T r``);
* ``solve``:       a Levenberg-Marquardt run of ``--iterations`` iterations (tolerances off) with
  ``--linear-solver`` (default ``dense_cholesky``, the fastest at this size on a CPU).

One JSON line per measurement on stdout, with ``ratio`` = autodiff time / analytic time and the
largest difference between the two Jacobians; a markdown table on stderr.

    python bench/bench_geometry.py --factors 2000 --poses 200 --device cpu
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import nlls
from nlls.core.evaluation import Evaluator
from nlls.solve.linearization import DenseLinearization

GROUPS = {"SE2": nlls.SE2, "SE3": nlls.SE3}


def between_error(optim_vars, aux_vars):
    x1, x2 = optim_vars
    (measurement,) = aux_vars
    return measurement.local(x1.between(x2))


def build(group, poses: int, factors: int, batch: int, autodiff: bool, device, dtype, seed: int):
    """An objective of ``factors`` Between factors among ``poses`` random poses."""
    generator = torch.Generator().manual_seed(seed)
    truth = group.rand(poses, generator, dtype=torch.float64)
    pairs = [(i, i + 1) for i in range(poses - 1)]
    while len(pairs) < factors:
        i, j = torch.randint(poses, (2,), generator=generator).tolist()
        if i != j:
            pairs.append((i, j))
    noise = 0.1 * torch.randn(poses, batch, group.DOF, generator=generator, dtype=torch.float64)
    variables = [
        group(group.retract_tensor(truth.tensor[i:i + 1].expand(batch, *group.EVENT_SHAPE), noise[i])
              .to(device=device, dtype=dtype), name=f"x{i}")
        for i in range(poses)
    ]
    objective = nlls.Objective()
    objective.add(nlls.Difference(variables[0], group(truth.tensor[:1].to(device=device, dtype=dtype),
                                                      name="origin"), name="prior"))
    for k, (i, j) in enumerate(pairs[:factors]):
        relative = group.between_tensor(truth.tensor[i:i + 1], truth.tensor[j:j + 1])
        measurement = group(relative.to(device=device, dtype=dtype), name=f"m{k}")
        if autodiff:
            cost = nlls.AutoDiffCostFunction((variables[i], variables[j]), between_error, group.DOF,
                                             aux_vars=(measurement,), name=f"between{k}")
        else:
            cost = nlls.Between(variables[i], variables[j], measurement, name=f"between{k}")
        objective.add(cost)
    return objective


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(run: Callable, device, warmup: int, repeats: int, max_seconds: float):
    """Median wall time of ``run()`` in ms after ``warmup`` calls, and its last result."""
    result = None
    for _ in range(warmup):
        result = run()
    _sync(device)
    times: List[float] = []
    while len(times) < repeats and sum(times) < max_seconds:
        _sync(device)
        begin = time.perf_counter()
        result = run()
        _sync(device)
        times.append(time.perf_counter() - begin)
    return 1e3 * statistics.median(times), len(times), result


def measure(group_name: str, args, device, dtype) -> List[Dict]:
    group = GROUPS[group_name]
    records = []
    runs = {}
    for method in ("analytic", "autodiff"):
        objective = build(group, args.poses, args.factors, args.batch_size, method == "autodiff",
                          device, dtype, args.seed)
        evaluator = Evaluator(objective)
        linearization = DenseLinearization(evaluator)
        state, aux = evaluator.gather(), evaluator.aux()
        start = [(v, v.tensor) for v in objective.optim_vars.values()]
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver=args.linear_solver,
                                            max_iterations=args.iterations,
                                            abs_err_tolerance=0.0, rel_err_tolerance=0.0,
                                            check_every=args.iterations)

        def solve(optimizer=optimizer, start=start):
            for variable, tensor in start:  # reset without re-validating (not what is timed)
                variable.tensor = tensor
            return optimizer.optimize().final_error

        runs[method] = {
            "jacobians": lambda e=evaluator, s=state, a=aux: e.jacobians(s, a),
            "linearize": lambda lin=linearization, s=state, a=aux: lin.linearize(s, a),
            "solve": solve,
        }
    for measurement in ("jacobians", "linearize", "solve"):
        timed = {m: time_ms(runs[m][measurement], device, args.warmup, args.repeats, args.max_seconds)
                 for m in ("analytic", "autodiff")}
        record = {
            "bench": "geometry", "group": group_name, "measurement": measurement,
            "factors": args.factors, "poses": args.poses, "batch_size": args.batch_size,
            "dtype": str(dtype).replace("torch.", ""), "device": str(device),
            "analytic_ms": round(timed["analytic"][0], 3), "autodiff_ms": round(timed["autodiff"][0], 3),
            "ratio": round(timed["autodiff"][0] / timed["analytic"][0], 2),
            "repeats": min(timed["analytic"][1], timed["autodiff"][1]),
        }
        if measurement == "jacobians":
            record["max_jacobian_diff"] = max(
                float((a[0] - b[0]).abs().max()) for a, b in zip(timed["analytic"][2], timed["autodiff"][2]))
        if measurement == "solve":
            record["max_final_error_diff"] = float((timed["analytic"][2] - timed["autodiff"][2]).abs().max())
            record["iterations"] = args.iterations
            record["linear_solver"] = args.linear_solver
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def markdown_table(rows: List[Dict]) -> str:
    lines = ["| group | measurement | factors | B | analytic ms | autodiff ms | autodiff / analytic |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['group']} | {r['measurement']} | {r['factors']} | {r['batch_size']} | "
              f"{r['analytic_ms']:.2f} | {r['autodiff_ms']:.2f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="SE2,SE3", help="comma-separated subset of SE2,SE3")
    parser.add_argument("--factors", type=int, default=2000)
    parser.add_argument("--poses", type=int, default=200,
                        help="poses (the dense normal matrix is (poses * dof)^2 per batch element)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="LM iterations of the solve")
    parser.add_argument("--linear-solver", default="dense_cholesky",
                        help="linear solver of the solve measurement (a name nlls knows)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    groups = [g for g in args.groups.split(",") if g]
    if set(groups) - set(GROUPS):
        parser.error(f"unknown groups {sorted(set(groups) - set(GROUPS))}; choose from {sorted(GROUPS)}")
    if args.factors < args.poses - 1:
        parser.error("--factors must be at least --poses - 1 (the chain)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    rows: List[Dict] = []
    for name in groups:
        rows += measure(name, args, device, getattr(torch, args.dtype))
    print(markdown_table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
