"""A failing batch element stays in its element: forward, every backward mode, every solver;
the message says what happened to it."""
import warnings

import pytest
import torch

import nlls
from nlls.solve.state import Failure
from tests.problems import autodiff_objective, exp_data, exp_error

F64 = torch.float64
START = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
HEALTHY = torch.tensor([0, 2, 3])


def _shared_theta_gradient(mode, optimizer_cls, solver, bad: bool):
    """Four exponential fits of ``y + theta`` with one shared theta; element 1's data holds a NaN
    when ``bad``. Returns d(sum of the healthy solutions)/d theta and the statuses."""
    x, y, _ = exp_data(4, points=20, seed=3)
    objective, _ = autodiff_objective(exp_error, 3, x, y, START.repeat(4, 1))
    layer = nlls.OptimizationLayer(optimizer_cls(objective, max_iterations=20, linear_solver=solver))
    theta = torch.zeros(1, 1, dtype=F64, requires_grad=True)
    data = y.clone()
    if bad:
        data[1, 3] = float("nan")
    extra = {"backward_num_iterations": 5} if mode == "truncated" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the implicit backward names the failed element
        solution, info = layer({"y": data + theta, "p": START.repeat(4, 1)}, backward_mode=mode, **extra)
        gradient, = torch.autograd.grad(solution["p"][HEALTHY].sum(), theta)
    return gradient, info


@pytest.mark.parametrize("mode", ["unroll", "truncated", "implicit"])
@pytest.mark.parametrize("optimizer_cls, solver", [
    (nlls.LevenbergMarquardt, "dense_cholesky"), (nlls.GaussNewton, "dense_cholesky"),
    (nlls.GaussNewton, "cg"), (nlls.LevenbergMarquardt, "cg"), (nlls.LevenbergMarquardt, "dense_lu"),
    (nlls.LevenbergMarquardt, "sparse_cholesky"),
])
def test_a_failed_element_leaves_the_shared_gradient_as_without_it(mode, optimizer_cls, solver):
    gradient, info = _shared_theta_gradient(mode, optimizer_cls, solver, bad=True)
    reference, _ = _shared_theta_gradient(mode, optimizer_cls, solver, bad=False)
    assert info.status.tolist() == [nlls.Status.CONVERGED, nlls.Status.FAILED] + [nlls.Status.CONVERGED] * 2
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(gradient, reference, rtol=1e-12, atol=1e-12)
    assert abs(float(gradient) - 3.0) < 1e-5  # each healthy offset moves with theta


