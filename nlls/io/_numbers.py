"""Decimal tokens of a byte buffer to numbers in a few numpy passes, exactly as ``float()`` and
``int()`` read them.

Python's ``float()`` (a correctly rounded ``strtod``) costs some hundreds of nanoseconds per
number, and a pose graph or BAL file holds close to a million. Here every token of the usual form
``[+-]digits[.digits][(e|E)[+-]digits]`` (at most 24 characters, 19 from the first significant
digit to the exponent mark, a 3-digit exponent) is
converted at once:

* tokens are taken by length: single characters (the 0s and 1s of information matrices) and
  ids of up to eight digits directly, the others as ``(n, 8 | 16 | 24)`` byte matrices whose
  bytes are classified (digit, dot, exponent mark, sign), the grammar checked by counting and
  locating those classes;
* the mantissa's digits, right-aligned, are read eight at a time from ``uint64`` words (the
  classic SWAR digit trick), the dot removed arithmetically: an exact integer ``m < 10**19``;
* ``m * 10**q`` is rounded once: in float64 when ``m < 2**53`` and ``|q| <= 22`` (both factors
  exact: Clinger's fast path), else in ``numpy.longdouble`` where it holds 64 bits (x86), which is
  exact unless the 64-bit result sits on a midpoint of two doubles (then the token is left to
  ``float()``, about one number in two thousand).

Tokens outside that form (``inf``, ``1_000``, 25 characters, ...) are flagged ``ok = False``; the
caller converts those with ``float()``/``int()`` or reports them.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: bytes a token is read in (longer tokens are left to ``float()``); a multiple of 8
WIDTH = 24
#: zero bytes the buffer must have on either side, so that every window stays inside it
PAD = WIDTH

#: ``_BYTES[k + 16]``: a little-endian word whose first ``k`` bytes are 0xFF (``-16 <= k <= 24``)
_BYTES = np.array([(1 << (8 * min(max(k, 0), 8))) - 1 for k in range(-16, 25)], dtype=np.uint64)
_POW10_U64 = np.array([10**k for k in range(20)], dtype=np.uint64)
_POW10_F64 = np.array([10.0**k for k in range(23)])


def _longdouble_is_wide() -> bool:
    """Whether ``numpy.longdouble`` has a 64-bit (or wider) significand with exact arithmetic."""
    if np.finfo(np.longdouble).nmant < 63:
        return False
    powers = _powers_of_ten()
    big = powers[19]  # 10**19 > 2**63: exact only with a 64-bit significand
    return bool(big - (big - np.longdouble(1)) == 1) and int(powers[27] // powers[20]) == 10**7


def _powers_of_ten() -> np.ndarray:
    """``10**k`` for ``k <= 27`` in long double, each exact when the significand has 64 bits."""
    powers = np.ones(28, dtype=np.longdouble)
    for k in range(1, 28):
        powers[k] = powers[k - 1] * np.longdouble(10)
    return powers


_WIDE = _longdouble_is_wide()
_POW10_LD = _powers_of_ten()


def _row_count(mask: np.ndarray) -> np.ndarray:
    """How many entries of each row of a ``(n, 8 k)`` bool matrix are set."""
    counts = np.bitwise_count(mask.view(np.uint64))
    total = counts[:, 0].astype(np.int64)
    for k in range(1, counts.shape[1]):
        total += counts[:, k]
    return total


def _keep_first(words: np.ndarray, count: np.ndarray) -> None:
    """Zero all but the first ``count[i]`` bytes of each row of ``(n, k)`` words, in place."""
    for k in range(words.shape[1]):
        words[:, k] &= _BYTES.take(count - 8 * k + 16, mode="clip")


def _first(mask: np.ndarray, has: np.ndarray, default: np.ndarray) -> np.ndarray:
    """The first set column of each row of ``mask`` where ``has``, else ``default``."""
    rows = np.flatnonzero(has)
    if rows.size == has.size:
        return mask.argmax(axis=1)
    out = default.copy()
    out[rows] = mask[rows].argmax(axis=1)
    return out


def _eight_digits(words: np.ndarray) -> np.ndarray:
    """The value of eight ASCII digits per ``uint64`` word (the first digit in the lowest byte)."""
    v = words - np.uint64(0x3030303030303030)
    v = v * np.uint64(10) + (v >> np.uint64(8))
    mask = np.uint64(0x000000FF000000FF)
    v = ((v & mask) * np.uint64(100 + (1000000 << 32))
         + ((v >> np.uint64(16)) & mask) * np.uint64(1 + (10000 << 32))) >> np.uint64(32)
    return v & np.uint64(0xFFFFFFFF)


def _x87_midpoint_bits() -> bool:
    """Whether long doubles are x87 extended numbers whose first ``uint64`` is the significand."""
    if np.finfo(np.longdouble).nmant != 63 or np.dtype(np.longdouble).itemsize not in (12, 16):
        return False
    one = np.ones(1, np.longdouble)
    half_ulp = one + np.longdouble(2.0) ** -53  # half-way between 1 and the next double
    low = [int(x.view(np.uint64)[0]) & 0x7FF for x in (one, half_ulp)]
    return low == [0, 0x400]


_X87 = _WIDE and _x87_midpoint_bits()


def _midpoint(wide: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """Where the long double ``wide`` lies exactly half-way between ``rounded`` and a neighbour."""
    if _X87:  # the 11 significand bits a double drops are 10000000000
        words = wide.view(np.uint64).reshape(wide.size, -1)[:, 0]
        return (words & np.uint64(0x7FF)) == np.uint64(0x400)
    here = rounded.astype(np.longdouble)
    up = np.nextafter(rounded, np.inf).astype(np.longdouble)
    down = np.nextafter(rounded, -np.inf).astype(np.longdouble)
    two = np.longdouble(2)
    return (wide * two == here + up) | (wide * two == here + down)


def parse_numbers(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  integers: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """The numbers of the tokens ``buffer[starts[k]:ends[k]]``.

    Args:
        buffer: ``uint8`` bytes with :data:`PAD` zero bytes before ``starts.min()`` and after
            ``ends.max()``.
        starts, ends: int64 token bounds.
        integers: read ``[+-]digits`` tokens as int64 (``int()``) instead of floats.

    Returns:
        ``(values, ok)``: float64 (or int64) values, and which tokens they hold; the others
        (zero in ``values``) are not of the fast form and need ``float()``/``int()``.
    """
    n = starts.size
    dtype = np.int64 if integers else np.float64
    if n == 0:
        return np.zeros(0, dtype), np.zeros(0, bool)
    length = ends - starts
    if integers:  # most ids: up to eight digits, in one word
        small, ok = _short_integers(buffer, starts, length)
        rest = np.flatnonzero(~ok)
        if rest.size:
            small[rest], ok[rest] = _parse(buffer, starts[rest], ends[rest], True)
        return small, ok
    # by length: single characters (information matrices' 0 and 1) alone, then 8, 16, 24 bytes
    buckets = np.minimum((length + 7) // 8, 3) + (length > 1)  # 1: one character
    present = np.flatnonzero(np.bincount(buckets, minlength=5))
    if present.size == 1 and present[0] != 1:
        return _parse(buffer, starts, ends, False)
    values, ok = np.zeros(n), np.zeros(n, bool)
    for bucket in present.tolist():
        rows = np.flatnonzero(buckets == bucket)
        if bucket == 1:
            digit = buffer[starts[rows]].astype(np.int64) - 48
            ok[rows] = (digit >= 0) & (digit <= 9)
            values[rows] = np.where(ok[rows], digit, 0)
        else:
            values[rows], ok[rows] = _parse(buffer, starts[rows], ends[rows], False)
    return values, ok


def _short_integers(buffer: np.ndarray, starts: np.ndarray,
                    length: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``parse_numbers(..., integers=True)`` of the tokens of one to eight digits (no sign)."""
    word = sliding_window_view(buffer, 8)[starts].view("<u8")[:, 0]
    inside = _BYTES.take(length + 16, mode="clip")
    zeros = np.uint64(0x3030303030303030)
    digits = (word & inside) | (zeros & ~inside)  # '0' past the token
    high = np.uint64(0x8080808080808080)
    ok = ((((digits + np.uint64(0x4646464646464646)) | (digits - zeros)) & high) == 0)
    ok &= (length >= 1) & (length <= 8)
    shift = (np.uint64(8) - np.minimum(length, 8).astype(np.uint64)) * np.uint64(8)
    aligned = ((digits & inside) << shift) | (zeros & _BYTES.take(24 - length, mode="clip"))
    values = _eight_digits(aligned[:, None])[:, 0].astype(np.int64)
    values[~ok] = 0
    return values, ok


