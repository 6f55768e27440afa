"""Lie groups ``SO2``, ``SE2``, ``SO3``, ``SE3`` with analytic Jacobians, and the standard
factors ``Between`` and ``Difference``."""
from .factors import Between, Difference
from .lie_group import LieGroup
from .se2 import SE2
from .se3 import SE3
from .so2 import SO2
from .so3 import SO3

__all__ = ["LieGroup", "SO2", "SE2", "SO3", "SE3", "Between", "Difference"]
