"""The losses of nlls.core.losses: closed forms, autograd, limits, SciPy's fits, batches, the corrector."""
import math

import mpmath
import numpy as np
import pytest
import scipy.optimize
import torch

import nlls
from nlls.core.evaluation import Evaluator

F64 = torch.float64
RADIUS = 0.7
LOSSES = [nlls.SoftLOneLoss(RADIUS), nlls.ArctanLoss(RADIUS), nlls.TukeyLoss(RADIUS),
          nlls.TolerantLoss(0.5, 0.1), nlls.TolerantLoss(0.0, 1e-3), nlls.TolerantLoss(2.0, 1e-3),
          nlls.ScaledLoss(nlls.HuberLoss(RADIUS), 2.5), nlls.ScaledLoss(nlls.TukeyLoss(RADIUS), 0.5),
          nlls.ScaledLoss(None, 3.0)]


# ---- closed forms, written out independently (mpmath, 700 digits) -------------------------------
def _reference(loss, s):
    """rho, rho', rho'' of ``loss`` at ``s`` in high precision, from the formulas of the docstrings."""
    s = mpmath.mpf(s)
    if isinstance(loss, nlls.ScaledLoss):
        c = mpmath.mpf(loss.factor)
        inner = (s, 1, 0) if loss.loss is None else _reference(loss.loss, s)
        return tuple(c * v for v in inner)
    if isinstance(loss, nlls.TolerantLoss):
        a, b = mpmath.mpf(loss.a), mpmath.mpf(loss.b)
        x = (s - a) / b
        rho = b * mpmath.log(1 + mpmath.exp(x)) - b * mpmath.log(1 + mpmath.exp(-a / b))
        return rho, mpmath.exp(x) / (1 + mpmath.exp(x)), 1 / (2 * b * (1 + mpmath.cosh(x)))
    a2 = mpmath.mpf(loss.radius) ** 2
    x = s / a2
    if isinstance(loss, nlls.SoftLOneLoss):
        return 2 * a2 * (mpmath.sqrt(1 + x) - 1), 1 / mpmath.sqrt(1 + x), -(1 + x) ** -1.5 / (2 * a2)
    if isinstance(loss, nlls.ArctanLoss):
        return a2 * mpmath.atan(x), 1 / (1 + x * x), -2 * x / (a2 * (1 + x * x) ** 2)
    if isinstance(loss, nlls.TukeyLoss):
        if x > 1:
            return a2 / 3, mpmath.mpf(0), mpmath.mpf(0)
        return a2 / 3 * (1 - (1 - x) ** 3), (1 - x) ** 2, -2 * (1 - x) / a2
    if isinstance(loss, nlls.HuberLoss):
        if x > 1:
            return 2 * mpmath.sqrt(a2 * s) - a2, mpmath.sqrt(a2 / s), -mpmath.sqrt(a2 / s) / (2 * s)
        return s, mpmath.mpf(1), mpmath.mpf(0)
    raise AssertionError(loss)


