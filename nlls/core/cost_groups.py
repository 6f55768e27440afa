"""The pieces of the vectorized evaluation (:mod:`nlls.core.evaluation`): variable blocks, the
slots of a cost group and the groups themselves, and the twin of a cost function whose variables
are placeholders.

A :class:`CostGroup` is either cost functions of one signature (``K`` objects) or one pre-stacked
cost function (:class:`~nlls.core.stacking.PreStacked`, a ``FactorGroup`` of ``K`` factors); the
evaluator treats both alike: per slot a placeholder that receives ``(K * B, *shape)`` data.
"""
from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .cost_function import CostFunction
from .cost_weight import CostWeight
from .manifold import Manifold
from .stacking import PreStacked
from .variable import Variable


class Block:
    """Optim variables of one type and shape; their values are one ``(N, B, *shape)`` tensor."""

    def __init__(self, cls, event_shape, variables: List[Manifold], offset: int):
        self.cls = cls
        self.event_shape = event_shape
        self.variables = variables
        self.dof = cls.dof_of(event_shape)
        self.offset = offset  # first tangent column of the block in the solver's step

    @property
    def size(self) -> int:
        return len(self.variables) * self.dof


class Slot:
    """One variable position of a cost group: a placeholder and where its data comes from."""

    def __init__(self, placeholder: Variable, members: List[Variable]):
        self.placeholder = placeholder
        self.members = members
        self.block: Optional[int] = None  # optim slots: block index
        self.index: Optional[torch.Tensor] = None  # optim slots: (K,) rows of the block
        self.whole_block = False  # index is arange(N): no gather needed
        self._index_on: Dict[torch.device, torch.Tensor] = {}
        self.source_index: Optional[torch.Tensor] = None  # pre-stacked optim slots: (K,) into members
        self.stacked = False  # pre-stacked aux slots: members[0] holds (B or 1, K, *shape)

    def index_on(self, device: torch.device) -> torch.Tensor:
        """``index`` on ``device``, copied there once: no host-to-device copy per iteration
        (which would also be illegal inside a CUDA graph capture)."""
        index = self._index_on.get(device)
        if index is None:
            assert self.index is not None, "index_on is for optim slots, whose index the evaluator sets"
            index = self._index_on[device] = self.index.to(device)
        return index


class CostGroup:
    """Cost functions of one signature, or one pre-stacked group (a ``FactorGroup``), evaluated
    as one stacked call of ``size`` members."""

    def __init__(self, members: Sequence, stacked: Optional[PreStacked] = None):
        if stacked is None:
            first = members[0]
            self.size = len(members)
            # (cost function, members it contributes): the objective order of the residuals
            self.sources: List[Tuple[Any, int]] = [(m, 1) for m in members]
            optim_sources: list = []
            data: list = []
        else:
            first, optim_sources, data = stacked.stacked_sources()
            self.size = int(optim_sources[0][1].numel())
            self.sources = [(stacked, self.size)]
        self.members = members  # each with a .name (messages)
        self.first = first
        self.dim = first.dim()
        self.dofs = [v.dof() for v in first.optim_vars]
        mapping: Dict[int, Variable] = {}
        self.optim_slots: List[Slot] = []
        self.aux_slots: List[Slot] = []
        slot_of: Dict[int, int] = {}
        for position, var in enumerate(first.stack_variables()):
            if id(var) in mapping:  # the same variable twice in one cost function
                continue
            placeholder = var.with_tensor(var.tensor)
            mapping[id(var)] = placeholder
            optim = position < len(first.optim_vars)
            if stacked is None:
                slot = Slot(placeholder, [m.stack_variables()[position] for m in members])
            elif optim:
                variables, index = optim_sources[len(self.optim_slots)]
                slot = Slot(placeholder, list(variables))
                slot.source_index = index
            else:
                slot = Slot(placeholder, [data[len(self.aux_slots)]])
                slot.stacked = True
            if optim:
                slot_of[id(var)] = len(self.optim_slots)
                self.optim_slots.append(slot)
            else:
                self.aux_slots.append(slot)
        # the optim slot of each of the first member's optim variables, in order
        self.slot_of_position = [slot_of[id(v)] for v in first.optim_vars]
        self.twin = twin(first, mapping)
        self.checked = False
        self.offsets: torch.Tensor  # (K, sum dofs) tangent columns per member, set by the evaluator

    def describe(self) -> str:
        if len(self.sources) == 1 and self.sources[0][1] > 1:
            return f"cost function {self.sources[0][0].name!r} ({self.size} factors)"
        more = f" (and {self.size - 1} more of its kind)" if self.size > 1 else ""
        return f"cost function {self.members[0].name!r}{more}"


class MemberNames(SequenceABC):
    """The members of a pre-stacked group as objects with a ``name`` (made when asked for)."""

    def __init__(self, stacked: PreStacked, size: int):
        self.stacked = stacked
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.size))]
        if not -self.size <= k < self.size:
            raise IndexError(k)
        return SimpleNamespace(name=self.stacked.member_name(k % self.size))


def twin(obj, mapping: Dict[int, Variable]):
    """A shallow copy of ``obj`` (a cost function) in which every variable found in ``mapping``
    (by id) is replaced by its stand-in, nested cost functions and weights copied alike."""
    twin = object.__new__(type(obj))
    twin.__dict__.update({k: _remap(v, mapping) for k, v in vars(obj).items()})
    return twin


def _remap(value, mapping):
    if isinstance(value, Variable):
        return mapping.get(id(value), value)
    if isinstance(value, CostWeight):
        return twin(value, mapping)
    if isinstance(value, CostFunction):  # wrappers (e.g. robust losses) hold their inner cost
        return twin(value, mapping)
    if isinstance(value, tuple):
        return tuple(_remap(v, mapping) for v in value)
    if isinstance(value, list):
        return [_remap(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _remap(v, mapping) for k, v in value.items()}
    return value
