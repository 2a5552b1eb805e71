"""BPF ELF objects embedded in other files (libbpf skeletons, go:embed, include_bytes!): found in the
bytes of an executable or shared library, checked, and named after their own source (pure parsing)."""

from __future__ import annotations

import logging
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.errors import ObjectError
from harness.programs.elf import open_elf
from harness.programs.inventory import EM_BPF, NON_PROGRAM_SECTIONS, parse_section

log = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EHDR_SIZE = 64
SHDR_SIZE = 64
PHDR_SIZE = 56
SHT_NOBITS = 8
MAX_SECTIONS = 0xFF00  # SHN_LORESERVE: more would need extended numbering, which BPF objects never use

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]+")
# The source file a BPF object was compiled from: BTF line info keeps its path among its strings.
_SOURCE_NAME = re.compile(rb"([A-Za-z0-9_.+-]+)\.bpf\.c(?![A-Za-z0-9_])")
# A shared library's version: libsystemd-core-257.so -> libsystemd-core.
_LIB_VERSION = re.compile(r"(-[0-9][0-9.]*)?\.so(\.[0-9.]+)?$")


@dataclass(frozen=True)
class Embedded:
    """A BPF ELF object found inside a file: where it starts and its bytes."""

    offset: int
    data: bytes
    programs: int  # global functions in program sections
    hooks: dict[str, int]  # hook kind (the harness's; "unknown" for others) -> programs
    label: str  # the object's own name (its source file's, e.g. restrict_fs), "" when not found


# ---------------------------------------------------------------- finding objects in bytes


def parse_elf_extent(data: bytes, offset: int) -> int | None:
    """The size of the little-endian ELF64 EM_BPF object whose header starts at ``offset`` of
    ``data`` (the furthest of its headers, section headers and section contents), or None when the
    bytes there are not one or it would run past the end of ``data`` (pure)."""
    end = len(data)
    if offset + EHDR_SIZE > end or data[offset:offset + 4] != ELF_MAGIC:
        return None
    if data[offset + 4] != ELFCLASS64 or data[offset + 5] != ELFDATA2LSB:
        return None
    (machine,) = struct.unpack_from("<H", data, offset + 18)
    if machine != EM_BPF:
        return None
    phoff, shoff = struct.unpack_from("<QQ", data, offset + 0x20)
    ehsize, phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<6H", data, offset + 0x34)
    if ehsize != EHDR_SIZE or shentsize != SHDR_SIZE or not 0 < shnum < MAX_SECTIONS or shstrndx >= shnum:
        return None
    if shoff < EHDR_SIZE:
        return None
    extent = shoff + shnum * shentsize
    if phnum:
        if phentsize != PHDR_SIZE:
            return None
        extent = max(extent, phoff + phnum * phentsize)
    if offset + extent > end:
        return None
    for i in range(shnum):
        sh_type, _flags, _addr, sh_offset, sh_size = struct.unpack_from(
            "<IQQQQ", data, offset + shoff + i * shentsize + 4
        )
        if sh_type != SHT_NOBITS and sh_size:
            extent = max(extent, sh_offset + sh_size)
    return extent if offset + extent <= end else None


def _program_sections(elf: ELFFile) -> set[int]:
    """Indexes of the sections that hold programs: executable, not empty, not .text."""
    found: set[int] = set()
    for index, section in enumerate(elf.iter_sections()):
        if section["sh_type"] != "SHT_PROGBITS" or not section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            continue
        if section.name in NON_PROGRAM_SECTIONS or not section["sh_size"]:
            continue
        found.add(index)
    return found


