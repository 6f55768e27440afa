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


FLAGS = ("has_autograd_graph", "has_second_derivatives", "capturable")


def test_capability_flags_are_declared_per_class_and_wrappers_report_the_inner_ones():
    ab = nlls.Vector(tensor=torch.zeros(2, 2, dtype=torch.float64), name="ab")
    x, y, _ = quad_data(2, points=3)
    data = (nlls.Variable(x, name="x"), nlls.Variable(y, name="y"))

    def fit(optim, aux):
        return optim[0].tensor[:, :1] * aux[0].tensor ** 2 + optim[0].tensor[:, 1:] - aux[1].tensor

    autodiff = nlls.AutoDiffCostFunction((ab,), fit, 3, aux_vars=data, name="auto")
    numeric = nlls.NumericDiffCostFunction((ab,), fit, 3, aux_vars=data, name="numeric")
    analytic = QuadFit(ab, *data, name="analytic")

    class HostSide(QuadFit):  # a user class that declares it calls host code
        capturable = False

    host = HostSide(ab, *data, name="host")
    expected = {
        autodiff: (True, True, True), analytic: (True, True, True),
        numeric: (False, False, False), host: (True, True, False),
    }
    for cf, flags in expected.items():
        assert tuple(getattr(cf, flag) for flag in FLAGS) == flags, cf.name
        robust = nlls.RobustCostFunction(cf, nlls.HuberLoss(1.0))
        assert tuple(getattr(robust, flag) for flag in FLAGS) == flags, cf.name
        twice = nlls.RobustCostFunction(robust, nlls.CauchyLoss(1.0), name=f"{cf.name}_twice")
        assert tuple(getattr(twice, flag) for flag in FLAGS) == flags, cf.name
    assert all(getattr(nlls.CostFunction, flag) is True for flag in FLAGS)
    with pytest.raises(AttributeError):
        nlls.RobustCostFunction(numeric, nlls.HuberLoss(1.0)).capturable = True
