"""optimize(compile=True): the same iterations and results as the eager loop."""
import warnings

import pytest
import torch

import nlls
import nlls.solve.drivers.compiled as compiled_module
from tests.problems import QuadFit, autodiff_objective, exp_data, exp_error, quad_data

F64 = torch.float64


def _quad(batch=3):
    x, y, _ = quad_data(batch, points=20)
    ab = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=F64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    return obj, ab


def test_compiled_fixed_count_run_equals_eager():
    results = []
    for compile in (False, True):
        obj, ab = _quad()
        opt = nlls.GaussNewton(obj, max_iterations=5, abs_err_tolerance=0, rel_err_tolerance=0, check_every=2)
        info = opt.optimize(compile=compile, track_err_history=True)
        results.append((ab.tensor, info))
    (a, info_a), (b, info_b) = results
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.equal(info_a.iterations, info_b.iterations) and info_b.iterations.tolist() == [5, 5, 5]
    assert torch.equal(info_a.status, info_b.status)
    torch.testing.assert_close(info_a.err_history, info_b.err_history, rtol=1e-12, atol=1e-14)


def test_compiled_lm_with_autodiff_and_early_stop_equals_eager():
    x, y, _ = exp_data(6, points=20, seed=3)
    init = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(6, 1)
    results = []
    for compile in (False, True):
        obj, p = autodiff_objective(exp_error, 3, x, y, init)
        opt = nlls.LevenbergMarquardt(obj, max_iterations=40, check_every=3)
        info = opt.optimize(compile=compile, track_best_solution=True)
        results.append((p.tensor, info))
    (a, info_a), (b, info_b) = results
    assert info_b.converged.all()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.equal(info_a.iterations, info_b.iterations)
    torch.testing.assert_close(info_a.best_solution["p"], info_b.best_solution["p"], rtol=1e-10, atol=1e-12)


def test_compile_failure_warns_and_runs_eagerly(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("backend exploded")
        return run

    monkeypatch.setattr(compiled_module.torch, "compile", broken_compile)
    obj, ab = _quad()
    reference, ref_ab = _quad()
    nlls.GaussNewton(reference, max_iterations=4).optimize()
    with pytest.warns(RuntimeWarning, match="could not compile the iterations.*backend exploded.*eagerly"):
        info = nlls.GaussNewton(obj, max_iterations=4).optimize(compile=True)
    assert info.converged.all()
    torch.testing.assert_close(ab.tensor, ref_ab.tensor)


def test_compiled_layer_gives_the_same_implicit_gradients():
    grads = []
    for compile in (False, True):
        obj, ab = _quad(batch=2)
        layer = nlls.OptimizationLayer(nlls.GaussNewton(obj, max_iterations=4, check_every=2))
        y = obj.aux_vars["y"].tensor.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a silent eager fallback would make this test vacuous
            solution, info = layer({"y": y}, backward_mode="implicit", compile=compile)
        grads.append(torch.autograd.grad(solution["ab"].sum(), y)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_each_problem_shape_gets_its_own_compiled_chunk(monkeypatch):
    """torch.compile gives up silently after a few variants of one code object: every shape
    must compile its own chunk (counted by calls into torch.compile) and run it."""
    calls = []
    real_compile = compiled_module.torch.compile
    monkeypatch.setattr(compiled_module.torch, "compile",
                        lambda fn, **kw: calls.append(fn.__code__) or real_compile(fn, **kw))
    codes = set()
    opt = None
    for batch in (1, 2, 3):
        obj, ab = _quad(batch)
        opt = nlls.GaussNewton(obj, max_iterations=2, abs_err_tolerance=0, rel_err_tolerance=0, check_every=2)
        opt.optimize(compile=True)
        opt.optimize(compile=True)  # the same shape: reused, not compiled again
        codes.update(id(c) for c in calls)
    assert len(calls) == 3 and len(codes) == 3
    assert all(group.checked for group in opt.evaluator.groups)


def test_a_fixed_count_solve_is_one_compiled_call(monkeypatch):
    """check_every >= max_iterations: the start and every iteration are one compiled function,
    called once per solve, with the eager loop's results, history and best solution."""
    calls = []
    real_compile = compiled_module.torch.compile

    def counting_compile(fn, **kw):
        compiled = real_compile(fn, **kw)
        return lambda *args: calls.append(fn.__name__) or compiled(*args)

    monkeypatch.setattr(compiled_module.torch, "compile", counting_compile)
    results = []
    for compile in (False, True):
        obj, p = _quad(batch=4)  # analytic Jacobians: a quick compilation; LM: a step-rule state
        opt = nlls.LevenbergMarquardt(obj, max_iterations=30, check_every=30)
        info = opt.optimize(compile=compile, track_best_solution=True, track_err_history=True)
        results.append((p.tensor.clone(), info))
    assert calls == ["whole"]
    (a, info_a), (b, info_b) = results
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert info_b.converged.all() and torch.equal(info_a.status, info_b.status)
    assert torch.equal(info_a.iterations, info_b.iterations)
    # the eager loop stops reading once every element stopped; the compiled solve ran all 30
    # iterations with the stopped elements frozen, so their error repeats
    columns = info_a.err_history.shape[1]
    assert info_b.err_history.shape == (4, 31)
    torch.testing.assert_close(info_b.err_history[:, :columns], info_a.err_history, rtol=1e-10, atol=1e-14)
    assert (info_b.err_history[:, columns - 1:] == info_b.err_history[:, -1:]).all()
    torch.testing.assert_close(info_a.best_solution["ab"], info_b.best_solution["ab"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info_a.initial_error, info_b.initial_error)
