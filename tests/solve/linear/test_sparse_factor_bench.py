"""bench/bench_sparse_factor.py on its smallest matrices: valid JSON lines, every CPU backend
measured against the SuperLU baseline, solutions that solve. No timing is asserted."""
import json
import sys
from pathlib import Path

import pytest
import torch

from nlls.solve.linear.sparse import available_backends

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.fixture
def bench_module():
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH))
    try:
        import bench_sparse_factor

        yield bench_sparse_factor
    finally:
        sys.path.remove(str(BENCH))
        torch.set_num_threads(threads)


def test_the_script_measures_every_backend_against_superlu(capsys, bench_module):
    bench_module.main(["--matrices", "w100,w100x4", "--solves", "w100", "--repeats", "1",
                       "--warmup", "0", "--solve-repeats", "1"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert records[0]["measure"] == "environment"
    factor = [r for r in records if r["measure"] == "factor"]
    backends = available_backends(torch.device("cpu"))[1:]
    methods = {r["method"] for r in factor}
    assert {f"nlls_{b}" for b in backends} | {"superlu_default", "superlu_symmetric"} <= methods
    for r in factor:
        assert r["median_ms"] > 0 and r["ratio_to_baseline"] > 0
        if r["method"].startswith("nlls_"):
            assert r["max_residual"] < 1e-10
    assert {r["unknowns"] for r in factor} == {300, 1200}
    solves = [r for r in records if r["measure"] == "solve"]
    assert {r["method"] for r in solves} == {f"nlls_{b}" for b in backends}
    costs = [r["final_cost"] for r in solves]
    assert max(costs) - min(costs) < 1e-9 * max(costs)
