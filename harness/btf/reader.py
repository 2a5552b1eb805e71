"""A pure BTF reader: kernel and BPF-object type information (bytes in, types out), plus CO-RE relocations."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import compress
from pathlib import Path
from typing import ClassVar, overload

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.errors import BTFError, ObjectError

BTF_MAGIC = 0xEB9F
# sizeof(struct btf_header) as of v1; a longer header is allowed (newer fields are skipped).
_BTF_HEADER_LEN = 24
# sizeof(struct btf_ext_header) without, and with, the CO-RE relocation fields (libbpf >= 0.0.6).
_BTF_EXT_MIN_HEADER_LEN = 24
_BTF_EXT_CORE_HEADER_LEN = 32
# Both architectures the harness tests are 64-bit; BTF itself does not record a pointer's size.
POINTER_SIZE = 8


class Kind(IntEnum):
    """BTF_KIND_* from include/uapi/linux/btf.h (0 is the void type)."""

    VOID = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16  # 5.13
    DECL_TAG = 17  # 5.16
    TYPE_TAG = 18  # 5.17
    ENUM64 = 19  # 6.0


# Extra u32 words after the 3-word btf_type header: fixed, then per vlen entry.
_FIXED_WORDS: tuple[int, ...] = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS: tuple[int, ...] = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
_KNOWN_KINDS = len(_FIXED_WORDS)

# BTF_INT_* encoding bits.
INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


# --- Types ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BTFType:
    """One BTF type; ``id`` is its index in the spec, ``name`` is empty for anonymous types."""

    id: int
    name: str
    kind: ClassVar[Kind] = Kind.VOID


@dataclass(frozen=True)
class Void(BTFType):
    kind: ClassVar[Kind] = Kind.VOID


@dataclass(frozen=True)
class Int(BTFType):
    size: int
    encoding: int  # INT_SIGNED | INT_CHAR | INT_BOOL
    bits: int
    bit_offset: int
    kind: ClassVar[Kind] = Kind.INT

    @property
    def signed(self) -> bool:
        return bool(self.encoding & INT_SIGNED)


@dataclass(frozen=True)
class Pointer(BTFType):
    type_id: int
    kind: ClassVar[Kind] = Kind.PTR


@dataclass(frozen=True)
class Array(BTFType):
    type_id: int
    index_type_id: int
    nelems: int
    kind: ClassVar[Kind] = Kind.ARRAY


@dataclass(frozen=True)
class Member:
    """A struct or union member; ``name`` is empty for an anonymous struct/union member."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 when not a bitfield


@dataclass(frozen=True)
class Composite(BTFType):
    size: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Struct(Composite):
    kind: ClassVar[Kind] = Kind.STRUCT


@dataclass(frozen=True)
class Union(Composite):
    kind: ClassVar[Kind] = Kind.UNION


@dataclass(frozen=True)
class EnumValue:
    name: str
    value: int


@dataclass(frozen=True)
class Enum(BTFType):
    size: int
    values: tuple[EnumValue, ...]
    signed: bool
    kind: ClassVar[Kind] = Kind.ENUM


@dataclass(frozen=True)
class Enum64(Enum):
    kind: ClassVar[Kind] = Kind.ENUM64


@dataclass(frozen=True)
class Fwd(BTFType):
    is_union: bool
    kind: ClassVar[Kind] = Kind.FWD


@dataclass(frozen=True)
class Typedef(BTFType):
    type_id: int
    kind: ClassVar[Kind] = Kind.TYPEDEF


@dataclass(frozen=True)
class Qualifier(BTFType):
    type_id: int


@dataclass(frozen=True)
class Volatile(Qualifier):
    kind: ClassVar[Kind] = Kind.VOLATILE


@dataclass(frozen=True)
class Const(Qualifier):
    kind: ClassVar[Kind] = Kind.CONST


@dataclass(frozen=True)
class Restrict(Qualifier):
    kind: ClassVar[Kind] = Kind.RESTRICT


