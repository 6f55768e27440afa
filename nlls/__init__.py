"""nlls: differentiable, batched nonlinear least squares on PyTorch.

Build an :class:`Objective` from :class:`Variable` s and cost functions, then minimize it with
:class:`GaussNewton` or :class:`LevenbergMarquardt`; every tensor carries a leading batch
dimension and a batch of problems is solved at once.
"""
from .core import (
    AutoDiffCostFunction,
    CostFunction,
    CostWeight,
    DiagonalCostWeight,
    Manifold,
    MatrixCostWeight,
    NumericDiffCostFunction,
    Objective,
    Point2,
    Point3,
    ScaleCostWeight,
    Variable,
    Vector,
)
from .solve import (
    ConjugateGradient,
    DenseCholesky,
    DenseLU,
    GaussNewton,
    LevenbergMarquardt,
    LinearSolver,
    Optimizer,
    OptimizerInfo,
    SparseCholesky,
    Status,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "AutoDiffCostFunction", "CostFunction", "CostWeight", "DiagonalCostWeight", "Manifold", "MatrixCostWeight",
    "NumericDiffCostFunction",
    "Objective", "Point2", "Point3", "ScaleCostWeight", "Variable", "Vector",
    "ConjugateGradient", "DenseCholesky", "DenseLU", "GaussNewton", "LevenbergMarquardt", "LinearSolver",
    "Optimizer", "OptimizerInfo", "SparseCholesky", "Status",
]

from .solve import Termination  # noqa: E402

__all__ += ["Termination"]

from .layer import BackwardMode, OptimizationLayer  # noqa: E402

__all__ += ["BackwardMode", "OptimizationLayer"]

from .core.losses import ArctanLoss, ScaledLoss, SoftLOneLoss, TolerantLoss, TukeyLoss  # noqa: E402
from .core.robust import CauchyLoss, HuberLoss, RobustCostFunction, RobustLoss  # noqa: E402
from .geometry import SE2, SE3, SO2, SO3, Between, Difference, LieGroup  # noqa: E402

__all__ += ["CauchyLoss", "HuberLoss", "RobustCostFunction", "RobustLoss",
            "LieGroup", "SO2", "SE2", "SO3", "SE3", "Between", "Difference"]
__all__ += ["ArctanLoss", "ScaledLoss", "SoftLOneLoss", "TolerantLoss", "TukeyLoss"]

from .solve import DenseQR, Dogleg  # noqa: E402

__all__ += ["DenseQR", "Dogleg"]
from .solve.linear import Schur  # noqa: E402

__all__ += ["Schur"]

from .config import Config, ConfigError, build_optimizer, load_config  # noqa: E402

__all__ += ["Config", "ConfigError", "build_optimizer", "load_config"]
from . import io  # noqa: E402,F401
from .solve.drivers.cuda_graph import HostSyncError, check_capturable  # noqa: E402

__all__ += ["HostSyncError", "check_capturable"]
from .checking import check_gradients, check_jacobians  # noqa: E402
from .core.ragged import pad_ragged  # noqa: E402

__all__ += ["check_gradients", "check_jacobians", "pad_ragged"]
from .diagnostics import Diagnosis, diagnose  # noqa: E402
from .uncertainty import Covariance  # noqa: E402

__all__ += ["Covariance", "Diagnosis", "diagnose"]
from .core.blocks import VariableBlock  # noqa: E402
from .core.factor_group import FactorGroup  # noqa: E402

__all__ += ["FactorGroup", "VariableBlock"]
