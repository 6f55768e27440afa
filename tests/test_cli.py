import subprocess
import sys
from pathlib import Path

import pytest

import nlls
from nlls.cli import main

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared datasets not found at {DATA}")


def test_python_m_nlls_solve_without_file_solves_the_bundled_dataset():
    result = subprocess.run([sys.executable, "-m", "nlls", "solve"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "summary:" in out and "w100.graph" in out
    assert "iteration   1" in out and "damping" in out  # progress per iteration
    final = float(next(line.split()[-1] for line in out.splitlines() if "final cost" in line))
    assert abs(final - 0.5689273833553848) / 0.5689273833553848 < 1e-3  # GTSAM's final cost
    assert "SparseCholesky(backend='auto', used=" in out


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["solve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--output", "--plot", "--device", "--dtype", "--max-iterations", "--quiet"):
        assert option in out


@needs_data
def test_solve_writes_output_and_plot(tmp_path, capsys):
    output, plot = tmp_path / "solved.g2o", tmp_path / "plot.png"
    status = main(["solve", str(DATA / "noisyToyGraph.txt"), "--output", str(output), "--plot", str(plot), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert output.exists() and plot.exists() and plot.stat().st_size > 1000
    solved = nlls.io.read(output).objective()
    assert abs(solved.error_metric().item() - 0.06834282473801372) < 1e-6  # starts at the optimum


@needs_data
@pytest.mark.parametrize("config, data", [
    ("pose_graph_2d.yaml", "w100.graph"),
    ("pose_graph_3d.yaml", "pose3example-grid.txt"),
    ("bundle_adjustment.yaml", "dubrovnik-3-7-pre.txt"),
])
def test_configs_solve_their_problems(config, data, capsys):
    config_path = Path(__file__).resolve().parents[1] / "configs" / config
    assert main(["solve", str(DATA / data), "--config", str(config_path), "--quiet"]) == 0
    assert "converged        yes" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["solve", "missing.g2o"], r"missing.g2o"),
    (["solve", "--frobnicate"], r"unrecognized arguments: --frobnicate"),
    (["solve", "--device", "cuda:99" if not __import__("torch").cuda.is_available() else "nonsense"], r"--device"),
    (["solve", "--max-iterations", "-3"], r"--max-iterations must be >= 0"),
])
def test_user_errors_are_one_line_with_status_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nlls: error:")
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


def test_malformed_file_and_bad_config_name_line_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.g2o"
    bad.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 zero 1 0 0 1 0 1\n")
    assert main(["solve", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.g2o:3:" in err and err.count("\n") == 1
    config = tmp_path / "bad.yaml"
    config.write_text("optimizer:\n  max_iter: 3\n")
    assert main(["solve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "optimizer.max_iter" in err and err.count("\n") == 1


def test_output_for_bal_is_refused_before_solving(tmp_path, capsys):
    bal = tmp_path / "tiny.bal"
    bal.write_text((DATA / "dubrovnik-3-7-pre.txt").read_text() if DATA.is_dir() else "")
    if not DATA.is_dir():
        pytest.skip("shared datasets not found")
    assert main(["solve", str(bal), "--output", str(tmp_path / "x.bal")]) == 2
    assert "writing is supported for pose graphs" in capsys.readouterr().err


def test_nlls_console_script_is_installed():
    script = Path(sys.executable).parent / "nlls"
    if not script.exists():
        pytest.skip("package not installed with its console script")
    result = subprocess.run([str(script), "solve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--plot" in result.stdout
