"""The CUDA-graph driver: ``optimize(cuda_graph=True)`` captures a whole solve once and replays it.

On a GPU a small batched solve is launch-bound: an iteration is a few dozen kernels of a few
microseconds each, and eager PyTorch spends more time launching them from Python than the GPU
spends running them. A CUDA graph records every kernel of ``max_iterations`` iterations
(linearize, factor, solve, retract, evaluate, accept) once; a replay launches all of them with one
call. The loop is built for it: per-element convergence is a mask, nothing is read back to the
host inside it, and the dense linear solvers use capturable routines (two triangular solves, not
``cholesky_solve``), so the captured solve gives the results of the eager loop.

How it works, per optimizer:

* The first call for a given problem structure, batch size, dtypes, iteration count and tracking
  options copies the variables' values and the stacked aux data into *static input buffers*,
  runs the solve once eagerly on a side stream (lazy library initialization, one-off checks), and
  captures it into a graph. The graph and its buffers are kept on the optimizer.
* Every call (the first included) copies the current values and aux data into the buffers,
  replays the graph and clones the outputs: new data, same kernels. The user's tensors are only
  read.
* The captured solve always runs ``max_iterations`` iterations: elements that converge early are
  frozen by their masks, as in the eager loop, so per-element results and ``info`` are the same
  (``check_every`` does not apply; there is no host check to make).

What must hold (checked, with an error naming the cause):

* the values live on a CUDA device;
* the linear solver is capturable (``dense_cholesky``, ``dense_lu``, ``cg`` without the
  block-Jacobi preconditioner); sparse factorizations run on the host;
* every cost function is ``capturable`` (a ``NumericDiffCostFunction`` calls host code);
* no autograd graph is wanted through the iterations: a graph replays kernels, not autograd. To
  differentiate, use ``OptimizationLayer`` with the implicit backward, which replays the forward
  solve and differentiates at the solution;
* the objective's structure does not change while graphs are kept (adding or removing cost
  functions or variables raises; call :meth:`~nlls.Optimizer.reset_cuda_graphs` first).

Cost functions must be capturable too: no ``.item()``, ``bool(tensor)``, ``nonzero`` or data-dependent
shapes in ``error()``/``jacobians()``, and data enters through variables (a tensor held as a plain
attribute is captured by address: in-place changes are seen, a replaced tensor is not).
:func:`check_capturable` runs one solve on any device (CPU included) and reports the first
operation that would need the host, with the line of code that called it.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..state import SolveState, map_tensors
from .base import Driver

aten = torch.ops.aten


class HostSyncError(RuntimeError):
    """An operation inside a solve needs a value on the host (or is not capturable on CUDA)."""


# operations that wait for the device (a value or a data-dependent shape goes to the host), copy
# host data to the device, or run library routines that CUDA graphs cannot capture
_SYNC_OPS = {
    aten._local_scalar_dense.default: "reads a tensor value on the host (.item(), bool(), int(), float())",
    aten.is_nonzero.default: "reads a tensor value on the host (bool(tensor))",
    aten.equal.default: "reads a tensor comparison on the host (torch.equal)",
    aten.nonzero.default: "has a data-dependent output shape (nonzero)",
    aten.masked_select.default: "has a data-dependent output shape (masked_select)",
    aten._unique2.default: "has a data-dependent output shape (unique)",
    aten.unique_consecutive.default: "has a data-dependent output shape (unique_consecutive)",
    aten.unique_dim.default: "has a data-dependent output shape (unique)",
    aten._linalg_check_errors.default: "checks a factorization on the host (use the *_ex variant)",
    aten.cholesky_solve.default: "is not capturable on CUDA (cholesky_solve; use two solve_triangular)",
}
# a tensor made from host data (torch.tensor(...)) is copied to the device: not capturable (a
# 0-dim one, which every device accepts as a scalar, is fine)
_HOST_DATA_OPS = (aten.lift_fresh.default, aten.lift_fresh_copy.default)


def _sync_reason(func, args, kwargs) -> Optional[str]:
    reason = _SYNC_OPS.get(func)
    if reason is not None:
        return reason
    if func in _HOST_DATA_OPS and args and isinstance(args[0], torch.Tensor) and args[0].ndim > 0:
        return "creates a tensor from host data (torch.tensor(...)) inside the solve"
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "has a data-dependent output shape (repeat_interleave without output_size)"
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                aten._index_put_impl_.default):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
            return "indexes with a boolean mask (a data-dependent shape; use torch.where)"
    return None


class _SyncGuard(TorchDispatchMode):
    """Raises :class:`HostSyncError` at the first operation listed in ``_SYNC_OPS``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs)
        if reason is not None:
            raise HostSyncError(f"{func} {reason}, called from {_caller()}")
        return func(*args, **kwargs)


