"""Tutorial 04 runs (small) and agrees with SciPy's axis-angle fit."""
import pathlib

from tests.tutorials import load_tutorial

TUTORIAL = pathlib.Path(__file__).resolve().parents[2] / "tutorials" / "04_rotation_fit.py"


def _load():
    return load_tutorial(TUTORIAL)


def test_rotation_fit_tutorial(tmp_path):
    result = _load().main(batch_size=24, num_pairs=10, noise=0.01, output_dir=str(tmp_path))
    assert result["converged"] == 24
    # both reach the same least-squares optimum ...
    assert result["max_angle_nlls_vs_scipy"] < 1e-6
    # ... which is near the truth (10 pairs, noise 0.01: errors of a few milliradians)
    assert result["max_angle_error_nlls"] < 0.02
    assert abs(result["max_angle_error_nlls"] - result["max_angle_error_scipy"]) < 1e-6
    assert (tmp_path / "04_rotation_fit.png").stat().st_size > 10_000
