"""Ways of forming the normal-equation blocks ``A = J^T J`` and ``g = J^T r`` of many small,
tall and thin Jacobians ``J (B, dim, D)``, ``r (B, dim)`` (``dim`` residuals, ``D`` unknowns,
``dim >> D``): the linear algebra of batched curve fits (issue 9, part 4).

Variants (all return ``A (B, D, D)`` and ``g (B, D)``):

* ``bmm``:            ``J^T @ J`` and ``J^T @ r`` on the transposed view (nlls before: the baseline);
* ``einsum``:         ``torch.einsum("...ki,...kj->...ij")`` and the same for ``r``;
* ``broadcast``:      ``(J[..., :, :, None] * J[..., :, None, :]).sum(-3)``, ``(J * r[..., None]).sum(-2)``;
* ``entries``:        one reduction ``(J[..., i] * J[..., j]).sum(-1)`` per entry of the upper
  triangle and per entry of ``g``, stacked and mirrored (exactly symmetric);
* ``stacked_bmm``:    ``[J r]^T @ [J r]`` in one product: ``A`` and ``g`` are its blocks;
* ``transposed_bmm``: ``J^T`` copied contiguous first (``(B, D, dim)``, rows along memory), then
  ``Jt @ Jt^T`` and ``Jt @ r``;
* ``transposed_stacked_bmm``: ``M = [J r]^T`` contiguous ``(B, D + 1, dim)``, one ``M @ M^T``;
* ``transposed_entries``: ``entries`` on the contiguous ``J^T`` (reductions along memory);
* ``transposed_broadcast``: ``(M[..., :D, None, :] * M[..., None, :, :]).sum(-1)`` with ``M`` as
  in ``transposed_stacked_bmm`` (``A`` and ``g`` from one reduction);
* ``nlls``:           what nlls does (``nlls.solve.linearization._normal_blocks``: one of ``bmm``,
  ``transposed``, ``entries`` by its rule; the line's ``rule`` says which).

Each variant is timed eagerly on a grid of shapes, and compiled (``torch.compile(dynamic=False)``
of a function forming ``(A, g)`` from ``(J, r)``, after warm-up) on the shapes of the problems of
``bench_optimistix.py``. Within a shape the variants are called in turns (one call of each per
repetition; one sample is as many back-to-back calls as last about 2 ms, ``inner`` in the line),
so a slow spell of a shared machine hits all of them. One JSON line per (shape, variant) on stdout with the baseline
``bmm`` of the same repetitions: ``median_us``, ``bmm_us`` and ``ratio_to_bmm``, the median of
the per-repetition ratios; ``max_rel_err`` is the largest error of ``A`` and ``g`` against a
float64 reference, relative to the largest entry. ``"measure": "gradient"`` lines time ``g``
alone (``Linearization.gradient``): ``bmm`` against ``J^T r`` as ``(J * r[..., None]).sum(-2)``.
A markdown table goes to stderr.

Compiled, the products alone do not predict whole compiled solves, where the compiler fuses the
computation of ``J`` and the rest of the iteration around them: nlls's rule for compiled code
comes from ``bench_optimistix.py`` solves (see ``_normal_rule`` in nlls/solve/linearization.py).

    .venv/bin/python bench/bench_normal_equations.py                 # ~2-3 min on 2 cores
    .venv/bin/python bench/bench_normal_equations.py --quick         # ~10 s, eager, fewer shapes
    .venv/bin/python bench/bench_normal_equations.py --no-compile
    .venv/bin/python bench/bench_normal_equations.py --device cuda   # the GPU rule (not measured yet)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from nlls.solve.linearization import _normal_blocks, _normal_rule

Pair = Tuple[torch.Tensor, torch.Tensor]


def _mirror(upper: List[torch.Tensor], size: int) -> torch.Tensor:
    """``(..., size, size)`` symmetric matrix from its upper triangle listed row by row."""
    position, k = {}, 0
    for i in range(size):
        for j in range(i, size):
            position[i, j] = position[j, i] = k
            k += 1
    rows = [torch.stack([upper[position[i, j]] for j in range(size)], dim=-1) for i in range(size)]
    return torch.stack(rows, dim=-2)


def bmm(J: torch.Tensor, r: torch.Tensor) -> Pair:
    jt = J.transpose(-1, -2)
    return jt @ J, (jt @ r[..., None])[..., 0]


def einsum(J, r) -> Pair:
    return torch.einsum("...ki,...kj->...ij", J, J), torch.einsum("...ki,...k->...i", J, r)


def broadcast(J, r) -> Pair:
    return (J[..., :, :, None] * J[..., :, None, :]).sum(-3), (J * r[..., None]).sum(-2)


def entries(J, r) -> Pair:
    D = J.shape[-1]
    upper = [(J[..., i] * J[..., j]).sum(-1) for i in range(D) for j in range(i, D)]
    return _mirror(upper, D), torch.stack([(J[..., i] * r).sum(-1) for i in range(D)], dim=-1)


def stacked_bmm(J, r) -> Pair:
    D = J.shape[-1]
    M = torch.cat([J, r[..., None]], dim=-1)
    P = M.transpose(-1, -2) @ M
    return P[..., :D, :D], P[..., :D, D]


def transposed_bmm(J, r) -> Pair:
    Jt = J.transpose(-1, -2).contiguous()
    return Jt @ Jt.transpose(-1, -2), (Jt @ r[..., None])[..., 0]


def _stacked_rows(J, r) -> torch.Tensor:
    """``[J r]^T``, contiguous ``(..., D + 1, dim)``."""
    return torch.cat([J.transpose(-1, -2), r[..., None, :]], dim=-2)


def transposed_stacked_bmm(J, r) -> Pair:
    D = J.shape[-1]
    M = _stacked_rows(J, r)
    P = M @ M.transpose(-1, -2)
    return P[..., :D, :D], P[..., :D, D]


def transposed_entries(J, r) -> Pair:
    D = J.shape[-1]
    M = _stacked_rows(J, r)
    upper = [(M[..., i, :] * M[..., j, :]).sum(-1) for i in range(D) for j in range(i, D)]
    return _mirror(upper, D), torch.stack([(M[..., i, :] * M[..., D, :]).sum(-1) for i in range(D)], -1)


def transposed_broadcast(J, r) -> Pair:
    D = J.shape[-1]
    M = _stacked_rows(J, r)
    P = (M[..., :D, None, :] * M[..., None, :, :]).sum(-1)  # (..., D, D + 1)
    return P[..., :D], P[..., D]


def nlls(J, r) -> Pair:
    return _normal_blocks(J, r)


VARIANTS: Dict[str, Callable[[torch.Tensor, torch.Tensor], Pair]] = {
    f.__name__: f for f in (bmm, einsum, broadcast, entries, stacked_bmm, transposed_bmm,
                            transposed_stacked_bmm, transposed_entries, transposed_broadcast, nlls)
}


def gradient_bmm(J, r) -> torch.Tensor:
    return (J.transpose(-1, -2) @ r[..., None])[..., 0]


def gradient_sum(J, r) -> torch.Tensor:
    return (J * r[..., None]).sum(-2)


GRADIENT_VARIANTS = {"bmm": gradient_bmm, "mul_sum": gradient_sum}

# the shapes of bench_optimistix.py's problems: (name, dim, D, dtype)
COMPILED_SHAPES = (("quadratic", 100, 2, torch.float32), ("exponential", 100, 3, torch.float64),
                   ("rotation", 60, 3, torch.float64))


def picked_rule(J: torch.Tensor, compiled: bool) -> str:
    """The variant nlls's rule picks for ``J``, eagerly or while ``torch.compile`` traces."""
    if not compiled:
        return _normal_rule(J)
    picked = []

    def probe(jac):
        picked.append(_normal_rule(jac))
        return jac.sum()
    torch.compile(probe, backend="eager", dynamic=False)(J)
    return picked[0]


