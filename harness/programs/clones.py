"""Compiler clones of a function (foo.isra.0, foo.part.1, foo.cold): the one pattern and its helpers."""

from __future__ import annotations

import re

# GCC's IPA clones (gcc/ipa-*.cc: .isra/.constprop/.part, combinable: foo.constprop.0.isra.0), its
# split-off unlikely paths (.cold, .cold.N before GCC 9), its local aliases of interposable functions
# (.localalias), LTO privatised statics (.lto_priv.N) and clang's ThinLTO promotions (.llvm.<hash>).
# ipa-split's `.part.N` holds the body of a partly inlined function; `.isra.N` and `.constprop.N` are
# specialised copies with other arguments. kallsyms and ELF symbol tables show them; BTF names the
# function without them.
CLONE_KINDS = ("isra", "constprop", "part", "cold", "localalias", "lto_priv", "llvm")
CLONE_RE = re.compile(
    r"^(?P<base>[^.]+)(?P<suffix>(?:\.(?:" + "|".join(CLONE_KINDS) + r")(?:\.\d+)?)+)$"
)


def parse_clone(name: str) -> tuple[str, str] | None:
    """(base, suffix) of a clone name such as ``lookup.part.0`` -> ("lookup", ".part.0"), else None."""
    if "." not in name:
        return None
    match = CLONE_RE.match(name)
    return (match["base"], match["suffix"]) if match else None


def clone_kinds(name: str) -> frozenset[str]:
    """The kinds of clone ``name`` is ({"constprop", "isra"} for foo.constprop.0.isra.0); empty if none."""
    parsed = parse_clone(name)
    if parsed is None:
        return frozenset()
    return frozenset(part for part in parsed[1].split(".") if part and not part.isdigit())


def strip_clone_suffix(name: str) -> str:
    """``foo`` for ``foo.isra.0``, ``foo.constprop.0.isra.0``, ``foo.cold``; other names unchanged."""
    parsed = parse_clone(name)
    return parsed[0] if parsed else name


def is_clone_of(name: str, base: str) -> bool:
    """Whether ``name`` is a compiler clone of the function ``base``."""
    parsed = parse_clone(name)
    return parsed is not None and parsed[0] == base
