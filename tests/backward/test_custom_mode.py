"""A new backward mode is one class and one line to register it (here, in the test file)."""
import pytest
import torch

import nlls
from nlls.backward import Backward, register_backward_mode
from nlls.solve.state import Status
from tests.problems import QuadFit, autodiff_objective, exp_data, exp_error, quad_data

F64 = torch.float64


class OneStep(Backward):
    """Solve without a graph, then record one Gauss-Newton step from the solution: exact for
    problems linear in the unknowns (the step lands on the minimizer as a function of the data)."""

    name = "one_step"
    records_iterations = True

    def solve(self, optimizer, driver, tracking):
        with torch.no_grad():
            state = driver.solve(optimizer, optimizer.max_iterations, **tracking)
        evaluator = optimizer.evaluator
        values = tuple(v.detach() for v in state.values)
        aux = evaluator.aux(state.error.shape[0])
        state = state.replace(values=values, aux=aux, error=evaluator.error_metric(values, aux),
                              freeze_converged=False, active=state.status != Status.FAILED)
        state = optimizer.step(state)
        return state, state.values


@pytest.fixture
def registered(registries):
    register_backward_mode(OneStep)  # the one line a new mode needs


def _quad_layer(batch=3):
    x, y, _ = quad_data(batch, points=12, seed=2)
    ab = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=F64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y"), name="fit"))
    return nlls.OptimizationLayer(nlls.GaussNewton(obj, max_iterations=5)), y


def test_a_registered_mode_gives_the_implicit_gradient_on_a_linear_problem(registered):
    layer, y = _quad_layer()
    grads = {}
    for mode in ("implicit", "one_step"):
        y_in = y.clone().requires_grad_(True)
        solution, info = layer({"y": y_in}, backward_mode=mode)
        assert info.converged.all()
        (solution["ab"] * torch.tensor([2.0, -1.0], dtype=F64)).sum().backward()
        grads[mode] = y_in.grad
    assert grads["implicit"].abs().max() > 1e-3
    torch.testing.assert_close(grads["one_step"], grads["implicit"], rtol=1e-10, atol=1e-12)
    # and gradcheck of the new mode against finite differences of the whole solve
    layer, y = _quad_layer(batch=1)
    assert torch.autograd.gradcheck(
        lambda yy: layer({"y": yy}, backward_mode="one_step")[0]["ab"], (y.clone().requires_grad_(True),))


def test_a_registered_mode_is_a_config_choice_and_a_layer_default(registered):
    layer, y = _quad_layer()
    configured = nlls.OptimizationLayer.from_config(layer.objective, {"backward": {"mode": "one_step"}})
    assert configured.backward_mode == "one_step"
    y_in = y.clone().requires_grad_(True)
    solution, _ = configured({"y": y_in})
    solution["ab"].sum().backward()
    assert torch.isfinite(y_in.grad).all() and y_in.grad.abs().max() > 0
    with pytest.raises(ValueError, match="backward_num_iterations applies to the truncated mode only"):
        configured({"y": y}, backward_num_iterations=2)


def test_a_mode_that_records_iterations_is_checked_like_unroll(registered):
    def black_box(p, x):
        return p[:, :1] * x - 1.0

    obj = nlls.Objective()
    p = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="p")
    x = nlls.Variable(torch.ones(2, 3, dtype=F64), name="x")
    obj.add(nlls.NumericDiffCostFunction((p,), black_box, 3, aux_vars=(x,), name="bb"))
    layer = nlls.OptimizationLayer(nlls.GaussNewton(obj, max_iterations=2))
    with pytest.raises(ValueError, match="'one_step' cannot differentiate through NumericDiffCostFunction 'bb'"):
        layer({"x": x.tensor.clone().requires_grad_(True)}, backward_mode="one_step")


def test_unknown_modes_are_refused_with_the_registered_names():
    layer, y = _quad_layer()
    with pytest.raises(ValueError, match="unroll.*truncated.*implicit.*'one_step'"):
        layer({"y": y}, backward_mode="one_step")
    with pytest.raises(TypeError, match="Backward subclass"):
        register_backward_mode(int)


def test_a_configured_mode_object_can_be_passed_directly():
    x, y, _ = exp_data(2, points=15, seed=4)
    obj, p = autodiff_objective(exp_error, 3, x, y, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(2, 1))
    layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(obj, max_iterations=30))
    grads = []
    for mode in ("implicit", nlls.backward.Implicit(hessian="gauss_newton")):
        y_in = y.clone().requires_grad_(True)
        solution, _ = layer({"y": y_in}, backward_mode=mode)
        solution["p"].sum().backward()
        grads.append(y_in.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