def data(batch: int, dim: int, dof: int, dtype, seed: int, device="cpu") -> Pair:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(batch, dim, dof, generator=generator, dtype=torch.float64)
    r = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return J.to(device=device, dtype=dtype), r.to(device=device, dtype=dtype)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def max_rel_err(got, J: torch.Tensor, r: torch.Tensor) -> float:
    """Largest error of ``A`` and ``g`` against a float64 reference, relative to the largest entry."""
    A_ref, g_ref = bmm(J.double(), r.double())
    if not isinstance(got, tuple):
        return float((got.double() - g_ref).abs().max() / g_ref.abs().max())
    A, g = got
    return max(float((A.double() - A_ref).abs().max() / A_ref.abs().max()),
               float((g.double() - g_ref).abs().max() / g_ref.abs().max()))


def interleaved(functions: Dict[str, Callable], args, inner: int) -> Dict[str, List[float]]:
    """Per function, the time (us) of one call: ``inner`` calls per sample, one sample of each
    function per repetition, until ``--repeats`` or ``--max-seconds``."""
    times: Dict[str, List[float]] = {name: [] for name in functions}
    spent = 0.0
    while len(times["bmm"]) < args.repeats and spent < args.max_seconds:
        for name, function in functions.items():
            _sync(args.device)
            begin = time.perf_counter()
            for _ in range(inner):
                function()
            _sync(args.device)
            elapsed = time.perf_counter() - begin
            times[name].append(1e6 * elapsed / inner)
            spent += elapsed
    return times


def _inner(function: Callable, device, target_us: float = 2000.0) -> int:
    """Calls per sample so that a sample lasts about ``target_us``."""
    for _ in range(3):
        function()
    _sync(device)
    begin = time.perf_counter()
    function()
    _sync(device)
    once = 1e6 * (time.perf_counter() - begin)
    return max(1, min(1000, int(target_us / max(once, 1e-3))))


