"""The Moré–Garbow–Hillstrom test problems for nonlinear least squares, as nlls objectives.

J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization software",
ACM TOMS 7(1), 1981, 17-41 (the set behind MINPACK's tests). Each :class:`Problem` holds the
residual ``r(x)`` (``x (B, n) -> r (B, m)``, in ``tests/mgh_functions*.py``), its Jacobian, the
paper's starting point ``x0`` (and ``10 x0``, ``100 x0`` where MINPACK-1's tests use them), and
the minimum cost.

Costs here are nlls's ``f = 0.5 * sum r^2``; the paper publishes ``sum r^2`` to six digits, so
``f_published`` is half the paper's number and ``f_star`` the same minimum to full precision
(the lower of SciPy's ``lm`` and ``trf`` at tolerances 1e-15, which agree to 1e-9 relative or
better; ``tests/solve/test_mgh.py`` checks it against ``f_published``). The other minima a start
may reach (the paper's local ones and ones at infinity; for Osborne 2 and Chebyquad from scaled
starts, stationary points SciPy reaches, said in ``notes``) are in ``minima``.

Use ``objective_for(problem, x0_batch)``: one ``nlls.Vector(n)`` named ``"x"`` and one cost
function, batched over the rows of ``x0_batch``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch

import nlls

from . import mgh_functions as f1
from . import mgh_functions_n as fn

F64 = torch.float64
Residual = Callable[[torch.Tensor], torch.Tensor]
#: the cost that counts as reaching a minimum of 0 (residual norm ~1.4e-6)
ZERO_COST = 1e-12


@dataclass(frozen=True)
class Problem:
    """One test problem: ``residual(x) (B, m)`` and ``jacobian(x) (B, m, n)`` of ``x (B, n)``.

    ``starts`` are the starting points, the paper's ``x0`` first; ``f_star`` the minimum cost
    (``0.5 sum r^2``) the paper lists for ``x0`` (``local`` when it is a local minimum, the global
    one being lower, which ``x0`` may reach instead); ``minima`` every cost the paper lists as a
    minimum (``f_star`` included), any of which a scaled start may reach; ``tolerance`` the
    relative error on the cost that counts as reaching a minimum (``ZERO_COST``, absolute, for a
    minimum of 0).
    """

    name: str
    number: int
    n: int
    m: int
    residual: Residual
    jacobian: Optional[Residual]
    starts: Tuple[Tuple[float, ...], ...]
    f_star: float
    f_published: float
    x_star: Optional[Tuple[float, ...]] = None
    tolerance: float = 1e-8
    notes: str = ""
    local: bool = False
    minima: Tuple[float, ...] = field(default=())

    @property
    def start_labels(self) -> Tuple[str, ...]:
        """``"x0"``, ``"10x0"``, ...: each start's factor on the paper's ``x0``."""
        labels = []
        for start in self.starts:
            ratio = next((s / b for s, b in zip(start, self.starts[0]) if b != 0), 1.0)
            labels.append("x0" if round(ratio) == 1 else f"{round(ratio)}x0")
        return tuple(labels)

    def x0(self, dtype=F64, device=None) -> torch.Tensor:
        """The starts as one batch ``(len(starts), n)``."""
        return torch.tensor(self.starts, dtype=dtype, device=device)

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        """``0.5 * sum r^2`` per row of ``x (B, n)``."""
        return 0.5 * (self.residual(x) ** 2).sum(1)

    def targets(self, start: int) -> Tuple[float, ...]:
        """The minima start ``start`` may count as reaching: ``f_star`` for ``x0`` (or a lower
        minimum when ``f_star`` is ``local``); for a scaled start, any of ``minima`` (the paper
        gives no minimum for those starts)."""
        if not self.minima or (start == 0 and not self.local):
            return (self.f_star,)
        return tuple(f for f in self.minima if start > 0 or f <= self.f_star)

    def reached(self, cost: torch.Tensor, targets: Optional[Tuple[float, ...]] = None) -> torch.Tensor:
        """(B,) bool: the cost is within ``tolerance`` (relative) of ``f_star``, or of any of
        ``targets``; within ``ZERO_COST`` (absolute) of a target that is 0."""
        hit = torch.zeros_like(cost, dtype=torch.bool)
        for target in targets or (self.f_star,):
            bound = self.tolerance * target if target > 0 else ZERO_COST
            hit = hit | ((cost - target).abs() <= bound)
        return hit

    def digits(self, cost: torch.Tensor, targets: Optional[Tuple[float, ...]] = None) -> torch.Tensor:
        """(B,) digits reached: ``-log10`` of the relative cost error (absolute where the target
        is 0), 0 to 16, the best over ``targets`` (default ``f_star``)."""
        best = torch.zeros_like(cost)
        for target in targets or (self.f_star,):
            error = (cost - target).abs() / (target if target > 0 else 1.0)
            digits = (-torch.log10(error.clamp_min(1e-16))).clamp(0.0, 16.0).nan_to_num(0.0)
            best = torch.maximum(best, digits)
        return best


class MGHCost(nlls.CostFunction):
    """``r(x)`` of a :class:`Problem` with its analytic Jacobian."""

    def __init__(self, problem: Problem, x: nlls.Vector):
        super().__init__(optim_vars=(x,), name=problem.name)
        self.problem, self.x = problem, x

    def dim(self) -> int:
        return self.problem.m

    def error(self) -> torch.Tensor:
        return self.problem.residual(self.x.tensor)

    def jacobians(self):
        assert self.problem.jacobian is not None
        return [self.problem.jacobian(self.x.tensor)], self.error()


def objective_for(problem: Problem, x0_batch: torch.Tensor, autodiff: bool = False) -> nlls.Objective:
    """An ``nlls.Objective`` for ``problem`` from the starts ``x0_batch (B, n)``.

    The variable is ``nlls.Vector`` ``"x"``; the cost function is :class:`MGHCost` (analytic
    Jacobian) or, when the problem has none or ``autodiff`` is set, an ``AutoDiffCostFunction``.
    """
    if x0_batch.ndim != 2 or x0_batch.shape[1] != problem.n:
        raise ValueError(f"objective_for({problem.name!r}): x0_batch must be (B, {problem.n}), "
                         f"got {tuple(x0_batch.shape)}")
    x = nlls.Vector(tensor=x0_batch.clone(), name="x")
    objective = nlls.Objective()
    if problem.jacobian is None or autodiff:
        residual = problem.residual
        objective.add(nlls.AutoDiffCostFunction((x,), lambda optim, aux: residual(optim[0].tensor),
                                                problem.m, name=problem.name))
    else:
        objective.add(MGHCost(problem, x))
    return objective


def _scaled(x0, *factors):
    return tuple(tuple(float(k * v) for v in x0) for k in (1,) + factors)


def _with_m(function, m):
    return functools.partial(function, m=m)


def _problems():
    P = Problem
    n10 = tuple(1 - j / 10 for j in range(1, 11))
    grid10 = tuple((j / 11) * (j / 11 - 1) for j in range(1, 11))
    return [
        P("rosenbrock", 1, 2, 2, f1.rosenbrock, f1.rosenbrock_jacobian, _scaled((-1.2, 1.0), 10, 100),
          0.0, 0.0, (1.0, 1.0)),
        P("freudenstein_roth", 2, 2, 2, f1.freudenstein_roth, f1.freudenstein_roth_jacobian,
          _scaled((0.5, -2.0), 10, 100), 24.49212683962001, 24.4921, (11.412779161657197, -0.8968052462765405),
          local=True, minima=(24.49212683962001, 0.0),
          notes="x0 reaches the local minimum f = 48.9842 (paper); the global minimum 0 is at (5, 4)"),
        P("powell_badly_scaled", 3, 2, 2, f1.powell_badly_scaled, f1.powell_badly_scaled_jacobian,
          _scaled((0.0, 1.0)), 0.0, 0.0, (1.0981593296996778e-05, 9.106146739867683)),
        P("brown_badly_scaled", 4, 2, 3, f1.brown_badly_scaled, f1.brown_badly_scaled_jacobian,
          _scaled((1.0, 1.0)), 0.0, 0.0, (1e6, 2e-6)),
        P("beale", 5, 2, 3, f1.beale, f1.beale_jacobian, _scaled((1.0, 1.0)), 0.0, 0.0, (3.0, 0.5)),
        P("jennrich_sampson", 6, 2, 10, f1.jennrich_sampson, f1.jennrich_sampson_jacobian,
          _scaled((0.3, 0.4)), 62.1810911778074, 62.181, (0.25782521587250523, 0.25782521146822296)),
        P("helical_valley", 7, 3, 3, f1.helical_valley, f1.helical_valley_jacobian,
          _scaled((-1.0, 0.0, 0.0), 10, 100), 0.0, 0.0, (1.0, 0.0, 0.0)),
        P("bard", 8, 3, 15, f1.bard, f1.bard_jacobian, _scaled((1.0, 1.0, 1.0), 10, 100),
          4.107438653289482e-3, 4.107435e-3, (0.08241055975246431, 1.1330360921191043, 2.343695178556611),
          minima=(4.107438653289482e-3, 8.714346666666671),
          notes="a second minimum 17.4286 (paper) at (0.8406, -inf, -inf)"),
        P("gaussian", 9, 3, 15, f1.gaussian, f1.gaussian_jacobian, _scaled((0.4, 1.0, 0.0)),
          5.639663848092724e-09, 5.639650e-9, (0.39895613783958916, 1.0000190844960792, 0.0)),
        P("meyer", 10, 3, 16, f1.meyer, f1.meyer_jacobian, _scaled((0.02, 4000.0, 250.0), 10),
          43.97292758526849, 43.9729, (0.005609636476222497, 6181.346345514311, 345.2236345981449)),
        P("gulf", 11, 3, 99, f1.gulf, f1.gulf_jacobian, _scaled((5.0, 2.5, 0.15)), 0.0, 0.0,
          (50.0, 25.0, 1.5), notes="m = 99"),
        P("box3d", 12, 3, 10, f1.box3d, f1.box3d_jacobian, _scaled((0.0, 10.0, 20.0)), 0.0, 0.0,
          (1.0, 10.0, 1.0), notes="m = 10; also 0 at (10, 1, -1) and wherever x1 = x2, x3 = 0"),
        P("powell_singular", 13, 4, 4, f1.powell_singular, f1.powell_singular_jacobian,
          _scaled((3.0, -1.0, 0.0, 1.0), 10, 100), 0.0, 0.0, (0.0, 0.0, 0.0, 0.0),
          notes="singular Jacobian at the solution: linear convergence"),
        P("wood", 14, 4, 6, f1.wood, f1.wood_jacobian, _scaled((-3.0, -1.0, -3.0, -1.0)), 0.0, 0.0,
          (1.0, 1.0, 1.0, 1.0)),
        P("kowalik_osborne", 15, 4, 11, f1.kowalik_osborne, f1.kowalik_osborne_jacobian,
          _scaled((0.25, 0.39, 0.415, 0.39), 10, 100), 1.5375280192461826e-4, 1.537525e-4,
          (0.19280693478210909, 0.19128232417322785, 0.12305650606738754, 0.13606232857194658),
          minima=(1.5375280192461826e-4, 5.136715243477299e-4),
          notes="a second minimum 1.02734e-3 (paper) at (+inf, -14.07, -inf, -inf)"),
        P("brown_dennis", 16, 4, 20, f1.brown_dennis, f1.brown_dennis_jacobian,
          _scaled((25.0, 5.0, -5.0, -1.0), 10, 100), 42911.100813178185, 42911.1,
          (-11.594439846973057, 13.203630027729385, -0.40343932319492193, 0.23677881713908494), notes="m = 20"),
        P("osborne1", 17, 5, 33, f1.osborne1, f1.osborne1_jacobian,
          _scaled((0.5, 1.5, -1.0, 0.01, 0.02)), 2.7324473487412145e-05, 2.732445e-5,
          (0.3754100520667026, 1.9358469080189789, -1.4646871318895565, 0.012867534630539483,
           0.02212269968066208)),
        P("biggs_exp6", 18, 6, 13, f1.biggs_exp6, f1.biggs_exp6_jacobian,
          _scaled((1.0, 2.0, 1.0, 1.0, 1.0, 1.0)), 0.0, 0.0, (1.0, 10.0, 1.0, 5.0, 4.0, 3.0),
          minima=(0.0, 2.827825e-3), notes="m = 13; a local minimum 5.65565e-3 (paper)"),
        P("osborne2", 19, 11, 65, f1.osborne2, f1.osborne2_jacobian,
          _scaled((1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 10, 100),
          2.0068868146773874e-2, 2.006885e-2, minima=(2.0068868146773874e-2, 0.8949067934405467),
          notes="10 x0 and 100 x0 reach 0.894907 (SciPy's lm and trf alike), a local minimum the paper omits"),
        P("watson6", 20, 6, 31, f1.watson, f1.watson_jacobian, _scaled((0.0,) * 6), 1.1438350267761826e-3,
          1.143835e-3, notes="x0 = 0, so no scaled starts"),
        P("watson9", 20, 9, 31, f1.watson, f1.watson_jacobian, _scaled((0.0,) * 9), 6.998800690449657e-07,
          6.9988e-7),
        P("watson12", 20, 12, 31, f1.watson, f1.watson_jacobian, _scaled((0.0,) * 12), 2.361190550725824e-10,
          2.36119e-10),
        P("extended_rosenbrock", 21, 10, 10, f1.rosenbrock, f1.rosenbrock_jacobian,
          _scaled((-1.2, 1.0) * 5), 0.0, 0.0, (1.0,) * 10, notes="n = 10"),
        P("extended_powell_singular", 22, 12, 12, f1.powell_singular, f1.powell_singular_jacobian,
          _scaled((3.0, -1.0, 0.0, 1.0) * 3), 0.0, 0.0, (0.0,) * 12, notes="n = 12"),
        P("penalty1_4", 23, 4, 5, fn.penalty1, fn.penalty1_jacobian, _scaled((1.0, 2.0, 3.0, 4.0)),
          1.1249887504499684e-05, 1.124985e-5),
        P("penalty1_10", 23, 10, 11, fn.penalty1, fn.penalty1_jacobian,
          _scaled(tuple(float(j) for j in range(1, 11))), 3.543825733545185e-05, 3.543825e-5),
        P("penalty2_4", 24, 4, 8, fn.penalty2, fn.penalty2_jacobian, _scaled((0.5,) * 4),
          4.688146503677722e-06, 4.688145e-6),
        P("penalty2_10", 24, 10, 20, fn.penalty2, fn.penalty2_jacobian, _scaled((0.5,) * 10),
          1.46830268728373e-4, 1.46830e-4),
        P("variably_dimensioned", 25, 10, 12, fn.variably_dimensioned, fn.variably_dimensioned_jacobian,
          _scaled(n10), 0.0, 0.0, (1.0,) * 10, notes="n = 10"),
        P("trigonometric", 26, 10, 10, fn.trigonometric, fn.trigonometric_jacobian,
          _scaled((0.1,) * 10), 1.397528060939361e-05, 1.39753e-5, local=True,
          minima=(1.397528060939361e-05, 0.0),
          notes="n = 10; x0 reaches the local minimum 2.79506e-5 (paper); the global minimum is 0"),
        P("brown_almost_linear", 27, 10, 10, fn.brown_almost_linear, fn.brown_almost_linear_jacobian,
          _scaled((0.5,) * 10, 10, 100), 0.0, 0.0, minima=(0.0, 0.5),
          notes="n = 10; also 1 (paper) at (0, ..., 0, n + 1)"),
        P("boundary_value", 28, 10, 10, fn.boundary_value, fn.boundary_value_jacobian, _scaled(grid10),
          0.0, 0.0, notes="n = 10"),
        P("integral_equation", 29, 10, 10, fn.integral_equation, fn.integral_equation_jacobian,
          _scaled(grid10), 0.0, 0.0, notes="n = 10"),
        P("broyden_tridiagonal", 30, 10, 10, fn.broyden_tridiagonal, fn.broyden_tridiagonal_jacobian,
          _scaled((-1.0,) * 10), 0.0, 0.0, notes="n = 10"),
        P("broyden_banded", 31, 10, 10, fn.broyden_banded, fn.broyden_banded_jacobian,
          _scaled((-1.0,) * 10), 0.0, 0.0, notes="n = 10"),
        P("linear_full_rank", 32, 5, 10, _with_m(fn.linear_full_rank, 10),
          _with_m(fn.linear_full_rank_jacobian, 10), _scaled((1.0,) * 5), 2.5, 2.5, (-1.0,) * 5,
          notes="n = 5, m = 10: f = (m - n) / 2"),
        P("linear_rank1", 33, 5, 10, _with_m(fn.linear_rank1, 10), _with_m(fn.linear_rank1_jacobian, 10),
          _scaled((1.0,) * 5), 90 / 84, 90 / 84, notes="n = 5, m = 10: f = m (m - 1) / (4 (2m + 1))"),
        P("linear_rank1_zero", 34, 5, 10, _with_m(fn.linear_rank1_zero, 10),
          _with_m(fn.linear_rank1_zero_jacobian, 10), _scaled((1.0,) * 5), 124 / 68, 124 / 68,
          notes="n = 5, m = 10: f = (m^2 + 3m - 6) / (4 (2m - 3))"),
        P("chebyquad8", 35, 8, 8, _with_m(fn.chebyquad, 8), _with_m(fn.chebyquad_jacobian, 8),
          _scaled(tuple(j / 9 for j in range(1, 9)), 10), 1.7584368628389602e-3, 1.758435e-3),
        P("chebyquad10", 35, 10, 10, _with_m(fn.chebyquad, 10), _with_m(fn.chebyquad_jacobian, 10),
          _scaled(tuple(j / 11 for j in range(1, 11)), 10), 3.251977400441152e-3, 3.251975e-3,
          minima=(3.251977400441152e-3, 2.386356848187677e-3, 4.7503144251108e-3),
          notes="from 10 x0 SciPy's trf reaches 2.38636e-3 or 4.75031e-3 (stationary to 1e-8; "
                "which one depends on the last bit of x0), minima the paper omits"),
    ]


PROBLEMS = _problems()
BY_NAME = {problem.name: problem for problem in PROBLEMS}
