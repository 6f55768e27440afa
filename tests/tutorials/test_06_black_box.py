from pathlib import Path

from tests.tutorials import load_tutorial

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "06_black_box.py"


def _load():
    return load_tutorial(TUTORIAL)


def test_black_box_gradients_match_the_autodiff_twin(tmp_path):
    result = _load().main(batch_size=2, num_points=6, output_dir=tmp_path, verbose=False)
    # the RK4 black box differs from the closed form by its discretization error (~1e-9)
    for key, value in result["differences"].items():
        assert value < 1e-6, key
    assert float(result["grad_y"].abs().sum()) > 0.1  # real, non-zero sensitivities
    assert result["plot"].exists()
