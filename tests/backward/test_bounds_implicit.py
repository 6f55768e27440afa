"""The implicit backward of a bounded solve: zero derivative along a coordinate on its bound, the
reduced system on the free ones; equal to central differences of the whole bounded solve (float64),
with bounds active and inactive in one batch; the unrolled backward takes the clamp's gradient."""
import pytest
import torch

import nlls
from tests.problems import exp_data, exp_error

F64 = torch.float64
TIGHT = dict(abs_err_tolerance=0.0, function_tolerance=0.0, gradient_tolerance=1e-13,
             parameter_tolerance=1e-15, max_iterations=200)
INF = float("inf")
# element 0: no bound active at the solution; element 1: the decay rate on its lower bound;
# element 2: the amplitude on its upper bound
LOWER = torch.tensor([[-INF, 0.0, -INF], [-INF, 1.6, -INF], [-INF, -INF, -INF]], dtype=F64)
UPPER = torch.tensor([[INF, INF, INF], [INF, INF, INF], [1.2, INF, INF]], dtype=F64)


pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(x, y):
    abc = nlls.Vector(tensor=torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(3, 1), name="abc")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction(
        (abc,), exp_error, x.shape[1], aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")), name="exp"))
    objective.set_bounds(abc, lower=LOWER, upper=UPPER)
    return nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, **TIGHT))


def _solve(layer, y, **kwargs):
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(3, 1)
    solution, info = layer({"abc": start, "y": y}, **kwargs)
    return solution["abc"], info


def test_implicit_gradient_of_a_bounded_solve_matches_central_differences():
    x, y, _ = exp_data(3, points=12, seed=5)
    layer = _layer(x, y)
    weights = torch.tensor([[0.7, -1.3, 0.4]], dtype=F64)
    y = y.clone().requires_grad_(True)
    solution, info = _solve(layer, y, backward_mode="implicit", hessian="exact")
    assert info.converged.all(), info.message
    active = info.active_bounds["abc"]
    assert active[0].tolist() == [0, 0, 0] and active[1].tolist() == [0, -1, 0] and active[2].tolist() == [1, 0, 0]
    (grad,) = torch.autograd.grad((solution * weights).sum(), y, retain_graph=True)
    numeric = torch.zeros_like(y)
    step = 1e-6
    with torch.no_grad():
        for b in range(3):
            for i in range(y.shape[1]):
                values = []
                for sign in (1.0, -1.0):
                    moved = y.detach().clone()
                    moved[b, i] += sign * step
                    values.append((_solve(layer, moved)[0][b] * weights[0]).sum())
                numeric[b, i] = (values[0] - values[1]) / (2 * step)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-6)
    # a coordinate on its bound does not move with the data: the solution's derivative there is 0
    (along_bound,) = torch.autograd.grad(solution[1, 1] + solution[2, 0], y, allow_unused=True)
    assert along_bound is None or torch.count_nonzero(along_bound[1:]) == 0


def test_unrolled_gradient_takes_the_clamp_and_agrees_with_implicit_at_the_solution():
    x, y, _ = exp_data(3, points=12, seed=5)
    layer = _layer(x, y)
    weights = torch.tensor([[0.7, -1.3, 0.4]], dtype=F64)
    grads = []
    for mode, extra in (("implicit", {"hessian": "exact"}), ("unroll", {})):
        y_in = y.clone().requires_grad_(True)
        solution, info = _solve(layer, y_in, backward_mode=mode, **extra)
        grads.append(torch.autograd.grad((solution * weights).sum(), y_in)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-8)
