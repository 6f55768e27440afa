"""The QDLDL backend of SparseCholesky: one analysis per structure and batch size, per-element
failure read from the pivots, factorizations kept alive by autograd never overwritten."""
import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator
from nlls.solve.linear.cholmod_cvxopt import cvxopt_available
from nlls.solve.linear.sparse import CPU_ORDER, available_backends
from nlls.solve.linearization import SparseLinearization
from nlls.solve.systems import SparseMatrix

from .test_sparse import chain

qdldl = pytest.importorskip("qdldl")
from nlls.solve.linear.ldl import LDLAnalysis  # noqa: E402

F64 = torch.float64


def _system(n=8, batch=3, dtype=F64):
    obj, _ = chain(n, batch=batch, dtype=dtype)
    ev = Evaluator(obj)
    return SparseLinearization(ev).linearize(ev.gather(), ev.aux())


def _dense_solve(matrix, rhs):
    return torch.linalg.solve(matrix.to_dense(), rhs[..., None])[..., 0]


def test_indefinite_element_is_found_from_its_pivots_the_others_solved():
    system = _system()
    values = system.A.values.clone()
    dense = system.A.to_dense()
    # x and y are alike: eigenvalues come in pairs; shift between the first and second pair
    shift = torch.linalg.eigvalsh(dense[1])[1:3].mean()
    values[1] = values[1] - shift * (system.A.pattern.rows == system.A.pattern.cols).to(F64)
    matrix = SparseMatrix(system.A.pattern, values)
    eigenvalues = torch.linalg.eigvalsh(matrix.to_dense()[1])
    assert eigenvalues[0] < 0 < eigenvalues[2] and eigenvalues.abs().min() > 1e-3  # not singular
    x, ok = nlls.SparseCholesky("qdldl").factor(matrix).solve(system.g)
    assert ok.tolist() == [True, False, True]
    assert torch.equal(x[1], torch.zeros_like(x[1]))
    torch.testing.assert_close(x[[0, 2]], _dense_solve(matrix, system.g)[[0, 2]])


def test_exactly_zero_pivot_falls_back_to_elements_one_by_one():
    system = _system()
    pattern = system.A.pattern
    values = system.A.values.clone()
    unknown = 5  # no equation constrains it in element 0: a zero row and column
    values[0, (pattern.rows == unknown) | (pattern.cols == unknown)] = 0.0
    matrix = SparseMatrix(pattern, values)
    x, ok = nlls.SparseCholesky("qdldl").factor(matrix).solve(system.g)
    assert ok.tolist() == [False, True, True]
    assert torch.isfinite(x).all() and torch.equal(x[0], torch.zeros_like(x[0]))
    torch.testing.assert_close(x[1:], _dense_solve(SparseMatrix(pattern, values[1:]), system.g[1:]))


def test_non_finite_values_fail_their_element_only():
    system = _system()
    values = system.A.values.clone()
    values[2, system.A.pattern.diagonal[7]] = float("nan")
    x, ok = nlls.SparseCholesky("qdldl").factor(SparseMatrix(system.A.pattern, values)).solve(system.g)
    assert ok.tolist() == [True, True, False] and torch.isfinite(x).all()


def test_one_analysis_serves_every_refactorization_and_a_held_factorization_stays_valid():
    system = _system()
    analysis = LDLAnalysis(system.A.pattern, batch=3)
    for scale in (1.0, 2.0, 3.0):
        analysis.factor(system.A.values * scale)
    assert analysis.solvers == 1  # nobody held the factorizations: one solver, refactored
    holder = type("Holder", (), {})()
    _, ok = analysis.factor(-system.A.values, owner=holder)  # failed: released at once
    assert ok.tolist() == [False, False, False]
    _, ok = analysis.factor(system.A.values, owner=holder)
    assert ok.all() and analysis.solvers == 1
    analysis.factor(system.A.values)  # the held one is kept: a second solver
    assert analysis.solvers == 2  # (a held factorization through SparseCholesky: test_sparse.py)


def test_a_whole_solve_builds_the_analysis_once(monkeypatch):
    made = []
    original = qdldl.Solver

    def counting(*args, **kwargs):
        made.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(qdldl, "Solver", counting)
    obj, _ = chain(30, batch=3)
    info = nlls.LevenbergMarquardt(obj, linear_solver=nlls.SparseCholesky("qdldl"), max_iterations=30).optimize()
    assert info.converged.all()
    assert len(made) <= 2 and {shape[0] for shape in made} == {3 * 60}  # the batch in one matrix


def test_float32_values_are_factored_in_float64_and_solved_in_float32():
    system = _system(dtype=torch.float32)
    x, ok = nlls.SparseCholesky("qdldl").factor(system.A).solve(system.g)
    assert ok.all() and x.dtype == torch.float32
    reference = _dense_solve(SparseMatrix(system.A.pattern, system.A.values.double()), system.g.double())
    torch.testing.assert_close(x.double(), reference, rtol=1e-4, atol=1e-5)


def test_auto_picks_the_first_cpu_backend_installed():
    system = _system(batch=1)
    solver = nlls.SparseCholesky()
    solver.factor(system.A)
    here = available_backends(torch.device("cpu"))
    first = next(b for b in CPU_ORDER if b in here or (b == "cvxopt" and cvxopt_available()))
    assert solver.backend_used == ("cholmod" if first == "cvxopt" else first)
    assert "qdldl" in here  # a dependency of nlls: the default install has it
