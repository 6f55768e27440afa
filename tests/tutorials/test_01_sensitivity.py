"""Tutorial 1 runs small; its sensitivities agree with the closed form and finite differences."""
from pathlib import Path

import pytest
import torch

from tests.tutorials import load_tutorial, run_single_threaded

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "01_sensitivity.py"


@pytest.fixture(scope="module")
def tutorial():
    return load_tutorial(TUTORIAL)


@pytest.fixture(scope="module")
def result(tutorial, tmp_path_factory):
    return run_single_threaded(tutorial.main, num_points=8, output_dir=tmp_path_factory.mktemp("tutorial_01"),
                               verbose=False)


def test_every_mode_matches_the_closed_form(result):
    assert set(result["closed_form_error"]) == {"unroll", "truncated", "implicit"}
    for mode, error in result["closed_form_error"].items():
        assert error < 1e-10, mode


def test_sensitivities_are_those_of_the_least_squares_slope(result):
    dm_dx, dm_dy = result["dm_dx"], result["dm_dy"]
    assert dm_dx.shape == dm_dy.shape == (8,)
    # moving every y_i by the same amount shifts the line, not its slope; likewise for x_i
    assert abs(float(dm_dy.sum())) < 1e-12 and abs(float(dm_dx.sum())) < 1e-12
    assert float(dm_dy.abs().min()) > 0  # every point matters


def test_acceptance_data(tutorial, tmp_path, capsys):
    out = tutorial.main(x=[0, 1, 2, 3], y=[-1, 0.2, 0.7, 2.5], output_dir=tmp_path, verbose=True)
    assert abs(out["slope"] - 1.1) < 1e-10 and abs(out["intercept"] + 1.05) < 1e-10
    expected_dx = torch.tensor([0.34, 0.14, -0.2, -0.28], dtype=torch.float64)
    expected_dy = torch.tensor([-0.3, -0.1, 0.1, 0.3], dtype=torch.float64)
    torch.testing.assert_close(out["dm_dx"], expected_dx, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["dm_dy"], expected_dy, atol=1e-10, rtol=0)
    printed = capsys.readouterr().out
    assert "line fit: m = 1.100000, c = -1.050000" in printed
    assert "largest difference to the closed form" in printed


def test_exact_hessian_matches_finite_differences_gauss_newton_does_not(result):
    # every solve behind the reference is at a minimum to rounding (a few 1e-16), so what is left
    # is the central difference's truncation and rounding at step 1e-5: measured ~2e-11. (Solves
    # stopped by a relative error change of 1e-14 were up to 4e-10 short in b, which the
    # quotient divides by 2e-5: the reference was off by up to 1.5e-5, depending on the CPU.)
    assert result["exact_error"] < 1e-9
    assert result["gauss_newton_error"] > 1e-4  # measured ~1e-2
    decay = result["decay"]
    assert decay["largest_step"] < 1e-14
    assert decay["exact"].shape == decay["finite_differences"].shape == (1, 16)
    assert abs(float(decay["abc"][0, 1]) - 0.9) < 0.3  # the decay rate found is near the truth


def test_implicit_gradients_are_the_implicit_function_theorem(tutorial, result):
    """Independently of finite differences: with f(p, y) = |r(p, y)|^2 / 2 and the stationarity
    g(p, y) = df/dp = 0, dp/dy = -(dg/dp)^-1 dg/dy, with dg/dp the exact Hessian of f (dense,
    by autograd) or Gauss-Newton's J^T J."""
    _, _, x, y = tutorial.make_data(8)
    abc = result["decay"]["abc"][0]

    def objective(p, y):
        return 0.5 * ((tutorial.decay_curve(p, x[0]) - y) ** 2).sum()

    gradient = torch.func.grad(objective)
    dg_dy = torch.func.jacrev(gradient, argnums=1)(abc, y[0])  # (3, N)
    jacobian = torch.func.jacrev(tutorial.decay_curve)(abc, x[0])  # (N, 3)
    hessians = {"exact": torch.func.hessian(objective)(abc, y[0]),
                "gauss_newton": jacobian.T @ jacobian}
    for name, hessian in hessians.items():
        db_dy = -torch.linalg.solve(hessian, dg_dy)[1]
        torch.testing.assert_close(result["decay"][name][0], db_dy, rtol=0, atol=1e-12, msg=name)
    # the two differ by the dropped residual curvature: the test can tell them apart
    assert float((hessians["exact"] - hessians["gauss_newton"]).abs().max()) > 1e-3


def test_an_unconverged_reference_is_refused(tutorial):
    _, _, x, y = tutorial.make_data(8)
    with pytest.raises(RuntimeError, match="did not converge"):
        tutorial.decay_rate_sensitivity(x, y, iterations=6)  # b still ~4e-10 from its minimum


def test_plots_are_pngs(result):
    names = [Path(p).name for p in result["plots"]]
    assert names == ["01_sensitivity_line.png", "01_sensitivity_decay.png"]
    for plot in result["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
