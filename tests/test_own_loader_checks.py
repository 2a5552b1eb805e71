"""harness.checks.own_loader: the load, attach and fire cells of an object its own loader ran."""

from __future__ import annotations

from typing import Any

import pytest

from harness.checks.guest import GuestContext
from harness.checks.own_loader import check_loader_objects, kernel_name, loader_name
from harness.report.results import CellResult, Check, Outcome, Probe
from harness.vm.guest import protocol

CTX = GuestContext("6.1", "arm64", stats_enabled=True)
OPEN = Probe("opensnoop", "tracepoint__syscalls__sys_enter_openat", "tracepoint/syscalls/sys_enter_openat",
             "tracepoint", "syscalls/sys_enter_openat")
EXIT = Probe("opensnoop", "tracepoint__syscalls__sys_exit_openat", "tracepoint/syscalls/sys_exit_openat",
             "tracepoint", "syscalls/sys_exit_openat")
OPEN2 = Probe("opensnoop", "tracepoint__syscalls__sys_enter_open", "tracepoint/syscalls/sys_enter_open",
              "tracepoint", "syscalls/sys_enter_open")


def prog(
    name: str, pid: int, run_cnt: int = 0, attached: bool = True, **extra: Any
) -> protocol.LoadedProgram:
    rec: protocol.LoadedProgram = {
        "id": pid, "name": kernel_name(name), "type": "tracepoint",
        "run_cnt": run_cnt, "run_time_ns": 10 * run_cnt,
    }
    if attached:
        rec["attached"] = [{"via": "perf_event", "type": "tracepoint", "target": name.rsplit("__", 1)[-1]}]
    rec.update(extra)  # type: ignore[typeddict-item]
    return rec


def loader(programs: list[protocol.LoadedProgram], **extra: Any) -> protocol.ObjectRecord:
    rec: protocol.OwnLoaderRecord = {
        "command": ["opensnoop-libbpf"], "seconds": 4.0, "time_limit": 20.0, "ready": "output",
        "exited": False, "stopped": "SIGINT", "returncode": 0, "output": "PID COMM FD ERR PATH\n",
        "programs": programs, "links": 0,
    }
    rec.update(extra)  # type: ignore[typeddict-item]
    return {"object": "opensnoop", "own_loader": rec}


def cells(record: protocol.ObjectRecord, *probes: Probe) -> dict[tuple[str, Check], CellResult]:
    return {(r.probe.program, r.check): r for r in check_loader_objects(probes or (OPEN,), [record], CTX)}


def test_loaded_attached_fired_say_what_the_tool_did() -> None:
    found = cells(loader([prog(OPEN.program, 41, run_cnt=12)]))
    load, attach, fire = (found[(OPEN.program, c)] for c in (Check.LOAD, Check.ATTACH, Check.FIRE))
    assert load.outcome == attach.outcome == fire.outcome == Outcome.PASS
    assert load.reason == "loaded by opensnoop-libbpf (tracepoint program 'tracepoint__sys', id 41)"
    assert attach.reason == "attached by opensnoop-libbpf: tracepoint sys_enter_openat"
    assert fire.reason == "fired 12 times under opensnoop-libbpf"
    assert fire.details["run_cnt"] == 12
    assert load.details["loader"]["stopped"] == "SIGINT"
    assert found[(OPEN.program, Check.CORE)].outcome == Outcome.SKIP


def test_names_match_on_the_kernels_15_characters() -> None:
    assert kernel_name("tracepoint__syscalls__sys_enter_openat") == "tracepoint__sys"
    # Both programs are "tracepoint__sys" in the kernel: neither can be told apart, both count.
    found = cells(loader([prog(OPEN.program, 41, 3), prog(EXIT.program, 42, 4)]))
    assert "2 programs of that name" in found[(OPEN.program, Check.LOAD)].reason
    assert found[(OPEN.program, Check.FIRE)].details["run_cnt"] == 7


def test_a_program_the_loader_left_out_is_skipped() -> None:
    other = prog("handle_exec", 50, run_cnt=1)
    found = cells(loader([other]), OPEN)
    load = found[(OPEN.program, Check.LOAD)]
    assert load.outcome == Outcome.SKIP
    assert load.reason.startswith("left out by the loader: opensnoop-libbpf loaded 1 other programs")
    assert found[(OPEN.program, Check.ATTACH)].outcome == Outcome.SKIP
    assert found[(OPEN.program, Check.FIRE)].reason == "not loaded"


def test_loaded_but_never_fired_is_a_fail_naming_the_tool() -> None:
    fire = cells(loader([prog(OPEN.program, 41, run_cnt=0)]))[(OPEN.program, Check.FIRE)]
    assert fire.outcome == Outcome.FAIL
    assert fire.reason.startswith("under opensnoop-libbpf: attached but never fired")


def test_loaded_but_unattached_by_a_loader_that_went_on_is_skip() -> None:
    found = cells(loader([prog(OPEN.program, 41, attached=False)]))
    assert found[(OPEN.program, Check.ATTACH)].outcome == Outcome.SKIP
    assert found[(OPEN.program, Check.ATTACH)].reason == "loaded but left unattached by opensnoop-libbpf"
    assert found[(OPEN.program, Check.FIRE)].reason == "not attached"


