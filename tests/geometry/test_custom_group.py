"""The extension contract: a Lie group defined outside the library by its abstract methods alone
is a variable like any other (solved with Gauss-Newton, by Between/Difference and by autodiff);
a group or manifold missing a required method cannot be instantiated; the derived defaults
(adjoint, right Jacobians, transform_to) agree with the built-in groups' closed forms."""
import numpy as np
import pytest
import torch

import nlls
from nlls.geometry import LieGroup

from .conftest import tangents


class Scale(nlls.LieGroup):
    """The positive reals under multiplication, stored as ``(B, 1)``; the tangent is ``log s``."""

    DOF = 1
    EVENT_SHAPE = (1,)
    STORAGE = "a positive scale"

    @classmethod
    def identity_tensor(cls, batch_size, dtype, device):
        return torch.ones(batch_size, 1, dtype=dtype, device=device)

    @classmethod
    def exp_tensor(cls, tangent):
        return torch.exp(tangent)

    @classmethod
    def log_tensor(cls, tensor):
        return torch.log(tensor)

    @classmethod
    def compose_tensor(cls, a, b):
        return a * b

    @classmethod
    def inverse_tensor(cls, a):
        return 1.0 / a

    @classmethod
    def deviation(cls, tensor):
        return (tensor[:, 0] <= 0).to(tensor.dtype)  # 1 (refused) where not positive


def _double(values):
    return torch.tensor(values, dtype=torch.float64)


def test_custom_group_between_and_difference_solve_with_gauss_newton():
    """A loop of four scales with inconsistent ratio measurements and a prior: in log space the
    problem is linear least squares, whose solution the optimizer must reach."""
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]
    ratios = _double([[2.0, 0.5, 3.0, 0.4, 1.1], [1.5, 1.2, 0.7, 0.9, 1.6]])  # (B=2, edges)
    weights = [1.0, 2.0, 1.0, 0.5, 3.0]
    prior, prior_weight = 2.0, 10.0
    scales = [Scale(_double([[1.0], [3.0]]), name=f"s{i}") for i in range(4)]
    objective = nlls.Objective()
    for k, (i, j) in enumerate(edges):
        objective.add(nlls.Between(scales[i], scales[j], Scale(ratios[:, k:k + 1], name=f"m{k}"),
                                   cost_weight=weights[k], name=f"ratio{k}"))
    objective.add(nlls.Difference(scales[0], Scale(_double([[prior]]), name="target"),
                                  cost_weight=prior_weight, name="prior"))
    info = nlls.GaussNewton(objective, max_iterations=10).optimize()
    assert bool(info.converged.all())
    for b in range(2):
        rows, rhs = [], []  # weighted rows of u_j - u_i = log m, u_0 = log prior (u = log s)
        for k, (i, j) in enumerate(edges):
            row = np.zeros(4)
            row[i], row[j] = -weights[k], weights[k]
            rows.append(row)
            rhs.append(weights[k] * np.log(float(ratios[b, k])))
        rows.append(np.eye(4)[0] * prior_weight)
        rhs.append(prior_weight * np.log(prior))
        expected = np.exp(np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0])
        got = np.array([float(s.tensor[b, 0]) for s in scales])
        np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert not np.allclose(expected, expected[0])  # a non-trivial answer


def test_custom_group_in_an_autodiff_cost_function():
    """Fit ``y = s x`` by a scale variable: the least-squares answer is ``sum(x y) / sum(x^2)``."""
    x = _double([[1.0, 2.0, 3.0, 4.0]])
    y = _double([[2.1, 3.9, 6.2, 7.8]])
    s = Scale(_double([[0.5]]), name="s")
    cost = nlls.AutoDiffCostFunction(
        (s,), lambda optim, aux: optim[0].tensor * aux[0].tensor - aux[1].tensor, 4,
        aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")), name="fit")
    objective = nlls.Objective()
    objective.add(cost)
    info = nlls.GaussNewton(objective, max_iterations=20).optimize()
    assert bool(info.converged.all())
    expected = float((x * y).sum() / (x * x).sum())
    assert float(s.tensor[0, 0]) == pytest.approx(expected, rel=1e-10)


def test_custom_group_derived_operations():
    g = Scale(_double([[2.0], [0.25]]), name="g")
    h = Scale(_double([[6.0], [1.0]]), name="h")
    assert g.dof() == 1 and Scale.identity(3).shape == (3, 1)
    torch.testing.assert_close(g.local(h), torch.log(h.tensor / g.tensor))
    torch.testing.assert_close(g.retract(g.local(h)).tensor, h.tensor)
    jacobians = []
    g.between(h, jacobians)
    torch.testing.assert_close(jacobians[0], -torch.ones(2, 1, 1, dtype=torch.float64))
    assert Scale.rand(5, torch.Generator().manual_seed(0), dtype=torch.float64).tensor.min() > 0
    with pytest.raises(ValueError, match=r"Scale 'bad': batch element 1 is not a valid Scale"):
        Scale(_double([[1.0], [-1.0]]), name="bad")
    with pytest.raises(NotImplementedError, match="does not act on points"):
        g.transform_from(torch.zeros(2, 1))


def test_missing_abstract_method_cannot_be_instantiated():
    class NoLog(nlls.LieGroup):
        DOF = 1
        EVENT_SHAPE = (1,)
        identity_tensor = Scale.__dict__["identity_tensor"]
        exp_tensor = Scale.__dict__["exp_tensor"]
        compose_tensor = Scale.__dict__["compose_tensor"]
        inverse_tensor = Scale.__dict__["inverse_tensor"]
        deviation = Scale.__dict__["deviation"]

    with pytest.raises(TypeError, match="log_tensor"):
        NoLog()
    with pytest.raises(TypeError, match="log_tensor"):
        NoLog.from_tensor(torch.ones(1, 1))

    class NoLocal(nlls.Manifold):
        check_tensor = classmethod(lambda cls, tensor, name: None)
        dof_of = classmethod(lambda cls, event_shape: event_shape[0])
        retract_tensor = classmethod(lambda cls, tensor, delta: tensor + delta)

    with pytest.raises(TypeError, match="local_tensor"):
        NoLocal(torch.zeros(1, 2))


def test_group_without_dof_is_refused_at_definition():
    with pytest.raises(TypeError, match="DOF .* EVENT_SHAPE"):
        class NoShape(Scale):
            DOF = None


def test_derived_defaults_match_closed_forms(group):
    """The base class's forward-mode adjoint, Jr, Jr^-1 and transform_to, run on each built-in
    group (conftest's ``GROUPS``), equal that group's analytic formulas."""
    generator = torch.Generator().manual_seed(7)
    tangent = 0.8 * tangents(group, 10, generator, special=False)
    tensor = group.exp_tensor(tangents(group, 10, generator, special=False))
    torch.testing.assert_close(LieGroup.adjoint_tensor.__func__(group, tensor),
                               group.adjoint_tensor(tensor), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(LieGroup.jr_tensor.__func__(group, tangent),
                               group.jr_tensor(tangent), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(LieGroup.jr_inv_tensor.__func__(group, tangent),
                               group.jr_inv_tensor(tangent), rtol=1e-10, atol=1e-10)
    points = torch.randn(10, group.POINT_DIM, generator=generator, dtype=torch.float64)
    derived = LieGroup.transform_to_tensor.__func__(group, tensor, points, True)
    for got, expected in zip(derived, group.transform_to_tensor(tensor, points, True)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
