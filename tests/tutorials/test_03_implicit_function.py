"""Tutorial 3: the unit circle as a differentiable layer matches y, y', y'' of sqrt(1 - x^2)."""
import math
from pathlib import Path

import pytest
import torch

from tests.tutorials import load_tutorial, run_single_threaded

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "03_implicit_function.py"


@pytest.fixture(scope="module")
def tutorial():
    return load_tutorial(TUTORIAL)


@pytest.fixture(scope="module")
def result(tutorial, tmp_path_factory):
    return run_single_threaded(tutorial.main, num_points=21, output_dir=tmp_path_factory.mktemp("tutorial_03"),
                               verbose=False)


def test_values_and_derivatives_match_the_closed_form(result):
    assert result["x"].shape == result["y"].shape == result["dy_dx"].shape == (21, 1)
    assert result["y_error"] < 1e-12
    assert result["dy_dx_error"] < 1e-10
    assert result["d2y_dx2_error"] < 1e-8


def test_gradcheck_and_gradgradcheck_pass(result):
    assert result["gradcheck"] is True
    assert result["gradgradcheck"] is True


def test_acceptance_point(tutorial):
    layer = tutorial.make_circle_layer()
    x = torch.tensor([[0.5]], dtype=torch.float64)
    y, dy_dx, d2y_dx2 = tutorial.derivatives(layer, x)
    assert abs(float(y) - math.sqrt(3) / 2) < 1e-12
    assert abs(float(dy_dx) + 0.5 / (math.sqrt(3) / 2)) < 1e-12
    assert abs(float(d2y_dx2) + 1 / (math.sqrt(3) / 2) ** 3) < 1e-10


def test_plot_is_a_png(result):
    plot = Path(result["plot"])
    assert plot.name == "03_implicit_function.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