def _caller() -> str:
    """The innermost frame outside torch and this module's loop: where the operation came from."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        name = frame.filename.replace("\\", "/")
        if "/torch/" in name or name.endswith("/nlls/solve/drivers/cuda_graph.py"):
            continue
        return f"{frame.filename}:{frame.lineno} ({frame.name}: {(frame.line or '').strip()})"
    return "an unknown place"


# ---- checks ---------------------------------------------------------------------------------
def check_supported(optimizer, values, aux, allow_cpu: bool = False) -> None:
    """The host-side conditions of a captured solve; raises with the cause."""
    name = type(optimizer).__name__
    if not allow_cpu:
        devices = {t.device for t in values}
        if any(d.type != "cuda" for d in devices):
            raise ValueError(
                f"{name}: cuda_graph=True needs the variables on a CUDA device, they are on "
                f"{', '.join(sorted(str(d) for d in devices))} (move the objective with "
                f"objective.to('cuda'), or use compile=True on the CPU)"
            )
    solver = optimizer.linear_solver
    if not solver.capturable:
        raise ValueError(
            f"{name}: cuda_graph=True needs a linear solver that runs on the device without host "
            f"round-trips; {solver!r} is not capturable (use 'dense_cholesky', 'dense_lu' or "
            f"ConjugateGradient(preconditioner='jacobi'))"
        )
    host = [cf for cf in optimizer.objective.cost_functions.values() if not cf.capturable]
    if host:
        raise ValueError(
            f"{name}: cuda_graph=True cannot capture {type(host[0]).__name__} {host[0].name!r}: it "
            f"calls host code every evaluation (run without cuda_graph)"
        )
    if torch.is_grad_enabled():
        wants = [t for t in list(values) + [t for g in aux for t in g] if t.requires_grad]
        if wants:
            owner = _grad_owner(optimizer.objective)
            raise ValueError(
                f"{name}: cuda_graph=True replays kernels without recording an autograd graph, "
                f"but {owner} requires grad; to differentiate the solution use "
                f"OptimizationLayer(..., backward_mode='implicit') with cuda_graph=True, or run "
                f"under torch.no_grad()"
            )


def _grad_owner(objective) -> str:
    for kind, variables in (("optim", objective.optim_vars), ("aux", objective.aux_vars)):
        for var_name, var in variables.items():
            if var.tensor.requires_grad:
                return f"{kind} variable {var_name!r}"
    return "an input"


def check_capturable(optimizer, num_iterations: Optional[int] = None) -> None:
    """Run one solve of ``optimizer`` eagerly, on whatever device its data is on, and raise
    :class:`HostSyncError` at the first operation that would stop a CUDA graph capture (a read
    of a value on the host, a data-dependent shape, an uncapturable routine), naming it and the
    line of code that called it. Also raises if the linear solver or a cost function cannot be
    captured at all. The objective is left unchanged.

    Use it on the CPU to make a custom cost function ready for ``cuda_graph=True``.
    """
    evaluator = optimizer.prepare()
    batch = evaluator.batch_size()
    values, aux = evaluator.gather(batch), evaluator.aux(batch)
    check_supported(optimizer, values, aux, allow_cpu=True)
    iterations = optimizer.max_iterations if num_iterations is None else num_iterations
    evaluator.check_shapes(values, aux)
    with torch.no_grad():
        with _SyncGuard():
            _solve_body(optimizer, values, aux, iterations, (False, False))()


# ---- capture and replay ------------------------------------------------------------------
def _solve_body(optimizer, values, aux, num_iterations: int, flags) -> Callable:
    """The captured function: the start and ``num_iterations`` steps on fixed tensors."""
    def body() -> SolveState:
        state = optimizer.initial_state(values, aux, *flags)
        for _ in range(num_iterations):
            state = optimizer.step(state)
        return state

    return body


class CUDAGraphRecorder:
    """``body`` warmed up on a side stream, then captured; ``replay()`` returns its outputs."""

    def __init__(self, body: Callable, device: torch.device):
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                body()  # lazy handles and workspaces of cuBLAS/cuSOLVER, outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = body()

    def replay(self) -> SolveState:
        self.graph.replay()
        return self.outputs


class EagerRecorder:
    """A stand-in for :class:`CUDAGraphRecorder` on any device: a replay reruns ``body`` and
    writes its results into the first run's output tensors, as a graph replay does. It runs the
    driver's whole path (static buffers, caching, output copies) where no GPU is at hand."""

    def __init__(self, body: Callable, device: torch.device):
        self.body = body
        self.outputs = body()

    def replay(self) -> SolveState:
        fresh = self.body().tensors()
        for static, new in zip(self.outputs.tensors(), fresh):
            static.copy_(new)
        return self.outputs


