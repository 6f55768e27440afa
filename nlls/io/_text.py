"""Shared plumbing of the readers: the error type, records by tag, bulk number parsing, and the
fast assembly of an objective from many cost functions of one kind.

Files are read whole and split into *records*: a line's first word is its tag (``EDGE_SE2``),
the rest its fields. Records of one tag are converted to numbers in one numpy call; only when that
fails is the culprit searched line by line, so a 10,000-edge file costs a few milliseconds and a
malformed one still gets a message naming its file and line.
"""
from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.cost_function import CostFunction
from ..core.objective import Objective

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
    """The records of a text file, by tag.

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
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = data[: exc.start].count(b"\n") + 1
            raise FormatError(self.path, bad_line,
                              "not a text file (bytes that are not UTF-8)") from None
        self.lines: List[Tuple[int, List[str]]] = []  # (line number, words) of each record
        self.num_lines = 0
        with no_gc_pauses():
            for number, line in enumerate(text.splitlines(), start=1):
                self.num_lines = number
                words = line.split()
                if words and not words[0].startswith("#"):
                    self.lines.append((number, words))

    def error(self, line: Optional[int], reason: str) -> FormatError:
        return FormatError(self.path, line, reason)

    def require_records(self, expected: str) -> None:
        """Raise on a file without records (empty, blank or comments only)."""
        if not self.lines:
            raise self.error(max(self.num_lines, 1),
                             f"empty file: no records (expected {expected})")

    def by_tag(self, supported: Sequence[str], ignored: Sequence[str] = (),
               describe: str = "") -> Dict[str, "Records"]:
        """Group the records by tag; an unknown tag is an error that lists the supported ones."""
        groups: Dict[str, Tuple[List[int], List[List[str]]]] = {t: ([], []) for t in supported}
        with no_gc_pauses():
            for number, words in self.lines:
                tag = words[0]
                group = groups.get(tag)
                if group is None:
                    if tag in ignored:
                        continue
                    skipped = f"; {', '.join(ignored)} lines are skipped" if ignored else ""
                    raise self.error(
                        number, f"unknown record {tag!r}: {describe} files hold "
                        f"{', '.join(supported)}{skipped}"
                    )
                group[0].append(number)
                group[1].append(words[1:])
        return {tag: Records(self, tag, lines, rows) for tag, (lines, rows) in groups.items()}


class Records:
    """All records of one tag: their line numbers and fields (the tag removed)."""

    def __init__(self, source: Source, tag: str, lines: List[int], rows: List[List[str]]):
        self.source = source
        self.tag = tag
        self.lines = np.asarray(lines, dtype=np.int64)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

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
        for line, row in zip(self.lines, self.rows):
            if len(row) != count:
                raise self.source.error(
                    int(line),
                    f"{self.tag} needs {count} fields ({' '.join(fields)}), got {len(row)}"
                )
        if not self.rows:
            return np.zeros((0, ints), np.int64), np.zeros((0, count - ints))
        try:
            integers = np.array([row[:ints] for row in self.rows], dtype=np.int64)
            numbers = np.array([row[ints:] for row in self.rows], dtype=np.float64)
        except (ValueError, OverflowError):
            self._find_bad(fields, ints)
            raise  # pragma: no cover - _find_bad always raises
        bad = ~np.isfinite(numbers).all(axis=1)
        if bad.any():
            k = int(np.argmax(bad))
            column = int(np.argmax(~np.isfinite(numbers[k])))
            raise self.source.error(
                int(self.lines[k]), f"{self.tag}: field {fields[ints + column]!r} is "
                f"{self.rows[k][ints + column]!r}, expected a finite number"
            )
        return integers, numbers

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
