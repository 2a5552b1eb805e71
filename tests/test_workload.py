"""Tests of the guest's default workload on the host: every part runs and leaves nothing behind, and
block I/O touches only the disk the host gave."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from harness.vm.guest import workload

SCRATCH = 1 << 20


def test_every_part_runs_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disks: list[int] = []
    monkeypatch.setattr(workload, "block_io", lambda size: disks.append(size))  # the host's disks stay out
    before = set(os.listdir("/proc/self/task"))
    failed = workload.run_default(SCRATCH, str(tmp_path))
    # Only what a host may lack: an IPv6 loopback is passed over inside the network part, and a
    # mount needs root.
    assert set(failed) <= {"mounts"}, failed
    assert disks == [SCRATCH]
    assert list(tmp_path.iterdir()) == []
    assert set(os.listdir("/proc/self/task")) == before  # its threads are gone
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # and its children reaped


def test_a_failing_part_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def broken(tmp: str) -> None:
        raise OSError(28, "No space left on device")

    parts = (("files", broken), ("scheduling", lambda tmp: ran.append("scheduling")))
    monkeypatch.setattr(workload, "PARTS", parts)
    monkeypatch.setattr(workload, "block_io", lambda size: ran.append("block_io"))
    failed = workload.run_default(SCRATCH, str(tmp_path))
    assert failed == {"files": "OSError: [Errno 28] No space left on device"}
    assert ran == ["scheduling", "block_io"]


def fake_disk(tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    disk = tmp_path / "vda"
    disk.write_bytes(b"\0" * SCRATCH)
    monkeypatch.setattr(workload, "disk_bytes", lambda dev: size if dev == str(disk) else None)
    return disk


def test_block_io_writes_to_the_scratch_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = fake_disk(tmp_path, SCRATCH, monkeypatch)
    workload.block_io(SCRATCH, (str(disk),))
    data = disk.read_bytes()
    assert len(data) == SCRATCH
    start = 2 * workload.DISK_BLOCKS * workload.BLOCK  # the buffered writes (O_DIRECT may be refused here)
    assert data[start:start + 2 * workload.BLOCK] == b"y" * 2 * workload.BLOCK


def test_block_io_leaves_a_disk_of_another_size_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = fake_disk(tmp_path, SCRATCH * 2, monkeypatch)
    workload.block_io(SCRATCH, (str(disk),))
    assert disk.read_bytes() == b"\0" * SCRATCH


def test_workload_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(workload.__file__).read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules - set(sys.stdlib_module_names) - {"__future__"} == set()
