"""check_jacobians and check_gradients: every built-in factor passes, wrong derivatives are found
and named, and the reports say where."""
import math

import pytest
import torch

import nlls
from nlls.geometry import SE2, SE3, SO2, SO3
from nlls.io import BALReprojection, bundled_dataset, read

from .io.reference import data_file

F64 = torch.float64
GROUPS = [SO2, SE2, SO3, SE3]


def _vector(cls, batch, dof, generator, name):
    return cls(tensor=torch.randn(batch, dof, generator=generator, dtype=F64), name=name)


def _group(cls, batch, generator, name):
    g = cls.rand(batch, generator=generator, dtype=F64)
    return cls(tensor=g.tensor, name=name)


def _variables(kind, batch, generator, names):
    if kind in GROUPS:
        return [_group(kind, batch, generator, n) for n in names]
    dof = {nlls.Vector: 4, nlls.Point2: 2, nlls.Point3: 3}[kind]
    return [_vector(kind, batch, dof, generator, n) for n in names]


def _measurement(kind, var, generator, name):
    if kind in GROUPS:
        return _group(kind, var.batch_size, generator, name)
    return nlls.Variable(torch.randn(var.shape, generator=generator, dtype=F64), name=name)


KINDS = GROUPS + [nlls.Vector, nlls.Point2, nlls.Point3]


def _built_in_factors():
    """(id, cost function) for every factor the package defines, over every variable kind."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for kind in KINDS:
        a, b = _variables(kind, 3, g, ["a", "b"])
        m = _measurement(kind, a, g, "m")
        t = _measurement(kind, a, g, "t")
        cases.append((f"Between-{kind.__name__}", nlls.Between(a, b, m, name="between")))
        cases.append((f"Difference-{kind.__name__}", nlls.Difference(a, t, cost_weight=2.0, name="prior")))
    se3 = _variables(SE3, 2, g, ["p", "q"])
    weight = nlls.MatrixCostWeight.from_information(torch.diag(torch.arange(1.0, 7.0, dtype=F64)))
    robust = nlls.RobustCostFunction(nlls.Between(*se3, _measurement(SE3, se3[0], g, "z"), cost_weight=weight),
                                     nlls.HuberLoss(0.1))
    cases.append(("Robust-Between-SE3", robust))
    camera = torch.cat([0.5 * torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 2, generator=g, dtype=F64),
                        torch.full((2, 1), -8.0, dtype=F64), 500 + 50 * torch.randn(2, 1, generator=g, dtype=F64),
                        0.1 * torch.randn(2, 2, generator=g, dtype=F64)], dim=1)
    bal = BALReprojection(nlls.Vector(tensor=camera, name="c0"),
                          nlls.Point3(tensor=torch.randn(2, 3, generator=g, dtype=F64), name="p0"),
                          nlls.Variable(100 * torch.randn(2, 2, generator=g, dtype=F64), name="uv"), name="obs")
    cases.append(("BALReprojection", bal))
    return cases


@pytest.mark.parametrize("case", _built_in_factors(), ids=lambda case: case[0])
@pytest.mark.parametrize("at", [None, "random"])
def test_every_built_in_factor_passes(case, at):
    _, cost_function = case
    report = nlls.check_jacobians(cost_function, at=at)
    assert report.ok, str(report)
    assert report.max_rel_error < 1e-6
    assert set(report.variables) == {v.name for v in cost_function.optim_vars}


def test_the_pose_graph_and_bal_readers_factors_pass():
    objective = read(bundled_dataset()).objective(vectorized=False)  # 2-D pose graph: Between SE2, information weights
    files = [objective]
    for name in ("pose3example.txt", "dubrovnik-3-7-pre.txt"):  # 3-D pose graph, bundle adjustment
        try:
            files.append(read(data_file(name)).objective(vectorized=False))
        except pytest.skip.Exception:
            continue
    for objective in files:
        for cost_function in list(objective.cost_functions.values())[:12]:
            report = nlls.check_jacobians(cost_function)
            assert report.ok, str(report)


class WrongBetween(nlls.Between):
    """Between with the first Jacobian's rotation block transposed: right at the identity only."""

    def jacobians(self):
        (first, second), error = super().jacobians()
        wrong = first.clone()
        wrong[:, 3:, 3:] = first[:, 3:, 3:].mT
        return [wrong, second], error


