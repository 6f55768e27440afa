"""Lie groups: rotations and rigid motions as manifolds.

A rotation cannot be optimized like a vector: the sum of two rotation matrices is not a rotation,
and three angles have gimbal lock. What does work is to keep the rotation whole and move it by
*small rotations*. The rotations (and rigid motions) form a *Lie group* ``G``: a manifold on which
elements compose (``g ∘ h``), invert, and act on points. Near the identity the group looks like a
vector space, its *tangent space* of size ``dof`` (1 for 2-D rotations, 3 for 2-D poses and 3-D
rotations, 6 for 3-D poses); ``exp`` maps a tangent to the group ("rotate about this axis by this
angle"; ``exp(0)`` is the identity) and ``log`` back, for rotation angles in ``[0, pi]``.

An optimizer then moves ``x`` by a tangent step applied *on the right*::

    retract(x, delta) = x ∘ exp(delta)          local(x, y) = log(x^-1 ∘ y)

so ``local(x, retract(x, delta)) == delta`` for steps shorter than pi, and the Jacobian of any
function ``f(x)`` is taken with respect to ``delta`` at ``delta = 0`` (``dof`` columns however the
element is stored). Every group operation here takes an optional ``jacobians`` list and appends
these analytic Jacobians, one per input, shaped ``(B, out, dof)``:

* ``compose(g, h)``: ``Ad(h^-1)``, ``I``; ``inverse(g)``: ``-Ad(g)``; ``between(g, h) = g^-1 ∘ h``:
  ``-Ad(h^-1 ∘ g)``, ``I``;
* ``exp(tau)``: the right Jacobian ``Jr(tau)``, ``exp(tau + d) ~ exp(tau) ∘ exp(Jr(tau) d)``;
  ``log(g)``: its inverse ``Jr^-1(log g)``;
* ``local(x, y) = e``: ``-Jr^-1(-e)`` and ``Jr^-1(e)``;  ``retract(x, d)``: ``Ad(exp(-d))``, ``Jr(d)``;
* ``transform_from(g, p) = g p`` and ``transform_to(g, p) = g^-1 p``: w.r.t. ``g`` and ``p``.

``Ad(g)`` is the adjoint, ``g ∘ exp(d) ∘ g^-1 = exp(Ad(g) d)``. Tangents list translation first,
then rotation (``SE2``: ``(vx, vy, omega)``, ``SE3``: ``(v, w)``), as in Sophus and Theseus.

Formulas such as ``sin(t)/t`` are 0/0 at the identity; each is a Taylor series below a small
angle and a closed form above it (:mod:`nlls.geometry.numerics`), chosen per batch element with
``torch.where``. No Python branch depends on data, so every map works under ``torch.func``
(``vmap``, ``jvp``, ``vjp``), as :class:`~nlls.core.cost_function.AutoDiffCostFunction` requires.

Data handed over by the user (constructors, ``update``) is checked once: a rotation whose
``|R^T R - I|``, ``|det R - 1|`` or ``|cos^2 + sin^2 - 1|`` exceeds 1e-5 (float64) or 1e-4
(float32) is refused with a ``ValueError`` naming the variable and the batch element. Results of
group operations are built without checks, and ``retract`` projects back onto the group.

A new group subclasses :class:`LieGroup` and implements its abstract class methods (see there).
"""
from __future__ import annotations

import abc
from typing import List, Optional, Tuple, Type, TypeVar, Union

import torch

from ..core.manifold import Manifold, broadcast_batch
from ..core.variable import Variable, as_tensor
from .numerics import check_on_group, eye, tangent_jacobian

G = TypeVar("G", bound="LieGroup")


