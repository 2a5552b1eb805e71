"""Turning the guest agent's records and libbpf's logs into LOAD, CORE, ATTACH and FIRE results (pure)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.report.results import CellResult, Check, Outcome, Probe
from harness.vm.guest.protocol import (
    AttachRecord,
    FireRecord,
    LoadRecord,
    ObjectRecord,
    ProgramRecord,
    SetRecord,
)

# libbpf's CO-RE log lines (libbpf.c, bpf_core_apply_relo / bpf_core_calc_relo_insn), e.g.
#   prog 'p': relo #1: <byte_off> [17] struct dentry.d_name.len (0:4:1:0:0:1 @ offset 36)
#   prog 'p': relo #1: matching candidate #0 <byte_off> [973] struct dentry.d_name.len (0:4:0:0:1 @ offset 36)
#   prog 'p': relo #1: patched insn #1 (ALU/ALU64) imm 36 -> 36
#   prog 'p': relo #2: no matching targets found
#   prog 'p': relo #2: substituting insn #5 w/ invalid insn
#   prog 'p': relo #2: failed to resolve CO-RE relocation <byte_off> ...: -3
_RELO_SPEC = re.compile(
    r"prog '(?P<prog>[^']+)': relo #(?P<idx>\d+): <(?P<kind>[a-z_]+)> \[\d+\] (?P<spec>.+?)"
    r"(?: \((?P<access>[0-9:]+)(?: @ offset (?P<offset>\d+))?\))?$"
)
_RELO_EVENT = re.compile(r"prog '(?P<prog>[^']+)': relo #(?P<idx>\d+): (?P<rest>.*)$")
_PATCHED = re.compile(r"patched insn #\d+ \([^)]*\) (?:off|imm) (?P<old>-?\d+) -> (?P<new>-?\d+)")

LEFT_OUT = "left out by the loader (autoload off)"
GUEST_LOAD_CHECKS = (Check.LOAD, Check.ATTACH, Check.FIRE)

VERIFIER_BEGIN = "-- BEGIN PROG LOAD LOG --"
VERIFIER_END = "-- END PROG LOAD LOG --"
VERIFIER_TAIL_LINES = 6


@dataclass(frozen=True)
class Relocation:
    """One CO-RE relocation of one program as libbpf resolved it in the guest."""

    index: int
    kind: str  # byte_off, byte_sz, field_exists, type_exists, enumval_exists, ...
    spec: str  # "struct dentry.d_name.len"
    status: str  # "resolved", "failed" (poisoned) or "unknown"
    local_offset: int | None = None
    target: str = ""  # the matching candidate's spec
    value: int | None = None  # the patched value (offset, size, 0/1 for exists)
    message: str = ""

    def serialize(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "spec": self.spec,
            "status": self.status,
            "local_offset": self.local_offset,
            "target": self.target,
            "value": self.value,
            "message": self.message,
        }


def parse_relocations(log: str, program: str) -> list[Relocation]:
    """The CO-RE relocations of ``program`` in a libbpf debug log, in order."""
    found: dict[int, dict[str, Any]] = {}
    for raw in log.splitlines():
        line = raw.removeprefix("libbpf: ").strip()
        event = _RELO_EVENT.search(line)
        if not event or event["prog"] != program:
            continue
        if "calls kfunc" in event["rest"]:
            continue  # "relo #4: poisoning insn #13 that calls kfunc 'x'": a ksym, not CO-RE (the load says)
        idx = int(event["idx"])
        rest = event["rest"]
        rec = found.setdefault(idx, {"index": idx, "kind": "", "spec": "", "status": "unknown"})
        spec = _RELO_SPEC.search(line)
        if spec and not rest.startswith("matching candidate"):
            rec["kind"] = spec["kind"]
            rec["spec"] = spec["spec"]
            if spec["offset"] is not None:
                rec["local_offset"] = int(spec["offset"])
            continue
        if rest.startswith("matching candidate"):
            cand = _RELO_SPEC.search(line.replace("matching candidate #", "").replace(": 0 <", ": <"))
            target = rest.split(">", 1)[-1].strip()
            rec["target"] = re.sub(r"^\[\d+\] ", "", target)
            if cand is None:
                continue
        patched = _PATCHED.search(rest)
        if patched:
            rec["status"] = "resolved"
            rec["value"] = int(patched["new"])
            continue
        lowered = rest.lower()
        if (
            "no matching targets found" in lowered
            or "substituting insn" in lowered
            or "failed to resolve" in lowered
            or "poison" in lowered
        ):
            rec["status"] = "failed"
            rec["message"] = rec.get("message") or rest
    return [Relocation(**found[k]) for k in sorted(found)]


def verifier_tail(log: str, lines: int = VERIFIER_TAIL_LINES) -> list[str]:
    """The last meaningful lines of the verifier log inside a libbpf load log (or of the whole log)."""
    text = log
    if VERIFIER_BEGIN in log:
        text = log.split(VERIFIER_BEGIN, 1)[1].split(VERIFIER_END, 1)[0]
    kept: list[str] = []
    for raw in text.splitlines():
        line = raw.removeprefix("libbpf: ").strip()
        if not line or line.startswith(("processed ", "verification time")):
            continue
        if re.match(r"^\d+: \(", line) and len(kept) > 200:
            continue
        kept.append(line)
    return kept[-lines:]


# The verifier's log (kernel/bpf/verifier.c) between libbpf's markers: instructions ("5: (61) r2 =
# *(u32 *)(r1 +36)", followed by "; R2_w=..." state from 5.18), register states, source lines, branch
# and precision-tracking chatter, and last the error, then "processed N insns". libbpf 1.0+ rewrites a
# poisoned CO-RE instruction as "5: <invalid CO-RE relocation>" with "failed to resolve CO-RE
# relocation ..." after it.
_INSN = re.compile(
    r"^(?P<idx>\d+): (?:\([0-9a-f]{2}\) (?P<text>.*?)|(?P<poisoned><invalid [^>]+>))\s*(?:;.*)?$"
)
_VERIFIER_CHATTER = re.compile(
    r"^(?:\d+: R\d|\d+: \w+=|\d+:\s*$|;|R\d+\w*=|from \d+ to \d+:|last_idx |regs=|parent |mark_precise|"
    r"frame\d|propagating|func#|caller:|callee:|returning from callee|to caller at|Func#|stack depth|"
    r"verification time|processed |BTF |Validating |reg type unsupported for arg#|arg#\d)"
)
# The poisoned call libbpf 0.x put in place of an instruction whose CO-RE relocation failed (0xbad2310).
_POISONED_CALL = "unknown#195896080"


@dataclass(frozen=True)
class VerifierError:
    """The verifier's own reason for a rejection, and the instruction it was at (when it says)."""

    message: str
    insn: int | None = None
    insn_text: str = ""

    def render(self) -> str:
        at = ""
        if self.insn is not None:
            # A poisoned instruction ("<invalid CO-RE relocation>") is the message itself: its index only.
            shown = self.insn_text if self.insn_text and not self.insn_text.startswith("<") else ""
            at = f" at insn {self.insn} `{shown}`" if shown else f" at insn {self.insn}"
        hint = " (a CO-RE relocation failed: see the core check)" if _POISONED_CALL in self.message else ""
        return f"{self.message}{hint}{at}"


