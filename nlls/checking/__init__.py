"""Checks of what the user wrote: a cost function's Jacobians (:func:`check_jacobians`) and the
gradients an optimization layer gives in each backward mode (:func:`check_gradients`), both
against central differences."""
from .gradients import GradientReport, InputErrors, check_gradients
from .jacobians import Entry, JacobianReport, VariableErrors, check_jacobians

__all__ = ["Entry", "GradientReport", "InputErrors", "JacobianReport", "VariableErrors",
           "check_gradients", "check_jacobians"]
