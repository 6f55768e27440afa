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
* ``outer``:          the sum of the outer products of ``J``'s rows, accumulated in place
  (``nlls.solve.normal_equations.normal_outer``: short, wide blocks such as pose-graph edges
  ``(3, 6)`` and reprojections ``(2, 12)``);
* ``nlls``:           what nlls does (``nlls.solve.normal_equations.normal_blocks``: one of ``bmm``,
  ``transposed``, ``entries``, ``outer`` by its rule; the line's ``rule`` says which).

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
comes from ``bench_optimistix.py`` solves (see ``normal_rule`` in nlls/solve/normal_equations.py).

    .venv/bin/python bench/bench_normal_equations.py                 # ~2-3 min on 2 cores
    .venv/bin/python bench/bench_normal_equations.py --quick         # ~10 s, eager, fewer shapes
    .venv/bin/python bench/bench_normal_equations.py --no-compile
    .venv/bin/python bench/bench_normal_equations.py --batch-sizes 100,1000,64311 --dims 2,3,6 \
        --dofs 6,9,12 --dtypes float64 --no-compile --no-gradient --variants outer,nlls  # short, wide
    .venv/bin/python bench/bench_normal_equations.py --device cuda   # the GPU rule (not measured yet)
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional, Tuple

import harness
import torch

from nlls.solve.normal_equations import normal_blocks, normal_outer, normal_rule

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


def outer(J, r) -> Pair:
    return normal_outer(J, r)


def nlls(J, r) -> Pair:
    return normal_blocks(J, r)


VARIANTS: Dict[str, Callable[[torch.Tensor, torch.Tensor], Pair]] = {
    f.__name__: f for f in (bmm, einsum, broadcast, entries, stacked_bmm, transposed_bmm,
                            transposed_stacked_bmm, transposed_entries, transposed_broadcast, outer, nlls)
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
        return normal_rule(J)
    picked = []

    def probe(jac):
        picked.append(normal_rule(jac))
        return jac.sum()
    torch.compile(probe, backend="eager", dynamic=False)(J)
    return picked[0]


def data(batch: int, dim: int, dof: int, dtype, seed: int, device="cpu") -> Pair:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(batch, dim, dof, generator=generator, dtype=torch.float64)
    r = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return J.to(device=device, dtype=dtype), r.to(device=device, dtype=dtype)


def max_rel_err(got, J: torch.Tensor, r: torch.Tensor) -> float:
    """Largest error of ``A`` and ``g`` against a float64 reference, relative to the largest entry."""
    A_ref, g_ref = bmm(J.double(), r.double())
    if not isinstance(got, tuple):
        return float((got.double() - g_ref).abs().max() / g_ref.abs().max())
    A, g = got
    return max(float((A.double() - A_ref).abs().max() / A_ref.abs().max()),
               float((g.double() - g_ref).abs().max() / g_ref.abs().max()))


def measure(kind: str, mode: str, batch: int, dim: int, dof: int, dtype, args, emit,
            label: Optional[str] = None) -> None:
    """One shape: every variant of ``kind`` (``normal`` or ``gradient``), ``mode`` eager or
    compiled, interleaved with ``bmm``; one sample is ``inner`` back-to-back calls lasting about
    2 ms, in us per call."""
    J, r = data(batch, dim, dof, dtype, args.seed, args.device)
    variants = VARIANTS if kind == "normal" else GRADIENT_VARIANTS
    names = [n for n in variants if n == "bmm" or n in args.variants or kind == "gradient"]
    functions, extra = {}, {}
    for name in names:
        function = variants[name]
        if mode == "compiled":
            torch._dynamo.reset()
            function = torch.compile(function, dynamic=False)
            seconds, _ = harness.seconds(lambda f=function: f(J, r), args.sync)
            extra[name] = {"compile_s": round(seconds, 2)}
        functions[name] = lambda f=function: f(J, r)
    inner = harness.inner_calls(functions["bmm"], args.sync)
    timers = {name: harness.Timed(f, args.sync, inner) for name, f in functions.items()}
    times = harness.interleaved(timers, args.repeats, args.max_seconds)
    times = {name: [1e3 * t for t in ms] for name, ms in times.items()}  # us
    base = {"measure": kind, "mode": mode, "batch_size": batch, "dim": dim, "dof": dof,
            "dtype": str(dtype).replace("torch.", ""), "device": str(args.device),
            "threads": torch.get_num_threads()}
    if label:
        base["problem"] = label
    for name in names:
        record = {**base, "variant": name, "median_us": round(harness.median(times[name]), 2),
                  "bmm_us": round(harness.median(times["bmm"]), 2),
                  "ratio_to_bmm": round(harness.paired_median(times[name], times["bmm"]), 3),
                  "repeats": len(times[name]), "inner": inner,
                  "max_rel_err": float(f"{max_rel_err(functions[name](), J, r):.2e}"),
                  **extra.get(name, {})}
        if name == "nlls" and kind == "normal":
            record["rule"] = picked_rule(J, mode == "compiled")
        emit(record)


def table(rows: List[Dict]) -> str:
    """One row per shape, one column per variant: the ratio to ``bmm`` (its time in us first)."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    shapes: Dict[Tuple, Dict[str, Dict]] = {}
    for r in rows:
        key = (r["measure"], r["mode"], r["batch_size"], r["dim"], r["dof"], r["dtype"])
        shapes.setdefault(key, {})[r["variant"]] = r
    cells = [list(key) + [f"{by_name['bmm']['median_us']:.1f}"]
             + [f"{by_name[n]['ratio_to_bmm']:.2f}" if n in by_name else "" for n in names[1:]]
             for key, by_name in shapes.items()]
    return harness.markdown_table(["measure", "mode", "B", "dim", "D", "dtype", "bmm us"] + names[1:],
                                  cells, "llrrrlr" + "r" * (len(names) - 1))


def main(argv: Optional[List[str]] = None) -> List[Dict]:
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
    harness.add_common_options(parser, threads=1, warmup=False, repeats=None, max_seconds=4.0, help={
        "repeats": "default 41 (--quick: 11)", "threads": "torch intra-op threads (default 1)",
        "max_seconds": "stop repeating one shape after this many seconds (all variants)",
        "device": "cpu or cuda (calls synchronized)"})
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer shapes, eager only")
    args = parser.parse_args(argv)
    defaults = (("batch_sizes", "1,256,4096", "1,4096"), ("dims", "3,20,100", "100"),
                ("dofs", "2,3,6", "2,3"), ("repeats", 41, 11), ("compiled_batch_sizes", "1,4096", ""))
    for key, full, quick in defaults:
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.variants = harness.split(args.variants)
    harness.check_choices(parser, args.variants, VARIANTS, "variants")
    emit = harness.Emitter("normal_equations")
    try:
        args.device, args.sync = harness.setup_device(args.device)
    except ValueError as exc:
        emit({"device": args.device, "skipped": str(exc)})
        return emit.rows
    torch.set_num_threads(max(args.threads, 1))
    emit.environment(args.device)
    dtypes = [getattr(torch, d) for d in harness.split(args.dtypes)]
    started = time.perf_counter()
    if not args.compile_only:
        for dtype in dtypes:
            for batch in harness.split(args.batch_sizes, int):
                for dim in harness.split(args.dims, int):
                    for dof in harness.split(args.dofs, int):
                        measure("normal", "eager", batch, dim, dof, dtype, args, emit)
                        if not args.no_gradient:
                            measure("gradient", "eager", batch, dim, dof, dtype, args, emit)
    if not args.no_compile:
        for batch in harness.split(args.compiled_batch_sizes, int):
            for label, dim, dof, dtype in COMPILED_SHAPES:
                measure("normal", "compiled", batch, dim, dof, dtype, args, emit, label)
    rows = [r for r in emit.rows if "variant" in r]
    harness.report(table(rows) + f"\n\ntotal {time.perf_counter() - started:.0f} s")
    return rows


if __name__ == "__main__":
    main()
