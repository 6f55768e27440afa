"""Initial poses of a pose graph whose file has edges but no vertex records.

Several real datasets list only edges. Their poses are then composed from the measurements
(an edge ``i -> j`` measures ``Z = x_i^-1 x_j``, so ``x_j = x_i Z`` and ``x_i = x_j Z^-1``):

* ``"chain"``: GTSAM's rule (``load2D``): the edges in file order; an edge's first vertex, if
  still unknown, is put at the identity, then its second, if still unknown, at ``x_i Z``. On an
  odometry-first file this chains the odometry; an edge whose first vertex is new starts a new
  chain at the origin.
* ``"spanning_tree"``: a breadth-first spanning tree of the edges, both directions, from the
  lowest vertex id of each connected part (at the identity), each vertex composed from its
  parent through the first edge between them in the file. Every vertex is reached by the fewest
  measurements, so less drift piles up than along a long chain, and no part starts at the origin
  by accident of edge order.

Poses are composed as homogeneous matrices in float64, one batched product per tree level.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

INITIALIZATIONS = ("spanning_tree", "chain")


def _matrices(data: torch.Tensor) -> np.ndarray:
    """``SE2`` data ``(n, 4)`` or ``SE3`` data ``(n, 3, 4)`` to homogeneous ``(n, 3 | 4, 3 | 4)``."""
    array = data.numpy()
    if array.ndim == 2:
        x, y, c, s = array.T
        zero, one = np.zeros_like(x), np.ones_like(x)
        return np.stack([np.stack([c, -s, x], -1), np.stack([s, c, y], -1),
                         np.stack([zero, zero, one], -1)], -2)
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (array.shape[0], 1, 4))
    return np.concatenate([array, bottom], axis=1)


def _data(matrices: np.ndarray) -> torch.Tensor:
    """The inverse of :func:`_matrices` (rotations of 2-D poses renormalized)."""
    if matrices.shape[-1] == 3:
        c, s = matrices[:, 0, 0], matrices[:, 1, 0]
        norm = np.hypot(c, s)
        return torch.from_numpy(np.stack([matrices[:, 0, 2], matrices[:, 1, 2], c / norm, s / norm], 1))
    return torch.from_numpy(np.ascontiguousarray(matrices[:, :3, :]))


def _inverse(matrices: np.ndarray) -> np.ndarray:
    d = matrices.shape[-1] - 1
    rotation_t = np.swapaxes(matrices[:, :d, :d], 1, 2)
    out = np.zeros_like(matrices)
    out[:, :d, :d] = rotation_t
    out[:, :d, d] = -(rotation_t @ matrices[:, :d, d:])[..., 0]
    out[:, d, d] = 1.0
    return out


def _chain(index: np.ndarray, measured: np.ndarray, count: int) -> np.ndarray:
    poses = np.zeros((count,) + measured.shape[1:])
    known = np.zeros(count, dtype=bool)
    identity = np.eye(measured.shape[-1])
    for k, (a, b) in enumerate(index.tolist()):
        if not known[a]:
            poses[a], known[a] = identity, True
        if not known[b]:
            poses[b], known[b] = poses[a] @ measured[k], True
    return poses


def _spanning_tree(index: np.ndarray, measured: np.ndarray, count: int) -> np.ndarray:
    import scipy.sparse
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    # the first edge between each pair of vertices, in either direction
    low, high = index.min(axis=1), index.max(axis=1)
    keys, first = np.unique(low * count + high, return_index=True)
    graph = scipy.sparse.coo_matrix((np.ones(first.size), (low[first], high[first])),
                                    shape=(count, count)).tocsr()
    _, labels = connected_components(graph, directed=False)
    roots = np.unique(labels, return_index=True)[1]  # the lowest index of each part
    parent = np.full(count, -1)
    for root in roots.tolist():
        visited, predecessors = breadth_first_order(graph, root, directed=False)
        parent[visited[1:]] = predecessors[visited[1:]]
    depth = _depths(parent)
    children = np.nonzero(parent >= 0)[0]
    parents = parent[children]
    edge = first[np.searchsorted(keys, np.minimum(parents, children) * count
                                 + np.maximum(parents, children))]
    forward = (index[edge, 0] == parents)[:, None, None]
    relative = np.broadcast_to(np.eye(measured.shape[-1]), (count,) + measured.shape[1:]).copy()
    relative[children] = np.where(forward, measured[edge], _inverse(measured[edge]))
    poses = np.broadcast_to(np.eye(measured.shape[-1]), relative.shape).copy()
    by_depth = np.argsort(depth, kind="stable")  # level by level, ascending index in each
    levels = int(depth.max(initial=0))
    bounds = np.searchsorted(depth[by_depth], np.arange(levels + 2))
    for level in range(1, levels + 1):
        members = by_depth[bounds[level]:bounds[level + 1]]
        poses[members] = poses[parent[members]] @ relative[members]
    return poses


def _depths(parent: np.ndarray) -> np.ndarray:
    """Each vertex's number of ancestors in the forest ``parent`` (``-1`` at the roots), by
    pointer jumping: ``log2(depth)`` passes over the arrays instead of one step per vertex."""
    up = np.where(parent >= 0, parent, np.arange(parent.size))
    depth = (parent >= 0).astype(np.int64)  # the distance from each vertex to ``up``
    while True:
        further = up[up]
        if np.array_equal(further, up):
            return depth
        depth = depth + depth[up]
        up = further


def initial_poses(pairs: np.ndarray, measurements: torch.Tensor,
                  method: str) -> Tuple[np.ndarray, torch.Tensor]:
    """Vertex ids and initial poses of a graph known by its edges only.

    Args:
        pairs: ``(E, 2)`` int64 vertex ids of each edge ``i -> j``.
        measurements: ``(E, 4)`` ``SE2`` or ``(E, 3, 4)`` ``SE3`` data, float64.
        method: ``"spanning_tree"`` or ``"chain"`` (see the module's docs).

    Returns:
        ``(ids (N,) int64 ascending, poses (N, 4) | (N, 3, 4) float64)``.
    """
    ids, index = np.unique(pairs, return_inverse=True)
    index = index.reshape(pairs.shape)
    measured = _matrices(measurements)
    build = _chain if method == "chain" else _spanning_tree
    return ids.astype(np.int64), _data(build(index, measured, ids.size))
