"""OptimizationLayer: values and gradients of the solution in every backward mode.

Truth comes from closed forms (line fit, weighted ridge regression, the unit circle), from central
finite differences of the full solve, and from the other backward modes (JAXopt's check: implicit
equals unrolled at convergence). Every gradient check is in float64.
"""
import math

import pytest
import torch

import nlls
from nlls.solve.linear import LINEAR_SOLVERS
from tests.problems import exp_data, exp_error

F64 = torch.float64
# converged to rounding level: a relative error change <= 100 machine epsilons stops an element
# (a rel_err_tolerance of exactly 0 would switch the test off), so nearby inputs take the same
# number of iterations and the solve is a smooth function of its data (finite differences)
TIGHT = dict(abs_err_tolerance=0.0, rel_err_tolerance=1e-15)


pytestmark = pytest.mark.usefixtures("one_thread")

# (backward_mode, extra layer arguments): every way the layer can differentiate
MODES = [
    ("unroll", {}),
    ("truncated", {"backward_num_iterations": 2}),
    ("implicit", {"hessian": "gauss_newton"}),
    ("implicit", {"hessian": "exact"}),
]
MODE_IDS = ["unroll", "truncated", "implicit-gn", "implicit-exact"]


# ---- problems -----------------------------------------------------------------------------
def _line_error(optim, aux):
    mc, = optim
    x, y = aux
    return mc.tensor[:, :1] * x.tensor + mc.tensor[:, 1:] - y.tensor


def _ridge_error(optim, aux):
    mc, = optim
    return mc.tensor


def _circle_error(optim, aux):
    y, = optim
    x, = aux
    return x.tensor ** 2 + y.tensor ** 2 - 1.0


def line_layer(points=4, dtype=F64, weights=None, **optimizer_kwargs):
    """Line fit ``y = m x + c`` over ``points`` samples; with ``weights=(diagonal, scale)`` the
    data residual carries a DiagonalCostWeight and a ridge prior ``scale * (m, c)`` is added."""
    mc = nlls.Vector(tensor=torch.zeros(1, 2, dtype=dtype), name="mc")
    x = nlls.Variable(torch.zeros(1, points, dtype=dtype), name="x")
    y = nlls.Variable(torch.zeros(1, points, dtype=dtype), name="y")
    objective = nlls.Objective()
    if weights is None:
        objective.add(nlls.AutoDiffCostFunction((mc,), _line_error, points, aux_vars=(x, y),
                                                name="line"))
    else:
        diagonal, scale = weights
        objective.add(nlls.AutoDiffCostFunction(
            (mc,), _line_error, points, aux_vars=(x, y),
            cost_weight=nlls.DiagonalCostWeight(diagonal, name="diagonal"), name="line"))
        objective.add(nlls.AutoDiffCostFunction(
            (mc,), _ridge_error, 2, cost_weight=nlls.ScaleCostWeight(scale, name="scale"),
            name="ridge"))
    kwargs = dict(max_iterations=10)
    kwargs.update(optimizer_kwargs)
    return nlls.OptimizationLayer(nlls.GaussNewton(objective, **kwargs))


def circle_layer(hessian="gauss_newton"):
    """``y(x)`` defined by ``x^2 + y^2 - 1 = 0``, upper branch (started at ``y = 1``)."""
    y = nlls.Vector(tensor=torch.ones(1, 1, dtype=F64), name="y")
    x = nlls.Variable(torch.zeros(1, 1, dtype=F64), name="x")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((y,), _circle_error, 1, aux_vars=(x,), name="circle"))
    return nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=30, **TIGHT),
                                  hessian=hessian)


