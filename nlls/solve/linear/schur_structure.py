"""The structure of a Schur complement, analysed once per sparsity pattern.

The normal matrix is split by a set ``E`` of *eliminated* variables (bundle adjustment's points),
each of ``d`` columns, with no entry of the matrix between two of them, and the *kept* columns
``R`` (the cameras)::

    A = [ A_RR  A_RE ]        S = A_RR - A_RE A_EE^{-1} A_ER     (the reduced camera system)
        [ A_ER  A_EE ]        A_EE block diagonal: one d x d block per eliminated variable

Everything here is index arithmetic on the pattern (CPU, once); the numbers are in
:mod:`nlls.solve.linear.schur`.

* **Kept blocks.** Consecutive kept columns whose rows of the pattern are identical (the columns
  of one variable always are) form one block ``u``; ``A_RE`` is then made of dense ``s_u x d``
  *couplings* ``F_k`` for every pair ``(u, p)`` the pattern links. Blocks of equal size form a
  class and are handled in one batched product.
* **Pairs.** ``S_uv -= sum_p F_up A_pp^{-1} F_vp^T`` runs over pairs of couplings sharing a point
  ``p``; only ``u <= v`` is computed. The pairs of one *destination block* ``(u, v)`` are listed
  side by side, so the block is one matrix product ``[Z_up1 .. Z_upn] [Z_vp1 .. Z_vpn]^T`` (a
  few large products instead of one tiny product per pair: torch runs tiny batched products
  slowly on the CPU). Destination blocks with about as many pairs (rounded up by at most a
  quarter) share one batched product, the missing pairs padded with a zero coupling. A destination block is
  written at its place in ``S`` and, for ``u < v``, transposed at ``(v, u)``.
* **Storage of S.** ``"dense"``: ``nR x nR`` row-major; ``"sparse"``: the values of a
  :class:`~nlls.solve.systems.SparsePattern` of ``S`` (kept-kept entries of ``A`` and the
  destination blocks).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..systems import SparsePattern
from .schur_blocks import Analysis, block_analysis, coupling_classes


class CouplingClass:
    """The couplings ``F_k`` of the kept blocks of one size ``s``: ``index (K + 1, s, d)``
    positions in the values (``nnz``: an entry the pattern lacks, read as zero), ``point (K + 1,)``
    the eliminated variable, ``rows (K, s)`` the kept columns in the reduced numbering. The last
    coupling is the padding: its point ``nE`` has a zero inverse block, so its ``Z`` is zero."""

    def __init__(self, size: int, index: torch.Tensor, point: torch.Tensor, rows: torch.Tensor):
        self.size, self.index, self.point, self.rows = size, index, point, rows


class PairBucket:
    """Destination blocks of coupling classes ``c1``, ``c2`` with at most ``L`` pairs each:
    ``first``, ``second`` ``(n, L)`` local coupling indices (the class's size pads: a zero
    coupling), ``positions (n * s1 * s2)`` where the blocks go in ``S``, then for the blocks off
    the diagonal (``mirror``) their transposes (``mirror_positions``)."""

    def __init__(self, c1: int, c2: int, first: torch.Tensor, second: torch.Tensor,
                 positions: torch.Tensor, mirror: torch.Tensor, mirror_positions: torch.Tensor):
        self.c1, self.c2, self.first, self.second = c1, c2, first, second
        self.positions, self.mirror, self.mirror_positions = positions, mirror, mirror_positions
        self.same = c1 == c2 and torch.equal(first, second)  # one gather serves both sides


class SchurStructure:
    """Index tensors of the Schur complement of ``pattern`` eliminating ``eliminated`` columns.

    Args:
        pattern: the pattern of ``A`` (both triangles).
        eliminated: ``(nE, d)`` int64: the columns of each eliminated variable.
        reduced: ``"dense"`` or ``"sparse"``: how ``S`` is stored.
        owner: the solver's name for error messages.

    Raises:
        ValueError: columns out of range or repeated, or an entry of ``A`` linking two
            eliminated variables (they cannot be eliminated together).
    """

    def __init__(self, pattern: SparsePattern, eliminated: torch.Tensor, reduced: str,
                 owner: str = "Schur"):
        dof = pattern.dof
        num_e, d = eliminated.shape
        flat_e = eliminated.reshape(-1)
        if flat_e.numel() and (int(flat_e.min()) < 0 or int(flat_e.max()) >= dof):
            raise ValueError(f"{owner}: eliminated columns must lie in [0, {dof}), got "
                             f"{int(flat_e.min())} to {int(flat_e.max())}")
        if flat_e.numel() and int(np.bincount(flat_e.numpy(), minlength=dof).max()) > 1:
            raise ValueError(f"{owner}: an eliminated column is listed twice")
        self.dof, self.nnz, self.num_eliminated, self.d = dof, pattern.nnz, num_e, d
        self.reduced = reduced
        found = block_analysis(pattern, eliminated, owner)
        front = found if found is not None else _entry_analysis(pattern, eliminated, owner)
        kept, starts, sizes = front.kept, front.starts, front.sizes
        coupling_u, coupling_p, class_of, local = front.coupling_u, front.coupling_p, front.class_of, front.local
        rr_rows, rr_cols = front.rr_rows, front.rr_cols
        num_r = kept.numel()
        self.eliminated, self.kept, self.num_kept = flat_e, kept, num_r
        self.block_index = front.block_index  # (nE*d*d,) A_EE's blocks in the extended values
        self.block_sizes = sizes
        self.classes: List[CouplingClass] = []
        for c, (size, index) in enumerate(zip(front.class_sizes, front.class_index)):
            members = torch.nonzero(class_of == c).flatten()
            block_rows = starts[coupling_u[members]][:, None] + torch.arange(size)
            # the last coupling reads the entries of the first one, with the zero block num_e as
            # point, so its Z is zero (the padding of the pair buckets)
            self.classes.append(CouplingClass(
                size, index,
                torch.cat([coupling_p[members], torch.tensor([num_e])]), block_rows))
        first_all, second_all = _pairs(coupling_u, coupling_p, num_e)
        self.pattern: Optional[SparsePattern] = None
        self._keys: Optional[torch.Tensor] = None  # the sorted keys i * nR + j of a sparse S
        grouped: List[Tuple[int, int, np.ndarray, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]] = []
        num_u = sizes.numel()
        u_of, class_np, local_np = coupling_u.numpy(), class_of.numpy(), local.numpy()
        for c1 in range(len(self.classes)):
            for c2 in range(len(self.classes)):
                first, second = first_all, second_all
                if len(self.classes) > 1:
                    sel = np.flatnonzero((class_np[first_all] == c1) & (class_np[second_all] == c2))
                    first, second = first_all[sel], second_all[sel]
                if not first.size:
                    continue
                dest_keys, dest = _unique(u_of[first] * num_u + u_of[second], num_u * num_u)
                grouped.append((c1, c2, local_np[first], local_np[second], dest,
                                torch.from_numpy(dest_keys // num_u), torch.from_numpy(dest_keys % num_u)))
        if reduced == "sparse":
            columns = [torch.stack([rr_rows, rr_cols], dim=1)]
            for c1, c2, _, _, _, d1, d2 in grouped:
                columns.append(torch.cat([starts[d1][:, None] + torch.arange(self.classes[c1].size),
                                          starts[d2][:, None] + torch.arange(self.classes[c2].size)],
                                         dim=1))
            # S is dense on pairs of kept blocks (their rows are identical): a pattern of blocks
            self.pattern = SparsePattern(num_r, columns, torch.cat([starts, torch.tensor([num_r])]))
            self.size = self.pattern.nnz
        else:
            self.size = num_r * num_r
        self.rr_source = front.rr
        #: whether some block reads an entry the pattern lacks (then the values get a zero slot)
        self.needs_zero = front.needs_zero
        self.rr_positions = self._positions(rr_rows, rr_cols)
        #: where S's diagonal is stored (a shift of A's diagonal on the kept columns lands there)
        self.diagonal = self._positions(torch.arange(num_r), torch.arange(num_r))
        self.buckets: List[PairBucket] = []
        self.num_pairs = 0  # pairs of couplings summed into S (the work of forming it)
        for c1, c2, first, second, dest, d1, d2 in grouped:
            self.num_pairs += first.size
            s1, s2 = self.classes[c1].size, self.classes[c2].size
            i = (starts[d1][:, None, None] + torch.arange(s1)[None, :, None]).expand(-1, s1, s2)
            j = (starts[d2][:, None, None] + torch.arange(s2)[None, None, :]).expand(-1, s1, s2)
            positions = self._positions(i, j)
            mirror_positions = self._positions(j, i)
            pads = (self.classes[c1].index.shape[0] - 1, self.classes[c2].index.shape[0] - 1)
            off_diagonal = (d1 != d2).numpy()
            for blocks, slots in _buckets(dest, d1.numel(), ~off_diagonal):
                chosen = np.flatnonzero(off_diagonal[blocks])
                self.buckets.append(PairBucket(
                    c1, c2, _padded(first, slots, pads[0]), _padded(second, slots, pads[1]),
                    positions[torch.from_numpy(blocks)].reshape(-1), torch.from_numpy(chosen),
                    mirror_positions[torch.from_numpy(blocks[chosen])].reshape(-1)))
        self._keys = None
        self._device_cache: Dict[str, "SchurStructure"] = {}

    def _positions(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Where entries ``(i, j)`` of ``S`` are stored."""
        if self.pattern is None:
            return i * self.num_kept + j
        if self._keys is None:
            self._keys = self.pattern.rows * self.num_kept + self.pattern.cols
        return torch.searchsorted(self._keys, i * self.num_kept + j)

    def on(self, device: torch.device) -> "SchurStructure":
        """A shallow copy whose index tensors are on ``device`` (moved once, then cached)."""
        if device.type == "cpu":
            return self
        key = str(device)
        if key not in self._device_cache:
            copy = object.__new__(SchurStructure)
            copy.__dict__.update({k: _to(v, device) for k, v in self.__dict__.items()
                                  if k != "_device_cache"})
            copy.__dict__["_device_cache"] = {}
            self._device_cache[key] = copy
        return self._device_cache[key]


