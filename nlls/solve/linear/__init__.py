"""Linear solvers, by name or instance. The registry below is what ``linear_solver="..."`` and
the YAML configuration read."""
from __future__ import annotations

from typing import Dict, Type, Union

from .base import SINGULAR_ADVICE, Factorization, LinearSolver
from .cg import ConjugateGradient
from .dense import DenseCholesky, DenseLU
from .qr import DenseQR
from .schur import Schur
from .sparse import SparseCholesky

LINEAR_SOLVERS: Dict[str, Type[LinearSolver]] = {
    DenseCholesky.name: DenseCholesky,
    DenseLU.name: DenseLU,
    SparseCholesky.name: SparseCholesky,
    ConjugateGradient.name: ConjugateGradient,
    DenseQR.name: DenseQR,
    Schur.name: Schur,
}


def register_linear_solver(cls: Type[LinearSolver]) -> Type[LinearSolver]:
    """Register a :class:`LinearSolver` subclass under its ``name``, for ``linear_solver="name"``
    and the YAML ``linear_solver.name`` key; returns the class (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, LinearSolver)) or not cls.name:
        raise TypeError(f"register_linear_solver expects a LinearSolver subclass with a name, got {cls!r}")
    if cls.linearization not in ("dense", "sparse", "jacobian", "dense_jacobian"):
        raise ValueError(f"{cls.__name__}.linearization must be 'dense', 'sparse', 'jacobian' or "
                         f"'dense_jacobian', got {cls.linearization!r}")
    LINEAR_SOLVERS[cls.name] = cls
    return cls


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


__all__ = ["Factorization", "LinearSolver", "SINGULAR_ADVICE", "register_linear_solver", "DenseCholesky", "DenseLU",
           "SparseCholesky", "ConjugateGradient", "DenseQR", "Schur", "LINEAR_SOLVERS",
           "make_linear_solver"]
