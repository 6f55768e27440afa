"""Stack keys: what makes two cost functions stackable, and the report of identity splits."""
import enum

import numpy as np
import torch

import nlls
from nlls.core.stacking import ByIdentity, identity_splits, signature


class _Mode(enum.Enum):
    FAST = 1


class _Holder(nlls.CostFunction):
    """A cost function holding arbitrary attributes next to its variables."""

    def __init__(self, p, data, name=None, **attributes):
        super().__init__((p,), aux_vars=(data,), name=name)
        self.p, self.data = p, data
        for key, value in attributes.items():
            setattr(self, key, value)

    def dim(self):
        return 1


def _vector(name):
    return nlls.Vector(tensor=torch.zeros(1, 2), name=name)


def _holder(name="c", **attributes):
    return _Holder(_vector(f"{name}_p"), nlls.Variable(torch.zeros(1, 1), name=f"{name}_d"), name=name,
                   **attributes)


def test_constants_count_by_value_and_variables_by_position():
    constants = dict(order=2, gain=0.5, label="x", flag=True, nothing=None, kind=torch.float64,
                     mode=_Mode.FAST, cls=nlls.Vector, shape=(2, 3), table={"a": 1}, scalar=np.float64(1.5))
    one, two = _holder("one", **constants), _holder("two", **constants)
    assert one.stack_key() == two.stack_key() and signature(one) == signature(two)
    assert dict(one.stack_key())["p"] == ("variable", 0) and dict(one.stack_key())["data"] == ("variable", 1)
    assert dict(one.stack_key())["order"] == 2 and "_name" not in dict(one.stack_key())
    for change in (dict(order=3), dict(label="y"), dict(shape=(2, 4)), dict(table={"a": 2}), dict(flag=False)):
        assert _holder("other", **{**constants, **change}).stack_key() != one.stack_key(), change


def test_variable_roles_and_positions_are_compared():
    p, q = _vector("p"), _vector("q")
    data = nlls.Variable(torch.zeros(1, 1), name="d")
    swapped = _Holder(p, data, name="swapped", extra=q)  # q is not registered: compared by identity
    (marker,) = [v for k, v in swapped.stack_key() if k == "extra"]
    assert marker == ByIdentity(_Holder, "extra", q) and marker != ByIdentity(_Holder, "extra", p)
    assert hash(marker) == hash(ByIdentity(_Holder, "extra", q))
    assert "is a Variable that is not among its variables" in marker.advice()
    wider = _Holder(nlls.Vector(tensor=torch.zeros(1, 3), name="w"), data, name="wider")
    assert signature(wider) != signature(_Holder(p, data, name="narrow"))  # layout: per-element shape
    doubled = _Holder(p, nlls.Variable(torch.zeros(1, 1, dtype=torch.float64), name="d64"), name="d64")
    assert signature(doubled) != signature(_Holder(p, data, name="d32"))  # layout: dtype


def test_identity_markers_only_when_no_value_exists():
    shared = torch.ones(2)
    one, two = _holder("one", table=shared, fn=abs), _holder("two", table=shared, fn=abs)
    assert one.stack_key() == two.stack_key()  # the same objects: stackable
    assert _holder("three", table=torch.ones(2)).stack_key() != _holder("four", table=torch.ones(2)).stack_key()
    advice = dict(_holder("arr", table=np.ones(2)).stack_key())["table"].advice()
    assert "an array held outside a Variable" in advice
    advice = dict(_holder("net", net=torch.nn.Linear(1, 1)).stack_key())["net"].advice()
    assert "is a Linear compared by identity; share one object" in advice
    nested = dict(_holder("list", tables=[1.0, torch.ones(1)]).stack_key())["tables"]
    assert nested[:2] == (list, 1.0) and nested[2].path == "tables[1]"


def test_identity_splits_names_the_kind_and_the_differing_attributes():
    costs = [_holder(f"c{i}", table=torch.ones(1), same=abs, order=i % 2) for i in range(4)]
    groups = {}
    for cf in costs:
        groups.setdefault(signature(cf), []).append(cf)
    # order splits by value (two kinds), table by identity within each kind: only the latter is reported
    first, second = identity_splits(groups)
    assert first.startswith("cost function 'c0' and 1 more of type _Holder are evaluated one by one: ")
    assert second.startswith("cost function 'c1' and 1 more of type _Holder")
    assert "attribute 'table' of _Holder is a tensor" in first and "'same'" not in first
    assert "'order'" not in first
    assert identity_splits({signature(costs[0]): costs[:1]}) == []
