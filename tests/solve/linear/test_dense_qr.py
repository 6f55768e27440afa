"""DenseQR (``linear_solver="dense_qr"``): QR on the dense Jacobian.

Truth: ``torch.linalg.solve`` / ``numpy.linalg.lstsq`` (an SVD) on the same least-squares problems,
the Cholesky solver on well-conditioned problems (values and iteration counts), and autograd's
gradcheck for the differentiable pieces.
"""
import numpy as np
import pytest
import torch

import nlls
from nlls.solve.linear import LINEAR_SOLVERS, make_linear_solver
from nlls.solve.systems import DenseJacobian
from tests.problems import exp_error, exp_fit

F64 = torch.float64
TIGHT = dict(abs_err_tolerance=0.0, rel_err_tolerance=1e-15)


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_jacobian(batch=4, rows=7, dof=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, rows, dof, generator=g, dtype=F64),
            torch.randn(batch, rows, generator=g, dtype=F64))


# ---- the factorization ---------------------------------------------------------------------
def test_registered_and_exported():
    assert LINEAR_SOLVERS["dense_qr"] is nlls.DenseQR
    assert isinstance(make_linear_solver("dense_qr"), nlls.DenseQR)
    assert nlls.DenseQR.linearization == "dense_jacobian" and not nlls.DenseQR().capturable


def test_solve_is_the_normal_equations_and_the_step_their_least_squares_solution():
    J, r = _random_jacobian()
    shift = torch.tensor([0.0, 0.1, 2.0, 0.0], dtype=F64)[:, None] * torch.rand(4, 3, dtype=F64)
    for s in (None, shift):
        A = J.mT @ J + (0 if s is None else torch.diag_embed(s))
        factorization = nlls.DenseQR().factor(DenseJacobian(J, r, s))
        rhs = torch.randn(4, 3, dtype=F64)
        x, ok = factorization.solve(rhs)
        assert ok.all()
        torch.testing.assert_close(x, torch.linalg.solve(A, rhs), rtol=1e-12, atol=1e-12)
        g = (J.mT @ r[..., None])[..., 0]
        step, ok = factorization.least_squares_step(g)
        assert ok.all()
        torch.testing.assert_close(step, torch.linalg.solve(A, -g), rtol=1e-12, atol=1e-12)


