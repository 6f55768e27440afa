"""OptimizationLayer: forward + backward cost of each backward mode, beside a hand-written loop.

The problem: ``B`` exponential fits ``y = a exp(-b x) + c`` of ``num_points`` samples each
(float64), solved by Gauss-Newton for a fixed number of iterations (tolerances 0 and one
"all done?" check at the end, so no run stops early), started near the truth. The loss is
``sum(v * p*)`` for a fixed random ``v``; its gradient with respect to the data ``x`` and ``y``
(both ``(B, N)``, requiring grad) is what the backward computes.

Methods:

* ``handwritten_unroll``: the plain batched Gauss-Newton loop of ``methods_handwritten.py``
  (analytic Jacobian, ``bmm``, Cholesky), differentiated by autograd through every iteration:
  the reference;
* ``nlls_unroll``, ``nlls_truncated`` (the last ``--truncated-iterations`` iterations recorded),
  ``nlls_implicit_gn`` and ``nlls_implicit_exact``: ``nlls.OptimizationLayer`` around the same
  problem written as an analytic ``nlls.CostFunction`` (``methods_nlls.py``);
* ``theseus_unroll``, ``theseus_truncated``, ``theseus_implicit``: ``th.TheseusLayer`` (Theseus
  0.2.3, when importable; else one ``skipped`` line) around the same analytic cost function
  (``methods_theseus.py``).
  Theseus' implicit mode differentiates one Gauss-Newton step taken from the detached solution.

Per method and iteration count one JSON line reports:

* ``median_ms``: wall time of forward + backward (median of ``--repeats`` after warm-up) and
  ``ratio_to_handwritten``;
* ``saved_mb``: bytes of the distinct tensor storages the autograd graph keeps for the backward
  after the forward (recorded with ``torch.autograd.graph.saved_tensors_hooks``). This is the
  memory a backward mode holds between forward and backward, the part that grows with the
  iteration count; it does not count transient buffers, nor the implicit backward's working
  memory (for ``hessian="exact"``: ``D`` forward-mode passes through the Jacobians, about
  ``B * N * D^2`` numbers);
* ``peak_mb`` (unless ``--no-peak``): the peak of live tensor memory during one forward +
  backward, above what was live before it, transients included. On CPU it is read from the
  allocation events of ``torch.profiler`` (``profile_memory=True``, replayed by its memory
  timeline, a private PyTorch module); on CUDA from ``torch.cuda.max_memory_allocated``;
* ``graph_nodes``: autograd nodes reachable from the solution;
* ``grad_rel_diff``: relative difference of the gradient to the hand-written unrolled one
  (the unrolled gradient of a converged solve is the exact one; Gauss-Newton's implicit
  gradient is not, on these noisy fits).

    python bench/bench_layer.py                       # B=256, 10 and 50 iterations
    python bench/bench_layer.py --iterations 10,50,200 --threads 1
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional

import harness
import torch
from methods_handwritten import gauss_newton
from methods_nlls import build_nlls
from methods_theseus import theseus_layer, theseus_missing
from problems_curve import EXPONENTIAL

import nlls

DTYPE = torch.float64
NLLS_MODES = {
    "nlls_unroll": {"backward_mode": "unroll"},
    "nlls_truncated": {"backward_mode": "truncated"},  # + backward_num_iterations
    "nlls_implicit_gn": {"backward_mode": "implicit", "hessian": "gauss_newton"},
    "nlls_implicit_exact": {"backward_mode": "implicit", "hessian": "exact"},
}
THESEUS_MODES = {
    "theseus_unroll": {"backward_mode": "UNROLL"},
    "theseus_truncated": {"backward_mode": "TRUNCATED"},  # + backward_num_iterations
    "theseus_implicit": {"backward_mode": "IMPLICIT"},
}
METHODS = ("handwritten_unroll",) + tuple(NLLS_MODES) + tuple(THESEUS_MODES)


def make_data(batch: int, num_points: int, device, seed: int = 0):
    """``x, y (B, N)``, a start near the truth ``(B, 3)`` and the loss weights ``v (B, 3)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0.0, 4.0, num_points, dtype=DTYPE).repeat(batch, 1)
    truth = torch.stack([1.0 + torch.rand(batch, generator=g, dtype=DTYPE),
                         0.5 + torch.rand(batch, generator=g, dtype=DTYPE),
                         0.5 * torch.randn(batch, generator=g, dtype=DTYPE)], dim=1)
    y = EXPONENTIAL.residual(truth, x, torch.zeros_like(x))
    y = y + 0.02 * torch.randn(batch, num_points, generator=g, dtype=DTYPE)
    start = truth + torch.tensor([0.1, 0.1, 0.05], dtype=DTYPE) * torch.randn(
        batch, 3, generator=g, dtype=DTYPE)
    v = torch.randn(batch, 3, generator=g, dtype=DTYPE)
    return tuple(t.to(device) for t in (x, y, start, v))