def parse_verifier_error(log: str) -> VerifierError | None:
    """The verifier's last error line before "processed N insns", with the instruction before it."""
    if VERIFIER_BEGIN not in log:
        return None
    text = log.split(VERIFIER_BEGIN, 1)[1].split(VERIFIER_END, 1)[0]
    last_insn: tuple[int, str] | None = None
    found: VerifierError | None = None
    for raw in text.splitlines():
        line = raw.removeprefix("libbpf: ").strip()
        if not line:
            continue
        if line.startswith("processed ") or "BPF program is too large" in line:
            if "too large" in line:
                found = VerifierError(line)
            break
        insn = _INSN.match(line)
        if insn:
            last_insn = (int(insn["idx"]), (insn["text"] or insn["poisoned"] or "").strip())
            continue
        if _VERIFIER_CHATTER.match(line):
            continue
        found = VerifierError(line, *(last_insn or (None, "")))
    return found


# libbpf's lines that say where a load failed, most telling first: each pattern with how its reason
# reads. libbpf.c prints them before its generic tail ("failed to load object '...'").
ROOT_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), text) for pattern, text in (
        (r"failed to find kernel BTF type ID of '(?P<name>[^']+)'",
         "no `{name}` in the kernel's BTF to attach to (failed to find kernel BTF type ID of '{name}')"),
        (r"map '(?P<map>[^']+)': failed to create: (?P<why>.+?)(?:\(-?\d+\))?$",
         "map '{map}': failed to create: {why}"),
        (r"Error in bpf_create_map_xattr\((?P<map>[^)]+)\): ?(?P<why>.+?)(?:\(-?\d+\))?\. Retrying",
         "map '{map}': failed to create: {why}"),
        (r"map '(?P<map>[^']+)': (?P<why>.*(?:unsupported|not supported|invalid|failed|can't|cannot).*)",
         "map '{map}': {why}"),
        (r"extern \((?P<kind>func|var) ksym\) '(?P<name>[^']+)': not found in kernel(?: or module)? BTFs?",
         "{kind} ksym `{name}` is not in the kernel's BTF (a kfunc or kernel variable this kernel lacks)"),
        (r"extern \(kcfg\) '(?P<name>[^']+)': (?P<why>.+)", "kconfig extern `{name}`: {why}"),
        (r"(?P<line>failed to find BTF for extern '[^']+'.*)", "{line}"),
        (r"(?P<line>failed to resolve CO-RE relocation .+)", "{line}"),
        (r"(?P<line>(?:Error loading vmlinux BTF|failed to find valid kernel BTF|kernel BTF is missing).*)",
         "the kernel's BTF could not be read: {line}"),
        (r"(?P<line>(?:failed to guess program type|missing BPF prog type|unrecognized ELF section).*)",
         "{line}"),
        # Last: lines that name a failure among libbpf's debug chatter ("elf: section(3) ...").
        (r"(?P<line>(?:elf|sec '[^']+'|prog '[^']+'): .*(?:failed|invalid|corrupted|unsupported|unknown|"
         r"not found|not supported).*)",
         "{line}"),
    )
)

