"""Atomic file and directory writes: either the old content or the complete new content, never a part."""

from __future__ import annotations

import os
import secrets
import shutil
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


def _temp_dir_beside(path: Path) -> Path:
    """Create a new empty directory beside ``path``, named like the ones remove_stale_temps clears.

    Made with mode 0777 less the umask, as mkdir would give the final directory (mkdtemp's 0700
    would hide a shared cache's entry from its other users).
    """
    for _ in range(_NAME_TRIES):
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            tmp.mkdir(0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temp name beside it")


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, without following symlinks out of it; quiet when absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(path: Path) -> None:
    """Remove the temp directories atomic_directory left beside ``path`` in a process that was killed.

    Call it only while holding the lock that guards building ``path``: without it, the temp of a
    builder still at work would be removed under its feet.
    """
    # ``<name>.tmp<pid>``: the temps of the builders that came before atomic_directory.
    for pattern in (f".{path.name}.tmp-*", f"{path.name}.tmp*"):
        for stale in path.parent.glob(pattern):
            remove_tree(stale)


@contextmanager
def atomic_directory(path: Path | str, replace: bool = True) -> Iterator[Path]:
    """Yield a new empty directory that becomes ``path`` when the block ends without an exception.

    The directory is made beside ``path`` (so that the final step is a rename). With ``replace``, an
    existing ``path`` is moved aside and removed after the rename; without it, an existing non-empty
    ``path`` (built meanwhile by someone else) is kept and the new directory discarded. On any
    exception (KeyboardInterrupt included) the new directory is removed and ``path`` is left as it
    was. A process killed in the block leaves its temp, which remove_stale_temps clears. Raises
    OSError when the parent directory is not writable.
    """
    target = Path(path)
    tmp = _temp_dir_beside(target)
    try:
        yield tmp
        _commit_directory(tmp, target, replace)
    except BaseException:
        remove_tree(tmp)
        raise
    _fsync_dir(target.parent)


def _commit_directory(tmp: Path, target: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``target``, first moving an existing ``target`` aside when ``replace``."""
    aside: Path | None = None  # a fresh temp dir holding the old ``target``, removed once replaced
    moved = target
    if replace and (target.exists() or target.is_symlink()):
        aside = _temp_dir_beside(target)
        # A directory is renamed over the empty ``aside``; a file or symlink goes inside it.
        moved = aside if target.is_dir() and not target.is_symlink() else aside / target.name
        os.replace(target, moved)
    try:
        os.rename(tmp, target)
    except OSError:
        if aside is not None:
            os.replace(moved, target)
            raise
        if replace or not target.is_dir():
            raise
        remove_tree(tmp)  # someone else built it meanwhile: theirs is as good as ours
    if aside is not None:
        remove_tree(aside)
