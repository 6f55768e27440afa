"""The Manifold contract on the vector spaces Vector, Point2, Point3: the tensor-level maps the
solver calls, their agreement with the variable-level retract/local, batch broadcasting, the
checks at the boundary, and the abstract base."""
import pytest
import torch

import nlls
from nlls.core.manifold import broadcast_batch

KINDS = [(nlls.Vector, 4), (nlls.Point2, 2), (nlls.Point3, 3)]


def _make(kind, dim, tensor, name):
    return kind(tensor=tensor, name=name) if kind is not nlls.Vector else kind(dim, tensor, name)


@pytest.mark.parametrize("kind, dim", KINDS, ids=[k.__name__ for k, _ in KINDS])
def test_tensor_maps_are_addition_and_subtraction(kind, dim):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, dim, generator=generator, dtype=torch.float64)
    y = torch.randn(5, dim, generator=generator, dtype=torch.float64)
    assert kind.dof_of((dim,)) == dim
    torch.testing.assert_close(kind.retract_tensor(x, y - x), y, rtol=0, atol=1e-15)
    torch.testing.assert_close(kind.local_tensor(x, y), y - x, rtol=0, atol=0)
    torch.testing.assert_close(kind.local_tensor(x, kind.retract_tensor(x, 0.5 * y)), 0.5 * y)
    # the variable-level maps are the tensor-level ones, with a batch of 1 broadcast
    a = _make(kind, dim, x[:1], "a")
    b = _make(kind, dim, y, "b")
    assert a.dof() == dim
    moved = a.retract(y)
    assert type(moved) is kind and moved.name == "a_retracted" and moved.shape == (5, dim)
    torch.testing.assert_close(moved.tensor, x[:1] + y, rtol=0, atol=0)
    torch.testing.assert_close(a.local(b), y - x[:1], rtol=0, atol=0)
    torch.testing.assert_close(b.local(a), x[:1] - y, rtol=0, atol=0)
    assert torch.equal(a.tensor, x[:1])  # unchanged


@pytest.mark.parametrize("kind, dim", KINDS, ids=[k.__name__ for k, _ in KINDS])
def test_check_tensor_names_the_variable(kind, dim):
    kind.check_tensor(torch.zeros(2, dim), "ok")
    with pytest.raises(ValueError, match=rf"{kind.__name__} 'p': expected"):
        kind.check_tensor(torch.zeros(2, dim, 1), "p")
    with pytest.raises(TypeError, match=rf"{kind.__name__} 'p': expected a floating dtype"):
        kind.check_tensor(torch.zeros(2, dim, dtype=torch.int64), "p")
    x = _make(kind, dim, torch.zeros(1, dim), "p")
    with pytest.raises(ValueError, match=rf"{kind.__name__} 'p'"):
        x.update(torch.zeros(1, dim + 1))
    with pytest.raises(TypeError, match=rf"{kind.__name__} 'p': local needs"):
        x.local(nlls.Vector(dim + 1, name="q"))


def test_fixed_size_points_refuse_other_sizes():
    with pytest.raises(ValueError, match=r"Point2 'p': expected shape \(B, 2\)"):
        nlls.Point2.check_tensor(torch.zeros(1, 3), "p")
    with pytest.raises(ValueError, match=r"Point3 'p': expected shape \(B, 3\)"):
        nlls.Point3.check_tensor(torch.zeros(1, 2), "p")


def test_broadcast_batch():
    a, b = torch.zeros(1, 2), torch.ones(4, 3)
    a2, b2 = broadcast_batch(a, b, "x")
    assert a2.shape == (4, 2) and b2 is b
    b3, a3 = broadcast_batch(b, a, "x")
    assert b3 is b and a3.shape == (4, 2)
    same = torch.zeros(4, 1)
    assert broadcast_batch(same, b, "x")[0] is same
    with pytest.raises(ValueError, match=r"'x': batch sizes 2 and 3 do not broadcast"):
        broadcast_batch(torch.zeros(2, 1), torch.zeros(3, 1), "x")


def test_manifold_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        nlls.Manifold(torch.zeros(1, 2))

    class Circle(nlls.Manifold):  # angles in R, moved additively: the four methods suffice
        @classmethod
        def check_tensor(cls, tensor, name):
            if tensor.ndim != 2 or tensor.shape[1] != 1:
                raise ValueError(f"Circle {name!r}: expected (B, 1)")

        @classmethod
        def dof_of(cls, event_shape):
            return 1

        @classmethod
        def retract_tensor(cls, tensor, delta):
            return tensor + delta

        @classmethod
        def local_tensor(cls, tensor, other):
            return torch.remainder(other - tensor + torch.pi, 2 * torch.pi) - torch.pi

    c = Circle(torch.tensor([[3.0]]), name="c")
    d = Circle(torch.tensor([[-3.0]]), name="d")
    torch.testing.assert_close(c.local(d), torch.tensor([[2 * torch.pi - 6.0]]))
    with pytest.raises(ValueError, match="Circle 'e'"):
        Circle(torch.zeros(1, 2), name="e")
