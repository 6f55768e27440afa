"""Faults stay in their batch element, and bad inputs are refused at the boundary by name.

Numeric-diff cost functions with non-finite residuals in one element, black-box error functions
that close over batched data, and the inputs torch would otherwise reject with an error naming
nothing (dtypes, devices, error functions returning the wrong kind of object).
"""
import warnings

import numpy as np
import pytest
import torch

import nlls
from tests.problems import exp_data

F64 = torch.float64
INIT = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
CONVERGED, FAILED = int(nlls.Status.CONVERGED), int(nlls.Status.FAILED)


def _exp_np(optim, aux):
    abc = optim[0].tensor.numpy()
    xs, ys = aux[0].tensor.numpy(), aux[1].tensor.numpy()
    scale = aux[2].tensor.numpy() if len(aux) > 2 else 1.0
    return abc[:, :1] * np.exp(-abc[:, 1:2] * xs) + abc[:, 2:] - scale * ys


def _exp_objective(x, y, scale=None):
    batch = max(x.shape[0], y.shape[0])
    p = nlls.Vector(tensor=INIT.repeat(batch, 1), name="p")
    aux = [nlls.Variable(x, name="x"), nlls.Variable(y, name="y")]
    if scale is not None:
        aux.append(nlls.Variable(scale, name="s"))
    objective = nlls.Objective()
    objective.add(nlls.NumericDiffCostFunction((p,), _exp_np, x.shape[1], aux_vars=tuple(aux), name="decay"))
    return objective, p


def _nan_data():
    x, y, _ = exp_data(4, points=12, seed=3)
    y = y.clone()
    y[1, 5] = float("nan")
    return x, y


# ---- defect 2: one element's non-finite residual fails that element only --------------------
@pytest.mark.parametrize("optimizer", [nlls.GaussNewton, nlls.LevenbergMarquardt])
def test_numeric_nan_data_fails_only_its_element(optimizer):
    x, y = _nan_data()
    objective, p = _exp_objective(x, y)
    info = optimizer(objective, max_iterations=50).optimize()
    assert info.status.tolist() == [CONVERGED, FAILED, CONVERGED, CONVERGED]
    for b in (0, 2, 3):
        solo, q = _exp_objective(x[b:b + 1], y[b:b + 1])
        optimizer(solo, max_iterations=50).optimize()
        torch.testing.assert_close(p.tensor[b:b + 1], q.tensor, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.tensor[1:2], INIT)  # the failed element keeps its start


def _log_np(seen):
    def err(optim, aux):
        v = optim[0].tensor.numpy()
        seen.append(bool((v[:, 0] <= 0).any()))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(v) - aux[0].tensor.numpy()
    return err


def _log_objective(start, target, seen):
    v = nlls.Vector(tensor=start.clone(), name="v")
    objective = nlls.Objective()
    objective.add(nlls.NumericDiffCostFunction((v,), _log_np(seen), 1, aux_vars=(nlls.Variable(target, name="t"),)))
    return objective, v


@pytest.mark.parametrize("optimizer", [nlls.GaussNewton, nlls.LevenbergMarquardt])
def test_numeric_trial_step_out_of_domain(optimizer):
    """The Gauss-Newton step of element 0 (log v = 0 from v = 10) lands at v = -13, where log is
    NaN. Gauss-Newton cannot shorten a step: that element is FAILED, the others solve. Levenberg-
    Marquardt rejects the step, raises the damping and recovers: every element converges."""
    start = torch.tensor([[10.0], [2.0], [3.0], [1.5]], dtype=F64)
    target = torch.tensor([[0.0], [0.5], [1.0], [0.2]], dtype=F64)
    seen = []
    objective, v = _log_objective(start, target, seen)
    info = optimizer(objective, max_iterations=100).optimize()
    assert any(seen)  # a trial point left the domain
    if optimizer is nlls.GaussNewton:
        assert info.status.tolist() == [FAILED, CONVERGED, CONVERGED, CONVERGED]
    else:
        assert info.status.tolist() == [CONVERGED] * 4
        torch.testing.assert_close(v.tensor[0], torch.ones(1, dtype=F64), rtol=0, atol=1e-4)
    for b in (1, 2, 3):
        solo, w = _log_objective(start[b:b + 1], target[b:b + 1], [])
        optimizer(solo, max_iterations=100).optimize()
        torch.testing.assert_close(v.tensor[b:b + 1], w.tensor, rtol=0, atol=1e-12)


