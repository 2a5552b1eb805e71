"""Guest scenarios beyond load/attach/fire (e.g. a uprobe across a library update): planning and results."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.checks.guest import GuestContext
from harness.checks.uprobe import (
    GUEST_USER_DIR,
    load_elf_functions,
    parse_uprobe_target,
)
from harness.errors import ObjectError
from harness.programs.inventory import BPFObject
from harness.report.results import CellResult, Check, Outcome, Probe
from harness.vm.guest import protocol

UPDATE_KIND = "uprobe_update"
# How the library is replaced: over its inode (cp, install without -T... any in-place write) or by
# renaming a new file over it (dpkg, rpm). Both leave an offset-attached uprobe quiet, differently.
REPLACE_MODES = ("overwrite", "rename")
MODE_WORDS = {"overwrite": "cp over it", "rename": "renamed over it"}


def update_name(library: str) -> str | None:
    """The sample that updates ``library``: ``libfoo.v2.so`` for ``libfoo.so``; None for a non-library."""
    if not library.endswith(".so"):
        return None
    return library[: -len(".so")] + ".v2.so"


def _section_at(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            for section in ELFFile(fh).iter_sections():
                start, size = int(section["sh_offset"]), int(section["sh_size"])
                if section["sh_type"] != "SHT_NOBITS" and start <= offset < start + size and section.name:
                    return section.name
    except (OSError, ELFError):
        pass
    return ""


def describe_offset(path: Path, offset: int) -> str:
    """What sits at file offset ``offset`` of the ELF ``path``, in words: a function, or a section."""
    try:
        elf = load_elf_functions(path)
    except ObjectError:
        return "unreadable"
    func = elf.at_offset(offset)
    if func is None:
        section = _section_at(path, offset)
        return f"in `{section}`, no function" if section else "in no function"
    if func.offset == offset:
        return f"the start of `{func.name}`"
    return f"inside `{func.name}` (+{offset - func.offset:#x})"


def plan_update(
    obj: BPFObject, probe: Probe, samples: Mapping[str, Path], trigger: protocol.Trigger | None
) -> protocol.UpdateScenario | None:
    """The uprobe_update scenario of ``probe`` when it targets a sample library that has a v2."""
    target = parse_uprobe_target(probe.target)
    if target is None or target.raw or not target.path.startswith(GUEST_USER_DIR + "/"):
        return None
    name = target.path[len(GUEST_USER_DIR) + 1:]
    v2_name = update_name(name)
    if v2_name is None or name not in samples or v2_name not in samples or trigger is None:
        return None
    try:
        v1 = load_elf_functions(samples[name]).named(target.function)
        v2 = load_elf_functions(samples[v2_name]).named(target.function)
    except ObjectError:
        return None
    if not v1 or not v2:
        return None
    v1_offset = v1[0].offset + target.offset
    v2_offset = v2[0].offset + target.offset
    return {
        "kind": UPDATE_KIND,
        "object": obj.name,
        "program": probe.program,
        "path": f"{protocol.OBJECTS_DIR}/{obj.path.name}",
        "library": target.path,
        "function": target.function,
        "v1": f"{protocol.USER_DIR}/{name}",
        "v2": f"{protocol.USER_DIR}/{v2_name}",
        "v1_offset": v1_offset,
        "v2_offset": v2_offset,
        "stale": describe_offset(samples[v2_name], v1_offset),
        "trigger": trigger,
        "modes": list(REPLACE_MODES),
    }


def plan_scenarios(
    share: Path, objects: Sequence[BPFObject], progs_dir: Path, samples: Mapping[str, Path]
) -> list[protocol.UpdateScenario]:
    """The scenarios the guest agent runs after the objects, with their files written into ``share``.

    Each scenario is a JSON-ready dict with a "kind" the agent's scenarios module knows. ``samples``
    are bpf_progs/user/ built for the guest's arch; they are copied to share/user/ (the guest's
    /mnt/user/). When they did not build there is none: the probes on them are ERROR cells.
    """
    if not samples:
        return []
    dest = share / protocol.USER_DIR
    dest.mkdir(exist_ok=True)
    for name, path in samples.items():
        shutil.copy2(path, dest / name)
    from harness.programs.sidecar import load_sidecar

    scenarios: list[protocol.UpdateScenario] = []
    for obj in objects:
        triggers = load_sidecar(progs_dir, obj.name).triggers_for(obj.probes)
        for probe in obj.probes:
            if probe.kind != "uprobe":
                continue
            planned = plan_update(obj, probe, samples, triggers.get(probe.program))
            if planned is not None:
                scenarios.append(planned)
    return scenarios


def _count(mode: Mapping[str, Any], key: str) -> int:
    value = mode.get(key)
    return int(value) if isinstance(value, (int, float)) else 0


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _death(mode: Mapping[str, Any]) -> str:
    """How the program's run after the update ended, when it did not end well; else empty."""
    runs = mode.get("runs")
    if not isinstance(runs, list) or len(runs) < 2 or not isinstance(runs[1], Mapping) or runs[1].get("ok"):
        return ""
    rc = runs[1].get("returncode")
    if isinstance(rc, int) and rc < 0:
        try:
            return f"the program died of {signal.Signals(-rc).name}"
        except ValueError:
            return f"the program died of signal {-rc}"
    if isinstance(rc, int):
        return f"the program exited {rc}"
    return f"the program did not run: {runs[1].get('error', 'unknown error')}"


