"""``check_jacobians``: a cost function's Jacobians against central differences on the tangent.

A hand-written Jacobian is easy to get almost right: a sign, a transposed block, a missing term
that only matters away from the identity. The check evaluates ``jacobians()`` and compares every
column with a central difference of ``error()`` along that tangent coordinate, moving the variable
through its own retraction (the same ``x (+) delta`` the optimizer uses)::

    column i of J_k  ~  (r(x_k (+) h e_i) - r(x_k (-) h e_i)) / 2h

with the step ``h = s * (1 + |x_i|)`` for coordinates that are the variable's own entries (vectors,
whose event shape is ``(dof,)``) and ``h = s`` for other tangents (rotations, poses), ``s`` the
``step`` option or ``eps^(1/3)`` of the dtype (6e-6 in float64), which balances truncation and
rounding. An entry passes when ``|analytic - numeric| <= atol + rtol * |numeric| + noise``, with
``noise = 4 eps (|r+| + |r-|) / 2h`` the rounding error of the difference itself.

The check works on a copy (every variable cast to ``dtype``, float64 by default; the cost
function and its variables are not touched; Lie-group values are projected back onto the group
after the cast, float32 rotations being orthogonal to 1e-7 only) and reads only the declared
contract: ``error()``,
``jacobians()``, the variables' ``retract_tensor``. It applies to every kind of cost function, the
wrapped ones (a robust cost function's ``jacobians()`` are its inner cost function's) included.
Rows a residual mask drops are not compared, nor are entries whose difference is not finite.
A cost function without an autograd graph (``has_autograd_graph`` false, e.g.
``NumericDiffCostFunction``) usually computes its Jacobians by finite differences itself: the
check then compares two difference schemes, which tests its step and the smoothness of its
residual, not a derivation; the report says so.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..core.cost_function import CostFunction
from ..core.evaluation import twin
from ..core.manifold import Manifold
from ..core.variable import Variable
from ..geometry.lie_group import LieGroup
from ..solve.checks import check_number


@dataclasses.dataclass
class Entry:
    """One Jacobian entry: where it is and both values."""

    variable: str
    batch: int
    row: int
    coordinate: int
    analytic: float
    numeric: float

    def __str__(self) -> str:
        return (f"variable {self.variable!r}, batch element {self.batch}, residual row {self.row}, "
                f"tangent coordinate {self.coordinate}: analytic {self.analytic:.6g}, numeric "
                f"{self.numeric:.6g}")


@dataclasses.dataclass
class VariableErrors:
    """The comparison of one optim variable's Jacobian ``(B, dim, dof)``.

    Attributes:
        max_abs_error: the largest ``|analytic - numeric|``.
        max_rel_error: the largest ``|analytic - numeric| / max(|analytic|, |numeric|)`` over
            entries larger than ``atol``.
        worst: the entry furthest out of tolerance (``None`` when there are no entries).
        ok: every entry within tolerance.
        ratio: the worst entry's error over its tolerance (at most 1 when ``ok``).
    """

    max_abs_error: float
    max_rel_error: float
    worst: Optional[Entry]
    ok: bool
    ratio: float = 0.0


@dataclasses.dataclass
class JacobianReport:
    """What :func:`check_jacobians` found; ``str(report)`` is a readable summary.

    Attributes:
        ok: every compared entry is within tolerance.
        cost_function: the checked cost function's name.
        max_abs_error, max_rel_error: the largest errors over every variable.
        worst: the entry furthest out of tolerance, over every variable.
        variables: per optim variable name, its :class:`VariableErrors`.
        analytic, numeric: per optim variable name, the two Jacobians ``(B, dim, dof)``.
        skipped: entries not compared (a masked row, a difference that is not finite).
        notes: what the numbers do not say by themselves.
    """

    ok: bool
    cost_function: str
    max_abs_error: float
    max_rel_error: float
    worst: Optional[Entry]
    variables: Dict[str, VariableErrors]
    analytic: Dict[str, torch.Tensor]
    numeric: Dict[str, torch.Tensor]
    skipped: int
    notes: List[str]
    rtol: float
    atol: float

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        lines = [f"check_jacobians of {self.cost_function!r} (rtol={self.rtol:g}, atol={self.atol:g}): "
                 f"{verdict}", f"  {'variable':<16} {'max abs error':>14} {'max rel error':>14}  result"]
        for name, errors in self.variables.items():
            lines.append(f"  {name:<16} {errors.max_abs_error:>14.3e} {errors.max_rel_error:>14.3e}  "
                         f"{'ok' if errors.ok else 'WRONG'}")
        if self.worst is not None:
            lines.append(f"  worst entry: {self.worst}")
        if self.skipped:
            lines.append(f"  {self.skipped} entries not compared (masked rows or non-finite differences)")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor.clone()


def _stand_ins(cost_function: CostFunction, at, dtype, seed: int) -> Dict[int, Variable]:
    """A detached, cast copy of every variable the cost function reads, by id; values from
    ``at`` (a mapping by name, or ``"random"``)."""
    variables = cost_function.stack_variables()
    mapping = {id(v): v.with_tensor(_cast(v.tensor, dtype)) for v in variables}
    what = f"check_jacobians({cost_function.name!r})"
    if isinstance(at, Mapping):
        by_name = {v.name: mapping[id(v)] for v in variables}
        for name, value in at.items():
            if name not in by_name:
                raise KeyError(f"{what}: at names no variable {name!r}; its variables: {sorted(by_name)}")
            by_name[name].update(value)  # shape checked, as Objective.update does
            by_name[name].tensor = _cast(by_name[name].tensor, dtype)
    elif at == "random":
        generator = torch.Generator().manual_seed(seed)
        for var in dict.fromkeys(cost_function.optim_vars):
            stand_in = mapping[id(var)]
            x = stand_in.tensor
            noise = torch.randn(x.shape[0], var.dof(), generator=generator, dtype=torch.float64)
            delta = 0.1 * noise.to(dtype=x.dtype, device=x.device) * _scale(var, x)
            stand_in.tensor = type(var).retract_tensor(x, delta)
    elif at is not None:
        raise ValueError(f"{what}: at must be None, 'random' or a mapping name -> tensor, got {at!r}")
    for stand_in in mapping.values():
        if isinstance(stand_in, LieGroup):  # float32 data is on the group to 1e-7 only
            stand_in.tensor = type(stand_in).normalize_tensor(stand_in.tensor)
    return mapping


def _scale(var: Manifold, x: torch.Tensor) -> torch.Tensor:
    """``1 + |x_i|`` ``(B, dof)`` where the tangent coordinates are the variable's own entries
    (event shape ``(dof,)``), else ones: the per-coordinate size of a step."""
    if x.shape[1:] == (var.dof(),):
        return 1.0 + x.abs()
    return torch.ones(x.shape[0], var.dof(), dtype=x.dtype, device=x.device)


def check_jacobians(
    cost_function: CostFunction,
    at: Union[None, str, Mapping[str, torch.Tensor]] = None,
    step: Optional[float] = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    dtype: Optional[torch.dtype] = torch.float64,
    seed: int = 0,
) -> JacobianReport:
    """Compare a cost function's ``jacobians()`` with central differences of its ``error()``.

    See the module description for the rule. Nothing is modified: the check runs on a copy.

    Args:
        cost_function: any :class:`~nlls.CostFunction`.
        at: where to check: ``None`` (the variables' current values), a mapping ``name ->
            tensor`` replacing some variables' values (optim or aux), or ``"random"``: the current
            values moved by a random tangent step (standard deviation 0.1, relative to ``1 + |x|``
            for vector coordinates), seeded by ``seed``.
        step: relative difference step ``s``; default ``eps^(1/3)`` of ``dtype``.
        rtol, atol: tolerances of an entry (see the module description).
        dtype: the floating dtype of the copy (default float64); ``None`` keeps each variable's.
        seed: the seed of ``at="random"``.

    Returns:
        a :class:`JacobianReport` (``report.ok``; ``print(report)`` for the details).

    Raises:
        TypeError: ``cost_function`` is not a CostFunction.
        KeyError: ``at`` names a variable the cost function does not have.
        ValueError: bad options, or ``jacobians()`` returns the wrong number or shapes of
            Jacobians (the message names the variable).
    """
    if not isinstance(cost_function, CostFunction):
        raise TypeError(f"check_jacobians expects a CostFunction, got {type(cost_function).__name__}")
    what = f"check_jacobians({cost_function.name!r})"
    check_number(what, "rtol", rtol, minimum=0)
    check_number(what, "atol", atol, minimum=0)
    if step is not None:
        check_number(what, "step", step, minimum=0, open_minimum=True)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{what}: dtype must be a floating torch dtype or None, got {dtype!r}")
    mapping = _stand_ins(cost_function, at, dtype, seed)
    copy = twin(cost_function, mapping)
    with torch.no_grad():
        analytic, numeric, noise = _both(cost_function, copy, mapping, step)
    keep = torch.ones_like(next(iter(numeric.values()))[..., :1], dtype=torch.bool)  # (B, dim, 1)
    mask = cost_function.residual_mask
    if mask is not None:
        rows = mapping[id(mask)].tensor
        keep = keep & (rows if rows.dtype == torch.bool else rows != 0)[..., None]
    notes = []
    if not cost_function.has_autograd_graph:
        notes.append(f"{type(cost_function).__name__} has no autograd graph: if its Jacobians are "
                     f"finite differences (NumericDiffCostFunction's are), this compares two "
                     f"difference schemes, not a derivation")
    variables: Dict[str, VariableErrors] = {}
    skipped = 0
    for name in numeric:
        compared = keep & torch.isfinite(numeric[name])
        skipped += int((~compared).sum())
        variables[name] = _errors(name, analytic[name], numeric[name], noise[name], compared, rtol, atol)
    ranked = [v for v in variables.values() if v.worst is not None]
    worst = max(ranked, key=lambda v: v.ratio).worst if ranked else None
    return JacobianReport(
        ok=all(v.ok for v in variables.values()), cost_function=cost_function.name,
        max_abs_error=max((v.max_abs_error for v in variables.values()), default=0.0),
        max_rel_error=max((v.max_rel_error for v in variables.values()), default=0.0),
        worst=worst, variables=variables, analytic=analytic, numeric=numeric, skipped=skipped,
        notes=notes, rtol=rtol, atol=atol)


def _both(cost_function, copy, mapping, step):
    """The analytic Jacobians, the central differences and their rounding noise, per variable
    name, each ``(B, dim, dof)``."""
    jacobians, error = copy.jacobians()
    optim = cost_function.optim_vars
    if len(jacobians) != len(optim):
        raise ValueError(f"check_jacobians({cost_function.name!r}): jacobians() returned "
                         f"{len(jacobians)} Jacobians for {len(optim)} optim variables")
    batch = max([error.shape[0]] + [v.tensor.shape[0] for v in mapping.values()])
    dim = error.shape[-1]
    analytic: Dict[str, torch.Tensor] = {}
    for var, jac in zip(optim, jacobians):
        expected = (dim, var.dof())
        if jac.ndim != 3 or tuple(jac.shape[1:]) != expected or jac.shape[0] not in (1, batch):
            raise ValueError(f"check_jacobians({cost_function.name!r}): the Jacobian of variable "
                             f"{var.name!r} has shape {tuple(jac.shape)}, expected (B={batch}, "
                             f"dim={dim}, dof={var.dof()})")
        jac = jac.expand(batch, *expected)
        # a variable used twice: its column moves both places, so compare with the sum
        analytic[var.name] = analytic[var.name] + jac if var.name in analytic else jac
    numeric, noise = {}, {}
    for var in dict.fromkeys(optim):
        numeric[var.name], noise[var.name] = _differences(copy, mapping[id(var)], var, batch, step)
    return analytic, numeric, noise


def _differences(copy, stand_in: Variable, var: Manifold, batch: int,
                 step: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    x0 = stand_in.tensor
    x = x0.expand(batch, *x0.shape[1:])
    eps = torch.finfo(x.dtype).eps
    h = (eps ** (1.0 / 3.0) if step is None else step) * _scale(var, x)  # (B, dof)
    columns, noises = [], []
    try:
        for i in range(var.dof()):
            delta = torch.zeros_like(h)
            delta[:, i] = h[:, i]
            stand_in.tensor = type(var).retract_tensor(x, delta)
            plus = copy.error()
            stand_in.tensor = type(var).retract_tensor(x, -delta)
            minus = copy.error()
            width = 2.0 * h[:, i:i + 1]
            columns.append((plus - minus).expand(batch, -1) / width)
            noises.append(4.0 * eps * (plus.abs() + minus.abs()).expand(batch, -1) / width)
    finally:
        stand_in.tensor = x0
    return torch.stack(columns, dim=-1), torch.stack(noises, dim=-1)


def _errors(name, analytic, numeric, noise, compared, rtol, atol) -> VariableErrors:
    difference = torch.where(compared, (analytic - numeric).abs(), torch.zeros_like(numeric))
    difference = torch.where(compared & ~torch.isfinite(analytic), torch.full_like(numeric, float("inf")),
                             difference)
    size = torch.maximum(analytic.abs(), numeric.abs())
    size = torch.where(torch.isfinite(size), size, torch.full_like(size, float("inf")))
    relative = torch.where(compared & (size > atol), difference / size.clamp_min(1e-300),
                           torch.zeros_like(difference))
    excess = difference / (atol + rtol * torch.where(compared, numeric.abs(), torch.zeros_like(numeric))
                           + noise.nan_to_num(0.0) + 1e-300)
    if excess.numel() == 0:
        return VariableErrors(0.0, 0.0, None, True)
    excess = excess.nan_to_num(float("inf"))
    flat = int(torch.argmax(excess))
    b, row, coordinate = (int(i) for i in torch.unravel_index(torch.tensor(flat), excess.shape))
    worst = Entry(name, b, row, coordinate, float(analytic[b, row, coordinate]),
                  float(numeric[b, row, coordinate]))
    return VariableErrors(float(difference.max()), float(relative.max()), worst,
                          bool((excess <= 1.0).all()), float(excess.max()))
