"""nlls on the benchmark problems, through its public API only.

* Batched small problems (``problems_curve.py``): :class:`AnalyticFit` and :class:`RotationFit`
  (analytic ``nlls.CostFunction`` subclasses with the hand-written loops' residual and Jacobian
  functions), an ``AutoDiffCostFunction`` of the same residual, :func:`build_nlls` (objective and
  optimizer, built once) and :func:`nlls_run` (a call that sets the start and solves, eagerly,
  ``compile=True`` or ``cuda_graph=True``), with :func:`warm_compiled` / :func:`warm_captured`
  (the warm-up calls that compile or capture, and what that cost).
* Sparse problems from files (``problems_pose_graph.py``): :func:`nlls_pose_graph_runner`, LM with
  ``SparseCholesky`` on one backend, and :func:`auto_backend`.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Callable, Dict, Optional

import harness
import torch
from problems_curve import ROTATION
from problems_pose_graph import MAX_ITERATIONS, REL_TOLERANCE, Runner

import nlls


class AnalyticFit(nlls.CostFunction):
    """r = f(p, x) - y with the problem's hand-written Jacobian."""

    def __init__(self, problem, p, x, y, name=None):
        super().__init__(optim_vars=(p,), aux_vars=(x, y), name=name)
        self.problem, self.p, self.x, self.y = problem, p, x, y

    def dim(self):
        return self.x.shape[1]

    def error(self):
        return self.problem.residual(self.p.tensor, self.x.tensor, self.y.tensor)

    def jacobians(self):
        return [self.problem.jacobian(self.p.tensor, self.x.tensor)], self.error()


class RotationFit(nlls.CostFunction):
    """All ``N`` pairs of one problem as one cost function of dimension ``3N``, with the same
    residual and Jacobian functions as the hand-written loop."""

    def __init__(self, rotation, p, q, name=None):
        super().__init__(optim_vars=(rotation,), aux_vars=(p, q), name=name)
        self.rotation, self.p, self.q = rotation, p, q

    def dim(self):
        return 3 * self.p.shape[1]

    def error(self):
        return ROTATION.residual(self.rotation.tensor, self.p.tensor, self.q.tensor)

    def jacobians(self):
        return [ROTATION.jacobian(self.rotation.tensor, self.p.tensor)], self.error()


def _autodiff_error(problem):
    def err_fn(optim_vars, aux_vars):
        (p,), (x, y) = optim_vars, aux_vars
        return problem.residual(p.tensor, x.tensor, y.tensor)
    return err_fn


def fixed_count(iterations: int) -> dict:
    """Tolerances 0 (exactly 0 switches the relative tests off) and one "all done?" check at the
    end: exactly ``iterations`` iterations for every element."""
    return dict(max_iterations=iterations, abs_err_tolerance=0.0, rel_err_tolerance=0.0,
                check_every=max(iterations, 1))


def build_nlls(problem, start, a, b, autodiff: bool = False, iterations: Optional[int] = None,
               fixed: bool = True, optimizer: Optional[str] = None, **optimizer_options):
    """``(objective, optimizer, name of the unknown)``: ``a, b`` are ``x, y`` (curve fits) or
    ``p, q`` (rotation). ``fixed``: :func:`fixed_count` options (else the optimizer's
    defaults), which ``optimizer_options`` override. ``optimizer``: ``gauss_newton`` or
    ``levenberg_marquardt`` (default the problem's)."""
    objective = nlls.Objective()
    xv, yv = nlls.Variable(a, name="x"), nlls.Variable(b, name="y")
    if problem is ROTATION:
        unknown, name = nlls.SO3(start.clone(), name="R"), "R"
        objective.add(RotationFit(unknown, xv, yv, name="fit"))
    else:
        unknown, name = nlls.Vector(tensor=start.clone(), name="p"), "p"
        if autodiff:
            objective.add(nlls.AutoDiffCostFunction((unknown,), _autodiff_error(problem), a.shape[1],
                                                    aux_vars=(xv, yv), name="fit"))
        else:
            objective.add(AnalyticFit(problem, unknown, xv, yv, name="fit"))
    iterations = problem.iterations if iterations is None else iterations
    options = {**(fixed_count(iterations) if fixed else {}), **optimizer_options}
    if (optimizer or problem.optimizer) == "gauss_newton":
        solver = nlls.GaussNewton(objective, **options)
    else:
        solver = nlls.LevenbergMarquardt(objective, damping=1e-3, **options)
    return objective, solver, name


