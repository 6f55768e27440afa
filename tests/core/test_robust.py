"""Robust losses: values and derivatives, the corrected linearization, outlier-robust fits."""
import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator
from nlls.core.robust import RobustLoss

LOSSES = [nlls.HuberLoss(0.7), nlls.CauchyLoss(0.7)]


class _ConvexLoss(RobustLoss):
    """rho(s) = s + s^2 / (2 a^2): rho'' > 0, so the corrector's second-order term is active."""

    def evaluate(self, s):
        a2 = self.radius ** 2
        return s + 0.5 * s * s / a2, 1.0 + s / a2, torch.full_like(s, 1.0 / a2)

    def scale(self, s):
        return torch.sqrt(1.0 + 0.5 * s / self.radius ** 2)


@pytest.mark.parametrize("loss", LOSSES + [_ConvexLoss(0.7)], ids=repr)
def test_loss_derivatives_and_scale(loss):
    s = torch.cat([torch.zeros(1), torch.logspace(-12, 3, 60)]).double().requires_grad_(True)
    rho, rho1, rho2 = loss.evaluate(s)
    (grad,) = torch.autograd.grad(rho.sum(), s, create_graph=True)
    (grad2,) = torch.autograd.grad(rho1.sum(), s)
    assert torch.allclose(grad, rho1, rtol=1e-10) and torch.allclose(grad2, rho2, rtol=1e-8, atol=1e-12)
    assert torch.allclose(loss(s), rho)
    assert torch.allclose(rho[1:10], s[1:10], rtol=1e-6)  # least squares for small residuals
    scale = loss.scale(s)
    assert torch.allclose(scale * scale * s, rho, rtol=1e-12, atol=1e-300)
    assert float(scale[0].detach()) == 1.0
    (scale_grad,) = torch.autograd.grad(scale.sum(), s)
    assert torch.isfinite(scale_grad).all()


def test_documented_formulas():
    s = torch.tensor([0.25, 4.0], dtype=torch.float64)
    huber, cauchy = nlls.HuberLoss(1.0), nlls.CauchyLoss(2.0)
    assert torch.allclose(huber(s), torch.tensor([0.25, 2 * 1.0 * 2.0 - 1.0], dtype=torch.float64))
    assert torch.allclose(cauchy(s), 4.0 * torch.log1p(s / 4.0))


