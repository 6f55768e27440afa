"""Robust losses: least squares that outliers cannot drag away.

A squared residual grows without bound, so one gross outlier (a wrong data association, a false
loop closure) can outweigh hundreds of good measurements. A robust loss ``rho`` replaces the
cost of a residual block by a function that grows more slowly for large residuals. As in Ceres,
``rho`` is applied to the squared norm of the weighted residual, ``s = ||w r||^2``, and the
objective becomes

    0.5 * sum_i rho_i(s_i),     rho(s) ~ s for small s (inliers are plain least squares).

The losses here take a ``radius`` ``a`` in residual units (after the weight): residuals shorter
than ``a`` count (nearly) as in least squares, longer ones are discounted.

* :class:`HuberLoss`:  ``rho(s) = s`` for ``s <= a^2``, ``2 a sqrt(s) - a^2`` beyond: quadratic
  inside, linear (like ``|r|``) outside, so an outlier pulls with a constant force.
* :class:`CauchyLoss`: ``rho(s) = a^2 log(1 + s / a^2)``: the pull of an outlier fades away.

**What the solver sees.** :class:`RobustCostFunction` wraps any cost function. Its
``weighted_error()`` is ``sqrt(rho(s)/s) * w r``, whose squared norm is ``rho(s)``, so every place
that sums squared residuals (``Objective.error_metric``, the optimizer's error) gets the robust
objective. Its ``weighted_jacobians_error()`` returns the pair ``(J', r')`` the Gauss-Newton
model is built from, chosen so that the gradient is exact, ``J'^T r' = rho'(s) (w J)^T (w r)``.
It is Ceres' corrector (Triggs et al., "Bundle adjustment: a modern synthesis", sec. 4.3):

    J' = sqrt(rho') (I - alpha r r^T / s) w J,     r' = sqrt(rho') / (1 - alpha) w r,

with ``alpha = 1 - sqrt(1 + 2 s rho''/rho')`` where ``rho'' > 0`` and ``alpha = 0`` elsewhere. For
Huber and Cauchy ``rho'' <= 0`` everywhere, so the model is the plain iteratively reweighted one
(``J' = sqrt(rho') w J``, ``r' = sqrt(rho') w r``): ``J'^T J'`` stays positive semi-definite,
where the full second-order term would make it indefinite for outliers (Ceres clamps it the same
way). ``r'`` serves only to build ``A`` and ``g``; the error the optimizer reports and accepts
steps on comes from ``weighted_error()``.
"""
from __future__ import annotations

import math
import weakref
from typing import List, Optional, Tuple

import torch

from .cost_function import CostFunction
from .stacking import signature


