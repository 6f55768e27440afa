"""Robust losses: least squares that outliers cannot drag away.

A squared residual grows without bound, so one gross outlier (a wrong data association, a false
loop closure) can outweigh hundreds of good measurements. A robust loss ``rho`` replaces the
cost of a residual block by a function that grows more slowly for large residuals. As in Ceres,
``rho`` is applied to the squared norm of the weighted residual, ``s = ||w r||^2``, and the
objective becomes

    0.5 * sum_i rho_i(s_i),     rho(s) ~ s for small s (inliers are plain least squares).

The losses live in :mod:`nlls.core.losses` (imported here too): Huber, soft L1, Cauchy, arctan
and Tukey take a ``radius`` ``a`` in residual units (after the weight): residual blocks shorter
than ``a`` count (nearly) as in least squares, longer ones are discounted, down to no pull at all
for Tukey beyond ``a``. ``TolerantLoss(a, b)`` is the reverse, a soft dead zone below ``s = a``,
and ``ScaledLoss(loss, scale)`` multiplies a loss (or least squares) by a constant.

**What the solver sees.** :class:`RobustCostFunction` wraps any cost function. Its
``weighted_error()`` is ``sqrt(rho(s)/s) * w r``, whose squared norm is ``rho(s)``, so every place
that sums squared residuals (``Objective.error_metric``, the optimizer's error) gets the robust
objective. Its ``weighted_jacobians_error()`` returns the pair ``(J', r')`` the Gauss-Newton
model is built from, chosen so that the gradient is exact, ``J'^T r' = rho'(s) (w J)^T (w r)``.
It is Ceres' corrector (Triggs et al., "Bundle adjustment: a modern synthesis", sec. 4.3):

    J' = sqrt(rho') (I - alpha r r^T / s) w J,     r' = sqrt(rho') / (1 - alpha) w r,

with ``alpha = 1 - sqrt(1 + 2 s rho''/rho')`` where ``rho'' > 0`` and ``alpha = 0`` elsewhere. For
Huber, soft L1, Cauchy, arctan and Tukey ``rho'' <= 0`` everywhere (of the losses here only the
tolerant loss has ``rho'' > 0``), so their model is the plain iteratively reweighted one
(``J' = sqrt(rho') w J``, ``r' = sqrt(rho') w r``): ``J'^T J'`` stays positive semi-definite,
where the full second-order term would make it indefinite for outliers (Ceres clamps it the same
way). Where ``rho' = 0`` (Tukey beyond its radius) the block drops out of the model, ``J' = 0``,
``r' = 0``, with finite gradients. ``r'`` serves only to build ``A`` and ``g``; the error the
optimizer reports and accepts steps on comes from ``weighted_error()``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .cost_function import CostFunction
from .losses import (
    ArctanLoss,
    CauchyLoss,
    HuberLoss,
    RobustLoss,
    ScaledLoss,
    SoftLOneLoss,
    TolerantLoss,
    TukeyLoss,
    shared_loss,
)
from .stacking import signature

__all__ = ["ArctanLoss", "CauchyLoss", "HuberLoss", "RobustCostFunction", "RobustLoss", "ScaledLoss",
           "SoftLOneLoss", "TolerantLoss", "TukeyLoss"]


def _inner_flag(name: str) -> property:
    """A capability flag of a wrapper: the wrapped cost function's."""
    return property(lambda self: getattr(self.cost_function, name),
                    doc=f"The wrapped cost function's ``{name}``.")


class RobustCostFunction(CostFunction):
    """A cost function whose squared norm goes through a robust loss: ``0.5 * rho(||w r||^2)``.

    The wrapped cost function keeps its own weight ``w``; its variables (and its weight's) are
    this cost function's variables. Do not add the wrapped cost function to the objective too.

    Args:
        cost_function: the cost function to robustify.
        loss: a :class:`RobustLoss` such as ``HuberLoss(radius)``, ``CauchyLoss(radius)`` or
            ``ScaledLoss(TukeyLoss(radius), 2.0)``.
        name: unique name inside an objective; default ``<cost_function.name>_robust``.
    """

    has_autograd_graph = _inner_flag("has_autograd_graph")
    has_second_derivatives = _inner_flag("has_second_derivatives")
    capturable = _inner_flag("capturable")

    def __init__(self, cost_function: CostFunction, loss: RobustLoss, name: Optional[str] = None):
        if not isinstance(cost_function, CostFunction):
            raise TypeError(
                f"RobustCostFunction: cost_function must be a CostFunction, got "
                f"{type(cost_function).__name__}"
            )
        if not isinstance(loss, RobustLoss):
            raise TypeError(
                f"RobustCostFunction for {cost_function.name!r}: loss must be a RobustLoss "
                f"(e.g. HuberLoss(radius), CauchyLoss(radius)), got {type(loss).__name__}"
            )
        super().__init__(
            optim_vars=cost_function.optim_vars,
            aux_vars=cost_function.aux_vars + cost_function.weight_vars,
            name=name if name is not None else f"{cost_function.name}_robust",
        )
        if cost_function.cost_weight is not None:
            cost_function.cost_weight.check_dim(cost_function.dim(), cost_function.name)
        self.cost_function = cost_function
        self.loss = shared_loss(loss)

    def stack_key(self) -> tuple:
        """The loss (by value) and the wrapped cost function's whole signature."""
        return (self.loss, signature(self.cost_function),
                self.attributes_key(exclude=("cost_function", "loss")))

    def dim(self) -> int:
        return self.cost_function.dim()

    def error(self) -> torch.Tensor:
        """The wrapped cost function's unweighted residual."""
        return self.cost_function.error()

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The wrapped cost function's Jacobians (neither weighted nor robustified)."""
        return self.cost_function.jacobians()

    def weighted_error(self) -> torch.Tensor:
        """``sqrt(rho(s)/s) * w r``, ``(B, dim)``: its squared norm is ``rho(s)``."""
        error = self.cost_function.weighted_error()
        s = (error * error).sum(dim=-1, keepdim=True)
        return self.loss.scale(s) * error

    def weighted_jacobians_error(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Ceres' corrected ``(J', r')`` (see the module docstring), ``J'^T r' = rho' (wJ)^T (wr)``."""
        jacobians, error = self.cost_function.weighted_jacobians_error()
        s = (error * error).sum(dim=-1)
        _, rho1, rho2 = self.loss.evaluate(s)
        one = torch.ones_like(s)
        pulled = rho1 > 0  # elsewhere the block drops out; no sqrt'(0) or 0/0 reaches a gradient
        sqrt_rho1 = torch.where(pulled, torch.sqrt(torch.where(pulled, rho1, one)), torch.zeros_like(s))
        curved = (s > 0) & (rho2 > 0) & pulled
        root = torch.sqrt(torch.where(curved, 1.0 + 2.0 * s * rho2 / torch.where(curved, rho1, one), one))
        alpha = torch.where(curved, 1.0 - root, torch.zeros_like(s))
        alpha_over_s = alpha / torch.where(curved, s, one)
        residual = (sqrt_rho1 / (1.0 - alpha))[:, None] * error
        corrected = []
        for jac in jacobians:
            projection = error[:, :, None] * (error[:, None, :] @ jac)  # r (r^T J)
            corrected.append(sqrt_rho1[:, None, None] * (jac - alpha_over_s[:, None, None] * projection))
        return corrected, residual
