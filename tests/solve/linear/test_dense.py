import pytest
import torch

import nlls
from nlls.solve.linear import make_linear_solver

SOLVERS = [nlls.DenseCholesky(), nlls.DenseLU()]


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solves_spd_batches(solver, dtype):
    torch.manual_seed(0)
    m = torch.randn(6, 5, 5, dtype=dtype)
    A = m @ m.mT + 5 * torch.eye(5, dtype=dtype)
    b = torch.randn(6, 5, dtype=dtype)
    x, ok = solver.factor(A).solve(b)
    assert ok.all()
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_singular_elements_are_reported_not_nan(solver):
    A = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    A[1, 2, 2] = 0.0  # singular
    A[2] = -A[2]  # not positive definite (fine for LU)
    b = torch.ones(3, 3, dtype=torch.float64)
    x, ok = solver.factor(A).solve(b)
    assert torch.isfinite(x).all()
    assert not ok[1] and ok[0]
    assert torch.all(x[1] == 0)
    if isinstance(solver, nlls.DenseCholesky):
        assert not ok[2]
    else:
        torch.testing.assert_close(x[2], -b[2])


def test_singular_factorization_keeps_gradients_finite():
    A = torch.eye(2, dtype=torch.float64).repeat(2, 1, 1)
    A[1, 1, 1] = 0.0
    A.requires_grad_(True)
    x, ok = nlls.DenseCholesky().factor(A).solve(torch.ones(2, 2, dtype=torch.float64))
    x.sum().backward()
    assert torch.isfinite(A.grad).all() and torch.all(A.grad[1] == 0)


def test_registry():
    assert isinstance(make_linear_solver("dense_lu"), nlls.DenseLU)
    solver = nlls.DenseCholesky()
    assert make_linear_solver(solver) is solver
    with pytest.raises(ValueError, match="unknown linear_solver 'qr'.*dense_cholesky"):
        make_linear_solver("qr")
    with pytest.raises(TypeError):
        make_linear_solver(3)
