"""``check_gradients``: an optimization layer's gradients against central differences of the solve.

``OptimizationLayer`` differentiates a solve in several ways (:mod:`nlls.backward`), each with its
assumptions: the implicit mode assumes the solve converged and, with ``hessian="gauss_newton"``,
that the residuals vanish at the solution; a custom mode or cost function may simply be wrong. The
check takes a scalar function of the solution per batch element (default: a fixed random
projection of every output, seeded), its gradient with respect to every input tensor that requires
grad in each backward mode, and compares it with central differences of the whole solve::

    dL/dtheta_j  ~  (L(solve(theta + h e_j)) - L(solve(theta - h e_j))) / 2h,   h = step (1 + |theta_j|)

Batch elements are independent problems, so entry ``j`` of every element is moved at once and one
pair of solves gives that entry's difference for the whole batch (an input of batch 1, shared by
the elements, takes the sum over them); a ``function`` that returns a scalar instead of one value
per element is differenced entry by entry. Errors are measured per batch element, relative to
the largest gradient entry of that element over every input, ``s_b``: an entry passes when
``|analytic - numeric| <= atol + rtol * s_b``, and the relative error reported is
``|analytic - numeric| / s_b`` (an input the solution barely depends on, such as the initial
values, is judged against the element's other gradients, not against its own rounding noise).

**Differences of a solve are only as good as the solve.** Use float64 and tolerances tight enough
that the solution is accurate far below ``step`` (e.g. ``abs_err_tolerance=0``,
``rel_err_tolerance=1e-14``, enough ``max_iterations``): the check runs the layer as configured and
its report notes difference solves whose elements did not converge. The truncated mode
differentiates only the last iterations, an approximation by design: it is reported but does not
count toward ``ok`` unless ``count_approximate=True``.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..backward import BACKWARD_MODES, BackwardMode, backward_class
from ..layer import OptimizationLayer
from ..solve.checks import check_bool, check_number

#: modes whose gradient is an approximation by design: reported, not counted toward ``ok``
APPROXIMATE_MODES = frozenset({"truncated"})
Solution = Dict[str, torch.Tensor]


@dataclasses.dataclass
class InputErrors:
    """One input's gradient in one mode against the differences.

    Attributes:
        max_rel_error: the largest error relative to its element's largest gradient entry (over
            every input).
        max_abs_error: the largest ``|analytic - numeric|``.
        where: ``(batch element, index within the element)`` of the worst entry.
        analytic, numeric: the two values there.
        ok: every entry's error is at most ``atol + rtol * s_b`` (see the module description).
        counted: whether it counts toward the report's ``ok`` (not for approximate modes).
    """

    max_rel_error: float
    max_abs_error: float
    where: Tuple[int, Tuple[int, ...]]
    analytic: float
    numeric: float
    ok: bool
    counted: bool


@dataclasses.dataclass
class GradientReport:
    """What :func:`check_gradients` found; ``str(report)`` is a readable summary.

    Attributes:
        ok: every counted mode's gradient of every input is within ``rtol``.
        modes: per mode name, per input name, its :class:`InputErrors`.
        skipped: per mode name that could not run on this layer, why.
        numeric: per input name, the central differences (the input's shape).
        analytic: per mode name, per input name, the layer's gradient.
        notes: what the numbers do not say by themselves (convergence, dtype, warnings).
    """

    ok: bool
    modes: Dict[str, Dict[str, InputErrors]]
    skipped: Dict[str, str]
    numeric: Dict[str, torch.Tensor]
    analytic: Dict[str, Dict[str, torch.Tensor]]
    notes: List[str]
    rtol: float

    def __str__(self) -> str:
        lines = [f"check_gradients (rtol={self.rtol:g}): {'OK' if self.ok else 'FAILED'}",
                 f"  {'mode':<11} {'input':<14} {'max rel error':>14}  {'worst at (element, index)':<26} result"]
        for mode, inputs in self.modes.items():
            for name, e in inputs.items():
                result = "ok" if e.ok else "WRONG"
                if not e.counted:
                    result += " (approximate: not counted)"
                where = f"({e.where[0]}, {e.where[1]})"
                lines.append(f"  {mode:<11} {name:<14} {e.max_rel_error:>14.3e}  {where:<26} {result}")
                if not e.ok:
                    lines.append(f"  {'':<11} {'':<14} analytic {e.analytic:.6g}, numeric {e.numeric:.6g}")
        lines += [f"  {mode}: not run: {reason}" for mode, reason in self.skipped.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class _Projection:
    """``L_b = sum_name <P_name, solution[name][b]>`` with fixed random ``P`` (one per name and
    event shape, seeded): a scalar per element that sees every output entry."""

    def __init__(self, seed: int):
        self.seed = seed
        self.weights: Dict[str, torch.Tensor] = {}

    def __call__(self, solution: Solution) -> torch.Tensor:
        total = None
        for index, name in enumerate(sorted(solution)):
            value = solution[name]
            weight = self.weights.get(name)
            if weight is None or weight.shape != value.shape[1:]:
                generator = torch.Generator().manual_seed(self.seed + index)
                weight = torch.randn(value.shape[1:], generator=generator, dtype=torch.float64)
                self.weights[name] = weight
            part = (value * weight.to(dtype=value.dtype, device=value.device)).reshape(value.shape[0], -1).sum(1)
            total = part if total is None else total + part
        assert total is not None, "a solution holds at least one optim variable"
        return total


def check_gradients(
    layer: OptimizationLayer,
    inputs: Mapping[str, torch.Tensor],
    function: Optional[Callable[[Solution], torch.Tensor]] = None,
    modes: Optional[Sequence[str]] = None,
    hessian: Optional[str] = None,
    backward_num_iterations: Optional[int] = None,
    step: float = 1e-5,
    rtol: float = 1e-4,
    atol: float = 1e-10,
    seed: int = 0,
    count_approximate: bool = False,
) -> GradientReport:
    """Compare an optimization layer's gradients in each backward mode with central differences.

    See the module description for the rule and for what makes the differences accurate. The
    inputs are not modified; the layer is called as configured (its optimizer, tolerances,
    dtype).

    Args:
        layer: an :class:`~nlls.OptimizationLayer`.
        inputs: name -> tensor, as for calling the layer; the gradients are taken with respect to
            the tensors that require grad.
        function: ``solution -> (B,)`` values, one per batch element (or a scalar); default a
            fixed random projection of every output (seeded by ``seed``).
        modes: backward modes to check (names or :class:`~nlls.BackwardMode`); default every
            registered mode, those that cannot run on this layer reported as skipped.
        hessian: ``hessian`` of the implicit mode; default the layer's.
        backward_num_iterations: the truncated mode's; default the layer's, else
            ``min(5, max_iterations)``.
        step: relative difference step.
        rtol, atol: an entry passes when ``|analytic - numeric| <= atol + rtol * s_b``.
        seed: the seed of the default projection.
        count_approximate: count the approximate modes (truncated) toward ``ok`` too.

    Returns:
        a :class:`GradientReport` (``report.ok``; ``print(report)`` for the details).

    Raises:
        TypeError: ``layer`` is not an OptimizationLayer, or ``inputs`` is not a mapping.
        ValueError: no input requires grad, bad options, an unknown mode, or a mode asked for by
            name that cannot differentiate this layer.
    """
    if not isinstance(layer, OptimizationLayer):
        raise TypeError(f"check_gradients expects an OptimizationLayer, got {type(layer).__name__}")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"check_gradients: inputs must be a mapping name -> tensor, got {type(inputs).__name__}")
    wrt = [name for name, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    if not wrt:
        raise ValueError(f"check_gradients: no input requires grad; inputs: {sorted(inputs)}")
    for key, value in (("step", step), ("rtol", rtol), ("atol", atol)):
        check_number("check_gradients", key, value, minimum=0, open_minimum=key == "step")
    check_bool("check_gradients", "count_approximate", count_approximate)
    names = list(BACKWARD_MODES) if modes is None else [backward_class(m).name for m in modes]
    function = _Projection(seed) if function is None else function
    detached = {name: t.detach() if isinstance(t, torch.Tensor) else t for name, t in inputs.items()}
    converged: List[torch.Tensor] = []

    def values(replaced: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            solution, info = layer({**detached, **replaced}, backward_mode=BackwardMode.IMPLICIT,
                                   hessian="gauss_newton")
            converged.append(info.converged)
            return function(solution)

    reference = values({})
    batch = int(reference.shape[0]) if reference.ndim else 0  # 0: a scalar, not per element
    numeric = {name: _differences(values, detached[name], name, batch, step) for name in wrt}
    scale = _scale(numeric, batch)
    report = GradientReport(True, {}, {}, numeric, {}, [], rtol)
    for mode in names:
        grads = _layer_gradients(layer, mode, inputs, wrt, function, hessian,
                                 backward_num_iterations, modes is not None, report)
        if grads is None:
            continue
        counted = count_approximate or mode not in APPROXIMATE_MODES
        report.analytic[mode] = grads
        report.modes[mode] = {name: _compare(grads[name], numeric[name], scale, rtol, atol, counted)
                              for name in wrt}
    report.ok = all(e.ok for inputs_ in report.modes.values() for e in inputs_.values() if e.counted)
    _notes(layer, report, converged)
    return report


def _differences(values, tensor: torch.Tensor, name: str, batch: int, step: float) -> torch.Tensor:
    """Central differences of ``values`` with respect to every entry of input ``name``."""
    rows = tensor.shape[0]
    flat = tensor.reshape(rows, -1)
    out = torch.zeros_like(flat)
    separable = batch > 0 and rows in (1, batch)
    for j in range(flat.shape[1]):
        for b in range(1) if separable else range(rows):
            plus, minus = flat.clone(), flat.clone()
            lane = slice(None) if separable else slice(b, b + 1)
            h = step * (1.0 + flat[lane, j].abs())
            plus[lane, j] += h
            minus[lane, j] -= h
            width = plus[lane, j] - minus[lane, j]  # the step actually taken, after rounding
            change = values({name: plus.reshape(tensor.shape)}) - values({name: minus.reshape(tensor.shape)})
            if separable:
                out[:, j] = (change if rows == batch else change.sum().reshape(1)) / width
            else:
                out[b, j] = change.sum() / width[0]
    return out.reshape(tensor.shape)


def _layer_gradients(layer, mode: str, inputs, wrt, function, hessian, num_iterations, asked,
                     report: GradientReport) -> Optional[Dict[str, torch.Tensor]]:
    """The layer's gradient of ``function`` in ``mode``; ``None`` (and the reason in the report)
    when the mode cannot run on this layer and was not asked for by name."""
    cls = backward_class(mode)
    count = None
    if cls.takes_num_iterations:
        count = num_iterations if num_iterations is not None else layer.backward_num_iterations
        count = count if count is not None else min(5, layer.optimizer.max_iterations)
    fresh = {name: t.detach().clone().requires_grad_(True) if name in wrt else t
             for name, t in inputs.items()}
    with warnings.catch_warnings(record=True) as caught, torch.enable_grad():
        warnings.simplefilter("always")
        try:
            backward = layer.backward_for(mode, count, hessian)
            solution, _ = layer(fresh, backward_mode=backward)
        except ValueError as exc:
            if asked:
                raise
            report.skipped[mode] = str(exc)
            return None
        total = function(solution).sum()
        tensors = [fresh[name] for name in wrt]
        grads = (torch.autograd.grad(total, tensors, allow_unused=True) if total.requires_grad
                 else [None] * len(tensors))
    for warning in caught:  # the layer's own (RuntimeWarning: not converged, not factored)
        if not issubclass(warning.category, RuntimeWarning):
            continue
        note = f"{mode}: {warning.message}"
        if note not in report.notes:
            report.notes.append(note)
    return {name: torch.zeros_like(t) if g is None else g.detach()
            for name, t, g in zip(wrt, tensors, grads)}


def _largest(numeric: torch.Tensor) -> torch.Tensor:
    """The largest finite ``|entry|`` per row ``(rows,)``."""
    flat = numeric.reshape(numeric.shape[0], -1).abs()
    return torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat)).amax(dim=1)


def _scale(numeric: Dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    """``s_b`` ``(batch,)``: each element's largest gradient entry over every input (an input of
    batch 1 counts for every element; without elements, ``batch`` 0, one overall value)."""
    parts = [_largest(n) for n in numeric.values()]
    overall = torch.stack([p.max() for p in parts]).max()
    if batch == 0:
        return overall.reshape(1)
    scale = torch.zeros(batch, dtype=overall.dtype, device=overall.device)
    for part in parts:
        scale = torch.maximum(scale, part if part.shape[0] == batch else part.max().expand(batch))
    return scale


def _compare(analytic: torch.Tensor, numeric: torch.Tensor, scale: torch.Tensor, rtol: float,
             atol: float, counted: bool) -> InputErrors:
    rows = numeric.shape[0]
    a, n = analytic.reshape(rows, -1), numeric.reshape(rows, -1)
    finite = torch.isfinite(n)
    difference = torch.where(finite, (a - n).abs(), torch.zeros_like(n)).nan_to_num(float("inf"))
    own = (scale if scale.shape[0] == rows else scale.max().expand(rows))[:, None]
    excess = difference / (atol + rtol * own)
    flat = int(torch.argmax(excess))
    b, j = divmod(flat, n.shape[1])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(j), numeric.shape[1:])) if numeric.ndim > 1 else ()
    relative = difference / own.clamp_min(torch.finfo(own.dtype).tiny)
    return InputErrors(float(relative.max()), float(difference.max()), (b, index), float(a[b, j]),
                       float(n[b, j]), bool((excess <= 1.0).all()), counted)


def _notes(layer, report: GradientReport, converged: List[torch.Tensor]) -> None:
    optimizer = layer.optimizer
    fixed_count = optimizer.fixed_count  # every stopping rule off: unconverged is expected
    unconverged = sum(1 for c in converged if not bool(c.all()))
    if unconverged and not fixed_count:
        report.notes.append(
            f"{unconverged} of {len(converged)} difference solves left elements unconverged: the "
            f"differences are only as accurate as the solves (tighten the tolerances, raise "
            f"max_iterations)")
    if layer.objective.dtype != torch.float64:
        report.notes.append(f"the layer solves in {layer.objective.dtype}: differences of a solve "
                            f"need float64 to resolve errors below about 1e-3")
    for mode, inputs in report.modes.items():
        if any(not torch.isfinite(report.numeric[name]).all() for name in inputs):
            report.notes.append(f"{mode}: some differences are not finite (failed elements?); those "
                                f"entries were not compared")
            break
