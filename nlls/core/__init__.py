"""The problem: variables, cost functions, weights and the objective (no solver code here)."""
from .blocks import VariableBlock
from .cost_function import AutoDiffCostFunction, CostFunction
from .cost_weight import CostWeight, DiagonalCostWeight, MatrixCostWeight, ScaleCostWeight
from .factor_group import FactorGroup
from .manifold import Manifold, Point2, Point3, Vector
from .numeric_diff import NumericDiffCostFunction
from .objective import Objective
from .ragged import pad_ragged
from .variable import Variable

__all__ = ["AutoDiffCostFunction", "CostFunction", "CostWeight", "DiagonalCostWeight",
           "ScaleCostWeight", "MatrixCostWeight", "Manifold", "NumericDiffCostFunction", "Point2",
           "Point3", "Vector", "Objective", "Variable",
           "pad_ragged", "FactorGroup", "VariableBlock"]
