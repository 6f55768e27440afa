"""Failed elements never reach a gradient: finite inputs for the iterations autograd records.

When autograd records the iterations (the ``unroll`` and ``truncated`` backward modes), every
batch element's computations are one graph. An element that failed (NaN data, a trial step out of
its residual's domain) is masked out of the results with ``torch.where``, so its gradient is zero;
but that zero meets the element's non-finite local derivatives in the backward of the operations
that computed the discarded values (``0 * nan = nan``), and the NaN reaches every parameter the
batch shares. Masking outputs is not enough: the inputs of masked computations must be finite.

* :func:`guarded_inputs`: at the start of a step, an element that is not active computes with the
  values, data, error and step-rule state of a healthy element (its results are discarded, and the
  borrowed inputs receive exactly zero gradient from them).
* :func:`finite_trial`: a trial step whose error is not finite is evaluated again at the current
  values (finite), so the step rule's arithmetic stays finite; the caller keeps the non-finite
  error as data for the decisions.

Both only matter while a graph is recorded (:func:`recording`); without one, NaN in an element
stays in that element.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch

from .state import SolveState, Status, Values, map_tensors, select


def recording(state: SolveState) -> bool:
    """Whether autograd records this step: grad mode on and some input requires grad."""
    return records(state.values, state.aux)


def records(values: Values, aux) -> bool:
    """Whether autograd records a computation on ``values`` and ``aux``."""
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in values) or any(t.requires_grad for group in aux for t in group)


def _borrow(mask: torch.Tensor, tensor: torch.Tensor, donor: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor`` with the entries of the elements where ``mask (B,)`` is false (along ``dim``)
    replaced by those of element ``donor (1,)``."""
    shape = [1] * tensor.ndim
    shape[dim] = -1
    return torch.where(mask.reshape(shape), tensor, tensor.index_select(dim, donor))


def donor_of(healthy: torch.Tensor) -> torch.Tensor:
    """``(1,)`` index of the first element where ``healthy (B,)`` holds (the first, if none)."""
    return torch.argmax(healthy.to(torch.int8)).reshape(1)


def borrowed(mask: torch.Tensor, donor: torch.Tensor, values: Values,
             aux) -> Tuple[Values, List[List[torch.Tensor]]]:
    """Block ``values`` and stacked ``aux`` data in which the elements where ``mask (B,)`` is
    false carry element ``donor``'s."""
    batch = mask.shape[0]
    return (tuple(_borrow(mask, v, donor, 1) for v in values),
            [[_borrow(mask, t.reshape(t.shape[0] // batch, batch, *t.shape[1:]), donor, 1).reshape(t.shape)
              for t in group] for group in aux])


def guarded_inputs(state: SolveState) -> Tuple[Values, List[List[torch.Tensor]], torch.Tensor, Any]:
    """``(values, aux, error, step_state)`` of ``state`` in which every element that is not active
    carries the inputs of a healthy one: the first element that has not failed (with none, the
    first element)."""
    mask, batch = state.active, state.active.shape[0]
    donor = donor_of(state.status != int(Status.FAILED))  # (an int: torch.compile mistraces IntEnum)
    values, aux = borrowed(mask, donor, state.values, state.aux)
    error = _borrow(mask, state.error, donor, 0)
    step_state = map_tensors(
        lambda t: _borrow(mask, t, donor, 0) if t.ndim and t.shape[0] == batch else t, state.step_state)
    return values, aux, error, step_state


def finite_start(evaluator, values: Values, aux, error: torch.Tensor) -> torch.Tensor:
    """The initial ``error (B,)`` without a graph into non-finite computations: elements whose
    error is not finite keep it as data, and the graph of the others is evaluated with every
    failed element carrying a healthy element's inputs."""
    finite = torch.isfinite(error)
    values, aux = borrowed(finite, donor_of(finite), values, aux)
    return torch.where(finite, evaluator.error_metric(values, aux), error.detach())


def finite_trial(evaluator, candidate: Values, values: Values, aux, new_error: torch.Tensor):
    """``(candidate, new_error, finite)``: where the trial error is not finite, the candidate is
    replaced by ``values`` and its error evaluated again there (finite, with a graph); ``finite``
    marks the elements whose trial was finite."""
    finite = torch.isfinite(new_error)
    candidate = select(finite, candidate, values)
    return candidate, evaluator.error_metric(candidate, aux), finite
