import importlib.util

import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator
from nlls.solve.linearization import DenseLinearization, JacobianLinearization, SparseLinearization

F64 = torch.float64
CPU_BACKENDS = (["supernodal", "scipy"] + (["qdldl"] if importlib.util.find_spec("qdldl") is not None else [])
                + (["cholmod"] if any(importlib.util.find_spec(m) is not None for m in ("sksparse", "cvxopt"))
                   else []))


def _between(optim, aux):
    return optim[1].tensor - optim[0].tensor - aux[0].tensor


def _prior(optim, aux):
    return optim[0].tensor - aux[0].tensor


def chain(n=40, batch=2, seed=0, dtype=F64):
    """A chain of 2-D points with relative measurements, loop closures and one prior."""
    g = torch.Generator().manual_seed(seed)
    xs = [nlls.Vector(tensor=torch.randn(batch, 2, generator=g, dtype=dtype), name=f"x{i}") for i in range(n)]
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((xs[0],), _prior, 2, name="prior",
                                      aux_vars=(nlls.Variable(torch.zeros(1, 2, dtype=dtype), name="origin"),)))
    for i in range(1, n):
        m = torch.ones(batch, 2, dtype=dtype) + 0.1 * torch.randn(batch, 2, generator=g, dtype=dtype)
        obj.add(nlls.AutoDiffCostFunction((xs[i - 1], xs[i]), _between, 2, name=f"odo{i}",
                                          aux_vars=(nlls.Variable(m, name=f"m{i}"),)))
        if i >= 5 and i % 4 == 0:
            m = 5 * torch.ones(batch, 2, dtype=dtype) + 0.1 * torch.randn(batch, 2, generator=g, dtype=dtype)
            obj.add(nlls.AutoDiffCostFunction((xs[i - 5], xs[i]), _between, 2, name=f"loop{i}",
                                              aux_vars=(nlls.Variable(m, name=f"l{i}"),)))
    return obj, xs


def test_sparse_and_jacobian_systems_equal_the_dense_one():
    obj, _ = chain(12)
    ev = Evaluator(obj)
    state, aux = ev.gather(), ev.aux()
    dense = DenseLinearization(ev).linearize(state, aux)
    sparse = SparseLinearization(ev).linearize(state, aux)
    jac = JacobianLinearization(ev).linearize(state, aux)
    torch.testing.assert_close(sparse.A.to_dense(), dense.A)
    torch.testing.assert_close(sparse.g, dense.g)
    v = torch.randn(2, ev.dof, dtype=F64)
    torch.testing.assert_close(jac.A.matvec(v), (dense.A @ v[..., None])[..., 0])
    damping = torch.tensor([0.5, 2.0], dtype=F64)
    for scaling in (False, True):
        ref = dense.damped(damping, scaling)
        torch.testing.assert_close(sparse.damped(damping, scaling).to_dense(), ref)
        torch.testing.assert_close(jac.damped(damping, scaling).matvec(v), (ref @ v[..., None])[..., 0])
    torch.testing.assert_close(sparse.quadratic_decrease(v), dense.quadratic_decrease(v))
    torch.testing.assert_close(jac.quadratic_decrease(v), dense.quadratic_decrease(v))
    blocks = jac.A.diagonal_blocks()[0]  # (N, B, 2, 2)
    for i in range(12):
        torch.testing.assert_close(blocks[i], dense.A[:, 2 * i:2 * i + 2, 2 * i:2 * i + 2])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backends_solve_like_dense(backend):
    obj, _ = chain(15)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    solver = nlls.SparseCholesky(backend)
    x, ok = solver.factor(system.A).solve(system.g)
    assert ok.all() and solver.backend_used == backend and backend in repr(solver)
    dense = system.A.to_dense()
    torch.testing.assert_close(x, torch.linalg.solve(dense, system.g))


