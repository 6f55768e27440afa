"""Many factors of one kind stated at once: :class:`FactorGroup`.

An objective of ``E`` factors of one kind (the 64,311 edges of a pose graph) built as ``E``
cost-function objects costs ``E`` Python objects, ``E`` signature computations and ``E`` lookups
per build. A :class:`FactorGroup` states them as one object instead:

* a *template*: one ordinary cost function (a ``Between``, an ``AutoDiffCostFunction``, a robust
  wrapper...) whose variables are stand-ins of the right type and per-element shape;
* for each optim variable of the template, a sequence of ``N`` variables of that type and an index
  tensor ``(E,)``: factor ``k`` reads ``variables[index[k]]``;
* for each aux variable of the template (measurements, weight data, residual masks), one data
  :class:`~nlls.core.variable.Variable` of shape ``(B or 1, E, *shape)``: factor ``k`` reads
  ``data[:, k]``. It is registered under its own name, so a layer input or
  ``Objective.update`` replaces the data of every factor in one entry, and it may require grad
  (per-factor learnable weights as one tensor).

The evaluator (:mod:`nlls.core.evaluation`) takes a group as one pre-stacked call of ``E``
members: no per-factor object, no per-factor signature; the sparse pattern comes from the index
tensors. The factors' residuals come in factor order, ``dim() = E * template.dim()``.
``Between.many`` and ``Difference.many`` (:mod:`nlls.geometry.factors`) build the common groups.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .blocks import VariableBlock
from .cost_function import CostFunction
from .cost_groups import twin
from .manifold import Manifold
from .stacking import PreStacked, stacked_data
from .variable import Variable, as_tensor

#: one optim position of a group: ``(variables, index)``
OptimSource = Tuple[Sequence[Manifold], torch.Tensor]


def template_positions(template: CostFunction) -> Tuple[List[Variable], List[Variable]]:
    """The template's distinct variables, ``(optim, aux)``, in ``stack_variables()`` order (a
    variable used twice counts once): the positions a group's sources fill."""
    seen: Dict[int, Variable] = {}
    for var in template.stack_variables():
        seen.setdefault(id(var), var)
    optim_ids = {id(v) for v in template.optim_vars}
    distinct = list(seen.values())
    return [v for v in distinct if id(v) in optim_ids], [v for v in distinct if id(v) not in optim_ids]


