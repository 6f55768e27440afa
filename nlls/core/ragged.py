"""Ragged batches: batch elements with different numbers of residuals.

A batch is solved as one tensor program, so every element of a cost function has the same
residual size ``dim``. Problems with different amounts of data (a line fit to 5 points beside one
to 50) are padded to a common size, and a **residual mask** says which rows are real:

* :func:`pad_ragged` turns a list of per-element tensors of different lengths into one padded
  ``(B, max_len, ...)`` tensor and the ``(B, max_len)`` boolean mask of the real entries;
* ``CostFunction(..., residual_mask=mask)`` (and ``AutoDiffCostFunction``) drops the masked rows:
  the weighted residual and the weighted Jacobian rows there are exactly zero, so they add nothing
  to the error, the normal equations, the covariance or the gradients, and each element's result
  is the one of its own unpadded problem.

The mask is selected with ``torch.where``, never multiplied in: NaN or inf in masked rows (NaN
padding, a residual undefined on padded data) reaches neither the results nor the gradients. Where
autograd records the iterations (``unroll``, ``truncated``), the residual's derivative with respect
to the optim variables also meets the data of the masked rows; so the cost function reads aux data
laid out along its rows (floating tensors ``(B, dim, ...)``) as zero where an entry on a masked row
is not finite (:func:`finite_rows`). Finite data is never changed. A residual row must be computed
from its own entries for padding to stay out of the real rows (a mean over all entries would
mix them). The mask is an aux :class:`~nlls.core.variable.Variable` (bool,
``(B, dim)`` or ``(1, dim)`` for the whole batch) registered with the cost function's weight data:
``Objective.update`` and the optimization layer's inputs replace it by name like any data, and the
evaluation stacks it as data (cost functions with different masks still share one call).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch

from .variable import Variable, as_tensor

MaskLike = Union[torch.Tensor, Variable]


def as_mask_variable(mask: MaskLike, owner: str, name: str) -> Variable:
    """``mask`` as a bool ``(B, dim)`` :class:`Variable`: a tensor is wrapped (a ``(dim,)`` one
    shared by the batch), a Variable is kept (its data may be replaced later by name).

    Args:
        mask: ``(B, dim)`` or ``(dim,)`` bool tensor (``True``: a real residual row), or a Variable.
        owner: the cost function, for messages.
        name: the name of the variable made for a tensor.

    Raises:
        TypeError: ``mask`` is not a bool tensor or Variable.
        ValueError: ``mask`` is not one- or two-dimensional.
    """
    if isinstance(mask, Variable):
        variable = mask
    else:
        tensor = as_tensor(mask, f"{owner}: residual_mask")
        variable = Variable(tensor[None] if tensor.ndim == 1 else tensor, name=name)
    if variable.dtype != torch.bool:
        raise TypeError(f"{owner}: residual_mask {variable.name!r} must be a bool tensor "
                        f"(True marks a real residual row), got dtype {variable.dtype}")
    if variable.ndim != 2:
        raise ValueError(f"{owner}: residual_mask {variable.name!r} must have shape (B, dim), "
                         f"got {tuple(variable.shape)}")
    return variable


def mask_rows(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` ``(B, dim, ...)`` with the rows where ``mask`` ``(B or 1, dim)`` is false set to
    zero by selection (what is there, NaN included, never reaches the result or its gradient)."""
    if mask.dtype != torch.bool:  # data replaced by name with 0/1 numbers
        mask = mask != 0
    mask = mask.reshape(mask.shape + (1,) * (value.ndim - mask.ndim))
    return torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))


