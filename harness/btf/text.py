"""BTF types rendered as C declarations ("struct inode *dir", "int (*)(void *)")."""

from __future__ import annotations

from typing import Protocol

from harness.btf.types import (
    Array,
    BTFType,
    DeclTag,
    Enum,
    Func,
    FuncProto,
    Fwd,
    Kind,
    Pointer,
    Qualifier,
    Struct,
    TypeTag,
    Union,
    Var,
    Void,
)

# Past this depth a declaration is cut short: malformed BTF can make a type contain itself.
_MAX_DEPTH = 64


class TypeSource(Protocol):
    """What rendering needs of a spec (BTFSpec satisfies it)."""

    def type(self, type_id: int) -> BTFType: ...

    def kind_of(self, type_id: int) -> Kind: ...


def render_decl(spec: TypeSource, type_id: int, name: str) -> str:
    """A C declaration of ``name`` with the type ``type_id``; "" as ``name`` gives the bare type."""
    return _decl(spec, type_id, name, 0)


def _base_name(t: BTFType) -> str:
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


def _decl(spec: TypeSource, type_id: int, inner: str, depth: int) -> str:
    if depth > _MAX_DEPTH:
        return f"<type {type_id}>"
    t = spec.type(type_id)
    if isinstance(t, Pointer):
        target_kind = spec.kind_of(t.type_id)
        star = "*" + inner
        if target_kind in (Kind.ARRAY, Kind.FUNC_PROTO):
            star = f"({star})"
        return _decl(spec, t.type_id, star, depth + 1)
    if isinstance(t, Array):
        return _decl(spec, t.type_id, f"{inner}[{t.nelems}]", depth + 1)
    if isinstance(t, FuncProto):
        return _decl(spec, t.return_type_id, f"{inner}({_params_text(spec, t, depth)})", depth + 1)
    if isinstance(t, Func):
        return _decl(spec, t.type_id, inner or t.name, depth + 1)
    if isinstance(t, TypeTag):
        return _decl(spec, t.type_id, inner, depth + 1)
    if isinstance(t, Qualifier):
        word = t.kind.name.lower()
        target = t.type_id
        if spec.kind_of(target) in (Kind.PTR, Kind.ARRAY, Kind.FUNC_PROTO):
            return _decl(spec, target, f"{word} {inner}".rstrip(), depth + 1)
        return f"{word} {_decl(spec, target, inner, depth + 1)}"
    if isinstance(t, (Var, DeclTag)):
        return _decl(spec, t.type_id, inner or t.name, depth + 1)
    base = _base_name(t)
    if not inner:
        return base
    return f"{base} {inner}"


def _params_text(spec: TypeSource, proto: FuncProto, depth: int) -> str:
    if not proto.params:
        return "void"
    parts = []
    for p in proto.params:
        if p.type_id == 0 and not p.name:
            parts.append("...")
        else:
            parts.append(_decl(spec, p.type_id, "", depth + 1))
    return ", ".join(parts)
