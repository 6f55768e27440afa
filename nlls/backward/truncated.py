"""``backward_mode="truncated"``: only the last iterations carry the graph."""
from __future__ import annotations

import torch

from ..solve.state import Status
from .base import Backward


class Truncated(Backward):
    """The first iterations run without a graph; the last ``num_iterations`` are recorded.
    Converged elements keep stepping during those (steps that barely move them but carry the
    dependence on the data). Cheap; an approximation."""

    name = "truncated"
    takes_num_iterations = True
    records_iterations = True

    def check(self, optimizer, inputs, driver) -> None:
        count = self.num_iterations
        if count is None:
            raise ValueError("backward_mode='truncated' needs backward_num_iterations")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= optimizer.max_iterations:
            raise ValueError(
                f"backward_num_iterations must be an int in [1, max_iterations="
                f"{optimizer.max_iterations}], got {count!r}"
            )
        super().check(optimizer, inputs, driver)

    def solve(self, optimizer, driver, tracking):
        if driver.whole_solve:  # no graph is recorded (checked): a plain forward solve
            state = driver.solve(optimizer, optimizer.max_iterations, **tracking)
            return state, state.values
        with torch.no_grad():
            state = driver.solve(optimizer, optimizer.max_iterations - self.num_iterations, **tracking)
        # the recorded iterations start from the detached iterate, with graph-carrying aux data;
        # every element that has not failed takes them
        evaluator = optimizer.evaluator
        values = tuple(v.detach() for v in state.values)
        aux = evaluator.aux(state.error.shape[0])
        state = state.replace(values=values, aux=aux, error=optimizer.error_at(values, aux),
                              freeze_converged=False, active=state.status != Status.FAILED)
        state = driver.run(optimizer, state, self.num_iterations)
        return state, state.values
