"""The compiled driver: ``optimize(compile=True)`` runs the iterations through ``torch.compile``.

On small batches an iteration is a few dozen tiny tensor operations, and the time goes into
Python and dispatch, not arithmetic. ``torch.compile`` traces ``check_every`` iterations of the
protocol's ``step`` (linearize, solve, retract, evaluate, accept: one chunk) into one graph and
generates fused code for it. Between chunks the driver asks ``optimizer.terminate`` once, exactly
as the eager loop does every ``check_every`` iterations, so both run the same iterations and give
the same results (to floating-point reassociation by the compiler).

A fixed-count solve (``check_every >= max_iterations``, the natural setting when every element
runs every iteration) is compiled whole: the start of the solve (the initial error and masks)
and all its iterations are one compiled call, with no host read in between.

The first call compiles (seconds to tens of seconds on the CPU); later calls with the same
structure, shapes and dtypes reuse the code, kept in ``optimizer.cache("compiled")``. Iterations
left over after the last whole chunk run eagerly. If compilation fails, a warning says why and
the run continues eagerly from where it was: compiling never changes what is computed. On the
CPU, small ``torch.stack`` s are fused into their consumers (:mod:`.stack_pass`).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Tuple

import torch

from ..state import SolveState, flatten, map_tensors, unflatten
from .base import Driver
from .eager import EagerDriver
from .stack_pass import compile_options


def _signature(tensors) -> Tuple:
    return tuple((t.shape, t.dtype, t.device) for t in tensors)


def _fresh(function: Callable) -> Callable:
    """``function`` with a code object of its own: torch.compile keeps its compiled variants on
    the code object and silently falls back to eager execution past a fixed number of them, which
    one shared function would reach after a few problem shapes."""
    function.__code__ = function.__code__.replace()
    return function


def _structure(state: SolveState) -> SolveState:
    """``state`` with empty tensors in its device part and no aux data: the shape of the
    states a compiled function takes or returns, to rebuild them from flat tensors (holding no
    memory of the call it came from)."""
    return state.replace(aux=None, callback=None, history=None if state.history is None else [],
                         **map_tensors(lambda t: t.new_empty(0), _device_part(state)))


def _chunk_function(optimizer, template: SolveState, size: int) -> Callable:
    """``size`` steps on the flattened device part of a state shaped like ``template``."""
    template = _structure(template)

    def chunk(aux, *tensors):
        state = template.replace(aux=aux, verbose=False, history=None if template.history is None else [],
                                 **unflatten(_device_part(template), iter(tensors)))
        for _ in range(size):
            state = optimizer.step(state)
        return flatten(_device_part(state)), state.history or []

    return _fresh(chunk)


def _whole_function(optimizer, size: int, best: bool, history: bool) -> Callable:
    """The start of a solve and ``size`` steps, from block values and aux data."""
    def whole(values, aux):
        state = optimizer.initial_state(values, aux, best, history)
        for _ in range(size):
            state = optimizer.step(state)
        return flatten(_device_part(state)), state.history or []

    return _fresh(whole)


def _device_part(state: SolveState) -> dict:
    part = state.device_part()
    part.pop("history")  # a list that grows: returned on its own
    return part


class CompiledDriver(Driver):
    """Runs the protocol's steps as ``torch.compile``'d code (see the module's description)."""

    name = "compiled"

    def solve(self, optimizer, num_iterations: int, track_best_solution: bool = False,
              track_err_history: bool = False, verbose: bool = False, callback=None) -> SolveState:
        if optimizer.check_every < num_iterations or num_iterations == 0 or verbose or callback:
            # (verbose, callback: the start eagerly, then chunks, the callback between them)
            return super().solve(optimizer, num_iterations, track_best_solution, track_err_history,
                                 verbose, callback)
        # a fixed-count solve: its start and every iteration in one compiled call
        started = time.perf_counter()
        evaluator = optimizer.prepare()
        batch = evaluator.batch_size()
        values, aux = evaluator.gather(batch), evaluator.aux(batch)
        flags = (track_best_solution, track_err_history)
        key = ("whole", num_iterations, flags, _signature(values),
               _signature(t for group in aux for t in group))
        cache = optimizer.cache(self.name)
        template = cache.get(("structure",) + key)
        if template is None:  # once per key: the shape checks, and the structure of the state
            evaluator.check_shapes(values, aux)
            with torch.no_grad():
                template = _structure(optimizer.initial_state(values, aux, *flags))
            cache[("structure",) + key] = template
        out = self._call(optimizer, key, lambda: _whole_function(optimizer, num_iterations, *flags),
                         (values, aux))
        if out is None:
            return EagerDriver().run(optimizer, optimizer.init(*flags), num_iterations)
        return self._unpack(template, out, num_iterations, restart=True, aux=aux, started=started)

    def run(self, optimizer, state: SolveState, num_iterations: int) -> SolveState:
        size = optimizer.check_every
        optimizer.evaluator.check_shapes(state.values, state.aux)
        done = 0
        while num_iterations - done >= size:
            tensors = flatten(_device_part(state))
            key = ("chunk", size, state.freeze_converged, state.history is not None,
                   state.best_values is not None, _signature(tensors),
                   _signature(t for group in state.aux for t in group))
            out = self._call(optimizer, key, lambda: _chunk_function(optimizer, state, size),
                             (state.aux, *tensors))
            if out is None:
                break
            state = self._unpack(state, out, size)
            done += size
            if optimizer.terminate(state):
                return state
        return EagerDriver().run(optimizer, state, num_iterations - done)

    def _call(self, optimizer, key, make: Callable, args):
        """The compiled function of ``key`` (compiled on first use) called on ``args``; ``None``
        (after a warning) when it cannot be compiled, so the caller runs eagerly."""
        cache = optimizer.cache(self.name)
        compiled = cache.get(key)
        if compiled is _FAILED:
            return None
        try:
            if compiled is not None and key in self._settled(cache):
                return compiled(*args)
            graphs = _graphs_compiled()
            with warnings.catch_warnings():  # compiling (also a recompilation inside a cached
                # function): torch's own deprecation notices about its TorchScript internals and
                # its lowering (not nlls's code, nothing a user can change) are not repeated to
                # the user on every new problem shape
                warnings.filterwarnings("ignore", message=_TORCHSCRIPT_NOTICE, category=DeprecationWarning)
                warnings.filterwarnings("ignore", message=_PRIMS_CHECK_NOTICE, category=FutureWarning)
                if compiled is None:
                    compiled = cache[key] = torch.compile(make(), dynamic=False, options=compile_options())
                out = compiled(*args)
            if graphs is not None and _graphs_compiled() == graphs:
                # a call that compiled nothing: later calls of the key skip the filters (their
                # setup costs more than a whole warm solve's Python around the compiled call)
                self._settled(cache).add(key)
            return out
        except Exception as exc:  # the compiler's failure is not the user's: run eagerly
            warnings.warn(
                f"{type(optimizer).__name__}.optimize(compile=True): torch.compile could not "
                f"compile the iterations ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                f"running them eagerly",
                RuntimeWarning, stacklevel=4,
            )
            cache[key] = _FAILED
            return None

    @staticmethod
    def _settled(cache: dict) -> set:
        """The keys whose compiled function ran once without compiling anything."""
        return cache.setdefault("settled", set())

    @staticmethod
    def _unpack(state: SolveState, out, size: int, restart: bool = False, **changes) -> SolveState:
        """The state after a compiled call's ``out``, ``size`` iterations on from ``state``
        (``restart``: from the start of the solve), with the host-side ``changes``."""
        tensors, new_history = out
        new = state.replace(**unflatten(_device_part(state), iter(tensors)),
                            iteration=state.iteration + size, **changes)
        if state.history is not None:
            new.history = list(new_history) if restart else state.history + list(new_history)
        if state.verbose:
            print(f"iteration {new.iteration:3d}  error {new.error.mean().item():.6e}  (compiled "
                  f"{'solve' if restart else 'chunk'} of {size})")
        return new


_TORCHSCRIPT_NOTICE = r"`torch\.jit\.script(_method)?` is deprecated"
# (inductor's lowering of a matrix diagonal, diag(J^T J) in the stationarity test, calls it)
_PRIMS_CHECK_NOTICE = r"`torch\._prims_common\.check` is deprecated"


def _graphs_compiled():
    """How many graphs dynamo has compiled in this process (``None`` where torch does not say)."""
    try:
        from torch._dynamo.utils import counters
        return counters["stats"]["unique_graphs"]
    except Exception:  # a torch without the counter: every call keeps the filters
        return None


def _failed(*args, **kwargs):  # marker: this function could not be compiled
    raise RuntimeError("unreachable")


_FAILED = _failed
