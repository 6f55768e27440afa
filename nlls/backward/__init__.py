"""Backward modes of :class:`~nlls.OptimizationLayer`, one class each, registered by name."""
from .base import (
    BACKWARD_MODES,
    HESSIANS,
    Backward,
    BackwardMode,
    backward_class,
    check_hessian,
    register_backward_mode,
)
from .implicit import Implicit
from .truncated import Truncated
from .unroll import Unroll

for _mode in (Unroll, Truncated, Implicit):
    register_backward_mode(_mode)

__all__ = ["BACKWARD_MODES", "HESSIANS", "Backward", "BackwardMode", "Implicit", "Truncated",
           "Unroll", "backward_class", "check_hessian", "register_backward_mode"]
