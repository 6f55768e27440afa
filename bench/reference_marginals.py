"""GTSAM's marginal covariances of two real pose graphs: the reference of ``nlls.Covariance``.

For ``w100.graph`` (2-D, TORO) and ``pose3example.txt`` (3-D, g2o) of ``../shared/data``: nlls
solves the graph with a prior on its first pose (:data:`PRIOR_SIGMAS`, a diagonal noise model in
nlls's tangent order), then GTSAM 4.3 builds the same factor graph (its own reader, the same
prior) and computes ``gtsam.Marginals`` at nlls's solution. At the optimum the prior's residual is
zero (the edges can move the graph rigidly), so both Jacobians of the prior are the identity, and
both libraries use the exact logarithm in the edge residuals (``../shared/data/README.md``);
GTSAM's retractions (its Pose2/Pose3 charts) agree with nlls's right-multiplied ``exp`` to first
order, which is all a covariance sees. GTSAM's ``Pose3`` tangent is ``(rotation, translation)``;
the marginals written here are permuted into nlls's ``(translation, rotation)``.

Each graph gives ``tests/data/marginals_<name>.npz``: ``ids`` (vertex ids), ``poses`` (nlls's
solution, ``SE2`` ``(N, 4)`` or ``SE3`` ``(N, 3, 4)`` data), ``marginals`` ``(N, dof, dof)``,
``sigmas`` (the prior's) and ``dimension``. ``tests/test_covariance_reference.py`` compares
nlls against these files always, and against live GTSAM when it is installed.

    .venv/bin/python bench/reference_marginals.py          # needs gtsam (pip install gtsam)
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

import nlls

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUTPUT = ROOT / "tests" / "data"
GRAPHS = {"w100": "w100.graph", "pose3example": "pose3example.txt"}
#: the prior on the first pose, nlls's tangent order (translation first)
PRIOR_SIGMAS = {2: [0.1, 0.2, 0.05], 3: [0.1, 0.2, 0.3, 0.05, 0.04, 0.03]}


def with_prior(problem, sigmas, dtype=torch.float64):
    """``(objective, first pose)``: the graph's objective and a prior on its first pose, at the
    pose's value in ``problem`` (an ``nlls.Difference`` weighted by ``1 / sigmas``)."""
    objective = problem.objective(dtype=dtype)
    first = objective.optim_vars[f"x{int(problem.vertex_ids[0])}"]
    target = type(first).from_tensor(first.tensor.detach().clone(), "prior_target")
    weight = nlls.DiagonalCostWeight(1.0 / torch.tensor([sigmas], dtype=dtype))
    objective.add(nlls.Difference(first, target, cost_weight=weight, name="prior"))
    return objective, first


def solve(objective) -> None:
    info = nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky", max_iterations=200,
                                   abs_err_tolerance=0.0, rel_err_tolerance=1e-14).optimize()
    if not bool(info.status.ne(nlls.Status.FAILED).all()):
        raise RuntimeError(f"the nlls solve failed: {info.message}")


def gtsam_marginals(path, dimension: int, ids, poses: np.ndarray, sigmas) -> np.ndarray:
    """GTSAM's marginal covariance of every pose, ``(N, dof, dof)`` in nlls's tangent order, at
    ``poses`` (nlls's data layout), with GTSAM's reader and a prior of ``sigmas`` on ``ids[0]``."""
    import gtsam

    if dimension == 2:
        graph, _ = gtsam.load2D(str(path), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO
                                if str(path).endswith(".graph") else gtsam.NoiseFormat.NoiseFormatG2O)
        values = gtsam.Values()
        for key, (x, y, c, s) in zip(ids, poses):
            values.insert(int(key), gtsam.Pose2(x, y, np.arctan2(s, c)))
        graph.add(gtsam.PriorFactorPose2(int(ids[0]), values.atPose2(int(ids[0])),
                                         gtsam.noiseModel.Diagonal.Sigmas(np.asarray(sigmas))))
        order = [0, 1, 2]
    else:
        graph, _ = gtsam.readG2o(str(path), True)
        values = gtsam.Values()
        for key, matrix in zip(ids, poses):
            values.insert(int(key), gtsam.Pose3(gtsam.Rot3(matrix[:, :3]), matrix[:, 3]))
        gtsam_sigmas = np.concatenate([sigmas[3:], sigmas[:3]])  # (rotation, translation)
        graph.add(gtsam.PriorFactorPose3(int(ids[0]), values.atPose3(int(ids[0])),
                                         gtsam.noiseModel.Diagonal.Sigmas(gtsam_sigmas)))
        order = [3, 4, 5, 0, 1, 2]  # nlls coordinate i is GTSAM coordinate order[i]
    marginals = gtsam.Marginals(graph, values)
    out = []
    for key in ids:
        covariance = np.asarray(marginals.marginalCovariance(int(key)))
        out.append(covariance[np.ix_(order, order)])
    return np.stack(out)


def reference(name: str) -> Dict[str, np.ndarray]:
    """The arrays of ``marginals_<name>.npz`` (nlls solves, GTSAM computes the marginals)."""
    path = DATA / GRAPHS[name]
    problem = nlls.io.read(path)
    sigmas = PRIOR_SIGMAS[problem.dimension]
    objective, _ = with_prior(problem, sigmas)
    solve(objective)
    ids = np.asarray(problem.vertex_ids)
    poses = problem.current_poses(objective).numpy()
    marginals = gtsam_marginals(path, problem.dimension, ids, poses, sigmas)
    return {"ids": ids, "poses": poses, "marginals": marginals, "sigmas": np.asarray(sigmas),
            "dimension": np.asarray(problem.dimension)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="which of: " + ", ".join(GRAPHS))
    parser.add_argument("--output", default=str(OUTPUT), help="folder of the .npz files")
    args = parser.parse_args(argv)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    for name in args.graphs.split(","):
        arrays = reference(name)
        target = Path(args.output) / f"marginals_{name}.npz"
        np.savez_compressed(target, **arrays)
        print(f"{target}: {len(arrays['ids'])} poses, largest marginal variance "
              f"{float(arrays['marginals'].diagonal(axis1=1, axis2=2).max()):.6g}")


if __name__ == "__main__":
    main()
