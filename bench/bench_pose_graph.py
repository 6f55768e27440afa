"""Sparse problems from files: pose graphs and a bundle adjustment, nlls beside GTSAM, SciPy and
Theseus, each solved to convergence from the same file in this process.

Problems: synthetic 2-D pose graphs (a grid walk with 10 % loop closures, written as g2o files in a
temporary folder), the real files of ``../shared/data`` (GTSAM's examples: TORO and g2o pose
graphs, 2-D and 3-D) and the BAL file there. Methods:

* ``nlls_cholmod``, ``nlls_scipy``: ``nlls.LevenbergMarquardt`` with ``SparseCholesky`` on each
  CPU backend (``auto`` picks one; the JSON lines say which);
* ``gtsam``: GTSAM 4.3.0's ``LevenbergMarquardtOptimizer`` (C++), set up as the data README says;
* ``scipy_trf``: ``scipy.optimize.least_squares(method="trf")`` with a ``jac_sparsity`` pattern
  (finite differences, LSMR), 2-D pose graphs and BAL;
* ``theseus``: Theseus 0.2.3, ``th.LevenbergMarquardt`` with ``th.CholmodSparseSolver``
  (vectorized), pose graphs.

For every problem and method: build time (file to a solver ready to run), the first solve
(nlls builds its evaluator, sparsity pattern and CHOLMOD analysis there), the warm solve (start
values set again, median of repetitions interleaved across methods), iterations, initial and final
cost ``0.5 * sum e^T Omega e`` as each library reports it, and the gap of the final cost to
GTSAM's. One JSON line per measurement on stdout, a markdown table on stderr. See bench/README.md.

    python bench/bench_pose_graph.py                 # full run, about a minute and a half
    python bench/bench_pose_graph.py --quick         # smaller graphs, a smoke run (~15 s)
    python bench/bench_pose_graph.py --profile       # + where nlls's warm solve spends its time
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

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
METHODS = ("nlls_cholmod", "nlls_scipy", "gtsam", "scipy_trf", "theseus")
SAME_COST = 1e-3  # final costs agree when their relative gap is at most 0.1 %
MAX_ITERATIONS = 200
REL_TOLERANCE = 1e-10


# ---- synthetic 2-D pose graphs -----------------------------------------------------------------
def _wrap(angle):
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _compose(a, b):
    """``a * b`` of ``(n, 3)`` poses ``x, y, theta``."""
    c, s = np.cos(a[:, 2]), np.sin(a[:, 2])
    return np.stack([a[:, 0] + c * b[:, 0] - s * b[:, 1], a[:, 1] + s * b[:, 0] + c * b[:, 1],
                     _wrap(a[:, 2] + b[:, 2])], axis=1)


def _between(a, b):
    """``a^-1 * b`` of ``(n, 3)`` poses."""
    c, s = np.cos(a[:, 2]), np.sin(a[:, 2])
    dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    return np.stack([c * dx + s * dy, -s * dx + c * dy, _wrap(b[:, 2] - a[:, 2])], axis=1)


def _exp(v):
    """SE(2) exponential of ``(n, 3)`` tangents ``vx, vy, w`` as poses ``x, y, theta``."""
    w = v[:, 2]
    small = np.abs(w) < 1e-9
    ws = np.where(small, 1.0, w)
    a = np.where(small, 1.0 - w * w / 6.0, np.sin(ws) / ws)
    b = np.where(small, 0.5 * w, (1.0 - np.cos(ws)) / ws)
    return np.stack([a * v[:, 0] - b * v[:, 1], b * v[:, 0] + a * v[:, 1], w], axis=1)


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
        ``(truth (N, 3), initial (N, 3), edges (E, 2) int, measurements (E, 3), information (3,))``
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
        truth[k] = (position[0], position[1], _wrap(heading * np.pi / 2))
    wanted, closures = int(round(closure_fraction * num_poses)), []
    for i in rng.permutation(np.arange(20, num_poses)):
        near = np.nonzero(np.hypot(*(truth[:i - 19, :2] - truth[i, :2]).T) < 1.5)[0]
        if near.size:
            closures.append((int(rng.choice(near)), int(i)))
        if len(closures) == wanted:
            break
    edges = np.array([(k, k + 1) for k in range(num_poses - 1)] + sorted(closures))
    sigma = np.asarray(sigma, dtype=np.float64)
    noise = rng.normal(size=(len(edges), 3)) * sigma
    measurements = _compose(_between(truth[edges[:, 0]], truth[edges[:, 1]]), _exp(noise))
    initial = np.zeros_like(truth)
    initial[0] = truth[0]
    for k in range(num_poses - 1):
        initial[k + 1] = _compose(initial[k:k + 1], measurements[k:k + 1])[0]
    return truth, initial, edges, measurements, sigma ** -2.0


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
            self.size = _bal_size(path)
        self.is_bal = self.kind == "bal"


def _bal_size(path: Path) -> Dict[str, int]:
    cameras, points, observations = (int(w) for w in path.read_text().split()[:3])
    return {"cameras": cameras, "points": points, "observations": observations}


# ---- shared parsing for the Python baselines (SciPy, Theseus) -----------------------------------
def _graph_arrays(path: Path):
    """What SciPy and Theseus need of a pose graph, through nlls's reader (public API only):
    poses, edge rows ``(E, 2)`` into the poses, measurements and ``S`` with ``S^T S = Omega``."""
    graph = nlls.io.read(path)
    order = np.argsort(graph.vertex_ids, kind="stable")
    rows = order[np.searchsorted(graph.vertex_ids, graph.edges.pairs, sorter=order)]
    sqrt_information = torch.linalg.cholesky(graph.edges.information).mT.contiguous()
    return graph, rows, sqrt_information


# ---- methods: each returns a Runner --------------------------------------------------------------
class Runner:
    """A method set up on one problem.

    ``reset()`` sets the start values again (not timed in the solve time; its own time is
    reported); ``solve()`` runs to convergence and returns a dict with ``iterations``,
    ``converged``, ``initial_cost``, ``final_cost`` and any extra columns.
    """

    def __init__(self, solve: Callable[[], Dict], reset: Callable[[], None] = lambda: None,
                 extra: Optional[Dict] = None):
        self.solve, self.reset, self.extra = solve, reset, extra or {}


def nlls_runner(problem: Problem, backend: str) -> Runner:
    source = nlls.io.read(problem.path)
    objective = source.objective(dtype=torch.float64)
    optimizer = nlls.LevenbergMarquardt(
        objective, linear_solver=nlls.SparseCholesky(backend=backend),
        max_iterations=MAX_ITERATIONS, abs_err_tolerance=0.0, rel_err_tolerance=REL_TOLERANCE)
    start = {name: var.tensor.clone() for name, var in objective.optim_vars.items()}

    def solve():
        info = optimizer.optimize()
        return {"iterations": int(info.iterations[0]), "converged": bool(info.converged[0]),
                "initial_cost": float(info.initial_error[0]),
                "final_cost": float(info.final_error[0]),
                "linear_solver": repr(optimizer.linear_solver)}

    return Runner(solve, lambda: objective.update(start),
                  {"optimizer": optimizer, "objective": objective, "start": start})


def gtsam_runner(problem: Problem) -> Runner:
    import gtsam

    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(REL_TOLERANCE)
    params.setMaxIterations(MAX_ITERATIONS)
    if problem.is_bal:
        graph, initial = _gtsam_bal(gtsam, problem.path)
    else:
        if problem.path.suffix == ".graph":
            graph, initial = gtsam.load2D(str(problem.path),
                                          noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
        else:
            graph, initial = gtsam.readG2o(str(problem.path), problem.dimension == 3)
        # a prior on pose 0 at its initial value, sigma 1e-6 (as in shared/data/README.md)
        first = min(initial.keys())
        if problem.dimension == 3:
            graph.add(gtsam.PriorFactorPose3(first, initial.atPose3(first),
                                             gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
        else:
            graph.add(gtsam.PriorFactorPose2(first, initial.atPose2(first),
                                             gtsam.noiseModel.Isotropic.Sigma(3, 1e-6)))

    def solve():
        optimizer = gtsam.LevenbergMarquardtOptimizer(graph, initial, params)
        result = optimizer.optimize()
        iterations = int(optimizer.iterations())
        return {"iterations": iterations, "converged": iterations < MAX_ITERATIONS,
                "initial_cost": float(graph.error(initial)),
                "final_cost": float(graph.error(result))}

    return Runner(solve)


def _gtsam_bal(gtsam, path: Path):
    """One ``GeneralSFMFactorCal3Bundler`` per observation, sigma 1 pixel, no prior."""
    data = gtsam.SfmData.FromBalFile(str(path))
    noise = gtsam.noiseModel.Isotropic.Sigma(2, 1.0)
    graph, initial = gtsam.NonlinearFactorGraph(), gtsam.Values()
    for j in range(data.numberTracks()):
        track = data.track(j)
        for k in range(track.numberMeasurements()):
            camera, uv = track.measurement(k)
            graph.add(gtsam.GeneralSFMFactorCal3Bundler(uv, noise, gtsam.symbol("c", camera),
                                                        gtsam.symbol("p", j)))
        initial.insert(gtsam.symbol("p", j), track.point3())
    for i in range(data.numberCameras()):
        initial.insert(gtsam.symbol("c", i), data.camera(i))
    return graph, initial


def scipy_runner(problem: Problem, max_nfev: int) -> Runner:
    """``least_squares(method="trf")`` with finite differences on a ``jac_sparsity`` pattern.

    2-D pose graphs: unknowns ``x, y, theta`` per pose (moved additively), residual
    ``S Log(Z^-1 X_i^-1 X_j)`` with the exact SE(2) logarithm, no prior (LSMR copes with the
    gauge). BAL: unknowns the 9 camera and 3 point numbers, the model of shared/data/README.md.
    Tolerances ``ftol = xtol = gtol = 1e-10`` (its ``ftol`` is the relative cost change).
    """
    import scipy.sparse
    from scipy.optimize import least_squares

    if problem.is_bal:
        residual, x0, pattern = _scipy_bal(problem.path)
    elif problem.dimension == 2:
        residual, x0, pattern = _scipy_se2(problem.path)
    else:
        raise NotImplementedError("SciPy residuals are written for SE(2) graphs and BAL only")
    pattern = scipy.sparse.csr_matrix(pattern)

    def solve():
        result = least_squares(residual, x0.copy(), jac_sparsity=pattern, method="trf",
                               tr_solver="lsmr", ftol=1e-10, xtol=1e-10, gtol=1e-10,
                               max_nfev=max_nfev)
        r0 = residual(x0)
        return {"iterations": int(result.nfev), "converged": bool(result.status > 0),
                "initial_cost": float(0.5 * r0 @ r0), "final_cost": float(result.cost),
                "scipy_nfev": int(result.nfev), "scipy_njev": int(result.njev or 0),
                "scipy_status": int(result.status), "scipy_message": result.message}

    return Runner(solve)


def _scipy_se2(path: Path):
    import scipy.sparse

    graph, rows, sqrt_information = _graph_arrays(path)
    poses = graph.poses.numpy()
    x0 = np.stack([poses[:, 0], poses[:, 1], np.arctan2(poses[:, 3], poses[:, 2])], 1).ravel()
    i, j = rows[:, 0], rows[:, 1]
    z = graph.edges.measurements.numpy()
    z_angle = np.arctan2(z[:, 3], z[:, 2])
    S = sqrt_information.numpy()

    def residual(x):
        x = x.reshape(-1, 3)
        xi, xj = x[i], x[j]
        c, s = np.cos(xi[:, 2]), np.sin(xi[:, 2])
        dx, dy = xj[:, 0] - xi[:, 0], xj[:, 1] - xi[:, 1]
        u0, u1 = c * dx + s * dy - z[:, 0], -s * dx + c * dy - z[:, 1]  # R_i^T (t_j - t_i) - t_z
        tx, ty = z[:, 2] * u0 + z[:, 3] * u1, -z[:, 3] * u0 + z[:, 2] * u1  # R_z^T (...)
        phi = _wrap(xj[:, 2] - xi[:, 2] - z_angle)
        half = 0.5 * phi
        small = np.abs(half) < 1e-8
        a = np.where(small, 1.0 - phi * phi / 12.0,
                     half * np.cos(half) / np.where(small, 1.0, np.sin(half)))
        v = np.stack([a * tx + half * ty, -half * tx + a * ty, phi], axis=1)  # V(phi)^-1 t, phi
        return np.einsum("eab,eb->ea", S, v).ravel()

    E = len(i)
    columns = np.concatenate([3 * i[:, None] + np.arange(3), 3 * j[:, None] + np.arange(3)], 1)
    cols = np.repeat(columns[:, None, :], 3, axis=1).ravel()
    residual_rows = np.repeat(np.arange(3 * E), 6)
    pattern = scipy.sparse.coo_matrix((np.ones(cols.size), (residual_rows, cols)),
                                      shape=(3 * E, x0.size))
    return residual, x0, pattern


def _scipy_bal(path: Path):
    import scipy.sparse

    words = path.read_text().split()
    num_cameras, num_points, num_observations = (int(w) for w in words[:3])
    obs = np.array(words[3:3 + 4 * num_observations], dtype=np.float64).reshape(-1, 4)
    cam, pt, uv = obs[:, 0].astype(np.int64), obs[:, 1].astype(np.int64), obs[:, 2:]
    params = np.array(words[3 + 4 * num_observations:], dtype=np.float64)
    x0 = params.copy()
    split = 9 * num_cameras

    def residual(x):
        cameras, points = x[:split].reshape(-1, 9)[cam], x[split:].reshape(-1, 3)[pt]
        w, t, f, k1, k2 = (cameras[:, :3], cameras[:, 3:6], cameras[:, 6], cameras[:, 7],
                           cameras[:, 8])
        theta = np.linalg.norm(w, axis=1)
        small = theta < 1e-12
        axis = w / np.where(small, 1.0, theta)[:, None]
        cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
        rotated = (points * cos + np.cross(axis, points) * sin
                   + axis * (axis * points).sum(1, keepdims=True) * (1.0 - cos))
        rotated = np.where(small[:, None], points + np.cross(w, points), rotated)
        P = rotated + t
        p = -P[:, :2] / P[:, 2:3]
        r2 = (p * p).sum(1)
        return ((f * (1.0 + k1 * r2 + k2 * r2 * r2))[:, None] * p - uv).ravel()

    rows = np.repeat(np.arange(2 * num_observations), 12)
    columns = np.concatenate([9 * cam[:, None] + np.arange(9), split + 3 * pt[:, None]
                              + np.arange(3)], 1)
    cols = np.repeat(columns[:, None, :], 2, axis=1).ravel()
    pattern = scipy.sparse.coo_matrix((np.ones(cols.size), (rows, cols)),
                                      shape=(2 * num_observations, x0.size))
    return residual, x0, pattern


def theseus_runner(problem: Problem) -> Runner:
    """Theseus 0.2.3: one ``th.Between`` per edge on ``th.SE2``/``th.SE3`` (both store the data
    as nlls does, tangent translation first), a diagonal or full square-root-information weight,
    ``th.LevenbergMarquardt`` vectorized with ``th.CholmodSparseSolver``. Its CHOLMOD solver does
    not support adaptive damping, so LM runs with Theseus's default fixed damping 1e-3."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import theseus as th
    if problem.is_bal:
        raise NotImplementedError(
            "Theseus 0.2.3's Reprojection cost keeps focal length and distortion fixed (aux "
            "variables) where BAL optimizes them: a different problem")
    graph, rows, sqrt_information = _graph_arrays(problem.path)
    group = th.SE3 if problem.dimension == 3 else th.SE2
    poses = graph.poses.to(torch.float64)
    measurements = graph.edges.measurements.to(torch.float64)
    diagonal = torch.diagonal(sqrt_information, dim1=1, dim2=2)
    is_diagonal = bool(torch.equal(torch.diag_embed(diagonal), sqrt_information))
    matrix_weight = None if is_diagonal else _theseus_matrix_weight(th)
    variables = [group(tensor=poses[k:k + 1].clone(), name=f"x{k}") for k in range(len(poses))]
    objective = th.Objective(dtype=torch.float64)
    for k, (a, b) in enumerate(rows.tolist()):
        if is_diagonal:
            weight = th.DiagonalCostWeight(diagonal[k:k + 1].clone(), name=f"w{k}")
        else:
            weight = matrix_weight(sqrt_information[k:k + 1].clone(), name=f"w{k}")
        measurement = group(tensor=measurements[k:k + 1].clone(), name=f"z{k}")
        objective.add(th.Between(variables[a], variables[b], measurement, weight, name=f"e{k}"))
    optimizer = th.LevenbergMarquardt(
        objective, linear_solver_cls=th.CholmodSparseSolver, vectorize=True,
        max_iterations=MAX_ITERATIONS, abs_err_tolerance=1e-5, rel_err_tolerance=REL_TOLERANCE)
    start = {f"x{k}": poses[k:k + 1].clone() for k in range(len(poses))}
    used = sorted({a for pair in rows.tolist() for a in pair})
    start = {f"x{k}": start[f"x{k}"] for k in used}

    def solve():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            initial_cost = float(objective.error_metric()[0])
            info = optimizer.optimize(damping=1e-3, adaptive_damping=False)
            final_cost = float(objective.error_metric()[0])
        converged = info.status[0] == th.NonlinearOptimizerStatus.CONVERGED
        return {"iterations": int(info.converged_iter[0]) if converged else MAX_ITERATIONS,
                "converged": bool(converged), "initial_cost": initial_cost,
                "final_cost": final_cost, "theseus_status": info.status[0].name,
                "cost_weight": "diagonal" if is_diagonal else "matrix"}

    return Runner(solve, lambda: objective.update(start))