def _layer_gradients(x, y, scale):
    objective, _ = _exp_objective(x, y, scale)
    layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=50))
    y_in = y.clone().requires_grad_(True)
    s_in = scale.clone().requires_grad_(True)
    with warnings.catch_warnings():  # the failed element's Hessian cannot be factored
        warnings.simplefilter("ignore", RuntimeWarning)
        solution, info = layer({"y": y_in, "s": s_in}, backward_mode="implicit")
        gy, gs = torch.autograd.grad(solution["p"].sum(), (y_in, s_in))
    return info, gy, gs


def test_numeric_implicit_gradient_isolates_the_failed_element():
    x, y = _nan_data()
    scale = torch.ones(1, 1, dtype=F64)  # shared by the batch: its gradient sums every element
    info, gy, gs = _layer_gradients(x, y, scale)
    assert info.status.tolist() == [CONVERGED, FAILED, CONVERGED, CONVERGED]
    assert bool(torch.isfinite(gy).all()) and bool(torch.isfinite(gs).all())
    assert bool((gy[1] == 0).all())
    shared = torch.zeros_like(gs)
    for b in (0, 2, 3):
        _, solo_gy, solo_gs = _layer_gradients(x[b:b + 1], y[b:b + 1], scale)
        torch.testing.assert_close(gy[b:b + 1], solo_gy, rtol=1e-9, atol=1e-12)
        shared = shared + solo_gs
    torch.testing.assert_close(gs, shared, rtol=1e-9, atol=1e-12)


def test_numeric_jacobian_is_one_sided_at_the_edge_of_the_domain():
    """A central difference that steps out of the domain on one side uses the other side."""
    v = nlls.Vector(tensor=torch.tensor([[1e-7], [2.0]], dtype=F64), name="v")

    def sqrt_np(optim, aux):
        with np.errstate(invalid="ignore"):
            return np.sqrt(optim[0].tensor.numpy())

    (jac,), error = nlls.NumericDiffCostFunction((v,), sqrt_np, 1, step=1e-6).jacobians()
    assert bool(torch.isfinite(jac).all()) and bool(torch.isfinite(error).all())
    assert abs(jac[0, 0, 0].item() - (np.sqrt(1e-7 + 1e-6) - np.sqrt(1e-7)) / 1e-6) < 1e-9
    torch.testing.assert_close(jac[1, 0, 0], torch.tensor(0.5 / np.sqrt(2.0), dtype=F64), rtol=1e-9, atol=0)


# ---- defect 3: error functions that close over batched data -------------------------------
def _closure_pair(batch=3, points=6, seed=1):
    x, y, _ = exp_data(batch, points=points, seed=seed)
    start = INIT.repeat(batch, 1) + 0.1 * torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return x, y, start


def _closure_over(x, y, calls):
    def err(optim, aux):
        calls.append(optim[0].tensor.shape[0])
        abc = optim[0].tensor
        return abc[:, :1] * torch.exp(-abc[:, 1:2] * x) + abc[:, 2:] - y
    return err


