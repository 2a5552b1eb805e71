"""LOAD, CORE, ATTACH and FIRE of an object run by its own loader, from what the loader did (pure).

The agent records how the loader ended and which programs appeared in the kernel while it ran, with
where they attached and how often they ran. A program of the object is matched to the kernel's by the
function name in the program's BTF, else by the name the kernel keeps, cut to 15 characters
(BPF_OBJ_NAME_LEN is 16 with the NUL): libbpf-tools' `tracepoint__syscalls__sys_enter_open` and
`..._openat` are both `tracepoint__sys` there.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from typing import Any

from harness.checks.guest import GuestContext, check_fire
from harness.report.results import CellResult, Check, Outcome, Probe
from harness.vm.guest.protocol import (
    FireRecord,
    LoadedProgram,
    LoaderAttachment,
    ObjectRecord,
    OwnLoaderRecord,
)

KERNEL_NAME_LEN = 15  # BPF_OBJ_NAME_LEN - 1
CHECKS = (Check.LOAD, Check.CORE, Check.ATTACH, Check.FIRE)
# A loader that exits so is one the guest could not run, not one that judged the kernel: the shell's
# "not executable" (126) and "not found" (127), and the dynamic linker's complaints.
NOT_STARTED_CODES = (126, 127)
NOT_STARTED_OUTPUT = ("error while loading shared libraries", "version `GLIBC_", "exec format error",
                      "cannot execute binary file")
REASON_CHARS = 300
WRAPPERS = ("exec", "env", "sudo", "nice", "stdbuf")
INTERPRETERS = ("python", "sh", "bash", "dash", "perl", "ruby", "node")
OWN_LOADER_RECORD_KEYS = (
    "command", "returncode", "exited", "stopped", "ready", "seconds", "time_limit", "links",
)


def kernel_name(program: str) -> str:
    """The name the kernel keeps for a program called ``program`` (libbpf passes it cut to 15)."""
    return program[:KERNEL_NAME_LEN]


def same_program(program: str, loaded: LoadedProgram) -> bool:
    """Whether the kernel's ``loaded`` is the object's ``program``: by the whole function name its BTF
    gives when it has one, else by the 15 characters the kernel keeps (which programs may share)."""
    full = loaded.get("full_name")
    if full:
        return full == program
    return loaded.get("name") == kernel_name(program)


def loader_name(command: object) -> str:
    """What to call a loader in a reason: its program's file name (``opensnoop-libbpf``), or its
    script's when an interpreter runs one (``python3 -S load.py`` is ``load.py``)."""
    if isinstance(command, (list, tuple)):
        words = [str(w) for w in command]
    else:
        try:
            words = shlex.split(str(command))
        except ValueError:
            words = str(command).split()
        # A shell command may set variables or start with `exec` before the program.
        words = [w for w in words if "=" not in w.split("/")[0] and w not in WRAPPERS]
    names = [w.rsplit("/", 1)[-1] for w in words]
    if len(names) > 1 and names[0].rstrip("0123456789.") in INTERPRETERS:
        script = next((n for n in names[1:] if not n.startswith("-")), "")
        if script:
            return script
    return (names[0] if names else "") or "the loader"


def last_line(output: str) -> str:
    """The last non-empty line a loader printed (what it said before it gave up)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def describe_exit(record: OwnLoaderRecord) -> str:
    code = record.get("returncode")
    if isinstance(code, int) and code < 0:
        return f"was killed by signal {-code}"
    return f"exited {code}"


def not_started(record: OwnLoaderRecord) -> str:
    """Why the loader could not run at all in the guest ("" when it ran): ERROR, not the kernel's fault."""
    if record.get("error"):
        return str(record["error"])
    output = str(record.get("output") or "")
    if record.get("exited") and not record.get("programs"):
        if record.get("returncode") in NOT_STARTED_CODES or any(m in output for m in NOT_STARTED_OUTPUT):
            tool = loader_name(record["command"])
            return f"{tool} could not run in the guest ({describe_exit(record)}): {last_line(output)}"
    return ""


def _details(record: OwnLoaderRecord, matched: Sequence[LoadedProgram]) -> dict[str, Any]:
    return {
        "loader": {key: record.get(key) for key in OWN_LOADER_RECORD_KEYS},
        "loader_log": str(record.get("output") or "")[-2000:],
        "kernel_programs": [dict(p) for p in matched],
        "loaded_by_loader": sorted({p.get("name", "") for p in record.get("programs") or []}),
    }


def _cell(probe: Probe, ctx: GuestContext, check: Check, outcome: Outcome, reason: str,
          details: dict[str, Any]) -> CellResult:
    return CellResult(probe, ctx.kernel, ctx.arch, check, outcome, reason[:REASON_CHARS], details)


def describe_attachment(att: LoaderAttachment) -> str:
    """``tracepoint syscalls/sys_enter_openat``, ``kprobe do_sys_openat2``, ``tracing link (BTF id 123)``."""
    kind = str(att.get("type") or att.get("via") or "?")
    if att.get("target"):
        return f"{kind} {att['target']}"
    if att.get("btf_id"):
        return f"{kind} link (BTF id {att['btf_id']})"
    return f"{kind} link" if att.get("via") == "link" else kind


