"""Tests of the pytest plugin: `pytest matrix/` in a subprocess against a fake VM runner (no VM).

The fake is named by the plugin's BPF_MATRIX_RUNNER testing hook (``test_plugin:FakeRunner``, with
this directory on PYTHONPATH). It acts out each boot as a JSON script says, per kernel image and
attempt, and logs every boot so that the tests can count them.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tools import needs

from harness.errors import LostVMError
from harness.kernels.config import parse_kernels_yaml
from harness.kernels.fetch import KernelBuild
from harness.programs.inventory import load_object
from harness.run.coordinator import MatrixRun
from harness.vm.guest import protocol
from harness.vm.runner import (
    Accelerator,
    VMRequest,
    VMResult,
    console_tail,
    diagnose_console,
    read_done,
)

REPO = Path(__file__).resolve().parent.parent
FACTS = REPO / "tests" / "data" / "facts"
SCRIPT_ENV = "FAKE_VM_SCRIPT"
TCG = Accelerator("tcg", "fake")
RUN_TIMEOUT = 300

pytestmark = needs("clang", "/usr/include/bpf/bpf_helpers.h", why="clang builds the test programs")

PANIC = (
    "[    0.000000] Linux version 6.1.0-fake\n"
    "[    7.100000] sysrq: Trigger a crash\n"
    "[    7.100100] Kernel panic - not syncing: sysrq triggered crash\n"
    "[    7.100200] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n"
)
VERIFIER_LOG = (
    "libbpf: prog 'PROG': BPF program load failed: Permission denied\n"
    "libbpf: prog 'PROG': -- BEGIN PROG LOAD LOG --\n"
    "0: R1=ctx() R10=fp0\n"
    "0: (79) r1 = *(u64 *)(r1 +0)\n"
    "R1 invalid mem access 'scalar'\n"
    "-- END PROG LOAD LOG --\n"
)


# ---------------------------------------------------------------- the fake runner


class FakeRunner:
    """Same Protocol as VngRunner; plays the guest as the script at $FAKE_VM_SCRIPT says.

    Script: {"log": path, "facts": {image name: facts dir}, "acts": {image name: [act per attempt]}}.
    Acts: ok, idle (every program attaches and never runs), reject (the verifier refuses every
    program), lost (a kernel panic), agent-crash
    (done.json says ok: false with a traceback), broken-done (done.json is not JSON), no-done.
    The last act repeats for further attempts.
    """

    def __init__(self) -> None:
        self.script: dict[str, Any] = json.loads(Path(os.environ[SCRIPT_ENV]).read_text())

    def run(self, req: VMRequest) -> VMResult:
        name = req.image.name
        log = Path(self.script["log"])
        before = log.read_text().splitlines() if log.exists() else []
        attempt = sum(1 for line in before if json.loads(line)["image"] == name)
        with log.open("a") as fh:
            fh.write(json.dumps({
                "image": name, "share": str(req.share), "worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
                "objects": bool(protocol.read_plan(req.share).get("objects")),
            }) + "\n")
        acts = self.script["acts"].get(name, ["ok"])
        act = acts[min(attempt, len(acts) - 1)]
        plan = protocol.read_plan(req.share)
        console = f"[    0.000000] Linux version {name}\n"
        if act == "lost":
            console = PANIC
        elif act == "broken-done":
            (req.share / protocol.DONE_FILE).write_text('{"ok": tru')
        elif act == "agent-crash":
            done = protocol.DoneRecord(
                ok=False, release=name, machine="x86_64", uptime_start=1.0,
                error="RuntimeError: agent blew up",
                traceback='Traceback (most recent call last):\n  File "/mnt/agent.py", line 1\n'
                "RuntimeError: agent blew up\n",
            )
            protocol.write_done(req.share, done)
        elif act in ("ok", "reject", "idle"):
            self._guest(req.share, plan, name, reject=act == "reject", runs=0 if act == "idle" else 3)
        # What VngRunner does with the share once the VM is gone.
        done_record = read_done(req.share)
        if done_record is None:
            what = diagnose_console(console)
            msg = "guest ended without a completion record (vng exit 0)" + (f": {what}" if what else "")
            raise LostVMError(msg, console_tail(console))
        return VMResult(done_record, console, 0.1, 0, req.accelerator, ())

    def _guest(self, share: Path, plan: protocol.Plan, name: str, reject: bool, runs: int = 3) -> None:
        if plan.get("facts"):
            shutil.copytree(self.script["facts"][name], share / protocol.FACTS_DIR)
        records = []
        for entry in plan.get("objects", []):
            obj = load_object(share / entry["path"])
            programs: dict[str, protocol.ProgramRecord] = {}
            for probe in obj.probes:
                if reject:
                    log = VERIFIER_LOG.replace("PROG", probe.program)
                    load = protocol.LoadRecord(ok=False, errno=13, log=log)
                    programs[probe.program] = protocol.ProgramRecord(load=load)
                else:
                    programs[probe.program] = protocol.ProgramRecord(
                        load=protocol.LoadRecord(ok=True, seconds=0.01, log=""),
                        attach=protocol.AttachRecord(ok=True, log=""),
                        fire=protocol.FireRecord(run_cnt=runs, run_time_ns=300 * runs, recursion_misses=0),
                    )
            records.append(protocol.ObjectRecord(object=entry["name"], programs=programs))
        protocol.write_objects(share, records)
        done = protocol.DoneRecord(ok=True, release=name, machine="x86_64", uptime_start=1.0,
                                   lsm="lockdown,capability,bpf", stats_enabled=True, libbpf="1.1.0")
        protocol.write_done(share, done)


# ---------------------------------------------------------------- fixtures


GOOD_C = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("tp/syscalls/sys_enter_openat")
int tp_openat(void *ctx) { return 0; }
SEC("kprobe/vfs_unlink")
int kp_unlink(void *ctx) { return 0; }
"""
NO_PROGRAMS_C = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
int counter = 0;
"""
UNKNOWN_SECTION_C = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("socket")
int sock_filter(void *ctx) { return 0; }
"""
UPROBE_C = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("uprobe//mnt/user/app:work")
int up_work(void *ctx) { return 0; }
SEC("kprobe/vfs_unlink")
int kp_unlink(void *ctx) { return 0; }
"""
USER_APP_C = """\
__attribute__((noinline)) int work(int x) { return x * 3; }
int main(void) { return work(1) - 3; }
"""
ALT_C = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("kprobe/blk_account_io_start")
int kp_start(void *ctx) { return 0; }
SEC("tp/block/block_rq_issue")
int tp_issue(void *ctx) { return 0; }
"""
BROKEN_C = """\
#include "vmlinux.h"
int broken(void) { return undeclared_thing; }
"""


