"""Files written whole or not at all.

Every file nlls writes (an optimized pose graph, a configuration, a plot) is first written to a
temporary file beside its destination, flushed to disk, then renamed onto the destination
(``os.replace``, atomic on POSIX and Windows). A failure midway (disk full, a quota, an
exception in the writer) leaves the destination as it was and removes the temporary file.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` (of the same errno) naming ``path`` instead of a temporary file."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def _create_beside(target: Path) -> Path:
    """A new empty file beside ``target``, with the mode a plain ``open(target, "w")`` would give
    (umask applied, or ``target``'s own mode when it exists)."""
    for _ in range(100):
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
        except OSError as exc:
            raise _named(exc, target) from exc
        try:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(fd, stat.S_IMODE(os.stat(target).st_mode))
        finally:
            os.close(fd)
        return temporary
    raise FileExistsError(f"{target}: no free temporary name beside it")  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; on success it replaces
    ``path``, on any exception it is removed and ``path`` is left untouched.

    Raises:
        OSError: naming ``path`` (not the temporary file) when it cannot be created, flushed or
            renamed; the writer's own exceptions pass through unchanged.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(target))
    temporary = _create_beside(target)
    try:
        yield temporary
        try:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            raise _named(exc, target) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise _named(exc, Path(path)) from exc
