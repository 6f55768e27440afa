import numpy as np
import pytest
import scipy.special
import torch

import nlls
from tests.problems import exp_data, exp_error

F64 = torch.float64


def _smooth_np(optim, aux):
    """A residual computed in numpy/scipy only (no torch graph)."""
    p = optim[0].tensor.numpy()
    q = optim[1].tensor.numpy()
    t = aux[0].tensor.numpy()
    return np.concatenate([
        scipy.special.erf(p[:, :1] * t) + q * p[:, 1:],
        np.exp(0.3 * p.sum(1, keepdims=True)) * np.cos(q[:, :1] + t),
    ], axis=1)


def _smooth_torch(optim, aux):
    p, q = optim[0].tensor, optim[1].tensor
    t = aux[0].tensor
    return torch.cat([
        torch.erf(p[:, :1] * t) + q * p[:, 1:],
        torch.exp(0.3 * p.sum(1, keepdim=True)) * torch.cos(q[:, :1] + t),
    ], dim=1)


def _pair(scheme="central", batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = nlls.Vector(tensor=torch.randn(batch, 2, generator=g, dtype=F64), name="p")
    q = nlls.Vector(tensor=torch.randn(batch, 3, generator=g, dtype=F64), name="q")
    t = nlls.Variable(torch.randn(batch, 1, generator=g, dtype=F64), name="t")
    numeric = nlls.NumericDiffCostFunction((p, q), _smooth_np, 4, aux_vars=(t,), scheme=scheme, name="numeric")
    auto = nlls.AutoDiffCostFunction((p, q), _smooth_torch, 4, aux_vars=(t,), name="auto")
    return numeric, auto, t


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_jacobians_match_autodiff_on_vectors(scheme):
    numeric, auto, _ = _pair(scheme)
    (jn_p, jn_q), en = numeric.jacobians()
    (ja_p, ja_q), ea = auto.jacobians()
    torch.testing.assert_close(en, ea, rtol=0, atol=1e-14)
    tol = 1e-8 if scheme == "central" else 1e-6
    torch.testing.assert_close(jn_p, ja_p, rtol=0, atol=tol)
    torch.testing.assert_close(jn_q, ja_q, rtol=0, atol=tol)


def test_step_is_relative_to_magnitude():
    calls = []

    def cubic(optim, aux):
        calls.append(optim[0].tensor.shape[0])
        return optim[0].tensor ** 3

    x = nlls.Vector(tensor=torch.tensor([[1e6, 1e-3]], dtype=F64), name="x")
    cf = nlls.NumericDiffCostFunction((x,), cubic, 2)
    (jac,), _ = cf.jacobians()
    expected = torch.diag_embed(3 * x.tensor ** 2)
    torch.testing.assert_close(jac, expected, rtol=1e-8, atol=1e-8)
    assert calls == [5]  # one stacked call: the point and 2 * 2 perturbations


def test_all_perturbations_of_a_group_go_in_one_call():
    calls = []

    def err(optim, aux):
        calls.append(optim[0].tensor.shape[0])
        return optim[0].tensor - aux[0].tensor

    obj = nlls.Objective()
    for i in range(50):
        v = nlls.Vector(tensor=torch.zeros(2, 3, dtype=F64), name=f"v{i}")
        obj.add(nlls.NumericDiffCostFunction((v,), err, 3, aux_vars=(nlls.Variable(torch.ones(1, 3, dtype=F64), name=f"t{i}"),)))
    # an exact fit: one step leaves a cost at rounding level, which an absolute tolerance accepts at
    # once (without one the gradient test would linearize again, and the call count below is of one step)
    info = nlls.GaussNewton(obj, max_iterations=1, abs_err_tolerance=1e-20).optimize()
    assert info.converged.all()
    # initial error, one Jacobian call (50 costs x batch 2 x 7 copies), one candidate error
    assert calls == [100, 700, 100]


def test_wrong_shape_and_non_finite_values_name_the_cost_function():
    x = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="x")
    bad_shape = nlls.NumericDiffCostFunction((x,), lambda o, a: np.zeros((2, 3)), 2, name="shape")
    with pytest.raises(ValueError, match=r"'shape': err_fn returned shape \(2, 3\) for 2 rows, expected \(2, 2\)"):
        bad_shape.error()
    def log_np(optim, aux):
        with np.errstate(all="ignore"):
            return np.log(optim[0].tensor.numpy())

    # non-finite values are data, kept in their element (the optimizer fails that element)
    y = nlls.Vector(tensor=torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64), name="y")
    (jac,), error = nlls.NumericDiffCostFunction((y,), log_np, 2, name="logzero").jacobians()
    assert bool(torch.isfinite(error[0]).all()) and bool(torch.isfinite(jac[0]).all())
    assert error[1, 0] == -np.inf and not bool(torch.isfinite(jac[1, 0]).all())
    with pytest.raises(ValueError, match="scheme"):
        nlls.NumericDiffCostFunction((x,), lambda o, a: o[0].tensor, 2, scheme="backward")
    with pytest.raises(ValueError, match="step"):
        nlls.NumericDiffCostFunction((x,), lambda o, a: o[0].tensor, 2, step=-1.0)


