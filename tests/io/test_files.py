"""Files are never lost: a writer that fails midway leaves the old file; an unreadable file is
named in the error."""
import builtins
import io
import os
import subprocess
import sys
import textwrap

import pytest

import nlls
from nlls.io import read, read_g2o

GRAPH = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_write_g2o_on_a_full_disk_keeps_the_old_file(tmp_path):
    out = tmp_path / "solved.g2o"
    out.write_text("old content\n")
    result = _run(f"""
        import resource, signal
        import nlls
        problem = nlls.io.read(nlls.io.bundled_dataset())
        objective = problem.objective()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            problem.write_g2o({str(out)!r}, objective)
        except OSError as exc:
            print("OSError", exc.filename)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OSError", str(out)]
    assert out.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["solved.g2o"]  # no temporary file left


def test_write_g2o_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    graph = tmp_path / "g.g2o"
    graph.write_text(GRAPH)
    problem = read_g2o(graph)
    out = tmp_path / "out.g2o"
    out.write_text("old content\n")
    real_open = builtins.open

    class Failing(io.TextIOWrapper):
        def write(self, text):
            super().write(text[: len(text) // 2])
            self.flush()
            raise OSError(28, "No space left on device")

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and "b" not in mode:
            return Failing(handle.detach(), encoding="utf-8")
        return handle

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    with pytest.raises(OSError, match="No space left on device") as error:
        problem.write_g2o(out, problem.objective())
    monkeypatch.undo()
    assert error.value.filename == str(out)
    assert out.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.g2o", "out.g2o"]
    problem.write_g2o(out, problem.objective())  # and a write that works replaces it
    assert read(out).edges.pairs.tolist() == [[0, 1]]


def test_written_files_keep_the_mode_of_the_file_they_replace(tmp_path):
    graph = tmp_path / "g.g2o"
    graph.write_text(GRAPH)
    problem = read_g2o(graph)
    out = tmp_path / "out.g2o"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    problem.write_g2o(out, problem.objective())
    assert (out.stat().st_mode & 0o777) == 0o640
    fresh = tmp_path / "fresh.g2o"
    problem.write_g2o(fresh, problem.objective())
    umask = os.umask(0)
    os.umask(umask)
    assert (fresh.stat().st_mode & 0o777) == 0o666 & ~umask


def test_writing_into_a_missing_folder_names_the_file(tmp_path):
    graph = tmp_path / "g.g2o"
    graph.write_text(GRAPH)
    problem = read_g2o(graph)
    with pytest.raises(FileNotFoundError) as error:
        problem.write_g2o(tmp_path / "no" / "out.g2o", problem.objective())
    assert error.value.filename == str(tmp_path / "no" / "out.g2o")
    with pytest.raises(IsADirectoryError) as error:
        problem.write_g2o(tmp_path, problem.objective())
    assert error.value.filename == str(tmp_path)


def test_config_to_yaml_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  max_iterations: 3\n")
    from nlls.io import files

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        nlls.load_config({"optimizer": {"max_iterations": 9}}).to_yaml(path)
    assert path.read_text() == "optimizer:\n  max_iterations: 3\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


# ---- defect 10: an unreadable file is named ---------------------------------------------------
def _unreadable(monkeypatch, target):
    """Make reading ``target`` fail with EIO, as a failing disk does (opening still works)."""
    real_open = builtins.open

    class Broken:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __iter__(self):
            raise OSError(5, "Input/output error")

        def __getattr__(self, name):
            if name.startswith("read"):
                def fail(*args, **kwargs):
                    raise OSError(5, "Input/output error")
                return fail
            return getattr(self.handle, name)

    def fake_open(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        return Broken(handle) if os.fspath(file) == str(target) else handle

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


@pytest.mark.parametrize("reader", [read, read_g2o, nlls.io.read_toro, nlls.io.read_bal])
def test_an_io_error_while_reading_names_the_file(tmp_path, monkeypatch, reader):
    path = tmp_path / "graph.g2o"
    path.write_text(GRAPH)
    _unreadable(monkeypatch, path)
    with pytest.raises(OSError) as error:
        reader(path)
    monkeypatch.undo()
    assert error.value.errno == 5 and error.value.filename == str(path)
    assert str(path) in str(error.value) and "Input/output error" in str(error.value)


def test_an_io_error_while_reading_a_config_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  max_iterations: 3\n")
    _unreadable(monkeypatch, path)
    with pytest.raises(nlls.ConfigError, match=rf"{path}: cannot read configuration \(Input/output error\)"):
        nlls.load_config(path)
