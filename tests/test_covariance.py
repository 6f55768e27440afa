"""nlls.Covariance: blocks of (J^T J)^-1 or its pseudo-inverse, dense and sparse, batched.

The references are independent of the covariance's algorithm: NumPy's pseudo-inverse and inverse
of the dense J^T J that nlls's linearization assembles, and J^T J written out by hand for a robust
fit. GTSAM's marginals: tests/test_covariance_reference.py; gradients:
tests/test_covariance_gradients.py."""
from pathlib import Path

import numpy as np
import pytest
import torch

import nlls
from nlls.solve.linearization import DenseLinearization

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SOLVERS = ["dense_cholesky", "sparse_cholesky"]


def pose_graph(batch=1, poses=8, seed=0, prior=True, closures=((0, 5),), dtype=F64, prefix="x"):
    """A 2-D pose graph: odometry, loop closures, information weights, optionally a prior on x0;
    poses ``x{i}``, measurements aux variables ``m{k}``, edges ``e{k}`` (with another ``prefix``
    than ``x``, every name starts with it)."""
    tag = "" if prefix == "x" else prefix + "_"
    g = torch.Generator().manual_seed(seed)
    truth = [nlls.SE2.exp_map(torch.randn(batch, 3, generator=g, dtype=F64)) for _ in range(poses)]
    xs = [nlls.SE2(tensor=t.retract(0.1 * torch.randn(batch, 3, generator=g, dtype=F64)).tensor.to(dtype),
                   name=f"{prefix}{i}") for i, t in enumerate(truth)]
    objective = nlls.Objective()
    if prior:
        target = nlls.SE2(tensor=truth[0].tensor.clone().to(dtype), name=f"{tag}prior_target")
        objective.add(nlls.Difference(xs[0], target, cost_weight=nlls.DiagonalCostWeight(
            torch.tensor([[3.0, 2.0, 5.0]], dtype=dtype)), name=f"{tag}prior"))
    pairs = [(i, i + 1) for i in range(poses - 1)] + list(closures)
    for k, (i, j) in enumerate(pairs):
        measured = truth[i].between(truth[j]).retract(0.05 * torch.randn(batch, 3, generator=g, dtype=F64))
        weight = (torch.tensor([[10.0, 8.0, 20.0]], dtype=F64) * (1 + torch.rand(batch, 3, generator=g, dtype=F64)))
        objective.add(nlls.Between(xs[i], xs[j], nlls.SE2(tensor=measured.tensor.to(dtype), name=f"{tag}m{k}"),
                                   cost_weight=nlls.DiagonalCostWeight(weight.to(dtype)), name=f"{tag}e{k}"))
    return objective, xs


def dense_normal_matrix(objective) -> np.ndarray:
    """``(B, D, D)`` J^T J as nlls's dense linearization assembles it, float64 NumPy."""
    evaluator = objective.evaluator()
    with torch.no_grad():
        A = DenseLinearization(evaluator).linearize(evaluator.gather(), evaluator.aux()).A
    return A.to(F64).numpy()


def columns(objective, variables):
    """The tangent columns of ``variables`` in the step (the evaluator's order)."""
    where, start = {}, 0
    for block in objective.evaluator().blocks:
        for var in block.variables:
            where[var.name] = np.arange(start, start + block.dof)
            start += block.dof
    return np.concatenate([where[v if isinstance(v, str) else v.name] for v in variables])


def pinv_blocks(objective, variables, rcond=1e-10):
    A = dense_normal_matrix(objective)
    index = columns(objective, variables)
    return np.stack([np.linalg.pinv(a, rcond=rcond, hermitian=True)[np.ix_(index, index)] for a in A])


