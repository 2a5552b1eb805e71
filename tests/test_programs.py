"""Tests of harness.run.programs: the probes a run checks."""

from __future__ import annotations

from pathlib import Path

from harness.programs.inventory import BPFObject
from harness.report.results import Probe
from harness.run.programs import ArchObjects, with_loader_targets

PLACEHOLDER = Probe("tool", "file_open", "fentry/dummy_file_open", "fentry", "dummy_file_open")
OTHER = Probe("tool", "exit", "tp_btf/sched_process_exit", "tp_btf", "sched_process_exit")
UNTOUCHED = Probe("plain", "file_open", "fentry/dummy_file_open", "fentry", "dummy_file_open")


def test_the_loaders_attach_target_becomes_the_probes_target() -> None:
    built = ArchObjects("x86_64", (
        BPFObject(Path("tool.bpf.o"), "tool", (PLACEHOLDER, OTHER)),
        BPFObject(Path("plain.bpf.o"), "plain", (UNTOUCHED,)),
    ), {})
    targets = {"tool": {"file_open": "vfs_open"}}
    retargeted = with_loader_targets(built, lambda name: targets.get(name, {}))
    probes = retargeted.probes()
    assert [(p.object, p.program, p.target) for p in probes] == [
        ("tool", "file_open", "vfs_open"), ("tool", "exit", "sched_process_exit"),
        ("plain", "file_open", "dummy_file_open"),
    ]
    # The section still says what the object holds.
    assert probes[0].section == "fentry/dummy_file_open"
