"""Every analytic Jacobian against central differences on the tangent (float64), including
rotation angles within 1e-6 of 0 and of pi; and NaN-free values and gradients in float32/64."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlls.geometry import SE2, SO2

from .conftest import numeric_jacobians, rotation_part, tangents

BATCH = 12


def _operations(group):
    """name -> (function of the inputs, the same with a jacobians list, input builder)."""

    def two(seed):
        g = torch.Generator().manual_seed(seed)
        return [group.exp_map(tangents(group, BATCH, g)),
                group.exp_map(tangents(group, BATCH, g, special=False))]

    def element(seed):
        return two(seed)[:1]

    def element_and_point(seed):
        g = torch.Generator().manual_seed(seed)
        return [group.exp_map(tangents(group, BATCH, g)),
                torch.randn(BATCH, group.POINT_DIM, generator=g, dtype=torch.float64)]

    def element_and_tangent(seed):
        g = torch.Generator().manual_seed(seed)
        return [group.exp_map(tangents(group, BATCH, g, special=False)), tangents(group, BATCH, g)]

    def tangent(seed):
        return [tangents(group, BATCH, torch.Generator().manual_seed(seed))]

    return {
        "exp_map": (group.exp_map, lambda t, j: group.exp_map(t, jacobians=j), tangent),
        "log_map": (lambda g: g.log_map(), lambda g, j: g.log_map(jacobians=j), element),
        "compose": (lambda a, b: a.compose(b), lambda a, b, j: a.compose(b, jacobians=j), two),
        "inverse": (lambda a: a.inverse(), lambda a, j: a.inverse(jacobians=j), element),
        "between": (lambda a, b: a.between(b), lambda a, b, j: a.between(b, jacobians=j), two),
        "local": (lambda a, b: a.local(b), lambda a, b, j: a.local(b, jacobians=j),
                  lambda seed: two(seed)[::-1]),
        "retract": (lambda a, d: a.retract(d), lambda a, d, j: a.retract(d, jacobians=j),
                    element_and_tangent),
        "transform_from": (lambda a, p: a.transform_from(p),
                           lambda a, p, j: a.transform_from(p, jacobians=j), element_and_point),
        "transform_to": (lambda a, p: a.transform_to(p),
                         lambda a, p, j: a.transform_to(p, jacobians=j), element_and_point),
    }


OPERATIONS = list(_operations(SO2))


def _angle_of(group, value):
    tangent = value.log_map() if not isinstance(value, torch.Tensor) else value
    return rotation_part(group, tangent).norm(dim=1)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2 ** 31 - 1))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_jacobians_match_central_differences(group, operation, seed):
    function, with_jacobians, build = _operations(group)[operation]
    inputs = build(seed)
    analytic = []
    with_jacobians(*inputs, analytic)
    # log and local jump at exactly pi (where the axis flips): there the step must stay on one
    # side, so they are checked with a step smaller than the distance to pi, at pi - 1e-6
    near_cut = operation in ("log_map", "local")
    numeric = numeric_jacobians(function, inputs, h=1e-7 if near_cut else 1e-6)
    assert len(analytic) == len(numeric) == len(inputs)
    keep = torch.ones(BATCH, dtype=torch.bool)
    if near_cut:
        subject = inputs[0] if operation == "log_map" else inputs[0].between(inputs[1])
        keep = _angle_of(group, subject) < math.pi - 5e-7
    for a, n in zip(analytic, numeric):
        assert a.shape == n.shape
        error = (a - n).abs().amax(dim=(1, 2))[keep]
        assert float(error.max()) < 1e-5, (operation, error)


def test_jacobians_at_the_identity_and_pi(group):
    """The Taylor and near-pi branches themselves, element by element."""
    rot = 1 if group in (SO2, SE2) else 3
    axis = torch.zeros(6, rot, dtype=torch.float64)
    axis[:, 0] = 1.0
    if rot == 3:
        axis[3:] = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64) / math.sqrt(5.25)
    angles = torch.tensor([0.0, 1e-7, 1e-6, math.pi - 1e-6, math.pi - 1e-7, math.pi - 2e-6],
                          dtype=torch.float64)
    tangent = torch.cat([0.3 * torch.ones(6, group.DOF - rot, dtype=torch.float64),
                         angles[:, None] * axis], dim=1)
    for name in ("exp_map", "log_map", "between", "retract"):
        function, with_jacobians, _ = _operations(group)[name]
        g = group.exp_map(tangent)
        inputs = {"exp_map": [tangent], "log_map": [g], "between": [group.identity(6, torch.float64), g],
                  "retract": [g, tangent]}[name]
        analytic = []
        with_jacobians(*inputs, analytic)
        for a, n in zip(analytic, numeric_jacobians(function, inputs, h=1e-8)):
            assert torch.allclose(a, n, atol=1e-6), (name, (a - n).abs().amax(dim=(1, 2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_nan_in_values_or_gradients(group, dtype):
    """Backward through every map at angles 0, tiny, near pi and pi stays finite."""
    generator = torch.Generator().manual_seed(3)
    tangent = tangents(group, 16, generator, dtype=dtype).requires_grad_(True)
    points = torch.randn(16, group.POINT_DIM, generator=generator, dtype=dtype)
    g = group.exp_map(tangent)
    identity = group.identity(16, dtype=dtype)
    outputs = [
        g.log_map(), g.local(identity), identity.local(g), g.between(g).log_map(),
        g.transform_from(points), g.transform_to(points), g.to_matrix(),
        group.exp_map(tangent, []).retract(tangent).tensor,
    ]
    jacobians = []
    g.log_map(jacobians)
    group.exp_map(tangent, jacobians)
    identity.local(g, jacobians)
    outputs += jacobians
    for out in outputs:
        assert torch.isfinite(out).all()
    total = sum(out.sum() for out in outputs)
    (grad,) = torch.autograd.grad(total, tangent)
    assert torch.isfinite(grad).all()
    # at the identity the gradient of log(exp(t)) is exactly the identity
    zero = torch.zeros(1, group.DOF, dtype=dtype, requires_grad=True)
    rows = [torch.autograd.grad(group.exp_map(zero).log_map()[0, i], zero)[0] for i in range(group.DOF)]
    assert torch.allclose(torch.cat(rows), torch.eye(group.DOF, dtype=dtype), atol=1e-6)


def test_float32_agrees_with_float64(group):
    generator = torch.Generator().manual_seed(4)
    tangent = tangents(group, 16, generator)
    g64 = group.exp_map(tangent)
    g32 = group.exp_map(tangent.float())
    assert torch.allclose(g32.tensor.double(), g64.tensor, atol=1e-5)
    log64, log32 = g64.log_map(), group(g64.tensor.float()).log_map()
    inside = rotation_part(group, tangent).norm(dim=1) < math.pi - 1e-3
    assert torch.allclose(log32.double()[inside], log64[inside], atol=2e-4)
    j64, j32 = [], []
    g64.local(g64.compose(g64), j64)
    g32.local(g32.compose(g32), j32)
    for a, b in zip(j64, j32):
        assert torch.allclose(a[inside], b.double()[inside], atol=1e-3)


def test_torch_func_through_retract_and_local(group):
    """AutoDiffCostFunction differentiates retract_tensor with jvp under vmap."""
    generator = torch.Generator().manual_seed(5)
    g = group.exp_map(tangents(group, 8, generator))
    h = group.exp_map(tangents(group, 8, generator, special=False))
    zero = torch.zeros(8, group.DOF, dtype=torch.float64)

    def error(delta):
        return group.local_tensor(h.tensor, group.retract_tensor(g.tensor, delta))

    basis = torch.eye(group.DOF, dtype=torch.float64)[:, None, :].expand(group.DOF, 8, group.DOF)
    _, columns = torch.func.vmap(lambda t: torch.func.jvp(error, (zero,), (t,)))(basis)
    forward = columns.permute(1, 2, 0)
    jacobians = []
    h.local(g, jacobians)
    keep = _angle_of(group, h.between(g)) < math.pi - 1e-6
    assert torch.allclose(forward[keep], jacobians[1][keep], atol=1e-8)
    def one(delta, g_row, h_row):
        return group.local_tensor(h_row[None], group.retract_tensor(g_row[None], delta[None]))[0]

    reverse = torch.func.vmap(torch.func.jacrev(one))(zero, g.tensor, h.tensor)
    assert torch.allclose(reverse[keep], jacobians[1][keep], atol=1e-8)


@pytest.mark.parametrize("boundary", [math.sqrt(1e-3), math.asin(math.sqrt(1e-4))],
                         ids=["series_of_exp", "series_of_log"])
def test_taylor_branches_meet_the_closed_forms(group, boundary):
    """At the float64 switch-over angle both sides agree to rounding (catches wrong series terms)."""
    rot = 1 if group in (SO2, SE2) else 3
    axis = torch.tensor([[0.6, -0.48, 0.64]], dtype=torch.float64)[:, :rot]
    axis = axis / axis.norm()
    translation = torch.tensor([[0.7, -1.3, 0.4]], dtype=torch.float64)[:, : group.DOF - rot]
    values = []
    for side in (1 - 1e-12, 1 + 1e-12):
        tangent = torch.cat([translation, boundary * side * axis], dim=1)
        values.append([group.exp_tensor(tangent), group.jr_tensor(tangent),
                       group.jr_inv_tensor(tangent), group.log_tensor(group.exp_tensor(tangent))])
    for below, above in zip(*values):
        assert float((below - above).abs().max()) < 1e-12


def _series_tables():
    """(table, closed form, first omitted coefficient) of every Taylor series in the groups."""
    from nlls.geometry import numerics, se2, so3

    return {
        "sin(t)/t": (numerics.A_SERIES, lambda t: math.sin(t) / t, 1 / 362880),
        "(1-cos t)/t^2": (numerics.B_SERIES, lambda t: (1 - math.cos(t)) / t ** 2, 1 / 3628800),
        "(t-sin t)/t^3": (numerics.C_SERIES, lambda t: (t - math.sin(t)) / t ** 3, 1 / 39916800),
        "D": (numerics.D_SERIES, lambda t: 1 / t ** 2 - (1 + math.cos(t)) / (2 * t * math.sin(t)), 1 / 47900160),
        "E": (numerics.E_SERIES, lambda t: (t * t + 2 * math.cos(t) - 2) / (2 * t ** 4), 1 / 479001600),
        "F": (numerics.F_SERIES, lambda t: (2 * t - 3 * math.sin(t) + t * math.cos(t)) / (2 * t ** 5), 1 / 1245404160),
        "(t/2)cot(t/2)": (se2._HALF_COT, lambda t: (t / 2) / math.tan(t / 2), 1 / 1209600),
        "asin(s)/s": (so3._T_OVER_SIN, lambda s: math.asin(s) / s, 35 / 1152),
    }


@pytest.mark.parametrize("name", list(_series_tables()))
def test_series_tables_match_closed_forms(name):
    """Every coefficient counts at float32's switch-over (t^2 = 0.25): the series may differ from
    the closed form by at most about its first omitted term."""
    table, closed_form, omitted = _series_tables()[name]
    for t in (0.5, 0.4):
        if name == "asin(s)/s":
            t = t / 5  # its float32 switch-over is s^2 = 0.01
        series = sum(c * t ** (2 * k) for k, c in enumerate(table))
        assert abs(series - closed_form(t)) <= 1.5 * omitted * t ** (2 * len(table)) + 1e-13, name
