"""Between factors: analytic Jacobians (``nlls.Between``) beside the same error as an
``nlls.AutoDiffCostFunction`` (Jacobians by ``torch.func``).

A random pose graph of ``--poses`` poses and ``--factors`` Between factors (a chain plus random
pairs), for SE2 and SE3. For each we time, in this process (warm-up, then the median of several
repetitions, analytic and autodiff in turns):

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
from typing import Callable, Dict, List, Optional

import harness
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
    dof = truth.dof()
    pairs = [(i, i + 1) for i in range(poses - 1)]
    while len(pairs) < factors:
        i, j = torch.randint(poses, (2,), generator=generator).tolist()
        if i != j:
            pairs.append((i, j))
    noise = 0.1 * torch.randn(poses, batch, dof, generator=generator, dtype=torch.float64)

    def pose(i, batch_size=1):
        tensor = truth.tensor[i:i + 1]
        return group(tensor.expand(batch_size, *tensor.shape[1:]))

    variables = [group(pose(i, batch).retract(noise[i]).tensor.to(device=device, dtype=dtype),
                       name=f"x{i}") for i in range(poses)]
    objective = nlls.Objective()
    objective.add(nlls.Difference(variables[0], group(truth.tensor[:1].to(device=device, dtype=dtype),
                                                      name="origin"), name="prior"))
    for k, (i, j) in enumerate(pairs[:factors]):
        measurement = group(pose(i).between(pose(j)).tensor.to(device=device, dtype=dtype),
                            name=f"m{k}")
        if autodiff:
            cost = nlls.AutoDiffCostFunction((variables[i], variables[j]), between_error, dof,
                                             aux_vars=(measurement,), name=f"between{k}")
        else:
            cost = nlls.Between(variables[i], variables[j], measurement, name=f"between{k}")
        objective.add(cost)
    return objective


def _runs(objective, args) -> Dict[str, Callable]:
    """The three measured calls on one objective."""
    evaluator = Evaluator(objective)
    linearization = DenseLinearization(evaluator)
    values, aux = evaluator.gather(), evaluator.aux()
    start = [(v, v.tensor) for v in objective.optim_vars.values()]
    optimizer = nlls.LevenbergMarquardt(objective, linear_solver=args.linear_solver,
                                        max_iterations=args.iterations, abs_err_tolerance=0.0,
                                        rel_err_tolerance=0.0, check_every=args.iterations)

    def solve():
        for variable, tensor in start:  # reset without re-validating (not what is timed)
            variable.tensor = tensor
        return optimizer.optimize().final_error

    return {"jacobians": lambda: evaluator.jacobians(values, aux),
            "linearize": lambda: linearization.linearize(values, aux), "solve": solve}


def measure(group_name: str, args, device, sync, dtype, emit) -> None:
    runs = {method: _runs(build(GROUPS[group_name], args.poses, args.factors, args.batch_size,
                                method == "autodiff", device, dtype, args.seed), args)
            for method in ("analytic", "autodiff")}
    for measurement in ("jacobians", "linearize", "solve"):
        timers = {m: harness.Timed(runs[m][measurement], sync) for m in runs}
        for timer in timers.values():
            harness.warm_up(timer, args.warmup)
        times = harness.interleaved(timers, args.repeats, args.max_seconds)
        analytic, autodiff = harness.median(times["analytic"]), harness.median(times["autodiff"])
        record = {
            "group": group_name, "measurement": measurement,
            "factors": args.factors, "poses": args.poses, "batch_size": args.batch_size,
            "dtype": str(dtype).replace("torch.", ""), "device": str(device),
            "analytic_ms": round(analytic, 3), "autodiff_ms": round(autodiff, 3),
            "ratio": round(autodiff / analytic, 2), "repeats": len(times["autodiff"]),
        }
        results = {m: timer.result for m, timer in timers.items()}
        if measurement == "jacobians":
            record["max_jacobian_diff"] = max(
                float((a[0] - b[0]).abs().max()) for a, b in zip(results["analytic"], results["autodiff"]))
        if measurement == "solve":
            record["max_final_error_diff"] = float((results["analytic"] - results["autodiff"]).abs().max())
            record["iterations"] = args.iterations
            record["linear_solver"] = args.linear_solver
        emit(record)


def table(rows: List[Dict]) -> str:
    return harness.markdown_table(
        ["group", "measurement", "factors", "B", "analytic ms", "autodiff ms", "autodiff / analytic"],
        [[r["group"], r["measurement"], r["factors"], r["batch_size"], f"{r['analytic_ms']:.2f}",
          f"{r['autodiff_ms']:.2f}", f"{r['ratio']:.2f}"] for r in rows], "llrrrrr")


def main(argv: Optional[List[str]] = None) -> List[Dict]:
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
    harness.add_common_options(parser, threads=0, warmup=2, repeats=7, max_seconds=10.0)
    args = parser.parse_args(argv)
    groups = harness.split(args.groups)
    harness.check_choices(parser, groups, GROUPS, "groups")
    if args.factors < args.poses - 1:
        parser.error("--factors must be at least --poses - 1 (the chain)")
    emit = harness.start(parser, args, "geometry")
    device, sync = args.device, args.sync
    for name in groups:
        measure(name, args, device, sync, getattr(torch, args.dtype), emit)
    harness.report(table(emit.rows))
    return emit.rows


if __name__ == "__main__":
    main()