def parse_label(data: bytes, elf: ELFFile) -> str:
    """The object's own name, from the source file it was compiled from (``restrict-fs.bpf.c`` ->
    ``restrict_fs``): the STT_FILE symbol, else a ``*.bpf.c`` path among its BTF strings; "" when
    neither names one (pure)."""
    symtab = elf.get_section_by_name(".symtab")
    if isinstance(symtab, SymbolTableSection):
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] == "STT_FILE" and sym.name.endswith(".bpf.c"):
                return clean_name(Path(sym.name).name[: -len(".bpf.c")])
    btf = elf.get_section_by_name(".BTF")
    where = btf.data() if btf is not None else data
    found = _SOURCE_NAME.search(where)
    return clean_name(found.group(1).decode("ascii")) if found else ""


def parse_bpf_object(data: bytes, name: str = "BPF object") -> Embedded:
    """Check that ``data`` is a BPF ELF object with programs and describe it (pure).

    Raises ObjectError when pyelftools cannot read it, it is not EM_BPF or it has no program section.
    """
    with open_elf(data, name) as elf:
        if elf["e_machine"] not in ("EM_BPF", EM_BPF):
            raise ObjectError(f"{name}: not a BPF object (ELF machine {elf['e_machine']})")
        sections = _program_sections(elf)
        if not sections:
            raise ObjectError(f"{name}: BPF object has no program sections")
        hooks: Counter[str] = Counter()
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for sym in symtab.iter_symbols():
                info = sym["st_info"]
                if info["type"] != "STT_FUNC" or info["bind"] != "STB_GLOBAL":
                    continue
                if sym["st_shndx"] not in sections:
                    continue
                parsed = parse_section(elf.get_section(sym["st_shndx"]).name)
                hooks[parsed[0] if parsed else "unknown"] += 1
        # Reading every section checks that pyelftools can walk the whole object.
        for section in elf.iter_sections():
            section.data()
        label = parse_label(data, elf)
    return Embedded(0, data, sum(hooks.values()), dict(hooks), label)


def parse_embedded_objects(data: bytes, name: str = "file") -> list[Embedded]:
    """Every BPF object embedded in ``data``, in the order they appear (pure).

    An ELF magic that does not start a complete, readable BPF object with programs is skipped.
    """
    found: list[Embedded] = []
    at = data.find(ELF_MAGIC)
    while at >= 0:
        size = parse_elf_extent(data, at)
        if size is not None:
            try:
                obj = parse_bpf_object(data[at:at + size], f"{name}+{at:#x}")
            except ObjectError as exc:
                log.debug("skipped: %s", exc)
            else:
                found.append(Embedded(at, obj.data, obj.programs, obj.hooks, obj.label))
                at = data.find(ELF_MAGIC, at + size)
                continue
        at = data.find(ELF_MAGIC, at + 1)
    return found


# ---------------------------------------------------------------- names


def clean_name(text: str) -> str:
    """``text`` with every run of characters other than [A-Za-z0-9_] turned into one ``_`` (pure)."""
    return _NAME_CHARS.sub("_", text).strip("_")


def binary_stem(path: str) -> str:
    """A binary's name without its library version: ``libsystemd-core-257.so`` -> ``libsystemd_core``."""
    return clean_name(_LIB_VERSION.sub("", Path(path).name)) or "object"


def resolve_names(source: str, objects: Sequence[Embedded], qualified: bool = False) -> list[str]:
    """The names of the objects embedded in one binary (pure), each a valid file name stem.

    Qualified (the harness's names, which must not collide across binaries): always
    ``<binary>@<own name>`` (``<binary>@<n>`` when it has none), e.g. ``opensnoop_libbpf@opensnoop``.
    Else (a corpus of loose objects): a lone object takes its own name (else the binary's); several
    take ``<binary>_<own name>`` (else ``<binary>_<n>``). Repeated own names get ``_2``, ``_3``...
    """
    stem = binary_stem(source)
    if not qualified and len(objects) == 1:
        return [objects[0].label or stem]
    names: list[str] = []
    sep = "@" if qualified else "_"
    for n, obj in enumerate(objects):
        name = f"{stem}{sep}{obj.label or n}"
        count = 2
        while name in names:
            name = f"{stem}{sep}{obj.label or n}_{count}"
            count += 1
        names.append(name)
    return names
