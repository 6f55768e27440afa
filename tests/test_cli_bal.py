"""``nlls solve`` on bundle-adjustment (BAL) files: the default configuration converges, ``--output``
writes BAL, ``--plot`` draws cameras and points; ``BALProblem.write_bal`` round trips."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import nlls
from nlls import cli_plot
from nlls.cli import BAL_CONFIG, main
from nlls.cli_plot import view_limits
from nlls.io import BALProblem, read_bal

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
DUBROVNIK = DATA / "dubrovnik-3-7-pre.txt"
GTSAM_FINAL = 0.020334477760063786  # GTSAM's LM final cost on dubrovnik-3-7 (../shared/data/README.md)
needs_data = pytest.mark.skipif(not DUBROVNIK.is_file(), reason=f"shared datasets not found at {DATA}")


def _json(capsys):
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one JSON object and nothing else on stdout
    return json.loads(out)


def _scene(num_points=40, outliers=0, seed=0):
    """A small BAL problem: 4 cameras on a circle looking at a cloud of points, exact measurements
    projected with the BAL model, optionally a few points moved far away."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(num_points, 3, generator=gen, dtype=torch.float64)
    cameras = torch.zeros(4, 9, dtype=torch.float64)
    for i, angle in enumerate(torch.linspace(0, 1.5 * math.pi, 4).tolist()):
        # camera i looks along -z_cam at the origin from centre 8 (sin a, 0, cos a): R = rotation about y by -a
        w = torch.tensor([0.0, -angle, 0.0], dtype=torch.float64)
        rotation = nlls.SO3.exp_tensor(w[None])[0]
        center = 8.0 * torch.tensor([math.sin(angle), 0.0, math.cos(angle)], dtype=torch.float64)
        cameras[i, :3], cameras[i, 3:6] = w, -rotation @ center
        cameras[i, 6], cameras[i, 7], cameras[i, 8] = 500.0, 1e-3, 1e-5
    if outliers:
        points[:outliers] = 1e6 * torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)
    pairs = np.array([(i, j) for j in range(num_points) for i in range(4)], dtype=np.int64)
    problem = BALProblem(cameras, points, pairs, torch.zeros(len(pairs), 2, dtype=torch.float64))
    objective = problem.objective(vectorized=False)
    problem.measurements = torch.stack([objective.cost_functions[f"obs{k}"].error()[0] for k in range(len(pairs))])
    return problem


def test_the_bal_configuration_file_is_the_cli_default():
    assert nlls.load_config(ROOT / "configs" / "bundle_adjustment.yaml") == nlls.load_config(BAL_CONFIG)


@needs_data
def test_default_solve_of_a_bal_file_converges_below_gtsam(capsys):
    assert main(["solve", str(DUBROVNIK), "--json"]) == 0
    report = _json(capsys)
    assert report["converged"] and report["status_counts"]["converged"] == 1
    assert report["config"] == "default: bundle adjustment" and report["linear_solver"].startswith("Schur(")
    assert (report["format"], report["cameras"], report["points"], report["observations"]) == ("bal", 3, 7, 19)
    assert report["initial_cost"] == pytest.approx(2764.2199844221705, rel=1e-12)
    # 38 residuals, 48 unknowns: the observations are fitted exactly, far below GTSAM's stopping point
    assert report["final_cost"] <= GTSAM_FINAL and report["final_cost"] < 1e-8
    assert report["iterations"] < BAL_CONFIG["optimizer"]["max_iterations"]
    assert report["output"] is None and report["plot"] is None


@needs_data
def test_the_summary_names_the_configuration_and_an_explicit_config_wins(tmp_path, capsys):
    assert main(["solve", str(DUBROVNIK)]) == 0
    out = capsys.readouterr().out
    assert "converged        yes" in out and "configuration    default: bundle adjustment" in out
    config = tmp_path / "lm.yaml"
    config.write_text("optimizer:\n  name: levenberg_marquardt\n  max_iterations: 3\nlinear_solver:\n"
                      "  name: sparse_cholesky\n")
    assert main(["solve", str(DUBROVNIK), "--config", str(config), "--json"]) == 1  # 3 iterations: not converged
    report = _json(capsys)
    assert report["config"] == str(config) and report["iterations"] == 3
    assert report["linear_solver"].startswith("SparseCholesky(")


@needs_data
def test_max_iterations_overrides_the_bal_default(capsys):
    assert main(["solve", str(DUBROVNIK), "--max-iterations", "2", "--json"]) == 1
    report = _json(capsys)
    assert report["iterations"] == 2 and not report["converged"]


@needs_data
def test_output_writes_the_solved_problem_in_bal_format(tmp_path, capsys):
    output = tmp_path / "solved.bal"
    assert main(["solve", str(DUBROVNIK), "--output", str(output), "--json"]) == 0
    report = _json(capsys)
    assert report["output"] == str(output)
    original, solved = read_bal(DUBROVNIK), read_bal(output)
    assert np.array_equal(solved.observations, original.observations)
    assert torch.equal(solved.measurements, original.measurements)
    assert not torch.allclose(solved.cameras, original.cameras)  # the optimized values, not the file's
    cost = solved.objective().error_metric().item()
    assert cost == pytest.approx(report["final_cost"], rel=1e-6, abs=1e-14)
    assert [p.name for p in tmp_path.iterdir()] == ["solved.bal"]  # no temporary file left


