"""How to minimize: vectorized evaluation, linearization, linear solvers and the optimizers."""
from .gauss_newton import GaussNewton
from .levenberg_marquardt import LevenbergMarquardt
from .linear import ConjugateGradient, DenseCholesky, DenseLU, LinearSolver, SparseCholesky
from .optimizer import Optimizer, OptimizerInfo, Status

__all__ = ["GaussNewton", "LevenbergMarquardt", "DenseCholesky", "DenseLU", "LinearSolver",
           "SparseCholesky", "ConjugateGradient",
           "Optimizer", "OptimizerInfo", "Status"]
