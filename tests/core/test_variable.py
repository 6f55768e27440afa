import pytest
import torch

import nlls


def test_variable_properties_and_update():
    t = torch.randn(3, 4, 5)
    v = nlls.Variable(t, name="data")
    assert v.name == "data" and v.shape == (3, 4, 5) and v.batch_size == 3
    assert v.dtype == t.dtype and v.device == t.device
    v.update(torch.zeros(7, 4, 5))  # batch size may change
    assert v.batch_size == 7
    assert torch.equal(t, t.clone())  # the old tensor is untouched
    with pytest.raises(ValueError, match="'data'.*update expects shape"):
        v.update(torch.zeros(7, 5, 4))


def test_variable_needs_batch_dim_and_gets_unique_names():
    with pytest.raises(ValueError, match="batch dimension"):
        nlls.Variable(torch.tensor(1.0))
    assert nlls.Variable(torch.zeros(1, 1)).name != nlls.Variable(torch.zeros(1, 1)).name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vector_retract_local_roundtrip(dtype):
    x = nlls.Vector(tensor=torch.randn(4, 3, dtype=dtype), name="x")
    delta = torch.randn(4, 3, dtype=dtype)
    y = x.retract(delta)
    assert isinstance(y, nlls.Vector) and y.dtype == dtype
    torch.testing.assert_close(x.local(y), delta)
    torch.testing.assert_close(y.tensor, x.tensor + delta)
    assert x.dof() == 3


def test_vector_batch_broadcast_and_errors():
    x = nlls.Vector(tensor=torch.zeros(1, 2), name="x")
    assert x.retract(torch.ones(5, 2)).shape == (5, 2)
    with pytest.raises(ValueError, match=r"'x'.*\(B, 2\)"):
        x.retract(torch.ones(5, 3))
    with pytest.raises(ValueError, match="batch dimension"):
        nlls.Vector(2, tensor=torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected tensor of shape \(B, 3\)"):
        nlls.Vector(3, tensor=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="give dof or tensor"):
        nlls.Vector()
    assert nlls.Vector(4).shape == (1, 4)


def test_points_have_fixed_dof():
    assert nlls.Point2(tensor=torch.zeros(2, 2)).dof() == 2
    assert nlls.Point3().dof() == 3
    with pytest.raises(ValueError, match="Point3 'p'"):
        nlls.Point3(tensor=torch.zeros(2, 2), name="p")
    p = nlls.Point2(torch.ones(1, 2), name="p")
    with pytest.raises(ValueError, match="Point2 'p'"):
        p.update(torch.zeros(1, 3))


def test_copy_is_independent():
    x = nlls.Vector(tensor=torch.ones(2, 2), name="x")
    y = x.copy()
    assert y.name == "x_copy" and y.tensor is not x.tensor
    torch.testing.assert_close(y.tensor, x.tensor)
