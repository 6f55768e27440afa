"""What the structure of an objective says about its null directions, without factoring anything.

The step of a solver (and a covariance) lives on the tangent ``(B, D)``: variable blocks of the
evaluator, one after the other (:class:`~nlls.core.evaluation.Evaluator`). This module names
those columns (``'ab'[1]``), finds which variables are tied together by cost functions
(connected components), and finds two kinds of trouble cheaply, from one evaluation of the
Jacobians:

* **unseen coordinates**: a tangent coordinate whose Jacobian column is zero in every residual
  (an exact null direction of ``J^T J``);
* **unanchored components**: variables tied only to each other, every cost function touching at
  least two of them and none a single one (no prior). Such a component often has a gauge freedom
  (a pose graph without a prior can be moved as a whole), although this is a hint, not a proof:
  :func:`nlls.diagnose` finds the null directions themselves.

It imports nothing from the solvers, so a solver's failure message can use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..core.evaluation import Evaluator
from ..core.manifold import Manifold


@dataclass(frozen=True)
class Column:
    """Where a variable's tangent lives in the step: columns ``start .. start + dof``."""

    variable: Manifold
    index: int  # position of the variable in the evaluator's order
    start: int
    dof: int


def variable_columns(evaluator: Evaluator) -> List[Column]:
    """Every optim variable with its tangent columns, in the evaluator's (the step's) order."""
    out: List[Column] = []
    for block in evaluator.blocks:
        for row, var in enumerate(block.variables):
            out.append(Column(var, len(out), block.offset + row * block.dof, block.dof))
    return out


def coordinate_name(column: Column, coordinates: Sequence[int]) -> str:
    """``'ab'`` for all of a variable's coordinates, ``'ab'[1]`` or ``'ab'[0, 2]`` for some."""
    name = repr(column.variable.name)
    if len(coordinates) == column.dof:
        return name
    return f"{name}[{', '.join(str(int(c)) for c in coordinates)}]"


def name_list(names: Sequence[str], limit: int = 4) -> str:
    """``'a', 'b', 'c'`` or, past ``limit``, ``'a', 'b', ..., 'z'``."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(list(names[: limit - 1]) + ["...", names[-1]])


def kinds(columns: Sequence[Column]) -> str:
    """``100 SE2`` or ``3 SE3, 7 Vector``: how many variables of each type."""
    counts: Dict[str, int] = {}
    for column in columns:
        kind = type(column.variable).__name__
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _edges(evaluator: Evaluator, columns: List[Column]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variable pairs tied by a cost function, and which variables some cost function touches
    alone (an anchor: a prior or a unary residual)."""
    variable_of = np.empty(evaluator.dof, dtype=np.int64)
    for column in columns:
        variable_of[column.start: column.start + column.dof] = column.index
    firsts, seconds = [], []
    anchored = np.zeros(len(columns), dtype=bool)
    for group in evaluator.groups:
        members = variable_of[group.offsets.numpy()]  # (K, Dg): the variable of every column
        if len(group.optim_slots) == 1:
            anchored[members[:, 0]] = True
        firsts.append(np.repeat(members[:, :1], members.shape[1], axis=1).ravel())
        seconds.append(members.ravel())
    return np.concatenate(firsts), np.concatenate(seconds), anchored


def components(evaluator: Evaluator) -> Tuple[np.ndarray, np.ndarray]:
    """``(label, anchored)``: per variable (evaluator order) the label of its connected component
    (variables tied by cost functions), and per component whether some cost function in it
    touches a single variable."""
    import scipy.sparse
    from scipy.sparse.csgraph import connected_components

    columns = variable_columns(evaluator)
    first, second, anchored = _edges(evaluator, columns)
    n = len(columns)
    graph = scipy.sparse.coo_matrix((np.ones(len(first)), (first, second)), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    component_anchored = np.zeros(count, dtype=bool)
    component_anchored[label[anchored]] = True
    return label, component_anchored


def unseen_coordinates(evaluator: Evaluator, values, aux) -> torch.Tensor:
    """``(B, D)`` bool: the tangent coordinates whose Jacobian column is exactly zero in every
    residual (at ``values``), i.e. no residual depends on them there."""
    with torch.no_grad():
        parts = evaluator.jacobians(values, aux)
        ref = parts[0][1]
        squares = ref.new_zeros(ref.shape[1], evaluator.dof)
        for (jac, _), group in zip(parts, evaluator.groups):
            column_sums = (jac * jac).sum(dim=2)  # (K, B, Dg)
            index = group.offsets.reshape(-1).to(ref.device)
            squares = squares.index_add(1, index, column_sums.transpose(0, 1).reshape(ref.shape[1], -1))
    return squares == 0


def unseen_names(columns: Sequence[Column], unseen: torch.Tensor) -> List[str]:
    """Names (:func:`coordinate_name`) of the coordinates flagged in ``unseen (D,)``."""
    flags = unseen.cpu().numpy()
    names = []
    for column in columns:
        local = np.nonzero(flags[column.start: column.start + column.dof])[0]
        if len(local):
            names.append(coordinate_name(column, local.tolist()))
    return names


def unanchored_names(evaluator: Evaluator, columns: Sequence[Column]) -> List[str]:
    """One phrase per component of two or more variables that no cost function anchors."""
    label, anchored = components(evaluator)
    phrases = []
    for component in np.nonzero(~anchored)[0]:
        members = [columns[int(i)] for i in np.nonzero(label == component)[0]]
        if len(members) > 1:
            names = name_list([repr(c.variable.name) for c in members])
            phrases.append(f"{kinds(members)} variable(s) ({names}) tied only to each other, with "
                           f"no cost function on a single one of them (no prior)")
    return phrases


def describe_unconstrained(evaluator: Evaluator, values, aux, elements: torch.Tensor) -> str:
    """A short clause naming what leaves the normal equations of ``elements (B,)`` singular, as
    far as the structure and one evaluation of the Jacobians tell: unseen coordinates and
    unanchored components; empty when nothing is found (or the evaluation fails)."""
    columns = variable_columns(evaluator)
    try:
        unseen = unseen_coordinates(evaluator, values, aux)
        chosen = torch.nonzero(elements.to(unseen.device)).flatten().tolist()
        names: List[str] = []
        for b in chosen[:1]:  # the first failed element speaks for the rest
            names = unseen_names(columns, unseen[b])
        phrases = unanchored_names(evaluator, columns)
    except Exception:  # noqa: BLE001 - a message must not fail on what it describes
        return ""
    parts = []
    if names:
        parts.append(f"no residual depends on {name_list(names, 6)}")
    parts.extend(phrases)
    if not parts:
        return ""
    return " (" + "; ".join(parts) + "; nlls.diagnose(objective) finds every null direction)"


__all__ = ["Column", "variable_columns", "coordinate_name", "name_list", "kinds", "components",
           "unseen_coordinates", "unseen_names", "unanchored_names", "describe_unconstrained"]