def test_superlu_keeps_its_first_ordering_for_the_structure():
    """The first factorization of a structure orders it (minimum degree); later ones factor the
    matrix permuted by that order, with the same solutions as dense solves, also when an element
    fails and when the matrices of every call differ."""
    from nlls.solve.linear.sparse import _SuperLUOrdering

    obj, _ = chain(25)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    solver = nlls.SparseCholesky("scipy")
    g = torch.Generator().manual_seed(4)
    for call in range(4):
        shift = torch.rand(2, ev.dof, generator=g, dtype=F64) * (call + 1)
        values = system.A.add_diagonal(shift).values.clone()
        if call == 2:
            values[1] = -values[1]  # element 1 fails alone
        matrix = type(system.A)(system.A.pattern, values)
        x, ok = solver.factor(matrix).solve(system.g)
        orderings = [key for key, o in solver._symbolic.items() if isinstance(o, _SuperLUOrdering)]
        # one per structure and batch size, from the first call (a failure is then located by
        # factoring the elements one by one: batch size 1, its own ordering)
        assert sorted(batch for _, batch in orderings) == ([1, 2] if call >= 2 else [2])
        expected = torch.linalg.solve(matrix.to_dense(), system.g)
        assert ok.tolist() == ([True, False] if call == 2 else [True, True])
        torch.testing.assert_close(x[ok], expected[ok], rtol=1e-10, atol=1e-12)
        assert (x[~ok] == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_held_factorization_stays_valid_after_the_next_one(backend):
    """A factorization kept by its caller still solves its own matrix after the solver has
    factored another one of the same structure (QDLDL's and CHOLMOD's are pooled, refactored in
    place only when nobody holds them)."""
    obj, _ = chain(15, batch=3)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    solver = nlls.SparseCholesky(backend)
    first = solver.factor(system.A)
    second = solver.factor(type(system.A)(system.A.pattern, system.A.values * 4.0))
    x1, _ = first.solve(system.g)  # still the first matrix's factors
    x2, _ = second.solve(system.g)
    torch.testing.assert_close(x1, torch.linalg.solve(system.A.to_dense(), system.g))
    torch.testing.assert_close(x2, x1 / 4.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_failed_element_is_reported_with_zero_solution(backend):
    obj, _ = chain(6)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    values = system.A.values.clone()
    values[1] = -values[1]  # negative definite: Cholesky fails for element 1 only
    matrix = type(system.A)(system.A.pattern, values)
    x, ok = nlls.SparseCholesky(backend).factor(matrix).solve(system.g)
    assert ok.tolist() == [True, False]
    assert torch.all(x[1] == 0) and torch.isfinite(x).all()
    torch.testing.assert_close(x[0], torch.linalg.solve(matrix.to_dense()[0], system.g[0]))


def test_sparse_solve_is_differentiable():
    obj, _ = chain(5, batch=1)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    pattern = system.A.pattern
    solver = nlls.SparseCholesky("scipy")

    def solve(values, rhs):
        return solver.factor(type(system.A)(pattern, values)).solve(rhs)[0]

    values = system.A.values.clone().requires_grad_(True)
    rhs = system.g.clone().requires_grad_(True)
    # symmetric perturbations only: A's values are one symmetric matrix
    assert torch.autograd.gradcheck(lambda v, b: solve(0.5 * (v + v[:, _transpose(pattern)]), b), (values, rhs))
    assert torch.autograd.gradgradcheck(lambda v, b: solve(0.5 * (v + v[:, _transpose(pattern)]), b), (values, rhs))


def _transpose(pattern):
    flat = pattern.rows * pattern.dof + pattern.cols
    flat_t = pattern.cols * pattern.dof + pattern.rows
    return torch.searchsorted(flat, flat_t)


@pytest.mark.parametrize("solver", ["sparse_cholesky", nlls.ConjugateGradient(max_iterations=200),
                                    nlls.ConjugateGradient(max_iterations=200, preconditioner="jacobi")],
                         ids=str)
@pytest.mark.parametrize("optimizer_cls", [nlls.GaussNewton, nlls.LevenbergMarquardt])
def test_optimizers_reach_the_dense_solution(solver, optimizer_cls):
    reference, ref_xs = chain(30)
    optimizer_cls(reference, max_iterations=30).optimize()
    obj, xs = chain(30)
    info = optimizer_cls(obj, linear_solver=solver, max_iterations=30).optimize()
    assert info.converged.all()
    for a, b in zip(xs, ref_xs):
        torch.testing.assert_close(a.tensor, b.tensor, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("mode", ["implicit", "unroll"])
@pytest.mark.parametrize("solver", ["sparse_cholesky", "cg"])
def test_layer_gradients_through_sparse_paths_equal_dense(mode, solver):
    grads = []
    for linear_solver in ("dense_cholesky", solver):
        obj, _ = chain(9, batch=2)
        layer = nlls.OptimizationLayer(nlls.GaussNewton(obj, linear_solver=linear_solver, max_iterations=5))
        m = obj.aux_vars["m3"].tensor.clone().requires_grad_(True)
        loop = obj.aux_vars["l8"].tensor.clone().requires_grad_(True)
        solution, info = layer({"m3": m, "l8": loop}, backward_mode=mode)
        loss = (solution["x7"] ** 2).sum() + solution["x2"].sum()
        grads.append(torch.autograd.grad(loss, (m, loop)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_bad_backend_and_exact_hessian_through_cg_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        nlls.SparseCholesky("umfpack")
    with pytest.raises(ValueError, match="preconditioner"):
        nlls.ConjugateGradient(preconditioner="ilu")
    obj, _ = chain(3, batch=1)
    layer = nlls.OptimizationLayer(nlls.GaussNewton(obj, linear_solver="cg"))  # sparse ones take it now
    with pytest.raises(ValueError, match="hessian='exact'.*dense or sparse linear solver"):
        layer({"m1": obj.aux_vars["m1"].tensor.clone().requires_grad_(True)}, hessian="exact")


@pytest.mark.cuda
def test_cuda_backends_match_cpu():
    obj, _ = chain(10)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    x_cpu, _ = nlls.SparseCholesky("scipy").factor(system.A).solve(system.g)
    obj.to("cuda")
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    solver = nlls.SparseCholesky("auto")
    x, ok = solver.factor(system.A).solve(system.g)
    assert x.device.type == "cuda" and ok.all()
    torch.testing.assert_close(x.cpu(), x_cpu)


# ---- backends checked at construction; per-element check of a solution (the cuDSS path) ------
def test_backend_not_available_here_is_refused_at_construction_with_the_right_advice():
    from nlls.solve.linear.sparse import available_backends

    here = available_backends()
    assert here[0] == "auto" and "scipy" in here
    if "cudss" not in here:
        with pytest.raises(ValueError, match=r"backend 'cudss' is not available here") as error:
            nlls.SparseCholesky("cudss")
        assert "scikit-sparse" not in str(error.value) and "CUDA" in str(error.value)
        assert f"available here: {', '.join(here)}" in str(error.value)
        with pytest.raises(nlls.ConfigError, match=r"linear_solver \(sparse_cholesky\).*'cudss' is not available"):
            nlls.load_config({"linear_solver": {"name": "sparse_cholesky", "backend": "cudss"}})
    if "cholmod" not in here:
        with pytest.raises(ValueError, match=r"backend 'cholmod' is not available here.*scikit-sparse"):
            nlls.SparseCholesky("cholmod")
        with pytest.raises(nlls.ConfigError, match=r"'cholmod' is not available"):
            nlls.load_config({"linear_solver": {"name": "sparse_cholesky", "backend": "cholmod"}})


def test_backend_of_another_device_is_refused_at_factor_without_wrong_advice(monkeypatch):
    from nlls.solve.linear import sparse

    monkeypatch.setattr(sparse, "available_backends", lambda device=None: sparse.BACKENDS)
    solver = nlls.SparseCholesky("cudss")  # as on a machine with CUDA
    obj, _ = chain(3, batch=1)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    with pytest.raises(RuntimeError, match=r"'cudss' solves CUDA tensors, not cpu") as error:
        solver.factor(system.A)
    assert "scikit-sparse" not in str(error.value)


def test_solution_check_marks_failed_elements():
    from nlls.solve.linear.sparse import solution_ok

    obj, _ = chain(6, batch=3)
    ev = Evaluator(obj)
    system = SparseLinearization(ev).linearize(ev.gather(), ev.aux())
    dense = system.A.to_dense()
    x = torch.linalg.solve(dense, system.g[..., None])[..., 0]
    assert solution_ok(system.A, x, system.g).tolist() == [True, True, True]
    bad = x.clone()
    bad[0, 3] = float("nan")
    bad[2] = bad[2] + 1.0  # finite but wrong, as a singular factorization may return
    assert solution_ok(system.A, bad, system.g).tolist() == [False, True, False]
    inf = x.clone()
    inf[1, 0] = float("inf")
    assert solution_ok(system.A, inf, system.g).tolist() == [True, False, True]
    x32 = torch.linalg.solve(dense.float(), system.g.float()[..., None])[..., 0]
    matrix32 = type(system.A)(system.A.pattern, system.A.values.float())
    assert solution_ok(matrix32, x32, system.g.float()).all()


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "scipy"])
@pytest.mark.parametrize("mode", ["implicit", "unroll", "truncated"])
def test_gradients_through_a_sparse_backend_equal_dense(mode, backend):
    grads = []
    for linear_solver in ("dense_cholesky", nlls.SparseCholesky(backend)):
        obj, _ = chain(9, batch=2)
        layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(obj, linear_solver=linear_solver,
                                                               max_iterations=6))
        m = obj.aux_vars["m3"].tensor.clone().requires_grad_(True)
        extra = {"backward_num_iterations": 3} if mode == "truncated" else {}
        solution, _ = layer({"m3": m}, backward_mode=mode, **extra)
        loss = (solution["x7"] ** 2).sum() + solution["x2"].sum()
        grads.append(torch.autograd.grad(loss, m)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)
