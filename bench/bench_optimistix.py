"""nlls beside Optimistix (JAX) on CPU or GPU: batched fixed-iteration solves, forward and backward.

``--device cpu`` (the default) or ``--device cuda``.

Three problems, ``B`` independent fits solved together, each method running a fixed number of
iterations from the same start:

* ``quadratic``   (``bench_curve_fit.py``): y = a x^2 + b, 100 points, Gauss-Newton, 15 it., float32;
* ``exponential`` (``bench_curve_fit.py``): y = a exp(-b x) + c, 100 points, LM, 20 it., float64;
* ``rotation`` (tutorial 04): a rotation from 20 noisy point pairs ``q_k = R p_k + noise``, LM,
  20 iterations, float64, from the identity.

Methods: ``handwritten`` (a vectorized torch loop: the speed limit), ``nlls_analytic`` (eager
``optimize()``), ``nlls_analytic_compiled`` (``optimize(compile=True)``) and ``optimistix``
(``jax.jit(jax.vmap(solve))`` around ``optimistix.least_squares``). Optimistix runs in a child
process with the JAX venv's python (``bench/_optimistix_runner.py``), so JAX and torch never
share a process; the parent sends it one command per timed call, so its calls are interleaved
with the torch calls like the others. Forward + backward: ``nlls.OptimizationLayer`` (implicit)
against ``jax.value_and_grad`` through ``optimistix.least_squares`` (implicit adjoint) on the
quadratic fit. One JSON line per measurement on stdout, a markdown table on stderr, the lines
also in ``bench/results/optimistix_<device>.jsonl``. See bench/README.md.

On ``--device cuda`` the torch data and solves live on the GPU, every torch timing synchronizes,
and the methods are the CUDA ones: ``handwritten``, ``handwritten_cuda_graph`` (the loop captured
in one ``torch.cuda.CUDAGraph``), ``nlls_analytic``, ``nlls_analytic_cuda_graph``
(``optimize(cuda_graph=True)``), ``optimistix`` (JAX on its GPU backend, else skipped); forward +
backward: ``handwritten_unroll``, ``nlls_implicit``, ``nlls_implicit_cuda_graph``,
``optimistix_implicit``.

    python3 -m venv .venv-jax && .venv-jax/bin/pip install "jax[cpu]" optimistix numpy
    .venv/bin/python bench/bench_optimistix.py            # ~4-6 min (first run: + compilation)
    .venv/bin/python bench/bench_optimistix.py --quick    # smoke run
    python bench/bench_optimistix.py --device cuda --jax-python "$(which python)"   # on a GPU
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402
from nlls.geometry.so3 import log_matrix  # noqa: E402
from bench_curve_fit import (PROBLEMS as CURVE_PROBLEMS, _AnalyticFit, _paired_median,  # noqa: E402
                             handwritten_gauss_newton, handwritten_levenberg_marquardt, make_data)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "bench", "_optimistix_runner.py")
DEFAULT_JAX_PYTHON = os.path.join(ROOT, ".venv-jax", "bin", "python")
DEFAULT_OUTPUT = os.path.join(ROOT, "bench", "results", "optimistix_{device}.jsonl")
FORWARD_METHODS = ("handwritten", "handwritten_cuda_graph", "nlls_analytic", "nlls_analytic_compiled",
                   "nlls_analytic_cuda_graph", "optimistix")
GRAD_METHODS = ("handwritten_unroll", "nlls_implicit", "nlls_implicit_compiled",
                "nlls_implicit_cuda_graph", "optimistix_implicit")
# what runs by default on each device: the compiled methods are the CPU way to cut overhead, the
# CUDA-graph ones the GPU way (on CUDA the compiled ones print a skipped line unless named)
DEFAULT_METHODS = {
    "cpu": (("handwritten", "nlls_analytic", "nlls_analytic_compiled", "optimistix"),
            ("handwritten_unroll", "nlls_implicit", "nlls_implicit_compiled", "optimistix_implicit")),
    "cuda": (("handwritten", "handwritten_cuda_graph", "nlls_analytic", "nlls_analytic_compiled",
              "nlls_analytic_cuda_graph", "optimistix"),
             ("handwritten_unroll", "nlls_implicit", "nlls_implicit_compiled",
              "nlls_implicit_cuda_graph", "optimistix_implicit")),
}
# each CUDA-graph method and the eager method whose results it must reproduce
EAGER_OF = {"handwritten_cuda_graph": "handwritten", "nlls_analytic_cuda_graph": "nlls_analytic",
            "nlls_implicit_cuda_graph": "nlls_implicit"}


# ---- the rotation fit ------------------------------------------------------------------------
def hat(w: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` skew matrices of ``w (..., 3)``."""
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*w.shape, 3)


