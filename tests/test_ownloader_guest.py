"""The guest's side of own loaders (harness/vm/guest/ownloader.py) on the host: real loader processes,
a fake kernel whose programs are what those processes write into a file (nothing loads BPF here)."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import harness.vm.guest.ownloader as ownloader
from harness.vm.guest import protocol


class FakeView:
    """The KernelView's shape over a JSON file: {"progs": {id: record}, "links": {id: [prog, type]},
    "fds": [[prog, type, target]]}; programs in ``before`` exist before any loader starts."""

    def __init__(self, state: Path, before: dict[int, protocol.LoadedProgram] | None = None) -> None:
        self.state = state
        self.before = before or {}
        self.bumps: dict[int, int] = {}  # what the triggers made each program run

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def prog_ids(self) -> list[int]:
        return sorted({*self.before, *(int(i) for i in self._read().get("progs", {}))})

    def link_ids(self) -> list[int]:
        return sorted(int(i) for i in self._read().get("links", {}))

    def program(self, prog_id: int) -> protocol.LoadedProgram | None:
        if prog_id in self.before:
            return self.before[prog_id]
        raw = self._read().get("progs", {}).get(str(prog_id))
        if raw is None:
            return None
        rec: protocol.LoadedProgram = {"id": prog_id, "name": raw["name"], "type": "tracepoint",
                                       "run_cnt": self.bumps.get(prog_id, 0), "run_time_ns": 5}
        return rec

    def link(self, link_id: int) -> tuple[int, protocol.LoaderAttachment] | None:
        raw = self._read().get("links", {}).get(str(link_id))
        if raw is None:
            return None
        return int(raw[0]), {"via": "link", "id": link_id, "type": raw[1]}

    def fd_attachments(self, pid: int) -> list[tuple[int, protocol.LoaderAttachment]]:
        fds = self._read().get("fds", [])
        return [(int(p), {"via": "perf_event", "type": t, "target": tgt}) for p, t, tgt in fds]


def loader_script(tmp_path: Path, body: str) -> list[str]:
    """argv of a Python loader whose ``body`` may call ``publish(state)`` to make programs appear."""
    script = tmp_path / "bin" / "loader.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(textwrap.dedent("""\
        import json, os, signal, sys, time
        def publish(state):
            with open(os.environ["STATE"] + ".tmp", "w") as fh:
                json.dump(state, fh)
            os.rename(os.environ["STATE"] + ".tmp", os.environ["STATE"])
        """) + textwrap.dedent(body))
    return [sys.executable, str(script)]


def plan(command: protocol.Trigger, ready: str = "", time_limit: float = 20.0) -> protocol.PlanObject:
    return {
        "name": "opensnoop", "path": "objs/opensnoop.bpf.o", "triggers": {"a": "default", "b": ["true"]},
        "own_loader": {"command": command, "binaries": "bin", "time_limit": time_limit, "ready": ready},
    }


def run(tmp_path: Path, spec: protocol.PlanObject, view: FakeView,
        fire: dict[int, int] | None = None) -> tuple[protocol.OwnLoaderRecord, list[protocol.Trigger]]:
    ran: list[protocol.Trigger] = []

    def trigger(trig: protocol.Trigger, share: str) -> protocol.TriggerRun:
        ran.append(trig)
        view.bumps.update(fire or {})
        return {"trigger": trig, "ok": True, "seconds": 0.0}

    result = ownloader.run_loader_object(view, spec, str(tmp_path), trigger)  # type: ignore[arg-type]
    assert result["object"] == "opensnoop"
    return result["own_loader"], ran


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state.json"
    monkeypatch.setenv("STATE", str(path))
    monkeypatch.setattr(ownloader, "POLL_SECONDS", 0.02)
    return path


LOADS_AND_WAITS = """\
    publish({"progs": {"7": {"name": "handle_open"}, "8": {"name": "handle_close"}},
             "links": {"30": [7, "perf_event"]}, "fds": [[7, "tracepoint", "syscalls/sys_enter_openat"]]})
    print("PID COMM", flush=True)
    time.sleep(120)