def _grid(loss):
    """s = 0, tiny, around the radius (or a), large and huge."""
    points = [0.0, 1e-300, 1e-30, 1e-12, 1e-6, 1e-3, 0.1, 1.0, 10.0, 1e6, 1e30, 1e300]
    if isinstance(loss, nlls.TolerantLoss):  # around a
        points += [max(loss.a + k * loss.b, 0.0) for k in (-50, -3, -1e-6, 0, 1e-6, 3, 50, 1e4)]
    elif hasattr(loss, "radius"):
        points += [loss.radius ** 2 * f for f in (0.5, 1.0 - 1e-9, 1.0, 1.0 + 1e-9, 2.0)]
    return torch.tensor(sorted(points), dtype=F64)


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_values_and_derivatives_match_the_closed_forms(loss):
    s = _grid(loss)
    rho, rho1, rho2 = loss.evaluate(s)
    for k, value in enumerate(s.tolist()):
        with mpmath.workdps(700):  # enough digits that 1 + 1e-300 - 1 is exact
            expected = [float(v) for v in _reference(loss, value)]
        # rho to 1e-12 relative; its derivatives also to 1e-14 absolute: where they nearly vanish
        # (Tukey at s = a^2 (1 - 1e-9)), rounding a^2 already moves them by that much
        for got, want, name, tol in zip((rho[k], rho1[k], rho2[k]), expected, ("rho", "rho'", "rho''"),
                                        (1e-300, 1e-14, 1e-14)):
            assert math.isclose(float(got), want, rel_tol=1e-12, abs_tol=tol), \
                f"{loss!r} {name}({value!r}) = {float(got)!r}, expected {want!r}"
    assert torch.equal(loss(s), rho)


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_derivatives_match_autograd_and_nothing_overflows(loss):
    s = torch.cat([_grid(loss), torch.logspace(-300, 300, 121, dtype=F64)]).requires_grad_(True)
    rho, rho1, rho2 = loss.evaluate(s)
    scale = loss.scale(s)
    for name, value in (("rho", rho), ("rho'", rho1), ("rho''", rho2), ("scale", scale)):
        assert torch.isfinite(value).all(), f"{loss!r}: {name} not finite"
    # autograd differentiates the formulas, with absolute rounding errors near the scale of the
    # derivative (where it nearly vanishes, the closed forms above are the accurate ones)
    (grad,) = torch.autograd.grad(rho.sum(), s, retain_graph=True)
    assert torch.allclose(grad, rho1, rtol=1e-10, atol=1e-12 * float(rho1.detach().abs().max()))
    if rho1.requires_grad:  # ScaledLoss(None, c): rho' is a constant
        (grad2,) = torch.autograd.grad(rho1.sum(), s, retain_graph=True)
        assert torch.allclose(grad2, rho2, rtol=1e-8, atol=1e-12 * float(rho2.detach().abs().max()))
    else:
        assert (rho2 == 0).all()
    # the factor of weighted_error: scale^2 s = rho, finite gradient everywhere (s = 0 included)
    positive = s > 0
    assert torch.allclose((scale * scale * s)[positive], rho[positive], rtol=1e-12, atol=1e-300)
    if scale.requires_grad:
        (scale_grad,) = torch.autograd.grad(scale.sum(), s)
        assert torch.isfinite(scale_grad).all()
        # sqrt(rho/s)' = (rho' s - rho) / (2 s^2 sqrt(rho/s)), checked where that is well conditioned
        middle = (s > 1e-2) & (s < 1e2) & (scale > 1e-3)
        expected = (rho1 * s - rho) / (2 * s * s * scale)
        assert torch.allclose(scale_grad[middle], expected[middle], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_small_residuals_and_the_sign_of_rho2(loss):
    s = torch.tensor([0.0, 1e-14], dtype=F64)
    rho, rho1, rho2 = loss.evaluate(s)
    slope = float(_reference(loss, 0)[1])  # 1 for the radius losses, c for ScaledLoss, a sigmoid for Tolerant
    assert math.isclose(float(loss.scale(s)[0]) ** 2, slope, rel_tol=1e-14)
    assert math.isclose(float(rho[1]), slope * 1e-14, rel_tol=1e-9) and float(rho[0]) == 0.0
    # rho'' > 0 (Triggs' correction active) exactly for the tolerant loss
    wide = torch.logspace(-6, 3, 50, dtype=F64)
    curved = loss.evaluate(wide)[2] > 0
    tolerant = isinstance(loss, nlls.TolerantLoss)
    assert bool(curved.any()) == tolerant and (tolerant or not curved.any())


def test_radius_losses_are_least_squares_inside():
    s = torch.tensor([1e-8], dtype=F64)
    for loss in (nlls.SoftLOneLoss(2.0), nlls.ArctanLoss(2.0), nlls.TukeyLoss(2.0)):
        assert math.isclose(float(loss(s)), 1e-8, rel_tol=1e-8)
        assert math.isclose(float(loss.scale(s)), 1.0, rel_tol=1e-8)


def test_tukey_is_twice_ceres_and_constant_beyond_the_radius():
    loss = nlls.TukeyLoss(1.5)
    a2 = 2.25
    s = torch.tensor([0.3, 1.2, a2, 3.0, 1e8], dtype=F64)
    rho, rho1, rho2 = loss.evaluate(s)
    ceres = a2 / 6 * (1 - (1 - s.clamp_max(a2) / a2) ** 3)  # Ceres' TukeyLoss(1.5)
    assert torch.allclose(rho, 2 * ceres)
    assert torch.equal(rho[2:], torch.full((3,), a2 / 3, dtype=F64))
    assert torch.equal(rho1[2:], torch.zeros(3, dtype=F64)) and torch.equal(rho2[3:], torch.zeros(2, dtype=F64))


def test_tolerant_loss_is_stable_far_from_a():
    a, b = 3.0, 1e-3
    loss = nlls.TolerantLoss(a, b)
    constant = b * math.log1p(math.exp(-a / b))
    s = torch.tensor([a + 1e4 * b, a + 1e6 * b, 1e300], dtype=F64)
    rho, rho1, rho2 = loss.evaluate(s)
    assert torch.allclose(rho, s - a - constant, rtol=1e-15)
    assert torch.equal(rho1, torch.ones(3, dtype=F64)) and torch.equal(rho2, torch.zeros(3, dtype=F64))
    # b so small that (s - a)/b overflows: still finite
    tiny = nlls.TolerantLoss(1.0, 1e-300)
    assert all(torch.isfinite(v).all() for v in tiny.evaluate(torch.tensor([0.5, 2.0, 1e300], dtype=F64)))
    # deep in the dead zone: exactly free, and the factor of weighted_error has a finite gradient
    s = torch.tensor([0.0, 1.0, 2.0], dtype=F64, requires_grad=True)  # (s - a)/b <= -1000
    scale = loss.scale(s)
    assert torch.equal(scale.detach(), torch.zeros(3, dtype=F64))
    assert torch.isfinite(torch.autograd.grad(scale.sum(), s)[0]).all()


# ---- fits: helpers ----------------------------------------------------------------------------
def _data(batch, points=30, outliers=4, seed=0, model="line"):
    """Per element: its own truth, noise, and outlier positions (+4..+8)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 2, points, dtype=F64).expand(batch, points).clone()
    truth = torch.tensor([[2.0, 1.0]] if model == "line" else [[1.5, 0.6]], dtype=F64)
    truth = truth + 0.2 * torch.randn(batch, 2, generator=generator, dtype=F64)
    y = _model(model, truth, x) + 0.05 * torch.randn(batch, points, generator=generator, dtype=F64)
    for element in range(batch):
        index = torch.randperm(points, generator=generator)[:outliers]
        y[element, index] += 4 + 4 * torch.rand(outliers, generator=generator, dtype=F64)
    return x, y, truth


def _model(model, p, x):
    if model == "line":
        return p[:, :1] * x + p[:, 1:]
    return p[:, :1] * torch.exp(p[:, 1:] * x)


def _objective(x, y, loss=None, model="line", start=None):
    """One cost function (a residual block of one point) per point, each through ``loss``."""
    start = torch.zeros(x.shape[0], 2, dtype=F64) if start is None else start.clone()
    p = nlls.Vector(tensor=start, name="p")

    def residual(optim_vars, aux_vars):
        (param,), (xv, yv) = optim_vars, aux_vars
        return _model(model, param.tensor, xv.tensor) - yv.tensor

    objective = nlls.Objective()
    for k in range(x.shape[1]):
        cf = nlls.AutoDiffCostFunction((p,), residual, 1, name=f"point{k}",
                                       aux_vars=(nlls.Variable(x[:, k:k + 1], name=f"x{k}"),
                                                 nlls.Variable(y[:, k:k + 1], name=f"y{k}")))
        objective.add(cf if loss is None else nlls.RobustCostFunction(cf, loss))
    return p, objective


def _solve(objective, iterations=100):
    info = nlls.LevenbergMarquardt(objective, max_iterations=iterations, abs_err_tolerance=0.0,
                                   rel_err_tolerance=1e-15).optimize()
    assert not bool((info.status == nlls.Status.FAILED).any()), info.message
    return info


def _fit(x, y, loss=None, model="line", start=None):
    p, objective = _objective(x, y, loss, model, start)
    _solve(objective)
    return p.tensor.clone(), objective.error_metric()


def _numeric_gradient(x, y, loss, model, at, step=1e-6):
    """Central differences of the robust objective 0.5 sum rho(r^2) at ``at`` (B, 2)."""
    columns = []
    for j in range(2):
        delta = torch.zeros_like(at)
        delta[:, j] = step
        _, plus = _objective(x, y, loss, model, at + delta)
        _, minus = _objective(x, y, loss, model, at - delta)
        columns.append((plus.error_metric() - minus.error_metric()) / (2 * step))
    return torch.stack(columns, dim=-1)


def _stationary(x, y, loss, start, iterations=20):
    """Newton's method on the line fit's robust objective, autograd derivatives of ``loss(s)``."""
    p = start.clone()
    for _ in range(iterations):
        p = p.detach().requires_grad_(True)
        residual = _model("line", p, x) - y
        (gradient,) = torch.autograd.grad(0.5 * loss(residual * residual).sum(), p, create_graph=True)
        hessian = torch.stack([torch.autograd.grad(gradient[:, j].sum(), p, retain_graph=True)[0]
                               for j in range(2)], dim=1)
        p = p - torch.linalg.solve(hessian, gradient[..., None])[..., 0]
    return p.detach()


# ---- limits ---------------------------------------------------------------------------------
def test_huge_radius_is_least_squares():
    x, y, _ = _data(batch=2)
    plain, plain_cost = _fit(x, y)
    for loss in (nlls.SoftLOneLoss(1e6), nlls.ArctanLoss(1e6), nlls.TukeyLoss(1e6), nlls.HuberLoss(1e6),
                 nlls.CauchyLoss(1e6), nlls.ScaledLoss(nlls.SoftLOneLoss(1e6), 1.0)):
        robust, cost = _fit(x, y, loss)
        assert torch.allclose(robust, plain, atol=1e-8), repr(loss)
        assert torch.allclose(cost, plain_cost, rtol=1e-8), repr(loss)
    # the tolerant loss with no dead zone and a sharp transition: least squares less b log 2 a point
    robust, cost = _fit(x, y, nlls.TolerantLoss(0.0, 1e-12))
    assert torch.allclose(robust, plain, atol=1e-8)
    assert torch.allclose(cost, plain_cost - 0.5 * x.shape[1] * 1e-12 * math.log(2), rtol=1e-8)


def test_scaled_loss_scales_the_cost_and_keeps_the_minimizer():
    x, y, _ = _data(batch=2, seed=3)
    plain, plain_cost = _fit(x, y)
    scaled, scaled_cost = _fit(x, y, nlls.ScaledLoss(None, 4.0))
    assert torch.allclose(scaled, plain, atol=1e-9) and torch.allclose(scaled_cost, 4.0 * plain_cost, rtol=1e-10)
    huber, huber_cost = _fit(x, y, nlls.HuberLoss(0.3))
    scaled, scaled_cost = _fit(x, y, nlls.ScaledLoss(nlls.HuberLoss(0.3), 0.25))
    assert torch.allclose(scaled, huber, atol=1e-9) and torch.allclose(scaled_cost, 0.25 * huber_cost, rtol=1e-10)
    assert not torch.allclose(huber, plain, atol=1e-3)  # the outliers matter, so the check can fail


def test_scaled_least_squares_is_a_cost_weight():
    """In a mix of blocks, ScaledLoss(None, c) on one block is ScaleCostWeight(sqrt(c)) on it."""
    x, y, _ = _data(batch=3, seed=4)

    def mixed(weighted):
        p, objective = _objective(x, y)
        target = nlls.Variable(torch.tensor([[3.0, -1.0]], dtype=F64), name="target")
        if weighted:
            prior = nlls.Difference(p, target, cost_weight=nlls.ScaleCostWeight(3.0, name="w"), name="prior")
        else:
            prior = nlls.RobustCostFunction(nlls.Difference(p, target, name="prior"), nlls.ScaledLoss(None, 9.0))
        objective.add(prior)
        _solve(objective)
        return p.tensor.clone(), objective.error_metric()

    (p1, cost1), (p2, cost2) = mixed(True), mixed(False)
    assert torch.allclose(p1, p2, atol=1e-10) and torch.allclose(cost1, cost2, rtol=1e-10)


# ---- SciPy --------------------------------------------------------------------------------------
SCIPY = [("soft_l1", nlls.SoftLOneLoss), ("arctan", nlls.ArctanLoss), ("huber", nlls.HuberLoss),
         ("cauchy", nlls.CauchyLoss)]


@pytest.mark.parametrize("model", ["line", "exp"])
@pytest.mark.parametrize("name, cls", SCIPY, ids=[n for n, _ in SCIPY])
def test_same_minimizer_as_scipy_least_squares(name, cls, model):
    """SciPy minimizes 0.5 f_scale^2 sum rho((f/f_scale)^2): our loss of radius f_scale, same cost."""
    f_scale = 0.4
    x, y, truth = _data(batch=2, seed=5, model=model)
    start = torch.tensor([[1.0, 0.5]], dtype=F64).expand(2, 2)
    fitted, cost = _fit(x, y, cls(f_scale), model, start)
    for element in range(2):
        xe, ye = x[element].numpy(), y[element].numpy()

        def residuals(p, xe=xe, ye=ye):
            return p[0] * xe + p[1] - ye if model == "line" else p[0] * np.exp(p[1] * xe) - ye

        result = scipy.optimize.least_squares(residuals, start[element].numpy(), loss=name, f_scale=f_scale,
                                              xtol=1e-15, ftol=1e-15, gtol=1e-15)
        assert result.success
        np.testing.assert_allclose(fitted[element].numpy(), result.x, rtol=0, atol=1e-6)
        assert math.isclose(float(cost[element]), result.cost, rel_tol=1e-9)
    assert float((fitted - truth).abs().max()) < 0.15  # the outliers barely count


# ---- Tukey and tolerant: stationary points, an independent minimizer -----------------------------
def test_tukey_ignores_outliers_beyond_its_radius():
    x, y, truth = _data(batch=2, seed=6)
    start, _ = _fit(x, y, nlls.HuberLoss(0.2))  # Tukey polishes a convex loss' solution
    tukey, _ = _fit(x, y, nlls.TukeyLoss(0.5), start=start)
    assert float((tukey - truth).abs().max()) < 0.1
    gradient = _numeric_gradient(x, y, nlls.TukeyLoss(0.5), "line", tukey)
    assert float(gradient.abs().max()) < 1e-7
    # the outliers (residuals past the radius) have no pull: dropping them changes nothing
    residual = (_model("line", tukey, x) - y).abs()
    assert bool((residual > 0.5).any()) and bool((residual > 0.5).sum(-1).eq(4).all())
    for element in range(2):
        keep = residual[element] <= 0.5
        xs, ys = x[element:element + 1, keep], y[element:element + 1, keep]
        alone, _ = _fit(xs, ys, nlls.TukeyLoss(0.5), start=start[element:element + 1])
        assert torch.allclose(alone, tukey[element:element + 1], atol=1e-10)


def _tolerant_numpy(a, b, s):
    x = (s - a) / b
    return b * (np.logaddexp(0.0, x) - np.logaddexp(0.0, -a / b)), 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("a, b", [(0.05, 0.01), (0.0, 0.02), (0.5, 0.2)])
def test_tolerant_fit_is_a_stationary_point(a, b):
    x, y, _ = _data(batch=2, seed=7, outliers=0)
    loss = nlls.TolerantLoss(a, b)
    fitted, cost = _fit(x, y, loss)
    assert float(_numeric_gradient(x, y, loss, "line", fitted).abs().max()) < 1e-7
    for element in range(2):  # an independent minimizer of the same objective
        xe, ye = x[element].numpy(), y[element].numpy()

        def objective(p, xe=xe, ye=ye):
            r = p[0] * xe + p[1] - ye
            rho, rho1 = _tolerant_numpy(a, b, r * r)
            return 0.5 * rho.sum(), np.array([(rho1 * r * xe).sum(), (rho1 * r).sum()])

        result = scipy.optimize.minimize(objective, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-12})
        np.testing.assert_allclose(fitted[element].numpy(), result.x, atol=1e-6)
        assert math.isclose(float(cost[element]), result.fun, rel_tol=1e-9, abs_tol=1e-15)


# ---- batches ------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [nlls.SoftLOneLoss(0.3), nlls.ArctanLoss(0.3), nlls.TolerantLoss(0.01, 0.005),
                                  nlls.ScaledLoss(nlls.CauchyLoss(0.3), 2.0)], ids=repr)
def test_a_batch_equals_separate_solves(loss):
    x, y, _ = _data(batch=3, seed=8)
    together, cost = _fit(x, y, loss)
    for element in range(3):
        alone, alone_cost = _fit(x[element:element + 1], y[element:element + 1], loss)
        assert torch.allclose(alone, together[element:element + 1], atol=1e-10)
        assert torch.allclose(alone_cost, cost[element:element + 1], rtol=1e-10)


# ---- the layer: gradients of a robust fit ---------------------------------------------------------
@pytest.mark.parametrize("loss", [nlls.SoftLOneLoss(0.3), nlls.TolerantLoss(0.01, 0.005), nlls.TukeyLoss(0.5),
                                  nlls.ScaledLoss(nlls.ArctanLoss(0.3), 2.0)], ids=repr)
def test_layer_gradients_of_a_robust_fit(loss):
    """Implicit (exact Hessian) and unrolled gradients agree with differences of the whole solve."""
    x, y, _ = _data(batch=2, seed=10)
    start, _ = _fit(x, y, nlls.HuberLoss(0.2))  # a convex fit first (Tukey, arctan are not convex)
    _, objective = _objective(x, y, loss, start=start)
    optimizer = nlls.LevenbergMarquardt(objective, max_iterations=100, abs_err_tolerance=0.0, rel_err_tolerance=1e-15)
    layer = nlls.OptimizationLayer(optimizer)
    generator = torch.Generator().manual_seed(11)
    direction = torch.randn(y.shape, generator=generator, dtype=F64)
    weights = torch.randn(2, 2, generator=generator, dtype=F64)

    def solve(values, **kwargs):
        inputs = {f"y{k}": values[:, k:k + 1] for k in range(values.shape[1])}
        solution, info = layer({**inputs, "p": start}, **kwargs)
        assert not bool((info.status == nlls.Status.FAILED).any()), info.message
        return solution["p"]

    leaf = y.clone().requires_grad_(True)
    implicit = torch.autograd.grad((weights * solve(leaf, backward_mode="implicit", hessian="exact")).sum(), leaf)[0]
    unrolled = torch.autograd.grad((weights * solve(leaf, backward_mode="unroll")).sum(), leaf)[0]
    # LM converges linearly on a robust loss (its model is reweighted least squares), so the
    # differences are taken of Newton-polished stationary points, accurate to rounding
    fitted = solve(y).detach()
    step = 1e-5
    plus, minus = (_stationary(x, y + sign * step * direction, loss, fitted) for sign in (1.0, -1.0))
    differences = float((weights * (plus - minus)).sum()) / (2 * step)
    assert math.isclose(float((implicit * direction).sum()), differences, rel_tol=1e-6)
    assert torch.allclose(unrolled, implicit, rtol=1e-5, atol=1e-8)
    if isinstance(loss, nlls.TukeyLoss):  # points past the radius have no say in the solution
        outliers = (_model("line", fitted, x) - y).abs() > 0.5
        assert bool(outliers.any()) and bool((implicit[outliers] == 0).all())


# ---- the corrected linearization ------------------------------------------------------------------
@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_corrected_linearization_keeps_the_exact_gradient(loss):
    """J'^T r' = rho' (wJ)^T (wr), J'^T J' = rho' J^T J (+ 2 rho'' (J^T r)(J^T r)^T where rho'' > 0)."""
    generator = torch.Generator().manual_seed(9)
    batch = 24
    x1 = nlls.SE3.rand(batch, generator, dtype=F64, name="x1")
    x2 = nlls.SE3.rand(batch, generator, dtype=F64, name="x2")
    noise = torch.logspace(-3, 0.5, batch, dtype=F64)[:, None] * torch.randn(batch, 6, generator=generator, dtype=F64)
    m = nlls.SE3(x1.between(x2).retract(noise).tensor, name="m")
    m.update(torch.cat([x1.between(x2).tensor[:3], m.tensor[3:]]))  # s = 0 for some
    inner = nlls.Between(x1, x2, m)
    robust = nlls.RobustCostFunction(inner, loss)
    jacobians, residual = robust.weighted_jacobians_error()
    plain_jacobians, plain_residual = inner.weighted_jacobians_error()
    s = (plain_residual ** 2).sum(-1)
    _, rho1, rho2 = loss.evaluate(s)
    for corrected, plain in zip(jacobians, plain_jacobians):
        gradient = (corrected.transpose(1, 2) @ residual[..., None])[..., 0]
        plain_gradient = (plain.transpose(1, 2) @ plain_residual[..., None])[..., 0]
        assert torch.allclose(gradient, rho1[:, None] * plain_gradient, atol=1e-12)
        second = 2 * rho2.clamp_min(0)[:, None, None] * plain_gradient[:, :, None] * plain_gradient[:, None, :]
        expected = rho1[:, None, None] * plain.transpose(1, 2) @ plain + second
        assert torch.allclose(corrected.transpose(1, 2) @ corrected, expected, atol=1e-10)
    # the gradient of 0.5 rho(s) by autograd through weighted_error()
    delta = torch.zeros(batch, 6, dtype=F64, requires_grad=True)
    original = x1.tensor
    x1.tensor = nlls.SE3.retract_tensor(original, delta)
    (autograd,) = torch.autograd.grad(0.5 * (robust.weighted_error() ** 2).sum(), delta)
    x1.tensor = original
    assert torch.allclose((jacobians[0].transpose(1, 2) @ residual[..., None])[..., 0], autograd, atol=1e-10)


@pytest.mark.parametrize("loss", [nlls.TukeyLoss(1.0), nlls.TolerantLoss(30.0, 1e-2),
                                  nlls.ScaledLoss(nlls.TukeyLoss(1.0), 2.0)], ids=repr)
def test_corrector_has_finite_gradients_where_blocks_drop_out(loss):
    """rho' = 0: Tukey past its radius and at s = a^2 exactly, the tolerant loss' dead zone."""
    p = nlls.Vector(tensor=torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 4.0], [0.1, 0.0]], dtype=F64,
                                        requires_grad=True), name="p")
    target = nlls.Variable(torch.zeros(1, 2, dtype=F64, requires_grad=True), name="t")
    robust = nlls.RobustCostFunction(nlls.Difference(p, target), loss)
    jacobians, residual = robust.weighted_jacobians_error()
    total = residual.sum() + sum(j.sum() for j in jacobians) + robust.weighted_error().sum()
    grads = torch.autograd.grad(total, (p.tensor, target.tensor))
    assert all(torch.isfinite(g).all() for g in grads)
    s = (p.tensor.detach() ** 2).sum(-1)
    dropped = loss.evaluate(s)[1] == 0
    assert bool(dropped.any())
    assert torch.equal(residual[dropped], torch.zeros_like(residual[dropped]))


# ---- values: equality, sharing, errors ----------------------------------------------------------
def test_losses_are_values():
    assert nlls.TolerantLoss(1, 2) == nlls.TolerantLoss(1.0, 2.0) != nlls.TolerantLoss(2.0, 1.0)
    assert nlls.ScaledLoss(nlls.HuberLoss(1), 2) == nlls.ScaledLoss(nlls.HuberLoss(1.0), 2.0)
    assert nlls.ScaledLoss(nlls.HuberLoss(1.0), 2.0) != nlls.ScaledLoss(nlls.CauchyLoss(1.0), 2.0)
    assert nlls.ScaledLoss(None, 2.0) != nlls.ScaledLoss(nlls.HuberLoss(1.0), 2.0)
    assert nlls.SoftLOneLoss(1.0) != nlls.ArctanLoss(1.0) and nlls.TukeyLoss(1.0) != nlls.HuberLoss(1.0)
    assert hash(nlls.ScaledLoss(nlls.TukeyLoss(1.0), 3.0)) == hash(nlls.ScaledLoss(nlls.TukeyLoss(1), 3))
    assert repr(nlls.ScaledLoss(nlls.HuberLoss(1.0), 2.0)) == "ScaledLoss(loss=HuberLoss(radius=1.0), scale=2.0)"
    assert repr(nlls.TolerantLoss(1.0, 0.5)) == "TolerantLoss(a=1.0, b=0.5)"
    assert nlls.ScaledLoss(nlls.TukeyLoss(2.0), 3.0).radius == 2.0
    with pytest.raises(AttributeError, match="TolerantLoss has no radius"):
        _ = nlls.TolerantLoss(1.0, 1.0).radius
    with pytest.raises(AttributeError, match="no radius"):
        _ = nlls.ScaledLoss(None, 1.0).radius


def test_equal_new_losses_are_shared_and_stacked():
    p = nlls.Vector(tensor=torch.ones(1, 2), name="p")
    losses = [nlls.TolerantLoss(1.0, 0.5), nlls.TolerantLoss(1.0, 0.5), nlls.ScaledLoss(nlls.TukeyLoss(1.0), 2.0),
              nlls.ScaledLoss(nlls.TukeyLoss(1.0), 2.0), nlls.ScaledLoss(nlls.TukeyLoss(1.0), 3.0)]
    costs = [nlls.RobustCostFunction(nlls.Difference(p, nlls.Variable(torch.zeros(1, 2), name=f"t{k}")), loss,
                                     name=f"r{k}") for k, loss in enumerate(losses)]
    assert costs[0].loss is costs[1].loss and costs[2].loss is costs[3].loss
    objective = nlls.Objective()
    for cf in costs:
        objective.add(cf)
    assert sorted(g.size for g in Evaluator(objective).groups) == [1, 2, 2]


def test_bad_arguments():
    for cls in (nlls.SoftLOneLoss, nlls.ArctanLoss, nlls.TukeyLoss):
        with pytest.raises(ValueError, match=f"{cls.__name__}: radius must be positive"):
            cls(-1.0)
    with pytest.raises(ValueError, match="TolerantLoss: a must be non-negative and finite"):
        nlls.TolerantLoss(-0.1, 1.0)
    with pytest.raises(ValueError, match="TolerantLoss: b must be positive and finite"):
        nlls.TolerantLoss(1.0, 0.0)
    with pytest.raises(TypeError, match="TolerantLoss: b must be a number"):
        nlls.TolerantLoss(1.0, "1")
    with pytest.raises(ValueError, match="ScaledLoss: scale must be positive and finite"):
        nlls.ScaledLoss(None, float("nan"))
    with pytest.raises(TypeError, match="ScaledLoss: scale must be a number, got True"):
        nlls.ScaledLoss(nlls.HuberLoss(1.0), True)
    with pytest.raises(TypeError, match="ScaledLoss: loss must be a RobustLoss or None, got str"):
        nlls.ScaledLoss("huber", 1.0)
