"""Gauss-Newton's step rule: one step on a linear problem; failures stay per element."""
import torch

import nlls
from tests.problems import QuadFit, quad_data

F64 = torch.float64


def test_one_step_solves_a_linear_least_squares_problem():
    x, y, _ = quad_data(4, points=30, seed=3)
    ab = nlls.Vector(tensor=torch.zeros(4, 2, dtype=F64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    opt = nlls.GaussNewton(obj, max_iterations=1)
    opt.optimize()
    design = torch.stack([x * x, torch.ones_like(x)], dim=-1)
    expected = torch.linalg.lstsq(design, y[..., None]).solution[..., 0]
    torch.testing.assert_close(ab.tensor, expected, rtol=1e-10, atol=1e-12)


def test_an_unsolvable_element_fails_alone():
    # element 1 has all x = 0: a and b cannot be told apart, its normal matrix is singular
    x, y, _ = quad_data(3, points=10, seed=1)
    x = x.clone()
    x[1] = 0.0
    ab = nlls.Vector(tensor=torch.zeros(3, 2, dtype=F64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    info = nlls.GaussNewton(obj, max_iterations=3).optimize()
    assert info.status.tolist() == [nlls.Status.CONVERGED, nlls.Status.FAILED, nlls.Status.CONVERGED]
    assert torch.isfinite(ab.tensor).all() and (ab.tensor[1] == 0).all()
    assert "1 failed" in info.message and "prior" in info.message
