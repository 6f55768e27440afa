"""The summary of ``bench_optimistix.py``: its markdown table and the acceptance verdicts read off
the run's lines (issue 9's CPU targets; on a GPU, ``cuda_graph=True`` against Optimistix)."""
from __future__ import annotations

from typing import Dict, List

from harness import fmt, markdown_table
from problems_curve import PROBLEMS, tolerance

GPU_ACCEPTANCE = (("quadratic", "exponential"), (1, 256, 4096))


def table(rows: List[Dict], cuda: bool = False) -> str:
    """The table of this run; on CUDA the last column also holds ``capture_s`` (CUDA graphs)
    and the Δ column the CUDA-graph methods' difference to their eager counterparts."""
    header = ["problem", "measure", "B", "method", "median ms", "× hand-written", "× Optimistix",
              "max Δ to hand-written", "compile / capture s" if cuda else "compile s"]
    cells = []
    for r in rows:
        head = [r["problem"], r["measure"], r["batch_size"], r["method"]]
        if "median_ms" not in r:
            cells.append(head + [f"skipped: {r['skipped'][:80]}", "", "", "", ""])
            continue
        diff = fmt(r.get("max_param_diff_to_handwritten"), ".1e")
        if "grad_rel_diff" in r:
            diff += f" (grad {r['grad_rel_diff']:.1e})"
        if "max_param_diff_to_eager" in r:
            diff += f"; eager {r['max_param_diff_to_eager']:.1e}"
            if "grad_rel_diff_to_eager" in r:
                diff += f" (grad {r['grad_rel_diff_to_eager']:.1e})"
        seconds = (fmt(r.get("compile_s"), ".1f") if "compile_s" in r or not cuda
                   else fmt(r.get("capture_s"), ".2f"))
        cells.append(head + [f"{r['median_ms']:.3f}", fmt(r.get("ratio_to_handwritten"), ".2f"),
                             fmt(r.get("ratio_to_optimistix"), ".2f"), diff, seconds])
    return markdown_table(header, cells, "llrlrrrrr")


def _verdict(ok: bool) -> str:
    return "holds" if ok else "FAILS"


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
                    out.append(f"B={batches[-1]} {problem} {method}: {r['ratio_to_optimistix']:.2f}× "
                               f"Optimistix -> {_verdict(r['ratio_to_optimistix'] <= 1.0)} (≤ 1)")
        for problem in PROBLEMS:
            r = forward.get((problem, 1, method))
            if r and "ratio_to_handwritten" in r:
                out.append(f"B=1 {problem} {method}: {r['ratio_to_handwritten']:.2f}× hand-written "
                           f"-> {_verdict(r['ratio_to_handwritten'] <= 2.0)} (≤ 2)")
    return "\n".join(out)


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
        limit = tolerance(PROBLEMS[problem].dtype)
        for batch in batches:
            label = f"B={batch} {problem} {method}"
            r = forward.get((problem, batch, method))
            if r is None or "skipped" in r:
                out.append(f"{label}: " + (f"skipped ({r['skipped'][:80]})" if r else "not measured"))
                verdicts.append(None)
                continue
            if "ratio_to_optimistix" in r:
                ok = r["ratio_to_optimistix"] <= 1.0
                out.append(f"{label}: {r['ratio_to_optimistix']:.2f}× Optimistix -> {_verdict(ok)} (≤ 1)")
                verdicts.append(ok)
            else:
                other = forward.get((problem, batch, "optimistix"))
                why = other["skipped"][:80] if other and "skipped" in other else "not measured"
                out.append(f"{label}: no Optimistix time to compare ({why})")
                verdicts.append(None)
            if "max_param_diff_to_eager" in r:
                ok = r["max_param_diff_to_eager"] <= limit
                out.append(f"{label}: max Δ to eager nlls_analytic {r['max_param_diff_to_eager']:.1e} "
                           f"-> {_verdict(ok)} (≤ {limit:g})")
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