def _entry_analysis(pattern: SparsePattern, eliminated: torch.Tensor, owner: str) -> Analysis:
    """The :class:`~nlls.solve.linear.schur_blocks.Analysis` found entry by entry (any eliminated
    columns: those that are not the pattern's variables, a pattern of scalar variables)."""
    dof, nnz = pattern.dof, pattern.nnz
    rows, cols = pattern.rows, pattern.cols
    num_e, d = eliminated.shape
    flat_e = eliminated.reshape(-1)
    e_var = torch.full((dof,), -1, dtype=torch.long)
    e_var[flat_e] = torch.arange(num_e).repeat_interleave(d)
    e_off = torch.zeros(dof, dtype=torch.long)
    e_off[flat_e] = torch.arange(d).repeat(num_e)
    kept = torch.nonzero(e_var < 0).flatten()
    num_r = kept.numel()
    r_pos = torch.full((dof,), -1, dtype=torch.long)
    r_pos[kept] = torch.arange(num_r)

    row_e, col_e = e_var[rows] >= 0, e_var[cols] >= 0
    # eliminated-eliminated entries: inside one variable's d x d block only
    both = torch.nonzero(row_e & col_e).flatten()
    linked = e_var[rows[both]] != e_var[cols[both]]
    if bool(linked.any()):
        q = both[torch.nonzero(linked)[0, 0]]
        raise ValueError(f"{owner}: the eliminated columns {int(rows[q])} and {int(cols[q])} "
                         "belong to different eliminated variables that a cost function "
                         "links; they cannot be eliminated together")
    block_index = torch.full((num_e * d * d,), nnz, dtype=torch.long)
    block_index[e_var[rows[both]] * d * d + e_off[rows[both]] * d + e_off[cols[both]]] = both

    block, offset, starts, sizes = _kept_blocks(pattern, kept, e_var)
    # kept-kept entries of A go to S as they are
    rr = torch.nonzero(~row_e & ~col_e).flatten()
    rr_rows, rr_cols = r_pos[rows[rr]], r_pos[cols[rr]]
    # couplings: (kept block, eliminated variable) pairs the pattern links
    re = torch.nonzero(~row_e & col_e).flatten()
    re_rows, re_cols = rows[re], cols[re]
    keys, which = _couplings(block[re_rows], e_var[re_cols], offset[re_rows] == 0,
                             e_off[re_cols] == 0, sizes.numel(), num_e)
    coupling_u, coupling_p = keys // max(num_e, 1), keys % max(num_e, 1)
    class_sizes, class_of, local = coupling_classes(coupling_u, sizes)
    class_index = []
    for c, size in enumerate(class_sizes):
        mine = torch.nonzero(class_of[which] == c).flatten()
        index = torch.full((int((class_of == c).sum()) * size * d,), nnz, dtype=torch.long)
        k = local[which[mine]]
        index[(k * size + offset[re_rows[mine]]) * d + e_off[re_cols[mine]]] = re[mine]
        index = index.reshape(-1, size, d)
        class_index.append(torch.cat([index, index[:1]]))
    needs_zero = bool((block_index == nnz).any()) or any(bool((i == nnz).any()) for i in class_index)
    return Analysis(kept, block_index, starts, sizes, rr, rr_rows, rr_cols, coupling_u, coupling_p,
                    class_index, needs_zero)

