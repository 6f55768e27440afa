# %% [markdown]
# # 5. A 2-D pose graph: odometry drift, loop closures, and `Between` factors
#
# A robot drives laps around a block. Its odometry measures each motion between consecutive
# poses with a little noise; chaining the measurements (dead reckoning) drifts further with every
# step. When it recognizes a place it visited a lap earlier, it gets a **loop closure**: a
# measurement of the motion between two distant poses. A pose graph finds the poses that agree
# best with all measurements.
#
# Each pose is an `nlls.SE2` (stored as `x, y, cos θ, sin θ`; tangent `(vx, vy, ω)`). Each
# measurement `m_ij` of the motion from pose `i` to pose `j` is an `nlls.Between` factor,
# residual `m_ij.local(x_i.between(x_j))`, with analytic Jacobians. A `Difference` prior pins the
# first pose (otherwise the whole graph could slide). Every `Between` has the same type, so the
# solver evaluates all of them in one call per iteration.
#
# Run it: `python tutorials/05_pose_graph_2d.py` (writes `tutorials/output/05_pose_graph_2d.png`).

# %%
from __future__ import annotations

import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402

# %% [markdown]
# ## The ground truth and the measurements
# Laps around a rounded square: the heading follows the direction of travel. A measurement is the
# true relative motion moved by a random tangent step: `m = (x_i^-1 x_j) exp(noise)`, the same
# noise model the `Between` residual assumes, so weighting by `1/sigma` makes each residual
# a standard normal.


# %%
def trajectory(num_poses: int, laps: int = 2, side: float = 10.0) -> torch.Tensor:
    """``(num_poses, 3)`` true ``x, y, theta`` along ``laps`` laps of a rounded square."""
    s = torch.linspace(0, laps, num_poses + 1, dtype=torch.float64)[:-1] * 2 * math.pi
    radius = side / 2 + 0.3 * torch.cos(4 * s)  # a square-ish closed curve
    x, y = radius * torch.cos(s), radius * torch.sin(s)
    dx, dy = torch.gradient(x)[0], torch.gradient(y)[0]
    return torch.stack([x, y, torch.atan2(dy, dx)], dim=1)


def make_graph(num_poses: int, num_loop_closures: int, sigma, seed: int = 0):
    """True poses, edges ``(i, j)`` and noisy measurements ``(E, 4)`` (SE2 data)."""
    generator = torch.Generator().manual_seed(seed)
    truth = nlls.SE2(x_y_theta=trajectory(num_poses), name="truth")
    per_lap = num_poses // 2
    edges = [(i, i + 1) for i in range(num_poses - 1)]
    later = torch.randperm(num_poses - per_lap, generator=generator)[:num_loop_closures] + per_lap
    edges += [(int(j) - per_lap, int(j)) for j in later]  # same place, one lap apart
    first = nlls.SE2(truth.tensor[[i for i, _ in edges]], name="first")  # a batch: one per edge
    second = nlls.SE2(truth.tensor[[j for _, j in edges]], name="second")
    noise = torch.randn(len(edges), 3, generator=generator, dtype=torch.float64) * sigma
    measured = first.between(second).retract(noise).tensor
    return truth, edges, measured


# %% [markdown]
# ## The objective
# Initial guess: dead reckoning, chaining the odometry measurements from the first pose.


# %%
def dead_reckoning(first: torch.Tensor, edges, measured: torch.Tensor) -> torch.Tensor:
    pose = nlls.SE2(first, name="start")
    poses = [pose.tensor]
    for (i, j), m in zip(edges, measured):
        if j == i + 1:
            pose = pose.compose(nlls.SE2(m[None]))
            poses.append(pose.tensor)
    return torch.cat(poses)


def build_objective(initial: torch.Tensor, edges, measured: torch.Tensor, sigma: torch.Tensor,
                    anchor: torch.Tensor):
    poses = [nlls.SE2(initial[i:i + 1], name=f"x{i}") for i in range(initial.shape[0])]
    weight = nlls.DiagonalCostWeight(1.0 / sigma, name="inverse_sigma")  # shared by all edges
    objective = nlls.Objective()
    for k, (i, j) in enumerate(edges):
        measurement = nlls.SE2(measured[k:k + 1], name=f"m_{i}_{j}")
        objective.add(nlls.Between(poses[i], poses[j], measurement, cost_weight=weight,
                                   name=f"edge_{i}_{j}"))
    objective.add(nlls.Difference(poses[0], nlls.SE2(anchor, name="anchor"), cost_weight=1e3,
                                  name="prior"))
    return objective, poses


# %% [markdown]
# ## Solve and plot


# %%
def main(num_poses: int = 200, num_loop_closures: int = 40, output_dir: str = "tutorials/output",
         seed: int = 0) -> dict:
    sigma = torch.tensor([[0.02, 0.02, 0.02]], dtype=torch.float64)  # x, y [m], theta [rad]
    truth, edges, measured = make_graph(num_poses, num_loop_closures, sigma, seed)
    initial = dead_reckoning(truth.tensor[:1], edges, measured)
    objective, poses = build_objective(initial, edges, measured, sigma, truth.tensor[:1])

    initial_error = float(objective.error_metric())
    optimizer = nlls.LevenbergMarquardt(objective, max_iterations=50)
    start = time.perf_counter()
    info = optimizer.optimize()
    seconds = time.perf_counter() - start
    solution = torch.cat([p.tensor for p in poses])

    def position_error(estimate):
        return float((estimate[:, :2] - truth.tensor[:, :2]).norm(dim=1).max())

    result = {
        "num_poses": num_poses, "num_edges": len(edges),
        "initial_error": initial_error, "final_error": float(info.final_error),
        "iterations": int(info.iterations), "converged": bool(info.converged.all()),
        "initial_max_position_error": position_error(initial),
        "final_max_position_error": position_error(solution), "seconds": seconds,
    }

    figure, axis = plt.subplots(figsize=(6, 6))
    closures = [j for i, j in edges if j != i + 1]
    axis.plot(*truth.tensor[:, :2].T, color="gray", linewidth=3, alpha=0.5, label="truth")
    axis.plot(*initial[:, :2].T, "--", color="tab:red", label="dead reckoning")
    axis.plot(*solution[:, :2].T, color="tab:blue", label="optimized")
    axis.plot(*truth.tensor[closures, :2].T, "o", color="tab:green", markersize=3,
              label="loop closures")
    axis.set(aspect="equal", title=f"{num_poses} poses, {len(closures)} loop closures")
    axis.legend(loc="upper right")
    figure.tight_layout()
    os.makedirs(output_dir, exist_ok=True)
    result["figure"] = os.path.join(output_dir, "05_pose_graph_2d.png")
    figure.savefig(result["figure"], dpi=100)
    plt.close(figure)
    return result


# %%
if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:>27}: {value}")
