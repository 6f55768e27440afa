"""Shared plumbing of the readers: the error type, records by tag, bulk number parsing, and the
fast assembly of an objective from many cost functions of one kind.

Files are read whole and split into *records*: a line's first word is its tag (``EDGE_SE2``),
the rest its fields. A file of plain ASCII (the usual case) is split in numpy: token bounds from
the blank bytes, line numbers from the newlines, never a Python string per word; other text is
split line by line into the same arrays. The fields of all records of one tag are converted to
numbers at once (:mod:`nlls.io._numbers`); only a token of an unusual form goes through
``float()``, and only when that fails is the culprit searched record by record, so a malformed
file still gets a message naming its file and line.
"""
from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..core.cost_function import CostFunction
from ..core.objective import Objective
from ._numbers import PAD, parse_numbers

PathLike = Union[str, "os.PathLike[str]"]


class FormatError(ValueError):
    """A problem file that cannot be read; ``str(error)`` is ``"<file>:<line>: <what>"``.

    Attributes:
        path: the file.
        line: 1-based line number of the culprit (``None`` when no line applies).
        reason: the message without the location.
    """

    def __init__(self, path: PathLike, line: Optional[int], reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # picklable (worker processes), though __init__ takes three arguments
        return type(self), (self.path, self.line, self.reason)


class MissingFileError(FormatError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``)."""


class Source:
    """The records of a text file: its tokens (words), grouped into records by line.

    Attributes:
        path: the file.
        num_lines: how many lines it has.
        buffer: its bytes (``uint8``), with :data:`~nlls.io._numbers.PAD` zero bytes either side.
        starts, ends: ``(T,)`` int64: where each token of the records lies in ``buffer``.
        record_first, record_count, record_line: ``(R,)`` int64: each record's first token, its
            number of tokens and its 1-based line number. A record is a line with tokens whose
            first token does not start with ``#``.

    Args:
        path: the file.

    Raises:
        MissingFileError: no such file.
        FormatError: a directory, or bytes that are not text.
        OSError: the file cannot be read (its ``filename`` and message name it).
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(self.path, None, "no such file")
        if not self.path.is_file():
            raise FormatError(self.path, None, "not a regular file")
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except OSError as exc:  # a failing disk or network share: say which file
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        scanned = scan_plain(data)
        if scanned is None:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_line = data[: exc.start].count(b"\n") + 1
                raise FormatError(self.path, bad_line,
                                  "not a text file (bytes that are not UTF-8)") from None
            scanned = scan_text(text)
        self.buffer, self.num_lines, tokens, records = scanned
        self.starts, self.ends = tokens
        self.record_first, self.record_count, self.record_line = records

    @property
    def num_records(self) -> int:
        return int(self.record_first.size)

    def word(self, token: int) -> str:
        """The text of token ``token``."""
        return bytes(self.buffer[self.starts[token]:self.ends[token]]).decode("utf-8")

    def words(self, record: int) -> List[str]:
        """The tokens of record ``record`` (its tag first, where it has one)."""
        first = int(self.record_first[record])
        return [self.word(t) for t in range(first, first + int(self.record_count[record]))]

    def record(self, k: int) -> Tuple[int, List[str]]:
        """``(line number, words)`` of record ``k``."""
        return int(self.record_line[k]), self.words(k)

    @property
    def lines(self) -> List[Tuple[int, List[str]]]:
        """``(line number, words)`` of every record (one Python list each: slow on big files)."""
        return [self.record(k) for k in range(self.num_records)]

    def error(self, line: Optional[int], reason: str) -> FormatError:
        return FormatError(self.path, line, reason)

    def require_records(self, expected: str) -> None:
        """Raise on a file without records (empty, blank or comments only)."""
        if not self.num_records:
            raise self.error(max(self.num_lines, 1),
                             f"empty file: no records (expected {expected})")

    def first_word_is(self, tag: str) -> np.ndarray:
        """``(R,)`` bool: which records start with the word ``tag``."""
        key = tag.encode("utf-8")
        first = self.starts[self.record_first]
        same = (self.ends[self.record_first] - first) == len(key)
        for start in range(0, len(key), 8):  # eight bytes at a time
            chunk = key[start:start + 8]
            at = first[same] + start
            window = sliding_window_view(self.buffer, 8)[at] & _PREFIX8[len(chunk)]
            same[same] = window.view("<u8")[:, 0] == np.frombuffer(
                chunk.ljust(8, b"\0"), "<u8")[0]
        return same

    def by_tag(self, supported: Sequence[str], ignored: Sequence[str] = (),
               describe: str = "") -> Dict[str, "Records"]:
        """Group the records by tag; an unknown tag is an error that lists the supported ones."""
        known = np.zeros(self.num_records, bool)
        groups = {}
        for tag in list(supported) + [t for t in ignored if t not in supported]:
            mask = self.first_word_is(tag)
            known |= mask
            if tag in supported:
                groups[tag] = Records(self, tag, np.flatnonzero(mask))
        if not known.all():
            k = int(np.argmin(known))
            skipped = f"; {', '.join(ignored)} lines are skipped" if ignored else ""
            raise self.error(
                int(self.record_line[k]), f"unknown record {self.word(int(self.record_first[k]))!r}"
                f": {describe} files hold {', '.join(supported)}{skipped}"
            )
        return groups


_PREFIX8 = (np.arange(8) < np.arange(9)[:, None]).astype(np.uint8) * np.uint8(0xFF)
_PLAIN = bytes(range(32, 128)) + b"\t\n\r"

Scanned = Tuple[np.ndarray, int, Tuple[np.ndarray, np.ndarray],
                Tuple[np.ndarray, np.ndarray, np.ndarray]]


def scan_plain(data: bytes) -> Optional[Scanned]:
    """Tokens and records of a file of printable ASCII, tabs and ``\\n`` or ``\\r\\n`` line
    ends, in numpy (``None`` for other files: :func:`scan_text` reads those)."""
    if not data.isascii() or data.translate(None, _PLAIN):
        return None
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):  # a lone CR ends a line too
        return None
    pad = bytes(PAD)
    buffer = np.frombuffer(pad + data + pad, np.uint8)
    body = buffer[PAD:PAD + len(data)]
    blank = np.ones(len(data) + 2, bool)
    np.less_equal(body, 32, out=blank[1:-1])
    change = np.flatnonzero(blank[1:] != blank[:-1])  # token starts and ends, alternating
    starts, ends = change[0::2] + PAD, change[1::2] + PAD
    newlines = np.flatnonzero(body == 10) + PAD
    num_lines = newlines.size + (1 if data and not data.endswith(b"\n") else 0)
    # each token's line: 1 + the newlines before it (each newline counted at the next token)
    after = np.bincount(np.searchsorted(starts, newlines), minlength=starts.size + 1)
    line = np.cumsum(after[:-1]) + 1
    return buffer, num_lines, *_records(buffer, starts, ends, line)


