"""Tests of the guest agent on the host: triggers, its JSON files, version parsing, plan handling.

Nothing here loads BPF or collects facts: those read the kernel and run only inside guests.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tools import require

import harness.vm.guest.agent as agent

AGENT = Path(agent.__file__)
HOST_BTF = Path("/sys/kernel/btf/vmlinux")
BPFTOOL = shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists() else None)


# ---------------------------------------------------------------- the module itself


def test_importable_without_its_package(tmp_path: Path) -> None:
    # In the guest the agent is a file in /mnt beside its protocol, run by the guest's python3 without
    # site-packages.
    shutil.copy2(AGENT, tmp_path / "agent.py")
    shutil.copy2(AGENT.with_name("protocol.py"), tmp_path / "protocol.py")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import agent; print(agent.TRIGGER_TIMEOUT)"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(agent.TRIGGER_TIMEOUT)


def test_imports_only_the_standard_library() -> None:
    tree = ast.parse(AGENT.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    # scenarios, workload, ownloader, protocol and version (harness/kernels/version.py) are copied beside
    # it into the share.
    beside = {"__future__", "scenarios", "ownloader", "protocol", "version", "workload"}
    foreign = modules - set(sys.stdlib_module_names) - beside
    assert foreign == set()


def test_imports_little_at_startup(tmp_path: Path) -> None:
    # Under emulation each module read over 9p costs: ctypes.util alone (it runs ldconfig) took 0.6 s.
    shutil.copy2(AGENT, tmp_path / "agent.py")
    shutil.copy2(AGENT.with_name("protocol.py"), tmp_path / "protocol.py")
    heavy = ["ctypes.util", "gzip", "socket", "tempfile", "traceback", "platform", "shutil"]
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import agent; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["agent.py", "protocol.py", "scenarios.py", "workload.py", "ownloader.py"])
def test_parses_as_the_oldest_guest_python(name: str) -> None:
    # bullseye root filesystems have Python 3.9.
    ast.parse(AGENT.with_name(name).read_text(), feature_version=(3, 9))


def test_protocol_imports_on_the_oldest_guest_python(tmp_path: Path) -> None:
    # Python 3.9 evaluates the aliases and TypedDict bases at import: no `X | Y` outside annotations.
    python = shutil.which("python3.9")
    usable = python is not None and subprocess.run(
        [python, "-c", "pass"], capture_output=True, timeout=60, check=False
    ).returncode == 0
    if python is None or not usable:
        pytest.skip("no python3.9 on this host")
    shutil.copy2(AGENT.with_name("protocol.py"), tmp_path / "protocol.py")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import protocol; " \
        "print(sorted(protocol.ObjectRecord.__required_keys__))"
    proc = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['object']"


# ---------------------------------------------------------------- run_trigger


def test_trigger_argv_list_runs_in_the_share(tmp_path: Path) -> None:
    code = "import pathlib, sys; pathlib.Path('made').write_text(sys.argv[1]); print('hello', sys.argv[2])"
    trigger = [sys.executable, "-c", code, "content", 7]
    result = agent.run_trigger(trigger, str(tmp_path))
    assert result["ok"] is True and result["returncode"] == 0
    assert result["trigger"] == trigger
    assert (tmp_path / "made").read_text() == "content"
    assert result["output"] == "hello 7\n"
    assert isinstance(result["seconds"], float) and result["seconds"] >= 0


def test_trigger_argv_is_not_a_shell(tmp_path: Path) -> None:
    result = agent.run_trigger([sys.executable, "-c", "import sys; print(sys.argv[1:])", "$HOME", ";", "ls"],
                               str(tmp_path))
    assert result["output"] == "['$HOME', ';', 'ls']\n"


def test_trigger_shell_string(tmp_path: Path) -> None:
    result = agent.run_trigger("echo out; echo err >&2; touch shellmade; exit 4", str(tmp_path))
    assert result["ok"] is False and result["returncode"] == 4
    assert "out\n" in result["output"] and "err\n" in result["output"]
    assert (tmp_path / "shellmade").exists()
    assert result["trigger"] == "echo out; echo err >&2; touch shellmade; exit 4"


def test_trigger_failing_argv(tmp_path: Path) -> None:
    result = agent.run_trigger([sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path))
    assert (result["ok"], result["returncode"]) == (False, 3)


def test_trigger_missing_program_is_reported_not_raised(tmp_path: Path) -> None:
    result = agent.run_trigger([str(tmp_path / "no-such-program")], str(tmp_path))
    assert result["ok"] is False
    assert "No such file or directory" in str(result["error"])
    assert "returncode" not in result


def test_trigger_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "TRIGGER_TIMEOUT", 0.3)
    result = agent.run_trigger([sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path))
    assert result["ok"] is False
    assert "timed out after 0.3 seconds" in str(result["error"])
    assert float(result["seconds"]) < 30


def test_trigger_output_keeps_the_end(tmp_path: Path) -> None:
    result = agent.run_trigger([sys.executable, "-c", "print('a' * 5000 + 'END')"], str(tmp_path))
    output = str(result["output"])
    assert len(output) == 2000 and output.endswith("END\n")


# ---------------------------------------------------------------- write_json


def test_write_json_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "done.json"
    agent.write_json(str(path), {"ok": False})
    agent.write_json(str(path), {"ok": True, "n": [1, 2]})
    assert json.loads(path.read_text()) == {"ok": True, "n": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json"]


def test_write_json_failure_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "objects.json"
    agent.write_json(str(path), [{"object": "a"}])
    # Not serializable half-way through: json.dump has already written part of the document.
    with pytest.raises(TypeError):
        agent.write_json(str(path), [{"object": "b"}, {"bad": object()}])
    assert json.loads(path.read_text()) == [{"object": "a"}]


# ---------------------------------------------------------------- kernel_version


@pytest.mark.parametrize(
    "release,expected",
    [
        ("6.1.0-27-amd64", (6, 1)),
        ("5.10.0-32-arm64", (5, 10)),
        ("6.12.9+bpo-amd64", (6, 12)),
        ("6.8.0-rc1", (6, 8)),
        ("7.0.0-rc3-cloud-amd64", (7, 0)),
        ("6.12-rc3", (6, 12)),
        ("4.19.0", (4, 19)),
        ("garbage", (0, 0)),
        ("6", (6, 0)),
        ("sid", (0, 0)),
        ("", (0, 0)),
    ],
)
def test_kernel_version(release: str, expected: tuple[int, int]) -> None:
    assert agent.kernel_version(release) == expected


def test_kernel_version_reads_the_version_module_beside_it_in_the_share(tmp_path: Path) -> None:
    shutil.copy2(AGENT, tmp_path / "agent.py")
    shutil.copy2(AGENT.parent / "protocol.py", tmp_path / "protocol.py")  # always beside it in the share
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import agent; "
            "print(agent.kernel_version('6.12-rc3'))")
    run = [sys.executable, "-I", "-S", "-c", code]
    alone = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() == "(0, 0)"  # no version.py: every feature gate stays closed
    shutil.copy2(AGENT.parents[2] / "kernels" / "version.py", tmp_path / "version.py")
    beside = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert beside.returncode == 0, beside.stderr
    assert beside.stdout.strip() == "(6, 12)"


def test_kernel_version_compares_for_feature_gates() -> None:
    # link_missed reads a kprobe's missed count only from 6.7 (perf-event links) and 6.9 (multi).
    assert agent.kernel_version("6.10.0-1-amd64") >= (6, 9)
    assert agent.kernel_version("6.1.0-27-amd64") < (6, 7)


@pytest.mark.parametrize(("pe_type", "missed"), [(1, None), (2, None), (3, 7), (4, 7), (5, None)])
def test_link_missed_reads_kprobes_and_kretprobes_only(pe_type: int, missed: int | None) -> None:
    # struct bpf_link_info of a perf-event link: type, id, prog_id, then at 16 the perf event's type
    # (enum bpf_perf_event_type) and at 48 a kprobe's missed count; a uprobe's union has no such field.
    import struct

    info = struct.pack("=IIIIII", agent.LINK_TYPE_PERF_EVENT, 1, 2, 0, pe_type, 0) + bytes(24)
    info += struct.pack("=Q", 7) + bytes(256 - 56)

    class Lib:
        def bpf_obj_get_info_by_fd(self, fd: int, buf: Any, size: Any) -> int:
            ctypes.memmove(buf, info, len(info))
            return 0

    lb = agent.Libbpf.__new__(agent.Libbpf)
    lb.lib = Lib()  # type: ignore[assignment]
    assert lb.link_missed(3, (6, 7)) == missed
    assert lb.link_missed(3, (6, 6)) is None  # the kernel reports no missed count before 6.7


# ---------------------------------------------------------------- main


def test_main_without_a_plan_reports_failure_in_done_json(tmp_path: Path) -> None:
    assert agent.main(["agent.py", str(tmp_path)]) == 0
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["ok"] is False
    assert done["error"].startswith("FileNotFoundError: ")
    assert "plan.json" in done["error"]
    assert "Traceback" in done["traceback"]
    assert done["release"] and done["machine"]
    assert not (tmp_path / "objects.json").exists()


def test_main_with_an_empty_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts: list[tuple[str, str]] = []
    monkeypatch.setattr(agent, "mount_fs", lambda fstype, target: mounts.append((fstype, target)))
    reads: list[str] = []

    def fake_read(path: str) -> str | None:
        reads.append(path)
        return "lockdown,capability,bpf\n" if path == "/sys/kernel/security/lsm" else None

    monkeypatch.setattr(agent, "read_text", fake_read)

    def no_loader() -> Any:
        raise AssertionError("libbpf opened for a plan without objects")

    monkeypatch.setattr(agent, "Libbpf", no_loader)
    (tmp_path / "plan.json").write_text(json.dumps({"facts": False, "objects": []}))
    assert agent.main(["agent.py", str(tmp_path)]) == 0
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["ok"] is True
    assert done["lsm"] == "lockdown,capability,bpf"
    assert "facts" not in done and "libbpf" not in done
    assert mounts == []
    assert reads == ["/proc/uptime", "/sys/kernel/security/lsm"]  # uptime: when the agent started
    assert done["uptime_start"] is None  # the fake read gave nothing to parse
    assert not (tmp_path / "facts").exists() and not (tmp_path / "objects.json").exists()


def test_main_reports_a_missing_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "mount_fs", lambda fstype, target: None)
    monkeypatch.setattr(agent, "read_text", lambda path: "bpf" if path.endswith("/lsm") else None)
    monkeypatch.setattr(agent, "scratch_disk", lambda: None)
    monkeypatch.setattr(agent, "enable_stats", lambda: True)

    def no_libbpf() -> Any:
        raise RuntimeError("libbpf not found in the guest: libbpf.so.1")

    monkeypatch.setattr(agent, "Libbpf", no_libbpf)
    plan = {"facts": False, "objects": [{"name": "x", "path": "objs/x.bpf.o"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    agent.main(["agent.py", str(tmp_path)])
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["ok"] is True
    assert done["loader_error"] == "libbpf not found in the guest: libbpf.so.1"
    assert done["stats_enabled"] is True


# ---------------------------------------------------------------- struct bpf_prog_info


def test_prog_info_layout_matches_the_kernel_btf() -> None:
    require("bpftool")
    if not os.access(HOST_BTF, os.R_OK):
        pytest.skip(f"the host kernel has no readable {HOST_BTF}")
    proc = subprocess.run(
        [BPFTOOL, "btf", "dump", "file", str(HOST_BTF), "format", "raw"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    lines = iter(proc.stdout.splitlines())
    offsets: dict[str, int] = {}
    for line in lines:
        if "STRUCT 'bpf_prog_info' " in line:
            for member in lines:
                found = re.match(r"\s+'(\w+)' type_id=\d+ bits_offset=(\d+)", member)
                if not found:
                    break
                offsets[found[1]] = int(found[2]) // 8
            break
    assert offsets, "struct bpf_prog_info not in the host's BTF"
    for name, _ctype in agent.BpfProgInfo._fields_:
        if name not in offsets:
            continue  # a field newer than the host kernel
        assert getattr(agent.BpfProgInfo, name).offset == offsets[name], name
    assert "run_cnt" in offsets and "recursion_misses" in offsets


# ---------------------------------------------------------------- detaching in the background


class FakeLib:
    """bpf_link__destroy and bpf_object__close that record their calls, the first one held by a gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.gate = threading.Event()

    def bpf_link__destroy(self, link: int) -> int:
        self.gate.wait(10)
        self.calls.append(("destroy", link, threading.current_thread().name))
        return 0

    def bpf_object__close(self, obj: int) -> None:
        self.calls.append(("close", obj, threading.current_thread().name))