@dataclass(frozen=True)
class TypeTag(Qualifier):
    kind: ClassVar[Kind] = Kind.TYPE_TAG


@dataclass(frozen=True)
class Func(BTFType):
    type_id: int  # a FUNC_PROTO
    linkage: int  # 0 static, 1 global, 2 extern
    kind: ClassVar[Kind] = Kind.FUNC


@dataclass(frozen=True)
class Param:
    name: str
    type_id: int


@dataclass(frozen=True)
class FuncProto(BTFType):
    return_type_id: int
    params: tuple[Param, ...]  # a last Param with type 0 and no name means "..."
    kind: ClassVar[Kind] = Kind.FUNC_PROTO

    @property
    def variadic(self) -> bool:
        return bool(self.params) and self.params[-1].type_id == 0


@dataclass(frozen=True)
class Var(BTFType):
    type_id: int
    linkage: int
    kind: ClassVar[Kind] = Kind.VAR


@dataclass(frozen=True)
class VarSecinfo:
    type_id: int
    offset: int
    size: int


@dataclass(frozen=True)
class Datasec(BTFType):
    size: int
    vars: tuple[VarSecinfo, ...]
    kind: ClassVar[Kind] = Kind.DATASEC


@dataclass(frozen=True)
class Float(BTFType):
    size: int
    kind: ClassVar[Kind] = Kind.FLOAT


@dataclass(frozen=True)
class DeclTag(BTFType):
    type_id: int
    component_idx: int  # -1 for the type itself, else a member or parameter index
    kind: ClassVar[Kind] = Kind.DECL_TAG


# bytes.translate() table: 1 for the FUNC kind, 0 for the others (a mask for itertools.compress).
_FUNC_MASK = bytes(int(k == Kind.FUNC) for k in range(256))

_QUALIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_MODS_AND_TYPEDEFS = _QUALIFIERS | {Kind.TYPEDEF}


def _s32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


