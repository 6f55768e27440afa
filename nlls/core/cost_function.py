"""Cost functions: residuals ``r(x)`` and their Jacobians with respect to the tangent of ``x``.

A cost function holds its variables (``optim_vars`` that the optimizer moves, ``aux_vars`` that
it only reads) and an optional :class:`~nlls.core.cost_weight.CostWeight`. Its contribution to the
objective is ``0.5 * ||w * r||^2`` per batch element.

Three ways to give the Jacobians ``dr / d delta`` (``delta`` the tangent step of each optim var):

* :class:`CostFunction`: subclass it and write ``error()`` and ``jacobians()`` by hand (fastest);
* :class:`AutoDiffCostFunction`: give only the error function; Jacobians come from ``torch.func``;
* ``NumericDiffCostFunction``: finite differences, for residuals computed outside torch.

All methods work on whole batches ``(B, ...)``. The solver stacks cost functions of the same kind
along the batch dimension and calls them once (``nlls.core.evaluation``), so ``error()`` and
``jacobians()`` must treat every row independently and use only the registered variables.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import torch

from .cost_weight import CostWeight, ScaleCostWeight, WeightLike
from .manifold import Manifold
from .ragged import MaskLike, as_mask_variable, check_mask_width, finite_rows, mask_rows
from .stacking import Stackable
from .variable import Variable

ErrorFunction = Callable[[Tuple[Manifold, ...], Tuple[Variable, ...]], torch.Tensor]
#: a cost function's weight: a CostWeight, or data taken as a ScaleCostWeight
CostWeightLike = Union[CostWeight, WeightLike]


class CostFunction(Stackable):
    """Base class of all cost functions.

    Subclasses call ``super().__init__(optim_vars=..., aux_vars=..., cost_weight=..., name=...)``
    and define :meth:`dim`, :meth:`error` and :meth:`jacobians`.

    Cost functions of one class, ``dim()``, variable layout and weight whose
    :meth:`~nlls.core.stacking.Stackable.stack_key` agree are evaluated as one stacked call. The
    default key compares the attributes that are not variables: constants by value, anything
    else (a tensor, a module) by identity, with a warning when that keeps instances apart (hold
    such data in an aux :class:`~nlls.core.variable.Variable`, or override ``stack_key()``).

    Capabilities (class attributes; ``False`` where a subclass cannot provide them, read by the
    optimization layer and the execution strategies instead of checking concrete classes):

    * ``has_autograd_graph``: the error and Jacobians are built from differentiable torch
      operations on the variables' tensors, so an unrolled or truncated backward can record them.
    * ``has_second_derivatives``: the gradient can itself be differentiated with respect to the
      variables, as the exact implicit Hessian (``hessian="exact"``) needs.
    * ``capturable``: evaluation runs without host code or host round-trips, so a solve can be
      captured in a CUDA graph.

    Args:
        optim_vars: the :class:`~nlls.core.manifold.Manifold` variables the residual depends on.
        aux_vars: data variables the residual reads (measurements, parameters).
        cost_weight: a :class:`~nlls.core.cost_weight.CostWeight`, a float or a tensor (taken as
            a :class:`~nlls.core.cost_weight.ScaleCostWeight`); ``None`` means weight 1.
        name: unique name inside an objective; a fresh one is made when omitted.
        residual_mask: for ragged batches (:mod:`nlls.core.ragged`): a bool ``(B, dim)`` tensor
            or Variable, ``True`` on the real residual rows; the others are dropped (their
            weighted residual and Jacobian rows are zero, NaN there included, and non-finite
            entries of aux data shaped ``(B, dim, ...)`` on those rows are read as zero). A tensor
            becomes the aux variable ``<name>_residual_mask``, replaceable by name like other data.
    """

    has_autograd_graph: bool = True
    has_second_derivatives: bool = True
    capturable: bool = True

    _counter = 0
    _STACK_BASE = frozenset({"_name", "_optim_vars", "_aux_vars", "cost_weight", "_residual_mask"})

    def __init__(
        self,
        optim_vars: Sequence[Manifold],
        aux_vars: Sequence[Variable] = (),
        cost_weight: Optional[CostWeightLike] = None,
        name: Optional[str] = None,
        residual_mask: Optional[MaskLike] = None,
    ):
        if name is None:
            CostFunction._counter += 1
            name = f"{type(self).__name__}__{CostFunction._counter}"
        if not isinstance(name, str):
            raise TypeError(f"cost function name must be a str, got {type(name).__name__}")
        self._name = name
        # a single variable is accepted in place of a sequence of one
        optim: Tuple[object, ...] = (optim_vars,) if isinstance(optim_vars, Variable) else tuple(optim_vars)
        aux: Tuple[object, ...] = (aux_vars,) if isinstance(aux_vars, Variable) else tuple(aux_vars)
        if not optim:
            raise ValueError(f"cost function {name!r}: needs at least one optim variable")
        # mypy refuses an abstract class for Type[T] (its issue 4717); Manifold is what is checked
        self._optim_vars = _all_of(Manifold, optim, lambda v: (  # type: ignore[type-abstract]
            f"cost function {name!r}: optim variable {v!r} must be a Manifold "
            f"(Vector, Point2, SE3, ...), got {type(v).__name__}"))
        self._aux_vars = _all_of(Variable, aux, lambda a: (
            f"cost function {name!r}: aux variable must be a Variable, got {type(a).__name__}"))
        if cost_weight is not None and not isinstance(cost_weight, CostWeight):
            cost_weight = ScaleCostWeight(cost_weight)
        self.cost_weight = cost_weight
        self._residual_mask: Optional[Variable] = None if residual_mask is None else as_mask_variable(
            residual_mask, f"{type(self).__name__} {name!r}", f"{name}_residual_mask")

    # ---- what subclasses define --------------------------------------------------------
    def dim(self) -> int:
        """Residual size per batch element."""
        raise NotImplementedError

    def error(self) -> torch.Tensor:
        """The unweighted residual, ``(B, dim)``."""
        raise NotImplementedError

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Jacobians of the unweighted residual and the residual itself.

        Returns:
            ``([J_k of shape (B, dim, dof_k) for each optim var], error (B, dim))``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} {self.name!r} defines no jacobians(); write them by hand or "
            f"use AutoDiffCostFunction"
        )

    # ---- shared behaviour ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def optim_vars(self) -> Tuple[Manifold, ...]:
        return self._optim_vars

    @property
    def aux_vars(self) -> Tuple[Variable, ...]:
        return self._aux_vars

    @property
    def residual_mask(self) -> Optional[Variable]:
        """The bool ``(B, dim)`` variable of the real residual rows, or ``None`` (all rows)."""
        return self._residual_mask

    @property
    def weight_vars(self) -> Tuple[Variable, ...]:
        """The variables the weighting reads (part of the objective's aux vars): the cost
        weight's data, then the residual mask."""
        weights = self.cost_weight.aux_vars if self.cost_weight is not None else ()
        return weights if self._residual_mask is None else weights + (self._residual_mask,)

    def _mask(self, error: torch.Tensor) -> torch.Tensor:
        assert self._residual_mask is not None, "called for masked cost functions only"
        check_mask_width(self._residual_mask, error.shape[-1], f"{type(self).__name__} {self.name!r}")
        return self._residual_mask.tensor

    def weighted_error(self) -> torch.Tensor:
        """``w * r``, ``(B, dim)``; zero on the rows the residual mask drops."""
        if self._residual_mask is None:
            error = self.error()
            return error if self.cost_weight is None else self.cost_weight.weight_error(error)
        with finite_rows(self.aux_vars, self._residual_mask.tensor):
            error = self.error()
        mask = self._mask(error)
        error = mask_rows(mask, error)
        if self.cost_weight is not None:  # masked again: a weight's padding (or a full matrix)
            error = mask_rows(mask, self.cost_weight.weight_error(error))
        return error

    def weighted_jacobians_error(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Jacobians and residual, both multiplied by the weight; zero on masked rows."""
        if self._residual_mask is None:
            jacobians, error = self.jacobians()
            if self.cost_weight is None:
                return list(jacobians), error
            return self.cost_weight.weight_jacobians(list(jacobians), error)
        with finite_rows(self.aux_vars, self._residual_mask.tensor):
            jacobians, error = self.jacobians()
        mask = self._mask(error)
        jacobians, error = [mask_rows(mask, j) for j in jacobians], mask_rows(mask, error)
        if self.cost_weight is not None:
            jacobians, error = self.cost_weight.weight_jacobians(jacobians, error)
            jacobians, error = [mask_rows(mask, j) for j in jacobians], mask_rows(mask, error)
        return jacobians, error

    def stack_variables(self) -> Tuple[Variable, ...]:
        """``optim_vars + aux_vars + weight_vars``: every variable the residual reads."""
        return self._optim_vars + self._aux_vars + self.weight_vars

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, "
            f"optim_vars={[v.name for v in self.optim_vars]}, "
            f"aux_vars={[v.name for v in self.aux_vars]})"
        )


class ErrorFunctionCostFunction(CostFunction):
    """Base of the cost functions defined by an error function alone.

    ``err_fn(optim_vars, aux_vars)`` receives the two tuples of variables and returns the
    residual ``(B, dim)``; subclasses say how the Jacobians are found
    (:class:`AutoDiffCostFunction`, ``NumericDiffCostFunction``). The error function is part
    of the stack key: cost functions stack when they share it (the same function object).

    Raises:
        TypeError: ``err_fn`` is not callable.
        ValueError: ``dim`` is not a positive int.
    """

    def __init__(self, optim_vars: Sequence[Manifold], err_fn: ErrorFunction, dim: int,
                 aux_vars: Sequence[Variable] = (), cost_weight: Optional[CostWeightLike] = None,
                 name: Optional[str] = None, residual_mask: Optional[MaskLike] = None):
        super().__init__(optim_vars, aux_vars, cost_weight=cost_weight, name=name,
                         residual_mask=residual_mask)
        what = f"{type(self).__name__} {self.name!r}"
        if not callable(err_fn):
            raise TypeError(f"{what}: err_fn must be callable")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"{what}: dim must be a positive int, got {dim!r}")
        if self.residual_mask is not None:
            check_mask_width(self.residual_mask, dim, what)
        self.err_fn = err_fn
        self._dim = dim

    def dim(self) -> int:
        return self._dim

    def error(self) -> torch.Tensor:
        return self._checked(self.err_fn(self.optim_vars, self.aux_vars))

    def _checked(self, out) -> torch.Tensor:
        """``err_fn``'s output when it is a floating-point tensor; else a ``TypeError`` naming
        this cost function (rather than a torch error from deep inside a transform)."""
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out
        if isinstance(out, torch.Tensor):
            kind = f"a tensor of dtype {out.dtype}, which has no derivative"
        else:
            numpy = type(out).__module__ == "numpy"
            kind = f"a numpy {type(out).__name__}" if numpy else f"an object of type {type(out).__name__}"
        raise TypeError(
            f"{type(self).__name__} {self.name!r}: err_fn returned {kind}; expected a (B, "
            f"{self._dim}) floating-point torch tensor computed by torch operations on the "
            f"variables' tensors (for a black box, numpy or scipy, use NumericDiffCostFunction)"
        )

    def stack_key(self) -> tuple:
        """The error function (by identity) and the other attributes (see :class:`CostFunction`)."""
        return (self.err_fn, self.attributes_key(exclude=("err_fn",)))


class AutoDiffCostFunction(ErrorFunctionCostFunction):
    """A cost function defined by its error function alone; Jacobians by ``torch.func``.

    ``err_fn(optim_vars, aux_vars)`` receives the two tuples of variables and returns the
    residual ``(B, dim)``. It must treat batch rows independently and use torch operations.

    The Jacobian with respect to the tangent step ``delta`` of every optim variable is computed
    at ``delta = 0`` in one batched call (no loop over the batch):

    * forward mode (``torch.func.jvp`` vmapped over the ``D = sum(dof)`` tangent directions,
      each direction applied to every batch row at once): ``D`` directional derivatives;
    * reverse mode (``torch.func.vjp`` vmapped over the ``dim`` residual entries): ``dim``
      vector-Jacobian products.

    ``autograd_mode="auto"`` picks forward mode when ``D <= dim`` (the usual case: few unknowns,
    many residuals) and reverse mode otherwise, except for small stacks (``dim^2 * rows <=
    200,000``), where reverse mode's lower fixed cost wins (about 0.35 ms against 1 ms per call
    on CPU). If an operation has no forward-mode rule it falls back to reverse mode once and
    remembers it. With a ``residual_mask`` "auto" is forward mode, which keeps residual rows
    apart (reverse mode's products sum over them, and padding that is NaN would spoil every row).

    Args:
        optim_vars: Manifold variables.
        err_fn: ``(optim_vars, aux_vars) -> (B, dim)``.
        dim: residual size.
        aux_vars: data variables passed to ``err_fn``.
        cost_weight: weight (see :class:`CostFunction`).
        name: unique name.
        autograd_mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        residual_mask: bool ``(B, dim)``: the real residual rows of a ragged batch (see
            :class:`CostFunction`).
    """

    _MODES = ("auto", "forward", "reverse")

    def __init__(self, optim_vars: Sequence[Manifold], err_fn: ErrorFunction, dim: int,
                 aux_vars: Sequence[Variable] = (), cost_weight: Optional[CostWeightLike] = None,
                 name: Optional[str] = None, autograd_mode: str = "auto",
                 residual_mask: Optional[MaskLike] = None):
        super().__init__(optim_vars, err_fn, dim, aux_vars, cost_weight=cost_weight, name=name,
                         residual_mask=residual_mask)
        if autograd_mode not in self._MODES:
            raise ValueError(
                f"AutoDiffCostFunction {self.name!r}: autograd_mode must be one of "
                f"{self._MODES}, got {autograd_mode!r}"
            )
        self.autograd_mode = autograd_mode

    # reverse mode materializes (dim, B, dim) cotangents: below this many entries its lower
    # fixed cost wins over forward mode's (measured on CPU, bench/README.md)
    _REVERSE_MAX_ENTRIES = 200_000

    def _mode(self, batch: int = 1) -> str:
        if self.autograd_mode != "auto":
            return self.autograd_mode
        if self.residual_mask is not None:  # reverse mode sums over rows: 0 * nan from padding
            return "forward"
        total_dof = sum(v.dof() for v in self.optim_vars)
        if total_dof > self._dim or self._dim * self._dim * batch <= self._REVERSE_MAX_ENTRIES:
            return "reverse"
        return "forward"

    def _error_at(self, *deltas: torch.Tensor) -> torch.Tensor:
        moved = tuple(
            v.with_tensor(type(v).retract_tensor(v.tensor.expand(d.shape[0], *v.event_shape), d))
            for v, d in zip(self.optim_vars, deltas)
        )
        try:
            out = self.err_fn(moved, self.aux_vars)
        except RuntimeError as exc:  # a tensor's data read outside torch, under torch.func
            if "have storage" not in str(exc) and ".item()" not in str(exc):
                raise
            raise TypeError(
                f"AutoDiffCostFunction {self.name!r}: err_fn reads tensor data outside torch "
                f"(.numpy(), .item(), .tolist()), which torch.func cannot differentiate; use "
                f"NumericDiffCostFunction for a black box"
            ) from exc
        return self._checked(out)

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        batch = max(v.batch_size for v in self.optim_vars + self.aux_vars)
        zeros = tuple(
            torch.zeros(batch, v.dof(), dtype=v.dtype, device=v.device) for v in self.optim_vars
        )
        if self._mode(batch) == "forward":
            try:
                return _forward_jacobians(self._error_at, zeros)
            except (NotImplementedError, RuntimeError) as exc:
                if self.autograd_mode == "forward" or "forward" not in str(exc).lower():
                    raise
                self.autograd_mode = "reverse"  # no forward-mode rule for some op: remember
        try:
            return _reverse_jacobians(self._error_at, zeros, self._dim)
        except RuntimeError as exc:
            # torch.func's reverse mode refuses to run under saved-tensor hooks (activation
            # offloading, memory probes); forward mode does not mind
            if self.autograd_mode != "auto" or "saved tensor hooks" not in str(exc):
                raise
            return _forward_jacobians(self._error_at, zeros)


def _forward_jacobians(fn, zeros):
    """Jacobians of a row-independent ``fn(*deltas) -> (B, dim)`` at ``deltas = zeros``, by
    forward mode vmapped over the tangent directions."""
    dofs = [z.shape[1] for z in zeros]
    total = sum(dofs)
    ref = zeros[0]
    # direction i moves tangent coordinate i of every batch row at once
    basis = torch.eye(total, dtype=ref.dtype, device=ref.device)
    tangents = tuple(
        t[:, None, :].expand(total, z.shape[0], z.shape[1])
        for t, z in zip(torch.split(basis, dofs, dim=1), zeros)
    )

    def directional(*tangent):
        return torch.func.jvp(fn, zeros, tangent)

    # the stub of out_dims omits None inside a tuple, which torch accepts (a non-batched output)
    error, columns = torch.func.vmap(directional, out_dims=(None, 0))(*tangents)  # type: ignore[arg-type]  # (D, B, dim)
    jac = columns.permute(1, 2, 0)  # (B, dim, D)
    return list(torch.split(jac, dofs, dim=2)), error


def _reverse_jacobians(fn, zeros, dim):
    """Jacobians of a row-independent ``fn(*deltas) -> (B, dim)`` at ``deltas = zeros``, by
    reverse mode vmapped over the residual entries."""
    error, vjp_fn = torch.func.vjp(fn, *zeros)  # type: ignore[misc]  # stub adds has_aux's 3-tuple
    basis = torch.eye(dim, dtype=error.dtype, device=error.device)
    cotangents = basis[:, None, :].expand(dim, error.shape[0], dim)
    rows = torch.func.vmap(vjp_fn)(cotangents)  # tuple of (dim, B, dof_k)
    return [r.transpose(0, 1) for r in rows], error


_Checked = TypeVar("_Checked")


def _all_of(cls: Type[_Checked], items: Tuple[object, ...], message: Callable[[object], str]) -> Tuple[_Checked, ...]:
    """``items`` when every one is a ``cls``; else ``TypeError(message(the first that is not))``."""
    checked: List[_Checked] = []
    for item in items:
        if not isinstance(item, cls):
            raise TypeError(message(item))
        checked.append(item)
    return tuple(checked)
