"""Smoke tests of bench/: every module imports, and each script runs its smallest measurement and
prints valid JSON lines with the documented fields. Competitors that are not installed print
``skipped`` lines with a reason instead of failing. No timing is asserted."""
import ast
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nlls

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "optimistix_runner")
ENVIRONMENT = {"measure", "torch", "python", "threads", "device", "cpu"}


@pytest.fixture(autouse=True)
def keep_threads():
    """The scripts set torch's thread count; the rest of the test session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def lines(capsys):
    out = capsys.readouterr().out.splitlines()
    return [json.loads(line) for line in out if line.startswith("{")]


def measured(records, bench):
    """The records that are measurements of ``bench`` (not the environment line)."""
    assert all(r["bench"] == bench for r in records)
    return [r for r in records if r.get("measure") not in ("environment", "setup")]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    module = importlib.import_module(name)
    if name.startswith("bench_"):
        assert callable(module.main) and module.__doc__


def test_optimistix_runner_never_imports_torch_or_nlls():
    tree = ast.parse((BENCH / "optimistix_runner.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in getattr(node, "names", [])}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "nlls"}


def test_every_script_has_the_shared_options():
    for script in BENCH.glob("bench_*.py"):
        source = script.read_text()
        assert "harness.add_common_options" in source, script.name
        assert "harness.Emitter" in source or "harness.start(" in source, script.name
        assert "def emit" not in source and "def markdown_table" not in source, script.name


def test_harness_interleaves_within_repeats_and_budget():
    import harness

    calls = []

    def timer(name):
        return lambda: calls.append(name) or 1.0  # 1 ms a call

    times = harness.interleaved({"a": timer("a"), "b": timer("b")}, repeats=3)
    assert calls == ["a", "b"] * 3 and times == {"a": [1.0] * 3, "b": [1.0] * 3}
    times = harness.interleaved({"a": timer("a")}, repeats=100, max_seconds=0.0025)
    assert len(times["a"]) == 3  # stops once 2.5 ms of calls are spent
    times = harness.interleaved({"a": timer("a"), "b": timer("b")}, repeats=4, allowed={"b": 1})
    assert len(times["a"]) == 4 and len(times["b"]) == 1
    assert harness.paired_median([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert harness.paired_median([], []) is None
    timed = harness.Timed(lambda: 7, inner=3)
    assert timed() >= 0.0 and timed.result == 7


def test_curve_fit_emits_documented_lines(capsys):
    import bench_curve_fit

    bench_curve_fit.main(["--batch-sizes", "1", "--problems", "quadratic,exponential",
                          "--methods", "nlls_analytic,theseus_analytic", "--repeats", "1",
                          "--warmup", "0", "--no-per-iteration", "--threads", "1"])
    records = lines(capsys)
    assert ENVIRONMENT <= set(records[0]) and records[0]["measure"] == "environment"
    rows = measured(records, "curve_fit")
    keys = {"problem", "method", "batch_size", "iterations", "dtype", "device", "threads",
            "median_ms", "handwritten_ms", "ratio_to_handwritten", "max_param_diff_to_handwritten",
            "repeats"}
    solved = [r for r in rows if "skipped" not in r]
    assert {(r["problem"], r["method"]) for r in solved} >= {
        ("quadratic", "handwritten"), ("quadratic", "nlls_analytic"), ("exponential", "nlls_analytic")}
    for r in solved:
        assert keys <= set(r) and r["repeats"] == 1
        assert r["max_param_diff_to_handwritten"] < (1e-4 if r["dtype"] == "float32" else 1e-7)
    theseus = [r for r in rows if r["method"] == "theseus_analytic"]
    assert len(theseus) == 2
    for r in theseus:
        assert ("skipped" in r and "theseus" in r["skipped"]) or "median_ms" in r


def test_pose_graph_profile_by_the_public_protocol(capsys):
    import bench_pose_graph

    bench_pose_graph.main(["--sizes", "40", "--real", "", "--methods", "nlls_scipy,gtsam,theseus",
                           "--repeats", "1", "--profile"])
    rows = measured(lines(capsys), "pose_graph")
    by_method = {r["method"]: r for r in rows if r.get("measure") != "profile"}
    nlls_row = by_method["nlls_scipy"]
    for key in ("problem", "kind", "dimension", "poses", "edges", "build_ms", "first_solve_ms",
                "median_ms", "reset_ms", "iterations", "converged", "initial_cost", "final_cost",
                "linear_solver", "auto_backend", "final_cost_gap", "same_cost"):
        assert key in nlls_row, key
    assert nlls_row["converged"] and nlls_row["final_cost"] < 0.1 * nlls_row["initial_cost"]
    for other in ("gtsam", "theseus"):
        assert "skipped" in by_method[other] or "median_ms" in by_method[other]
    (profile,) = [r for r in rows if r.get("measure") == "profile"]
    phases = profile["ms_by_phase"]
    for label in ("start: all (per call)", "linearize: all", "factor: CSC build + numeric factorization",
                  "solve: triangular solves", "retract", "error at the candidate",
                  "accept: gain ratio (A delta)", "one iteration, all of it",
                  "finish: scatter back, info (per call)"):
        assert phases[label] >= 0.0, label
    assert profile["iterations"] == nlls_row["iterations"]


def test_protocol_solve_matches_optimize(tmp_path):
    import methods_nlls
    import problems_pose_graph
    import profile_pose_graph

    problem = problems_pose_graph.synthetic_problem(tmp_path, 40)
    runner = methods_nlls.nlls_pose_graph_runner(problem, "scipy")
    reference = runner.solve()
    solution = {k: v.tensor.clone() for k, v in runner.extra["objective"].optim_vars.items()}
    runner.reset()
    info, iterations = profile_pose_graph.protocol_solve(runner.extra["optimizer"],
                                                          profile_pose_graph.PhaseLog())
    assert iterations == reference["iterations"]
    assert float(info.final_error[0]) == pytest.approx(reference["final_cost"], rel=1e-12)
    for name, var in runner.extra["objective"].optim_vars.items():
        torch.testing.assert_close(var.tensor, solution[name], rtol=0, atol=1e-12)


def test_synthetic_graph_and_scipy_residual_follow_nlls_se2(tmp_path):
    import methods_scipy
    import problems_pose_graph

    truth, initial, edges, measurements, information = problems_pose_graph.synthetic_pose_graph(60)
    assert len(edges) == 59 + 6 and np.all(information == np.array([0.05, 0.05, 0.01]) ** -2.0)
    # odometry edges compose the initial guess
    first, step = (nlls.SE2(x_y_theta=torch.from_numpy(a[k:k + 1])) for a, k in
                   ((initial, 10), (measurements, 10)))
    torch.testing.assert_close(first.compose(step).x_y_theta(),
                               torch.from_numpy(initial[11:12]), rtol=0, atol=1e-12)
    path = tmp_path / "graph.g2o"
    problems_pose_graph.write_g2o(path, initial, edges, measurements, information)
    residual, x0, pattern = methods_scipy._se2(path)
    x = x0 + 0.1 * np.random.default_rng(1).normal(size=x0.shape)
    poses = torch.from_numpy(x.reshape(-1, 3))
    graph, rows, sqrt_information = problems_pose_graph.graph_arrays(path)
    between = nlls.SE2(x_y_theta=poses[rows[:, 0]]).between(nlls.SE2(x_y_theta=poses[rows[:, 1]]))
    error = nlls.SE2(graph.edges.measurements.double()).local(between)
    expected = torch.einsum("eab,eb->ea", sqrt_information.double(), error).numpy().ravel()
    np.testing.assert_allclose(residual(x), expected, rtol=0, atol=1e-10)
    assert pattern.shape == (3 * len(edges), x0.size) and pattern.nnz == 18 * len(edges)


def test_optimistix_without_jax_skips_with_a_reason(capsys, tmp_path):
    import bench_optimistix

    bench_optimistix.main(["--problems", "quadratic,rotation", "--batch-sizes", "2",
                           "--grad-batch-sizes", "2", "--repeats", "1", "--warmup", "0",
                           "--methods", "handwritten,nlls_analytic,optimistix,nlls_analytic_cuda_graph",
                           "--grad-methods", "handwritten_unroll,nlls_implicit,optimistix_implicit",
                           "--jax-python", str(tmp_path / "no-python"), "--pin-cpu", "-1",
                           "--output", str(tmp_path / "out.jsonl")])
    records = lines(capsys)
    setup = records[0]
    assert setup["measure"] == "setup" and "no JAX venv" in setup["optimistix_skipped"]
    rows = measured(records, "optimistix")
    skipped = {(r["problem"], r["measure"], r["method"]): r["skipped"] for r in rows if "skipped" in r}
    assert set(skipped) == {("quadratic", "forward", "optimistix"), ("rotation", "forward", "optimistix"),
                            ("quadratic", "forward", "nlls_analytic_cuda_graph"),
                            ("rotation", "forward", "nlls_analytic_cuda_graph"),
                            ("quadratic", "forward_backward", "optimistix_implicit")}
    for r in rows:
        if "skipped" in r:
            continue
        assert {"problem", "measure", "batch_size", "iterations", "optimizer", "dtype", "method",
                "median_ms", "repeats", "handwritten_ms", "ratio_to_handwritten",
                "max_param_diff_to_handwritten"} <= set(r)
        if r["measure"] == "forward":
            assert r["elements_differing"] == 0
        else:
            assert r["grad_rel_diff"] < 1e-4
    saved = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert saved == records
    assert (tmp_path / "out.md").read_text().startswith("| problem | measure |")


@pytest.mark.parametrize("script, argv, bench", [
    ("bench_geometry", ["--groups", "SE2", "--factors", "12", "--poses", "6", "--repeats", "1",
                        "--warmup", "0", "--iterations", "2"], "geometry"),
    ("bench_layer", ["--batch-size", "2", "--num-points", "10", "--iterations", "2", "--repeats", "1",
                     "--warmup", "0", "--no-peak"], "layer"),
    ("bench_normal_equations", ["--quick", "--batch-sizes", "1", "--dofs", "2", "--dtypes", "float64",
                                "--repeats", "1"], "normal_equations"),
    ("bench_check_every", ["--batch-sizes", "1", "--repeats", "1"], "check_every"),
])
def test_other_scripts_emit_json_lines(capsys, script, argv, bench):
    importlib.import_module(script).main(argv)
    records = lines(capsys)
    assert ENVIRONMENT <= set(records[0])
    rows = measured(records, bench)
    assert rows and all("skipped" not in r or r.get("method", "").startswith("theseus") for r in rows)
    if bench == "layer":
        unroll = next(r for r in rows if r["method"] == "nlls_unroll")
        assert unroll["grad_rel_diff"] < 1e-8 and unroll["solution_max_diff"] < 1e-10
    if bench == "geometry":
        jacobians = next(r for r in rows if r["measurement"] == "jacobians")
        assert jacobians["max_jacobian_diff"] < 1e-10


def test_scripts_run_from_the_command_line_as_documented():
    """``run_all.sh`` and ``gpu_check.sh`` name scripts that exist."""
    for shell in ("run_all.sh", "gpu_check.sh"):
        text = (BENCH / shell).read_text()
        for word in text.split():
            if word.startswith("bench/") and word.endswith(".py"):
                assert (BENCH.parent / word).is_file(), word


def test_mgh_reports_digits_and_iterations_beside_scipy(capsys):
    import bench_mgh

    bench_mgh.main(["--problems", "rosenbrock,linear_full_rank", "--methods",
                    "nlls_lm,nlls_dogleg,scipy_lm", "--max-iterations", "50"])
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert ENVIRONMENT <= set(records[0])
    rows = measured(records, "mgh")
    solved = [r for r in rows if "skipped" not in r]
    keys = {"problem", "n", "m", "start", "method", "digits", "iterations", "status", "cost", "f_star",
            "reached", "stationarity", "converged_away", "seconds_all_starts", "device", "threads"}
    assert all(keys <= set(r) for r in solved)
    assert {(r["problem"], r["start"]) for r in solved if r["method"] == "scipy_lm"} == {
        ("rosenbrock", "x0"), ("rosenbrock", "10x0"), ("rosenbrock", "100x0"), ("linear_full_rank", "x0")}
    assert all(r["digits"] >= 15 and r["reached"] for r in solved if r["method"] == "scipy_lm")
    lm = {(r["problem"], r["start"]): r for r in solved if r["method"] == "nlls_lm"}
    assert lm[("linear_full_rank", "x0")]["digits"] >= 12 and lm[("rosenbrock", "x0")]["iterations"] > 5
    dogleg = [r for r in rows if r["method"] == "nlls_dogleg"]
    assert dogleg and all("skipped" in r or "digits" in r for r in dogleg)
    assert "| problem | start | nlls_lm |" in err and "solved to 4 digits" in err and "reached (tests' tolerance)" in err
