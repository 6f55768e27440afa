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

from typing import List, Optional, Tuple

import torch

from ..core.cost_function import CostFunction, CostWeightLike
from ..core.manifold import Manifold, Vector, broadcast_batch
from ..core.variable import Variable
from .lie_group import LieGroup
from .numerics import eye


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

    def _inputs(self):
        x1, x2 = broadcast_batch(self.var1.tensor, self.var2.tensor, self.name)
        measurement, x1 = broadcast_batch(self.measurement.tensor, x1, self.name)
        measurement, x2 = broadcast_batch(measurement, x2, self.name)
        return x1, x2, measurement

    def error(self) -> torch.Tensor:
        x1, x2, measurement = self._inputs()
        if isinstance(self.var1, LieGroup):
            cls = type(self.var1)
            return cls.local_tensor(measurement, cls.between_tensor(x1, x2))
        return (x2 - x1) - measurement

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        x1, x2, measurement = self._inputs()
        if isinstance(self.var1, LieGroup):
            cls = type(self.var1)
            relative = cls.between_tensor(x1, x2)
            error = cls.local_tensor(measurement, relative)
            jr_inv = cls.jr_inv_tensor(error)
            jac1 = -jr_inv @ cls.adjoint_tensor(cls.inverse_tensor(relative))
            return [jac1, jr_inv], error
        error = (x2 - x1) - measurement
        dof = error.shape[1]
        return [_identity_jacobian(error, dof, -1.0), _identity_jacobian(error, dof)], error
