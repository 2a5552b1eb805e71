"""Tests of run.facts: facts stored with a manifest, checked when used, collected again when corrupt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_pipeline import ARCH, FACTS, make_run, probes_of

from harness.kernels.config import KernelSpec
from harness.kernels.fetch import KernelBuild
from harness.report.results import Check, Outcome
from harness.run import facts as run_facts
from harness.run.facts import FACTS_MARKER, complete_facts_dir, facts_note, store_facts, vmlinux_btf
from harness.vm.guest.protocol import FEATURES_ERROR_FILE, FEATURES_FILE

CORRUPT_BTF = "facts in the cache were corrupt (vmlinux.btf: sha256 mismatch): collected again"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: no facts directory checked yet."""
    monkeypatch.setattr(run_facts, "_checked", {})


def _build(tmp_path: Path) -> KernelBuild:
    entry = tmp_path / "kernels" / "k"
    (entry / "facts").mkdir(parents=True)  # as the fetch leaves it
    spec = KernelSpec(id="6.1", arch=ARCH, source="debian", suite="bookworm")
    return KernelBuild(
        spec=spec, image=entry / "vmlinuz", modules=None, release="6.1.0-1-amd64", digest="0" * 64,
        source="test", config=None, verified="", entry=entry, facts_dir=entry / "facts",
    )


def _stored(tmp_path: Path) -> KernelBuild:
    build = _build(tmp_path)
    guest = tmp_path / "share" / "facts"
    shutil.copytree(FACTS, guest)
    store_facts(guest, build.facts_dir, None)
    return build


def _flip_one_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _leftovers(build: KernelBuild) -> list[str]:
    return sorted(p.name for p in build.entry.iterdir() if "tmp" in p.name)


def test_stored_facts_have_a_manifest_of_every_file_and_pass(tmp_path: Path) -> None:
    build = _stored(tmp_path)
    facts = build.facts_dir
    manifest = json.loads((facts / "manifest.json").read_text())
    btf_bytes = (FACTS / "vmlinux.btf").read_bytes()
    assert manifest["meta"]["sizes"]["vmlinux.btf"] == len(btf_bytes)
    assert set(manifest["files"]) == {p.name for p in FACTS.iterdir()} | {FACTS_MARKER}
    assert complete_facts_dir(build) == facts
    # The derived caches written beside the facts later are not theirs: they do not spoil them.
    (facts / "derived").mkdir()
    (facts / "derived" / "kallsyms.pickle").write_bytes(b"x")
    assert complete_facts_dir(build) == facts
    assert facts_note(build) == ""
    assert _leftovers(build) == []


def test_one_byte_changed_in_vmlinux_btf_is_detected_and_removed(tmp_path: Path) -> None:
    build = _stored(tmp_path)
    _flip_one_byte(build.facts_dir / "vmlinux.btf")
    assert complete_facts_dir(build) is None
    # The corrupt facts are gone (the next boot collects them), and why is kept for its notes.
    assert build.facts_dir.is_dir() and not any(build.facts_dir.iterdir())
    assert complete_facts_dir(build) is None
    store_facts(FACTS, build.facts_dir, None)
    assert complete_facts_dir(build) == build.facts_dir
    assert facts_note(build) == CORRUPT_BTF
    assert (build.facts_dir / "vmlinux.btf").read_bytes() == (FACTS / "vmlinux.btf").read_bytes()
    assert _leftovers(build) == [] and not (build.entry / "facts.recollect").exists()


