"""TORO pose graphs: ``VERTEX2``/``EDGE2`` (2-D) and ``VERTEX3``/``EDGE3`` (3-D).

Records, one per line::

    VERTEX2 id x y theta
    EDGE2 i j dx dy dtheta  a b c d e f
    VERTEX3 id x y z roll pitch yaw
    EDGE3 i j x y z roll pitch yaw  I11 I12 ... I16 I22 ... I66
    EQUIV i j                                   (skipped, as GTSAM does)

The 2-D information matrix is listed in TORO's own order, ``a = xx, b = xy, c = yy,
d = theta theta, e = x theta, f = y theta`` (GTSAM's ``NoiseFormatTORO``; g2o's order would give
another matrix). 3-D rotations are ``Rz(yaw) Ry(pitch) Rx(roll)``, and the 3-D information matrix
is the upper triangle, row by row, in the order of the pose's fields ``x y z roll pitch yaw``:
translation first, like nlls's ``SE3`` tangent (its rotation block is taken as the tangent's, to
first order the same near the measurement). GTSAM 4.3's ``load3D`` reads those 21 numbers in its
own rotation-first order instead, so its cost differs from ours when the translation and rotation
blocks differ; no TORO 3-D file with a reference cost is at hand to settle it.
"""
from __future__ import annotations

import numpy as np
import torch

from ._text import PathLike, Records, Source
from .pose_graph import (
    PoseGraph,
    PoseGraphFormat,
    RecordLayout,
    information_fields,
    read_pose_graph,
    se2_poses,
    se3_data,
    upper_triangle_information,
)


def _toro_information_2d(abcdef: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` information matrices from TORO's ``a b c d e f`` ``(n, 6)``."""
    a, b, c, d, e, f = abcdef.T
    return np.stack([np.stack([a, b, e], -1), np.stack([b, c, f], -1), np.stack([e, f, d], -1)], -2)


def _rpy_rotations(rpy: np.ndarray) -> np.ndarray:
    """``Rz(yaw) Ry(pitch) Rx(roll)`` ``(n, 3, 3)`` from ``(n, 3)`` roll, pitch, yaw."""
    (cr, cp, cy), (sr, sp, sy) = np.cos(rpy).T, np.sin(rpy).T
    return np.stack([
        np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
        np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
        np.stack([-sp, cp * sr, cp * cr], -1),
    ], -2)


def _rpy_poses(records: Records, numbers: np.ndarray) -> torch.Tensor:
    """``x y z roll pitch yaw`` ``(n, 6)`` to ``SE3`` data."""
    return se3_data(numbers[:, :3], _rpy_rotations(numbers[:, 3:]))


_POSE_3D = ("x", "y", "z", "roll", "pitch", "yaw")
FORMAT = PoseGraphFormat("TORO", {
    2: RecordLayout("VERTEX2", "EDGE2", ("x", "y", "theta"), ("dx", "dy", "dtheta"),
                    ("a", "b", "c", "d", "e", "f"), se2_poses, _toro_information_2d),
    3: RecordLayout("VERTEX3", "EDGE3", _POSE_3D, _POSE_3D, information_fields(6), _rpy_poses,
                    upper_triangle_information(6)),
}, ignored=("EQUIV",))
TAGS_2D, TAGS_3D = FORMAT.layouts[2].tags, FORMAT.layouts[3].tags
TAGS = FORMAT.pose_tags
IGNORED = FORMAT.ignored


def read_toro(path: PathLike) -> PoseGraph:
    """Read the 2-D or 3-D pose graph in TORO format in file ``path``: a
    :class:`~nlls.io.PoseGraph`, whose ``.objective()`` builds the problem. Malformed files raise
    as in :func:`~nlls.io.read_g2o` (``FormatError`` naming file and line)."""
    return read_source(Source(path))


def read_source(source: Source) -> PoseGraph:
    """:func:`read_toro` of a file already split into records."""
    return read_pose_graph(source, FORMAT)