def _fire(probe: Probe, ctx: GuestContext, matched: Sequence[LoadedProgram], tool: str,
          details: dict[str, Any], exited_early: bool, late: float | None) -> CellResult:
    fire: FireRecord = {
        "run_cnt": sum(int(p.get("run_cnt") or 0) for p in matched),
        "run_time_ns": sum(int(p.get("run_time_ns") or 0) for p in matched),
    }
    misses = [int(p["recursion_misses"]) for p in matched if "recursion_misses" in p]
    if misses:
        fire["recursion_misses"] = sum(misses)
    res = check_fire(probe, fire, ctx)
    if res.outcome == Outcome.PASS:
        reason = f"fired {fire['run_cnt']} times under {tool}"
    else:
        reason = f"under {tool}: {res.reason}"
        if exited_early and not fire["run_cnt"]:
            # Its programs went with it: the trigger may have come too late for them.
            reason = f"{tool} exited by itself before its trigger ended, and never fired: give it longer"
            reason += " to run"
        elif late is not None and not fire["run_cnt"]:
            # The trigger may have run before the loader had attached.
            reason = f"{tool} was not ready within its time limit of {late:.0f} s when the trigger ran, and"
            reason += " never fired: raise its time_limit"
    return dataclasses.replace(res, reason=reason[:REASON_CHARS], details={**res.details, **details})


def check_loader_program(probe: Probe, record: OwnLoaderRecord, ctx: GuestContext) -> list[CellResult]:
    """LOAD, CORE, ATTACH and FIRE of one program of an object its own loader ran."""
    tool = loader_name(record.get("command"))
    programs = list(record.get("programs") or [])
    matched = [p for p in programs if same_program(probe.program, p)]
    details = _details(record, matched)
    if why := not_started(record):
        return [_cell(probe, ctx, c, Outcome.ERROR, f"own loader: {why}", details) for c in CHECKS]
    failed = bool(record.get("exited")) and record.get("returncode") not in (0, None)
    said = last_line(str(record.get("output") or ""))
    core = _cell(probe, ctx, Check.CORE, Outcome.SKIP,
                 f"loaded by its own loader ({tool}): CO-RE is resolved inside it", details)
    if not matched:
        if not programs and not failed and not record.get("exited"):
            limit = float(record.get("time_limit") or 0)
            why = f"{tool} loaded nothing within its time limit of {limit:.0f} s (raise its time_limit?)"
            return [_cell(probe, ctx, c, Outcome.ERROR, why, details) for c in CHECKS]
        if failed or not programs:
            load = _cell(probe, ctx, Check.LOAD, Outcome.FAIL,
                         f"not loaded: {tool} {describe_exit(record)}: {said}", details)
        else:
            load = _cell(probe, ctx, Check.LOAD, Outcome.SKIP,
                         f"left out by the loader: {tool} loaded {len(programs)} other programs",
                         details)
        rest = [_cell(probe, ctx, c, Outcome.SKIP, "not loaded", details) for c in (Check.ATTACH, Check.FIRE)]
        return [load, core, *rest]
    first = matched[0]
    shared = f"; {len(matched)} programs of that name" if len(matched) > 1 else ""
    what = f"{first.get('type')} program {first.get('name')!r}, id {first.get('id')}{shared}"
    load = _cell(probe, ctx, Check.LOAD, Outcome.PASS, f"loaded by {tool} ({what})", details)
    attached = [a for p in matched for a in p.get("attached") or []]
    if not attached:
        if failed:
            attach = _cell(probe, ctx, Check.ATTACH, Outcome.FAIL,
                           f"loaded but not attached: {tool} {describe_exit(record)}: {said}", details)
        else:
            attach = _cell(probe, ctx, Check.ATTACH, Outcome.SKIP, f"loaded but left unattached by {tool}",
                           details)
        return [load, core, attach, _cell(probe, ctx, Check.FIRE, Outcome.SKIP, "not attached", details)]
    where = ", ".join(dict.fromkeys(describe_attachment(a) for a in attached))
    attach = _cell(probe, ctx, Check.ATTACH, Outcome.PASS, f"attached by {tool}: {where}", details)
    early = bool(record.get("exited")) and not record.get("stopped") and record.get("ready") != "exited"
    late = float(record.get("time_limit") or 0) if record.get("ready") == "time limit" else None
    return [load, core, attach, _fire(probe, ctx, matched, tool, details, early, late)]


def check_loader_objects(
    probes: Sequence[Probe], objects: Sequence[ObjectRecord], ctx: GuestContext
) -> list[CellResult]:
    """The in-guest results of ``probes`` whose objects the agent ran with their own loader."""
    by_name = {str(o.get("object")): o for o in objects}
    results: list[CellResult] = []
    for probe in probes:
        obj = by_name.get(probe.object)
        record = obj.get("own_loader") if obj is not None else None
        if obj is not None and obj.get("error"):
            why = str(obj["error"])
        elif record is None:
            why = f"the guest agent did not report {probe.object}'s own loader"
        else:
            results += check_loader_program(probe, record, ctx)
            continue
        results += [CellResult(probe, ctx.kernel, ctx.arch, c, Outcome.ERROR, why) for c in CHECKS]
    return results
