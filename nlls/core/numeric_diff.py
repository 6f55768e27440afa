"""Finite-difference cost functions, for residuals torch cannot differentiate.

A residual computed by numpy, scipy or a simulator has no autograd graph. A
:class:`NumericDiffCostFunction` still gives the solver its Jacobians, and the optimization layer
its gradients, by finite differences:

* **Jacobians** with respect to each optim variable's tangent: column ``i`` is
  ``(r(x (+) h e_i) - r(x (-) h e_i)) / 2h`` (``scheme="central"``, error ``O(h^2)``) or
  ``(r(x (+) h e_i) - r(x)) / h`` (``"forward"``, ``O(h)``, half the evaluations).
* **Step rule.** ``h = s * max(1, |x_i|)`` for coordinates of vector variables (relative to the
  magnitude, so large coordinates are not lost in rounding), ``h = s`` for Lie-group tangents
  (angles are of order one). ``s`` is ``step`` when given, else the classic optimum for the
  dtype: ``eps^(1/3)`` for central differences (6e-6 in float64, 5e-3 in float32) and
  ``eps^(1/2)`` for forward ones (1.5e-8, 3.5e-4), which balances truncation and rounding error.
* **Batched.** All perturbed copies of a batch go through ``err_fn`` as one stacked call of
  ``(1 + 2 * dof) * B`` rows (``(1 + dof) * B`` forward), so ``err_fn`` must accept any batch
  size and treat rows independently. An ``err_fn`` that reads batched data other than its
  variables (a closure over a ``(B, ...)`` tensor) cannot: ``stacked="auto"`` (the default)
  tries the stacked call once and, when it raises or returns the wrong shape, switches this
  cost function to one call per perturbed copy at the original batch size ``B`` and remembers
  it; ``stacked=True`` always stacks (an error names the cost function), ``stacked=False``
  never does. Passing such data as ``aux_vars`` keeps the single call.
* **Output.** ``err_fn`` returns a ``(B, dim)`` torch tensor or numpy array of real numbers
  (float, int); it is converted to the variables' dtype and device. ``None``, tuples, lists,
  complex, boolean or object arrays are refused with a ``TypeError`` naming the cost function.
* **Non-finite values are data.** A NaN or inf residual in one batch element (NaN data, or a
  trial step outside the function's domain) stays in that element: each element's differences
  use only its own rows, so the optimizer fails that element (or rejects its step) and solves
  the others. A central difference whose one side is not finite uses the other side (a
  one-sided difference at the edge of the domain).
* **Gradients with respect to aux data.** ``error()`` and ``jacobians()`` are differentiable with
  respect to aux tensors that require grad: their vector-Jacobian products are central
  differences over every aux entry (for the Jacobians, the mixed second difference
  ``[r(+h,+k) - r(+h,-k) - r(-h,+k) + r(-h,-k)] / 4hk`` with ``h, k = eps^(1/4) * max(1, |.|)``,
  rounding error about ``eps^(1/2)``). Cost: ``2 * (1 + 2 * dof)`` evaluations per aux entry,
  all stacked into one call: proportional to the aux size, as for any finite-difference
  gradient. This is what ``OptimizationLayer``'s implicit backward needs. Gradients with respect
  to optim-variable tensors (unrolling, second derivatives) are not available.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .cost_function import CostWeightLike, ErrorFunction, ErrorFunctionCostFunction
from .manifold import Manifold, Vector
from .ragged import MaskLike
from .variable import Variable

SCHEMES = ("central", "forward")


class _CallMode:
    """Whether stacked calls work for a cost function (``None``: not tried yet); shared by the
    cost function and the evaluator's twins of it, so the choice is made once."""

    def __init__(self) -> None:
        self.stacked: Optional[bool] = None