def test_a_wrong_jacobian_is_flagged_and_located():
    g = torch.Generator().manual_seed(3)
    a, b = _variables(SE3, 4, g, ["x1", "x2"])
    cost_function = WrongBetween(a, b, _measurement(SE3, a, g, "m"), name="odometry")
    report = nlls.check_jacobians(cost_function)
    assert not report.ok
    assert not report.variables["x1"].ok and report.variables["x2"].ok
    worst = report.worst
    assert worst.variable == "x1" and 0 <= worst.batch < 4 and worst.row >= 3 and worst.coordinate >= 3
    assert report.variables["x1"].max_rel_error > 1e-3
    assert abs(worst.analytic - float(report.analytic["x1"][worst.batch, worst.row, worst.coordinate])) < 1e-12
    assert abs(worst.numeric - float(report.numeric["x1"][worst.batch, worst.row, worst.coordinate])) < 1e-12
    text = str(report)
    assert "FAILED" in text and "'odometry'" in text and "WRONG" in text and "variable 'x1'" in text
    # at the identity the transposed block is right: the check says so too
    identity = SE3.identity(4, dtype=F64).tensor
    assert nlls.check_jacobians(cost_function, at={"x1": identity, "x2": identity, "m": identity}).ok


def test_the_check_works_on_a_float64_copy_and_leaves_the_cost_function_alone():
    g = torch.Generator().manual_seed(4)
    a = SE2(tensor=SE2.rand(3, generator=g, dtype=torch.float32).tensor, name="a")
    b = SE2(tensor=SE2.rand(3, generator=g, dtype=torch.float32).tensor, name="b")
    m = SE2(tensor=SE2.rand(3, generator=g, dtype=torch.float32).tensor, name="m")
    tensors = [v.tensor for v in (a, b, m)]
    cost_function = nlls.Between(a, b, m)
    report = nlls.check_jacobians(cost_function)
    assert report.ok, str(report)
    assert report.analytic["a"].dtype == F64 and report.analytic["a"].shape == (3, 3, 3)
    assert all(v.tensor is t for v, t in zip((a, b, m), tensors))
    assert nlls.check_jacobians(cost_function, dtype=None).analytic["a"].dtype == torch.float32


def test_autodiff_numeric_diff_and_masked_rows():
    x = torch.linspace(0, 2, 6, dtype=F64).expand(2, 6).clone()
    x[1, 4:] = float("nan")  # padding
    mask = torch.isfinite(x)

    def decay(optim, aux):
        p = optim[0].tensor
        return p[:, :1] * torch.exp(-p[:, 1:] * aux[0].tensor) - 1.0

    p = nlls.Vector(tensor=torch.tensor([[1.0, 0.3]], dtype=F64), name="p")
    data = nlls.Variable(x, name="x")
    masked = nlls.AutoDiffCostFunction((p,), decay, 6, aux_vars=(data,), residual_mask=mask)
    report = nlls.check_jacobians(masked)
    assert report.ok and report.skipped == 2 * 2  # two masked rows, two tangent coordinates
    numeric = nlls.NumericDiffCostFunction((p,), lambda o, a: decay(o, a).numpy(), 6, aux_vars=(data,))
    report = nlls.check_jacobians(numeric)
    assert report.ok and any("difference schemes" in note for note in report.notes)


def test_bad_arguments_are_named():
    g = torch.Generator().manual_seed(5)
    a, b = _variables(nlls.Vector, 2, g, ["a", "b"])
    cost_function = nlls.Between(a, b, _measurement(nlls.Vector, a, g, "m"), name="edge")
    with pytest.raises(TypeError, match="expects a CostFunction"):
        nlls.check_jacobians(a)
    with pytest.raises(KeyError, match="'nope'"):
        nlls.check_jacobians(cost_function, at={"nope": a.tensor})
    with pytest.raises(ValueError, match="'edge'.*rtol"):
        nlls.check_jacobians(cost_function, rtol=-1.0)
    with pytest.raises(ValueError, match="at must be"):
        nlls.check_jacobians(cost_function, at="everywhere")


# ---- check_gradients -------------------------------------------------------------------------
def _decay(optim, aux):
    p = optim[0].tensor
    return p[:, :1] * torch.exp(-p[:, 1:2] * aux[0].tensor) - aux[1].tensor


def _decay_layer(batch=2, points=6, linear_solver="dense_lu", **layer_options):
    t = torch.linspace(0, 3, points, dtype=F64).expand(batch, points)
    p = nlls.Vector(tensor=torch.tensor([[1.0, 0.5]], dtype=F64), name="p")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((p,), _decay, points, aux_vars=(
        nlls.Variable(t, name="t"), nlls.Variable(torch.zeros(batch, points, dtype=F64), name="y"))))
    optimizer = nlls.GaussNewton(objective, max_iterations=40, abs_err_tolerance=0.0, rel_err_tolerance=1e-14,
                                 linear_solver=linear_solver)
    return nlls.OptimizationLayer(optimizer, **layer_options), t


