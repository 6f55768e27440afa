"""``backward_mode="unroll"``: autograd records every iteration."""
from __future__ import annotations

from .base import Backward


class Unroll(Backward):
    """Differentiates the algorithm itself: autograd records every iteration (linear solves
    included). Exact for what was computed; memory grows with the iteration count."""

    name = "unroll"
    records_iterations = True

    def solve(self, optimizer, driver, tracking):
        state = driver.solve(optimizer, optimizer.max_iterations, **tracking)
        return state, state.values
