"""Lie groups: rotations and rigid motions as manifolds.

A rotation cannot be optimized like a vector: the sum of two rotation matrices is not a rotation,
and three angles have gimbal lock. What does work is to keep the rotation whole and move it by
*small rotations*. The rotations (and rigid motions) form a *Lie group* ``G``: a manifold on which
elements compose (``g ∘ h``), invert, and act on points. Near the identity the group looks like a
vector space, its *tangent space* (the Lie algebra) of size ``dof``: 1 for 2-D rotations, 3 for
2-D poses and 3-D rotations, 6 for 3-D poses. Two maps connect the two views:

* ``exp``: tangent -> group, "rotate about this axis by this angle" (the axis-angle vector's
  length is the angle); ``exp(0)`` is the identity;
* ``log``: group -> tangent, its inverse, defined for rotation angles in ``[0, pi]``.

An optimizer then moves ``x`` by a tangent step applied *on the right*::

    retract(x, delta) = x ∘ exp(delta)          local(x, y) = log(x^-1 ∘ y)

so ``local(x, retract(x, delta)) == delta`` for steps shorter than pi, and the Jacobian of any
function ``f(x)`` is taken with respect to ``delta`` at ``delta = 0`` (``dof`` columns however the
element is stored). Every group operation here takes an optional ``jacobians`` list and appends
these analytic Jacobians, one per input, shaped ``(B, out, dof)``:

* ``compose(g, h)``:   ``Ad(h^-1)`` and ``I``;   ``inverse(g)``: ``-Ad(g)``;
* ``between(g, h) = g^-1 ∘ h``: ``-Ad(h^-1 ∘ g)`` and ``I``;
* ``exp(tau)``: the right Jacobian ``Jr(tau)``, ``exp(tau + d) ~ exp(tau) ∘ exp(Jr(tau) d)``;
* ``log(g)``: its inverse ``Jr^-1(log g)``;
* ``local(x, y) = e``: ``-Jr^-1(-e)`` and ``Jr^-1(e)``;  ``retract(x, d)``: ``Ad(exp(-d))``, ``Jr(d)``;
* ``transform_from(g, p) = g p`` and ``transform_to(g, p) = g^-1 p``: w.r.t. ``g`` and ``p``.

``Ad(g)`` is the adjoint, ``g ∘ exp(d) ∘ g^-1 = exp(Ad(g) d)``. Tangents list translation first,
then rotation (``SE2``: ``(vx, vy, omega)``, ``SE3``: ``(v, w)``), as in Sophus and Theseus.

Formulas such as ``sin(t)/t`` are 0/0 at the identity and lose precision near it; each is
evaluated per batch element as a Taylor series below a small angle and in closed form above it,
chosen with ``torch.where`` (whose unused branch is fed a safe angle, so neither values nor
gradients see a NaN). The logarithm of a 3-D rotation near ``pi`` has its own branch. No Python
branch depends on data, so every map works under ``torch.func`` (``vmap``, ``jvp``, ``vjp``), as
:class:`~nlls.core.cost_function.AutoDiffCostFunction` requires.

Data handed over by the user (constructors, ``update``) is checked once: a rotation whose
``|R^T R - I|``, ``|det R - 1|`` or ``|cos^2 + sin^2 - 1|`` exceeds 1e-5 (float64) or 1e-4
(float32) is refused with a ``ValueError`` naming the variable and the batch element. Results of
group operations are built without checks, and ``retract`` projects back onto the group.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..core.manifold import Manifold, _broadcast_batch
from ..core.variable import Variable, as_tensor as _as_tensor, _ids

#: largest deviation from the group (``|R^T R - I|``, ``|cos^2 + sin^2 - 1|``) accepted at construction
_TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-4}
_TOLERANCE_OTHER = 1e-2  # half precision


def _tolerance(dtype: torch.dtype) -> float:
    return _TOLERANCE.get(dtype, _TOLERANCE_OTHER)


# Taylor series (coefficients of t^0, t^2, t^4, t^6) of the functions of the rotation angle ``t``
# that both the 2-D and the 3-D groups use
_A = (1.0, -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0)  # sin t / t
_B = (0.5, -1.0 / 24.0, 1.0 / 720.0, -1.0 / 40320.0)  # (1 - cos t) / t^2
_C = (1.0 / 6.0, -1.0 / 120.0, 1.0 / 5040.0, -1.0 / 362880.0)  # (t - sin t) / t^3


def _small(theta2: torch.Tensor, float64: float = 1e-3, other: float = 0.25) -> torch.Tensor:
    """Where the squared angle takes the Taylor branch: below ``float64`` in double precision,
    ``other`` in single and half. The series keep four terms, exact to rounding there, and the
    closed forms lose little to cancellation above."""
    return theta2 < (float64 if theta2.dtype == torch.float64 else other)


def _horner(x: torch.Tensor, coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_k coefficients[k] * x**k``."""
    out = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


