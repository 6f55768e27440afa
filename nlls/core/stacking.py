"""Stack keys: when two cost functions may be evaluated as one stacked call.

The vectorized evaluation (:mod:`nlls.core.evaluation`) runs cost functions of one kind as one
call on their stacked variables, the first one's non-variable data standing in for all of them.
Which cost functions are of one kind is declared, not guessed: two cost functions stack when
their :func:`signature` agrees, that is their class, ``dim()``, variable layout (types,
per-element shapes, dtypes, which positions share a variable), the cost weight's class and
:meth:`~Stackable.stack_key`, and their own :meth:`~Stackable.stack_key`.

The default ``stack_key()`` (:meth:`~Stackable.attributes_key`) reads the object's attributes:

* a registered variable counts by its position (its data is stacked, not compared): aux data,
  weight data and residual masks (:mod:`nlls.core.ragged`) alike, so cost functions that differ
  only in which rows their masks drop still share one call;
* a constant (number, string, ``None``, dtype, device, class, enum, tuples/lists/dicts of them)
  counts by value;
* a nested cost function or cost weight by its own key;
* anything else (a tensor, a module, a function) can only count by identity: instances stack
  only when they share that object. When such an attribute splits cost functions that would
  otherwise stack, the evaluation warns and names it (:func:`identity_splits`).

A class whose instances hold other data overrides ``stack_key()`` to declare it, for example
``return (self.table_name, self.attributes_key(exclude=("table",)))``.
"""
from __future__ import annotations

import enum
from typing import Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from .variable import Variable

_CONSTANTS = (type(None), bool, int, float, complex, str, bytes, np.generic, torch.dtype,
              torch.device, type, enum.Enum)


class ByIdentity:
    """Part of a key: an attribute that only compares by identity (equal when the same object)."""

    __slots__ = ("owner", "path", "value")

    def __init__(self, owner: type, path: str, value):
        self.owner = owner
        self.path = path
        self.value = value

    def __eq__(self, other) -> bool:
        return type(other) is ByIdentity and other.path == self.path and other.value is self.value

    def __hash__(self) -> int:
        return hash((self.path, id(self.value)))

    def advice(self) -> str:
        """What the attribute is and how to make it stackable."""
        where = f"attribute {self.path!r} of {self.owner.__name__}"
        if isinstance(self.value, (torch.Tensor, np.ndarray)):
            kind = "a tensor" if isinstance(self.value, torch.Tensor) else "an array"
            return (f"{where} is {kind} held outside a Variable; wrap it in nlls.Variable "
                    f"(aux_vars) to stack it")
        if isinstance(self.value, Variable):
            return (f"{where} is a Variable that is not among its variables; pass it in "
                    f"aux_vars to stack it")
        return (f"{where} is a {type(self.value).__name__} compared by identity; share one "
                f"object between them to stack them")

    def __repr__(self) -> str:
        return f"ByIdentity({self.path!r}, {type(self.value).__name__} at {id(self.value):#x})"


class Stackable:
    """What the vectorized evaluation stacks (cost functions, cost weights): it declares which
    instances may share one call.

    Subclasses define :meth:`stack_variables`; classes that hold data other than variables and
    constants override :meth:`stack_key`.
    """

    # attributes the base class and the evaluation compare themselves; never part of the key
    _STACK_BASE: frozenset = frozenset()

    def stack_variables(self) -> Tuple[Variable, ...]:
        """The registered variables, in the order the key's positions refer to."""
        raise NotImplementedError

    def stack_key(self) -> Hashable:
        """The non-variable data two instances must agree on to be evaluated as one stacked call.

        Two cost functions of one class, ``dim()``, variable layout and weight stack when their
        keys are equal; the first one's data then stands in for all of them. The default is
        :meth:`attributes_key`. Override it when an instance holds data the default can only
        compare by identity (a tensor, a module, a function) and two instances with different
        objects may still share a call, or to make the key cheaper; the override must cover
        every attribute the residual depends on besides the variables.
        """
        return self.attributes_key()

    def attributes_key(self, exclude: Iterable[str] = ()) -> tuple:
        """The default key: every attribute but ``exclude`` (see the module docs), by name."""
        variables = self.stack_variables()
        positions = {id(v): i for i, v in enumerate(variables)}
        skip = self._STACK_BASE.union(exclude)
        owner = type(self)
        return tuple(
            (name, _value_key(value, positions, owner, name))
            for name, value in sorted(vars(self).items()) if name not in skip
        )


