"""The symbolic analysis of nlls's own sparse Cholesky (:mod:`nlls.solve.linear.supernodal`).

Once per sparsity pattern, on the host with numpy, never per iteration:

1. **Ordering.** A minimum degree ordering of the graph of the variables (one node per variable,
   an edge per stored block of the normal matrix: the scalar graph's nodes come in dense groups, so
   the variable graph orders a tenth of the entries of a pose graph's matrix for the same fill),
   found by SciPy's SuperLU (``permc_spec="MMD_AT_PLUS_A"``) on a diagonally dominant matrix of that
   pattern; the same call's ``L`` is the pattern of the Cholesky factor (the values are random, so
   no entry cancels).
2. **Supernodes.** The elimination tree is postordered (the same fill), then consecutive variables
   whose factor columns nest form a supernode: ``K`` columns of the factor, dense, over the
   ``M`` rows below them, its *panel* (``(K + M) x K``). Small supernodes are then relaxed into
   their parent while few explicit zeros come with it (:data:`RELAX`). A supernode's level is its
   height in the tree of supernodes (leaves: 0): supernodes of one level are independent.
3. **Groups.** The supernodes of a level are grouped by size and padded to the largest ``K`` and
   ``M`` of their group (identity on the padded diagonal), so the numeric phase factors one group
   with a few batched tensor operations; a group is split only where padding would cost more
   arithmetic than another group's fixed cost (:data:`GROUP_COST`).
4. **Index maps.** Where each stored entry of the normal matrix goes in its column's panel (one
   scatter), where each entry of a supernode's update ``-L21 L21^T`` (lower triangle) goes in
   the panels above (one scatter per group), and which scalar unknowns each panel's columns and
   rows are (for the solves). They are found per pair of variables and then expanded to entries.

Everything is expressed in flat positions of one buffer that holds every panel of the factor,
so the numeric phase is a fixed sequence of tensor operations whose count grows with the number of
levels, not of supernodes (a chain-like graph has a deep tree: :attr:`SupernodalAnalysis.suits`
tells ``SparseCholesky("auto")`` to take another backend there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from ..systems import SparsePattern, ranges

#: the fixed cost of one group in the numeric phase, in multiply-adds (a group costs
#: ``GROUP_COST + members * (K^3 / 3 + K^2 M + K M^2)``): ~10 tensor operations
GROUP_COST = 3.0e5
#: how much more arithmetic per group than :data:`GROUP_COST` makes the supernodal factorization
#: faster than a scalar one (QDLDL's)
SCALAR_RATIO = 10.0
#: the fewest stored entries of a matrix for which ``SparseCholesky("auto")`` considers the
#: supernodal backend at all (its analysis, ~30 ms at 70,000 entries, would cost more than it saves
#: on a short solve of a smaller one: there the supernodal and the other backends are within ~20%)
MIN_ENTRIES = 100_000
#: relaxed supernodes: (at most this many columns, at most this share of explicit zeros)
RELAX = ((4, 1.0), (16, 0.8), (48, 0.1), (1 << 30, 0.05))
#: how much larger, at most, the panel sizes of one bucket of a level are before merging
BUCKET_RATIO = 1.25


@dataclass
class Group:
    """Supernodes of one level, padded to ``k`` columns and ``m`` rows below them."""

    level: int
    members: np.ndarray  # supernode ids
    k: int
    m: int
    offset: int  # where the group's panels start in the buffer
    columns: np.ndarray  # (n, k) scalar unknowns (new order) of the columns; padding: dof
    rows: np.ndarray  # (n, m) scalar unknowns of the rows below; padding: dof
    update_source: Optional[np.ndarray] = None  # flat positions in the group's (n, m, m) updates
    update_target: Optional[np.ndarray] = None  # their flat positions in the buffer of panels

    @property
    def size(self) -> int:
        return self.k + self.m


def _variable_graph(pattern: SparsePattern):
    import scipy.sparse

    bounds = np.asarray(pattern.bounds)
    nvar = len(bounds) - 1
    pairs = np.asarray(pattern.pairs)
    a, b = pairs // nvar, pairs % nvar
    rng = np.random.default_rng(0)
    weights = np.where(a == b, 0.0, rng.uniform(0.5, 1.0, len(pairs)))
    degree = np.bincount(a, weights=weights, minlength=nvar)
    weights = np.where(a == b, degree[a] + 1.0, weights)
    return scipy.sparse.csc_matrix((weights, (a, b)), shape=(nvar, nvar))


def _ordered_factor_pattern(pattern: SparsePattern) -> Tuple[np.ndarray, Any]:
    """``(order, L)``: the variables in elimination order and the CSC pattern of the Cholesky
    factor of the variable graph's matrix permuted by it (sorted indices, diagonal included)."""
    import scipy.sparse.linalg

    graph = _variable_graph(pattern)
    options = {"SymmetricMode": True}
    lu = scipy.sparse.linalg.splu(graph, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options=options)
    order = np.argsort(lu.perm_c)
    if not np.array_equal(lu.perm_r, lu.perm_c):  # not diagonal pivots: factor the permuted matrix
        permuted = graph[order][:, order].tocsc()
        lu = scipy.sparse.linalg.splu(permuted, permc_spec="NATURAL", diag_pivot_thresh=0.0, options=options)
    factor = lu.L.tocsc()
    factor.sort_indices()
    # a postorder of the elimination tree (the same fill): a parent's last child comes just before
    # it, so chains of small supernodes can be relaxed into one
    sequence = _postorder(_parents(factor))
    if not np.array_equal(sequence, np.arange(len(sequence))):
        factor = factor[sequence][:, sequence].tocsc()
        factor.sort_indices()
        order = order[sequence]
    return order, factor


