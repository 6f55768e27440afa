"""Compiled iterations: ``optimize(compile=True)`` runs the loop through ``torch.compile``.

On small batches an iteration is a few dozen tiny tensor operations, and the time goes into
Python and dispatch, not arithmetic (0.25 ms per Gauss-Newton iteration at B = 1 against 0.04 ms
of a hand-written loop). ``torch.compile`` traces ``check_every`` iterations of the shared loop
(linearize, solve, retract, evaluate, accept: one chunk) into one graph and generates fused code
for it, which removes that overhead. Between chunks the loop asks once whether every element has
stopped, exactly as the eager loop does every ``check_every`` iterations, so both run the same
iterations and give the same results (to floating-point reassociation by the compiler).

The first call of a chunk compiles it (tens of seconds on CPU); later calls with the same
structure, shapes and dtypes reuse it. Iterations left over after the last whole chunk run
eagerly. If compilation fails, a warning says why and the run continues eagerly from where it
was: compiling never changes what is computed. On the CPU, small ``torch.stack`` s (Jacobian
columns, matrix entries) are fused into their consumers (:mod:`nlls.solve._stack_pass`).
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Tuple

import torch

from ._stack_pass import compile_options


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller, for code that picks another formulation
    when compiled (``torch.compiler.is_compiling`` is missing from older torch releases that
    nlls still supports)."""
    check = getattr(torch.compiler, "is_compiling", None)
    if check is None:
        from torch._dynamo import is_compiling as check
    return check()


def _chunk_function(optimizer, size: int, stop_on_convergence: bool, best: bool, history: bool) -> Callable:
    from .optimizer import _Loop

    def chunk(state, aux, error, active, status, iterations, memory, initial_error,
              best_state, best_error):
        loop = _Loop(state=state, aux=aux, error=error, active=active, status=status,
                     iterations=iterations, memory=memory, initial_error=initial_error, started=0.0,
                     best_state=best_state if best else None, best_error=best_error if best else None,
                     history=[] if history else None)
        for _ in range(size):
            optimizer._iterate(loop, stop_on_convergence)
        return (loop.state, loop.error, loop.active, loop.status, loop.iterations, loop.memory,
                loop.best_state, loop.best_error, tuple(loop.history or ()))

    # a code object of its own per problem structure and shape: torch.compile keeps its
    # compiled variants on the code object and silently falls back to eager execution past a
    # fixed number of them, which one shared function would reach after a few shapes
    chunk.__code__ = chunk.__code__.replace()
    return chunk


def run_compiled(optimizer, loop, num_iterations: int, stop_on_convergence: bool = True) -> None:
    """Run ``num_iterations`` iterations of ``loop`` in compiled chunks of ``check_every``."""
    size = optimizer.check_every
    flags = (stop_on_convergence, loop.best_state is not None, loop.history is not None)
    shapes = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in loop.state) + tuple(
        (tuple(t.shape), t.dtype, str(t.device)) for group in loop.aux for t in group)
    key = (size, flags, shapes)
    cache: Dict[Tuple, Callable] = optimizer._compiled
    evaluator = optimizer._evaluator
    evaluator.check_shapes(loop.state, loop.aux)
    done = 0
    while num_iterations - done >= size:
        compiled = cache.get(key)
        if compiled is None:
            compiled = torch.compile(_chunk_function(optimizer, size, *flags), dynamic=False,
                                     options=compile_options())
            cache[key] = compiled
        if compiled is _FAILED:
            break
        try:
            out = compiled(loop.state, loop.aux, loop.error, loop.active, loop.status,
                           loop.iterations, loop.memory, loop.initial_error,
                           loop.best_state, loop.best_error)
        except Exception as exc:  # the compiler's failure is not the user's: run eagerly
            warnings.warn(
                f"{type(optimizer).__name__}.optimize(compile=True): torch.compile could not "
                f"compile the iterations ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                f"running them eagerly",
                RuntimeWarning,
            )
            cache[key] = _FAILED
            break
        (loop.state, loop.error, loop.active, loop.status, loop.iterations, loop.memory,
         best_state, best_error, new_history) = out
        if loop.best_state is not None:
            loop.best_state, loop.best_error = best_state, best_error
        if loop.history is not None:
            loop.history.extend(new_history)
        done += size
        loop.count += size
        if loop.verbose:
            print(f"iteration {loop.count:3d}  error {loop.error.mean().item():.6e}  (compiled chunk "
                  f"of {size})")
        if stop_on_convergence and not bool(loop.active.any()):
            return
    optimizer._run(loop, num_iterations - done, stop_on_convergence)


def _failed(*args, **kwargs):  # marker: this chunk could not be compiled
    raise RuntimeError("unreachable")


_FAILED = _failed
