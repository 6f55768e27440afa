"""Checks of user settings at the boundary, shared by the optimizers, their step rules, the linear
solvers and the configuration; and :func:`short_repr`, the bounded quotation of a user's value
that every such message uses (a value may be huge: a YAML alias expands to millions of items)."""
from __future__ import annotations

import math
import reprlib
import sys

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = 6
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def short_repr(value, limit: int = 200) -> str:
    """``repr(value)``, at most ``limit`` characters (nested containers and long strings are
    elided with ``...``; the whole repr is never built)."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int too long for str() (Python's digit limit)
        text = f"<{type(value).__name__} of {value.bit_length()} bits>" if isinstance(value, int) else "<?>"
    if len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def check_number(owner, key: str, value, integer: bool = False, minimum=None,
                 open_minimum: bool = False, allow_inf: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``owner``'s ``key`` unless ``value`` is a number
    (an ``int`` with ``integer``) at or above ``minimum`` (above, with ``open_minimum``).

    NaN is always refused, and so is an infinity unless ``allow_inf``: a NaN compares false with
    every bound, so it would pass as a tolerance and stop a solve at once as "converged"."""
    name = owner if isinstance(owner, str) else type(owner).__name__
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(
            f"{name}: {key} must be {'an int' if integer else 'a number'}, got {short_repr(value)}"
        )
    if not integer and not isinstance(value, float) and abs(value) > sys.float_info.max:
        value = math.inf if value > 0 else -math.inf  # an int beyond the float range
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not allow_inf)):
        raise ValueError(f"{name}: {key} must be a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (open_minimum and value == minimum)):
        bound = f"> {minimum}" if open_minimum else f">= {minimum}"
        raise ValueError(f"{name}: {key} must be {bound}, got {value!r}")


def check_bool(owner, key: str, value) -> None:
    """Raise ``TypeError`` naming ``owner``'s ``key`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {key} must be a bool, got {short_repr(value)}")


def check_choice(owner: str, key: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``owner``'s ``key`` unless ``value`` is one of ``choices``
    (compared by equality, so an unhashable value is refused like any other)."""
    if not any(value is choice or (isinstance(value, type(choice)) and value == choice) for choice in choices):
        raise ValueError(f"{owner}: {key} must be one of {list(choices)}, got {short_repr(value)}")