def test_truncated_file_is_detected_by_its_size_in_a_process_that_checked_it_before(tmp_path: Path) -> None:
    build = _stored(tmp_path)
    assert complete_facts_dir(build) == build.facts_dir  # every sha256 read: later uses stat only
    btf = build.facts_dir / "vmlinux.btf"
    size = btf.stat().st_size
    with btf.open("r+b") as fh:
        fh.truncate(size // 2)
    assert complete_facts_dir(build) is None
    store_facts(FACTS, build.facts_dir, None)
    assert facts_note(build) == (
        f"facts in the cache were corrupt (vmlinux.btf: truncated to {size // 2} bytes, manifest {size}):"
        " collected again"
    )


def test_missing_file_is_detected(tmp_path: Path) -> None:
    build = _stored(tmp_path)
    (build.facts_dir / "kallsyms").unlink()
    assert complete_facts_dir(build) is None
    store_facts(FACTS, build.facts_dir, None)
    assert facts_note(build) == "facts in the cache were corrupt (kallsyms: missing): collected again"


def test_facts_stored_without_a_manifest_are_collected_again(tmp_path: Path) -> None:
    # What earlier versions stored: the files and the marker, nothing that says which bytes.
    build = _build(tmp_path)
    shutil.copytree(FACTS, build.facts_dir, dirs_exist_ok=True)
    (build.facts_dir / FACTS_MARKER).write_text("ok\n")
    assert complete_facts_dir(build) is None
    store_facts(FACTS, build.facts_dir, None)
    assert complete_facts_dir(build) == build.facts_dir
    assert facts_note(build) == (
        "facts in the cache had no manifest (stored before facts were verified): collected again"
    )


def test_interrupted_store_keeps_the_old_facts_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _stored(tmp_path)
    before = {p.name: p.read_bytes() for p in build.facts_dir.iterdir()}

    def interrupted(entry: Path, manifest: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_facts, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store_facts(FACTS, build.facts_dir, None)
    assert {p.name: p.read_bytes() for p in build.facts_dir.iterdir()} == before
    assert _leftovers(build) == []
    assert complete_facts_dir(build) == build.facts_dir


def test_a_run_collects_corrupt_facts_again_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_run(tmp_path)
    spec = first.spec("6.1")
    first.run.guest_result(spec, probes_of(first)[0], Check.LOAD)
    facts = first.run.facts_dir(spec)
    assert facts is not None
    _flip_one_byte(facts / "vmlinux.btf")
    monkeypatch.setattr(run_facts, "_checked", {})  # the next run is another process
    second = make_run(tmp_path, cache=first.cache, progs=first.run.progs_dir)
    res = second.run.guest_result(second.spec("6.1"), probes_of(second)[0], Check.LOAD)
    assert res.outcome is Outcome.PASS
    (boot,) = second.runner.boots
    assert boot.plan["facts"] is True
    assert CORRUPT_BTF in second.run.kernel_run(second.spec("6.1")).notes
    assert (facts / "vmlinux.btf").read_bytes() == (FACTS / "vmlinux.btf").read_bytes()
    # Sound again: the run after that boots for the objects only and has nothing to say of facts.
    monkeypatch.setattr(run_facts, "_checked", {})
    third = make_run(tmp_path, cache=first.cache, progs=first.run.progs_dir)
    third.run.guest_result(third.spec("6.1"), probes_of(third)[0], Check.LOAD)
    (boot,) = third.runner.boots
    assert boot.plan["facts"] is False
    assert not any("facts in the cache" in n for n in third.run.kernel_run(third.spec("6.1")).notes)


def test_vmlinux_btf_of_corrupt_facts_comes_from_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.kernels.image

    build = _stored(tmp_path)
    assert vmlinux_btf(build) == build.facts_dir / "vmlinux.btf"
    _flip_one_byte(build.facts_dir / "vmlinux.btf")
    monkeypatch.setattr(run_facts, "_checked", {})
    monkeypatch.setattr(harness.kernels.image, "extract_btf", lambda image: b"the image's BTF")
    assert vmlinux_btf(build) == build.entry / "vmlinux.btf"  # never the corrupt file bpftool chokes on
    assert (build.entry / "vmlinux.btf").read_bytes() == b"the image's BTF"


def test_sound_facts_stored_before_feature_probes_are_collected_again_in_place(tmp_path: Path) -> None:
    # What earlier versions stored: a sound entry, manifest and all, without the feature probe.
    build = _build(tmp_path)
    guest = tmp_path / "share" / "facts"
    shutil.copytree(FACTS, guest)
    (guest / FEATURES_FILE).unlink()
    store_facts(guest, build.facts_dir, None)
    assert complete_facts_dir(build) is None
    assert (build.facts_dir / "kallsyms").exists()  # left in place: other checkouts may read it
    store_facts(FACTS, build.facts_dir, None)
    assert complete_facts_dir(build) == build.facts_dir
    assert (build.facts_dir / FEATURES_FILE).exists()
    assert facts_note(build) == (
        "facts in the cache had no feature probe (stored before it was collected): collected again"
    )


def test_facts_whose_probe_failed_are_complete(tmp_path: Path) -> None:
    build = _build(tmp_path)
    guest = tmp_path / "share" / "facts"
    shutil.copytree(FACTS, guest)
    (guest / FEATURES_FILE).unlink()
    (guest / FEATURES_ERROR_FILE).write_text("bpftool not found in the guest\n")
    store_facts(guest, build.facts_dir, None)
    assert complete_facts_dir(build) == build.facts_dir  # "could not tell" is an answer: no reboot
