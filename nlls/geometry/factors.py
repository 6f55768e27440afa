"""The standard factors of pose graphs: ``Between`` (a relative measurement) and ``Difference``
(a prior).

A pose graph is a set of poses ``x_i`` and measurements ``m_ij`` of the motion from ``x_i`` to
``x_j`` (odometry, loop closures). The motion the current estimate implies is
``x_i^-1 ∘ x_j`` (``x_i.between(x_j)``), and the residual is how far the measurement has to move
to reach it, in the measurement's tangent space:

    Between:     e = log(m^-1 ∘ x_i^-1 ∘ x_j) = m.local(x_i.between(x_j))      (dof entries)
    Difference:  e = log(t^-1 ∘ x)            = t.local(x)                       (a prior on x)

With ``z = x_i^-1 ∘ x_j`` and right perturbations of each pose, the Jacobians are

    Between:     de/dx_i = -Jr^-1(e) Ad(z^-1),    de/dx_j = Jr^-1(e)
    Difference:  de/dx   = Jr^-1(e)

(``Jr^-1`` the inverse right Jacobian of the group's ``exp``, see :mod:`nlls.geometry.lie_group`).
For vector variables (``Vector``, ``Point2``, ``Point3``) the same factors are the plain
differences ``(x_j - x_i) - m`` and ``x - t`` with Jacobians ``-I``, ``I``.

Both use only their registered variables and treat batch rows independently, so the solver
evaluates thousands of them as one stacked call (:mod:`nlls.core.evaluation`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..core.cost_function import CostFunction, CostWeightLike
from ..core.cost_weight import CostWeight, DiagonalCostWeight, MatrixCostWeight, ScaleCostWeight
from ..core.factor_group import FactorGroup
from ..core.manifold import Manifold, Vector, broadcast_batch
from ..core.variable import Variable, as_tensor
from .lie_group import LieGroup
from .numerics import eye

#: data of many factors: a tensor or Variable ``(B or 1, E, ...)``
GroupData = Union[torch.Tensor, Variable]


def _check_data(owner: CostFunction, role: str, data, variable: Manifold) -> None:
    """``data`` (measurement/target) must be a variable of ``variable``'s kind and shape."""
    if isinstance(variable, LieGroup):
        ok = isinstance(data, type(variable))
        wanted = type(variable).__name__
    else:
        ok = isinstance(data, Variable) and not isinstance(data, LieGroup)
        wanted = f"Variable of shape (B, {variable.dof()})"
    if not ok:
        raise TypeError(
            f"{type(owner).__name__} {owner.name!r}: {role} must be a {wanted} (like variable "
            f"{variable.name!r}), got {type(data).__name__}"
        )
    if data.event_shape != variable.event_shape:
        raise ValueError(
            f"{type(owner).__name__} {owner.name!r}: {role} {data.name!r} has shape "
            f"{tuple(data.shape)}, variable {variable.name!r} has {tuple(variable.shape)}"
        )


def _check_variable(owner: CostFunction, variable) -> None:
    if not isinstance(variable, (LieGroup, Vector)):
        raise TypeError(
            f"{type(owner).__name__} {owner.name!r}: variable {variable.name!r} must be a Lie "
            f"group (SO2, SE2, SO3, SE3) or a Vector/Point, got {type(variable).__name__}"
        )


def _group_data(what: str, value: GroupData, role: str, name: str) -> Variable:
    if isinstance(value, Variable):
        return value
    tensor = as_tensor(value, f"{what}: {role}")
    if tensor.ndim < 2:
        raise ValueError(f"{what}: {role} must have shape (B or 1, E, ...), got {tuple(tensor.shape)}")
    return Variable(tensor, name=name)


def _stand_in(variables: Sequence[Manifold], what: str, role: str) -> Manifold:
    """A shape carrier for a template: the first variable's type, dtype and device."""
    if isinstance(variables, Variable) or not len(variables):
        raise TypeError(f"{what}: {role} must be a non-empty sequence of variables")
    first = variables[0]
    out = first.with_tensor(first.tensor[:1])
    out._name = f"{what}.{role}"
    return out


def _data_stand_in(like: Manifold, data: Variable, what: str, role: str) -> Variable:
    """A stand-in for one factor's data (``data[:1, 0]``): of ``like``'s group for Lie groups."""
    if data.ndim < 2:
        raise ValueError(f"{what}: {role} {data.name!r} must have shape (B or 1, E, ...), got "
                         f"{tuple(data.shape)}")
    one = data.tensor[:1, 0]
    if isinstance(like, LieGroup):
        return type(like).from_tensor(one, f"{what}.{role}")
    return Variable(one, name=f"{what}.{role}")