# --- The spec ------------------------------------------------------------------------------------


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
        self._by_name: dict[str, list[int]] | None = None
        self._ids_named: dict[str, list[int]] = {}
        self._name_offs: array[int] | None = None
        self._name_offs_bytes = b""
        self._used_name_offs: frozenset[int] = frozenset()
        self._func_names: frozenset[str] | None = None
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

    # records

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
        t = self._build(type_id)
        self._cache[type_id] = t
        return t

    def _build(self, type_id: int) -> BTFType:
        w = self._words
        i = self._starts[type_id - self._first_id]
        name = self.string(w[i])
        info = w[i + 1]
        st = w[i + 2]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        x = i + 3
        string = self.string
        if kind == Kind.INT:
            enc = w[x]
            return Int(type_id, name, st, (enc >> 24) & 0x0F, enc & 0xFF, (enc >> 16) & 0xFF)
        if kind == Kind.PTR:
            return Pointer(type_id, name, st)
        if kind == Kind.ARRAY:
            return Array(type_id, name, w[x], w[x + 1], w[x + 2])
        if kind in (Kind.STRUCT, Kind.UNION):
            members = []
            for j in range(x, x + 3 * vlen, 3):
                off = w[j + 2]
                if kflag:
                    members.append(Member(string(w[j]), w[j + 1], off & 0xFFFFFF, off >> 24))
                else:
                    members.append(Member(string(w[j]), w[j + 1], off, 0))
            cls = Struct if kind == Kind.STRUCT else Union
            return cls(type_id, name, st, tuple(members))
        if kind == Kind.ENUM:
            values = tuple(
                EnumValue(string(w[j]), _s32(w[j + 1]) if kflag else w[j + 1])
                for j in range(x, x + 2 * vlen, 2)
            )
            return Enum(type_id, name, st, values, kflag)
        if kind == Kind.ENUM64:
            values64 = []
            for j in range(x, x + 3 * vlen, 3):
                v = w[j + 1] | (w[j + 2] << 32)
                if kflag and v & (1 << 63):
                    v -= 1 << 64
                values64.append(EnumValue(string(w[j]), v))
            return Enum64(type_id, name, st, tuple(values64), kflag)
        if kind == Kind.FWD:
            return Fwd(type_id, name, kflag)
        if kind == Kind.TYPEDEF:
            return Typedef(type_id, name, st)
        if kind == Kind.VOLATILE:
            return Volatile(type_id, name, st)
        if kind == Kind.CONST:
            return Const(type_id, name, st)
        if kind == Kind.RESTRICT:
            return Restrict(type_id, name, st)
        if kind == Kind.TYPE_TAG:
            return TypeTag(type_id, name, st)
        if kind == Kind.FUNC:
            return Func(type_id, name, st, vlen)
        if kind == Kind.FUNC_PROTO:
            params = tuple(Param(string(w[j]), w[j + 1]) for j in range(x, x + 2 * vlen, 2))
            return FuncProto(type_id, name, st, params)
        if kind == Kind.VAR:
            return Var(type_id, name, st, w[x])
        if kind == Kind.DATASEC:
            secinfos = tuple(
                VarSecinfo(w[j], w[j + 1], w[j + 2]) for j in range(x, x + 3 * vlen, 3)
            )
            return Datasec(type_id, name, st, secinfos)
        if kind == Kind.FLOAT:
            return Float(type_id, name, st)
        if kind == Kind.DECL_TAG:
            return DeclTag(type_id, name, st, _s32(w[x]))
        raise BTFError(f"{self.name}: type {type_id} has unknown BTF kind {kind}")

    # lookups

    def _name_index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            w = self._words
            string = self.string
            tid = self._first_id
            for start in self._starts:
                off = w[start]
                if off:
                    index.setdefault(string(off), []).append(tid)
                tid += 1
            self._by_name = index
        return self._by_name

    def _name_offsets(self) -> array[int]:
        """The name offset of each type this spec defines, in id order."""
        if self._name_offs is None:
            self._name_offs = array(self._words.typecode, map(self._words.__getitem__, self._starts))
        return self._name_offs

    def _string_offsets(self, encoded: bytes) -> Iterator[int]:
        """Offsets (the base's first) where the string ``encoded`` (no NUL in it) starts and ends."""
        if self.base is not None:
            yield from self.base._string_offsets(encoded)
        strings = self._strings
        pattern = encoded + b"\0"
        pos = strings.find(pattern)
        while pos >= 0:
            yield self._str_base + pos
            pos = strings.find(pattern, pos + 1)
        # string() also ends a string at the end of the section.
        if strings.endswith(encoded) and not strings.endswith(pattern):
            yield self._str_base + len(strings) - len(encoded)

    def _type_ids_named(self, name: str) -> list[int]:
        """Ids of this spec's types named ``name`` (not the base's), in id order.

        A lookup searches the string section for the name, then the types for its offsets, instead of
        decoding every type's name into an index: a run looks up tens of names among 100k+ types.
        """
        if self._by_name is not None:
            return self._by_name.get(name, [])
        found = self._ids_named.get(name)
        if found is not None:
            return found
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            encoded = b""
        if not encoded or b"\0" in encoded or "\ufffd" in name:
            # Names no offset search can find: empty, or only made by decoding invalid UTF-8.
            return self._name_index().get(name, [])
        offs = self._name_offsets()
        if not self._name_offs_bytes:
            self._name_offs_bytes = offs.tobytes()
            self._used_name_offs = frozenset(offs)
        used, packed, width = self._used_name_offs, self._name_offs_bytes, offs.itemsize
        found = []
        for off in self._string_offsets(encoded):
            if off == 0 or off not in used:  # offset 0 is the anonymous types' name
                continue
            needle = array(offs.typecode, (off,)).tobytes()
            i = packed.find(needle)
            while i >= 0:
                if i % width:
                    i = packed.find(needle, i + 1)
                    continue
                found.append(self._first_id + i // width)
                i = packed.find(needle, i + width)
        found.sort()
        self._ids_named[name] = found
        return found

    def by_name(self, name: str, kind: Kind | None = None) -> list[BTFType]:
        """Types named ``name`` (of one kind, when given), the base's first; [] when none."""
        found = self.base.by_name(name, kind) if self.base is not None else []
        for tid in self._type_ids_named(name):
            if kind is None or self._kinds[tid - self._first_id] == kind:
                found.append(self.type(tid))
        return found

    def func_names(self) -> frozenset[str]:
        """Names of every FUNC type (cached)."""
        if self._func_names is None:
            funcs = compress(self._name_offsets(), self._kinds.translate(_FUNC_MASK))
            names = set(map(self.string, funcs))
            if self.base is not None:
                names |= self.base.func_names()
            self._func_names = frozenset(names)
        return self._func_names

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
        while self.kind_of(type_id) in _MODS_AND_TYPEDEFS:
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
        return self.decl_text(type_id, "")

    def decl_text(self, type_id: int, name: str) -> str:
        """A C declaration of ``name`` with this type: "char comm[16]", "struct inode *dir"."""
        return self._decl(type_id, name, 0)

    def _base_name(self, t: BTFType) -> str:
        if isinstance(t, Void):
            return "void"
        if isinstance(t, Struct):
            return f"struct {t.name or '{...}'}"
        if isinstance(t, Union):
            return f"union {t.name or '{...}'}"
        if isinstance(t, Enum):
            return f"enum {t.name or '{...}'}"
        if isinstance(t, Fwd):
            return f"{'union' if t.is_union else 'struct'} {t.name}"
        return t.name or f"<anon {t.kind.name.lower()}>"

    def _decl(self, type_id: int, inner: str, depth: int) -> str:
        if depth > 64:
            return f"<type {type_id}>"
        t = self.type(type_id)
        if isinstance(t, Pointer):
            target_kind = self.kind_of(t.type_id)
            star = "*" + inner
            if target_kind in (Kind.ARRAY, Kind.FUNC_PROTO):
                star = f"({star})"
            return self._decl(t.type_id, star, depth + 1)
        if isinstance(t, Array):
            return self._decl(t.type_id, f"{inner}[{t.nelems}]", depth + 1)
        if isinstance(t, FuncProto):
            return self._decl(t.return_type_id, f"{inner}({self._params_text(t, depth)})", depth + 1)
        if isinstance(t, Func):
            return self._decl(t.type_id, inner or t.name, depth + 1)
        if isinstance(t, TypeTag):
            return self._decl(t.type_id, inner, depth + 1)
        if isinstance(t, Qualifier):
            word = t.kind.name.lower()
            target = t.type_id
            if self.kind_of(target) in (Kind.PTR, Kind.ARRAY, Kind.FUNC_PROTO):
                return self._decl(target, f"{word} {inner}".rstrip(), depth + 1)
            return f"{word} {self._decl(target, inner, depth + 1)}"
        if isinstance(t, (Var, DeclTag)):
            return self._decl(t.type_id, inner or t.name, depth + 1)
        base = self._base_name(t)
        if not inner:
            return base
        return f"{base} {inner}"

    def _params_text(self, proto: FuncProto, depth: int) -> str:
        if not proto.params:
            return "void"
        parts = []
        for p in proto.params:
            if p.type_id == 0 and not p.name:
                parts.append("...")
            else:
                parts.append(self._decl(p.type_id, "", depth + 1))
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"BTFSpec({self.name!r}, {len(self)} types)"


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
    if len(data) < _BTF_HEADER_LEN:
        raise BTFError(f"{name}: {len(data)} bytes is too short for a BTF header")
    magic = data[0:2]
    if magic == b"\x9f\xeb":
        order, little = "<", True
    elif magic == b"\xeb\x9f":
        order, little = ">", False
    else:
        raise BTFError(f"{name}: bad BTF magic 0x{magic.hex()} (expected 0xeb9f)")
    version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "BBIIIII", data, 2
    )
    if version != 1:
        raise BTFError(f"{name}: unsupported BTF version {version}")
    if hdr_len < _BTF_HEADER_LEN:
        raise BTFError(f"{name}: BTF header length {hdr_len} is shorter than {_BTF_HEADER_LEN}")
    t_start, s_start = hdr_len + type_off, hdr_len + str_off
    if t_start + type_len > len(data) or s_start + str_len > len(data):
        raise BTFError(
            f"{name}: BTF sections (types {type_off}+{type_len}, strings {str_off}+{str_len}) "
            f"run past the end of {len(data)} bytes"
        )
    if type_len % 4:
        raise BTFError(f"{name}: BTF type section length {type_len} is not a multiple of 4")
    strings = bytes(data[s_start : s_start + str_len])
    words = array("I")
    if words.itemsize != 4:  # pragma: no cover - every supported platform has a 4-byte unsigned int
        words = array("L")
    words.frombytes(data[t_start : t_start + type_len])
    if little != (struct.pack("=H", 1) == b"\x01\x00"):
        words.byteswap()
    return words, strings, little


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