# libbpf's lines that only say that something failed, not why.
_GENERIC = re.compile(
    r"failed to load object|prog '[^']+': failed to load: -?\d+$|failed to prepare load attributes|"
    r"BPF program load failed|-- (?:BEGIN|END) PROG LOAD LOG --|Retrying without BTF|"
    r"failed to load program|failed to load BPF skeleton|: -\d+$"
)


def root_cause(log: str) -> str:
    """Why a load (or an open) failed, from a libbpf log: the first line the most telling pattern of
    ROOT_CAUSES matches, in words; else libbpf's first error line that is not its generic tail; else ""."""
    lines = [raw.removeprefix("libbpf: ").strip() for raw in log.splitlines()]
    for pattern, text in ROOT_CAUSES:
        for line in lines:
            found = pattern.search(line)
            if found:
                return text.format(**found.groupdict())
    for line in lines:
        said = "fail" in line or "error" in line.lower() or "Err" in line
        if said and not _GENERIC.search(line):
            return line
    return ""


# Kernel-internal error numbers (include/linux/errno.h) that reach user space from bpf(2) and that
# libc's strerror does not know.
KERNEL_ERRNOS = {
    512: ("ERESTARTSYS", "restart syscall"),
    524: ("ENOTSUPP", "operation not supported by this kernel"),
    525: ("ETOOSMALL", "buffer too small"),
    526: ("ESERVERFAULT", "server fault"),
    527: ("EBADTYPE", "type not supported by server"),
}


# Numbers with two names in libc, given the one the kernel's sources use. Python's table names 95
# ENOTSUP, one letter away from the kernel-internal ENOTSUPP (524), a different error.
KERNEL_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(number: int) -> str:
    if number in KERNEL_ERRNOS:
        return KERNEL_ERRNOS[number][0]
    return KERNEL_NAMES.get(number) or errno.errorcode.get(number, str(number))


