"""Tests of files: an atomic write leaves the old content or the new one, and no temp file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harness import files
from harness.files import atomic_file, atomic_write


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, "ünïcode\n")
    assert target.read_bytes() == "ünïcode\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_accepts_a_string_path(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "s.txt"), "x")
    assert (tmp_path / "s.txt").read_text() == "x"


def test_failure_midway_keeps_the_old_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "facts.pickle"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_file(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["facts.pickle"]


def test_failure_midway_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as fh:
        fh.write(b"{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        atomic_write(target, b"cannot replace a non-empty directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]
    assert (target / "inside").read_text() == "kept"


def test_the_new_content_is_not_visible_before_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with atomic_file(target) as fh:
        fh.write(b"new")
        fh.flush()
        assert target.read_text() == "old"
        temps = [p for p in tmp_path.iterdir() if p != target]
        assert len(temps) == 1 and temps[0].name.startswith(".report.html.")
    assert target.read_text() == "new"


def test_mode_follows_the_umask_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "shared", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644


def test_the_content_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    atomic_write(tmp_path / "f", b"data")
    assert events[:2] == ["fsync", "replace"]


def test_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such" / "dir" / "f", b"x")


def test_atomic_directory_appears_whole_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with files.atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and not target.joinpath("new").exists()
        (tmp / "new").write_bytes(b"new")
        assert (target / "old").exists()  # the old one stays until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask


@pytest.mark.parametrize("error", [RuntimeError("compiler crashed"), KeyboardInterrupt()])
def test_atomic_directory_failure_keeps_the_old_one_and_leaves_no_temp(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with pytest.raises(type(error)), files.atomic_directory(target) as tmp:
        (tmp / "half").write_bytes(b"half")
        raise error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    assert sorted(p.name for p in target.iterdir()) == ["old"]


def test_atomic_directory_without_replace_keeps_what_another_built_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with files.atomic_directory(target, replace=False) as tmp:
        (tmp / "mine").write_bytes(b"mine")
        target.mkdir()
        (target / "theirs").write_bytes(b"theirs")
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_remove_stale_temps_clears_killed_builders_temps_only(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    for name in (".entry.tmp-0123", "entry.tmp4242", ".other.tmp-0123", "entry.lock"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "junk").write_bytes(b"x")
    files.remove_stale_temps(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-0123", "entry.lock"]
