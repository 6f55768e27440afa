"""SparseCholesky's CHOLMOD backend through CVXOPT (``nlls[cholmod]``): solves, failures per
element, the pooled factors that held factorizations need (its gradients: tests/solve/linear/test_sparse.py)."""
import pytest
import torch

import nlls
from nlls.solve.systems import SparseMatrix

from .test_sparse_ldl import _dense_solve, _system

pytest.importorskip("cvxopt")
from nlls.solve.linear.cholmod_cvxopt import CholmodAnalysis  # noqa: E402

F64 = torch.float64


def test_cholmod_solves_a_batch_like_the_dense_solver():
    system = _system(n=12, batch=3)
    solver = nlls.SparseCholesky("cholmod")
    x, ok = solver.factor(system.A).solve(system.g)
    assert ok.all() and solver.backend_used == "cholmod"
    torch.testing.assert_close(x, _dense_solve(system.A, system.g), rtol=1e-10, atol=1e-12)


def test_an_indefinite_or_singular_element_fails_alone():
    system = _system()
    pattern = system.A.pattern
    values = system.A.values.clone()
    values[1] = -values[1]  # negative definite
    unknown = 5  # element 2: no equation constrains this unknown
    values[2, (pattern.rows == unknown) | (pattern.cols == unknown)] = 0.0
    matrix = SparseMatrix(pattern, values)
    x, ok = nlls.SparseCholesky("cholmod").factor(matrix).solve(system.g)
    assert ok.tolist() == [True, False, False]
    assert torch.isfinite(x).all() and torch.equal(x[1:], torch.zeros_like(x[1:]))
    torch.testing.assert_close(x[0], _dense_solve(SparseMatrix(pattern, values[:1]), system.g[:1])[0])


def test_one_analysis_serves_every_refactorization_and_a_held_factor_stays_valid():
    system = _system()
    analysis = CholmodAnalysis(system.A.pattern, batch=3)
    for scale in (1.0, 2.0, 3.0):
        analysis.factor(system.A.values * scale)
    assert analysis.factors == 1  # nobody held them: one factor, refactored
    holder = type("Holder", (), {})()
    analysis.factor(system.A.values, owner=holder)
    analysis.factor(system.A.values)  # the held one is kept: a second factor
    assert analysis.factors == 2  # (a held factor through SparseCholesky: test_sparse.py)


def test_auto_prefers_cholmod_through_cvxopt_and_a_pose_graph_reaches_the_same_cost():
    graph = nlls.io.read(nlls.io.bundled_dataset())
    costs = []
    for backend in ("auto", "qdldl"):
        objective = graph.objective(anchor=True)
        solver = nlls.SparseCholesky(backend)
        info = nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=20).optimize()
        assert info.converged.all()
        costs.append(float(info.final_error[0]))
        if backend == "auto":
            assert solver.backend_used == "cholmod"
    assert costs[0] == pytest.approx(costs[1], rel=1e-9)