def _group_weight(what: str, weights: Optional[GroupData], count: int,
                  name: str) -> Tuple[Optional[CostWeight], List[Variable]]:
    """The template's weight and the group's weight data: ``(B or 1, E)`` a scale per factor,
    ``(B or 1, E, dim)`` a diagonal, ``(B or 1, E, dim, dim)`` a square-root information matrix."""
    if weights is None:
        return None, []
    data = _group_data(what, weights, "weights", name)
    if data.ndim == 2 and not isinstance(weights, Variable):
        data = Variable(data.tensor[..., None], name=data.name)
    if data.ndim not in (3, 4) or data.shape[1] != count:
        raise ValueError(f"{what}: weights {data.name!r} must have shape (B or 1, {count}), (B or 1, "
                         f"{count}, dim) or (B or 1, {count}, dim, dim), got {tuple(data.shape)}")
    one = Variable(data.tensor[:1, 0], name=f"{what}.weights")
    if data.ndim == 4:
        return MatrixCostWeight(one), [data]
    weight = ScaleCostWeight(one) if data.shape[2] == 1 else DiagonalCostWeight(one)
    return weight, [data]


def _between_error(cls, x1: torch.Tensor, x2: torch.Tensor, measurement: torch.Tensor,
                   with_jacobians: bool):
    """``e = log(measurement^-1 ∘ x1^-1 ∘ x2)`` of the Lie group ``cls`` and, when
    ``with_jacobians``, ``-Jr^-1(e) Ad(z^-1)`` and ``Jr^-1(e)`` (``z = x1^-1 ∘ x2``; else ``None``,
    ``None``): by the group's closed form where it defines one (``between_error_tensor``, as
    :class:`~nlls.geometry.se2.SE2` does), else from its maps."""
    closed = getattr(cls, "between_error_tensor", None)
    if closed is not None:
        return closed(x1, x2, measurement, with_jacobians)
    relative = cls.between_tensor(x1, x2)
    error = cls.local_tensor(measurement, relative)
    if not with_jacobians:
        return error, None, None
    jr_inv = cls.jr_inv_tensor(error)
    return error, -jr_inv @ cls.adjoint_tensor(cls.inverse_tensor(relative)), jr_inv


def _identity_jacobian(like: torch.Tensor, dof: int, sign: float = 1.0) -> torch.Tensor:
    identity = eye(dof, like, like.shape[:1])
    return identity if sign > 0 else -identity


