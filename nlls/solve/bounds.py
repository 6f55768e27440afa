"""Box bounds in the solve: feasible iterates by projected steps on an active set.

``Objective.set_bounds(variable, lower, upper)`` puts a box on a vector variable's coordinates.
Every optimizer keeps its iterates in the box, per batch element, the same way (a projected
Newton method with an active set, Bertsekas 1982):

1. **Active set.** At the current ``x`` with gradient ``g = J^T r``, a coordinate sitting on its
   lower bound with ``g_i > 0`` (the descent direction ``-g`` points out of the box), or on its
   upper bound with ``g_i < 0``, is *fixed* for this iteration.
2. **Reduced system.** The fixed coordinates' rows and columns of the normal equations are
   replaced by the identity and their gradient by zero (:func:`restrict`), so the step rule
   (Gauss-Newton, Levenberg-Marquardt, dogleg) solves on the free coordinates only and gives the
   fixed ones a zero step.
3. **Projection.** The candidate ``x (+) delta`` is clamped into the box (:func:`clamp`); the step
   the rule judges (the model decrease, the step norm) is the projected one.

At a solution the free coordinates have zero gradient and the fixed ones a gradient pushing out of
the box: the first-order (KKT) conditions. The stationarity measure is the projected gradient
``x - clamp(x - g)`` (Ceres's ``||x - Plus(x, -g)||_inf`` with its bounds), zero exactly there.
Bounds live on the step's coordinates (``(B, D)``, the solver's column order); coordinates of
other variables (Lie groups) get infinite bounds and are never clamped.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from ..core.manifold import Vector
from .state import Values
from .systems import JacobianOperator, SparseMatrix


def is_vector_block(block) -> bool:
    """Whether a variable block of the evaluator holds vectors (whose coordinates may be bounded)."""
    return issubclass(block.cls, Vector)


def box_of(evaluator, objective, batch: int, dtype: torch.dtype,
           device: torch.device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(lower, upper)``, each ``(B, D)`` in the step's column order, from the objective's bounds;
    ``None`` when it has none. Unbounded coordinates get ``-inf`` / ``+inf``."""
    bounds = getattr(objective, "bounds", None)
    if not bounds:
        return None
    lowers: List[torch.Tensor] = []
    uppers: List[torch.Tensor] = []
    for block in evaluator.blocks:
        for var in block.variables:
            lower, upper = bounds.get(var.name, (None, None))
            for given, side, out in ((lower, -1.0, lowers), (upper, 1.0, uppers)):
                if given is None:
                    out.append(torch.full((batch, block.dof), side * torch.inf, dtype=dtype, device=device))
                    continue
                if given.shape[0] not in (1, batch):
                    raise ValueError(
                        f"{'lower' if side < 0 else 'upper'} bound of variable {var.name!r} has batch "
                        f"{given.shape[0]}, the objective's is {batch}")
                out.append(given.to(dtype=dtype, device=device).expand(batch, block.dof))
    return torch.cat(lowers, dim=1), torch.cat(uppers, dim=1)


def box_start(optimizer, evaluator, values: Values):
    """``(values, lower, upper)`` at the start of a solve: the values projected into the box and
    its ``(B, D)`` bounds; ``(values, None, None)`` without bounds."""
    first = values[0]
    box = box_of(evaluator, optimizer.objective, first.shape[1], first.dtype, first.device)
    if box is None:
        return values, None, None
    if first.is_cuda and torch.cuda.is_current_stream_capturing():
        raise ValueError(f"{type(optimizer).__name__}: box bounds (Objective.set_bounds) cannot be captured "
                         f"in a CUDA graph; solve without cuda_graph=True")
    return clamp(evaluator, values, *box), box[0], box[1]


def coordinates(evaluator, values: Values) -> torch.Tensor:
    """``(B, D)``: the vector variables' coordinates in the step's column order (zero for the
    coordinates of other variables, whose bounds are infinite)."""
    out = []
    for block, block_values in zip(evaluator.blocks, values):
        n, batch = block_values.shape[0], block_values.shape[1]
        if is_vector_block(block):
            out.append(block_values.transpose(0, 1).reshape(batch, n * block.dof))
        else:
            out.append(block_values.new_zeros(batch, n * block.dof))
    return torch.cat(out, dim=1)


def box_system(evaluator, system, values: Values, lower: Optional[torch.Tensor], upper: Optional[torch.Tensor]):
    """``(system, gradient, x)``: without bounds ``(system, system.g, None)``; with them the system
    restricted to the free coordinates, the projected gradient and the coordinates ``x (B, D)``."""
    if lower is None or upper is None:
        return system, system.g, None
    x = coordinates(evaluator, values)
    restricted = restrict(system, active_set(x, system.g, lower, upper) != 0)
    return restricted, projected_gradient(x, system.g, lower, upper), x


