"""Dogleg: Powell's trust-region method, per batch element.

Truth: the minima of Rosenbrock and of problems Gauss-Newton and Levenberg-Marquardt solve, the
dogleg path's definition (the Gauss-Newton step inside the region, the scaled gradient to the
boundary, the boundary crossing between), Ceres' radius rules, and autograd's gradcheck.
"""
import pytest
import torch
import yaml

import nlls
from nlls.solve.dogleg import MIN_MU, TrustRegionState
from nlls.solve.systems import DenseSystem
from tests.problems import autodiff_objective, exp_error, exp_fit, rosenbrock_error

F64 = torch.float64
SOLVERS = ["dense_cholesky", "dense_lu", "dense_qr", "sparse_cholesky", "cg"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _rosenbrock(starts):
    zeros = torch.zeros(len(starts), 2, dtype=F64)
    return autodiff_objective(rosenbrock_error, 2, zeros, zeros, torch.tensor(starts, dtype=F64))


def _pose_graph_se2(batch=3, poses=6, seed=0):
    """A loop of SE2 poses with noisy odometry, a loop closure and a prior on the first pose."""
    g = torch.Generator().manual_seed(seed)
    truth = [nlls.SE2.exp_map(0.5 * torch.randn(batch, 3, generator=g, dtype=F64)) for _ in range(poses)]
    xs = [nlls.SE2(tensor=t.retract(0.3 * torch.randn(batch, 3, generator=g, dtype=F64)).tensor, name=f"x{i}")
          for i, t in enumerate(truth)]
    objective = nlls.Objective()
    objective.add(nlls.Difference(xs[0], nlls.SE2(tensor=truth[0].tensor.clone(), name="prior0"), name="prior"))
    for k, (i, j) in enumerate([(i, i + 1) for i in range(poses - 1)] + [(0, poses - 1)]):
        rel = truth[i].between(truth[j]).retract(0.02 * torch.randn(batch, 3, generator=g, dtype=F64))
        objective.add(nlls.Between(xs[i], xs[j], nlls.SE2(tensor=rel.tensor, name=f"m{k}"), name=f"odo{k}"))
    return objective


def _values(objective):
    return {name: v.tensor.clone() for name, v in objective.optim_vars.items()}


# ---- reaching minima --------------------------------------------------------------------------
@pytest.mark.parametrize("diagonal_scaling", [False, True])
def test_rosenbrock_batch_reaches_the_minimum(diagonal_scaling):
    objective, p = _rosenbrock([[-1.2, 1.0], [2.0, -2.0], [0.0, 5.0], [-3.0, -4.0]])
    info = nlls.Dogleg(objective, max_iterations=200, diagonal_scaling=diagonal_scaling).optimize()
    assert bool(info.converged.all()), info.message
    torch.testing.assert_close(p.tensor, torch.ones(4, 2, dtype=F64), rtol=0, atol=1e-7)


def test_a_small_initial_radius_is_grown_and_the_minimum_reached():
    objective, p = _rosenbrock([[-1.2, 1.0], [2.0, -2.0]])
    info = nlls.Dogleg(objective, max_iterations=300, initial_radius=1e-3).optimize()
    assert bool(info.converged.all()), info.message
    torch.testing.assert_close(p.tensor, torch.ones(2, 2, dtype=F64), rtol=0, atol=1e-7)


def test_curve_fit_batch_reaches_levenberg_marquardts_minimum():
    results = []
    for cls in (nlls.LevenbergMarquardt, nlls.Dogleg):
        objective, p = exp_fit(6, seed=3)
        info = cls(objective, max_iterations=50, abs_err_tolerance=0.0, rel_err_tolerance=1e-14).optimize()
        assert bool(info.converged.all()), info.message
        results.append((info.final_error, p.tensor.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_pose_graph_batch_with_every_linear_solver(solver):
    reference = _pose_graph_se2()
    nlls.GaussNewton(reference, linear_solver="dense_cholesky", max_iterations=30,
                     abs_err_tolerance=0.0, rel_err_tolerance=1e-14).optimize()
    objective = _pose_graph_se2()
    info = nlls.Dogleg(objective, linear_solver=solver, max_iterations=30, abs_err_tolerance=0.0,
                       rel_err_tolerance=1e-14).optimize()
    assert bool(info.converged.all()), info.message
    for name, value in _values(reference).items():
        torch.testing.assert_close(objective.optim_vars[name].tensor, value, rtol=1e-6, atol=1e-7)


def test_singular_normal_matrix_falls_back_to_a_tiny_damping():
    # no prior: the pose graph's gauge is free and J^T J singular; Gauss-Newton with an exact
    # singular matrix fails, the dogleg adds mu diag(A) and converges
    p = nlls.Vector(tensor=torch.zeros(2, 3, dtype=F64), name="p")
    objective = nlls.Objective()
    target = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    # the third unknown enters no residual: a zero column of J
    objective.add(nlls.AutoDiffCostFunction((p,), lambda o, a: (o[0].tensor[:, :2] - target) ** 3 + o[0].tensor[:, :2] - target,
                                            2, name="partial"))
    gauss_newton = nlls.GaussNewton(objective, max_iterations=10).optimize()
    assert not bool(gauss_newton.converged.any())
    p.tensor = torch.zeros(2, 3, dtype=F64)
    info = nlls.Dogleg(objective, max_iterations=40).optimize()
    assert bool(info.converged.all()), info.message
    torch.testing.assert_close(p.tensor[:, :2], target, rtol=0, atol=1e-6)
    assert torch.all(p.tensor[:, 2] == 0)


# ---- the dogleg path ------------------------------------------------------------------------
def _system(batch=64, dof=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(batch, dof + 2, dof, generator=g, dtype=F64)
    scales = torch.logspace(-1, 1, dof, dtype=F64)
    J = m * scales
    return DenseSystem(J.mT @ J, torch.randn(batch, dof, generator=g, dtype=F64) * 3)


def _dogleg(diagonal_scaling=False, **kwargs):
    objective, _ = exp_fit(1, seed=0)
    return nlls.Dogleg(objective, diagonal_scaling=diagonal_scaling, **kwargs)


def _state(radius):
    return TrustRegionState(radius=radius, mu=torch.zeros_like(radius))


@pytest.mark.parametrize("diagonal_scaling", [False, True])
def test_the_step_is_powells_dogleg(diagonal_scaling):
    system = _system()
    A, g = system.A, system.g
    batch = g.shape[0]
    metric = A.diagonal(dim1=-2, dim2=-1).clamp_min(1e-6) if diagonal_scaling else torch.ones_like(g)
    newton = torch.linalg.solve(A, -g)
    h = g / metric
    alpha = (g * h).sum(-1) / (h * (A @ h[..., None])[..., 0]).sum(-1)
    cauchy = -alpha[:, None] * h

    def norm(x):
        return (metric * x * x).sum(-1).sqrt()

    # radii spanning the three cases
    radius = torch.logspace(-3, 1, batch, dtype=F64) * norm(newton)
    step, solved = _dogleg(diagonal_scaling).compute_step(system, _state(radius))
    assert solved.all()
    inside = norm(newton) <= radius
    outside = norm(cauchy) >= radius
    between = ~inside & ~outside
    assert inside.any() and outside.any() and between.any()
    # within the region, on its boundary unless the Gauss-Newton step is inside
    assert torch.all(norm(step) <= radius * (1 + 1e-12))
    torch.testing.assert_close(norm(step)[~inside], radius[~inside])
    torch.testing.assert_close(step[inside], newton[inside], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(step[outside], -(radius / norm(h))[outside, None] * h[outside])
    # between: on the segment from the Cauchy point to the Gauss-Newton point
    d = (newton - cauchy)[between]
    beta = ((step[between] - cauchy[between]) * d).sum(-1) / (d * d).sum(-1)
    torch.testing.assert_close(step[between], cauchy[between] + beta[:, None] * d)
    assert torch.all((beta > 0) & (beta < 1))
    # the model decreases at least as much as along the gradient to the same radius
    gradient_step = -(torch.minimum(radius, alpha * norm(h)) / norm(h))[:, None] * h
    assert torch.all(system.quadratic_decrease(step) >= system.quadratic_decrease(gradient_step) * (1 - 1e-12))


def test_gauss_newton_step_inside_the_region_is_the_gauss_newton_iteration():
    results = []
    for cls in (nlls.GaussNewton, nlls.Dogleg):
        objective = _pose_graph_se2(seed=4)
        info = cls(objective, max_iterations=1).optimize()
        results.append((info.final_error, _values(objective)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    for name, value in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], value, rtol=1e-12, atol=1e-12)


def test_zero_gradient_gives_a_zero_step():
    system = _system(batch=2)
    system.g.zero_()
    step, solved = _dogleg().compute_step(system, _state(torch.ones(2, dtype=F64)))
    assert solved.all() and torch.all(step == 0)


# ---- the radius rules -----------------------------------------------------------------------
def _judge(optimizer, system, radius, ratio, mu=None):
    """``accept`` of the dogleg step, with a trial error chosen to give ``ratio``."""
    state = TrustRegionState(radius=radius, mu=torch.zeros_like(radius) if mu is None else mu)
    step, solved = optimizer.compute_step(system, state)
    error = torch.full_like(radius, 10.0)
    new_error = error - ratio * system.quadratic_decrease(step)
    return step, optimizer.accept(system, state, step, solved, error, new_error)


def test_radius_rules():
    optimizer = _dogleg(initial_radius=1.0, max_radius=50.0)
    system = _system(batch=5)
    small = torch.full((5,), 1e-2, dtype=F64)  # boundary steps
    ratio = torch.tensor([-1.0, 1e-4, 0.1, 0.5, 0.9], dtype=F64)
    step, (accept, failed, stalled, state) = _judge(optimizer, system, small, ratio)
    torch.testing.assert_close(step.norm(dim=-1), small)
    assert accept.tolist() == [False, False, True, True, True] and not failed.any() and not stalled.any()
    # rejected: halved; accepted with rho < 0.25: halved; in between: kept; rho > 0.75 on the
    # boundary: doubled
    torch.testing.assert_close(state.radius, small * torch.tensor([0.5, 0.5, 0.5, 1.0, 2.0], dtype=F64))
    # a very successful step held by a large region doubles it up to max_radius
    boundary = torch.full((5,), 40.0, dtype=F64)
    system_far = DenseSystem(system.A, 1e4 * system.g)  # the Gauss-Newton step lies far outside
    step, (accept, _, _, state) = _judge(optimizer, system_far, boundary, torch.full((5,), 0.9, dtype=F64))
    torch.testing.assert_close(step.norm(dim=-1), boundary)
    assert accept.all() and torch.equal(state.radius, torch.full((5,), 50.0, dtype=F64))
    # a very successful step well inside the region (the Gauss-Newton step) leaves the radius:
    # neither shrunk to the short step nor grown past what the model was trusted with
    big = torch.full((5,), 1e3, dtype=F64)
    step, (accept, _, _, state) = _judge(_dogleg(initial_radius=1.0), system, big, torch.full((5,), 0.9, dtype=F64))
    assert torch.all(step.norm(dim=-1) < 0.5 * big)
    assert accept.all() and torch.equal(state.radius, big)
    # a rejected step well inside the region (the Gauss-Newton step): the radius falls to half of it
    huge = torch.full((5,), 1e4, dtype=F64)
    step, (accept, _, _, state) = _judge(optimizer, system, huge, torch.full((5,), -1.0, dtype=F64))
    assert not accept.any() and torch.all(step.norm(dim=-1) < 0.1 * huge)
    torch.testing.assert_close(state.radius, 0.5 * step.norm(dim=-1))
    # below min_radius a rejected element stops (converged: no further decrease)
    optimizer = _dogleg(min_radius=1e-3)
    _, (accept, _, stalled, state) = _judge(optimizer, system, torch.full((5,), 1.5e-3, dtype=F64),
                                            torch.full((5,), -1.0, dtype=F64))
    assert not accept.any() and stalled.all()


def test_a_failed_solve_raises_mu_until_it_gives_up():
    optimizer = _dogleg()
    system = _system(batch=1)
    system = DenseSystem(torch.full_like(system.A, float("nan")), system.g)
    radius, mu = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    seen = []
    for _ in range(12):
        _, (accept, failed, _, state) = _judge(optimizer, system, radius, torch.ones(1, dtype=F64), mu)
        assert not accept.any() and torch.equal(state.radius, radius)  # a void step keeps the radius
        mu = state.mu
        seen.append((float(mu), bool(failed)))
        if failed:
            break
    assert seen[0] == (MIN_MU, False) and seen[-1][1] and len(seen) == 9
    # an accepted step lowers mu again, never below its floor
    system = _system(batch=1)
    _, (accept, _, _, state) = _judge(optimizer, system, radius, torch.ones(1, dtype=F64),
                                      torch.full((1,), 1e-4, dtype=F64))
    assert accept.all() and float(state.mu) == pytest.approx(2e-5)


def test_rejected_steps_shrink_the_radius_in_a_solve():
    objective, _ = _rosenbrock([[-1.2, 1.0]])
    radii = []
    info = nlls.Dogleg(objective, max_iterations=60, initial_radius=100.0).optimize(
        callback=lambda it: radii.append(float(it.damping[0])))
    assert bool(info.converged.all())
    assert radii[0] < 100.0 and min(radii) < 1.0  # the first steps overshoot the curved valley


# ---- execution and differentiation ----------------------------------------------------------
def test_compiled_driver_equals_eager():
    results = []
    for compile in (False, True):
        objective = _pose_graph_se2(seed=2)
        info = nlls.Dogleg(objective, max_iterations=15, initial_radius=0.5).optimize(compile=compile)
        results.append((info, _values(objective)))
    (eager, eager_values), (compiled, compiled_values) = results
    assert torch.equal(eager.iterations, compiled.iterations)
    for name, value in eager_values.items():
        torch.testing.assert_close(compiled_values[name], value, rtol=1e-9, atol=1e-11)


def _exp_layer(optimizer_cls, points=5, **kwargs):
    p = nlls.Vector(tensor=torch.zeros(1, 3, dtype=F64), name="p")
    x = nlls.Variable(torch.zeros(1, points, dtype=F64), name="x")
    y = nlls.Variable(torch.zeros(1, points, dtype=F64), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((p,), exp_error, points, aux_vars=(x, y), name="fit"))
    return nlls.OptimizationLayer(optimizer_cls(objective, **kwargs))


def _exp_inputs(points=5, batch=2):
    g = torch.Generator().manual_seed(3)
    x = torch.linspace(0, 2, points, dtype=F64).repeat(batch, 1)
    y = 1.5 * torch.exp(-0.7 * x) + 0.2 + 0.05 * torch.randn(batch, points, generator=g, dtype=F64)
    return x, y


def test_unrolled_solve_passes_gradcheck():
    # a small radius: the recorded steps cross every branch of the path (boundary, interpolated, GN)
    layer = _exp_layer(nlls.Dogleg, max_iterations=6, initial_radius=0.3, abs_err_tolerance=0.0,
                       rel_err_tolerance=0.0)
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(2, 1)
    x, y = _exp_inputs()

    def solve(x, y):
        return layer({"x": x, "y": y, "p": start}, backward_mode="unroll")[0]["p"]

    assert torch.autograd.gradcheck(solve, (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
def test_implicit_gradient_equals_levenberg_marquardts(hessian):
    grads = []
    for cls in (nlls.LevenbergMarquardt, nlls.Dogleg):
        x, y = _exp_inputs()
        x.requires_grad_()
        y.requires_grad_()
        layer = _exp_layer(cls, max_iterations=50, abs_err_tolerance=0.0, rel_err_tolerance=1e-15)
        solution, info = layer({"x": x, "y": y, "p": torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(2, 1)},
                               backward_mode="implicit", hessian=hessian)
        assert bool(info.converged.all()), info.message
        grads.append(torch.autograd.grad(solution["p"].sum(), (x, y)))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_truncated_backward_runs():
    x, y = _exp_inputs()
    y.requires_grad_()
    layer = _exp_layer(nlls.Dogleg, max_iterations=50, abs_err_tolerance=0.0, rel_err_tolerance=1e-15)
    solution, info = layer({"x": x, "y": y, "p": torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(2, 1)},
                           backward_mode="truncated", backward_num_iterations=3)
    grad, = torch.autograd.grad(solution["p"].sum(), y)
    assert bool(info.converged.all()) and torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---- settings -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (dict(initial_radius=0.0), "initial_radius"),
    (dict(initial_radius=float("nan")), "initial_radius"),
    (dict(max_radius=10.0), "max_radius"),
    (dict(min_radius=-1.0), "min_radius"),
    (dict(min_radius=1e5), "min_radius"),
    (dict(min_relative_decrease=1.5), "min_relative_decrease"),
    (dict(diagonal_scaling="yes"), "diagonal_scaling"),
    (dict(max_iterations=-1), "max_iterations"),
    (dict(linear_solver="qr"), "qr"),
])
def test_bad_arguments_are_refused_by_name(bad, match):
    objective, _ = exp_fit(1, seed=0)
    with pytest.raises((ValueError, TypeError), match=match):
        nlls.Dogleg(objective, **bad)


def test_verbose_output_shows_the_radius(capsys):
    objective, _ = exp_fit(2, seed=0)
    nlls.Dogleg(objective, max_iterations=3, initial_radius=7.0).optimize(verbose=True)
    out = capsys.readouterr().out
    assert "radius 7.00e+00" in out or "radius" in out.splitlines()[2]


def test_selectable_from_yaml():
    objective, _ = exp_fit(1, seed=0)
    optimizer = nlls.build_optimizer(objective, {"optimizer": {"name": "dogleg", "initial_radius": 5.0,
                                                               "max_iterations": 7}})
    assert isinstance(optimizer, nlls.Dogleg)
    assert optimizer.initial_radius == 5.0 and optimizer.max_iterations == 7
    with pytest.raises(nlls.ConfigError, match="initial_radius"):
        nlls.load_config({"optimizer": {"name": "dogleg", "initial_radius": -1.0}})
    with pytest.raises(nlls.ConfigError, match="min_radius"):
        nlls.load_config({"optimizer": {"name": "dogleg", "initial_radius": 1.0, "min_radius": 2.0}})
    with pytest.raises(nlls.ConfigError, match="optimizer.damping applies to levenberg_marquardt only, not dogleg"):
        nlls.load_config({"optimizer": {"name": "dogleg", "damping": 1.0}})
    with pytest.raises(nlls.ConfigError, match="optimizer.initial_radius applies to dogleg only"):
        nlls.load_config({"optimizer": {"name": "levenberg_marquardt", "initial_radius": 1.0}})
    # shared keys pass; the YAML text holds the dogleg's keys only, and reads back the same
    config = nlls.load_config({"optimizer": {"name": "dogleg", "diagonal_scaling": True, "max_radius": 1e6}})
    text = config.to_yaml()
    assert "initial_radius" in text and "damping" not in text
    assert nlls.load_config(yaml.safe_load(text)) == config


def test_no_host_round_trip_inside_an_iteration():
    # nlls.check_capturable runs one solve (CPU included) and names any host read or uncapturable op
    objective, _ = exp_fit(3, seed=0)
    nlls.check_capturable(nlls.Dogleg(objective, max_iterations=4))


class _PoisonedJacobian(nlls.CostFunction):
    """``r = p - target``; element 1's Jacobian is NaN (its residual stays finite)."""

    def __init__(self, p, target):
        super().__init__(optim_vars=(p,), aux_vars=(target,), name="poisoned")
        self.p, self.target = p, target

    def dim(self):
        return 2

    def error(self):
        return self.p.tensor - self.target.tensor

    def jacobians(self):
        eye = torch.eye(2, dtype=F64).repeat(self.p.tensor.shape[0], 1, 1)
        eye[1] = float("nan")
        return [eye], self.error()


def test_an_element_whose_solve_always_fails_fails_alone():
    p = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="p")
    target = nlls.Variable(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64), name="target")
    objective = nlls.Objective()
    objective.add(_PoisonedJacobian(p, target))
    info = nlls.Dogleg(objective, max_iterations=30).optimize()
    assert info.status.tolist() == [nlls.Status.CONVERGED, nlls.Status.FAILED]
    assert info.failure[1] == nlls.solve.state.Failure.LINEAR_SOLVE
    assert int(info.iterations[1]) == 9  # mu = 0, 1e-8, ..., 1e-1: nine solves, then it gives up
    torch.testing.assert_close(p.tensor[0], target.tensor[0])
    assert torch.all(p.tensor[1] == 0)


@pytest.mark.parametrize("solver", ["dense_cholesky", "dense_qr"])
def test_box_bounds_reach_the_constrained_minimum(solver):
    # Rosenbrock with x <= 0.5: the minimum is on the bound, (0.5, 0.25)
    objective, p = _rosenbrock([[-1.2, 1.0], [0.0, 0.0]])
    objective.set_bounds(p, lower=torch.tensor([[-2.0, -2.0]], dtype=F64), upper=torch.tensor([[0.5, 2.0]], dtype=F64))
    info = nlls.Dogleg(objective, linear_solver=solver, max_iterations=100).optimize()
    assert bool(info.converged.all()), info.message
    torch.testing.assert_close(p.tensor, torch.tensor([[0.5, 0.25]], dtype=F64).repeat(2, 1), rtol=0, atol=1e-8)
