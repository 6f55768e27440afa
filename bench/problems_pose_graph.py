"""The sparse problems of ``bench_pose_graph.py``, each a file that every library reads.

* Synthetic 2-D pose graphs (:func:`synthetic_pose_graph`, written by :func:`write_g2o`): a grid
  walk with 10 % loop closures; the pose algebra is ``nlls.SE2``'s.
* The real files of ``../shared/data`` (GTSAM's examples: TORO and g2o pose graphs, 2-D and 3-D)
  and the BAL file there, with GTSAM's numbers from that folder's README.

A :class:`Problem` is a file and what is known about it; a :class:`Runner` is one method set up
on one problem (the ``methods_*.py`` modules make them).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

import nlls

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()

# GTSAM 4.3.0's numbers from shared/data/README.md: initial cost, LM final cost, iterations
README_GTSAM = {
    "w100.graph": (38.544575008240635, 0.5689273833553848, 3),
    "noisyToyGraph.txt": (0.3916610203624775, 0.06834282473801372, 3),
    "pose3example.txt": (64941.32288798196, 18853.02073585559, 15),
    "pose3example-grid.txt": (127.94104309597522, 43.49865834745329, 4),
    "dubrovnik-3-7-pre.txt": (2764.2199844221705, 0.020334477760063786, 18),
}
REAL_POSE_GRAPHS = ("w100.graph", "noisyToyGraph.txt", "pose3example.txt", "pose3example-grid.txt")
BAL_FILES = ("dubrovnik-3-7-pre.txt",)
SAME_COST = 1e-3  # final costs agree when their relative gap is at most 0.1 %
MAX_ITERATIONS = 200
REL_TOLERANCE = 1e-10


def _prefix_compose(steps: nlls.SE2) -> torch.Tensor:
    """``(N, 4)`` storage of ``s_0, s_0 s_1, ..., s_0 ... s_{N-1}`` (an inclusive scan by
    doubling: ``log2 N`` batched compositions instead of ``N`` single ones)."""
    scan, shift = steps.tensor, 1
    while shift < scan.shape[0]:
        head = nlls.SE2(scan[:-shift]).compose(nlls.SE2(scan[shift:])).tensor
        scan = torch.cat([scan[:shift], head])
        shift *= 2
    return scan


def synthetic_pose_graph(num_poses: int, seed: int = 0, closure_fraction: float = 0.1,
                         sigma=(0.05, 0.05, 0.01)):
    """A 2-D pose graph like a robot driving city blocks.

    Ground truth: a walk on a unit grid inside a square of side about ``sqrt(N)``, one metre per
    step, turning by 90 degrees at a quarter of the steps (and at the border). Edges: odometry
    ``k -> k+1`` and ``round(closure_fraction * N)`` loop closures, each from a random pose back to
    a pose within 1.5 m of it, at least 20 steps earlier. Every measurement is the true relative
    pose times ``exp(noise)``, noise Gaussian with standard deviations ``sigma`` (x, y, theta),
    information ``diag(sigma)^-2``. Initial guess: pose 0 true, the rest composed from the noisy
    odometry (so it drifts, as dead reckoning does).

    Returns:
        ``(truth (N, 3), initial (N, 3), edges (E, 2) int, measurements (E, 3), information (3,))``,
        poses and measurements as ``x, y, theta``.
    """
    rng = np.random.default_rng(seed)
    half = max(3, int(round(math.sqrt(num_poses) / 2)))
    steps = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)])
    truth = np.zeros((num_poses, 3))
    position, heading = np.zeros(2, dtype=np.int64), 0
    for k in range(1, num_poses):
        turn = heading if rng.random() >= 0.25 else (heading + rng.choice((-1, 1))) % 4
        while np.any(np.abs(position + steps[turn]) > half):  # at the border: turn away
            turn = (turn + rng.choice((-1, 1, 2))) % 4
        heading, position = turn, position + steps[turn]
        truth[k] = (position[0], position[1], heading * np.pi / 2)
    wanted, closures = int(round(closure_fraction * num_poses)), []
    for i in rng.permutation(np.arange(20, num_poses)):
        near = np.nonzero(np.hypot(*(truth[:i - 19, :2] - truth[i, :2]).T) < 1.5)[0]
        if near.size:
            closures.append((int(rng.choice(near)), int(i)))
        if len(closures) == wanted:
            break
    edges = np.array([(k, k + 1) for k in range(num_poses - 1)] + sorted(closures))
    sigma = np.asarray(sigma, dtype=np.float64)
    noise = torch.from_numpy(rng.normal(size=(len(edges), 3)) * sigma)
    true_poses = torch.from_numpy(truth)
    relative = nlls.SE2(x_y_theta=true_poses[edges[:, 0]]).between(
        nlls.SE2(x_y_theta=true_poses[edges[:, 1]]))
    measurements = relative.compose(nlls.SE2.exp_map(noise))
    first = nlls.SE2(x_y_theta=true_poses[:1])
    initial = first.x_y_theta()
    if num_poses > 1:
        odometry = nlls.SE2(measurements.tensor[:num_poses - 1])
        drift = first.compose(nlls.SE2(_prefix_compose(odometry)))
        initial = torch.cat([initial, drift.x_y_theta()])
    return (truth, initial.numpy(), edges, measurements.x_y_theta().numpy(), sigma ** -2.0)


def write_g2o(path: Path, initial, edges, measurements, information) -> None:
    """``VERTEX_SE2`` and ``EDGE_SE2`` records (information as its upper triangle, xx xy xt yy yt
    tt), 17 significant digits."""
    xx, yy, tt = information
    lines = [f"VERTEX_SE2 {k} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g}" for k, p in enumerate(initial)]
    lines += [f"EDGE_SE2 {i} {j} {z[0]:.17g} {z[1]:.17g} {z[2]:.17g} {xx:.17g} 0 0 {yy:.17g} 0 "
              f"{tt:.17g}" for (i, j), z in zip(edges.tolist(), measurements)]
    path.write_text("\n".join(lines) + "\n")


class Problem:
    """A file and what is known about it."""

    def __init__(self, name: str, path: Path, kind: str, dimension: int = 2):
        self.name, self.path, self.kind, self.dimension = name, path, kind, dimension
        self.readme = README_GTSAM.get(path.name)
        graph = nlls.io.read(path)
        if isinstance(graph, nlls.io.PoseGraph):
            self.dimension = graph.dimension
            self.size = {"poses": len(graph.vertex_ids), "edges": len(graph.edges)}
        else:
            self.kind = "bal"
            self.size = bal_size(path)
        self.is_bal = self.kind == "bal"


def bal_size(path: Path) -> Dict[str, int]:
    cameras, points, observations = (int(w) for w in path.read_text().split()[:3])
    return {"cameras": cameras, "points": points, "observations": observations}


def synthetic_problem(folder: Path, num_poses: int, seed: int = 0) -> Problem:
    """``synthetic_<N>``: the graph written into ``folder`` as g2o."""
    path = folder / f"synthetic_se2_{num_poses}.g2o"
    write_g2o(path, *synthetic_pose_graph(num_poses, seed=seed)[1:])
    return Problem(f"synthetic_{num_poses}", path, "synthetic")


def graph_arrays(path: Path):
    """What the Python baselines (SciPy, Theseus) need of a pose graph, through nlls's reader:
    the graph, edge rows ``(E, 2)`` into its poses and ``S`` with ``S^T S = Omega``."""
    graph = nlls.io.read(path)
    order = np.argsort(graph.vertex_ids, kind="stable")
    rows = order[np.searchsorted(graph.vertex_ids, graph.edges.pairs, sorter=order)]
    sqrt_information = torch.linalg.cholesky(graph.edges.information).mT.contiguous()
    return graph, rows, sqrt_information


class Runner:
    """A method set up on one problem.

    ``reset()`` sets the start values again (not timed in the solve time; its own time is
    reported); ``solve()`` runs to convergence and returns a dict with ``iterations``,
    ``converged``, ``initial_cost``, ``final_cost`` and any extra columns.
    """

    def __init__(self, solve: Callable[[], Dict], reset: Callable[[], None] = lambda: None,
                 extra: Optional[Dict] = None):
        self.solve, self.reset, self.extra = solve, reset, extra or {}
