import pytest
import torch

import nlls
from tests.problems import QuadFit, quad_data


def _fit(batch=3, points=5, name="fit", ab=None, x=None, y=None):
    xs, ys, _ = quad_data(batch, points)
    ab = ab or nlls.Vector(tensor=torch.zeros(batch, 2, dtype=torch.float64), name="ab")
    x = x or nlls.Variable(xs, name="x")
    y = y or nlls.Variable(ys, name="y")
    return QuadFit(ab, x, y, name=name)


def test_add_registers_variables_by_name():
    obj = nlls.Objective()
    cf = _fit()
    obj.add(cf)
    assert list(obj.optim_vars) == ["ab"] and set(obj.aux_vars) == {"x", "y"}
    assert obj.cost_functions["fit"] is cf
    assert obj.batch_size == 3 and obj.dtype == torch.float64 and obj.dim() == 5


def test_error_and_error_metric():
    obj = nlls.Objective()
    cf = _fit()
    obj.add(cf)
    torch.testing.assert_close(obj.error(), cf.error())
    torch.testing.assert_close(obj.error_metric(), 0.5 * (cf.error() ** 2).sum(1))


def test_name_clashes_are_errors():
    obj = nlls.Objective()
    cf = _fit()
    obj.add(cf)
    with pytest.raises(ValueError, match="'fit' was already added"):
        obj.add(cf)
    with pytest.raises(ValueError, match="cost function name 'fit' is used"):
        obj.add(_fit(ab=cf.ab, x=cf.x, y=cf.y))
    other_ab = nlls.Vector(tensor=torch.zeros(3, 2, dtype=torch.float64), name="ab")
    with pytest.raises(ValueError, match="'fit2'.*variable name 'ab' is already used"):
        obj.add(_fit(name="fit2", ab=other_ab, x=cf.x, y=cf.y))
    assert list(obj.cost_functions) == ["fit"]  # nothing half-added


def test_optim_and_aux_roles_cannot_mix():
    obj = nlls.Objective()
    cf = _fit()
    obj.add(cf)
    as_optim = nlls.Vector(tensor=torch.zeros(3, 5, dtype=torch.float64), name="x")
    with pytest.raises(ValueError, match="variable name 'x' is already used"):
        obj.add(nlls.AutoDiffCostFunction((as_optim,), lambda o, a: o[0].tensor, 5, name="g"))


def test_batch_mismatch_names_the_variables():
    obj = nlls.Objective()
    obj.add(_fit(batch=3))
    q = nlls.Vector(tensor=torch.zeros(4, 1, dtype=torch.float64), name="q")
    with pytest.raises(ValueError, match="'prior'.*batch sizes do not broadcast.*'q' has batch 4"):
        obj.add(nlls.AutoDiffCostFunction((q,), lambda o, a: o[0].tensor, 1, name="prior"))


def test_dtype_mismatch_is_an_error():
    obj = nlls.Objective()
    obj.add(_fit())
    q = nlls.Vector(tensor=torch.zeros(3, 1, dtype=torch.float32), name="q")
    with pytest.raises(ValueError, match="'prior'.*'q' has dtype torch.float32"):
        obj.add(nlls.AutoDiffCostFunction((q,), lambda o, a: o[0].tensor, 1, name="prior"))


def test_update_checks_and_rolls_back():
    obj = nlls.Objective()
    cf = _fit()
    obj.add(cf)
    before = cf.y.tensor
    with pytest.raises(KeyError, match="no variable named 'z'.*'ab'"):
        obj.update({"z": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="batch sizes do not broadcast"):
        obj.update({"y": torch.zeros(2, 5, dtype=torch.float64)})
    assert cf.y.tensor is before  # refused update changed nothing
    with pytest.raises(ValueError, match="'y'"):
        obj.update({"y": torch.zeros(3, 6, dtype=torch.float64)})
    new_y = torch.ones(3, 5, dtype=torch.float64)
    obj.update({"y": new_y, "ab": torch.ones(3, 2, dtype=torch.float64)})
    assert cf.y.tensor is new_y


def test_wrong_error_dimension_names_the_cost_function():
    obj = nlls.Objective()
    p = nlls.Vector(tensor=torch.zeros(2, 2), name="p")
    obj.add(nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor, 3, name="short"))
    with pytest.raises(ValueError, match=r"'short': error has shape \(2, 2\), expected \(B=2, dim=3\)"):
        obj.error()


def test_copy_is_deep_and_to_changes_dtype():
    obj = nlls.Objective()
    obj.add(_fit())
    dup = obj.copy()
    assert dup.optim_vars["ab"] is not obj.optim_vars["ab"]
    assert dup.cost_functions["fit"].ab is dup.optim_vars["ab"]
    dup.update({"ab": torch.ones(3, 2, dtype=torch.float64)})
    assert torch.all(obj.optim_vars["ab"].tensor == 0)
    torch.testing.assert_close(dup.error_metric(), dup.error_metric())
    obj.to(torch.float32)
    assert obj.dtype == torch.float32 and obj.error().dtype == torch.float32


