"""optimize(cuda_graph=True): one captured solve, replayed with new data.

Without a GPU the graph path runs with a stand-in recorder (``EagerRecorder``: a replay reruns
the captured function and writes into the first run's output tensors, as a CUDA graph replay
does), which covers the static buffers, the caching per shape, the output cloning and the
errors. ``check_capturable`` runs the captured function under a dispatch mode that fails at any
operation that would read back to the host, so the sync-freedom of every solver path is tested
on the CPU as well. The ``cuda`` tests capture real graphs.
"""
import pytest
import torch

import nlls
import nlls.solve.drivers.cuda_graph as cuda_graph
from nlls.solve.drivers.cuda_graph import (
    CUDAGraphDriver,
    EagerRecorder,
    HostSyncError,
    captured_solves,
    check_capturable,
)
from tests.problems import QuadFit, autodiff_objective, exp_data, exp_error, quad_data

F64 = torch.float64


@pytest.fixture
def cpu_graphs():
    """The graph path on the CPU: the CUDA-graph driver with the stand-in recorder."""
    return CUDAGraphDriver(recorder=EagerRecorder, require_cuda=False)


def _quad(batch=4, seed=0, device="cpu", dtype=F64):
    x, y, _ = quad_data(batch, points=20, seed=seed, dtype=dtype)
    ab = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=dtype, device=device), name="ab")
    xv, yv = nlls.Variable(x.to(device), name="x"), nlls.Variable(y.to(device), name="y")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, xv, yv, name="fit"))
    return obj, ab, xv, yv


def _exp(batch=5, seed=3, device="cpu"):
    x, y, _ = exp_data(batch, points=20, seed=seed)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(batch, 1)
    obj, p = autodiff_objective(exp_error, 3, x.to(device), y.to(device), init.to(device))
    return obj, p


def _pose_graph_se2(batch=3, poses=6, seed=0):
    """A loop of SE2 poses with noisy odometry, a loop closure and a prior on the first pose."""
    g = torch.Generator().manual_seed(seed)
    truth = [nlls.SE2.exp_map(0.5 * torch.randn(batch, 3, generator=g, dtype=F64)) for _ in range(poses)]
    xs = [nlls.SE2(tensor=t.tensor.clone(), name=f"x{i}") for i, t in enumerate(truth)]
    for x in xs[1:]:  # perturbed start
        x.tensor = x.retract(0.2 * torch.randn(batch, 3, generator=g, dtype=F64)).tensor
    obj = nlls.Objective()
    obj.add(nlls.Difference(xs[0], nlls.SE2(tensor=truth[0].tensor.clone(), name="prior0"), name="prior"))
    pairs = [(i, i + 1) for i in range(poses - 1)] + [(0, poses - 1)]
    for k, (i, j) in enumerate(pairs):
        rel = truth[i].between(truth[j]).retract(0.02 * torch.randn(batch, 3, generator=g, dtype=F64))
        weight = nlls.DiagonalCostWeight(torch.tensor([[10.0, 10.0, 20.0]], dtype=F64))
        obj.add(nlls.Between(xs[i], xs[j], nlls.SE2(tensor=rel.tensor, name=f"m{k}"),
                             cost_weight=weight, name=f"odo{k}"))
    return obj, xs