def measure(kind: str, mode: str, batch: int, dim: int, dof: int, dtype, args,
            label: Optional[str] = None) -> List[Dict]:
    """One shape: every variant of ``kind`` (``normal`` or ``gradient``), ``mode`` eager or
    compiled, interleaved with ``bmm``."""
    J, r = data(batch, dim, dof, dtype, args.seed, args.device)
    variants = VARIANTS if kind == "normal" else GRADIENT_VARIANTS
    names = [n for n in variants if n == "bmm" or n in args.variants or kind == "gradient"]
    functions, extra = {}, {}
    for name in names:
        function = variants[name]
        if mode == "compiled":
            torch._dynamo.reset()
            compiled = torch.compile(function, dynamic=False)
            begin = time.perf_counter()
            compiled(J, r)
            _sync(args.device)
            extra[name] = {"compile_s": round(time.perf_counter() - begin, 2)}
            function = compiled
        functions[name] = lambda f=function: f(J, r)
    inner = _inner(functions["bmm"], args.device)
    times = interleaved(functions, args, inner)
    base = {"bench": "normal_equations", "measure": kind, "mode": mode, "batch_size": batch,
            "dim": dim, "dof": dof, "dtype": str(dtype).replace("torch.", ""), "device": args.device,
            "threads": torch.get_num_threads()}
    if label:
        base["problem"] = label
    records = []
    for name in names:
        record = {**base, "variant": name, "median_us": round(statistics.median(times[name]), 2),
                  "bmm_us": round(statistics.median(times["bmm"]), 2),
                  "ratio_to_bmm": round(statistics.median(
                      a / b for a, b in zip(times[name], times["bmm"])), 3),
                  "repeats": len(times[name]), "inner": inner,
                  "max_rel_err": float(f"{max_rel_err(functions[name](), J, r):.2e}"),
                  **extra.get(name, {})}
        if name == "nlls" and kind == "normal":
            record["rule"] = picked_rule(J, mode == "compiled")
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def markdown_table(rows: List[Dict]) -> str:
    """One row per shape, one column per variant: the ratio to ``bmm`` (its time in us first)."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| measure | mode | B | dim | D | dtype | bmm us | " + " | ".join(names[1:]) + " |",
             "|---|---|---:|---:|---:|---|---:|" + "---:|" * (len(names) - 1)]
    shapes: Dict[Tuple, Dict[str, Dict]] = {}
    for r in rows:
        key = (r["measure"], r["mode"], r["batch_size"], r["dim"], r["dof"], r["dtype"])
        shapes.setdefault(key, {})[r["variant"]] = r
    for key, by_name in shapes.items():
        cells = [f"{by_name[n]['ratio_to_bmm']:.2f}" if n in by_name else "" for n in names[1:]]
        lines.append("| " + " | ".join(str(k) for k in key) +
                     f" | {by_name['bmm']['median_us']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default=None, help="default 1,256,4096 (--quick: 1,4096)")
    parser.add_argument("--dims", default=None, help="residual dimensions, default 3,20,100 (--quick: 100)")
    parser.add_argument("--dofs", default=None, help="unknowns, default 2,3,6 (--quick: 2,3)")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="subset of the variants")
    parser.add_argument("--compiled-batch-sizes", default=None,
                        help="batch sizes of the compiled lines (the problems' shapes), default "
                             "1,4096 (--quick: none)")
    parser.add_argument("--no-compile", action="store_true", help="eager lines only")
    parser.add_argument("--compile-only", action="store_true", help="compiled lines only")
    parser.add_argument("--no-gradient", action="store_true", help="no g-alone lines")
    parser.add_argument("--repeats", type=int, default=None, help="default 41 (--quick: 11)")
    parser.add_argument("--max-seconds", type=float, default=4.0,
                        help="stop repeating one shape after this many seconds (all variants)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (calls synchronized)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer shapes, eager only")
    args = parser.parse_args(argv)
    defaults = (("batch_sizes", "1,256,4096", "1,4096"), ("dims", "3,20,100", "100"),
                ("dofs", "2,3,6", "2,3"), ("repeats", 41, 11), ("compiled_batch_sizes", "1,4096", ""))
    for key, full, quick in defaults:
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(set(args.variants) - set(VARIANTS))}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"bench": "normal_equations", "device": args.device,
                          "skipped": "no CUDA device is available"}))
        return
    torch.set_num_threads(max(args.threads, 1))
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",") if d]
    rows: List[Dict] = []
    started = time.perf_counter()
    if not args.compile_only:
        for dtype in dtypes:
            for batch in ints(args.batch_sizes):
                for dim in ints(args.dims):
                    for dof in ints(args.dofs):
                        rows += measure("normal", "eager", batch, dim, dof, dtype, args)
                        if not args.no_gradient:
                            rows += measure("gradient", "eager", batch, dim, dof, dtype, args)
    if not args.no_compile:
        for batch in ints(args.compiled_batch_sizes):
            for label, dim, dof, dtype in COMPILED_SHAPES:
                rows += measure("normal", "compiled", batch, dim, dof, dtype, args, label)
    print(markdown_table(rows), file=sys.stderr)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
