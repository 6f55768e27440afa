"""``J^T J`` and ``J^T r`` of many small Jacobian blocks, by the fastest formulation per shape.

Curve fits and small factors give thousands of tall, thin blocks ``J`` (``dim x D``,
``dim >> D``); how their products are formed decides the time of a batched solve. Three
formulations compute the same values (:data:`NORMAL_VARIANTS`), and :func:`normal_rule` picks one
by shape, device and whether ``torch.compile`` is tracing. The thresholds are this library's
tuning, measured with ``bench/bench_normal_equations.py`` (the products alone) and
``bench/bench_optimistix.py`` (whole compiled solves); rerun those on new hardware before moving
them. Everything here is differentiable, also under ``torch.func`` and ``torch.compile``.

Where the rule picks outer products, the assembly of ``A`` (:mod:`nlls.solve.linearization`)
takes :func:`upper_rows` instead: each product of two columns formed once, entry-major (every
entry of the blocks contiguous over the blocks), and mirrored as it is added into ``A``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

from .tracing import is_compiling

LARGE = 4096  # rows * dim from which the bmm of the transposed view stops being the fastest
TALL = 20  # dim from which the contiguous transposed copy pays off
MANY = 1000  # blocks from which the outer products of short, wide blocks beat bmm
FUSED_BYTES = 4 * 2 ** 20  # largest J for which compiled per-entry reductions win (cache-bound)


def normal_bmm(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``J^T J`` and ``J^T r`` as two matrix products on the transposed view of ``J``."""
    jt = jac.transpose(-1, -2)
    return jt @ jac, (jt @ r[..., None])[..., 0]


