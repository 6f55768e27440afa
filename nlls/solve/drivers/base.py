"""The driver interface."""
from __future__ import annotations

from ..state import SolveState


class Driver:
    """How the iterations of a solve are executed.

    Attributes:
        name: the name of the driver's cache on the optimizer (``optimizer.cache(name)``).
        whole_solve: the driver runs a solve only as a whole (``solve``), never continues a
            started state (``run``): a captured graph. Such a driver records no autograd graph.
    """

    name = "eager"
    whole_solve = False

    def solve(self, optimizer, num_iterations: int, track_best_solution: bool = False,
              track_err_history: bool = False, verbose: bool = False, callback=None) -> SolveState:
        """A solve of at most ``num_iterations`` iterations from the objective's current values."""
        state = optimizer.init(track_best_solution, track_err_history, verbose, callback)
        return self.run(optimizer, state, num_iterations)

    def run(self, optimizer, state: SolveState, num_iterations: int) -> SolveState:
        """Continue ``state`` by at most ``num_iterations`` iterations (fewer once
        ``optimizer.terminate`` says every element has stopped)."""
        raise NotImplementedError(f"{type(self).__name__} cannot continue a started solve")

    def check(self, optimizer, owner: str, wanting_grad) -> None:
        """Raise, naming ``owner``, if this driver cannot run ``optimizer``'s problem when the
        inputs named in ``wanting_grad`` want an autograd graph through the iterations."""