def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, (CouplingClass, PairBucket)):
        copy = object.__new__(type(value))
        copy.__dict__.update({k: _to(v, device) for k, v in value.__dict__.items()})
        return copy
    return value


def _kept_blocks(pattern: SparsePattern, kept: torch.Tensor, e_var: torch.Tensor):
    """Blocks of consecutive kept columns with identical pattern rows.

    Returns:
        ``block (D,)`` the block of each kept column (-1 for eliminated ones), ``offset (D,)``
        its place in the block, ``starts (nU,)`` each block's first reduced column and
        ``sizes (nU,)``.
    """
    dof = pattern.dof
    lengths = pattern.crow[1:] - pattern.crow[:-1]
    same = torch.zeros(max(dof - 1, 0), dtype=torch.bool)
    if dof > 1:
        same = lengths[:-1] == lengths[1:]
        rows, cols = pattern.rows, pattern.cols
        candidate = torch.nonzero(rows < dof - 1).flatten()
        candidate = candidate[same[rows[candidate]]]
        partner = candidate + lengths[rows[candidate]]
        mismatch = torch.zeros(dof - 1, dtype=torch.long).index_add_(
            0, rows[candidate], (cols[candidate] != cols[partner]).long())
        same = same & (mismatch == 0) & (e_var[:-1] < 0) & (e_var[1:] < 0)
    num_r = kept.numel()
    new = torch.ones(num_r, dtype=torch.bool)
    if num_r > 1:
        previous = kept[:-1]
        new[1:] = (kept[1:] != previous + 1) | ~same[previous]
    block_of_kept = torch.cumsum(new.long(), 0) - 1
    starts = torch.nonzero(new).flatten()
    sizes = torch.diff(torch.cat([starts, torch.tensor([num_r])]))
    block = torch.full((dof,), -1, dtype=torch.long)
    block[kept] = block_of_kept
    offset = torch.zeros(dof, dtype=torch.long)
    offset[kept] = torch.arange(num_r) - starts[block_of_kept]
    return block, offset, starts, sizes


