"""Synthetic bundle adjustment scenes written as BAL files, deterministic by seed.

A scene is ``C`` cameras on a circle of radius 30 around a cloud of ``P`` points (a ball of
radius 10 at the origin, flattened in height), each camera at a height within +-3 of the
circle's plane, looking at a point near the origin, with BAL's camera model (``nlls.io.bal``;
``f`` about 500 pixels, small radial distortion ``k1``, ``k2``). Each point is observed by the
cameras it is in front of and inside the image of (1,000 x 1,000 pixels), of which it keeps
``2 + Poisson(3)`` chosen at random (about 5 per point, as in the BAL scenes of the issue:
150,049 observations of 30,000 points). Measurements are the exact projections plus Gaussian
noise of 1 pixel.

The start written to the file is the truth perturbed as an incremental reconstruction would
leave it: rotations by 0.01 rad, camera centres by 0.1 (in scene units of a 20-wide cloud),
focal lengths by 1 %, distortion by 0.005 (``k1``) and 0.0005 (``k2``), points by 0.1; so the
start is a few pixels off and the solvers converge in a handful of iterations.

    from problems_bal_synthetic import scene_file, SCENES
    path = scene_file(20, 5000)          # written once into bench/results/bal/, then reused
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bal"
#: the scenes of the benchmark: name -> (cameras, points)
SCENES: Dict[str, Tuple[int, int]] = {"bal_20x5000": (20, 5000), "bal_60x30000": (60, 30000)}
IMAGE_HALF_SIZE = 500.0  # pixels
PIXEL_NOISE = 1.0


def _rotation_vector(matrix: np.ndarray) -> np.ndarray:
    """The Rodrigues vector of a rotation matrix (angles below pi)."""
    angle = np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))
    axis = np.array([matrix[2, 1] - matrix[1, 2], matrix[0, 2] - matrix[2, 0], matrix[1, 0] - matrix[0, 1]])
    if angle < 1e-12:
        return 0.5 * axis
    return angle * axis / (2.0 * np.sin(angle))


def _rotation_matrix(w: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(w))
    if angle < 1e-15:
        return np.eye(3)
    k = w / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def project(cameras: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """BAL's camera model: pixels ``(N, 2)`` and depth along the viewing direction ``-P_z``
    ``(N,)`` of ``points (N, 3)`` seen by ``cameras (N, 9)``."""
    w = cameras[:, :3]
    angle = np.linalg.norm(w, axis=1, keepdims=True)
    safe = np.where(angle > 1e-15, angle, 1.0)
    k = w / safe
    cos, sin = np.cos(angle), np.sin(angle)
    rotated = points * cos + np.cross(k, points) * sin + k * (k * points).sum(1, keepdims=True) * (1 - cos)
    in_camera = rotated + cameras[:, 3:6]
    p = -in_camera[:, :2] / in_camera[:, 2:]
    r2 = (p * p).sum(1, keepdims=True)
    distortion = 1.0 + r2 * (cameras[:, 7:8] + cameras[:, 8:9] * r2)
    return cameras[:, 6:7] * distortion * p, -in_camera[:, 2]


def make_scene(num_cameras: int, num_points: int, seed: int = 0):
    """``(cameras (C, 9) start, points (P, 3) start, observations (O, 2), measurements (O, 2),
    truth (cameras, points))`` of one scene."""
    rng = np.random.default_rng([seed, num_cameras, num_points])
    direction = rng.normal(size=(num_points, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    points = 10.0 * direction * rng.uniform(0, 1, size=(num_points, 1)) ** (1 / 3)
    points[:, 2] *= 0.5
    cameras = np.zeros((num_cameras, 9))
    for i in range(num_cameras):
        angle = 2 * np.pi * i / num_cameras + rng.uniform(-0.05, 0.05)
        centre = np.array([30 * np.cos(angle), 30 * np.sin(angle), rng.uniform(-3, 3)])
        forward = rng.normal(scale=1.0, size=3) - centre
        forward /= np.linalg.norm(forward)
        z_axis = -forward  # BAL cameras look along -z
        x_axis = np.cross([0.0, 0.0, 1.0], z_axis)
        x_axis /= np.linalg.norm(x_axis)
        rotation = np.stack([x_axis, np.cross(z_axis, x_axis), z_axis])
        cameras[i, :3] = _rotation_vector(rotation)
        cameras[i, 3:6] = -rotation @ centre
        cameras[i, 6] = 500.0 * rng.uniform(0.9, 1.1)
        cameras[i, 7:9] = rng.normal(scale=[0.02, 0.002])
    # visibility: in front, inside the image
    cam_index = np.repeat(np.arange(num_cameras), num_points)
    point_index = np.tile(np.arange(num_points), num_cameras)
    pixels, depth = project(cameras[cam_index], points[point_index])
    visible = (depth > 1.0) & (np.abs(pixels) < IMAGE_HALF_SIZE).all(1)
    visible = visible.reshape(num_cameras, num_points)
    wanted = 2 + rng.poisson(3.0, size=num_points)
    scores = np.where(visible, rng.uniform(size=visible.shape), -1.0)
    rank = np.argsort(np.argsort(-scores, axis=0), axis=0)  # 0 = the best-scored camera
    chosen = visible & (rank < wanted[None, :])
    keep = chosen.sum(0) >= 2
    cams, pts = np.nonzero(chosen[:, keep])
    order = np.lexsort((cams, pts))  # observations point by point, as BAL files list them
    cams, pts = cams[order], pts[order]
    points = points[keep]
    measurements, _ = project(cameras[cams], points[pts])
    measurements += rng.normal(scale=PIXEL_NOISE, size=measurements.shape)
    start_cameras = cameras.copy()
    for i in range(num_cameras):
        rotation = _rotation_matrix(rng.normal(scale=0.01, size=3)) @ _rotation_matrix(cameras[i, :3])
        centre = -_rotation_matrix(cameras[i, :3]).T @ cameras[i, 3:6] + rng.normal(scale=0.1, size=3)
        start_cameras[i, :3] = _rotation_vector(rotation)
        start_cameras[i, 3:6] = -rotation @ centre
    start_cameras[:, 6] *= 1.0 + rng.normal(scale=0.01, size=num_cameras)
    start_cameras[:, 7] += rng.normal(scale=0.005, size=num_cameras)
    start_cameras[:, 8] += rng.normal(scale=0.0005, size=num_cameras)
    start_points = points + rng.normal(scale=0.1, size=points.shape)
    return start_cameras, start_points, np.stack([cams, pts], 1), measurements, (cameras, points)


def write_bal(path: os.PathLike, cameras: np.ndarray, points: np.ndarray,
              observations: np.ndarray, measurements: np.ndarray) -> None:
    """A BAL text file (numbers with 17 significant digits: read back exactly)."""
    lines = [f"{len(cameras)} {len(points)} {len(observations)}"]
    lines += [f"{c} {p} {u:.17g} {v:.17g}" for (c, p), (u, v) in zip(observations.tolist(), measurements.tolist())]
    lines += [f"{x:.17g}" for x in np.concatenate([cameras.reshape(-1), points.reshape(-1)]).tolist()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)


def scene_file(num_cameras: int, num_points: int, seed: int = 0,
               directory: os.PathLike = RESULTS) -> Path:
    """The BAL file of a scene, written on first use (then reused: the scene is deterministic)."""
    path = Path(directory) / f"synthetic-{num_cameras}-{num_points}-seed{seed}.txt"
    if not path.exists():
        cameras, points, observations, measurements, _ = make_scene(num_cameras, num_points, seed)
        write_bal(path, cameras, points, observations, measurements)
    return path

