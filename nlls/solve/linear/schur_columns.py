"""Which variables a Schur complement eliminates, read from an evaluator's structure.

A set of variables can be eliminated together when no cost function links two of them: their
part of the normal matrix is then block diagonal. The evaluator keeps optim variables of one
type and shape in one block, and each cost group knows, per variable slot, which row of which
block every member uses; a block is *independent* when no member of any group uses two
different rows of it.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from ...core.variable import Variable


def independent_blocks(evaluator) -> List[int]:
    """The evaluator's blocks whose variables no cost function links to each other."""
    linked = set()
    for group in evaluator.groups:
        by_block: dict = {}
        for slot in group.optim_slots:
            by_block.setdefault(slot.block, []).append(slot.index)
        for block, indices in by_block.items():
            if any(not torch.equal(indices[0], other) for other in indices[1:]):
                linked.add(block)
    return [b for b in range(len(evaluator.blocks)) if b not in linked]


def _describe(block) -> str:
    return f"{block.cls.__name__}{tuple(block.event_shape)}"


def eliminated_columns(evaluator, eliminate) -> Tuple[torch.Tensor, str]:
    """``(columns (n, d) int64, description)`` of the variables to eliminate.

    Args:
        evaluator: the objective's :class:`~nlls.core.evaluation.Evaluator`.
        eliminate: ``None`` (the independent block with the most unknowns), a variable type or
            its name (every optim variable of it), or a sequence of variables or names.

    Raises:
        ValueError: nothing can be eliminated, a type or name the objective lacks, variables of
            different ``dof``, or variables that a cost function links.
    """
    blocks = evaluator.blocks
    free = independent_blocks(evaluator)
    if eliminate is None:
        if not free:
            kinds = ", ".join(_describe(b) for b in blocks)
            raise ValueError("Schur: nothing to eliminate: every variable type of the objective "
                             f"({kinds}) has a cost function linking two of its variables; use "
                             "another linear solver (sparse_cholesky)")
        best = max(free, key=lambda b: blocks[b].size)
        return _block_columns(blocks[best]), f"{_describe(blocks[best])} x {len(blocks[best].variables)}"
    if isinstance(eliminate, (str, type)):
        wanted = eliminate if isinstance(eliminate, str) else eliminate.__name__
        chosen = [b for b, block in enumerate(blocks) if block.cls.__name__ == wanted
                  and (isinstance(eliminate, str) or block.cls is eliminate)]
        if not chosen:
            kinds = ", ".join(sorted({b.cls.__name__ for b in blocks}))
            raise ValueError(f"Schur: eliminate={wanted!r}: the objective has no optim variable of "
                             f"that type (it has {kinds})")
        linked = [_describe(blocks[b]) for b in chosen if b not in free]
        if linked:
            raise ValueError(f"Schur: eliminate={wanted!r}: a cost function links two variables "
                             f"of {', '.join(linked)}; they cannot be eliminated together")
        dofs = {blocks[b].dof for b in chosen}
        if len(dofs) > 1:
            raise ValueError(f"Schur: eliminate={wanted!r}: its variables have different dof "
                             f"{sorted(dofs)}; name the variables of one dof")
        columns = torch.cat([_block_columns(blocks[b]) for b in chosen])
        return columns, f"{wanted} x {columns.shape[0]}"
    return _listed_columns(evaluator, eliminate), f"{len(eliminate)} listed variables"


def _block_columns(block) -> torch.Tensor:
    starts = block.offset + torch.arange(len(block.variables)) * block.dof
    return starts[:, None] + torch.arange(block.dof)


def _listed_columns(evaluator, items: Sequence) -> torch.Tensor:
    where = {}
    for b, block in enumerate(evaluator.blocks):
        for row, var in enumerate(block.variables):
            where[var.name] = (b, row, var)
    rows = []
    for item in items:
        if not isinstance(item, (str, Variable)):
            raise TypeError(f"Schur: eliminate lists variables or their names, got "
                            f"{type(item).__name__}")
        name = item if isinstance(item, str) else item.name
        found = where.get(name)
        if found is None or (isinstance(item, Variable) and found[2] is not item):
            raise ValueError(f"Schur: eliminate names {name!r}, which is not an optim variable of "
                             "the objective")
        rows.append(found)
    if not rows:
        raise ValueError("Schur: eliminate is an empty list")
    dofs = {evaluator.blocks[b].dof for b, _, _ in rows}
    if len(dofs) > 1:
        raise ValueError(f"Schur: the eliminated variables have different dof {sorted(dofs)}")
    starts = torch.tensor([evaluator.blocks[b].offset + row * evaluator.blocks[b].dof
                           for b, row, _ in rows])
    # variables linked by a cost function are refused by the structure analysis (SchurStructure)
    return starts[:, None] + torch.arange(dofs.pop())
