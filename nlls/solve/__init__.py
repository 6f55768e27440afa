"""How to minimize: linearization, linear solvers, the optimizers and their drivers."""
from .dogleg import Dogleg
from .gauss_newton import GaussNewton
from .levenberg_marquardt import LevenbergMarquardt
from .linear import ConjugateGradient, DenseCholesky, DenseLU, DenseQR, LinearSolver, SparseCholesky
from .optimizer import Optimizer
from .state import OptimizerInfo, SolveState, Status, Termination

__all__ = ["GaussNewton", "LevenbergMarquardt", "DenseCholesky", "DenseLU", "LinearSolver",
           "SparseCholesky", "ConjugateGradient",
           "Optimizer", "OptimizerInfo", "SolveState", "Status"]
__all__ += ["Dogleg", "DenseQR"]
__all__ += ["Termination"]