class RobustLoss:
    """Base class of robust losses ``rho(s)`` of the squared weighted residual norm ``s``.

    Losses are immutable values: two losses of one class and radius are equal (and hash alike),
    so robust cost functions with equal losses are stacked into one call; :class:`RobustCostFunction`
    also shares equal losses as one object.

    Args:
        radius: ``a > 0``, in residual units; residuals shorter than it are (nearly) least squares.
    """

    def __init__(self, radius: float):
        if isinstance(radius, bool) or not isinstance(radius, (int, float)):
            raise TypeError(f"{type(self).__name__}: radius must be a number, got {radius!r}")
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"{type(self).__name__}: radius must be positive and finite, got {radius!r}")
        self._radius = float(radius)

    @property
    def radius(self) -> float:
        return self._radius

    def evaluate(self, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rho(s)``, ``rho'(s)`` and ``rho''(s)`` for ``s >= 0`` of any shape."""
        raise NotImplementedError

    def scale(self, s: torch.Tensor) -> torch.Tensor:
        """``sqrt(rho(s) / s)`` (1 at ``s = 0``), the factor of ``weighted_error()``."""
        raise NotImplementedError

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return self.evaluate(s)[0]

    def _key(self) -> tuple:
        return (type(self), self._radius)

    def __eq__(self, other) -> bool:
        return isinstance(other, RobustLoss) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(radius={self._radius!r})"


class HuberLoss(RobustLoss):
    """Huber's loss: ``rho(s) = s`` for ``s <= a^2``, ``2 a sqrt(s) - a^2`` beyond.

    A residual of norm ``|w r| <= radius`` costs ``0.5 |w r|^2``; a longer one ``radius |w r| -
    radius^2 / 2``, growing linearly.
    """

    def evaluate(self, s):
        a = self._radius
        inside = s <= a * a
        root = torch.sqrt(s.clamp_min(a * a))  # sqrt(s) outside; never 0
        rho = torch.where(inside, s, 2.0 * a * root - a * a)
        rho1 = torch.where(inside, torch.ones_like(s), a / root)
        rho2 = torch.where(inside, torch.zeros_like(s), -0.5 * a / (root * root * root))
        return rho, rho1, rho2

    def scale(self, s):
        a = self._radius
        inside = s <= a * a
        root = torch.sqrt(s.clamp_min(a * a))
        return torch.where(inside, torch.ones_like(s), torch.sqrt(2.0 * a / root - a * a / (root * root)))


class CauchyLoss(RobustLoss):
    """Cauchy's loss: ``rho(s) = a^2 log(1 + s / a^2)``.

    A residual of norm ``radius`` costs about 0.35 instead of 0.5 ``radius^2``; the cost of longer
    ones grows only logarithmically.
    """

    def evaluate(self, s):
        a2 = self._radius ** 2
        x = s / a2
        rho = a2 * torch.log1p(x)
        rho1 = 1.0 / (1.0 + x)
        return rho, rho1, -rho1 * rho1 / a2

    def scale(self, s):
        x = s / self._radius ** 2
        small = x < 1e-3
        safe = torch.where(small, torch.ones_like(x), x)
        series = 1.0 + x * (-0.5 + x * (1.0 / 3.0 - 0.25 * x))  # log(1 + x)/x
        return torch.sqrt(torch.where(small, series, torch.log1p(safe) / safe))


_SHARED_LOSSES: "weakref.WeakValueDictionary[tuple, RobustLoss]" = weakref.WeakValueDictionary()


def _shared(loss: RobustLoss) -> RobustLoss:
    """The first live loss equal to ``loss``: equal losses become one object."""
    return _SHARED_LOSSES.setdefault(loss._key(), loss)


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
        loss: a :class:`RobustLoss` such as ``HuberLoss(radius)`` or ``CauchyLoss(radius)``.
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
                f"(HuberLoss, CauchyLoss), got {type(loss).__name__}"
            )
        super().__init__(
            optim_vars=cost_function.optim_vars,
            aux_vars=cost_function.aux_vars + cost_function.weight_vars,
            name=name if name is not None else f"{cost_function.name}_robust",
        )
        if cost_function.cost_weight is not None:
            cost_function.cost_weight.check_dim(cost_function.dim(), cost_function.name)
        self.cost_function = cost_function
        self.loss = _shared(loss)

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
        sqrt_rho1 = torch.sqrt(rho1)
        curved = (s > 0) & (rho2 > 0)
        root = torch.sqrt(torch.where(curved, 1.0 + 2.0 * s * rho2 / rho1, torch.ones_like(s)))
        alpha = torch.where(curved, 1.0 - root, torch.zeros_like(s))
        alpha_over_s = alpha / torch.where(curved, s, torch.ones_like(s))
        residual = (sqrt_rho1 / (1.0 - alpha))[:, None] * error
        corrected = []
        for jac in jacobians:
            projection = error[:, :, None] * (error[:, None, :] @ jac)  # r (r^T J)
            corrected.append(sqrt_rho1[:, None, None] * (jac - alpha_over_s[:, None, None] * projection))
        return corrected, residual