@pytest.mark.parametrize("solver", SOLVERS)
def test_pseudo_inverse_without_a_prior_equals_numpy_pinv(solver):
    objective, xs = pose_graph(batch=3, poses=10, prior=False, closures=((0, 6), (2, 9)))
    chosen = [xs[0], xs[4], xs[9]]
    cov = nlls.Covariance(objective, linear_solver=solver).compute()
    assert cov.ok.all() and cov.null_space_dim.tolist() == [3, 3, 3]
    got = cov.joint(chosen)
    assert got.shape == (3, 9, 9) and got.dtype == F64
    np.testing.assert_allclose(got.numpy(), pinv_blocks(objective, chosen), rtol=0, atol=1e-9 * np.abs(got.numpy()).max())
    torch.testing.assert_close(cov.marginal(xs[4]), got[:, 3:6, 3:6])
    torch.testing.assert_close(cov.marginal("x4"), got[:, 3:6, 3:6])


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["w100.graph", "pose3example.txt"])
def test_real_graphs_without_a_prior_equal_numpy_pinv(solver, name):
    problem = nlls.io.read(DATA / name)
    objective = problem.objective()
    reference = np.load(ROOT / "tests" / "data" / f"marginals_{Path(name).stem}.npz")
    objective.update({f"x{i}": torch.from_numpy(p[None]) for i, p in zip(reference["ids"], reference["poses"])})
    names = [f"x{i}" for i in reference["ids"]]
    chosen = [names[0], names[len(names) // 2], names[-1]]
    cov = nlls.Covariance(objective, linear_solver=solver).compute()
    assert cov.ok.all() and int(cov.null_space_dim) == 3 * (problem.dimension - 1)
    got = cov.joint(chosen).numpy()
    expected = pinv_blocks(objective, chosen)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8 * np.abs(expected).max())


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_fixed_gauge_removes_the_variables(solver):
    objective, xs = pose_graph(batch=2, poses=7, prior=False)
    A = dense_normal_matrix(objective)
    for gauge in (xs[0], "x0", [xs[0], xs[3]]):
        fixed = columns(objective, gauge if isinstance(gauge, list) else [gauge])
        free = np.setdiff1d(np.arange(A.shape[-1]), fixed)
        inverse = np.zeros_like(A)
        for b in range(2):
            inverse[b][np.ix_(free, free)] = np.linalg.inv(A[b][np.ix_(free, free)])
        cov = nlls.Covariance(objective, linear_solver=solver, gauge=gauge).compute()
        assert cov.ok.all() and cov.null_space_dim.tolist() == [0, 0]
        index = columns(objective, xs)
        np.testing.assert_allclose(cov.joint(xs).numpy(), inverse[:, index][:, :, index], rtol=1e-9, atol=1e-12)
        assert (cov.marginal(xs[0]) == 0).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_with_a_prior_every_gauge_gives_the_inverse(solver):
    objective, xs = pose_graph(batch=2, poses=6)
    index = columns(objective, xs)
    inverse = np.linalg.inv(dense_normal_matrix(objective))[:, index][:, :, index]
    cov = nlls.Covariance(objective, linear_solver=solver).compute()
    assert cov.null_space_dim.tolist() == [0, 0]
    np.testing.assert_allclose(cov.joint(xs).numpy(), inverse, rtol=1e-9, atol=1e-13)


def test_bundle_adjustment_sparse_pseudo_inverse():
    """BAL: 48 unknowns, 38 residuals: 10 exact null directions and more eigenvalues just above
    (1e-15, 1e-12, 3e-10 of the scale): more than the first block of the inverse iteration. The
    sparse path counts them as the dense eigendecomposition does and gives the dense result; beside
    NumPy's truncated eigendecomposition it differs by the documented order, the largest eigenvalue
    dropped over the smallest kept."""
    objective = nlls.io.read(DATA / "dubrovnik-3-7-pre.txt").objective()
    variables = list(objective.optim_vars)
    chosen = [variables[0], variables[-1]]
    A = dense_normal_matrix(objective)[0]
    eigenvalues = np.linalg.eigvalsh(A)
    rcond = 1e-10
    dropped = eigenvalues <= rcond * A.diagonal().max()
    sparse = nlls.Covariance(objective, linear_solver="sparse_cholesky", min_reciprocal_condition_number=rcond).compute()
    dense = nlls.Covariance(objective, linear_solver="dense_cholesky", min_reciprocal_condition_number=rcond).compute()
    assert sparse.ok.all() and int(sparse.null_space_dim) == int(dense.null_space_dim) == int(dropped.sum()) >= 10
    got = sparse.joint(chosen).numpy()
    np.testing.assert_allclose(got, dense.joint(chosen).numpy(), rtol=0, atol=1e-8 * np.abs(got).max())
    expected = pinv_blocks(objective, chosen, rcond=rcond * A.diagonal().max() / eigenvalues.max())
    order = eigenvalues[dropped].max() / eigenvalues[~dropped].min()
    assert np.abs(got - expected).max() <= 10 * order * np.abs(expected).max()


def test_batch_elements_are_independent_and_a_singular_one_is_flagged():
    """r = a x + b - y on 'ab', and 'cd' tied to b. Element 1 has x = 0 ('ab'[0] unseen: with 'cd'
    held fixed J^T J stays singular), element 2 a NaN in x: both flagged, zero, finite; element 0
    as alone."""
    x = torch.linspace(0.5, 2.0, 6, dtype=F64).repeat(3, 1)
    x[1] = 0.0
    x[2, 0] = float("nan")
    y = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    ab = nlls.Vector(tensor=torch.tensor([[1.0, 0.5]], dtype=F64), name="ab")
    cd = nlls.Vector(tensor=torch.tensor([[0.3, -0.2]], dtype=F64), name="cd")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction(
        [ab], lambda v, a: v[0].tensor[:, :1] * a[0].tensor + v[0].tensor[:, 1:] - a[1].tensor, 6,
        aux_vars=[nlls.Variable(x, name="x"), nlls.Variable(y, name="y")], name="fit"))
    objective.add(nlls.AutoDiffCostFunction([ab, cd], lambda v, a: v[1].tensor - v[0].tensor[:, 1:], 2, name="tie"))
    jac = np.stack([x[0].numpy(), np.ones(6)], 1)
    expected = np.linalg.inv(jac.T @ jac + np.diag([0.0, 2.0]))  # the tie adds 2 to b's entry
    for solver in SOLVERS:
        cov = nlls.Covariance(objective, linear_solver=solver, gauge="cd").compute()
        marginal = cov.marginal("ab")
        assert cov.ok.tolist() == [True, False, False], cov.message
        assert torch.isfinite(marginal).all() and (marginal[1:] == 0).all()
        assert "element(s) [2]: J^T J is not finite" in cov.message
        assert "element(s) [1]: J^T J stays singular" in cov.message
        np.testing.assert_allclose(marginal[0].numpy(), expected, rtol=1e-10)
        pinv = nlls.Covariance(objective, linear_solver=solver).compute()
        assert pinv.ok.tolist() == [True, True, False] and pinv.null_space_dim.tolist() == [0, 1, 0]
        assert torch.isfinite(pinv.joint(["ab", "cd"])).all()


