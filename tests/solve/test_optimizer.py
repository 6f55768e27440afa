import numpy as np
import pytest
import scipy.optimize
import torch

import nlls
from nlls.solve.optimizer import Status
from tests.conftest import devices
from tests.problems import QuadFit, autodiff_objective, exp_data, exp_error, quad_data, quad_error, rosenbrock_error

TIGHT = dict(abs_err_tolerance=0.0, rel_err_tolerance=1e-15)
OPTIMIZERS = [nlls.GaussNewton, nlls.LevenbergMarquardt]
SOLVERS = ["dense_cholesky", "dense_lu"]


def _scipy_fit(err_np, x0):
    result = scipy.optimize.least_squares(err_np, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                                          max_nfev=10000)
    return result.x


@pytest.mark.parametrize("optimizer_cls", OPTIMIZERS)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("device", devices())
def test_quadratic_fit_matches_scipy(optimizer_cls, solver, device):
    x, y, _ = quad_data(4)
    ab = nlls.Vector(tensor=torch.zeros(4, 2, dtype=torch.float64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    obj.to(device)
    info = optimizer_cls(obj, linear_solver=solver, max_iterations=30, **TIGHT).optimize()
    assert info.converged.all()
    for i in range(4):
        xi, yi = x[i].numpy(), y[i].numpy()
        ref = _scipy_fit(lambda p: p[0] * xi ** 2 + p[1] - yi, np.zeros(2))
        np.testing.assert_allclose(ab.tensor[i].cpu().numpy(), ref, atol=1e-8)


@pytest.mark.parametrize("optimizer_cls", OPTIMIZERS)
def test_exponential_fit_with_noise_matches_scipy(optimizer_cls):
    x, y, truth = exp_data(5)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).repeat(5, 1)
    obj, p = autodiff_objective(exp_error, 3, x, y, init)
    info = optimizer_cls(obj, max_iterations=100, **TIGHT).optimize()
    assert info.converged.all(), info.message
    for i in range(5):
        xi, yi = x[i].numpy(), y[i].numpy()
        ref = _scipy_fit(lambda q: q[0] * np.exp(-q[1] * xi) + q[2] - yi, init[i].numpy())
        np.testing.assert_allclose(p.tensor[i].numpy(), ref, atol=1e-8)
    assert (p.tensor - truth).abs().max() < 0.2  # and it is the right minimum


@pytest.mark.parametrize("optimizer_cls", OPTIMIZERS)
def test_rosenbrock_from_classic_start(optimizer_cls):
    p = nlls.Vector(tensor=torch.tensor([[-1.2, 1.0]], dtype=torch.float64), name="p")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((p,), rosenbrock_error, 2, name="rosenbrock"))
    info = optimizer_cls(obj, max_iterations=100, **TIGHT).optimize()
    ref = _scipy_fit(lambda q: np.array([10 * (q[1] - q[0] ** 2), 1 - q[0]]), np.array([-1.2, 1.0]))
    np.testing.assert_allclose(p.tensor[0].numpy(), ref, atol=1e-8)
    np.testing.assert_allclose(ref, [1.0, 1.0], atol=1e-8)
    assert info.converged.all() and info.final_error.item() < 1e-20


@pytest.mark.parametrize("optimizer_cls", OPTIMIZERS)
def test_batch_equals_single_solves(optimizer_cls):
    batch = 64
    x, y, _ = exp_data(batch, points=30, seed=3)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).repeat(batch, 1)
    obj, p = autodiff_objective(exp_error, 3, x, y, init)
    info = optimizer_cls(obj, max_iterations=50).optimize()
    for i in range(batch):
        single, q = autodiff_objective(exp_error, 3, x[i:i + 1], y[i:i + 1], init[i:i + 1])
        single_info = optimizer_cls(single, max_iterations=50).optimize()
        torch.testing.assert_close(q.tensor[0], p.tensor[i], rtol=1e-12, atol=1e-12)
        assert single_info.iterations.item() == info.iterations[i].item()


def test_unconstrained_variable_does_not_crash_lm():
    x, y, _ = quad_data(3, points=10)
    ab = nlls.Vector(tensor=torch.zeros(3, 2, dtype=torch.float64), name="ab")
    free = nlls.Vector(tensor=torch.ones(3, 2, dtype=torch.float64), name="free")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    # 'free' enters the residual with zero Jacobian: its columns of A are zero
    obj.add(nlls.AutoDiffCostFunction((ab, free), lambda o, a: 0.0 * o[1].tensor[:, :1] + o[0].tensor[:, :1] - 1, 1,
                                      name="loose"))
    info = nlls.LevenbergMarquardt(obj, max_iterations=20).optimize()
    assert torch.isfinite(ab.tensor).all() and torch.isfinite(free.tensor).all()
    assert torch.isfinite(info.final_error).all() and info.converged.all()
    torch.testing.assert_close(free.tensor, torch.ones(3, 2, dtype=torch.float64))
    # Gauss-Newton cannot factor it: reported as failed, values kept finite
    ab.update(torch.zeros(3, 2, dtype=torch.float64))
    info = nlls.GaussNewton(obj).optimize()
    assert (info.status == Status.FAILED).all() and not info.converged.any()
    assert torch.isfinite(ab.tensor).all()
    assert "failed" in info.message and "LevenbergMarquardt" in info.message


