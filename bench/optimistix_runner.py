"""Child process of ``bench_optimistix.py``: Optimistix solves, timed in a process of their own.

Runs with the JAX venv's python (``.venv-jax/bin/python``, or on a GPU machine any python with
jax and optimistix), never imports torch or nlls, and talks to its parent by JSON lines: one
command per line on stdin, one answer per line on stdout.

Device: JAX runs on the CPU (``JAX_PLATFORMS=cpu``) unless the parent sets
``NLLS_BENCH_DEVICE=cuda`` (``bench_optimistix.py --device cuda``); then JAX picks its default
backend, which ``hello`` reports, and the parent skips Optimistix if that is not the GPU. The
parent also sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` then, so that JAX takes GPU memory as it
needs it instead of 75 % of the card up front (torch shares the GPU).

Commands (every one has ``"cmd"``; every answer is one JSON object, ``{"error": ...}`` on failure):

* ``{"cmd": "hello"}``: versions, the CPUs this process may use, JAX's default ``backend``
  (``"cpu"``, ``"gpu"``) and its first ``device`` (with the device kind, e.g. the GPU's name).
* ``{"cmd": "load", "key": K, "npz": PATH, "problem": P, "iterations": I, "mode": M}``: read
  the data of one measurement from ``PATH`` (``start``, ``x``, ``y`` and, for ``mode = "grad"``,
  the loss weights ``v``), build ``jax.jit(jax.vmap(solve))`` (``"forward"``) or
  ``jax.jit(jax.value_and_grad(loss))`` (``"grad"``), call it once (the compilation) and a few
  times more (warm-up). Answers ``compile_ms`` (the first call), ``num_steps`` (steps Optimistix
  took) and ``dtype`` (of the solution).
* ``{"cmd": "run", "key": K}``: one timed call; answers ``ms`` (wall) and ``cpu_ms`` (CPU time of
  this process: ``cpu_ms / ms`` near 1 means one core was used).
* ``{"cmd": "save", "key": K, "out": PATH}``: the last call's result into ``PATH`` (``.npz``).
* ``{"cmd": "quit"}``.

Problems (``P``), each ``y0, x, y`` batched along the first axis and solved by
``optimistix.least_squares`` under ``jax.vmap``:

* ``quadratic``: ``r = a x^2 + b - y``, ``optimistix.GaussNewton`` (its default linear solver:
  ``lineax.AutoLinearSolver(well_posed=None)``, which picks QR for the tall ``J``);
* ``exponential``: ``r = a exp(-b x) + c - y``, ``optimistix.LevenbergMarquardt`` (QR on the
  damped system ``[J; sqrt(lambda) I]``, classical trust-region update of ``lambda``);
* ``rotation``: ``r = exp(hat(w)) p_k - q_k`` for the ``N`` pairs, the unknown an axis-angle
  vector ``w`` moved additively (``w <- w + delta``), ``exp`` by Rodrigues' formula;
  ``optimistix.LevenbergMarquardt``.

Jacobians come from Optimistix itself (``jax.linearize``, forward mode, its default). Tolerances
are ``rtol = atol = 0``: Optimistix's Cauchy test compares ``|diff| / (atol + rtol |y|)`` with 1,
which never passes (0/0 is NaN, x/0 infinite), so every solve takes exactly ``max_steps`` steps.
``max_steps = iterations + 1``: the first step only evaluates the start, so ``iterations + 1``
steps make ``iterations`` updates with ``iterations + 1`` residual-and-Jacobian evaluations, the
work of ``iterations`` iterations of nlls (one linearization and one candidate evaluation each,
plus the start's error). ``throw=False``: running out of steps is the intended end, not an error.
The gradient (``mode = "grad"``) is that of ``sum(v * solution)`` with respect to ``x`` and ``y``,
through Optimistix's default ``ImplicitAdjoint``.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

# pinned to the CPUs the parent names (before JAX starts its thread pool): XLA's CPU client
# ignores the old thread-count flags, and affinity is what keeps it to one core
_PIN = os.environ.get("NLLS_BENCH_PIN_CPUS")
if _PIN:
    os.sched_setaffinity(0, {int(c) for c in _PIN.split(",")})
if os.environ.get("NLLS_BENCH_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)  # expfit and the rotation fit are float64

import jax.numpy as jnp  # noqa: E402
import optimistix as optx  # noqa: E402

WARMUP_CALLS = 3


# ---- residuals ---------------------------------------------------------------------------------
def quadratic(params, data):
    x, y = data
    return params[0] * x * x + params[1] - y


def exponential(params, data):
    x, y = data
    return params[0] * jnp.exp(-params[1] * x) + params[2] - y


def rodrigues(w):
    """``exp(hat(w))``, ``(3, 3)``; a Taylor series below a tiny angle, so that the derivative at
    ``w = 0`` (the start) is finite: the square root is never taken of 0."""
    theta2 = jnp.dot(w, w)
    small = theta2 < 1e-8
    safe2 = jnp.where(small, 1.0, theta2)
    theta = jnp.sqrt(safe2)
    sin_over = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
    cos_over = jnp.where(small, 0.5 - theta2 / 24.0, (1.0 - jnp.cos(theta)) / safe2)
    zero = jnp.zeros_like(w[0])
    W = jnp.array([[zero, -w[2], w[1]], [w[2], zero, -w[0]], [-w[1], w[0], zero]])
    return jnp.eye(3, dtype=w.dtype) + sin_over * W + cos_over * (W @ W)


def rotation(params, data):
    p, q = data  # (N, 3) each
    return (p @ rodrigues(params).T - q).reshape(-1)


PROBLEMS = {
    "quadratic": (quadratic, "gauss_newton"),
    "exponential": (exponential, "levenberg_marquardt"),
    "rotation": (rotation, "levenberg_marquardt"),
}


def make_solve(problem: str, iterations: int):
    residual, kind = PROBLEMS[problem]
    if kind == "gauss_newton":
        solver = optx.GaussNewton(rtol=0.0, atol=0.0)
    else:
        solver = optx.LevenbergMarquardt(rtol=0.0, atol=0.0)

    def solve(start, x, y):
        solution = optx.least_squares(residual, solver, start, args=(x, y),
                                      max_steps=iterations + 1, throw=False)
        return solution.value, solution.stats["num_steps"]

    return solve


class Measurement:
    def __init__(self, command):
        data = np.load(command["npz"])
        self.mode = command["mode"]
        solve = make_solve(command["problem"], int(command["iterations"]))
        self.start, self.x, self.y = (jnp.asarray(data[k]) for k in ("start", "x", "y"))
        batched = jax.vmap(solve)
        if self.mode == "forward":
            self.function = jax.jit(batched)
            self.args = (self.start, self.x, self.y)
        else:
            v = jnp.asarray(data["v"])

            def loss(x, y, start):
                solution, steps = batched(start, x, y)
                return jnp.sum(v * solution), (solution, steps)

            self.function = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
            self.args = (self.x, self.y, self.start)
        self.result = None

    def call(self):
        self.result = jax.block_until_ready(self.function(*self.args))
        return self.result

    def steps(self):
        steps = self.result[1] if self.mode == "forward" else self.result[0][1][1]
        return int(np.max(np.asarray(steps)))

    def arrays(self):
        if self.mode == "forward":
            return {"solution": np.asarray(self.result[0])}
        (_, (solution, _)), (gx, gy) = self.result
        return {"solution": np.asarray(solution), "grad_x": np.asarray(gx),
                "grad_y": np.asarray(gy)}


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not every kernel or sandbox answers
        return None


def handle(command, measurements):
    cmd = command["cmd"]
    if cmd == "hello":
        import equinox
        import lineax

        return {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__")
                else None, "optimistix": optx.__version__, "lineax": lineax.__version__,
                "equinox": equinox.__version__, "numpy": np.__version__,
                "cpus": _cpus(), "devices": [str(d) for d in jax.devices()],
                "backend": jax.default_backend(),
                "device": f"{jax.devices()[0]} ({jax.devices()[0].device_kind})"}
    if cmd == "load":
        measurement = Measurement(command)
        begin = time.perf_counter()
        measurement.call()
        compile_ms = 1e3 * (time.perf_counter() - begin)
        for _ in range(WARMUP_CALLS):
            measurement.call()
        measurements[command["key"]] = measurement
        return {"compile_ms": round(compile_ms, 1), "num_steps": measurement.steps(),
                "dtype": str(measurement.arrays()["solution"].dtype)}
    if cmd == "run":
        measurement = measurements[command["key"]]
        wall, cpu = time.perf_counter(), time.process_time()
        measurement.call()
        return {"ms": 1e3 * (time.perf_counter() - wall), "cpu_ms": 1e3 * (time.process_time() - cpu)}
    if cmd == "save":
        np.savez(command["out"], **measurements[command["key"]].arrays())
        return {"ok": True}
    if cmd == "drop":
        measurements.pop(command["key"], None)
        return {"ok": True}
    raise ValueError(f"unknown command {cmd!r}")


def main() -> None:
    measurements = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("cmd") == "quit":
            break
        try:
            answer = handle(command, measurements)
        except Exception as exc:  # the parent reports it and goes on
            traceback.print_exc(file=sys.stderr)
            answer = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
