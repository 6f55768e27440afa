"""Cost weights: values, Jacobians, shapes, learnable data and stack keys."""
import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator
from nlls.core.stacking import signature
from tests.problems import QuadFit, quad_data


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


def test_weight_follows_the_residual_dtype_and_broadcasts_batch_one():
    error = torch.randn(4, 3, dtype=torch.float64)
    jac = torch.randn(4, 3, 2, dtype=torch.float64)
    for weight, w in [(nlls.ScaleCostWeight(torch.tensor(2.5)), torch.full((1, 1), 2.5)),
                      (nlls.DiagonalCostWeight(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([[1.0, 2.0, 3.0]]))]:
        assert weight.aux_vars[0].dtype == torch.float32
        out = weight.weight_error(error)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, w.double() * error)
        (wj,), we = weight.weight_jacobians([jac], error)
        torch.testing.assert_close(wj, w.double()[..., None] * jac)
        torch.testing.assert_close(we, out)


def test_diagonal_of_one_entry_scales_every_entry_and_float_is_accepted():
    p = nlls.Vector(tensor=torch.ones(2, 3, dtype=torch.float64), name="p")
    for weight in (nlls.DiagonalCostWeight(2.0, name="w"), nlls.DiagonalCostWeight(torch.full((1, 1), 2.0, dtype=torch.float64))):
        cf = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor, 3, cost_weight=weight)
        nlls.Objective().add(cf)  # one entry fits any dimension
        torch.testing.assert_close(cf.weighted_error(), torch.full((2, 3), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"diagonal must have shape \(B, dim\)"):
        nlls.DiagonalCostWeight(torch.ones(2, 3, 1))
    with pytest.raises(TypeError, match="expected a torch.Tensor, got str"):
        nlls.ScaleCostWeight("heavy")


def test_repr_names_the_weight_variable():
    assert repr(nlls.ScaleCostWeight(2.0, name="w")).startswith("ScaleCostWeight(Variable(name='w'")
    assert repr(nlls.DiagonalCostWeight(torch.ones(3), name="d")).startswith("DiagonalCostWeight(Variable(name='d'")
    assert repr(nlls.MatrixCostWeight(torch.eye(2), name="m")).startswith("MatrixCostWeight(Variable(name='m'")


def test_weight_data_is_updated_by_name_through_the_objective():
    p = nlls.Vector(tensor=torch.ones(2, 2, dtype=torch.float64), name="p")
    cf = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor, 2, name="c",
                                   cost_weight=nlls.DiagonalCostWeight(torch.ones(2, dtype=torch.float64), name="d"))
    objective = nlls.Objective().add(cf)
    objective.update({"d": torch.tensor([[1.0, 3.0], [2.0, 0.0]], dtype=torch.float64)})
    torch.testing.assert_close(objective.error(), torch.tensor([[1.0, 3.0], [2.0, 0.0]], dtype=torch.float64))


def _prior(p, weight, name):
    return nlls.AutoDiffCostFunction((p,), _identity, 2, cost_weight=weight, name=name)


def _identity(optim, aux):
    return optim[0].tensor


def test_weights_of_one_kind_stack_and_other_kinds_do_not():
    points = [nlls.Vector(tensor=torch.ones(1, 2, dtype=torch.float64), name=f"p{i}") for i in range(6)]
    costs = [
        _prior(points[0], nlls.ScaleCostWeight(2.0), "s0"),
        _prior(points[1], nlls.ScaleCostWeight(3.0), "s1"),  # other data, same kind: stacked
        _prior(points[2], nlls.DiagonalCostWeight(torch.ones(2, dtype=torch.float64)), "d0"),
        _prior(points[3], nlls.DiagonalCostWeight(torch.ones(1, 1, dtype=torch.float64)), "d1"),  # (1, 1): another layout
        _prior(points[4], nlls.MatrixCostWeight(torch.eye(2, dtype=torch.float64)), "m0"),
        _prior(points[5], None, "plain"),
    ]
    assert signature(costs[0]) == signature(costs[1])
    assert len({signature(cf) for cf in costs}) == 5
    objective = nlls.Objective()
    for cf in costs:
        objective.add(cf)
    groups = Evaluator(objective).groups
    assert sorted(sorted(m.name for m in g.members) for g in groups) == [
        ["d0"], ["d1"], ["m0"], ["plain"], ["s0", "s1"]]
    expected = torch.cat([cf.weighted_error() for cf in costs], dim=1)
    torch.testing.assert_close(objective.error(), expected)