def test_info_history_best_solution_and_freezing():
    x, y, _ = exp_data(3, seed=1)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).repeat(3, 1)
    init[0] = torch.tensor([1.5, 1.0, 0.0], dtype=torch.float64)
    obj, p = autodiff_objective(exp_error, 3, x, y, init)
    info = nlls.LevenbergMarquardt(obj, max_iterations=40).optimize(
        track_best_solution=True, track_err_history=True)
    run = info.err_history.shape[1] - 1
    assert info.err_history.shape == (3, run + 1) and run == int(info.iterations.max())
    torch.testing.assert_close(info.err_history[:, 0], info.initial_error)
    torch.testing.assert_close(info.err_history[:, -1], info.final_error)
    assert (info.err_history[:, 1:] <= info.err_history[:, :-1]).all()  # LM never increases
    for i in range(3):  # frozen after its own last iteration
        k = int(info.iterations[i])
        assert (info.err_history[i, k:] == info.final_error[i]).all()
    torch.testing.assert_close(info.best_solution["p"], p.tensor)
    torch.testing.assert_close(obj.error_metric(), info.final_error)


def test_max_iterations_status_and_message():
    p = nlls.Vector(tensor=torch.tensor([[-1.2, 1.0]], dtype=torch.float64), name="p")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((p,), rosenbrock_error, 2))
    info = nlls.LevenbergMarquardt(obj, max_iterations=2).optimize()
    assert info.status.tolist() == [Status.MAX_ITERATIONS] and info.iterations.tolist() == [2]
    assert "max_iterations=2" in info.message


def test_check_every_gives_identical_results():
    x, y, _ = exp_data(6, seed=2)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).repeat(6, 1)
    results = []
    for check_every in (1, 4):
        obj, p = autodiff_objective(exp_error, 3, x, y, init)
        info = nlls.LevenbergMarquardt(obj, max_iterations=30, check_every=check_every).optimize()
        results.append((p.tensor, info.iterations, info.final_error))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_step_size_and_float32():
    x, y, truth = quad_data(8, dtype=torch.float32, noise=0.0)
    ab = nlls.Vector(tensor=torch.zeros(8, 2), name="ab")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((ab,), quad_error, 100, aux_vars=(nlls.Variable(x, name="x"),
                                                                         nlls.Variable(y, name="y"))))
    info = nlls.GaussNewton(obj, max_iterations=40, step_size=0.5).optimize()
    assert ab.dtype == torch.float32 and info.final_error.dtype == torch.float32
    torch.testing.assert_close(ab.tensor, truth, atol=1e-4, rtol=1e-4)


def test_verbose_prints_a_line_per_iteration(capsys):
    x, y, _ = quad_data(2)
    obj, _ = autodiff_objective(quad_error, 2, x, y, torch.zeros(2, 2, dtype=torch.float64))
    info = nlls.LevenbergMarquardt(obj, max_iterations=5).optimize(verbose=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("iteration")]
    assert len(lines) == int(info.iterations.max()) + 1
    assert "damping" in lines[1] and "step" in lines[1] and "ms" in lines[1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iterations=-1), "max_iterations must be >= 0"),
    (dict(max_iterations=2.5), "max_iterations must be an int"),
    (dict(step_size=0), "step_size must be > 0"),
    (dict(linear_solver="qr"), "unknown linear_solver"),
    (dict(damping=-1.0), "damping must be > 0"),
    (dict(adaptive_damping="yes"), "adaptive_damping must be a bool"),
])
def test_bad_arguments_are_refused(kwargs, match):
    obj, _ = autodiff_objective(quad_error, 2, *quad_data(1)[:2], torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises((ValueError, TypeError), match=match):
        nlls.LevenbergMarquardt(obj, **kwargs)


def test_inputs_are_not_modified_in_place():
    x, y, _ = quad_data(2)
    init = torch.zeros(2, 2, dtype=torch.float64)
    obj, p = autodiff_objective(quad_error, 2, x, y, init)
    x0, y0 = x.clone(), y.clone()
    given = p.tensor
    nlls.GaussNewton(obj).optimize()
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.all(given == 0)


def test_diagonal_scaling_reaches_the_same_minimum():
    x, y, _ = exp_data(3, seed=4)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).repeat(3, 1)
    obj_a, pa = autodiff_objective(exp_error, 3, x, y, init)
    obj_b, pb = autodiff_objective(exp_error, 3, x, y, init)
    nlls.LevenbergMarquardt(obj_a, max_iterations=100, **TIGHT).optimize()
    nlls.LevenbergMarquardt(obj_b, max_iterations=100, diagonal_scaling=True, **TIGHT).optimize()
    torch.testing.assert_close(pa.tensor, pb.tensor, atol=1e-8, rtol=0)
