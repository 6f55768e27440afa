"""Constructors, conversions and their checks; SO3 against SciPy's Rotation."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import nlls
from nlls.geometry import SE2, SE3, SO2, SO3

from .conftest import tangents


def test_so2_from_theta():
    theta = torch.tensor([[0.0], [0.5], [-3.0], [math.pi]], dtype=torch.float64)
    rotation = SO2(theta=theta, name="R")
    assert rotation.shape == (4, 2) and rotation.name == "R"
    assert torch.allclose(rotation.tensor, torch.cat([theta.cos(), theta.sin()], dim=1))
    assert torch.allclose(rotation.theta(), theta)
    assert torch.allclose(rotation.log_map(), theta)
    assert SO2(theta=theta.float(), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"SO2 'R': theta must have shape \(B, 1\)"):
        SO2(theta=torch.zeros(3), name="R")
    with pytest.raises(ValueError, match="either theta or tensor"):
        SO2(rotation.tensor, theta=theta)


def test_se2_from_x_y_theta():
    x_y_theta = torch.tensor([[1.0, -2.0, 0.3], [0.0, 0.5, -2.9]], dtype=torch.float64)
    pose = SE2(x_y_theta=x_y_theta, name="pose")
    assert torch.allclose(pose.x_y_theta(), x_y_theta)
    assert torch.allclose(pose.translation(), x_y_theta[:, :2])
    assert isinstance(pose.rotation(), SO2) and torch.allclose(pose.rotation().theta(), x_y_theta[:, 2:])
    matrix = pose.to_matrix()
    assert torch.allclose(matrix[:, :2, 2], x_y_theta[:, :2])
    point = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(pose.transform_from(point), (matrix[:, :2, :2] @ point[..., None])[..., 0]
                          + x_y_theta[:, :2])
    with pytest.raises(ValueError, match=r"SE2 'pose': x_y_theta must have shape \(B, 3\)"):
        SE2(x_y_theta=torch.zeros(2, 4), name="pose")


def test_so3_matches_scipy():
    generator = torch.Generator().manual_seed(0)
    tangent = tangents(SO3, 32, generator)
    rotation = SO3.exp_map(tangent)
    reference = Rotation.from_rotvec(tangent.numpy())
    assert np.allclose(rotation.tensor.numpy(), reference.as_matrix(), atol=1e-12)
    xyzw = reference.as_quat()  # scipy: scalar last
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    wxyz *= np.where(wxyz[:, :1] < 0, -1.0, 1.0)
    assert np.allclose(rotation.to_quaternion().numpy(), wxyz, atol=1e-12)
    inside = tangent.norm(dim=1) < math.pi - 1e-9
    assert np.allclose(rotation.log_map().numpy()[inside.numpy()], reference.as_rotvec()[inside.numpy()],
                       atol=1e-9)


def test_quaternion_round_trip_and_shepperd_branches():
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    # rotations by pi about each axis exercise every branch of the matrix-to-quaternion map
    q[:4] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    q = q / q.norm(dim=1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    rotation = SO3(quaternion=q, name="R")
    assert torch.allclose(rotation.to_quaternion(), q, atol=1e-12)
    assert torch.allclose(SO3(quaternion=-q).tensor, rotation.tensor, atol=1e-15)
    expected = Rotation.from_quat(torch.cat([q[:, 1:], q[:, :1]], dim=1).numpy()).as_matrix()
    assert np.allclose(rotation.tensor.numpy(), expected, atol=1e-12)
    with pytest.raises(ValueError, match=r"SO3 'R': quaternion 0 is not a unit quaternion \(norm 2"):
        SO3(quaternion=2 * q, name="R")
    with pytest.raises(ValueError, match=r"quaternion must have shape \(B, 4\)"):
        SO3(quaternion=q[:, :3], name="R")
    with pytest.raises(ValueError, match="give one of tensor, matrix, quaternion"):
        SO3(matrix=rotation.tensor, quaternion=q)


def test_so3_from_matrix_checks_orthonormality_and_det():
    rotation = SO3.rand(3, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(SO3(matrix=rotation.tensor).tensor, rotation.tensor)
    reflection = rotation.tensor.clone()
    reflection[2] = -reflection[2]
    with pytest.raises(ValueError, match=r"SO3 'R': batch element 2 is not a valid SO3"):
        SO3(matrix=reflection, name="R")


def test_se3_constructors():
    generator = torch.Generator().manual_seed(3)
    pose = SE3.rand(5, generator, dtype=torch.float64)
    homogeneous = pose.to_matrix()
    assert homogeneous.shape == (5, 4, 4)
    assert torch.equal(SE3(matrix=homogeneous).tensor, pose.tensor)
    assert torch.equal(SE3(homogeneous).tensor, pose.tensor)  # (B, 4, 4) as tensor too
    assert torch.equal(SE3(matrix=pose.tensor).tensor, pose.tensor)
    x_y_z_quaternion = pose.x_y_z_quaternion()
    assert x_y_z_quaternion.shape == (5, 7)
    assert torch.allclose(SE3(x_y_z_quaternion=x_y_z_quaternion).tensor, pose.tensor, atol=1e-12)
    assert torch.allclose(pose.translation(), homogeneous[:, :3, 3])
    assert isinstance(pose.rotation(), SO3) and torch.equal(pose.rotation().tensor, homogeneous[:, :3, :3])
    bad = homogeneous.clone()
    bad[1, 3, 0] = 0.5
    with pytest.raises(ValueError, match=r"SE3 'T': matrix 1 has last row \[0.5, 0.0, 0.0, 1.0\]"):
        SE3(matrix=bad, name="T")
    with pytest.raises(ValueError, match=r"SE3 'T': matrix must have shape \(B, 3, 4\) or \(B, 4, 4\)"):
        SE3(matrix=torch.zeros(2, 3, 3), name="T")
    with pytest.raises(ValueError, match=r"x_y_z_quaternion must have shape \(B, 7\)"):
        SE3(x_y_z_quaternion=torch.zeros(2, 6), name="T")


def test_points_as_variables_keep_their_kind():
    pose = SE3.rand(2, torch.Generator().manual_seed(4), dtype=torch.float64)
    point = nlls.Point3(tensor=torch.randn(2, 3, dtype=torch.float64), name="landmark")
    moved = pose.transform_from(point)
    assert isinstance(moved, nlls.Point3) and moved.name != "landmark"
    assert torch.allclose(pose.transform_to(moved).tensor, point.tensor)
    rotation = pose.rotation()
    assert torch.allclose(rotation.unrotate(rotation.rotate(point.tensor)), point.tensor)
    with pytest.raises(ValueError, match=r"transform_from expects points of shape \(B, 3\)"):
        pose.transform_from(torch.zeros(2, 2))
    planar = SO2(theta=torch.tensor([[0.5]]))
    assert torch.allclose(planar.unrotate(planar.rotate(torch.ones(1, 2))), torch.ones(1, 2))


def test_exports():
    for name in ("SO2", "SE2", "SO3", "SE3", "LieGroup", "Between", "Difference",
                 "RobustCostFunction", "HuberLoss", "CauchyLoss"):
        assert name in nlls.__all__ and hasattr(nlls, name)
    assert issubclass(nlls.SE3, nlls.Manifold)