def exp_layer(points, optimizer_cls=nlls.GaussNewton, **optimizer_kwargs):
    """``y = a exp(-b x) + c``: residuals that do not vanish at the solution when y is noisy."""
    p = nlls.Vector(tensor=torch.zeros(1, 3, dtype=F64), name="p")
    x = nlls.Variable(torch.zeros(1, points, dtype=F64), name="x")
    y = nlls.Variable(torch.zeros(1, points, dtype=F64), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((p,), exp_error, points, aux_vars=(x, y), name="fit"))
    kwargs = dict(max_iterations=50, **TIGHT)
    kwargs.update(optimizer_kwargs)
    return nlls.OptimizationLayer(optimizer_cls(objective, **kwargs))


EXP_START = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
LINE_X = [[0.0, 1.0, 2.0, 3.0]]
LINE_Y = [[-1.0, 0.2, 0.7, 2.5]]


def _solve(layer, inputs, mode, kwargs):
    return layer(inputs, backward_mode=mode, **kwargs)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---- closed forms ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_line_fit_closed_form(mode, kwargs):
    layer = line_layer()
    x = torch.tensor(LINE_X, dtype=F64, requires_grad=True)
    y = torch.tensor(LINE_Y, dtype=F64, requires_grad=True)
    solution, info = _solve(layer, {"x": x, "y": y}, mode, kwargs)
    assert bool(info.converged.all())
    mc = solution["mc"]
    torch.testing.assert_close(mc, torch.tensor([[1.1, -1.05]], dtype=F64), atol=1e-8, rtol=0)
    dm_dx, dm_dy = torch.autograd.grad(mc[:, 0].sum(), (x, y))
    torch.testing.assert_close(dm_dx, torch.tensor([[0.34, 0.14, -0.2, -0.28]], dtype=F64),
                               atol=1e-8, rtol=0)
    torch.testing.assert_close(dm_dy, torch.tensor([[-0.3, -0.1, 0.1, 0.3]], dtype=F64),
                               atol=1e-8, rtol=0)


@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
def test_circle_implicit_function_and_second_derivative(hessian):
    layer = circle_layer(hessian)
    x = torch.tensor([[0.5], [-0.7], [0.0], [0.3], [0.9]], dtype=F64, requires_grad=True)
    solution, info = layer({"x": x, "y": torch.ones(5, 1, dtype=F64)})
    assert bool(info.converged.all())
    y = solution["y"]
    xd = x.detach()
    assert abs(float(y[0, 0].detach()) - math.sqrt(3) / 2) < 1e-12
    torch.testing.assert_close(y.detach(), torch.sqrt(1 - xd ** 2), atol=1e-12, rtol=0)
    dy_dx, = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.testing.assert_close(dy_dx.detach(), -xd / y.detach(), atol=1e-10, rtol=0)
    # (dy/dx)^2 = x^2 / (1 - x^2), whose derivative is 2x / (1 - x^2)^2
    second, = torch.autograd.grad((dy_dx ** 2).sum(), x)
    torch.testing.assert_close(second, 2 * xd / (1 - xd ** 2) ** 2, atol=1e-8, rtol=1e-10)
    assert abs(second[0, 0].item() - 2 * 0.5 / 0.75 ** 2) < 1e-8


# ---- gradcheck ------------------------------------------------------------------------------
def _line_fn(layer, mode, kwargs):
    def fn(x, y):
        inputs = {"x": x, "y": y, "mc": torch.zeros(1, 2, dtype=F64)}
        return _solve(layer, inputs, mode, kwargs)[0]["mc"]
    return fn


def _exp_fn(layer, mode, kwargs):
    def fn(x, y):
        return _solve(layer, {"x": x, "y": y, "p": EXP_START.expand(x.shape[0], 3)}, mode,
                      kwargs)[0]["p"]
    return fn


def _exp_inputs(batch=2, points=6, noise=0.05):
    x, y, _ = exp_data(batch, points=points, noise=noise)
    return x.clone().requires_grad_(), y.clone().requires_grad_()


