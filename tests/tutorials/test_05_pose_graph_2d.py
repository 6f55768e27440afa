"""Tutorial 05 runs (small): the cost drops and the solution is consistent with the noise."""
import pathlib

from tests.tutorials import load_tutorial

TUTORIAL = pathlib.Path(__file__).resolve().parents[2] / "tutorials" / "05_pose_graph_2d.py"


def _load():
    return load_tutorial(TUTORIAL)


def test_pose_graph_tutorial(tmp_path):
    result = _load().main(num_poses=60, num_loop_closures=12, output_dir=str(tmp_path))
    assert result["converged"]
    assert result["final_error"] < 0.01 * result["initial_error"]
    # residuals whitened by 1/sigma: at the optimum 0.5 * chi^2 is about half the redundancy,
    # never more than the number of residuals
    assert result["final_error"] < result["num_edges"]
    assert result["final_max_position_error"] < result["initial_max_position_error"]
    assert (tmp_path / "05_pose_graph_2d.png").stat().st_size > 10_000
