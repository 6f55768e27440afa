"""Small problems shared by the tests: analytic and autodiff versions of the same residuals."""
import torch

import nlls


class QuadFit(nlls.CostFunction):
    """r = a x^2 + b - y (API.md's example)."""

    def __init__(self, ab, x, y, cost_weight=None, name=None):
        super().__init__(optim_vars=(ab,), aux_vars=(x, y), cost_weight=cost_weight, name=name)
        self.ab, self.x, self.y = ab, x, y

    def dim(self):
        return self.x.shape[1]

    def error(self):
        a, b = self.ab.tensor[:, :1], self.ab.tensor[:, 1:]
        return a * self.x.tensor ** 2 + b - self.y.tensor

    def jacobians(self):
        error = self.error()
        x2 = (self.x.tensor ** 2).expand_as(error)
        return [torch.stack([x2, torch.ones_like(x2)], dim=-1)], error


def quad_error(optim, aux):
    ab, = optim
    x, y = aux
    return ab.tensor[:, :1] * x.tensor ** 2 + ab.tensor[:, 1:] - y.tensor


def exp_error(optim, aux):
    abc, = optim
    x, y = aux
    a, b, c = abc.tensor[:, :1], abc.tensor[:, 1:2], abc.tensor[:, 2:]
    return a * torch.exp(-b * x.tensor) + c - y.tensor


def rosenbrock_error(optim, aux):
    p, = optim
    x, y = p.tensor[:, :1], p.tensor[:, 1:]
    return torch.cat([10 * (y - x ** 2), 1 - x], dim=1)


def quad_data(batch, points=100, dtype=torch.float64, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-2, 2, points, dtype=dtype).expand(batch, points).clone()
    ab = torch.randn(batch, 2, generator=g, dtype=dtype)
    y = ab[:, :1] * x ** 2 + ab[:, 1:] + noise * torch.randn(batch, points, generator=g, dtype=dtype)
    return x, y, ab


def exp_data(batch, points=50, dtype=torch.float64, seed=0, noise=0.02):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 4, points, dtype=dtype).expand(batch, points).clone()
    abc = torch.stack([
        1.0 + torch.rand(batch, generator=g, dtype=dtype),
        0.5 + torch.rand(batch, generator=g, dtype=dtype),
        0.5 * torch.randn(batch, generator=g, dtype=dtype),
    ], dim=1)
    y = abc[:, :1] * torch.exp(-abc[:, 1:2] * x) + abc[:, 2:]
    y = y + noise * torch.randn(batch, points, generator=g, dtype=dtype)
    return x, y, abc


def autodiff_objective(err_fn, dof, x, y, init, name="p"):
    p = nlls.Vector(tensor=init.clone(), name=name)
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction(
        (p,), err_fn, x.shape[1], aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")),
        name="fit"))
    return objective, p


def exp_fit(batch, seed, points=20):
    """``batch`` exponential fits (autodiff) from ``(a, b, c) = (1, 1, 0)``: ``(objective, p)``."""
    x, y, _ = exp_data(batch, points=points, seed=seed)
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).repeat(batch, 1)
    return autodiff_objective(exp_error, 3, x, y, start)