def _line_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.linspace(0, 3, 5, dtype=F64).repeat(2, 1)
    x = x + 0.1 * torch.randn(2, 5, generator=g, dtype=F64)
    y = torch.randn(2, 5, generator=g, dtype=F64)
    return x.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_gradcheck_line_fit(mode, kwargs):
    # linear in (m, c): every mode's derivative is the derivative of the solution
    fn = _line_fn(line_layer(points=5), mode, kwargs)
    assert torch.autograd.gradcheck(fn, _line_inputs())


@pytest.mark.parametrize("mode,kwargs", [MODES[1], MODES[2], MODES[3]],
                         ids=["truncated", "implicit-gn", "implicit-exact"])
def test_gradcheck_circle(mode, kwargs):
    # zero residual at the solution: truncated and Gauss-Newton are exact too
    layer = circle_layer()

    def fn(x):
        return _solve(layer, {"x": x, "y": torch.ones(3, 1, dtype=F64)}, mode, kwargs)[0]["y"]
    x = torch.tensor([[0.5], [-0.2], [0.8]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))
    if mode == "implicit":
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("mode,kwargs", [MODES[0], MODES[3]], ids=["unroll", "implicit-exact"])
def test_gradcheck_nonzero_residual(mode, kwargs):
    fn = _exp_fn(exp_layer(6), mode, kwargs)
    assert torch.autograd.gradcheck(fn, _exp_inputs())


def test_gradgradcheck_implicit():
    layer = line_layer(points=5)
    assert torch.autograd.gradgradcheck(_line_fn(layer, "implicit", {}), _line_inputs())
    exact = _exp_fn(exp_layer(6), "implicit", {"hessian": "exact"})
    assert torch.autograd.gradgradcheck(exact, _exp_inputs(batch=1))


def test_gradcheck_fails_for_gauss_newton_on_nonzero_residual():
    # the check can fail: JᵀJ drops sum r_i Hess(r_i), so its gradient is not the solution's
    fn = _exp_fn(exp_layer(6), "implicit", {"hessian": "gauss_newton"})
    assert not torch.autograd.gradcheck(fn, _exp_inputs(noise=0.2), raise_exception=False)


# ---- non-zero residual: exact Hessian against finite differences of the full solve -----------
def test_exact_hessian_matches_finite_differences_gauss_newton_does_not():
    points, step = 20, 1e-5
    x, y, _ = exp_data(1, points=points)  # noise 0.02: the residuals do not vanish
    layer = exp_layer(points)

    def implicit_jacobian(hessian):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        solution, info = layer({"x": xg, "y": yg, "p": EXP_START}, hessian=hessian)
        assert bool(info.converged.all())
        rows = [torch.cat([g[0] for g in torch.autograd.grad(solution["p"][0, k], (xg, yg),
                                                              retain_graph=True)])
                for k in range(3)]
        return torch.stack(rows)  # (3, 2 * points): d p / d (x, y)

    # central differences, every perturbed problem one element of a single batched solve
    eye = step * torch.eye(points, dtype=F64)
    zeros = torch.zeros_like(eye)
    dx = torch.cat([eye, -eye, zeros, zeros])
    dy = torch.cat([zeros, zeros, eye, -eye])
    batched = exp_layer(points)
    with torch.no_grad():
        solution, info = batched({"x": x + dx, "y": y + dy, "p": EXP_START.expand(4 * points, 3)})
    assert bool(info.converged.all())
    p = solution["p"]
    fd_x = (p[:points] - p[points:2 * points]) / (2 * step)
    fd_y = (p[2 * points:3 * points] - p[3 * points:]) / (2 * step)
    finite_differences = torch.cat([fd_x, fd_y]).T

    exact = implicit_jacobian("exact")
    gauss_newton = implicit_jacobian("gauss_newton")
    exact_error = _rel(exact, finite_differences)
    gauss_newton_error = _rel(gauss_newton, finite_differences)
    print(f"relative error (Frobenius) against finite differences: exact {exact_error:.2e}, "
          f"gauss_newton {gauss_newton_error:.2e}")
    # measured (20 points, noise 0.02, rms residual 0.017): exact 7.9e-10; Gauss-Newton 2.4e-3
    # (rows of d(a, b, c)/d(x, y) off by 0.05%, 0.32%, 0.33%); the gap grows linearly with the
    # residual: 6.1e-3 at noise 0.05, 1.2e-2 at noise 0.1
    assert exact_error < 1e-6
    large = finite_differences.abs() > 1e-2 * finite_differences.abs().max()
    entrywise = ((exact - finite_differences).abs() / finite_differences.abs())[large]
    assert float(entrywise.max()) < 1e-6
    assert gauss_newton_error > 1e-4  # Gauss-Newton is measurably off here


