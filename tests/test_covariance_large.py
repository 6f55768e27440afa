"""Sparse covariance on large graphs. Default run: a 250-pose graph (750 unknowns, so
``linear_solver=None`` picks the sparse path) against NumPy; the bench script's smoke run.
Slow (``-m slow``): ``w10000.graph`` (30,000 unknowns), first and last marginals with the first pose
held fixed against SciPy's own sparse solve, and the pseudo-inverse's; time and memory are
measured by ``bench/bench_covariance.py``, not asserted."""
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

import nlls
from nlls.solve.linearization import SparseLinearization
from tests.test_covariance import columns, pinv_blocks, pose_graph

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def test_a_graph_beyond_the_dense_limit_takes_the_sparse_path():
    objective, xs = pose_graph(batch=2, poses=250, prior=False, closures=((0, 120), (30, 249), (100, 200)))
    assert objective.evaluator().dof > nlls.uncertainty.DENSE_MAX_DOF
    cov = nlls.Covariance(objective).compute()
    assert cov.kind == "sparse"
    assert cov.ok.all() and cov.null_space_dim.tolist() == [3, 3]
    chosen = [xs[0], xs[-1]]
    expected = pinv_blocks(objective, chosen)
    np.testing.assert_allclose(cov.joint(chosen).numpy(), expected, rtol=0, atol=1e-8 * np.abs(expected).max())


def test_the_bench_script_runs(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_covariance

    rows = bench_covariance.main(["--graph", str(DATA / "w100.graph"), "--at-initial", "--threads", "1"])
    assert [r["gauge"] for r in rows] == ["pseudo_inverse", "first"]
    for row in rows:
        assert row["ok"] and row["total_ms"] > 0 and len(row["last_std"]) == 3
    assert rows[0]["null_space_dim"] == 3 and rows[1]["first_std"] == [0.0, 0.0, 0.0]
    assert '"bench": "covariance"' in capsys.readouterr().out


def _sparse_matrix(objective):
    linearization = SparseLinearization(objective.evaluator())
    evaluator = linearization.evaluator
    with torch.no_grad():
        values = linearization.linearize(evaluator.gather(), evaluator.aux()).A.values[0].numpy()
    pattern = linearization.pattern
    size = pattern.dof
    return scipy.sparse.csc_matrix((values, pattern.cols.numpy(), pattern.crow.numpy()), shape=(size, size))


@pytest.mark.slow
def test_w10000_first_and_last_marginals():
    problem = nlls.io.read(DATA / "w10000.graph")
    objective = problem.objective()
    nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky", max_iterations=100).optimize()
    names = [f"x{int(i)}" for i in problem.vertex_ids]
    fixed = nlls.Covariance(objective, gauge=names[0]).compute()
    assert fixed.ok.all()
    got = fixed.joint([names[0], names[-1]])[0].numpy()
    A = _sparse_matrix(objective)
    free = np.setdiff1d(np.arange(A.shape[0]), columns(objective, [names[0]]))
    last = np.searchsorted(free, columns(objective, [names[-1]]))
    reduced = A[free][:, free].tocsc()
    rhs = np.zeros((len(free), 3))
    rhs[last, np.arange(3)] = 1.0
    expected = scipy.sparse.linalg.spsolve(reduced, rhs)[last]
    assert (got[:3, :3] == 0).all()
    # A_ff's condition number is about 1e9 (its smallest eigenvalue 1.4e-9 of the largest diagonal
    # entry): two factorizations agree to about 1e9 machine epsilons
    np.testing.assert_allclose(got[3:, 3:], expected, rtol=1e-6, atol=0)
    pinv = nlls.Covariance(objective).compute()
    assert pinv.ok.all() and int(pinv.null_space_dim) == 3
    joint = pinv.joint([names[0], names[-1]])[0]
    assert torch.isfinite(joint).all() and bool((torch.linalg.eigvalsh(joint) > 0).all())
