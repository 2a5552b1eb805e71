"""A parsed BTF blob (a /sys/kernel/btf file or an object's .BTF): header, layout, ids, names, records."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from harness.btf.names import NameIndex
from harness.btf.records import build_type
from harness.btf.text import render_decl
from harness.btf.types import (
    MODS_AND_TYPEDEFS,
    POINTER_SIZE,
    Array,
    BTFType,
    Composite,
    Datasec,
    Enum,
    Float,
    Func,
    FuncProto,
    Int,
    Kind,
    Pointer,
    Qualifier,
    Typedef,
    Var,
    VarSecinfo,
    Void,
)
from harness.errors import BTFError

BTF_MAGIC = 0xEB9F
# sizeof(struct btf_header) as of v1; a longer header is allowed (newer fields are skipped).
BTF_HEADER_LEN = 24

# Extra u32 words after the 3-word btf_type header: fixed, then per vlen entry.
_FIXED_WORDS: tuple[int, ...] = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS: tuple[int, ...] = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
_KNOWN_KINDS = len(_FIXED_WORDS)


# --- The header and the layout --------------------------------------------------------------------


@dataclass(frozen=True)
class BTFHeader:
    """struct btf_header: offsets of the type and string sections, relative to the header's end."""

    little_endian: bool
    version: int
    flags: int
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int


def parse_btf_header(data: bytes, name: str = "BTF", offset: int = 0) -> BTFHeader:
    """The BTF header at ``offset`` of ``data`` (either byte order).

    Raises BTFError when the bytes are too short, the magic is wrong, the version is not 1 or the
    header is shorter than v1's. The sections are not checked against the length of ``data``.
    """
    if len(data) - offset < BTF_HEADER_LEN:
        raise BTFError(f"{name}: {len(data) - offset} bytes is too short for a BTF header")
    magic = data[offset : offset + 2]
    if magic == b"\x9f\xeb":
        order, little = "<", True
    elif magic == b"\xeb\x9f":
        order, little = ">", False
    else:
        raise BTFError(f"{name}: bad BTF magic 0x{magic.hex()} (expected 0xeb9f)")
    version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "BBIIIII", data, offset + 2
    )
    if version != 1:
        raise BTFError(f"{name}: unsupported BTF version {version}")
    if hdr_len < BTF_HEADER_LEN:
        raise BTFError(f"{name}: BTF header length {hdr_len} is shorter than {BTF_HEADER_LEN}")
    return BTFHeader(little, version, flags, hdr_len, type_off, type_len, str_off, str_len)


@dataclass(frozen=True)
class BTFLayout:
    """Where each type of a BTF blob's type section starts (in u32 words), and its kind.

    What parse_btf() learns by walking every type: index_btf() computes it, parse_btf_with_layout()
    reuses it (a caller may keep it beside a big vmlinux BTF that does not change).
    """

    starts: Sequence[int]
    kinds: bytes


def _read_sections(data: bytes, name: str) -> tuple[array[int], bytes, bool]:
    """The type section as native u32 words, the string section, and whether the blob is little-endian."""
    h = parse_btf_header(data, name)
    t_start, s_start = h.hdr_len + h.type_off, h.hdr_len + h.str_off
    if t_start + h.type_len > len(data) or s_start + h.str_len > len(data):
        raise BTFError(
            f"{name}: BTF sections (types {h.type_off}+{h.type_len}, strings {h.str_off}+{h.str_len}) "
            f"run past the end of {len(data)} bytes"
        )
    if h.type_len % 4:
        raise BTFError(f"{name}: BTF type section length {h.type_len} is not a multiple of 4")
    strings = bytes(data[s_start : s_start + h.str_len])
    words = array("I")
    if words.itemsize != 4:  # pragma: no cover - every supported platform has a 4-byte unsigned int
        words = array("L")
    words.frombytes(data[t_start : t_start + h.type_len])
    if h.little_endian != (struct.pack("=H", 1) == b"\x01\x00"):
        words.byteswap()
    return words, strings, h.little_endian


def _walk_types(words: array[int], name: str, base: BTFSpec | None) -> BTFLayout:
    starts = array(words.typecode)
    kinds = bytearray()
    add_start = starts.append
    add_kind = kinds.append
    fixed_words, vlen_words, known = _FIXED_WORDS, _VLEN_WORDS, _KNOWN_KINDS
    n = len(words)
    i = 0
    try:
        while i < n:
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if kind >= known or kind == 0:
                first = len(base) if base is not None else 1
                raise BTFError(
                    f"{name}: type {first + len(starts)} has unknown BTF kind {kind}"
                )
            add_start(i)
            add_kind(kind)
            i += 3 + fixed_words[kind] + vlen_words[kind] * (info & 0xFFFF)
    except IndexError as exc:
        raise BTFError(f"{name}: BTF type section truncated at byte {i * 4}") from exc
    if i != n:
        raise BTFError(f"{name}: BTF type section truncated at byte {starts[-1] * 4}")
    return BTFLayout(starts, bytes(kinds))


