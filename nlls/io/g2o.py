"""g2o pose graphs: ``VERTEX_SE2``/``EDGE_SE2`` (2-D) and ``VERTEX_SE3:QUAT``/``EDGE_SE3:QUAT``
(3-D).

Records, one per line (fields separated by spaces)::

    VERTEX_SE2 id x y theta
    EDGE_SE2 i j dx dy dtheta  I11 I12 I13 I22 I23 I33
    VERTEX_SE3:QUAT id x y z qx qy qz qw
    EDGE_SE3:QUAT i j x y z qx qy qz qw  I11 I12 ... I16 I22 ... I66
    FIX id [id ...]

An edge's information matrix is given by its upper triangle, row by row, in g2o's tangent order:
``x, y, theta`` in 2-D and ``tx, ty, tz, rx, ry, rz`` (translation first) in 3-D, which is the
order of nlls's ``SE2``/``SE3`` tangents, so the matrix is used as it is. (GTSAM, whose ``Pose3``
tangent lists rotation first, swaps the blocks; the costs agree.) Quaternions are normalized, as
GTSAM does. ``FIX`` records are kept (and written back) but add nothing to the objective.
"""
from __future__ import annotations

import numpy as np

from ._text import PathLike, Source, upper_triangle_matrices
from .pose_graph import PoseGraph, build, quaternion_rotations, se2_data, se3_data

TAGS_2D = ("VERTEX_SE2", "EDGE_SE2")
TAGS_3D = ("VERTEX_SE3:QUAT", "EDGE_SE3:QUAT")
TAGS = TAGS_2D + TAGS_3D + ("FIX",)

_INFO_2D = tuple(f"I{r + 1}{c + 1}" for r, c in zip(*np.triu_indices(3)))
_INFO_3D = tuple(f"I{r + 1}{c + 1}" for r, c in zip(*np.triu_indices(6)))


def read_g2o(path: PathLike) -> PoseGraph:
    """Read a 2-D or 3-D pose graph in g2o format.

    Args:
        path: the file.

    Returns:
        The :class:`~nlls.io.PoseGraph`; ``.objective()`` builds the problem.

    Raises:
        FormatError: (a ``ValueError``) naming file and line: an unknown tag, a wrong number of
            fields, a non-number, 2-D and 3-D records mixed, a repeated vertex id, an edge to an
            unknown vertex, an information matrix that is not positive definite, no edges, an
            empty file; ``MissingFileError`` (also a ``FileNotFoundError``) for a missing file.
    """
    return _read(Source(path))


def _read(source: Source) -> PoseGraph:
    source.require_records(" or ".join(TAGS_2D + TAGS_3D))
    records = source.by_tag(TAGS, describe="g2o")
    counts = {tag: len(records[tag]) for tag in TAGS_2D + TAGS_3D}
    has_2d = any(counts[t] for t in TAGS_2D)
    has_3d = any(counts[t] for t in TAGS_3D)
    if has_2d and has_3d:
        first_3d = min(int(records[t].lines[0]) for t in TAGS_3D if counts[t])
        first_2d = min(int(records[t].lines[0]) for t in TAGS_2D if counts[t])
        raise source.error(max(first_2d, first_3d), "mixes 2-D (VERTEX_SE2/EDGE_SE2) and 3-D "
                           "(VERTEX_SE3:QUAT/EDGE_SE3:QUAT) records")
    fixed = [(int(line), i) for line, row in zip(records["FIX"].lines, records["FIX"].rows)
             for i in _fix_ids(source, int(line), row)]
    if has_3d:
        vertices, edges = records["VERTEX_SE3:QUAT"], records["EDGE_SE3:QUAT"]
        ids, v = vertices.table(("id", "x", "y", "z", "qx", "qy", "qz", "qw"), ints=1)
        pairs, e = edges.table(("i", "j", "x", "y", "z", "qx", "qy", "qz", "qw") + _INFO_3D, ints=2)
        poses = se3_data(v[:, :3], quaternion_rotations(vertices, v[:, 3:]))
        measurements = se3_data(e[:, :3], quaternion_rotations(edges, e[:, 3:7]))
        return build(source, 3, (vertices, ids[:, 0], poses),
                     (edges, pairs, measurements, upper_triangle_matrices(e[:, 7:], 6)), fixed)
    vertices, edges = records["VERTEX_SE2"], records["EDGE_SE2"]
    ids, v = vertices.table(("id", "x", "y", "theta"), ints=1)
    pairs, e = edges.table(("i", "j", "dx", "dy", "dtheta") + _INFO_2D, ints=2)
    return build(source, 2, (vertices, ids[:, 0], se2_data(v)),
                 (edges, pairs, se2_data(e[:, :3]), upper_triangle_matrices(e[:, 3:], 3)), fixed)


def _fix_ids(source: Source, line: int, row):
    if not row:
        raise source.error(line, "FIX needs at least one vertex id")
    try:
        return [int(word) for word in row]
    except ValueError:
        raise source.error(line, f"FIX: vertex ids must be integers, got {' '.join(row)!r}"
                           ) from None
