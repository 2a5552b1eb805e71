"""Tests of harness.kernels.cache: safe paths, locked builds, manifests and corruption recovery."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.errors import ConfigError, FetchError
from harness.kernels.cache import (
    Manifest,
    check_entry,
    digest_files,
    ensure_entry,
    entry_path,
    resolve_cache_root,
    safe_name,
)


def test_resolve_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_cache_root({"BPF_MATRIX_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_cache_root({}) == tmp_path / ".cache" / "bpf-kernel-matrix"


def test_resolve_cache_root_prefers_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BPF_MATRIX_CACHE", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    assert resolve_cache_root(explicit="opt") == tmp_path / "opt"  # --cache-dir-kernels, made absolute
    assert resolve_cache_root({}, explicit=tmp_path / "opt") == tmp_path / "opt"
    assert resolve_cache_root(explicit=None) == tmp_path / "env"
    assert resolve_cache_root(explicit="") == tmp_path / "env"


@pytest.mark.parametrize("value", ["../../etc", "..", ".", "/etc/passwd", "a/../../b", ".hidden", "x\0y"])
def test_safe_name_is_one_plain_component(value: str) -> None:
    name = safe_name(value)
    assert "/" not in name and "\0" not in name
    assert name not in ("", ".", "..")
    assert not name.startswith(".")


def test_safe_name_keeps_plain_names_and_separates_changed_ones() -> None:
    assert safe_name("linux-image-6.1.0-27-amd64-unsigned_6.1.115-1") == (
        "linux-image-6.1.0-27-amd64-unsigned_6.1.115-1"
    )
    assert safe_name("a/b") != safe_name("a_b")
    with pytest.raises(ConfigError):
        safe_name("")


@pytest.mark.parametrize("parts", [("../x",), ("kernels", "../../.."), ("..", ".."), ("/abs", "..")])
def test_entry_path_never_escapes_root(tmp_path: Path, parts: tuple[str, ...]) -> None:
    root = tmp_path / "cache"
    path = entry_path(root, *parts)
    assert path.resolve().is_relative_to(root.resolve())
    assert path.resolve() != root.resolve()
    assert len(path.relative_to(root).parts) == len(parts)


def test_entry_path_rejects_symlink_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / "kernels").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="escapes the cache root"):
        entry_path(root, "kernels", "x")


def _builder(calls: list[str], content: bytes = b"image") -> Callable[[Path], Manifest]:
    def build(tmp: Path) -> Manifest:
        calls.append(tmp.name)
        (tmp / "boot").mkdir()
        (tmp / "boot" / "vmlinuz").write_bytes(content)
        (tmp / "facts").mkdir()
        return Manifest("src-digest", digest_files(tmp, ["boot/vmlinuz"]), {"release": "6.1"})

    return build


def test_ensure_entry_builds_once_and_reuses(tmp_path: Path) -> None:
    calls: list[str] = []
    entry = entry_path(tmp_path, "kernels", "k")
    build = _builder(calls)
    first = ensure_entry(entry, build, "src-digest")
    second = ensure_entry(entry, build, "src-digest")
    assert len(calls) == 1
    assert first == second
    assert first.meta["release"] == "6.1"
    assert (entry / "boot" / "vmlinuz").read_bytes() == b"image"
    assert check_entry(entry, "src-digest").ok
    # Only the entry and its lock are left beside it: the temp dir was renamed into place.
    assert sorted(p.name for p in entry.parent.iterdir()) == ["k", "k.lock"]


@pytest.mark.parametrize("damage", ["change", "delete", "manifest", "source"])
def test_corrupted_entry_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    calls: list[str] = []
    entry = entry_path(tmp_path, "kernels", "k")
    ensure_entry(entry, _builder(calls), "src-digest")
    image = entry / "boot" / "vmlinuz"
    expected_digest = "src-digest"
    if damage == "change":
        image.write_bytes(b"imagE")
    elif damage == "delete":
        image.unlink()
    elif damage == "manifest":
        (entry / "manifest.json").write_text("{not json")
    else:
        expected_digest = "other-digest"
    status = check_entry(entry, expected_digest)
    assert not status.ok
    assert status.problems

    def rebuild(tmp: Path) -> Manifest:
        m = _builder(calls)(tmp)
        return Manifest(expected_digest, m.files, m.meta)

    ensure_entry(entry, rebuild, expected_digest)
    assert len(calls) == 2
    assert image.read_bytes() == b"image"
    assert check_entry(entry, expected_digest).ok


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    entry = entry_path(tmp_path, "kernels", "k")

    def build(tmp: Path) -> Manifest:
        (tmp / "partial").write_bytes(b"x")
        raise FetchError("mirror down")

    with pytest.raises(FetchError, match="mirror down"):
        ensure_entry(entry, build, "d")
    assert sorted(p.name for p in entry.parent.iterdir()) == ["k.lock"]


def test_build_whose_manifest_lies_is_rejected(tmp_path: Path) -> None:
    entry = entry_path(tmp_path, "kernels", "k")

    def build(tmp: Path) -> Manifest:
        (tmp / "f").write_bytes(b"x")
        return Manifest("d", {"f": "0" * 64})

    with pytest.raises(FetchError, match="fresh build fails its check"):
        ensure_entry(entry, build, "d")
    assert not entry.exists()


def test_stale_temp_dirs_are_cleared(tmp_path: Path) -> None:
    entry = entry_path(tmp_path, "kernels", "k")
    stale = entry.parent / ".k.tmp-dead"
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    ensure_entry(entry, _builder([]), "src-digest")
    assert not stale.exists()


def _worker(entry: str, log: str, start: float) -> None:
    while time.time() < start:
        pass

    def build(tmp: Path) -> Manifest:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        # Long enough that the other workers arrive while this one builds.
        (tmp / "f").write_bytes(os.urandom(1 << 20))
        deadline = time.time() + 0.5
        while time.time() < deadline:
            pass
        return Manifest("d", digest_files(tmp, ["f"]))

    ensure_entry(Path(entry), build, "d")


def test_concurrent_workers_build_once(tmp_path: Path) -> None:
    entry = entry_path(tmp_path, "kernels", "shared")
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3
    procs = [ctx.Process(target=_worker, args=(str(entry), str(log), start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert check_entry(entry, "d").ok
