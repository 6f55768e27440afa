"""The reader skeleton the pose-graph formats share (g2o, TORO): records to a checked
:class:`~nlls.io.PoseGraph`, every error naming its file and line.

Two things a file may leave open are settled here, and reported on the graph:

* **Files without vertex records** (several real datasets list only edges): the poses are
  composed from the edges, by a breadth-first spanning tree (``initialization="spanning_tree"``,
  the default) or GTSAM's chaining rule (``"chain"``); see :mod:`nlls.io.initialization`. A file
  with vertex records must define every vertex its edges name.
* **The order of 2-D information fields.** TORO's ``EDGE2`` lists ``xx xy yy tt xt yt``, g2o's
  ``EDGE_SE2`` ``xx xy xt yy yt tt``; files written by one tool in the other's order exist. With
  ``information_order="auto"`` (the default) the format's own order is tried first; if some
  matrix is not positive definite in it but every one is in the other order, the other is used
  and a note says so. ``"toro"`` or ``"g2o"`` force an order. 3-D records have one order
  (translation first) in both formats.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry.so3 import quaternion_to_matrix
from ._text import Records, Source, upper_triangle_matrices
from .initialization import INITIALIZATIONS, initial_poses
from .pose_graph import PoseGraph, PoseGraphEdges

INFORMATION_ORDERS = ("auto", "toro", "g2o")


# ---- helpers the readers share -------------------------------------------------------------
def se2_data(x_y_theta: np.ndarray) -> torch.Tensor:
    """``(n, 3)`` ``x, y, theta`` to ``SE2`` data ``(n, 4)``."""
    theta = x_y_theta[:, 2]
    return torch.from_numpy(np.stack([x_y_theta[:, 0], x_y_theta[:, 1], np.cos(theta),
                                      np.sin(theta)], axis=1))


def se2_poses(records: Records, x_y_theta: np.ndarray) -> torch.Tensor:
    """:func:`se2_data` of records' numbers (the ``poses`` of a 2-D :class:`RecordLayout`)."""
    return se2_data(x_y_theta)


def se3_data(translation: np.ndarray, rotation: np.ndarray) -> torch.Tensor:
    """``(n, 3)`` translations and ``(n, 3, 3)`` rotations to ``SE3`` data ``(n, 3, 4)``."""
    return torch.from_numpy(np.concatenate([rotation, translation[:, :, None]], axis=2))


def information_fields(dof: int) -> Tuple[str, ...]:
    """``I11 I12 ... I{dof}{dof}``: the upper triangle of an information matrix, row by row."""
    return tuple(f"I{r + 1}{c + 1}" for r, c in zip(*np.triu_indices(dof)))


def upper_triangle_information(dof: int) -> Callable[[np.ndarray], np.ndarray]:
    """The ``information`` of a layout that lists :func:`information_fields` ``(dof)``."""
    return functools.partial(upper_triangle_matrices, dim=dof)


def quaternion_rotations(records: Records, q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(n, 3, 3)`` of quaternions ``(n, 4)`` ``qx qy qz qw``, normalized
    (as GTSAM does); a zero quaternion is an error at its line."""
    norm = np.linalg.norm(q_xyzw, axis=1)
    bad = ~(norm > 1e-12)
    if bad.any():
        k = int(np.argmax(bad))
        raise records.source.error(int(records.lines[k]), f"{records.tag}: quaternion "
                                   f"{q_xyzw[k].tolist()} has norm {norm[k]:.3g}, not a rotation")
    q = q_xyzw[:, [3, 0, 1, 2]] / norm[:, None]
    return quaternion_to_matrix(torch.from_numpy(q)).numpy()


def toro_information_2d(abcdef: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` information matrices from TORO's ``a b c d e f`` ``(n, 6)``: ``a = xx,
    b = xy, c = yy, d = theta theta, e = x theta, f = y theta`` (GTSAM's ``NoiseFormatTORO``)."""
    a, b, c, d, e, f = abcdef.T
    return np.stack([np.stack([a, b, e], -1), np.stack([b, c, f], -1), np.stack([e, f, d], -1)], -2)


#: the 2-D information matrices of six numbers, in each order
INFORMATION_2D: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "toro": toro_information_2d, "g2o": functools.partial(upper_triangle_matrices, dim=3)}
_ORDER_NAMES = {"toro": "TORO order (xx xy yy tt xt yt)", "g2o": "g2o order (xx xy xt yy yt tt)"}


