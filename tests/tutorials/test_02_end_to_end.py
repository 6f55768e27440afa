"""Tutorial 2 trains a few steps: its argmin layer is the ridge regression and the loss drops."""
import math
from pathlib import Path

import pytest

from tests.tutorials import load_tutorial, run_single_threaded

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "02_end_to_end.py"
STEPS = 12


@pytest.fixture(scope="module")
def tutorial():
    return load_tutorial(TUTORIAL)


@pytest.fixture(scope="module")
def result(tutorial, tmp_path_factory):
    return run_single_threaded(tutorial.main, num_series=16, num_fit=16, num_held_out=8, steps=STEPS, lr=2e-2,
                               output_dir=tmp_path_factory.mktemp("tutorial_02"), verbose=False)


def test_layer_solves_the_ridge_regression(result):
    assert result["ridge_error"] < 1e-10


def test_gradients_through_the_layer_equal_those_through_the_closed_form(result):
    assert result["gradient_error"] < 1e-8
    assert abs(result["grad_log_lambda"]) > 1e-6  # the ridge strength is really trained


def test_training_loss_drops(result):
    losses = result["losses"]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(result["initial_loss"], rel=1e-12)
    assert result["final_loss"] < 0.5 * result["initial_loss"]
    assert sum(losses[-3:]) / 3 < losses[0]


def test_lambda_is_learned(result):
    lambdas = result["lambdas"]
    assert all(v > 0 for v in lambdas)
    assert abs(lambdas[-1] - math.e) > 1e-3  # it started at e (log lambda = 1) and moved


def test_plot_is_a_png(result):
    plot = Path(result["plot"])
    assert plot.name == "02_end_to_end.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
