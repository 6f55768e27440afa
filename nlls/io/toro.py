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

from ._text import PathLike, Source, upper_triangle_matrices
from .pose_graph import PoseGraph, build, se2_data, se3_data

TAGS_2D = ("VERTEX2", "EDGE2")
TAGS_3D = ("VERTEX3", "EDGE3")
TAGS = TAGS_2D + TAGS_3D
IGNORED = ("EQUIV",)

_INFO_3D = tuple(f"I{r + 1}{c + 1}" for r, c in zip(*np.triu_indices(6)))


def read_toro(path: PathLike) -> PoseGraph:
    """Read a 2-D or 3-D pose graph in TORO format.

    Args:
        path: the file.

    Returns:
        The :class:`~nlls.io.PoseGraph`; ``.objective()`` builds the problem.

    Raises:
        FormatError: (a ``ValueError``) naming file and line, as :func:`~nlls.io.read_g2o`.
    """
    return _read(Source(path))


def _read(source: Source) -> PoseGraph:
    source.require_records(" or ".join(TAGS))
    records = source.by_tag(TAGS, IGNORED, describe="TORO")
    has_2d = any(len(records[t]) for t in TAGS_2D)
    has_3d = any(len(records[t]) for t in TAGS_3D)
    if has_2d and has_3d:
        first = [min(int(records[t].lines[0]) for t in tags if len(records[t]))
                 for tags in (TAGS_2D, TAGS_3D)]
        raise source.error(max(first), "mixes 2-D (VERTEX2/EDGE2) and 3-D (VERTEX3/EDGE3) records")
    if has_3d:
        vertices, edges = records["VERTEX3"], records["EDGE3"]
        ids, v = vertices.table(("id", "x", "y", "z", "roll", "pitch", "yaw"), ints=1)
        pairs, e = edges.table(("i", "j", "x", "y", "z", "roll", "pitch", "yaw") + _INFO_3D, ints=2)
        return build(source, 3, (vertices, ids[:, 0], se3_data(v[:, :3], _rpy_rotations(v[:, 3:]))),
                     (edges, pairs, se3_data(e[:, :3], _rpy_rotations(e[:, 3:6])),
                      upper_triangle_matrices(e[:, 6:], 6)), ())
    vertices, edges = records["VERTEX2"], records["EDGE2"]
    ids, v = vertices.table(("id", "x", "y", "theta"), ints=1)
    pairs, e = edges.table(("i", "j", "dx", "dy", "dtheta", "a", "b", "c", "d", "e", "f"), ints=2)
    return build(source, 2, (vertices, ids[:, 0], se2_data(v)),
                 (edges, pairs, se2_data(e[:, :3]), _toro_information_2d(e[:, 3:])), ())


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