def test_the_system_operator_matches_the_dense_matrix():
    J, r = _random_jacobian()
    shift = torch.rand(4, 3, dtype=F64)
    op = DenseJacobian(J, r).add_diagonal(shift)
    A = J.mT @ J + torch.diag_embed(shift)
    x = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(op.matvec(x), (A @ x[..., None])[..., 0])
    torch.testing.assert_close(op.diagonal(), A.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(op.to_dense(), A)


def test_rank_deficient_elements_fail_alone_with_zero_and_finite_gradients():
    J, r = _random_jacobian(batch=3)
    J = J.clone()
    J[1, :, 2] = 2.0 * J[1, :, 0]  # a dependent column
    J[2, :, 1] = 0.0  # an unconstrained unknown
    for requires_grad in (False, True):
        Jg = J.clone().requires_grad_(requires_grad)
        g = (Jg.mT @ r[..., None])[..., 0]
        step, ok = nlls.DenseQR().factor(DenseJacobian(Jg, r)).least_squares_step(g)
        assert ok.tolist() == [True, False, False]
        assert torch.isfinite(step).all() and torch.all(step[1:] == 0)
        want = torch.linalg.lstsq(J[:1], -r[:1, :, None]).solution[..., 0]
        torch.testing.assert_close(step[:1].detach(), want, rtol=1e-12, atol=1e-12)
        if requires_grad:
            step.sum().backward()
            assert torch.isfinite(Jg.grad).all() and torch.all(Jg.grad[1:] == 0)
    # damping makes it full rank (Levenberg-Marquardt)
    _, ok = nlls.DenseQR().factor(DenseJacobian(J, r, torch.full((3, 3), 1e-3, dtype=F64))).solve(r[:, :3])
    assert ok.all()


def test_fewer_rows_than_unknowns_is_rank_deficient():
    J, r = _random_jacobian(batch=2, rows=2, dof=3)
    x, ok = nlls.DenseQR().factor(DenseJacobian(J, r)).solve(torch.ones(2, 3, dtype=F64))
    assert not ok.any() and torch.all(x == 0)
    _, ok = nlls.DenseQR().factor(DenseJacobian(J, r, torch.ones(2, 3, dtype=F64))).solve(torch.ones(2, 3, dtype=F64))
    assert ok.all()


def test_a_square_matrix_is_solved_by_its_qr():
    # the implicit backward's hessian="exact" hands over a dense (B, D, D) matrix
    m = torch.randn(3, 4, 4, dtype=F64)
    m[2] = 0.0
    rhs = torch.randn(3, 4, dtype=F64)
    x, ok = nlls.DenseQR().factor(m).solve(rhs)
    assert ok.tolist() == [True, True, False] and torch.all(x[2] == 0)
    torch.testing.assert_close(x[:2], torch.linalg.solve(m[:2], rhs[:2]))
    with pytest.raises(TypeError, match="DenseQR factors"):
        nlls.DenseQR().factor(torch.zeros(2, 3, 4))


def test_factor_and_steps_pass_gradcheck():
    J, r = _random_jacobian(batch=2, rows=5, dof=3)
    shift = torch.rand(2, 3, dtype=F64)
    leaves = [t.clone().requires_grad_() for t in (J, r, shift)]

    def step(J, r, shift):
        g = (J.mT @ r[..., None])[..., 0]
        factorization = nlls.DenseQR().factor(DenseJacobian(J, r, shift))
        return factorization.least_squares_step(g)[0], factorization.solve(r[:, :3])[0]

    assert torch.autograd.gradcheck(step, leaves)


# ---- inside the optimizers -----------------------------------------------------------------
def _pose_graph_se2(batch=3, poses=6, seed=0):
    """A loop of SE2 poses with noisy odometry, a loop closure and a prior on the first pose."""
    g = torch.Generator().manual_seed(seed)
    truth = [nlls.SE2.exp_map(0.5 * torch.randn(batch, 3, generator=g, dtype=F64)) for _ in range(poses)]
    xs = [nlls.SE2(tensor=t.retract(0.2 * torch.randn(batch, 3, generator=g, dtype=F64)).tensor, name=f"x{i}")
          for i, t in enumerate(truth)]
    objective = nlls.Objective()
    objective.add(nlls.Difference(xs[0], nlls.SE2(tensor=truth[0].tensor.clone(), name="prior0"), name="prior"))
    for k, (i, j) in enumerate([(i, i + 1) for i in range(poses - 1)] + [(0, poses - 1)]):
        rel = truth[i].between(truth[j]).retract(0.02 * torch.randn(batch, 3, generator=g, dtype=F64))
        between = nlls.Between(xs[i], xs[j], nlls.SE2(tensor=rel.tensor, name=f"m{k}"), name=f"odo{k}")
        objective.add(nlls.RobustCostFunction(between, nlls.HuberLoss(0.05), name=f"robust{k}")
                      if k == poses - 1 else between)
    return objective


PROBLEMS = {"exp_fit": lambda: exp_fit(5, seed=1)[0], "pose_graph": _pose_graph_se2}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("optimizer_cls", [nlls.GaussNewton, nlls.LevenbergMarquardt])
def test_equals_dense_cholesky_on_well_conditioned_problems(problem, optimizer_cls):
    results = {}
    for solver in ("dense_cholesky", "dense_qr"):
        objective = PROBLEMS[problem]()
        info = optimizer_cls(objective, linear_solver=solver, max_iterations=30).optimize()
        assert bool(info.converged.all()), info.message
        results[solver] = info, {k: v.tensor.clone() for k, v in objective.optim_vars.items()}
    (qr, qr_values), (chol, chol_values) = results["dense_qr"], results["dense_cholesky"]
    assert torch.equal(qr.iterations, chol.iterations)
    torch.testing.assert_close(qr.final_error, chol.final_error, rtol=1e-9, atol=1e-14)
    for name in qr_values:
        torch.testing.assert_close(qr_values[name], chol_values[name], rtol=1e-8, atol=1e-10)


def _poly_error(optim, aux):
    c, = optim
    x, y = aux
    powers = x.tensor[..., None] ** torch.arange(c.tensor.shape[1], dtype=x.tensor.dtype)
    return (powers @ c.tensor[..., None])[..., 0] - y.tensor


def _poly_fit(degree=13, points=60, batch=2):
    """A polynomial fit in the monomial basis on [0, 1]: cond(J) ~ 4e9 at degree 13."""
    x = torch.linspace(0, 1, points, dtype=F64).expand(batch, points).clone()
    V = x[0, :, None] ** torch.arange(degree + 1, dtype=F64)
    g = torch.Generator().manual_seed(0)
    y = (V @ torch.randn(batch, degree + 1, generator=g, dtype=F64).T).T
    y = y + 1e-8 * torch.randn(batch, points, generator=g, dtype=F64)
    return V, x, y


def _poly_objective(x, y, degree):
    c = nlls.Vector(tensor=torch.zeros(x.shape[0], degree + 1, dtype=F64), name="c")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((c,), _poly_error, x.shape[1],
                                            aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")),
                                            name="poly"))
    return objective, c


