"""Vectorized evaluation: many cost functions, one call per kind.

Real problems hold thousands of cost functions of a few kinds (every odometry edge of a pose
graph is the same ``Between``; every data point of a fit the same residual). Calling them one by
one costs thousands of Python calls and tiny kernels per iteration. Instead:

* **Variable blocks.** Optim variables of the same type and shape form a block whose values live
  in one tensor ``(N, B, *shape)``; a solver step ``(B, D)`` is retracted block by block, one call
  each.
* **Cost groups.** Cost functions with the same *signature* (class, variable types, shapes and
  dtypes, weight, and the non-variable data each class declares in ``stack_key()``; see
  :mod:`nlls.core.stacking`) form a group of ``K`` members. The group keeps a *twin*: a copy
  of its first member whose variables are placeholders. Per evaluation each placeholder
  receives the stacked data of that slot for all members (residual masks included),
  ``(K * B, *shape)``, gathered from
  the blocks with one indexed read, and the twin's ``weighted_error()`` /
  ``weighted_jacobians_error()`` run once for the whole group. Attributes that keep cost
  functions of one kind apart only by identity (a tensor outside a variable) are reported
  with a warning when the evaluator is built.

The structure (blocks, groups, index tensors) is computed once per objective structure; only
values move per iteration. The objective is only read (it caches one evaluator for
``Objective.error()`` and ``error_metric()``, and solvers build their own).
"""
from __future__ import annotations

import warnings
from itertools import repeat
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .cost_function import CostFunction
from .cost_groups import Block, CostGroup, MemberNames, twin
from .manifold import Manifold
from .stacking import PreStacked, identity_splits, signature, stacked_data

__all__ = ["Block", "CostGroup", "Evaluator", "State", "twin"]

State = Tuple[torch.Tensor, ...]  # one (N, B, *shape) tensor per block


