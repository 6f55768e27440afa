"""SciPy, one problem at a time.

* Curve fits (:func:`scipy_curve_fit_run`, ``scipy_lm``): ``least_squares(method="lm")`` (MINPACK)
  with the analytic Jacobian, looping over the batch in Python.
* Pose graphs and BAL (:func:`scipy_pose_graph_runner`, ``scipy_trf``):
  ``least_squares(method="trf", tr_solver="lsmr")`` with finite differences on a
  ``jac_sparsity`` pattern. 2-D pose graphs: unknowns ``x, y, theta`` per pose (moved
  additively), residual ``S Log(Z^-1 X_i^-1 X_j)`` in NumPy (checked against ``nlls.SE2`` by
  tests/test_bench.py); BAL: the camera model of shared/data/README.md in NumPy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from problems_pose_graph import Runner, graph_arrays


def scipy_curve_fit_run(problem, start, x, y, iterations, stats):
    """MINPACK LM with the analytic Jacobian; tolerances at machine epsilon (the least MINPACK
    accepts) and max_nfev = iterations + 1, so it runs at most ``iterations`` iterations and
    stops earlier only once converged to machine precision. ``stats`` gets the mean ``nfev``
    and ``njev`` of the last call."""
    from scipy.optimize import least_squares

    eps = float(np.finfo(np.float64).eps)

    def run():
        xs, ys, p0 = (t.detach().cpu().double().numpy() for t in (x, y, start))
        out, nfev, njev = np.empty_like(p0), 0, 0
        for i in range(p0.shape[0]):
            xi, yi = xs[i], ys[i]
            sol = least_squares(
                lambda q, xi=xi, yi=yi: problem.residual(q, xi, yi, xp=np), p0[i],
                jac=lambda q, xi=xi: problem.jacobian(q, xi, xp=np), method="lm",
                ftol=eps, xtol=eps, gtol=eps, max_nfev=iterations + 1,
            )
            out[i], nfev, njev = sol.x, nfev + sol.nfev, njev + (sol.njev or 0)
        stats.update(scipy_mean_nfev=nfev / len(p0), scipy_mean_njev=njev / len(p0))
        return torch.as_tensor(out, dtype=start.dtype, device=start.device)
    return run


def scipy_pose_graph_runner(problem, max_nfev: int) -> Runner:
    """``least_squares(method="trf")`` with finite differences on a ``jac_sparsity`` pattern,
    no prior (LSMR copes with the gauge). Tolerances ``ftol = xtol = gtol = 1e-10`` (its
    ``ftol`` is the relative cost change). SE(3) graphs are not written."""
    import scipy.sparse
    from scipy.optimize import least_squares

    if problem.is_bal:
        residual, x0, pattern = _bal(problem.path)
    elif problem.dimension == 2:
        residual, x0, pattern = _se2(problem.path)
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


def _pattern(rows_per_block: int, columns: np.ndarray, size: int):
    """The sparsity of residual blocks of ``rows_per_block`` rows, block ``e`` depending on the
    unknowns ``columns[e]``."""
    import scipy.sparse

    blocks, width = columns.shape
    cols = np.repeat(columns[:, None, :], rows_per_block, axis=1).ravel()
    rows = np.repeat(np.arange(rows_per_block * blocks), width)
    return scipy.sparse.coo_matrix((np.ones(cols.size), (rows, cols)),
                                   shape=(rows_per_block * blocks, size))


def _se2(path: Path):
    """SciPy's residual of a 2-D pose graph, in NumPy as a SciPy user writes it: the SE(2)
    algebra of ``nlls.SE2``'s ``Z.local(X_i.between(X_j))`` written out. Computing it with
    ``nlls.SE2`` instead (torch, float64, no graph) costs 0.35 against 0.045 ms per call at 200
    poses and 0.95 against 0.33 ms at 3,000 (one thread), 1.8-2.5x SciPy's whole solve: the
    baseline would measure torch's dispatch. tests/test_bench.py checks it against nlls.SE2."""
    graph, rows, sqrt_information = graph_arrays(path)
    poses = graph.poses.numpy()
    x0 = np.stack([poses[:, 0], poses[:, 1], np.arctan2(poses[:, 3], poses[:, 2])], 1).ravel()
    i, j = rows[:, 0], rows[:, 1]
    z = graph.edges.measurements.numpy()  # x, y, cos, sin
    z_angle = np.arctan2(z[:, 3], z[:, 2])
    S = sqrt_information.numpy()

    def residual(x):
        x = x.reshape(-1, 3)
        xi, xj = x[i], x[j]
        c, s = np.cos(xi[:, 2]), np.sin(xi[:, 2])
        dx, dy = xj[:, 0] - xi[:, 0], xj[:, 1] - xi[:, 1]
        u0, u1 = c * dx + s * dy - z[:, 0], -s * dx + c * dy - z[:, 1]  # R_i^T (t_j - t_i) - t_z
        tx, ty = z[:, 2] * u0 + z[:, 3] * u1, -z[:, 3] * u0 + z[:, 2] * u1  # R_z^T (...)
        phi = np.remainder(xj[:, 2] - xi[:, 2] - z_angle + np.pi, 2.0 * np.pi) - np.pi
        half = 0.5 * phi
        small = np.abs(half) < 1e-8
        a = np.where(small, 1.0 - phi * phi / 12.0,
                     half * np.cos(half) / np.where(small, 1.0, np.sin(half)))
        v = np.stack([a * tx + half * ty, -half * tx + a * ty, phi], axis=1)  # V(phi)^-1 t, phi
        return np.einsum("eab,eb->ea", S, v).ravel()

    columns = np.concatenate([3 * i[:, None] + np.arange(3), 3 * j[:, None] + np.arange(3)], 1)
    return residual, x0, _pattern(3, columns, x0.size)


def _bal(path: Path):
    words = path.read_text().split()
    num_cameras, num_points, num_observations = (int(w) for w in words[:3])
    obs = np.array(words[3:3 + 4 * num_observations], dtype=np.float64).reshape(-1, 4)
    cam, pt, uv = obs[:, 0].astype(np.int64), obs[:, 1].astype(np.int64), obs[:, 2:]
    x0 = np.array(words[3 + 4 * num_observations:], dtype=np.float64)
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

    columns = np.concatenate([9 * cam[:, None] + np.arange(9), split + 3 * pt[:, None]
                              + np.arange(3)], 1)
    return residual, x0, _pattern(2, columns, x0.size)