def rodrigues(w: torch.Tensor) -> torch.Tensor:
    """``exp(hat(w))`` for ``w (B, 3)``; Taylor coefficients below a tiny angle."""
    theta2 = (w * w).sum(-1)
    small = theta2 < 1e-8
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)[:, None, None]
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta * theta))[:, None, None]
    W = hat(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * W + b * (W @ W)


class Rotation:
    """``r_k = R p_k - q_k`` for ``N`` point pairs, ``R`` moved on the right: ``R <- R exp(d)``."""

    name, dof, optimizer, iterations, dtype = "rotation", 3, "levenberg_marquardt", 20, torch.float64
    num_pairs, noise = 20, 0.01

    @staticmethod
    def residual(R, p, q):
        """``(B, 3N)``: the rotated points minus their partners."""
        return (p @ R.transpose(1, 2) - q).reshape(p.shape[0], -1)

    @staticmethod
    def jacobian(R, p):
        """``(B, 3N, 3)``: ``d(R exp(d) p)/dd = -R hat(p)`` at ``d = 0``."""
        return -(R[:, None] @ hat(p)).reshape(p.shape[0], -1, 3)

    def data(self, batch, device, seed=0):
        """True rotations (uniform, angles up to pi), points ``p``, noisy ``q`` ``(B, N, 3)``."""
        generator = torch.Generator().manual_seed(seed)
        truth = nlls.SO3.rand(batch, generator, dtype=torch.float64).tensor
        p = torch.randn(batch, self.num_pairs, 3, generator=generator, dtype=torch.float64)
        q = p @ truth.transpose(1, 2)
        q = q + self.noise * torch.randn(q.shape, generator=generator, dtype=torch.float64)
        identity = torch.eye(3, dtype=torch.float64).expand(batch, 3, 3).contiguous()
        cast = lambda t: t.to(device=device, dtype=self.dtype).contiguous()  # noqa: E731
        return cast(p), cast(q), cast(truth), cast(identity)


ROTATION = Rotation()
PROBLEMS = {**CURVE_PROBLEMS, "rotation": ROTATION}


def handwritten_lm(residual, jacobian, retract, start, dof, iterations, solve=torch.cholesky_solve,
                   damping=1e-3, min_relative_decrease=1e-3):
    """Batched LM with nlls' default rule (identity damping, gain ratio, Nielsen's update), as
    ``handwritten_levenberg_marquardt`` in bench_curve_fit.py, for any unknown: ``residual(x)``
    ``(B, M)``, ``jacobian(x)`` ``(B, M, dof)``, ``retract(x, delta)`` the step. One residual and
    Jacobian, one damped Cholesky solve (``solve(rhs, factor)``), one residual at the candidate
    per iteration."""
    x = start
    lam = torch.full(start.shape[:1], damping, dtype=start.dtype, device=start.device)
    growth = torch.full_like(lam, 2.0)
    eye = torch.eye(dof, dtype=start.dtype, device=start.device)
    keep_shape = (-1,) + (1,) * (start.dim() - 1)  # accept (B,) against x (B, ...)
    r = residual(x)
    err = 0.5 * (r * r).sum(1)
    for _ in range(iterations):
        jac, r = jacobian(x), residual(x)
        jt = jac.transpose(1, 2)
        A, g = torch.bmm(jt, jac), torch.bmm(jt, r[..., None])
        factor, info = torch.linalg.cholesky_ex(A + lam[:, None, None] * eye)
        delta = -solve(g, factor)
        candidate = retract(x, delta[..., 0])
        r_new = residual(candidate)
        err_new = 0.5 * (r_new * r_new).sum(1)
        predicted = -(g + 0.5 * torch.bmm(A, delta)).mul(delta).sum((1, 2))
        actual = err - err_new
        ratio = actual / torch.where(predicted > 0, predicted, torch.ones_like(predicted))
        accept = (info == 0) & torch.isfinite(err_new) & torch.where(
            predicted > 0, ratio > min_relative_decrease, actual >= 0)
        shrink = (1.0 - (2.0 * ratio - 1.0) ** 3).clamp_min(1.0 / 3.0)
        lam = torch.where(accept, lam * shrink, lam * growth)
        growth = torch.where(accept, torch.full_like(growth, 2.0), growth * 2.0)
        x = torch.where(accept.reshape(keep_shape), candidate, x)
        err = torch.where(accept, err_new, err)
    return x


def handwritten_rotation_lm(R, p, q, iterations, solve=torch.cholesky_solve):
    """Batched LM on rotations, the step applied as ``R exp(delta)``."""
    return handwritten_lm(lambda X: ROTATION.residual(X, p, q), lambda X: ROTATION.jacobian(X, p),
                          lambda X, delta: X @ rodrigues(delta), R, 3, iterations, solve)


def triangular_cholesky_solve(rhs: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``torch.cholesky_solve(rhs, factor)`` (lower ``factor``) as two triangular solves:
    ``cholesky_solve`` cannot be captured in a CUDA graph, ``solve_triangular`` can."""
    z = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, z, upper=True)


def capturable_loop(problem) -> Callable:
    """The hand-written loop of ``problem`` as ``f(start, a, b)`` with only capturable
    operations (the Cholesky solve by two triangular solves), for ``handwritten_cuda_graph``."""
    if problem is ROTATION:
        return lambda R, p, q: handwritten_rotation_lm(R, p, q, problem.iterations,
                                                       triangular_cholesky_solve)
    if problem.optimizer == "gauss_newton":
        return lambda start, x, y: handwritten_gauss_newton(problem, start, x, y, problem.iterations,
                                                            triangular_cholesky_solve)
    return lambda start, x, y: handwritten_lm(
        lambda P: problem.residual(P, x, y), lambda P: problem.jacobian(P, x),
        lambda P, delta: P + delta, start, problem.dof, problem.iterations,
        triangular_cholesky_solve)


class RotationFit(nlls.CostFunction):
    """All ``N`` pairs of one problem as one cost function of dimension ``3N``, with the same
    residual and Jacobian functions as the hand-written loop."""

    def __init__(self, rotation, p, q, name=None):
        super().__init__(optim_vars=(rotation,), aux_vars=(p, q), name=name)
        self.rotation, self.p, self.q = rotation, p, q

    def dim(self):
        return 3 * self.p.shape[1]

    def error(self):
        return ROTATION.residual(self.rotation.tensor, self.p.tensor, self.q.tensor)

    def jacobians(self):
        return [ROTATION.jacobian(self.rotation.tensor, self.p.tensor)], self.error()


def _angle_between(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """``(B,)`` angle of ``Ra^T Rb`` in radians."""
    return log_matrix(Ra.transpose(1, 2) @ Rb).norm(dim=-1)


# ---- nlls: one objective per measurement, built once ---------------------------------------------
def _fixed_count(iterations: int) -> dict:
    """Tolerances 0 and one "all done?" check at the end, as in bench_curve_fit.py."""
    return dict(max_iterations=iterations, abs_err_tolerance=0.0, rel_err_tolerance=0.0,
                check_every=max(iterations, 1))


def build_nlls(problem, start, a, b):
    """``(objective, optimizer, name of the unknown)``: ``a, b`` are ``x, y`` (curve fits) or
    ``p, q`` (rotation)."""
    objective = nlls.Objective()
    if problem is ROTATION:
        unknown = nlls.SO3(start.clone(), name="R")
        objective.add(RotationFit(unknown, nlls.Variable(a, name="x"), nlls.Variable(b, name="y"),
                                  name="fit"))
        name = "R"
    else:
        unknown = nlls.Vector(tensor=start.clone(), name="p")
        objective.add(_AnalyticFit(problem, unknown, nlls.Variable(a, name="x"),
                                   nlls.Variable(b, name="y"), name="fit"))
        name = "p"
    kwargs = _fixed_count(problem.iterations)
    if problem.optimizer == "gauss_newton":
        optimizer = nlls.GaussNewton(objective, **kwargs)
    else:
        optimizer = nlls.LevenbergMarquardt(objective, damping=1e-3, **kwargs)
    return objective, optimizer, name


def compile_supported(function=nlls.Optimizer.optimize, argument: str = "compile") -> Optional[str]:
    """None if ``function`` (``optimize()``, ``OptimizationLayer.forward``) takes ``argument``
    (``compile``, ``cuda_graph``); else why not."""
    if argument in inspect.signature(function).parameters:
        return None
    return f"this nlls: {function.__qualname__}() has no `{argument}` argument yet"


def nlls_run(problem, start, a, b, compile: bool, cuda_graph: bool = False):
    objective, optimizer, name = build_nlls(problem, start, a, b)
    unknown = objective.optim_vars[name]
    kwargs = {"compile": True} if compile else {}
    if cuda_graph:
        kwargs["cuda_graph"] = True

    def run():
        objective.update({name: start})
        optimizer.optimize(**kwargs)
        return unknown.tensor
    return run


def handwritten_run(problem, start, a, b):
    if problem is ROTATION:
        return lambda: handwritten_rotation_lm(start, a, b, problem.iterations)
    loop = (handwritten_gauss_newton if problem.optimizer == "gauss_newton"
            else handwritten_levenberg_marquardt)
    return lambda: loop(problem, start, a, b, problem.iterations)


class CUDAGraphed:
    """``function(*inputs)`` captured in one ``torch.cuda.CUDAGraph``; a call copies new inputs
    into the static input buffers, replays the graph and clones the output (as nlls's
    ``cuda_graph=True`` does with its buffers). Warm-up runs go on a side stream before the
    capture (cuBLAS/cuSOLVER handles and workspaces are made there, outside the graph)."""

    def __init__(self, function: Callable, inputs, warmup: int = 3):
        self.device = inputs[0].device
        with torch.cuda.device(self.device), torch.no_grad():
            self.inputs = [t.detach().clone() for t in inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(warmup, 1)):
                    function(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = function(*self.inputs)

    def __call__(self, *inputs):
        with torch.no_grad():
            for static, new in zip(self.inputs, inputs, strict=True):
                static.copy_(new)
            self.graph.replay()
            return self.output.clone()


def handwritten_graph_run(problem, start, a, b, warmup: int):
    """``handwritten_cuda_graph``: the capturable hand-written loop captured once; returns the
    call and the capture's seconds (warm-up runs included)."""
    begin = time.perf_counter()
    graphed = CUDAGraphed(capturable_loop(problem), (start, a, b), warmup)
    torch.cuda.synchronize(graphed.device)
    return (lambda: graphed(start, a, b)), time.perf_counter() - begin


# ---- the Optimistix child process ------------------------------------------------------------------
class OptimistixChild:
    """The runner in the JAX venv, driven by JSON lines; ``error`` says why it is unusable.

    ``cuda``: the torch side runs on the GPU, so JAX must too: ``JAX_PLATFORMS`` is not forced
    to ``cpu``, JAX does not preallocate GPU memory (torch shares the GPU), and a JAX whose
    default backend is not the GPU makes ``error`` say so (Optimistix is then skipped, never
    compared on the CPU against torch on the GPU)."""

    def __init__(self, python: str, pin: Optional[List[int]], workdir: str, cuda: bool = False):
        self.proc, self.error, self.info = None, None, {}
        self.workdir = workdir
        self.stderr_path = os.path.join(workdir, "optimistix_runner.stderr")
        if not os.path.exists(python):
            self.error = (f"no python at {python} (--jax-python: one with jax for CUDA and optimistix)"
                          if cuda else f"no JAX venv at {python} (python3 -m venv .venv-jax && "
                          f".venv-jax/bin/pip install 'jax[cpu]' optimistix numpy)")
            return
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        if cuda:
            env["NLLS_BENCH_DEVICE"] = "cuda"  # the runner then leaves JAX_PLATFORMS alone
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        else:
            env["JAX_PLATFORMS"] = "cpu"
        if pin:
            env["NLLS_BENCH_PIN_CPUS"] = ",".join(str(c) for c in pin)
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([python, RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, env=env, cwd=ROOT)
        try:
            self.info = self.ask({"cmd": "hello"})
        except RuntimeError as exc:
            self.error = f"Optimistix runner does not start ({python}): {exc}"
            return
        backend = self.info.get("backend")
        if cuda and backend not in ("gpu", "cuda"):
            self.error = (f"JAX in {python} runs on {backend!r} ({self.info.get('device')}), not on "
                          f"the GPU: Optimistix skipped rather than compare JAX on the CPU with "
                          f"torch on the GPU (install jax with CUDA there, or pass --jax-python)")
            self.close()

    def ask(self, command: Dict) -> Dict:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"runner not running{self._stderr_tail()}")
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"runner exited{self._stderr_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def _stderr_tail(self) -> str:
        try:
            self._stderr.flush()
            with open(self.stderr_path) as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            return f": {lines[-1][-300:]}" if lines else ""  # the exception's last line
        except OSError:
            return ""

    def close(self, kill: bool = False):
        """Ends the runner: ``quit`` and a wait, or at once with ``kill`` (when interrupted)."""
        if self.proc is not None and self.proc.poll() is None:
            if not kill:
                try:
                    self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    self.proc.stdin.flush()
                    self.proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and not self._stderr.closed:
            self._stderr.close()


class OptimistixMeasurement:
    """One problem and batch size loaded in the child; ``run()`` times one call there."""

    _count = 0

    def __init__(self, child: OptimistixChild, problem: str, iterations: int, mode: str,
                 arrays: Dict[str, np.ndarray]):
        OptimistixMeasurement._count += 1
        self.child, self.key = child, f"m{OptimistixMeasurement._count}"
        path = os.path.join(child.workdir, f"{self.key}.npz")
        np.savez(path, **arrays)
        self.loaded = child.ask({"cmd": "load", "key": self.key, "npz": path, "problem": problem,
                                 "iterations": iterations, "mode": mode})
        self.cpu_ms: List[float] = []

    def run(self) -> float:
        answer = self.child.ask({"cmd": "run", "key": self.key})
        self.cpu_ms.append(answer["cpu_ms"])
        return answer["ms"]

    def result(self) -> Dict[str, np.ndarray]:
        path = os.path.join(self.child.workdir, f"{self.key}_out.npz")
        self.child.ask({"cmd": "save", "key": self.key, "out": path})
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def drop(self):
        self.child.ask({"cmd": "drop", "key": self.key})


# ---- timing ----------------------------------------------------------------------------------
class Pinned:
    """Pins this process to ``cpus`` inside the block (the child is pinned to the same)."""

    def __init__(self, cpus: Optional[List[int]]):
        self.cpus, self.saved = cpus, None

    def __enter__(self):
        if self.cpus:
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, set(self.cpus))

    def __exit__(self, *exc):
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


def wall_ms(function: Callable, sync: Optional[Callable[[], None]] = None) -> Callable[[], float]:
    """A timer of ``function``; ``sync`` (CUDA: ``torch.cuda.synchronize``) runs before the clock
    starts and before it stops, so the GPU work queued by the call is inside the time."""
    def timed():
        if sync is not None:
            sync()
        begin = time.perf_counter()
        function()
        if sync is not None:
            sync()
        return 1e3 * (time.perf_counter() - begin)
    return timed


def interleaved(timers: Dict[str, Callable[[], float]], repeats: int, max_seconds: float,
                pin: Optional[List[int]]) -> Dict[str, List[float]]:
    """One call of each timer per repetition (ms each), up to ``repeats`` or ``max_seconds``."""
    times: Dict[str, List[float]] = {name: [] for name in timers}
    spent = 0.0
    with Pinned(pin):
        for _ in range(repeats):
            for name, timer in timers.items():
                times[name].append(timer())
                spent += times[name][-1] / 1e3
            if spent >= max_seconds:
                break
    return times


def _counters() -> Dict[str, int]:
    try:
        from torch._dynamo.utils import counters
        return {"graphs": int(counters["stats"]["unique_graphs"]),
                **{k: int(v) for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}}
    except Exception:
        return {}


def warm_compiled(run: Callable, warmup: int) -> Dict:
    """The warm-up calls of a compiled solve, which compile it: ``compile_s`` is their time
    beyond that of as many warm calls (the first call compiles; nlls's one-off Jacobian check
    makes the second recompile), ``first_call_s`` the first one's.

    ``torch._dynamo.reset()`` first: every compiled chunk of nlls shares one code object, and
    dynamo stops compiling a code object (silently running it eagerly) after
    ``torch._dynamo.config.recompile_limit`` (8) variants, which the measurements of one run
    would exceed.
    """
    torch._dynamo.reset()
    before = _counters()
    times = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(1 + max(warmup, 2)):
            begin = time.perf_counter()
            run()
            times.append(time.perf_counter() - begin)
    fallbacks = [str(w.message) for w in caught if "could not compile" in str(w.message)]
    after = _counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    stats = {"compile_s": round(sum(times) - len(times) * min(times), 2),
             "first_call_s": round(times[0], 2), "compiled_graphs": delta.get("graphs", 0)}
    if delta.get("fxgraph_cache_hit") or delta.get("fxgraph_cache_miss"):
        stats["inductor_cache_hits"] = delta.get("fxgraph_cache_hit", 0)
        stats["inductor_cache_misses"] = delta.get("fxgraph_cache_miss", 0)
    if fallbacks:
        stats["compile_fallback"] = fallbacks[0][:300]
    elif not delta.get("graphs"):
        stats["compile_fallback"] = "torch.compile produced no graph: the iterations ran eagerly"
    return stats


# ---- measurements ------------------------------------------------------------------------------
def _warm_up(method: str, run: Callable, args, extra: Dict) -> None:
    """The warm-up calls of a torch method; a compiled or CUDA-graph nlls method compiles or
    captures in its first ones, and ``extra[method]`` gets what that cost."""
    if method.startswith("nlls") and method.endswith("compiled"):
        extra[method] = warm_compiled(run, args.warmup)
    elif method.startswith("nlls") and method.endswith("cuda_graph"):
        extra[method] = warm_captured(run, args.warmup, args.sync)
    for _ in range(args.warmup):
        run()


def emit(record: Dict, rows: List[Dict], out) -> None:
    line = json.dumps({"bench": "optimistix", **record})
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()
    rows.append(record)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-7


def _unavailable(method: str, args, given: bool) -> Optional[str]:
    """Why ``method`` does not run in this configuration (None if it does); ``given``: the
    method list was given on the command line."""
    function = nlls.OptimizationLayer.forward if method.startswith("nlls_implicit") \
        else nlls.Optimizer.optimize
    if method.endswith("_cuda_graph"):
        if not args.cuda:
            return "cuda_graph=True needs --device cuda (a CUDA graph captures GPU kernels)"
        return compile_supported(function, "cuda_graph") if method.startswith("nlls") else None
    if method.endswith("_compiled"):
        if args.cuda and not given:
            return ("torch.compile is this bench's CPU method; on CUDA it measures cuda_graph=True "
                    "instead (name the method in --methods / --grad-methods to run it anyway)")
        return compile_supported(function)
    return None


def warm_captured(run: Callable, warmup: int, sync: Optional[Callable[[], None]]) -> Dict:
    """The warm-up calls of a ``cuda_graph=True`` solve: the first one captures the graph (after
    one eager run of the solve) and replays it. ``capture_s``: its time beyond a warm call."""
    times = []
    for _ in range(1 + max(warmup, 1)):
        if sync is not None:
            sync()
        begin = time.perf_counter()
        run()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - begin)
    return {"capture_s": round(times[0] - min(times[1:]), 3), "first_call_s": round(times[0], 3)}


