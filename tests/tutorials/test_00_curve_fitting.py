"""Tutorial 0 runs small and its fits agree with linear least squares."""
from pathlib import Path

import pytest
import torch

from tests.tutorials import load_tutorial

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "00_curve_fitting.py"


@pytest.fixture(scope="module")
def tutorial():
    return load_tutorial(TUTORIAL)


@pytest.fixture(scope="module")
def result(tutorial, tmp_path_factory):
    return tutorial.main(batch_size=5, num_points=30,
                         output_dir=tmp_path_factory.mktemp("tutorial_00"), verbose=False)


@pytest.mark.parametrize("method", ["analytic", "autodiff"])
def test_fits_match_closed_form(result, method):
    fitted, closed_form = result[method], result["closed_form"]
    assert fitted.shape == (5, 2) and fitted.dtype == torch.float64
    torch.testing.assert_close(fitted, closed_form, rtol=0, atol=1e-8)


def test_every_problem_converged(result):
    for info in (result["info"], result["autodiff_info"]):
        assert info.converged.all()
        assert (info.iterations <= 10).all()


def test_fits_are_near_the_truth(result):
    # 30 noisy points: not the truth, but close to it (guards against fitting the wrong model)
    assert (result["analytic"] - result["truth"]).abs().max() < 0.5


def test_plot_is_a_png(result):
    plot = Path(result["plot"])
    assert plot.name == "00_curve_fitting.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verbose_output_says_what_happened(tutorial, tmp_path, capsys):
    tutorial.main(batch_size=3, num_points=20, output_dir=tmp_path / "new" / "dir", verbose=True)
    out = capsys.readouterr().out
    assert "iteration   1" in out  # the optimizer's verbose lines
    assert "fitted a" in out and "true a" in out
    assert f"plot saved to {tmp_path / 'new' / 'dir' / '00_curve_fitting.png'}" in out
    assert (tmp_path / "new" / "dir" / "00_curve_fitting.png").is_file()