def _theseus_matrix_weight(th):
    """A Theseus cost weight ``S`` (full square root of the information), for graphs whose
    information matrices are not diagonal."""
    from theseus.core.variable import as_variable

    class MatrixWeight(th.CostWeight):
        def __init__(self, sqrt_information, name=None):
            super().__init__(name=name)
            self.sqrt_information = as_variable(sqrt_information)
            self.register_aux_vars(["sqrt_information"])

        def is_zero(self):
            return (self.sqrt_information.tensor == 0).flatten(1).all(dim=1)

        def weight_error(self, error):
            return (self.sqrt_information.tensor @ error[..., None])[..., 0]

        def weight_jacobians_and_error(self, jacobians, error):
            S = self.sqrt_information.tensor
            return [S @ jac for jac in jacobians], self.weight_error(error)

        def _copy_impl(self, new_name=None):
            return MatrixWeight(self.sqrt_information.copy(), name=new_name)

    return MatrixWeight


# ---- availability ---------------------------------------------------------------------------
def _missing(method: str, problem: Problem) -> Optional[str]:
    """Why ``method`` cannot run on ``problem`` (None when it can)."""
    try:
        if method == "nlls_cholmod":
            import sksparse.cholmod  # noqa: F401
        elif method == "gtsam":
            import gtsam  # noqa: F401
        elif method == "theseus":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import theseus  # noqa: F401
                import sksparse.cholmod  # noqa: F401,F811
    except Exception as exc:  # any import failure skips the method
        return f"{method} not importable: {type(exc).__name__}: {exc}"
    if method == "scipy_trf" and not problem.is_bal and problem.dimension == 3:
        return "SciPy residuals are written for SE(2) pose graphs and BAL only"
    if method == "theseus" and problem.is_bal:
        return ("Theseus 0.2.3's Reprojection cost keeps focal length and distortion fixed (aux "
                "variables) where BAL optimizes them: a different problem")
    return None