# Just the types that bpf_helpers.h needs: the programs read no kernel structs.
VMLINUX_H = """\
#ifndef __VMLINUX_H__
#define __VMLINUX_H__
typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
#endif
"""


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A vmlinux.h, and good.bpf.o / noprogs.bpf.o / unknown.bpf.o built with it."""
    out = tmp_path_factory.mktemp("objects")
    (out / "vmlinux.h").write_text(VMLINUX_H)
    built = {"vmlinux.h": out / "vmlinux.h"}
    for name, text in (
        ("good", GOOD_C), ("noprogs", NO_PROGRAMS_C), ("unknown", UNKNOWN_SECTION_C), ("uprobe", UPROBE_C),
        ("alt", ALT_C),
    ):
        src = out / f"{name}.bpf.c"
        src.write_text(text)
        obj = out / f"{name}.bpf.o"
        subprocess.run(
            ["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I", str(out),
             "-I", "/usr/include", "-c", str(src), "-o", str(obj)],
            check=True, capture_output=True, timeout=120,
        )
        built[name] = obj
    return built


@dataclass
class Outcome:
    """One `pytest matrix/` subprocess: exit code, output, the matrix it wrote and the boots it made."""

    returncode: int
    stdout: str
    stderr: str
    matrix: dict[str, Any] | None
    boots: list[dict[str, Any]]

    def cells(self, kernel: str | None = None, check: str | None = None) -> list[dict[str, Any]]:
        records = self.matrix["records"] if self.matrix else []
        return [
            r for r in records
            if (kernel is None or r["kernel"] == kernel) and (check is None or r["check"] == check)
        ]

    def boots_of(self, kernel: str) -> int:
        return sum(1 for b in self.boots if b["image"] == f"vmlinuz-{kernel}.0-fake")

    def summary(self) -> str:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


@dataclass
class Project:
    """A directory with kernels.yaml, bpf_progs/ and fake kernel images, and a runner script."""

    root: Path
    acts: dict[str, list[str]]

    @property
    def progs(self) -> Path:
        return self.root / "progs"

    @property
    def out_json(self) -> Path:
        return self.root / "out" / "matrix.json"

    def command(
        self, *args: str, wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of `pytest matrix/` on this project with the fake runner."""
        log = self.root / "boots.jsonl"
        script = self.root / "script.json"
        script.write_text(json.dumps({
            "log": str(log),
            "facts": {f"vmlinuz-{k}.0-fake": str(FACTS / f"{k}-x86_64") for k in ("5.10", "6.1")},
            "acts": {f"vmlinuz-{k}.0-fake": v for k, v in self.acts.items()},
        }))
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
            "BPF_MATRIX_RUNNER": "test_plugin:FakeRunner",
            SCRIPT_ENV: str(script),
            "BPF_MATRIX_ACCEL": "tcg",
            "TMPDIR": str(tmp),
            **(env or {}),
        }
        argv = [
            *wrapper, sys.executable, "-m", "pytest", "matrix/", "-p", "no:cacheprovider", "-q", "-rfE",
            "--kernels", str(self.root / "kernels.yaml"), "--bpf-progs", str(self.progs),
            "--cache-dir-kernels", str(self.root / "cache"), "--matrix-json", str(self.out_json), *args,
        ]
        return argv, full_env

    def run(
        self, *args: str, kernels: str | None = None, wrapper: tuple[str, ...] = (),
        env: dict[str, str] | None = None, keep_json: bool = False,
    ) -> Outcome:
        kernels_file = self.root / "kernels.yaml"
        if kernels is not None:
            kernels_file.write_text(kernels)
        log = self.root / "boots.jsonl"
        log.unlink(missing_ok=True)
        out_json = self.out_json
        if not keep_json:
            out_json.unlink(missing_ok=True)
        tmp = self.root / "tmp"
        argv, full_env = self.command(*args, wrapper=wrapper, env=env)
        proc = subprocess.run(
            argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        boots = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        matrix = json.loads(out_json.read_text()) if out_json.exists() else None
        # Nothing of the run is left in its temp dir: the run directory and every share are gone
        # (pytest-xdist's workers keep pytest's own basetemp there, which is pytest's to clean).
        left = [p for p in tmp.iterdir() if not p.name.startswith("pytest-of-")]
        assert left == [], (proc.stdout[-2000:], proc.stderr[-2000:])
        return Outcome(proc.returncode, proc.stdout, proc.stderr, matrix, boots)


# The fake runner boots nothing: the host's root saves building a guest root filesystem.
KERNELS = """\
baseline: "5.10"
guest: {root: host}
kernels:
  - id: "5.10"
    source: local
    image: images/vmlinuz-5.10.0-fake
    arches: [x86_64]
  - id: "6.1"
    source: local
    image: images/vmlinuz-6.1.0-fake
    arches: [x86_64]
"""


def fake_kernel_image(kid: str) -> bytes:
    """A stand-in the harness takes for a kernel (it is never booted): a gzip stream with the banner."""
    return gzip.compress(f"Linux version {kid}.0-fake (test) #1 SMP\n".encode())


@pytest.fixture
def project(tmp_path: Path, objects: dict[str, Path]) -> Project:
    (tmp_path / "images").mkdir()
    for k in ("5.10", "6.1"):
        (tmp_path / "images" / f"vmlinuz-{k}.0-fake").write_bytes(fake_kernel_image(k))
    progs = tmp_path / "progs"
    progs.mkdir()
    shutil.copy(objects["good"], progs / "good.bpf.o")
    (tmp_path / "kernels.yaml").write_text(KERNELS)
    return Project(tmp_path, {})


GUEST_ONLY = ("-k", "test_load or test_attach or test_fire or test_core")


# ---------------------------------------------------------------- outcomes and retries


@pytest.mark.parametrize("workers", [None, "2"])
def test_fire_is_judged_across_kernels_in_the_tests_themselves(project: Project, workers: str | None) -> None:
    project.acts = {"5.10": ["ok"], "6.1": ["idle"]}
    out = project.run(*(("-n", workers) if workers else ()))
    assert out.returncode == 1, out.stdout[-3000:]
    fires = {r["kernel"]: r for r in out.cells(check="fire")}
    assert {k: r["outcome"] for k, r in fires.items()} == {"5.10": "pass", "6.1": "fail"}
    assert fires["6.1"]["reason"].startswith("fired on 5.10 (run_cnt 3); never here after its trigger")
    # The test itself failed with that verdict, not only the report.
    assert "test_fire[kp_unlink-6.1-x86_64]" in out.stdout and "fired on 5.10 (run_cnt 3)" in out.stdout
    assert out.boots_of("5.10") == 1 and out.boots_of("6.1") == 1


def test_fire_never_reached_on_any_kernel_is_a_skip(project: Project) -> None:
    project.acts = {"5.10": ["idle"], "6.1": ["idle"]}
    out = project.run("-n", "2")
    assert out.returncode == 0, out.stdout[-3000:]
    assert {r["outcome"] for r in out.cells(check="fire")} == {"skip"}
    assert {r["reason"] for r in out.cells(check="fire")} == {
        "not reached by the workload on any kernel: give a trigger in the sidecar"
    }
    # A trigger in the sidecar says it should fire: the FAIL stays.
    (project.progs / "good.yaml").write_text('trigger: "true"\n')
    out = project.run("-n", "2")
    assert out.returncode == 1, out.stdout[-3000:]
    assert {r["outcome"] for r in out.cells(check="fire")} == {"fail"}


@pytest.mark.parametrize("workers", [None, "2"])
def test_a_member_that_fails_where_its_group_works_does_not_fail_the_run(
    project: Project, objects: dict[str, Path], workers: str | None
) -> None:
    shutil.copy(objects["alt"], project.progs / "alt.bpf.o")
    (project.progs / "alt.yaml").write_text("alternatives:\n  io_start: [kp_start, tp_issue]\n")
    out = project.run(*(("-n", workers) if workers else ()))
    # blk_account_io_start is inlined away on 6.1: kp_start fails there, tp_issue does the job.
    assert out.returncode == 0, out.stdout[-3000:]
    kp = {(r["kernel"], r["check"]): r for r in out.cells() if r["program"] == "kp_start"}
    assert kp[("5.10", "symbol")]["outcome"] == "pass"
    assert kp[("6.1", "symbol")]["outcome"] == "xfail"
    assert kp[("6.1", "symbol")]["expected"] == "alternatives `io_start`: works through tp_issue here"
    assert "xfailed" in out.summary()
    assert out.matrix is not None
    (group,) = out.matrix["groups"]
    assert [(v["kernel"], v["working"]) for v in group["verdicts"]] == [
        ("5.10", ["kp_start", "tp_issue"]), ("6.1", ["tp_issue"])
    ]
    assert "alt: works on 5.10, 6.1; `io_start` only through tp_issue on 6.1" in out.stdout
    assert out.boots_of("5.10") == 1 and out.boots_of("6.1") == 1
    # Without its group, the same failure fails the run.
    (project.progs / "alt.yaml").unlink()
    assert project.run(*(("-n", workers) if workers else ())).returncode == 1


def test_an_unknown_member_of_an_alternatives_group_is_a_usage_error(
    project: Project, objects: dict[str, Path]
) -> None:
    shutil.copy(objects["alt"], project.progs / "alt.bpf.o")
    (project.progs / "alt.yaml").write_text("description: x\nalternatives:\n  job: [kp_start, tp_isue]\n")
    out = project.run()
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    assert "alt.yaml:3: alternatives group 'job' names program 'tp_isue'" in out.stderr
    assert out.boots == []


def test_only_fire_selected_boots_each_kernel_once(project: Project) -> None:
    project.acts = {"5.10": ["ok"], "6.1": ["idle"]}
    out = project.run("-n", "2", "-k", "test_fire")
    assert out.returncode == 1, out.stdout[-3000:]
    assert out.boots_of("5.10") == 1 and out.boots_of("6.1") == 1


def test_all_pass_one_boot_per_kernel(project: Project) -> None:
    out = project.run()
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.summary() and "failed" not in out.summary() and "error" not in out.summary()
    # Facts were collected in the one boot of each kernel, and every check used them.
    assert out.boots_of("5.10") == 1 and out.boots_of("6.1") == 1
    assert {r["outcome"] for r in out.cells(check="load")} == {"pass"}
    assert {r["outcome"] for r in out.cells(check="symbol")} == {"pass"}
    assert len({b["share"] for b in out.boots}) == 2


@pytest.mark.parametrize("workers", ["1", "2", "auto"])
def test_parallel_workers_boot_each_kernel_once(project: Project, workers: str) -> None:
    # -n defaults pytest-xdist to --dist load, which would scatter a kernel's tests over workers and
    # boot it on each: the plugin regroups them (loadgroup) so that one worker boots it once.
    out = project.run("-n", workers)
    assert out.returncode == 0, out.stdout[-3000:]
    seen = [(b["image"], b["worker"], b["objects"]) for b in out.boots]
    assert out.boots_of("5.10") == 1 and out.boots_of("6.1") == 1, seen


def test_lost_vm_is_error_never_fail_and_other_kernels_are_kept(project: Project) -> None:
    project.acts = {"6.1": ["lost"]}
    out = project.run(*GUEST_ONLY)
    # Exit 3, not 1: the harness could not decide these cells; nothing was found incompatible.
    assert out.returncode == 3
    summary = out.summary()
    assert " error" in summary and "failed" not in summary, summary
    assert " passed" in summary  # 5.10's cells
    # Retried once (--vm-retries defaults to 1), then reported with what the console showed.
    assert out.boots_of("6.1") == 2 and out.boots_of("5.10") == 1
    lost = out.cells("6.1")
    assert lost and {r["outcome"] for r in lost} == {"error"}
    reason = lost[0]["reason"]
    assert reason == "guest ended without a completion record (vng exit 0): " \
        "Kernel panic - not syncing: sysrq triggered crash"
    assert "end Kernel panic" in lost[0]["details"]["console_tail"]
    assert {r["outcome"] for r in out.cells("5.10")} <= {"pass", "skip"}
    assert out.cells("5.10", "load")[0]["outcome"] == "pass"
    kernels = {k["kernel"]: k for k in out.matrix["kernels"]} if out.matrix else {}
    assert kernels["6.1"]["error"] == reason and kernels["5.10"]["booted"]
    # pytest shows the error at setup with the console tail, never as a failed assertion.
    assert "ERROR at setup of test_load[kp_unlink-6.1-x86_64]" in out.stdout or "ERROR matrix/" in out.stdout
    assert "--- console tail ---" in out.stdout
    assert "sysrq triggered crash" in out.stdout
    assert "FAILED" not in out.stdout


def test_error_is_retried_once_then_passes(project: Project) -> None:
    project.acts = {"6.1": ["lost", "ok"]}
    out = project.run(*GUEST_ONLY)
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.boots_of("6.1") == 2
    kernels = {k["kernel"]: k for k in out.matrix["kernels"]} if out.matrix else {}
    assert "attempt 2" in kernels["6.1"]["notes"]
    # Each attempt boots on a fresh share.
    shares = [b["share"] for b in out.boots]
    assert len(set(shares)) == len(shares)


@pytest.mark.parametrize(("retries", "boots"), [("0", 1), ("2", 3)])
def test_vm_retries_option(project: Project, retries: str, boots: int) -> None:
    project.acts = {"6.1": ["lost"]}
    out = project.run(*GUEST_ONLY, "--vm-retries", retries, "--kernel", "6.1")
    assert out.returncode == 3
    assert out.boots_of("6.1") == boots and out.boots_of("5.10") == 0


def test_fail_is_never_retried_and_is_not_an_error(project: Project) -> None:
    project.acts = {"6.1": ["reject"]}
    out = project.run(*GUEST_ONLY)
    assert out.returncode == 1
    summary = out.summary()
    assert " failed" in summary and "error" not in summary, summary
    assert out.boots_of("6.1") == 1
    load = out.cells("6.1", "load")
    assert {r["outcome"] for r in load} == {"fail"}
    assert load[0]["reason"].startswith(("verifier rejected it", "load failed (EACCES)")), load[0]["reason"]
    assert {r["outcome"] for r in out.cells("5.10", "load")} == {"pass"}
    assert "FAILED matrix/test_matrix.py::test_load[kp_unlink-6.1-x86_64]" in out.stdout


@pytest.mark.parametrize(
    ("act", "reason", "tail"),
    [
        ("agent-crash", "guest agent failed: RuntimeError: agent blew up", "Traceback (most recent call"),
        ("broken-done", "guest ended without a completion record (vng exit 0)", "Linux version"),
        ("no-done", "guest ended without a completion record (vng exit 0)", "Linux version"),
    ],
)
def test_agent_crash_or_bad_done_record_is_error_with_tail(
    project: Project, act: str, reason: str, tail: str
) -> None:
    project.acts = {"6.1": [act]}
    out = project.run(*GUEST_ONLY)
    summary = out.summary()
    assert out.returncode == 3 and " error" in summary and "failed" not in summary, summary
    assert out.boots_of("6.1") == 2  # an ERROR is retried
    cells = out.cells("6.1")
    assert {r["outcome"] for r in cells} == {"error"}
    assert {r["reason"] for r in cells} == {reason}
    assert tail in cells[0]["details"]["console_tail"]
    assert tail in out.stdout
    assert out.cells("5.10", "load")[0]["outcome"] == "pass"


def test_missing_kernel_image_is_error_for_that_kernel_only(project: Project) -> None:
    (project.root / "images" / "vmlinuz-6.1.0-fake").unlink()
    out = project.run(*GUEST_ONLY)
    assert out.returncode == 3 and "failed" not in out.summary()
    cells = out.cells("6.1")
    assert {r["outcome"] for r in cells} == {"error"}
    assert cells[0]["reason"].startswith("kernel not available: kernel '6.1' (x86_64): local image ")
    assert out.boots_of("6.1") == 0
    assert out.cells("5.10", "load")[0]["outcome"] == "pass"


def test_a_sample_that_does_not_build_is_an_error_on_every_check_of_its_probes(
    project: Project, objects: dict[str, Path]
) -> None:
    """The user-space binary a uprobe needs could not be built (here: a C compiler without its libc
    headers, as a cross gcc without libc6-dev-<arch>-cross): nothing is known of the probe, so each of
    its cells is ERROR with the build error, never FAIL, and the run exits 3."""
    shutil.copy(objects["uprobe"], project.progs / "uprobe.bpf.o")
    (project.progs / "user").mkdir()
    (project.progs / "user" / "app.c").write_text(USER_APP_C)
    fake_bin = project.root / "bin"
    fake_bin.mkdir()
    gcc = fake_bin / "gcc"
    gcc.write_text(
        "#!/bin/sh\necho '/usr/include/stdint.h:26:10: fatal error: bits/libc-header-start.h: "
        "No such file or directory' >&2\nexit 1\n"
    )
    gcc.chmod(0o755)
    out = project.run(env={"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 3, out.stdout[-3000:]
    cells = [r for r in out.cells() if r["object"] == "uprobe"]
    by_program: dict[str, dict[str, dict[str, Any]]] = {}
    for r in cells:
        by_program.setdefault(r["program"], {})[r["check"]] = r
    up = by_program["up_work"]
    assert {"load", "attach", "fire", "uprobe"} <= set(up), sorted(up)
    for check, r in up.items():
        assert r["outcome"] == "error", (check, r)
        assert "app does not build" in r["reason"] and "libc-header-start.h" in r["reason"], r["reason"]
    # The object's other probe needs no sample: it is checked as usual on both kernels.
    assert {r["outcome"] for r in by_program["kp_unlink"].values()} <= {"pass", "skip"}
    assert by_program["kp_unlink"]["attach"]["outcome"] == "pass"
    # The failed build left nothing half-written in the cache.
    leftovers = [p for p in (project.root / "cache").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("kernels", "args", "message"),
    [
        ("kernels: [\n  - id: x\n", (), r"kernels.yaml:\d+: not valid YAML: "),
        ("kernels: {}\n", (), "kernels.yaml: 'kernels' must be a non-empty list"),
        (KERNELS, ("--kernel", "nope"), "kernels.yaml: unknown kernel 'nope' (known: "),
        (KERNELS.replace("arches: [x86_64]", "arches: [sparc]", 1), (),
         "kernels.yaml: kernel '5.10': unknown arch 'sparc' (known: x86_64, arm64)"),
    ],
)
def test_usage_errors_are_one_line_without_traceback(
    project: Project, kernels: str, args: tuple[str, ...], message: str
) -> None:
    import re

    out = project.run(*args, kernels=kernels)
    assert out.returncode == 4  # pytest's usage error
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1, out.stderr
    assert re.search(re.escape(message) if "\\d" not in message else message, errors[0]), errors[0]
    assert "Traceback" not in out.stderr + out.stdout
    assert out.boots == [] and out.matrix is None


def test_bad_runner_hook_is_a_usage_error(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPF_MATRIX_RUNNER", "no_such_module:Factory")
    # Project.run sets the hook itself: call pytest directly.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "matrix/", "-p", "no:cacheprovider", "--kernels",
         str(project.root / "kernels.yaml"), "--bpf-progs", str(project.progs)],
        cwd=REPO, env={**os.environ, "TMPDIR": str(project.root)}, capture_output=True, text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 4
    assert "ERROR: BPF_MATRIX_RUNNER=no_such_module:Factory: not a module:factory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(project.root.glob("bpf-matrix-run-*"))


# ---------------------------------------------------------------- bad programs


def test_bad_objects_are_reported_alone_and_the_rest_runs(project: Project, objects: dict[str, Path]) -> None:
    progs = project.progs
    shutil.copy(sys.executable, progs / "hostelf.bpf.o")  # an ELF, but not BPF
    (progs / "text.bpf.o").write_text("not an object at all\n")
    shutil.copy(objects["noprogs"], progs / "noprogs.bpf.o")
    shutil.copy(objects["unknown"], progs / "unknown.bpf.o")
    shutil.copy(objects["vmlinux.h"], progs / "vmlinux.h")
    (progs / "broken.bpf.c").write_text(BROKEN_C)
    out = project.run(*GUEST_ONLY)
    by_object: dict[str, set[str]] = {}
    reasons: dict[str, set[str]] = {}
    for r in out.cells():
        by_object.setdefault(r["object"], set()).add(r["outcome"])
        reasons.setdefault(r["object"], set()).add(r["reason"])
    assert by_object["good"] <= {"pass", "skip"} and "pass" in by_object["good"], reasons["good"]
    for bad in ("hostelf", "text", "noprogs", "broken"):
        assert by_object[bad] == {"error"}, reasons[bad]
    (hostelf,) = reasons["hostelf"]
    assert hostelf.endswith("hostelf.bpf.o: not a BPF object (ELF machine EM_X86_64, expected EM_BPF)")
    (text,) = reasons["text"]
    assert "text.bpf.o: not an ELF file" in text
    (noprogs,) = reasons["noprogs"]
    assert noprogs.endswith("noprogs.bpf.o: BPF object has no programs")
    (broken,) = reasons["broken"]
    assert broken.startswith("broken.bpf.c does not compile: ") and "undeclared_thing" in broken
    assert all("\n" not in r for rs in reasons.values() for r in rs)
    (unknown,) = reasons["unknown"]
    assert unknown == "program sock_filter: section 'socket' is a program type the harness does not check"
    assert by_object["unknown"] == {"skip"}
    # Both kernels still booted once each, with the good object only.
    assert out.boots_of("5.10") == 1 and out.boots_of("6.1") == 1
    summary = out.summary()
    assert "failed" not in summary and " error" in summary and " passed" in summary


# ---------------------------------------------------------------- MatrixRun directly


class RecordingRunner:
    """Records the requests it gets from several threads; every boot passes with no objects."""

    def __init__(self) -> None:
        self.requests: list[VMRequest] = []
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(2, timeout=30)

    def run(self, req: VMRequest) -> VMResult:
        with self.lock:
            self.requests.append(req)
        assert req.share.is_dir() and (req.share / protocol.PLAN_FILE).is_file()
        self.barrier.wait()  # both runs hold their shares at the same time
        done = protocol.DoneRecord(ok=True, release="6.1.0-27-amd64", machine="x86_64", uptime_start=1.0)
        protocol.write_done(req.share, done)
        return VMResult(done, "", 0.0, 0, req.accelerator, ())


@pytest.fixture
def fake_build(tmp_path: Path) -> KernelBuild:
    entry = tmp_path / "entry"
    (entry / "facts").mkdir(parents=True)
    spec = parse_kernels_yaml(KERNELS, tmp_path / "kernels.yaml").kernels[1]
    return KernelBuild(
        spec=spec, image=tmp_path / "vmlinuz", modules=None, release="6.1.0-fake", digest="0" * 64,
        source="fake", config=None, verified="", entry=entry, facts_dir=entry / "facts",
    )


def test_parallel_runs_never_share_a_share_dir(
    tmp_path: Path, objects: dict[str, Path], fake_build: KernelBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    config = parse_kernels_yaml(KERNELS, tmp_path / "kernels.yaml")
    progs = tmp_path / "progs"
    progs.mkdir()
    shutil.copy(objects["good"], progs / "good.bpf.o")
    runner = RecordingRunner()
    runs = [
        MatrixRun(config, progs, runner, TCG, cache_root=tmp_path / "cache", fetch=lambda *a, **k: fake_build)
        for _ in range(2)
    ]
    spec = config.kernels[1]
    threads = [threading.Thread(target=r.guest, args=(spec,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    shares = [r.share for r in runner.requests]
    assert len(shares) == 2 and shares[0] != shares[1]
    assert not shares[0].is_relative_to(shares[1].parent) and not shares[1].is_relative_to(shares[0].parent)
    assert {r.work_dir for r in runs} == {s.parent.parent for s in shares}
    # Each boot's directory is removed once its results are read; only the run's own dirs remain.
    assert not any(s.exists() for s in shares)
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == sorted(r.work_dir.name for r in runs)
    for r in runs:
        marker = f"{spec.key}.booted"
        assert sorted(p.name for p in r.work_dir.iterdir()) == [
            marker, f"{marker}.lock", f"{spec.key}.outcome.json",
        ]


def test_matrix_group_from_node_ids() -> None:
    from harness.plugin import matrix_group

    keys = ["5.10-x86_64", "6.1-x86_64", "1-x86_64", "6.1-arm64"]
    assert matrix_group("matrix/test_matrix.py::test_load[kp-6.1-x86_64]", keys) == "6.1-x86_64"
    # FIRE is judged against every kernel of the arch, a member of alternatives against its group.
    assert matrix_group("matrix/test_matrix.py::test_fire[a.b-5.10-x86_64]", keys) == "across"
    member = "m.kp-6.1-x86_64"
    assert matrix_group(f"matrix/test_matrix.py::test_load[{member}]", keys, {member}) == "across"
    assert matrix_group(f"matrix/test_matrix.py::test_symbol[{member}]", keys, {member}) == "across"
    assert matrix_group("matrix/test_matrix.py::test_attach[kp-6.1-arm64]", keys) == "6.1-arm64"
    assert matrix_group("matrix/test_matrix.py::test_symbol[kp-6.1-x86_64]", keys) == "offline"
    assert matrix_group("tests/test_x.py::test_other[1-x86_64]", keys) is None
    assert matrix_group("matrix/test_matrix.py::test_load", keys) is None


# ---------------------------------------------------------------- inputs refused before booting


def usage_line(out: Outcome) -> str:
    """The one ERROR line of a usage error (exit 4), with no traceback and nothing booted or written."""
    assert out.returncode == 4, (out.stdout[-2000:], out.stderr[-2000:])
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert out.boots == [] and out.matrix is None
    return errors[0]


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_bpf_progs_missing_or_empty_is_a_usage_error(project: Project, where: str) -> None:
    progs = project.root / where
    if where == "empty":
        progs.mkdir()
    line = usage_line(project.run("--bpf-progs", str(progs)))
    if where == "missing":
        assert line == f"ERROR: {progs}: BPF programs directory does not exist"
    else:
        assert line == (
            f"ERROR: {progs}: no *.bpf.c or *.bpf.o files, no binaries embedding BPF objects, and no "
            "per-arch directory (x86_64, arm64, amd64, aarch64) with any"
        )


SIDECAR_ERRORS = [
    ("good.yaml", "description: x\nprogramz:\n  tp_openat: {}\n", "good.yaml:2: unknown key 'programz'"),
    ("good.yaml", "programs:\n  tp_openat: {}\n  kp_unlnk:\n    expect: [{check: load}]\n",
     "good.yaml:3: program 'kp_unlnk' is not in object 'good' (its programs: kp_unlink, tp_openat)"),
    ("good.yaml", "programs:\n  nope: {trigger: \"true\"}\n", "good.yaml:2: program 'nope' is not in object"),
    ("orphan.yaml", "trigger: \"true\"\n",
     "orphan.yaml: a sidecar without its object: no orphan.bpf.c or orphan.bpf.o beside it"),
]


@pytest.mark.parametrize(
    ("name", "text", "message"), SIDECAR_ERRORS, ids=["key", "expect", "trigger", "orphan"]
)
def test_sidecar_errors_are_one_usage_line_naming_the_file(
    project: Project, name: str, text: str, message: str
) -> None:
    (project.progs / name).write_text(text)
    line = usage_line(project.run())
    assert line.startswith("ERROR: ") and str(project.progs / message.split(":", 1)[0]) in line, line
    assert message in line, line


def test_a_good_sidecar_passes_the_check(project: Project) -> None:
    (project.progs / "good.yml").write_text(
        "programs:\n"
        "  kp_unlink:\n    expect: [{check: load, kernel: \"6.1\", reason: known}]\n"
        "  tp_openat:\n    expect: [{check: load, kernel: \"6.1\", reason: known}]\n"
    )
    project.acts = {"6.1": ["reject"]}
    out = project.run("-k", "test_load")
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 xfailed" in out.summary()


@pytest.mark.parametrize("option", ["--matrix-json", "--matrix-markdown", "--matrix-html"])
@pytest.mark.parametrize("fault", ["directory", "parent-is-a-file", "read-only"])
def test_report_paths_that_cannot_be_written_are_refused_before_booting(
    project: Project, option: str, fault: str
) -> None:
    if fault == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes to a read-only directory")
    if fault == "directory":
        target = project.root / "reports"
        target.mkdir()
        why = "is a directory"
    elif fault == "parent-is-a-file":
        (project.root / "afile").write_text("")
        target = project.root / "afile" / "sub" / "report"
        why = f"{project.root / 'afile'} is not a directory"
    else:
        locked = project.root / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "report"
        why = f"directory {locked} is not writable"
    line = usage_line(project.run(option, str(target)))
    assert line == f"ERROR: {option} {target}: {why}"


ENOSPC_PLUGIN = """\
import errno, os
from pathlib import Path
import harness.report.reporter as reporter

_write = reporter.atomic_write

def atomic_write(path, data):
    if Path(path).name == os.environ["ENOSPC_FOR"]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    _write(path, data)

reporter.atomic_write = atomic_write
"""


def test_a_report_that_cannot_be_written_keeps_its_previous_file_and_the_others_are_written(
    project: Project,
) -> None:
    first = project.run()
    assert first.returncode == 0, first.stdout[-3000:]
    before = project.out_json.read_bytes()
    plugin_dir = project.root / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "enospc_on_write.py").write_text(ENOSPC_PLUGIN)
    md, html = project.root / "out" / "matrix.md", project.root / "out" / "matrix.html"
    project.acts = {"6.1": ["reject"]}  # this run's matrix differs from the previous one
    out = project.run(
        "-p", "enospc_on_write", "--matrix-markdown", str(md), "--matrix-html", str(html), keep_json=True,
        env={
            "ENOSPC_FOR": "matrix.json",
            "PYTHONPATH": os.pathsep.join(
                [str(plugin_dir), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    assert out.returncode == 6, (out.stdout[-3000:], out.stderr[-2000:])
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    error = f"ERROR: --matrix-json {project.out_json} not written: No space left on device"
    assert lines.count(error) == 1, out.stdout[-3000:]
    table = next(i for i, ln in enumerate(lines) if "eBPF kernel compatibility matrix" in ln)
    assert table < lines.index(error)
    assert project.out_json.read_bytes() == before
    assert md.is_file() and html.is_file() and "kp_unlink" in md.read_text()
    assert f"matrix written to {md}" in out.stdout
    assert not [p for p in project.out_json.parent.iterdir() if p.name.endswith(".tmp")]
