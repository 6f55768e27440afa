"""Sparse factorizations of real normal matrices: which CPU backend ``SparseCholesky`` should use.

The matrices are those Levenberg-Marquardt factors at its first iteration (``A + lambda D`` at the
file's initial values, built by nlls: ``nlls.io.read``, a ``SparseLinearization``, the optimizer's
own damping), for

* ``w10000``: GTSAM's Manhattan world ``w10000.graph`` (30,000 unknowns, ~1.25 M nonzeros);
* ``dubrovnik``: the BAL problem ``dubrovnik-3-7-pre.txt`` (48 unknowns);
* ``w100``: the bundled ``w100.graph`` (300 unknowns), also as a batch of 4 (``w100x4``);
* ``edge_only``: ``bench_scale.py``'s 20,000-pose edge-only graph from its spanning-tree start
  (60,000 unknowns; its factor fills in twice as much as w10000's), generated once.

Methods, each called in turns with the others (one call of each per repetition):

* ``superlu_default``: ``scipy.sparse.linalg.splu(A)`` with SciPy's defaults (COLAMD, partial
  pivoting), for reference;
* ``superlu_symmetric``: ``splu`` with ``permc_spec="MMD_AT_PLUS_A"``, ``diag_pivot_thresh=0``
  and ``SymmetricMode`` (the library call alone);
* ``qdldl_first``: ``qdldl.Solver(triu(A))``: AMD ordering, elimination tree and a numeric
  factorization; ``qdldl_update``: ``Solver.update`` (a numeric refactorization reusing them);
* ``cholmod_first`` / ``cholmod_numeric``: scikit-sparse's ``cholmod.analyze`` + ``cholesky`` /
  ``Factor.cholesky`` reusing the analysis (when scikit-sparse is installed);
* ``nlls_<backend>``: what an LM iteration pays, ``SparseCholesky(backend).factor(A).solve(g)``
  warm (the analysis cached), for every backend available here; ``nlls_scipy`` is SuperLU as
  nlls called it before QDLDL, the baseline of every ``ratio_to_baseline``.

One JSON line per (matrix, method): ``median_ms``, ``ratio_to_baseline`` (the median of the
per-repetition ratios to ``nlls_scipy``), and for the ``nlls_`` methods ``max_residual`` (the
largest ``|A x - g|`` relative to ``max |g|``). With ``--solves``, ``"measure": "solve"`` lines
time whole warm LM solves of the pose graphs with each backend (``ms_per_iteration``, the final
cost). A markdown table goes to stderr.

    .venv/bin/python bench/bench_sparse_factor.py                       # ~1 min on 2 cores
    .venv/bin/python bench/bench_sparse_factor.py --matrices w100 --repeats 3
    .venv/bin/python bench/bench_sparse_factor.py --solves w10000
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import harness
import torch

import nlls
from nlls.solve.linear.sparse import available_backends
from nlls.solve.systems import SparseMatrix

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
FILES = {"w10000": DATA / "w10000.graph", "dubrovnik": DATA / "dubrovnik-3-7-pre.txt",
         "w100": nlls.io.bundled_dataset(), "w100x4": nlls.io.bundled_dataset(),
         "edge_only": Path(harness.RESULTS) / "scale" / "edge_only_20000-seed0.g2o"}
BATCH = {"w100x4": 4}
BASELINE = "nlls_scipy"


def normal_matrix(path: Path, batch: int = 1) -> Tuple[SparseMatrix, torch.Tensor]:
    """LM's first damped normal matrix and gradient of the problem in ``path`` (float64)."""
    objective = nlls.io.read(path).objective(dtype=torch.float64)
    optimizer = nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky")
    optimizer.prepare()
    state = optimizer.init(False, False, False)
    system = optimizer.linearization.linearize(state.values, state.aux)
    matrix = system.damped(state.step_state.damping, getattr(optimizer, "diagonal_scaling", False))
    values, g = matrix.values, system.g
    if batch > 1:  # perturbed copies: the elements differ, the pattern is shared
        scale = 1.0 + 0.01 * torch.arange(batch, dtype=values.dtype)[:, None]
        values, g = values.expand(batch, -1) * scale, g.expand(batch, -1) * scale
    return SparseMatrix(matrix.pattern, values.contiguous()), g.contiguous()


def scipy_csc(matrix: SparseMatrix):
    """The block-diagonal CSC matrix of the batch (the pattern is symmetric: CSR = CSC)."""
    import scipy.sparse

    pattern, batch = matrix.pattern, matrix.values.shape[0]
    blocks = [scipy.sparse.csc_matrix((matrix.values[b].numpy(), pattern.cols.numpy(),
                                       pattern.crow.numpy()), shape=(pattern.dof,) * 2)
              for b in range(batch)]
    return scipy.sparse.block_diag(blocks, format="csc") if batch > 1 else blocks[0]


def library_calls(matrix: SparseMatrix) -> Dict[str, Callable[[], object]]:
    """The raw library calls (conversions done once, outside the timing)."""
    import scipy.sparse
    import scipy.sparse.linalg

    csc = scipy_csc(matrix)
    calls: Dict[str, Callable[[], object]] = {
        "superlu_default": lambda: scipy.sparse.linalg.splu(csc),
        "superlu_symmetric": lambda: scipy.sparse.linalg.splu(
            csc, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}),
    }
    if importlib.util.find_spec("qdldl") is not None:
        import qdldl

        upper = scipy.sparse.triu(csc, format="csc")
        solver = qdldl.Solver(upper, upper=True)
        calls["qdldl_first"] = lambda: qdldl.Solver(upper, upper=True)
        calls["qdldl_update"] = lambda: solver.update(upper, upper=True)
    if importlib.util.find_spec("sksparse") is not None:
        from sksparse import cholmod

        analysis = cholmod.analyze(csc, mode="auto")
        calls["cholmod_first"] = lambda: cholmod.analyze(csc, mode="auto").cholesky(csc)
        calls["cholmod_numeric"] = lambda: analysis.cholesky(csc)
    return calls


