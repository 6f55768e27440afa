"""The objective: what to minimize.

An :class:`Objective` is a set of cost functions and the variables they share, registered by
name. Its value per batch element is ``0.5 * sum_i ||w_i * r_i||^2``. The objective knows nothing
about how it is minimized: solvers read it (``nlls.core.evaluation``), and it never calls them.
"""
from __future__ import annotations

import copy as _copy
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import torch

from .blocks import VariableBlock
from .cost_function import CostFunction
from .evaluation import Evaluator
from .manifold import Manifold, Vector
from .objective_checks import data_fits
from .stacking import PreStacked
from .variable import Variable


def check_data(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """Raise ``ValueError`` starting with ``what`` when ``tensor`` is on another device than
    ``device``, or is floating-point (or complex) of another dtype than ``dtype``."""
    if tensor.device != device:
        raise ValueError(
            f"{what} is on {tensor.device}, the objective's variables are on {device}; move it "
            f"with .to({str(device)!r})"
        )
    if (tensor.is_floating_point() or tensor.is_complex()) and tensor.dtype != dtype:
        raise ValueError(
            f"{what} has dtype {tensor.dtype}, the objective's is {dtype}; convert it with "
            f".to({dtype})"
        )


class Objective:
    """A batch of least-squares problems: cost functions and their variables, by name.

    Args:
        dtype: optional dtype every optim variable must have (checked in :meth:`add`).
    """

    def __init__(self, dtype: Optional[torch.dtype] = None):
        self._dtype = dtype
        self.cost_functions: Dict[str, CostFunction] = {}
        self.optim_vars: Dict[str, Manifold] = {}
        self.aux_vars: Dict[str, Variable] = {}
        # bumped whenever the structure (cost functions, variables) changes; solvers cache on it
        self._structure_version = 0
        self._batch: Optional[int] = None  # the batch size found by the last check
        self._evaluator: Optional[Evaluator] = None  # evaluator(); not copied
        #: variable blocks by name (``nlls.VariableBlock``): ``update`` sets all their members at once
        self.blocks: Dict[str, VariableBlock] = {}
        #: box bounds by variable name: ``(lower, upper)``, each ``(1 or B, n)`` or ``None``
        self.bounds: Dict[str, Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = {}

    # ---- building ---------------------------------------------------------------------------
    def add(self, cost_function: CostFunction) -> "Objective":
        """Register a cost function and its variables.

        Every variable, the weight's included, must be on the objective's device, and its data
        must have the objective's dtype when it is floating-point (integer and boolean data, such
        as indices, are left as they are). A weight given as a Python number takes the
        objective's dtype and device here; a weight given as a tensor or Variable is not
        converted.

        Raises:
            TypeError: ``cost_function`` is not a CostFunction.
            ValueError: a name already used by another cost function or variable, a variable used
                both as optim and aux variable, a batch size that does not broadcast, or a
                variable or weight of another floating dtype or on another device (the message
                names it).
        """
        if not isinstance(cost_function, CostFunction):
            raise TypeError(f"Objective.add expects a CostFunction, got {type(cost_function).__name__}")
        cf = cost_function
        name = cf.name
        if name in self.cost_functions:
            if self.cost_functions[name] is cf:
                raise ValueError(f"cost function {name!r} was already added to this objective")
            raise ValueError(f"cost function name {name!r} is used by another cost function")
        new_optim, new_aux = self._new_variables(cf)
        dtype = self._dtype
        if dtype is None:
            dtype = next(iter({**self.optim_vars, **new_optim}.values())).dtype
        device = self.device if self.optim_vars else next(iter(new_optim.values())).device
        if data_fits(new_optim, new_aux, dtype, device):  # one pass, no message to build
            for data in new_aux.values():
                if data.follows_objective and data.tensor.is_floating_point():
                    data.tensor = data.tensor.to(dtype=dtype, device=device)
        else:
            self._check_data(cf, new_optim, new_aux, dtype, device)
        dim = cf.dim()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"cost function {name!r}: dim() must be a positive int, got {dim!r}")
        if cf.cost_weight is not None:
            cf.cost_weight.check_dim(cf.dim(), name)
        self._check_batch(list(new_optim.values()) + list(new_aux.values()), owner=cf, full=False)
        blocks = cf.variable_blocks if isinstance(cf, PreStacked) else ()
        for block in blocks:
            if self.blocks.get(block.name, block) is not block or block.name in self.optim_vars \
                    or block.name in self.aux_vars or block.name in new_optim or block.name in new_aux:
                raise ValueError(f"cost function {name!r}: block name {block.name!r} is already used by "
                                 f"another block or variable of this objective")
        self.cost_functions[name] = cf
        self.blocks.update({block.name: block for block in blocks})
        self.optim_vars.update(new_optim)
        self.aux_vars.update(new_aux)
        self._dtype = dtype
        self._structure_version += 1
        return self

    def _new_variables(self, cf: CostFunction) -> Tuple[Dict[str, Manifold], Dict[str, Variable]]:
        """``cf``'s optim and aux variables by name, checked against the objective's; the names
        are compared in bulk, and only a clash takes the variable-by-variable path (messages)."""
        optim, aux = tuple(cf.optim_vars), tuple(cf.aux_vars) + tuple(cf.weight_vars)
        new_optim = {var.name: var for var in optim}
        new_aux = {var.name: var for var in aux}
        known, known_aux = self.optim_vars, self.aux_vars
        if (len(new_optim) == len(optim) and len(new_aux) == len(aux)
                and new_optim.keys().isdisjoint(new_aux) and new_optim.keys().isdisjoint(known_aux)
                and new_aux.keys().isdisjoint(known)
                and all(known[n] is new_optim[n] for n in new_optim.keys() & known.keys())
                and all(known_aux[n] is new_aux[n] for n in new_aux.keys() & known_aux.keys())):
            return new_optim, new_aux
        new_optim, new_aux = {}, {}
        for var in optim:
            self._check_name(var, cf, as_optim=True, pending=(new_optim, new_aux))
            new_optim[var.name] = var
        for aux_var in aux:
            self._check_name(aux_var, cf, as_optim=False, pending=(new_optim, new_aux))
            new_aux[aux_var.name] = aux_var
        return new_optim, new_aux

    @staticmethod
    def _check_data(cf, new_optim, new_aux, dtype, device) -> None:
        """The checks variable by variable: raise on the first of another dtype or device,
        naming it (weights given as numbers take the objective's dtype and device)."""
        name = cf.name
        for var in new_optim.values():
            if var.dtype != dtype:
                raise ValueError(
                    f"cost function {name!r}: optim variable {var.name!r} has dtype {var.dtype}, "
                    f"the objective's is {dtype}"
                )
        weights = {id(v): f"{type(cf.cost_weight).__name__} {v.name!r}" for v in cf.weight_vars}
        for data in [*new_optim.values(), *new_aux.values()]:
            if data.follows_objective and data.tensor.is_floating_point():
                data.tensor = data.tensor.to(dtype=dtype, device=device)  # a weight given as a number
            kind = "optim" if data.name in new_optim else "aux"
            what = weights.get(id(data), f"{kind} variable {data.name!r}")
            check_data(data.tensor, dtype, device, f"cost function {name!r}: {what}")

    def _check_name(self, var, cf, as_optim, pending):
        kind = "optim" if as_optim else "aux"
        for registry, other_kind in (
            (self.optim_vars, "optim"), (self.aux_vars, "aux"),
            (pending[0], "optim"), (pending[1], "aux"),
        ):
            existing = registry.get(var.name)
            if existing is None:
                continue
            if existing is not var:
                raise ValueError(
                    f"cost function {cf.name!r}: variable name {var.name!r} is already used by "
                    f"another variable of this objective"
                )
            if other_kind != kind:
                raise ValueError(
                    f"cost function {cf.name!r}: variable {var.name!r} is used as an {kind} "
                    f"variable here and as an {other_kind} variable elsewhere"
                )

    def _check_batch(self, extra: Iterable[Variable] = (), owner=None, full: bool = True) -> int:
        """The common batch size; with ``full=False`` only ``extra`` is checked against the size
        known from earlier checks (``add`` stays linear in the number of cost functions)."""
        if full or self._batch is None:
            variables = list(self.optim_vars.values()) + list(self.aux_vars.values()) + list(extra)
        else:
            variables = [v for v in extra if v.tensor.shape[0] != 1]
            if not variables or all(v.batch_size == self._batch for v in variables):
                return self._batch
            variables += [v for v in list(self.optim_vars.values()) + list(self.aux_vars.values())
                          if v.batch_size != 1]
        sizes = {v.tensor.shape[0] for v in variables} - {1}  # each one's batch_size
        if len(sizes) > 1:
            by_size: Dict[int, str] = {}
            for v in variables:
                by_size.setdefault(v.batch_size, v.name)
            detail = ", ".join(f"{name!r} has batch {size}" for size, name in by_size.items())
            where = f"cost function {owner.name!r}: " if owner is not None else ""
            raise ValueError(f"{where}batch sizes do not broadcast: {detail}")
        self._batch = sizes.pop() if sizes else 1
        return self._batch

    def update(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Set variables (optim or aux) by name, or every member of a variable block
        (``nlls.VariableBlock``, ``(B, N, *shape)``) by the block's name; shapes are checked.

        Nothing changes when any entry is refused.

        Raises:
            KeyError: an unknown variable name (the message lists the known ones).
            ValueError: a wrong shape, batch sizes that do not broadcast, floating-point data of
                another dtype than the objective's, or data on another device.
        """
        known = {**self.optim_vars, **self.aux_vars}
        for name in tensors:
            if name not in known and name not in self.blocks:
                listed = sorted(known)
                raise KeyError(
                    f"Objective.update: no variable named {name!r}; known variables: "
                    f"{listed[:50]}{' ...' if len(listed) > 50 else ''}; blocks: {sorted(self.blocks)}"
                )
        changed = [v for name in tensors for v in (self.blocks[name].members if name in self.blocks else [known[name]])]
        old = [(var, var.tensor) for var in changed]
        dtype, device = self.dtype, self.device
        try:
            for name, tensor in tensors.items():
                if name in self.blocks:  # every member at once, validated once
                    self.blocks[name].update(tensor)
                    check_data(self.blocks[name].members[0].tensor, dtype, device, f"Objective.update: block {name!r}")
                    continue
                known[name].update(tensor)
                check_data(known[name].tensor, dtype, device, f"Objective.update: variable {name!r}")
            self._check_batch()
        except Exception:
            for var, tensor in old:
                var.tensor = tensor
            raise

    def set_bounds(self, variable: Union[Manifold, str], lower=None, upper=None) -> None:
        """Box bounds ``lower <= x <= upper`` on a vector variable's coordinates, per batch element.

        Every optimizer keeps its iterates in the box (projected steps on an active set, see
        :mod:`nlls.solve.bounds`); an initial value outside it is projected into it when a solve
        starts; ``info.active_bounds`` says which coordinates end on a bound. The implicit backward
        gives zero gradient along a coordinate on its bound. Bounds are data of the problem, not
        solver settings: there is no configuration key for them.

        Args:
            variable: an optim variable of this objective (``nlls.Vector``, ``Point2``, ``Point3``)
                or its name.
            lower, upper: a number or a tensor broadcastable to ``(B, n)`` (``()``, ``(n,)``,
                ``(1, n)`` or ``(B, n)``); ``-inf`` / ``+inf`` entries or ``None`` leave that side
                open. Both ``None`` removes the variable's bounds.

        Raises:
            ValueError: an unknown variable, a variable that is not an optim variable here, a bound
                of the wrong shape, NaN, or ``lower > upper`` somewhere.
            TypeError: a variable that is not a vector (a Lie group: bound its parameters through a
                vector variable instead).
        """
        name = variable if isinstance(variable, str) else getattr(variable, "name", None)
        var = self.optim_vars.get(name) if isinstance(name, str) else None
        if not isinstance(name, str) or var is None or (not isinstance(variable, str) and var is not variable):
            known = sorted(self.optim_vars)
            raise ValueError(f"Objective.set_bounds: {name!r} is not an optim variable of this objective; "
                             f"its optim variables: {known[:20]}{' ...' if len(known) > 20 else ''}")
        if not isinstance(var, Vector):
            raise TypeError(f"Objective.set_bounds: variable {name!r} is a {type(var).__name__}; box bounds "
                            f"apply to vector variables (Vector, Point2, Point3)")
        n = var.dof()
        sides = [self._bound(name, side, value, n) for side, value in (("lower", lower), ("upper", upper))]
        low, high = sides
        if low is not None and high is not None:
            bad = torch.nonzero((low > high).expand(torch.broadcast_shapes(low.shape, high.shape)))
            if bad.numel():
                element, index = bad[0].tolist()
                raise ValueError(f"Objective.set_bounds: variable {name!r}: lower > upper at batch element "
                                 f"{element}, coordinate {index}")
        if low is None and high is None:
            self.bounds.pop(name, None)
        else:
            self.bounds[name] = (low, high)

    def _bound(self, name: str, side: str, value, n: int) -> Optional[torch.Tensor]:
        if value is None:
            return None
        what = f"Objective.set_bounds: variable {name!r}: {side}"
        if not isinstance(value, (torch.Tensor, int, float)) or isinstance(value, bool):
            raise TypeError(f"{what} must be a number or a tensor, got {type(value).__name__}")
        tensor = torch.as_tensor(value)
        if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{what} must be real numbers, got dtype {tensor.dtype}")
        tensor = tensor.detach().to(dtype=self.dtype, device=self.device)
        if tensor.ndim < 2:
            tensor = tensor.reshape(1, -1) if tensor.ndim == 1 else tensor.reshape(1, 1)
        batch = self.batch_size
        if tensor.ndim != 2 or tensor.shape[1] not in (1, n) or tensor.shape[0] not in (1, batch):
            raise ValueError(f"{what} has shape {tuple(value.shape) if isinstance(value, torch.Tensor) else ()}, "
                             f"expected one broadcastable to ({batch}, {n})")
        if bool(torch.isnan(tensor).any()):
            raise ValueError(f"{what} contains NaN (use -inf / +inf or None for an open side)")
        if bool((tensor == (torch.inf if side == "lower" else -torch.inf)).any()):
            raise ValueError(f"{what} contains {'+' if side == 'lower' else '-'}inf: no value would be feasible")
        return tensor.expand(tensor.shape[0], n).clone()

    # ---- reading ------------------------------------------------------------------------
    @property
    def structure_version(self) -> int:
        """A counter that increments whenever cost functions or variables are added or removed.

        Read-only. Solvers key their caches (grouping, sparsity pattern, symbolic factorization)
        on it: an unchanged value means the same cost functions over the same variables (the
        variables' values may have changed).
        """
        return self._structure_version

    @property
    def batch_size(self) -> int:
        return self._check_batch()

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype if self._dtype is not None else torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for v in self.optim_vars.values():
            return v.device
        return torch.device("cpu")

    def dim(self) -> int:
        """Total residual size per batch element."""
        return sum(cf.dim() for cf in self.cost_functions.values())

    def size(self) -> int:
        """Number of factors: cost functions, a ``FactorGroup`` counting each of its factors."""
        return sum(cf.count if isinstance(cf, PreStacked) else 1 for cf in self.cost_functions.values())

    def error(self) -> torch.Tensor:
        """The weighted residual of every cost function, concatenated: ``(B, dim())``.

        The cost functions come in the order they were added. They are evaluated as stacked
        calls, one per kind (see :class:`~nlls.core.evaluation.Evaluator`).

        Raises:
            ValueError: a cost function's error has the wrong shape (the message names it).
        """
        evaluator = self.evaluator()
        if evaluator is None:
            return torch.zeros(self.batch_size, 0, dtype=self.dtype, device=self.device)
        state, aux = evaluator.gather(), evaluator.aux()
        return evaluator.concatenate(evaluator.errors(state, aux))

    def error_metric(self) -> torch.Tensor:
        """``0.5 * sum ||w r||^2`` per batch element, ``(B,)``, by stacked calls (as :meth:`error`)."""
        evaluator = self.evaluator()
        if evaluator is None:
            return torch.zeros(self.batch_size, dtype=self.dtype, device=self.device)
        return evaluator.error_metric(evaluator.gather(), evaluator.aux())

    def evaluator(self) -> Optional[Evaluator]:
        """The vectorized evaluator of this objective's current structure, built once per
        :attr:`structure_version` and shared by :meth:`error`, :meth:`error_metric` and the
        optimizers; ``None`` without cost functions."""
        if not self.cost_functions:
            return None
        if self._evaluator is None or self._evaluator.structure_version != self._structure_version:
            self._evaluator = Evaluator(self)
        return self._evaluator

    # ---- moving and copying ---------------------------------------------------------------
    def to(self, *args, **kwargs) -> "Objective":
        """Move every variable (``torch.Tensor.to`` arguments); returns ``self``."""
        for var in list(self.optim_vars.values()) + list(self.aux_vars.values()):
            var.to(*args, **kwargs)
        if self.optim_vars:
            self._dtype = next(iter(self.optim_vars.values())).dtype
        return self

    def copy(self) -> "Objective":
        """An independent objective: new cost function and variable objects, cloned tensors.

        Functions (error functions) and modules referenced by cost functions are shared.
        """
        memo: dict = {}
        for var in list(self.optim_vars.values()) + list(self.aux_vars.values()):
            memo[id(var.tensor)] = var.tensor.clone()
        for cf in self.cost_functions.values():
            for value in vars(cf).values():
                if isinstance(value, torch.nn.Module):
                    memo[id(value)] = value
        return _copy.deepcopy(self, memo)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_evaluator"] = None  # structure caches are rebuilt, not copied
        return state

    def __repr__(self) -> str:
        return (
            f"Objective({len(self.cost_functions)} cost functions, {len(self.optim_vars)} optim "
            f"vars, {len(self.aux_vars)} aux vars, dim={self.dim()})"
        )