def nlls_run(problem, start, a, b, autodiff: bool = False, iterations: Optional[int] = None,
             **optimize_kwargs) -> Callable[[], torch.Tensor]:
    """The objective and optimizer built once; a call sets the start
    (``objective.update``) and solves (``optimize(**optimize_kwargs)``)."""
    objective, optimizer, name = build_nlls(problem, start, a, b, autodiff, iterations)
    unknown = objective.optim_vars[name]

    def run():
        objective.update({name: start})
        optimizer.optimize(**optimize_kwargs)
        return unknown.tensor
    return run


def compile_supported(function=nlls.Optimizer.optimize, argument: str = "compile") -> Optional[str]:
    """None if ``function`` (``optimize()``, ``OptimizationLayer.forward``) takes ``argument``
    (``compile``, ``cuda_graph``); else why not."""
    if argument in inspect.signature(function).parameters:
        return None
    return f"this nlls: {function.__qualname__}() has no `{argument}` argument yet"


def _counters() -> Dict[str, int]:
    try:
        from torch._dynamo.utils import counters
        return {"graphs": int(counters["stats"]["unique_graphs"]),
                **{k: int(v) for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}}
    except Exception:
        return {}


def warm_compiled(run: Callable, warmup: int) -> Dict:
    """The warm-up calls of a compiled solve, which compile it: ``compile_s`` is their time
    beyond that of as many warm calls (the first call compiles; nlls's one-off Jacobian check
    makes the second recompile), ``first_call_s`` the first one's.

    ``torch._dynamo.reset()`` first: every compiled chunk of nlls shares one code object, and
    dynamo stops compiling a code object (silently running it eagerly) after
    ``torch._dynamo.config.recompile_limit`` (8) variants, which the measurements of one run
    would exceed.
    """
    torch._dynamo.reset()
    before = _counters()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        times = [ms / 1e3 for ms in harness.warm_up(harness.Timed(run), 1 + max(warmup, 2))]
    fallbacks = [str(w.message) for w in caught if "could not compile" in str(w.message)]
    after = _counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    stats = {"compile_s": round(sum(times) - len(times) * min(times), 2),
             "first_call_s": round(times[0], 2), "compiled_graphs": delta.get("graphs", 0)}
    if delta.get("fxgraph_cache_hit") or delta.get("fxgraph_cache_miss"):
        stats["inductor_cache_hits"] = delta.get("fxgraph_cache_hit", 0)
        stats["inductor_cache_misses"] = delta.get("fxgraph_cache_miss", 0)
    if fallbacks:
        stats["compile_fallback"] = fallbacks[0][:300]
    elif not delta.get("graphs"):
        stats["compile_fallback"] = "torch.compile produced no graph: the iterations ran eagerly"
    return stats


def warm_captured(run: Callable, warmup: int, sync: Optional[Callable[[], None]]) -> Dict:
    """The warm-up calls of a ``cuda_graph=True`` solve: the first one captures the graph (after
    one eager run of the solve) and replays it. ``capture_s``: its time beyond a warm call."""
    times = [ms / 1e3 for ms in harness.warm_up(harness.Timed(run, sync), 1 + max(warmup, 1))]
    return {"capture_s": round(times[0] - min(times[1:]), 3), "first_call_s": round(times[0], 3)}


# ---- sparse problems from files --------------------------------------------------------------
def pose_graph_optimizer(objective, backend: str, **options):
    """LM with ``SparseCholesky(backend)``, to convergence, defaults otherwise."""
    kwargs = dict(max_iterations=MAX_ITERATIONS, abs_err_tolerance=0.0, rel_err_tolerance=REL_TOLERANCE)
    kwargs.update(options)
    return nlls.LevenbergMarquardt(objective, linear_solver=nlls.SparseCholesky(backend=backend),
                                   **kwargs)


def nlls_pose_graph_runner(problem, backend: str) -> Runner:
    """``nlls.io.read(path).objective()`` solved by :func:`pose_graph_optimizer`."""
    objective = nlls.io.read(problem.path).objective(dtype=torch.float64)
    optimizer = pose_graph_optimizer(objective, backend)
    start = {name: var.tensor.clone() for name, var in objective.optim_vars.items()}

    def solve():
        info = optimizer.optimize()
        return {"iterations": int(info.iterations[0]), "converged": bool(info.converged[0]),
                "initial_cost": float(info.initial_error[0]),
                "final_cost": float(info.final_error[0]),
                "linear_solver": repr(optimizer.linear_solver)}

    return Runner(solve, lambda: objective.update(start),
                  {"optimizer": optimizer, "objective": objective, "start": start})


def auto_backend() -> str:
    """The backend ``SparseCholesky(backend="auto")`` picks on the CPU, seen after one solve."""
    graph = nlls.io.bundled_dataset()
    optimizer = nlls.LevenbergMarquardt(nlls.io.read(graph).objective(),
                                        linear_solver="sparse_cholesky", max_iterations=1)
    optimizer.optimize()
    return str(optimizer.linear_solver.backend_used)