class PreStacked:
    """A cost function that is already many members of one kind (a
    :class:`~nlls.core.factor_group.FactorGroup`): the evaluation takes it as one group of
    :meth:`stacked_sources` instead of computing a signature per member."""

    #: the number of members
    count: int
    #: the variable blocks (``nlls.VariableBlock``) the members index into, registered by name
    variable_blocks: tuple = ()

    def stacked_sources(self):
        """``(template, [(variables, index (E,)) per optim position], [data (B or 1, E, ...) per
        aux position])``."""
        raise NotImplementedError

    def member_name(self, k: int) -> str:
        """The name of member ``k`` in messages."""
        raise NotImplementedError


def stacked_data(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Group data ``(B or 1, E, *shape)`` as the evaluation's member-major rows ``(E * B, *shape)``."""
    count, shape = tensor.shape[1], tensor.shape[2:]
    return tensor.expand(batch, count, *shape).transpose(0, 1).reshape(count * batch, *shape)


def _value_key(value, positions: Dict[int, int], owner: type, path: str):
    if isinstance(value, _CONSTANTS):
        return value
    if isinstance(value, Variable):
        position = positions.get(id(value))
        return ByIdentity(owner, path, value) if position is None else ("variable", position)
    if isinstance(value, Stackable):
        places = tuple(positions.get(id(v), -1) for v in value.stack_variables())
        if -1 in places:
            return ByIdentity(owner, path, value)
        return (type(value), places, value.stack_key())
    if isinstance(value, (tuple, list)):
        return (type(value),) + tuple(
            _value_key(v, positions, owner, f"{path}[{i}]") for i, v in enumerate(value)
        )
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return (dict,) + tuple(
            (k, _value_key(v, positions, owner, f"{path}[{k!r}]")) for k, v in items
        )
    return ByIdentity(owner, path, value)


def signature(cf) -> tuple:
    """What must agree for cost functions to be evaluated as one stacked call: class, ``dim()``,
    variable layout, the weight's class and key, and the cost function's :meth:`stack_key`."""
    variables = cf.stack_variables()
    positions = {id(v): i for i, v in enumerate(variables)}
    layout = tuple((type(v), v.event_shape, v.dtype, positions[id(v)]) for v in variables)
    weight = cf.cost_weight
    weight_key = None if weight is None else (type(weight), weight.stack_key())
    return (type(cf), cf.dim(), len(cf.optim_vars), layout, weight_key, cf.stack_key())


def _markers(key, found: List[ByIdentity]) -> List[ByIdentity]:
    if type(key) is ByIdentity:
        found.append(key)
    elif isinstance(key, tuple):
        for part in key:
            _markers(part, found)
    return found


def _relaxed(key):
    """``key`` with every identity reduced to the attribute's path."""
    if type(key) is ByIdentity:
        return ("by identity", key.path)
    if isinstance(key, tuple):
        return tuple(_relaxed(part) for part in key)
    return key


def identity_splits(groups: Mapping[tuple, Sequence]) -> List[str]:
    """Where attributes compared by identity split cost functions that would otherwise stack.

    Args:
        groups: members by :func:`signature`, as the evaluation grouped them.

    Returns:
        one message per split kind, naming a cost function, the count and the attributes.
    """
    kinds: Dict[tuple, List[Tuple[List[ByIdentity], Sequence]]] = {}
    for key, members in groups.items():
        markers = _markers(key, [])
        if markers:
            kinds.setdefault(_relaxed(key), []).append((markers, members))
    messages = []
    for split in kinds.values():
        if len(split) < 2:
            continue
        first = split[0][1][0]
        count = sum(len(members) for _, members in split)
        differing: Dict[str, ByIdentity] = {}  # path -> marker, for the paths whose objects differ between groups
        for position, marker in enumerate(split[0][0]):
            if any(markers[position].value is not marker.value for markers, _ in split[1:]):
                differing.setdefault(marker.path, marker)
        how = "one by one" if len(split) == count else f"in {len(split)} calls instead of one"
        advice = "; ".join(marker.advice() for marker in differing.values())
        messages.append(
            f"cost function {first.name!r} and {count - 1} more of type {type(first).__name__} "
            f"are evaluated {how}: {advice}; or override {type(first).__name__}.stack_key() to "
            f"declare what makes two of them stackable"
        )
    return messages
