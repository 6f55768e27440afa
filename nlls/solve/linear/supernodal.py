"""nlls's own sparse Cholesky: supernodal, level by level, in batched tensor operations.

The ``"supernodal"`` backend of :class:`~nlls.SparseCholesky`. It needs nothing beyond PyTorch
(and SciPy for the one-time ordering), runs on CPU and CUDA, and on a plain install it is the
CPU backend of large problems whose elimination tree is not too deep (``bench/bench_sparse_factor.py``:
0.5 of SuperLU's time on w10000.graph's matrix, 0.13 on a 20,000-pose graph's).

The symbolic analysis (:mod:`~nlls.solve.linear.supernodal_symbolic`) groups the supernodes of
each level of the elimination tree into padded dense *panels*: a supernode's ``K`` columns of
the factor, its ``K x K`` diagonal block over the ``M x K`` block of the rows below. The numeric
factorization runs level by level, leaves first; one group of panels costs a handful of batched
operations:

* its panels are a view of one buffer into which the matrix's entries were scattered at the start
  (with the identity on the padded diagonal) and the updates of every supernode below were
  added as those were factored;
* ``L11 = chol(F11)`` (``torch.linalg.cholesky_ex``: a block that is not positive definite sets
  its element's failure flag, nothing is raised and no other element is touched), and its
  inverse (a triangular solve with the identity: tiny blocks, kept for the solves);
* ``L21 = F21 L11^{-T}`` and the update ``-L21 L21^T`` (two batched products);
* the update's lower triangle is added into the panels of the columns it belongs to (one scatter:
  the supernodes above whose columns are among this one's rows).

Solves run the same groups forward (``L y = b``, leaves first) and backward (``L^T x = y``),
products with the kept blocks. A batch of ``B`` matrices of one pattern shares the analysis:
every operation carries the batch as its leading dimension, so the number of operations does not
grow with ``B``, and each element's panels depend on its own values only.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..systems import SparsePattern
from .supernodal_symbolic import SupernodalAnalysis


class SupernodalFactor:
    """The numeric factors of ``B`` matrices of one pattern.

    Per supernode it keeps ``L11^{-1}`` (the inverse of its diagonal block's factor, so that the
    off-diagonal block ``L21 = F21 L11^{-T}`` and every solve are matrix products) and ``-L21``.

    Attributes:
        ok: ``(B,)`` whether each element's matrix was positive definite (its factors are then
            used; a failed element's solutions are not meaningful and the caller zeroes them).
    """

    def __init__(self, analysis: SupernodalAnalysis, values: torch.Tensor, buffer: torch.Tensor):
        self.analysis = analysis
        batch, device, dtype = values.shape[0], values.device, values.dtype
        maps = self.maps = analysis.on(device)
        self.batch, self.dtype = batch, dtype
        buffer.zero_()  # scratch: nothing kept refers to it once the factorization is done
        buffer.index_fill_(1, maps["identity"], 1.0)
        buffer.index_copy_(1, maps["value_target"], values.index_select(1, maps["value_source"]))
        infos = []
        identities = maps.setdefault(("identities", dtype), {})  # the k x k identities, made once
        self.blocks: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = []
        for group, _, _, source, target in maps["groups"]:
            n, k, m, size = len(group.members), group.k, group.m, group.size
            panel = buffer[:, group.offset:group.offset + n * size * k].view(batch, n, size, k)
            lower, info = torch.linalg.cholesky_ex(panel[..., :k, :])
            infos.append(info.reshape(batch, -1))
            if k not in identities:
                identities[k] = torch.eye(k, dtype=dtype, device=device)
            inverse = torch.linalg.solve_triangular(lower, identities[k].expand_as(lower), upper=False)
            negative = None
            if m:
                below = panel[..., k:, :] @ inverse.mT  # L21
                negative = below.neg()
                update = (negative @ below.mT).reshape(batch, -1)
                buffer.index_add_(1, target, update.index_select(1, source))  # F -= L21 L21^T
            self.blocks.append((inverse, negative))
        self.ok = torch.cat(infos, dim=1).eq(0).all(dim=1) if infos else torch.ones(batch, dtype=torch.bool, device=device)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``x (B, n)`` with ``A x = rhs (B, n)`` (original order of the unknowns)."""
        maps, batch, dof = self.maps, self.batch, self.analysis.dof
        work = rhs.new_zeros(batch, dof + 1)  # the last entry: where the padding points (stays 0)
        work[:, :dof] = rhs.index_select(1, maps["permutation"])
        groups = maps["groups"]
        for (group, columns, rows, _, _), (inverse, negative) in zip(groups, self.blocks):
            y = inverse @ work.index_select(1, columns).view(batch, len(group.members), group.k, 1)
            work.index_copy_(1, columns, y.reshape(batch, -1))
            if negative is not None:
                work.index_add_(1, rows, (negative @ y).reshape(batch, -1))
        work[:, dof] = 0.0
        for (group, columns, rows, _, _), (inverse, negative) in zip(reversed(groups), reversed(self.blocks)):
            n = len(group.members)
            y = work.index_select(1, columns).view(batch, n, group.k, 1)
            if negative is not None:
                y = y.add_(negative.mT @ work.index_select(1, rows).view(batch, n, group.m, 1))
            work.index_copy_(1, columns, (inverse.mT @ y).reshape(batch, -1))
        return work.index_select(1, maps["inverse"])


class SupernodalCholesky:
    """The analysis of one pattern (made once) and its numeric factorizations."""

    def __init__(self, pattern: SparsePattern):
        self.analysis = SupernodalAnalysis(pattern)
        self._buffer: Optional[torch.Tensor] = None

    def factor(self, values: torch.Tensor) -> SupernodalFactor:
        """Factor ``values (B, nnz)`` (the pattern's values of ``B`` matrices)."""
        values = values.detach()
        shape = (values.shape[0], self.analysis.buffer_size)
        buffer = self._buffer
        if buffer is None or buffer.shape != shape or buffer.dtype != values.dtype or buffer.device != values.device:
            # the panels' buffer, reused by the next factorization of this shape (a fresh one
            # each time costs the operating system's zeroing of new pages: ~1/4 of a pose
            # graph's factorization)
            buffer = self._buffer = torch.empty(shape, dtype=values.dtype, device=values.device)
        return SupernodalFactor(self.analysis, values, buffer)