def _parents(factor) -> np.ndarray:
    """Each column's parent in the elimination tree of the CSC factor ``factor`` (sorted indices,
    diagonal first): its first entry below the diagonal; ``-1`` for a root."""
    indptr, indices = factor.indptr, factor.indices
    count = np.diff(indptr)
    return np.where(count > 1, indices[np.minimum(indptr[:-1] + 1, len(indices) - 1)], -1)


def _postorder(parent: np.ndarray) -> np.ndarray:
    """The nodes of a forest (``parent[j] > j``, roots ``-1``) in a postorder, each node's
    children in increasing order."""
    n = len(parent)
    by_parent = np.argsort(np.where(parent < 0, n, parent), kind="stable")
    starts = np.searchsorted(np.where(parent < 0, n, parent)[by_parent], np.arange(n + 2))
    children = by_parent.tolist()
    first_child = starts.tolist()
    out: List[int] = []
    stack = [(r, first_child[r]) for r in reversed(children[first_child[n]:first_child[n + 1]])]
    while stack:
        node, at = stack.pop()
        if at < first_child[node + 1]:
            stack.append((node, at + 1))
            stack.append((children[at], first_child[children[at]]))
        else:
            out.append(node)
    return np.asarray(out, dtype=np.int64)


def _segment_lookup(keys_sorted: np.ndarray, keys: np.ndarray, owner: str) -> np.ndarray:
    where = np.searchsorted(keys_sorted, keys)
    if np.any(where >= len(keys_sorted)) or np.any(keys_sorted[np.minimum(where, len(keys_sorted) - 1)] != keys):
        raise RuntimeError(f"supernodal analysis: {owner} falls outside its panel (inconsistent factor pattern)")
    return where


