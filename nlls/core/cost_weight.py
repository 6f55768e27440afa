"""Cost weights: the ``w`` in ``0.5 * ||w * r||^2``.

A weight multiplies the residual (and its Jacobians) before they are squared, so a weight of
``1/sigma`` turns a residual measured in metres into one measured in standard deviations. The
weight's data is an auxiliary :class:`~nlls.core.variable.Variable`: it can be updated by name
through ``Objective.update`` and, when its tensor requires grad, learned through
``OptimizationLayer``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from .stacking import Stackable
from .variable import Variable, as_tensor

WeightLike = Union[float, int, torch.Tensor, Variable]

#: a matrix weight forms the Jacobians entry-major on the CPU for residuals of at most this size
#: and at least this many rows (``bench/bench_scale.py --profile``: 3 x 3 weights of 64,311 edges)
ENTRY_MAJOR_DIM = 4
ENTRY_MAJOR_ROWS = 1000


def _as_weight_variable(value: WeightLike, what: str, name: Optional[str]) -> Variable:
    if isinstance(value, Variable):
        return value
    if isinstance(value, (int, float)):
        # a number takes the objective's dtype and device in Objective.add; float64 until then,
        # so that it is exact there in either precision
        variable = Variable(torch.tensor([[float(value)]], dtype=torch.float64), name=name)
        variable.follows_objective = True
        return variable
    tensor = as_tensor(value, what)
    if tensor.ndim == 0:
        tensor = tensor.reshape(1, 1)
    elif tensor.ndim == 1:
        tensor = tensor[None]  # a single weight vector shared by the batch
    return Variable(tensor, name=name)


class CostWeight(Stackable):
    """Base class: multiplies residuals and Jacobians by a weight.

    Subclasses implement :meth:`weight_error` and :meth:`weight_jacobians`; ``aux_vars`` lists
    the variables holding the weight's data (the first one is :meth:`_weight`'s). Cost functions
    stack only when their weights' :meth:`~nlls.core.stacking.Stackable.stack_key` agree.
    """

    _STACK_BASE = frozenset({"_aux_vars"})

    def __init__(self, aux_vars: Tuple[Variable, ...] = ()):
        self._aux_vars = tuple(aux_vars)

    @property
    def aux_vars(self) -> Tuple[Variable, ...]:
        return self._aux_vars

    def stack_variables(self) -> Tuple[Variable, ...]:
        return self._aux_vars

    def weight_error(self, error: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight_jacobians(
        self, jacobians: List[torch.Tensor], error: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def weight_joined_jacobians(self, jacobians: List[torch.Tensor],
                                error: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The weighted Jacobians joined along their columns, ``(B, dim, sum dofs)``, and the
        weighted error: what the evaluator reads. Default: :meth:`weight_jacobians`, then one
        ``cat``; a weight may form the joined matrix at once (:class:`MatrixCostWeight` does)."""
        weighted, error = self.weight_jacobians(jacobians, error)
        return (weighted[0] if len(weighted) == 1 else torch.cat(weighted, dim=-1)), error

    def check_dim(self, dim: int, owner: str) -> None:
        """Check the weight fits a residual of size ``dim`` (``Objective.add`` calls it); raise
        ``ValueError`` naming ``owner``, the cost function, otherwise."""

    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        return self._aux_vars[0].tensor.to(dtype=like.dtype, device=like.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self._aux_vars))})"


class _ElementwiseCostWeight(CostWeight):
    """``w * r`` with ``w`` of shape ``(B, 1)`` or ``(B, dim)``, broadcast over the residual."""

    def weight_error(self, error: torch.Tensor) -> torch.Tensor:
        return self._weight(error) * error

    def weight_jacobians(self, jacobians, error):
        w = self._weight(error)
        return [w[..., None] * j for j in jacobians], w * error


class ScaleCostWeight(_ElementwiseCostWeight):
    """One scale per batch element: ``w * r`` with ``w`` of shape ``(B, 1)`` (or a float).

    Args:
        scale: a float, a tensor of shape ``()``, ``(1,)`` or ``(B, 1)``, or a Variable of shape
            ``(B, 1)``. A tensor that requires grad makes the scale learnable.
        name: name of the variable created for a float or tensor.
    """

    def __init__(self, scale: WeightLike, name: Optional[str] = None):
        self.scale = _as_weight_variable(scale, "ScaleCostWeight scale", name)
        if self.scale.ndim != 2 or self.scale.shape[1] != 1:
            raise ValueError(
                f"ScaleCostWeight {self.scale.name!r}: scale must have shape (B, 1), "
                f"got {tuple(self.scale.shape)}"
            )
        super().__init__((self.scale,))