def fake_libbpf() -> Any:
    lb = agent.Libbpf.__new__(agent.Libbpf)  # no real libbpf: only what Detacher and the log use
    lb.lib = FakeLib()
    lb._log = {}
    lb._lock = threading.Lock()
    return lb


def test_detacher_detaches_in_the_background_and_wait_blocks_until_done() -> None:
    lb = fake_libbpf()
    detacher = agent.Detacher(lb)
    detacher.submit([11, 12], [1])
    assert lb.lib.calls == []  # held at the gate: submit did not wait
    waiter = threading.Thread(target=detacher.wait)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # wait() blocks while a detach is pending
    lb.lib.gate.set()
    waiter.join(10)
    assert not waiter.is_alive()
    # Links before their object, all in the detach thread.
    assert lb.lib.calls == [("destroy", 11, "detach"), ("destroy", 12, "detach"), ("close", 1, "detach")]
    assert detacher.wait() < 1.0  # nothing pending: returns at once


def test_detacher_wait_needs_the_links_gone_and_wait_all_the_objects_closed() -> None:
    lb = fake_libbpf()
    lb.lib.gate.set()
    closing = threading.Event()
    closed = threading.Event()

    def slow_close(obj: int) -> None:
        closing.set()
        closed.wait(10)

    lb.lib.bpf_object__close = slow_close
    detacher = agent.Detacher(lb)
    detacher.submit([11], [1])
    assert closing.wait(10)
    assert detacher.wait() < 5  # the link is gone: a batch may fire while the object closes
    waiter = threading.Thread(target=detacher.wait_all)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # the close is still running
    closed.set()
    waiter.join(10)
    assert not waiter.is_alive()
    assert detacher.seconds["close"] > 0.1 and detacher.seconds["unlink"] < detacher.seconds["close"]