def _line(batch, points=100, outliers=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 10, points, dtype=torch.float64).expand(batch, points).clone()
    truth = torch.tensor([[2.0, 1.0]], dtype=torch.float64) + 0.3 * torch.randn(batch, 2, generator=generator,
                                                                                dtype=torch.float64)
    y = truth[:, :1] * x + truth[:, 1:] + 0.05 * torch.randn(batch, points, generator=generator,
                                                              dtype=torch.float64)
    # gross outliers among the last third of the points: +20..+40
    index = points - 1 - torch.randperm(points // 3, generator=generator)[:outliers]
    y[:, index] += 20 + 20 * torch.rand(batch, outliers, generator=generator, dtype=torch.float64)
    return x, y, truth


def _line_error(optim_vars, aux_vars):
    (line,), (x, y) = optim_vars, aux_vars
    return line.tensor[:, :1] * x.tensor + line.tensor[:, 1:] - y.tensor


def _fit(x, y, loss=None):
    line = nlls.Vector(tensor=torch.zeros(x.shape[0], 2, dtype=torch.float64), name="line")
    objective = nlls.Objective()
    for k in range(x.shape[1]):
        cf = nlls.AutoDiffCostFunction((line,), _line_error, 1, name=f"point{k}",
                                       aux_vars=(nlls.Variable(x[:, k:k + 1], name=f"x{k}"),
                                                 nlls.Variable(y[:, k:k + 1], name=f"y{k}")))
        objective.add(cf if loss is None else nlls.RobustCostFunction(cf, loss))
    info = nlls.LevenbergMarquardt(objective, max_iterations=100).optimize()
    return line.tensor, info, objective


@pytest.mark.parametrize("loss", [nlls.HuberLoss(0.1), nlls.CauchyLoss(0.1)], ids=repr)
def test_line_fit_with_gross_outliers(loss):
    x, y, truth = _line(batch=8)
    plain, _, _ = _fit(x, y)
    assert float((plain[:, 0] - truth[:, 0]).abs().min()) > 0.2  # least squares is dragged away
    robust, info, objective = _fit(x, y, loss)
    assert bool(info.converged.all()), info.message
    assert float((robust[:, 0] - truth[:, 0]).abs().max()) < 0.05
    evaluator = Evaluator(objective)
    assert len(evaluator.groups) == 1  # 100 robust cost functions, one stacked call


@pytest.mark.parametrize("loss", LOSSES + [_ConvexLoss(0.7)], ids=repr)
def test_corrected_linearization_keeps_the_gradient(loss):
    """J'^T r' = rho'(s) (wJ)^T (wr) exactly, and equals the autograd gradient of 0.5 rho(s)."""
    generator = torch.Generator().manual_seed(1)
    x1 = nlls.SE3.rand(16, generator, dtype=torch.float64, name="x1")
    x2 = nlls.SE3.rand(16, generator, dtype=torch.float64, name="x2")
    m = nlls.SE3(x1.between(x2).retract(0.3 * torch.randn(16, 6, generator=generator,
                                                          dtype=torch.float64)).tensor, name="m")
    m.update(torch.cat([x1.between(x2).tensor[:8], m.tensor[8:]]))  # some exact (s = 0)
    scale = torch.rand(16, 1, generator=generator, dtype=torch.float64) * 3
    inner = nlls.Between(x1, x2, m, cost_weight=nlls.ScaleCostWeight(scale, name="w"))
    robust = nlls.RobustCostFunction(inner, loss)
    jacobians, residual = robust.weighted_jacobians_error()
    plain_jacobians, plain_residual = inner.weighted_jacobians_error()
    s = (plain_residual ** 2).sum(-1)
    _, rho1, rho2 = loss.evaluate(s)
    for corrected, plain in zip(jacobians, plain_jacobians):
        gradient = (corrected.transpose(1, 2) @ residual[..., None])[..., 0]
        plain_gradient = (plain.transpose(1, 2) @ plain_residual[..., None])[..., 0]
        assert torch.allclose(gradient, rho1[:, None] * plain_gradient, atol=1e-12)
        # the model's Hessian: rho' J^T J, plus Triggs' 2 rho'' (J^T r)(J^T r)^T where rho'' > 0
        hessian = corrected.transpose(1, 2) @ corrected
        second = 2 * rho2.clamp_min(0)[:, None, None] * plain_gradient[:, :, None] * plain_gradient[:, None, :]
        expected = rho1[:, None, None] * plain.transpose(1, 2) @ plain + second
        assert torch.allclose(hessian, expected, atol=1e-10)
    # the gradient of the objective 0.5 * rho(s) on the tangent of x1, by autograd
    delta = torch.zeros(16, 6, dtype=torch.float64, requires_grad=True)
    original = x1.tensor
    x1.tensor = nlls.SE3.retract_tensor(original, delta)
    value = 0.5 * (robust.weighted_error() ** 2).sum()
    (autograd,) = torch.autograd.grad(value, delta)
    x1.tensor = original
    gradient = (jacobians[0].transpose(1, 2) @ residual[..., None])[..., 0]
    assert torch.allclose(gradient, autograd, atol=1e-10)
    assert torch.allclose(0.5 * (robust.weighted_error() ** 2).sum(-1), 0.5 * loss(s), atol=1e-12)


def test_objective_value_uses_rho():
    generator = torch.Generator().manual_seed(2)
    p = nlls.Vector(tensor=torch.randn(4, 3, generator=generator, dtype=torch.float64), name="p")
    target = nlls.Variable(torch.zeros(1, 3, dtype=torch.float64), name="t")
    inner = nlls.Difference(p, target, cost_weight=nlls.ScaleCostWeight(2.0, name="w"))
    objective = nlls.Objective().add(nlls.RobustCostFunction(inner, nlls.CauchyLoss(0.5)))
    s = ((2.0 * p.tensor) ** 2).sum(-1)
    assert torch.allclose(objective.error_metric(), 0.5 * 0.25 * torch.log1p(s / 0.25))
    assert "w" in objective.aux_vars  # the inner weight is registered through the wrapper
    objective.update({"w": torch.ones(1, 1, dtype=torch.float64)})
    assert torch.allclose(objective.error_metric(), 0.5 * 0.25 * torch.log1p((p.tensor ** 2).sum(-1) / 0.25))


def test_equal_losses_are_shared_and_grouped():
    assert nlls.HuberLoss(1) == nlls.HuberLoss(1.0) and nlls.HuberLoss(1.0) != nlls.CauchyLoss(1.0)
    assert hash(nlls.HuberLoss(2.0)) == hash(nlls.HuberLoss(2.0))
    p = nlls.Vector(tensor=torch.ones(1, 2), name="p")
    costs = [nlls.RobustCostFunction(nlls.Difference(p, nlls.Variable(torch.zeros(1, 2), name=f"t{k}")),
                                     loss, name=f"r{k}")
             for k, loss in enumerate([nlls.HuberLoss(1.0), nlls.HuberLoss(1.0), nlls.CauchyLoss(1.0),
                                       nlls.HuberLoss(2.0)])]
    assert costs[0].loss is costs[1].loss
    objective = nlls.Objective()
    for cf in costs:
        objective.add(cf)
    assert sorted(g.size for g in Evaluator(objective).groups) == [1, 1, 2]
    assert costs[0].name == "r0" and nlls.RobustCostFunction(costs[0].cost_function,
                                                             nlls.HuberLoss(1.0)).name.endswith("_robust")


def test_bad_arguments():
    with pytest.raises(ValueError, match="HuberLoss: radius must be positive"):
        nlls.HuberLoss(0.0)
    with pytest.raises(ValueError, match="CauchyLoss: radius must be positive"):
        nlls.CauchyLoss(float("inf"))
    with pytest.raises(TypeError, match="radius must be a number"):
        nlls.HuberLoss(torch.tensor(1.0))
    p = nlls.Vector(tensor=torch.ones(1, 2), name="p")
    inner = nlls.Difference(p, nlls.Variable(torch.zeros(1, 2), name="t"), name="prior")
    with pytest.raises(TypeError, match="RobustCostFunction for 'prior': loss must be a RobustLoss"):
        nlls.RobustCostFunction(inner, "huber")
    with pytest.raises(TypeError, match="cost_function must be a CostFunction"):
        nlls.RobustCostFunction(p, nlls.HuberLoss(1.0))
    with pytest.raises(ValueError, match="'prior': DiagonalCostWeight"):
        nlls.RobustCostFunction(
            nlls.Difference(p, nlls.Variable(torch.zeros(1, 2), name="t2"), name="prior",
                            cost_weight=nlls.DiagonalCostWeight(torch.ones(1, 3))),
            nlls.HuberLoss(1.0))