def errno_text(number: int, fallback: str = "") -> str:
    """``ENOTSUPP (operation not supported by this kernel)``: the name and what it means."""
    if number in KERNEL_ERRNOS:
        return "{} ({})".format(*KERNEL_ERRNOS[number])
    return f"{errno_name(number)} ({fallback or os.strerror(number)})"


def attach_hint(probe: Probe, err: int | None, arch: str) -> str:
    """Why an attach failed, where the errno says more than itself."""
    if err == 524 and probe.kind in ("fentry", "fexit", "fmod_ret", "lsm") and arch == "arm64":
        # arm64 gained ftrace direct calls (what BPF trampolines attach with) in 6.4.
        return "BPF trampolines (fentry/fexit/lsm) need ftrace direct calls, on arm64 from 6.4"
    if err == 524:
        return "the kernel does not support this attach type here"
    if err == 2 and probe.kind in ("kprobe", "kretprobe"):
        return f"no kprobe-able `{probe.target}` on this kernel"
    return ""


def _last_libbpf_error(log: str) -> str:
    for raw in reversed(log.splitlines()):
        line = raw.removeprefix("libbpf: ").strip()
        if line and ("fail" in line or "error" in line.lower() or "Err" in line):
            return line
    return ""


@dataclass(frozen=True)
class GuestContext:
    """What the in-guest checks of one (kernel, arch) need besides the agent's records."""

    kernel: str
    arch: str
    stats_enabled: bool = True


def _result(
    probe: Probe, ctx: GuestContext, check: Check, outcome: Outcome, reason: str, **details: Any
) -> CellResult:
    return CellResult(probe, ctx.kernel, ctx.arch, check, outcome, reason, details)


def open_error(object_record: ObjectRecord) -> str:
    """Why libbpf could not open an object, in its own words ("" when it was opened)."""
    whole: LoadRecord = object_record.get("whole_load") or {"ok": False}
    if whole.get("stage") != "open":
        return ""
    err = whole.get("errno")
    said = root_cause(str(whole.get("log") or "")) or str(whole.get("error") or "")
    return f"libbpf could not open the object ({errno_name(int(err)) if err else 'error'}): {said}"


def check_guest_program(
    probe: Probe, record: ProgramRecord | None, object_record: ObjectRecord, ctx: GuestContext
) -> list[CellResult]:
    """LOAD, CORE, ATTACH and FIRE results of one program from the agent's record of its object."""
    if object_record.get("error"):
        msg = open_error(object_record) or str(object_record["error"])
        return [_result(probe, ctx, c, Outcome.ERROR, msg[:300]) for c in GUEST_LOAD_CHECKS]
    if probe.program in (object_record.get("left_out") or []):
        return [_result(probe, ctx, c, Outcome.SKIP, LEFT_OUT) for c in (*GUEST_LOAD_CHECKS, Check.CORE)]
    sets = list(object_record.get("loader_set") or [])
    unset = [s for s in sets if s.get("error")]
    if unset:
        msg = f"could not set what the loader sets: {describe_set(unset[0])}"
        return [_result(probe, ctx, c, Outcome.ERROR, msg[:300]) for c in GUEST_LOAD_CHECKS]
    if record is None:
        msg = f"program {probe.program} not found by libbpf in {probe.object}"
        return [_result(probe, ctx, Check.LOAD, Outcome.ERROR, msg)]
    load: LoadRecord = record.get("load") or {"ok": False}
    log = str(load.get("log") or object_record.get("load_log") or "")
    loaded = bool(load.get("ok"))
    relos = parse_relocations(log, probe.program)
    core = check_core(probe, relos, loaded, ctx)
    if not relos and not loaded and load.get("target") and load.get("stage") == "load":
        # Left out of the object's load once its BTF target was found absent: never relocated.
        core = _result(probe, ctx, Check.CORE, Outcome.SKIP,
                       f"not relocated: left out of the load, `{load['target']}` is not in the kernel's BTF")
    results = [check_load(probe, load, log, ctx, sets), core]
    if not loaded:
        results.append(_result(probe, ctx, Check.ATTACH, Outcome.SKIP, "not loaded"))
        results.append(_result(probe, ctx, Check.FIRE, Outcome.SKIP, "not loaded"))
        return results
    attach: AttachRecord = record.get("attach") or {"ok": False, "log": ""}
    if not attach.get("ok"):
        results.append(check_attach_failure(probe, attach, ctx))
        results.append(_result(probe, ctx, Check.FIRE, Outcome.SKIP, "not attached"))
        return results
    results.append(_result(probe, ctx, Check.ATTACH, Outcome.PASS, ""))
    results.append(check_fire(probe, record.get("fire"), ctx))
    return results


