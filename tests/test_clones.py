"""Tests of programs.clones: the one pattern of compiler clone names and its helpers."""

from __future__ import annotations

import pytest

from harness.programs.clones import clone_kinds, is_clone_of, parse_clone, strip_clone_suffix


def test_parse_clone() -> None:
    assert parse_clone("lookup.part.0") == ("lookup", ".part.0")
    assert parse_clone("f.isra.0.cold") == ("f", ".isra.0.cold")
    assert parse_clone("f.constprop.3") == ("f", ".constprop.3")
    assert parse_clone("lookup") is None
    assert parse_clone("a.b") is None


@pytest.mark.parametrize(
    ("name", "base", "kinds"),
    [
        ("vfs_unlink.isra.0", "vfs_unlink", {"isra"}),
        ("foo.constprop.0.isra.0", "foo", {"constprop", "isra"}),
        ("foo.cold", "foo", {"cold"}),
        ("foo.cold.12", "foo", {"cold"}),  # before GCC 9
        ("foo.localalias", "foo", {"localalias"}),
        ("foo.lto_priv.0", "foo", {"lto_priv"}),
        ("foo.llvm.12345678901234567", "foo", {"llvm"}),
    ],
)
def test_every_clone_kind(name: str, base: str, kinds: set[str]) -> None:
    assert strip_clone_suffix(name) == base
    assert clone_kinds(name) == kinds
    assert is_clone_of(name, base)
    assert not is_clone_of(name, base + "x")


@pytest.mark.parametrize("name", ["foo_bar", "foo.bar", "foo.isra.x", "__key.12", ".isra.0"])
def test_other_names_are_no_clones(name: str) -> None:
    assert parse_clone(name) is None
    assert strip_clone_suffix(name) == name
    assert clone_kinds(name) == frozenset()