def make_run(method: str, iterations: int, data, truncated_iterations: int):
    """A function running one forward and returning ``(solution, leaves)``; the caller does the
    backward, so graph measurements can sit between the two."""
    x, y, start, _ = data
    truncated = min(truncated_iterations, iterations)
    if method == "handwritten_unroll":
        def solve(xg, yg):
            return gauss_newton(EXPONENTIAL, start, xg, yg, iterations)
    elif method.startswith("theseus"):
        layer, options = theseus_layer(EXPONENTIAL, start, x, y, iterations,
                                       optimizer="gauss_newton")
        options = {**options, **THESEUS_MODES[method]}
        if method == "theseus_truncated":
            options["backward_num_iterations"] = truncated

        def solve(xg, yg):
            return layer.forward({"x": xg, "y": yg, "p": start}, optimizer_kwargs=options)[0]["p"]
    else:
        _, optimizer, _ = build_nlls(EXPONENTIAL, start, x.clone(), y.clone(), iterations=iterations,
                                     optimizer="gauss_newton")
        layer = nlls.OptimizationLayer(optimizer)
        kwargs = dict(NLLS_MODES[method])
        if method == "nlls_truncated":
            kwargs["backward_num_iterations"] = truncated

        def solve(xg, yg):
            return layer({"x": xg, "y": yg, "p": start}, **kwargs)[0]["p"]

    def forward():
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        return solve(xg, yg), (xg, yg)
    return forward


def forward_backward(forward, v):
    p, leaves = forward()
    return p, torch.autograd.grad((v * p).sum(), leaves)


def time_ms(runs: Dict[str, Callable], v, sync, warmup: int, repeats: int) -> Dict[str, float]:
    """Median forward + backward wall time of each run, in ms, interleaved."""
    timers = {name: harness.Timed(lambda f=forward: forward_backward(f, v), sync)
              for name, forward in runs.items()}
    for timer in timers.values():
        harness.warm_up(timer, warmup)
    times = harness.interleaved(timers, repeats)
    return {name: harness.median(t) for name, t in times.items()}