def nlls_calls(matrix: SparseMatrix, g: torch.Tensor) -> Dict[str, Callable[[], object]]:
    """``SparseCholesky(backend).factor(A).solve(g)`` per CPU backend, warmed once."""
    calls: Dict[str, Callable[[], object]] = {}
    for backend in available_backends(torch.device("cpu"))[1:]:
        solver = nlls.SparseCholesky(backend)

        def call(solver=solver):
            return solver.factor(matrix).solve(g)

        call()  # the analysis, once per structure
        calls[f"nlls_{backend}"] = call
    return calls


def max_residual(matrix: SparseMatrix, g: torch.Tensor, result) -> float:
    """``max |A x - g| / max |g|`` of a solve's ``(x, ok)``."""
    x, ok = result
    assert bool(ok.all()), "the factorization failed"
    return float((matrix.matvec(x) - g).abs().max() / g.abs().max())


def measure_matrix(name: str, args, emit) -> None:
    matrix, g = normal_matrix(FILES[name], BATCH.get(name, 1))
    calls = {**nlls_calls(matrix, g), **library_calls(matrix)}
    timers = {method: harness.Timed(call) for method, call in calls.items()}
    for timer in timers.values():
        harness.warm_up(timer, args.warmup, enough_ms=200.0)
    times = harness.interleaved(timers, args.repeats, args.max_seconds)
    size = {"unknowns": matrix.pattern.dof * matrix.values.shape[0],
            "nonzeros": matrix.pattern.nnz * matrix.values.shape[0]}
    for method, samples in times.items():
        record = {"measure": "factor", "matrix": name, **size, "method": method,
                  "median_ms": harness.median(samples), "repeats": len(samples),
                  "ratio_to_baseline": harness.paired_median(samples, times[BASELINE])}
        if method.startswith("nlls_"):
            record["max_residual"] = max_residual(matrix, g, timers[method].result)
        emit(record)


def measure_solves(name: str, args, emit) -> None:
    """Warm LM solves of a pose graph with each CPU backend, interleaved."""
    runs: Dict[str, Callable[[], float]] = {}
    results: Dict[str, Dict] = {}
    for backend in available_backends(torch.device("cpu"))[1:]:
        objective = nlls.io.read(FILES[name]).objective(dtype=torch.float64)
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver=nlls.SparseCholesky(backend),
                                            max_iterations=100, rel_err_tolerance=1e-10)
        start = {k: v.tensor.clone() for k, v in objective.optim_vars.items()}

        def solve(optimizer=optimizer, objective=objective, start=start, backend=backend):
            objective.update(start)
            info = optimizer.optimize()
            results[backend] = {"iterations": int(info.iterations[0]),
                                "final_cost": float(info.final_error[0])}

        runs[backend] = harness.Timed(solve)
        runs[backend]()  # warm: the analysis and the evaluator, once
    times = harness.interleaved(runs, args.solve_repeats)
    for backend, samples in times.items():
        iterations = results[backend]["iterations"]
        emit({"measure": "solve", "matrix": name, "method": f"nlls_{backend}",
              "median_ms": harness.median(samples), "repeats": len(samples),
              "ms_per_iteration": harness.median(samples) / max(iterations, 1), **results[backend],
              "ratio_to_baseline": harness.paired_median(samples, times["scipy"])})


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrices", default="w10000,dubrovnik,w100,w100x4",
                        help=f"comma-separated, from {', '.join(FILES)}")
    parser.add_argument("--solves", default="w100",
                        help="pose graphs to solve whole with each backend ('' for none)")
    parser.add_argument("--solve-repeats", type=int, default=3, help="timed solves per backend")
    harness.add_common_options(parser, threads=1, warmup=2, repeats=7, max_seconds=30.0)
    args = parser.parse_args(argv)
    matrices, solves = harness.split(args.matrices), harness.split(args.solves)
    harness.check_choices(parser, matrices + solves, FILES, "matrices")
    emit = harness.start(parser, args, "sparse_factor")
    for name in matrices:
        if name == "edge_only" and not FILES[name].is_file():
            from bench_scale import edge_only_file

            edge_only_file(FILES[name].parent, 20000)
        if not FILES[name].is_file():
            emit({"measure": "factor", "matrix": name, "skipped": f"no file {FILES[name]}"})
            continue
        measure_matrix(name, args, emit)
    for name in solves:
        if FILES[name].is_file():
            measure_solves(name, args, emit)
    rows = [(r["matrix"], r["measure"], r["method"], harness.fmt(r.get("median_ms"), ".2f"),
             harness.fmt(r.get("ratio_to_baseline"), ".2f"), harness.fmt(r.get("max_residual"), ".1e"))
            for r in emit.rows if "skipped" not in r]
    harness.report(harness.markdown_table(
        ("matrix", "measure", "method", "median ms", f"÷ {BASELINE}", "residual"), rows, "lllrrr"))


if __name__ == "__main__":
    main()
