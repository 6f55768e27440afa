"""Invariants every group must satisfy (run on each group of conftest.GROUPS)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlls.geometry import SE2, SE3, SO2, SO3
from nlls.geometry.so3 import hat

from .conftest import rotation_part, tangents

SEEDS = st.integers(min_value=0, max_value=2 ** 31 - 1)
PROPERTY = settings(max_examples=15, deadline=None)
BATCH = 16


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _elements(group, seed, batch=BATCH):
    return group.exp_map(tangents(group, batch, _generator(seed)))


def _close(a, b, tol=1e-9):
    assert torch.allclose(a, b, atol=tol, rtol=0), float((a - b).abs().max())


def _algebra_matrix(group, tangent):
    """The tangent as a matrix of the Lie algebra (its matrix exponential is ``exp``)."""
    batch = tangent.shape[0]
    if group is SO2:
        out = torch.zeros(batch, 2, 2, dtype=tangent.dtype)
        out[:, 0, 1], out[:, 1, 0] = -tangent[:, 0], tangent[:, 0]
    elif group is SE2:
        out = torch.zeros(batch, 3, 3, dtype=tangent.dtype)
        out[:, 0, 1], out[:, 1, 0] = -tangent[:, 2], tangent[:, 2]
        out[:, :2, 2] = tangent[:, :2]
    elif group is SO3:
        out = hat(tangent)
    else:
        out = torch.zeros(batch, 4, 4, dtype=tangent.dtype)
        out[:, :3, :3] = hat(tangent[:, 3:])
        out[:, :3, 3] = tangent[:, :3]
    return out


@PROPERTY
@given(seed=SEEDS)
def test_exp_equals_matrix_exponential(group, seed):
    tangent = tangents(group, BATCH, _generator(seed))
    expected = torch.linalg.matrix_exp(_algebra_matrix(group, tangent))
    _close(group.exp_map(tangent).to_matrix(), expected, 1e-12)


@PROPERTY
@given(seed=SEEDS)
def test_exp_log_round_trip(group, seed):
    tangent = tangents(group, BATCH, _generator(seed))
    # at exactly pi the axis sign is a convention: compare group elements there, tangents elsewhere
    angle = rotation_part(group, tangent).norm(dim=1)
    log = group.exp_map(tangent).log_map()
    inside = angle < math.pi - 1e-9
    _close(log[inside], tangent[inside], 1e-9)
    _close(group.exp_map(log).tensor, group.exp_map(tangent).tensor, 1e-12)
    g = _elements(group, seed)
    _close(group.exp_map(g.log_map()).tensor, g.tensor, 1e-12)


@PROPERTY
@given(seed=SEEDS)
def test_group_axioms(group, seed):
    g, h, k = _elements(group, seed), _elements(group, seed + 1), _elements(group, seed + 2)
    identity = group.identity(BATCH, dtype=torch.float64)
    _close(g.compose(h).compose(k).tensor, g.compose(h.compose(k)).tensor, 1e-12)
    _close(g.compose(identity).tensor, g.tensor, 1e-15)
    _close(identity.compose(g).tensor, g.tensor, 1e-15)
    _close(g.compose(g.inverse()).tensor, identity.tensor, 1e-12)
    _close(g.inverse().compose(g).tensor, identity.tensor, 1e-12)
    _close(g.between(h).tensor, g.inverse().compose(h).tensor, 1e-15)
    _close((g * h).to_matrix(), g.to_matrix() @ h.to_matrix(), 1e-12)
    _close(g.inverse().to_matrix(), torch.linalg.inv(g.to_matrix()), 1e-12)


@PROPERTY
@given(seed=SEEDS)
def test_rotation_is_orthonormal_with_det_one(group, seed):
    g = _elements(group, seed)
    for element in (g, g.compose(_elements(group, seed + 1)), group.rand(BATCH, _generator(seed),
                                                                        dtype=torch.float64)):
        matrix = element.to_matrix()
        size = 2 if group in (SO2, SE2) else 3
        rotation = matrix[:, :size, :size]
        eye = torch.eye(size, dtype=torch.float64).expand_as(rotation)
        _close(rotation.transpose(1, 2) @ rotation, eye, 1e-12)
        _close(torch.linalg.det(rotation), torch.ones(BATCH, dtype=torch.float64), 1e-12)
        if group in (SE2, SE3):  # homogeneous last row
            last = torch.zeros(size + 1, dtype=torch.float64)
            last[-1] = 1
            _close(matrix[:, -1], last.expand(BATCH, -1), 0)


@PROPERTY
@given(seed=SEEDS)
def test_act_and_inverse_act(group, seed):
    g = _elements(group, seed)
    points = torch.randn(BATCH, group.POINT_DIM, generator=_generator(seed), dtype=torch.float64)
    moved = g.transform_from(points)
    _close(g.transform_to(moved), points, 1e-12)
    _close(g.inverse().transform_from(moved), points, 1e-12)
    homogeneous = torch.cat([points, torch.ones(BATCH, 1, dtype=torch.float64)], dim=1)
    matrix = g.to_matrix()
    expected = (matrix @ (homogeneous if group in (SE2, SE3) else points)[..., None])[..., 0]
    _close(moved, expected[:, : group.POINT_DIM], 1e-12)
    h = _elements(group, seed + 1)  # acting is a group action: (g h) p = g (h p)
    _close(g.compose(h).transform_from(points), g.transform_from(h.transform_from(points)), 1e-12)


@PROPERTY
@given(seed=SEEDS, scale=st.sampled_from([1e-8, 1e-3, 0.5, 2.0]))
def test_retract_local_consistency(group, seed, scale):
    g = _elements(group, seed)
    delta = scale * torch.randn(BATCH, group.DOF, generator=_generator(seed), dtype=torch.float64)
    # local inverts retract for steps whose rotation is shorter than pi
    keep = rotation_part(group, delta).norm(dim=1) < math.pi - 1e-3
    moved = g.retract(delta)
    _close(g.local(moved)[keep], delta[keep], 1e-9)
    _close(g.local(g), torch.zeros(BATCH, group.DOF, dtype=torch.float64), 1e-12)
    _close(moved.tensor, g.compose(group.exp_map(delta)).tensor, 1e-12)
    h = _elements(group, seed + 1)
    _close(g.retract(g.local(h)).tensor, h.tensor, 1e-9)
    _close(g.local(h), g.between(h).log_map(), 0)
    _close(group.local_tensor(g.tensor, h.tensor), g.local(h), 0)


def test_adjoint_moves_tangents(group, generator):
    g = group.rand(8, generator, dtype=torch.float64)
    d = 0.3 * torch.randn(8, group.DOF, generator=generator, dtype=torch.float64)
    lhs = g.compose(group.exp_map(d)).compose(g.inverse())
    rhs = group.exp_map((g.adjoint() @ d[..., None])[..., 0])
    _close(lhs.tensor, rhs.tensor, 1e-12)


def test_identity_rand_shapes_and_dtypes(group, generator):
    for dtype in (torch.float32, torch.float64):
        identity = group.identity(3, dtype=dtype)
        random = group.rand(5, generator=generator, dtype=dtype)
        assert identity.shape == (3, *group.EVENT_SHAPE) and identity.dtype == dtype
        assert random.shape == (5, *group.EVENT_SHAPE) and random.dtype == dtype
        assert identity.dof() == random.dof() == group.DOF
        group(random.tensor, name="checked")  # rand gives valid elements
        assert torch.equal(identity.log_map(), torch.zeros(3, group.DOF, dtype=dtype))
    a = group.rand(4, torch.Generator().manual_seed(1))
    b = group.rand(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.tensor, b.tensor)
    assert group().shape == (1, *group.EVENT_SHAPE)  # the default is the identity


def test_batch_of_one_broadcasts(group, generator):
    g = group.rand(1, generator, dtype=torch.float64)
    h = group.rand(6, generator, dtype=torch.float64)
    assert g.compose(h).shape[0] == 6 and h.compose(g).shape[0] == 6
    assert g.local(h).shape == (6, group.DOF)
    assert g.retract(torch.zeros(6, group.DOF, dtype=torch.float64)).shape[0] == 6
    jacobians = []
    g.between(h, jacobians=jacobians)
    assert [tuple(j.shape) for j in jacobians] == [(6, group.DOF, group.DOF)] * 2
    with pytest.raises(ValueError, match="batch sizes 6 and 4"):
        h.compose(group.rand(4, generator, dtype=torch.float64))


def test_inputs_are_not_modified(group, generator):
    g = group.rand(4, generator, dtype=torch.float64)
    h = group.rand(4, generator, dtype=torch.float64)
    delta = torch.randn(4, group.DOF, dtype=torch.float64)
    points = torch.randn(4, group.POINT_DIM, dtype=torch.float64)
    before = [t.clone() for t in (g.tensor, h.tensor, delta, points)]
    g.compose(h, []), g.between(h, []), g.local(h, []), g.retract(delta, []), g.inverse([])
    g.transform_from(points, []), g.transform_to(points, []), group.exp_map(delta, [])
    for old, new in zip(before, (g.tensor, h.tensor, delta, points)):
        assert torch.equal(old, new)


def test_results_get_fresh_names(group, generator):
    g = group.rand(2, generator, name="g")
    h = g.compose(g)
    assert h.name != g.name and g.inverse().name != g.name
    assert g.retract(torch.zeros(2, group.DOF)).name == "g_retracted"


def test_validation_names_the_variable(group):
    bad = group.identity(3, dtype=torch.float64).tensor.clone()
    bad[1] = 2.0 * bad[1] + 0.1
    with pytest.raises(ValueError, match=rf"{group.__name__} 'pose_7': batch element 1 is not a valid"):
        group(bad, name="pose_7")
    with pytest.raises(ValueError, match="'pose_7': expected a tensor of shape"):
        group(torch.zeros(2, 5), name="pose_7")
    with pytest.raises(ValueError, match=r"add a batch dimension"):
        group(group.identity(1).tensor[0], name="pose_7")
    nan = group.identity(2, dtype=torch.float64).tensor.clone()
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="batch element 0"):
        group(nan, name="pose_7")
    ok = group.identity(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="'x'"):
        group(ok.tensor, name="x").update(bad)


def test_tolerance_accepts_rounding_in_float32(group, generator):
    g = group.rand(64, generator, dtype=torch.float64)
    group(g.tensor.float(), name="from_float64")
    perturbed = g.tensor + 1e-9 * torch.randn(g.tensor.shape, dtype=torch.float64)
    group(perturbed, name="rounded")


def test_exp_map_checks_its_input(group):
    with pytest.raises(ValueError, match=rf"{group.__name__}.exp_map: expected a tangent of shape"):
        group.exp_map(torch.zeros(2, group.DOF + 1))
    with pytest.raises(TypeError, match="needs a"):
        group.identity(1).compose(torch.zeros(1, group.DOF))