def _make_runner(method: str, problem: Problem, args) -> Runner:
    if method.startswith("nlls_"):
        return nlls_runner(problem, method.split("_", 1)[1])
    if method == "gtsam":
        return gtsam_runner(problem)
    if method == "scipy_trf":
        return scipy_runner(problem, args.scipy_max_nfev)
    return theseus_runner(problem)


def _preload(methods) -> None:
    import scipy.optimize  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401
    for module in ("sksparse.cholmod", "gtsam", "theseus"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(module)
        except Exception:  # reported per method by _missing
            pass


def auto_backend() -> str:
    """The backend ``SparseCholesky(backend="auto")`` picks on the CPU, seen after one solve."""
    graph = nlls.io.bundled_dataset()
    optimizer = nlls.LevenbergMarquardt(nlls.io.read(graph).objective(),
                                        linear_solver="sparse_cholesky", max_iterations=1)
    optimizer.optimize()
    return str(optimizer.linear_solver.backend_used)


# ---- one problem, every method ---------------------------------------------------------------
def emit(record: Dict) -> None:
    print(json.dumps({"bench": "pose_graph", **record}), flush=True)


def bench_problem(problem: Problem, args, rows: List[Dict], auto: str) -> None:
    base = {"problem": problem.name, "kind": problem.kind, "dimension": problem.dimension,
            **problem.size, "dtype": "float64", "device": "cpu",
            "threads": torch.get_num_threads()}
    records, runners, first_seconds = {}, {}, {}
    for method in args.methods:
        why = _missing(method, problem)
        if why:
            records[method] = {**base, "method": method, "skipped": why}
            continue
        try:
            begin = time.perf_counter()
            runner = _make_runner(method, problem, args)
            build = time.perf_counter() - begin
            begin = time.perf_counter()
            result = runner.solve()
            first = time.perf_counter() - begin
        except Exception as exc:  # a baseline that fails is reported, the rest goes on
            records[method] = {**base, "method": method,
                               "skipped": f"failed: {type(exc).__name__}: {exc}"}
            continue
        runners[method], first_seconds[method] = runner, first
        records[method] = {**base, "method": method, "build_ms": round(1e3 * build, 3),
                           "first_solve_ms": round(1e3 * first, 3), **result}
        if method.startswith("nlls_"):
            records[method]["auto_backend"] = auto
    # warm solves, interleaved: one call of each method per repetition (a slow spell of the
    # machine hits neighbours alike); a method is repeated as often as max_seconds allows
    solve_ms = {m: [] for m in runners}
    reset_ms = {m: [] for m in runners}
    allowed = {m: max(1, min(args.repeats, int(args.max_seconds / max(first_seconds[m], 1e-3))))
               for m in runners}
    for repetition in range(args.repeats):
        for method, runner in runners.items():
            if repetition >= allowed[method]:
                continue
            begin = time.perf_counter()
            runner.reset()
            middle = time.perf_counter()
            result = runner.solve()
            end = time.perf_counter()
            reset_ms[method].append(1e3 * (middle - begin))
            solve_ms[method].append(1e3 * (end - middle))
            records[method].update(result)  # the warm run's numbers (the same as the first's)
    for method in runners:
        records[method].update(median_ms=round(statistics.median(solve_ms[method]), 3),
                               reset_ms=round(statistics.median(reset_ms[method]), 4),
                               repeats=len(solve_ms[method]))
    _compare(records, solve_ms, reset_ms, problem)
    for method, runner in runners.items():
        record = records[method]
        if method.startswith("nlls_") and not record["converged"] and "reference" in record:
            record.update(_time_to_reference(runner, records[record["reference"]], args))
    for method in args.methods:
        emit(records[method])
        rows.append(records[method])


def _time_to_reference(runner: Runner, reference: Dict, args) -> Dict:
    """For an nlls run that did not converge (BAL, where the cost creeps down a valley of
    minimisers for ever): the iterations until the cost first reaches the reference's final cost
    (+0.1 %), and the time of a solve stopped there (median of a few), beside the reference's."""
    optimizer = runner.extra["optimizer"]
    runner.reset()
    history = optimizer.optimize(track_err_history=True).err_history[0]
    hit = torch.nonzero(history <= reference["final_cost"] * (1.0 + SAME_COST))
    if hit.numel() == 0:
        return {"iterations_to_reference_cost": None}
    iterations, kept = max(int(hit[0, 0]), 1), optimizer.max_iterations
    optimizer.max_iterations = iterations
    times = []
    try:
        for _ in range(max(1, min(args.repeats, 3))):
            runner.reset()
            begin = time.perf_counter()
            optimizer.optimize()
            times.append(1e3 * (time.perf_counter() - begin))
    finally:
        optimizer.max_iterations = kept
    ms = statistics.median(times)
    return {"iterations_to_reference_cost": iterations, "ms_to_reference_cost": round(ms, 3),
            "ratio_to_reference_at_its_cost": round(ms / reference["median_ms"], 3)}


def _paired_median(numerators: List[float], denominators: List[float]) -> Optional[float]:
    pairs = list(zip(numerators, denominators))
    return round(statistics.median(n / d for n, d in pairs), 3) if pairs else None


def _compare(records: Dict[str, Dict], solve_ms, reset_ms, problem: Problem) -> None:
    """Cost gaps to the reference (GTSAM's final cost, else the lowest converged one) and the
    ratios of nlls's times to GTSAM's and Theseus's."""
    done = {m: r for m, r in records.items() if "final_cost" in r}
    if not done:
        return
    if "gtsam" in done:
        reference, ref_name = done["gtsam"]["final_cost"], "gtsam"
    else:
        ref_name = min(done, key=lambda m: done[m]["final_cost"])
        reference = done[ref_name]["final_cost"]
    initial_reference = done.get("nlls_cholmod", next(iter(done.values())))["initial_cost"]
    for method, record in done.items():
        gap = (record["final_cost"] - reference) / abs(reference)
        # BAL's minimiser is not unique (more unknowns than residuals): any cost at or below
        # the reference's is as good; elsewhere the final costs must agree to 0.1 %
        same = gap <= SAME_COST if problem.is_bal else abs(gap) <= SAME_COST
        initial_gap = (record["initial_cost"] - initial_reference) / initial_reference
        record.update(reference=ref_name, final_cost_gap=float(f"{gap:.3g}"), same_cost=same,
                      initial_cost_gap=float(f"{initial_gap:.3g}"))
        if problem.readme:
            record["readme_gtsam_final_cost"] = problem.readme[1]
            record["readme_gap"] = float(
                f"{(record['final_cost'] - problem.readme[1]) / problem.readme[1]:.3g}")
    for method, record in done.items():
        if not method.startswith("nlls_"):
            continue
        for other in ("gtsam", "theseus"):
            if other in done:
                n = min(len(solve_ms[method]), len(solve_ms[other]))
                record[f"ratio_to_{other}"] = _paired_median(solve_ms[method][:n],
                                                             solve_ms[other][:n])
                with_reset = [s + r for s, r in zip(solve_ms[method], reset_ms[method])]
                other_total = [s + r for s, r in zip(solve_ms[other], reset_ms[other])]
                record[f"ratio_to_{other}_with_reset"] = _paired_median(with_reset[:n],
                                                                        other_total[:n])
                record[f"first_ratio_to_{other}"] = round(
                    record["first_solve_ms"] / done[other]["first_solve_ms"], 3)


# ---- where nlls spends its time --------------------------------------------------------------
# (object path from the optimizer, method, label); "per call" phases run once per optimize(),
# the others once per iteration. These reach into nlls's private attributes (the bench is a
# profiler, not a user); a phase whose object is missing is left out.
PHASES = (
    ("", "_start", "start: all (per call)"),
    ("_evaluator", "gather", "start: gather values into blocks (per call)"),
    ("_evaluator", "aux", "start: stack aux data (measurements, weights) (per call)"),
    ("_linearization", "linearize", "linearize: all"),
    ("_evaluator", "jacobians", "linearize: residuals and Jacobians"),
    ("linear_solver", "_factor_values", "factor: CSC build + numeric factorization"),
    ("linear_solver", "_solve_values", "solve: triangular solves"),
    ("_evaluator", "retract", "retract"),
    ("_evaluator", "error_metric", "error at the candidate"),
    ("", "_accept", "accept: gain ratio (A delta)"),
    ("", "_iterate", "one iteration, all of it"),
    ("", "_finish", "finish: scatter back, info (per call)"),
)


def _wrap_timers(optimizer, log: Dict[str, List[float]]) -> List:
    """Time the phases with wall-clock wrappers set on the instances (undone by the caller)."""
    wrapped = []
    for path, method, label in PHASES:
        owner = getattr(optimizer, path, None) if path else optimizer
        if owner is None or not hasattr(owner, method):
            continue
        original = getattr(owner, method)

        def timed(*a, _original=original, _label=label, **k):
            begin = time.perf_counter()
            out = _original(*a, **k)
            log.setdefault(_label, []).append(time.perf_counter() - begin)
            return out

        setattr(owner, method, timed)
        wrapped.append((owner, method))
    return wrapped


def profile_nlls(problem: Problem, backend: str, args) -> Dict:
    """Where one warm ``optimize()`` (after ``objective.update``) spends its time: wall-clock
    time per phase of the loop (ms per iteration, or per call), then cProfile's top functions
    (cProfile inflates Python-heavy code, so its numbers are larger than the wall clock's)."""
    runner = nlls_runner(problem, backend)
    runner.solve()
    optimizer = runner.extra["optimizer"]
    totals: Dict[str, List[float]] = {}
    resets, solves, iterations = [], [], 1
    for _ in range(3):
        begin = time.perf_counter()
        runner.reset()
        middle = time.perf_counter()
        log: Dict[str, List[float]] = {}
        wrapped = _wrap_timers(optimizer, log)
        try:
            result = runner.solve()
        finally:
            for owner, method in wrapped:
                delattr(owner, method)
        solves.append(time.perf_counter() - middle)
        resets.append(middle - begin)
        iterations = max(result["iterations"], 1)
        for _, _, label in PHASES:
            if label not in log:
                continue
            times = log[label]
            if label == "error at the candidate":
                times = times[1:]  # the first call is the start's
            totals.setdefault(label, []).append(sum(times))
    phases = {}
    for _, _, label in PHASES:
        if label in totals:
            per = 1 if "(per call)" in label else iterations
            phases[label] = round(1e3 * statistics.median(totals[label]) / per, 3)
    runner.reset()
    profiler = cProfile.Profile()
    profiler.enable()
    runner.solve()
    profiler.disable()
    stats = pstats.Stats(profiler)
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:args.profile_top]
    stream = io.StringIO()
    stats.stream = stream
    stats.sort_stats("tottime").print_stats(args.profile_top)
    print(f"== cProfile of nlls ({backend}) on {problem.name}, one warm optimize() ==\n"
          + stream.getvalue(), file=sys.stderr)
    return {"problem": problem.name, "method": f"nlls_{backend}", "measure": "profile",
            "threads": torch.get_num_threads(), "iterations": iterations,
            "reset_ms": round(1e3 * statistics.median(resets), 3),
            "median_ms": round(1e3 * statistics.median(solves), 3),
            "ms_by_phase": phases,
            "cprofile_top_tottime_ms_per_iteration": {
                f"{Path(path).name}:{line}({name})": round(1e3 * v[2] / iterations, 3)
                for (path, line, name), v in top}}