class DiagonalCostWeight(_ElementwiseCostWeight):
    """One weight per residual entry: ``w * r`` with ``w`` of shape ``(B, dim)``.

    Args:
        diagonal: a tensor of shape ``(dim,)`` (shared by the batch) or ``(B, dim)``, a Variable of
            shape ``(B, dim)``, or a float (the same weight for every entry).
        name: name of the variable created for a float or tensor.
    """

    def __init__(self, diagonal: WeightLike, name: Optional[str] = None):
        self.diagonal = _as_weight_variable(diagonal, "DiagonalCostWeight diagonal", name)
        if self.diagonal.ndim != 2:
            raise ValueError(
                f"DiagonalCostWeight {self.diagonal.name!r}: diagonal must have shape (B, dim), "
                f"got {tuple(self.diagonal.shape)}"
            )
        super().__init__((self.diagonal,))

    def check_dim(self, dim: int, owner: str) -> None:
        width = self.diagonal.shape[1]
        if width not in (1, dim):
            raise ValueError(
                f"cost function {owner!r}: DiagonalCostWeight {self.diagonal.name!r} has "
                f"{width} entries, the error has dimension {dim}"
            )


class MatrixCostWeight(CostWeight):
    """A full square-root information matrix: ``S r`` with ``S`` of shape ``(B, dim, dim)``.

    A Gaussian measurement with information matrix ``Omega`` (inverse covariance) contributes
    ``0.5 r^T Omega r = 0.5 ||S r||^2`` for any ``S`` with ``S^T S = Omega``;
    :meth:`from_information` takes ``S = L^T`` from the Cholesky factor ``Omega = L L^T``.

    Args:
        matrix: ``S``, a tensor ``(dim, dim)`` (shared by the batch) or ``(B, dim, dim)``, or a
            Variable of shape ``(B, dim, dim)``.
        name: name of the variable created for a tensor.
    """

    def __init__(self, matrix: WeightLike, name: Optional[str] = None):
        if isinstance(matrix, torch.Tensor) and matrix.ndim == 2:
            matrix = matrix[None]
        self.matrix = _as_weight_variable(matrix, "MatrixCostWeight matrix", name)
        if self.matrix.ndim != 3 or self.matrix.shape[1] != self.matrix.shape[2]:
            raise ValueError(
                f"MatrixCostWeight {self.matrix.name!r}: matrix must have shape (B, dim, dim), "
                f"got {tuple(self.matrix.shape)}"
            )
        super().__init__((self.matrix,))

    @classmethod
    def from_information(cls, information: torch.Tensor, name: Optional[str] = None) -> "MatrixCostWeight":
        """The weight of an information matrix ``(dim, dim)`` or ``(B, dim, dim)``.

        Raises:
            ValueError: ``information`` is not symmetric positive definite.
        """
        information = torch.as_tensor(information)
        if information.ndim == 2:
            information = information[None]
        factor, info = torch.linalg.cholesky_ex(0.5 * (information + information.mT))
        if bool((info != 0).any()):
            raise ValueError(
                f"MatrixCostWeight {name!r}: information matrix is not positive definite "
                f"(batch elements {torch.nonzero(info).flatten().tolist()})"
            )
        return cls(factor.mT.contiguous(), name=name)

    def weight_error(self, error: torch.Tensor) -> torch.Tensor:
        return (self._weight(error) @ error[..., None])[..., 0]

    def weight_jacobians(self, jacobians, error):
        w = self._weight(error)
        return [w @ j for j in jacobians], (w @ error[..., None])[..., 0]

    def weight_joined_jacobians(self, jacobians, error):
        """``S [J_1 ... J_n]`` as one product. On the CPU, for many rows of a small residual
        (pose-graph edges), entry-major: ``S``, ``J`` and the result are read as ``(dim, ., N)``,
        ``dim`` products and sums along the rows each, contiguous (about twice as fast as ``N``
        tiny matrix products; what :func:`~nlls.solve.normal_equations.upper_rows` reads without
        a copy). The results are then views of that memory, shaped as usual."""
        w = self._weight(error)
        dim = error.shape[-1]
        if not (error.is_cpu and dim <= ENTRY_MAJOR_DIM and error.shape[0] >= ENTRY_MAJOR_ROWS):
            joined = jacobians[0] if len(jacobians) == 1 else torch.cat(jacobians, dim=-1)
            return w @ joined, (w @ error[..., None])[..., 0]
        jt = torch.cat([j.permute(1, 2, 0) for j in jacobians], dim=1)  # (dim, D, N)
        wt = w.permute(1, 2, 0).contiguous()  # (dim, dim, N or 1)
        et = error.t()
        out, weighted = wt[:, 0, None] * jt[0], wt[:, 0] * et[0]
        for k in range(1, dim):
            out = out.addcmul_(wt[:, k, None], jt[k])
            weighted = weighted.addcmul_(wt[:, k], et[k])
        return out.permute(2, 0, 1), weighted.t()

    def check_dim(self, dim: int, owner: str) -> None:
        if self.matrix.shape[1] != dim:
            raise ValueError(
                f"cost function {owner!r}: MatrixCostWeight {self.matrix.name!r} is "
                f"{self.matrix.shape[1]}x{self.matrix.shape[2]}, the error has dimension {dim}"
            )
