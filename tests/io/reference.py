"""Reference data for the io tests: the real files in ``shared/data`` beside the checkout, GTSAM's
costs, and the solver the acceptance criteria name."""
from pathlib import Path

import pytest

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()

# file: (vertices or cameras, edges or observations, GTSAM initial cost, GTSAM LM final cost);
# from shared/data/README.md (GTSAM 4.3.0)
POSE_GRAPHS = {
    "w100.graph": (100, 300, 38.544575008240635, 0.5689273833553848),
    "noisyToyGraph.txt": (4, 5, 0.3916610203624775, 0.06834282473801372),
    "pose3example.txt": (5, 6, 64941.32288798196, 18853.02073585559),
    "pose3example-grid.txt": (27, 44, 127.94104309597522, 43.49865834745329),
}
BAL = {"dubrovnik-3-7-pre.txt": (3, 19, 2764.2199844221705, 0.020334477760063786)}


def data_file(name: str) -> Path:
    """The path of a reference file; skips the test when ``shared/data`` is absent."""
    if not DATA.is_dir():
        pytest.skip(f"reference data folder {DATA} not found (shared/ should sit beside the "
                    "checkout, holding GTSAM's example files)")
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"reference file {path} not found")
    return path


def lm(objective, max_iterations: int = 200):
    """The solver the acceptance criteria name."""
    import nlls

    return nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky",
                                   max_iterations=max_iterations, abs_err_tolerance=0.0,
                                   rel_err_tolerance=1e-10)
