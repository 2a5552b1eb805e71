"""Boots shared between the processes of one run (pytest-xdist workers) through the run directory.

The process that boots a (kernel, arch) holds that key's file lock from the boot until its outcome
marker is written; a process that needs the facts of that boot takes the same lock, so it blocks for
exactly as long as the boot lasts, and then reads the marker. Workers on another host (pytest-xdist
``--tx ssh=...``) cannot see the run directory: they get a private one and boot for their own facts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.files import atomic_write
from harness.kernels.config import KernelSpec
from harness.vm.runner import Accelerator, scaled_timeout

# How long a waiter sleeps when the lock was free and there was no outcome yet: the boot it waits
# for is queued behind another (kernel, arch) group on its worker and has not taken the lock.
UNCLAIMED_WAIT = 0.5
WORKER_PREFIX = "worker-"  # a run directory's file per pytest-xdist worker, named by its pid


class BootMarkers:
    """The outcome marker and boot lock of each (kernel, arch) key in a run directory."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir

    def marker(self, key: str) -> Path:
        return self.work_dir / f"{key}.booted"

    def lock(self, key: str) -> FileLock:
        return FileLock(self.work_dir / f"{key}.booted.lock")

    def read(self, key: str) -> str | None:
        """The outcome of ``key``'s boot ("ok" or its error), None while no process has finished it."""
        try:
            return self.marker(key).read_text().strip()
        except OSError:
            return None

    @contextmanager
    def booting(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock while the caller boots it and records the outcome."""
        with self.lock(key):
            yield

    def record(self, key: str, outcome: str) -> None:
        self.marker(key).write_text(outcome)

    def outcome_file(self, key: str) -> Path:
        return self.work_dir / f"{key}.outcome.json"

    def store_outcome(self, key: str, document: Mapping[str, Any]) -> None:
        """Leave the in-guest results of ``key``'s boot for the run's other processes (before its
        marker: a process that saw the marker finds them)."""
        atomic_write(self.outcome_file(key), json.dumps(document))

    def read_outcome(self, key: str) -> dict[str, Any] | None:
        """The in-guest results ``key``'s boot left, None when there are none (or they are unreadable)."""
        try:
            data = json.loads(self.outcome_file(key).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def wait(self, key: str, timeout: float) -> str | None:
        """The outcome of ``key``'s boot by another process, waiting up to ``timeout`` seconds for it.

        None when no process finished that boot in time.
        """
        deadline = time.monotonic() + timeout
        lock = self.lock(key)
        while True:
            remaining = deadline - time.monotonic()
            try:
                with lock.acquire(timeout=max(0.0, remaining)):
                    found = self.read(key)
            except Timeout:
                return self.read(key)
            if found is not None or remaining <= 0:
                return found
            time.sleep(min(UNCLAIMED_WAIT, max(0.0, deadline - time.monotonic())))


def boot_wait(
    specs: Sequence[KernelSpec], accelerator: Accelerator, retries: int, planned: Collection[str]
) -> float:
    """How long to wait for another process's boot: pytest-xdist hands the offline group out after
    every (kernel, arch) group, so that boot has started or is queued ahead of it on another worker;
    this covers a whole boot with its retries for every kernel."""
    per_boot = max(scaled_timeout(s.timeout, s.arch, accelerator) for s in specs)
    return per_boot * (retries + 1) * max(1, len(planned))


def register_worker(work_dir: Path, pid: int) -> None:
    """Leave ``pid`` in the run directory: the controller signals its workers when it is interrupted."""
    (work_dir / f"{WORKER_PREFIX}{pid}").write_text(f"{pid}\n")


def worker_pids(work_dir: Path) -> list[int]:
    """The pids that registered as workers of the run in ``work_dir``."""
    found = []
    for path in work_dir.glob(f"{WORKER_PREFIX}*"):
        suffix = path.name[len(WORKER_PREFIX):]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)
