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
    assert "iteration   1" in result.stderr and "damping" in result.stderr  # progress per iteration, on stderr
    final = float(next(line.split()[-1] for line in out.splitlines() if "final cost" in line))
    assert abs(final - 0.5689273833553848) / 0.5689273833553848 < 1e-3  # GTSAM's final cost
    assert "SparseCholesky(backend='auto', used=" in out


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["solve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--output", "--plot", "--device", "--dtype", "--max-iterations", "--quiet", "--json"):
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
    assert main(["solve", str(DATA / data), "--config", str(config_path)]) == 0  # --quiet: no summary
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


def test_nlls_console_script_is_installed():
    script = Path(sys.executable).parent / "nlls"
    if not script.exists():
        pytest.skip("package not installed with its console script")
    result = subprocess.run([str(script), "solve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--plot" in result.stdout


# ---- issue 17: devices and backends refused in one line; outputs never lost or faked ---------
@pytest.mark.parametrize("device", ["meta", "mps", "xpu", "cuda:99", "cpu:1", "ipu"])
def test_unusable_devices_are_one_line_with_status_2(device, capsys):
    if device == "cuda:99" and __import__("torch").cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("a machine with 100 GPUs")
    assert main(["solve", "--device", device, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nlls: error: --device") and "Traceback" not in err


@pytest.mark.parametrize("backend", ["cudss", "cholmod"])
def test_a_backend_missing_here_is_refused_before_solving(tmp_path, capsys, backend):
    import torch

    from nlls.solve.linear.sparse import available_backends
    if backend in available_backends(torch.device("cpu")):
        pytest.skip(f"{backend} runs on this machine's CPU")
    config = tmp_path / "c.yaml"
    config.write_text(f"linear_solver:\n  name: sparse_cholesky\n  backend: {backend}\n")
    assert main(["solve", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{backend}'" in err and "Traceback" not in err
    assert ("scikit-sparse" in err) == (backend == "cholmod")


def test_a_backend_of_another_device_is_refused_before_solving(tmp_path, capsys, monkeypatch):
    from nlls.solve.linear import sparse

    monkeypatch.setattr(sparse, "available_backends",
                        lambda device=None: ("auto", "scipy") if device is not None else sparse.BACKENDS)
    config = tmp_path / "c.yaml"
    config.write_text("linear_solver:\n  name: sparse_cholesky\n  backend: cudss\n")
    assert main(["solve", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "linear_solver.backend 'cudss'" in err and "--device cpu" in err


def _diverging_graph(tmp_path):
    path = tmp_path / "huge.g2o"  # the cost of the initial guess overflows to inf
    path.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1e200 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n")
    return path


def test_a_failed_solve_writes_nothing(tmp_path, capsys):
    output, plot = tmp_path / "out.g2o", tmp_path / "plot.png"
    output.write_text("old content\n")
    plot.write_bytes(b"old plot")
    status = main(["solve", str(_diverging_graph(tmp_path)), "--output", str(output), "--plot", str(plot), "--quiet"])
    captured = capsys.readouterr()
    assert status == 1
    assert output.read_text() == "old content\n" and plot.read_bytes() == b"old plot"
    assert "written to" not in captured.out
    assert captured.err.count("\n") == 1 and "nothing written" in captured.err
    assert str(output) in captured.err and str(plot) in captured.err
    new_output = tmp_path / "new.g2o"
    assert main(["solve", str(_diverging_graph(tmp_path)), "--output", str(new_output), "--quiet"]) == 1
    assert not new_output.exists()


def test_output_on_a_full_disk_keeps_the_old_file(tmp_path):
    output = tmp_path / "out.g2o"
    output.write_text("old content\n")
    script = (
        "import resource, signal, sys\n"
        "import nlls.cli, matplotlib.pyplot\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        f"sys.exit(nlls.cli.main(['solve', '--output', {str(output)!r}, '--quiet']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and str(output) in result.stderr
    assert output.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.g2o"]


def test_plot_failing_midway_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    plot = tmp_path / "plot.png"
    plot.write_bytes(b"old plot")

    def failing_savefig(self, fname, *args, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    assert main(["solve", "--plot", str(plot), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(plot) in err and "No space left" in err
    assert plot.read_bytes() == b"old plot" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_plot_format_follows_the_extension(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plot.svg"
    assert main(["solve", "--plot", str(plot), "--quiet", "--max-iterations", "2"]) in (0, 1)
    assert plot.read_text().lstrip().startswith("<?xml")
    bad = tmp_path / "plot.nosuchformat"
    assert main(["solve", "--plot", str(bad), "--quiet", "--max-iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plot" in err and not bad.exists()


def test_an_unreadable_problem_file_is_named(tmp_path, capsys, monkeypatch):
    import builtins
    import io

    path = tmp_path / "graph.g2o"
    path.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n")
    real_open = builtins.open

    class Broken(io.BufferedReader):
        def read(self, *args):
            raise OSError(5, "Input/output error")

    def fake_open(file, mode="r", *args, **kwargs):
        if str(file) == str(path):
            return Broken(io.FileIO(file, "r"))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    status = main(["solve", str(path), "--quiet"])
    monkeypatch.undo()
    assert status == 2
    assert capsys.readouterr().err == f"nlls: error: {path}: Input/output error\n"


def test_error_lines_are_bounded(tmp_path, capsys):
    long_name = "x" * 5000
    assert main(["solve", "--device", long_name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 700


def _edge_only_w100(tmp_path):
    source = nlls.io.bundled_dataset()
    path = tmp_path / "w100-edges.graph"
    path.write_text("".join(line for line in source.read_text().splitlines(keepends=True)
                            if not line.startswith("VERTEX")))
    return path


def test_an_edge_only_file_solves_and_says_how_it_was_initialized(tmp_path, capsys):
    import json

    path = _edge_only_w100(tmp_path)
    assert main(["solve", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["initialization"] == "spanning_tree" and report["converged"]
    assert report["final_cost"] == pytest.approx(0.5689, rel=1e-3)  # GTSAM's optimum of w100
    assert report["information_order"] in ("toro", "g2o")
    assert main(["solve", str(path), "--initialization", "chain", "--max-iterations", "0", "--json"]) in (0, 1)
    chained = json.loads(capsys.readouterr().out)
    assert chained["initialization"] == "chain" and chained["initial_cost"] > 10 * report["initial_cost"]


def test_reader_options_are_refused_for_bal_files(capsys):
    if not DATA.is_dir():
        pytest.skip("shared datasets not found")
    assert main(["solve", str(DATA / "dubrovnik-3-7-pre.txt"), "--initialization", "chain"]) == 2
    assert "initialization applies to pose graphs" in capsys.readouterr().err
