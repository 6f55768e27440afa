"""Covariance gradients equal central differences (float64, 1e-6 relative): with respect to the
measurements (along their tangent), the weights and the values it is evaluated at; dense and
sparse, pseudo-inverse and fixed gauge; and through OptimizationLayer's implicit backward (solve,
write the solution back, covariance, loss)."""
import pytest
import torch

import nlls
from tests.test_covariance import SOLVERS, pose_graph

F64 = torch.float64
STEP = 1e-6


def _weight_name(objective, cost):
    return objective.cost_functions[cost].cost_weight.aux_vars[0].name


def _central(loss, point, size=STEP):
    """Central differences of ``loss(t)`` at ``point``, every entry, steps of ``size``."""
    out = torch.zeros_like(point)
    for i in range(point.numel()):
        step = torch.zeros_like(point).flatten()
        step[i] = size
        step = step.reshape(point.shape)
        with torch.no_grad():
            out.view(-1)[i] = (loss(point + step) - loss(point - step)) / (2 * size)
    return out


def _assert_close(autograd, numeric):
    scale = numeric.abs().max()
    assert scale > 0
    assert (autograd - numeric).abs().max() <= 1e-6 * scale, (autograd, numeric)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("gauge", ["pseudo_inverse", "x0"])
def test_gradients_with_respect_to_data_and_values(solver, gauge):
    objective, xs = pose_graph(batch=2, poses=6, prior=False)
    measurement = objective.aux_vars["m2"].tensor.clone()
    weight_name = _weight_name(objective, "e4")
    weight = objective.aux_vars[weight_name].tensor.clone()
    value = xs[3].tensor.clone()
    mix = torch.randn(2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))

    def loss(delta_m, w, delta_x):
        objective.update({"m2": nlls.SE2(tensor=measurement).retract(delta_m).tensor, weight_name: w,
                          "x3": nlls.SE2(tensor=value).retract(delta_x).tensor})
        joint = nlls.Covariance(objective, linear_solver=solver, gauge=gauge).joint(["x1", "x5"])
        return (mix * joint).sum()

    zeros = torch.zeros(2, 3, dtype=F64)
    inputs = [zeros.clone().requires_grad_(), weight.clone().requires_grad_(), zeros.clone().requires_grad_()]
    loss(*inputs).backward()
    fixed = [zeros, weight, zeros]
    for k in range(3):
        def partial(t, k=k):
            args = list(fixed)
            args[k] = t
            return loss(*args)
        _assert_close(inputs[k].grad, _central(partial, fixed[k]))


def test_gradients_through_autodiff_jacobians():
    """An AutoDiffCostFunction's Jacobians (torch.func) carry the gradient to the values and data."""
    x = torch.linspace(0.1, 1.0, 7, dtype=F64)[None].repeat(2, 1)
    abc = nlls.Vector(tensor=torch.tensor([[1.0, 0.7, 0.2], [0.5, 1.5, -0.3]], dtype=F64), name="abc")
    data = nlls.Variable(x, name="x")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction(
        [abc], lambda v, a: v[0].tensor[:, :1] * torch.exp(-v[0].tensor[:, 1:2] * a[0].tensor) + v[0].tensor[:, 2:],
        7, aux_vars=[data], name="exp_fit"))
    start = abc.tensor.clone()
    mix = torch.randn(2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(2))

    def loss(values, xs):
        objective.update({"abc": values, "x": xs})
        return (mix * nlls.Covariance(objective).marginal("abc")).sum()

    values, xs = start.clone().requires_grad_(), x.clone().requires_grad_()
    loss(values, xs).backward()
    _assert_close(values.grad, _central(lambda t: loss(t, x), start))
    _assert_close(xs.grad, _central(lambda t: loss(start, t), x))


@pytest.mark.parametrize("linear_solver", ["dense_cholesky", "sparse_cholesky"])
def test_a_loss_on_the_solution_covariance_trains_through_the_implicit_layer(linear_solver):
    objective, xs = pose_graph(batch=2, poses=6, prior=True)
    optimizer = nlls.GaussNewton(objective, linear_solver=linear_solver, max_iterations=50,
                                 abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    layer = nlls.OptimizationLayer(optimizer, hessian="exact" if linear_solver == "dense_cholesky" else "gauss_newton")
    measurement = objective.aux_vars["m3"].tensor.clone()
    weight_name = _weight_name(objective, "e1")
    weight = objective.aux_vars[weight_name].tensor.clone()
    start = {name: var.tensor.clone() for name, var in objective.optim_vars.items()}
    mix = torch.randn(2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(3))

    def loss(delta_m, w):
        inputs = {**start, "m3": nlls.SE2(tensor=measurement).retract(delta_m).tensor, weight_name: w}
        solution, info = layer(inputs, backward_mode="implicit")
        assert bool(info.status.ne(nlls.Status.FAILED).all())
        objective.update({**inputs, **solution})
        return (mix * nlls.Covariance(objective).marginal("x4")).sum()

    zeros = torch.zeros(2, 3, dtype=F64)
    delta, w = zeros.clone().requires_grad_(), weight.clone().requires_grad_()
    loss(delta, w).backward()
    if linear_solver == "dense_cholesky":  # the exact implicit Hessian: exact gradients
        _assert_close(delta.grad, _central(lambda t: loss(t, weight), zeros))
        # weights of 10 to 40: a step of 1e-4 (relative 1e-5) keeps the solves' rounding out
        _assert_close(w.grad, _central(lambda t: loss(zeros, t), weight, size=1e-4))
    else:  # Gauss-Newton's implicit Hessian drops the residuals' curvature: close, not exact
        numeric = _central(lambda t: loss(t, weight), zeros)
        assert (delta.grad - numeric).abs().max() <= 0.05 * numeric.abs().max()
