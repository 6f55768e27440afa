"""Theseus 0.2.3, optional: where ``import theseus`` fails, :func:`theseus_missing` says why and
each Theseus method prints a skipped line.

* Curve fits and the layer bench (:func:`theseus_layer`): a ``th.CostFunction`` subclass with
  the problem's analytic Jacobian, or ``th.AutoDiffCostFunction``, through ``th.TheseusLayer``.
* Pose graphs (:func:`theseus_pose_graph_runner`): one ``th.Between`` per edge,
  ``th.LevenbergMarquardt`` with ``th.CholmodSparseSolver``.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from problems_pose_graph import MAX_ITERATIONS, REL_TOLERANCE, Runner, graph_arrays

BAL_REASON = ("Theseus 0.2.3's Reprojection cost keeps focal length and distortion fixed (aux "
              "variables) where BAL optimizes them: a different problem")


def import_theseus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import theseus
    return theseus


def theseus_missing() -> Optional[str]:
    """None when Theseus imports; else why not."""
    try:
        import_theseus()
    except Exception as exc:  # any import failure (missing, broken build) skips it
        return f"theseus not importable: {type(exc).__name__}: {exc}"
    return None


# ---- batched curve fits ------------------------------------------------------------------------
def theseus_layer(problem, start, x, y, iterations, autodiff=False, optimizer=None):
    """``(th.TheseusLayer, optimizer_kwargs)`` of a curve fit, fixed count (tolerances 0: Theseus
    stops only on a strict ``<``). ``optimizer``: ``gauss_newton`` or ``levenberg_marquardt``
    (default the problem's; LM with ``damping=1e-3, adaptive_damping=True``)."""
    th = import_theseus()

    class TheseusFit(th.CostFunction):
        def __init__(self, p, xv, yv, cost_weight, name=None):
            super().__init__(cost_weight, name=name)
            self.p, self.xv, self.yv = p, xv, yv
            self.register_optim_vars(["p"])
            self.register_aux_vars(["xv", "yv"])

        def error(self):
            return problem.residual(self.p.tensor, self.xv.tensor, self.yv.tensor)

        def jacobians(self):
            return [problem.jacobian(self.p.tensor, self.xv.tensor)], self.error()

        def dim(self):
            return self.xv.tensor.shape[1]

        def _copy_impl(self, new_name=None):
            return TheseusFit(self.p.copy(), self.xv.copy(), self.yv.copy(), self.weight.copy(),
                              name=new_name)

    p = th.Vector(tensor=start.clone(), name="p")
    xv, yv = th.Variable(x.detach().clone(), name="x"), th.Variable(y.detach().clone(), name="y")
    weight = th.ScaleCostWeight(torch.ones(1, 1, dtype=x.dtype, device=x.device))
    if autodiff:
        def err_fn(optim_vars, aux_vars):
            return problem.residual(optim_vars[0].tensor, aux_vars[0].tensor, aux_vars[1].tensor)
        cost = th.AutoDiffCostFunction([p], err_fn, x.shape[1], cost_weight=weight,
                                       aux_vars=[xv, yv], name="fit")
    else:
        cost = TheseusFit(p, xv, yv, weight, name="fit")
    objective = th.Objective(dtype=x.dtype)
    objective.add(cost)
    kwargs = dict(max_iterations=iterations, abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    if (optimizer or problem.optimizer) == "gauss_newton":
        solver, options = th.GaussNewton(objective, **kwargs), {}
    else:
        solver = th.LevenbergMarquardt(objective, **kwargs)
        options = {"damping": 1e-3, "adaptive_damping": True}
    return th.TheseusLayer(solver).to(x.device), options


def theseus_curve_fit_run(problem, start, x, y, iterations, autodiff):
    """``theseus_analytic`` / ``theseus_autodiff``: one call is ``layer.forward`` (no graph)."""
    layer, options = theseus_layer(problem, start, x, y, iterations, autodiff)

    def run():
        with torch.no_grad():
            solution, _ = layer.forward({"p": start, "x": x, "y": y}, optimizer_kwargs=options)
        return solution["p"]
    return run


# ---- pose graphs ---------------------------------------------------------------------------------
def theseus_pose_graph_runner(problem) -> Runner:
    """Theseus 0.2.3: one ``th.Between`` per edge on ``th.SE2``/``th.SE3`` (both store the data
    as nlls does, tangent translation first), a diagonal or full square-root-information weight,
    ``th.LevenbergMarquardt`` vectorized with ``th.CholmodSparseSolver``. Its CHOLMOD solver does
    not support adaptive damping, so LM runs with Theseus's default fixed damping 1e-3."""
    th = import_theseus()
    if problem.is_bal:
        raise NotImplementedError(BAL_REASON)
    graph, rows, sqrt_information = graph_arrays(problem.path)
    group = th.SE3 if problem.dimension == 3 else th.SE2
    poses = graph.poses.to(torch.float64)
    measurements = graph.edges.measurements.to(torch.float64)
    diagonal = torch.diagonal(sqrt_information, dim1=1, dim2=2)
    is_diagonal = bool(torch.equal(torch.diag_embed(diagonal), sqrt_information))
    matrix_weight = None if is_diagonal else _matrix_weight(th)
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
    used = sorted({a for pair in rows.tolist() for a in pair})
    start = {f"x{k}": poses[k:k + 1].clone() for k in used}

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


def _matrix_weight(th):
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
