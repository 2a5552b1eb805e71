"""The one way the harness opens an ELF file: pyelftools behind errors that name the file."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.errors import ObjectError


@contextmanager
def open_elf(source: Path | bytes, name: str | None = None) -> Iterator[ELFFile]:
    """An ELFFile over the file at ``source`` (or over bytes already read), open for the ``with`` block.

    ``name`` (default: the path) starts every message. Raises ObjectError: "cannot read" for an OS
    error, "not an ELF file" when a file's ELF header does not parse, "malformed ELF" for a pyelftools
    error inside the block. Bytes the caller holds are its ELF already (it checked the magic), so a
    header that does not parse there is "malformed ELF" too.
    """
    what = name if name is not None else str(source) if isinstance(source, Path) else "ELF"
    try:
        fh: IO[bytes]
        with source.open("rb") if isinstance(source, Path) else io.BytesIO(source) as fh:
            try:
                elf = ELFFile(fh)
            except ELFError as exc:
                if isinstance(source, Path):
                    raise ObjectError(f"{what}: not an ELF file ({exc})") from exc
                raise
            yield elf
    except OSError as exc:
        raise ObjectError(f"{what}: cannot read: {exc.strerror}") from exc
    except ELFError as exc:
        raise ObjectError(f"{what}: malformed ELF: {exc}") from exc
