"""bench/bench_build.py runs its smallest measurement and prints the documented JSON lines."""
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def test_build_bench_emits_every_stage_of_both_formulations(capsys):
    import bench_build

    threads = torch.get_num_threads()
    try:
        bench_build.main(["--problems", "w100", "--repeats", "1", "--warmup", "0"])
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert records[0]["measure"] == "environment"
    rows = records[1:]
    assert {(r["formulation"], r["stage"]) for r in rows} == {
        (f, s) for f in ("grouped", "objects")
        for s in ("read", "objective", "evaluator", "pattern", "prepare", "total")}
    assert all(r["bench"] == "build" and r["problem"] == "w100" and r["ms"] > 0 for r in rows)