# ---- implicit equals unrolled at convergence (JAXopt's check) --------------------------------
@pytest.mark.parametrize("noise,hessian", [(0.0, "gauss_newton"), (0.05, "exact")],
                         ids=["zero-residual-gn", "noisy-exact"])
def test_implicit_equals_unrolled_at_convergence(noise, hessian):
    x, y = _exp_inputs(batch=3, points=15, noise=noise)
    layer = exp_layer(15)
    inputs = {"x": x, "y": y, "p": EXP_START.expand(3, 3)}
    implicit, _ = layer(inputs, backward_mode="implicit", hessian=hessian)
    unrolled, info = layer(inputs, backward_mode="unroll")
    assert bool(info.converged.all())
    torch.testing.assert_close(implicit["p"], unrolled["p"], atol=1e-12, rtol=0)
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads_implicit = torch.autograd.grad((weights * implicit["p"]).sum(), (x, y))
    grads_unrolled = torch.autograd.grad((weights * unrolled["p"]).sum(), (x, y))
    for a, b in zip(grads_implicit, grads_unrolled):
        assert _rel(a, b) < 1e-7


def test_implicit_with_levenberg_marquardt_matches_gauss_newton():
    x, y = _exp_inputs(batch=2, points=10)
    inputs = {"x": x, "y": y, "p": EXP_START.expand(2, 3)}
    grads = []
    for cls in (nlls.GaussNewton, nlls.LevenbergMarquardt):
        layer = exp_layer(10, optimizer_cls=cls, max_iterations=100)
        solution, info = layer(inputs, hessian="exact")
        assert bool(info.converged.all())
        grads.append(torch.autograd.grad(solution["p"].sum(), (x, y)))
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-7


