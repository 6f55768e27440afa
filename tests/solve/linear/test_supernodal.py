"""nlls's own supernodal sparse Cholesky (``SparseCholesky("supernodal")``) against dense solves."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nlls
from nlls.solve.linear.supernodal import SupernodalCholesky
from nlls.solve.systems import SparseMatrix, SparsePattern

F64 = torch.float64


def random_problem(seed, nvar=30, factors=60, batch=3, dims=(1, 2, 3, 6), dtype=F64):
    """A random pattern of variables of mixed sizes (each factor joins 1-3 of them), and ``batch``
    positive definite matrices on it: ``sum_f J_f^T J_f + shift I`` (dense, for reference)."""
    rng = np.random.default_rng(seed)
    vdof = rng.choice(dims, size=nvar)
    bounds = np.concatenate([[0], np.cumsum(vdof)])
    dof = int(bounds[-1])
    by_arity = {}
    for _ in range(factors):
        chosen = rng.choice(nvar, size=int(rng.integers(1, min(nvar, 3) + 1)), replace=False)
        by_arity.setdefault(len(chosen), []).append(chosen)
    dense = torch.zeros(batch, dof, dof, dtype=dtype)
    columns = []
    for members in by_arity.values():
        cols = [np.concatenate([np.arange(bounds[v], bounds[v + 1]) for v in m]) for m in members]
        width = max(len(c) for c in cols)
        columns.append(torch.tensor(np.stack([np.pad(c, (0, width - len(c)), mode="edge") for c in cols])))
        for c in cols:
            jac = torch.tensor(rng.standard_normal((batch, 3, len(c))), dtype=dtype)
            index = torch.tensor(c)
            dense[:, index[:, None], index[None, :]] += jac.mT @ jac
    dense += 0.1 * torch.eye(dof, dtype=dtype)
    pattern = SparsePattern(dof, columns, starts=bounds)
    values = dense[:, pattern.rows, pattern.cols]
    return pattern, values, dense


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), nvar=st.integers(1, 40), batch=st.integers(1, 3))
def test_solves_like_the_dense_cholesky(seed, nvar, batch):
    pattern, values, dense = random_problem(seed, nvar=nvar, factors=2 * nvar, batch=batch)
    rhs = torch.randn(batch, pattern.dof, dtype=F64, generator=torch.Generator().manual_seed(seed))
    factor = SupernodalCholesky(pattern).factor(values)
    assert factor.ok.all()
    torch.testing.assert_close(factor.solve(rhs), torch.linalg.solve(dense, rhs), rtol=1e-9, atol=1e-9)


def test_float32_and_the_backend_through_sparse_cholesky():
    pattern, values, dense = random_problem(1, dtype=torch.float32)
    rhs = torch.randn(3, pattern.dof)
    solver = nlls.SparseCholesky("supernodal")
    x, ok = solver.factor(SparseMatrix(pattern, values)).solve(rhs)
    assert ok.all() and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.linalg.solve(dense, rhs), rtol=1e-3, atol=1e-4)
    assert repr(solver) == "SparseCholesky(backend='supernodal', used='supernodal')"


def test_a_failed_element_is_reported_alone_and_the_others_are_exact():
    pattern, values, dense = random_problem(2)
    bad = values.clone()
    bad[1, pattern.diagonal[5]] = -1e3  # element 1 is indefinite
    rhs = torch.randn(3, pattern.dof, dtype=F64)
    x, ok = nlls.SparseCholesky("supernodal").factor(SparseMatrix(pattern, bad)).solve(rhs)
    assert ok.tolist() == [True, False, True]
    assert torch.equal(x[1], torch.zeros_like(x[1]))
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(x[keep], torch.linalg.solve(dense[keep], rhs[keep]))


def test_a_singular_matrix_fails_without_raising():
    pattern, values, _ = random_problem(3, batch=2)
    singular = values.clone()
    singular[0] = 0.0  # no information at all
    factor = SupernodalCholesky(pattern).factor(singular)
    assert factor.ok.tolist() == [False, True]


def test_one_analysis_serves_every_batch_size():
    pattern, values, dense = random_problem(4, batch=4)
    solver = nlls.SparseCholesky("supernodal")
    for batch in (1, 4, 2):
        rhs = torch.randn(batch, pattern.dof, dtype=F64)
        x, ok = solver.factor(SparseMatrix(pattern, values[:batch])).solve(rhs)
        torch.testing.assert_close(x, torch.linalg.solve(dense[:batch], rhs))
    assert len(solver._symbolic) == 1


def grid_pattern(side, d=2):
    """Variables of ``d`` unknowns on a ``side x side`` grid, each joined to its right and lower
    neighbours."""
    index = np.arange(side * side).reshape(side, side)
    pairs = np.concatenate([np.stack([index[:, :-1].ravel(), index[:, 1:].ravel()], 1),
                            np.stack([index[:-1].ravel(), index[1:].ravel()], 1)])
    columns = (torch.tensor(pairs)[:, :, None] * d + torch.arange(d)).reshape(len(pairs), 2 * d)
    return SparsePattern(side * side * d, [columns], starts=np.arange(side * side + 1) * d)


def chain_pattern(nvar, d=2):
    pairs = torch.stack([torch.arange(nvar - 1), torch.arange(1, nvar)], 1)
    columns = (pairs[:, :, None] * d + torch.arange(d)).reshape(nvar - 1, 2 * d)
    return SparsePattern(nvar * d, [columns], starts=np.arange(nvar + 1) * d)


def test_a_grid_too_large_for_a_dense_matrix():
    """80,000 unknowns (a dense matrix would take 51 GB): the factor's storage stays far below."""
    pattern = grid_pattern(200)
    rows, cols = pattern.rows, pattern.cols
    values = torch.where(rows == cols, 12.0, -1.0).to(F64)[None]  # diagonally dominant
    chol = SupernodalCholesky(pattern)
    assert chol.analysis.buffer_size < 200 * pattern.dof
    x_true = torch.randn(1, pattern.dof, dtype=F64)
    rhs = torch.zeros_like(x_true).index_add_(1, rows, values * x_true[:, cols])
    factor = chol.factor(values)
    assert factor.ok.all()
    torch.testing.assert_close(factor.solve(rhs), x_true)


