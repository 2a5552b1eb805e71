"""Tests of kernels.version: one parser for kernels.yaml ids, releases and uname, and its order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.kernels import version as version_module
from harness.kernels.version import KernelVersion, version_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.10", (5, 10, 0, False)),
        ("6.1.115", (6, 1, 115, False)),
        ("6.1.0-27-amd64", (6, 1, 0, False)),
        ("6.12.9+bpo-amd64", (6, 12, 9, False)),
        ("6.12-rc3", (6, 12, 0, True)),
        ("7.0.0-rc3-cloud-amd64", (7, 0, 0, True)),
        ("v6.1", (6, 1, 0, False)),
        ("6", (6, 0, 0, False)),
    ],
)
def test_parse(text: str, expected: tuple[int, int, int, bool]) -> None:
    parsed = KernelVersion.parse(text)
    assert parsed is not None
    assert (parsed.major, parsed.minor, parsed.patch, parsed.is_rc) == expected
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["", "sid", "garbage", "local", "-rc1"])
def test_unparsable(text: str) -> None:
    assert KernelVersion.parse(text) is None


def test_order_is_numeric_and_puts_release_candidates_first() -> None:
    texts = ["6.12", "5.10", "7.2-rc1", "6.1", "5.4", "6.1.115", "7.2", "5.9"]
    ordered = sorted(texts, key=KernelVersion.parse)  # type: ignore[arg-type]
    assert ordered == ["5.4", "5.9", "5.10", "6.1", "6.1.115", "6.12", "7.2-rc1", "7.2"]
    assert KernelVersion.parse("6.1") == KernelVersion.parse("6.1.0-27-amd64")
    assert str(KernelVersion(6, 12, rc=3)) == "6.12-rc3"


def test_version_key_places_unparsable_ids_first_or_last() -> None:
    ids = ["6.12", "sid", "5.10", "local"]
    assert sorted(ids, key=version_key) == ["local", "sid", "5.10", "6.12"]
    assert sorted(ids, key=lambda k: version_key(k, unparsable_last=True)) == ["5.10", "6.12", "local", "sid"]


def test_runs_in_the_guest() -> None:
    # Copied beside the guest agent: stdlib only, and parsable by bullseye's Python 3.9.
    tree = ast.parse(Path(version_module.__file__).read_text(), feature_version=(3, 9))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "re", "dataclasses"}
