"""Tests of harness.run.share: what the plan a guest gets says of each object."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tools import require

from harness.programs.inventory import load_object
from harness.programs.sidecar import Sidecar, load_sidecar
from harness.run.share import prepare_share
from harness.vm.guest import protocol

ROOT = Path(__file__).resolve().parent.parent
PROGS = ROOT / "bpf_progs"


@pytest.fixture(scope="module")
def loader_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bpf_progs/loader_sets.bpf.c compiled against the host's BTF."""
    require("clang", "bpftool", why="builds the loader_sets sample")
    from harness.kernels.config import ARCHES
    from harness.programs.build import build_source, find_sources, generate_vmlinux_h

    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("no kernel BTF on this host to build the sample against")
    tmp = tmp_path_factory.mktemp("build")
    source = next(s for s in find_sources(PROGS) if s.name == "loader_sets")
    vmlinux_h = generate_vmlinux_h(Path("/sys/kernel/btf/vmlinux"), tmp)
    built = build_source(source, ARCHES["x86_64"], vmlinux_h, tmp)
    assert built.object is not None, built.error
    return built.object


def test_the_plan_carries_what_the_sidecar_says_the_loader_sets(tmp_path: Path, loader_sets: Path) -> None:
    obj = load_object(loader_sets)
    share = tmp_path / "share"
    share.mkdir()
    prepare_share(share, [obj], False, lambda name: load_sidecar(PROGS, name), PROGS, {})
    entry = protocol.read_plan(share)["objects"][0]
    loader = entry["loader"]
    assert loader["attach_targets"] == {"file_open": "vfs_open"}
    assert loader["maps"] == {
        "stackmap": {"max_entries": 256, "value_size": 1016}, "counts": {"value_size": 8},
    }
    assert loader["autoload_off"] == ["never_loaded"]
    [switch] = loader["data"]
    got = (switch["section"], switch["variable"], switch["size"], switch["hex"])
    assert got == (".rodata", "with_stacks", 1, "01")
    assert (share / entry["path"]).read_bytes() == loader_sets.read_bytes()


def test_an_object_without_loader_settings_has_no_loader_entry(tmp_path: Path, loader_sets: Path) -> None:
    copy = tmp_path / "plain.bpf.o"
    shutil.copy2(loader_sets, copy)
    share = tmp_path / "share"
    share.mkdir()
    prepare_share(share, [load_object(copy)], False, lambda name: Sidecar(), PROGS, {})
    assert "loader" not in protocol.read_plan(share)["objects"][0]



def test_an_object_that_observes_bpf_or_asks_is_planned_alone(tmp_path: Path, loader_sets: Path) -> None:
    from dataclasses import replace

    obj = load_object(loader_sets)
    share = tmp_path / "share"
    share.mkdir()
    prepare_share(share, [obj], False, lambda name: Sidecar(), PROGS, {})
    assert "isolate" not in protocol.read_plan(share)["objects"][0]  # its probes are on vfs_open etc.

    asks = tmp_path / "asks"
    asks.mkdir()
    prepare_share(asks, [obj], False, lambda name: Sidecar(isolate=True), PROGS, {})
    assert protocol.read_plan(asks)["objects"][0]["isolate"] == "its sidecar asks for isolation"

    probe = replace(obj.probes[0], kind="fentry", target="htab_map_delete_elem")
    observer = replace(obj, probes=(probe, *obj.probes[1:]))
    seen = tmp_path / "seen"
    seen.mkdir()
    prepare_share(seen, [observer], False, lambda name: Sidecar(), PROGS, {})
    why = protocol.read_plan(seen)["objects"][0]["isolate"]
    assert why == f"{probe.program} observes the BPF machinery (fentry htab_map_delete_elem)"