def parse_btf(data: bytes, name: str = "BTF", base: BTFSpec | None = None) -> BTFSpec:
    """Parse raw BTF (a /sys/kernel/btf file or an object's .BTF section).

    ``base`` is the spec split BTF (a module's) builds on. Raises BTFError on a bad magic, a truncated
    section or an unknown kind.
    """
    words, strings, little = _read_sections(data, name)
    layout = _walk_types(words, name, base)
    return BTFSpec(name, words, layout.starts, layout.kinds, strings, base, little)


def index_btf(data: bytes, name: str = "BTF", base: BTFSpec | None = None) -> BTFLayout:
    """The layout of raw BTF's types (see parse_btf_with_layout); raises BTFError as parse_btf does."""
    words, _strings, _little = _read_sections(data, name)
    return _walk_types(words, name, base)


def parse_btf_with_layout(
    data: bytes, layout: BTFLayout, name: str = "BTF", base: BTFSpec | None = None
) -> BTFSpec:
    """parse_btf() without walking the types: ``layout`` is index_btf() of the same bytes.

    The header is checked as by parse_btf(); raises BTFError when ``layout`` cannot be that of
    ``data`` (types past the end of the section, an unknown kind).
    """
    words, strings, little = _read_sections(data, name)
    starts, kinds = layout.starts, layout.kinds
    if len(starts) != len(kinds) or (starts and starts[-1] + 3 > len(words)) or (
        not starts and words
    ):
        raise BTFError(f"{name}: the cached type layout does not fit this BTF")
    if kinds.translate(None, bytes(range(1, _KNOWN_KINDS))):
        raise BTFError(f"{name}: the cached type layout has unknown kinds")
    return BTFSpec(name, words, starts, kinds, strings, base, little)


