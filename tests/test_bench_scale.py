"""bench/bench_scale.py on tiny sizes: the documented JSON lines, the edge-only file as GTSAM reads
it, the peak-memory probe. No timing is asserted."""
import json
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nlls

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_scale  # noqa: E402


def _gtsam():
    try:
        import gtsam
    except ImportError:
        return None
    return gtsam


def test_scale_bench_emits_both_methods_and_their_comparison(capsys, tmp_path):
    threads = torch.get_num_threads()
    try:
        bench_scale.main(["--problems", "w100.graph,noisyToyGraph.txt,edge_only", "--edge-only-poses", "150",
                          "--repeats", "1", "--work-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert records[0]["measure"] == "environment" and len(records[1]["load_average"]) == 3
    by = {(r["problem"], r["method"]): r for r in records[2:]}
    assert set(by) == {(p, m) for p in ("w100.graph", "noisyToyGraph.txt", "edge_only_150")
                       for m in ("nlls", "gtsam")}
    for problem in ("w100.graph", "noisyToyGraph.txt", "edge_only_150"):
        mine = by[problem, "nlls"]
        assert mine["termination"] == "converged" and mine["iterations"] >= 1
        assert mine["total_s"] >= mine["solve_s"] > 0 and mine["peak_mb"] > 0
        assert mine["final_cost"] < mine["initial_cost"]
        if _gtsam() is None:
            assert "gtsam does not import" in by[problem, "gtsam"]["skipped"]
            continue
        theirs = by[problem, "gtsam"]
        assert abs(mine["cost_rel_diff"]) <= 1e-3  # the same minimum
        assert mine["iteration_diff"] == mine["iterations"] - theirs["iterations"]
        assert mine["ratio"] == pytest.approx(mine["total_s"] / theirs["total_s"], rel=1e-2)
    assert by["w100.graph", "nlls"]["readme_gtsam_final_cost"] == 0.5689273833553848
    assert "| problem | nlls s | GTSAM s | ratio |" in captured.err


def test_edge_only_file_is_time_ordered_edges_without_vertices(tmp_path):
    path = bench_scale.edge_only_file(tmp_path / "a", 400, seed=3)
    again = bench_scale.edge_only_file(tmp_path / "b", 400, seed=3)
    assert path.read_bytes() == again.read_bytes()  # deterministic
    lines = path.read_text().splitlines()
    assert all(line.startswith("EDGE_SE2 ") for line in lines)
    pairs = np.array([[int(w) for w in line.split()[1:3]] for line in lines])
    later = pairs.max(1)
    assert np.all(np.diff(later) >= 0)  # pose by pose
    first = np.unique(later, return_index=True)[1]
    assert np.all(pairs[first, 1] - pairs[first, 0] == 1)  # its odometry edge first
    assert len(lines) > 1.3 * 399  # closures beside the 399 odometry edges
    graph = nlls.io.read(path)
    assert len(graph.vertex_ids) == 400 and graph.initialization == "spanning_tree"


def test_gtsam_side_starts_from_the_chained_odometry(tmp_path):
    gtsam = _gtsam()
    if gtsam is None:
        pytest.skip("gtsam does not import")
    path = bench_scale.edge_only_file(tmp_path, 300, seed=1)
    _, initial = gtsam.readG2o(str(path), False)
    theirs = np.array([[initial.atPose2(k).x(), initial.atPose2(k).y(), initial.atPose2(k).theta()]
                       for k in range(300)])
    chained = nlls.io.read(path, initialization="chain")
    mine = nlls.SE2(chained.poses[np.argsort(chained.vertex_ids)]).x_y_theta().numpy()
    np.testing.assert_allclose(mine, theirs, atol=1e-8)


def test_peak_memory_sees_an_allocation():
    if not bench_scale.reset_peak():
        pytest.skip("the peak resident size cannot be reset here")
    before = bench_scale.peak_mb()
    size = 40 * 2 ** 20
    block = mmap.mmap(-1, size)  # fresh pages (an array could reuse memory the process already holds)
    block.write(b"\x01" * size)  # touched: resident
    assert bench_scale.peak_mb() >= before + 30
    block.close()


def test_a_gpu_device_prints_one_skipped_line(capsys):
    assert bench_scale.main(["--device", "cuda", "--problems", "w100.graph"]) == []
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["device"] == "cuda" and "CPU-only" in record["skipped"]


def test_an_ignored_peak_reset_does_not_count(monkeypatch):
    # Some sandboxes accept the write to clear_refs and keep the old peak.
    fields = {"VmHWM": 800.0, "VmRSS": 300.0}
    monkeypatch.setattr(bench_scale, "_status_mb", fields.get)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs cannot be written here")
    assert bench_scale.reset_peak() is False
    fields["VmHWM"] = 301.0
    assert bench_scale.reset_peak() is True
