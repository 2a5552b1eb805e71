"""Tests of harness.run.coordination: boot locks and outcome markers shared by the run's processes."""

from __future__ import annotations

import threading
from pathlib import Path

from harness.run.coordination import BootMarkers


def test_no_outcome_before_a_boot(tmp_path: Path) -> None:
    markers = BootMarkers(tmp_path)
    assert markers.read("6.1-x86_64") is None
    assert markers.wait("6.1-x86_64", 0) is None


def test_a_waiter_times_out_while_the_boot_holds_the_lock(tmp_path: Path) -> None:
    markers = BootMarkers(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def boot() -> None:
        with markers.booting("k"):
            holding.set()
            release.wait(30)
            markers.record("k", "ok")

    booter = threading.Thread(target=boot)
    booter.start()
    try:
        assert holding.wait(30)
        assert markers.wait("k", 0.2) is None
    finally:
        release.set()
        booter.join(30)
    assert markers.wait("k", 0) == "ok"


def test_a_waiter_gets_the_outcome_the_boot_records_before_it_releases_the_lock(tmp_path: Path) -> None:
    markers = BootMarkers(tmp_path)
    holding, release = threading.Event(), threading.Event()
    got: list[str | None] = []

    def boot() -> None:
        with markers.booting("k"):
            holding.set()
            release.wait(30)
            markers.record("k", "guest did not finish")

    booter = threading.Thread(target=boot)
    booter.start()
    assert holding.wait(30)
    waiter = threading.Thread(target=lambda: got.append(markers.wait("k", 30)))
    waiter.start()
    release.set()
    waiter.join(30)
    booter.join(30)
    assert got == ["guest did not finish"]


def test_a_boots_results_reach_the_other_processes_through_the_run_directory(tmp_path: Path) -> None:
    from harness.report.results import CellResult, Check, KernelRun, Outcome, Probe
    from harness.run.boot import GuestOutcome

    probe = Probe("o", "p", "kprobe/f", "kprobe", "f")
    fire = CellResult(probe, "6.1", "x86_64", Check.FIRE, Outcome.PASS, "ran 3 times", {"run_cnt": 3})
    kernel = KernelRun("6.1", "x86_64", version="6.1.0", booted=True)
    outcome = GuestOutcome(kernel, {(probe, Check.FIRE): fire})
    markers = BootMarkers(tmp_path)
    assert markers.read_outcome("6.1-x86_64") is None
    markers.store_outcome("6.1-x86_64", outcome.serialize())
    read = markers.read_outcome("6.1-x86_64")
    assert read is not None and GuestOutcome.deserialize(read) == outcome
    markers.outcome_file("6.1-x86_64").write_text("{not json")
    assert markers.read_outcome("6.1-x86_64") is None
