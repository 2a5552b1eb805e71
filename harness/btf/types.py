"""BTF type records: one frozen dataclass per BTF kind, behind BTFType (include/uapi/linux/btf.h)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

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


# BTF_INT_* encoding bits.
INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


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


QUALIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
MODS_AND_TYPEDEFS = QUALIFIERS | {Kind.TYPEDEF}
