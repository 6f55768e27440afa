"""How to minimize: vectorized evaluation, linearization, linear solvers and the optimizers."""
from .gauss_newton import GaussNewton
from .levenberg_marquardt import LevenbergMarquardt
from .linear import DenseCholesky, DenseLU, LinearSolver
from .optimizer import Optimizer, OptimizerInfo, Status

__all__ = ["GaussNewton", "LevenbergMarquardt", "DenseCholesky", "DenseLU", "LinearSolver",
           "Optimizer", "OptimizerInfo", "Status"]
