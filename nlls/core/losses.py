"""The robust losses ``rho(s)``: values, first and second derivatives, Ceres' conventions.

A loss is a function of the squared norm of a weighted residual block, ``s = ||w r||^2 >= 0``;
the objective is ``0.5 * sum_i rho_i(s_i)``. Every loss gives ``rho(s)``, ``rho'(s)`` and
``rho''(s)`` (:meth:`RobustLoss.evaluate`, differentiable by autograd) and the factor
``sqrt(rho(s) / s)`` (:meth:`RobustLoss.scale`) that :class:`~nlls.RobustCostFunction` puts on the
weighted residual so that its squared norm is ``rho(s)``.

A loss with one ``radius`` ``a`` takes it in residual units (after the weight), as Huber's
threshold is usually given: residual blocks shorter than ``a`` count (nearly) as in least
squares, ``rho(s) ~ s`` for ``s << a^2``, longer ones are discounted. Ceres and SciPy write the
same losses with a parameter in squared units (Ceres' ``ArctanLoss(a)``) or a scale ``f_scale``;
the docstrings below give the mapping. With ``x = s / a^2``:

* :class:`HuberLoss`:    ``s`` for ``x <= 1``, ``a^2 (2 sqrt(x) - 1)`` beyond; an outlier pulls
  with a constant force (``rho' = 1/sqrt(x)``).
* :class:`SoftLOneLoss`: ``2 a^2 (sqrt(1 + x) - 1)``, Huber without the kink.
* :class:`CauchyLoss`:   ``a^2 log(1 + x)``; the pull of an outlier fades (``rho' = 1/(1 + x)``).
* :class:`ArctanLoss`:   ``a^2 atan(x)``; bounded cost, the pull fades faster (``1/(1 + x^2)``).
* :class:`TukeyLoss`:    ``a^2/3 (1 - (1 - x)^3)`` for ``x <= 1``, ``a^2/3`` beyond: outliers are
  ignored (``rho' = 0``).
* :class:`TolerantLoss`: ``b log(1 + e^((s - a)/b)) - b log(1 + e^(-a/b))``: a soft dead zone,
  nearly free below ``s = a``, least squares above (its ``a``, ``b`` are in squared units).
* :class:`ScaledLoss`:   ``scale * loss(s)``, or ``scale * s`` for ``loss=None``.

Losses are immutable values: two losses of one class and equal parameters are equal and hash
alike, so robust cost functions with equal losses stack into one call (:func:`shared_loss` makes
equal losses one object).
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, Optional, Tuple

import torch

Derivatives = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _parameter(owner: str, name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a float, checked: a finite number, positive (or zero where allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{owner}: {name} must be {kind} and finite, got {value!r}")
    return float(value)


class RobustLoss:
    """Base class of robust losses ``rho(s)`` of the squared weighted residual norm ``s``.

    A subclass implements :meth:`evaluate` and :meth:`scale`. Losses are immutable values: two
    losses of one class and equal parameters are equal (and hash alike), so robust cost functions
    with equal losses are stacked into one call; :class:`~nlls.RobustCostFunction` also shares
    equal losses as one object.

    Args:
        radius: ``a > 0``, in residual units; residuals shorter than it are (nearly) least squares.
    """

    def __init__(self, radius: float):
        self._radius = _parameter(type(self).__name__, "radius", radius)

    @property
    def radius(self) -> float:
        """The radius ``a``, in residual units."""
        return self._radius

    def evaluate(self, s: torch.Tensor) -> Derivatives:
        """``rho(s)``, ``rho'(s)`` and ``rho''(s)`` for ``s >= 0`` of any shape."""
        raise NotImplementedError

    def scale(self, s: torch.Tensor) -> torch.Tensor:
        """``sqrt(rho(s) / s)`` (``sqrt(rho'(0))`` at ``s = 0``), the factor of ``weighted_error()``."""
        raise NotImplementedError

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return self.evaluate(s)[0]

    def _parameters(self) -> Dict[str, Any]:
        """The values that define the loss, by constructor argument name."""
        return {"radius": self._radius}

    def _key(self) -> tuple:
        return (type(self),) + tuple(self._parameters().items())

    def __eq__(self, other) -> bool:
        return isinstance(other, RobustLoss) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self._parameters().items())
        return f"{type(self).__name__}({arguments})"


