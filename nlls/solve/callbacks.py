"""Callbacks: what ``optimize(callback=fn)`` calls every ``check_every`` iterations, and stopping
elements at its request."""
from __future__ import annotations

import time

import torch

from .state import IterationInfo, SolveState, Status


def call_back(optimizer, state: SolveState) -> None:
    """Call ``state.callback`` with an :class:`IterationInfo`; stop the elements it asks to stop
    (``state`` is updated in place)."""
    assert state.callback is not None and state.step_norm is not None, "set together by init"
    info = IterationInfo(iteration=state.iteration, error=state.error,
                         damping=optimizer.damping_of(state.step_state), step_norm=state.step_norm,
                         status=state.status, active=state.active,
                         elapsed=time.perf_counter() - state.started)
    answer = state.callback(info)
    if answer is None or answer is False:
        return
    if isinstance(answer, bool):
        stop = torch.ones_like(state.active)
    elif isinstance(answer, torch.Tensor) and answer.dtype == torch.bool and answer.shape == state.active.shape:
        stop = answer.to(state.active.device)
    else:
        raise TypeError(f"{type(optimizer).__name__}: a callback returns None, a bool or a (B,) bool tensor "
                        f"of the elements to stop, got {answer!r}")
    stop = stop & state.active
    state.status = torch.where(stop & (state.status == Status.RUNNING), Status.STOPPED,
                               state.status).to(torch.int8)
    state.active = state.active & ~stop