def _couplings(u_of: torch.Tensor, p_of: torch.Tensor, first_row: torch.Tensor,
               first_col: torch.Tensor, num_u: int, num_e: int):
    """``(keys, which)``: the sorted keys ``u * nE + p`` of the couplings of the kept-eliminated
    entries, and each entry's coupling. The entries at a block's first row and a variable's
    first column name every coupling once where the blocks are complete (as a linearization's
    pattern is); a dense table then finds each entry's coupling, without sorting every entry."""
    stride = max(num_e, 1)
    entry_keys = u_of * stride + p_of
    if num_u * stride <= 1 << 26:
        keys = torch.sort(entry_keys[first_row & first_col]).values
        table = torch.full((num_u * stride,), -1, dtype=torch.long)
        table[keys] = torch.arange(keys.numel())
        which = table[entry_keys]
        if not bool((which < 0).any()):
            return keys, which
    return torch.unique(entry_keys, return_inverse=True)


def _pairs(coupling_u: torch.Tensor, coupling_p: torch.Tensor, num_e: int):
    """``(first, second)``: every pair of couplings on the same eliminated variable with
    ``u(first) <= u(second)``, by ``first`` then ``u(second)``. The couplings are sorted by
    ``(u, p)``, so a point's couplings in coupling order have increasing ``u``: each pairs with
    itself and those after it."""
    point = coupling_p.numpy()
    count = point.size
    if not count:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    order = np.argsort(point, kind="stable")
    per_point = np.bincount(point, minlength=num_e)
    begin = np.cumsum(per_point) - per_point
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count) - begin[point[order]]  # place among the point's couplings
    after = per_point[point] - rank
    first = np.repeat(np.arange(count), after)
    second = order[np.repeat(begin[point] + rank - (np.cumsum(after) - after), after) + np.arange(first.size)]
    return first, second