def box_candidate(evaluator, candidate: Values, x: torch.Tensor, step: torch.Tensor, lower, upper):
    """``(candidate, step)``: the candidate clamped into the box and the step that reaches it."""
    candidate = clamp(evaluator, candidate, lower, upper)
    return candidate, projected_step(evaluator, candidate, x, step)


def projected_step(evaluator, candidate: Values, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``(B, D)``: the step from coordinates ``x`` to the clamped ``candidate`` on the vector
    variables' coordinates, ``step`` itself on the others."""
    vector = torch.cat([torch.full((block.size,), is_vector_block(block), device=step.device)
                        for block in evaluator.blocks])
    return torch.where(vector, coordinates(evaluator, candidate) - x, step)


def clamp(evaluator, values: Values, lower: torch.Tensor, upper: torch.Tensor) -> Values:
    """``values`` with every vector variable's coordinates clamped into ``[lower, upper]``."""
    out = []
    for block, block_values in zip(evaluator.blocks, values):
        if not is_vector_block(block):
            out.append(block_values)
            continue
        n, batch = block_values.shape[0], block_values.shape[1]
        columns = slice(block.offset, block.offset + block.size)
        low = lower[:, columns].reshape(batch, n, block.dof).transpose(0, 1)
        high = upper[:, columns].reshape(batch, n, block.dof).transpose(0, 1)
        out.append(torch.minimum(torch.maximum(block_values, low), high))
    return tuple(out)


def projected_gradient(x: torch.Tensor, g: torch.Tensor, lower: torch.Tensor,
                       upper: torch.Tensor) -> torch.Tensor:
    """``x - clamp(x - g, lower, upper)``, ``(B, D)``: the gradient with the components that push
    out of the box at an active bound cut off (``g`` itself on unbounded coordinates)."""
    return x - torch.minimum(torch.maximum(x - g, lower), upper)


def active_set(x: torch.Tensor, g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` int8: ``-1`` on a lower bound with ``g > 0``, ``+1`` on an upper bound with
    ``g < 0`` (the descent direction leaves the box there), ``0`` elsewhere."""
    at_lower = (x <= lower) & (g > 0)
    at_upper = (x >= upper) & (g < 0)
    return at_upper.to(torch.int8) - at_lower.to(torch.int8)


def restrict(system, fixed: torch.Tensor):
    """The normal equations on the free coordinates: the rows and columns of the coordinates where
    ``fixed (B, D)`` holds replaced by the identity, their gradient by zero (a step of zero
    there). Same system type as ``system``."""
    free = (~fixed).to(system.g.dtype)
    ones = fixed.to(system.g.dtype)
    A = system.A
    if isinstance(A, torch.Tensor):
        A = A * free[:, :, None] * free[:, None, :] + torch.diag_embed(ones)
    elif isinstance(A, SparseMatrix):
        rows, cols, _, _ = A.pattern.on(A.values.device)
        A = SparseMatrix(A.pattern, A.values * free[:, rows] * free[:, cols]).add_diagonal(ones)
    elif isinstance(A, JacobianOperator):
        parts = [(jac * free[:, columns].transpose(0, 1)[:, :, None, :], r)
                 for (jac, r), columns in zip(A.parts, A.columns)]
        shift = None if A.shift is None else A.shift * free
        A = JacobianOperator(A.evaluator, parts, A.columns, A.index, shift).add_diagonal(ones)
    elif hasattr(A, "jacobian") and hasattr(A, "residual") and hasattr(A, "shift"):  # J itself (QR)
        shift = None if A.shift is None else A.shift * free
        A = type(A)(A.jacobian * free[:, None, :], A.residual, shift).add_diagonal(ones)
    else:
        raise TypeError(f"box bounds cannot restrict a system of type {type(A).__name__}")
    return type(system)(A, system.g * free)


def at_bounds(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` int8: ``-1`` where ``x`` sits on its lower bound, ``+1`` on its upper bound (``+1``
    where the two coincide), ``0`` elsewhere."""
    return (x >= upper).to(torch.int8) - ((x <= lower) & (x < upper)).to(torch.int8)


def per_variable(evaluator, objective, columns: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``columns (B, D)`` cut into the bounded variables' pieces, by name."""
    bounded = getattr(objective, "bounds", {})
    out = {}
    for block in evaluator.blocks:
        for k, var in enumerate(block.variables):
            if var.name in bounded:
                start = block.offset + k * block.dof
                out[var.name] = columns[:, start:start + block.dof]
    return out


def bounds_report(optimizer, state) -> Optional[Dict[str, torch.Tensor]]:
    """``info.active_bounds``: per bounded variable's name a ``(B, n)`` int8 tensor, ``-1`` on its
    lower bound, ``+1`` on its upper bound, ``0`` inside (at the final values); ``None`` without
    bounds."""
    if state.lower is None or state.upper is None:
        return None
    evaluator = optimizer.evaluator
    x = coordinates(evaluator, tuple(v.detach() for v in state.values))
    return per_variable(evaluator, optimizer.objective, at_bounds(x, state.lower, state.upper))