def graph_measures(forward, v) -> Dict:
    """Saved-tensor bytes and graph nodes of one forward; solution and gradients."""
    storages: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        p, leaves = forward()
    nodes, seen, stack = 0, set(), [p.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes += 1
        stack.extend(fn for fn, _ in node.next_functions)
    grads = torch.autograd.grad((v * p).sum(), leaves)
    return {"saved_bytes": sum(storages.values()), "graph_nodes": nodes, "solution": p.detach(),
            "grads": grads}


def peak_memory_mb(forward, v, device) -> float:
    """Peak of the tensor memory allocated during one forward + backward, above what was
    allocated before it, in MiB (see the module doc)."""
    forward_backward(forward, v)  # warm-up: lazy imports, workspaces
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward_backward(forward, v)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline  # private: may move

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        forward_backward(forward, v)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
    totals = [sum(row) for row in sizes]  # live bytes after every allocation or free
    return (max(totals) - totals[0]) / 2 ** 20


# ---- the report ---------------------------------------------------------------------------------
def _rel(a, b):
    return float(torch.cat([t.flatten() for t in a]).sub(torch.cat([t.flatten() for t in b]))
                 .norm() / torch.cat([t.flatten() for t in b]).norm())


def bench(args, emit) -> None:
    data = make_data(args.batch_size, args.num_points, args.device, args.seed)
    v = data[3]
    base = {"problem": "exponential", "optimizer": "gauss_newton", "batch_size": args.batch_size,
            "num_points": args.num_points, "dtype": "float64", "device": str(args.device),
            "threads": torch.get_num_threads()}
    missing = None if args.no_theseus else theseus_missing()
    for iterations in harness.split(args.iterations, int):
        if missing:
            emit({**base, "iterations": iterations, "method": "theseus", "skipped": missing})
        methods = [m for m in METHODS
                   if not (m.startswith("theseus") and (missing or args.no_theseus))]
        runs, measures = {}, {}
        for method in list(methods):
            try:
                runs[method] = make_run(method, iterations, data, args.truncated_iterations)
                measures[method] = graph_measures(runs[method], v)
            except Exception as exc:
                if not method.startswith("theseus"):
                    raise
                emit({**base, "iterations": iterations, "method": method,
                      "skipped": f"theseus failed: {type(exc).__name__}: {exc}"})
                methods.remove(method)
                runs.pop(method, None)
        median_ms = time_ms(runs, v, args.sync, args.warmup, args.repeats)
        reference = measures["handwritten_unroll"]
        for method in methods:
            ms, measure = median_ms[method], measures[method]
            record = {**base, "iterations": iterations, "method": method,
                      "median_ms": round(ms, 2),
                      "ratio_to_handwritten": round(ms / median_ms["handwritten_unroll"], 2),
                      "saved_mb": round(measure["saved_bytes"] / 2 ** 20, 3),
                      "saved_ratio_to_handwritten": round(
                          measure["saved_bytes"] / reference["saved_bytes"], 3),
                      "graph_nodes": measure["graph_nodes"],
                      "solution_max_diff": float((measure["solution"]
                                                  - reference["solution"]).abs().max()),
                      "grad_rel_diff": _rel(measure["grads"], reference["grads"]),
                      "repeats": args.repeats}
            if method.endswith("truncated"):
                record["backward_num_iterations"] = min(args.truncated_iterations, iterations)
            if not args.no_peak:
                record["peak_mb"] = round(peak_memory_mb(runs[method], v, args.device), 3)
            emit(record)


def table(rows: List[Dict]) -> str:
    rows = [r for r in rows if "median_ms" in r]
    memory = any("peak_mb" in r for r in rows)
    head = ["iterations", "method", "fwd+bwd ms", "x handwritten", "saved MB", "x handwritten",
            "graph nodes"] + (["peak MB"] if memory else []) + ["grad rel diff"]
    cells = []
    for r in rows:
        row = [r["iterations"], r["method"], f"{r['median_ms']:.1f}",
               f"{r['ratio_to_handwritten']:.2f}", f"{r['saved_mb']:.2f}",
               f"{r['saved_ratio_to_handwritten']:.3f}", r["graph_nodes"]]
        if memory:
            row.append(f"{r['peak_mb']:.2f}")
        cells.append(row + [f"{r['grad_rel_diff']:.1e}"])
    return harness.markdown_table(head, cells)


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-points", type=int, default=50)
    parser.add_argument("--iterations", default="10,50", help="comma-separated iteration counts")
    parser.add_argument("--truncated-iterations", type=int, default=2)
    harness.add_common_options(parser, threads=0, warmup=2, repeats=7)
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-theseus", action="store_true", help="leave Theseus out")
    args = parser.parse_args(argv)
    emit = harness.start(parser, args, "layer")
    bench(args, emit)
    harness.report(table(emit.rows))
    return emit.rows


if __name__ == "__main__":
    main()