# --- CO-RE relocations (.BTF.ext) ----------------------------------------------------------------


class CoreReloKind(IntEnum):
    """enum bpf_core_relo_kind; str() gives libbpf's name."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12  # libbpf 1.2

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def is_field(self) -> bool:
        return self <= CoreReloKind.FIELD_RSHIFT_U64

    @property
    def is_type(self) -> bool:
        return self in _TYPE_RELO_KINDS

    @property
    def is_enumval(self) -> bool:
        return self in (CoreReloKind.ENUMVAL_EXISTS, CoreReloKind.ENUMVAL_VALUE)


_TYPE_RELO_KINDS = frozenset(
    {
        CoreReloKind.TYPE_ID_LOCAL,
        CoreReloKind.TYPE_ID_TARGET,
        CoreReloKind.TYPE_EXISTS,
        CoreReloKind.TYPE_SIZE,
        CoreReloKind.TYPE_MATCHES,
    }
)


@dataclass(frozen=True)
class Accessor:
    """One step of a CO-RE access path: a named member, or an array index (``name`` None)."""

    name: str | None
    index: int


@dataclass(frozen=True)
class CoreRelo:
    """One bpf_core_relo record of a BPF object, with its access string resolved in the local BTF.

    For field relocations ``accessors`` starts with the array index on the root type, then one step per
    named member or array index (anonymous struct/union members are skipped, as libbpf does, since the
    target is searched by name through anonymous members). For enum value relocations it holds the one
    enumerator. Type relocations have none.
    """

    section: str  # the ELF section of the instruction, e.g. "kprobe/vfs_unlink"
    insn_off: int  # byte offset of the instruction within its section
    type_id: int  # the root type in the object's BTF
    access: str  # the raw access string, e.g. "0:1:3"
    kind: CoreReloKind
    root_kind: str  # "struct", "union", "enum", "typedef", ...
    root_name: str  # the local name, flavour suffix ("___v1") included
    path: str  # readable: "task_struct.real_parent", "task_struct", "pid_type::PIDTYPE_PID"
    accessors: tuple[Accessor, ...]
    local_offset: int | None = None  # byte offset of the field in the local type, for field relos

    @property
    def essential_name(self) -> str:
        """The root name without a "___flavour" suffix (what libbpf matches kernel types by)."""
        return essential_name(self.root_name)

    @property
    def kind_name(self) -> str:
        return str(self.kind)


def essential_name(name: str) -> str:
    """A type, field or enumerator name without its "___flavour" suffix."""
    pos = name.find("___")
    return name[:pos] if pos > 0 else name


def _kind_word(kind: Kind) -> str:
    return kind.name.lower().replace("enum64", "enum")


def parse_core_relo(
    spec: BTFSpec, section: str, insn_off: int, type_id: int, access: str, kind: int
) -> CoreRelo:
    """Resolve one raw bpf_core_relo against the object's own BTF; raises BTFError if malformed."""
    where = f"{spec.name}: CO-RE relocation at {section}+{insn_off}"
    try:
        relo_kind = CoreReloKind(kind)
    except ValueError as exc:
        raise BTFError(f"{where}: unknown relocation kind {kind}") from exc
    try:
        indices = [int(part) for part in access.split(":")] if access else []
    except ValueError as exc:
        raise BTFError(f"{where}: malformed access string {access!r}") from exc
    root_kind = spec.kind_of(type_id)
    root_name = spec.name_of(type_id)
    word = _kind_word(root_kind)
    if relo_kind.is_type:
        return CoreRelo(section, insn_off, type_id, access, relo_kind, word, root_name,
                        root_name or f"<anon {word}>", ())
    if relo_kind.is_enumval:
        enum = spec.type(spec.skip_mods_and_typedefs(type_id))
        if not isinstance(enum, Enum) or len(indices) != 1 or indices[0] >= len(enum.values):
            raise BTFError(f"{where}: access {access!r} is not an enumerator of type {type_id}")
        value = enum.values[indices[0]].name
        return CoreRelo(section, insn_off, type_id, access, relo_kind, word, root_name,
                        f"{root_name}::{value}", (Accessor(value, indices[0]),))
    if not indices:
        raise BTFError(f"{where}: empty access string for a field relocation")
    accessors = [Accessor(None, indices[0])]
    path = root_name or f"<anon {word}>"
    if indices[0]:
        path += f"[{indices[0]}]"
    tid = spec.skip_mods_and_typedefs(type_id)
    bits = indices[0] * spec.sizeof(tid) * 8 if indices[0] else 0
    for idx in indices[1:]:
        t = spec.type(tid)
        if isinstance(t, Composite):
            if idx >= len(t.members):
                raise BTFError(f"{where}: member {idx} out of range in {path} ({len(t.members)})")
            m = t.members[idx]
            bits += m.bit_offset
            if m.name:
                accessors.append(Accessor(m.name, idx))
                path += f".{m.name}"
            tid = spec.skip_mods_and_typedefs(m.type_id)
        elif isinstance(t, Array):
            accessors.append(Accessor(None, idx))
            path += f"[{idx}]"
            tid = spec.skip_mods_and_typedefs(t.type_id)
            bits += idx * spec.sizeof(tid) * 8
        else:
            raise BTFError(f"{where}: access {access!r} steps into {t.kind.name} type {tid}")
    return CoreRelo(section, insn_off, type_id, access, relo_kind, word, root_name, path,
                    tuple(accessors), bits // 8)


def parse_btf_ext_core_relos(data: bytes, spec: BTFSpec, name: str = ".BTF.ext") -> list[CoreRelo]:
    """The CO-RE relocations of a .BTF.ext section (strings and types from ``spec``, the .BTF).

    Returns [] when the section predates CO-RE records. Raises BTFError when malformed.
    """
    if len(data) < 8:
        raise BTFError(f"{name}: {len(data)} bytes is too short for a BTF.ext header")
    if data[0:2] == b"\x9f\xeb":
        order = "<"
    elif data[0:2] == b"\xeb\x9f":
        order = ">"
    else:
        raise BTFError(f"{name}: bad BTF.ext magic 0x{data[0:2].hex()} (expected 0xeb9f)")
    (hdr_len,) = struct.unpack_from(order + "I", data, 4)
    if hdr_len < _BTF_EXT_MIN_HEADER_LEN or hdr_len > len(data):
        raise BTFError(f"{name}: bad BTF.ext header length {hdr_len}")
    if hdr_len < _BTF_EXT_CORE_HEADER_LEN:
        return []
    core_off, core_len = struct.unpack_from(order + "II", data, 24)
    if core_len == 0:
        return []
    start = hdr_len + core_off
    end = start + core_len
    if end > len(data) or core_len < 4:
        raise BTFError(f"{name}: CO-RE relocation section {core_off}+{core_len} out of bounds")
    (rec_size,) = struct.unpack_from(order + "I", data, start)
    if rec_size < 16:
        raise BTFError(f"{name}: CO-RE relocation record size {rec_size} is below 16")
    relos: list[CoreRelo] = []
    pos = start + 4
    while pos < end:
        if pos + 8 > end:
            raise BTFError(f"{name}: CO-RE relocation section truncated at byte {pos}")
        sec_off, count = struct.unpack_from(order + "II", data, pos)
        pos += 8
        if pos + count * rec_size > end:
            raise BTFError(f"{name}: CO-RE relocation section truncated at byte {pos}")
        section = spec.string(sec_off)
        for _ in range(count):
            insn_off, type_id, access_off, kind = struct.unpack_from(order + "IIII", data, pos)
            pos += rec_size
            relos.append(
                parse_core_relo(spec, section, insn_off, type_id, spec.string(access_off), kind)
            )
    return relos


@dataclass(frozen=True)
class _FuncSym:
    name: str
    section: str
    offset: int
    size: int
    is_global: bool


_BPF_CALL = 0x85  # BPF_JMP | BPF_CALL
_BPF_PSEUDO_CALL = 1  # src_reg of a call to a BPF subprogram


def _owner(funcs: list[_FuncSym], offset: int) -> _FuncSym | None:
    for f in funcs:
        if f.offset <= offset < f.offset + max(f.size, 8):
            return f
    return None


def _subprogram_calls(
    code: dict[str, bytes],
    rel_targets: dict[tuple[str, int], tuple[str, int]],
    by_section: dict[str, list[_FuncSym]],
    little_endian: bool,
) -> dict[_FuncSym, set[_FuncSym]]:
    """Which functions each function calls directly (BPF-to-BPF calls, same section or via .rel)."""
    order = "<" if little_endian else ">"
    calls: dict[_FuncSym, set[_FuncSym]] = {}
    for section, funcs in by_section.items():
        data = code.get(section, b"")
        for f in funcs:
            callees: set[_FuncSym] = set()
            end = min(len(data), f.offset + f.size)
            for off in range(f.offset, end - 7, 8):
                op, regs, _, imm = struct.unpack_from(order + "BBhi", data, off)
                src = regs >> 4 if little_endian else regs & 0x0F
                if op != _BPF_CALL or src != _BPF_PSEUDO_CALL:
                    continue
                # A call into another section is resolved through its ELF relocation (symbol value
                # plus the instruction's relative offset, as libbpf computes it).
                target_sec, base = rel_targets.get((section, off), (section, off))
                callee = _owner(by_section.get(target_sec, []), base + (imm + 1) * 8)
                if callee is not None and callee != f:
                    callees.add(callee)
            calls[f] = callees
    return calls


def _assign_programs(
    relos: list[CoreRelo], funcs: list[_FuncSym], calls: dict[_FuncSym, set[_FuncSym]]
) -> dict[str, list[CoreRelo]]:
    by_section: dict[str, list[_FuncSym]] = {}
    for f in funcs:
        by_section.setdefault(f.section, []).append(f)
    own: dict[_FuncSym | str, list[CoreRelo]] = {}
    for relo in relos:
        owner = _owner(by_section.get(relo.section, []), relo.insn_off)
        # A relocation outside any function symbol (should not happen with clang output) is kept
        # under its section's name so that it is not silently lost.
        own.setdefault(owner if owner is not None else relo.section, []).append(relo)
    result: dict[str, list[CoreRelo]] = {}
    for key, found in own.items():
        result.setdefault(key if isinstance(key, str) else key.name, []).extend(found)
    # libbpf appends every subprogram a program calls to that program, relocations included.
    for f in funcs:
        if not f.is_global:
            continue
        seen: set[_FuncSym] = {f}
        todo = list(calls.get(f, ()))
        extra: list[CoreRelo] = []
        while todo:
            callee = todo.pop()
            if callee in seen:
                continue
            seen.add(callee)
            extra.extend(own.get(callee, []))
            todo.extend(calls.get(callee, ()))
        if extra:
            result.setdefault(f.name, []).extend(extra)
    return result


def load_object_core_relos(path: Path) -> dict[str, list[CoreRelo]]:
    """CO-RE relocations of a BPF object, by program (function symbol) name.

    A program's list includes the relocations of the static subprograms it calls, directly or not
    (libbpf links those into the program); subprograms are also listed under their own names. Returns
    {} when the object has no .BTF.ext. Raises ObjectError for an unreadable or non-ELF file and
    BTFError for malformed BTF.
    """
    try:
        with path.open("rb") as fh:
            try:
                elf = ELFFile(fh)
            except ELFError as exc:
                raise ObjectError(f"{path}: not an ELF file ({exc})") from exc
            btf_sec = elf.get_section_by_name(".BTF")
            ext_sec = elf.get_section_by_name(".BTF.ext")
            if btf_sec is None or ext_sec is None:
                return {}
            spec = parse_btf(btf_sec.data(), f"{path}:.BTF")
            relos = parse_btf_ext_core_relos(ext_sec.data(), spec, f"{path}:.BTF.ext")
            if not relos:
                return {}
            funcs: list[_FuncSym] = []
            rel_targets: dict[tuple[str, int], tuple[str, int]] = {}
            symtab = elf.get_section_by_name(".symtab")
            if isinstance(symtab, SymbolTableSection):
                for sym in symtab.iter_symbols():
                    shndx = sym["st_shndx"]
                    if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int):
                        continue
                    funcs.append(
                        _FuncSym(
                            sym.name,
                            elf.get_section(shndx).name,
                            int(sym["st_value"]),
                            int(sym["st_size"]),
                            sym["st_info"]["bind"] == "STB_GLOBAL",
                        )
                    )
                symbols = list(symtab.iter_symbols())
                names: dict[int, str] = {}
                for rel_sec in elf.iter_sections():
                    if not isinstance(rel_sec, RelocationSection) or rel_sec.is_RELA():
                        continue
                    applies = elf.get_section(rel_sec["sh_info"])
                    # Only code can call a subprogram: the relocations of .BTF, .BTF.ext and DWARF
                    # sections are many and say nothing about calls.
                    if not applies["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                        continue
                    for rel in rel_sec.iter_relocations():
                        sym = symbols[rel["r_info_sym"]]
                        shndx = sym["st_shndx"]
                        if isinstance(shndx, int) and shndx > 0:
                            if shndx not in names:
                                names[shndx] = elf.get_section(shndx).name
                            rel_targets[(applies.name, int(rel["r_offset"]))] = (
                                names[shndx], int(sym["st_value"])
                            )
            # Global functions (programs) win over local symbols at the same offset.
            funcs.sort(key=lambda f: (f.section, f.offset, not f.is_global))
            by_section: dict[str, list[_FuncSym]] = {}
            for f in funcs:
                by_section.setdefault(f.section, []).append(f)
            code: dict[str, bytes] = {}
            for name in by_section:
                section = elf.get_section_by_name(name)
                if section is not None:
                    code[name] = section.data()
            calls = _subprogram_calls(code, rel_targets, by_section, elf.little_endian)
    except OSError as exc:
        raise ObjectError(f"{path}: cannot read: {exc.strerror}") from exc
    except ELFError as exc:
        raise ObjectError(f"{path}: malformed ELF: {exc}") from exc
    return _assign_programs(relos, funcs, calls)
