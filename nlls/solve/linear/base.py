"""The linear-solver interface: analyse structure once, factor per iteration, solve per right side.

A solver is configured once (constructor), told the problem's structure once (``setup``), then
per iteration factors the damped normal matrix (``factor``) and solves with the factorization as
many right-hand sides as needed (``Factorization.solve``): the step, and in the implicit backward of
``OptimizationLayer`` the adjoint system with the same matrix.

Failure is data, not an exception: ``Factorization.ok`` is ``(B,)`` and failed batch elements
get a zero solution (never NaN); the optimizer records them in its info.
"""
from __future__ import annotations

from typing import Tuple

import torch


class Factorization:
    """A factored batch of matrices; ``ok`` marks the elements whose factorization succeeded."""

    ok: torch.Tensor

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Solve ``M x = rhs`` for ``rhs (B, D)``.

        Returns:
            ``(x (B, D), ok (B,))``; failed elements have ``x = 0`` and ``ok = False``.
        """
        raise NotImplementedError


class LinearSolver:
    """Base class of linear solvers; ``name`` is the registry and config name."""

    name = ""
    #: the linearization this solver consumes ("dense" or "sparse")
    linearization = "dense"
    #: factor and solve run on the device without host round-trips or uncapturable library
    #: routines, so a whole solve can be captured in a CUDA graph (``optimize(cuda_graph=True)``)
    capturable = False

    def setup(self, linearization) -> None:
        """Called once per objective structure, before the first ``factor``."""

    def factor(self, matrix: torch.Tensor) -> Factorization:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