class NumericDiffCostFunction(ErrorFunctionCostFunction):
    """A cost function whose Jacobians (and aux gradients) are finite differences.

    Args:
        optim_vars: Manifold variables.
        err_fn: ``(optim_vars, aux_vars) -> (B, dim)`` tensor or numpy array; may call any code.
        dim: residual size.
        aux_vars: data variables passed to ``err_fn``.
        cost_weight: weight (see :class:`~nlls.core.cost_function.CostFunction`).
        name: unique name.
        step: relative step ``s`` (see the module docs); default from the dtype and scheme.
        scheme: ``"central"`` or ``"forward"``.
        stacked: ``"auto"``, ``True`` or ``False``: whether perturbed copies go through ``err_fn``
            as one stacked call (see the module docs).
        residual_mask: for ragged batches, as on :class:`~nlls.core.cost_function.CostFunction`
            (masked rows of non-finite aux data reach ``err_fn`` as zeros).
    """

    # the residual comes from host code: no graph to record or differentiate twice, no capture
    has_autograd_graph = False
    has_second_derivatives = False
    capturable = False

    def __init__(self, optim_vars: Sequence[Manifold], err_fn: ErrorFunction, dim: int,
                 aux_vars: Sequence[Variable] = (), cost_weight: Optional[CostWeightLike] = None,
                 name: Optional[str] = None, step: Optional[float] = None, scheme: str = "central",
                 stacked: Union[bool, str] = "auto", residual_mask: Optional[MaskLike] = None):
        super().__init__(optim_vars, err_fn, dim, aux_vars, cost_weight=cost_weight, name=name,
                         residual_mask=residual_mask)
        what = f"NumericDiffCostFunction {self.name!r}"
        if scheme not in SCHEMES:
            raise ValueError(f"{what}: scheme must be one of {SCHEMES}, got {scheme!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                                 or not step > 0):
            raise ValueError(f"{what}: step must be a positive float, got {step!r}")
        if not (isinstance(stacked, bool) or stacked == "auto"):
            raise ValueError(f"{what}: stacked must be True, False or 'auto', got {stacked!r}")
        self.step = step
        self.scheme = scheme
        self.stacked = stacked
        self._call_mode = _CallMode()

    def stack_key(self) -> tuple:
        """As :class:`ErrorFunctionCostFunction`'s; the remembered call mode is not data."""
        return (self.err_fn, self.attributes_key(exclude=("err_fn", "_call_mode")))

    def error(self) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _untraced(_evaluate)(self, False)[0]
        return _evaluate(self, False)[0]

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        *jacobians, error = (_untraced(_evaluate) if torch.compiler.is_compiling() else _evaluate)(self, True)
        return list(jacobians), error

    # ---- finite differences on plain tensors ----------------------------------------------
    def _tensors(self) -> Tuple[torch.Tensor, ...]:
        return tuple(v.tensor for v in self.optim_vars + self.aux_vars)

    def _call(self, optim: Sequence[torch.Tensor], aux: Sequence[torch.Tensor]) -> torch.Tensor:
        """``err_fn`` on plain tensors of ``N`` rows, checked: ``(N, dim)``."""
        rows = optim[0].shape[0]
        optim_vars = tuple(v.with_tensor(t) for v, t in zip(self.optim_vars, optim))
        aux_vars = tuple(v.with_tensor(t) for v, t in zip(self.aux_vars, aux))
        with torch.no_grad():
            out = self.err_fn(optim_vars, aux_vars)
        ref = optim[0]
        out = self._as_residual(out, rows)
        if tuple(out.shape) != (rows, self._dim):
            raise ValueError(
                f"NumericDiffCostFunction {self.name!r}: err_fn returned shape {tuple(out.shape)} "
                f"for {rows} rows, expected ({rows}, {self._dim})"
            )
        return out.to(dtype=ref.dtype, device=ref.device)

    def _as_residual(self, out, rows: int) -> torch.Tensor:
        """``err_fn``'s output as a tensor of real numbers, or a ``TypeError`` naming this."""
        kind = None
        if isinstance(out, torch.Tensor):
            if out.is_complex() or out.dtype == torch.bool:
                kind = f"a tensor of dtype {out.dtype}"
        elif isinstance(out, np.ndarray):
            if out.dtype.kind not in "fiu":
                kind = f"a numpy array of dtype {out.dtype}"
            else:
                out = torch.as_tensor(np.ascontiguousarray(out))
        else:
            kind = f"an object of type {type(out).__name__}"
        if kind is not None:
            raise TypeError(
                f"NumericDiffCostFunction {self.name!r}: err_fn returned {kind}; expected a "
                f"({rows}, {self._dim}) torch tensor or numpy array of real numbers"
            )
        return out

    def _call_copies(self, optim, aux, batch: int) -> torch.Tensor:
        """``err_fn`` on copies of a batch of ``batch`` rows stacked copy after copy: one call,
        or one call per copy (see ``stacked`` in the module docs)."""
        rows = optim[0].shape[0]
        copies = rows // batch
        if copies == 1:
            return self._call(optim, aux)
        mode = self.stacked if self.stacked != "auto" else self._call_mode.stacked
        if mode is not False:
            try:
                out = self._call(optim, aux)
            except Exception as exc:
                if self.stacked is True:
                    raise ValueError(
                        f"NumericDiffCostFunction {self.name!r}: err_fn failed on {copies} stacked "
                        f"copies of the batch ({rows} rows instead of {batch}): {exc}. An err_fn "
                        f"that reads batched data other than its variables (a closure) sees only "
                        f"{batch} rows: pass stacked=False (or 'auto'), or give that data as aux_vars"
                    ) from exc
                self._call_mode.stacked = False  # "auto": one call per copy from now on
            else:
                if self.stacked == "auto":
                    self._call_mode.stacked = True
                return out
        pieces = zip(*(t.split(batch) for t in optim), *(t.split(batch) for t in aux))
        n = len(optim)
        return torch.cat([self._call(p[:n], p[n:]) for p in pieces])

    def _relative_step(self, dtype: torch.dtype, power: float) -> float:
        if self.step is not None and power != 0.25:
            return float(self.step)
        return float(torch.finfo(dtype).eps) ** power

    def _jacobian(self, optim, aux, step: float, central: bool, base: Optional[int] = None):
        """Jacobians ``[(B, dim, dof_k)]`` and residual ``(B, dim)`` with one stacked call (or
        calls of ``base`` rows, ``B`` by default, when stacked calls do not work)."""
        batch = optim[0].shape[0]
        dofs = [v.dof() for v in self.optim_vars]
        total = sum(dofs)
        signs = (1.0, -1.0) if central else (1.0,)
        copies = 1 + len(signs) * total
        stacked: List[torch.Tensor] = []
        steps = []  # (B, dof_k) per variable
        for k, (var, x) in enumerate(zip(self.optim_vars, optim)):
            if isinstance(var, Vector):
                h = step * x.detach().abs().clamp_min(1.0)
            else:
                h = torch.full((batch, dofs[k]), step, dtype=x.dtype, device=x.device)
            steps.append(h)
            blocks = [x]
            for j, other in enumerate(dofs):
                if j != k:
                    blocks.extend([x] * (len(signs) * other))
                    continue
                eye = torch.eye(other, dtype=x.dtype, device=x.device)
                for i in range(other):
                    for sign in signs:
                        delta = sign * h * eye[i]
                        blocks.append(type(var).retract_tensor(x, delta))
            stacked.append(torch.cat(blocks, dim=0))
        aux_rep = [a.repeat(copies, *([1] * (a.ndim - 1))) for a in aux]
        out = self._call_copies(stacked, aux_rep, base or batch).reshape(copies, batch, self._dim)
        error = out[0]
        columns = []
        position = 1
        for h in steps:
            for i in range(h.shape[1]):
                if central:
                    col = _central_or_one_sided(error, out[position], out[position + 1], h[:, i:i + 1])
                else:
                    col = (out[position] - error) / h[:, i:i + 1]
                columns.append(col)
                position += len(signs)
        jac = torch.stack(columns, dim=-1)
        return list(torch.split(jac, dofs, dim=-1)), error


def _evaluate(cf: "NumericDiffCostFunction", want_jacobians: bool):
    out = _BlackBox.apply(cf, want_jacobians, *cf._tensors())
    return out if want_jacobians else (out,)


_UNTRACED: dict = {}


def _untraced(function):
    """``function`` excluded from ``torch.compile``'s tracing: the black box and the per-element
    checks of its output are host code, run eagerly between the compiled parts without a
    graph-break report. Made on first use under the compiler (so ``import nlls`` does not load it)."""
    wrapped = _UNTRACED.get(function)
    if wrapped is None:
        wrapped = _UNTRACED[function] = torch.compiler.disable(function)
    return wrapped


def _central_or_one_sided(error, plus, minus, h):
    """``(plus - minus) / 2h``; where one side is not finite (outside the function's domain),
    the difference on the other side."""
    central = (plus - minus) / (2 * h)
    finite_plus, finite_minus = torch.isfinite(plus), torch.isfinite(minus)
    if bool((finite_plus == finite_minus).all()):
        return central
    one_sided = torch.where(finite_plus, (plus - error) / h, (error - minus) / h)
    return torch.where(finite_plus & finite_minus, central, one_sided)


def _expand_all(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    batch = max(t.shape[0] for t in tensors)
    return [t.expand(batch, *t.shape[1:]) for t in tensors]


class _BlackBox(torch.autograd.Function):
    """Residual (and Jacobians) of a NumericDiffCostFunction, with finite-difference VJPs for
    the aux tensors."""

    @staticmethod
    def forward(cf: NumericDiffCostFunction, want_jacobians: bool, *tensors):
        expanded = _expand_all([t.detach() for t in tensors])
        n = len(cf.optim_vars)
        optim, aux = expanded[:n], expanded[n:]
        if not want_jacobians:
            return cf._call_copies(optim, aux, optim[0].shape[0])
        central = cf.scheme == "central"
        jacobians, error = cf._jacobian(optim, aux, cf._relative_step(optim[0].dtype, 1 / 3 if central else 1 / 2), central)
        return (*jacobians, error)

    @staticmethod
    def setup_context(ctx, inputs, output):
        cf, want_jacobians, *tensors = inputs
        ctx.cf, ctx.want_jacobians = cf, want_jacobians
        ctx.shapes = [t.shape for t in tensors]
        error = output[-1] if want_jacobians else output
        ctx.finite = torch.isfinite(error.detach()).all(dim=-1)  # (B,) elements with a residual
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, *grads):
        cf: NumericDiffCostFunction = ctx.cf
        n = len(cf.optim_vars)
        if any(ctx.needs_input_grad[2: 2 + n]):
            raise RuntimeError(
                f"NumericDiffCostFunction {cf.name!r}: gradients with respect to optim variables "
                f"are not available by finite differences; use OptimizationLayer with "
                f"backward_mode='implicit' (and hessian='gauss_newton')"
            )
        tensors = _expand_all([t.detach() for t in ctx.saved_tensors])
        optim, aux = tensors[:n], tensors[n:]
        out: List[Optional[torch.Tensor]] = [None] * (2 + n)
        for m in range(len(aux)):
            if not ctx.needs_input_grad[2 + n + m]:
                out.append(None)
                continue
            grad = _aux_vjp(cf, optim, aux, m, grads, ctx.want_jacobians, ctx.finite)
            shape = ctx.shapes[n + m]
            if shape[0] != grad.shape[0]:  # the input was broadcast over the batch
                grad = grad.sum(dim=0, keepdim=True)
            out.append(grad)
        return tuple(out)


def _aux_vjp(cf, optim, aux, m, grads, want_jacobians, finite):
    """Central differences over every entry of aux tensor ``m``, contracted with ``grads``.

    An element whose residual is not finite (``~finite``; the optimizer fails it) has no
    derivative: its part is exactly zero, as is every part a zero cotangent meets, so its NaN
    never reaches the other elements through an aux tensor they share."""
    a = aux[m]
    batch = a.shape[0]
    entries = a[0].numel()
    power = 0.25 if want_jacobians else 1 / 3
    k = cf._relative_step(a.dtype, 1 / 3) if not want_jacobians else float(torch.finfo(a.dtype).eps) ** power
    flat = a.reshape(batch, entries)
    steps = k * flat.detach().abs().clamp_min(1.0)  # (B, entries)
    eye = torch.eye(entries, dtype=a.dtype, device=a.device)
    plus = flat[None] + eye[:, None, :] * steps[None]  # (entries, B, entries)
    minus = flat[None] - eye[:, None, :] * steps[None]
    perturbed = torch.cat([plus, minus], dim=0).reshape(2 * entries * batch, *a.shape[1:])
    copies = 2 * entries
    optim_rep = [x.repeat(copies, *([1] * (x.ndim - 1))) for x in optim]
    aux_rep = [
        perturbed if j == m else t.repeat(copies, *([1] * (t.ndim - 1))) for j, t in enumerate(aux)
    ]
    if want_jacobians:
        jacobians, error = cf._jacobian(optim_rep, aux_rep, k, central=True, base=batch)
        outputs = list(jacobians) + [error]
    else:
        outputs = [cf._call_copies(optim_rep, aux_rep, batch)]
    total = torch.zeros(entries, batch, dtype=a.dtype, device=a.device)
    for value, grad in zip(outputs, grads):
        if grad is None:
            continue
        value = value.reshape(2, entries, batch, *value.shape[1:])
        derivative = (value[0] - value[1]) / (2 * steps.T.reshape(entries, batch, *([1] * (value.ndim - 3))))
        keep = (grad != 0) & finite.reshape(batch, *([1] * (grad.ndim - 1)))
        product = torch.where(keep[None], derivative * grad[None], torch.zeros((), dtype=a.dtype, device=a.device))
        total = total + product.reshape(entries, batch, -1).sum(-1)
    return total.T.reshape(a.shape)
