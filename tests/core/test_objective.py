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
