"""Issue 20: ``nlls solve`` progress (driven by the optimizer's callback), ``--quiet``, ``--json``
and the checks made before solving."""
import io
import json
import re
import sys

import pytest
import torch

import nlls
from nlls import cli
from nlls.cli import main
from nlls.solve.state import IterationInfo

W100_FINAL = 0.5689273833553848  # GTSAM's final cost of the bundled w100.graph


def _summary_value(out: str, field: str) -> str:
    return next(line.split(None, len(field.split()))[-1] for line in out.splitlines()
                if line.strip().startswith(field))


def _progress(err: str):
    """``(iteration, error)`` of every plain progress line on stderr."""
    return [(int(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"^iteration\s+(\d+)\s+error (\S+)", err, flags=re.M)]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _fixed_count(tmp_path, iterations):
    config = tmp_path / "fixed.yaml"  # relative tests off, short steps: exactly `iterations` iterations
    config.write_text(f"optimizer:\n  name: levenberg_marquardt\n  max_iterations: {iterations}\n"
                      "  abs_err_tolerance: 0.0\n  rel_err_tolerance: 0.0\n  step_size: 0.05\n"
                      "linear_solver:\n  name: sparse_cholesky\n")
    return str(config)


# ---- --json ------------------------------------------------------------------------------------
def test_json_is_the_only_stdout_and_matches_the_summary_and_the_objective(tmp_path, capsys):
    output = tmp_path / "out.g2o"
    assert main(["solve", "--json", "--output", str(output)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert captured.out.count("\n") == 1 and captured.err == ""  # no progress with --json
    graph = nlls.io.read(nlls.io.bundled_dataset())
    start = graph.objective().error_metric().item()
    assert report["problem"] == str(nlls.io.bundled_dataset()) and report["format"] == "toro"  # VERTEX2/EDGE2 records
    assert report["poses"] == len(graph.vertex_ids) == 100 and report["edges"] == len(graph.edges)
    assert report["initial_cost"] == pytest.approx(start, rel=1e-12)
    assert report["final_cost"] == pytest.approx(W100_FINAL, rel=1e-3)
    solved = nlls.io.read(output).objective().error_metric().item()
    assert report["final_cost"] == pytest.approx(solved, rel=1e-6)  # the cost of what was written
    assert report["converged"] is True and report["status_counts"] == {
        "converged": 1, "max_iterations": 0, "failed": 0, "stopped": 0}
    assert report["output"] == str(output) and report["plot"] is None
    assert report["optimizer"] == "LevenbergMarquardt" and report["linear_solver"].startswith("SparseCholesky(")
    assert report["device"] == "cpu" and report["dtype"] == "float64" and report["elapsed_s"] > 0
    assert main(["solve"]) == 0  # the text summary of the same solve says the same
    out = capsys.readouterr().out
    assert float(_summary_value(out, "final cost")) == pytest.approx(report["final_cost"], rel=1e-9)
    assert float(_summary_value(out, "initial cost")) == pytest.approx(report["initial_cost"], rel=1e-9)
    assert int(_summary_value(out, "iterations")) == report["iterations"]


def test_json_of_a_failed_solve_has_no_nan_or_inf(tmp_path, capsys):
    path = tmp_path / "huge.g2o"  # the cost of the initial guess overflows to inf
    path.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1e200 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n")
    assert main(["solve", str(path), "--json"]) == 1
    text = capsys.readouterr().out
    report = json.loads(text)
    assert "Infinity" not in text and "NaN" not in text
    assert report["final_cost"] is None and report["converged"] is False
    assert report["status_counts"]["failed"] == 1


# ---- --quiet -----------------------------------------------------------------------------------
def test_quiet_prints_nothing_for_a_successful_solve(capsys):
    assert main(["solve", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_quiet_keeps_errors_and_exit_status(capsys):
    assert main(["solve", "missing.g2o", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("nlls: error:") and "missing.g2o" in captured.err


# ---- checks before solving ---------------------------------------------------------------------
@pytest.fixture
def no_solve(monkeypatch):
    """Records every solve (optimize) that is started."""
    calls = []
    real = nlls.Optimizer.optimize

    def recording(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(nlls.Optimizer, "optimize", recording)
    return calls


def test_plot_without_matplotlib_fails_before_solving(tmp_path, capsys, monkeypatch, no_solve):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    plot = tmp_path / "plot.png"
    assert main(["solve", "--plot", str(plot)]) == 2
    captured = capsys.readouterr()
    assert no_solve == [] and captured.out == "" and "iteration" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("nlls: error: --plot")
    assert "matplotlib" in captured.err and 'pip install "nlls[plot]"' in captured.err
    assert not plot.exists()


def test_an_unknown_plot_format_fails_before_solving(tmp_path, capsys, no_solve):
    pytest.importorskip("matplotlib")
    assert main(["solve", "--plot", str(tmp_path / "plot.nosuchformat")]) == 2
    err = capsys.readouterr().err
    assert no_solve == [] and err.count("\n") == 1 and "unknown image format 'nosuchformat'" in err


# ---- progress ----------------------------------------------------------------------------------
def test_progress_goes_to_stderr_and_ends_with_the_summary_s_final_cost(capsys):
    assert main(["solve"]) == 0
    captured = capsys.readouterr()
    lines = _progress(captured.err)
    assert [i for i, _ in lines] == list(range(1, len(lines) + 1)) and len(lines) >= 3
    assert _progress(captured.out) == [] and "damping" in captured.err
    final = float(_summary_value(captured.out, "final cost"))
    assert lines[-1][0] == int(_summary_value(captured.out, "iterations"))
    assert lines[-1][1] == pytest.approx(final, rel=1e-9) and final == pytest.approx(W100_FINAL, rel=1e-3)


def test_plain_progress_is_throttled_on_long_solves(tmp_path, capsys, monkeypatch):
    config = _fixed_count(tmp_path, 40)
    monkeypatch.setattr(cli, "LINE_INTERVAL", 1e9)  # a solve much faster than the interval
    assert main(["solve", "--config", config]) == 1  # max iterations: not converged
    captured = capsys.readouterr()
    lines = _progress(captured.err)
    assert [i for i, _ in lines] == list(range(1, cli.EVERY_ITERATION + 1)) + [40]
    assert lines[-1][1] == pytest.approx(float(_summary_value(captured.out, "final cost")), rel=1e-9)
    monkeypatch.setattr(cli, "LINE_INTERVAL", 0.0)  # a solve much slower than the interval
    assert main(["solve", "--config", config]) == 1
    assert [i for i, _ in _progress(capsys.readouterr().err)] == list(range(1, 41))


def _info(iteration, error=1.0, batch=1):
    return IterationInfo(iteration=iteration, error=torch.full((batch,), error), damping=None,
                         step_norm=torch.zeros(batch), status=torch.zeros(batch, dtype=torch.int8),
                         active=torch.ones(batch, dtype=torch.bool), elapsed=0.01 * iteration)


def test_plain_progress_prints_at_most_one_line_per_interval():
    now = [0.0]
    stream = io.StringIO()
    progress = cli.Progress(stream, total=1000, clock=lambda: now[0])
    for iteration in range(1, 1001):  # 10 s at 10 ms an iteration
        now[0] = 0.01 * iteration
        assert progress(_info(iteration, error=2.0)) is None  # never stops the solve
    progress.finish(1000, 2.0, "0/1", 10.0)
    iterations = [i for i, _ in _progress(stream.getvalue())]
    assert iterations[:cli.EVERY_ITERATION] == list(range(1, cli.EVERY_ITERATION + 1))
    later = iterations[cli.EVERY_ITERATION:-1]
    assert 15 <= len(later) <= 21 and all(b - a >= 50 for a, b in zip(later, later[1:]))
    assert iterations[-1] == 1000


def test_progress_shows_the_batch_mean_error():
    stream = io.StringIO()
    progress = cli.Progress(stream, total=5, bar=False)
    info = _info(1, batch=2)
    info.error = torch.tensor([1.0, 3.0])
    progress(info)
    assert _progress(stream.getvalue()) == [(1, 2.0)] and "active 2/2" in stream.getvalue()


def test_a_terminal_gets_a_tqdm_bar_else_lines(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["solve"]) == 0
    shown = terminal.getvalue()
    final = float(_summary_value(capsys.readouterr().out, "final cost"))
    assert "\r" in shown and "it/s" in shown and "iteration" not in shown
    assert re.search(r"error (\S+), active 0/1\]", shown).group(1) == f"{final:.6g}"
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm missing: plain lines on the terminal
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["solve"]) == 0
    assert _progress(terminal.getvalue())[-1][1] == pytest.approx(final, rel=1e-9)


def test_help_documents_quiet_and_json(capsys):
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--json" in out and "no progress and no summary" in out and "stderr" in out
