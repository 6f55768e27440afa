"""Pose graphs read from files: poses, relative measurements with information matrices, and the
objective they define.

A pose graph holds poses ``x_i`` (``SE2`` or ``SE3``) and edges ``i -> j`` carrying a measured
relative motion ``Z`` and an information matrix ``Omega`` (inverse covariance). Each edge is one
:class:`~nlls.geometry.Between` with residual ``r = Log(Z^-1 x_i^-1 x_j)`` (tangent translation
first) weighted by ``S`` with ``S^T S = Omega``, so the objective is ``0.5 * sum r^T Omega r``,
the cost GTSAM and g2o report. No prior is added unless asked for (``objective(anchor=True)``,
what ``nlls solve`` does): otherwise the gauge freedom is the solver's to handle.

Whatever the file format, information matrices are stored here in the tangent order
``[x, y, theta]`` (2-D) or ``[tx, ty, tz, rx, ry, rz]`` (3-D), which is also g2o's order, so
:meth:`PoseGraph.write_g2o` writes them as they are.

What the reader decided about a file is kept on the graph: ``initialization`` (poses from the
file's vertex records, or composed from its edges when it has none), ``information_order``
(the order its 2-D information fields were read in) and ``notes`` (one line for each thing a
user may want to know, e.g. for ``nlls solve --verbose``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..core.blocks import VariableBlock
from ..core.cost_function import CostFunction
from ..core.cost_weight import MatrixCostWeight
from ..core.objective import Objective
from ..core.variable import Variable, from_rows
from ..geometry.factors import Between, Difference
from ..geometry.se2 import SE2
from ..geometry.se3 import SE3
from ..geometry.so3 import matrix_to_quaternion
from ._text import PathLike, assemble, no_gc_pauses
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
        initialization: where the initial poses come from: ``"file"`` (vertex records), or
            ``"spanning_tree"`` or ``"chain"`` (composed from the edges of a file without vertex
            records, :mod:`nlls.io.initialization`).
        information_order: the order the file's information fields were read in, ``"toro"``
            or ``"g2o"`` (they differ in 2-D only; 3-D records are read translation first).
        notes: lines saying what the reader decided where a file left a choice (empty when
            nothing was decided).

    Attributes:
        initialization, information_order, notes: as given.
    """

    def __init__(self, dimension: int, vertex_ids: np.ndarray, poses: torch.Tensor,
                 edges: PoseGraphEdges, fixed: Sequence[int] = (), path: Optional[PathLike] = None,
                 initialization: str = "file", information_order: str = "g2o",
                 notes: Sequence[str] = ()):
        self.initialization = initialization
        self.information_order = information_order
        self.notes = tuple(notes)
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
                  device: Optional[torch.device] = None, vectorized: bool = True,
                  anchor: bool = False) -> Objective:
        """The objective: one variable ``x{id}`` per vertex and the edges' ``Between`` factors.

        By default the poses are one :class:`~nlls.VariableBlock` ``poses`` ``(1, N, *shape)``
        (members ``x{id}``) and the edges one :class:`~nlls.FactorGroup` ``edges``
        (``Between.many``) whose measurements are the aux variable ``z`` ``(1, E, *shape)`` and whose
        weights ``S = chol(Omega)^T`` are ``S`` ``(1, E, dof, dof)``, edge ``k`` at row ``k``:
        replacing ``S`` or ``poses`` (``Objective.update`` or a layer input) sets every edge's
        weight or every pose at once. With
        ``vectorized=False`` edge ``k`` is its own ``Between`` ``e{k}`` with measurement ``z{k}``
        and weight ``S{k}`` (one object per edge; slower to build). Vertices without edges are
        left out.

        With ``anchor`` a prior ``anchor`` (a :class:`~nlls.Difference` to the aux variable
        ``anchor_target``) holds one pose where it is: the first vertex a g2o ``FIX`` record
        names, else the first vertex of the file. Its weight is the largest diagonal entry of the
        edges' ``S``, so it does not spoil the conditioning. A pose graph's cost does not change
        when every pose moves by one rigid motion, so the anchored optimum has the same cost as
        the free one and the prior's residual stays zero; what goes is the gauge freedom: the
        normal matrix becomes positive definite (Gauss-Newton works, Levenberg-Marquardt's
        damping can get small without the poses drifting along the gauge). GTSAM's reference
        runs add the same kind of prior; g2o fixes the vertex.

        Args:
            dtype: dtype of every tensor.
            device: device of every tensor (default CPU).
            vectorized: one group for the edges (default) or one cost function per edge.
            anchor: add the prior described above.

        Returns:
            A new objective, batch size 1; building it does not change this graph.
        """
        group = self.group
        poses = self.poses.to(dtype=dtype, device=device, copy=True)
        measurements = self.edges.measurements.to(dtype=dtype, device=device, copy=True)
        weights = self._sqrt_information.to(dtype=dtype, device=device, copy=True)
        with no_gc_pauses():
            names = [f"x{i}" for i in self.vertex_ids.tolist()]
            objective = Objective(dtype=dtype)
            if not len(self.edges):
                return objective
            if vectorized:
                index = self._index
                used = np.zeros(len(names), dtype=bool)
                used[index.ravel()] = True
                if not used.all():  # vertices without edges are left out
                    index = (np.cumsum(used) - 1)[index]
                    poses = poses[torch.from_numpy(np.flatnonzero(used)).to(poses.device)]
                    names = [n for n, keep in zip(names, used.tolist()) if keep]
                block = VariableBlock(group, poses[None], "poses", names)
                pairs = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
                objective.add(Between.many(
                    block, pairs[:, 0], pairs[:, 1], Variable(measurements[None], "z"),
                    Variable(weights[None], "S"), name="edges"))
                if anchor:
                    k = self._anchor_position(names)
                    objective.add(Difference(block.members[k], group.from_tensor(
                        poses[k:k + 1].clone(), "anchor_target"), self._anchor_weight(weights), name="anchor"))
                return objective
            variables = from_rows(group, poses, names)
            cost_functions: List[CostFunction] = [
                Between(variables[a], variables[b],
                        group.from_tensor(measurements[k:k + 1], f"z{k}"),
                        MatrixCostWeight(weights[k:k + 1], name=f"S{k}"), name=f"e{k}")
                for k, (a, b) in enumerate(self._index.tolist())
            ]
            if anchor:
                kept = [names[k] for k in np.unique(self._index).tolist()]  # vertices with edges
                k = names.index(kept[self._anchor_position(kept)])
                cost_functions.append(Difference(variables[k], group.from_tensor(
                    poses[k:k + 1].clone(), "anchor_target"), self._anchor_weight(weights), name="anchor"))
            return assemble(cost_functions, dtype)

    def _anchor_position(self, names: Sequence[str]) -> int:
        """Where in ``names`` the anchored pose is: the first ``FIX``ed vertex there, else 0."""
        for vertex in self.fixed:
            if f"x{vertex}" in names:
                return list(names).index(f"x{vertex}")
        return 0

    @staticmethod
    def _anchor_weight(weights: torch.Tensor) -> float:
        """The anchor's scalar weight: the largest diagonal entry of the edges' ``S``."""
        return float(weights.diagonal(dim1=-2, dim2=-1).abs().max())

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