def test_detacher_without_work_starts_no_thread() -> None:
    detacher = agent.Detacher(fake_libbpf())
    detacher.submit([], [])
    assert detacher.thread is None and detacher.wait() < 1.0


def test_libbpf_log_is_kept_per_thread() -> None:
    # A background detach may make libbpf print: that must not land in the log of the load running meanwhile.
    lb = fake_libbpf()
    lb.log("prog 'a': loaded\n")
    other = threading.Thread(target=lb.log, args=("link detached\n",))
    other.start()
    other.join()
    assert lb.take_log() == "prog 'a': loaded\n"
    assert lb.take_log() == ""


# ---------------------------------------------------------------- run_object with a fake libbpf


class FakeObjectLib:
    """libbpf's object calls over one fake object file: programs in order, some rejected by the kernel.

    bpf_object__load loads the programs left to autoload in order and stops at the first rejected one,
    printing what libbpf prints; attach always works.
    """

    def __init__(self, programs: list[str], rejected: dict[str, int], lb: Any) -> None:
        self.order = programs
        self.rejected = rejected
        self.lb = lb
        self.objects: dict[int, dict[str, bool]] = {}  # object -> program -> autoload
        self.loads: list[list[str]] = []
        self.closed: list[int] = []

    def bpf_object__open_file(self, path: bytes, opts: Any) -> int:
        obj = 100 * (len(self.objects) + 1)
        self.objects[obj] = {name: True for name in self.order}
        return obj

    def bpf_program__set_autoload(self, prog: int, on: bool) -> int:
        obj, index = divmod(prog, 100)
        self.objects[obj * 100][self.order[index - 1]] = on
        return 0

    def bpf_object__load(self, obj: int) -> int:
        wanted = [n for n, on in self.objects[obj].items() if on]
        self.loads.append(wanted)
        for name in wanted:
            self.lb.log(f"libbpf: prog '{name}': relo #0: matched\n")
        for name in wanted:
            if name in self.rejected:
                self.lb.log(f"libbpf: prog '{name}': BPF program load failed: -{self.rejected[name]}\n")
                self.lb.log(f"libbpf: prog '{name}': failed to load: -{self.rejected[name]}\n")
                return -self.rejected[name]
        return 0

    def bpf_object__close(self, obj: int) -> None:
        self.closed.append(obj)

    def bpf_program__attach(self, prog: int) -> int:
        return prog + 5000

    def bpf_program__fd(self, prog: int) -> int:
        return prog

    def bpf_link__fd(self, link: int) -> int:
        return link

    def bpf_link__destroy(self, link: int) -> int:
        return 0


