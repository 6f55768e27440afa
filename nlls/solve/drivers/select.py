"""The driver of a call, from the ``compile``/``cuda_graph`` flags or an explicit instance."""
from __future__ import annotations

from typing import Optional

from .base import Driver
from .eager import EagerDriver


def select_driver(owner: str, compile: bool = False, cuda_graph: bool = False,
                  driver: Optional[Driver] = None) -> Driver:
    """``driver`` if given, else the compiled or CUDA-graph driver the flags ask for, else the
    eager loop. Raises ``ValueError`` naming ``owner`` for a contradictory choice."""
    if driver is not None:
        if compile or cuda_graph:
            raise ValueError(f"{owner}: pass either driver= or compile/cuda_graph, not both")
        if not isinstance(driver, Driver):
            raise TypeError(f"{owner}: driver must be an nlls.solve.drivers Driver, got "
                            f"{type(driver).__name__}")
        return driver
    if cuda_graph:
        if compile:
            raise ValueError(
                f"{owner}: compile=True and cuda_graph=True are exclusive (pick cuda_graph on "
                f"CUDA, compile on the CPU)"
            )
        from .cuda_graph import CUDAGraphDriver  # imports the dispatch machinery: only when asked

        return CUDAGraphDriver()
    if compile:
        from .compiled import CompiledDriver  # imports the compiler: only when asked

        return CompiledDriver()
    return EagerDriver()
