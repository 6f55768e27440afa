"""The Moré–Garbow–Hillstrom problems: digits of the published minimum and iterations, nlls beside SciPy.

The 40 problems of ``tests/mgh.py`` (ACM TOMS 566, 1981), each from the paper's ``x0`` and from
``10 x0``, ``100 x0`` where MINPACK-1's tests use them. Per problem and start, each method reports
how many digits of a published minimum it reached (``-log10`` of the relative cost error, of the
absolute cost where the minimum is 0, capped at 16; from a scaled start, the nearest minimum the
paper lists), its iterations and how it stopped. Methods:

* ``nlls_gn``, ``nlls_lm``, ``nlls_dogleg`` (when ``nlls.Dogleg`` exists), ``nlls_lm_dense_qr``
  (when ``linear_solver="dense_qr"`` is registered): all starts of a problem in one batch, float64,
  at most ``--max-iterations`` iterations (default ``100 n``, the tests' budget);
* ``scipy_lm`` (MINPACK's ``lmder``) and ``scipy_trf``: ``least_squares`` with the analytic
  Jacobian, one start at a time, at most ``--max-nfev`` evaluations (their ``iterations`` count
  Jacobian evaluations).

Each method runs in two regimes (``--regimes``), so that the table compares like with like:

* ``defaults``: each library's default tolerances (nlls's ``function_tolerance=1e-10``,
  ``gradient_tolerance=1e-13``, ``parameter_tolerance=1e-10``; SciPy's ``ftol = xtol = gtol = 1e-8``);
* ``tight``: each with its tightest tolerances, 1e-15 for all three (nlls's function tolerance
  then counts as its floor, 100 machine epsilons).

One JSON line per regime, problem, start and method; a markdown table per regime on stderr
(digits/iterations per method, a ``*`` where the run reports convergence away from both a minimum
and a stationary point; the ``vs trf`` column: ``ok`` where the better of nlls's methods is at
least as accurate as ``scipy_trf``, else the digits it lacks) with summary rows: cases solved to
4 digits, cases within the tolerance of ``tests/solve/test_mgh.py`` (1e-8 relative, 1e-12
absolute at 0), mean digits, cases at least as accurate as ``scipy_trf``. "At least as accurate"
allows ``SLACK`` (0.3) digit: two runs at the same minimum differ by the rounding of the cost in
its last bits (a factor 2 in the relative error is 0.3 digit), and a case both reach within the
tests' tolerance counts as a tie.

    python bench/bench_mgh.py                                  # every problem, every method, both regimes
    python bench/bench_mgh.py --problems rosenbrock,meyer --methods nlls_lm,scipy_lm
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # SciPy solves tiny problems one at a time

import harness  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402
from nlls.solve.linear import LINEAR_SOLVERS  # noqa: E402

sys.path.insert(0, harness.ROOT)
from tests.mgh import BY_NAME, PROBLEMS  # noqa: E402
from tests.mgh_solve import Run, solve_nlls, solve_scipy  # noqa: E402

METHODS = ("nlls_gn", "nlls_lm", "nlls_dogleg", "nlls_lm_dense_qr", "scipy_lm", "scipy_trf")
SOLVED_DIGITS = 4.0
#: digits by which a run may trail scipy_trf and still count as at least as accurate (rounding noise)
SLACK = 0.3
#: per regime: nlls's settings, SciPy's tolerance (None: SciPy's defaults)
REGIMES = {
    "defaults": ({}, None),
    "tight": ({"function_tolerance": 1e-15, "gradient_tolerance": 1e-15, "parameter_tolerance": 1e-15}, 1e-15),
}
REFERENCE = "scipy_trf"
#: a CONVERGED run away from any minimum whose stationarity (tests/mgh_solve.py) exceeds this is starred
STATIONARY = 1e-3


def missing(method: str) -> Optional[str]:
    """Why ``method`` cannot run with this nlls, or None."""
    if method == "nlls_dogleg" and getattr(nlls, "Dogleg", None) is None:
        return "nlls.Dogleg does not exist in this version"
    if method == "nlls_lm_dense_qr" and "dense_qr" not in LINEAR_SOLVERS:
        return "linear_solver='dense_qr' is not registered in this version"
    return None


def runner(method: str, max_iterations: int, max_nfev: int, device, regime: str = "tight") -> Callable[..., Run]:
    """``problem -> Run`` for ``method`` with the tolerances of ``regime`` (``REGIMES``)."""
    settings, tolerance = REGIMES[regime]
    if method.startswith("scipy_"):
        return lambda problem: solve_scipy(problem, method[len("scipy_"):], max_nfev, tolerance)
    optimizer = {"nlls_gn": "gn", "nlls_lm": "lm", "nlls_dogleg": "dogleg", "nlls_lm_dense_qr": "lm"}[method]
    linear_solver = "dense_qr" if method.endswith("dense_qr") else None
    return lambda problem: solve_nlls(problem, optimizer, max_iterations, linear_solver, device, **settings)


def as_accurate(record: Dict, reference: Dict) -> bool:
    """``record`` is at least as accurate as ``reference`` (the same case): within ``SLACK`` digits
    of it, or both within the tests' tolerance."""
    return record["digits"] >= reference["digits"] - SLACK or (record["reached"] and reference["reached"])


