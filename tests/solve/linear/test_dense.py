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


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_systems_use_explicit_formulas_with_the_same_results(size, dtype):
    torch.manual_seed(size)
    m = torch.randn(300, size, size, dtype=dtype)
    A = m @ m.mT + 0.5 * torch.eye(size, dtype=dtype)
    A[7] = -A[7]  # not positive definite
    A[11] = 0.0  # singular
    b = torch.randn(300, size, dtype=dtype)
    small = nlls.DenseCholesky(small_batch=1).factor(A)
    general = nlls.DenseCholesky(small_batch=10**9).factor(A)
    assert type(small).__name__ == "_SmallCholeskyFactorization"
    xs, oks = small.solve(b)
    xg, okg = general.solve(b)
    assert torch.equal(oks, okg) and not oks[7] and not oks[11]
    assert torch.isfinite(xs).all() and torch.all(xs[7] == 0)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(xs, xg, rtol=tol, atol=tol)


def test_small_system_solve_is_differentiable():
    m = torch.randn(4, 3, 3, dtype=torch.float64)
    A = (m @ m.mT + torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    solver = nlls.DenseCholesky(small_batch=1)
    sym = lambda a: 0.5 * (a + a.mT)  # noqa: E731
    assert torch.autograd.gradcheck(lambda a, v: solver.factor(sym(a)).solve(v)[0], (A, b))
    assert torch.autograd.gradgradcheck(lambda a, v: solver.factor(sym(a)).solve(v)[0], (A, b))


@pytest.mark.parametrize("size, explicit", [(2, True), (3, True), (4, False)])
def test_compiled_small_systems_use_explicit_formulas_at_any_batch_size(size, explicit):
    """Under torch.compile the formulas fuse into a few kernels, where the library Cholesky is
    three opaque calls per iteration (a B = 1 compiled quadratic fit: 0.8 -> 0.5 ms)."""
    seen = []

    def recording_backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    m = torch.randn(2, size, size, dtype=torch.float64)
    A = m @ m.mT + torch.eye(size, dtype=torch.float64)
    b = torch.randn(2, size, dtype=torch.float64)
    solver = nlls.DenseCholesky()  # small_batch=1024: B = 2 eagerly takes the library path

    def solve(A, b):
        return solver.factor(A).solve(b)

    x, ok = torch.compile(solve, backend=recording_backend, fullgraph=True)(A, b)
    assert any("cholesky" in target for target in seen) is not explicit
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-12, atol=1e-12)
    assert ok.all()