def _parse(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray,
           integers: bool) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`parse_numbers` of tokens of any form (flagged where not of the fast form)."""
    n = starts.size
    length = ends - starts
    width = min(WIDTH, -(-int(length.max()) // 8) * 8)  # 8, 16 or 24 bytes a token
    chars = sliding_window_view(buffer, width)[starts]
    words = chars.view("<u8")
    _keep_first(words, length)  # zero bytes past the token
    is_digit = chars - np.uint8(48) < 10
    is_dot = chars == ord(".")
    is_exp = (chars | np.uint8(32)) == ord("e")
    is_sign = (chars == ord("+")) | (chars == ord("-"))
    digit_count, dot_count = _row_count(is_digit), _row_count(is_dot)
    exp_count, sign_count = _row_count(is_exp), _row_count(is_sign)
    has_exp, has_dot = exp_count > 0, dot_count > 0
    exp_at = _first(is_exp, has_exp, length)
    dot_at = np.where(has_dot, is_dot.argmax(axis=1), exp_at)
    rows = np.arange(n)
    signed = is_sign[:, 0]
    after_exp = np.minimum(exp_at + 1, width - 1)
    exp_signed = has_exp & (exp_at + 1 < width) & is_sign[rows, after_exp]
    # the first significant digit (0 when there is none); at most 19 from there to the mark
    long = np.flatnonzero(exp_at - signed > 19)
    leading = signed.astype(np.int64)  # enough where the whole mantissa is 19 long at most
    leading[long] = (is_digit[long] & (chars[long] != ord("0"))).argmax(axis=1)
    # valid: only those characters; a sign first or right after the exponent mark; one dot at
    # most, before the mark; digits in the mantissa and, if marked, in the exponent
    mantissa_digits = exp_at - signed - dot_count
    exp_digits = np.where(has_exp, length - exp_at - 1 - exp_signed, 0)
    ok = ((length >= 1) & (length <= width)
          & (digit_count + dot_count + exp_count + sign_count == length)
          & (exp_count <= 1) & (dot_count <= 1) & (dot_at <= exp_at)
          & (sign_count == signed.astype(np.int64) + exp_signed)
          & (mantissa_digits >= 1) & (has_exp == (exp_digits >= 1)) & (exp_digits <= 3)
          & (exp_at - leading <= 19))
    if integers:
        ok &= ~has_exp & ~has_dot & (exp_at - leading <= 18)
    # the mantissa's digits (everything else '0'), eight per word; word k holds columns 8k..8k+7
    keep = is_digit.view("<u8") * np.uint64(0xFF)
    _keep_first(keep, exp_at)
    words = _eight_digits((words & keep) | (np.uint64(0x3030303030303030) & ~keep))
    total = np.zeros(n, np.uint64)
    for k in range(width // 8):
        shift = exp_at - 8 * k - 8  # the word's last column has weight 10**shift in the mantissa
        if shift.max() <= -8:
            continue  # no mantissa digit in this word
        part = words[:, k]
        if shift.max() > 0:
            part = part * _POW10_U64.take(shift, mode="clip")
        if shift.min() < 0:
            part = part // _POW10_U64.take(-shift, mode="clip")
        total += part
    fraction = np.where(has_dot, exp_at - 1 - dot_at, 0)  # digits after the dot
    scale = _POW10_U64.take(fraction, mode="clip")
    low = total % scale
    mantissa = np.where(has_dot, low + (total - low) // np.uint64(10), total)
    negative = chars[:, 0] == ord("-")
    if integers:
        whole = mantissa.astype(np.int64)
        whole[~ok] = 0
        return np.where(negative, -whole, whole), ok
    q = -fraction
    marked = np.flatnonzero(has_exp & ok)
    if marked.size:
        exponent = np.zeros(marked.size, np.int64)
        marked_digits, marked_length = exp_digits[marked], length[marked]
        for k in range(int(marked_digits.max())):  # the exponent's digits, from its last one
            at = np.minimum(np.maximum(marked_length - 1 - k, 0), width - 1)
            digit = chars[marked, at].astype(np.int64) - 48
            exponent += np.where(k < marked_digits, digit, 0) * 10**k
        negative_exp = chars[marked, after_exp[marked]] == ord("-")
        q[marked] += np.where(negative_exp, -exponent, exponent)
    fast = ok & (mantissa < np.uint64(2**53)) & (np.abs(q) <= 22)
    every = bool(fast.all())
    m = (mantissa if every else mantissa[fast]).astype(np.float64)
    qf = q if every else q[fast]
    power = _POW10_F64[np.abs(qf)]
    scaled = m / power if qf.max(initial=0) <= 0 else np.where(qf >= 0, m * power, m / power)
    if every:
        values = scaled
    else:
        values = np.zeros(n)
        values[fast] = scaled
    slow = ok & ~fast
    if slow.any():
        wide_ok = slow & (np.abs(q) <= 27) if _WIDE else np.zeros(n, bool)
        if wide_ok.any():
            mw = mantissa[wide_ok].astype(np.longdouble)
            qw = q[wide_ok]
            power_w = _POW10_LD[np.abs(qw)]
            wide = (mw / power_w if qw.max(initial=0) <= 0
                    else np.where(qw >= 0, mw * power_w, mw / power_w))
            rounded = wide.astype(np.float64)
            exact = ~_midpoint(wide, rounded)
            index = np.flatnonzero(wide_ok)
            values[index[exact]] = rounded[exact]
            ok[index[~exact]] = False
        ok &= fast | wide_ok
    values[~ok] = 0.0
    np.negative(values, out=values, where=negative)
    return values, ok
