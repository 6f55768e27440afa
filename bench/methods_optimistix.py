"""Optimistix (JAX) in a child process: the client side.

The child is ``optimistix_runner.py``, started with the JAX venv's python, so JAX and torch never
share a process. The parent drives it by JSON lines (one command per line on stdin, one answer per
line on stdout; the commands are in the runner's docstring): :class:`OptimistixChild` starts it
and says why it is unusable (``error``); :class:`OptimistixMeasurement` loads one problem and batch
size there (the child compiles and warms it up) and times one call per :meth:`run`, which the
child measures itself, so the pipe's round trip is not counted.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Dict, List, Optional

import numpy as np
from harness import ROOT

RUNNER = os.path.join(ROOT, "bench", "optimistix_runner.py")
DEFAULT_JAX_PYTHON = os.path.join(ROOT, ".venv-jax", "bin", "python")


class OptimistixChild:
    """The runner in the JAX venv; ``error`` says why it is unusable (None when it runs).

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
        except (OSError, AttributeError):
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

    def versions(self) -> Dict:
        """The versions and CPUs the child reported (for the ``setup`` line)."""
        keep = ("jax", "jaxlib", "optimistix", "lineax", "equinox", "cpus")
        out = {k: v for k, v in self.info.items() if k in keep}
        if "backend" in self.info:
            out["jax_backend"] = self.info["backend"]
        return out


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
