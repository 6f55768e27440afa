"""Schur complement (linear_solver="schur"): equals the dense solve on bundle-adjustment systems,
batched, per-element failures, gradients, a problem whose dense matrix could never be formed,
the automatic choice of what to eliminate, and BAL solves."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nlls
from nlls.io.bal import BALProblem, read_bal
from nlls.solve.linear import LINEAR_SOLVERS, Schur
from nlls.solve.linear.schur_columns import independent_blocks
from nlls.solve.systems import SparseMatrix, SparsePattern

F64 = torch.float64
DUBROVNIK = Path(__file__).resolve().parents[4] / "shared" / "data" / "dubrovnik-3-7-pre.txt"


def random_ba_system(batch=3, cameras=4, points=30, camera_dof=6, intrinsics=False, seed=0,
                     per_point=3):
    """``A = J^T J + diag`` of a random bundle adjustment: each point seen by ``per_point``
    cameras, residuals of 2 rows; with ``intrinsics``, cameras share 3-dof intrinsics per pair
    (a second kept block size). Returns ``(A, eliminated columns)``."""
    g = torch.Generator().manual_seed(seed)
    intr = cameras // 2 if intrinsics else 0
    cam_cols = torch.arange(cameras * camera_dof).reshape(cameras, camera_dof)
    start = cameras * camera_dof
    point_cols = start + torch.arange(points * 3).reshape(points, 3)
    intr_cols = start + points * 3 + torch.arange(intr * 3).reshape(intr, 3)
    dof = start + points * 3 + intr * 3
    columns = []
    for p in range(points):
        seen = torch.randperm(cameras, generator=g)[:per_point]
        for c in seen.tolist():
            parts = [cam_cols[c], point_cols[p]] + ([intr_cols[c // 2]] if intrinsics else [])
            columns.append(torch.cat(parts))
    columns = torch.stack(columns)
    pattern = SparsePattern(dof, [columns])
    jac = torch.randn(batch, columns.shape[0], 2, columns.shape[1], generator=g, dtype=F64)
    blocks = (jac.mT @ jac).reshape(batch, -1)
    values = torch.zeros(batch, pattern.nnz, dtype=F64).index_add(1, pattern.scatter[0], blocks)
    damping = torch.rand(batch, dof, generator=g, dtype=F64) + 0.1
    return SparseMatrix(pattern, values).add_diagonal(damping), point_cols


def dense_solve(matrix, rhs):
    return torch.linalg.solve(matrix.to_dense(), rhs)


def symmetric_part(pattern, grad):
    """A gradient on the values of a symmetric matrix along symmetric changes (``G + G^T`` on
    the pattern): what any solver must agree on (one reading a single triangle puts it all there)."""
    keys = pattern.rows * pattern.dof + pattern.cols
    transposed = torch.searchsorted(keys, pattern.cols * pattern.dof + pattern.rows)
    return grad + grad[:, transposed]


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
@pytest.mark.parametrize("intrinsics", [False, True])
def test_equals_dense_solve_on_random_ba_systems(reduced, intrinsics):
    A, points = random_ba_system(intrinsics=intrinsics, seed=int(intrinsics))
    rhs = torch.randn(A.shape[0], A.shape[1], dtype=F64)
    solver = Schur(eliminate=points, reduced=reduced)
    x, ok = solver.factor(A).solve(rhs)
    assert ok.all()
    torch.testing.assert_close(x, dense_solve(A, rhs), rtol=1e-9, atol=1e-10)
    structure = solver.structure(A.pattern)
    assert structure.num_kept == A.shape[1] - points.numel()
    assert len(structure.classes) == (2 if intrinsics else 1)


def test_batch_elements_equal_their_separate_solves():
    A, points = random_ba_system(batch=4, seed=3)
    rhs = torch.randn(4, A.shape[1], dtype=F64)
    factorization = Schur(eliminate=points).factor(A)
    x, _ = factorization.solve(rhs)
    for b in range(4):
        single = SparseMatrix(A.pattern, A.values[b:b + 1])
        xb, _ = Schur(eliminate=points).factor(single).solve(rhs[b:b + 1])
        torch.testing.assert_close(x[b:b + 1], xb, rtol=1e-12, atol=1e-12)
    # the same factorization solves any number of right-hand sides
    x2, _ = factorization.solve(2 * rhs)
    torch.testing.assert_close(x2, 2 * x)


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
def test_a_failed_element_spoils_no_other(reduced):
    A, points = random_ba_system(batch=4, seed=5)
    values = A.values.clone()
    diagonal = A.pattern.diagonal
    values[1, diagonal[points[3]]] = -5.0  # a point block that is not positive definite
    values[2, 7] = float("nan")
    values[3, diagonal[:24]] -= 1e3  # the cameras' reduced system is not positive definite
    bad = SparseMatrix(A.pattern, values)
    rhs = torch.randn(4, A.shape[1], dtype=F64)
    x, ok = Schur(eliminate=points, reduced=reduced).factor(bad).solve(rhs)
    assert ok.tolist() == [True, False, False, False]
    assert torch.isfinite(x).all() and (x[1:] == 0).all()
    torch.testing.assert_close(x[:1], dense_solve(A, rhs)[:1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
def test_gradients_equal_the_dense_solve(reduced):
    A, points = random_ba_system(batch=2, cameras=3, points=8, seed=7)
    rhs = torch.randn(2, A.shape[1], dtype=F64)
    weights = torch.randn(2, A.shape[1], dtype=F64)
    grads = []
    for use_schur in (True, False):
        values = A.values.clone().requires_grad_(True)
        b = rhs.clone().requires_grad_(True)
        matrix = SparseMatrix(A.pattern, values)
        if use_schur:
            x = Schur(eliminate=points, reduced=reduced).factor(matrix).solve(b)[0]
        else:
            x = dense_solve(matrix, b)
        grad_values, grad_b = torch.autograd.grad((x * weights).sum(), (values, b))
        grads.append((symmetric_part(A.pattern, grad_values), grad_b))
    for schur_grad, dense_grad in zip(*grads):
        torch.testing.assert_close(schur_grad, dense_grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
def test_gradcheck_through_the_jacobian(reduced):
    """Values made symmetric as the linearization makes them (``J^T J`` blocks): gradcheck."""
    g = torch.Generator().manual_seed(11)
    columns = torch.tensor([[0, 1, 4, 5, 6], [2, 3, 4, 5, 6], [0, 1, 7, 8, 9], [2, 3, 7, 8, 9]])
    pattern = SparsePattern(10, [columns])
    points = torch.tensor([[4, 5, 6], [7, 8, 9]])
    solver = Schur(eliminate=points, reduced=reduced)

    def solve(jac, rhs):
        values = torch.zeros(1, pattern.nnz, dtype=F64).index_add(
            1, pattern.scatter[0], (jac.mT @ jac).reshape(1, -1))
        matrix = SparseMatrix(pattern, values).add_diagonal(torch.full((1, 10), 0.3, dtype=F64))
        return solver.factor(matrix).solve(rhs)[0]

    jac = torch.randn(1, 4, 3, 5, dtype=F64, generator=g, requires_grad=True)
    rhs = torch.randn(1, 10, dtype=F64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (jac, rhs), fast_mode=True)
    assert torch.autograd.gradgradcheck(solve, (jac, rhs), fast_mode=True)


def test_a_problem_whose_dense_matrix_would_take_terabytes():
    """200,000 points and 3 cameras: 600,006 unknowns, a dense normal matrix of 2.9 TB."""
    points, cameras, camera_dof = 200_000, 3, 2
    g = torch.Generator().manual_seed(0)
    cam = torch.randint(0, cameras, (points,), generator=g)
    point_cols = cameras * camera_dof + torch.arange(points * 3).reshape(points, 3)
    columns = torch.cat([cam[:, None] * camera_dof + torch.arange(camera_dof), point_cols], dim=1)
    begin = time.perf_counter()
    pattern = SparsePattern(cameras * camera_dof + points * 3, [columns])
    jac = torch.randn(1, points, 2, columns.shape[1], generator=g, dtype=F64)
    values = torch.zeros(1, pattern.nnz, dtype=F64).index_add(
        1, pattern.scatter[0], (jac.mT @ jac).reshape(1, -1))
    A = SparseMatrix(pattern, values).add_diagonal(torch.full((1, pattern.dof), 0.5, dtype=F64))
    rhs = torch.randn(1, pattern.dof, dtype=F64, generator=g)
    x, ok = Schur(eliminate=point_cols).factor(A).solve(rhs)
    assert ok.all()
    residual = A.matvec(x) - rhs
    assert residual.abs().max() < 1e-9 * rhs.abs().max()
    assert time.perf_counter() - begin < 60


def bal_problem(cameras=4, points=40, seed=0, noise=0.5):
    """A small random BAL scene: cameras around the origin at distance 10, points in a unit
    ball, every point seen by 3 cameras, start perturbed."""
    rng = np.random.default_rng(seed)
    cams = np.zeros((cameras, 9))
    cams[:, :3] = rng.normal(scale=0.05, size=(cameras, 3))
    cams[:, 3:6] = rng.normal(scale=0.3, size=(cameras, 3)) + [0.0, 0.0, -10.0]
    cams[:, 6] = 500.0
    pts = rng.uniform(-1, 1, size=(points, 3))
    obs = np.array([(c, p) for p in range(points) for c in rng.permutation(cameras)[:3]])
    problem = BALProblem(torch.from_numpy(cams), torch.from_numpy(pts), obs,
                         torch.zeros(len(obs), 2, dtype=F64))
    objective = problem.objective()
    truth = objective.error().reshape(-1, 2)  # predictions, as the measurements are zero
    measurements = truth + torch.from_numpy(rng.normal(scale=noise, size=truth.shape))
    start_cams = cams + np.concatenate([rng.normal(scale=0.01, size=(cameras, 6)),
                                        np.zeros((cameras, 3))], axis=1)
    start_pts = pts + rng.normal(scale=0.02, size=pts.shape)
    return BALProblem(torch.from_numpy(start_cams), torch.from_numpy(start_pts), obs, measurements)


def test_registered_and_exported():
    assert LINEAR_SOLVERS["schur"] is Schur and nlls.Schur is Schur
    solver = nlls.LevenbergMarquardt(bal_problem().objective(), linear_solver="schur").linear_solver
    assert isinstance(solver, Schur) and solver.linearization == "sparse"


def test_automatic_elimination_picks_the_points():
    objective = bal_problem(cameras=4, points=40).objective()
    optimizer = nlls.LevenbergMarquardt(objective, linear_solver="schur")
    optimizer.prepare()
    solver = optimizer.linear_solver
    assert solver.eliminated == "Point3(3,) x 40"
    assert solver.columns.shape == (40, 3)
    # on dubrovnik's 3 cameras (27 unknowns) and 7 points (21) the cameras have more unknowns
    optimizer = nlls.LevenbergMarquardt(read_bal(DUBROVNIK).objective(), linear_solver="schur")
    optimizer.prepare()
    assert optimizer.linear_solver.eliminated == "Vector(9,) x 3"


def test_explicit_elimination_by_type_name_and_variables():
    objective = bal_problem(cameras=3, points=10).objective()
    point_names = [f"p{j}" for j in range(10)]
    for eliminate in (nlls.Point3, "Point3", point_names, [objective.optim_vars[n] for n in point_names]):
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver=Schur(eliminate=eliminate))
        optimizer.prepare()
        assert optimizer.linear_solver.columns.shape == (10, 3)
    for eliminate, message in (("SE3", "no optim variable of that type"),
                               (["nope"], "'nope', which is not an optim variable"),
                               (["p0", "c0"], "different dof")):
        optimizer = nlls.LevenbergMarquardt(objective, linear_solver=Schur(eliminate=eliminate))
        with pytest.raises(ValueError, match=message):
            optimizer.prepare()


def test_linked_variables_are_refused_and_the_free_type_chosen():
    poses = [nlls.SE2(tensor=torch.tensor([[float(i), 0.0, 1.0, 0.0]], dtype=F64), name=f"x{i}") for i in range(4)]
    marks = [nlls.Point2(tensor=torch.tensor([[float(i), 1.0]], dtype=F64), name=f"l{i}") for i in range(6)]
    objective = nlls.Objective()
    for i in range(3):
        objective.add(nlls.Between(poses[i], poses[i + 1], nlls.SE2(tensor=torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=F64)),
                                   name=f"odo{i}"))
    for j, mark in enumerate(marks):
        target = nlls.Variable(torch.tensor([[float(j), 1.0]], dtype=F64), name=f"m{j}")

        def seen(optim_vars, aux_vars):
            pose, point = optim_vars
            return point.tensor - pose.tensor[:, :2] - aux_vars[0].tensor

        objective.add(nlls.AutoDiffCostFunction([poses[j % 4], mark], seen, 2, aux_vars=[target], name=f"see{j}"))
    optimizer = nlls.LevenbergMarquardt(objective, linear_solver="schur")
    optimizer.prepare()
    evaluator = optimizer.evaluator
    free = independent_blocks(evaluator)
    assert [evaluator.blocks[b].cls for b in free] == [nlls.Point2]
    assert optimizer.linear_solver.eliminated == "Point2(2,) x 6"
    bad = nlls.LevenbergMarquardt(objective, linear_solver=Schur(eliminate="SE2"))
    with pytest.raises(ValueError, match="links two variables of SE2"):
        bad.prepare()
    only_poses = nlls.Objective()
    for i in range(3):
        only_poses.add(nlls.Between(poses[i], poses[i + 1], nlls.SE2(tensor=torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=F64)),
                                    name=f"odo{i}"))
    with pytest.raises(ValueError, match="nothing to eliminate"):
        nlls.LevenbergMarquardt(only_poses, linear_solver="schur").prepare()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="reduced"):
        Schur(reduced="banded")
    with pytest.raises(TypeError, match="eliminate"):
        Schur(eliminate=3)
    with pytest.raises(ValueError, match="max_dense"):
        Schur(max_dense=-1)
    A, points = random_ba_system(batch=1)
    with pytest.raises(ValueError, match="listed twice"):
        Schur(eliminate=torch.cat([points, points[:1]])).factor(A)
    camera = int(A.pattern.cols[A.pattern.rows == points[0, 0]].min())  # a camera seeing point 0
    linked = torch.stack([points[0], torch.tensor([camera, int(points[1, 0]), int(points[1, 1])])])
    with pytest.raises(ValueError, match="cannot be eliminated together"):
        Schur(eliminate=linked).factor(A)
    with pytest.raises(TypeError, match="SparseMatrix"):
        Schur(eliminate=points).factor(A.to_dense())


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
def test_bal_solve_reaches_the_sparse_solvers_cost(reduced):
    costs = {}
    for name in ("sparse_cholesky", "schur"):
        objective = bal_problem(cameras=5, points=60, seed=2).objective()
        solver = Schur(reduced=reduced) if name == "schur" else name
        info = nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=100).optimize()
        costs[name] = float(objective.error_metric()[0])
        assert int(info.status[0]) == int(nlls.Status.CONVERGED)
    assert costs["schur"] == pytest.approx(costs["sparse_cholesky"], rel=1e-9)
    objective = read_bal(DUBROVNIK).objective()
    nlls.LevenbergMarquardt(objective, linear_solver="schur", max_iterations=100).optimize()
    assert float(objective.error_metric()[0]) < 0.021  # GTSAM: 0.020334 (data README)


@pytest.mark.parametrize("mode", ["unroll", "implicit"])
def test_layer_gradients_equal_the_sparse_solver(mode):
    grads = []
    for solver in ("sparse_cholesky", "schur"):
        objective = bal_problem(cameras=3, points=12, seed=4).objective()
        for i in range(3):  # priors on the cameras fix the gauge: a strict minimum
            camera = objective.optim_vars[f"c{i}"]
            objective.add(nlls.Difference(camera, nlls.Variable(camera.tensor.clone(), name=f"c{i}_prior"),
                                          cost_weight=10.0, name=f"prior{i}"))
        layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=50))
        uv = objective.aux_vars["uv"].tensor.clone().requires_grad_(True)  # every observation's (u, v)
        solution, _ = layer({"uv": uv}, backward_mode=mode)
        loss = solution["c1"].sum() + (solution["p3"] ** 2).sum()
        grads.append(torch.autograd.grad(loss, uv)[0])
    assert grads[0].abs().max() > 1e-4
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("reduced", ["dense", "sparse"])
def test_cuda_equals_cpu(reduced):
    A, points = random_ba_system(batch=3, seed=13)
    rhs = torch.randn(3, A.shape[1], dtype=F64)
    x_cpu, ok_cpu = Schur(eliminate=points, reduced=reduced).factor(A).solve(rhs)
    on_gpu = SparseMatrix(A.pattern, A.values.cuda())
    x_gpu, ok_gpu = Schur(eliminate=points, reduced=reduced).factor(on_gpu).solve(rhs.cuda())
    assert x_gpu.device.type == "cuda" and ok_gpu.cpu().tolist() == ok_cpu.tolist()
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=1e-9, atol=1e-10)


def test_yaml_configuration():
    config = nlls.load_config({"optimizer": {"name": "levenberg_marquardt", "max_iterations": 5},
                               "linear_solver": {"name": "schur", "eliminate": "Point3", "reduced": "dense"}})
    optimizer = nlls.build_optimizer(bal_problem(cameras=3, points=10).objective(), config)
    optimizer.prepare()
    assert optimizer.linear_solver.eliminated == "Point3 x 10"
    with pytest.raises(nlls.ConfigError, match="reduced"):
        nlls.load_config({"linear_solver": {"name": "schur", "reduced": "banded"}})


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
def test_a_damped_matrix_is_factored_without_copying_its_values(reduced):
    """``add_diagonal`` keeps the values and the shift apart; the Schur complement puts the shift
    on the point blocks and on ``S``'s diagonal: the same step as the matrix with the shift added,
    and gradients reach the shift (Levenberg-Marquardt's damping in an unrolled solve)."""
    A, points = random_ba_system(batch=3, seed=11)
    base, shift = A.unshifted()
    assert shift is not None and A.unshifted()[0] is base  # nothing added in yet
    rhs = torch.randn(3, A.shape[1], dtype=F64)
    lam = torch.rand(3, A.shape[1], dtype=F64, requires_grad=True)
    lazy = A.add_diagonal(lam)
    dense = SparseMatrix(A.pattern, base.index_add(1, A.pattern.diagonal, shift + lam))
    x_lazy, ok = Schur(eliminate=points, reduced=reduced).factor(lazy).solve(rhs)
    x_dense, _ = Schur(eliminate=points, reduced=reduced).factor(dense).solve(rhs)
    assert ok.all()
    torch.testing.assert_close(x_lazy, x_dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_lazy, dense_solve(dense, rhs), rtol=1e-9, atol=1e-10)
    grad_lazy, = torch.autograd.grad(x_lazy.sum(), lam)
    grad_dense, = torch.autograd.grad(x_dense.sum(), lam)
    torch.testing.assert_close(grad_lazy, grad_dense, rtol=1e-10, atol=1e-12)
    # a non-finite shift fails its element alone
    bad = lam.detach().clone()
    bad[1, 0] = float("nan")
    x, ok = Schur(eliminate=points, reduced=reduced).factor(A.add_diagonal(bad)).solve(rhs)
    assert ok.tolist() == [True, False, True] and (x[1] == 0).all() and torch.isfinite(x).all()
