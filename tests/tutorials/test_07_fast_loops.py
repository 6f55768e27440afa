from pathlib import Path

import torch

from tests.tutorials import load_tutorial, run_single_threaded

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "07_fast_loops.py"


def test_fast_loops_tutorial():
    result = run_single_threaded(load_tutorial(TUTORIAL).main, batch_size=64, verbose=False)
    # the guarded cost function is caught, at its own line
    assert "reads a tensor value on the host" in result["guard_error"]
    assert "07_fast_loops.py" in result["guard_error"] and "_distance" in result["guard_error"]
    # the capturable one fits every circle
    assert result["centre_error"] < 0.05 and result["radius_error"] < 0.05
    assert int(result["iterations"].max()) < 20
    if torch.cuda.is_available():
        assert result["graph_difference"] < 1e-9