def test_aux_gradients_of_error_and_jacobians_match_autodiff():
    numeric, auto, t = _pair()
    t.tensor = t.tensor.clone().requires_grad_(True)
    weights_r = torch.randn(4, 4, dtype=F64)
    weights_j = torch.randn(4, 4, 5, dtype=F64)

    def scalar(cf):
        jacobians, error = cf.jacobians()
        return (weights_r * error).sum() + (weights_j * torch.cat(jacobians, -1)).sum()

    gn, = torch.autograd.grad(scalar(numeric), t.tensor)
    ga, = torch.autograd.grad(scalar(auto), t.tensor)
    torch.testing.assert_close(gn, ga, rtol=1e-6, atol=1e-7)
    gn, = torch.autograd.grad((weights_r * numeric.error()).sum(), t.tensor)
    ga, = torch.autograd.grad((weights_r * auto.error()).sum(), t.tensor)
    torch.testing.assert_close(gn, ga, rtol=1e-8, atol=1e-9)


def _line_np(optim, aux):
    mc = optim[0].tensor.numpy()
    x, y = aux[0].tensor.numpy(), aux[1].tensor.numpy()
    return mc[:, :1] * x + mc[:, 1:] - y


def test_line_fit_through_implicit_layer_matches_closed_form():
    mc = nlls.Vector(2, name="mc", dtype=F64)
    X = nlls.Variable(torch.zeros(1, 4, dtype=F64), name="x")
    Y = nlls.Variable(torch.zeros(1, 4, dtype=F64), name="y")
    obj = nlls.Objective()
    obj.add(nlls.NumericDiffCostFunction((mc,), _line_np, 4, aux_vars=(X, Y)))
    layer = nlls.OptimizationLayer(nlls.GaussNewton(obj, max_iterations=10))
    x = torch.tensor([[0.0, 1, 2, 3]], dtype=F64, requires_grad=True)
    y = torch.tensor([[-1.0, 0.2, 0.7, 2.5]], dtype=F64, requires_grad=True)
    solution, info = layer({"x": x, "y": y}, backward_mode="implicit")
    m = solution["mc"][:, 0]
    assert abs(m.item() - 1.1) < 1e-10
    gx, gy = torch.autograd.grad(m.sum(), (x, y))
    torch.testing.assert_close(gx, torch.tensor([[0.34, 0.14, -0.2, -0.28]], dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(gy, torch.tensor([[-0.3, -0.1, 0.1, 0.3]], dtype=F64), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cannot differentiate through NumericDiffCostFunction"):
        layer({"x": x, "y": y}, backward_mode="unroll")
    with pytest.raises(ValueError, match="hessian='exact'"):
        layer({"x": x, "y": y}, hessian="exact")


def test_mixed_objective_numeric_autodiff_analytic_matches_all_autodiff():
    x, y, _ = exp_data(3, points=20, seed=5)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(3, 1)

    def exp_np(optim, aux):
        abc = optim[0].tensor.numpy()
        xs, ys = aux[0].tensor.numpy(), aux[1].tensor.numpy()
        return abc[:, :1] * np.exp(-abc[:, 1:2] * xs) + abc[:, 2:] - ys

    class Prior(nlls.CostFunction):  # analytic: 0.1 * (abc - 1)
        def __init__(self, v):
            super().__init__((v,), name="prior")
            self.v = v

        def dim(self):
            return 3

        def error(self):
            return 0.1 * (self.v.tensor - 1.0)

        def jacobians(self):
            eye = 0.1 * torch.eye(3, dtype=self.v.dtype).expand(self.v.batch_size, 3, 3)
            return [eye], self.error()

    solutions = []
    for numeric in (True, False):
        p = nlls.Vector(tensor=init.clone(), name="p")
        obj = nlls.Objective()
        first_half = (nlls.Variable(x[:, :10], name="x1"), nlls.Variable(y[:, :10], name="y1"))
        second_half = (nlls.Variable(x[:, 10:], name="x2"), nlls.Variable(y[:, 10:], name="y2"))
        if numeric:
            obj.add(nlls.NumericDiffCostFunction((p,), exp_np, 10, aux_vars=first_half, name="a"))
        else:
            obj.add(nlls.AutoDiffCostFunction((p,), exp_error, 10, aux_vars=first_half, name="a"))
        obj.add(nlls.AutoDiffCostFunction((p,), exp_error, 10, aux_vars=second_half, name="b"))
        obj.add(Prior(p))
        info = nlls.LevenbergMarquardt(obj, max_iterations=100, abs_err_tolerance=0, rel_err_tolerance=0).optimize()
        assert info.converged.all()
        solutions.append(p.tensor)
    torch.testing.assert_close(solutions[0], solutions[1], rtol=0, atol=1e-8)


def _se3_points_np(optim, aux):
    pose = optim[0].tensor.numpy()  # (B, 3, 4) = [R | t]
    points = aux[0].tensor.numpy().reshape(-1, 4, 3)
    moved = np.einsum("bij,bkj->bki", pose[:, :, :3], points) + pose[:, None, :, 3]
    return (np.sin(moved) + moved ** 2).reshape(-1, 12)


def _se3_points_torch(optim, aux):
    pose = optim[0].tensor
    points = aux[0].tensor.reshape(-1, 4, 3)
    moved = torch.einsum("bij,bkj->bki", pose[:, :, :3], points) + pose[:, None, :, 3]
    return (torch.sin(moved) + moved ** 2).reshape(-1, 12)


@pytest.mark.parametrize("scheme, tolerance", [("central", 1e-8), ("forward", 1e-6)])
def test_jacobians_match_autodiff_on_se3(scheme, tolerance):
    g = torch.Generator().manual_seed(7)
    pose = nlls.SE3.rand(5, generator=g, dtype=F64)
    pose = nlls.SE3(tensor=pose.tensor, name="pose")
    points = nlls.Variable(torch.randn(5, 12, generator=g, dtype=F64), name="points")
    numeric = nlls.NumericDiffCostFunction((pose,), _se3_points_np, 12, aux_vars=(points,), scheme=scheme)
    auto = nlls.AutoDiffCostFunction((pose,), _se3_points_torch, 12, aux_vars=(points,))
    (jn,), en = numeric.jacobians()
    (ja,), ea = auto.jacobians()
    assert jn.shape == (5, 12, 6)  # on the 6-dof tangent, not the 12 matrix entries
    torch.testing.assert_close(en, ea, rtol=0, atol=1e-13)
    torch.testing.assert_close(jn, ja, rtol=0, atol=tolerance * max(1.0, float(ja.abs().max())))