@contextlib.contextmanager
def finite_rows(variables: Sequence[Variable], mask: torch.Tensor) -> Iterator[None]:
    """While in the block, aux data laid out along the residual rows, floating tensors of shape
    ``(B, dim, ...)`` (``B`` the mask's batch, or any with a ``(1, dim)`` mask), read zero where
    an entry is not finite on a masked row; the variables get their own tensors back afterwards.

    Selecting the masked rows out of the results is not enough where autograd records: the
    residual's derivative with respect to the optim variables multiplies the padding (``0 * nan
    = nan``). Finite entries are never changed, nor is anything on the real rows.
    """
    if mask.dtype != torch.bool:
        mask = mask != 0
    saved = []
    try:
        for var in variables:
            tensor = var.tensor
            if (tensor.ndim < 2 or not tensor.is_floating_point() or tensor.shape[1] != mask.shape[1]
                    or mask.shape[0] not in (1, tensor.shape[0])):
                continue
            rows = mask.reshape(mask.shape + (1,) * (tensor.ndim - 2))
            saved.append((var, tensor))
            var.tensor = torch.where(rows | torch.isfinite(tensor), tensor,
                                     torch.zeros((), dtype=tensor.dtype, device=tensor.device))
        yield
    finally:
        for var, tensor in saved:
            var.tensor = tensor


def check_mask_width(mask: Variable, dim: int, owner: str) -> None:
    """Raise ``ValueError`` naming ``owner`` unless ``mask`` has ``dim`` columns."""
    if mask.shape[-1] != dim:
        raise ValueError(f"{owner}: residual_mask {mask.name!r} has {mask.shape[-1]} columns, "
                         f"the error has dimension {dim}")


def pad_ragged(tensors: Sequence[torch.Tensor], value: float = 0.0,
               length: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pad per-element data of different lengths into one batch, with the mask of real entries.

    Args:
        tensors: ``B`` tensors (or numpy arrays) of shapes ``(n_b, ...)``, the trailing shape,
            dtype and device shared.
        value: what fills the padding (default 0). The mask keeps it out of every result, NaN
            included; a finite value that the residual can be evaluated at is the safest.
        length: the padded length (default: the longest ``n_b``). A fixed length keeps the
            problem's shapes, and with them solver caches and compiled code, the same from one
            batch to the next.

    Returns:
        ``(padded, mask)``: ``padded`` of shape ``(B, length, ...)`` with element ``b``'s data in
        ``padded[b, :n_b]``, and ``mask`` ``(B, length)`` bool, ``True`` on real entries: pass it
        as a cost function's ``residual_mask`` when residual row ``i`` reads entry ``i``.

    Raises:
        TypeError: an entry is not a tensor or array, or dtypes differ.
        ValueError: no tensors, a scalar, differing trailing shapes or devices, or a ``length``
            shorter than some ``n_b``.
    """
    if isinstance(tensors, torch.Tensor) or not len(tensors):
        raise ValueError("pad_ragged: expected a non-empty sequence of per-element tensors")
    items = [as_tensor(t, f"pad_ragged: element {b}") for b, t in enumerate(tensors)]
    first = items[0]
    for b, t in enumerate(items):
        if t.ndim < 1:
            raise ValueError(f"pad_ragged: element {b} is a scalar; expected shape (n_{b}, ...)")
        if t.shape[1:] != first.shape[1:]:
            raise ValueError(f"pad_ragged: element {b} has shape {tuple(t.shape)}, element 0 "
                             f"{tuple(first.shape)}; only the first dimension may differ")
        if t.dtype != first.dtype:
            raise TypeError(f"pad_ragged: element {b} has dtype {t.dtype}, element 0 {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"pad_ragged: element {b} is on {t.device}, element 0 on {first.device}")
    longest = max(t.shape[0] for t in items)
    if length is None:
        length = longest
    elif isinstance(length, bool) or not isinstance(length, int) or length < longest:
        raise ValueError(f"pad_ragged: length must be an int >= the longest element ({longest}), "
                         f"got {length!r}")
    padded = torch.full((len(items), length) + tuple(first.shape[1:]), value,
                        dtype=first.dtype, device=first.device)
    mask = torch.zeros(len(items), length, dtype=torch.bool, device=first.device)
    for b, t in enumerate(items):
        padded[b, :t.shape[0]] = t
        mask[b, :t.shape[0]] = True
    return padded, mask
