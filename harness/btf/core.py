"""CO-RE relocations: the record kinds, and each access string resolved against the object's own BTF."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from harness.btf.ext import iter_core_relo_sections
from harness.btf.spec import BTFSpec
from harness.btf.types import Array, Composite, Enum, Kind
from harness.errors import BTFError


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
    root = root_name or f"<anon {word}>"
    path, accessors, offset = _resolve_field(spec, where, type_id, access, indices, root)
    return CoreRelo(section, insn_off, type_id, access, relo_kind, word, root_name, path, accessors, offset)


def _resolve_field(
    spec: BTFSpec, where: str, type_id: int, access: str, indices: list[int], root: str
) -> tuple[str, tuple[Accessor, ...], int]:
    """The readable path, the accessors and the byte offset of the field ``access`` (parsed into
    ``indices``) reaches from ``type_id``."""
    accessors = [Accessor(None, indices[0])]
    path = root
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
    return path, tuple(accessors), bits // 8


def parse_btf_ext_core_relos(data: bytes, spec: BTFSpec, name: str = ".BTF.ext") -> list[CoreRelo]:
    """The CO-RE relocations of a .BTF.ext section (strings and types from ``spec``, the .BTF).

    Returns [] when the section predates CO-RE records. Raises BTFError when malformed.
    """
    relos: list[CoreRelo] = []
    for sec_off, records in iter_core_relo_sections(data, name):
        section = spec.string(sec_off)
        for rec in records:
            access = spec.string(rec.access_off)
            relos.append(parse_core_relo(spec, section, rec.insn_off, rec.type_id, access, rec.kind))
    return relos