def describe_set(rec: SetRecord) -> str:
    """One thing set before a load, in words: "map 'stackmap': max_entries 1024 (the object has 0)"."""
    kind = str(rec.get("what"))
    what = {"attach_target": "attach target of", "data": "variable"}.get(kind, kind)
    return f"{what} '{rec.get('name', '')}': {rec.get('error') or rec.get('text', '')}"


def load_notes(program: str, sets: Sequence[SetRecord]) -> str:
    """What the harness set in place of the loader (zero-sized maps), and the program's loader-set target."""
    notes = [
        f"{describe_set(r)}, sized by the harness: the object leaves it to its loader"
        for r in sets if r.get("by") == "harness" and r.get("what") == "map"
    ]
    notes += [
        f"attached to `{r.get('text')}` as its loader sets it"
        for r in sets if r.get("what") == "attach_target" and r.get("name") == program
    ]
    return "; ".join(notes)


def check_load(
    probe: Probe, load: LoadRecord, log: str, ctx: GuestContext, sets: Sequence[SetRecord] = ()
) -> CellResult:
    """LOAD: loaded, or why the verifier (or libbpf before it) refused the program. ``sets`` is what was
    set on the object before its load (the sidecar's loader settings, sizes the harness gave)."""
    notes = load_notes(probe.program, sets)
    extra: dict[str, Any] = {"loader_set": list(sets)} if sets else {}
    if load.get("ok"):
        return _result(
            probe, ctx, Check.LOAD, Outcome.PASS, notes[:300], seconds=load.get("seconds"), **extra
        )
    tail = verifier_tail(log)
    err = load.get("errno")
    if load.get("stage") == "set_attach_target":
        target = str(load.get("target") or "")
        why = errno_text(int(err)) if err else "error"
        hint = " (no such function in this kernel's BTF)" if err == errno.ESRCH else ""
        reason = f"the loader's attach target `{target}` was refused: {why}{hint}"
        return _result(probe, ctx, Check.LOAD, Outcome.FAIL, reason[:300], errno=err, **extra)
    why = f"{errno_name(int(err))} " if err else ""
    verifier = parse_verifier_error(log)
    if verifier is not None:
        reason = f"verifier rejected it ({why.strip() or 'error'}): {verifier.render()}"
    elif VERIFIER_BEGIN in log:
        reason = f"verifier rejected it ({why.strip() or 'error'}): {tail[-1] if tail else ''}".strip()
    else:
        cause = root_cause(log)
        if not cause:
            cause = "libbpf names no cause (its log is in the details)"
            extra["log"] = log[-3000:]
        reason = f"load failed ({why.strip() or 'error'}): {cause}"
    if notes:
        extra["notes"] = notes
    return _result(probe, ctx, Check.LOAD, Outcome.FAIL, reason[:300], verifier_tail=tail, errno=err, **extra)


