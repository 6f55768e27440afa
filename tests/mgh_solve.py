"""Solving the Moré–Garbow–Hillstrom problems (``tests/mgh.py``) with nlls and with SciPy.

Shared by ``tests/solve/test_mgh.py`` and ``bench/bench_mgh.py``: one :class:`Run` per problem
and method, holding per start the final cost, the iterations, how the run ended, the digits of
the minimum it reached and its stationarity (MINPACK's gradient measure, below).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

import nlls

from .mgh import Problem, objective_for

#: nlls optimizers by the names the tests and the bench use
OPTIMIZERS = {"gn": "GaussNewton", "lm": "LevenbergMarquardt", "dogleg": "Dogleg"}


@dataclass
class Run:
    """One method on every start of one problem (lists indexed like ``problem.starts``).

    ``status`` is nlls's :class:`nlls.Status` name (SciPy's runs: ``CONVERGED`` when it met a
    tolerance, ``MAX_ITERATIONS`` when it ran out of evaluations); ``iterations`` counts
    Jacobian evaluations for SciPy (one per outer iteration in MINPACK's ``lmder`` and in
    ``trf``); ``stationarity`` is :func:`stationarity` at the final point.
    """

    problem: Problem
    method: str
    cost: List[float]
    iterations: List[int]
    status: List[str]
    stationarity: List[float]
    x: torch.Tensor

    @property
    def reached(self) -> List[bool]:
        """Per start: the cost is within the problem's tolerance of one of its targets."""
        return [bool(self.problem.reached(torch.tensor([c], dtype=torch.float64),
                                          self.problem.targets(k))) for k, c in enumerate(self.cost)]

    @property
    def digits(self) -> List[float]:
        """Per start: digits of the nearest of its targets (``Problem.digits``), 0 to 16."""
        return [float(self.problem.digits(torch.tensor([c], dtype=torch.float64),
                                          self.problem.targets(k))) for k, c in enumerate(self.cost)]


def stationarity(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """(B,) ``max_j |J_j . r| / (||J_j|| ||r||)``: the cosine between the residual and the
    Jacobian's columns (MINPACK's ``gtol`` measure), 0 at a stationary point whatever the
    scale of ``x`` or ``r``; 0 where ``r`` or a column is 0."""
    r = problem.residual(x)
    J = problem.jacobian(x) if problem.jacobian is not None else torch.func.vmap(
        torch.func.jacrev(lambda v: problem.residual(v[None])[0]))(x)
    scale = J.norm(dim=1) * r.norm(dim=1, keepdim=True)
    cosine = torch.einsum("bmn,bm->bn", J, r).abs() / scale
    return torch.where(scale > 0, cosine, torch.zeros_like(cosine)).amax(1).nan_to_num(float("inf"))


def solve_nlls(problem: Problem, optimizer: str = "lm", max_iterations: int = 200,
               linear_solver: Optional[str] = None, device=None, **settings) -> Run:
    """All starts of ``problem`` as one batch, by ``OPTIMIZERS[optimizer]`` with its defaults
    (``max_iterations``, ``linear_solver`` and the keyword ``settings`` aside), float64."""
    cls = getattr(nlls, OPTIMIZERS[optimizer])
    objective = objective_for(problem, problem.x0(device=device))
    kwargs = dict(settings) if linear_solver is None else {**settings, "linear_solver": linear_solver}
    info = cls(objective, max_iterations=max_iterations, **kwargs).optimize()
    x = objective.optim_vars["x"].tensor.detach()
    cost = problem.cost(x)
    name = optimizer if linear_solver is None else f"{optimizer}_{linear_solver}"
    return Run(problem, name, cost.tolist(), info.iterations.tolist(),
               [nlls.Status(int(s)).name for s in info.status.tolist()],
               stationarity(problem, x).tolist(), x.cpu())


def solve_scipy(problem: Problem, method: str = "lm", max_nfev: int = 20000,
                tolerance: Optional[float] = 1e-15) -> Run:
    """Each start by ``scipy.optimize.least_squares(method=method)`` with the analytic Jacobian and
    ``xtol = ftol = gtol = tolerance``: by default at their floor, 1e-15 (as far as SciPy can go);
    ``None`` keeps SciPy's defaults (1e-8)."""
    tolerances = {} if tolerance is None else {"xtol": tolerance, "ftol": tolerance, "gtol": tolerance}
    from scipy.optimize import least_squares

    def as_numpy(function):
        return lambda v: function(torch.tensor(v)[None])[0].numpy()

    fun = as_numpy(problem.residual)
    jac = as_numpy(problem.jacobian) if problem.jacobian is not None else "2-point"
    rows: List[Tuple[np.ndarray, int, str]] = []
    for start in problem.starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way out of a valley
            result = least_squares(fun, np.array(start), jac=jac, method=method, max_nfev=max_nfev,
                                   **tolerances)
        status = "CONVERGED" if result.status > 0 else ("MAX_ITERATIONS" if result.status == 0 else "FAILED")
        rows.append((result.x, int(result.njev or result.nfev), status))
    x = torch.from_numpy(np.stack([row[0] for row in rows]))
    return Run(problem, f"scipy_{method}", problem.cost(x).tolist(), [row[1] for row in rows],
               [row[2] for row in rows], stationarity(problem, x).tolist(), x)