def _digits(got, want):
    return float(-np.log10(np.max(np.abs(got - want)) / np.max(np.abs(want))))


def test_ill_conditioned_gauss_newton_keeps_digits_cholesky_loses():
    degree = 13
    V, x, y = _poly_fit(degree)
    assert np.linalg.cond(V.numpy()) > 1e9
    digits = {}
    for solver in ("dense_cholesky", "dense_qr"):
        objective, c = _poly_objective(x, y, degree)
        info = nlls.GaussNewton(objective, linear_solver=solver, max_iterations=2).optimize()
        for b in range(x.shape[0]):
            want = np.linalg.lstsq(V.numpy(), y[b].numpy(), rcond=None)[0]
            ok = bool(info.status[b] != nlls.Status.FAILED)
            digits[solver, b] = _digits(c.tensor[b].numpy(), want) if ok else 0.0
    for b in range(x.shape[0]):
        assert digits["dense_qr", b] > 6.0, digits
        assert digits["dense_qr", b] > digits["dense_cholesky", b] + 4.0, digits


def test_ill_conditioned_levenberg_marquardt_step_is_the_damped_least_squares_solution():
    degree, damping = 13, 1e-10
    V, x, y = _poly_fit(degree)
    stacked = np.vstack([V.numpy(), np.sqrt(damping) * np.eye(degree + 1)])
    digits = {}
    for solver in ("dense_cholesky", "dense_qr"):
        objective, c = _poly_objective(x, y, degree)
        nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=1, damping=damping,
                                adaptive_damping=False).optimize()
        for b in range(x.shape[0]):
            rhs = np.concatenate([y[b].numpy(), np.zeros(degree + 1)])
            digits[solver, b] = _digits(c.tensor[b].numpy(), np.linalg.lstsq(stacked, rhs, rcond=None)[0])
    for b in range(x.shape[0]):
        assert digits["dense_qr", b] > 8.0, digits
        assert digits["dense_qr", b] > digits["dense_cholesky", b] + 4.0, digits


def _quad_error(optim, aux):
    ab, = optim
    x, y = aux
    return ab.tensor[:, :1] * x.tensor ** 2 + ab.tensor[:, 1:] - y.tensor