def fake_object_loader(programs: list[str], rejected: dict[str, int]) -> Any:
    lb = fake_libbpf()
    lib = FakeObjectLib(programs, rejected, lb)
    lb.lib = lib
    lb.error_of = lambda ptr: 0
    lb.programs = lambda obj: [obj + i + 1 for i in range(len(programs))]
    lb.prog_name = lambda prog: programs[prog % 100 - 1]
    lb.prog_info = lambda fd: {"run_cnt": 1}
    lb.link_missed = lambda fd, kernel: None
    return lb, lib


def run_fake_object(tmp_path: Path, lb: Any) -> dict[str, Any]:
    # Each program's trigger is `true`: the default workload is for guests (it may modprobe a disk).
    spec = {"name": "obj", "path": "obj.bpf.o", "triggers": {n: "true" for n in lb.lib.order}}
    detacher = agent.Detacher(lb)
    result = agent.run_object(lb, spec, str(tmp_path), detacher)
    detacher.wait()
    return result


def test_run_object_loads_the_whole_object_once_when_all_load(tmp_path: Path) -> None:
    lb, lib = fake_object_loader(["a", "b", "c"], {})
    result = run_fake_object(tmp_path, lb)
    assert lib.loads == [["a", "b", "c"]]
    assert all(result["programs"][n]["load"]["ok"] for n in "abc")
    assert all(result["programs"][n]["fire"]["run_cnt"] == 1 for n in "abc")
    assert sorted(lib.closed) == [100]  # closed by the detacher


def test_run_object_loads_once_more_per_rejected_program(tmp_path: Path) -> None:
    # Four programs, two rejected: 3 loads (all; without b; without b and d), not 1 + 4.
    lb, lib = fake_object_loader(["a", "b", "c", "d"], {"b": 13, "d": 22})
    result = run_fake_object(tmp_path, lb)
    assert lib.loads == [["a", "b", "c", "d"], ["a", "c", "d"], ["a", "c"]]
    progs = result["programs"]
    assert progs["b"]["load"]["ok"] is False and progs["b"]["load"]["errno"] == 13
    assert progs["d"]["load"]["ok"] is False and progs["d"]["load"]["errno"] == 22
    # Each rejected program keeps the log of the load that named it, for its verifier tail.
    assert "prog 'b': failed to load" in progs["b"]["load"]["log"]
    assert "prog 'd': failed to load" in progs["d"]["load"]["log"]
    assert progs["a"]["load"]["ok"] and progs["c"]["load"]["ok"]
    assert "prog 'a': relo #0" in progs["a"]["load"]["log"]
    assert set(n for n, p in progs.items() if "fire" in p) == {"a", "c"}
    assert sorted(lib.closed) == [100, 200, 300]  # the failed loads closed at once, the good one detached


def test_run_object_falls_back_to_one_load_per_program_when_libbpf_names_none(tmp_path: Path) -> None:
    lb, lib = fake_object_loader(["a", "b", "c"], {"b": 22})
    load = lib.bpf_object__load

    def unnamed(obj: int) -> int:
        rc = load(obj)
        lb.take_log()  # an old libbpf that names no program
        return rc

    lib.bpf_object__load = unnamed  # type: ignore[method-assign]
    result = run_fake_object(tmp_path, lb)
    assert lib.loads == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert [result["programs"][n]["load"]["ok"] for n in "abc"] == [True, False, True]


# ---------------------------------------------------------------- batches of objects