"""


def test_ready_by_output_then_triggers_then_sigint(tmp_path: Path, state: Path) -> None:
    view = FakeView(state, before={3: {"id": 3, "name": "old", "type": "kprobe"}})
    record, ran = run(tmp_path, plan(loader_script(tmp_path, LOADS_AND_WAITS), ready="PID +COMM"), view,
                      fire={7: 12})
    assert record["ready"] == "output"
    assert ran == ["default", ["true"]]  # each distinct trigger once, while the loader ran
    assert record["stopped"] == "SIGINT" and record["exited"] is False
    assert record["returncode"] != 0  # Python's KeyboardInterrupt
    by_id = {p["id"]: p for p in record["programs"]}
    assert sorted(by_id) == [7, 8]  # the program loaded before the loader started is not its
    assert by_id[7]["run_cnt"] == 12
    assert {a["via"] for a in by_id[7]["attached"]} == {"link", "perf_event"}
    assert by_id[8].get("attached") == []
    assert record["links"] == 1
    assert "PID COMM" in record["output"]


def test_ready_when_its_programs_stop_changing(tmp_path: Path, state: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ownloader, "STABLE_SECONDS", 0.2)
    record, ran = run(tmp_path, plan(loader_script(tmp_path, LOADS_AND_WAITS)), FakeView(state))
    assert record["ready"] == "programs"
    assert ran and record["stopped"] == "SIGINT"


def test_a_loader_deaf_to_sigint_is_killed(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownloader, "STOP_GRACE_SECONDS", 0.3)
    body = "signal.signal(signal.SIGINT, signal.SIG_IGN)\n" + textwrap.dedent(LOADS_AND_WAITS)
    record, _ = run(tmp_path, plan(loader_script(tmp_path, body), ready="PID"), FakeView(state))
    assert record["stopped"] == "SIGKILL"
    assert record["returncode"] == -signal.SIGKILL


def test_a_loader_that_gives_up_is_not_triggered(tmp_path: Path, state: Path) -> None:
    body = 'print("libbpf: failed to find BTF for tracepoint", file=sys.stderr)\nsys.exit(1)\n'
    record, ran = run(tmp_path, plan(loader_script(tmp_path, body)), FakeView(state))
    assert (record["ready"], record["exited"], record["returncode"]) == ("exited", True, 1)
    assert ran == [] and record["programs"] == []
    assert "stopped" not in record
    assert "failed to find BTF" in record["output"]


def test_a_loader_that_pins_and_exits_is_still_triggered(tmp_path: Path, state: Path) -> None:
    body = 'publish({"progs": {"9": {"name": "pinned"}}, "links": {"31": [9, "tracing"]}})\n'
    record, ran = run(tmp_path, plan(loader_script(tmp_path, body)), FakeView(state), fire={9: 2})
    assert record["ready"] == "exited" and record["returncode"] == 0
    assert ran  # its links outlive it
    assert record["programs"][0]["run_cnt"] == 2


def test_a_loader_that_cannot_start_is_an_error_record(tmp_path: Path, state: Path) -> None:
    (tmp_path / "bin").mkdir()
    record, ran = run(tmp_path, plan(["no-such-loader-anywhere"]), FakeView(state))
    assert record["error"].startswith("cannot run ['no-such-loader-anywhere']")
    assert ran == []


def test_the_loader_runs_in_its_binaries_with_them_on_path(tmp_path: Path, state: Path) -> None:
    loader_script(tmp_path, "")
    tool = tmp_path / "bin" / "mytool"
    tool.write_text('#!/bin/sh\necho "cwd=$(pwd) object=$BPF_MATRIX_OBJECT"\n')
    tool.chmod(0o755)
    record, _ = run(tmp_path, plan("mytool"), FakeView(state))
    assert record["returncode"] == 0
    assert f"cwd={tmp_path / 'bin'} object={tmp_path / 'objs/opensnoop.bpf.o'}" in record["output"]


def test_a_loader_never_ready_is_triggered_at_its_time_limit(tmp_path: Path, state: Path) -> None:
    body = 'publish({"progs": {"7": {"name": "a"}}})\ntime.sleep(120)\n'  # loaded, never attached
    record, ran = run(tmp_path, plan(loader_script(tmp_path, body), time_limit=0.5), FakeView(state))
    assert record["ready"] == "time limit"
    assert ran and record["stopped"] == "SIGINT"


def test_link_info_of_a_tracing_link() -> None:
    raw = bytearray(64)
    raw[0:4] = (2).to_bytes(4, sys.byteorder)  # BPF_LINK_TYPE_TRACING
    raw[8:12] = (77).to_bytes(4, sys.byteorder)
    raw[16:20] = (24).to_bytes(4, sys.byteorder)  # attach_type
    raw[24:28] = (4242).to_bytes(4, sys.byteorder)  # target_btf_id
    prog, att = ownloader.parse_link_info(bytes(raw), 5)
    assert prog == 77
    assert att == {"via": "link", "id": 5, "type": "tracing", "attach_type": 24, "btf_id": 4242}


def test_readiness_is_seen_though_the_loader_never_flushes(tmp_path: Path, state: Path) -> None:
    # Like a C tool's stdio, Python buffers a file or pipe until exit; on a terminal it writes each line.
    # SIGINT waits until the lines are out (the stop may come as soon as the first line is seen).
    body = (
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "print(\"Tracing block device I/O... Hit Ctrl-C to end.\")\n"
        "for i in range(3000): print(i)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\ntime.sleep(120)\n"
    )
    record, ran = run(tmp_path, plan(loader_script(tmp_path, body), ready="Tracing block device"),
                      FakeView(state))
    assert record["ready"] == "output"  # found in the whole output, long scrolled out of its tail
    assert "Tracing" not in record["output"] and "2999" in record["output"]
    assert ran and record["stopped"] == "SIGINT"
