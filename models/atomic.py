"""Atomic file writes, shared by every package that writes user-visible files."""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename:
    readers see the old file or the whole new one, never a partial one, and a failure
    leaves nothing behind. The file gets the usual 0666-minus-umask permissions, not
    mkstemp's 0600.

    An existing target that is not a regular file (a device such as /dev/null, a fifo) is
    written through, never replaced, as zstd and xz do. Errors name `path`, never the
    temporary file."""
    path = Path(path)
    if _is_special(path):
        with _named(path):
            with open(path, "wb") as file:
                file.write(data)
        return
    with _named(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with _named(path):
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Raise the OSError that writing `path` would raise, without writing it: a missing
    parent directory, one that cannot take new files, or a target that is a directory.
    Callers check before long work rather than fail after it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    if _is_special(path):
        return
    with _named(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)


def _is_special(path: Path) -> bool:
    """An existing target that is neither a regular file nor a directory (after symlinks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """Re-raise an OSError with `path` as its file name: a temp file's name means nothing
    to the user, and a missing parent directory is said as such."""
    try:
        yield
    except OSError as error:
        if error.filename == str(path):
            raise
        if isinstance(error, FileNotFoundError) and not path.parent.is_dir():
            raise FileNotFoundError(error.errno, "no such directory", str(path.parent)) from None
        raise type(error)(error.errno, error.strerror, str(path)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
