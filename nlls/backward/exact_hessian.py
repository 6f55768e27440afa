"""The exact Hessian of ``0.5 ||r||^2`` on the tangent, group by group, for sparse solvers.

The exact Hessian is ``J^T J + sum_k r_k nabla^2 r_k``. A cost function's second-order terms touch
only its own variables, so the exact Hessian has the sparsity of ``J^T J``: each member of a cost
group contributes one ``Dg x Dg`` block (``Dg`` the tangent size of its variables) at the
positions where its ``J^T J`` block goes. :func:`member_hessians` computes those blocks for all
members of a group at once: every member gets its own copy of its variables' values, moved along
its own tangent ``eta`` by the retraction, and the derivative of the member's gradient
``J^T r`` in ``eta`` is taken by ``Dg`` forward-mode passes (vmapped), each moving every member
along one of its coordinates. What is differentiated is what the dense exact Hessian
differentiates (:class:`~nlls.backward.implicit.ImplicitPieces`): the gradient the cost function
reports (``weighted_jacobians_error``), so a robust loss enters with the exact derivative of its
corrected gradient ``rho' J^T r``, and the two paths agree to rounding.

The blocks are symmetrized (``(H + H^T) / 2``; the Hessian is symmetric at any point, up to the
rounding of the derivatives) and added into the values of the solver's
:class:`~nlls.solve.systems.SparsePattern` by :meth:`SparseLinearization.assemble_blocks`, with
the scatter index ``J^T J`` uses.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ..core.evaluation import CostGroup, Evaluator, State
from ..solve.normal_equations import gradient_blocks


def first_positions(group: CostGroup) -> List[slice]:
    """Per optim slot of ``group``, its columns in the member's Jacobian (``group.offsets``
    order) at the first position the slot's variable holds (a variable used twice in one cost
    function is moved once, through its first position)."""
    starts, start = [], 0
    for dof in group.dofs:
        starts.append(start)
        start += dof
    out: List[slice] = []
    for slot in range(len(group.optim_slots)):
        position = group.slot_of_position.index(slot)
        out.append(slice(starts[position], starts[position] + group.dofs[position]))
    return out


def member_hessians(evaluator: Evaluator, group: CostGroup, state: State,
                    aux: Sequence[torch.Tensor]) -> torch.Tensor:
    """The exact Hessian block of every member of ``group``, ``(K, B, Dg, Dg)``, in the order of
    ``group.offsets``: ``d (J^T r) / d eta`` with ``eta`` the member's tangent at its variables.

    Columns of a variable's repeated positions (the same variable twice in one cost function) are
    zero and its first position's columns carry the whole derivative: scattered with
    ``group.offsets`` (then symmetrized) this gives the same matrix as a derivative on the
    deduplicated variables.
    """
    batch = state[0].shape[1]
    rows = group.size * batch
    values, classes = [], []
    for slot in group.optim_slots:
        assert slot.block is not None, "the evaluator sets the block of every optim slot"
        block_values = state[slot.block]
        if not slot.whole_block:
            block_values = block_values.index_select(0, slot.index_on(block_values.device))
        values.append(block_values.reshape(rows, *block_values.shape[2:]))
        classes.append(evaluator.blocks[slot.block].cls)
    for slot, tensor in zip(group.aux_slots, aux):
        slot.placeholder.tensor = tensor
    columns = first_positions(group)
    size = sum(group.dofs)
    ref = values[0]

    def member_gradient(eta: torch.Tensor) -> torch.Tensor:
        for slot, cls, value, cols in zip(group.optim_slots, classes, values, columns):
            slot.placeholder.tensor = cls.retract_tensor(value, eta[:, cols])
        jacobians, error = group.twin.weighted_jacobians_error()
        jac = jacobians[0] if len(jacobians) == 1 else torch.cat(jacobians, dim=-1)
        return gradient_blocks(jac, error)  # (K * B, Dg)

    zeros = ref.new_zeros(rows, size)
    basis = torch.eye(size, dtype=ref.dtype, device=ref.device)[:, None, :].expand(size, rows, size)

    def column(direction: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(member_gradient, (zeros,), (direction,))[1]

    try:
        hessian = torch.func.vmap(column)(basis).permute(1, 2, 0)  # (K * B, Dg, Dg): column j at [..., j]
    finally:
        for slot, value in zip(group.optim_slots, values):  # no batched tensor left behind
            slot.placeholder.tensor = value
    hessian = 0.5 * (hessian + hessian.mT)
    return hessian.reshape(group.size, batch, size, size)


def exact_blocks(evaluator: Evaluator, state: State, aux) -> List[torch.Tensor]:
    """:func:`member_hessians` of every group of ``evaluator``, in group order."""
    return [member_hessians(evaluator, group, state, group_aux)
            for group, group_aux in zip(evaluator.groups, aux)]