class _CapturedSolve:
    """One captured solve: static input buffers, the recorded graph, its outputs."""

    def __init__(self, optimizer, recorder, values, aux, num_iterations: int, flags):
        self.values = tuple(s.detach().clone() for s in values)
        self.aux = [[t.detach().clone() for t in group] for group in aux]
        body = _solve_body(optimizer, self.values, self.aux, num_iterations, flags)
        try:
            with torch.no_grad():
                self.graph = recorder(body, self.values[0].device)
        except HostSyncError:
            raise
        except Exception as exc:
            raise RuntimeError(
                f"{type(optimizer).__name__}: the solve could not be captured in a CUDA graph "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). A cost "
                f"function may read values on the host or create tensors from host data; "
                f"nlls.check_capturable(optimizer) names the operation. Run without "
                f"cuda_graph=True meanwhile."
            ) from exc
        self.replays = 0

    def run(self, values, aux) -> SolveState:
        with torch.no_grad():
            for static, new in zip(self.values, values):
                static.copy_(new)
            for static_group, group in zip(self.aux, aux):
                for static, new in zip(static_group, group):
                    static.copy_(new)
            outputs = self.graph.replay()
        self.replays += 1
        # clones: the next replay overwrites the graph's outputs
        return outputs.replace(aux=aux, **map_tensors(torch.clone, outputs.device_part()))


def _key(values, aux, num_iterations: int, flags, recorder) -> Tuple:
    describe = lambda t: (tuple(t.shape), t.dtype, t.device)  # noqa: E731
    return (num_iterations, flags, recorder, tuple(map(describe, values)),
            tuple(tuple(map(describe, group)) for group in aux))


class CUDAGraphDriver(Driver):
    """Captures a whole solve once per problem structure and shape, replays it with new data
    (see the module's description).

    Args:
        recorder: what records and replays the solve: :class:`CUDAGraphRecorder` (a CUDA graph)
            or :class:`EagerRecorder` (reruns it, on any device).
        require_cuda: refuse values that are not on a CUDA device (with the default recorder a
            CPU solve cannot be captured).
    """

    name = "cuda_graph"
    whole_solve = True

    def __init__(self, recorder=CUDAGraphRecorder, require_cuda: bool = True):
        self.recorder = recorder
        self.require_cuda = require_cuda

    def check(self, optimizer, owner: str, wanting_grad) -> None:
        if wanting_grad:
            raise ValueError(
                f"{owner}: this backward mode differentiates the recorded iterations, but "
                f"cuda_graph=True replays them without autograd ({wanting_grad[0]!r} requires "
                f"grad); use backward_mode='implicit' with cuda_graph=True"
            )

    def solve(self, optimizer, num_iterations: int, track_best_solution: bool = False,
              track_err_history: bool = False, verbose: bool = False, callback=None) -> SolveState:
        if callback is not None:
            raise ValueError(
                f"{type(optimizer).__name__}: a callback runs between iterations, but cuda_graph=True "
                f"replays the whole solve at once (use compile=True or the eager loop with a callback)"
            )
        started = time.perf_counter()
        graphs = optimizer.cache(self.name)
        version = optimizer.objective.structure_version
        if graphs.setdefault("structure", version) != version:
            raise RuntimeError(
                f"{type(optimizer).__name__}: the objective's structure changed (cost functions or "
                f"variables were added or removed) since its CUDA graphs were captured; call "
                f"optimizer.reset_cuda_graphs() to capture anew for the new structure"
            )
        evaluator = optimizer.prepare()
        batch = evaluator.batch_size()
        values, aux = evaluator.gather(batch), evaluator.aux(batch)
        check_supported(optimizer, values, aux, allow_cpu=not self.require_cuda)
        flags = (track_best_solution, track_err_history)
        key = _key(values, aux, num_iterations, flags, self.recorder)
        captured = graphs.get(key)
        if captured is None:
            if verbose:
                print(f"{type(optimizer).__name__}: capturing {num_iterations} iterations in a "
                      f"CUDA graph (batch {batch}, {evaluator.dof} unknowns)")
            evaluator.check_shapes(values, aux)
            captured = graphs[key] = _CapturedSolve(optimizer, self.recorder, values, aux,
                                                    num_iterations, flags)
        state = captured.run(values, aux)
        state = state.replace(started=started, verbose=verbose, iteration=num_iterations)
        if verbose:
            print(f"iteration {num_iterations:3d}  error {state.error.mean().item():.6e}  (CUDA "
                  f"graph replay)")
        return state


def captured_solves(optimizer) -> list:
    """The solves ``optimizer`` keeps captured (each with its ``replays`` count)."""
    return [v for k, v in optimizer.cache(CUDAGraphDriver.name).items() if k != "structure"]