def _series_or(x: torch.Tensor, limit: float, series, exact) -> torch.Tensor:
    """``series(x)`` where ``x < limit``, else ``exact(x)``; each branch sees only its own range."""
    small = x < limit
    return torch.where(small, series(x.clamp_max(limit)), exact(x.clamp_min(limit)))


class HuberLoss(RobustLoss):
    """Huber's loss: ``rho(s) = s`` for ``s <= a^2``, ``2 a sqrt(s) - a^2`` beyond.

    A residual of norm ``|w r| <= radius`` costs ``0.5 |w r|^2``; a longer one ``radius |w r| -
    radius^2 / 2``, growing linearly: an outlier pulls with a constant force. Ceres'
    ``HuberLoss(radius)``; SciPy's ``loss="huber"`` with ``f_scale=radius``.
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


class SoftLOneLoss(RobustLoss):
    """The smooth L1 loss: ``rho(s) = 2 a^2 (sqrt(1 + s / a^2) - 1)``.

    Huber's loss without the kink: least squares for residuals much shorter than ``radius``,
    ``2 radius |w r|`` (linear) far beyond. Ceres' ``SoftLOneLoss(radius)``; SciPy's
    ``loss="soft_l1"`` with ``f_scale=radius``.
    """

    def evaluate(self, s):
        a2 = self._radius ** 2
        root = torch.sqrt(1.0 + s / a2)
        rho1 = 1.0 / root
        return 2.0 * s / (1.0 + root), rho1, -0.5 / a2 * rho1 * rho1 * rho1  # no cancellation at small s

    def scale(self, s):
        return torch.sqrt(2.0 / (1.0 + torch.sqrt(1.0 + s / self._radius ** 2)))


class CauchyLoss(RobustLoss):
    """Cauchy's loss: ``rho(s) = a^2 log(1 + s / a^2)``.

    A residual of norm ``radius`` costs about 0.35 instead of 0.5 ``radius^2``; the cost of longer
    ones grows only logarithmically. Ceres' ``CauchyLoss(radius)``; SciPy's ``loss="cauchy"`` with
    ``f_scale=radius``.
    """

    def evaluate(self, s):
        a2 = self._radius ** 2
        x = s / a2
        rho = a2 * torch.log1p(x)
        rho1 = 1.0 / (1.0 + x)
        return rho, rho1, -rho1 * rho1 / a2

    def scale(self, s):
        x = s / self._radius ** 2
        return torch.sqrt(_series_or(x, 1e-3, lambda t: 1.0 + t * (-0.5 + t * (1.0 / 3.0 - 0.25 * t)),
                                     lambda t: torch.log1p(t) / t))  # log(1 + x) / x


class ArctanLoss(RobustLoss):
    """The arctangent loss: ``rho(s) = a^2 atan(s / a^2)``.

    Least squares for short residuals, and no residual block ever costs more than ``pi/2 radius^2``:
    the pull of an outlier fades like Cauchy's, faster. ``radius`` is in residual units; Ceres'
    ``ArctanLoss(a)`` takes ``a = radius^2`` (squared units); SciPy's ``loss="arctan"`` with
    ``f_scale=radius``.
    """

    def evaluate(self, s):
        a2 = self._radius ** 2
        x = s / a2
        rho1 = 1.0 / (1.0 + x * x)  # 0 once x^2 overflows: the outlier is ignored
        return a2 * torch.atan(x), rho1, -2.0 / a2 * x * rho1 * rho1

    def scale(self, s):
        x = s / self._radius ** 2
        return torch.sqrt(_series_or(x, 1e-3, lambda t: 1.0 - t * t * (1.0 / 3.0 - 0.2 * t * t),
                                     lambda t: torch.atan(t) / t))  # atan(x) / x


class TukeyLoss(RobustLoss):
    """Tukey's biweight: ``rho(s) = a^2/3 (1 - (1 - s/a^2)^3)`` for ``s <= a^2``, ``a^2/3`` beyond.

    Residual blocks longer than ``radius`` cost a constant and have no pull at all (``rho' = 0``):
    they are ignored, which also means a start far from the solution can lose every residual. Use
    it to polish a solution that a convex loss (Huber, soft L1) found.

    The scaling keeps ``rho(s) ~ s`` for small ``s``, like every loss here; Ceres' ``TukeyLoss(a)``
    is half of it (``a^2/6 (1 - (1 - s/a^2)^3)``, ``rho'(0) = 1/2``), which has the same minimizers
    and half the cost.
    """

    def evaluate(self, s):
        a2 = self._radius ** 2
        inside = s <= a2
        v = (a2 - s.clamp_max(a2)) / a2  # in [0, 1] inside; a2 - s is exact near the radius
        rho = torch.where(inside, s * (1.0 + v + v * v) / 3.0, torch.full_like(s, a2 / 3.0))
        rho1 = torch.where(inside, v * v, torch.zeros_like(s))
        rho2 = torch.where(inside, -2.0 / a2 * v, torch.zeros_like(s))
        return rho, rho1, rho2

    def scale(self, s):
        a2 = self._radius ** 2
        inside = s <= a2
        v = (a2 - s.clamp_max(a2)) / a2
        return torch.where(inside, torch.sqrt((1.0 + v + v * v) / 3.0),
                           torch.sqrt(a2 / (3.0 * s.clamp_min(a2))))


class TolerantLoss(RobustLoss):
    """Ceres' tolerant loss: ``rho(s) = b log(1 + e^((s - a)/b)) - b log(1 + e^(-a/b))``.

    Not a loss against outliers: a soft dead zone. Residual blocks with ``s`` well below ``a`` cost
    almost nothing (``rho'(s) = 1 / (1 + e^(-(s - a)/b))``, a sigmoid), those well above cost
    ``s - a`` plus a constant, as in least squares; ``b`` is the width of the transition. Use it
    when errors up to a tolerance are acceptable. ``a`` and ``b`` are in the units of ``s``
    (squared residual units), as in Ceres. Here ``rho''(s) > 0``, so
    :class:`~nlls.RobustCostFunction` applies Triggs' second-order correction.

    Args:
        a: ``a >= 0``, where the cost turns on, in squared residual units.
        b: ``b > 0``, the width of the transition, in squared residual units.
    """

    def __init__(self, a: float, b: float):
        self._a = _parameter("TolerantLoss", "a", a, allow_zero=True)
        self._b = _parameter("TolerantLoss", "b", b)
        e = math.exp(-self._a / self._b)  # in (0, 1]: no overflow
        self._p, self._q, self._softplus0 = e / (1.0 + e), 1.0 / (1.0 + e), math.log1p(e)

    @property
    def a(self) -> float:
        """Where the cost turns on (squared residual units)."""
        return self._a

    @property
    def b(self) -> float:
        """The width of the transition (squared residual units)."""
        return self._b

    @property
    def radius(self) -> float:
        """Not defined: a tolerant loss is given by ``a`` and ``b``."""
        raise AttributeError("TolerantLoss has no radius: it is given by a and b, in squared residual units")

    def _parameters(self) -> Dict[str, Any]:
        return {"a": self._a, "b": self._b}

    def _ratio(self, s: torch.Tensor) -> torch.Tensor:
        """``rho(s) / s``; with ``x0 = -a/b``, ``d = s/b``: ``(softplus(x0 + d) - softplus(x0)) / d``."""
        p, q = self._p, self._q

        def series(d):  # the derivatives of softplus at x0: p, pq, pq(q - p), pq(1 - 6pq)
            return p + p * q * d * (0.5 + d * ((q - p) / 6.0 + d * (1.0 - 6.0 * p * q) / 24.0))

        def near(d):  # softplus(x0 + d) - softplus(x0) = log1p(p expm1(d)): no cancellation
            return torch.log1p(p * torch.expm1(d)) / d

        def far(s):  # d >= 1: softplus(x0 + d) >= 1.8 softplus(x0) (as x0 <= 0): little cancellation
            x = (s - self._a) / self._b  # beyond 40, softplus(x) = x to double precision
            softplus = torch.logaddexp(x.clamp_max(40.0), torch.zeros_like(x))
            return torch.where(x > 40.0, 1.0 - (self._a + self._b * self._softplus0) / s,
                               self._b * (softplus - self._softplus0) / s)

        d = s / self._b
        near_or_series = _series_or(d.clamp_max(1.0), 1e-4, series, near)
        return torch.where(d < 1.0, near_or_series, far(s.clamp_min(self._b)))

    def evaluate(self, s):
        x = (s - self._a) / self._b
        rho1 = torch.sigmoid(x)
        return s * self._ratio(s), rho1, rho1 * torch.sigmoid(-x) / self._b  # rho'' = 0 where rho' = 0

    def scale(self, s):
        ratio = self._ratio(s)  # 0 deep in the dead zone when a/b > ~745: keep sqrt'(0) out of gradients
        positive = ratio > 0
        return torch.where(positive, torch.sqrt(torch.where(positive, ratio, torch.ones_like(ratio))), 0.0 * ratio)


class ScaledLoss(RobustLoss):
    """A loss times a constant: ``rho(s) = scale * loss(s)`` (``scale * s`` for ``loss=None``).

    Weighs whole residual blocks, robust or not, as Ceres' ``ScaledLoss`` does. The derivatives
    scale alike, so a scaled loss keeps its loss' minimizers when it is the only one.

    Args:
        loss: the :class:`RobustLoss` to scale, or ``None`` for plain least squares.
        scale: ``scale > 0``, the factor (read it back as :attr:`factor`).
    """

    def __init__(self, loss: Optional[RobustLoss], scale: float):
        if loss is not None and not isinstance(loss, RobustLoss):
            raise TypeError(f"ScaledLoss: loss must be a RobustLoss or None, got {type(loss).__name__}")
        self._loss = loss
        self._factor = _parameter("ScaledLoss", "scale", scale)

    @property
    def loss(self) -> Optional[RobustLoss]:
        """The scaled loss (``None``: least squares)."""
        return self._loss

    @property
    def factor(self) -> float:
        """The constant ``scale`` the loss is multiplied by."""
        return self._factor

    @property
    def radius(self) -> float:
        """The scaled loss' radius."""
        if self._loss is None:
            raise AttributeError("ScaledLoss(None, ...) has no radius: it scales plain least squares")
        return self._loss.radius

    def _parameters(self) -> Dict[str, Any]:
        return {"loss": self._loss, "scale": self._factor}

    def evaluate(self, s):
        c = self._factor
        if self._loss is None:
            return c * s, torch.full_like(s, c), torch.zeros_like(s)
        rho, rho1, rho2 = self._loss.evaluate(s)
        return c * rho, c * rho1, c * rho2

    def scale(self, s):
        root = math.sqrt(self._factor)
        return torch.full_like(s, root) if self._loss is None else root * self._loss.scale(s)


_SHARED_LOSSES: "weakref.WeakValueDictionary[tuple, RobustLoss]" = weakref.WeakValueDictionary()


def shared_loss(loss: RobustLoss) -> RobustLoss:
    """The first live loss equal to ``loss``: equal losses become one object."""
    return _SHARED_LOSSES.setdefault(loss._key(), loss)