def check_core(probe: Probe, relos: list[Relocation], loaded: bool, ctx: GuestContext) -> CellResult:
    """CORE: every relocation resolved, or failed but guarded (the program loaded), or failed."""
    failed = [r for r in relos if r.status == "failed"]
    relo_details = [r.serialize() for r in relos]
    if not relos:
        return _result(probe, ctx, Check.CORE, Outcome.SKIP, "no CO-RE relocations")
    if failed and not loaded:
        names = ", ".join(f"`{r.spec}`" for r in failed)
        return _result(
            probe, ctx, Check.CORE, Outcome.FAIL,
            f"relocation {names} failed on {ctx.kernel}", relocations=relo_details,
        )
    if failed:
        # In-guest truth wins over any offline guess: libbpf poisons the instruction of a failed
        # relocation, and the verifier accepted the program, so no path of this kernel reaches it.
        names = ", ".join(f"`{r.spec}`" for r in failed)
        return _result(
            probe, ctx, Check.CORE, Outcome.PASS,
            f"relocation {names} unresolved on {ctx.kernel}, on no path the verifier walks"
            " (the program loaded)",
            relocations=relo_details,
        )
    return _result(probe, ctx, Check.CORE, Outcome.PASS, f"{len(relos)} relocations resolved",
                   relocations=relo_details)


def check_attach_failure(probe: Probe, attach: AttachRecord, ctx: GuestContext) -> CellResult:
    """ATTACH of a program that did not attach: the errno in words, and a hint or libbpf's last error."""
    err = attach.get("errno")
    code = int(err) if err else None
    hint = attach_hint(probe, code, ctx.arch)
    reason = f"attach failed: {errno_text(code, str(attach.get('error', ''))) if code else 'error'}"
    if hint:
        reason += f": {hint}"
    else:
        detail = _last_libbpf_error(str(attach.get("log") or ""))
        if detail:
            reason += f": {detail}"
    return _result(probe, ctx, Check.ATTACH, Outcome.FAIL, reason[:300], errno=err,
                   log=str(attach.get("log") or "")[-2000:])


def check_fire(probe: Probe, fire: FireRecord | None, ctx: GuestContext) -> CellResult:
    """FIRE: ran after its trigger (run_cnt), and how many executions it missed."""
    if not fire or "error" in fire:
        why = fire.get("error") if fire else "no run count"
        return _result(probe, ctx, Check.FIRE, Outcome.ERROR, f"could not read run count: {why}")
    if not ctx.stats_enabled:
        return _result(probe, ctx, Check.FIRE, Outcome.ERROR, "kernel.bpf_stats_enabled could not be set")
    runs = int(fire.get("run_cnt", 0))
    details = {
        "run_cnt": runs,
        "run_time_ns": fire.get("run_time_ns"),
        "recursion_misses": fire.get("recursion_misses"),
        "kprobe_missed": fire.get("kprobe_missed"),
        "trigger": fire.get("trigger"),
    }
    misses = int(fire.get("recursion_misses") or 0) + int(fire.get("kprobe_missed") or 0)
    if runs == 0 and misses == 0:
        return _result(
            probe, ctx, Check.FIRE, Outcome.FAIL,
            "attached but never fired after its trigger (target inlined, or the trigger misses it?)",
            **details,
        )
    if misses:
        parts = []
        if fire.get("recursion_misses"):
            parts.append(f"recursion_misses {fire['recursion_misses']}")
        if fire.get("kprobe_missed"):
            parts.append(f"kprobe missed {fire['kprobe_missed']}")
        return _result(
            probe, ctx, Check.FIRE, Outcome.FAIL,
            f"ran {runs} times but missed executions ({', '.join(parts)})", **details,
        )
    misses_text = (
        f", recursion_misses {fire['recursion_misses']}" if fire.get("recursion_misses") is not None else ""
    )
    return _result(probe, ctx, Check.FIRE, Outcome.PASS, f"ran {runs} times{misses_text}", **details)


def check_guest_objects(
    probes: Sequence[Probe], objects: Sequence[ObjectRecord], ctx: GuestContext
) -> list[CellResult]:
    """All in-guest results for ``probes`` from the agent's objects.json records."""
    by_name = {str(o.get("object")): o for o in objects}
    results: list[CellResult] = []
    for probe in probes:
        obj = by_name.get(probe.object)
        if obj is None:
            results += [
                _result(probe, ctx, c, Outcome.ERROR, f"the guest agent did not report {probe.object}")
                for c in (Check.LOAD, Check.ATTACH, Check.FIRE)
            ]
            continue
        programs = obj.get("programs") or {}
        results += check_guest_program(probe, programs.get(probe.program), obj, ctx)
    return results
