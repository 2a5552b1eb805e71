"""Tests for harness.programs.elf: one ELF opener, its errors naming the file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.errors import BTFError, ObjectError
from harness.programs.elf import open_elf

HOST_ELF = Path(sys.executable).resolve()


def test_opens_a_real_elf_and_closes_it() -> None:
    with open_elf(HOST_ELF) as elf:
        assert isinstance(elf, ELFFile)
        assert bytes(elf["e_ident"]["EI_MAG"]) == b"\x7fELF"
        stream = elf.stream
    assert stream.closed


def test_missing_file_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "gone.o"
    with pytest.raises(ObjectError, match=f"^{re.escape(str(missing))}: cannot read: No such file"):
        with open_elf(missing):
            pass


def test_a_file_that_is_not_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"#!/bin/sh\necho not an object\n")
    with pytest.raises(ObjectError, match=f"^{re.escape(str(junk))}: not an ELF file \\(") as info:
        with open_elf(junk):
            pass
    assert isinstance(info.value.__cause__, ELFError)


def test_pyelftools_errors_inside_the_block_are_malformed_elf() -> None:
    with pytest.raises(ObjectError, match=f"^{re.escape(str(HOST_ELF))}: malformed ELF: bad section"):
        with open_elf(HOST_ELF):
            raise ELFError("bad section")


def test_os_errors_inside_the_block_cannot_be_read() -> None:
    with pytest.raises(ObjectError, match=r": cannot read: Permission denied$"):
        with open_elf(HOST_ELF):
            raise PermissionError(13, "Permission denied")


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(BTFError, match=r"^inner$"):
        with open_elf(HOST_ELF):
            raise BTFError("inner")


def test_bytes_in_memory_use_the_given_name() -> None:
    with open_elf(HOST_ELF.read_bytes(), "copy of python") as elf:
        assert elf.num_sections() > 0
    with pytest.raises(ObjectError, match=r"^vmlinux: malformed ELF: Invalid EI_CLASS"):
        with open_elf(b"\x7fELF\x09" + bytes(60), "vmlinux"):
            pass