class FactorGroup(CostFunction, PreStacked):
    """``E`` factors of one kind as one cost function (see the module docs).

    Args:
        template: a cost function whose variables stand in for every factor's; only their types,
            per-element shapes and dtypes matter (their data is never read by the solver).
        variables: one ``(variables, index)`` per distinct optim variable of the template, in the
            template's order: a sequence of ``N`` Manifold variables of the stand-in's type and
            shape (a :class:`~nlls.VariableBlock`, which the objective then knows by name), and an
            integer tensor ``(E,)`` of positions in it.
        data: one entry per distinct aux variable of the template (its aux variables, then its
            weight data and residual mask), in that order: a Variable or tensor of shape
            ``(B or 1, E, *shape)`` (``shape`` the stand-in's per-element shape). A tensor becomes
            the variable ``<name>_data<k>``.
        name: unique name inside an objective.

    Raises:
        TypeError, ValueError: a count, type, shape or index that does not fit the template; the
            message names the group and the position.
    """

    def __init__(self, template: CostFunction, variables: Sequence[OptimSource],
                 data: Sequence[Union[Variable, torch.Tensor]] = (), name: Optional[str] = None):
        what = f"FactorGroup {name!r}" if name is not None else "FactorGroup"
        if not isinstance(template, CostFunction) or isinstance(template, PreStacked):
            raise TypeError(f"{what}: template must be a CostFunction (not a group), got "
                            f"{type(template).__name__}")
        optim_positions, aux_positions = template_positions(template)
        if len(variables) != len(optim_positions):
            raise ValueError(f"{what}: template {template.name!r} has {len(optim_positions)} optim "
                             f"variable(s), got {len(variables)} (variables, index) pairs")
        if len(data) != len(aux_positions):
            raise ValueError(f"{what}: template {template.name!r} reads {len(aux_positions)} aux "
                             f"variable(s) ({[v.name for v in aux_positions]}), got {len(data)} data entries")
        sources: List[Tuple[List[Manifold], torch.Tensor]] = []
        count: Optional[int] = None
        for p, (source, stand_in) in enumerate(zip(variables, optim_positions)):
            members, index = _optim_source(what, p, source, stand_in)
            if count is not None and index.numel() != count:
                raise ValueError(f"{what}: index {p} has {index.numel()} entries, index 0 has {count}")
            count = index.numel()
            sources.append((members, index))
        assert count is not None, "a CostFunction has at least one optim variable"
        if count == 0:
            raise ValueError(f"{what}: no factors (the index tensors are empty)")
        unique: Dict[int, Manifold] = {}  # first occurrence order (a repeated key keeps its place)
        seen = set()
        for (members, _), source in zip(sources, variables):
            if id(source[0]) not in seen:  # a block indexed twice (i -> j) is walked once
                seen.add(id(source[0]))
                unique.update({id(var): var for var in members})
        group_name = name if name is not None else f"FactorGroup_{template.name}"
        data_vars = [_data_variable(what, k, entry, stand_in, count, f"{group_name}_data{k}")
                     for k, (entry, stand_in) in enumerate(zip(data, aux_positions))]
        super().__init__(optim_vars=tuple(unique.values()), aux_vars=tuple(data_vars), name=name)
        self.template = template
        self.sources = sources
        # the blocks the variables came as: the objective registers them by name
        self.variable_blocks = tuple(dict.fromkeys(
            source[0] for source in variables if isinstance(source[0], VariableBlock)))
        self.data = data_vars
        self.count = count
        # the template's capabilities hold for the group (read on instances by solvers)
        self.has_autograd_graph = template.has_autograd_graph
        self.has_second_derivatives = template.has_second_derivatives
        self.capturable = template.capturable

    # ---- PreStacked ------------------------------------------------------------------------
    def stacked_sources(self) -> Tuple[CostFunction, List[Tuple[List[Manifold], torch.Tensor]], List[Variable]]:
        """``(template, [(variables, index) per optim position], [data per aux position])``."""
        return self.template, self.sources, self.data

    def member_name(self, k: int) -> str:
        """The name of factor ``k`` in messages: ``<name>[k]``."""
        return f"{self.name}[{k}]"

    # ---- CostFunction ------------------------------------------------------------------------
    def dim(self) -> int:
        return self.count * self.template.dim()

    def error(self) -> torch.Tensor:
        """The weighted residual of every factor, ``(B, E * template.dim())``, factor by factor
        (a direct evaluation, for inspection; solvers use the evaluator)."""
        batch = max([v.batch_size for v in self.optim_vars] + [d.batch_size for d in self.data])
        optim_positions, aux_positions = template_positions(self.template)
        mapping: Dict[int, Variable] = {}
        for stand_in, (members, index) in zip(optim_positions, self.sources):
            values = torch.stack([v.tensor.expand(batch, *v.event_shape) for v in members])
            picked = values.index_select(0, index.to(values.device))
            mapping[id(stand_in)] = stand_in.with_tensor(picked.reshape(-1, *stand_in.event_shape))
        for stand_in, data in zip(aux_positions, self.data):
            mapping[id(stand_in)] = stand_in.with_tensor(stacked_data(data.tensor, batch))
        error = twin(self.template, mapping).weighted_error()
        return error.reshape(self.count, batch, -1).transpose(0, 1).reshape(batch, -1)

    def jacobians(self):
        raise NotImplementedError(
            f"FactorGroup {self.name!r}: the Jacobians are computed per factor by the solver's "
            f"evaluator; check the template's with nlls.check_jacobians(template)")

    def __repr__(self) -> str:
        return (f"FactorGroup(name={self.name!r}, factors={self.count}, "
                f"template={type(self.template).__name__}, data={[d.name for d in self.data]})")


def _optim_source(what: str, p: int, source, stand_in: Variable) -> Tuple[List[Manifold], torch.Tensor]:
    if not isinstance(source, (tuple, list)) or len(source) != 2:
        raise TypeError(f"{what}: variables[{p}] must be a (variables, index) pair")
    members, index = source
    if isinstance(members, Variable):
        members = [members]
    members = list(members)
    if not members:
        raise ValueError(f"{what}: variables[{p}] is empty")
    cls, shape = type(stand_in), torch.Size(stand_in.event_shape)
    kinds = {(type(var), var.tensor.shape) for var in members}  # one pass; the culprit if any
    if any(kind is not cls or size[1:] != shape for kind, size in kinds):
        for var in members:
            if type(var) is not cls or var.tensor.shape[1:] != shape:
                raise TypeError(f"{what}: variables[{p}] holds {var!r}; the template's variable "
                                f"{stand_in.name!r} is a {cls.__name__} of per-element shape {shape}")
    index = as_tensor(index, f"{what}: index {p}")
    if index.ndim != 1 or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f"{what}: index {p} must be a 1-D integer tensor, got dtype {index.dtype} "
                         f"and shape {tuple(index.shape)}")
    index = index.to(dtype=torch.long, device="cpu").contiguous()
    values = index.numpy()
    if values.size and (values.min() < 0 or values.max() >= len(members)):
        raise ValueError(f"{what}: index {p} has entries outside [0, {len(members)})")
    return members, index


def _data_variable(what: str, k: int, entry, stand_in: Variable, count: int, default_name: str) -> Variable:
    data = entry if isinstance(entry, Variable) else Variable(as_tensor(entry, f"{what}: data {k}"), default_name)
    expected = (count,) + tuple(stand_in.event_shape)
    if tuple(data.shape[1:]) != expected:
        raise ValueError(f"{what}: data {k} ({data.name!r}, for the template's {stand_in.name!r}) has "
                         f"shape {tuple(data.shape)}, expected (B or 1, {', '.join(map(str, expected))})")
    return data