def test_robust_loss_uses_the_corrected_jacobian():
    """Cauchy (rho'' < 0): A = sum_i rho'(s_i) J_i^T J_i, written out here."""
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 12, dtype=F64)[None]
    y = 2.0 * x + 0.5 + 0.1 * torch.randn(1, 12, generator=g, dtype=F64)
    y[0, 3] += 5.0  # an outlier
    ab = nlls.Vector(tensor=torch.tensor([[1.8, 0.4]], dtype=F64), name="ab")
    objective = nlls.Objective()
    for i in range(12):
        inner = nlls.AutoDiffCostFunction(
            [ab], lambda v, a: v[0].tensor[:, :1] * a[0].tensor + v[0].tensor[:, 1:] - a[1].tensor, 1,
            aux_vars=[nlls.Variable(x[:, i:i + 1], name=f"x{i}"), nlls.Variable(y[:, i:i + 1], name=f"y{i}")],
            cost_weight=2.0, name=f"r{i}")
        objective.add(nlls.RobustCostFunction(inner, nlls.CauchyLoss(0.5), name=f"robust{i}"))
    a, b = ab.tensor[0].tolist()
    r = 2.0 * (a * x[0] + b - y[0])
    s = r ** 2
    rho1 = 1.0 / (1.0 + s / 0.25)
    jac = 2.0 * torch.stack([x[0], torch.ones_like(x[0])], dim=1)
    expected = torch.linalg.inv((rho1[:, None, None] * jac[:, :, None] * jac[:, None, :]).sum(0))
    torch.testing.assert_close(nlls.Covariance(objective).marginal("ab")[0], expected, rtol=1e-10, atol=0)


def test_float32_objective_gives_float32_close_to_float64():
    objective, xs = pose_graph(batch=2, poses=6, prior=False, dtype=torch.float32)
    reference, _ = pose_graph(batch=2, poses=6, prior=False)
    got = nlls.Covariance(objective).compute()
    assert got.ok.all() and got.null_space_dim.tolist() == [3, 3]
    marginal = got.marginal("x5")
    assert marginal.dtype == torch.float32
    torch.testing.assert_close(marginal.double(), nlls.Covariance(reference).marginal("x5"), rtol=2e-3, atol=1e-5)