def _pose_graph_se3(batch=2, poses=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    truth = [nlls.SE3.exp_map(0.3 * torch.randn(batch, 6, generator=g, dtype=F64)) for _ in range(poses)]
    xs = [nlls.SE3(tensor=t.retract(0.1 * torch.randn(batch, 6, generator=g, dtype=F64)).tensor,
                   name=f"x{i}") for i, t in enumerate(truth)]
    obj = nlls.Objective()
    obj.add(nlls.Difference(xs[0], nlls.SE3(tensor=truth[0].tensor.clone(), name="prior0"), name="prior"))
    for k in range(poses - 1):
        rel = truth[k].between(truth[k + 1])
        robust = nlls.RobustCostFunction(
            nlls.Between(xs[k], xs[k + 1], nlls.SE3(tensor=rel.tensor, name=f"m{k}"), name=f"b{k}"),
            nlls.HuberLoss(0.5), name=f"odo{k}")
        obj.add(robust)
    return obj, xs


def _values(obj):
    return {name: var.tensor.clone() for name, var in obj.optim_vars.items()}


def _assert_same_run(graph_info, eager_info, graph_values, eager_values, rtol=1e-10, atol=1e-12):
    for name in eager_values:
        torch.testing.assert_close(graph_values[name], eager_values[name], rtol=rtol, atol=atol)
    assert torch.equal(graph_info.iterations, eager_info.iterations)
    assert torch.equal(graph_info.status, eager_info.status)
    torch.testing.assert_close(graph_info.final_error, eager_info.final_error, rtol=rtol, atol=atol)
    torch.testing.assert_close(graph_info.initial_error, eager_info.initial_error)


# ---- the graph path, with the stand-in recorder ---------------------------------------------
@pytest.mark.parametrize("make, optimizer", [
    (_quad, "gn"), (_exp, "lm"), (_pose_graph_se2, "lm"), (_pose_graph_se3, "gn"),
])
def test_graph_solve_equals_eager_solve(cpu_graphs, make, optimizer):
    runs = []
    for graph in (False, True):
        obj = make()[0]
        cls = nlls.GaussNewton if optimizer == "gn" else nlls.LevenbergMarquardt
        opt = cls(obj, max_iterations=15)
        info = opt.optimize(driver=cpu_graphs if graph else None, track_best_solution=True, track_err_history=True)
        runs.append((info, _values(obj)))
    (eager, eager_values), (graph, graph_values) = runs
    _assert_same_run(graph, eager, graph_values, eager_values)
    assert graph.converged.all()
    for name in eager.best_solution:
        torch.testing.assert_close(graph.best_solution[name], eager.best_solution[name])
    # the eager loop stops reading once all elements stopped; the graph ran every iteration,
    # and the frozen elements' error repeats
    columns = eager.err_history.shape[1]
    torch.testing.assert_close(graph.err_history[:, :columns], eager.err_history)
    assert graph.err_history.shape[1] == 16
    assert (graph.err_history[:, columns - 1:] == graph.err_history[:, -1:]).all()


@pytest.mark.parametrize("solver", ["dense_cholesky", "dense_lu", nlls.DenseCholesky(small_batch=1),
                                    nlls.ConjugateGradient(preconditioner="jacobi")])
def test_graph_solve_with_each_capturable_solver(cpu_graphs, solver):
    runs = []
    for graph in (False, True):
        obj, xs = _pose_graph_se2()
        opt = nlls.LevenbergMarquardt(obj, linear_solver=solver, max_iterations=20, diagonal_scaling=True)
        runs.append((opt.optimize(driver=cpu_graphs if graph else None), _values(obj)))
    (eager, eager_values), (graph, graph_values) = runs
    _assert_same_run(graph, eager, graph_values, eager_values, rtol=1e-9, atol=1e-10)


def test_replays_take_new_data_and_capture_once_per_shape(cpu_graphs):
    obj, ab, xv, yv = _quad(batch=4, seed=0)
    opt = nlls.GaussNewton(obj, max_iterations=6)
    opt.optimize(driver=cpu_graphs)
    first = ab.tensor.clone()
    first_solution = ab.tensor
    # new data, same shapes: the same graph, the new data's solution
    x2, y2, _ = quad_data(4, points=20, seed=7)
    obj.update({"x": x2, "y": y2, "ab": torch.zeros(4, 2, dtype=F64)})
    y2_before = y2.clone()
    info = opt.optimize(driver=cpu_graphs)
    assert len(captured_solves(opt)) == 1 and captured_solves(opt)[0].replays == 2
    assert torch.equal(first_solution, first), "a replay overwrote an earlier call's result"
    assert torch.equal(y2, y2_before), "the user's data was modified"
    ref_obj, ref_ab, _, _ = _quad(batch=4, seed=7)
    ref = nlls.GaussNewton(ref_obj, max_iterations=6).optimize()
    torch.testing.assert_close(ab.tensor, ref_ab.tensor)
    assert torch.equal(info.iterations, ref.iterations)
    # another batch size: a second graph
    x3, y3, _ = quad_data(2, points=20, seed=8)
    obj.update({"x": x3, "y": y3, "ab": torch.zeros(2, 2, dtype=F64)})
    opt.optimize(driver=cpu_graphs)
    assert len(captured_solves(opt)) == 2


def test_structure_change_is_an_error_until_reset(cpu_graphs):
    obj, ab, xv, yv = _quad()
    opt = nlls.GaussNewton(obj, max_iterations=3)
    opt.optimize(driver=cpu_graphs)
    prior = nlls.Difference(ab, nlls.Variable(torch.ones(1, 2, dtype=F64), name="t"), name="prior")
    obj.add(prior)
    with pytest.raises(RuntimeError, match="structure changed.*reset_cuda_graphs"):
        opt.optimize(driver=cpu_graphs)
    opt.reset_cuda_graphs()
    info = opt.optimize(driver=cpu_graphs)
    assert info.converged.all() and len(captured_solves(opt)) == 1


def test_layer_implicit_gradients_equal_eager(cpu_graphs):
    x, y, _ = exp_data(3, points=20, seed=5)
    grads = []
    for graph in (False, True):
        obj, p = autodiff_objective(exp_error, 3, x, y, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(3, 1))
        layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(obj, max_iterations=30))
        y_in = y.clone().requires_grad_(True)
        solution, info = layer({"y": y_in}, driver=cpu_graphs if graph else None)
        (solution["p"] * torch.tensor([1.0, -2.0, 0.5], dtype=F64)).sum().backward()
        grads.append((solution["p"].detach(), y_in.grad, info))
    (p0, g0, i0), (p1, g1, i1) = grads
    assert i1.converged.all()
    torch.testing.assert_close(p1, p0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, g0, rtol=1e-9, atol=1e-12)