def normal_transposed(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``J^T`` copied contiguous first, ``(..., D, dim)``: the products then run along memory."""
    jt = jac.transpose(-1, -2).contiguous()
    return jt @ jt.transpose(-1, -2), (jt @ r[..., None])[..., 0]


def normal_entries(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One product-and-sum per entry of the upper triangle of ``J^T J`` and per entry of
    ``J^T r``, mirrored into an exactly symmetric ``A``: elementwise work and reductions that
    ``torch.compile`` fuses into one loop over ``J``, for small ``D``."""
    size = jac.shape[-1]
    columns = jac.unbind(-1)
    upper = {}
    for i in range(size):
        for j in range(i, size):
            upper[i, j] = (columns[i] * columns[j]).sum(-1)
    rows = [torch.stack([upper[min(i, j), max(i, j)] for j in range(size)], dim=-1)
            for i in range(size)]
    g = torch.stack([(column * r).sum(-1) for column in columns], dim=-1)
    return torch.stack(rows, dim=-2), g


def normal_outer(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``J^T J`` as the sum of the outer products of ``J``'s rows, accumulated in place: for short,
    wide blocks (pose-graph edges, reprojections) elementwise work beats one tiny matrix product
    per block; exactly symmetric (every term is).

    The work runs entry-major: ``J`` is read as ``(dim, D, ...)`` (a copy unless its memory is
    laid out so already, :func:`entry_major`), and ``A`` and ``J^T r`` come back as views of
    ``(D, D, ...)`` and ``(D, ...)`` tensors, so every product runs along the blocks, contiguous,
    instead of over tiny rows."""
    dim = jac.shape[-2]
    jt = entry_major(jac, 2)  # (dim, D, ...)
    rt = r.movedim(-1, 0)  # (dim, ...)
    A = jt[0, :, None] * jt[0, None, :]
    g = jt[0] * rt[0]
    for k in range(1, dim):
        A = A.addcmul_(jt[k, :, None], jt[k, None, :])
        g = g.addcmul_(jt[k], rt[k])
    return A.movedim((0, 1), (-2, -1)), g.movedim(0, -1)


def upper_rows(jac: torch.Tensor, r: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """The outer products of :func:`normal_outer` with each product of two columns formed once:
    ``J^T J``'s upper triangle row by row, ``rows[i] = A[i, i:]`` as ``(D - i, ...)``, and
    ``J^T r`` as ``(D, ...)``, all entry-major. For a caller that mirrors the rows itself (the
    assembly of a sparse ``A`` adds ``rows[i][1:]`` at the transposed positions too): 21 of the
    36 products for ``D = 6``. ``J^T r`` comes back ``(..., D)``, a view as in :func:`normal_outer`."""
    dim, size = jac.shape[-2], jac.shape[-1]
    jt = entry_major(jac, 2)  # (dim, D, ...)
    rt = r.movedim(-1, 0)  # (dim, ...)
    rows = []
    for i in range(size):
        row = jt[0, i] * jt[0, i:]
        for k in range(1, dim):
            row = row.addcmul_(jt[k, i], jt[k, i:])
        rows.append(row)
    g = jt[0] * rt[0]
    for k in range(1, dim):
        g = g.addcmul_(jt[k], rt[k])
    return rows, g.movedim(0, -1)


def entry_major(blocks: torch.Tensor, entries: int) -> torch.Tensor:
    """``blocks (..., *E)`` (``E`` its last ``entries`` sizes) as the contiguous ``(*E, ...)``:
    a view when its memory is laid out entry-major already (what :func:`normal_outer` and the
    matrix weights return), else a copy."""
    moved = blocks.movedim(tuple(range(-entries, 0)), tuple(range(entries)))
    return moved.contiguous()


NORMAL_VARIANTS: Dict[str, Callable] = {
    "bmm": normal_bmm, "transposed": normal_transposed, "entries": normal_entries, "outer": normal_outer,
}


def normal_rule(jac: torch.Tensor) -> str:
    """Which of :data:`NORMAL_VARIANTS` forms the blocks of ``jac (..., dim, D)``.

    With ``rows`` the number of blocks (the product of the leading sizes):

    * on the CPU, eagerly, at least ``MANY`` blocks that are short and wide (``dim <= 2`` and
      ``D >= 6``, or ``dim <= 4`` and ``6 <= D <= 9``: pose-graph edges, reprojections): ``outer``
      (two to five times faster than ``bmm`` there, ``bench/bench_normal_equations.py``);
    * not on CPU, ``D > 3``, or ``rows * dim < LARGE``: ``bmm`` (small batches are overhead;
      with larger ``D`` the alternatives are mixed; the GPU rule is not measured yet);
    * under ``torch.compile`` with ``J`` at most ``FUSED_BYTES``: ``entries`` (fused reductions
      win while ``J`` stays in cache);
    * ``dim >= TALL``: ``transposed``;
    * else ``bmm``.
    """
    size, dim = jac.shape[-1], jac.shape[-2]
    if (jac.is_cpu and size >= 6 and (dim <= 2 or (dim <= 4 and size <= 9)) and not is_compiling()
            and jac.numel() >= MANY * dim * size):
        return "outer"
    if size > 3 or not jac.is_cpu or jac.numel() < LARGE * size:  # rows * dim < LARGE
        return "bmm"
    if is_compiling() and jac.numel() * jac.element_size() <= FUSED_BYTES:
        return "entries"
    return "transposed" if jac.shape[-2] >= TALL else "bmm"


def normal_blocks(jac: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(J^T J (..., D, D), J^T r (..., D))`` of the blocks ``jac (..., dim, D)``,
    ``r (..., dim)``, by the formulation :func:`normal_rule` picks.

    ``J^T J`` is exactly symmetric with ``entries`` (by construction) and ``transposed``;
    ``bmm`` on the transposed view can round ``A_ij`` and ``A_ji`` differently. It is not
    symmetrized: the Cholesky factorization reads one triangle only.
    """
    return NORMAL_VARIANTS[normal_rule(jac)](jac, r)


def gradient_blocks(jac: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``J^T r (..., D)`` alone: a product and a sum for up to 16 blocks on the CPU or under
    ``torch.compile`` (which makes it that anyway), else one matrix-vector product per block."""
    rows = jac.numel() // max(jac.shape[-1] * jac.shape[-2], 1)
    if is_compiling() or (rows <= 16 and jac.is_cpu):
        return (jac * r[..., None]).sum(-2)
    return (jac.transpose(-1, -2) @ r[..., None])[..., 0]
