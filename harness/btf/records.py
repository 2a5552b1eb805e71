"""Type records built from the u32 words of a BTF type section (one builder per kind)."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import NamedTuple

from harness.btf.types import (
    Array,
    BTFType,
    Const,
    Datasec,
    DeclTag,
    Enum,
    Enum64,
    EnumValue,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Kind,
    Member,
    Param,
    Pointer,
    Restrict,
    Struct,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarSecinfo,
    Volatile,
)
from harness.errors import BTFError

Strings = Callable[[int], str]


class RawType(NamedTuple):
    """One btf_type as words: its header fields, and where its extra words start in ``words``."""

    id: int
    name: str
    info: int
    size_or_type: int
    words: array[int]
    extra: int  # index in ``words`` of the first word after the 3-word header
    strings: Strings

    @property
    def vlen(self) -> int:
        return self.info & 0xFFFF

    @property
    def kflag(self) -> bool:
        return bool(self.info >> 31)


# Kinds whose record is (id, name, the size_or_type word) and nothing more.
_PLAIN: dict[int, type[Pointer | Typedef | Volatile | Const | Restrict | TypeTag | Float]] = {
    Kind.PTR: Pointer,
    Kind.TYPEDEF: Typedef,
    Kind.VOLATILE: Volatile,
    Kind.CONST: Const,
    Kind.RESTRICT: Restrict,
    Kind.TYPE_TAG: TypeTag,
    Kind.FLOAT: Float,
}


def s32(value: int) -> int:
    """A u32 word read as a signed 32-bit value."""
    return value - (1 << 32) if value & 0x80000000 else value


def build_type(words: array[int], start: int, type_id: int, strings: Strings, where: str) -> BTFType:
    """The record of the type whose btf_type header is at ``words[start]``; raises BTFError for an
    unknown kind (``where`` names the spec)."""
    info = words[start + 1]
    kind = (info >> 24) & 0x1F
    name = strings(words[start])
    plain = _PLAIN.get(kind)
    if plain is not None:
        return plain(type_id, name, words[start + 2])
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise BTFError(f"{where}: type {type_id} has unknown BTF kind {kind}")
    return builder(RawType(type_id, name, info, words[start + 2], words, start + 3, strings))


def _int(t: RawType) -> BTFType:
    enc = t.words[t.extra]
    return Int(t.id, t.name, t.size_or_type, (enc >> 24) & 0x0F, enc & 0xFF, (enc >> 16) & 0xFF)


def _array(t: RawType) -> BTFType:
    w, x = t.words, t.extra
    return Array(t.id, t.name, w[x], w[x + 1], w[x + 2])


def _members(t: RawType) -> tuple[Member, ...]:
    w, x, s = t.words, t.extra, t.strings
    members = []
    for j in range(x, x + 3 * t.vlen, 3):
        off = w[j + 2]
        if t.kflag:
            members.append(Member(s(w[j]), w[j + 1], off & 0xFFFFFF, off >> 24))
        else:
            members.append(Member(s(w[j]), w[j + 1], off, 0))
    return tuple(members)


def _struct(t: RawType) -> BTFType:
    return Struct(t.id, t.name, t.size_or_type, _members(t))


def _union(t: RawType) -> BTFType:
    return Union(t.id, t.name, t.size_or_type, _members(t))


def _enum(t: RawType) -> BTFType:
    w, x, s, kflag = t.words, t.extra, t.strings, t.kflag
    values = tuple(
        EnumValue(s(w[j]), s32(w[j + 1]) if kflag else w[j + 1]) for j in range(x, x + 2 * t.vlen, 2)
    )
    return Enum(t.id, t.name, t.size_or_type, values, kflag)


def _enum64(t: RawType) -> BTFType:
    w, x, s, kflag = t.words, t.extra, t.strings, t.kflag
    values = []
    for j in range(x, x + 3 * t.vlen, 3):
        v = w[j + 1] | (w[j + 2] << 32)
        if kflag and v & (1 << 63):
            v -= 1 << 64
        values.append(EnumValue(s(w[j]), v))
    return Enum64(t.id, t.name, t.size_or_type, tuple(values), kflag)


def _fwd(t: RawType) -> BTFType:
    return Fwd(t.id, t.name, t.kflag)


def _func(t: RawType) -> BTFType:
    return Func(t.id, t.name, t.size_or_type, t.vlen)


def _proto(t: RawType) -> BTFType:
    w, x, s = t.words, t.extra, t.strings
    params = tuple(Param(s(w[j]), w[j + 1]) for j in range(x, x + 2 * t.vlen, 2))
    return FuncProto(t.id, t.name, t.size_or_type, params)


def _var(t: RawType) -> BTFType:
    return Var(t.id, t.name, t.size_or_type, t.words[t.extra])


def _datasec(t: RawType) -> BTFType:
    w, x = t.words, t.extra
    secinfos = tuple(VarSecinfo(w[j], w[j + 1], w[j + 2]) for j in range(x, x + 3 * t.vlen, 3))
    return Datasec(t.id, t.name, t.size_or_type, secinfos)


def _decl_tag(t: RawType) -> BTFType:
    return DeclTag(t.id, t.name, t.size_or_type, s32(t.words[t.extra]))


_BUILDERS: dict[int, Callable[[RawType], BTFType]] = {
    Kind.INT: _int,
    Kind.ARRAY: _array,
    Kind.STRUCT: _struct,
    Kind.UNION: _union,
    Kind.ENUM: _enum,
    Kind.ENUM64: _enum64,
    Kind.FWD: _fwd,
    Kind.FUNC: _func,
    Kind.FUNC_PROTO: _proto,
    Kind.VAR: _var,
    Kind.DATASEC: _datasec,
    Kind.DECL_TAG: _decl_tag,
}