def test_layer_refuses_to_unroll_through_a_graph(cpu_graphs):
    x, y, _ = exp_data(2, points=10)
    obj, _ = autodiff_objective(exp_error, 3, x, y, torch.ones(2, 3, dtype=F64))
    layer = nlls.OptimizationLayer(nlls.GaussNewton(obj, max_iterations=3))
    with pytest.raises(ValueError, match="'y' requires grad.*implicit"):
        layer({"y": y.clone().requires_grad_(True)}, backward_mode="unroll", driver=cpu_graphs)
    with pytest.raises(ValueError, match="exclusive"):
        layer({"y": y}, cuda_graph=True, compile=True)
    with torch.no_grad():  # no gradient wanted: a plain forward solve
        solution, info = layer({"y": y}, backward_mode="unroll", driver=cpu_graphs)
    assert solution["p"].shape == (2, 3)


# ---- errors -----------------------------------------------------------------------------------
def test_cuda_graph_needs_cuda_tensors():
    obj, *_ = _quad()
    with pytest.raises(ValueError, match="CUDA device.*cpu"):
        nlls.GaussNewton(obj).optimize(cuda_graph=True)


def test_cuda_graph_errors_name_the_cause(cpu_graphs):
    obj, *_ = _pose_graph_se2()
    with pytest.raises(ValueError, match="not capturable"):
        nlls.LevenbergMarquardt(obj, linear_solver="cg").optimize(driver=cpu_graphs)  # block-Jacobi
    obj, ab, xv, yv = _quad()
    with pytest.raises(ValueError, match="exclusive"):
        nlls.GaussNewton(obj).optimize(cuda_graph=True, compile=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool"):
        nlls.GaussNewton(obj).optimize(cuda_graph="yes")
    xv.tensor = xv.tensor.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="aux variable 'x' requires grad.*implicit"):
        nlls.GaussNewton(obj).optimize(driver=cpu_graphs)

    def black_box(p, x):
        return p[:, :1] * x - 1.0

    numeric = nlls.Objective()
    p = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="p")
    numeric.add(nlls.NumericDiffCostFunction((p,), black_box, 3,
                                             aux_vars=(nlls.Variable(torch.ones(2, 3, dtype=F64), name="x"),),
                                             name="bb"))
    with pytest.raises(ValueError, match="NumericDiffCostFunction 'bb'"):
        nlls.GaussNewton(numeric).optimize(driver=cpu_graphs)


# ---- no host round-trips: every solver path, on the CPU ---------------------------------------
@pytest.mark.parametrize("make, cls, kwargs", [
    (_quad, nlls.GaussNewton, {}),
    (_quad, nlls.GaussNewton, {"linear_solver": nlls.DenseCholesky(small_batch=1)}),
    (_exp, nlls.LevenbergMarquardt, {"diagonal_scaling": True}),
    (_exp, nlls.LevenbergMarquardt, {"linear_solver": "dense_lu"}),
    (_pose_graph_se2, nlls.LevenbergMarquardt, {}),
    (_pose_graph_se2, nlls.GaussNewton, {"linear_solver": nlls.ConjugateGradient(preconditioner="jacobi")}),
    (_pose_graph_se3, nlls.LevenbergMarquardt, {}),
])
def test_solver_paths_read_nothing_back_to_the_host(make, cls, kwargs):
    obj = make()[0]
    before = _values(obj)
    check_capturable(cls(obj, max_iterations=4, **kwargs))
    for name, value in _values(obj).items():  # the check leaves the objective alone
        assert torch.equal(value, before[name])