def _decay_data(t, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.exp(-0.7 * t) + noise * torch.randn(t.shape, generator=g, dtype=F64)


def test_check_gradients_passes_a_correct_layer_in_every_mode():
    layer, t = _decay_layer()
    y = _decay_data(t, noise=0.0).requires_grad_(True)  # residuals vanish: Gauss-Newton is exact
    # the solution does not depend on its start: that gradient is (nearly) zero in every mode, and
    # judged against the element's other gradients rather than its own rounding noise
    start = torch.tensor([[1.0, 0.5]], dtype=F64).repeat(2, 1).requires_grad_(True)
    report = nlls.check_gradients(layer, {"y": y, "p": start}, count_approximate=True)
    assert report.ok, str(report)
    assert set(report.modes) == {"unroll", "truncated", "implicit"} and not report.skipped
    for mode, inputs in report.modes.items():
        assert inputs["y"].max_rel_error < 1e-5, (mode, str(report))
        assert inputs["p"].max_rel_error < 1e-5, (mode, str(report))
        assert report.analytic[mode]["y"].shape == y.shape
    assert report.numeric["y"].shape == y.shape and float(report.numeric["p"].abs().max()) < 1e-8
    assert y.grad is None  # the inputs are not touched


def test_check_gradients_flags_the_gauss_newton_hessian_on_a_large_residual_problem():
    layer, t = _decay_layer()
    y = _decay_data(t, noise=0.3).requires_grad_(True)
    report = nlls.check_gradients(layer, {"y": y}, modes=["implicit", "unroll"])
    assert not report.ok
    wrong = report.modes["implicit"]["y"]
    assert not wrong.ok and wrong.max_rel_error > 1e-3 and wrong.counted
    assert report.modes["unroll"]["y"].ok  # the unrolled iterations converge to the true derivative
    element, index = wrong.where
    assert 0 <= element < 2 and len(index) == 1
    assert "implicit" in str(report) and "WRONG" in str(report)
    exact = nlls.check_gradients(layer, {"y": y}, modes=["implicit"], hessian="exact")
    assert exact.ok, str(exact)
    assert exact.modes["implicit"]["y"].max_rel_error < 1e-5
    # a layer built with the exact Hessian passes by default
    assert nlls.check_gradients(nlls.OptimizationLayer(layer.optimizer, hessian="exact"), {"y": y},
                                modes=["implicit"]).ok


def test_truncated_is_reported_but_not_counted_unless_asked():
    layer, t = _decay_layer()
    y = _decay_data(t, noise=0.3).requires_grad_(True)
    report = nlls.check_gradients(layer, {"y": y}, modes=["truncated"], backward_num_iterations=1)
    entry = report.modes["truncated"]["y"]
    assert not entry.counted and not entry.ok and report.ok
    assert "not counted" in str(report)
    strict = nlls.check_gradients(layer, {"y": y}, modes=["truncated"], backward_num_iterations=1,
                                  count_approximate=True)
    assert not strict.ok


def test_a_shared_input_a_scalar_function_and_skipped_modes():
    layer, t = _decay_layer()
    y = _decay_data(t, noise=0.0)
    start = torch.tensor([[1.0, 0.5]], dtype=F64).expand(2, 2)
    with pytest.raises(ValueError, match="no input requires grad"):
        nlls.check_gradients(layer, {"y": y, "p": start})
    report = nlls.check_gradients(layer, {"y": y.clone().requires_grad_(True)},
                                  function=lambda solution: (solution["p"] ** 2).sum(),  # a scalar
                                  modes=["implicit"])
    assert report.ok, str(report)
    weight = torch.ones(1, 1, dtype=F64, requires_grad=True)  # batch 1, shared by both elements
    p = nlls.Vector(tensor=torch.tensor([[1.0, 0.5]], dtype=F64), name="p")
    objective = nlls.Objective()
    objective.add(nlls.NumericDiffCostFunction(
        (p,), lambda o, a: _decay(o, a).numpy(), 6, name="black_box", cost_weight=nlls.ScaleCostWeight(weight, name="w"),
        aux_vars=(nlls.Variable(t, name="t"), nlls.Variable(y, name="y"))))
    black_box = nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=40, abs_err_tolerance=0.0,
                                                        rel_err_tolerance=1e-14))
    report = nlls.check_gradients(black_box, {"w": weight, "y": _decay_data(t, 0.0).requires_grad_(True)})
    assert set(report.skipped) == {"unroll", "truncated"} and "black_box" in report.skipped["unroll"]
    assert report.ok and report.numeric["w"].shape == (1, 1), str(report)
    assert "not run" in str(report)
    with pytest.raises(ValueError, match="cannot differentiate"):
        nlls.check_gradients(black_box, {"w": weight}, modes=["unroll"])
    with pytest.raises(TypeError, match="expects an OptimizationLayer"):
        nlls.check_gradients(black_box.optimizer, {"w": weight})
    assert math.isfinite(report.modes["implicit"]["w"].max_rel_error)
