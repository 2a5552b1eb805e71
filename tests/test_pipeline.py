"""Tests of harness.run without a VM: a fake runner plays the guest agent, a fake fetch the kernels."""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tools import needs

from harness.errors import FetchError, HarnessError, LostVMError, VMError
from harness.kernels.config import ARCHES, GuestSpec, KernelsConfig, KernelSpec, host_arch, parse_kernels_yaml
from harness.kernels.fetch import KernelBuild
from harness.kernels.version import version_key
from harness.programs.build import LIBBPF_INCLUDE
from harness.programs.inventory import load_object
from harness.report.results import Check, Outcome, Probe
from harness.run.boot import DEFAULT_LSM, GUEST_CHECKS, SCRATCH_DISK_BYTES, lsm_append, reported_seconds
from harness.run.coordinator import MatrixRun
from harness.run.facts import FACTS_MARKER
from harness.run.offline import OFFLINE_CHECKS
from harness.run.programs import BUILD_PROGRAM
from harness.vm.guest import protocol
from harness.vm.runner import Accelerator, VMRequest, VMResult

FACTS = Path(__file__).resolve().parent / "data" / "facts" / "6.1-x86_64"
KVM = Accelerator("kvm", "test")
ARCH = host_arch()

SAMPLE = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";
__u64 hits = 0;

SEC("kprobe/do_nanosleep")
int kp_sleep(void *ctx)
{
\t__sync_fetch_and_add(&hits, 1);
\treturn 0;
}

SEC("tp/syscalls/sys_enter_openat")
int tp_openat(void *ctx)
{
\t__sync_fetch_and_add(&hits, 1);
\treturn 0;
}
"""

BROKEN = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("kprobe/do_nanosleep")
int nope(void *ctx)
{
\treturn missing_symbol + 1;
}
"""

TINY_VMLINUX_H = """\
#ifndef __VMLINUX_H__
#define __VMLINUX_H__
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
#endif
"""

PACKAGE_CONFIG = 'CONFIG_BPF=y\nCONFIG_LSM="landlock,lockdown,yama,integrity,apparmor"\n'

pytestmark = needs(
    "clang", str(LIBBPF_INCLUDE / "bpf" / "bpf_helpers.h"), why="they build the sample programs"
)


# ---------------------------------------------------------------- fakes


@dataclass
class Boot:
    """What the fake guest saw of one boot, taken while the share still existed."""

    key: str
    plan: protocol.Plan
    files: list[str]
    disks: list[int]
    append: list[str]
    timeout: float
    command: list[str]
    root: Path | None = None


def fired(run_cnt: int, trigger: protocol.Trigger = "default") -> protocol.ProgramRecord:
    """A program's record when it loaded, attached and ran ``run_cnt`` times."""
    return protocol.ProgramRecord(
        load=protocol.LoadRecord(ok=True, seconds=0.01),
        attach=protocol.AttachRecord(ok=True, log=""),
        fire=protocol.FireRecord(run_cnt=run_cnt, run_time_ns=100, recursion_misses=0, trigger=trigger),
    )


def done_record(ok: bool = True, **optional: Any) -> protocol.DoneRecord:
    """A completion record with the required keys of the protocol, plus ``optional`` ones."""
    done = protocol.DoneRecord(ok=ok, release="6.1.0-27-amd64", machine=ARCH.uname, uptime_start=1.5)
    done.update(optional)  # type: ignore[typeddict-item]
    return done


def act_ok(req: VMRequest, plan: protocol.Plan) -> VMResult:
    """What the guest agent writes on a good boot: facts when asked, a record per object, done.json."""
    share = req.share
    if plan["facts"]:
        shutil.copytree(FACTS, share / protocol.FACTS_DIR)
        # A Debian kernel has no /proc/config.gz: the host adds the package's config.
        (share / protocol.FACTS_DIR / protocol.CONFIG_FILE).unlink()
    records = []
    for entry in plan["objects"]:
        obj = load_object(share / entry["path"])
        programs = {p.program: fired(4) for p in obj.probes}
        records.append(protocol.ObjectRecord(object=entry["name"], programs=programs, load_log=""))
    protocol.write_objects(share, records)
    done = done_record(lsm="lockdown,capability,bpf", libbpf="1.1.0", stats_enabled=True, seconds=0.25,
                       bpftool="7.1.0", os_release="Debian GNU/Linux 12 (bookworm)")
    protocol.write_done(share, done)
    return VMResult(done, "console", 0.5, 0, req.accelerator)


def act_lost(req: VMRequest, plan: protocol.Plan) -> VMResult:
    raise LostVMError(
        "guest did not finish within 300 s: Kernel panic - not syncing: VFS",
        "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs",
    )


def act_vm_error(req: VMRequest, plan: protocol.Plan) -> VMResult:
    raise VMError("cannot start vng: No such file or directory")


def act_agent_crash(req: VMRequest, plan: protocol.Plan) -> VMResult:
    done = done_record(
        False, error="JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
        traceback="Traceback (most recent call last):\n  File agent.py\njson.decoder.JSONDecodeError",
    )
    protocol.write_done(req.share, done)
    return VMResult(done, "console", 0.5, 0, req.accelerator)


def act_no_loader(req: VMRequest, plan: protocol.Plan) -> VMResult:
    done = done_record(loader_error="libbpf not found in the guest: libbpf.so.1")
    protocol.write_done(req.share, done)
    return VMResult(done, "console", 0.5, 0, req.accelerator)


Act = Callable[[VMRequest, protocol.Plan], VMResult]


@dataclass
class FakeRunner:
    """The Runner Protocol: plays one act per boot (per kernel image; the last act repeats)."""

    acts: dict[str, list[Act]] = field(default_factory=dict)
    boots: list[Boot] = field(default_factory=list)

    def run(self, req: VMRequest) -> VMResult:
        key = req.image.parent.parent.name  # kernels/<key>/boot/vmlinuz
        plan = protocol.read_plan(req.share)
        self.boots.append(
            Boot(
                key=key,
                plan=plan,
                files=sorted(str(p.relative_to(req.share)) for p in req.share.rglob("*")),
                disks=[d.stat().st_size for d in req.disks],
                append=list(req.append),
                timeout=req.timeout,
                command=list(req.command),
                root=req.root,
            )
        )
        acts = self.acts.get(key, [act_ok])
        attempt = sum(1 for b in self.boots if b.key == key) - 1
        return acts[min(attempt, len(acts) - 1)](req, plan)

    def count(self, key: str | None = None) -> int:
        return sum(1 for b in self.boots if key is None or b.key == key)