def batch_loader(runs: dict[int, list[int]]) -> tuple[Any, Any, list[str]]:
    """A fake libbpf over objects of one program "p" each; ``runs`` gives object n's run_cnt readings
    in order (the last repeats). Records the calls that matter, in order."""
    lb, lib = fake_object_loader(["p"], {})
    calls: list[str] = []
    reads: dict[int, int] = {}

    def prog_info(fd: int) -> dict[str, int]:
        n = fd // 100
        seen = runs.get(n, [1])
        value = seen[min(reads.get(n, 0), len(seen) - 1)]
        reads[n] = reads.get(n, 0) + 1
        calls.append(f"count {n}")
        return {"run_cnt": value, "run_time_ns": 10 * value, "recursion_misses": 0}

    attach = lib.bpf_program__attach
    destroy = lib.bpf_link__destroy

    def attached(prog: int) -> int:
        calls.append(f"attach {prog // 100}")
        return int(attach(prog))

    def destroyed(link: int) -> int:
        calls.append(f"destroy {(link - 5000) // 100}")
        return int(destroy(link))

    lb.prog_info = prog_info
    lib.bpf_program__attach = attached
    lib.bpf_link__destroy = destroyed
    return lb, lib, calls


def batch_specs(count: int) -> list[dict[str, Any]]:
    return [{"name": f"o{i}", "path": "o.bpf.o", "triggers": {}} for i in range(1, count + 1)]


@pytest.fixture
def triggers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    ran: list[Any] = []

    def fake_trigger(trigger: Any, share: str) -> dict[str, Any]:
        ran.append(trigger)
        return {"trigger": "default", "ok": True, "seconds": 0.0}

    monkeypatch.setattr(agent, "run_trigger", fake_trigger)
    return ran


def test_a_batch_is_attached_together_and_fired_by_one_trigger_run(
    tmp_path: Path, triggers: list[Any]
) -> None:
    lb, lib, calls = batch_loader({})
    detacher = agent.Detacher(lb)
    records = agent.run_batch(lb, batch_specs(3), str(tmp_path), detacher)
    detacher.wait()
    assert triggers == ["default"]  # once for the three objects
    assert calls[:3] == ["attach 1", "attach 2", "attach 3"]
    assert calls[3:6] == ["count 1", "count 2", "count 3"]
    assert [r["batch"] for r in records] == [["o2", "o3"], ["o1", "o3"], ["o1", "o2"]]
    assert all(r["programs"]["p"]["fire"]["run_cnt"] == 1 for r in records)
    assert not any(r["programs"]["p"]["fire"].get("alone") for r in records)
    assert agent.phase_totals(records)["trigger"] == records[0]["phases"]["trigger"]  # counted once
    assert sorted(lib.closed) == [100, 200, 300]


def test_an_object_that_missed_runs_in_its_batch_is_run_again_alone_from_a_fresh_load(
    tmp_path: Path, triggers: list[Any]
) -> None:
    # o2 misses runs in the batch; loaded afresh alone it runs 5 times: its record says so.
    lb, lib, calls = batch_loader({2: [2], 4: [5]})  # the fourth object opened is o2 again
    counted = lb.prog_info
    lb.prog_info = lambda fd: {**counted(fd), "recursion_misses": 1} if fd // 100 == 2 else counted(fd)
    detacher = agent.Detacher(lb)
    records = agent.run_batch(lb, batch_specs(3), str(tmp_path), detacher)
    detacher.wait()
    assert triggers == ["default", "default"]
    assert lib.loads == [["p"]] * 4
    # Every link of the batch is gone before o2's fresh load fires, and o2 alone is counted.
    tail = calls[calls.index("count 3") + 1:]
    assert sorted(tail[:4]) == ["attach 4", "destroy 1", "destroy 2", "destroy 3"]
    assert tail[4:] == ["count 4", "destroy 4"]  # the last by the detacher
    fire = records[1]["programs"]["p"]["fire"]
    assert fire["alone"] is True and fire["run_cnt"] == 5 and "recursion_misses" in fire
    assert fire["batch"] == {"run_cnt": 2, "run_time_ns": 20, "recursion_misses": 1}
    assert "alone" in records[1]["phases"] and "batch" not in records[1]
    first = records[0]["programs"]["p"]["fire"]
    assert first["run_cnt"] == 1 and "alone" not in first
    assert sorted(lib.closed) == [100, 200, 300, 400]


def test_runs_alone_wait_until_every_batch_is_done(tmp_path: Path, triggers: list[Any]) -> None:
    lb, lib, _ = batch_loader({})
    counted = lb.prog_info
    lb.prog_info = lambda fd: {**counted(fd), "kprobe_missed": 1} if fd // 100 == 1 else counted(fd)
    specs = batch_specs(2)
    detacher, again = agent.Detacher(lb), []
    records = agent.run_batch(lb, specs, str(tmp_path), detacher, again)
    assert triggers == ["default"] and again == [records[0]]
    agent.run_again(lb, again, specs, str(tmp_path), detacher)
    detacher.wait()
    assert triggers == ["default", "default"] and lib.loads == [["p"]] * 3
    assert records[0]["programs"]["p"]["fire"]["alone"] is True
    assert records[0]["programs"]["p"]["fire"]["batch"]["kprobe_missed"] == 1