class _Syncing(QuadFit):
    def error(self):
        error = super().error()
        if bool((error.abs() > 1e6).any()):  # a host read inside the residual
            raise RuntimeError("diverged")
        return error


class _Masking(QuadFit):
    def error(self):
        error = super().error()
        error[error.abs() > 1e6] = 0.0  # a boolean-mask write: a data-dependent shape
        return error


class _HostData(QuadFit):
    def error(self):
        shift = torch.tensor([0.0, 0.0], dtype=self.x.tensor.dtype)  # host data, copied per call
        return super().error() + shift.sum()


@pytest.mark.parametrize("cls, what", [(_Syncing, "reads a tensor value on the host"),
                                       (_Masking, "boolean mask"), (_HostData, "host data")])
def test_check_capturable_names_the_operation_and_the_line(cls, what):
    x, y, _ = quad_data(2, points=10)
    ab = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="ab")
    obj = nlls.Objective()
    obj.add(cls(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y"), name="fit"))
    with pytest.raises(HostSyncError, match=f"{what}.*test_cuda_graph.py:[0-9]+ \\(error"):
        check_capturable(nlls.GaussNewton(obj, max_iterations=2))


def test_the_guard_lets_capturable_code_through():
    with cuda_graph._SyncGuard():
        a = torch.randn(5, 3, 3, dtype=F64)
        spd = a @ a.mT + torch.eye(3, dtype=F64)
        factor, info = torch.linalg.cholesky_ex(spd)
        torch.where(info == 0, 1.0, 0.0)
        with pytest.raises(HostSyncError, match="check"):
            torch.linalg.cholesky(spd)
        with pytest.raises(HostSyncError, match="cholesky_solve"):
            torch.cholesky_solve(torch.ones(5, 3, 1, dtype=F64), factor)


# ---- real CUDA graphs ---------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("solver", ["dense_cholesky", "dense_lu"])
@pytest.mark.parametrize("batch", [1, 256])
def test_cuda_graph_equals_eager_on_cuda(solver, batch):
    runs = []
    for graph in (False, True):
        obj, p = _exp(batch=batch, device="cuda")
        opt = nlls.LevenbergMarquardt(obj, linear_solver=solver, max_iterations=20)
        info = opt.optimize(cuda_graph=graph)
        if graph:  # a second call replays the graph with new start values
            obj.update({"p": torch.tensor([[1.0, 1.0, 0.0]], dtype=F64, device="cuda").repeat(batch, 1)})
            info = opt.optimize(cuda_graph=True)
            assert len(captured_solves(opt)) == 1
        runs.append((info, _values(obj)))
    (eager, eager_values), (graph, graph_values) = runs
    _assert_same_run(graph, eager, graph_values, eager_values, rtol=1e-8, atol=1e-9)


@pytest.mark.cuda
def test_cuda_graph_pose_graph_and_layer_on_cuda():
    obj, xs = _pose_graph_se2()
    obj.to("cuda")
    reference, _ = _pose_graph_se2()
    nlls.LevenbergMarquardt(reference, max_iterations=20).optimize()
    info = nlls.LevenbergMarquardt(obj, max_iterations=20).optimize(cuda_graph=True)
    assert info.converged.all()
    for name, value in _values(reference).items():
        torch.testing.assert_close(obj.optim_vars[name].tensor.cpu(), value, rtol=1e-8, atol=1e-9)
    x, y, _ = exp_data(4, points=20)
    objective, p = autodiff_objective(exp_error, 3, x.cuda(), y.cuda(),
                                      torch.tensor([[1.0, 1.0, 0.0]], dtype=F64, device="cuda").repeat(4, 1))
    layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=30))
    grads = []
    for graph in (False, True):
        y_in = y.cuda().requires_grad_(True)
        solution, _ = layer({"y": y_in}, cuda_graph=graph)
        solution["p"].sum().backward()
        grads.append(y_in.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