@dataclass
class FakeFetch:
    """fetch_kernel's signature: a KernelBuild per spec under the cache root, counting calls."""

    root: Path
    fail: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, spec: KernelSpec, cache_root: Path | None = None, mirror: str = "") -> KernelBuild:
        self.calls.append(spec.key)
        if spec.key in self.fail:
            raise FetchError(self.fail[spec.key])
        entry = self.root / "kernels" / spec.key
        (entry / "boot").mkdir(parents=True, exist_ok=True)
        image = entry / "boot" / "vmlinuz"
        image.write_bytes(b"MZ fake kernel")
        config = entry / "boot" / "config"
        config.write_text(PACKAGE_CONFIG)
        return KernelBuild(
            spec=spec, image=image, modules=None, release=f"{spec.id}.0-1-amd64", digest="0" * 64,
            source=f"debian {spec.suite} test", config=config, verified="verified by the test",
            entry=entry, facts_dir=entry / "facts",
        )


def kernels(tmp_path: Path) -> KernelsConfig:
    text = textwrap.dedent(
        f"""
        baseline: "6.1"
        guest: {{root: host}}  # the fake runner boots nothing: no guest root filesystem to build
        defaults:
          arches: [{ARCH.name}]
          timeout: 123
        kernels:
          - {{id: "6.1", suite: bookworm}}
          - {{id: "6.12", suite: trixie}}
        """
    )
    return parse_kernels_yaml(text, tmp_path / "kernels.yaml")


def bpf_progs(tmp_path: Path, *, broken: bool = False) -> Path:
    d = tmp_path / "bpf_progs"
    d.mkdir()
    (d / "vmlinux.h").write_text(TINY_VMLINUX_H)
    (d / "sleepy.bpf.c").write_text(SAMPLE)
    if broken:
        (d / "broken.bpf.c").write_text(BROKEN)
    return d


@dataclass
class Setup:
    run: MatrixRun
    runner: FakeRunner
    fetch: FakeFetch
    cache: Path

    def spec(self, kid: str) -> KernelSpec:
        (found,) = [s for s in self.run.config.kernels if s.id == kid]
        return found


def make_run(
    tmp_path: Path, *, retries: int = 1, broken: bool = False, acts: dict[str, list[Act]] | None = None,
    cache: Path | None = None, progs: Path | None = None,
) -> Setup:
    cache = cache or tmp_path / "cache"
    fetch = FakeFetch(cache)
    runner = FakeRunner(acts=acts or {})
    work = tmp_path / f"work{len(list(tmp_path.glob('work*')))}"
    work.mkdir()
    run = MatrixRun(
        kernels(tmp_path), progs or bpf_progs(tmp_path, broken=broken), runner, KVM,
        cache_root=cache, work_dir=work, retries=retries, fetch=fetch,
    )
    return Setup(run, runner, fetch, cache)


def probes_of(setup: Setup) -> list[Probe]:
    return setup.run.objects(ARCH).probes()


# ---------------------------------------------------------------- pure helpers


def test_lsm_append_adds_bpf_to_the_kernels_list() -> None:
    assert lsm_append(PACKAGE_CONFIG) == "lsm=landlock,lockdown,yama,integrity,apparmor,bpf"


def test_lsm_append_keeps_a_list_that_has_bpf() -> None:
    assert lsm_append('CONFIG_LSM="lockdown,bpf,yama"\n') == "lsm=lockdown,bpf,yama"


@pytest.mark.parametrize("config", [None, "", "CONFIG_BPF=y\n# CONFIG_LSM is not set\n"])
def test_lsm_append_default_list(config: str | None) -> None:
    assert lsm_append(config) == "lsm=" + ",".join(DEFAULT_LSM)
    assert lsm_append(config).endswith(",bpf")


def test_version_key_orders_kernel_ids() -> None:
    ids = ["6.12", "5.10", "7.2-rc1", "6.1", "5.4", "sid", "6.1.115"]
    assert sorted(ids, key=version_key) == ["sid", "5.4", "5.10", "6.1", "6.1.115", "6.12", "7.2-rc1"]
    assert version_key("5.10") > version_key("5.9")
    assert version_key("6.12") > version_key("6.2")


# ---------------------------------------------------------------- one boot per (kernel, arch)


