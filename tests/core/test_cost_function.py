import pytest
import torch

import nlls
from tests.problems import QuadFit, exp_error, quad_data


def _central_differences(cf, eps=1e-6):
    """Jacobians of cf.error() w.r.t. the tangent of each optim var, by central differences."""
    out = []
    for var in cf.optim_vars:
        original = var.tensor
        columns = []
        for k in range(var.dof()):
            delta = torch.zeros(original.shape[0], var.dof(), dtype=original.dtype)
            delta[:, k] = eps
            var.tensor = type(var).retract_tensor(original, delta)
            plus = cf.error()
            var.tensor = type(var).retract_tensor(original, -delta)
            minus = cf.error()
            columns.append((plus - minus) / (2 * eps))
        var.tensor = original
        out.append(torch.stack(columns, dim=-1))
    return out


def _two_var_error(optim, aux):
    p, q = optim
    t, = aux
    return torch.cat([
        torch.sin(p.tensor[:, :1] * t.tensor) * q.tensor,
        (p.tensor ** 2).sum(1, keepdim=True) * torch.exp(q.tensor[:, :1]) - t.tensor,
    ], dim=1)


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_autodiff_jacobians_match_finite_differences(mode):
    torch.manual_seed(0)
    p = nlls.Vector(tensor=torch.randn(5, 2, dtype=torch.float64), name="p")
    q = nlls.Vector(tensor=torch.randn(5, 3, dtype=torch.float64), name="q")
    t = nlls.Variable(torch.randn(5, 1, dtype=torch.float64), name="t")
    cf = nlls.AutoDiffCostFunction((p, q), _two_var_error, 4, aux_vars=(t,), autograd_mode=mode)
    jacobians, error = cf.jacobians()
    torch.testing.assert_close(error, cf.error())
    assert [j.shape for j in jacobians] == [(5, 4, 2), (5, 4, 3)]
    for jac, ref in zip(jacobians, _central_differences(cf)):
        torch.testing.assert_close(jac, ref, rtol=1e-7, atol=1e-8)


def test_autodiff_matches_analytic_and_broadcasts_batch_one_variables():
    x, y, _ = quad_data(6, points=7)
    ab = nlls.Vector(tensor=torch.randn(1, 2, dtype=torch.float64), name="ab")
    X, Y = nlls.Variable(x, name="x"), nlls.Variable(y, name="y")
    analytic = QuadFit(ab, X, Y)

    def err(optim, aux):
        return optim[0].tensor[:, :1] * aux[0].tensor ** 2 + optim[0].tensor[:, 1:] - aux[1].tensor

    for mode in ("forward", "reverse"):
        auto = nlls.AutoDiffCostFunction((ab,), err, 7, aux_vars=(X, Y), autograd_mode=mode)
        (ja,), ea = analytic.jacobians()
        (jb,), eb = auto.jacobians()
        assert jb.shape == (6, 7, 2)  # the batch-1 variable is broadcast, not summed over
        torch.testing.assert_close(ja, jb)
        torch.testing.assert_close(ea, eb)


def test_auto_mode_picks_forward_for_tall_and_reverse_for_wide():
    p = nlls.Vector(tensor=torch.randn(2, 3, dtype=torch.float64), name="p")
    tall = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor.repeat(1, 3), 9)
    wide = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor.sum(1, keepdim=True), 1)
    assert tall._mode(batch=10_000) == "forward" and wide._mode(batch=10_000) == "reverse"
    assert tall._mode(batch=1) == "reverse"  # small stacks: reverse mode's fixed cost is lower
    (j,), _ = wide.jacobians()
    torch.testing.assert_close(j, torch.ones(2, 1, 3, dtype=torch.float64))


