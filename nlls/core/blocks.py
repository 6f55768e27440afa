"""A block of variables: ``N`` variables of one class and per-element shape as one object.

``VariableBlock(nlls.SE2, tensor (B, N, 4), name="poses")`` makes ``N`` member variables at once
(views of the tensor, validated once for the whole block, about a microsecond each) and is a
sequence of them: ``block[k]`` is an ordinary variable wherever one is needed (a ``Difference``
prior on ``block[0]``), and the block itself is what ``Between.many`` and ``FactorGroup`` index
into. An objective that holds a group over a block knows the block by name:
``Objective.update({"poses": tensor (B, N, 4)})`` (and so a layer input) replaces every member's
value in one entry, and the layer's solution has a ``"poses"`` entry ``(B, N, 4)`` beside the
members' own. The members keep their data; ``block.tensor`` stacks it when read.
"""
from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Generic, Iterator, List, Optional, Sequence, Type, TypeVar, Union, overload

import torch

from .manifold import Manifold, check_optim_dtype
from .variable import Variable, as_tensor

V = TypeVar("V", bound=Variable)


class VariableBlock(SequenceABC, Generic[V]):
    """``N`` variables of class ``cls`` as one object (see the module docs).

    Args:
        cls: the members' class (``nlls.SE2``, ``nlls.Point3``, ``nlls.Vector``, ``nlls.Variable``).
        tensor: ``(B, N, *shape)`` the members' values, member ``k`` at ``tensor[:, k]``.
        name: the block's name (unique in an objective among variables and blocks).
        names: the members' names; default ``<name>[k]``.

    Raises:
        TypeError, ValueError: a tensor that is not ``(B, N, ...)``, names of another count, or
            values that are not valid members (the message names the block).
    """

    def __init__(self, cls: Type[V], tensor: torch.Tensor, name: str,
                 names: Optional[Sequence[str]] = None):
        if not (isinstance(cls, type) and issubclass(cls, Variable)):
            raise TypeError(f"VariableBlock {name!r}: cls must be a Variable class, got {cls!r}")
        if not isinstance(name, str):
            raise TypeError(f"VariableBlock name must be a str, got {type(name).__name__}")
        self.cls = cls
        self._name = name
        tensor = self._checked(tensor)
        count = tensor.shape[1]
        names = [f"{name}[{k}]" for k in range(count)] if names is None else list(names)
        if len(names) != count:
            raise ValueError(f"VariableBlock {name!r}: {len(names)} names for {count} members")
        self.members: List[V] = []
        new = cls.__new__
        for member_name, value in zip(names, tensor.unbind(1)):  # views, as tensor[:, k]
            member = new(cls)
            member._name = member_name
            member.tensor = value
            self.members.append(member)

    def _checked(self, tensor) -> torch.Tensor:
        what = f"VariableBlock {self._name!r}"
        tensor = as_tensor(tensor, what)
        if tensor.ndim < 2:
            raise ValueError(f"{what}: tensor must have shape (B, N, ...), got {tuple(tensor.shape)}")
        if issubclass(self.cls, Manifold):
            check_optim_dtype(tensor, what)
            flat = tensor.reshape(-1, *tensor.shape[2:])
            self.cls.check_tensor(flat, self._name)
        return tensor

    @property
    def name(self) -> str:
        return self._name

    @property
    def event_shape(self):
        """The members' per-element shape."""
        return self.members[0].event_shape if self.members else ()

    @property
    def tensor(self) -> torch.Tensor:
        """The members' current values, ``(B, N, *shape)`` (stacked when read)."""
        batch = max(m.batch_size for m in self.members)
        return torch.stack([m.tensor.expand(batch, *m.event_shape) for m in self.members], dim=1)

    def update(self, tensor: torch.Tensor) -> None:
        """Set every member from ``tensor`` ``(B, N, *shape)``, validated once for the block.

        Raises:
            ValueError, TypeError: another member count or per-element shape, or invalid values.
        """
        tensor = self._checked(tensor)
        expected = (len(self.members),) + tuple(self.event_shape)
        if tuple(tensor.shape[1:]) != expected:
            raise ValueError(f"VariableBlock {self._name!r}: update expects shape (B, "
                             f"{', '.join(map(str, expected))}), got {tuple(tensor.shape)}")
        for member, value in zip(self.members, tensor.unbind(1)):
            member.tensor = value

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[V]:
        return iter(self.members)

    @overload
    def __getitem__(self, k: int) -> V: ...

    @overload
    def __getitem__(self, k: slice) -> List[V]: ...

    def __getitem__(self, k: Union[int, slice]):
        return self.members[k]

    def __repr__(self) -> str:
        return (f"VariableBlock({self.cls.__name__}, name={self._name!r}, members={len(self.members)}, "
                f"event_shape={tuple(self.event_shape)})")