def test_rank_deficient_element_fails_alone_in_a_gauss_newton_batch():
    x = torch.linspace(-1, 1, 8, dtype=F64).repeat(3, 1)
    x[1] = 0.5  # x^2 and 1 are the same column: a and b are not separable
    y = 0.3 * x ** 2 - 0.2 + 0.01 * torch.sin(7 * x)
    ab = nlls.Vector(tensor=torch.zeros(3, 2, dtype=F64), name="ab")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((ab,), _quad_error, 8,
                                            aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y"))))
    info = nlls.GaussNewton(objective, linear_solver="dense_qr", max_iterations=5).optimize()
    assert info.status.tolist() == [nlls.Status.CONVERGED, nlls.Status.FAILED, nlls.Status.CONVERGED]
    assert info.failure[1] == nlls.solve.state.Failure.LINEAR_SOLVE and "rank deficient" in info.message
    assert torch.all(ab.tensor[1] == 0) and torch.isfinite(ab.tensor).all()
    for b in (0, 2):
        V = torch.stack([x[b] ** 2, torch.ones_like(x[b])], dim=-1)
        torch.testing.assert_close(ab.tensor[b], torch.linalg.lstsq(V, y[b, :, None]).solution[:, 0])


def test_compiled_driver_equals_eager():
    results = []
    for compile in (False, True):
        objective, p = exp_fit(4, seed=2)
        info = nlls.LevenbergMarquardt(objective, linear_solver="dense_qr", max_iterations=15).optimize(compile=compile)
        results.append((info, p.tensor.clone()))
    (eager, pe), (compiled, pc) = results
    assert torch.equal(eager.iterations, compiled.iterations)
    torch.testing.assert_close(pc, pe, rtol=1e-10, atol=1e-12)


def test_yaml_selects_it():
    objective, _ = exp_fit(1, seed=0)
    optimizer = nlls.build_optimizer(objective, {"linear_solver": {"name": "dense_qr"}})
    assert isinstance(optimizer.linear_solver, nlls.DenseQR)


# ---- gradients -------------------------------------------------------------------------------
MODES = [("unroll", {}), ("truncated", {"backward_num_iterations": 2}),
         ("implicit", {"hessian": "gauss_newton"}), ("implicit", {"hessian": "exact"})]


def _exp_layer(solver, optimizer_cls=nlls.GaussNewton, points=6):
    """A curve fit; Levenberg-Marquardt's damping is fixed: adapted, near the solution it follows
    ratios of rounding-level decreases, and the truncated gradient depends on it."""
    extra = dict(adaptive_damping=False, damping=1e-2) if optimizer_cls is nlls.LevenbergMarquardt else {}
    p = nlls.Vector(tensor=torch.zeros(1, 3, dtype=F64), name="p")
    x = nlls.Variable(torch.zeros(1, points, dtype=F64), name="x")
    y = nlls.Variable(torch.zeros(1, points, dtype=F64), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((p,), exp_error, points, aux_vars=(x, y), name="fit"))
    return nlls.OptimizationLayer(optimizer_cls(objective, linear_solver=solver, max_iterations=40, **TIGHT, **extra))


def _exp_inputs(points=6, batch=2):
    g = torch.Generator().manual_seed(3)
    x = torch.linspace(0, 2, points, dtype=F64).repeat(batch, 1)
    y = 1.5 * torch.exp(-0.7 * x) + 0.2 + 0.05 * torch.randn(batch, points, generator=g, dtype=F64)
    return x.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("mode,kwargs", MODES, ids=["unroll", "truncated", "implicit-gn", "implicit-exact"])
@pytest.mark.parametrize("optimizer_cls", [nlls.GaussNewton, nlls.LevenbergMarquardt])
def test_gradients_equal_the_cholesky_solvers_in_every_backward_mode(mode, kwargs, optimizer_cls):
    grads = {}
    for solver in ("dense_cholesky", "dense_qr"):
        x, y = _exp_inputs()
        start = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(2, 1)
        solution, info = _exp_layer(solver, optimizer_cls)({"x": x, "y": y, "p": start},
                                                           backward_mode=mode, **kwargs)
        assert bool(info.converged.all()), info.message
        grads[solver] = torch.autograd.grad((solution["p"] * torch.tensor([1.0, -2.0, 0.5], dtype=F64)).sum(), (x, y))
    for got, want in zip(grads["dense_qr"], grads["dense_cholesky"]):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_unrolled_solve_passes_gradcheck():
    layer = _exp_layer("dense_qr", nlls.LevenbergMarquardt, points=5)
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    x, y = _exp_inputs(points=5, batch=1)
    layer.optimizer.max_iterations = 4  # a fixed, smooth function of the data

    def solve(x, y):
        return layer({"x": x, "y": y, "p": start}, backward_mode="unroll")[0]["p"]

    assert torch.autograd.gradcheck(solve, (x.detach().requires_grad_(), y.detach().requires_grad_()))
