"""Variables: named, batched tensors.

Every tensor in nlls carries a leading batch dimension ``B``: a batch holds ``B`` independent
problems that are solved together. A variable whose batch size is 1 broadcasts against any ``B``.

A plain :class:`Variable` is auxiliary data (measurements, fixed parameters, learnable weights).
The quantities an optimizer changes are :class:`~nlls.core.manifold.Manifold` variables, which also
know how to take a step on their tangent space.
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple, Type, TypeVar

import torch

_ids = itertools.count()

V = TypeVar("V", bound="Variable")


def unique_name(prefix: str) -> str:
    """A fresh variable name ``<prefix>__<n>``, ``n`` counting up across all variables."""
    return f"{prefix}__{next(_ids)}"


def as_tensor(value, what: str) -> torch.Tensor:
    """``value`` as a tensor: tensors as given, numbers as ``(1, 1)``, numpy arrays converted.

    Raises:
        TypeError: anything else; the message starts with ``what``.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float)):
        return torch.tensor([[float(value)]], dtype=torch.get_default_dtype())
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.as_tensor(value)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    raise TypeError(f"{what}: expected a torch.Tensor, got {type(value).__name__}")


def from_rows(cls: Type[V], tensor: torch.Tensor, names: Sequence[str]) -> List[V]:
    """``len(names)`` variables of class ``cls``, variable ``k`` holding ``tensor[k:k + 1]``
    (batch size 1, a view), without validation: for data valid by construction (readers making
    thousands of variables; about 1 microsecond each instead of tens).

    Raises:
        ValueError: ``tensor`` has fewer rows than ``names``.
    """
    if tensor.ndim < 1 or tensor.shape[0] != len(names):
        raise ValueError(f"from_rows: {len(names)} names for a tensor of shape {tuple(tensor.shape)}")
    out: List[V] = []
    new = cls.__new__
    for row, name in zip(tensor[:, None].unbind(0), names):
        var = new(cls)
        var._name = name
        var.tensor = row
        out.append(var)
    return out


class Variable:
    """A named, batched tensor of shape ``(B, ...)``.

    Args:
        tensor: ``(B, ...)`` data. It is stored as given (no copy) and never modified in place.
        name: unique name inside an objective; a fresh one is made when omitted.
    """

    #: ``True`` for data made from a Python number (a cost weight of ``2.0``): it has no dtype
    #: or device of its own, and ``Objective.add`` gives it the objective's
    follows_objective: bool = False

    def __init__(self, tensor: torch.Tensor, name: Optional[str] = None):
        tensor = as_tensor(tensor, f"{type(self).__name__} {name!r}")
        if tensor.ndim < 1:
            raise ValueError(
                f"{type(self).__name__} {name!r}: tensor needs a leading batch dimension, "
                f"got a scalar"
            )
        self._name = name if name is not None else unique_name(type(self).__name__)
        if not isinstance(self._name, str):
            raise TypeError(f"Variable name must be a str, got {type(self._name).__name__}")
        self.tensor = tensor

    # ---- descriptive properties -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    @property
    def event_shape(self) -> Tuple[int, ...]:
        """The shape of one batch element, ``shape[1:]``."""
        return tuple(self.tensor.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def batch_size(self) -> int:
        return self.tensor.shape[0]

    @property
    def ndim(self) -> int:
        return self.tensor.ndim

    # ---- changing data -------------------------------------------------------------------
    def update(self, tensor: torch.Tensor) -> None:
        """Replace the data, keeping this object (and every cost function that holds it).

        The new tensor must have the same per-element shape; its batch size may differ.

        Raises:
            ValueError: on a shape change of the per-element shape.
        """
        tensor = as_tensor(tensor, f"{type(self).__name__} {self.name!r}")
        if tuple(tensor.shape[1:]) != self.event_shape or tensor.ndim != self.tensor.ndim:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: update expects shape (B, "
                f"{', '.join(map(str, self.event_shape))}), got {tuple(tensor.shape)}"
            )
        self.tensor = tensor

    def copy(self: V, new_name: Optional[str] = None) -> V:
        """A new variable holding a clone of the data."""
        out = self.with_tensor(self.tensor.clone())
        out._name = new_name if new_name is not None else f"{self.name}_copy"
        return out

    def to(self: V, *args, **kwargs) -> V:
        """Move the data (``torch.Tensor.to`` arguments); returns ``self``."""
        self.tensor = self.tensor.to(*args, **kwargs)
        return self

    def with_tensor(self: V, tensor: torch.Tensor) -> V:
        """A shallow twin of this variable (same class, name, attributes) holding ``tensor``.

        No validation (unlike :meth:`update`): for hot paths and ``torch.func`` transforms, e.g. a
        cost function evaluating itself at other values.
        """
        out = self.__class__.__new__(self.__class__)
        out.__dict__.update(self.__dict__)
        out.tensor = tensor
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, shape={tuple(self.shape)}, "
            f"dtype={self.dtype})"
        )