def test_arguments_are_checked_by_name():
    objective, xs = pose_graph(poses=4, closures=((0, 3),))
    with pytest.raises(ValueError, match="'nope' is not an optim variable"):
        nlls.Covariance(objective, gauge="nope")
    with pytest.raises(ValueError, match="gauge SE2 'm0' is not an optim variable"):
        nlls.Covariance(objective, gauge=objective.aux_vars["m0"])
    with pytest.raises(TypeError, match="gauge must be"):
        nlls.Covariance(objective, gauge=3)
    with pytest.raises(ValueError, match="'jacobian' linearization"):
        nlls.Covariance(objective, linear_solver="cg")
    with pytest.raises(ValueError, match="min_reciprocal_condition_number"):
        nlls.Covariance(objective, min_reciprocal_condition_number=-1.0)
    with pytest.raises(TypeError, match="objective must be"):
        nlls.Covariance("objective")
    cov = nlls.Covariance(objective)
    with pytest.raises(ValueError, match="variable 'y' is not an optim variable"):
        cov.marginal("y")
    with pytest.raises(TypeError, match="list of variables"):
        cov.joint("x1")
    assert "not computed" in cov.message and cov.marginal("x1").shape == (1, 3, 3)  # computes on demand


def test_numeric_diff_refuses_a_gradient_but_computes_without_one():
    x = torch.linspace(0, 1, 5, dtype=F64)[None]
    ab = nlls.Vector(tensor=torch.tensor([[1.0, 2.0]], dtype=F64), name="ab")
    data = nlls.Variable(x.clone().requires_grad_(), name="data")
    objective = nlls.Objective()
    objective.add(nlls.NumericDiffCostFunction([ab], lambda v, a: v[0].tensor[:, :1] * a[0].tensor + v[0].tensor[:, 1:],
                                               5, aux_vars=[data], name="black_box"))
    with pytest.raises(ValueError, match="'black_box'.*has_autograd_graph=False.*torch.no_grad"):
        nlls.Covariance(objective).compute()
    with torch.no_grad():
        marginal = nlls.Covariance(objective).marginal(ab)
    A = np.stack([x[0].numpy(), np.ones(5)], 1)
    np.testing.assert_allclose(marginal[0].numpy(), np.linalg.inv(A.T @ A), rtol=1e-6)


def _bundle_adjustment(cameras, points, tmp_path):
    """A small synthetic BAL scene solved to its minimum (bench/problems_bal_synthetic.py)."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import problems_bal_synthetic as scenes
    finally:
        sys.path.pop(0)
    path = scenes.scene_file(cameras, points, seed=1, directory=tmp_path)
    objective = nlls.io.read(path).objective()
    info = nlls.LevenbergMarquardt(objective, linear_solver="schur", max_iterations=50).optimize()
    assert bool(info.converged.all())
    return objective


def test_bundle_adjustment_covariance_through_the_schur_complement(tmp_path):
    """The Schur complement (points eliminated) gives the dense covariance, with the similarity
    gauge found by the pseudo-inverse (7 directions) or fixed by a camera and a point; and it is
    the automatic choice for a large bundle adjustment."""
    objective = _bundle_adjustment(6, 60, tmp_path)
    variables = list(objective.optim_vars.values())
    chosen = [variables[2], variables[-1]]
    for gauge in ("pseudo_inverse", [variables[0], variables[1]]):
        dense = nlls.Covariance(objective, linear_solver="dense_cholesky", gauge=gauge).compute()
        schur = nlls.Covariance(objective, linear_solver="schur", gauge=gauge).compute()
        assert bool(schur.ok.all()) and schur.null_space_dim.tolist() == dense.null_space_dim.tolist()
        expected = dense.joint(chosen)
        torch.testing.assert_close(schur.joint(chosen), expected, rtol=0, atol=1e-10 * float(expected.abs().max()))
    assert dense.null_space_dim.tolist() == [0] and schur.null_space_dim.tolist() == [0]
    large = _bundle_adjustment(8, 200, tmp_path)  # 672 unknowns, 600 of them in points
    cov = nlls.Covariance(large, gauge=[next(iter(large.optim_vars.values()))]).compute()
    assert "Schur" in repr(cov._built[3]) and cov.kind == "sparse"
