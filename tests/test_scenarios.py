"""Tests for checks.scenarios (planning, results) and the guest's uprobe_update handler on a fake libbpf."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from tools import needs

from harness.checks.guest import GuestContext
from harness.checks.scenarios import check_scenarios, describe_offset, plan_scenarios, update_name
from harness.checks.uprobe import build_user_samples, load_elf_functions
from harness.kernels.config import ARCHES
from harness.programs.inventory import BPFObject
from harness.report.results import Check, Outcome, Probe

X86 = ARCHES["x86_64"]
CTX = GuestContext("6.1", "x86_64")
GUEST_SCENARIOS = Path(__file__).parent.parent / "harness" / "vm" / "guest" / "scenarios.py"

LIB = """\
// build: libx.so -O2 -shared -fPIC
// build: libx.v2.so -O2 -shared -fPIC -DV2
#ifdef V2
__attribute__((noinline, used)) int pad(int x) { for (int i = 0; i < 9; i++) x = x * 31 + i; return x; }
#endif
__attribute__((noinline)) int work(int x) { return x * 7 + 3; }
int run(int n) { int s = 0; for (int i = 0; i < n; i++) s += work(i); return s; }
"""
APP = """\
// build: app -O2 -L{out} -lx -Wl,-rpath,/mnt/user
int run(int n);
int main(void) { return run(3) == 0; }
"""


def probe(program: str, target: str, obj: str = "upd") -> Probe:
    return Probe(obj, program, f"uprobe/{target}", "uprobe", target)


def test_update_name() -> None:
    assert update_name("libx.so") == "libx.v2.so"
    assert update_name("app") is None


@needs("gcc")
def test_plan_scenarios_builds_ships_and_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPF_MATRIX_CACHE", str(tmp_path / "cache"))
    progs = tmp_path / "progs"
    (progs / "user").mkdir(parents=True)
    (progs / "user" / "libx.c").write_text(LIB)
    (progs / "user" / "app.c").write_text(APP)
    (progs / "upd.yaml").write_text('trigger: ["/mnt/user/app"]\n')
    probes = (
        probe("work", "/mnt/user/libx.so:work"),
        probe("in_app", "/mnt/user/app:main"),  # not a library: no update to run
        probe("no_trigger", "/mnt/user/libx.so:run", obj="quiet"),
    )
    objects = [
        BPFObject(tmp_path / "upd.bpf.o", "upd", probes[:2]),
        BPFObject(tmp_path / "quiet.bpf.o", "quiet", probes[2:]),
    ]
    (progs / "quiet.yaml").write_text("description: no trigger\n")
    share = tmp_path / "share"
    share.mkdir()
    samples = build_user_samples(progs, X86, tmp_path / "cache")
    plan = plan_scenarios(share, objects, progs, samples)
    assert sorted(p.name for p in (share / "user").iterdir()) == ["app", "libx.so", "libx.v2.so"]
    v1 = load_elf_functions(share / "user" / "libx.so").named("work")[0].offset
    v2 = load_elf_functions(share / "user" / "libx.v2.so").named("work")[0].offset
    assert v1 != v2
    pad = load_elf_functions(share / "user" / "libx.v2.so").at_offset(v1)
    assert pad is not None
    assert len(plan) == 1
    (scenario,) = plan
    assert scenario == {
        "kind": "uprobe_update",
        "object": "upd",
        "program": "work",
        "path": "objs/upd.bpf.o",
        "library": "/mnt/user/libx.so",
        "function": "work",
        "v1": "user/libx.so",
        "v2": "user/libx.v2.so",
        "v1_offset": v1,
        "v2_offset": v2,
        "stale": scenario["stale"],
        "trigger": ["/mnt/user/app"],
        "modes": ["overwrite", "rename"],
    }
    assert f"`{pad.name}`" in scenario["stale"]
    with (share / "user" / "libx.so").open("rb") as fh:
        plt = next(s for s in ELFFile(fh).iter_sections() if s.name == ".plt")
    assert describe_offset(share / "user" / "libx.so", int(plt["sh_offset"])) == "in `.plt`, no function"
    json.dumps(plan)  # goes into plan.json


def test_plan_scenarios_without_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPF_MATRIX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "progs").mkdir()
    assert plan_scenarios(tmp_path, [], tmp_path / "progs", {}) == []
    assert not (tmp_path / "user").exists()


# Recorded from a 6.1 x86_64 guest (trimmed): both replace modes go quiet, re-attach fires again.
RECORDED = {
    "kind": "uprobe_update",
    "object": "uprobe_libupdate",
    "program": "demo_work",
    "plan": {"v1_offset": 0x1110, "v2_offset": 0x1310, "stale": "the start of `demo_pad_1`",
             "library": "/mnt/user/libdemo.so"},
    "modes": {
        "overwrite": {"mode": "overwrite", "v1": 4, "after_update": 0, "after_reattach": 4,
                      "inode_before": 5079173, "inode_after": 5079173},
        "rename": {"mode": "rename", "v1": 4, "after_update": 0, "after_reattach": 4,
                   "inode_before": 5079205, "inode_after": 5079237},
    },
}
LIBPROBE = probe("demo_work", "/mnt/user/libdemo.so:demo_work", obj="uprobe_libupdate")


def with_modes(**changes: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(json.dumps(RECORDED))
    for mode, values in changes.items():
        record["modes"][mode].update(values)
    return record


def test_check_scenarios_quiet_after_update() -> None:
    (res,) = check_scenarios([LIBPROBE], [RECORDED], CTX)
    assert (res.check, res.outcome, res.kernel, res.arch) == (Check.FIRE, Outcome.FAIL, "6.1", "x86_64")
    assert res.reason == (
        "quiet after the library update (cp over it, renamed over it; offset 0x1110 stale, now the start "
        "of `demo_pad_1` in v2); fires again after re-attach at 0x1310"
    )
    assert res.details["modes"]["rename"]["inode_after"] == 5079237


def test_check_scenarios_one_mode_kept_firing() -> None:
    (res,) = check_scenarios([LIBPROBE], [with_modes(overwrite={"after_update": 2})], CTX)
    assert res.outcome == Outcome.FAIL
    assert "quiet after the library update (renamed over it;" in res.reason
    assert "; cp over it: fired 2 times at the old offset; fires again" in res.reason


def test_check_scenarios_kept_firing_passes_only_where_the_function_stayed() -> None:
    record = with_modes(overwrite={"after_update": 4}, rename={"after_update": 4})
    (res,) = check_scenarios([LIBPROBE], [record], CTX)
    assert res.outcome == Outcome.FAIL, "fired at the old offset, now another function's start"
    record["plan"].update(function="demo_work", stale="the start of `demo_work`", v2_offset=0x1110)
    (res,) = check_scenarios([LIBPROBE], [record], CTX)
    assert res.outcome == Outcome.PASS
    assert res.reason.startswith("kept firing after the library update (`demo_work` still at 0x1110)")


def test_check_scenarios_stale_probe_crashed_the_program() -> None:
    # Recorded on 6.1 arm64: v1's offset is PLT0 in v2; the kernel ran v1's copied instruction there.
    crashed = {"after_update": 1, "runs": [{"ok": True}, {"ok": False, "returncode": -11}, {"ok": True}]}
    record = with_modes(overwrite=crashed)
    record["plan"].update(v1_offset=0x5A0, v2_offset=0x8E0, stale="in `.plt`, no function")
    (res,) = check_scenarios([LIBPROBE], [record], CTX)
    assert res.outcome == Outcome.FAIL
    assert res.reason == (
        "quiet after the library update (renamed over it; offset 0x5a0 stale, now in `.plt`, no function "
        "in v2); "
        "cp over it: fired once at the old offset and the program died of SIGSEGV; "
        "fires again after re-attach at 0x8e0"
    )


def test_check_scenarios_quiet_after_reattach() -> None:
    (res,) = check_scenarios([LIBPROBE], [with_modes(rename={"after_reattach": 0})], CTX)
    assert res.outcome == Outcome.FAIL
    assert res.reason.endswith("still quiet after re-attach at 0x1310 (rename)")


def test_check_scenarios_never_fired_and_errors() -> None:
    (res,) = check_scenarios([LIBPROBE], [with_modes(overwrite={"v1": 0})], CTX)
    assert res.outcome == Outcome.FAIL and res.reason.startswith("never fired at the v1 offset")
    failed = with_modes(rename={"error": "attach at 0x1110: Invalid argument"})
    (res,) = check_scenarios([LIBPROBE], [failed], CTX)
    assert res.outcome == Outcome.ERROR and "rename: attach at 0x1110: Invalid argument" in res.reason
    crashed = {"kind": "uprobe_update", "object": "uprobe_libupdate", "program": "demo_work",
               "error": "scenario crashed: KeyError('v2')"}
    (res,) = check_scenarios([LIBPROBE], [crashed], CTX)
    assert res.outcome == Outcome.ERROR and "KeyError" in res.reason


def test_check_scenarios_ignores_unknown_kinds_and_probes() -> None:
    other = dict(RECORDED, program="elsewhere")
    assert check_scenarios([LIBPROBE], [other, {"kind": "nope", "error": "unknown scenario kind"}], CTX) == []


# --- the guest handler, against a fake libbpf that behaves like the kernel's uprobes -------------------

TRIGGER = """\
import os, sys
lib = os.path.join(os.environ["LD_LIBRARY_PATH"], "libdemo.so")
data = open(lib, "rb").read()
with open(sys.argv[1], "a") as fh:
    fh.write(f"{os.stat(lib).st_ino} {data.index(b'WORK')}\\n")