def check_update(
    probe: Probe, record: protocol.ScenarioRecord, ctx: GuestContext, plan: Mapping[str, Any]
) -> CellResult:
    """The FIRE result of one uprobe_update record (``plan`` is the scenario it ran, for offsets)."""
    details: dict[str, Any] = {"scenario": UPDATE_KIND, "modes": dict(record.get("modes") or {})}
    for key in ("v1_offset", "v2_offset", "stale"):
        if key in plan:
            details[key] = plan[key]

    def result(outcome: Outcome, reason: str) -> CellResult:
        return CellResult(probe, ctx.kernel, ctx.arch, Check.FIRE, outcome, reason, details)

    if record.get("error"):
        return result(Outcome.ERROR, f"library-update scenario: {record['error']}")
    modes = record.get("modes") or {}
    if not isinstance(modes, Mapping) or not modes:
        return result(Outcome.ERROR, "library-update scenario: no replace mode ran")
    errors = [f"{m}: {r.get('error')}" for m, r in modes.items() if isinstance(r, Mapping) and r.get("error")]
    if errors:
        return result(Outcome.ERROR, f"library-update scenario: {'; '.join(errors)}"[:300])
    never = [m for m, r in modes.items() if _count(r, "v1") == 0]
    if never:
        return result(Outcome.FAIL, f"never fired at the v1 offset, before any update ({', '.join(never)})")
    v1_off = plan.get("v1_offset")
    v2_off = plan.get("v2_offset")
    stale = f"offset {v1_off:#x} stale" if isinstance(v1_off, int) else "offset stale"
    if plan.get("stale"):
        stale += f", now {plan['stale']} in v2"
    func = plan.get("function")
    if func and plan.get("stale") == f"the start of `{func}`":
        # The function did not move: a probe by offset survives this update.
        stale = f"`{func}` still at {v1_off:#x}" if isinstance(v1_off, int) else f"`{func}` did not move"
    quiet = [m for m, r in modes.items() if _count(r, "after_update") == 0 and not _death(r)]
    wrong: list[str] = []
    for m, r in modes.items():
        if m in quiet:
            continue
        fired = _count(r, "after_update")
        what = [f"fired {_times(fired)} at the old offset"] if fired else []
        if _death(r):
            what.append(_death(r))
        wrong.append(f"{MODE_WORDS.get(m, m)}: {' and '.join(what)}")
    back = [m for m, r in modes.items() if _count(r, "after_reattach") > 0]
    where = f" at {v2_off:#x}" if isinstance(v2_off, int) else ""
    if quiet:
        how = ", ".join(MODE_WORDS.get(m, m) for m in quiet)
        parts = [f"quiet after the library update ({how}; {stale})"]
    else:
        parts = [f"after the library update ({stale})"]
    parts += wrong
    if len(back) == len(modes):
        parts.append(f"fires again after re-attach{where}")
    else:
        parts.append(f"still quiet after re-attach{where} ({', '.join(m for m in modes if m not in back)})")
    reason = "; ".join(parts)
    moved = not (func and plan.get("stale") == f"the start of `{func}`")
    clean = not quiet and not any(_death(r) for r in modes.values()) and len(back) == len(modes)
    if clean and not moved:
        return result(Outcome.PASS, f"kept firing {reason}")
    return result(Outcome.FAIL, reason)


def check_scenarios(
    probes: Sequence[Probe], records: Sequence[protocol.ScenarioRecord], ctx: GuestContext,
    plans: Sequence[protocol.UpdateScenario] = (),
) -> list[CellResult]:
    """Results of the scenarios' records (scenarios.json); they replace the plain in-guest results.

    ``plans`` are the scenarios as planned, matched by (object, program); the agent's records echo
    what they need of them, so they are optional.
    """
    by_key = {(p.object, p.program): p for p in probes}
    planned = {(str(p.get("object")), str(p.get("program"))): p for p in plans}
    out: list[CellResult] = []
    for record in records:
        if record.get("kind") != UPDATE_KIND:
            continue
        key = (str(record.get("object")), str(record.get("program")))
        probe = by_key.get(key)
        if probe is None:
            continue
        plan = {**planned.get(key, {}), **dict(record.get("plan") or {})}
        out.append(check_update(probe, record, ctx, plan))
    return out