def test_loader_that_gave_up_is_a_fail_with_what_it_said() -> None:
    record = loader([], exited=True, returncode=1, stopped=None, ready="exited",
                    output="libbpf: prog 'x': failed to attach: -ENOENT\nfailed to attach BPF programs\n")
    found = cells(record)
    load = found[(OPEN.program, Check.LOAD)]
    assert load.outcome == Outcome.FAIL
    assert load.reason == "not loaded: opensnoop-libbpf exited 1: failed to attach BPF programs"
    assert found[(OPEN.program, Check.ATTACH)].outcome == Outcome.SKIP


def test_loaded_then_failed_to_attach_is_an_attach_fail() -> None:
    record = loader([prog(OPEN.program, 41, attached=False)], exited=True, returncode=1,
                    output="failed to attach BPF programs: -22\n")
    attach = cells(record)[(OPEN.program, Check.ATTACH)]
    assert attach.outcome == Outcome.FAIL
    assert attach.reason == (
        "loaded but not attached: opensnoop-libbpf exited 1: failed to attach BPF programs: -22"
    )


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"error": "cannot run ['nope']: No such file or directory"},
         "own loader: cannot run ['nope']: No such file or directory"),
        ({"exited": True, "returncode": 1,
          "output": "opensnoop-libbpf: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found\n"},
         "own loader: opensnoop-libbpf could not run in the guest (exited 1): opensnoop-libbpf: "
         "/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found"),
        ({"exited": True, "returncode": 127, "output": "sh: 1: opensnoop-libbpf: not found\n"},
         "own loader: opensnoop-libbpf could not run in the guest (exited 127): "
         "sh: 1: opensnoop-libbpf: not found"),
    ],
)
def test_a_loader_that_could_not_run_is_an_error(extra: dict[str, Any], reason: str) -> None:
    found = cells(loader([], **extra))
    assert {r.outcome for r in found.values()} == {Outcome.ERROR}
    assert found[(OPEN.program, Check.LOAD)].reason == reason


def test_a_loader_that_loaded_nothing_in_its_time_limit_is_an_error() -> None:
    found = cells(loader([], ready="time limit", stopped="SIGINT", returncode=-2))
    load = found[(OPEN.program, Check.LOAD)]
    assert load.outcome == Outcome.ERROR
    assert "loaded nothing within its time limit of 20 s" in load.reason


def test_a_program_not_loaded_by_a_loader_that_failed_is_a_fail() -> None:
    # It loaded one program, then exited 1: the others are not "left out", they failed with it.
    record = loader([prog("handle_exit", 41)], exited=True, returncode=1, output="oops\n")
    found = cells(record, OPEN2)
    assert found[(OPEN2.program, Check.LOAD)].outcome == Outcome.FAIL


def test_an_object_the_agent_could_not_handle_is_an_error() -> None:
    found = cells({"object": "opensnoop", "error": "no own-loader support in the guest: x"})
    assert {r.outcome for r in found.values()} == {Outcome.ERROR}


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["/mnt/loaders/0/opensnoop-libbpf", "-T"], "opensnoop-libbpf"),
        ("LIBBPF_LOG=1 exec ./biolatency-libbpf 30 1", "biolatency-libbpf"),
        ("python3 -S load.py", "load.py"),
        (["python3", "-S", "my-loader.py"], "my-loader.py"),
        (["python3"], "python3"),
    ],
)
def test_loader_name(command: object, name: str) -> None:
    assert loader_name(command) == name


def test_the_btf_name_tells_apart_programs_the_kernel_names_alike() -> None:
    # opensnoop on arm64 loads the openat programs and leaves out open (no such syscall there).
    loaded = [prog(p.program, i, i - 36, full_name=p.program) for i, p in ((41, OPEN), (42, EXIT))]
    found = cells(loader(loaded), OPEN, EXIT, OPEN2)
    assert found[(OPEN.program, Check.FIRE)].details["run_cnt"] == 5
    assert found[(EXIT.program, Check.FIRE)].details["run_cnt"] == 6
    assert found[(OPEN2.program, Check.LOAD)].outcome == Outcome.SKIP
    assert found[(OPEN2.program, Check.LOAD)].reason.startswith("left out by the loader")


def test_a_loader_that_exited_during_its_trigger_is_told_to_run_longer() -> None:
    # `biolatency 30 1` whose trigger took 37 s: its interval ended, and its programs with it.
    record = loader([prog(OPEN.program, 41, run_cnt=0)], exited=True, stopped=None, ready="output")
    fire = cells(record)[(OPEN.program, Check.FIRE)]
    assert fire.outcome == Outcome.FAIL
    assert fire.reason == (
        "opensnoop-libbpf exited by itself before its trigger ended, and never fired: give it longer to run"
    )


def test_a_loader_not_ready_in_time_that_never_fired_is_told_to_take_longer() -> None:
    # execsnoop on a loaded machine: its header came after its 90 s, the trigger ran before it attached.
    record = loader([prog(OPEN.program, 41, run_cnt=0)], ready="time limit", time_limit=90.0)
    fire = cells(record)[(OPEN.program, Check.FIRE)]
    assert fire.outcome == Outcome.FAIL
    assert fire.reason == (
        "opensnoop-libbpf was not ready within its time limit of 90 s when the trigger ran, and never fired: "
        "raise its time_limit"
    )