"""


class FakeAttach:
    """bpf_program__attach_uprobe: a probe on (inode, offset) of the file, as the kernel keeps it."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.restype: object = None
        self.argtypes: object = None

    def __call__(self, prog: int, retprobe: bool, pid: int, path: bytes, offset: int) -> int:
        import os

        self.kernel.next_link += 1
        self.kernel.links[self.kernel.next_link] = (os.stat(path).st_ino, offset)
        return self.kernel.next_link


class FakeKernel:
    """The libbpf calls the handler makes; run_cnt counts the trigger's calls that hit a live probe."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.seen = 0
        self.run_cnt = 0
        self.links: dict[int, tuple[int, int]] = {}
        self.next_link = 100
        self.bpf_program__attach_uprobe = FakeAttach(self)

    def bpf_object__open_file(self, path: bytes, opts: object) -> int:
        return 1

    def bpf_program__set_autoload(self, prog: int, on: bool) -> int:
        return 0

    def bpf_object__load(self, obj: int) -> int:
        return 0

    def bpf_object__close(self, obj: int) -> None:
        pass

    def bpf_program__fd(self, prog: int) -> int:
        return 3

    def bpf_link__destroy(self, link: int) -> int:
        del self.links[link]
        return 0

    def count(self) -> int:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        for line in lines[self.seen:]:
            ino, where = (int(x) for x in line.split())
            if (ino, where) in self.links.values():
                self.run_cnt += 1
        self.seen = len(lines)
        return self.run_cnt


class FakeLibbpf:
    def __init__(self, log: Path) -> None:
        self.lib = FakeKernel(log)

    def take_log(self) -> str:
        return ""

    def capture(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def error_of(self, ptr: int | None) -> int:
        return 0 if ptr else 22

    def programs(self, obj: int) -> list[int]:
        return [7]

    def prog_name(self, prog: int) -> str:
        return "demo_work"

    def prog_info(self, fd: int) -> dict[str, object]:
        return {"run_cnt": self.lib.count()}


@pytest.fixture
def guest_scenarios(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # As in the guest: a module without its package, importing the protocol beside it by its file name.
    monkeypatch.setitem(sys.modules, "protocol", importlib.import_module("harness.vm.guest.protocol"))
    spec = importlib.util.spec_from_file_location("guest_scenarios", GUEST_SCENARIOS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guest_uprobe_update_goes_quiet_then_fires_again(tmp_path: Path, guest_scenarios: ModuleType) -> None:
    share = tmp_path / "share"
    (share / "user").mkdir(parents=True)
    (share / "objs").mkdir()
    (share / "objs" / "upd.bpf.o").write_bytes(b"\0")
    (share / "user" / "libdemo.so").write_bytes(b"." * 16 + b"WORK" + b"." * 40)
    (share / "user" / "libdemo.v2.so").write_bytes(b"." * 48 + b"WORK" + b"." * 8)
    (share / "trigger.py").write_text(TRIGGER)
    log = tmp_path / "runs.log"
    scenario = {
        "kind": "uprobe_update", "object": "upd", "program": "demo_work", "path": "objs/upd.bpf.o",
        "library": "/mnt/user/libdemo.so", "v1": "user/libdemo.so", "v2": "user/libdemo.v2.so",
        "v1_offset": 16, "v2_offset": 48, "stale": "x",
        "trigger": [sys.executable, str(share / "trigger.py"), str(log)],
        "modes": ["overwrite", "rename"],
    }
    lb = FakeLibbpf(log)
    record = guest_scenarios.run_uprobe_update(lb, scenario, str(share))
    assert record["plan"] == {
        "v1_offset": 16, "v2_offset": 48, "stale": "x", "library": "/mnt/user/libdemo.so",
    }
    over, ren = record["modes"]["overwrite"], record["modes"]["rename"]
    assert over["inode_before"] == over["inode_after"]  # cp writes over the same inode
    assert ren["inode_before"] != ren["inode_after"]  # dpkg renames a new file over it
    for mode in (over, ren):
        assert "error" not in mode, mode
        assert [r["ok"] for r in mode["runs"]] == [True, True, True]
        assert (mode["v1"], mode["after_update"], mode["after_reattach"]) == (1, 0, 1)
    assert lb.lib.links == {}  # every link destroyed
    # The private copies stay apart from the library the plain run uses.
    assert (share / "user" / "libdemo.so").read_bytes().index(b"WORK") == 16
    (res,) = check_scenarios([probe("demo_work", "/mnt/user/libdemo.so:demo_work")], [record], CTX)
    assert res.outcome == Outcome.FAIL and "fires again after re-attach at 0x30" in res.reason


def test_guest_uprobe_update_reports_attach_failure(tmp_path: Path, guest_scenarios: ModuleType) -> None:
    share = tmp_path / "share"
    (share / "user").mkdir(parents=True)
    (share / "objs").mkdir()
    (share / "objs" / "upd.bpf.o").write_bytes(b"\0")
    (share / "user" / "libdemo.so").write_bytes(b"WORK")
    (share / "user" / "libdemo.v2.so").write_bytes(b"WORK")
    lb = FakeLibbpf(tmp_path / "runs.log")
    lb.lib.bpf_program__attach_uprobe = lambda *a: 0  # type: ignore[assignment,misc]
    scenario = {"object": "upd", "program": "demo_work", "path": "objs/upd.bpf.o",
                "library": "/mnt/user/libdemo.so", "v1": "user/libdemo.so", "v2": "user/libdemo.v2.so",
                "v1_offset": 0, "v2_offset": 0, "trigger": ["true"], "modes": ["rename"]}
    record = guest_scenarios.run_uprobe_update(lb, scenario, str(share))
    assert record["modes"]["rename"]["error"].startswith("attach at 0x0: ")
