"""Atomic file writes: a file is either its old content or its complete new content, never a part."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# Attempts at a fresh temp name before giving up (a clash means 64 random bits collided).
_NAME_TRIES = 8


def _open_temp(path: Path) -> tuple[Path, BinaryIO]:
    """Create a new temp file beside ``path`` (same directory, so that os.replace is a rename).

    Created with mode 0666 less the umask, as open() would give the final file: a shared cache
    stays readable by its other users (mkstemp's 0600 would hide it).
    """
    for _ in range(_NAME_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "wb")
    raise FileExistsError(f"{path}: no free temp name beside it")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` when the block ends without an exception.

    The bytes go to a temp file in the same directory, which is flushed, fsynced and then renamed
    over ``path`` with os.replace. On any exception (KeyboardInterrupt included) the temp file is
    removed and ``path`` is left as it was. Raises OSError when the directory is not writable.
    """
    target = Path(path)
    tmp, fh = _open_temp(target)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically; raises OSError."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as fh:
        fh.write(payload)
