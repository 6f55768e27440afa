"""Gauss-Newton: the step solves the normal equations ``J^T J delta = -J^T r``.

It is Newton's method with the Hessian of ``0.5 ||r||^2`` replaced by ``J^T J`` (dropping the
second derivatives of ``r``): quadratic convergence on problems whose residuals vanish at the
solution, one step on linear problems. Every step is taken; an element whose normal matrix cannot
be factored (a variable no cost constrains) or whose error turns non-finite stops as failed, with
its last good values kept.
"""
from __future__ import annotations

import torch

from .optimizer import Optimizer


class GaussNewton(Optimizer):
    """Gauss-Newton with a fixed step size. Arguments: see :class:`~nlls.solve.optimizer.Optimizer`."""

    def compute_step(self, system, step_state):
        factorization = self.linear_solver.factor(system.A)
        return factorization.least_squares_step(system.g)

    def accept(self, system, step_state, delta, solved, error, new_error):
        accept = solved & torch.isfinite(new_error)
        return accept, ~accept, torch.zeros_like(accept), step_state