def scan_text(text: str) -> Scanned:
    """:func:`scan_plain` of any text (Python's line ends and whitespace), one line at a time."""
    chunks: List[bytes] = []
    lines: List[int] = []
    bounds: List[int] = []
    position = PAD
    num_lines = 0
    with no_gc_pauses():
        for number, line in enumerate(text.splitlines(), start=1):
            num_lines = number
            for word in line.split():
                encoded = word.encode("utf-8")
                chunks.append(encoded)
                bounds += (position, position + len(encoded))
                lines.append(number)
                position += len(encoded) + 1
    buffer = np.frombuffer(bytes(PAD) + b" ".join(chunks) + bytes(PAD + 1), np.uint8)
    bound = np.asarray(bounds, np.int64).reshape(-1, 2)
    return buffer, num_lines, *_records(buffer, bound[:, 0], bound[:, 1],
                                        np.asarray(lines, np.int64))


def _records(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray, line: np.ndarray):
    """The records of tokens by line, comment lines (first word ``#...``) dropped."""
    first = np.flatnonzero(np.diff(line, prepend=0))
    comment = buffer[starts[first]] == ord("#")
    if comment.any():
        keep = np.repeat(~comment, np.diff(first, append=line.size))
        starts, ends, line = starts[keep], ends[keep], line[keep]
        first = np.flatnonzero(np.diff(line, prepend=0))
    count = np.diff(first, append=line.size)
    return (starts, ends), (first, count, line[first])


