"""Tests of the guest protocol against the records of a real agent run (Debian's 6.1 on x86_64).

The share of that boot is kept in tests/data/guestlogs/6.1-x86_64/ (plan, objects, scenarios and
completion records), with cells.json: every in-guest cell that run reported. A field renamed on one side
of the protocol fails here without a VM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.checks.guest import GuestContext, check_guest_objects
from harness.checks.scenarios import check_scenarios
from harness.report.results import Check, Outcome, Probe
from harness.vm.guest import protocol

SHARE = Path(__file__).resolve().parent / "data" / "guestlogs" / "6.1-x86_64"
# A boot of Debian's 6.1 arm64 whose objects ran their own loaders (libbpf-tools' opensnoop, execsnoop
# and biolatency): plan, objects and completion records. Its plan entries' and object records' key for the
# loader is named `own_loader`, as the protocol names it now (the recording called it `loader`).
OWN_LOADER_SHARE = SHARE.with_name("6.1-arm64-own-loader")
CTX = GuestContext("6.1", "x86_64")


# ---------------------------------------------------------------- the records, typed by their place


def _typed(records: Mapping[str, Any], cls: type, path: str) -> Iterator[tuple[type, str, Mapping[str, Any]]]:
    yield cls, path, records


def walk_objects(objects: list[protocol.ObjectRecord]) -> Iterator[tuple[type, str, Mapping[str, Any]]]:
    for obj in objects:
        where = f"objects[{obj['object']}]"
        yield from _typed(obj, protocol.ObjectRecord, where)
        if "whole_load" in obj:
            yield from _typed(obj["whole_load"], protocol.LoadRecord, where + ".whole_load")
        if "phases" in obj:
            yield from _typed(obj["phases"], protocol.Phases, where + ".phases")
        for i, run in enumerate(obj.get("triggers", [])):
            yield from _typed(run, protocol.TriggerRun, f"{where}.triggers[{i}]")
        for name, prog in obj.get("programs", {}).items():
            at = f"{where}.programs[{name}]"
            yield from _typed(prog, protocol.ProgramRecord, at)
            yield from _typed(prog["load"], protocol.LoadRecord, at + ".load")
            if "attach" in prog:
                yield from _typed(prog["attach"], protocol.AttachRecord, at + ".attach")
            if "fire" in prog:
                yield from _typed(prog["fire"], protocol.FireRecord, at + ".fire")


def walk_scenarios(records: list[protocol.ScenarioRecord]) -> Iterator[tuple[type, str, Mapping[str, Any]]]:
    for i, rec in enumerate(records):
        where = f"scenarios[{i}]"
        yield from _typed(rec, protocol.ScenarioRecord, where)
        if "plan" in rec:
            yield from _typed(rec["plan"], protocol.ScenarioEcho, where + ".plan")
        for mode, mrec in rec.get("modes", {}).items():
            yield from _typed(mrec, protocol.ModeRecord, f"{where}.modes[{mode}]")
            for j, run in enumerate(mrec.get("runs", [])):
                yield from _typed(run, protocol.RunRecord, f"{where}.modes[{mode}].runs[{j}]")


def walk_plan(plan: protocol.Plan) -> Iterator[tuple[type, str, Mapping[str, Any]]]:
    yield from _typed(plan, protocol.Plan, "plan")
    for obj in plan["objects"]:
        yield from _typed(obj, protocol.PlanObject, f"plan.objects[{obj['name']}]")
    for i, scenario in enumerate(plan["scenarios"]):
        yield from _typed(scenario, protocol.UpdateScenario, f"plan.scenarios[{i}]")


def recorded() -> list[tuple[type, str, Mapping[str, Any]]]:
    done = protocol.read_done(SHARE)
    assert done is not None
    return [
        *walk_plan(protocol.read_plan(SHARE)),
        *walk_objects(protocol.read_objects(SHARE)),
        *walk_scenarios(protocol.read_scenarios(SHARE)),
        (protocol.DoneRecord, "done", done),
    ]


def record_problems(cls: type, record: Mapping[str, Any]) -> list[str]:
    """What of ``record`` does not match the TypedDict ``cls``: a missing required key, an unknown key."""
    required: frozenset[str] = cls.__required_keys__  # type: ignore[attr-defined]
    optional: frozenset[str] = cls.__optional_keys__  # type: ignore[attr-defined]
    missing = sorted(required - set(record))
    unknown = sorted(set(record) - required - optional)
    return [f"missing {k!r}" for k in missing] + [f"undeclared {k!r}" for k in unknown]


# Declared keys this boot had no occasion to write: a 6.1 kernel reports no kprobe missed count (6.7+),
# every object opened, every program's counters could be read, the loader was there, facts were cached;
# no sidecar set anything for a loader, and no map was left at size zero.
# bpftool and os_release are younger than the recording (the guest's userland, reported since x86_64
# guests boot a built root too), and so are batches (an object's batch, a doubtful one's run alone, the
# isolation a plan entry asks for, the agent's phase totals); test_agent and test_share cover how they
# are written.
NOT_IN_THIS_RUN = {
    protocol.PlanObject: {"loader", "own_loader", "isolate"},  # own loaders: OWN_LOADER_SHARE
    protocol.ObjectRecord: {"error", "traceback", "loader_set", "left_out", "own_loader", "batch"},
    protocol.LoadRecord: {"set", "refused", "target"},
    protocol.FireRecord: {"kprobe_missed", "error", "alone", "batch"},
    protocol.Phases: {"alone", "close", "last_detach", "unlink"},
    protocol.TriggerRun: {"error"},
    protocol.RunRecord: {"error"},
    protocol.ModeRecord: {"error"},
    protocol.ScenarioRecord: {"error", "traceback"},
    protocol.DoneRecord: {
        "facts", "facts_seconds", "loader_error", "error", "traceback", "bpftool", "os_release", "phases",
    },
}


def test_recorded_records_have_every_required_key_and_no_undeclared_one() -> None:
    problems = [f"{where}: {p}" for cls, where, rec in recorded() for p in record_problems(cls, rec)]
    assert problems == []


def test_every_declared_key_appears_in_the_recording_or_is_explained() -> None:
    seen: dict[type, set[str]] = {}
    for cls, _where, rec in recorded():
        seen.setdefault(cls, set()).update(rec)
    unseen = {
        cls.__name__: sorted(
            (cls.__required_keys__ | cls.__optional_keys__)  # type: ignore[attr-defined]
            - keys - NOT_IN_THIS_RUN.get(cls, set())
        )
        for cls, keys in seen.items()
    }
    assert {name: keys for name, keys in unseen.items() if keys} == {}
    # The explanations themselves stay true: none of those keys was written.
    written = {cls.__name__: sorted(seen[cls] & keys) for cls, keys in NOT_IN_THIS_RUN.items()}
    assert {name: keys for name, keys in written.items() if keys} == {}


def test_record_problems_names_a_renamed_field() -> None:
    renamed = {"ok": True, "logs": ""}
    assert record_problems(protocol.AttachRecord, renamed) == ["missing 'log'", "undeclared 'logs'"]


# ---------------------------------------------------------------- the host on the recorded records


def recorded_cells() -> list[dict[str, str]]:
    cells: list[dict[str, str]] = json.loads((SHARE / "cells.json").read_text())
    return cells


def probes() -> list[Probe]:
    found = {
        (c["object"], c["program"]): Probe(c["object"], c["program"], c["section"], c["hook"], c["target"])
        for c in recorded_cells()
    }
    return list(found.values())


@pytest.fixture(scope="module")
def host_results() -> dict[tuple[str, str, str], tuple[str, str]]:
    """(object, program, check) -> (outcome, reason), as the host computes them from the records."""
    results = {}
    for res in check_guest_objects(probes(), protocol.read_objects(SHARE), CTX):
        results[(res.probe.object, res.probe.program, res.check.value)] = (res.outcome.value, res.reason)
    plans = protocol.read_plan(SHARE)["scenarios"]
    for res in check_scenarios(probes(), protocol.read_scenarios(SHARE), CTX, plans):
        results[(res.probe.object, res.probe.program, res.check.value)] = (res.outcome.value, res.reason)
    return results


def test_the_host_reproduces_every_in_guest_cell_of_the_real_run(
    host_results: dict[tuple[str, str, str], tuple[str, str]],
) -> None:
    # The real run's cells went through the sidecars' expectations: a FAIL they expect is an xfail.
    expected = {
        (c["object"], c["program"], c["check"]): (
            "fail" if c["outcome"] == "xfail" else c["outcome"], c["reason"]
        )
        for c in recorded_cells()
    }
    assert len(expected) == 88
    assert {key: host_results.get(key) for key in expected} == expected
    # The run leaves out CORE of programs the inventory found no CO-RE relocation in; so does the host.
    extra = {key: value for key, value in host_results.items() if key not in expected}
    assert extra and set(extra.values()) == {("skip", "no CO-RE relocations")}
    assert {check for _obj, _prog, check in extra} == {"core"}


@pytest.mark.parametrize(
    "obj,program,check,outcome,reason",
    [
        ("blk_account", "tp_block_rq_issue", Check.LOAD, Outcome.PASS, ""),
        ("blk_account", "tp_block_rq_issue", Check.ATTACH, Outcome.PASS, ""),
        ("blk_account", "tp_block_rq_issue", Check.FIRE, Outcome.PASS, "ran 8 times, recursion_misses 0"),
        ("blk_account", "kprobe_blk_account_io_start", Check.ATTACH, Outcome.FAIL,
         "attach failed: ENOENT (No such file or directory): "
         "no kprobe-able `blk_account_io_start` on this kernel"),
        ("blk_account", "kprobe_blk_account_io_start", Check.FIRE, Outcome.SKIP, "not attached"),
        ("task_state", "state_old_blind", Check.LOAD, Outcome.FAIL,
         "verifier rejected it (EINVAL): failed to resolve CO-RE relocation <byte_off> [327] "
         "struct task_struct___pre514.state (0:0 @ offset 0) at insn 1"),
        ("task_state", "state_old_blind", Check.CORE, Outcome.FAIL,
         "relocation `struct task_struct___pre514.state` failed on 6.1"),
        ("task_state", "state_guarded", Check.CORE, Outcome.PASS,
         "relocation `struct task_struct___pre514.state` unresolved on 6.1, on no path the verifier walks"
         " (the program loaded)"),
        ("vfs_unlink", "fentry_vfs_unlink", Check.LOAD, Outcome.FAIL,
         "verifier rejected it (EACCES): cannot access ptr member i_op with moff 32 in struct inode "
         "with off 36 size 4 at insn 1 `r1 = *(u32 *)(r1 +36)`"),
        ("vfs_unlink", "fentry_vfs_unlink", Check.ATTACH, Outcome.SKIP, "not loaded"),
        ("uprobe_libupdate", "demo_work", Check.FIRE, Outcome.FAIL,
         "quiet after the library update (cp over it, renamed over it; offset 0x1110 stale, now the start "
         "of `demo_pad_1` in v2); fires again after re-attach at 0x1310"),
    ],
)
def test_known_cells(
    host_results: dict[tuple[str, str, str], tuple[str, str]],
    obj: str, program: str, check: Check, outcome: Outcome, reason: str,
) -> None:
    assert host_results[(obj, program, check.value)] == (outcome.value, reason)


def test_recorded_completion_record() -> None:
    done = protocol.read_done(SHARE)
    assert done is not None
    assert done["ok"] is True and done["stats_enabled"] is True
    assert (done["release"], done["machine"], done["libbpf"]) == ("6.1.0-50-amd64", "x86_64", "v1.1")


# ---------------------------------------------------------------- readers and writers


def test_readers_of_a_share_the_agent_never_wrote_to(tmp_path: Path) -> None:
    assert protocol.read_objects(tmp_path) == []
    assert protocol.read_scenarios(tmp_path) == []
    assert protocol.read_done(tmp_path) is None
    with pytest.raises(OSError):
        protocol.read_plan(tmp_path)


@pytest.mark.parametrize("content", ["", "{", "[1, 2", '{"ok": true}'])
def test_list_readers_ignore_garbage(tmp_path: Path, content: str) -> None:
    (tmp_path / protocol.OBJECTS_FILE).write_text(content)
    (tmp_path / protocol.SCENARIOS_FILE).write_text(content)
    assert protocol.read_objects(tmp_path) == []
    assert protocol.read_scenarios(tmp_path) == []


def test_writers_round_trip_through_the_share_file_names(tmp_path: Path) -> None:
    objects = [protocol.ObjectRecord(object="o", programs={})]
    done = protocol.DoneRecord(ok=True, release="6.1.0-27-amd64", machine="x86_64", uptime_start=None)
    plan = protocol.Plan(facts=False, objects=[], scenarios=[])
    protocol.write_objects(tmp_path, objects)
    protocol.write_done(tmp_path, done)
    protocol.write_plan(tmp_path, plan)
    protocol.write_scenarios(str(tmp_path), [protocol.ScenarioRecord(kind="uprobe_update")])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [protocol.OBJECTS_FILE, protocol.DONE_FILE, protocol.PLAN_FILE, protocol.SCENARIOS_FILE]
    )
    assert protocol.read_objects(tmp_path) == objects
    assert protocol.read_done(tmp_path) == done
    assert protocol.read_plan(tmp_path) == plan
    assert protocol.read_scenarios(tmp_path) == [{"kind": "uprobe_update"}]


def test_the_fake_runners_records_match_the_protocol() -> None:
    # The plugin tests' fake guest builds its records from these: they must be what the agent writes.
    from test_pipeline import done_record, fired

    program = fired(4)
    checks = [
        (protocol.ProgramRecord, program),
        (protocol.LoadRecord, program["load"]),
        (protocol.AttachRecord, program["attach"]),
        (protocol.FireRecord, program["fire"]),
        (protocol.DoneRecord, done_record(loader_error="no libbpf")),
    ]
    assert [p for cls, rec in checks for p in record_problems(cls, rec)] == []


# ---------------------------------------------------------------- own loaders


def walk_own_loader_share() -> Iterator[tuple[type, str, Mapping[str, Any]]]:
    for obj in protocol.read_plan(OWN_LOADER_SHARE)["objects"]:
        yield from _typed(obj, protocol.PlanObject, f"plan.objects[{obj['name']}]")
        at = f"plan.objects[{obj['name']}]"
        yield from _typed(obj["own_loader"], protocol.OwnLoaderPlan, f"{at}.own_loader")
    for rec in protocol.read_objects(OWN_LOADER_SHARE):
        where = f"objects[{rec['object']}]"
        yield from _typed(rec, protocol.ObjectRecord, where)
        loader = rec["own_loader"]
        yield from _typed(loader, protocol.OwnLoaderRecord, where + ".own_loader")
        for i, run in enumerate(loader.get("triggers", [])):
            yield from _typed(run, protocol.TriggerRun, f"{where}.own_loader.triggers[{i}]")
        for prog in loader.get("programs", []):
            at = f"{where}.own_loader.programs[{prog['id']}]"
            yield from _typed(prog, protocol.LoadedProgram, at)
            for j, att in enumerate(prog.get("attached", [])):
                yield from _typed(att, protocol.LoaderAttachment, f"{at}.attached[{j}]")


def test_own_loader_records_match_the_protocol() -> None:
    records = list(walk_own_loader_share())
    assert {cls for cls, _w, _r in records} >= {
        protocol.OwnLoaderPlan, protocol.OwnLoaderRecord, protocol.LoadedProgram, protocol.LoaderAttachment,
    }
    problems = [f"{where}: {p}" for cls, where, rec in records for p in record_problems(cls, rec)]
    assert problems == []


def test_own_loader_recording_gives_the_cells_the_tools_earned() -> None:
    from harness.checks.own_loader import check_loader_objects

    ctx = GuestContext("6.1", "arm64")
    probes = [
        Probe("opensnoop", "tracepoint__syscalls__sys_enter_openat", "tp/syscalls/sys_enter_openat",
              "tracepoint", "syscalls/sys_enter_openat"),
        Probe("opensnoop", "tracepoint__syscalls__sys_enter_open", "tp/syscalls/sys_enter_open",
              "tracepoint", "syscalls/sys_enter_open"),
        Probe("biolatency", "block_rq_issue_btf", "tp_btf/block_rq_issue", "tp_btf", "block_rq_issue"),
        Probe("biolatency", "block_rq_issue", "raw_tp/block_rq_issue", "raw_tp", "block_rq_issue"),
    ]
    cells = {(r.probe.program, r.check): r for r in check_loader_objects(
        probes, protocol.read_objects(OWN_LOADER_SHARE), ctx)}
    openat = cells[("tracepoint__syscalls__sys_enter_openat", Check.ATTACH)]
    assert (openat.outcome, openat.reason) == (
        Outcome.PASS, "attached by opensnoop-libbpf: perf_event link, tracepoint sys_enter_openat"
    )
    assert cells[("tracepoint__syscalls__sys_enter_openat", Check.FIRE)].outcome == Outcome.PASS
    # arm64 has no open(2): opensnoop leaves its open programs out.
    assert cells[("tracepoint__syscalls__sys_enter_open", Check.LOAD)].outcome == Outcome.SKIP
    # biolatency picks the BTF-typed tracepoints where the kernel has them, and leaves out raw_tp.
    assert cells[("block_rq_issue_btf", Check.FIRE)].outcome == Outcome.PASS
    assert cells[("block_rq_issue", Check.LOAD)].reason.startswith("left out by the loader")