def not_positive_definite(information: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: which of the symmetric matrices ``(n, d, d)`` are not positive definite."""
    _, failed = torch.linalg.cholesky_ex(torch.from_numpy(information))
    return (failed != 0).numpy()


def information_2d(edges: Records, numbers: np.ndarray, declared: str,
                   requested: str) -> Tuple[np.ndarray, str, List[str]]:
    """The 2-D information matrices of ``numbers (E, 6)``, the order used and a note.

    Args:
        edges: the edge records (for the note).
        declared: the format's own order, ``"toro"`` or ``"g2o"``.
        requested: ``"auto"`` (the declared order unless only the other one gives positive
            definite matrices throughout), ``"toro"`` or ``"g2o"``.
    """
    order = declared if requested == "auto" else requested
    information = INFORMATION_2D[order](numbers)
    if requested != "auto":
        return information, order, []
    bad = not_positive_definite(information)
    other = "g2o" if declared == "toro" else "toro"
    if not bad.any():
        return information, order, []
    alternative = INFORMATION_2D[other](numbers)
    if not_positive_definite(alternative).any():
        return information, order, []  # neither order: build() names the first bad line
    lines = edges.lines[bad]
    shown = ", ".join(map(str, lines[:3].tolist())) + (", ..." if lines.size > 3 else "")
    note = (f"{edges.tag} information read in {_ORDER_NAMES[other]}: in the format's "
            f"{_ORDER_NAMES[declared]} {lines.size} of {len(edges)} matrices are not positive "
            f"definite (lines {shown}), in {other} order all are (information_order="
            f"'{declared}' keeps the format's order)")
    return alternative, other, [note]


def build(source: Source, dimension: int, vertices: Tuple[Records, np.ndarray, torch.Tensor],
          edges: Tuple[Records, np.ndarray, torch.Tensor, np.ndarray],
          fixed: Sequence[Tuple[int, int]] = (), initialization: str = "spanning_tree",
          information_order: str = "g2o", notes: Sequence[str] = ()) -> PoseGraph:
    """Check a parsed graph and make the :class:`PoseGraph`; every error names its line.

    Args:
        source: the file.
        dimension: 2 or 3.
        vertices: ``(records, ids (N,), poses)``; without records, the poses are composed from
            the edges by ``initialization``.
        edges: ``(records, pairs (E, 2), measurements, information (E, dof, dof))``.
        fixed: ``(line, id)`` of each vertex a ``FIX`` record names.
        initialization: ``"spanning_tree"`` or ``"chain"``, for a file without vertex records.
        information_order: the order the information was read in, kept on the graph.
        notes: what the reader decided so far, kept on the graph.
    """
    vertex_records, ids, poses = vertices
    edge_records, pairs, measurements, information = edges
    notes = list(notes)
    if len(edge_records) == 0:
        raise source.error(max(source.num_lines, 1), f"no {edge_records.tag} records: "
                           "nothing to optimize")
    loops = np.nonzero(pairs[:, 0] == pairs[:, 1])[0]
    if loops.size:
        raise source.error(int(edge_records.lines[loops[0]]), f"{edge_records.tag} from vertex "
                           f"{pairs[loops[0], 0]} to itself")
    source_of_poses = "file"
    if len(vertex_records) == 0:
        ids, poses = initial_poses(pairs, measurements, initialization)
        source_of_poses = initialization
        how = ("a breadth-first spanning tree from the lowest id" if initialization == "spanning_tree"
               else "chaining the edges in file order (GTSAM's rule)")
        notes.append(f"no {vertex_records.tag} records: the {ids.size} initial poses are composed "
                     f"from the {edge_records.tag} measurements by {how}")
    order = np.argsort(ids, kind="stable")
    repeated = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
    if repeated.size:
        first, second = sorted(order[[repeated[0], repeated[0] + 1]])
        raise source.error(int(vertex_records.lines[second]), f"{vertex_records.tag} id "
                           f"{ids[second]} repeats the vertex of line "
                           f"{vertex_records.lines[first]}")
    position = np.minimum(np.searchsorted(ids, pairs, sorter=order), ids.size - 1)
    known = ids[order][position] == pairs
    if not known.all():
        k, side = np.argwhere(~known)[0]
        raise source.error(int(edge_records.lines[k]), f"{edge_records.tag} refers to vertex "
                           f"{pairs[k, side]}, which no {vertex_records.tag} record defines")
    known_ids = set(ids.tolist())
    for line, i in fixed:
        if i not in known_ids:
            raise source.error(line, f"FIX names vertex {i}, which no {vertex_records.tag} "
                               "record defines")
    bad = not_positive_definite(information)
    if bad.any():
        k = int(np.argmax(bad))
        eigenvalues = np.linalg.eigvalsh(information[k])
        raise source.error(int(edge_records.lines[k]), f"{edge_records.tag}: information matrix "
                           f"is not positive definite (eigenvalues "
                           f"{np.round(eigenvalues, 6).tolist()})")
    return PoseGraph(dimension, ids, poses,
                     PoseGraphEdges(pairs, measurements, torch.from_numpy(information)),
                     fixed=[i for _, i in fixed], path=source.path, initialization=source_of_poses,
                     information_order=information_order, notes=notes)


# ---- the reader skeleton the pose-graph formats share ----------------------------------------
@dataclass(frozen=True)
class RecordLayout:
    """How a format writes the vertices and edges of one dimension.

    Attributes:
        vertex_tag, edge_tag: the record tags (``VERTEX_SE2``, ``EDGE_SE2``).
        vertex_fields: the names of a vertex's pose fields, after its id.
        edge_fields: the names of an edge's measurement fields, after its two vertex ids.
        information_fields: the names of the information fields that follow them.
        poses: ``(records, numbers (n, len(fields)))`` to pose data, for vertices and edges.
        information: numbers ``(n, len(information_fields))`` to matrices ``(n, dof, dof)``
            in tangent order (in 2-D the format's ``information_order`` decides instead).
    """

    vertex_tag: str
    edge_tag: str
    vertex_fields: Tuple[str, ...]
    edge_fields: Tuple[str, ...]
    information_fields: Tuple[str, ...]
    poses: Callable[[Records, np.ndarray], torch.Tensor]
    information: Callable[[np.ndarray], np.ndarray]

    @property
    def tags(self) -> Tuple[str, str]:
        return self.vertex_tag, self.edge_tag


@dataclass(frozen=True)
class PoseGraphFormat:
    """A pose-graph file format: its name, its 2-D and 3-D layouts and its other records.

    Attributes:
        name: for messages (``"g2o"``).
        layouts: ``{2: RecordLayout, 3: RecordLayout}``.
        ignored: tags whose records are skipped.
        extra: further tags, passed to ``fixed``.
        fixed: ``(source, records by tag)`` to the ``(line, id)`` of every fixed vertex.
        information_order: the order of its 2-D information fields, ``"toro"`` or ``"g2o"``.
    """

    name: str
    layouts: Dict[int, RecordLayout]
    ignored: Tuple[str, ...] = ()
    extra: Tuple[str, ...] = ()
    fixed: Optional[Callable[[Source, Dict[str, Records]], Sequence[Tuple[int, int]]]] = None
    information_order: str = "g2o"

    @property
    def pose_tags(self) -> Tuple[str, ...]:
        return self.layouts[2].tags + self.layouts[3].tags


def read_pose_graph(source: Source, file_format: PoseGraphFormat,
                    initialization: str = "spanning_tree",
                    information_order: str = "auto") -> PoseGraph:
    """Read a 2-D or 3-D pose graph laid out as ``file_format`` says; every error names its line.

    Args:
        source: the file.
        file_format: its layout.
        initialization: how a file without vertex records gets its poses (module docs).
        information_order: ``"auto"``, ``"toro"`` or ``"g2o"``: the order of 2-D information
            fields (module docs).

    Raises:
        ValueError: an unknown ``initialization`` or ``information_order``.
        FormatError: an unknown tag, a wrong number of fields, a non-number, 2-D and 3-D records
            mixed, and what :func:`build` checks.
    """
    reader = f"read_{file_format.name.lower()}"
    for argument, value, choices in (("initialization", initialization, INITIALIZATIONS),
                                     ("information_order", information_order, INFORMATION_ORDERS)):
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{reader}: {argument} must be one of "
                             f"{', '.join(map(repr, choices))}, got {value!r}")
    source.require_records(" or ".join(file_format.pose_tags))
    records = source.by_tag(file_format.pose_tags + file_format.extra, file_format.ignored,
                            describe=file_format.name)
    first = {d: [int(records[t].lines[0]) for t in layout.tags if len(records[t])]
             for d, layout in file_format.layouts.items()}
    if first[2] and first[3]:
        raise source.error(max(min(first[2]), min(first[3])), "mixes 2-D ({}) and 3-D ({}) records"
                           .format(*("/".join(file_format.layouts[d].tags) for d in (2, 3))))
    fixed = file_format.fixed(source, records) if file_format.fixed is not None else ()
    dimension = 3 if first[3] else 2
    layout = file_format.layouts[dimension]
    vertices, edges = records[layout.vertex_tag], records[layout.edge_tag]
    ids, v = vertices.table(("id",) + layout.vertex_fields, ints=1)
    pairs, e = edges.table(("i", "j") + layout.edge_fields + layout.information_fields, ints=2)
    size = len(layout.edge_fields)
    order: str = file_format.information_order
    notes: List[str] = []
    if dimension == 2:
        information, order, notes = information_2d(edges, e[:, size:], order, information_order)
    else:
        information = layout.information(e[:, size:])
    return build(source, dimension, (vertices, ids[:, 0], layout.poses(vertices, v)),
                 (edges, pairs, layout.poses(edges, e[:, :size]), information),
                 fixed, initialization=initialization, information_order=order, notes=notes)