def test_a_program_that_never_ran_in_a_batch_is_not_run_again(tmp_path: Path, triggers: list[Any]) -> None:
    # No miss: nothing held it off (its hook did not fire), and alone it would not fire either.
    lb, _, calls = batch_loader({2: [0]})
    records = agent.run_batch(lb, batch_specs(3), str(tmp_path), agent.Detacher(lb))
    assert triggers == ["default"] and calls.count("attach 2") == 1
    assert records[1]["programs"]["p"]["fire"]["run_cnt"] == 0


def test_a_lone_object_is_never_counted_twice(tmp_path: Path, triggers: list[Any]) -> None:
    lb, _, _ = batch_loader({1: [0]})
    counted = lb.prog_info
    lb.prog_info = lambda fd: {**counted(fd), "recursion_misses": 3}
    record = agent.run_object(lb, batch_specs(1)[0], str(tmp_path), agent.Detacher(lb))
    assert triggers == ["default"] and "batch" not in record
    assert record["programs"]["p"]["fire"]["run_cnt"] == 0 and "alone" not in record["programs"]["p"]["fire"]


def test_plan_batches_keeps_apart_what_asks_for_it() -> None:
    specs = batch_specs(5)
    specs[1]["isolate"] = "its sidecar asks for isolation"
    specs[2]["triggers"] = {"p": "true"}
    specs[3]["own_loader"] = {"command": "x"}
    specs += batch_specs(3)
    batches = agent.plan_batches(specs, 2)
    assert [[s["name"] for s in b] for b in batches] == [
        ["o2"], ["o3"], ["o4"], ["o1", "o5"], ["o1", "o2"], ["o3"]
    ]


# ---------------------------------------------------------------- the guest's userland


class _Fn:
    """A ctypes function stand-in: returns ``value`` and takes a restype."""

    def __init__(self, value: object) -> None:
        self.value = value
        self.restype: object = None

    def __call__(self) -> object:
        return self.value


def test_libbpf_version_from_its_string_else_major_minor_else_unknown() -> None:
    new = SimpleNamespace(libbpf_version_string=_Fn(b"v1.5"))
    assert agent.libbpf_version(new) == "1.5"  # type: ignore[arg-type]
    numbers = SimpleNamespace(libbpf_major_version=_Fn(1), libbpf_minor_version=_Fn(1))
    assert agent.libbpf_version(numbers) == "1.1"  # type: ignore[arg-type]
    assert agent.libbpf_version(SimpleNamespace()) == "unknown"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # bpftool 7.x: -j version is JSON.
        ('[ "$1" = -j ] && echo \'{"version":"7.5.0","libbpf_version":"1.5"}\'', "7.5.0"),
        # An old one prints text only.
        ('[ "$1" = --version ] && echo "/usr/sbin/bpftool v5.10.0"; exit 0', "5.10.0"),
        ("exit 1", ""),
    ],
)
def test_bpftool_version(tmp_path: Path, script: str, expected: str) -> None:
    tool = tmp_path / "bpftool"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)
    assert agent.bpftool_version((str(tmp_path / "none"), str(tool))) == expected
    assert agent.bpftool_version((str(tmp_path / "none"),)) == ""


def test_the_userland_is_reported_with_the_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "bpftool_version", lambda: "7.5.0")
    monkeypatch.setattr(agent, "os_release", lambda: "Debian GNU/Linux 13 (trixie)")
    lib = SimpleNamespace(libbpf_version_string=_Fn(b"1.5.0"))
    monkeypatch.setattr(agent, "open_libbpf", lambda: (lib, "libbpf.so.1"))
    done: dict[str, Any] = {}
    agent.report_userland(done)  # type: ignore[arg-type]
    assert done == {"os_release": "Debian GNU/Linux 13 (trixie)", "bpftool": "7.5.0", "libbpf": "1.5.0"}

    def missing() -> Any:
        raise RuntimeError("libbpf not found in the guest")

    monkeypatch.setattr(agent, "open_libbpf", missing)
    agent.report_userland(done)  # type: ignore[arg-type]
    assert done["libbpf"] == ""
# ---------------------------------------------------------------- the feature probe


def _fake_bpftool(tmp_path: Path, script: str) -> str:
    tool = tmp_path / "bpftool"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    return str(tool)


def test_feature_probe_writes_bpftools_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = tmp_path / "argv"
    tool = _fake_bpftool(tmp_path, f'echo "$@" > {argv}\necho \'{{"program_types": {{}}}}\'\n')
    monkeypatch.setattr(agent, "BPFTOOL_CANDIDATES", ("/nonexistent/bpftool", tool))
    out = tmp_path / "facts"
    out.mkdir()
    assert agent.probe_features(str(out)) is None
    assert json.loads((out / agent.protocol.FEATURES_FILE).read_text()) == {"program_types": {}}
    assert not (out / agent.protocol.FEATURES_ERROR_FILE).exists()
    # "full": bpf_trace_printk and bpf_probe_write_user are probed too
    assert argv.read_text().split() == ["feature", "probe", "kernel", "full", "-j"]