def test_closure_over_batched_data_gives_the_aux_variable_jacobians():
    x, y, start = _closure_pair()
    calls = []
    p = nlls.Vector(tensor=start.clone(), name="p")
    closure = nlls.NumericDiffCostFunction((p,), _closure_over(x, y, calls), 6, name="closure")
    (jac,), error = closure.jacobians()
    with_aux = nlls.NumericDiffCostFunction(
        (p,), _exp_np, 6, aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    (expected,), expected_error = with_aux.jacobians()
    # torch's and numpy's exp may round differently in the last bit (CPU- and library-dependent):
    # the residuals agree to ~1e-16, their difference quotients (step ~1e-5) to ~1e-11
    torch.testing.assert_close(jac, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(error, expected_error, rtol=0, atol=1e-14)
    abc = start
    exact = torch.stack([torch.exp(-abc[:, 1:2] * x), -abc[:, :1] * x * torch.exp(-abc[:, 1:2] * x),
                         torch.ones_like(x)], dim=-1)
    torch.testing.assert_close(jac, exact, rtol=0, atol=1e-8)
    assert calls == [3 * 7] + [3] * 7  # one stacked try, then the point and 6 perturbations
    calls.clear()
    closure.jacobians()
    assert calls == [3] * 7  # the choice is remembered
    info = nlls.LevenbergMarquardt(nlls.Objective().add(closure), max_iterations=50).optimize()
    assert info.converged.all()


def test_closure_with_a_row_loop_returns_a_wrong_shape_and_falls_back():
    x, y, start = _closure_pair()

    def looped(optim, aux):  # one row per data row: the stacked call gets too few rows back
        abc = optim[0].tensor
        return torch.stack([abc[i, 0] * torch.exp(-abc[i, 1] * x[i]) + abc[i, 2] - y[i] for i in range(3)])

    p = nlls.Vector(tensor=start.clone(), name="p")
    (jac,), _ = nlls.NumericDiffCostFunction((p,), looped, 6).jacobians()
    (expected,), _ = nlls.NumericDiffCostFunction((p,), _closure_over(x, y, []), 6, stacked=False).jacobians()
    torch.testing.assert_close(jac, expected, rtol=0, atol=0)


def test_stacked_true_on_a_closure_names_the_cost_function():
    x, y, start = _closure_pair()
    p = nlls.Vector(tensor=start.clone(), name="p")
    cf = nlls.NumericDiffCostFunction((p,), _closure_over(x, y, []), 6, name="closure", stacked=True)
    with pytest.raises(ValueError, match="'closure'.*stacked.*stacked=False"):
        cf.jacobians()
    with pytest.raises(ValueError, match="'bad'.*stacked must be"):
        nlls.NumericDiffCostFunction((p,), _exp_np, 6, name="bad", stacked="yes")


def test_closure_aux_gradient_unstacked_matches_stacked():
    x, y, start = _closure_pair()
    p = nlls.Vector(tensor=start.clone(), name="p")
    grads = []
    for stacked in (True, False):
        t = nlls.Variable(y.clone().requires_grad_(True), name="y")
        cf = nlls.NumericDiffCostFunction((p,), _exp_np, 6, aux_vars=(nlls.Variable(x, name="x"), t), stacked=stacked)
        jacobians, error = cf.jacobians()
        grads.append(torch.autograd.grad(error.sum() + jacobians[0].sum(), t.tensor)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


# ---- defect 9: raw torch errors become errors that name the object ---------------------------
def test_aux_data_of_another_floating_dtype_is_refused_at_add():
    p = nlls.Vector(tensor=torch.zeros(2, 3, dtype=torch.float32), name="p")
    data = nlls.Variable(torch.ones(2, 3, dtype=F64), name="data")
    cf = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor @ a[0].tensor.T, 2, aux_vars=(data,), name="mm")
    with pytest.raises(ValueError, match="'mm'.*'data'.*float64.*float32"):
        nlls.Objective().add(cf)
    index = nlls.Variable(torch.arange(2)[:, None], name="index")  # integer data is not converted: fine
    nlls.Objective().add(nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor, 3, aux_vars=(index,)))


def test_update_with_another_floating_dtype_is_refused():
    p = nlls.Vector(tensor=torch.zeros(2, 3, dtype=torch.float32), name="p")
    data = nlls.Variable(torch.ones(2, 3, dtype=torch.float32), name="data")
    objective = nlls.Objective().add(
        nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor - a[0].tensor, 3, aux_vars=(data,)))
    with pytest.raises(ValueError, match="'data'.*float64.*float32"):
        objective.update({"data": torch.ones(2, 3, dtype=F64)})
    with pytest.raises(ValueError, match="'p'.*float64.*float32"):
        objective.update({"p": torch.ones(2, 3, dtype=F64)})
    assert data.dtype == torch.float32 and p.dtype == torch.float32


def test_aux_data_on_another_device_is_refused():
    p = nlls.Vector(tensor=torch.zeros(2, 3), name="p")
    elsewhere = nlls.Variable(torch.ones(2, 3, device="meta"), name="elsewhere")
    cf = nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor - a[0].tensor, 3, aux_vars=(elsewhere,), name="far")
    with pytest.raises(ValueError, match="'far'.*'elsewhere'.*meta.*cpu"):
        nlls.Objective().add(cf)
    here = nlls.Variable(torch.ones(2, 3), name="here")
    objective = nlls.Objective().add(
        nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor - a[0].tensor, 3, aux_vars=(here,)))
    with pytest.raises(ValueError, match="'here'.*meta.*cpu"):
        objective.update({"here": torch.ones(2, 3, device="meta")})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64, torch.int64])
def test_optim_variables_need_float32_or_float64(dtype):
    with pytest.raises(TypeError, match=f"'v'.*{str(dtype).split('.')[1]}.*float32 or float64"):
        nlls.Vector(tensor=torch.zeros(2, 3, dtype=dtype), name="v")
    with pytest.raises(TypeError, match="'r'.*float32 or float64"):
        nlls.SO3(tensor=torch.eye(3, dtype=dtype)[None] if dtype != torch.int64 else torch.eye(3)[None].long(), name="r")
    v = nlls.Vector(tensor=torch.zeros(2, 3), name="v")
    with pytest.raises(TypeError, match="'v'.*float32 or float64"):
        v.update(torch.zeros(2, 3, dtype=dtype))
    with pytest.raises(TypeError, match="'v'.*float32 or float64"):
        v.to(dtype)
    assert v.dtype == torch.float32