class LieGroup(Manifold):
    """Base class of the Lie groups (``SO2``, ``SE2``, ``SO3``, ``SE3`` and user-defined ones).

    The extension contract, on raw data ``(N, *EVENT_SHAPE)`` (class methods, rows independent,
    no Python branch on the data): a concrete group sets the class attributes ``DOF`` (tangent
    size) and ``EVENT_SHAPE`` (per-element storage shape), optionally ``POINT_DIM`` (the points
    it acts on, 0 for none) and ``STORAGE`` (what the storage holds, for messages), and
    implements the abstract class methods :meth:`identity_tensor`, :meth:`exp_tensor`,
    :meth:`log_tensor`, :meth:`compose_tensor`, :meth:`inverse_tensor` and :meth:`deviation`.
    The other ``*_tensor`` methods have defaults derived from those, which a group overrides
    where it has closed forms (all built-in groups do): :meth:`adjoint_tensor`,
    :meth:`jr_tensor`, :meth:`jr_inv_tensor`, :meth:`normalize_tensor`, :meth:`rand_tensor`,
    :meth:`to_matrix_tensor`, :meth:`transform_from_tensor`, :meth:`transform_to_tensor`.
    Tangents list translation first, then rotation.

    Args:
        tensor: ``(B, *EVENT_SHAPE)`` data in the group's storage format; identity when omitted.
        name: unique name inside an objective.
        dtype: cast the data to this dtype (default: the tensor's, or torch's default).

    Raises:
        ValueError: a wrong shape, or data off the group by more than the dtype's tolerance.
    """

    DOF: Optional[int] = None  # tangent size
    EVENT_SHAPE: Optional[Tuple[int, ...]] = None  # shape of one stored element
    POINT_DIM: int = 0  # dimension of the points transform_from/transform_to act on; 0: none
    STORAGE: str = "a group element"  # what the stored tensor holds, for error messages

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        abstract = any(getattr(getattr(cls, a, None), "__isabstractmethod__", False) for a in dir(cls))
        if not abstract and (cls.DOF is None or cls.EVENT_SHAPE is None):
            raise TypeError(f"{cls.__name__}: a Lie group sets the class attributes DOF (tangent "
                            "size) and EVENT_SHAPE (shape of one stored element)")

    def __init__(self, tensor: Optional[torch.Tensor] = None, name: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None):
        if tensor is None:
            tensor = self.identity_tensor(1, dtype or torch.get_default_dtype(), None)
        tensor = as_tensor(tensor, f"{type(self).__name__} {name!r}")
        if dtype is not None:
            tensor = tensor.to(dtype)
        super().__init__(tensor, name=name)

    # ---- the extension contract: what a concrete group must define -----------------------------
    @classmethod
    @abc.abstractmethod
    def identity_tensor(cls, batch_size: int, dtype: torch.dtype,
                        device: Optional[Union[str, torch.device]]) -> torch.Tensor:
        """The identity element repeated: ``(batch_size, *EVENT_SHAPE)``."""

    @classmethod
    @abc.abstractmethod
    def exp_tensor(cls, tangent: torch.Tensor) -> torch.Tensor:
        """The exponential map: tangents ``(N, DOF)`` (translation first) to elements
        ``(N, *EVENT_SHAPE)``; ``exp(0)`` is the identity."""

    @classmethod
    @abc.abstractmethod
    def log_tensor(cls, tensor: torch.Tensor) -> torch.Tensor:
        """The logarithm: elements ``(N, *EVENT_SHAPE)`` to tangents ``(N, DOF)``, the inverse
        of :meth:`exp_tensor` (rotation angles in ``[0, pi]``)."""

    @classmethod
    @abc.abstractmethod
    def compose_tensor(cls, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The group product ``a ∘ b`` of two ``(N, *EVENT_SHAPE)`` tensors."""

    @classmethod
    @abc.abstractmethod
    def inverse_tensor(cls, a: torch.Tensor) -> torch.Tensor:
        """``a^-1``, ``(N, *EVENT_SHAPE)``."""

    @classmethod
    @abc.abstractmethod
    def deviation(cls, tensor: torch.Tensor) -> torch.Tensor:
        """How far each stored element is from the group, ``(N,)`` (e.g. ``|cos^2 + sin^2 - 1|``;
        zeros where the storage has no constraint); above the dtype's tolerance is refused."""

    # ---- derived, overridden where a closed form exists ------------------------------------------
    @classmethod
    def adjoint_tensor(cls, a: torch.Tensor) -> torch.Tensor:
        """``Ad(a)`` ``(N, DOF, DOF)``: ``a ∘ exp(d) ∘ a^-1 = exp(Ad(a) d)``. Default: the
        derivative of ``log(a ∘ exp(d) ∘ a^-1)`` at ``d = 0``, by forward mode."""
        inverse = cls.inverse_tensor(a)
        return tangent_jacobian(
            lambda d: cls.log_tensor(cls.compose_tensor(cls.compose_tensor(a, cls.exp_tensor(d)),
                                                        inverse)), cls._group_dof(), a)

    @classmethod
    def jr_tensor(cls, tangent: torch.Tensor) -> torch.Tensor:
        """The right Jacobian ``Jr(tangent)`` ``(N, DOF, DOF)`` of the exponential:
        ``exp(tangent + d) ~ exp(tangent) ∘ exp(Jr d)``. Default: by forward mode."""
        base = cls.inverse_tensor(cls.exp_tensor(tangent))
        return tangent_jacobian(
            lambda d: cls.log_tensor(cls.compose_tensor(base, cls.exp_tensor(tangent + d))),
            cls._group_dof(), tangent)

    @classmethod
    def jr_inv_tensor(cls, tangent: torch.Tensor) -> torch.Tensor:
        """``Jr(tangent)^-1`` ``(N, DOF, DOF)``, the derivative of ``log(exp(tangent) ∘ exp(d))``
        at ``d = 0``. Default: by forward mode."""
        base = cls.exp_tensor(tangent)
        return tangent_jacobian(
            lambda d: cls.log_tensor(cls.compose_tensor(base, cls.exp_tensor(d))), cls._group_dof(), tangent)

    @classmethod
    def normalize_tensor(cls, a: torch.Tensor) -> torch.Tensor:
        """Project ``(N, *EVENT_SHAPE)`` data back onto the group after a product (identity on
        the group, so ``retract`` never accumulates rounding). Default: ``a`` unchanged."""
        return a

    @classmethod
    def rand_tensor(cls, batch_size: int, generator: Optional[torch.Generator], dtype: torch.dtype,
                    device: Optional[Union[str, torch.device]]) -> torch.Tensor:
        """Random elements ``(batch_size, *EVENT_SHAPE)``. Default: ``exp`` of normal tangents."""
        tangent = torch.randn(batch_size, cls._group_dof(), generator=generator, dtype=dtype, device=device)
        return cls.exp_tensor(tangent)

    @classmethod
    def to_matrix_tensor(cls, tensor: torch.Tensor) -> torch.Tensor:
        """The matrix of each element ``(N, n, n)``; no default."""
        raise NotImplementedError(f"{cls.__name__} defines no matrix form (to_matrix_tensor)")

    @classmethod
    def transform_from_tensor(cls, tensor: torch.Tensor, point: torch.Tensor, with_jacobians: bool):
        """``g p`` for elements ``(N, *EVENT_SHAPE)`` and points ``(N, POINT_DIM)``: returns the
        points and, when ``with_jacobians``, the Jacobians by the element ``(N, POINT_DIM, DOF)``
        (right perturbation) and by the point ``(N, POINT_DIM, POINT_DIM)`` (else ``None``,
        ``None``). No default: a group acts on points only if it defines this."""
        raise NotImplementedError(f"{cls.__name__} does not act on points (transform_from_tensor)")

    @classmethod
    def transform_to_tensor(cls, tensor: torch.Tensor, point: torch.Tensor, with_jacobians: bool):
        """``g^-1 p``, returned as :meth:`transform_from_tensor` does. Default: ``transform_from``
        of ``g^-1``, whose right perturbation is ``exp(-Ad(g) d)``."""
        inverse = cls.inverse_tensor(tensor)
        out, jac_g, jac_p = cls.transform_from_tensor(inverse, point, with_jacobians)
        if with_jacobians:
            jac_g = -jac_g @ cls.adjoint_tensor(tensor)
        return out, jac_g, jac_p

    # ---- the Manifold contract, derived -------------------------------------------------------
    @classmethod
    def dof_of(cls, event_shape: Tuple[int, ...]) -> int:
        """``DOF``, whatever the shape."""
        return cls._group_dof()

    @classmethod
    def _group_dof(cls) -> int:
        assert cls.DOF is not None, "every concrete group sets DOF (__init_subclass__)"
        return cls.DOF

    @classmethod
    def check_tensor(cls, tensor: torch.Tensor, name: str) -> None:
        assert cls.EVENT_SHAPE is not None, "every concrete group sets EVENT_SHAPE (__init_subclass__)"
        expected = tuple(cls.EVENT_SHAPE)
        if tensor.ndim != 1 + len(expected) or tuple(tensor.shape[1:]) != expected:
            hint = " (add a batch dimension: tensor[None])" if tuple(tensor.shape) == expected else ""
            raise ValueError(f"{cls.__name__} {name!r}: expected a tensor of shape (B, "
                             f"{', '.join(map(str, expected))}) holding {cls.STORAGE}, got "
                             f"{tuple(tensor.shape)}{hint}")
        if not tensor.is_floating_point():
            raise TypeError(f"{cls.__name__} {name!r}: expected a floating dtype, got {tensor.dtype}")
        check_on_group(cls.deviation, tensor, cls.__name__, name, cls.STORAGE)

    @classmethod
    def retract_tensor(cls, tensor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``tensor ∘ exp(delta)``, projected back onto the group (rounding never accumulates)."""
        return cls.normalize_tensor(cls.compose_tensor(tensor, cls.exp_tensor(delta)))

    @classmethod
    def local_tensor(cls, tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``log(tensor^-1 ∘ other)``, ``(N, DOF)``."""
        return cls.log_tensor(cls.between_tensor(tensor, other))

    @classmethod
    def between_tensor(cls, tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``tensor^-1 ∘ other``."""
        return cls.compose_tensor(cls.inverse_tensor(tensor), other)

    @classmethod
    def local_jacobians_tensor(cls, tensor: torch.Tensor, other: torch.Tensor):
        """``e = log(tensor^-1 ∘ other)`` and its Jacobians ``-Jr^-1(-e)``, ``Jr^-1(e)``."""
        error = cls.local_tensor(tensor, other)
        return error, -cls.jr_inv_tensor(-error), cls.jr_inv_tensor(error)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_tensor(cls: Type[G], tensor: torch.Tensor, name: Optional[str] = None) -> G:
        """A new element holding ``tensor`` ``(B, *EVENT_SHAPE)``, without validation (for data
        on the group by construction: hot paths, ``torch.func``)."""
        out = cls.__new__(cls)
        Variable.__init__(out, tensor, name=name)
        return out

    @classmethod
    def identity(cls: Type[G], batch_size: int = 1, dtype: Optional[torch.dtype] = None,
                 device: Optional[Union[str, torch.device]] = None,
                 name: Optional[str] = None) -> G:
        """The identity element, repeated ``batch_size`` times."""
        tensor = cls.identity_tensor(batch_size, dtype or torch.get_default_dtype(), device)
        return cls.from_tensor(tensor, name)

    @classmethod
    def rand(cls: Type[G], batch_size: int = 1, generator: Optional[torch.Generator] = None,
             dtype: Optional[torch.dtype] = None, device: Optional[Union[str, torch.device]] = None,
             name: Optional[str] = None) -> G:
        """Random elements: uniform rotations; translations from a standard normal."""
        tensor = cls.rand_tensor(batch_size, generator, dtype or torch.get_default_dtype(), device)
        return cls.from_tensor(tensor, name)

    @classmethod
    def exp_map(cls: Type[G], tangent: torch.Tensor, jacobians: Optional[List[torch.Tensor]] = None,
                name: Optional[str] = None) -> G:
        """The exponential map: tangent ``(B, dof)`` (translation first) to a group element named
        ``name``; if ``jacobians`` is given, ``Jr(tangent)`` ``(B, dof, dof)`` is appended."""
        tangent = as_tensor(tangent, f"{cls.__name__}.exp_map")
        if tangent.ndim != 2 or tangent.shape[1] != cls.DOF:
            raise ValueError(f"{cls.__name__}.exp_map: expected a tangent of shape (B, {cls.DOF}), "
                             f"got {tuple(tangent.shape)}")
        if jacobians is not None:
            jacobians.append(cls.jr_tensor(tangent))
        return cls.from_tensor(cls.exp_tensor(tangent), name)

    # ---- group operations -------------------------------------------------------------------
    def log_map(self, jacobians: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """The logarithm ``(B, dof)``, rotation angle in ``[0, pi]``; appends ``Jr^-1(log)``."""
        tangent = self.log_tensor(self.tensor)
        if jacobians is not None:
            jacobians.append(self.jr_inv_tensor(tangent))
        return tangent

    def compose(self: G, other: G, jacobians: Optional[List[torch.Tensor]] = None) -> G:
        """``self ∘ other``; appends ``Ad(other^-1)`` and ``I``."""
        a, b = self._pair(other, "compose")
        out = self.compose_tensor(a, b)
        if jacobians is not None:
            jacobians.append(self.adjoint_tensor(self.inverse_tensor(b)))
            jacobians.append(eye(self._group_dof(), out, out.shape[:1]))
        return self.from_tensor(out)

    def inverse(self: G, jacobians: Optional[List[torch.Tensor]] = None) -> G:
        """``self^-1``; appends ``-Ad(self)``."""
        if jacobians is not None:
            jacobians.append(-self.adjoint_tensor(self.tensor))
        return self.from_tensor(self.inverse_tensor(self.tensor))

    def between(self: G, other: G, jacobians: Optional[List[torch.Tensor]] = None) -> G:
        """``self^-1 ∘ other`` (``other`` seen from ``self``); appends ``-Ad(other^-1 ∘ self)``, ``I``."""
        a, b = self._pair(other, "between")
        out = self.between_tensor(a, b)
        if jacobians is not None:
            jacobians.append(-self.adjoint_tensor(self.inverse_tensor(out)))
            jacobians.append(eye(self._group_dof(), out, out.shape[:1]))
        return self.from_tensor(out)

    def adjoint(self) -> torch.Tensor:
        """``Ad(self)`` ``(B, dof, dof)``: ``self ∘ exp(d) ∘ self^-1 = exp(Ad(self) d)``."""
        return self.adjoint_tensor(self.tensor)

    def to_matrix(self) -> torch.Tensor:
        """The homogeneous matrix: ``SO2 (B,2,2)``, ``SE2 (B,3,3)``, ``SO3 (B,3,3)``, ``SE3 (B,4,4)``."""
        return self.to_matrix_tensor(self.tensor)

    def retract(self: G, delta: torch.Tensor, jacobians: Optional[List[torch.Tensor]] = None) -> G:
        """``self ∘ exp(delta)``, ``delta`` ``(B, dof)`` (a batch of 1 broadcasts); appends
        ``Ad(exp(-delta))`` and ``Jr(delta)``."""
        out = super().retract(delta)
        if jacobians is not None:
            delta = delta.expand(out.shape[0], self._group_dof())
            jacobians.append(self.adjoint_tensor(self.exp_tensor(-delta)))
            jacobians.append(self.jr_tensor(delta))
        return out

    def local(self: G, other: G, jacobians: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """``log(self^-1 ∘ other)`` ``(B, dof)``; appends ``-Jr^-1(-e)`` and ``Jr^-1(e)``."""
        a, b = self._pair(other, "local")
        if jacobians is None:
            return self.local_tensor(a, b)
        error, jac_self, jac_other = self.local_jacobians_tensor(a, b)
        jacobians.extend((jac_self, jac_other))
        return error

    # ---- acting on points ---------------------------------------------------------------------
    def transform_from(self, point, jacobians: Optional[List[torch.Tensor]] = None):
        """``self p``: a point from this frame to the outer frame (``R p + t``).

        Args:
            point: ``(B, d)`` tensor or a ``Point2``/``Point3`` (``d`` = 2 or 3); the result has
                the same kind.
            jacobians: if given, appends ``d/d self`` ``(B, d, dof)`` and ``d/d point`` ``(B, d, d)``.
        """
        return self._act(point, jacobians, self.transform_from_tensor, "transform_from")

    def transform_to(self, point, jacobians: Optional[List[torch.Tensor]] = None):
        """``self^-1 p``: a point from the outer frame into this frame (``R^T (p - t)``); arguments
        as :meth:`transform_from`."""
        return self._act(point, jacobians, self.transform_to_tensor, "transform_to")

    def _act(self, point, jacobians, function, what):
        variable = point if isinstance(point, Variable) else None
        tensor = point.tensor if variable is not None else as_tensor(point, f"{self.name}.{what}")
        if not self.POINT_DIM:
            raise NotImplementedError(f"{type(self).__name__} does not act on points")
        if tensor.ndim != 2 or tensor.shape[1] != self.POINT_DIM:
            raise ValueError(f"{type(self).__name__} {self.name!r}: {what} expects points of shape "
                             f"(B, {self.POINT_DIM}), got {tuple(tensor.shape)}")
        g, p = broadcast_batch(self.tensor, tensor, self.name)
        out, jac_g, jac_p = function(g, p, jacobians is not None)
        if jacobians is not None:
            jacobians.extend((jac_g, jac_p))
        if variable is None:
            return out
        result = variable.with_tensor(out)
        Variable.__init__(result, out)  # a fresh name
        return result

    def _pair(self, other, what: str):
        if not isinstance(other, type(self)):
            raise TypeError(f"{type(self).__name__} {self.name!r}: {what} needs a "
                            f"{type(self).__name__}, got {type(other).__name__}")
        return broadcast_batch(self.tensor, other.tensor, self.name)

    def __mul__(self, other: "LieGroup") -> "LieGroup":
        """``g * h`` is ``g.compose(h)``."""
        if not isinstance(other, LieGroup):
            return NotImplemented
        return self.compose(other)


class Rotation(LieGroup):
    """Base of the rotation groups (``SO2``, ``SO3``): acting on a point is rotating it."""

    def rotate(self, point, jacobians: Optional[List[torch.Tensor]] = None):
        """``R p``; same as :meth:`transform_from`."""
        return self.transform_from(point, jacobians)

    def unrotate(self, point, jacobians: Optional[List[torch.Tensor]] = None):
        """``R^T p``; same as :meth:`transform_to`."""
        return self.transform_to(point, jacobians)
