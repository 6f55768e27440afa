"""Checks of user settings at the boundary, shared by the optimizers and their step rules."""
from __future__ import annotations


def check_number(owner, key: str, value, integer: bool = False, minimum=None,
                 open_minimum: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``owner``'s ``key`` unless ``value`` is a number
    (an ``int`` with ``integer``) at or above ``minimum`` (above, with ``open_minimum``)."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(
            f"{type(owner).__name__}: {key} must be {'an int' if integer else 'a number'}, "
            f"got {value!r}"
        )
    if minimum is not None and (value < minimum or (open_minimum and value == minimum)):
        bound = f"> {minimum}" if open_minimum else f">= {minimum}"
        raise ValueError(f"{type(owner).__name__}: {key} must be {bound}, got {value!r}")


def check_bool(owner, key: str, value) -> None:
    """Raise ``TypeError`` naming ``owner``'s ``key`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {key} must be a bool, got {value!r}")
