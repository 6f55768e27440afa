"""One training step through a pose graph: the implicit backward with the exact Hessian against
Gauss-Newton's, both through the sparse solver.

The problem: a 2-D pose graph of ``--poses`` poses (a walk with right-angle turns, odometry edges
and loop closures for a tenth of the poses, measurements the true relative poses times
``exp(noise)``), one ``Between.many`` group ``edges`` whose per-edge scale weights are one
learnable tensor ``edges_weights (B, E, 1)``, a prior on pose 0; ``B = --batch`` copies with
different weights. A step is the layer's forward (Levenberg-Marquardt, ``sparse_cholesky``, from
the same start every time) and the backward of ``sum(probe * poses)`` to the weights.

Per method (``implicit_gn``, ``implicit_exact``) one JSON line reports ``median_ms`` (forward +
backward, median of ``--repeats`` after warm-up, the methods interleaved), ``backward_ms`` (the
backward alone, median), and for the exact one ``ratio_to_gn`` (the paired median of the step
times) and ``grad_rel_diff_gn``: ``|g_gn - g_exact| / |g_exact|``, how far the Gauss-Newton
gradient is from the exact one on this graph.

    python bench/bench_exact_sparse.py                   # 500 poses, B=4
    python bench/bench_exact_sparse.py --poses 100 --repeats 3
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List

import harness
import numpy as np
import torch

import nlls

DTYPE = torch.float64
METHODS = ("implicit_gn", "implicit_exact")


def pose_graph(num_poses: int, batch: int, seed: int = 0, closure_fraction: float = 0.1):
    """``(objective, weights (B, E, 1))``: the graph described in the module's docstring."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((num_poses, 3))
    for k in range(1, num_poses):
        theta = truth[k - 1, 2] + (math.pi / 2 if rng.random() < 0.2 else 0.0)
        truth[k] = (truth[k - 1, 0] + math.cos(theta), truth[k - 1, 1] + math.sin(theta), theta)
    pairs = [(k, k + 1) for k in range(num_poses - 1)]
    for _ in range(max(1, round(closure_fraction * num_poses))):
        j = int(rng.integers(10, num_poses))
        pairs.append((int(rng.integers(0, j - 5)), j))
    ij = torch.tensor(pairs)
    true_poses = torch.from_numpy(truth)
    relative = nlls.SE2(x_y_theta=true_poses[ij[:, 0]]).between(nlls.SE2(x_y_theta=true_poses[ij[:, 1]]))
    noise = torch.from_numpy(rng.normal(size=(len(pairs), 3)) * np.array([0.05, 0.05, 0.02]))
    measurements = relative.compose(nlls.SE2.exp_map(noise)).tensor
    start = nlls.SE2(x_y_theta=true_poses + torch.from_numpy(rng.normal(size=truth.shape) * 0.05)).tensor
    poses = nlls.VariableBlock(nlls.SE2, start[None].expand(batch, -1, -1).clone(), "poses")
    objective = nlls.Objective(dtype=DTYPE)
    objective.add(nlls.Between.many(poses, ij[:, 0], ij[:, 1], measurements[None],
                                    torch.ones(1, len(pairs), 1, dtype=DTYPE), name="edges"))
    objective.add(nlls.Difference.many(poses, torch.tensor([0]), start[None, :1].clone(),
                                       torch.full((1, 1, 1), 10.0, dtype=DTYPE), name="prior"))
    weights = torch.from_numpy(rng.uniform(0.5, 2.0, size=(batch, len(pairs), 1)))
    return objective, weights


class Step:
    """One training step of one method; keeps the last gradient and the backward's time."""

    def __init__(self, objective, weights, probe, hessian: str, device, sync):
        self.start = objective.blocks["poses"].tensor.clone()
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky", max_iterations=50)
        self.layer = nlls.OptimizationLayer(optimizer, hessian=hessian)
        self.weights, self.probe, self.sync = weights, probe, sync
        self.grad = None
        self.backward_ms: List[float] = []

    def __call__(self):
        w = self.weights.clone().requires_grad_(True)
        solution, _ = self.layer({"edges_weights": w, "poses": self.start})
        loss = (solution["poses"] * self.probe).sum()
        if self.sync is not None:
            self.sync()
        begin = time.perf_counter()
        self.grad, = torch.autograd.grad(loss, w)
        if self.sync is not None:
            self.sync()
        self.backward_ms.append(1e3 * (time.perf_counter() - begin))
        return self.grad


def bench(args, emit) -> None:
    objective, weights = pose_graph(args.poses, args.batch, seed=args.seed)
    objective.to(args.device)
    weights = weights.to(args.device)
    probe = torch.randn(args.batch, args.poses, 4, dtype=DTYPE,
                        generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    steps = {name: Step(objective, weights, probe, name.split("_", 1)[1].replace("gn", "gauss_newton"),
                        args.device, args.sync)
             for name in METHODS}
    timers = {name: harness.Timed(step, args.sync) for name, step in steps.items()}
    for timer in timers.values():
        harness.warm_up(timer, args.warmup)
    for step in steps.values():
        step.backward_ms.clear()
    times = harness.interleaved(timers, args.repeats)
    exact, gn = steps["implicit_exact"].grad, steps["implicit_gn"].grad
    assert exact is not None and gn is not None, "every step ran"
    base = {"poses": args.poses, "edges": int(weights.shape[1]), "batch": args.batch}
    for name in METHODS:
        record: Dict = {**base, "method": name, "median_ms": harness.median(times[name]),
                        "backward_ms": harness.median(steps[name].backward_ms)}
        if name == "implicit_exact":
            record["ratio_to_gn"] = harness.paired_median(times[name], times["implicit_gn"])
            record["grad_rel_diff_gn"] = float((gn - exact).norm() / exact.norm())
        emit(record)


def table(rows) -> str:
    return harness.markdown_table(
        ["poses", "B", "method", "step ms", "backward ms", "ratio to GN", "GN gradient off by"],
        [(r["poses"], r["batch"], r["method"], harness.fmt(r["median_ms"], ".1f"),
          harness.fmt(r["backward_ms"], ".1f"), harness.fmt(r.get("ratio_to_gn"), ".2f"),
          harness.fmt(r.get("grad_rel_diff_gn"), ".2e")) for r in rows], "rrlrrrr")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=500, help="poses of the graph (default 500)")
    parser.add_argument("--batch", type=int, default=4, help="batch elements B (default 4)")
    harness.add_common_options(parser, repeats=7)
    args = parser.parse_args(argv)
    emit = harness.start(parser, args, "exact_sparse")
    bench(args, emit)
    harness.report(table(emit.rows))
    return emit.rows


if __name__ == "__main__":
    main()