def flagged(run: Run, start: int) -> bool:
    """The run reports convergence at a point that is neither a minimum nor stationary."""
    return (run.status[start] == "CONVERGED" and not run.reached[start]
            and run.stationarity[start] > STATIONARY)


def table(records: List[Dict], methods: List[str]) -> str:
    """digits/iterations per case and method, the comparison with ``scipy_trf`` and the summary
    rows, for the records of one regime."""
    cells: Dict[tuple, Dict[str, Dict]] = {}
    for r in records:
        if "digits" in r:
            cells.setdefault((r["problem"], r["start"]), {})[r["method"]] = r
    ours = [m for m in methods if m.startswith("nlls_")]
    compare = REFERENCE in methods and bool(ours)
    rows, behind = [], {m: 0 for m in ours}
    for (problem, start), cell in cells.items():
        row = [problem, start] + [f"{cell[m]['digits']:.1f}/{cell[m]['iterations']}"
                                  f"{'*' if cell[m]['converged_away'] else ''}" if m in cell else "–"
                                  for m in methods]
        if compare and REFERENCE in cell and any(m in cell for m in ours):
            best = max((cell[m] for m in ours if m in cell), key=lambda r: r["digits"])
            row.append("ok" if as_accurate(best, cell[REFERENCE])
                       else f"-{cell[REFERENCE]['digits'] - best['digits']:.1f}")
            for m in ours:
                behind[m] += m in cell and not as_accurate(cell[m], cell[REFERENCE])
        elif compare:
            row.append("–")
        rows.append(row)
    solved, reached, mean = ["solved to 4 digits", ""], ["reached (tests' tolerance)", ""], ["mean digits", ""]
    versus = [f"as accurate as {REFERENCE} (slack {SLACK})", ""]
    for m in methods:
        runs = [r for r in records if r.get("method") == m and "digits" in r]
        digits = [r["digits"] for r in runs]
        solved.append(f"{sum(d >= SOLVED_DIGITS for d in digits)}/{len(digits)}" if runs else "–")
        reached.append(f"{sum(r['reached'] for r in runs)}/{len(runs)}" if runs else "–")
        mean.append(f"{sum(digits) / len(digits):.2f}" if runs else "–")
        versus.append(f"{len(runs) - behind[m]}/{len(runs)}" if m in behind and runs else "–")
    summary = [solved, reached, mean] + ([versus] if compare else [])
    if compare:
        ok = sum(row[-1] == "ok" for row in rows)
        for line in summary[:-1]:
            line.append("")
        summary[-1].append(f"{ok}/{len(rows)}")
    header = ["problem", "start"] + methods + ([f"vs {REFERENCE.split('_')[1]}"] if compare else [])
    return harness.markdown_table(header, rows + summary, "ll" + "r" * (len(header) - 2))


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser, threads=1, warmup=False, repeats=False, seed=False,
                               help={"threads": "torch intra-op threads (default 1)"})
    parser.add_argument("--problems", default=",".join(p.name for p in PROBLEMS),
                        help="comma-separated names from tests/mgh.py (default: all 40)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {', '.join(METHODS)}")
    parser.add_argument("--max-iterations", type=int, default=0,
                        help="nlls's (default 0: 100 n per problem, the budget of tests/solve/test_mgh.py "
                             "and of SciPy's evaluations by default)")
    parser.add_argument("--max-nfev", type=int, default=20000, help="SciPy's (default 20000)")
    parser.add_argument("--regimes", default=",".join(REGIMES),
                        help="tolerances: each library's defaults, each at its tightest (default both)")
    args = parser.parse_args(argv)
    names, methods, regimes = harness.split(args.problems), harness.split(args.methods), harness.split(args.regimes)
    harness.check_choices(parser, names, BY_NAME, "problems")
    harness.check_choices(parser, methods, METHODS, "methods")
    harness.check_choices(parser, regimes, REGIMES, "regimes")
    emit = harness.start(parser, args, "mgh")
    runnable = []
    for method in methods:
        reason = missing(method)
        if reason is None:
            runnable.append(method)
        else:
            emit({"method": method, "skipped": reason})
    for regime in regimes:
        for name in names:
            problem = BY_NAME[name]
            for method in runnable:
                budget = args.max_iterations or 100 * problem.n
                solve = runner(method, budget, args.max_nfev, args.device, regime)
                started = time.perf_counter()
                run = solve(problem)
                seconds = time.perf_counter() - started
                for k, label in enumerate(problem.start_labels):
                    emit({"regime": regime, "problem": name, "n": problem.n, "m": problem.m, "start": label,
                          "method": method, "digits": round(run.digits[k], 2),
                          "iterations": run.iterations[k], "status": run.status[k],
                          "cost": run.cost[k], "f_star": problem.f_star,
                          "reached": run.reached[k], "stationarity": run.stationarity[k],
                          "converged_away": flagged(run, k), "seconds_all_starts": round(seconds, 4),
                          "device": str(args.device), "threads": torch.get_num_threads()})
        title = "nlls and SciPy at their defaults" if regime == "defaults" else "every tolerance 1e-15"
        harness.report(f"\n{regime} ({title}):\n" + table([r for r in emit.rows if r.get("regime") == regime], runnable))
    return emit.rows


if __name__ == "__main__":
    main()
