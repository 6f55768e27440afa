"""Whether ``torch.compile`` is tracing: for code that picks another formulation when compiled.

Kept apart from the compiled driver so that asking does not import the compiler."""
from __future__ import annotations

import torch


def is_compiling() -> bool:
    """``torch.compiler.is_compiling()`` (missing from older torch releases nlls supports)."""
    check = getattr(torch.compiler, "is_compiling", None)
    if check is not None:
        return check()
    from torch._dynamo import is_compiling as dynamo_check  # pragma: no cover - older torch

    return dynamo_check()  # pragma: no cover
