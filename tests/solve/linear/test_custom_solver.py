"""A new linear solver is one class and one line to register it (here, in the test file)."""
import pytest
import torch

import nlls
from nlls.solve.linear import LINEAR_SOLVERS, Factorization, LinearSolver, register_linear_solver
from tests.problems import autodiff_objective, exp_data, exp_error

F64 = torch.float64


class _GeneralSolve(Factorization):
    def __init__(self, matrix):
        self.matrix = matrix
        self.ok = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)

    def solve(self, rhs):
        x, info = torch.linalg.solve_ex(self.matrix, rhs)
        ok = (info == 0) & torch.isfinite(x).all(-1)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class GeneralSolve(LinearSolver):
    """A dense solver that factors nothing ahead: ``torch.linalg.solve`` per right-hand side."""

    name = "general_solve"
    linearization = "dense"
    failure_advice = "the normal matrix is singular"

    def factor(self, matrix):
        self.calls = getattr(self, "calls", 0) + 1
        return _GeneralSolve(matrix)


@pytest.fixture
def registered(registries):
    register_linear_solver(GeneralSolve)  # the one line a new solver needs


def _exp(batch=3):
    x, y, _ = exp_data(batch, points=20, seed=1)
    return autodiff_objective(exp_error, 3, x, y, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(batch, 1))


def test_a_registered_solver_by_name_solves_as_cholesky_does(registered):
    results = []
    for solver in ("dense_cholesky", "general_solve"):
        obj, p = _exp()
        opt = nlls.LevenbergMarquardt(obj, linear_solver=solver, max_iterations=40)
        info = opt.optimize()
        assert info.converged.all()
        results.append(p.tensor)
    assert isinstance(opt.linear_solver, GeneralSolve) and opt.linear_solver.calls > 0
    torch.testing.assert_close(results[1], results[0], rtol=1e-9, atol=1e-12)


def test_a_registered_solver_serves_configs_and_the_implicit_backward(registered):
    obj, p = _exp()
    layer = nlls.OptimizationLayer.from_config(obj, {"linear_solver": {"name": "general_solve"},
                                                     "optimizer": {"max_iterations": 40}})
    assert isinstance(layer.optimizer.linear_solver, GeneralSolve)
    reference = nlls.OptimizationLayer(nlls.LevenbergMarquardt(_exp()[0], max_iterations=40))
    grads = []
    for each in (layer, reference):
        y = each.objective.aux_vars["y"].tensor.clone().requires_grad_(True)
        solution, _ = each({"y": y}, hessian="exact")
        solution["p"].sum().backward()
        grads.append(y.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)


def test_registration_checks_the_declared_contract():
    with pytest.raises(TypeError, match="LinearSolver subclass with a name"):
        register_linear_solver(type("Nameless", (LinearSolver,), {}))

    class Odd(LinearSolver):
        name = "odd"
        linearization = "banded"

    with pytest.raises(ValueError, match="Odd.linearization must be"):
        register_linear_solver(Odd)
    assert "odd" not in LINEAR_SOLVERS
