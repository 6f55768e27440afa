"""ConjugateGradient: matrix-free solves equal dense ones; stopping, failure and arguments."""
import pytest
import torch

import nlls
from nlls.solve.linearization import DenseLinearization, JacobianLinearization
from tests.solve.test_cuda_graph import _pose_graph_se2

F64 = torch.float64


def _systems(damping=1e-2):
    obj, _ = _pose_graph_se2(batch=3, poses=6)
    opt = nlls.GaussNewton(obj)
    evaluator = opt.prepare()
    values, aux = evaluator.gather(), evaluator.aux()
    dense = DenseLinearization(evaluator).linearize(values, aux)
    operator = JacobianLinearization(evaluator).linearize(values, aux)
    lam = torch.full((3,), damping, dtype=F64)
    return dense.damped(lam), operator.damped(lam), dense.g


@pytest.mark.parametrize("preconditioner", [None, "jacobi", "block_jacobi"])
def test_cg_solves_like_cholesky(preconditioner):
    matrix, operator, g = _systems()
    expected = torch.linalg.solve(matrix, -g)
    x, ok = nlls.ConjugateGradient(max_iterations=200, preconditioner=preconditioner).factor(operator).solve(-g)
    assert ok.all()
    torch.testing.assert_close(x, expected, rtol=1e-7, atol=1e-9)


def test_the_operator_is_the_matrix():
    matrix, operator, _ = _systems()
    v = torch.randn(3, matrix.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(operator.matvec(v), (matrix @ v[..., None])[..., 0])
    torch.testing.assert_close(operator.diagonal(), matrix.diagonal(dim1=-2, dim2=-1))


def test_few_iterations_give_an_inexact_step_and_preconditioning_helps():
    matrix, operator, g = _systems(damping=1e-4)
    expected = torch.linalg.solve(matrix, -g)
    errors = {}
    for preconditioner in (None, "block_jacobi"):
        x, _ = nlls.ConjugateGradient(max_iterations=3, preconditioner=preconditioner).factor(operator).solve(-g)
        errors[preconditioner] = float((x - expected).norm() / expected.norm())
    assert errors[None] > 1e-3  # three iterations are not enough unpreconditioned
    assert errors["block_jacobi"] < errors[None]


def test_non_finite_input_fails_only_its_element():
    matrix, operator, g = _systems()
    rhs = -g.clone()
    rhs[1, 0] = float("nan")
    x, ok = nlls.ConjugateGradient(preconditioner="jacobi").factor(operator).solve(rhs)
    assert ok.tolist() == [True, False, True]
    assert (x[1] == 0).all() and torch.isfinite(x).all()
    torch.testing.assert_close(x[[0, 2]], torch.linalg.solve(matrix, -g)[[0, 2]], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_iterations": 0}, "max_iterations"), ({"tolerance": -1.0}, "tolerance"),
    ({"preconditioner": "ilu"}, "preconditioner"),
])
def test_bad_arguments_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nlls.ConjugateGradient(**kwargs)


def test_capturable_unless_block_jacobi():
    assert nlls.ConjugateGradient(preconditioner="jacobi").capturable
    assert not nlls.ConjugateGradient().capturable