def test_one_boot_per_kernel_however_many_results(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    probes = probes_of(s)
    assert [p.program for p in probes] == ["kp_sleep", "tp_openat"]
    for _ in range(3):
        for spec in s.run.config.kernels:
            for probe in probes:
                for check in GUEST_CHECKS:
                    res = s.run.guest_result(spec, probe, check)
                    assert (res.kernel, res.arch, res.check, res.probe) == (spec.id, ARCH.name, check, probe)
                    expected = Outcome.SKIP if check is Check.CORE else Outcome.PASS
                    assert res.outcome is expected, res.reason
    assert s.runner.count() == 2
    assert sorted(b.key for b in s.runner.boots) == ["6.1-" + ARCH.name, "6.12-" + ARCH.name]
    # Each kernel is fetched once per process, however often it is asked for.
    assert sorted(set(s.fetch.calls)) == sorted(s.fetch.calls)
    fire = s.run.guest_result(s.spec("6.1"), probes[0], Check.FIRE)
    assert fire.reason == "ran 4 times, recursion_misses 0"


def test_facts_and_offline_results_need_no_second_boot(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    for spec in s.run.config.kernels:
        s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    assert s.runner.count() == 2
    for spec in s.run.config.kernels:
        facts = s.run.facts(spec)
        assert facts is s.run.facts(spec)
        for probe in probes_of(s):
            for check in OFFLINE_CHECKS:
                res = s.run.offline_result(spec, probe, check)
                assert (res.kernel, res.check, res.probe) == (spec.id, check, probe)
                assert res.outcome is not Outcome.ERROR, res.reason
    assert s.runner.count() == 2


def test_offline_first_boots_for_facts_only_then_objects(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    spec = s.spec("6.1")
    s.run.facts(spec)
    (first,) = s.runner.boots
    assert first.plan["facts"] is True and first.plan["objects"] == []
    # That boot loaded no objects: the in-guest checks are not answered by it ("not applicable"),
    # they boot once more for the objects alone (the facts are cached by now).
    res = s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    assert res.outcome is Outcome.PASS
    assert s.runner.count() == 2
    second = s.runner.boots[1]
    assert second.plan["facts"] is False and [e["name"] for e in second.plan["objects"]] == ["sleepy"]
    s.run.guest_result(spec, probes_of(s)[1], Check.FIRE)
    s.run.facts(spec)
    # (A FIRE that never ran is judged against 6.12 too, which boots once for it: fire by difference.)
    assert s.runner.count("6.1-" + ARCH.name) == 2


def test_every_arch_boots_a_root_built_from_the_guest_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``root: host``, the host's own arch boots a built root filesystem too, one per
    (arch, suite, packages), and the kernel's record names the suite."""
    import harness.kernels.rootfs as rootfs

    built: list[tuple[str, GuestSpec]] = []

    def fake_fetch_rootfs(arch: Any, guest: GuestSpec, cache_root: Path, mirror: str) -> Path:
        built.append((arch.name, guest))
        return tmp_path / f"root-{arch.name}-{guest.suite}"

    monkeypatch.setattr(rootfs, "fetch_rootfs", fake_fetch_rootfs)
    s = make_run(tmp_path)
    s.run.config = parse_kernels_yaml(
        f"guest: {{suite: trixie}}\nkernels:\n  - {{id: '6.1', suite: bookworm, arch: {ARCH.name}}}\n"
        f"  - {{id: '6.12', suite: trixie, arch: {ARCH.name}, guest: {{suite: bookworm}}}}\n",
        tmp_path / "k.yaml",
    )
    for spec in s.run.config.kernels:
        s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    assert [b.root for b in s.runner.boots] == [
        tmp_path / f"root-{ARCH.name}-trixie", tmp_path / f"root-{ARCH.name}-bookworm"
    ]
    assert [g.suite for _, g in built] == ["trixie", "bookworm"]
    assert [s.run.kernel_run(k).guest for k in s.run.config.kernels] == ["debian trixie", "debian bookworm"]
    s.run.guest_result(s.run.config.kernels[0], probes_of(s)[0], Check.FIRE)
    assert len(built) == 2  # built (or found in the cache) once per process


def test_the_host_root_is_refused_for_another_arch(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    other = next(a for a in ARCHES.values() if a != ARCH)
    s.run.config = parse_kernels_yaml(
        f"guest: {{root: host}}\nkernels:\n  - {{id: '6.1', suite: bookworm, arch: {other.name}}}\n",
        tmp_path / "k.yaml",
    )
    spec = s.run.config.kernels[0]
    res = s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    assert res.outcome is Outcome.ERROR
    assert f"guest root 'host' is the host's own {ARCH.name} root" in res.reason
    assert s.runner.count() == 0


def test_failed_facts_boot_is_not_repeated_for_the_objects(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, retries=0, acts={key: [act_lost, act_ok]})
    with pytest.raises(HarnessError, match="guest did not finish"):
        s.run.facts(s.spec("6.1"))
    res = s.run.guest_result(s.spec("6.1"), probes_of(s)[0], Check.LOAD)
    assert res.outcome is Outcome.ERROR and res.reason.startswith("guest did not finish")
    assert s.runner.count() == 1


def test_the_boot_request(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    spec = s.spec("6.1")
    s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    (boot,) = s.runner.boots
    assert boot.command == ["python3", "-S", "/mnt/agent.py", "/mnt"]
    assert boot.append[0] == "lsm=landlock,lockdown,yama,integrity,apparmor,bpf"
    assert boot.disks == [SCRATCH_DISK_BYTES]
    assert boot.timeout == 123.0
    assert "agent.py" in boot.files and "plan.json" in boot.files
    assert "version.py" in boot.files and "scenarios.py" in boot.files  # the agent's sibling modules
    assert "objs/sleepy.bpf.o" in boot.files
    assert boot.plan["facts"] is True
    (entry,) = boot.plan["objects"]
    assert (entry["name"], entry["path"]) == ("sleepy", "objs/sleepy.bpf.o")
    kernel = s.run.kernel_run(spec)
    assert kernel.booted and kernel.version == "6.1.0-27-amd64" and kernel.accelerator == "kvm"
    assert kernel.lsm == "lockdown,capability,bpf"
    assert (kernel.guest, kernel.libbpf, kernel.bpftool) == ("host", "1.1.0", "7.1.0")
    assert "guest userland: Debian GNU/Linux 12 (bookworm)" in kernel.notes
    assert boot.root is None  # guest: {root: host}
    assert kernel.agent_seconds == 0.25
    assert (s.run.work_dir / f"{spec.key}.booted").read_text() == "ok"
    # The boot's own directory (share, scratch disk) is gone once its results are read; what stays is its
    # marker, lock and in-guest results for the run's other processes (the verdicts across kernels).
    marker = f"{spec.key}.booted"
    assert sorted(p.name for p in s.run.work_dir.iterdir()) == [
        marker, f"{marker}.lock", f"{spec.key}.outcome.json",
    ]


def test_keep_guest_files_copies_each_boot_without_its_scratch_disk(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    s.run.keep_dir = tmp_path / "kept"
    s.run.guest_result(s.spec("6.1"), probes_of(s)[0], Check.LOAD)
    (boot,) = (tmp_path / "kept").iterdir()
    assert boot.name.startswith(s.spec("6.1").key + "-")
    share = boot / "share"
    assert json.loads((share / "done.json").read_text())["ok"] is True
    assert (share / "plan.json").exists() and (share / "objects.json").exists()
    assert not (boot / "scratch.img").exists()
    # The run's own directory is cleaned up as before.
    key = s.spec("6.1").key
    assert sorted(p.name for p in s.run.work_dir.iterdir()) == [
        f"{key}.booted", f"{key}.booted.lock", f"{key}.outcome.json",
    ]


@pytest.mark.parametrize("value,expected", [(3.5, 3.5), (2, 2.0), (None, 0.0), ("3", 0.0), (True, 0.0),
                                            (-1, 0.0)])
def test_agent_seconds_reported_by_the_guest_are_checked(value: object, expected: float) -> None:
    assert reported_seconds(value) == expected


def test_facts_stored_in_facts_dir_with_marker(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    spec = s.spec("6.12")
    assert s.run.facts_dir(spec) is None
    s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    facts_dir = s.run.facts_dir(spec)
    assert facts_dir == s.cache / "kernels" / spec.key / "facts"
    assert (facts_dir / FACTS_MARKER).exists()
    assert (facts_dir / "kallsyms").read_bytes() == (FACTS / "kallsyms").read_bytes()
    assert (facts_dir / "vmlinux.btf").read_bytes() == (FACTS / "vmlinux.btf").read_bytes()
    # The guest had no config: the package's is kept with the facts.
    assert (facts_dir / "config").read_text() == PACKAGE_CONFIG
    assert not list(facts_dir.parent.glob("facts.tmp*"))


def test_cached_facts_are_not_collected_again(tmp_path: Path) -> None:
    first = make_run(tmp_path)
    spec = first.spec("6.1")
    first.run.guest_result(spec, probes_of(first)[0], Check.LOAD)
    marker = first.run.facts_dir(spec)
    assert marker is not None
    stamp = (marker / FACTS_MARKER).stat().st_mtime_ns
    # Another process with the same cache: it boots for the objects only.
    second = make_run(tmp_path, cache=first.cache, progs=first.run.progs_dir)
    res = second.run.guest_result(second.spec("6.1"), probes_of(second)[0], Check.LOAD)
    assert res.outcome is Outcome.PASS
    (boot,) = second.runner.boots
    assert boot.plan["facts"] is False
    assert (marker / FACTS_MARKER).stat().st_mtime_ns == stamp
    # Facts alone need no boot at all now.
    third = make_run(tmp_path, cache=first.cache, progs=first.run.progs_dir)
    third.run.facts(third.spec("6.1"))
    assert third.runner.count() == 0


# ---------------------------------------------------------------- failures


def test_lost_vm_retried_then_error_with_console_tail(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, retries=2, acts={key: [act_lost]})
    spec = s.spec("6.1")
    for probe in probes_of(s):
        for check in GUEST_CHECKS:
            res = s.run.guest_result(spec, probe, check)
            assert res.outcome is Outcome.ERROR
            assert res.reason == "guest did not finish within 300 s: Kernel panic - not syncing: VFS"
            tail = "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs"
            assert res.details == {"console_tail": tail}
    assert s.runner.count(key) == 3
    assert s.run.kernel_run(spec).error.startswith("guest did not finish")
    assert not s.run.kernel_run(spec).booted
    assert (s.run.work_dir / f"{key}.booted").read_text().startswith("guest did not finish")
    # No facts were stored, and asking for them does not boot a fourth time.
    assert s.run.facts_dir(spec) is None
    with pytest.raises(HarnessError, match=f"no facts for {key}: guest did not finish"):
        s.run.facts(spec)
    assert s.runner.count(key) == 3
    # The other kernel is not affected.
    ok = s.run.guest_result(s.spec("6.12"), probes_of(s)[0], Check.LOAD)
    assert ok.outcome is Outcome.PASS


def test_lost_vm_once_then_recovered(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, retries=1, acts={key: [act_lost, act_ok]})
    res = s.run.guest_result(s.spec("6.1"), probes_of(s)[0], Check.FIRE)
    assert res.outcome is Outcome.PASS
    assert s.runner.count(key) == 2
    assert "attempt 2" in s.run.kernel_run(s.spec("6.1")).notes
    # Each attempt gets a fresh share: the retry asked for the facts again.
    assert [b.plan["facts"] for b in s.runner.boots] == [True, True]


def test_no_retries_means_one_boot(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, retries=0, acts={key: [act_vm_error, act_ok]})
    res = s.run.guest_result(s.spec("6.1"), probes_of(s)[0], Check.LOAD)
    assert (res.outcome, res.reason) == (Outcome.ERROR, "cannot start vng: No such file or directory")
    assert res.details == {}
    assert s.runner.count(key) == 1


def test_guest_agent_failure_is_error(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, retries=0, acts={key: [act_agent_crash]})
    res = s.run.guest_result(s.spec("6.1"), probes_of(s)[1], Check.ATTACH)
    assert res.outcome is Outcome.ERROR
    assert res.reason == "guest agent failed: JSONDecodeError: Expecting value: line 1 column 1 (char 0)"
    assert res.details["console_tail"].startswith("Traceback")
    assert s.runner.count(key) == 1
    assert s.run.facts_dir(s.spec("6.1")) is None


def test_loader_missing_in_guest_is_error_for_every_guest_check(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, acts={key: [act_no_loader]})
    for probe in probes_of(s):
        for check in GUEST_CHECKS:
            res = s.run.guest_result(s.spec("6.1"), probe, check)
            assert res.outcome is Outcome.ERROR
            assert res.reason == "loader unavailable in the guest: libbpf not found in the guest: libbpf.so.1"
    assert s.runner.count() == 1


def test_kernel_not_available_never_boots(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    key = "6.12-" + ARCH.name
    s.fetch.fail[key] = "trixie: Release signature does not verify"
    res = s.run.guest_result(s.spec("6.12"), probes_of(s)[0], Check.LOAD)
    assert res.outcome is Outcome.ERROR
    assert res.reason == "kernel not available: trixie: Release signature does not verify"
    assert s.runner.count() == 0
    assert s.run.kernel_run(s.spec("6.12")).error == res.reason
    # The fetch error is remembered: not fetched again for the offline checks.
    off = s.run.offline_result(s.spec("6.12"), probes_of(s)[0], Check.SYMBOL)
    assert off.outcome is Outcome.ERROR
    assert s.fetch.calls.count(key) == 1


def test_build_error_rows(tmp_path: Path) -> None:
    s = make_run(tmp_path, broken=True)
    built = s.run.objects(ARCH)
    assert [o.name for o in built.objects] == ["sleepy"]
    assert set(built.errors) == {"broken"}
    msg = built.errors["broken"]
    assert msg.startswith("broken.bpf.c does not compile: ")
    assert "broken.bpf.c:7:" in msg and "missing_symbol" in msg
    assert built.vmlinux_h == str(s.run.progs_dir / "vmlinux.h")
    pseudo = Probe("broken", BUILD_PROGRAM, "", "build", "")
    assert built.probes() == [*built.objects[0].probes, pseudo]
    spec = s.spec("6.1")
    for check in GUEST_CHECKS:
        res = s.run.guest_result(spec, pseudo, check)
        assert (res.outcome, res.reason, res.check) == (Outcome.ERROR, msg, check)
    for check in OFFLINE_CHECKS:
        assert s.run.offline_result(spec, pseudo, check).reason == msg
    # A build error needs no boot; the good object still runs.
    assert s.runner.count() == 0
    assert s.run.guest_result(spec, built.objects[0].probes[0], Check.LOAD).outcome is Outcome.PASS
    (boot,) = s.runner.boots
    assert [e["name"] for e in boot.plan["objects"]] == ["sleepy"]


def test_prebuilt_object_and_unusable_object(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    built_obj = s.run.objects(ARCH).objects[0].path
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(built_obj, other / "pre.bpf.o")
    (other / "junk.bpf.o").write_text("not an object\n")
    s2 = make_run(tmp_path, cache=s.cache, progs=other)
    built = s2.run.objects(ARCH)
    assert [o.name for o in built.objects] == ["pre"]
    assert built.errors["junk"].startswith(f"{other / 'junk.bpf.o'}: not an ELF file")
    # Prebuilt objects need no vmlinux.h, so no kernel was fetched for one.
    assert built.vmlinux_h == "" and s2.fetch.calls == []


# ---------------------------------------------------------------- offline checks while a VM boots


def act_ok_in_thread(seen: list[str]) -> Act:
    def act(req: VMRequest, plan: dict[str, Any]) -> VMResult:
        seen.append(threading.current_thread().name)
        return act_ok(req, plan)

    return act


def test_offline_checks_are_computed_while_the_vm_runs_when_facts_are_cached(tmp_path: Path) -> None:
    cold = make_run(tmp_path)
    for kid in ("6.1", "6.12"):
        cold.run.facts(cold.spec(kid))  # caches both kernels' facts

    def outcomes(run: MatrixRun, spec: KernelSpec) -> dict[Any, Any]:
        return {k: (r.outcome, r.reason, r.details) for k, r in run.offline(spec).items()}

    reference = {kid: outcomes(cold.run, cold.spec(kid)) for kid in ("6.1", "6.12")}

    seen: list[str] = []
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, cache=cold.cache, progs=cold.run.progs_dir, acts={key: [act_ok_in_thread(seen)]})
    s.run.overlap_offline = True
    res = s.run.guest_result(s.spec("6.1"), probes_of(s)[0], Check.LOAD)
    assert res.outcome is Outcome.PASS
    assert seen and seen[0].startswith("vm")  # the VM ran beside the main thread ...
    assert s.run._offline is not None  # ... which computed the offline checks meanwhile
    assert s.runner.count() == 1  # and booted nothing more for them
    for kid in ("6.1", "6.12"):
        assert outcomes(s.run, s.spec(kid)) == reference[kid]


def test_offline_checks_wait_for_the_boot_when_facts_are_missing(tmp_path: Path) -> None:
    seen: list[str] = []
    key = "6.1-" + ARCH.name
    s = make_run(tmp_path, acts={key: [act_ok_in_thread(seen)]})
    s.run.overlap_offline = True
    s.run.guest_result(s.spec("6.1"), probes_of(s)[0], Check.LOAD)
    # 6.12's facts are not cached: computing now would boot a second VM beside the first.
    assert seen == ["MainThread"] and s.run._offline is None
    assert s.runner.count() == 1


X86_ONLY = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#ifdef __TARGET_ARCH_arm64
#error "this program reads x86 registers only"
#endif
char LICENSE[] SEC("license") = "GPL";
SEC("kprobe/do_nanosleep")
int kp_x86(void *ctx) { return 0; }
"""


def test_an_object_that_does_not_build_for_one_arch_shows_its_probes_there_as_errors(
    tmp_path: Path,
) -> None:
    progs = bpf_progs(tmp_path)
    (progs / "x86only.bpf.c").write_text(X86_ONLY)
    s = make_run(tmp_path, progs=progs)
    s.run.config = parse_kernels_yaml(
        'kernels:\n  - {id: "6.1", suite: bookworm, arches: [x86_64, arm64]}\n', tmp_path / "k.yaml"
    )
    x86, arm = (s.run.config.kernels[0].arch, s.run.config.kernels[1].arch)
    assert "x86only" in s.run.objects(arm).errors and "x86only" not in s.run.objects(x86).errors
    on_arm = [p for p, _ in s.run.arch_probes(arm) if p.object == "x86only"]
    assert [p.program for p in on_arm] == ["kp_x86"]  # the probe of the x86_64 build, not "(build)"
    arm_spec = s.run.config.kernels[1]
    for check in (*GUEST_CHECKS, Check.SYMBOL):
        result_of = s.run.guest_result if check in GUEST_CHECKS else s.run.offline_result
        res = result_of(arm_spec, on_arm[0], check)
        assert res.outcome is Outcome.ERROR, res
        assert res.reason.startswith("x86only.bpf.c does not compile: ")
        assert "x86 registers only" in res.reason
    assert s.runner.count("6.1-arm64") == 0


# ---------------------------------------------------------------- CO-RE relocations that cannot be read


BAD_EXT = "sleepy.bpf.o:.BTF.ext: bad BTF.ext magic 0x0000 (expected 0xeb9f)"


def test_unreadable_core_relocations_are_error_cells_with_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.errors import BTFError
    from harness.run import programs

    def malformed(path: Path) -> dict[str, Any]:
        raise BTFError(f"{path.name}:.BTF.ext: bad BTF.ext magic 0x0000 (expected 0xeb9f)")

    monkeypatch.setattr(programs, "load_object_code", malformed)
    s = make_run(tmp_path)
    built = s.run.objects(ARCH)
    assert built.relocation_errors == {"sleepy": f"CO-RE relocations unreadable: {BAD_EXT}"}
    spec = s.spec("6.1")
    for probe in probes_of(s):
        # The cells exist (tests are generated for them) and say why they cannot be decided.
        assert built.applies(probe, Check.LAYOUT) and built.applies(probe, Check.CORE)
        layout = s.run.offline_result(spec, probe, Check.LAYOUT)
        core = s.run.guest_result(spec, probe, Check.CORE)
        for res in (layout, core):
            assert (res.outcome, res.reason) == (Outcome.ERROR, f"CO-RE relocations unreadable: {BAD_EXT}")
        # The other checks of the object are decided as usual.
        assert s.run.guest_result(spec, probe, Check.LOAD).outcome is Outcome.PASS
        assert s.run.offline_result(spec, probe, Check.SYMBOL).outcome is not Outcome.ERROR


def test_readable_core_relocations_index_only_relocated_programs(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    built = s.run.objects(ARCH)
    assert built.relocation_errors == {} and "sleepy" in built.relocations
    # SAMPLE reads no kernel struct: no program of it has relocations, so no layout or core cell.
    assert built.relocated == frozenset()
    assert not any(built.applies(p, c) for p in probes_of(s) for c in (Check.LAYOUT, Check.CORE))


# ---------------------------------------------------------------- processes sharing a run directory


def test_a_planned_kernel_takes_its_facts_from_the_process_that_booted_it(tmp_path: Path) -> None:
    booter = make_run(tmp_path)
    spec = booter.spec("6.1")
    booter.run.guest_result(spec, probes_of(booter)[0], Check.LOAD)
    other = make_run(tmp_path, cache=booter.cache, progs=booter.run.progs_dir)
    other.run.work_dir = booter.run.work_dir
    other.run.guest_planned = frozenset({spec.key})
    assert other.run.facts(other.spec("6.1")).release == booter.run.facts(spec).release
    assert other.runner.count() == 0


def test_a_planned_kernel_whose_boot_failed_elsewhere_has_that_error(tmp_path: Path) -> None:
    key = "6.1-" + ARCH.name
    booter = make_run(tmp_path, retries=0, acts={key: [act_lost]})
    booter.run.guest_result(booter.spec("6.1"), probes_of(booter)[0], Check.LOAD)
    other = make_run(tmp_path, cache=booter.cache, progs=booter.run.progs_dir)
    other.run.work_dir = booter.run.work_dir
    other.run.guest_planned = frozenset({key})
    with pytest.raises(HarnessError, match=f"no facts for {key}: guest did not finish within 300 s"):
        other.run.facts(other.spec("6.1"))
    assert other.runner.count() == 0


# ---------------------------------------------------------------- the VM request, without a VM


def test_vm_request_is_built_from_the_job_alone(tmp_path: Path) -> None:
    from harness.report.results import KernelRun
    from harness.run.boot import BootJob, vm_request

    spec = kernels(tmp_path).kernels[0]
    where = tmp_path / "boot"
    where.mkdir()
    build = KernelBuild(
        spec=spec, image=where / "vmlinuz", modules=where / "modules", release="6.1.0-27-amd64",
        digest="0" * 64, source="fake", config=None, verified="", entry=where, facts_dir=where / "facts",
    )
    job = BootJob(spec, build, KernelRun(spec.id, ARCH.name), (), (), True, None, KVM, PACKAGE_CONFIG)
    req = vm_request(job, where / "share", where / "scratch.img")
    assert req.command == ["python3", "-S", "/mnt/agent.py", "/mnt"]
    assert req.append[0] == "lsm=landlock,lockdown,yama,integrity,apparmor,bpf"
    assert (req.image, req.modules, req.disks) == (build.image, build.modules, [where / "scratch.img"])
    assert req.root is None and req.accelerator is KVM and req.share == where / "share"
    # Nothing was written: the request is a value.
    assert list(where.iterdir()) == []


# ---------------------------------------------------------------- per-arch prebuilt objects


def test_each_arch_loads_its_own_build_and_an_arch_s_only_object_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from test_build import compile_plain

    import harness.kernels.rootfs as rootfs

    monkeypatch.setattr(rootfs, "fetch_rootfs", lambda arch, guest, cache, mirror: tmp_path / "root")
    progs = tmp_path / "per-arch"
    for sub in ("x86_64", "arm64"):
        (progs / sub).mkdir(parents=True)
    x86 = progs / "x86_64" / "tool.bpf.o"
    arm = progs / "arm64" / "tool.bpf.o"
    shutil.copy(compile_plain(tmp_path, "x", "handle", "__x64_sys_openat"), x86)
    shutil.copy(compile_plain(tmp_path, "a", "handle", "__arm64_sys_openat"), arm)
    shutil.copy(compile_plain(tmp_path, "b", "only_arm"), progs / "arm64" / "armonly.bpf.o")
    s = make_run(tmp_path, progs=progs)
    s.run.config = parse_kernels_yaml(
        'kernels:\n  - {id: "6.1", suite: bookworm, arches: [x86_64, arm64]}\n', tmp_path / "k.yaml"
    )
    x86_spec, arm_spec = s.run.config.kernels
    probes = {(p.object, p.target, spec.arch.name): p for spec in (x86_spec, arm_spec)
              for p, _ in s.run.arch_probes(spec.arch)}
    assert sorted(probes) == [
        ("armonly", "do_nanosleep", "arm64"), ("armonly", "do_nanosleep", "x86_64"),
        ("tool", "__arm64_sys_openat", "arm64"), ("tool", "__x64_sys_openat", "x86_64"),
    ]
    on_arm = s.run.guest_result(arm_spec, probes[("tool", "__arm64_sys_openat", "arm64")], Check.LOAD)
    on_x86 = s.run.guest_result(x86_spec, probes[("tool", "__x64_sys_openat", "x86_64")], Check.LOAD)
    assert on_arm.outcome is on_x86.outcome is Outcome.PASS
    assert on_arm.details["object_sha256"] == hashlib.sha256(arm.read_bytes()).hexdigest()
    assert on_x86.details["object_sha256"] == hashlib.sha256(x86.read_bytes()).hexdigest()
    arm_boot, x86_boot = (next(b for b in s.runner.boots if b.key.endswith(a)) for a in ("arm64", "x86_64"))
    assert sorted(e["name"] for e in arm_boot.plan["objects"]) == ["armonly", "tool"]
    assert sorted(e["name"] for e in x86_boot.plan["objects"]) == ["tool"]
    # The x86_64 kernel does not have the arm64-only object: its cells say so, offline ones too.
    armonly = probes[("armonly", "do_nanosleep", "x86_64")]
    for result_of, check in ((s.run.guest_result, Check.LOAD), (s.run.offline_result, Check.SYMBOL)):
        res = result_of(x86_spec, armonly, check)
        assert res.outcome is Outcome.SKIP
        assert res.reason.startswith("not built for x86_64: the programs directory has armonly for other")


def act_helper_refused(req: VMRequest, plan: protocol.Plan) -> VMResult:
    """A good boot whose verifier refuses a helper call of every program."""
    result = act_ok(req, plan)
    records = protocol.read_objects(req.share)
    log = (
        "-- BEGIN PROG LOAD LOG --\n0: (85) call bpf_get_socket_cookie#46\n"
        "unknown func bpf_get_socket_cookie#46\n-- END PROG LOAD LOG --\n"
    )
    for rec in records:
        for prog in rec["programs"].values():
            prog["load"] = protocol.LoadRecord(ok=False, stage="load", errno=22, log=log)
            prog.pop("attach", None)
            prog.pop("fire", None)
    protocol.write_objects(req.share, records)
    return result


def test_the_features_cell_of_a_booted_kernel_answers_to_its_load(tmp_path: Path) -> None:
    setup = make_run(tmp_path, acts={"6.1-x86_64": [act_helper_refused]})
    spec = setup.spec("6.1")
    probe = next(p for p in probes_of(setup) if p.kind == "kprobe")
    load = setup.run.guest_result(spec, probe, Check.LOAD)
    assert load.outcome is Outcome.FAIL and "unknown func bpf_get_socket_cookie#46" in load.reason
    res = setup.run.offline_result(spec, probe, Check.FEATURES)
    # The probe of the fixture kernel lets kprobes call what the sample calls: the verifier's word wins.
    assert res.outcome is Outcome.FAIL
    assert res.reason == (
        "bpf_get_socket_cookie refused by the verifier on 6.1 (the feature probe did not predict it)"
    )
    assert res.details["predicted"] == "pass"
    # A kernel this process did not boot keeps the prediction.
    other = setup.run.offline_result(setup.spec("6.12"), probe, Check.FEATURES)
    assert other.outcome is Outcome.PASS


# ---------------------------------------------------------------- own loaders


def act_own_loader(req: VMRequest, plan: protocol.Plan) -> VMResult:
    """The agent's records when each object ran its own loader: it loaded and attached kp_sleep only."""
    records: list[protocol.ObjectRecord] = []
    for entry in plan["objects"]:
        assert "own_loader" in entry
        programs: list[protocol.LoadedProgram] = [{
            "id": 40, "name": "kp_sleep", "full_name": "kp_sleep", "type": "kprobe", "run_cnt": 3,
            "attached": [{"via": "perf_event", "type": "kprobe", "target": "do_nanosleep"}],
        }]
        loader: protocol.OwnLoaderRecord = {"command": entry["own_loader"]["command"], "seconds": 1.0,
                                         "ready": "output", "exited": False, "returncode": 0,
                                         "programs": programs, "output": "ready\n", "time_limit": 20.0}
        records.append({"object": entry["name"], "own_loader": loader})
    protocol.write_objects(req.share, records)
    done = done_record(lsm="bpf", libbpf="1.5.0", stats_enabled=True, seconds=0.25)
    protocol.write_done(req.share, done)
    return VMResult(done, "console", 0.5, 0, req.accelerator)


def test_an_own_loader_is_planned_shared_and_judged(tmp_path: Path) -> None:
    progs = bpf_progs(tmp_path)
    bins = tmp_path / "bins" / ARCH.name
    bins.mkdir(parents=True)
    (progs / "sleepy.yaml").write_text(
        "own_loader:\n  command: [my-loader, --fast]\n  binaries: ../bins\n  ready: ready\n"
    )
    s = make_run(tmp_path, progs=progs, acts={"6.1-" + ARCH.name: [act_own_loader]})
    spec = s.spec("6.1")
    cells = {(p.program, c): s.run.guest_result(spec, p, c) for p in probes_of(s) for c in GUEST_CHECKS}
    (boot,) = s.runner.boots
    (entry,) = boot.plan["objects"]
    assert entry["own_loader"] == {"command": ["my-loader", "--fast"], "binaries": "loaders/0",
                               "time_limit": 20.0, "ready": "ready"}
    assert entry["triggers"] == {"kp_sleep": "default", "tp_openat": "default"}  # each program's, all run
    assert "loaders/0" in boot.files  # the mount point of the binaries
    assert boot.timeout == 123.0 + 20.0 + 8.0  # the loader's time limit and its stop on top
    assert cells[("kp_sleep", Check.LOAD)].reason.startswith("loaded by my-loader (kprobe program")
    assert cells[("kp_sleep", Check.ATTACH)].reason == "attached by my-loader: kprobe do_nanosleep"
    assert cells[("kp_sleep", Check.FIRE)].reason == "fired 3 times under my-loader"
    assert cells[("tp_openat", Check.LOAD)].outcome == Outcome.SKIP
    assert cells[("tp_openat", Check.LOAD)].reason.startswith("left out by the loader")


def test_the_own_loader_option_serves_objects_without_one(tmp_path: Path) -> None:
    from harness.programs.own_loader import OwnLoader

    s = make_run(tmp_path, acts={"6.1-" + ARCH.name: [act_own_loader]})
    s.run.own_loader = OwnLoader("{object}-loader -v")
    spec = s.spec("6.1")
    s.run.guest_result(spec, probes_of(s)[0], Check.LOAD)
    (entry,) = s.runner.boots[0].plan["objects"]
    assert entry["own_loader"]["command"] == "sleepy-loader -v"
    assert entry["own_loader"]["binaries"] == ""


# ---------------------------------------------------------------- guest records reused


def guest_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libbpf: bytes = b"libbpf 1.5") -> Path:
    """A built guest root (its manifest and libbpf) for every boot of the run."""
    import harness.kernels.rootfs as rootfs

    root = tmp_path / "rootfs" / "root"
    lib = root / "usr" / "lib" / "x86_64-linux-gnu" / "libbpf.so.1.5.0"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(libbpf)
    (root.parent / "manifest.json").write_text('{"meta": {"suite": "trixie"}}')
    monkeypatch.setattr(rootfs, "fetch_rootfs", lambda arch, guest, cache_root, mirror: root)
    return root


def rerun(tmp_path: Path, first: Setup, **kwargs: Any) -> Setup:
    """A second process on the same cache and bpf_progs/ (a warm rerun)."""
    again = make_run(tmp_path, cache=first.cache, progs=first.run.progs_dir, **kwargs)
    again.run.config = first.run.config
    return again


def one_kernel(s: Setup, tmp_path: Path) -> KernelSpec:
    s.run.config = parse_kernels_yaml(
        f"guest: {{suite: trixie}}\nkernels:\n  - {{id: '6.1', suite: bookworm, arch: {ARCH.name}}}\n",
        tmp_path / "k.yaml",
    )
    return s.run.config.kernels[0]


def all_cells(s: Setup, spec: KernelSpec) -> dict[tuple[str, Check], tuple[Outcome, str]]:
    return {
        (p.program, c): (r.outcome, r.reason)
        for p in probes_of(s) for c in GUEST_CHECKS for r in [s.run.guest_result(spec, p, c)]
    }


def test_an_identical_rerun_reuses_the_guest_records_and_boots_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest_root(tmp_path, monkeypatch)
    first = make_run(tmp_path)
    spec = one_kernel(first, tmp_path)
    cells_first = all_cells(first, spec)
    assert first.runner.count() == 1
    assert not any("reused" in n for n in first.run.kernel_run(spec).notes)

    second = rerun(tmp_path, first)
    assert all_cells(second, spec) == cells_first
    assert second.runner.count() == 0  # facts cached, every record known: no VM
    kernel = second.run.kernel_run(spec)
    assert kernel.libbpf == "1.1.0" and kernel.boot_seconds == 0.0
    assert any("1 of 1 objects reused" in n and "no VM this run" in n for n in kernel.notes), kernel.notes

    fresh = rerun(tmp_path, first)
    fresh.run.reuse = False  # --fresh-boots
    assert all_cells(fresh, spec) == cells_first
    assert fresh.runner.count() == 1


def test_a_changed_guest_root_or_object_boots_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guest_root(tmp_path, monkeypatch)
    first = make_run(tmp_path)
    spec = one_kernel(first, tmp_path)
    all_cells(first, spec)
    # A new libbpf in the guest root: every record is stale.
    guest_root(tmp_path, monkeypatch, libbpf=b"libbpf 1.6")
    second = rerun(tmp_path, first)
    all_cells(second, spec)
    assert second.runner.count() == 1
    # A changed object (its source edited): booted again, with it in the plan.
    src = first.run.progs_dir / "sleepy.bpf.c"
    src.write_text(src.read_text().replace("return 0;", "return 1;", 1))
    third = rerun(tmp_path, first)
    all_cells(third, spec)
    assert third.runner.count() == 1
    assert [e["name"] for e in third.runner.boots[0].plan["objects"]] == ["sleepy"]


def test_only_the_objects_without_a_record_are_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest_root(tmp_path, monkeypatch)
    first = make_run(tmp_path)
    spec = one_kernel(first, tmp_path)
    all_cells(first, spec)
    progs = first.run.progs_dir
    (progs / "other.bpf.c").write_text(SAMPLE)
    second = rerun(tmp_path, first)
    cells = {
        (p.object, p.program, c): r.outcome
        for p in probes_of(second) for c in GUEST_CHECKS for r in [second.run.guest_result(spec, p, c)]
    }
    assert second.runner.count() == 1
    assert [e["name"] for e in second.runner.boots[0].plan["objects"]] == ["other"]
    # Both objects' cells are there: one from the store, one from this boot.
    assert {o for o, _, _ in cells} == {"other", "sleepy"}
    assert cells[("sleepy", "kp_sleep", Check.FIRE)] is Outcome.PASS
    assert cells[("other", "kp_sleep", Check.FIRE)] is Outcome.PASS
    notes = second.run.kernel_run(spec).notes
    assert any("1 of 2 objects reused" in n and "the rest booted" in n for n in notes), notes


def test_records_of_a_failed_boot_or_a_crashed_object_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest_root(tmp_path, monkeypatch)

    def act_crash_on_object(req: VMRequest, plan: protocol.Plan) -> VMResult:
        result = act_ok(req, plan)
        records = protocol.read_objects(req.share)
        protocol.write_objects(req.share, [{"object": r["object"], "error": "agent crashed: boom"}
                                           for r in records])
        return result

    first = make_run(tmp_path, acts={f"6.1-{ARCH.name}": [act_crash_on_object]})
    spec = one_kernel(first, tmp_path)
    all_cells(first, spec)
    second = rerun(tmp_path, first)
    assert all(o is Outcome.PASS or c is Check.CORE for (_, c), (o, _) in all_cells(second, spec).items())
    assert second.runner.count() == 1

    (tmp_path / "x").mkdir()
    failing = make_run(tmp_path / "x", acts={f"6.1-{ARCH.name}": [act_agent_crash]}, retries=0)
    spec = one_kernel(failing, tmp_path)
    all_cells(failing, spec)
    assert not (failing.cache / "guest-records").exists()


def test_prefetch_fetches_the_newest_kernel_first_then_in_boot_order(tmp_path: Path) -> None:
    s = make_run(tmp_path)
    s.run.config = parse_kernels_yaml(
        f"guest: {{root: host}}\ndefaults: {{arches: [{ARCH.name}]}}\nkernels:\n"
        "  - {id: '5.10', suite: bullseye}\n  - {id: '6.12', suite: trixie}\n"
        "  - {id: '6.1', suite: bookworm}\n",
        tmp_path / "k.yaml",
    )
    for thread in s.run.prefetch(threads=1):
        thread.join(30)
        assert thread.daemon and not thread.is_alive()
    assert s.fetch.calls == [f"{k}-{ARCH.name}" for k in ("6.12", "5.10", "6.1")]
    # A failed prefetch is not remembered by the run: its own fetch tries again.
    s.fetch.fail[f"6.1-{ARCH.name}"] = "mirror unreachable"
    for thread in s.run.prefetch(threads=2):
        thread.join(30)
    del s.fetch.fail[f"6.1-{ARCH.name}"]
    assert s.run.fetch(s.run.config.kernels[2]).release == "6.1.0-1-amd64"


def test_scenario_records_are_stored_by_the_first_boot_and_reused_by_the_next(tmp_path: Path) -> None:
    from harness.run.reuse import RecordStore

    share = tmp_path / "share"
    (share / protocol.USER_DIR).mkdir(parents=True)
    (share / protocol.USER_DIR / "libdemo.so.1").write_bytes(b"v1")
    scenario: dict[str, Any] = {"kind": "uprobe_update", "object": "o", "program": "p"}
    plan: protocol.Plan = {"facts": False, "objects": [], "scenarios": [scenario]}  # type: ignore[list-item]
    store = RecordStore(tmp_path / "cache")
    first = store.lookup("identity", share, plan)
    assert first.scenarios_key and first.scenarios is None and first.done is None  # nothing stored yet
    store.store(first, {"release": "6.1"}, [], [{"kind": "uprobe_update", "object": "o"}])  # type: ignore[list-item]
    again = store.lookup("identity", share, plan)
    assert again.scenarios == [{"kind": "uprobe_update", "object": "o"}] and again.everything
    # Another library in the share: the scenarios run again.
    (share / protocol.USER_DIR / "libdemo.so.1").write_bytes(b"v2")
    assert store.lookup("identity", share, plan).scenarios is None
