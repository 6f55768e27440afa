"""The eager driver: a Python loop over ``optimizer.step``."""
from __future__ import annotations

from ..state import SolveState
from .base import Driver


class EagerDriver(Driver):
    """Steps one iteration at a time and asks ``optimizer.terminate`` every ``check_every``
    iterations. Autograd records the iterations when the inputs require grad."""

    def run(self, optimizer, state: SolveState, num_iterations: int) -> SolveState:
        for count in range(1, num_iterations + 1):
            state = optimizer.step(state)
            if count % optimizer.check_every == 0 and optimizer.terminate(state):
                break
        return state