class Evaluator:
    """Reads an objective once and evaluates it group by group on a block state.

    Args:
        objective: the problem (an :class:`~nlls.core.objective.Objective`); its structure must
            not change while this evaluator is used (``structure_version`` tells).

    Warns:
        UserWarning: once per build, when attributes that compare only by identity (tensors
            held outside a variable, say) keep cost functions of one kind from being stacked.
    """

    def __init__(self, objective):
        self.objective = objective
        self.structure_version = objective.structure_version
        # blocks of optim variables, in first-seen order
        by_kind: Dict[tuple, List[Manifold]] = {}
        for var in objective.optim_vars.values():
            by_kind.setdefault((type(var), var.tensor.shape[1:]), []).append(var)
        self.blocks: List[Block] = []
        self._where: Dict[int, Tuple[int, int]] = {}  # id(var) -> (block, row)
        offset = 0
        for (cls, shape), variables in by_kind.items():
            block = Block(cls, tuple(shape), variables, offset)
            self._where.update(zip(map(id, variables), zip(repeat(len(self.blocks)), range(len(variables)))))
            self.blocks.append(block)
            offset += block.size
        self.dof = offset
        # groups of cost functions
        by_sig: Dict[tuple, List[CostFunction]] = {}
        self.groups = []
        for cf in objective.cost_functions.values():
            if isinstance(cf, PreStacked):  # already one group: no signature per member
                self.groups.append(CostGroup(MemberNames(cf, int(cf.stacked_sources()[1][0][1].numel())), cf))
            else:
                by_sig.setdefault(signature(cf), []).append(cf)
        for message in identity_splits(by_sig):
            warnings.warn(message, UserWarning, stacklevel=2)
        self.groups += [CostGroup(members) for members in by_sig.values()]
        for group in self.groups:
            self._index_group(group)
        self.dim = sum(g.dim * g.size for g in self.groups)
        self._aux_vars = [v for g in self.groups for slot in g.aux_slots for v in slot.members]
        self._aux_cache = None
        self._order: Optional[Dict[torch.device, Optional[torch.Tensor]]] = None
        self._block_rows: Optional[Dict[str, Tuple[int, torch.Tensor]]] = None

    def _index_group(self, group: CostGroup) -> None:
        columns = []
        for slot in group.optim_slots:
            block_of, row_of = zip(*map(self._where.__getitem__, map(id, slot.members)))
            block_index = block_of[0]
            slot.block = block_index
            block = self.blocks[block_index]
            index = torch.tensor(row_of, dtype=torch.long)
            if slot.source_index is not None:  # pre-stacked: members are the sequence indexed
                if block_of.count(block_index) != len(block_of):
                    raise ValueError(f"{group.describe()}: the variables of one position must be of "
                                     f"one type and shape")
                index = index[slot.source_index]
            slot.index = index
            slot.whole_block = len(index) == len(block.variables) and bool(
                (index == torch.arange(len(index))).all())
            start = block.offset + slot.index * block.dof
            columns.append(start[:, None] + torch.arange(block.dof))
        # columns of every member's Jacobian in the step, in twin's optim-var order
        dofs_by_position = []
        first = group.first
        seen: Dict[int, int] = {}
        for var in first.optim_vars:
            seen.setdefault(id(var), len(seen))
            dofs_by_position.append(columns[seen[id(var)]])
        group.offsets = torch.cat(dofs_by_position, dim=1)

    # ---- state -------------------------------------------------------------------------
    def batch_size(self) -> int:
        return self.objective.batch_size

    def gather(self, batch_size: Optional[int] = None) -> State:
        """The optim variables' values as block tensors ``(N, B, *shape)``."""
        batch = batch_size or self.batch_size()
        out = []
        for b in self.blocks:
            tensors = [v.tensor for v in b.variables]
            if any(t.shape[0] != batch for t in tensors):  # a batch of 1 broadcasts
                tensors = [t.expand(batch, *b.event_shape) for t in tensors]
            out.append(torch.stack(tensors))
        return tuple(out)

    def scatter(self, state: State) -> None:
        """Write block values back into the objective's variables."""
        for block, values in zip(self.blocks, state):
            for var, value in zip(block.variables, values.unbind(0)):
                var.tensor = value

    def as_dict(self, state: State) -> Dict[str, torch.Tensor]:
        """Values by variable name, and ``(B, N, *shape)`` by name for the objective's variable
        blocks (``Objective.blocks``)."""
        out = {
            var.name: value
            for block, values in zip(self.blocks, state)
            for var, value in zip(block.variables, values.unbind(0))
        }
        for name, (block, rows) in self._variable_blocks().items():
            values = state[block]
            out[name] = values.index_select(0, rows.to(values.device)).transpose(0, 1)
        return out

    def _variable_blocks(self) -> Dict[str, Tuple[int, torch.Tensor]]:
        """Per variable block of the objective: the evaluator block and rows of its members."""
        if self._block_rows is None:
            self._block_rows = {}
            for name, variable_block in self.objective.blocks.items():
                rows = [self._where[id(v)] for v in variable_block.members]
                self._block_rows[name] = (rows[0][0], torch.tensor([row for _, row in rows]))
        return self._block_rows

    def aux(self, batch_size: Optional[int] = None) -> List[List[torch.Tensor]]:
        """Stacked aux data per group and slot, ``(K * B, *shape)``; read once per solve and
        reused while no aux tensor has been replaced or modified."""
        batch = batch_size or self.batch_size()
        tensors = [v.tensor for v in self._aux_vars]  # held by the cache: ids cannot be reused
        versions = [t._version for t in tensors]
        key = (batch, torch.is_grad_enabled())
        cache = self._aux_cache
        if (
            cache is not None and cache[0] == key and cache[2] == versions
            and all(a is b for a, b in zip(cache[1], tensors))
        ):
            return cache[3]
        out = self._stack_aux(batch)
        self._aux_cache = (key, tensors, versions, out)
        return out

    def _stack_aux(self, batch: int) -> List[List[torch.Tensor]]:
        out = []
        for group in self.groups:
            per_slot = []
            for slot in group.aux_slots:
                tensors = [v.tensor for v in slot.members]
                shape = slot.members[0].event_shape
                if slot.stacked:
                    per_slot.append(stacked_data(tensors[0], batch))
                elif len(tensors) == 1:
                    per_slot.append(tensors[0].expand(batch, *shape))
                else:
                    per_slot.append(torch.cat([t.expand(batch, *shape) for t in tensors]))
            out.append(per_slot)
        return out

    def retract(self, state: State, delta: torch.Tensor) -> State:
        """``state (+) delta`` with ``delta`` the solver's step ``(B, D)``."""
        batch = delta.shape[0]
        out = []
        for block, values in zip(self.blocks, state):
            n = len(block.variables)
            d = delta[:, block.offset: block.offset + block.size]
            d = d.reshape(batch, n, block.dof).transpose(0, 1).reshape(n * batch, block.dof)
            flat = values.reshape(n * batch, *block.event_shape)
            out.append(block.cls.retract_tensor(flat, d).reshape(values.shape))
        return tuple(out)

    # ---- evaluation ----------------------------------------------------------------------
    def _load(self, group: CostGroup, state: State, aux: List[torch.Tensor]) -> int:
        batch = state[0].shape[1] if state else aux[0].shape[0] // group.size
        for slot in group.optim_slots:
            assert slot.block is not None, "the evaluator sets the block of every optim slot"
            values = state[slot.block]
            if not slot.whole_block:
                values = values.index_select(0, slot.index_on(values.device))
            slot.placeholder.tensor = values.reshape(group.size * batch, *values.shape[2:])
        for slot, tensor in zip(group.aux_slots, aux):
            slot.placeholder.tensor = tensor
        return batch

    def _check_error(self, group: CostGroup, error: torch.Tensor, batch: int, dtype: torch.dtype) -> None:
        if not isinstance(error, torch.Tensor) or error.dtype != dtype:
            kind = f"dtype {error.dtype}" if isinstance(error, torch.Tensor) else type(error).__name__
            raise TypeError(f"{group.describe()}: error is {kind}, expected a {dtype} tensor (B={batch}, dim={group.dim})")
        expected = (group.size * batch, group.dim)
        if tuple(error.shape) != expected:
            rows = error.shape[0] // group.size if error.ndim else "?"
            got = (rows,) + tuple(error.shape[1:])
            raise ValueError(
                f"{group.describe()}: error has shape {got}, expected (B={batch}, "
                f"dim={group.dim}) per cost function"
            )

    def errors(self, state: State, aux: List[List[torch.Tensor]]) -> List[torch.Tensor]:
        """Weighted residuals per group, ``(K, B, dim)``."""
        out = []
        for group, group_aux in zip(self.groups, aux):
            batch = self._load(group, state, group_aux)
            error = group.twin.weighted_error()
            if not group.checked:
                self._check_error(group, error, batch, self.objective.dtype)
            out.append(error.reshape(group.size, batch, group.dim))
        return out

    def concatenate(self, errors: List[torch.Tensor]) -> torch.Tensor:
        """Per-group residuals ``(K, B, dim)`` as one ``(B, total dim)``, the cost functions in
        the objective's order (``Objective.error()``)."""
        batch = errors[0].shape[1]
        flat = torch.cat([e.transpose(0, 1).reshape(batch, -1) for e in errors], dim=1)
        order = self._columns(flat.device)
        return flat if order is None else flat.index_select(1, order)

    def _columns(self, device: torch.device) -> Optional[torch.Tensor]:
        """For each residual column in objective order, its column in the group-major layout
        of :meth:`concatenate` (``None`` when the two agree); computed once, moved once."""
        cpu = torch.device("cpu")
        if self._order is None:
            self._order = {cpu: self._objective_order()}
        columns = self._order[cpu]
        if columns is None or device == cpu:
            return columns
        if device not in self._order:
            self._order[device] = columns.to(device)
        return self._order[device]

    def _objective_order(self) -> Optional[torch.Tensor]:
        where: Dict[int, Tuple[int, int]] = {}  # id(cf) -> (first column, dim)
        start = 0
        for group in self.groups:
            for cf, count in group.sources:
                where[id(cf)] = (start, count * group.dim)
                start += count * group.dim
        firsts, dims = (torch.tensor(column) for column in zip(
            *(where[id(cf)] for cf in self.objective.cost_functions.values())))
        ends = torch.cumsum(dims, 0)  # cost function i fills columns [ends_i - dims_i, ends_i)
        columns = torch.repeat_interleave(firsts - ends + dims, dims) + torch.arange(int(ends[-1]))
        return None if bool((columns == torch.arange(len(columns))).all()) else columns

    def error_metric(self, state: State, aux: List[List[torch.Tensor]]) -> torch.Tensor:
        """``0.5 * sum ||w r||^2`` per batch element, ``(B,)``."""
        return _half_squared_norm(self.errors(state, aux))

    def jacobians(self, state: State, aux: List[List[torch.Tensor]]):
        """Weighted Jacobians and residuals per group.

        Returns:
            list of ``(J (K, B, dim, sum dofs), r (K, B, dim))``, the Jacobian columns in the
            order of ``group.offsets`` (their memory may be laid out entry-major, ``(dim, sum dofs,
            K, B)``: :meth:`~nlls.core.cost_weight.MatrixCostWeight.weight_joined_jacobians`).
        """
        out = []
        for group, group_aux in zip(self.groups, aux):
            batch = self._load(group, state, group_aux)
            if group.checked:
                jac, error = _weighted_joined(group.twin)
            else:
                jacobians, error = group.twin.weighted_jacobians_error()
                self._check_error(group, error, batch, self.objective.dtype)
                self._check_jacobians(group, jacobians, batch)
                group.checked = True
                jac = jacobians[0] if len(jacobians) == 1 else torch.cat(jacobians, dim=-1)
            out.append((
                jac.reshape(group.size, batch, group.dim, jac.shape[-1]),
                error.reshape(group.size, batch, group.dim),
            ))
        return out

    def check_shapes(self, state: State, aux: List[List[torch.Tensor]]) -> None:
        """Run the one-off shape checks of a first evaluation now, eagerly, if any group has not
        had them: compiled and captured solves must not trace or capture them."""
        if not all(group.checked for group in self.groups):
            with torch.no_grad():
                self.jacobians(state, aux)

    def _check_jacobians(self, group: CostGroup, jacobians: Sequence[torch.Tensor], batch: int):
        if len(jacobians) != len(group.dofs):
            raise ValueError(
                f"{group.describe()}: jacobians() returned {len(jacobians)} Jacobians for "
                f"{len(group.dofs)} optim variables"
            )
        for var, jac, dof in zip(group.first.optim_vars, jacobians, group.dofs):
            expected = (group.size * batch, group.dim, dof)
            if tuple(jac.shape) != expected:
                got = (jac.shape[0] // group.size,) + tuple(jac.shape[1:])
                raise ValueError(
                    f"{group.describe()}: Jacobian for variable {var.name!r} has shape {got}, "
                    f"expected (B={batch}, dim={group.dim}, dof={dof})"
                )


def _weighted_joined(cost_function: CostFunction) -> Tuple[torch.Tensor, torch.Tensor]:
    """``weighted_jacobians_error()`` with the Jacobians joined along their columns: weighted
    joined at once by the cost weight (:meth:`~nlls.core.cost_weight.CostWeight.
    weight_joined_jacobians`) unless the cost function weights its own way or masks rows."""
    weight = cost_function.cost_weight
    if (weight is None or cost_function.residual_mask is not None
            or type(cost_function).weighted_jacobians_error is not CostFunction.weighted_jacobians_error):
        jacobians, error = cost_function.weighted_jacobians_error()
        return (jacobians[0] if len(jacobians) == 1 else torch.cat(jacobians, dim=-1)), error
    jacobians, error = cost_function.jacobians()
    return weight.weight_joined_jacobians(list(jacobians), error)


def _half_squared_norm(errors: List[torch.Tensor]) -> torch.Tensor:
    total: Optional[torch.Tensor] = None
    for error in errors:
        part = (error * error).sum(dim=(0, 2))
        total = part if total is None else total + part
    assert total is not None, "an evaluator is only built for an objective with cost functions"
    return 0.5 * total
