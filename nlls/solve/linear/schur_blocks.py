"""The first half of a Schur structure's analysis, at the level of variables.

:class:`~nlls.solve.linear.schur_structure.SchurStructure` needs, from the pattern of ``A``:
where the eliminated variables' diagonal blocks are, which kept columns form blocks, the kept-kept
entries, the couplings (kept block, eliminated variable) and, per class of coupling size, where
each coupling's entries are. Found entry by entry this reads every one of the pattern's ``nnz``
entries several times (millions in bundle adjustment). When every eliminated variable is one of
the pattern's variables (:attr:`SparsePattern.bounds`, the linearization's case), all of it follows
from the pattern's variable pairs and closed-form positions instead: numpy on the host, no pass
over the entries. Both ways give the same :class:`Analysis`, so the structure built from it is
the same.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from ..systems import SparsePattern, ranges


class Analysis:
    """What the first half of the analysis hands on, every index ``int64``.

    ``kept (nR,)`` the kept columns; ``block_index (nE * d * d,)`` the eliminated variables'
    diagonal blocks in the values (``nnz`` where the pattern lacks an entry); ``starts``,
    ``sizes (nU,)`` the kept blocks in the reduced numbering; ``rr (n,)`` the kept-kept entries in
    the values, sorted, at ``(rr_rows, rr_cols)`` of ``S``; ``coupling_u``, ``coupling_p`` the
    couplings sorted by ``(u, p)``; ``class_of``, ``local`` each coupling's size class and its
    place in it; ``class_index`` per class (sizes ascending) ``(K + 1, s, d)`` positions in the
    values, the last coupling a copy of the first (the padding of the pair buckets);
    ``needs_zero`` whether an index reads an entry the pattern lacks.
    """

    def __init__(self, kept, block_index, starts, sizes, rr, rr_rows, rr_cols, coupling_u, coupling_p,
                 class_index, needs_zero):
        self.kept, self.block_index, self.starts, self.sizes = kept, block_index, starts, sizes
        self.rr, self.rr_rows, self.rr_cols = rr, rr_rows, rr_cols
        self.coupling_u, self.coupling_p = coupling_u, coupling_p
        self.class_sizes, self.class_of, self.local = coupling_classes(coupling_u, sizes)
        self.class_index: List[torch.Tensor] = class_index
        self.needs_zero = needs_zero


def coupling_classes(coupling_u: torch.Tensor, sizes: torch.Tensor) -> Tuple[List[int], torch.Tensor, torch.Tensor]:
    """``(class sizes ascending, class_of, local)``: the couplings grouped by their kept block's
    size, each coupling's class and its place among the class's couplings (in coupling order).
    Numpy: no sort of the couplings (torch's first sorts in a process are slow)."""
    u_of, block_sizes = coupling_u.numpy(), sizes.numpy()
    used = np.zeros(block_sizes.size, dtype=bool)
    used[u_of] = True
    class_sizes = np.unique(block_sizes[used])
    class_of = np.searchsorted(class_sizes, block_sizes[u_of])
    local = np.empty(u_of.size, dtype=np.int64)
    for c in range(class_sizes.size):
        members = np.flatnonzero(class_of == c)
        local[members] = np.arange(members.size)
    return class_sizes.tolist(), torch.from_numpy(class_of), torch.from_numpy(local)


def block_analysis(pattern: SparsePattern, eliminated: torch.Tensor, owner: str) -> Optional[Analysis]:
    """The :class:`Analysis` from the pattern's variable pairs, or ``None`` when some eliminated
    row is not exactly one of the pattern's variables (the entry-level analysis then runs).

    Raises:
        ValueError: two eliminated variables linked by an entry of ``A``, naming its first
            entry (row-major), as the entry-level analysis does.
    """
    bounds, pairs, pair_start = pattern.bounds, pattern.pairs, pattern.pair_start
    num_e, d = eliminated.shape
    nvar = len(bounds) - 1
    vdof = np.diff(bounds)
    if not num_e or not d or not (vdof > 0).all():
        return None
    columns = eliminated.numpy()
    v = np.searchsorted(bounds, columns[:, 0], side="right") - 1
    if not ((bounds[v] == columns[:, 0]).all() and (vdof[v] == d).all()
            and (columns == columns[:, :1] + np.arange(d)).all()):
        return None
    crow = pattern.crow.numpy()
    e_of = np.full(nvar, -1, dtype=np.int64)
    e_of[v] = np.arange(num_e)
    kmask = e_of < 0
    pa, pb = pairs // nvar, pairs % nvar
    linked = np.flatnonzero(~kmask[pa] & ~kmask[pb] & (pa != pb))
    if linked.size:
        q = linked[0]
        raise ValueError(f"{owner}: the eliminated columns {int(bounds[pa[q]])} and {int(bounds[pb[q]])} "
                         "belong to different eliminated variables that a cost function links; they "
                         "cannot be eliminated together")
    own = pair_start[np.searchsorted(pairs, v * (nvar + 1))]
    block_index = (crow[bounds[v][:, None] + np.arange(d)] + own[:, None])[:, :, None] + np.arange(d)

    # kept blocks: runs of adjacent kept variables with the same partners (identical rows)
    count = np.bincount(pa, minlength=nvar)
    same = np.zeros(max(nvar - 1, 0), dtype=bool)
    if nvar > 1:
        same = count[:-1] == count[1:]
        candidate = np.flatnonzero(pa < nvar - 1)
        candidate = candidate[same[pa[candidate]]]
        differ = pb[candidate] != pb[candidate + count[pa[candidate]]]
        same &= (np.bincount(pa[candidate][differ], minlength=nvar - 1) == 0) & kmask[:-1] & kmask[1:]
    kv = np.flatnonzero(kmask)
    new = np.ones(kv.size, dtype=bool)
    new[1:] = (kv[1:] != kv[:-1] + 1) | ~same[kv[:-1]]
    var_block = np.full(nvar, -1, dtype=np.int64)
    var_block[kv] = np.cumsum(new) - 1
    kdof = vdof[kv]
    num_r = int(kdof.sum())
    reduced_start = np.zeros(nvar, dtype=np.int64)
    reduced_start[kv] = np.cumsum(kdof) - kdof
    starts = reduced_start[kv][new]
    sizes = np.diff(np.append(starts, num_r))
    kept = ranges(bounds[kv], kdof)
    var_of_kept = np.repeat(kv, kdof)

    # kept-kept entries, row by row: each kept variable's list of (place in its rows, column of S)
    kk = np.flatnonzero(kmask[pa] & kmask[pb])
    lengths = vdof[pb[kk]]
    within = ranges(np.zeros_like(lengths), lengths)
    place = np.repeat(pair_start[kk], lengths) + within
    reduced_col = np.repeat(reduced_start[pb[kk]], lengths) + within
    width = np.bincount(pa[kk], weights=lengths, minlength=nvar).astype(np.int64)
    per_row = width[var_of_kept]
    listed = ranges((np.cumsum(width) - width)[var_of_kept], per_row)
    rr = np.repeat(crow[kept], per_row) + place[listed]
    rr_rows = np.repeat(np.arange(num_r), per_row)

    # couplings (kept block, eliminated variable), and where each one's entries are: the rows of
    # every kept variable a coupling's block holds, at the place of the pair (a, point)
    ce = np.flatnonzero(kmask[pa] & ~kmask[pb])
    entry_keys = var_block[pa[ce]] * num_e + e_of[pb[ce]]
    if (entry_keys[1:] >= entry_keys[:-1]).all():  # points numbered in column order: no sort
        first = np.ones(entry_keys.size, dtype=bool)
        first[1:] = entry_keys[1:] != entry_keys[:-1]
        keys, which = entry_keys[first], np.cumsum(first) - 1
    else:
        keys, which = np.unique(entry_keys, return_inverse=True)
    coupling_u, coupling_p = keys // num_e, keys % num_e
    sizes_t = torch.from_numpy(sizes)
    class_sizes, class_of, local = coupling_classes(torch.from_numpy(coupling_u), sizes_t)
    class_of_entry, local_entry = class_of.numpy()[which], local.numpy()[which]
    a = pa[ce]
    class_index = []
    for c, size in enumerate(class_sizes):
        mine = np.flatnonzero(class_of_entry == c)
        rows = vdof[a[mine]]
        where = ranges(local_entry[mine] * size + reduced_start[a[mine]] - starts[var_block[a[mine]]], rows)
        members = int((class_of.numpy() == c).sum())
        index = np.empty((members + 1) * size, dtype=np.int64)
        index[where] = crow[ranges(bounds[a[mine]], rows)] + np.repeat(pair_start[ce[mine]], rows)
        index[members * size:] = index[:size]  # the padding coupling reads the first one's entries
        class_index.append(torch.from_numpy(index.reshape(-1, size, 1) + np.arange(d)))
    return Analysis(torch.from_numpy(kept), torch.from_numpy(block_index.reshape(-1)), torch.from_numpy(starts),
                    sizes_t, torch.from_numpy(rr), torch.from_numpy(rr_rows), torch.from_numpy(reduced_col[listed]),
                    torch.from_numpy(coupling_u), torch.from_numpy(coupling_p), class_index, False)
