"""The measurements of ``bench_optimistix.py``: every method of one problem and batch size,
forward (:func:`bench_forward`) or forward + backward (:func:`bench_grad`), timed interleaved
across the torch methods and the Optimistix child, then compared with the hand-written loop.

A method that cannot run here (a CUDA-graph method on the CPU, an nlls without ``compile``,
Optimistix without its venv) or whose set-up fails (a capture refused, out of memory) gets a
``skipped`` line with the reason, and the others run.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import harness
import numpy as np
import torch
from methods_handwritten import gauss_newton, handwritten_graph_run, handwritten_run
from methods_nlls import build_nlls, compile_supported, nlls_run, warm_captured, warm_compiled
from methods_optimistix import OptimistixMeasurement
from problems_curve import QUADRATIC, ROTATION, dtype_name, make_data, param_diff, problem_data, tolerance

import nlls

# each CUDA-graph method and the eager method whose results it must reproduce
EAGER_OF = {"handwritten_cuda_graph": "handwritten", "nlls_analytic_cuda_graph": "nlls_analytic",
            "nlls_implicit_cuda_graph": "nlls_implicit"}


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


def _failure(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:240] if str(exc) else ""
    return f"failed: {type(exc).__name__}: {text}"


def _mode_kwargs(method: str) -> dict:
    """``compile=True`` / ``cuda_graph=True`` of a ``*_compiled`` / ``*_cuda_graph`` method
    (nothing for an eager one, so an nlls without these arguments still runs it)."""
    if method.endswith("compiled"):
        return {"compile": True}
    return {"cuda_graph": True} if method.endswith("cuda_graph") else {}


class Methods:
    """The methods of one measurement: their timers, results, extra columns and skip reasons."""

    def __init__(self, args, child, given: bool):
        self.args, self.child, self.given = args, child, given
        self.timers: Dict[str, Callable[[], float]] = {}
        self.results: Dict[str, object] = {}
        self.extra: Dict[str, Dict] = {}
        self.skipped: Dict[str, str] = {}

    def optimistix(self, method, problem, mode, arrays) -> None:
        """Loads the measurement in the child (it compiles and warms up there)."""
        if self.child.error:
            self.skipped[method] = self.child.error
            return
        try:
            measurement = OptimistixMeasurement(self.child, problem.name, problem.iterations, mode,
                                                arrays)
        except RuntimeError as exc:
            self.skipped[method] = f"Optimistix failed: {exc}"
            return
        loaded = measurement.loaded
        self.extra[method] = {"compile_s": round(loaded["compile_ms"] / 1e3, 2),
                              "optimistix_steps": loaded["num_steps"]}
        if mode == "forward":
            self.extra[method]["optimistix_dtype"] = loaded["dtype"]
        self.timers[method], self.results[method] = measurement.run, measurement

    def torch(self, method, build: Callable[[], Optional[Callable]]) -> None:
        """``build()`` makes the call (None: not a method of this measurement); its warm-up
        calls compile or capture a compiled or CUDA-graph nlls method (``extra`` says what it
        cost)."""
        args = self.args
        try:
            run = build()
            if run is None:
                return
            if method.startswith("nlls") and method.endswith("compiled"):
                self.extra[method] = warm_compiled(run, args.warmup)
            elif method.startswith("nlls") and method.endswith("cuda_graph"):
                self.extra[method] = warm_captured(run, args.warmup, args.sync)
            harness.warm_up(harness.Timed(run), args.warmup)
        except Exception as exc:  # a failed capture or an out-of-memory: the others still run
            self.skipped[method] = _failure(exc)
            return
        self.timers[method], self.results[method] = harness.Timed(run, args.sync), run

    def add(self, method, **kinds) -> None:
        if why := _unavailable(method, self.args, self.given):
            self.skipped[method] = why
        elif method.startswith("optimistix"):
            self.optimistix(method, *kinds["optimistix"])
        else:
            self.torch(method, kinds["torch"])

    def time(self) -> Dict[str, list]:
        with harness.Pinned(self.args.pin):
            return harness.interleaved(self.timers, self.args.repeats, self.args.max_seconds)

    def optimistix_result(self, method, times) -> Dict[str, np.ndarray]:
        measurement = self.results[method]
        arrays = measurement.result()
        if method == "optimistix":
            self.extra[method]["optimistix_cpu_per_wall"] = round(
                sum(measurement.cpu_ms) / max(sum(times[method]), 1e-9), 2)
        measurement.drop()
        return arrays

    def record(self, base, method, times, references) -> Optional[Dict]:
        """The JSON record of ``method``: its median time and its ratios to the ``references``
        (pairs of timed method and the name used in the keys) measured beside it; the skipped
        line of a skipped method; None for a method not of this measurement."""
        if method in self.skipped:
            return {**base, "method": method, "skipped": self.skipped[method]}
        if method not in times:
            return None
        record = {**base, "method": method,
                  "median_ms": round(harness.median(times[method]), 4), "repeats": len(times[method])}
        for ref, key in references:
            if ref in times:
                record[f"{key}_ms"] = round(harness.median(times[ref]), 4)
                record[f"ratio_to_{key}"] = round(harness.paired_median(times[method], times[ref]), 3)
        record.update(self.extra.get(method, {}))
        return record


def _base(problem, measure, batch, args) -> Dict:
    return {"problem": problem.name, "measure": measure, "batch_size": batch,
            "iterations": problem.iterations, "optimizer": problem.optimizer,
            "dtype": dtype_name(problem.dtype), "device": str(args.device),
            "threads": torch.get_num_threads()}


def _forward_run(method, problem, start, a, b, extra):
    if method == "handwritten":
        return handwritten_run(problem, start, a, b)
    if method == "handwritten_cuda_graph":
        run, capture = handwritten_graph_run(problem, start, a, b, warmup=1)
        extra[method] = {"capture_s": round(capture, 3)}
        return run
    if method in ("nlls_analytic", "nlls_analytic_compiled", "nlls_analytic_cuda_graph"):
        return nlls_run(problem, start, a, b, **_mode_kwargs(method))
    return None


def bench_forward(problem, batch, args, child, emit):
    """Every forward method on one problem and batch size, interleaved."""
    a, b, _, start = problem_data(problem, batch, args.num_points, args.device, seed=args.seed)
    optx_start = (np.zeros((batch, 3), dtype=np.float64) if problem is ROTATION  # axis-angle of I
                  else start.cpu().numpy())
    methods = Methods(args, child, args.methods_given)
    arrays = {"start": optx_start, "x": a.cpu().numpy(), "y": b.cpu().numpy()}
    for method in args.methods:
        methods.add(method, optimistix=(problem, "forward", arrays),
                    torch=lambda m=method: _forward_run(m, problem, start, a, b, methods.extra))
    times = methods.time()
    solutions: Dict[str, torch.Tensor] = {}  # on the CPU, for the comparisons
    for method in times:
        if method == "optimistix":
            solution = torch.as_tensor(methods.optimistix_result(method, times)["solution"])
            if problem is ROTATION:
                solution = nlls.SO3.exp_map(solution.to(torch.float64)).tensor
        else:
            solution = methods.results[method]().cpu()
        solutions[method] = solution
    reference, limit = solutions.get("handwritten"), tolerance(problem.dtype)
    base = _base(problem, "forward", batch, args)
    for method in args.methods:
        record = methods.record(base, method, times,
                                (("handwritten", "handwritten"), ("optimistix", "optimistix")))
        if record is None or "skipped" in record:
            if record is not None:
                emit(record)
            continue
        solution = solutions[method]
        if reference is not None:
            diff = param_diff(problem, reference, solution)
            record["max_param_diff_to_handwritten"] = float(diff.max())
            record["elements_differing"] = int((diff > limit).sum())
        eager = solutions.get(EAGER_OF.get(method, ""))
        if eager is not None:  # a CUDA-graph method against its eager counterpart
            diff = param_diff(problem, eager, solution)
            record["max_param_diff_to_eager"] = float(diff.max())
            record["elements_differing_from_eager"] = int((diff > limit).sum())
        emit(record)


def _grad_diffs(got, reference):
    """Max abs difference of the solutions, relative norm difference of the gradients."""
    param = float((got[0] - reference[0]).abs().max())
    grads = torch.cat([g.reshape(-1) for g in got[1:]]).double()
    ref_grads = torch.cat([g.reshape(-1) for g in reference[1:]]).double()
    return param, float((grads - ref_grads).norm() / ref_grads.norm())


def _grad_run(method, problem, start, x, y, v):
    """A call returning ``(solution, grad_x, grad_y)`` of ``sum(v * p*)``."""
    if method == "handwritten_unroll":
        def forward(xg, yg):
            return gauss_newton(problem, start, xg, yg, problem.iterations)
    elif method in ("nlls_implicit", "nlls_implicit_compiled", "nlls_implicit_cuda_graph"):
        layer = nlls.OptimizationLayer(build_nlls(problem, start, x, y)[1], backward_mode="implicit")
        kwargs = _mode_kwargs(method)

        def forward(xg, yg):
            return layer({"p": start, "x": xg, "y": yg}, **kwargs)[0]["p"]
    else:
        return None

    def run():
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        solution = forward(xg, yg)
        gx, gy = torch.autograd.grad((v * solution).sum(), (xg, yg))
        return solution.detach(), gx, gy
    return run


def bench_grad(batch, args, child, emit):
    """Forward + backward of ``sum(v * p*)`` w.r.t. the data ``x, y`` on the quadratic fit."""
    problem = QUADRATIC
    x, y, _, start = make_data(problem, batch, args.num_points, args.device, seed=args.seed)
    v = torch.randn(batch, problem.dof, generator=torch.Generator().manual_seed(args.seed + 1),
                    dtype=torch.float64).to(device=args.device, dtype=problem.dtype)
    methods = Methods(args, child, args.grad_methods_given)
    arrays = {"start": start.cpu().numpy(), "x": x.cpu().numpy(), "y": y.cpu().numpy(),
              "v": v.cpu().numpy()}
    for method in args.grad_methods:
        methods.add(method, optimistix=(problem, "grad", arrays),
                    torch=lambda m=method: _grad_run(m, problem, start, x, y, v))
    times = methods.time()
    solutions = {}  # (solution, grad_x, grad_y) on the CPU
    for method in times:
        if method == "optimistix_implicit":
            arrays = methods.optimistix_result(method, times)
            solutions[method] = tuple(torch.as_tensor(arrays[k]) for k in ("solution", "grad_x", "grad_y"))
        else:
            solutions[method] = tuple(t.cpu() for t in methods.results[method]())
    reference = solutions.get("handwritten_unroll")
    base = _base(problem, "forward_backward", batch, args)
    for method in args.grad_methods:
        record = methods.record(base, method, times, (("handwritten_unroll", "handwritten"),
                                                      ("optimistix_implicit", "optimistix")))
        if record is None or "skipped" in record:
            if record is not None:
                emit(record)
            continue
        got = solutions[method]
        if reference is not None:
            record["max_param_diff_to_handwritten"], record["grad_rel_diff"] = _grad_diffs(got, reference)
        eager = solutions.get(EAGER_OF.get(method, ""))
        if eager is not None:  # a CUDA-graph method against its eager counterpart
            record["max_param_diff_to_eager"], record["grad_rel_diff_to_eager"] = _grad_diffs(got, eager)
        emit(record)
