"""Manifolds: the variables an optimizer moves.

A least-squares solver linearizes the residual around the current estimate ``x`` and solves for a
step ``delta``. For a vector ``x`` the step is simply added. For a rotation or a pose it cannot be:
``x + delta`` leaves the group (a rotation matrix plus a small matrix is no longer a rotation).
Such an ``x`` lives on a *manifold*: a curved set that looks flat near every point. Near ``x`` we
describe neighbours by a small vector on the *tangent space*, of size ``dof`` (3 for a 3-D
rotation, although its matrix has 9 entries), and two maps tie the two views together:

* ``retract``: ``x (+) delta``, the point reached by moving along ``delta`` from ``x``;
* ``local``: ``x (-) y``, the tangent vector that leads from ``x`` to ``y``,
  so that ``x.retract(x.local(y)) == y`` and ``x.local(x.retract(delta)) == delta`` for small steps.

Jacobians in nlls are always taken with respect to ``delta`` at ``delta = 0``: a cost function's
Jacobian block for a variable has ``dof`` columns. The optimizer solves for ``delta`` and retracts.

A new kind of variable subclasses :class:`Manifold` and implements its four abstract class
methods, which work on raw ``(N, *event_shape)`` tensors so that the solver applies them to many
variables of the same type at once: :meth:`~Manifold.check_tensor`, :meth:`~Manifold.dof_of`,
:meth:`~Manifold.retract_tensor` and :meth:`~Manifold.local_tensor`. A class that leaves one out
cannot be instantiated (``TypeError`` naming it). Lie groups derive all four from ``exp``, ``log``
and ``compose`` (:class:`~nlls.geometry.LieGroup`).
"""
from __future__ import annotations

import abc
from typing import Optional, Tuple, TypeVar

import torch

from .variable import Variable, as_tensor

M = TypeVar("M", bound="Manifold")


class Manifold(Variable, metaclass=abc.ABCMeta):
    """A variable with a tangent space: the kind of variable an optimizer changes.

    The extension contract: a subclass implements the abstract class methods below on raw
    tensors ``(N, *event_shape)`` (``N`` any batch size; rows are independent). The solver calls
    them on many variables of one type stacked together, and ``torch.func`` transforms them
    (``vmap``, ``jvp``), so they must not branch in Python on the data. A tangent step is
    ``(N, dof)``; for poses it lists translation first, then rotation.
    """

    def __init__(self, tensor: torch.Tensor, name: Optional[str] = None):
        super().__init__(tensor, name=name)
        check_optim_dtype(self.tensor, f"{type(self).__name__} {self.name!r}")
        self.check_tensor(self.tensor, self.name)

    # ---- the extension contract: what subclasses define ------------------------------------
    @classmethod
    @abc.abstractmethod
    def check_tensor(cls, tensor: torch.Tensor, name: str) -> None:
        """Raise ``ValueError`` (``TypeError`` for a wrong dtype) naming the variable ``name``
        when ``tensor`` ``(B, *event_shape)`` is not a batch of valid elements. Called on data
        the user hands over (construction, :meth:`update`), never in the solver's loop."""

    @classmethod
    @abc.abstractmethod
    def dof_of(cls, event_shape: Tuple[int, ...]) -> int:
        """The tangent size of an element whose per-element shape is ``event_shape``."""

    @classmethod
    @abc.abstractmethod
    def retract_tensor(cls, tensor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``tensor (+) delta``: elements ``(N, *event_shape)`` moved by steps ``(N, dof)``;
        returns ``(N, *event_shape)``. ``retract_tensor(x, 0) == x``."""

    @classmethod
    @abc.abstractmethod
    def local_tensor(cls, tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``other (-) tensor``: the step ``(N, dof)`` from ``tensor`` to ``other`` (both
        ``(N, *event_shape)``), so that ``retract_tensor(tensor, result) == other``."""

    # ---- public interface ---------------------------------------------------------------
    def dof(self) -> int:
        """Size of the tangent space."""
        return self.dof_of(self.event_shape)

    def retract(self: M, delta: torch.Tensor) -> M:
        """Move along the tangent: ``self (+) delta``.

        Args:
            delta: ``(B, dof)`` tangent step (a batch of 1 broadcasts).

        Returns:
            A new variable of the same type (named ``<name>_retracted``); ``self`` is unchanged.
        """
        delta = as_tensor(delta, f"{type(self).__name__}.retract")
        if delta.ndim != 2 or delta.shape[1] != self.dof():
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: retract expects delta of shape "
                f"(B, {self.dof()}), got {tuple(delta.shape)}"
            )
        tensor, delta = broadcast_batch(self.tensor, delta, self.name)
        out = self.with_tensor(self.retract_tensor(tensor, delta))
        out._name = f"{self.name}_retracted"
        return out

    def local(self: M, other: M) -> torch.Tensor:
        """Tangent vector from ``self`` to ``other``: ``other (-) self``, shape ``(B, dof)``."""
        if not isinstance(other, type(self)) or other.event_shape != self.event_shape:
            raise TypeError(
                f"{type(self).__name__} {self.name!r}: local needs a {type(self).__name__} of "
                f"shape (B, {', '.join(map(str, self.event_shape))}), got {other!r}"
            )
        tensor, other_tensor = broadcast_batch(self.tensor, other.tensor, self.name)
        return self.local_tensor(tensor, other_tensor)

    def update(self, tensor: torch.Tensor) -> None:
        tensor = as_tensor(tensor, f"{type(self).__name__} {self.name!r}")
        check_optim_dtype(tensor, f"{type(self).__name__} {self.name!r}")
        self.check_tensor(tensor, self.name)
        super().update(tensor)

    def to(self: M, *args, **kwargs) -> M:
        """Move the data (``torch.Tensor.to`` arguments); returns ``self``.

        Raises:
            TypeError: a dtype other than float32 or float64 (nothing changes).
        """
        tensor = self.tensor.to(*args, **kwargs)
        check_optim_dtype(tensor, f"{type(self).__name__} {self.name!r}")
        self.tensor = tensor
        return self