def _numeric_returning(value, name="box"):
    p = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="p")
    return nlls.NumericDiffCostFunction((p,), lambda o, a: value(o[0].tensor), 2, name=name)


@pytest.mark.parametrize("make, what", [
    (lambda t: None, "NoneType"),
    (lambda t: (t, t), "tuple"),
    (lambda t: [t.numpy()], "list"),
    (lambda t: np.array([["a", "b"], ["c", "d"]]), "numpy array of dtype <U1"),
    (lambda t: t.to(torch.complex128), "complex128"),
])
def test_numeric_err_fn_returning_the_wrong_kind_names_the_cost_function(make, what):
    with pytest.raises(TypeError, match=f"NumericDiffCostFunction 'box': err_fn returned .*{what}"):
        _numeric_returning(make).error()


@pytest.mark.parametrize("make", [
    lambda t: t.numpy() + 1.0,  # a numpy array
    lambda t: (t + 1.0).long(),  # int64
    lambda t: (t.numpy() + 1.0).astype(np.int32),
    lambda t: (t + 1.0).float(),  # float32, a black box that computes in single precision
])
def test_numeric_err_fn_output_converted_to_the_variables_dtype(make):
    cf = _numeric_returning(make)
    error = cf.error()
    assert error.dtype == F64
    torch.testing.assert_close(error, torch.ones(2, 2, dtype=F64))
    (jac,), _ = cf.jacobians()
    assert jac.dtype == F64


@pytest.mark.parametrize("make, what", [
    (lambda t: None, "NoneType"),
    (lambda t: (t, t), "tuple"),
    (lambda t: t.detach().numpy(), "numpy ndarray.*NumericDiffCostFunction"),
    (lambda t: t.long(), "int64"),
])
def test_autodiff_err_fn_returning_the_wrong_kind_names_the_cost_function(make, what):
    p = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="p")
    cf = nlls.AutoDiffCostFunction((p,), lambda o, a: make(o[0].tensor), 2, name="auto")
    with pytest.raises(TypeError, match=f"AutoDiffCostFunction 'auto': err_fn returned .*{what}"):
        cf.error()
    with pytest.raises(TypeError, match="AutoDiffCostFunction 'auto': err_fn (returned|reads tensor data)"):
        cf.jacobians()
    with pytest.raises(TypeError, match="'auto'"):
        nlls.GaussNewton(nlls.Objective().add(cf)).optimize()


def test_weight_of_another_dtype_is_refused_and_numbers_take_the_objective_dtype():
    p = nlls.Vector(tensor=torch.zeros(2, 3, dtype=F64), name="p")

    def prior(weight, name):
        return nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor - 1.0, 3, cost_weight=weight, name=name)

    with pytest.raises(ValueError, match="'light'.*DiagonalCostWeight 'w32'.*float32.*float64"):
        nlls.Objective().add(prior(nlls.DiagonalCostWeight(torch.ones(1, 3, dtype=torch.float32), name="w32"), "light"))
    with pytest.raises(ValueError, match="'scaled'.*ScaleCostWeight 's32'.*float32"):
        nlls.Objective().add(prior(nlls.ScaleCostWeight(nlls.Variable(torch.ones(1, 1), name="s32")), "scaled"))
    weight = nlls.ScaleCostWeight(0.1, name="tenth")  # a number: exact in the objective's dtype
    objective = nlls.Objective().add(prior(weight, "number"))
    assert weight.scale.dtype == F64 and weight.scale.tensor.item() == 0.1
    assert objective.error().dtype == F64


class _Returns(nlls.CostFunction):
    def __init__(self, v, value):
        super().__init__((v,), name="hand")
        self.v, self.value = v, value

    def dim(self):
        return 2

    def error(self):
        return self.value(self.v.tensor)

    def jacobians(self):
        return [torch.eye(2, dtype=self.v.dtype).expand(self.v.batch_size, 2, 2)], self.error()


@pytest.mark.parametrize("value, what", [(lambda t: None, "NoneType"), (lambda t: t.float(), "dtype torch.float32")])
def test_hand_written_error_of_the_wrong_kind_is_named_at_the_first_evaluation(value, what):
    v = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="v")
    objective = nlls.Objective().add(_Returns(v, value))
    with pytest.raises(TypeError, match=f"'hand': error is {what}, expected a torch.float64 tensor"):
        objective.error()
    with pytest.raises(TypeError, match="'hand'"):
        nlls.GaussNewton(objective).optimize()
