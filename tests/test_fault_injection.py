"""Fault injection: NaN or inf in one random element's data, initial values or residual output,
across Gauss-Newton and Levenberg-Marquardt, every linear solver and every backward mode. The
healthy elements must give what they give solved alone (solution and gradient), the poisoned one
must fail, and no NaN may reach a gradient."""
import itertools
import random
import warnings

import pytest
import torch

import nlls

F64 = torch.float64
POINTS = 12
BATCH = 4
SOLVERS = ["dense_cholesky", "dense_lu", "sparse_cholesky", "cg"]
OPTIMIZERS = [nlls.GaussNewton, nlls.LevenbergMarquardt]
MODES = ["unroll", "truncated", "implicit"]
KINDS = ["data", "initial", "residual"]


def _residual(optim, aux):
    abc, = optim
    x, y, poison = aux
    a, b, c = abc.tensor[:, :1], abc.tensor[:, 1:2], abc.tensor[:, 2:]
    return a * torch.exp(-b * x.tensor) + c - y.tensor + poison.tensor  # poison: 0, or NaN/inf


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 3, POINTS, dtype=F64).expand(BATCH, POINTS).contiguous()
    truth = torch.tensor([2.0, 0.7, 0.3], dtype=F64) + 0.2 * torch.rand(BATCH, 3, generator=g, dtype=F64)
    y = truth[:, :1] * torch.exp(-truth[:, 1:2] * x) + truth[:, 2:] + 0.01 * torch.randn(
        BATCH, POINTS, generator=g, dtype=F64)
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(BATCH, 1)
    return x, y, start


def _solve(optimizer_cls, solver, mode, x, y, start, poison):
    p = nlls.Vector(tensor=start.clone(), name="p")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction(
        (p,), _residual, POINTS, name="decay",
        aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y"), nlls.Variable(poison, name="poison"))))
    optimizer = optimizer_cls(objective, linear_solver=solver, max_iterations=25, abs_err_tolerance=0,
                              rel_err_tolerance=1e-12)
    layer = nlls.OptimizationLayer(optimizer)
    data = y.clone().requires_grad_(True)
    extra = {"backward_num_iterations": 4} if mode == "truncated" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the implicit backward's notes on failed elements
        solution, info = layer({"y": data, "p": start}, backward_mode=mode, **extra)
        return solution["p"], data, info


CASES = list(itertools.product(OPTIMIZERS, SOLVERS, MODES, KINDS))


@pytest.mark.parametrize("optimizer_cls, solver, mode, kind", CASES,
                         ids=[f"{o.__name__}-{s}-{m}-{k}" for o, s, m, k in CASES])
def test_a_poisoned_element_fails_alone(optimizer_cls, solver, mode, kind):
    rng = random.Random(f"{optimizer_cls.__name__}{solver}{mode}{kind}")
    bad = rng.randrange(BATCH)
    value = rng.choice([float("nan"), float("inf"), -float("inf")])
    x, y, start = _problem(rng.randrange(1000))
    poison = torch.zeros(BATCH, POINTS, dtype=F64)
    if kind == "data":
        y = y.clone()
        y[bad, rng.randrange(POINTS)] = value
    elif kind == "initial":
        start = start.clone()
        start[bad, rng.randrange(3)] = value
    else:
        poison[bad, rng.randrange(POINTS)] = value
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    healthy = [b for b in range(BATCH) if b != bad]

    solution, data, info = _solve(optimizer_cls, solver, mode, x, y, start, poison)
    assert info.status[bad] == nlls.Status.FAILED and info.failure[bad] != 0
    assert "failed at the start" in info.message
    loss = (solution[healthy] * weights).sum()
    gradient, = torch.autograd.grad(loss, data)
    assert torch.isfinite(gradient).all()
    assert (gradient[bad] == 0).all()
    for b in healthy:
        alone, alone_data, alone_info = _solve(optimizer_cls, solver, mode, x[b:b + 1], y[b:b + 1],
                                               start[b:b + 1], poison[b:b + 1])
        assert alone_info.status[0] == info.status[b]
        torch.testing.assert_close(solution[b:b + 1], alone, rtol=1e-8, atol=1e-10)
        alone_gradient, = torch.autograd.grad((alone * weights).sum(), alone_data)
        torch.testing.assert_close(gradient[b:b + 1], alone_gradient, rtol=1e-7, atol=1e-9)