def _failure(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:240] if str(exc) else ""
    return f"failed: {type(exc).__name__}: {text}"


def _param_diff(problem, reference: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
    """``(B,)`` distance of two solutions on the CPU: parameters' max abs difference, or the
    angle between the rotations (rad)."""
    if problem is ROTATION:
        return _angle_between(reference, solution.to(reference.dtype))
    return (solution.to(reference.dtype) - reference).abs().amax(-1)


def bench_forward(problem, batch, args, child, rows, out):
    """Every forward method on one problem and batch size, interleaved."""
    device = args.device
    if problem is ROTATION:
        a, b, _, start = ROTATION.data(batch, device, seed=args.seed)
        optx_start = np.zeros((batch, 3), dtype=np.float64)  # axis-angle of the identity
    else:
        a, b, _, start = make_data(problem, batch, args.num_points, device, seed=args.seed)
        optx_start = start.cpu().numpy()
    base = {"problem": problem.name, "measure": "forward", "batch_size": batch,
            "iterations": problem.iterations, "optimizer": problem.optimizer,
            "dtype": str(problem.dtype).replace("torch.", ""), "device": str(device),
            "threads": torch.get_num_threads()}
    timers: Dict[str, Callable[[], float]] = {}
    results: Dict[str, Callable[[], torch.Tensor]] = {}
    extra: Dict[str, Dict] = {}
    skipped: Dict[str, str] = {}
    for method in args.methods:
        if why := _unavailable(method, args, args.methods_given):
            skipped[method] = why
            continue
        if method == "optimistix":
            if child.error:
                skipped[method] = child.error
                continue
            try:
                measurement = OptimistixMeasurement(
                    child, problem.name, problem.iterations, "forward",
                    {"start": optx_start, "x": a.cpu().numpy(), "y": b.cpu().numpy()})
            except RuntimeError as exc:
                skipped[method] = f"Optimistix failed: {exc}"
                continue
            loaded = measurement.loaded
            extra[method] = {"compile_s": round(loaded["compile_ms"] / 1e3, 2),
                             "optimistix_steps": loaded["num_steps"], "optimistix_dtype": loaded["dtype"]}
            timers[method] = measurement.run
            results[method] = measurement
            continue
        try:
            if method == "handwritten":
                run = handwritten_run(problem, start, a, b)
            elif method == "handwritten_cuda_graph":
                run, seconds = handwritten_graph_run(problem, start, a, b, warmup=1)
                extra[method] = {"capture_s": round(seconds, 3)}
            elif method in ("nlls_analytic", "nlls_analytic_compiled", "nlls_analytic_cuda_graph"):
                compiled, graphed = method.endswith("compiled"), method.endswith("cuda_graph")
                run = nlls_run(problem, start, a, b, compile=compiled, cuda_graph=graphed)
            else:
                continue
            _warm_up(method, run, args, extra)
        except Exception as exc:  # a failed capture or an out-of-memory: the others still run
            skipped[method] = _failure(exc)
            continue
        timers[method], results[method] = wall_ms(run, args.sync), run
    times = interleaved(timers, args.repeats, args.max_seconds, args.pin)
    solutions: Dict[str, torch.Tensor] = {}  # on the CPU, for the comparisons
    for method in times:
        if method == "optimistix":
            measurement = results[method]
            solution = torch.as_tensor(measurement.result()["solution"])
            extra[method]["optimistix_cpu_per_wall"] = round(
                sum(measurement.cpu_ms) / max(sum(times[method]), 1e-9), 2)
            measurement.drop()
            if problem is ROTATION:
                solution = rodrigues(solution.to(torch.float64))
        else:
            solution = results[method]().cpu()
        solutions[method] = solution
    reference = solutions.get("handwritten")
    tolerance = _tolerance(problem.dtype)
    for method in args.methods:
        if method in skipped:
            emit({**base, "method": method, "skipped": skipped[method]}, rows, out)
            continue
        if method not in times:
            continue
        record = _timing_record(base, method, times, extra,
                                (("handwritten", "handwritten"), ("optimistix", "optimistix")))
        solution = solutions[method]
        if reference is not None:
            diff = _param_diff(problem, reference, solution)
            record["max_param_diff_to_handwritten"] = float(diff.max())
            record["elements_differing"] = int((diff > tolerance).sum())
        eager = solutions.get(EAGER_OF.get(method, ""))
        if eager is not None:  # a CUDA-graph method against its eager counterpart
            diff = _param_diff(problem, eager, solution)
            record["max_param_diff_to_eager"] = float(diff.max())
            record["elements_differing_from_eager"] = int((diff > tolerance).sum())
        emit(record, rows, out)


def _timing_record(base, method, times, extra, references):
    """The JSON record of one method: its median time and its ratios to the ``references``
    (pairs of timed method and the name used in the keys) measured beside it."""
    record = {**base, "method": method, "median_ms": round(statistics.median(times[method]), 4),
              "repeats": len(times[method])}
    for ref, key in references:
        if ref in times:
            record[f"{key}_ms"] = round(statistics.median(times[ref]), 4)
            record[f"ratio_to_{key}"] = round(_paired_median(times[method], times[ref]), 3)
    record.update(extra.get(method, {}))
    return record


def _grad_diffs(got, reference):
    """Max abs difference of the solutions, relative norm difference of the gradients."""
    param = float((got[0] - reference[0]).abs().max())
    grads = torch.cat([g.reshape(-1) for g in got[1:]]).double()
    ref_grads = torch.cat([g.reshape(-1) for g in reference[1:]]).double()
    return param, float((grads - ref_grads).norm() / ref_grads.norm())


def bench_grad(batch, args, child, rows, out):
    """Forward + backward of ``sum(v * p*)`` w.r.t. the data ``x, y`` on the quadratic fit."""
    problem = CURVE_PROBLEMS["quadratic"]
    device = args.device
    x, y, _, start = make_data(problem, batch, args.num_points, device, seed=args.seed)
    v = torch.randn(batch, problem.dof, generator=torch.Generator().manual_seed(args.seed + 1),
                    dtype=torch.float64).to(device=device, dtype=problem.dtype)
    base = {"problem": problem.name, "measure": "forward_backward", "batch_size": batch,
            "iterations": problem.iterations, "optimizer": problem.optimizer,
            "dtype": str(problem.dtype).replace("torch.", ""), "device": str(device),
            "threads": torch.get_num_threads()}
    timers, results, extra, skipped = {}, {}, {}, {}

    def torch_grad(forward):
        def run():
            xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
            solution = forward(xg, yg)
            gx, gy = torch.autograd.grad((v * solution).sum(), (xg, yg))
            return solution.detach(), gx, gy
        return run

    for method in args.grad_methods:
        if why := _unavailable(method, args, args.grad_methods_given):
            skipped[method] = why
            continue
        if method == "optimistix_implicit":
            if child.error:
                skipped[method] = child.error
                continue
            try:
                measurement = OptimistixMeasurement(
                    child, problem.name, problem.iterations, "grad",
                    {"start": start.cpu().numpy(), "x": x.cpu().numpy(), "y": y.cpu().numpy(),
                     "v": v.cpu().numpy()})
            except RuntimeError as exc:
                skipped[method] = f"Optimistix failed: {exc}"
                continue
            extra[method] = {"compile_s": round(measurement.loaded["compile_ms"] / 1e3, 2),
                             "optimistix_steps": measurement.loaded["num_steps"]}
            timers[method], results[method] = measurement.run, measurement
            continue
        try:
            if method == "handwritten_unroll":
                run = torch_grad(lambda xg, yg: handwritten_gauss_newton(problem, start, xg, yg,
                                                                         problem.iterations))
            elif method in ("nlls_implicit", "nlls_implicit_compiled", "nlls_implicit_cuda_graph"):
                compiled, graphed = method.endswith("compiled"), method.endswith("cuda_graph")
                layer = nlls.OptimizationLayer(build_nlls(problem, start, x, y)[1],
                                               backward_mode="implicit")
                kwargs = {"compile": True} if compiled else {"cuda_graph": True} if graphed else {}
                run = torch_grad(lambda xg, yg, layer=layer, kwargs=kwargs:
                                 layer({"p": start, "x": xg, "y": yg}, **kwargs)[0]["p"])
            else:
                continue
            _warm_up(method, run, args, extra)
        except Exception as exc:  # a failed capture or an out-of-memory: the others still run
            skipped[method] = _failure(exc)
            continue
        timers[method], results[method] = wall_ms(run, args.sync), run
    times = interleaved(timers, args.repeats, args.max_seconds, args.pin)
    solutions = {}  # (solution, grad_x, grad_y) on the CPU
    for method in times:
        if method == "optimistix_implicit":
            arrays = results[method].result()
            results[method].drop()
            solutions[method] = tuple(torch.as_tensor(arrays[k]) for k in ("solution", "grad_x", "grad_y"))
        else:
            solutions[method] = tuple(t.cpu() for t in results[method]())
    reference = solutions.get("handwritten_unroll")
    for method in args.grad_methods:
        if method in skipped:
            emit({**base, "method": method, "skipped": skipped[method]}, rows, out)
            continue
        if method not in times:
            continue
        record = _timing_record(base, method, times, extra,
                                (("handwritten_unroll", "handwritten"), ("optimistix_implicit", "optimistix")))
        got = solutions[method]
        if reference is not None:
            record["max_param_diff_to_handwritten"], record["grad_rel_diff"] = _grad_diffs(got, reference)
        eager = solutions.get(EAGER_OF.get(method, ""))
        if eager is not None:  # a CUDA-graph method against its eager counterpart
            record["max_param_diff_to_eager"], record["grad_rel_diff_to_eager"] = _grad_diffs(got, eager)
        emit(record, rows, out)


def markdown_table(rows: List[Dict], cuda: bool = False) -> str:
    """The table of this run; on CUDA the last column also holds ``capture_s`` (CUDA graphs)
    and the Δ column the CUDA-graph methods' difference to their eager counterparts."""
    lines = ["| problem | measure | B | method | median ms | × hand-written | × Optimistix | "
             f"max Δ to hand-written | {'compile / capture s' if cuda else 'compile s'} |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "median_ms" not in r:
            lines.append(f"| {r['problem']} | {r['measure']} | {r['batch_size']} | {r['method']} | "
                         f"skipped: {r['skipped'][:80]} | | | | |")
            continue
        def fmt(key, spec, r=r):
            return format(r[key], spec) if key in r else "–"
        diff = fmt("max_param_diff_to_handwritten", ".1e")
        if "grad_rel_diff" in r:
            diff += f" (grad {r['grad_rel_diff']:.1e})"
        if "max_param_diff_to_eager" in r:
            diff += f"; eager {r['max_param_diff_to_eager']:.1e}"
            if "grad_rel_diff_to_eager" in r:
                diff += f" (grad {r['grad_rel_diff_to_eager']:.1e})"
        seconds = fmt("compile_s", ".1f") if "compile_s" in r or not cuda else fmt("capture_s", ".2f")
        lines.append(f"| {r['problem']} | {r['measure']} | {r['batch_size']} | {r['method']} | "
                     f"{r['median_ms']:.3f} | {fmt('ratio_to_handwritten', '.2f')} | "
                     f"{fmt('ratio_to_optimistix', '.2f')} | {diff} | {seconds} |")
    return "\n".join(lines)


def acceptance(rows: List[Dict]) -> str:
    """Issue 9's CPU acceptance, read off this run's lines."""
    out = []
    forward = {(r["problem"], r["batch_size"], r["method"]): r for r in rows
               if r.get("measure") == "forward" and "median_ms" in r}
    batches = sorted({k[1] for k in forward})
    for method in ("nlls_analytic", "nlls_analytic_compiled"):
        if batches and batches[-1] >= 4096:
            for problem in PROBLEMS:
                r = forward.get((problem, batches[-1], method))
                if r and "ratio_to_optimistix" in r:
                    ok = r["ratio_to_optimistix"] <= 1.0
                    out.append(f"B={batches[-1]} {problem} {method}: {r['ratio_to_optimistix']:.2f}× "
                               f"Optimistix -> {'holds' if ok else 'FAILS'} (≤ 1)")
        for problem in PROBLEMS:
            r = forward.get((problem, 1, method))
            if r and "ratio_to_handwritten" in r:
                ok = r["ratio_to_handwritten"] <= 2.0
                out.append(f"B=1 {problem} {method}: {r['ratio_to_handwritten']:.2f}× hand-written "
                           f"-> {'holds' if ok else 'FAILS'} (≤ 2)")
    return "\n".join(out)


GPU_ACCEPTANCE = (("quadratic", "exponential"), (1, 256, 4096))


def acceptance_gpu(rows: List[Dict]) -> str:
    """The GPU acceptance, read off this run's lines: nlls with ``cuda_graph=True`` no slower
    than Optimistix at B = 1, 256 and 4096 on the quadratic and exponential fits, and its
    solutions equal to those of eager nlls (``nlls_analytic``) to float tolerance."""
    out, verdicts = [], []
    forward = {(r["problem"], r["batch_size"], r["method"]): r for r in rows
               if r.get("measure") == "forward"}
    method = "nlls_analytic_cuda_graph"
    problems, batches = GPU_ACCEPTANCE
    for problem in problems:
        tolerance = _tolerance(PROBLEMS[problem].dtype)
        for batch in batches:
            label = f"B={batch} {problem} {method}"
            r = forward.get((problem, batch, method))
            if r is None or "skipped" in r:
                out.append(f"{label}: " + (f"skipped ({r['skipped'][:80]})" if r else "not measured"))
                verdicts.append(None)
                continue
            if "ratio_to_optimistix" in r:
                ok = r["ratio_to_optimistix"] <= 1.0
                out.append(f"{label}: {r['ratio_to_optimistix']:.2f}× Optimistix -> "
                           f"{'holds' if ok else 'FAILS'} (≤ 1)")
                verdicts.append(ok)
            else:
                other = forward.get((problem, batch, "optimistix"))
                why = other["skipped"][:80] if other and "skipped" in other else "not measured"
                out.append(f"{label}: no Optimistix time to compare ({why})")
                verdicts.append(None)
            if "max_param_diff_to_eager" in r:
                ok = r["max_param_diff_to_eager"] <= tolerance
                out.append(f"{label}: max Δ to eager nlls_analytic {r['max_param_diff_to_eager']:.1e} "
                           f"-> {'holds' if ok else 'FAILS'} (≤ {tolerance:g})")
                verdicts.append(ok)
            else:
                out.append(f"{label}: no eager nlls_analytic solution to compare")
                verdicts.append(None)
    if any(v is False for v in verdicts):
        overall = "FAILS"
    elif verdicts and all(verdicts):
        overall = "holds"
    else:
        overall = "incomplete (a measurement above is missing)"
    out.append(f"overall: {overall}")
    return "\n".join(out)


def setup_device(name: str):
    """``(device, cuda, sync)`` for ``--device``: the torch device, whether it is a GPU, and the
    function every torch timing calls before starting and before stopping its clock (None on
    the CPU). Raises ValueError with the reason when the device cannot be used."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {name!r}: {exc}") from None
    if device.type == "cpu":
        return device, False, None
    if device.type != "cuda":
        raise ValueError(f"--device {name!r}: cpu or cuda")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (torch {torch.__version__}, "
                         f"built with CUDA {torch.version.cuda})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: no CUDA device {device.index} "
                         f"({torch.cuda.device_count()} visible)")
    return device, True, lambda: torch.cuda.synchronize(device)


class Interrupted(BaseException):
    """SIGTERM (``timeout``): stop measuring, print what was measured."""


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default=None,
                        help="default 1,256,4096 (cuda: 1,256,4096,65536; --quick: 1,256)")
    parser.add_argument("--problems", default="quadratic,exponential,rotation")
    parser.add_argument("--methods", default=None,
                        help=f"forward methods, a subset of {','.join(FORWARD_METHODS)} (default: "
                             f"cpu {','.join(DEFAULT_METHODS['cpu'][0])}; cuda "
                             f"{','.join(DEFAULT_METHODS['cuda'][0])}, the compiled one skipped "
                             f"unless named here)")
    parser.add_argument("--grad-batch-sizes", default=None,
                        help="batch sizes of the forward+backward lines (quadratic), default "
                             "256,4096 (cuda: 1,256,4096; --quick: 256); '' for none")
    parser.add_argument("--grad-methods", default=None,
                        help=f"a subset of {','.join(GRAD_METHODS)} (default: as --methods, per device)")
    parser.add_argument("--num-points", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="default 15 (--quick: 3)")
    parser.add_argument("--max-seconds", type=float, default=10.0,
                        help="stop repeating a measurement after this many seconds (all methods)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--pin-cpu", type=int, default=None,
                        help="CPU both processes run the timed calls on (default on cpu: the last one "
                             "this process may use; on cuda: -1; -1: no pinning, JAX then uses every "
                             "core)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda: torch data, solves and timings on the GPU, JAX "
                             "on its GPU backend")
    parser.add_argument("--jax-python", default=None,
                        help="python with jax and optimistix, run as the child process (default "
                             ".venv-jax/bin/python; on cuda: that if it exists, else this python, "
                             "for a machine where JAX with CUDA is installed beside torch: "
                             "--jax-python \"$(which python)\")")
    parser.add_argument("--output", default=None,
                        help="JSON lines file (default bench/results/optimistix_<cpu|cuda>.jsonl); "
                             "'' for none")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: B = 1 and 256, grad at 256, 3 repeats")
    args = parser.parse_args(argv)
    try:
        args.device, args.cuda, args.sync = setup_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    kind = "cuda" if args.cuda else "cpu"
    defaults = (("batch_sizes", "1,256,4096,65536" if args.cuda else "1,256,4096", "1,256"),
                ("grad_batch_sizes", "1,256,4096" if args.cuda else "256,4096", "256"),
                ("repeats", 15, 3), ("warmup", 3, 1))
    for key, full, quick in defaults:
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.methods_given, args.grad_methods_given = args.methods is not None, args.grad_methods is not None
    for key, given, default in (("methods", args.methods_given, DEFAULT_METHODS[kind][0]),
                                ("grad_methods", args.grad_methods_given, DEFAULT_METHODS[kind][1])):
        value = getattr(args, key) if given else ",".join(default)
        setattr(args, key, [m for m in value.split(",") if m])
    unknown = sorted(set(args.methods) - set(FORWARD_METHODS)) + \
        sorted(set(args.grad_methods) - set(GRAD_METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}")
    problems = [p for p in args.problems.split(",") if p]
    if set(problems) - set(PROBLEMS):
        parser.error(f"unknown problems {sorted(set(problems) - set(PROBLEMS))}; "
                     f"choose from {sorted(PROBLEMS)}")
    if args.jax_python is None:
        args.jax_python = (DEFAULT_JAX_PYTHON if not args.cuda or os.path.exists(DEFAULT_JAX_PYTHON)
                           else sys.executable)
    if args.output is None:
        args.output = DEFAULT_OUTPUT.format(device=kind)
    torch.set_num_threads(max(args.threads, 1))
    if args.pin_cpu is None:
        args.pin_cpu = -1 if args.cuda else max(os.sched_getaffinity(0))
    args.pin = None if args.pin_cpu < 0 else [args.pin_cpu]
    rows: List[Dict] = []
    out = None
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        out = open(args.output, "w")
    started = time.perf_counter()
    interrupted = None
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="nlls_optimistix_") as workdir:
            child = OptimistixChild(args.jax_python, args.pin, workdir, cuda=args.cuda)
            versions = {"torch": torch.__version__, "pin_cpu": args.pin_cpu,
                        **{k: v for k, v in child.info.items() if k in
                           ("jax", "jaxlib", "optimistix", "lineax", "equinox", "cpus")}}
            if "backend" in child.info:
                versions["jax_backend"] = child.info["backend"]
            if args.cuda:
                versions.update(device=str(args.device), torch_cuda=torch.version.cuda,
                                gpu=torch.cuda.get_device_name(args.device),
                                jax_python=args.jax_python, jax_device=child.info.get("device"))
            if child.error:
                versions["optimistix_skipped"] = child.error
            emit({"measure": "setup", **versions}, rows, out)
            try:
                for name in problems:
                    for batch in (int(b) for b in args.batch_sizes.split(",") if b):
                        bench_forward(PROBLEMS[name], batch, args, child, rows, out)
                for batch in (int(b) for b in args.grad_batch_sizes.split(",") if b):
                    bench_grad(batch, args, child, rows, out)
            except (KeyboardInterrupt, Interrupted) as exc:
                signal_name = "SIGTERM" if isinstance(exc, Interrupted) else "Ctrl-C"
                interrupted = (f"interrupted ({signal_name}): the lines above are the measurements "
                               f"finished before")
            finally:
                child.close(kill=interrupted is not None)
                if out is not None:
                    out.close()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    title = "Acceptance (GPU, cuda_graph=True)" if args.cuda else "Acceptance (issue 9, CPU)"
    verdict = acceptance_gpu(rows) if args.cuda else acceptance(rows)
    table = markdown_table([r for r in rows if r.get("measure") != "setup"], cuda=args.cuda)
    if interrupted:
        table += f"\n\n{interrupted}"
    print(table, file=sys.stderr)
    print(f"\n{title}:\n" + verdict, file=sys.stderr)
    print(f"\n{json.dumps(rows[0])}\ntotal {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.output:
        with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
            f.write(table + f"\n\n{title}:\n" + verdict + "\n")
    if interrupted:
        sys.exit(128 + (signal.SIGTERM if "SIGTERM" in interrupted else signal.SIGINT))


if __name__ == "__main__":
    main()