class Difference(CostFunction):
    """A prior: ``error = target.local(var)``, the tangent from ``target`` to ``var``.

    Args:
        var: the optimized variable (a Lie group element or a vector).
        target: an aux variable of the same type and shape (for vectors, any ``Variable``).
        cost_weight: weight of the residual (``1/sigma`` per tangent coordinate, say).
        name: unique name inside an objective.

    Raises:
        TypeError, ValueError: ``target`` does not match ``var``; the message names both.
    """

    def __init__(
        self,
        var: Manifold,
        target: Variable,
        cost_weight: Optional[CostWeightLike] = None,
        name: Optional[str] = None,
    ):
        super().__init__(optim_vars=(var,), aux_vars=(target,), cost_weight=cost_weight, name=name)
        _check_variable(self, var)
        _check_data(self, "target", target, var)
        self.var = var
        self.target = target

    def dim(self) -> int:
        return self.var.dof()

    @classmethod
    def many(cls, variables: Sequence[Manifold], index, targets: GroupData,
             weights: Optional[GroupData] = None, name: Optional[str] = None) -> FactorGroup:
        """``E`` priors at once, ``error_k = targets_k.local(variables[index[k]])``, as one
        :class:`~nlls.FactorGroup`.

        Args:
            variables: ``N`` optim variables of one type and shape.
            index: ``(E,)`` integer positions in ``variables``.
            targets: ``(B or 1, E, *shape)`` tensor or Variable (``<name>_targets`` for a tensor).
            weights: ``None``, or per factor a scale ``(B or 1, E)``, a diagonal
                ``(B or 1, E, dof)`` or a square-root information matrix ``(B or 1, E, dof, dof)``
                (tensor or Variable, ``<name>_weights`` for a tensor; a Variable scale is
                ``(B or 1, E, 1)``).
            name: the group's name.
        """
        group = name if name is not None else "Difference_many"
        what = f"Difference.many {group!r}"
        stand_in = _stand_in(variables, what, "variables")
        target = _group_data(what, targets, "targets", f"{group}_targets")
        count = int(as_tensor(index, f"{what}: index").numel())
        weight, weight_data = _group_weight(what, weights, count, f"{group}_weights")
        template = cls(stand_in, _data_stand_in(stand_in, target, what, "targets"), weight, name=what)
        return FactorGroup(template, [(variables, index)], [target, *weight_data], name=name)

    def _inputs(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return broadcast_batch(self.target.tensor, self.var.tensor, self.name)

    def error(self) -> torch.Tensor:
        target, var = self._inputs()
        if isinstance(self.var, LieGroup):
            return type(self.var).local_tensor(target, var)
        return var - target

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        target, var = self._inputs()
        if isinstance(self.var, LieGroup):
            cls = type(self.var)
            error = cls.local_tensor(target, var)
            return [cls.jr_inv_tensor(error)], error
        error = var - target
        return [_identity_jacobian(error, error.shape[1])], error


class Between(CostFunction):
    """A relative measurement: ``error = measurement.local(var1.between(var2))``.

    Args:
        var1, var2: the two optimized variables, of the same type (Lie group or vector).
        measurement: an aux variable of that type: the measured ``var1^-1 ∘ var2`` (for vectors,
            ``var2 - var1``).
        cost_weight: weight of the residual.
        name: unique name inside an objective.

    Raises:
        TypeError, ValueError: the variables or the measurement do not match; the message names
            them.
    """

    def __init__(
        self,
        var1: Manifold,
        var2: Manifold,
        measurement: Variable,
        cost_weight: Optional[CostWeightLike] = None,
        name: Optional[str] = None,
    ):
        super().__init__(optim_vars=(var1, var2), aux_vars=(measurement,), cost_weight=cost_weight,
                         name=name)
        _check_variable(self, var1)
        if type(var2) is not type(var1) or var2.event_shape != var1.event_shape:
            raise TypeError(
                f"Between {self.name!r}: variables {var1.name!r} ({type(var1).__name__} "
                f"{tuple(var1.shape)}) and {var2.name!r} ({type(var2).__name__} "
                f"{tuple(var2.shape)}) must have the same type and shape"
            )
        _check_data(self, "measurement", measurement, var1)
        self.var1 = var1
        self.var2 = var2
        self.measurement = measurement

    def dim(self) -> int:
        return self.var1.dof()

    @classmethod
    def many(cls, variables: Sequence[Manifold], i, j, measurements: GroupData,
             weights: Optional[GroupData] = None, name: Optional[str] = None) -> FactorGroup:
        """``E`` relative measurements at once, ``error_k = measurements_k.local(
        variables[i[k]].between(variables[j[k]]))``, as one :class:`~nlls.FactorGroup`: one object
        instead of ``E`` cost functions, evaluated as one stacked call.

        Args:
            variables: ``N`` optim variables of one type and shape (poses, say).
            i, j: ``(E,)`` integer positions in ``variables`` of each factor's two variables.
            measurements: ``(B or 1, E, *shape)`` tensor or Variable (``<name>_measurements`` for
                a tensor): one measured ``x_i^-1 x_j`` per factor.
            weights: ``None``, or per factor a scale ``(B or 1, E)``, a diagonal
                ``(B or 1, E, dof)`` or a square-root information matrix ``(B or 1, E, dof, dof)``
                (tensor or Variable, ``<name>_weights`` for a tensor; a Variable scale is
                ``(B or 1, E, 1)``). A tensor that requires grad makes every weight learnable.
            name: the group's name.

        Raises:
            TypeError, ValueError: shapes or types that do not fit; the message names the group.
        """
        group = name if name is not None else "Between_many"
        what = f"Between.many {group!r}"
        first = _stand_in(variables, what, "var1")
        second = _stand_in(variables, what, "var2")
        measured = _group_data(what, measurements, "measurements", f"{group}_measurements")
        count = int(as_tensor(i, f"{what}: i").numel())
        weight, weight_data = _group_weight(what, weights, count, f"{group}_weights")
        template = cls(first, second, _data_stand_in(first, measured, what, "measurements"), weight,
                       name=what)
        return FactorGroup(template, [(variables, i), (variables, j)], [measured, *weight_data],
                           name=name)

    def _inputs(self):
        x1, x2 = broadcast_batch(self.var1.tensor, self.var2.tensor, self.name)
        measurement, x1 = broadcast_batch(self.measurement.tensor, x1, self.name)
        measurement, x2 = broadcast_batch(measurement, x2, self.name)
        return x1, x2, measurement

    def error(self) -> torch.Tensor:
        x1, x2, measurement = self._inputs()
        if isinstance(self.var1, LieGroup):
            return _between_error(type(self.var1), x1, x2, measurement, False)[0]
        return (x2 - x1) - measurement

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        x1, x2, measurement = self._inputs()
        if isinstance(self.var1, LieGroup):
            error, jac1, jac2 = _between_error(type(self.var1), x1, x2, measurement, True)
            return [jac1, jac2], error
        error = (x2 - x1) - measurement
        dof = error.shape[1]
        return [_identity_jacobian(error, dof, -1.0), _identity_jacobian(error, dof)], error