def _safe_sqrt(x2: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``sqrt(x2)`` where not ``small``, 1 elsewhere (a value whose gradient is finite)."""
    return torch.sqrt(torch.where(small, torch.ones_like(x2), x2))


def _eye(n: int, like: torch.Tensor, batch_shape: Tuple[int, ...]) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device).expand(*batch_shape, n, n)


class LieGroup(Manifold):
    """Base class of the matrix Lie groups ``SO2``, ``SE2``, ``SO3``, ``SE3``.

    Subclasses define the tensor-level maps on raw data ``(N, *event_shape)`` (class methods that
    broadcast over ``N``): ``_exp_tensor``, ``_log_tensor``, ``_compose_tensor``,
    ``_inverse_tensor``, ``_adjoint_tensor``, ``_jr_tensor``, ``_jr_inv_tensor``,
    ``_normalize_tensor``, ``_deviation``, ``_to_matrix_tensor``, ``_identity_tensor``,
    ``_rand_tensor`` and the point actions ``_transform_from_tensor``/``_transform_to_tensor``.
    Everything else (the public operations, their Jacobians, ``retract``/``local``) is shared.

    Args:
        tensor: ``(B, *event_shape)`` data in the group's storage format; identity when omitted.
        name: unique name inside an objective.
        dtype: cast the data to this dtype (default: the tensor's, or torch's default).

    Raises:
        ValueError: a wrong shape, or data off the group by more than the dtype's tolerance.
    """

    _dof: int = 0
    _event_shape: Tuple[int, ...] = ()
    _point_dim: int = 0
    _storage: str = ""  # what the stored tensor holds, for error messages

    def __init__(
        self,
        tensor: Optional[torch.Tensor] = None,
        name: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        if tensor is None:
            tensor = self._identity_tensor(1, dtype or torch.get_default_dtype(), None)
        tensor = _as_tensor(tensor, f"{type(self).__name__} {name!r}")
        if dtype is not None:
            tensor = tensor.to(dtype)
        super().__init__(tensor, name=name)

    # ---- the Manifold interface the solver uses ---------------------------------------------
    @classmethod
    def _dof_of(cls, event_shape: Tuple[int, ...]) -> int:
        return cls._dof

    @classmethod
    def _check_tensor(cls, tensor: torch.Tensor, name: str) -> None:
        expected = cls._event_shape
        if tensor.ndim != 1 + len(expected) or tuple(tensor.shape[1:]) != expected:
            hint = " (add a batch dimension: tensor[None])" if tuple(tensor.shape) == expected else ""
            raise ValueError(
                f"{cls.__name__} {name!r}: expected a tensor of shape (B, "
                f"{', '.join(map(str, expected))}) holding {cls._storage}, got "
                f"{tuple(tensor.shape)}{hint}"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"{cls.__name__} {name!r}: expected a floating dtype, got {tensor.dtype}")
        if tensor.shape[0] == 0:
            return
        with torch.no_grad():
            deviation = cls._deviation(tensor.detach())
        tolerance = _tolerance(tensor.dtype)
        bad = ~(deviation <= tolerance)  # also catches NaN
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{cls.__name__} {name!r}: batch element {index} is not a valid {cls.__name__} "
                f"({cls._storage}; deviation {float(deviation[index]):.2e} > tolerance "
                f"{tolerance:.0e} for {tensor.dtype})"
            )

    @classmethod
    def _retract_tensor(cls, tensor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``tensor ∘ exp(delta)``, projected back onto the group (rounding never accumulates)."""
        return cls._normalize_tensor(cls._compose_tensor(tensor, cls._exp_tensor(delta)))

    @classmethod
    def _local_tensor(cls, tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``log(tensor^-1 ∘ other)``, ``(N, dof)``."""
        return cls._log_tensor(cls._between_tensor(tensor, other))

    @classmethod
    def _between_tensor(cls, tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``tensor^-1 ∘ other``."""
        return cls._compose_tensor(cls._inverse_tensor(tensor), other)

    @classmethod
    def _local_jacobians_tensor(cls, tensor: torch.Tensor, other: torch.Tensor):
        """``e = log(tensor^-1 ∘ other)`` and its Jacobians ``-Jr^-1(-e)``, ``Jr^-1(e)``."""
        error = cls._local_tensor(tensor, other)
        return error, -cls._jr_inv_tensor(-error), cls._jr_inv_tensor(error)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def _from_tensor(cls, tensor: torch.Tensor, name: Optional[str] = None) -> "LieGroup":
        """A new element holding ``tensor``, without validation (hot paths, ``torch.func``)."""
        out = cls.__new__(cls)
        out._name = name if name is not None else f"{cls.__name__}__{next(_ids)}"
        out.tensor = tensor
        return out

    @classmethod
    def identity(
        cls,
        batch_size: int = 1,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        name: Optional[str] = None,
    ) -> "LieGroup":
        """The identity element, repeated ``batch_size`` times."""
        tensor = cls._identity_tensor(batch_size, dtype or torch.get_default_dtype(), device)
        return cls._from_tensor(tensor, name)

    @classmethod
    def rand(
        cls,
        batch_size: int = 1,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        name: Optional[str] = None,
    ) -> "LieGroup":
        """Random elements: uniform rotations; translations from a standard normal."""
        tensor = cls._rand_tensor(batch_size, generator, dtype or torch.get_default_dtype(), device)
        return cls._from_tensor(tensor, name)

    @classmethod
    def exp_map(
        cls,
        tangent: torch.Tensor,
        jacobians: Optional[List[torch.Tensor]] = None,
        name: Optional[str] = None,
    ) -> "LieGroup":
        """The exponential map: tangent ``(B, dof)`` (translation first) to a group element.

        Args:
            tangent: ``(B, dof)``.
            jacobians: if given, ``Jr(tangent)`` ``(B, dof, dof)`` is appended.
            name: name of the result.
        """
        tangent = _as_tensor(tangent, f"{cls.__name__}.exp_map")
        if tangent.ndim != 2 or tangent.shape[1] != cls._dof:
            raise ValueError(
                f"{cls.__name__}.exp_map: expected a tangent of shape (B, {cls._dof}), got "
                f"{tuple(tangent.shape)}"
            )
        if jacobians is not None:
            jacobians.append(cls._jr_tensor(tangent))
        return cls._from_tensor(cls._exp_tensor(tangent), name)

    # ---- group operations -------------------------------------------------------------------
    def log_map(self, jacobians: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """The logarithm ``(B, dof)``, rotation angle in ``[0, pi]``; appends ``Jr^-1(log)``."""
        tangent = self._log_tensor(self.tensor)
        if jacobians is not None:
            jacobians.append(self._jr_inv_tensor(tangent))
        return tangent

    def compose(self, other: "LieGroup", jacobians: Optional[List[torch.Tensor]] = None) -> "LieGroup":
        """``self ∘ other``; appends ``Ad(other^-1)`` and ``I``."""
        a, b = self._pair(other, "compose")
        out = self._compose_tensor(a, b)
        if jacobians is not None:
            jacobians.append(self._adjoint_tensor(self._inverse_tensor(b)))
            jacobians.append(_eye(self._dof, out, out.shape[:1]))
        return self._from_tensor(out)

    def inverse(self, jacobians: Optional[List[torch.Tensor]] = None) -> "LieGroup":
        """``self^-1``; appends ``-Ad(self)``."""
        if jacobians is not None:
            jacobians.append(-self._adjoint_tensor(self.tensor))
        return self._from_tensor(self._inverse_tensor(self.tensor))

    def between(self, other: "LieGroup", jacobians: Optional[List[torch.Tensor]] = None) -> "LieGroup":
        """``self^-1 ∘ other`` (``other`` seen from ``self``); appends ``-Ad(other^-1 ∘ self)``, ``I``."""
        a, b = self._pair(other, "between")
        out = self._between_tensor(a, b)
        if jacobians is not None:
            jacobians.append(-self._adjoint_tensor(self._inverse_tensor(out)))
            jacobians.append(_eye(self._dof, out, out.shape[:1]))
        return self._from_tensor(out)

    def adjoint(self) -> torch.Tensor:
        """``Ad(self)`` ``(B, dof, dof)``: ``self ∘ exp(d) ∘ self^-1 = exp(Ad(self) d)``."""
        return self._adjoint_tensor(self.tensor)

    def to_matrix(self) -> torch.Tensor:
        """The homogeneous matrix: ``SO2 (B,2,2)``, ``SE2 (B,3,3)``, ``SO3 (B,3,3)``, ``SE3 (B,4,4)``."""
        return self._to_matrix_tensor(self.tensor)

    def retract(self, delta: torch.Tensor, jacobians: Optional[List[torch.Tensor]] = None) -> "LieGroup":
        """``self ∘ exp(delta)``; appends ``Ad(exp(-delta))`` and ``Jr(delta)``.

        Args:
            delta: ``(B, dof)`` tangent step (a batch of 1 broadcasts).
        """
        out = super().retract(delta)
        if jacobians is not None:
            delta = delta.expand(out.shape[0], self._dof)
            jacobians.append(self._adjoint_tensor(self._exp_tensor(-delta)))
            jacobians.append(self._jr_tensor(delta))
        return out

    def local(self, other: "LieGroup", jacobians: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """``log(self^-1 ∘ other)`` ``(B, dof)``; appends ``-Jr^-1(-e)`` and ``Jr^-1(e)``."""
        a, b = self._pair(other, "local")
        if jacobians is None:
            return self._local_tensor(a, b)
        error, jac_self, jac_other = self._local_jacobians_tensor(a, b)
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
        return self._act(point, jacobians, self._transform_from_tensor, "transform_from")

    def transform_to(self, point, jacobians: Optional[List[torch.Tensor]] = None):
        """``self^-1 p``: a point from the outer frame into this frame (``R^T (p - t)``).

        Same arguments as :meth:`transform_from`.
        """
        return self._act(point, jacobians, self._transform_to_tensor, "transform_to")

    def _act(self, point, jacobians, function, what):
        variable = point if isinstance(point, Variable) else None
        tensor = point.tensor if variable is not None else _as_tensor(point, f"{self.name}.{what}")
        if tensor.ndim != 2 or tensor.shape[1] != self._point_dim:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: {what} expects points of shape "
                f"(B, {self._point_dim}), got {tuple(tensor.shape)}"
            )
        g, p = _broadcast_batch(self.tensor, tensor, self.name)
        out, jac_g, jac_p = function(g, p, jacobians is not None)
        if jacobians is not None:
            jacobians.extend((jac_g, jac_p))
        if variable is None:
            return out
        result = variable._with_tensor(out)
        result._name = f"{type(variable).__name__}__{next(_ids)}"
        return result

    # ---- helpers ----------------------------------------------------------------------------
    def _pair(self, other, what: str):
        if not isinstance(other, type(self)):
            raise TypeError(
                f"{type(self).__name__} {self.name!r}: {what} needs a {type(self).__name__}, "
                f"got {type(other).__name__}"
            )
        return _broadcast_batch(self.tensor, other.tensor, self.name)

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