# ---- output ----------------------------------------------------------------------------------
def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def markdown_table(rows: List[Dict]) -> str:
    lines = ["| problem | method | build ms | first solve ms | warm solve ms | reset ms | iters | "
             "initial cost | final cost | gap to ref | converged | × GTSAM | × Theseus |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        if r.get("measure") == "profile":
            continue
        if "skipped" in r:
            lines.append(f"| {r['problem']} | {r['method']} | skipped: {r['skipped']} "
                         "|||||||||||")
            continue
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['build_ms']:.1f} | {r['first_solve_ms']:.1f} "
            f"| {r['median_ms']:.1f} | {r['reset_ms']:.1f} | {r['iterations']} "
            f"| {r['initial_cost']:.10g} | {r['final_cost']:.10g} "
            f"| {_fmt(r.get('final_cost_gap'), '.1e')} | {'yes' if r['converged'] else 'no'} "
            f"| {_fmt(r.get('ratio_to_gtsam'), '.2f')} "
            f"| {_fmt(r.get('ratio_to_theseus'), '.3f')} |")
    profiles = [r for r in rows if r.get("measure") == "profile"]
    for p in profiles:
        lines += ["", f"{p['method']} on {p['problem']}: warm solve {p['median_ms']:.1f} ms, "
                  f"{p['iterations']} iterations; objective.update {p['reset_ms']:.1f} ms; "
                  "wall clock, ms per iteration unless per call:", "", "| phase | ms |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in p["ms_by_phase"].items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000,3000",
                        help="poses of the synthetic 2-D graphs (comma-separated)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: sizes 100,300, 2 repetitions")
    parser.add_argument("--real", default=",".join(REAL_POSE_GRAPHS + BAL_FILES),
                        help="files of --data-dir to run (comma-separated; '' for none)")
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=7, help="warm solves per method")
    parser.add_argument("--max-seconds", type=float, default=10.0,
                        help="warm solves of a method stop after about this many seconds")
    parser.add_argument("--scipy-max-nfev", type=int, default=200)
    parser.add_argument("--device", default="cpu",
                        help="cpu only (GTSAM, SciPy and Theseus's CHOLMOD path are CPU code); "
                        "anything else prints one skipped line, so run_all.sh --device cuda "
                        "goes on")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steady on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-files", default=None,
                        help="write the synthetic g2o files here (default: a temporary folder)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile nlls's warm solve on the largest synthetic graph")
    parser.add_argument("--profile-top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = "100,300", 2
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.device != "cpu":
        emit({"device": args.device, "skipped": "CPU-only benchmark (GTSAM, SciPy and Theseus's "
              "CHOLMOD path run on the CPU); run it without --device"})
        return
    torch.set_num_threads(max(args.threads, 1))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    data_dir = Path(args.data_dir)
    rows: List[Dict] = []
    _preload(args.methods)  # imports are not part of any first solve
    auto = auto_backend()
    with tempfile.TemporaryDirectory(prefix="nlls-pose-graphs-") as tmp:
        folder = Path(args.keep_files or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        problems = []
        for n in sizes:
            path = folder / f"synthetic_se2_{n}.g2o"
            write_g2o(path, *synthetic_pose_graph(n, seed=args.seed)[1:])
            problems.append(Problem(f"synthetic_{n}", path, "synthetic"))
        for name in (n for n in args.real.split(",") if n):
            path = data_dir / name
            if not path.is_file():
                emit({"problem": name, "skipped": f"{path} not found"})
                continue
            problems.append(Problem(name, path, "real"))
        for problem in problems:
            print(f"== {problem.name} {problem.size}", file=sys.stderr, flush=True)
            bench_problem(problem, args, rows, auto)
        if args.profile and sizes:
            largest = next(p for p in problems if p.name == f"synthetic_{max(sizes)}")
            for backend in [m.split("_", 1)[1] for m in args.methods if m.startswith("nlls_")]:
                record = profile_nlls(largest, backend, args)
                emit(record)
                rows.append(record)
    print(markdown_table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