class Records:
    """Records of one kind: their line numbers and fields (the tag removed).

    Args:
        source: the file.
        tag: their tag (for messages).
        index: ``(n,)`` their record numbers in ``source``.
        skip: leading tokens that are not fields (1: the tag).
    """

    def __init__(self, source: Source, tag: str, index: np.ndarray, skip: int = 1):
        self.source = source
        self.tag = tag
        self.index = np.asarray(index, np.int64)
        self.skip = skip
        self.lines = source.record_line[self.index]
        self._rows: Optional[List[List[str]]] = None

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def rows(self) -> List[List[str]]:
        """Each record's fields as text."""
        if self._rows is None:
            self._rows = [self.source.words(int(k))[self.skip:] for k in self.index]
        return self._rows

    def table(self, fields: Sequence[str], ints: int) -> Tuple[np.ndarray, np.ndarray]:
        """The fields as numbers: ``ints`` leading integer columns, then finite floats.

        Args:
            fields: the name of every field, for messages (``("id", "x", "y", "theta")``).
            ints: how many leading fields are integers (vertex ids).

        Returns:
            ``(integers (n, ints) int64, numbers (n, len(fields) - ints) float64)``.

        Raises:
            FormatError: a wrong field count, a non-number or a non-finite number, at its line.
        """
        count = len(fields)
        got = self.source.record_count[self.index] - self.skip
        wrong = got != count
        if wrong.any():
            k = int(np.argmax(wrong))
            raise self.source.error(
                int(self.lines[k]),
                f"{self.tag} needs {count} fields ({' '.join(fields)}), got {got[k]}"
            )
        if not len(self):
            return np.zeros((0, ints), np.int64), np.zeros((0, count - ints))
        tokens = self.source.record_first[self.index][:, None] + self.skip + np.arange(count)
        integers = self._column_values(tokens[:, :ints], True, fields, ints)
        numbers = self._column_values(tokens[:, ints:], False, fields, ints)
        bad = ~np.isfinite(numbers).all(axis=1)
        if bad.any():
            k = int(np.argmax(bad))
            column = int(np.argmax(~np.isfinite(numbers[k])))
            raise self.source.error(
                int(self.lines[k]), f"{self.tag}: field {fields[ints + column]!r} is "
                f"{self.rows[k][ints + column]!r}, expected a finite number"
            )
        return integers, numbers

    def _column_values(self, tokens: np.ndarray, integers: bool, fields: Sequence[str],
                       ints: int) -> np.ndarray:
        source = self.source
        flat = tokens.ravel()
        values, ok = parse_numbers(source.buffer, source.starts[flat], source.ends[flat], integers)
        for k in np.flatnonzero(~ok).tolist():  # the unusual forms, as int() and float() read them
            try:
                word = source.word(int(flat[k]))
                value = int(word) if integers else float(word)
                if integers and not -2**63 <= value < 2**63:
                    raise ValueError
                values[k] = value
            except ValueError:
                self._find_bad(fields, ints)
        return values.reshape(tokens.shape)

    def _find_bad(self, fields: Sequence[str], ints: int) -> None:
        for line, row in zip(self.lines, self.rows):
            for position, word in enumerate(row):
                kind = "an integer" if position < ints else "a number"
                try:
                    value = int(word) if position < ints else float(word)
                    if position < ints and not -2**63 <= value < 2**63:
                        raise ValueError
                except ValueError:
                    raise self.source.error(
                        int(line), f"{self.tag}: field {fields[position]!r} is {word!r}, "
                        f"expected {kind}"
                    ) from None
        raise AssertionError("no bad field found")  # pragma: no cover

@contextlib.contextmanager
def no_gc_pauses():
    """Suspend Python's cycle collector while creating many small objects (restored after).

    Building 10,000 cost functions makes ~100,000 objects, and the collector would walk all of
    them again and again (half of the build time); reference counting still frees everything.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def upper_triangle_matrices(values: np.ndarray, dim: int) -> np.ndarray:
    """Symmetric matrices ``(n, dim, dim)`` from their upper triangles, row by row ``(n, k)``."""
    rows, cols = np.triu_indices(dim)
    out = np.zeros((values.shape[0], dim, dim))
    out[:, rows, cols] = values
    out[:, cols, rows] = values
    return out


def assemble(cost_functions: Sequence[CostFunction], dtype) -> Objective:
    """An objective of the given cost functions (``Objective.add`` is linear in their number)."""
    objective = Objective(dtype=dtype)
    for cf in cost_functions:
        objective.add(cf)
    return objective
