"""Linear solvers, by name or instance. The registry below is what ``linear_solver="..."`` and
the YAML configuration read."""
from __future__ import annotations

from typing import Dict, Type, Union

from .base import Factorization, LinearSolver
from .dense import DenseCholesky, DenseLU
from .cg import ConjugateGradient
from .sparse import SparseCholesky

LINEAR_SOLVERS: Dict[str, Type[LinearSolver]] = {
    DenseCholesky.name: DenseCholesky,
    DenseLU.name: DenseLU,
    SparseCholesky.name: SparseCholesky,
    ConjugateGradient.name: ConjugateGradient,
}


def make_linear_solver(spec: Union[str, LinearSolver]) -> LinearSolver:
    """A linear solver from its registry name or an instance (returned as is)."""
    if isinstance(spec, LinearSolver):
        return spec
    if isinstance(spec, str):
        try:
            return LINEAR_SOLVERS[spec]()
        except KeyError:
            raise ValueError(
                f"unknown linear_solver {spec!r}; choose one of {sorted(LINEAR_SOLVERS)}"
            ) from None
    raise TypeError(
        f"linear_solver must be a name ({sorted(LINEAR_SOLVERS)}) or a LinearSolver instance, "
        f"got {type(spec).__name__}"
    )


__all__ = ["Factorization", "LinearSolver", "DenseCholesky", "DenseLU", "SparseCholesky", "ConjugateGradient", "LINEAR_SOLVERS",
           "make_linear_solver"]
