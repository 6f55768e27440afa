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

An ``EDGE_SE2`` file written in TORO's order (``xx xy yy tt xt yt``) is detected when only that
order gives positive definite matrices (``information_order="auto"``), and a file without vertex
records gets its poses from the edges (``initialization``).
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
    quaternion_rotations,
    read_pose_graph,
    se2_poses,
    se3_data,
    upper_triangle_information,
)


def _quaternion_poses(records: Records, numbers: np.ndarray) -> torch.Tensor:
    """``x y z qx qy qz qw`` ``(n, 7)`` to ``SE3`` data."""
    return se3_data(numbers[:, :3], quaternion_rotations(records, numbers[:, 3:]))


def _fixed(source: Source, records):
    """``(line, id)`` of every vertex a ``FIX`` record names."""
    fixed = []
    for line, row in zip(records["FIX"].lines.tolist(), records["FIX"].rows):
        if not row:
            raise source.error(line, "FIX needs at least one vertex id")
        try:
            fixed += [(line, int(word)) for word in row]
        except ValueError:
            raise source.error(line, f"FIX: vertex ids must be integers, got {' '.join(row)!r}"
                               ) from None
    return fixed


_POSE_3D = ("x", "y", "z", "qx", "qy", "qz", "qw")
FORMAT = PoseGraphFormat("g2o", {
    2: RecordLayout("VERTEX_SE2", "EDGE_SE2", ("x", "y", "theta"), ("dx", "dy", "dtheta"),
                    information_fields(3), se2_poses, upper_triangle_information(3)),
    3: RecordLayout("VERTEX_SE3:QUAT", "EDGE_SE3:QUAT", _POSE_3D, _POSE_3D, information_fields(6),
                    _quaternion_poses, upper_triangle_information(6)),
}, extra=("FIX",), fixed=_fixed, information_order="g2o")
TAGS_2D, TAGS_3D = FORMAT.layouts[2].tags, FORMAT.layouts[3].tags
TAGS = FORMAT.pose_tags + FORMAT.extra


def read_g2o(path: PathLike, *, initialization: str = "spanning_tree",
             information_order: str = "auto") -> PoseGraph:
    """Read a 2-D or 3-D pose graph in g2o format.

    Args:
        path: the file.
        initialization: how a file without vertex records gets its initial poses: composed
            from the edges along a breadth-first ``"spanning_tree"`` (the default) or by
            ``"chain"``-ing them in file order as GTSAM does (:mod:`nlls.io.initialization`).
        information_order: ``EDGE_SE2``'s information fields: ``"auto"`` (g2o's order unless
            only TORO's gives positive definite matrices, then TORO's, with a note),
            ``"g2o"`` or ``"toro"``. The graph's ``information_order``, ``initialization`` and
            ``notes`` say what was used.

    Returns:
        The :class:`~nlls.io.PoseGraph`; ``.objective()`` builds the problem.

    Raises:
        FormatError: (a ``ValueError``) naming file and line: an unknown tag, a wrong number of
            fields, a non-number, 2-D and 3-D records mixed, a repeated vertex id, an edge to an
            unknown vertex, an information matrix that is not positive definite, no edges, an
            empty file; ``MissingFileError`` (also a ``FileNotFoundError``) for a missing file.
        ValueError: an unknown ``initialization`` or ``information_order``.
    """
    return read_source(Source(path), initialization=initialization,
                       information_order=information_order)


def read_source(source: Source, initialization: str = "spanning_tree",
                information_order: str = "auto") -> PoseGraph:
    """:func:`read_g2o` of a file already split into records."""
    return read_pose_graph(source, FORMAT, initialization, information_order)
