"""An Inductor graph pass for compiled solves on the CPU: small stacks become selections.

Jacobians and small matrices are usually assembled with ``torch.stack`` of per-entry
expressions (``torch.stack([x ** 2, ones], -1)``, the nine entries of a skew matrix). Inductor
lowers every ``cat`` on the CPU to a copy kernel that writes each piece into a materialized
buffer, which the consumers (the normal equations' reductions) read back: on small-block fits
that buffer traffic dominates a compiled solve. Its GPU heuristics would fuse such a stack into its consumers, but they are off
on the CPU.

This pass rewrites a ``cat`` whose pieces each have size 1 along the joined dimension (a stack)
of at most :data:`MAX_PIECES` pieces, on the CPU, into a chain of ``where(index == k, piece_k,
...)`` over an index along that dimension. That is pointwise, so Inductor fuses it into its
consumers and computes each entry where it is used. The values are selected, never combined:
results are bitwise those of the ``cat``. Larger or uneven concatenations are left alone.
The effect is measured by ``bench/bench_optimistix.py`` (numbers in bench/README.md); forcing
Inductor's own pointwise concatenation for every ``cat`` (``force_pointwise_cat``) instead was
slower on the rotation fit.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch

MAX_PIECES = 16  # a 4x4 matrix entry by entry; a chain of selections per element beyond that

try:  # the custom-pass interface of Inductor's FX graph cache (torch >= 2.6)
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover - older torch: compiled solves run without the pass
    CustomGraphPass = None  # type: ignore[misc, assignment]  # the optional import's fallback


def _stack_pieces(node: torch.fx.Node) -> Optional[tuple]:
    """``(pieces, piece values, dim, output value)`` when ``node`` is a CPU stack to rewrite."""
    if node.target is not torch.ops.aten.cat.default:
        return None
    pieces = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = node.meta.get("val")
    if not isinstance(out, torch.Tensor) or out.device.type != "cpu" or out.dim() == 0:
        return None
    if not isinstance(pieces, (list, tuple)) or not isinstance(dim, int):  # aten.cat(Tensor[], int)
        return None
    nodes = [p for p in pieces if isinstance(p, torch.fx.Node)]
    if not 2 <= len(pieces) <= MAX_PIECES or len(nodes) != len(pieces):
        return None
    values = [p.meta.get("val") for p in nodes]
    dim = dim % out.dim()
    if any(not isinstance(v, torch.Tensor) or v.dtype != out.dtype or v.dim() != out.dim()
           or v.shape[dim] != 1 for v in values):
        return None
    return nodes, values, dim, out


def _add(graph: torch.fx.Graph, target, args: tuple, kwargs: dict, value: torch.Tensor) -> torch.fx.Node:
    node = graph.call_function(target, args, kwargs)
    node.meta["val"] = value
    return node


def rewrite_stacks(graph: torch.fx.Graph) -> int:
    """Rewrites the small CPU stacks of a post-grad ``graph`` in place; returns how many."""
    from torch._guards import detect_fake_mode

    aten, prims = torch.ops.aten, torch.ops.prims
    count = 0
    for node in list(graph.nodes):
        found = _stack_pieces(node)
        if found is None:
            continue
        pieces, values, dim, out = found
        shape = [1] * out.dim()
        shape[dim] = len(pieces)
        index_kwargs = {"start": 0, "step": 1, "dtype": torch.int64, "device": out.device,
                        "requires_grad": False}
        fake_mode = detect_fake_mode(values)
        with graph.inserting_before(node), (fake_mode or contextlib.nullcontext()):
            value = prims.iota.default(len(pieces), **index_kwargs)
            index = _add(graph, prims.iota.default, (len(pieces),), index_kwargs, value)
            index = _add(graph, aten.view.default, (index, shape), {}, aten.view.default(value, shape))
            result, result_value = pieces[-1], values[-1]
            for k in range(len(pieces) - 2, -1, -1):
                mask_value = aten.eq.Scalar(index.meta["val"], k)
                mask = _add(graph, aten.eq.Scalar, (index, k), {}, mask_value)
                result_value = aten.where.self(mask_value, values[k], result_value)
                result = _add(graph, aten.where.self, (mask, pieces[k], result), {}, result_value)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        count += 1
    return count


if CustomGraphPass is not None:
    class StacksAsSelections(CustomGraphPass):
        """The pass as Inductor's ``post_grad_custom_pre_pass``; runs ``then`` (a pass the user
        configured there) first. ``rewritten`` counts the stacks rewritten so far."""

        def __init__(self, then: Any = None):
            self.then = then
            self.rewritten = 0

        def __call__(self, graph: torch.fx.Graph) -> None:
            if self.then is not None:
                self.then(graph)
            self.rewritten += rewrite_stacks(graph)

        def uuid(self) -> Any:
            then = None if self.then is None else (self.then.uuid() if hasattr(self.then, "uuid") else None)
            if self.then is not None and then is None:
                return None  # the user's pass cannot be cached: neither can the pair
            return (get_hash_for_files((__file__,)), then)
else:  # pragma: no cover
    StacksAsSelections = None  # type: ignore[misc, assignment]  # without the interface, no pass


def compile_options() -> dict:
    """The ``options`` for ``torch.compile`` of a solve chunk: the pass, chained after any
    post-grad pre-pass already configured."""
    if StacksAsSelections is None:  # pragma: no cover
        return {}
    from torch._inductor import config

    return {"post_grad_custom_pre_pass": StacksAsSelections(config.post_grad_custom_pre_pass)}