def _relaxed_joins(parent: np.ndarray, k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Which supernodes join the one before them (its parent, next in the order) into one relaxed
    supernode: while the merged supernode has few columns or its panel few explicit zeros
    (:data:`RELAX`). Fewer, larger supernodes: fewer updates to move, denser products."""
    joins = np.zeros(len(k), dtype=bool)
    cols, rows, zeros = 0, 0, 0
    for s in range(len(k)):
        if s and parent[s - 1] == s:
            width = cols + int(k[s])
            added = zeros + cols * (int(k[s]) + int(m[s]) - rows)
            share = added / (width * (width + 1) / 2 + width * int(m[s]))
            if any(width <= most and share <= fraction for most, fraction in RELAX):
                joins[s] = True
                cols, rows, zeros = width, int(m[s]), added
                continue
        cols, rows, zeros = int(k[s]), int(m[s]), 0
    return joins


def _levels(parent: np.ndarray) -> np.ndarray:
    height = np.zeros(len(parent), dtype=np.int64)
    for s in range(len(parent)):  # a parent comes after its children
        p = parent[s]
        if p >= 0 and height[p] < height[s] + 1:
            height[p] = height[s] + 1
    return height


def _work(members: int, k: float, m: float) -> float:
    """The multiply-adds of factoring ``members`` panels of ``k`` columns over ``m`` rows:
    Cholesky of the ``k x k`` block, ``L21`` and the update ``L21 L21^T``."""
    k, m = float(k), float(m)
    return members * (k ** 3 / 3.0 + k * k * m + k * m * m)


def _group_level(members: np.ndarray, k: np.ndarray, m: np.ndarray) -> List[np.ndarray]:
    """Split one level's supernodes into groups (see :data:`GROUP_COST`)."""
    size = k[members] + m[members]
    members = members[np.argsort(size, kind="stable")]
    size = k[members] + m[members]
    bucket = np.floor(np.log(size) / np.log(BUCKET_RATIO)).astype(np.int64)
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    pieces = np.split(members, cuts)

    def cost(piece):
        return GROUP_COST + _work(len(piece), k[piece].max(), m[piece].max())

    merged = [pieces[-1]] if pieces else []
    for piece in reversed(pieces[:-1]):  # from the largest panels down
        joined = np.concatenate([piece, merged[-1]])
        if cost(joined) <= cost(piece) + cost(merged[-1]):
            merged[-1] = joined
        else:
            merged.append(piece)
    return merged[::-1]


class SupernodalAnalysis:
    """The symbolic factorization of one :class:`~nlls.solve.systems.SparsePattern`.

    Attributes:
        dof: the number of unknowns ``n``.
        permutation: ``(n,)`` the original unknown of each unknown in elimination order.
        inverse: ``(n,)`` the position in elimination order of each original unknown.
        groups: the groups in an order where every child comes before its parent.
        buffer_size: the size of the buffer of every panel.
        identity: flat buffer positions of the padded diagonal (set to 1).
        value_source / value_target: the stored entries of the lower triangle (positions in the
            pattern's values) and their flat positions in the buffer.
    """

    def __init__(self, pattern: SparsePattern):
        dof = self.dof = pattern.dof
        bounds = np.asarray(pattern.bounds, dtype=np.int64)
        vdof = np.diff(bounds)
        order, factor = _ordered_factor_pattern(pattern)
        nvar = len(order)
        indptr, indices = factor.indptr, factor.indices
        count = np.diff(indptr)  # of each variable's column, the diagonal included
        parent = _parents(factor)
        # supernodes of variables (new order): j joins j - 1 when j - 1's structure is j's plus j - 1
        joins = np.zeros(nvar, dtype=bool)
        joins[1:] = (parent[:-1] == np.arange(1, nvar)) & (count[:-1] == count[1:] + 1)
        first = np.flatnonzero(~joins)  # first variable of each supernode
        last = np.append(first[1:], nvar) - 1
        if not np.array_equal(indices[ranges(indptr[first], last - first + 1)], np.arange(nvar)):
            raise RuntimeError("supernodal analysis: a supernode's columns do not nest (inconsistent factor pattern)")
        new_dof = vdof[order]
        new_start = np.concatenate([[0], np.cumsum(new_dof)])
        row_dof = np.concatenate([[0], np.cumsum(new_dof[indices])])  # scalar rows of L's entries
        k = new_start[last + 1] - new_start[first]
        m = row_dof[indptr[first + 1]] - row_dof[indptr[first] + (last - first + 1)]
        super_of = np.cumsum(~joins) - 1
        sparent = np.where(parent[last] >= 0, super_of[np.maximum(parent[last], 0)], -1)
        keep = ~_relaxed_joins(sparent, k, m)
        first, last = first[keep], np.append(last[np.flatnonzero(keep)[1:] - 1], nvar - 1)
        nsuper = len(first)
        super_of = np.repeat(np.arange(nsuper), last - first + 1)
        sparent = np.where(parent[last] >= 0, super_of[np.maximum(parent[last], 0)], -1)
        # scalar unknowns in the new order
        self.permutation = (np.repeat(bounds[order] - new_start[:-1], new_dof) + np.arange(dof)).astype(np.int64)
        self.inverse = np.empty(dof, dtype=np.int64)
        self.inverse[self.permutation] = np.arange(dof)
        k = new_start[last + 1] - new_start[first]  # scalar columns of each supernode
        # rows below each supernode: its last column's structure below the diagonal (a relaxed
        # supernode's columns have no row outside it)
        below_start = indptr[last] + 1
        below_count = indptr[last + 1] - below_start
        below_vars = indices[ranges(below_start, below_count)]
        below_owner = np.repeat(np.arange(nsuper), below_count)
        var_rows = new_dof[below_vars]
        m = np.bincount(below_owner, weights=var_rows, minlength=nsuper).astype(np.int64)
        row_scalar = ranges(new_start[below_vars], var_rows)
        row_start = np.concatenate([[0], np.cumsum(m)])  # each supernode's rows in row_scalar
        # levels and groups
        level = _levels(sparent)
        groups: List[Group] = []
        group_of = np.zeros(nsuper, dtype=np.int64)
        index_in = np.zeros(nsuper, dtype=np.int64)
        offset = 0
        by_level = np.argsort(level, kind="stable")
        level_cuts = np.flatnonzero(np.diff(level[by_level])) + 1
        for members in np.split(by_level, level_cuts):
            for piece in _group_level(members, k, m):
                gk, gm = int(k[piece].max()), int(m[piece].max())
                group_of[piece] = len(groups)
                index_in[piece] = np.arange(len(piece))
                groups.append(Group(int(level[piece[0]]), piece, gk, gm, offset,
                                    np.full((len(piece), gk), dof, dtype=np.int64),
                                    np.full((len(piece), gm), dof, dtype=np.int64)))
                offset += len(piece) * (gk + gm) * gk
        self.buffer_size = offset
        group_k = np.array([g.k for g in groups], dtype=np.int64)
        panel_at = np.array([g.offset for g in groups], dtype=np.int64)[group_of] + index_in * (
            group_k[group_of] * np.array([g.size for g in groups], dtype=np.int64)[group_of])
        width = group_k[group_of]  # the padded columns of each supernode's panel
        col_start = new_start[first]
        for g in groups:
            cols = col_start[g.members][:, None] + np.arange(g.k)[None, :]
            g.columns[:] = np.where(np.arange(g.k)[None, :] < k[g.members][:, None], cols, dof)
            within = np.arange(g.m)[None, :] < m[g.members][:, None]
            take = np.minimum(row_start[g.members][:, None] + np.arange(g.m)[None, :], max(len(row_scalar) - 1, 0))
            g.rows[:] = np.where(within, row_scalar[take] if len(row_scalar) else dof, dof)
        # where variable v's first row sits in supernode t's panel: among its columns, or below
        below_at = np.cumsum(var_rows) - var_rows - row_start[below_owner]
        before = np.cumsum(below_count) - below_count
        below_keys = below_owner * (nvar + 1) + below_vars  # sorted: by owner, then variable

        def row_position(t: np.ndarray, v: np.ndarray, owner: str) -> np.ndarray:
            out = new_start[v] - col_start[t]
            below = v > last[t]
            if below.any():
                at = _segment_lookup(below_keys, t[below] * (nvar + 1) + v[below], owner)
                out[below] = width[t[below]] + below_at[at]
            return out

        uniform = bool(np.all(new_dof == new_dof[0])) if nvar else True

        def expand(rv: np.ndarray, cv: np.ndarray):
            """The scalar entries ``(i, j)`` of variable blocks ``(rv, cv)`` (the lower triangle
            of a diagonal block): ``(block, i, j)``."""
            if uniform:  # every variable has d unknowns
                d = int(new_dof[0])
                block = np.repeat(np.arange(len(rv)), d * d)
                i = np.tile(np.repeat(np.arange(d), d), len(rv))
                j = np.tile(np.arange(d), d * len(rv))
            else:
                dr, dc = new_dof[rv], new_dof[cv]
                count = dr * dc
                block = np.repeat(np.arange(len(rv)), count)
                local = ranges(np.zeros_like(count), count)
                i, j = local // dc[block], local % dc[block]
            keep = (rv[block] != cv[block]) | (i >= j)
            return block[keep], i[keep], j[keep]

        def targets(rv: np.ndarray, cv: np.ndarray, owner: str):
            """Flat buffer positions of the factor's entries of variable blocks ``(rv, cv)``
            (new order, ``rv >= cv``), with ``(block, i, j)`` of :func:`expand`."""
            t = super_of[cv]
            base = panel_at[t] + row_position(t, rv, owner) * width[t] + (new_start[cv] - col_start[t])
            block, i, j = expand(rv, cv)
            return base[block] + i * width[t][block] + j, block, i, j

        pads = []
        for g in groups:
            t = np.arange(g.k)[None, :]
            base = g.offset + np.arange(len(g.members))[:, None] * g.size * g.k + t * (g.k + 1)
            pads.append(base[t >= k[g.members][:, None]])
        self.identity = np.concatenate(pads) if pads else np.zeros(0, dtype=np.int64)
        # the stored blocks of the lower triangle (new order), into the panel of their column
        pairs, nv = np.asarray(pattern.pairs), nvar
        position = np.empty(nvar, dtype=np.int64)
        position[order] = np.arange(nvar)
        pa, pb = pairs // nv, pairs % nv
        lower = np.flatnonzero(position[pa] >= position[pb])
        self.value_target, block, i, j = targets(position[pa[lower]], position[pb[lower]], "an entry of the matrix")
        crow = pattern.crow.numpy()
        self.value_source = crow[bounds[pa[lower]][block] + i] + np.asarray(pattern.pair_start)[lower][block] + j
        # each supernode's update (lower triangle of L21 L21^T) into the panels of its rows
        for g in groups:
            if g.m == 0:
                continue
            q = below_count[g.members]
            a, b = np.tril_indices(int(q.max()))
            valid = a[None, :] < q[:, None]
            member = np.broadcast_to(np.arange(len(g.members))[:, None], valid.shape)[valid]
            listed = before[g.members][member]  # where the member's variables start in below_vars
            ia = listed + np.broadcast_to(a, valid.shape)[valid]
            ib = listed + np.broadcast_to(b, valid.shape)[valid]
            g.update_target, block, i, j = targets(below_vars[ia], below_vars[ib], "an update")
            g.update_source = (member[block] * g.m * g.m + (below_at[ia][block] + i) * g.m
                               + below_at[ib][block] + j)
        self.groups = groups
        self.flops = sum(_work(len(g.members), g.k, g.m) for g in groups)
        #: whether the arithmetic outweighs the groups' fixed cost (not so on a deep elimination
        #: tree, e.g. a chain's, or on a small matrix): ``SparseCholesky("auto")`` asks
        self.suits = self.flops >= len(groups) * GROUP_COST
        #: whether it is arithmetic-heavy enough to beat QDLDL's scalar factorization as well
        #: (measured: w10000.graph's matrix, 1.6 M multiply-adds per group, QDLDL 0.66 of the
        #: supernodal time; a 20,000-pose graph's, 5.8 M per group, supernodal 0.8 of QDLDL's)
        self.dense_enough = self.flops >= SCALAR_RATIO * len(groups) * GROUP_COST
        self._device_maps: dict = {}

    def on(self, device: torch.device) -> dict:
        """The index maps as tensors on ``device`` (made once per device)."""
        key = str(device)
        if key not in self._device_maps:
            def t(a):
                return None if a is None else torch.as_tensor(np.ascontiguousarray(a), device=device)

            self._device_maps[key] = {
                "identity": t(self.identity), "value_source": t(self.value_source),
                "value_target": t(self.value_target), "permutation": t(self.permutation),
                "inverse": t(self.inverse),
                "groups": [(g, t(g.columns.reshape(-1)), t(g.rows.reshape(-1)),
                            t(g.update_source), t(g.update_target)) for g in self.groups]}
        return self._device_maps[key]