@pytest.mark.parametrize("weight_kind", ["scale", "diagonal"])
def test_weights_scale_error_and_jacobians(weight_kind):
    x, y, _ = quad_data(3, points=4)
    ab = nlls.Vector(tensor=torch.randn(3, 2, dtype=torch.float64), name="ab")
    X, Y = nlls.Variable(x, name="x"), nlls.Variable(y, name="y")
    if weight_kind == "scale":
        w = torch.rand(3, 1, dtype=torch.float64) + 0.5
        weight = nlls.ScaleCostWeight(w)
    else:
        w = torch.rand(3, 4, dtype=torch.float64) + 0.5
        weight = nlls.DiagonalCostWeight(w)
    cf = QuadFit(ab, X, Y, cost_weight=weight)
    plain = QuadFit(ab, X, Y)
    torch.testing.assert_close(cf.weighted_error(), w * plain.error())
    (jw,), ew = cf.weighted_jacobians_error()
    (j,), e = plain.jacobians()
    torch.testing.assert_close(jw, w[..., None] * j)
    torch.testing.assert_close(ew, w * e)


def test_weight_accepts_float_and_variable_and_rejects_bad_shapes():
    w = nlls.ScaleCostWeight(2.0)
    assert w.scale.shape == (1, 1)
    shared = nlls.Variable(torch.ones(1, 1), name="w")
    assert nlls.ScaleCostWeight(shared).scale is shared
    assert nlls.DiagonalCostWeight(torch.ones(3)).diagonal.shape == (1, 3)
    with pytest.raises(ValueError, match=r"scale must have shape \(B, 1\)"):
        nlls.ScaleCostWeight(torch.ones(2, 3))
    ab = nlls.Vector(2, name="ab")
    cf = QuadFit(ab, nlls.Variable(torch.zeros(1, 5), name="x"), nlls.Variable(torch.zeros(1, 5), name="y"),
                 cost_weight=nlls.DiagonalCostWeight(torch.ones(1, 3)), name="fit")
    with pytest.raises(ValueError, match="'fit'.*3 entries.*dimension 5"):
        nlls.Objective().add(cf)


def test_learnable_weight_gets_gradient():
    x, y, _ = quad_data(2, points=5)
    w = torch.full((2, 1), 3.0, dtype=torch.float64, requires_grad=True)
    ab = nlls.Vector(tensor=torch.zeros(2, 2, dtype=torch.float64), name="ab")
    cf = QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y"), cost_weight=nlls.ScaleCostWeight(w))
    loss = (cf.weighted_error() ** 2).sum()
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * 3.0 * (cf.error() ** 2).sum(1, keepdim=True).detach())


def test_constructor_errors_name_the_cost_function():
    ab = nlls.Vector(2, name="ab")
    data = nlls.Variable(torch.zeros(1, 3), name="d")
    with pytest.raises(TypeError, match="'bad'.*must be a Manifold"):
        nlls.AutoDiffCostFunction((data,), exp_error, 3, name="bad")
    with pytest.raises(ValueError, match="'bad'.*dim must be a positive int"):
        nlls.AutoDiffCostFunction((ab,), exp_error, 0, name="bad")
    with pytest.raises(ValueError, match="'bad'.*autograd_mode"):
        nlls.AutoDiffCostFunction((ab,), exp_error, 3, name="bad", autograd_mode="sideways")
    with pytest.raises(TypeError, match="'bad'.*callable"):
        nlls.AutoDiffCostFunction((ab,), "not a function", 3, name="bad")


def test_matrix_weight_from_information():
    torch.manual_seed(3)
    m = torch.randn(3, 3, dtype=torch.float64)
    information = m @ m.T + 3 * torch.eye(3, dtype=torch.float64)
    weight = nlls.MatrixCostWeight.from_information(information)
    r = torch.randn(5, 3, dtype=torch.float64)
    w_r = weight.weight_error(r)
    torch.testing.assert_close((w_r ** 2).sum(1), torch.einsum("bi,ij,bj->b", r, information, r))
    jac = torch.randn(5, 3, 2, dtype=torch.float64)
    (wj,), _ = weight.weight_jacobians([jac], r)
    torch.testing.assert_close(wj.mT @ w_r[..., None], jac.mT @ (information @ r[..., None]))
    with pytest.raises(ValueError, match="not positive definite"):
        nlls.MatrixCostWeight.from_information(-information)
    p = nlls.Vector(tensor=torch.zeros(1, 2), name="p")
    cf = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor, 2, name="short",
                                   cost_weight=nlls.MatrixCostWeight(torch.eye(3)))
    with pytest.raises(ValueError, match="'short'.*3x3.*dimension 2"):
        nlls.Objective().add(cf)