def test_auto_takes_the_supernodal_backend_only_where_it_pays(monkeypatch):
    from nlls.solve.linear import sparse

    plain = {"cvxopt": False, "qdldl": False, "cholmod": False}  # a plain install
    real = sparse._available
    monkeypatch.setattr(sparse, "_available", lambda b, device: plain.get(b, real(b, device)))
    cpu = torch.device("cpu")
    solver = nlls.SparseCholesky()
    assert solver._choose(cpu, grid_pattern(100)) == "supernodal"
    assert solver._choose(cpu, chain_pattern(30_000)) == "scipy"  # a deep elimination tree
    assert solver._choose(cpu, grid_pattern(40)) == "scipy"  # too small to pay for an analysis
    assert len(solver._symbolic) == 2  # (none made for the small one)
    plain["qdldl"] = True  # the sparse extra: QDLDL unless the factor fills in much
    assert solver._choose(cpu, grid_pattern(100)) == "qdldl"
    assert solver._choose(cpu, grid_pattern(60, d=6)) == "supernodal"
    plain["cvxopt"] = True  # the cholmod extra comes first, and no analysis is made for it
    solver = nlls.SparseCholesky()
    assert solver._choose(cpu, grid_pattern(100)) == "cholmod" and not solver._symbolic


def test_a_pose_graph_solve_equals_superlu():
    objective = nlls.io.read(nlls.io.bundled_dataset()).objective(dtype=F64, anchor=True)
    results = []
    for backend in ("supernodal", "scipy"):
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver=nlls.SparseCholesky(backend),
                                            max_iterations=5)
        start = {name: v.tensor.clone() for name, v in objective.optim_vars.items()}
        info = optimizer.optimize()
        results.append((info.iterations.clone(), torch.cat([v.tensor.reshape(1, -1) for v in objective.optim_vars.values()], 1)))
        objective.update(start)
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-9)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    pattern, values, dense = random_problem(5)
    rhs = torch.randn(3, pattern.dof, dtype=F64)
    chol = SupernodalCholesky(pattern)
    x = chol.factor(values.cuda()).solve(rhs.cuda())
    torch.testing.assert_close(x.cpu(), chol.factor(values).solve(rhs))