def test_a_diverging_trial_step_while_recording_keeps_gradients_finite():
    """A trial step out of the residual's domain (log of a negative) in one element, while autograd
    records: LM rejects it and recovers; the gradients equal the element's solo ones."""
    def residual(optim, aux):
        v, = optim
        target, = aux
        return torch.log(v.tensor) - target.tensor

    def solve(values, targets):
        v = nlls.Vector(tensor=values, name="v")
        t = nlls.Variable(targets.clone().requires_grad_(True), name="t")
        objective = nlls.Objective()
        objective.add(nlls.AutoDiffCostFunction((v,), residual, 1, aux_vars=(t,)))
        layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=60, damping=1e-6,
                                                               abs_err_tolerance=0, rel_err_tolerance=0))
        solution, info = layer(backward_mode="unroll")
        gradient, = torch.autograd.grad(solution["v"].sum(), t.tensor)
        return solution["v"], gradient, info

    values = torch.tensor([[2.0], [2.0]], dtype=F64)  # element 0's first step lands at v = -5.4: log is NaN
    targets = torch.tensor([[-3.0], [0.5]], dtype=F64)
    solution, gradient, info = solve(values, targets)
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(solution, targets.exp(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradient, targets.exp(), rtol=1e-8, atol=1e-10)  # d exp(t) / dt
    for b in range(2):
        solo_solution, solo_gradient, _ = solve(values[b:b + 1], targets[b:b + 1])
        torch.testing.assert_close(gradient[b:b + 1], solo_gradient, rtol=1e-10, atol=1e-12)


def test_truncated_lm_differentiates_the_steps_of_converged_elements():
    """The offset b of a line fit y = a x + b moves one for one with a shift of every y: the
    recorded steps of elements that have already converged must carry that (LM used to reject
    them, cutting the graph: a zero gradient)."""
    def line(optim, aux):
        ab, = optim
        x, y = aux
        return ab.tensor[:, :1] * x.tensor + ab.tensor[:, 1:] - y.tensor

    x = torch.linspace(0, 1, 10, dtype=F64).expand(3, 10)
    y = 2 * x + 1 + 0.1 * torch.randn(3, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    objective, p = autodiff_objective(line, 2, x, y, torch.zeros(3, 2, dtype=F64))
    nlls.LevenbergMarquardt(objective, max_iterations=50).optimize()
    start = torch.cat([p.tensor[:1].clone(), torch.zeros(2, 2, dtype=F64)])  # element 0 at its solution
    for cls in (nlls.LevenbergMarquardt, nlls.GaussNewton):
        layer = nlls.OptimizationLayer(cls(objective, max_iterations=20))
        data = y.clone().requires_grad_(True)
        solution, info = layer({"y": data, "p": start}, backward_mode="truncated", backward_num_iterations=3)
        assert info.converged.all()
        gradient, = torch.autograd.grad(solution["p"][:, 1].sum(), data)
        torch.testing.assert_close(gradient.sum(dim=1), torch.ones(3, dtype=F64), rtol=1e-6, atol=1e-6)


def test_messages_say_what_happened():
    x, y, _ = exp_data(3, points=20, seed=3)
    data = y.clone()
    data[1, 0] = float("nan")
    for cls in (nlls.GaussNewton, nlls.LevenbergMarquardt):
        objective, _ = autodiff_objective(exp_error, 3, x, data, START.repeat(3, 1))
        info = cls(objective, max_iterations=30).optimize()
        assert info.failure.tolist() == [Failure.NONE, Failure.NONFINITE_START, Failure.NONE]
        assert "1 failed at the start: the initial cost is not finite" in info.message
        name = next(iter(objective.cost_functions))
        assert f"cost function {name!r} gives NaN or inf for element(s) [1]" in info.message
        assert "singular" not in info.message and "use LevenbergMarquardt" not in info.message


def test_gauss_newton_divergence_is_called_a_divergence():
    # y = exp(p x) from far away: Gauss-Newton's steps overflow
    def residual(optim, aux):
        v, = optim
        x, y = aux
        return torch.exp(v.tensor * x.tensor) - y.tensor

    x = torch.linspace(0, 4, 20, dtype=F64).expand(2, 20)
    y = torch.exp(0.5 * x)
    v = nlls.Vector(tensor=torch.tensor([[0.4], [-20.0]], dtype=F64), name="v")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((v,), residual, 20,
                                            aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y"))))
    info = nlls.GaussNewton(objective, max_iterations=50).optimize()
    assert info.status.tolist() == [nlls.Status.CONVERGED, nlls.Status.FAILED]
    assert "1 diverged" in info.message and "LevenbergMarquardt" in info.message
    assert "singular" not in info.message


def test_a_singular_system_keeps_the_linear_solver_advice():
    x, y, _ = exp_data(2, points=20, seed=1)
    objective, _ = autodiff_objective(exp_error, 3, x, y, torch.tensor([[0.0, 1.0, 0.0]], dtype=F64).repeat(2, 1))
    info = nlls.GaussNewton(objective, max_iterations=5).optimize()  # a = 0: b does not matter
    assert bool((info.failure == Failure.LINEAR_SOLVE).all())
    assert "singular" in info.message


def test_implicit_gradient_at_unconverged_elements_warns_once_with_the_count():
    x, y, _ = exp_data(3, points=20, seed=3)
    objective, _ = autodiff_objective(exp_error, 3, x, y, START.repeat(3, 1))
    layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=2))
    with pytest.warns(RuntimeWarning, match="3 of 3 batch elements did not converge") as caught:
        layer({"y": y.clone().requires_grad_(True)})
    assert len([w for w in caught if "did not converge" in str(w.message)]) == 1
    fixed = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=2, abs_err_tolerance=0,
                                                           rel_err_tolerance=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fixed count (both tolerances 0) asks for no convergence
        fixed({"y": y.clone().requires_grad_(True)})


def test_implicit_gradient_of_a_failed_element_is_exactly_zero():
    x, y, _ = exp_data(3, points=20, seed=3)
    data = y.clone()
    data[1, 5] = float("nan")
    objective, _ = autodiff_objective(exp_error, 3, x, data, START.repeat(3, 1))
    layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=40))
    data = data.requires_grad_(True)
    solution, info = layer({"y": data})
    gradient, = torch.autograd.grad(solution["p"].sum(), data)
    assert info.status[1] == nlls.Status.FAILED
    assert (gradient[1] == 0).all() and torch.isfinite(gradient).all()
    assert gradient[0].abs().max() > 1e-3