@needs_data
@pytest.mark.parametrize("name, check", [
    ("scene.png", lambda path: path.read_bytes().startswith(b"\x89PNG")),
    ("scene.svg", lambda path: path.read_text().lstrip().startswith("<?xml")),
    ("scene.pdf", lambda path: path.read_bytes().startswith(b"%PDF")),
])
def test_plot_of_a_bal_file_is_written_in_the_extensions_format(tmp_path, capsys, name, check):
    pytest.importorskip("matplotlib")
    plot = tmp_path / name
    assert main(["solve", str(DUBROVNIK), "--plot", str(plot), "--json"]) == 0
    assert _json(capsys)["plot"] == str(plot)
    assert plot.stat().st_size > 1000 and check(plot)


def test_plot_of_a_scene_with_outliers_shows_the_scene(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    path, plot = tmp_path / "outliers.bal", tmp_path / "outliers.png"
    _scene(num_points=200, outliers=3).write_bal(path)  # 1.5 % of the points a million units away
    views = []
    monkeypatch.setattr(cli_plot, "view_limits", lambda *args: views.append(view_limits(*args)) or views[-1])
    assert main(["solve", str(path), "--plot", str(plot), "--quiet"]) == 0  # exact measurements: cost 0
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert len(views) == 1 and float(views[0].abs().max()) < 50  # the cloud (radius ~3) and cameras (8 away)


def test_write_bal_round_trips_exactly(tmp_path):
    problem = _scene()
    problem.cameras[:, :6] += 1e-3 * torch.arange(24, dtype=torch.float64).reshape(4, 6) / 7.0  # digits to keep
    path = tmp_path / "scene.bal"
    problem.write_bal(path)
    again = read_bal(path)
    for name in ("cameras", "points", "measurements"):
        torch.testing.assert_close(getattr(again, name), getattr(problem, name), rtol=1e-12, atol=0)
    assert np.array_equal(again.observations, problem.observations)
    path.with_name("twice.bal").write_text("")
    again.write_bal(path.with_name("twice.bal"))
    assert path.with_name("twice.bal").read_text() == path.read_text()


@needs_data
def test_write_bal_of_the_real_file_reads_back_equal(tmp_path):
    original = read_bal(DUBROVNIK)
    original.write_bal(tmp_path / "copy.txt")
    copy = read_bal(tmp_path / "copy.txt")
    for name in ("cameras", "points", "measurements"):
        torch.testing.assert_close(getattr(copy, name), getattr(original, name), rtol=1e-12, atol=0)
    assert copy.objective().error_metric().item() == pytest.approx(2764.2199844221705, rel=1e-12)


def test_write_bal_takes_the_objectives_values_and_keeps_unobserved_points(tmp_path):
    problem = _scene(num_points=5)
    seen = problem.observations[:, 1] != 3  # point 3 unobserved
    problem.observations, problem.measurements = problem.observations[seen], problem.measurements[torch.from_numpy(seen)]
    objective = problem.objective()
    assert "p3" not in objective.optim_vars
    objective.optim_vars["c1"].tensor.add_(0.25)
    objective.optim_vars["p4"].tensor.mul_(2.0)
    problem.write_bal(tmp_path / "moved.bal", objective)
    moved = read_bal(tmp_path / "moved.bal")
    torch.testing.assert_close(moved.cameras[1], problem.cameras[1] + 0.25, rtol=1e-15, atol=0)
    torch.testing.assert_close(moved.points[4], 2.0 * problem.points[4], rtol=1e-15, atol=0)
    assert torch.equal(moved.points[3], problem.points[3]) and torch.equal(moved.cameras[0], problem.cameras[0])


def test_write_bal_refuses_a_batch_and_leaves_the_old_file(tmp_path):
    problem = _scene(num_points=3)
    objective = problem.objective()
    objective.optim_vars["c0"].tensor = objective.optim_vars["c0"].tensor.expand(2, 9).clone()
    path = tmp_path / "old.bal"
    path.write_text("old\n")
    with pytest.raises(ValueError, match="'c0'.*batch element"):
        problem.write_bal(path, objective)
    assert path.read_text() == "old\n"
    with pytest.raises(IsADirectoryError):
        problem.write_bal(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["old.bal"]


def test_camera_centers_are_minus_r_transpose_t():
    w = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.pi / 2]], dtype=torch.float64)
    t = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    cameras = torch.cat([w, t, torch.ones(2, 3, dtype=torch.float64)], dim=1)
    # R_z(90) maps x to y: R^T t = (t_y, -t_x, t_z)
    expected = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, 1.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(cli_plot.camera_centers(cameras), expected, rtol=0, atol=1e-12)


def test_the_top_view_ignores_outliers_and_holds_the_cameras():
    gen = torch.Generator().manual_seed(1)
    flat = torch.randn(2000, 3, generator=gen, dtype=torch.float64) * torch.tensor([10.0, 5.0, 0.5],
                                                                                    dtype=torch.float64)
    points = flat.clone()
    points[:5] = 1e7  # far outliers
    origin, axes = cli_plot.top_view_axes(points)
    assert abs(float(axes[:, 0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64))) > 0.99  # largest spread
    assert abs(float(axes[:, 1] @ torch.tensor([0, 1.0, 0], dtype=torch.float64))) > 0.99
    projected = (points - origin) @ axes
    cameras = torch.tensor([[60.0, 0.0], [0.0, -40.0], [5e5, 0.0]], dtype=torch.float64)  # the last one is lost
    limits = cli_plot.view_limits(projected, cameras)
    assert limits[0, 1] < 200 and limits[0, 0] < -20 and limits[0, 1] >= 60 and limits[1, 0] <= -40
    inside = ((projected >= limits[:, 0]) & (projected <= limits[:, 1])).all(dim=1)
    assert not bool(inside[:5].any()) and int(inside[5:].sum()) >= 1990
