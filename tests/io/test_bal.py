"""BAL: the reader against GTSAM's costs, the reprojection's analytic Jacobians against autodiff,
and its vectorized evaluation."""
import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator
from nlls.io import BALProblem, BALReprojection, read, read_bal
from nlls.io.bal import rodrigues

from .reference import BAL, data_file, lm

NAME = "dubrovnik-3-7-pre.txt"


def _hat(w):
    zero = torch.zeros_like(w[:, 0])
    return torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero],
                       dim=1).reshape(-1, 3, 3)


def _reprojection(optim_vars, aux_vars):
    """The BAL model written plainly, the rotation by torch's matrix exponential."""
    camera, point = optim_vars[0].tensor, optim_vars[1].tensor
    rotation = torch.linalg.matrix_exp(_hat(camera[:, :3]))
    in_camera = (rotation @ point[:, :, None])[:, :, 0] + camera[:, 3:6]
    p = -in_camera[:, :2] / in_camera[:, 2:]
    r2 = (p * p).sum(dim=1, keepdim=True)
    distortion = 1 + camera[:, 7:8] * r2 + camera[:, 8:9] * r2 * r2
    return camera[:, 6:7] * distortion * p - aux_vars[0].tensor


def _random_cameras(batch, generator):
    cameras = torch.cat([
        0.6 * torch.randn(batch, 3, generator=generator, dtype=torch.float64),
        torch.randn(batch, 2, generator=generator, dtype=torch.float64),
        torch.full((batch, 1), -8.0, dtype=torch.float64),
        500 + 50 * torch.randn(batch, 1, generator=generator, dtype=torch.float64),
        0.1 * torch.randn(batch, 2, generator=generator, dtype=torch.float64),
    ], dim=1)
    cameras[0, :3] = 0.0  # the identity rotation, the small-angle branches
    cameras[1, :3] = torch.tensor([1e-9, -2e-9, 3e-9])
    cameras[2, :3] = torch.tensor([0.01, 0.02, -0.015])
    return cameras


def test_analytic_jacobians_equal_autodiff():
    generator = torch.Generator().manual_seed(0)
    batch = 16
    camera = nlls.Vector(9, _random_cameras(batch, generator), name="c")
    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    point = nlls.Point3(tensor=normal(batch, 3), name="p")
    uv = nlls.Variable(100 * normal(batch, 2), name="uv")
    analytic = BALReprojection(camera, point, uv, name="obs")
    auto = nlls.AutoDiffCostFunction((camera, point), _reprojection, 2, aux_vars=(uv,),
                                     autograd_mode="reverse")
    jacobians, error = analytic.jacobians()
    expected_jacobians, expected_error = auto.jacobians()
    assert torch.allclose(error, expected_error, rtol=1e-12, atol=1e-9)
    assert torch.allclose(analytic.error(), error)
    for got, expected, dof in zip(jacobians, expected_jacobians, (9, 3)):
        assert got.shape == (batch, 2, dof)
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-9)


def test_rodrigues_is_the_exponential_and_smooth_at_zero():
    generator = torch.Generator().manual_seed(1)
    w = torch.cat([torch.zeros(1, 3), 1e-7 * torch.randn(3, 3, generator=generator),
                   torch.randn(4, 3, generator=generator), torch.tensor([[3.0, 0.5, -0.2]])]).double()
    rotation, left_jacobian = rodrigues(w)
    assert torch.allclose(rotation, torch.linalg.matrix_exp(_hat(w)), atol=1e-14)
    # R(w + d) ~ exp(Jl d) R(w)
    d = 1e-6 * torch.randn(w.shape, generator=generator, dtype=torch.float64)
    moved = torch.linalg.matrix_exp(_hat((left_jacobian @ d[:, :, None])[:, :, 0])) @ rotation
    assert torch.allclose(rodrigues(w + d)[0], moved, atol=1e-11)
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(rodrigues(zero)[0].sum() + rodrigues(zero)[1].sum(), zero)
    assert torch.isfinite(gradient).all()


def test_real_file_cost_vectorized_evaluation_and_levenberg_marquardt():
    cameras, observations, initial, final = BAL[NAME]
    problem = read(data_file(NAME))
    assert isinstance(problem, BALProblem)
    assert (problem.cameras.shape, problem.points.shape) == ((cameras, 9), (7, 3))
    assert problem.observations.shape == (observations, 2)
    assert problem.observations[1].tolist() == [1, 0]  # the file's "1 0 -3.844000e+01 4.921200e+02"
    assert problem.measurements[1].tolist() == [-38.44, 492.12]
    assert read_bal(data_file(NAME)).cameras.equal(problem.cameras)
    objective = problem.objective()
    assert float(objective.error_metric()[0]) == pytest.approx(initial, rel=1e-9)
    # the solver's stacked call (one per kind) gives what each cost function gives alone
    evaluator = Evaluator(objective)
    assert len(evaluator.groups) == 1
    state, aux = evaluator.gather(), evaluator.aux()
    ((jacobian, error),) = evaluator.jacobians(state, aux)
    for k, cf in enumerate(problem.objective(vectorized=False).cost_functions.values()):
        (j_camera, j_point), e = cf.jacobians()
        assert torch.allclose(error[k], e, rtol=1e-13, atol=1e-12)
        stacked = torch.cat([j_camera, j_point], dim=2)
        assert torch.allclose(jacobian[k], stacked, rtol=1e-13, atol=1e-12)
    info = lm(objective).optimize()
    # 48 unknowns, 38 residuals: no unique minimizer; GTSAM stops at 0.0203
    assert float(objective.error_metric()[0]) <= 1.01 * final
    assert float(info.final_error[0]) < 1e-5 * initial
