"""TORO pose graphs: ``VERTEX2``/``EDGE2`` (2-D) and ``VERTEX3``/``EDGE3`` (3-D).

Records, one per line::

    VERTEX2 id x y theta
    EDGE2 i j dx dy dtheta  a b c d e f
    VERTEX3 id x y z roll pitch yaw
    EDGE3 i j x y z roll pitch yaw  I11 I12 ... I16 I22 ... I66   (rotation first, see below)
    EQUIV i j                                   (skipped, as GTSAM does)

The 2-D information matrix is listed in TORO's own order, ``a = xx, b = xy, c = yy,
d = theta theta, e = x theta, f = y theta`` (GTSAM's ``NoiseFormatTORO``). Files whose ``EDGE2``
lists it in g2o's order (``xx xy xt yy yt tt``) are detected when only that order gives positive
definite matrices (``information_order="auto"``), or read so with ``information_order="g2o"``.

3-D rotations are ``Rz(yaw) Ry(pitch) Rx(roll)``. The 3-D information matrix is the upper
triangle, row by row, in the order ``roll pitch yaw x y z``: rotation first, although the pose
fields before it list the translation first. This is TORO's own reading: its 3-D loader
(``TreePoseGraph3::load``) fills ``m[i][j]`` for ``i <= j`` in file order, its pose vector
(``Pose3`` in ``transformation3.h``) holds ``roll, pitch, yaw, x, y, z`` at indices 0 to 5, and
an edge's error is ``p^T m p`` with ``p`` that vector of the pose difference. GTSAM 4.3's
``load3D`` reads the 21 numbers the same way (its ``Pose3`` tangent lists rotation first), so both
report the same cost. nlls's ``SE3`` tangent lists translation first, so the two blocks are
swapped on reading (the rotation block is taken as the tangent's, to first order the same near
the measurement); :meth:`~nlls.io.PoseGraph.write_g2o` then writes g2o's translation-first
matrix. ``information_order`` concerns 2-D files only.

A file without ``VERTEX2``/``VERTEX3`` records gets its initial poses from the edges
(``initialization``, see :func:`~nlls.io.read_g2o`).
"""
from __future__ import annotations

import numpy as np
import torch

from ._text import PathLike, Records, Source
from .pose_graph import PoseGraph
from .pose_graph_reader import (
    PoseGraphFormat,
    RecordLayout,
    information_fields,
    read_pose_graph,
    se2_poses,
    se3_data,
    toro_information_2d,
    upper_triangle_information,
)


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


def _rotation_first_information(numbers: np.ndarray) -> np.ndarray:
    """``(n, 6, 6)`` tangent-order (translation first) matrices from the upper triangles ``(n, 21)``
    of rotation-first ones (``roll pitch yaw x y z``, TORO's and GTSAM's order)."""
    matrices = upper_triangle_information(6)(numbers)
    swap = [3, 4, 5, 0, 1, 2]
    return np.ascontiguousarray(matrices[:, swap][:, :, swap])


_POSE_3D = ("x", "y", "z", "roll", "pitch", "yaw")
FORMAT = PoseGraphFormat("TORO", {
    2: RecordLayout("VERTEX2", "EDGE2", ("x", "y", "theta"), ("dx", "dy", "dtheta"),
                    ("a", "b", "c", "d", "e", "f"), se2_poses, toro_information_2d),
    3: RecordLayout("VERTEX3", "EDGE3", _POSE_3D, _POSE_3D, information_fields(6), _rpy_poses,
                    _rotation_first_information),
}, ignored=("EQUIV",), information_order="toro")
TAGS_2D, TAGS_3D = FORMAT.layouts[2].tags, FORMAT.layouts[3].tags
TAGS = FORMAT.pose_tags
IGNORED = FORMAT.ignored


def read_toro(path: PathLike, *, initialization: str = "spanning_tree",
              information_order: str = "auto") -> PoseGraph:
    """Read the 2-D or 3-D pose graph in TORO format in file ``path``: a
    :class:`~nlls.io.PoseGraph`, whose ``.objective()`` builds the problem.

    ``initialization`` and ``information_order`` are as in :func:`~nlls.io.read_g2o`, the
    declared order being TORO's (``"toro"``). Malformed files raise as there (``FormatError``
    naming file and line)."""
    return read_source(Source(path), initialization=initialization,
                       information_order=information_order)


def read_source(source: Source, initialization: str = "spanning_tree",
                information_order: str = "auto") -> PoseGraph:
    """:func:`read_toro` of a file already split into records."""
    return read_pose_graph(source, FORMAT, initialization, information_order)