#: the dtypes an optim variable may have: the linear algebra of a solve (Cholesky, LU, QR)
#: runs in these two only
OPTIM_DTYPES = (torch.float32, torch.float64)


def check_optim_dtype(tensor: torch.Tensor, what: str) -> None:
    """Raise ``TypeError`` starting with ``what`` unless ``tensor`` is float32 or float64."""
    if tensor.dtype not in OPTIM_DTYPES:
        raise TypeError(
            f"{what}: dtype {tensor.dtype} is not supported, optim variables must be float32 or "
            f"float64 (convert with .to(torch.float32) or .to(torch.float64))"
        )


def broadcast_batch(a: torch.Tensor, b: torch.Tensor, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` with equal batch sizes: a batch of 1 is expanded (no copy) to the other's.

    Raises:
        ValueError: naming ``name``, when the batch sizes differ and neither is 1.
    """
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return a.expand(b.shape[0], *a.shape[1:]), b
    if b.shape[0] == 1:
        return a, b.expand(a.shape[0], *b.shape[1:])
    raise ValueError(f"{name!r}: batch sizes {a.shape[0]} and {b.shape[0]} do not broadcast")


class Vector(Manifold):
    """A point of R^n, stored as ``(B, n)``: ``retract`` adds, ``local`` subtracts.

    Args:
        dof: n; with no ``tensor`` the vector starts at zero with batch size 1.
        tensor: ``(B, n)`` initial value.
        name: unique name inside an objective.
        dtype: dtype of the zero initial value when ``tensor`` is omitted.
    """

    _fixed_dof: Optional[int] = None

    def __init__(
        self,
        dof: Optional[int] = None,
        tensor: Optional[torch.Tensor] = None,
        name: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        if isinstance(dof, torch.Tensor) and tensor is None:  # Vector(tensor) reads naturally too
            dof, tensor = None, dof
        dof = dof if dof is not None else self._fixed_dof
        if tensor is None:
            if dof is None:
                raise ValueError(f"{type(self).__name__} {name!r}: give dof or tensor")
            tensor = torch.zeros(1, dof, dtype=dtype or torch.get_default_dtype())
        tensor = as_tensor(tensor, f"{type(self).__name__} {name!r}")
        if tensor.ndim == 1 and dof is not None and tensor.shape[0] == dof:
            raise ValueError(
                f"{type(self).__name__} {name!r}: tensor needs a batch dimension: "
                f"shape (B, {dof}), got {tuple(tensor.shape)} (use tensor[None])"
            )
        if dof is not None and (tensor.ndim != 2 or tensor.shape[1] != dof):
            raise ValueError(
                f"{type(self).__name__} {name!r}: expected tensor of shape (B, {dof}), "
                f"got {tuple(tensor.shape)}"
            )
        super().__init__(tensor, name=name)

    @classmethod
    def check_tensor(cls, tensor: torch.Tensor, name: str) -> None:
        if tensor.ndim != 2:
            raise ValueError(
                f"{cls.__name__} {name!r}: expected a tensor of shape (B, n), "
                f"got {tuple(tensor.shape)}"
            )
        if cls._fixed_dof is not None and tensor.shape[1] != cls._fixed_dof:
            raise ValueError(
                f"{cls.__name__} {name!r}: expected shape (B, {cls._fixed_dof}), "
                f"got {tuple(tensor.shape)}"
            )
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise TypeError(f"{cls.__name__} {name!r}: expected a floating dtype, got {tensor.dtype}")

    @classmethod
    def dof_of(cls, event_shape: Tuple[int, ...]) -> int:
        return event_shape[0]

    @classmethod
    def retract_tensor(cls, tensor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return tensor + delta

    @classmethod
    def local_tensor(cls, tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return other - tensor

    def __add__(self, other):
        other_t = other.tensor if isinstance(other, Variable) else other
        return self.with_tensor(self.tensor + other_t)

    def __sub__(self, other):
        other_t = other.tensor if isinstance(other, Variable) else other
        return self.with_tensor(self.tensor - other_t)


class Point2(Vector):
    """A 2-D point ``(B, 2)``."""

    _fixed_dof = 2


class Point3(Vector):
    """A 3-D point ``(B, 3)``."""

    _fixed_dof = 3