@pytest.mark.parametrize(
    ("script", "why"),
    [
        (None, "bpftool not found in the guest"),
        ("echo 'Error: denied' >&2\nexit 255\n", "bpftool feature probe exited 255: Error: denied"),
        ("echo garbage\n", "bpftool feature probe exited 0: no output"),
    ],
)
def test_feature_probe_failure_is_written_as_could_not_tell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None, why: str
) -> None:
    tools = (_fake_bpftool(tmp_path, script),) if script is not None else ("/nonexistent/bpftool",)
    monkeypatch.setattr(agent, "BPFTOOL_CANDIDATES", tools)
    out = tmp_path / "facts"
    out.mkdir()
    assert agent.probe_features(str(out)) == why
    assert (out / agent.protocol.FEATURES_ERROR_FILE).read_text() == why + "\n"
    assert not (out / agent.protocol.FEATURES_FILE).exists()
def test_default_trigger_runs_the_workload_for_the_scratch_disk_the_host_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.vm.guest import protocol, workload

    calls: list[int] = []
    monkeypatch.setattr(workload, "run_default", lambda size: calls.append(size) or {"network": "OSError: x"})
    run = agent.run_trigger("default", "/nonexistent")
    assert calls == [protocol.SCRATCH_DISK_BYTES]
    assert run["ok"] is True and run["output"] == "network: OSError: x"  # a part the guest could not do


def test_run_object_leaves_out_what_the_loader_leaves_out(tmp_path: Path) -> None:
    lb, lib = fake_object_loader(["a", "b", "c"], {})
    lb.maps = lambda obj: []
    spec = {"name": "obj", "path": "obj.bpf.o", "triggers": {n: "true" for n in "abc"},
            "loader": {"autoload_off": ["b"]}}
    detacher = agent.Detacher(lb)
    result = agent.run_object(lb, spec, str(tmp_path), detacher)
    detacher.wait()
    assert lib.loads == [["a", "c"]]
    assert result["left_out"] == ["b"]
    assert set(result["programs"]) == {"a", "c"}
    assert result["loader_set"] == [
        {"what": "autoload", "name": "b", "by": "sidecar", "text": "autoload off"},
    ]


def test_run_object_records_a_refused_attach_target_and_loads_the_rest(tmp_path: Path) -> None:
    lb, lib = fake_object_loader(["a", "b"], {})
    lb.maps = lambda obj: []
    set_targets: list[tuple[int, bytes]] = []

    def set_attach_target(prog: int, fd: int, name: bytes) -> int:
        set_targets.append((prog, name))
        return -3 if name == b"absent_fn" else 0

    lib.bpf_program__set_attach_target = set_attach_target  # type: ignore[attr-defined]
    spec = {"name": "obj", "path": "obj.bpf.o", "triggers": {n: "true" for n in "ab"},
            "loader": {"attach_targets": {"a": "vfs_open", "b": "absent_fn"}}}
    detacher = agent.Detacher(lb)
    result = agent.run_object(lb, spec, str(tmp_path), detacher)
    detacher.wait()
    assert lib.loads == [["a"]]  # b's target was refused: left out of the load, as a loader would fail
    load_b = result["programs"]["b"]["load"]
    assert load_b["ok"] is False and load_b["stage"] == "set_attach_target" and load_b["errno"] == 3
    assert load_b["target"] == "absent_fn"
    assert result["programs"]["a"]["fire"]["run_cnt"] == 1
    assert result["loader_set"] == [
        {"what": "attach_target", "name": "a", "by": "sidecar", "text": "vfs_open"},
    ]


# ---------------------------------------------------------------- apply_loader on the host's libbpf

# Opened, never loaded: libbpf reads the object and keeps what a loader sets until bpf_object__load.
LOADER_SOURCE = """\
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
char LICENSE[] SEC("license") = "GPL";
const volatile int knob = 0;
const volatile _Bool flag = 0;
struct { __uint(type, 7); __uint(key_size, 4); } stackmap SEC(".maps");
struct { __uint(type, 1); __uint(key_size, 4); __uint(value_size, 8); } pids SEC(".maps");
struct { __uint(type, 1); __uint(key_size, 4); __uint(value_size, 8); __uint(max_entries, 7); }
    sized SEC(".maps");
struct { __uint(type, 4); __uint(key_size, 4); __uint(value_size, 4); } events SEC(".maps");
SEC("kprobe/do_nothing") int prog(void *ctx) { return knob + flag; }
"""


def host_libbpf() -> Any:
    require("clang", why="compiles a BPF object")
    try:
        return agent.Libbpf()
    except RuntimeError as exc:
        pytest.skip(f"no libbpf on this host: {exc}")


def opened(lb: Any, tmp_path: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    src, out = tmp_path / "loader.bpf.c", tmp_path / "loader.bpf.o"
    src.write_text(LOADER_SOURCE)
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)],
                   check=True, capture_output=True, timeout=120)
    obj = lb.lib.bpf_object__open_file(str(out).encode(), None)
    assert not lb.error_of(obj), lb.take_log()
    progs = {lb.prog_name(p): p for p in lb.programs(obj)}
    maps = {lb.map_name(m): m for m in lb.maps(obj)}
    return obj, progs, maps


TARGETS_SOURCE = """\
#define SEC(name) __attribute__((section(name), used))
char LICENSE[] SEC("license") = "GPL";
SEC("fentry/no_such_function_in_any_kernel") int absent(void *ctx) { return 0; }
SEC("fentry/vfs_read") int present(void *ctx) { return 0; }
SEC("kprobe/no_such_function_in_any_kernel") int by_kallsyms(void *ctx) { return 0; }
SEC("fentry") int no_target(void *ctx) { return 0; }
"""


