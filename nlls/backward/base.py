"""The backward-mode interface: how ``OptimizationLayer`` differentiates the solution.

A backward mode is one class: it checks a call (``check``) and runs the forward solve through a
driver so that the returned solution carries the gradient it stands for (``solve``). The layer
validates its arguments, picks the mode object and calls it; nothing else knows the modes.
Registering a new mode by name (for ``backward_mode="name"`` and the YAML ``backward.mode`` key)
is one line: :func:`register_backward_mode`.
"""
from __future__ import annotations

import enum
from typing import Dict, List, Mapping, Optional, Tuple, Type

import torch

from ..solve.state import SolveState, Values

HESSIANS = ("gauss_newton", "exact")


class BackwardMode(str, enum.Enum):
    """The built-in backward modes of :class:`~nlls.OptimizationLayer` (names also accepted)."""

    UNROLL = "unroll"
    TRUNCATED = "truncated"
    IMPLICIT = "implicit"

    @classmethod
    def parse(cls, value) -> "BackwardMode":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(
                f"backward_mode must be one of {[m.value for m in cls]}, got {value!r}"
            ) from None


def check_hessian(value: str) -> str:
    if value not in HESSIANS:
        raise ValueError(f"hessian must be one of {list(HESSIANS)}, got {value!r}")
    return value


class Backward:
    """One backward mode, configured for a call.

    Args:
        num_iterations: the recorded iterations, for modes with ``takes_num_iterations``.
        hessian: ``"gauss_newton"`` or ``"exact"``, read by the modes that solve with a Hessian.

    Attributes:
        name: the registry name (``backward_mode="name"``).
        takes_num_iterations: the mode reads ``num_iterations`` (others refuse it).
        records_iterations: autograd records the forward iterations, so every cost function must
            have an autograd graph (``CostFunction.has_autograd_graph``) and the driver must record
            one (a CUDA graph does not).
    """

    name = ""
    takes_num_iterations = False
    records_iterations = False

    def __init__(self, num_iterations: Optional[int] = None, hessian: str = "gauss_newton"):
        if num_iterations is not None and not self.takes_num_iterations:
            raise ValueError(f"backward_num_iterations applies to the truncated mode only, not {self.name!r}")
        self.num_iterations = num_iterations
        self.hessian = check_hessian(hessian)

    def check(self, optimizer, inputs: Optional[Mapping[str, torch.Tensor]], driver) -> None:
        """Raise, naming the cause, if this mode cannot differentiate this call."""
        if not self.records_iterations or not torch.is_grad_enabled():
            return
        objective = optimizer.objective
        no_graph = [cf for cf in objective.cost_functions.values() if not cf.has_autograd_graph]
        if no_graph and wanting_grad(inputs, objective.aux_vars):
            raise ValueError(
                f"backward_mode={self.name!r} cannot differentiate through "
                f"{type(no_graph[0]).__name__} {no_graph[0].name!r} (finite differences give no "
                f"graph to unroll); use backward_mode='implicit'"
            )
        driver.check(optimizer, "OptimizationLayer",
                     wanting_grad(inputs, {**objective.optim_vars, **objective.aux_vars}))

    def solve(self, optimizer, driver, tracking: dict) -> Tuple[SolveState, Values]:
        """Run the forward solve with ``driver``; returns the final state and the solution's
        block values, which carry this mode's gradient. ``tracking``: the keyword arguments
        ``track_best_solution``, ``track_err_history``, ``verbose`` of ``Optimizer.init``."""
        raise NotImplementedError


BACKWARD_MODES: Dict[str, Type[Backward]] = {}


def register_backward_mode(cls: Type[Backward]) -> Type[Backward]:
    """Register a :class:`Backward` subclass under its ``name``; returns it (a decorator too)."""
    if not (isinstance(cls, type) and issubclass(cls, Backward)) or not cls.name:
        raise TypeError(f"register_backward_mode expects a Backward subclass with a name, got {cls!r}")
    BACKWARD_MODES[cls.name] = cls
    return cls


def backward_class(value) -> Type[Backward]:
    """The registered mode class of ``value`` (a name, any case, or a :class:`BackwardMode`)."""
    name = value.value if isinstance(value, BackwardMode) else str(value).lower()
    try:
        return BACKWARD_MODES[name]
    except KeyError:
        raise ValueError(f"backward_mode must be one of {list(BACKWARD_MODES)}, got {value!r}") from None


def wanting_grad(inputs, variables) -> List[str]:
    """Names whose tensor for this call requires grad: the tensors in ``inputs``, and the
    current tensors of the ``variables`` that ``inputs`` does not replace."""
    inputs = inputs or {}
    names = [name for name, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    return names + [name for name, v in variables.items()
                    if name not in inputs and v.tensor.requires_grad]