def test_structure_version_counts_additions_and_is_read_only():
    obj = nlls.Objective()
    assert obj.structure_version == 0
    cf = _fit()
    obj.add(cf)
    assert obj.structure_version == 1
    before = obj.structure_version
    obj.update({"ab": torch.ones(3, 2, dtype=torch.float64)})  # values only: same structure
    assert obj.structure_version == before
    prior = nlls.AutoDiffCostFunction((cf.ab,), lambda o, a: o[0].tensor, 2, name="prior")
    obj.add(prior)
    assert obj.structure_version == before + 1
    with pytest.raises(AttributeError):
        obj.structure_version = 0
    with pytest.raises(ValueError):
        obj.add(prior)  # refused: the structure and its version are unchanged
    assert obj.structure_version == before + 1


def _mixed_objective():
    """Kinds interleaved in insertion order: autodiff with and without weights, robust wrappers
    (Huber, Cauchy), pose-graph factors with matrix weights; float64."""
    generator = torch.Generator().manual_seed(5)
    obj = nlls.Objective()
    poses = [nlls.SE2.rand(4, generator, dtype=torch.float64, name=f"x{i}") for i in range(4)]
    points = [nlls.Vector(tensor=torch.randn(4, 3, generator=generator, dtype=torch.float64), name=f"p{i}")
              for i in range(4)]

    def sine(optim, aux):
        return torch.sin(optim[0].tensor * aux[0].tensor)

    information = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 4.0]], dtype=torch.float64)
    for i in range(3):
        t = nlls.Variable(torch.randn(4, 3, generator=generator, dtype=torch.float64), name=f"t{i}")
        weight = nlls.DiagonalCostWeight(torch.rand(4, 3, generator=generator, dtype=torch.float64) + 0.5) \
            if i % 2 else None
        sine_cf = nlls.AutoDiffCostFunction((points[i],), sine, 3, aux_vars=(t,), cost_weight=weight,
                                            name=f"sine{i}")
        obj.add(nlls.RobustCostFunction(sine_cf, nlls.HuberLoss(0.3)) if i == 1 else sine_cf)
        measured = poses[i].between(poses[i + 1]).retract(
            0.5 * torch.randn(4, 3, generator=generator, dtype=torch.float64))
        between = nlls.Between(poses[i], poses[i + 1], nlls.SE2(measured.tensor, name=f"m{i}"),
                               cost_weight=nlls.MatrixCostWeight.from_information(information), name=f"e{i}")
        obj.add(nlls.RobustCostFunction(between, nlls.CauchyLoss(0.2)) if i else between)
        obj.add(nlls.Difference(points[i + 1], nlls.Variable(torch.zeros(1, 3, dtype=torch.float64),
                                                             name=f"z{i}"),
                                cost_weight=nlls.ScaleCostWeight(float(i + 1)), name=f"prior{i}"))
    return obj


def test_error_and_error_metric_equal_the_per_cost_function_values():
    obj = _mixed_objective()
    per_cost = [cf.weighted_error() for cf in obj.cost_functions.values()]
    expected = torch.cat(per_cost, dim=1)  # the documented column order: cost functions as added
    error = obj.error()
    assert error.shape == (4, obj.dim()) and error.dtype == torch.float64
    torch.testing.assert_close(error, expected, rtol=1e-13, atol=1e-13)
    metric = sum(0.5 * (e ** 2).sum(dim=1) for e in per_cost)
    torch.testing.assert_close(obj.error_metric(), metric, rtol=1e-13, atol=1e-13)
    evaluator = obj.evaluator()
    assert len(evaluator.groups) == 5 and len(obj.cost_functions) == 9  # stacked calls
    assert evaluator._columns(torch.device("cpu")) is not None  # kinds interleave: reordered


def test_error_metric_is_one_stacked_call_per_kind_and_follows_the_structure():
    calls = []

    def line(optim, aux):
        calls.append(optim[0].tensor.shape[0])
        return optim[0].tensor[:, :1] * aux[0].tensor + optim[0].tensor[:, 1:] - aux[1].tensor

    obj = nlls.Objective()
    ab = nlls.Vector(tensor=torch.ones(2, 2, dtype=torch.float64), name="ab")
    xs = torch.linspace(0, 1, 50, dtype=torch.float64)
    for k in range(50):
        obj.add(nlls.AutoDiffCostFunction(
            (ab,), line, 1, name=f"pt{k}",
            aux_vars=(nlls.Variable(xs[k].reshape(1, 1), name=f"x{k}"),
                      nlls.Variable(torch.zeros(1, 1, dtype=torch.float64), name=f"y{k}"))))
    expected = 0.5 * ((xs + 1) ** 2).sum().expand(2)
    torch.testing.assert_close(obj.error_metric(), expected)
    assert calls == [50 * 2]  # the 50 cost functions as one call on 100 rows
    evaluator = obj.evaluator()
    obj.update({"ab": torch.zeros(2, 2, dtype=torch.float64)})
    torch.testing.assert_close(obj.error_metric(), torch.zeros(2, dtype=torch.float64))
    assert obj.evaluator() is evaluator  # new values, same structure: reused
    obj.add(nlls.AutoDiffCostFunction((ab,), lambda o, a: o[0].tensor - 1, 2, name="prior"))
    assert obj.evaluator() is not evaluator
    torch.testing.assert_close(obj.error()[:, -2:], -torch.ones(2, 2, dtype=torch.float64))
    assert obj.copy()._evaluator is None  # copies rebuild their own


def test_empty_objective_has_no_error():
    obj = nlls.Objective()
    assert obj.error().shape == (1, 0) and obj.error_metric().shape == (1,)