def load_btf(path: Path, base: BTFSpec | None = None) -> BTFSpec:
    """Read and parse a raw BTF file (e.g. a copy of /sys/kernel/btf/vmlinux); raises BTFError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BTFError(f"{path}: cannot read BTF: {exc.strerror}") from exc
    return parse_btf(data, str(path), base)


# --- The spec --------------------------------------------------------------------------------------


class TypeTable(Sequence[BTFType]):
    """The types of a spec (and of its base) indexed by id; materialised on first access."""

    def __init__(self, spec: BTFSpec) -> None:
        self._spec = spec

    def __len__(self) -> int:
        return len(self._spec)

    @overload
    def __getitem__(self, index: int) -> BTFType: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[BTFType]: ...

    def __getitem__(self, index: int | slice) -> BTFType | Sequence[BTFType]:
        if isinstance(index, slice):
            return [self._spec.type(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return self._spec.type(index)

    def __iter__(self) -> Iterator[BTFType]:
        for i in range(len(self)):
            yield self._spec.type(i)


class BTFSpec:
    """Parsed BTF: type ids, kinds and names are indexed at parse time, type records built lazily."""

    def __init__(
        self,
        name: str,
        words: array[int],
        starts: Sequence[int],
        kinds: bytes,
        strings: bytes,
        base: BTFSpec | None,
        little_endian: bool,
    ) -> None:
        self.name = name
        self.base = base
        self.little_endian = little_endian
        self._words = words
        self._starts = starts
        self._kinds = kinds
        self._strings = strings
        self._first_id = len(base) if base is not None else 1
        self._str_base = base.strings_len if base is not None else 0
        self._cache: dict[int, BTFType] = {}
        self._str_cache: dict[int, str] = {}
        self.names: NameIndex = NameIndex(
            words, starts, kinds, strings, self._first_id, self._str_base, self.string,
            base.names if base is not None else None,
        )
        self.types = TypeTable(self)

    # sizes and ids

    def __len__(self) -> int:
        """Number of type ids, void (0) and the base's types included."""
        return self._first_id + len(self._starts)

    def __getitem__(self, type_id: int) -> BTFType:
        return self.type(type_id)

    @property
    def strings_len(self) -> int:
        return self._str_base + len(self._strings)

    @property
    def first_id(self) -> int:
        """The first id this spec defines (1, or the base's length for split BTF)."""
        return self._first_id

    # raw access without building records

    def _check_id(self, type_id: int) -> None:
        if not 0 <= type_id < len(self):
            raise BTFError(f"{self.name}: type id {type_id} out of range (0..{len(self) - 1})")

    def kind_of(self, type_id: int) -> Kind:
        """The kind of a type id; raises BTFError for an id out of range."""
        if type_id < self._first_id:
            if type_id == 0:
                return Kind.VOID
            if self.base is not None:
                return self.base.kind_of(type_id)
        self._check_id(type_id)
        return Kind(self._kinds[type_id - self._first_id])

    def name_of(self, type_id: int) -> str:
        """The name of a type id ('' when anonymous); raises BTFError for an id out of range."""
        if type_id < self._first_id:
            if type_id == 0:
                return ""
            if self.base is not None:
                return self.base.name_of(type_id)
        self._check_id(type_id)
        return self.string(self._words[self._starts[type_id - self._first_id]])

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of the string section."""
        if offset < self._str_base:
            assert self.base is not None
            return self.base.string(offset)
        cached = self._str_cache.get(offset)
        if cached is not None:
            return cached
        local = offset - self._str_base
        if local >= len(self._strings):
            raise BTFError(f"{self.name}: string offset {offset} out of range ({self.strings_len})")
        end = self._strings.find(b"\0", local)
        if end < 0:
            end = len(self._strings)
        text = self._strings[local:end].decode("utf-8", "replace")
        self._str_cache[offset] = text
        return text

    def ids(self, kind: Kind | None = None) -> Iterator[int]:
        """Type ids (of one kind, when given), the base's first."""
        if self.base is not None:
            yield from self.base.ids(kind)
        elif kind is None or kind == Kind.VOID:
            yield 0
        first = self._first_id
        if kind is None:
            yield from range(first, len(self))
            return
        if kind == Kind.VOID:
            return
        kinds = self._kinds
        k = bytes((kind,))
        pos = kinds.find(k)
        while pos >= 0:
            yield first + pos
            pos = kinds.find(k, pos + 1)

    def count_by_kind(self) -> dict[Kind, int]:
        """How many types of each kind this spec defines (the base's excluded, void excluded)."""
        return {Kind(k): self._kinds.count(k) for k in range(1, _KNOWN_KINDS) if k in self._kinds}

    # records and lookups

    def type(self, type_id: int) -> BTFType:
        """The type record for an id; raises BTFError for an id out of range."""
        if type_id < self._first_id:
            if type_id == 0:
                return Void(0, "")
            if self.base is not None:
                return self.base.type(type_id)
        cached = self._cache.get(type_id)
        if cached is not None:
            return cached
        self._check_id(type_id)
        start = self._starts[type_id - self._first_id]
        t = build_type(self._words, start, type_id, self.string, self.name)
        self._cache[type_id] = t
        return t

    def by_name(self, name: str, kind: Kind | None = None) -> list[BTFType]:
        """Types named ``name`` (of one kind, when given), the base's first; [] when none."""
        found = self.base.by_name(name, kind) if self.base is not None else []
        for tid in self.names.ids_named(name):
            if kind is None or self._kinds[tid - self._first_id] == kind:
                found.append(self.type(tid))
        return found

    def section_vars(self, section: str) -> Iterator[tuple[VarSecinfo, Var]]:
        """The variables of every DATASEC named ``section`` (``.maps``, ``.rodata``), with where each
        sits in it."""
        for sec in self.by_name(section, Kind.DATASEC):
            assert isinstance(sec, Datasec)
            for info in sec.vars:
                var = self.type(info.type_id)
                if isinstance(var, Var):
                    yield info, var

    def func_names(self) -> frozenset[str]:
        """Names of every FUNC type (cached)."""
        return self.names.func_names()

    def find_func_proto(self, name: str) -> FuncProto | None:
        """The prototype of the first FUNC named ``name``, or None when there is none."""
        for func in self.by_name(name, Kind.FUNC):
            assert isinstance(func, Func)
            proto = self.type(func.type_id)
            if isinstance(proto, FuncProto):
                return proto
        return None

    def skip_mods_and_typedefs(self, type_id: int) -> int:
        """The id reached by following typedefs and qualifiers."""
        seen = 0
        while self.kind_of(type_id) in MODS_AND_TYPEDEFS:
            t = self.type(type_id)
            assert isinstance(t, (Typedef, Qualifier))
            type_id = t.type_id
            seen += 1
            if seen > 64:
                raise BTFError(f"{self.name}: typedef/qualifier loop at type {type_id}")
        return type_id

    def sizeof(self, type_id: int) -> int:
        """Size in bytes of a type (pointers are 8 bytes); raises BTFError for a sizeless type."""
        tid = self.skip_mods_and_typedefs(type_id)
        t = self.type(tid)
        if isinstance(t, (Int, Composite, Enum, Float, Datasec)):
            return t.size
        if isinstance(t, Pointer):
            return POINTER_SIZE
        if isinstance(t, Array):
            return t.nelems * self.sizeof(t.type_id)
        raise BTFError(f"{self.name}: type {tid} ({t.kind.name}) has no size")

    # rendering

    def type_text(self, type_id: int) -> str:
        """A type as C text without a declarator: "struct inode *", "const char *", "int (*)(void *)"."""
        return render_decl(self, type_id, "")

    def decl_text(self, type_id: int, name: str) -> str:
        """A C declaration of ``name`` with this type: "char comm[16]", "struct inode *dir"."""
        return render_decl(self, type_id, name)

    def __repr__(self) -> str:
        return f"BTFSpec({self.name!r}, {len(self)} types)"