# ---- gradients reach aux tensors and cost weights: batched, float32 and float64 ----------------
def _weighted_ridge_closed_form(x, y, diagonal, scale):
    """argmin ||diag(d) (m x + c - y)||^2 + s^2 ||(m, c)||^2 per batch element."""
    A = torch.stack([x, torch.ones_like(x)], dim=-1)  # (B, N, 2)
    W = diagonal[..., None] ** 2
    lhs = A.mT @ (W * A) + scale[..., None] ** 2 * torch.eye(2, dtype=x.dtype)
    return torch.linalg.solve(lhs, (A.mT @ (W[..., 0] * y)[..., None]))[..., 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_gradients_reach_aux_and_cost_weights(mode, kwargs, dtype):
    batch, points = 3, 6
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, points, generator=g, dtype=F64)
    y = 0.7 * x - 0.2 + 0.3 * torch.randn(batch, points, generator=g, dtype=F64)
    diagonal = 0.5 + torch.rand(batch, points, generator=g, dtype=F64)
    scale = torch.tensor([[0.8]], dtype=F64)  # one learnable scale shared by the batch
    leaves = [t.to(dtype).requires_grad_() for t in (x, y, diagonal, scale)]
    x, y, diagonal, scale = leaves
    # the weights hold the learnable tensors themselves; x and y come as inputs
    layer = line_layer(points, dtype=dtype, weights=(diagonal, scale))
    solution, info = _solve(layer, {"x": x, "y": y, "mc": torch.zeros(batch, 2, dtype=dtype)},
                            mode, kwargs)
    assert bool(info.converged.all())
    assert solution["mc"].dtype == dtype and solution["mc"].shape == (batch, 2)
    cotangent = torch.randn(batch, 2, generator=g, dtype=F64).to(dtype)
    grads = torch.autograd.grad((cotangent * solution["mc"]).sum(), leaves)

    reference_leaves = [t.detach().double().requires_grad_() for t in leaves]
    reference = _weighted_ridge_closed_form(*reference_leaves)
    expected = torch.autograd.grad((cotangent.double() * reference).sum(), reference_leaves)
    tolerance = dict(atol=1e-8, rtol=1e-8) if dtype == F64 else dict(atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(solution["mc"].detach().double(), reference.detach(), **tolerance)
    for name, got, want in zip(("x", "y", "diagonal", "scale"), grads, expected):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert float(want.abs().max()) > 1e-3, name  # a gradient that is really there
        torch.testing.assert_close(got.double(), want, **tolerance, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_gradients_reach_cost_weight_given_as_input(mode, kwargs):
    # a weight computed from a parameter every forward (as in training), passed by its name
    log_scale = torch.tensor(-0.3, dtype=F64, requires_grad=True)
    ones = torch.ones(1, 4, dtype=F64)
    layer = line_layer(weights=(ones, torch.ones(1, 1, dtype=F64)))
    x, y = torch.tensor(LINE_X, dtype=F64), torch.tensor(LINE_Y, dtype=F64)
    scale = log_scale.exp().reshape(1, 1)
    solution, _ = _solve(layer, {"x": x, "y": y, "scale": scale}, mode, kwargs)
    got, = torch.autograd.grad(solution["mc"].sum(), log_scale)
    reference_log = log_scale.detach().clone().requires_grad_()
    reference = _weighted_ridge_closed_form(x, y, ones, reference_log.exp().reshape(1, 1))
    want, = torch.autograd.grad(reference.sum(), reference_log)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("mode,kwargs", [MODES[0], MODES[2]], ids=["unroll", "implicit-gn"])
@pytest.mark.parametrize("linear_solver", sorted(LINEAR_SOLVERS))
def test_every_linear_solver_gives_the_gradients(linear_solver, mode, kwargs):
    # the implicit backward solves with the forward's linear solver: each must be differentiable
    batch, points = 2, 5
    g = torch.Generator().manual_seed(4)
    leaves = [torch.randn(batch, points, generator=g, dtype=F64),
              torch.randn(batch, points, generator=g, dtype=F64),
              0.5 + torch.rand(batch, points, generator=g, dtype=F64),
              torch.tensor([[0.6]], dtype=F64)]
    leaves = [t.requires_grad_() for t in leaves]
    x, y, diagonal, scale = leaves
    layer = line_layer(points, weights=(diagonal, scale), linear_solver=linear_solver)
    solution, info = _solve(layer, {"x": x, "y": y, "mc": torch.zeros(batch, 2, dtype=F64)},
                            mode, kwargs)
    assert bool(info.converged.all()), info.message
    grads = torch.autograd.grad(solution["mc"].sum(), leaves)
    reference_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    expected = torch.autograd.grad(_weighted_ridge_closed_form(*reference_leaves).sum(),
                                   reference_leaves)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7)


# ---- the layer leaves no trace ----------------------------------------------------------------
@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_inputs_unmodified_and_objective_holds_no_graph(mode, kwargs):
    diagonal = torch.ones(1, 4, dtype=F64)
    layer = line_layer(weights=(diagonal, torch.ones(1, 1, dtype=F64)))
    objective = layer.objective
    before = {name: var.tensor for name, var in objective.aux_vars.items()}
    optim_before = {name: var.tensor for name, var in objective.optim_vars.items()}
    inputs = {
        "x": torch.tensor(LINE_X, dtype=F64, requires_grad=True),
        "y": torch.tensor(LINE_Y, dtype=F64).requires_grad_(),
        "scale": torch.tensor([[0.5]], dtype=F64, requires_grad=True),
        "mc": torch.tensor([[0.3, 0.1]], dtype=F64, requires_grad=True),
    }
    copies = {k: v.detach().clone() for k, v in inputs.items()}
    versions = {k: v._version for k, v in inputs.items()}
    keys = list(inputs)
    solution, _ = _solve(layer, inputs, mode, kwargs)
    loss = solution["mc"].pow(2).sum()
    for stage in ("after forward", "after backward"):
        assert list(inputs) == keys, stage
        for name, tensor in inputs.items():
            assert torch.equal(tensor.detach(), copies[name]), (stage, name)
            assert tensor._version == versions[name], (stage, name)
        for name, var in objective.optim_vars.items():
            assert not var.tensor.requires_grad and var.tensor.grad_fn is None, (stage, name)
        for name, var in objective.aux_vars.items():
            assert var.tensor is before[name], (stage, name)  # aux data as before the call
            assert var.tensor.grad_fn is None, (stage, name)
        if stage == "after forward":
            loss.backward()
    # the optim variables hold what they held before the call: the solution is returned only
    for name, var in objective.optim_vars.items():
        assert var.tensor is optim_before[name]
    assert inputs["x"].grad is not None and inputs["scale"].grad is not None


def test_calls_with_different_batch_sizes_do_not_interfere():
    layer = line_layer()
    x3 = torch.tensor(LINE_X, dtype=F64).repeat(3, 1)
    y3 = torch.tensor(LINE_Y, dtype=F64).repeat(3, 1)
    solution3, _ = layer({"x": x3, "y": y3})
    solution2, _ = layer({"x": x3[:2], "y": y3[:2]})  # no initial values given: same start
    torch.testing.assert_close(solution2["mc"], solution3["mc"][:2])


# ---- bad arguments --------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors():
    layer = line_layer()
    inputs = {"x": torch.tensor(LINE_X, dtype=F64), "y": torch.tensor(LINE_Y, dtype=F64)}
    with pytest.raises(ValueError, match="backward_mode.*unroll.*truncated.*implicit.*'backwards'"):
        layer(inputs, backward_mode="backwards")
    with pytest.raises(ValueError, match="truncated.*backward_num_iterations"):
        layer(inputs, backward_mode="truncated")
    with pytest.raises(ValueError, match=r"backward_num_iterations.*max_iterations=10.*11"):
        layer(inputs, backward_mode="truncated", backward_num_iterations=11)
    with pytest.raises(ValueError, match="backward_num_iterations.*truncated"):
        layer(inputs, backward_mode="implicit", backward_num_iterations=2)
    with pytest.raises(ValueError, match="hessian.*gauss_newton.*exact.*'newton'"):
        layer(inputs, hessian="newton")
    with pytest.raises(ValueError, match="hessian.*'newton'"):
        nlls.OptimizationLayer(layer.optimizer, hessian="newton")
    with pytest.raises(TypeError, match="optimizer"):
        nlls.OptimizationLayer(layer.objective)
    with pytest.raises(KeyError, match="'z'"):
        layer({"z": torch.zeros(1, 4, dtype=F64)})
    # the enum and its strings are both accepted
    a, _ = layer(inputs, backward_mode=nlls.BackwardMode.TRUNCATED, backward_num_iterations=1)
    b, _ = layer(inputs, backward_mode="TRUNCATED", backward_num_iterations=1)
    torch.testing.assert_close(a["mc"], b["mc"])


# ---- graph size and memory: flat in the iteration count for implicit, growing for unroll -------
def _graph_nodes(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def _graph_cost(mode, iterations, kwargs):
    """(autograd nodes reachable from the solution, bytes of tensors saved for backward)."""
    x, y = _exp_inputs(batch=2, points=10)
    # check_every=iterations and tolerances 0: every run takes exactly `iterations` iterations
    layer = exp_layer(10, max_iterations=iterations, check_every=iterations,
                      abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        solution, info = layer({"x": x, "y": y, "p": EXP_START.expand(2, 3)},
                               backward_mode=mode, **kwargs)
    assert int(info.iterations.max()) <= iterations
    torch.autograd.grad(solution["p"].sum(), (x, y))  # the graph is usable
    return _graph_nodes(solution["p"]), sum(saved)


@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
def test_implicit_graph_and_memory_flat_in_iterations(hessian):
    nodes_10, bytes_10 = _graph_cost("implicit", 10, {"hessian": hessian})
    nodes_100, bytes_100 = _graph_cost("implicit", 100, {"hessian": hessian})
    assert nodes_10 == nodes_100 and nodes_10 < 20
    assert bytes_10 == bytes_100
    unroll_nodes_10, unroll_bytes_10 = _graph_cost("unroll", 10, {})
    unroll_nodes_100, unroll_bytes_100 = _graph_cost("unroll", 100, {})
    assert unroll_nodes_100 > 5 * unroll_nodes_10 > 5 * nodes_10
    assert unroll_bytes_100 > 5 * unroll_bytes_10 > 5 * bytes_10
    # truncated records only its last iterations
    truncated = _graph_cost("truncated", 10, {"backward_num_iterations": 2})
    assert truncated == _graph_cost("truncated", 100, {"backward_num_iterations": 2})


# ---- several calls, no grad ---------------------------------------------------------------------
@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_two_calls_before_one_backward(mode, kwargs):
    # the second call replaces the objective's data; the first call's backward must not see it
    layer = line_layer(points=5)
    (x1, y1), (x2, y2) = _line_inputs(), _line_inputs()
    y2 = (y2.detach() * 2 + 1).requires_grad_()
    first, _ = _solve(layer, {"x": x1, "y": y1, "mc": torch.zeros(2, 2, dtype=F64)}, mode, kwargs)
    second, _ = _solve(layer, {"x": x2, "y": y2, "mc": torch.zeros(2, 2, dtype=F64)}, mode, kwargs)
    grads = torch.autograd.grad(first["mc"].sum() + 3 * second["mc"].sum(), (x1, y1, x2, y2))
    expected = []
    for x, y, factor in ((x1, y1, 1.0), (x2, y2, 3.0)):
        no_ridge = torch.zeros(1, 1, dtype=F64)
        reference = _weighted_ridge_closed_form(x, y, torch.ones_like(x), no_ridge)
        expected += torch.autograd.grad(factor * reference.sum(), (x, y))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("mode,kwargs", MODES, ids=MODE_IDS)
def test_no_grad_call_returns_plain_tensors(mode, kwargs):
    layer = line_layer()
    x = torch.tensor(LINE_X, dtype=F64, requires_grad=True)
    with torch.no_grad():
        solution, info = _solve(layer, {"x": x, "y": torch.tensor(LINE_Y, dtype=F64)}, mode, kwargs)
    assert not solution["mc"].requires_grad
    torch.testing.assert_close(solution["mc"], torch.tensor([[1.1, -1.05]], dtype=F64))


# ---- found while writing these tests ----------------------------------------------------------
# GaussNewton once never reported convergence when a zero-residual solve reached rounding level:
# the error alternated 6.2e-33 <-> 2.5e-32 and the relative test compared against noise.
def test_zero_residual_solve_at_rounding_level_reports_converged():
    layer = circle_layer()  # tolerances 0, 30 iterations
    x = torch.linspace(-0.95, 0.95, 81, dtype=F64)[41:42, None]  # x = 0.02375
    solution, info = layer({"x": x, "y": torch.ones(1, 1, dtype=F64)})
    assert float((solution["y"] - torch.sqrt(1 - x ** 2)).abs().max()) < 1e-15  # solved
    assert bool(info.converged.all()), info.message  # ...but reported as max_iterations