def test_btf_targets_are_looked_up_before_the_load_as_the_load_would(tmp_path: Path) -> None:
    import errno

    lb = host_libbpf()
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("no kernel BTF on this host")
    src, out = tmp_path / "targets.bpf.c", tmp_path / "targets.bpf.o"
    src.write_text(TARGETS_SOURCE)
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)],
                   check=True, capture_output=True, timeout=120)
    obj = lb.lib.bpf_object__open_file(str(out).encode(), None)
    assert not lb.error_of(obj), lb.take_log()
    try:
        progs = {lb.prog_name(p): p for p in lb.programs(obj)}
        refused = agent.look_up_targets(lb, progs, skip=set())
        # Only the fentry whose function the kernel's BTF lacks; a kprobe's target is not a BTF one.
        assert set(refused) == {"absent"}
        record = refused["absent"]
        assert record["errno"] == errno.ESRCH and record["stage"] == "load" and not record["ok"]
        assert record["target"] == "no_such_function_in_any_kernel"
        assert "failed to find kernel BTF type ID of 'no_such_function_in_any_kernel'" in record["log"]
        assert not lb.lib.bpf_program__autoload(progs["absent"])
        assert lb.lib.bpf_program__autoload(progs["present"])
        assert lb.lib.bpf_program__autoload(progs["no_target"])
        assert agent.look_up_targets(lb, progs, skip={"absent", "present"}) == {}
    finally:
        lb.lib.bpf_object__close(obj)


def test_libbpf_messages_are_captured_in_c_in_order_and_the_fds_restored(tmp_path: Path) -> None:
    lb = host_libbpf()
    assert lb._sink is not None  # a memfd and libc's vdprintf: no Python per message
    before = [os.readlink(f"/proc/self/fd/{i}") for i in (0, 1, 2)]
    missing = tmp_path / "missing.bpf.o"
    with lb.capture():
        lb.take_log()
        assert not lb.lib.bpf_object__open_file(str(missing).encode(), None)
        with lb.capture():  # nested: still captured
            lb.lib.bpf_object__open_file(b"/second/missing.bpf.o", None)
        log = lb.take_log()
    assert [os.readlink(f"/proc/self/fd/{i}") for i in (0, 1, 2)] == before
    assert str(missing) in log and "/second/missing.bpf.o" in log
    assert log.index(str(missing)) < log.index("/second/missing.bpf.o")
    assert lb.take_log() == ""  # drained
    # Outside a capture nothing is kept for a load.
    lb.lib.bpf_object__open_file(b"/third/missing.bpf.o", None)
    assert "/third" not in lb.take_log()


def test_apply_loader_sizes_maps_and_patches_rodata_before_load(tmp_path: Path) -> None:
    import ctypes

    from harness.programs.loader import plan_loader
    from harness.programs.sidecar import LoaderSettings

    lb = host_libbpf()
    obj, progs, maps = opened(lb, tmp_path)
    try:
        settings = LoaderSettings(maps={"pids": {"max_entries": 99}}, rodata={"knob": -5, "flag": True})
        loader = plan_loader(settings, tmp_path / "loader.bpf.o", "loader.yaml")
        sets, refused = agent.apply_loader(lb, obj, progs, loader)
        assert refused == {}
        sizes = {
            name: (lb.lib.bpf_map__max_entries(m), lb.lib.bpf_map__value_size(m)) for name, m in maps.items()
        }
        assert sizes["stackmap"] == (agent.DEFAULT_MAX_ENTRIES, agent.STACK_TRACE_VALUE_SIZE)  # the harness's
        assert sizes["pids"] == (99, 8)  # the sidecar's
        assert sizes["sized"] == (7, 8)  # sized by the object: untouched
        assert sizes["events"][0] != 99  # perf event arrays: libbpf's own business (0 until load)
        by = {(s["name"], s["by"]) for s in sets if s["what"] == "map"}
        assert by == {("stackmap", "harness"), ("pids", "sidecar")}
        rodata = next(m for name, m in maps.items() if name.endswith(".rodata"))
        size = ctypes.c_size_t(0)
        data = ctypes.string_at(lb.lib.bpf_map__initial_value(rodata, ctypes.byref(size)), 8)
        patches = {p["variable"]: p for p in loader["data"]}
        knob, flag = patches["knob"]["offset"], patches["flag"]["offset"]
        assert int.from_bytes(data[knob:knob + 4], "little", signed=True) == -5
        assert data[flag] == 1
        assert [s for s in sets if s.get("error")] == []
    finally:
        lb.lib.bpf_object__close(obj)


def test_a_plan_of_scenarios_alone_runs_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every object's records reused: the plan has scenarios only, and the agent still runs them."""
    ran: list[Any] = []
    monkeypatch.setattr(agent, "run_plan_objects", lambda plan, share, done: ran.append(plan["scenarios"]))
    plan = {"facts": False, "objects": [], "scenarios": [{"kind": "uprobe_update"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert agent.main(["agent", str(tmp_path)]) == 0
    assert ran == [[{"kind": "uprobe_update"}]]
    assert json.loads((tmp_path / "done.json").read_text())["ok"] is True