def _unique(keys: np.ndarray, span: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(sorted distinct keys, each key's place among them)`` of keys in ``[0, span)``: a table
    of the span when it is small, a sort otherwise."""
    if span > max(1 << 22, 4 * keys.size):
        return np.unique(keys, return_inverse=True)
    present = np.zeros(span, dtype=bool)
    present[keys] = True
    return np.flatnonzero(present), (np.cumsum(present) - 1)[keys]


def _buckets(dest: np.ndarray, num_dest: int, diagonal: np.ndarray):
    """Destination blocks grouped by their count of pairs rounded up to a quarter of its power
    of two (four widths an octave, at most a quarter padding), blocks on the diagonal of ``S``
    apart (their pairs are ``(k, k)``: one gather serves both sides):
    ``(blocks (n,), slots (n, L))`` per group, ``slots`` the pair indices of each block (-1
    where a block has fewer than ``L``)."""
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=num_dest)
    begin = np.cumsum(counts) - counts
    counts1 = np.maximum(counts, 1)
    step = 2 ** np.maximum(np.frexp(counts1)[1] - 3, 0)  # frexp: exactly floor(log2) + 1
    width = (counts1 + step - 1) // step * step  # at most a quarter more than the count
    key = 2 * width + diagonal
    for value in np.unique(key).tolist():
        blocks = np.flatnonzero(key == value)
        size = value // 2
        within = np.arange(size)
        where = begin[blocks][:, None] + within
        slots = np.where(within < counts[blocks][:, None], order[np.minimum(where, max(dest.size - 1, 0))], -1)
        yield blocks, slots


def _padded(couplings: np.ndarray, slots: np.ndarray, pad: int) -> torch.Tensor:
    """``couplings[slots]`` with ``pad`` where a slot is -1."""
    return torch.from_numpy(np.where(slots >= 0, couplings[np.maximum(slots, 0)], pad))
