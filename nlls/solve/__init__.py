"""How to minimize: linearization, linear solvers, the optimizers and their drivers."""
from .gauss_newton import GaussNewton
from .levenberg_marquardt import LevenbergMarquardt
from .linear import ConjugateGradient, DenseCholesky, DenseLU, LinearSolver, SparseCholesky
from .optimizer import Optimizer
from .state import OptimizerInfo, SolveState, Status

__all__ = ["GaussNewton", "LevenbergMarquardt", "DenseCholesky", "DenseLU", "LinearSolver",
           "SparseCholesky", "ConjugateGradient",
           "Optimizer", "OptimizerInfo", "SolveState", "Status"]
