"""Pose graphs read from files: poses, relative measurements with information matrices, and the
objective they define.

A pose graph holds poses ``x_i`` (``SE2`` or ``SE3``) and edges ``i -> j`` carrying a measured
relative motion ``Z`` and an information matrix ``Omega`` (inverse covariance). Each edge is one
:class:`~nlls.geometry.Between` with residual ``r = Log(Z^-1 x_i^-1 x_j)`` (tangent translation
first) weighted by ``S`` with ``S^T S = Omega``, so the objective is ``0.5 * sum r^T Omega r``,
the cost GTSAM and g2o report. No prior is added: the gauge freedom is the solver's to handle.

Whatever the file format, information matrices are stored here in the tangent order
``[x, y, theta]`` (2-D) or ``[tx, ty, tz, rx, ry, rz]`` (3-D), which is also g2o's order, so
:meth:`PoseGraph.write_g2o` writes them as they are.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.cost_weight import MatrixCostWeight
from ..core.objective import Objective
from ..geometry.factors import Between
from ..geometry.se2 import SE2
from ..geometry.se3 import SE3
from ..geometry.so3 import matrix_to_quaternion, quaternion_to_matrix
from ._text import PathLike, Records, Source, assemble, no_gc_pauses, upper_triangle_matrices
from .files import write_text_atomic


@dataclass(frozen=True)
class PoseGraphEdges:
    """The edges of a pose graph, as read.

    Attributes:
        pairs: ``(E, 2)`` int64 vertex ids ``(i, j)`` of each edge ``i -> j``.
        measurements: ``(E, 4)`` (``SE2`` data ``x, y, cos, sin``) or ``(E, 3, 4)`` (``SE3``
            data ``[R | t]``), float64: the measured ``x_i^-1 x_j``.
        information: ``(E, dof, dof)`` float64 information matrices, tangent order.
    """

    pairs: np.ndarray
    measurements: torch.Tensor
    information: torch.Tensor

    def __len__(self) -> int:
        return int(self.pairs.shape[0])


class PoseGraph:
    """A 2-D or 3-D pose graph; made by :func:`~nlls.io.read_g2o` and :func:`~nlls.io.read_toro`.

    The arguments are taken as checked by the reader (unique vertex ids, edges between known
    vertices, positive definite information).

    Args:
        dimension: 2 (``SE2`` poses) or 3 (``SE3`` poses).
        vertex_ids: ``(N,)`` int64 vertex ids, in file order (not necessarily contiguous).
        poses: ``(N, 4)`` ``SE2`` or ``(N, 3, 4)`` ``SE3`` data, float64: the initial values.
        edges: the edges.
        fixed: ids of vertices a g2o ``FIX`` record names; kept to be written back, the objective
            ignores them.
        path: the file read.
    """

    def __init__(self, dimension: int, vertex_ids: np.ndarray, poses: torch.Tensor,
                 edges: PoseGraphEdges, fixed: Sequence[int] = (), path: Optional[PathLike] = None):
        self.dimension = dimension
        self.vertex_ids = vertex_ids
        self.poses = poses
        self.edges = edges
        self.fixed = tuple(int(i) for i in fixed)
        self.path = None if path is None else Path(path)
        order = np.argsort(vertex_ids, kind="stable")
        self._index = order[np.searchsorted(vertex_ids, edges.pairs, sorter=order)]  # (E, 2) rows
        # S = L^T with Omega = L L^T (checked positive definite by the reader)
        self._sqrt_information = torch.linalg.cholesky(edges.information).mT.contiguous()

    @property
    def group(self):
        """The pose type, :class:`~nlls.SE2` or :class:`~nlls.SE3`."""
        return SE2 if self.dimension == 2 else SE3

    def objective(self, dtype: torch.dtype = torch.float64,
                  device: Optional[torch.device] = None) -> Objective:
        """The objective: one variable ``x{id}`` per vertex, one ``Between`` ``e{k}`` per edge.

        Edge ``k`` holds its measurement in aux variable ``z{k}`` and its weight
        ``S = chol(Omega)^T`` in ``S{k}``. Vertices without edges are left out.

        Args:
            dtype: dtype of every tensor.
            device: device of every tensor (default CPU).

        Returns:
            A new objective, batch size 1; building it does not change this graph.
        """
        group = self.group
        poses = self.poses.to(dtype=dtype, device=device, copy=True)
        measurements = self.edges.measurements.to(dtype=dtype, device=device, copy=True)
        weights = self._sqrt_information.to(dtype=dtype, device=device, copy=True)
        with no_gc_pauses():
            variables = [group.from_tensor(poses[k:k + 1], f"x{i}")
                         for k, i in enumerate(self.vertex_ids.tolist())]
            cost_functions = [
                Between(variables[a], variables[b],
                        group.from_tensor(measurements[k:k + 1], f"z{k}"),
                        MatrixCostWeight(weights[k:k + 1], name=f"S{k}"), name=f"e{k}")
                for k, (a, b) in enumerate(self._index.tolist())
            ]
            return assemble(cost_functions, dtype)

    def current_poses(self, objective: Objective) -> torch.Tensor:
        """The poses ``objective`` holds (``x{id}``), this graph's own for vertices it lacks.

        Returns:
            ``(N, 4)`` or ``(N, 3, 4)`` float64 on the CPU, in ``vertex_ids`` order.

        Raises:
            ValueError: a variable ``x{id}`` of another type or with a batch size other than 1.
        """
        out = self.poses.clone()
        group = self.group
        for k, i in enumerate(self.vertex_ids.tolist()):
            var = objective.optim_vars.get(f"x{i}")
            if var is None:
                continue
            if not isinstance(var, group) or var.batch_size != 1:
                raise ValueError(
                    f"PoseGraph: variable 'x{i}' must be a {group.__name__} of batch size 1 "
                    f"(select one batch element before writing), got {var!r}"
                )
            out[k] = var.tensor[0].detach().to(device="cpu", dtype=torch.float64)
        return out

    def write_g2o(self, path: PathLike, objective: Objective) -> None:
        """Save the poses ``objective`` holds and the edges as read, in g2o format.

        2-D graphs are written as ``VERTEX_SE2``/``EDGE_SE2``, 3-D ones as
        ``VERTEX_SE3:QUAT``/``EDGE_SE3:QUAT`` (quaternion ``qx qy qz qw``), then ``FIX`` records;
        numbers with 17 significant digits, so reading the file back gives the same graph.

        Args:
            path: the file to write (replaced if it exists; written whole or not at all: a
                failure midway leaves an existing file as it was).
            objective: typically ``self.objective()`` after ``optimize()``.

        Raises:
            OSError: naming ``path``, when it cannot be written.
        """
        info = self.edges.information.numpy()
        rows, cols = np.triu_indices(self.dimension * 3 - 3)
        tags = (("VERTEX_SE2", "EDGE_SE2") if self.dimension == 2
                else ("VERTEX_SE3:QUAT", "EDGE_SE3:QUAT"))
        vertices = _g2o_numbers(self.current_poses(objective))
        edges = np.hstack([_g2o_numbers(self.edges.measurements), info[:, rows, cols]])
        lines = [f"{tags[0]} {i} {_numbers(row)}"
                 for i, row in zip(self.vertex_ids.tolist(), vertices)]
        lines += [f"{tags[1]} {i} {j} {_numbers(row)}"
                  for (i, j), row in zip(self.edges.pairs.tolist(), edges)]
        if self.fixed:
            lines.append("FIX " + " ".join(map(str, self.fixed)))
        write_text_atomic(path, "\n".join(lines) + "\n")

    def __repr__(self) -> str:
        source = f", path={str(self.path)!r}" if self.path is not None else ""
        return (f"PoseGraph(dimension={self.dimension}, vertices={len(self.vertex_ids)}, "
                f"edges={len(self.edges)}{source})")


def _numbers(row: np.ndarray) -> str:
    return " ".join(f"{v:.17g}" for v in row.tolist())


def _g2o_numbers(data: torch.Tensor) -> np.ndarray:
    """``SE2`` data to ``x y theta``, ``SE3`` data to ``x y z qx qy qz qw``, ``(n, 3 | 7)``."""
    if data.ndim == 2:
        return torch.cat([data[:, :2], torch.atan2(data[:, 3:], data[:, 2:3])], dim=1).numpy()
    q = matrix_to_quaternion(data[:, :, :3])  # (w, x, y, z)
    return torch.cat([data[:, :, 3], q[:, 1:], q[:, :1]], dim=1).numpy()


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


def build(source: Source, dimension: int, vertices: Tuple[Records, np.ndarray, torch.Tensor],
          edges: Tuple[Records, np.ndarray, torch.Tensor, np.ndarray],
          fixed: Sequence[Tuple[int, int]] = ()) -> PoseGraph:
    """Check a parsed graph and make the :class:`PoseGraph`; every error names its line.

    Args:
        source: the file.
        dimension: 2 or 3.
        vertices: ``(records, ids (N,), poses)``.
        edges: ``(records, pairs (E, 2), measurements, information (E, dof, dof))``.
        fixed: ``(line, id)`` of each vertex a ``FIX`` record names.
    """
    vertex_records, ids, poses = vertices
    edge_records, pairs, measurements, information = edges
    if len(edge_records) == 0:
        raise source.error(max(source.num_lines, 1), f"no {edge_records.tag} records: "
                           "nothing to optimize")
    order = np.argsort(ids, kind="stable")
    repeated = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
    if repeated.size:
        first, second = sorted(order[[repeated[0], repeated[0] + 1]])
        raise source.error(int(vertex_records.lines[second]), f"{vertex_records.tag} id "
                           f"{ids[second]} repeats the vertex of line "
                           f"{vertex_records.lines[first]}")
    known = np.zeros(pairs.shape, dtype=bool)
    if ids.size:
        position = np.minimum(np.searchsorted(ids, pairs, sorter=order), ids.size - 1)
        known = ids[order][position] == pairs
    if not known.all():
        k, side = np.argwhere(~known)[0]
        raise source.error(int(edge_records.lines[k]), f"{edge_records.tag} refers to vertex "
                           f"{pairs[k, side]}, which no {vertex_records.tag} record defines")
    loops = np.nonzero(pairs[:, 0] == pairs[:, 1])[0]
    if loops.size:
        raise source.error(int(edge_records.lines[loops[0]]), f"{edge_records.tag} from vertex "
                           f"{pairs[loops[0], 0]} to itself")
    known_ids = set(ids.tolist())
    for line, i in fixed:
        if i not in known_ids:
            raise source.error(line, f"FIX names vertex {i}, which no {vertex_records.tag} "
                               "record defines")
    info = torch.from_numpy(information)
    _, failed = torch.linalg.cholesky_ex(info)
    if bool((failed != 0).any()):
        k = int(torch.nonzero(failed)[0, 0])
        eigenvalues = np.linalg.eigvalsh(information[k])
        raise source.error(int(edge_records.lines[k]), f"{edge_records.tag}: information matrix "
                           f"is not positive definite (eigenvalues "
                           f"{np.round(eigenvalues, 6).tolist()})")
    return PoseGraph(dimension, ids, poses, PoseGraphEdges(pairs, measurements, info),
                     fixed=[i for _, i in fixed], path=source.path)


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
            in tangent order.
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
    """

    name: str
    layouts: Dict[int, RecordLayout]
    ignored: Tuple[str, ...] = ()
    extra: Tuple[str, ...] = ()
    fixed: Optional[Callable[[Source, Dict[str, Records]], Sequence[Tuple[int, int]]]] = None

    @property
    def pose_tags(self) -> Tuple[str, ...]:
        return self.layouts[2].tags + self.layouts[3].tags


def read_pose_graph(source: Source, file_format: PoseGraphFormat) -> PoseGraph:
    """Read a 2-D or 3-D pose graph laid out as ``file_format`` says; every error names its line.

    Raises:
        FormatError: an unknown tag, a wrong number of fields, a non-number, 2-D and 3-D records
            mixed, and what :func:`build` checks.
    """
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
    return build(source, dimension, (vertices, ids[:, 0], layout.poses(vertices, v)),
                 (edges, pairs, layout.poses(edges, e[:, :size]), layout.information(e[:, size:])),
                 fixed)
