"""Verdicts that need more than one cell: fire by difference, targets absent on every kernel, and
alternatives groups (pure).

A probe's FIRE on one kernel means little alone: a probe that attached and never ran on any kernel of
the run (same arch, same trigger: one sidecar per run) was not reached by the workload, which says
nothing about kernels; one that ran on some kernels and never on others is the "attaches, never
fires" incompatibility. Likewise a target that exists on no kernel of the run (of any arch) is one a
loader sets at run time (``bpf_program__set_attach_target`` on a ``dummy_*`` placeholder), not drift.

Where these run (harness/plugin.py): the FIRE tests form their own pytest-xdist group, handed out
after every (kernel, arch) group, and read the other kernels' boot outcomes from the run directory
(harness/run/coordination.py); the SYMBOL tests already run in the offline group, which has every
kernel's facts. LOAD and ATTACH need only their own kernel: a failure on a kernel whose facts lack
the target defers to the SYMBOL check there. So every test asserts its final verdict, and the
reports are built from those same records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.checks.symbols import ABSENT, closest_functions
from harness.kernels.facts import KernelFacts
from harness.programs.hooks import Target, resolve_hook
from harness.report.results import CellResult, Check, Outcome

NOT_REACHED = "not reached by the workload on any kernel: give a trigger in the sidecar"
ABSENT_EVERYWHERE = "target absent on every kernel: set by the loader at run time? name it in the sidecar"
DEFERRED_CHECKS = (Check.LOAD, Check.CORE, Check.ATTACH)
LOADS = (Check.LOAD, Check.CORE)  # decided when the program loads
MAX_FIRED = 4  # kernels named in a "fired on" reason


def runs(result: CellResult) -> int:
    """The run count a FIRE record reports (0 when it reports none)."""
    value = result.details.get("run_cnt") if result.details else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def fired(result: CellResult) -> bool:
    """Whether the program ran at all (a FAIL for missed executions ran too)."""
    return result.check is Check.FIRE and result.outcome in (Outcome.PASS, Outcome.FAIL) and runs(result) > 0


def never_fired(result: CellResult) -> bool:
    """Whether a FIRE record is "attached, never ran, missed nothing"."""
    if result.check is not Check.FIRE or result.outcome is not Outcome.FAIL or runs(result):
        return False
    details = result.details or {}
    return not (details.get("recursion_misses") or details.get("kprobe_missed"))


def judge_fire(
    result: CellResult, same_probe: Sequence[CellResult], triggered: bool, hint: str = ""
) -> CellResult:
    """``result`` (a FIRE record) judged against the FIRE records of the same probe on every kernel
    of the run with its arch (``same_probe``, in kernels file order, ``result`` among them).

    Never ran anywhere: SKIP (not reached by the workload), unless the sidecar gave the program a
    trigger (``triggered``: it should fire, the FAIL stays). Ran elsewhere: FAIL naming where and how
    often, and ``hint`` (what this kernel's facts suggest). Any other record is returned as it is.
    """
    if not never_fired(result):
        return result
    elsewhere = [r for r in same_probe if r.arch == result.arch and r.kernel != result.kernel and fired(r)]
    if not elsewhere:
        if triggered:
            return result
        return dataclasses.replace(result, outcome=Outcome.SKIP, reason=NOT_REACHED)
    where = [f"{r.kernel} ({runs(r)})" for r in elsewhere[:MAX_FIRED]]
    where[0] = where[0].replace("(", "(run_cnt ", 1)
    more = f" and {len(elsewhere) - MAX_FIRED} more" if len(elsewhere) > MAX_FIRED else ""
    reason = f"fired on {', '.join(where)}{more}; never here after its trigger"
    if hint:
        reason += f": {hint}"
    details = {**result.details, "fired_on": {r.kernel: runs(r) for r in elsewhere}}
    return dataclasses.replace(result, reason=reason, details=details)


def fire_hint(target: str, kind: str, here: KernelFacts | None, fired: Sequence[KernelFacts]) -> str:
    """What this kernel's facts suggest of a kernel-function target that never ran here but ran on
    kernels with ``fired`` facts: clones, a local (inlined) copy, or another name of the same stem
    (a new name or wrapper only here); '' when they suggest nothing."""
    hook = resolve_hook(kind)
    if here is None or hook is None or hook.target is not Target.KERNEL_FUNCTION:
        return ""
    clones = here.clones.get(target, ())
    if clones:
        return f"GCC clones {_q(clones)} here: calls through them bypass `{target}`"
    types = here.symbols.get(target, "")
    if types and types.islower() and any(f.symbols.get(target, "").isupper() for f in fired):
        return f"`{target}` became local ({types[0]}) here: callers likely inline it"
    known = set().union(*(f.symbols.keys() for f in fired)) if fired else set()
    new = [n for n in closest_functions(target, here) if n not in known]
    if new:
        return f"new here with the same stem: {_q(new)} (renamed, or a new wrapper?)"
    return ""


def absent(result: CellResult) -> bool:
    """Whether a SYMBOL record says the target is nowhere on its kernel."""
    return (
        result.check is Check.SYMBOL
        and result.outcome is Outcome.FAIL
        and bool((result.details or {}).get(ABSENT))
    )


def judge_absent(result: CellResult, same_probe: Sequence[CellResult]) -> CellResult:
    """``result`` (a SYMBOL record) judged against the SYMBOL records of the same probe on every
    kernel and arch of the run (``same_probe``): absent on each of them is SKIP (a loader sets the
    target), with this kernel's own reason kept in the details. A target present on another arch
    only (a syscall wrapper's name) is drift, not a placeholder; and a run of one kernel cannot tell
    the two apart: its FAIL stays."""
    peers = list(same_probe)
    if not absent(result) or len(peers) < 2 or not all(absent(r) for r in peers):
        return result
    details = {**result.details, "here": result.reason}
    return dataclasses.replace(result, outcome=Outcome.SKIP, reason=ABSENT_EVERYWHERE, details=details)


def defer_to_symbol(result: CellResult, symbol: CellResult | None) -> CellResult:
    """An ATTACH failure, or the LOAD or CORE failure of a program whose load looks its target up
    (fentry, lsm, tp_btf), on a kernel whose facts lack the target: SKIP, naming the SYMBOL check that says so
    (once, with the reason across kernels), the guest's reason in the details."""
    hook = resolve_hook(result.probe.kind)
    if (
        result.check not in DEFERRED_CHECKS
        or result.outcome is not Outcome.FAIL
        or symbol is None
        or not absent(symbol)
        # A load that does not look the target up failed for a reason of its own.
        or (result.check in LOADS and not (hook is not None and hook.target_at_load))
    ):
        return result
    details = {**result.details, "guest_reason": result.reason}
    reason = f"target `{result.probe.target}` absent on {result.kernel}: see symbol"
    return dataclasses.replace(result, outcome=Outcome.SKIP, reason=reason, details=details)


def _path(spec: str) -> str:
    """A libbpf relocation spec (``struct request___x.rq_disk``) as the layout check's path."""
    return spec.split(" ", 1)[1] if spec.startswith(("struct ", "union ", "enum ")) else spec


def core_guarded(core: CellResult, layout: CellResult | None) -> CellResult:
    """A CORE failure of a program that did not load (no verifier's word on reachability), where the
    offline layout check of the same kernel finds every failed relocation on a path an exists check
    rules out: PASS with a note; the program's load cell says why it did not load."""
    if core.check is not Check.CORE or core.outcome is not Outcome.FAIL or layout is None:
        return core
    if layout.outcome is not Outcome.PASS:
        return core
    guarded = {
        str(r.get("path")): str(r.get("guard"))
        for r in (layout.details or {}).get("relocations", [])
        if isinstance(r, dict) and r.get("guarded")
    }
    failed = [r for r in (core.details or {}).get("relocations", [])
              if isinstance(r, dict) and r.get("status") == "failed"]
    paths = [_path(str(r.get("spec", ""))) for r in failed]
    if not paths or not all(p in guarded for p in paths):
        return core
    guards = sorted({guarded[p] for p in paths})
    reason = (
        f"relocation {_q(paths)} unresolved on {core.kernel}, on a path the exists check of {_q(guards)}"
        " rules out (see layout; the load cell says why the program did not load)"
    )
    details = {**core.details, "guest_reason": core.reason}
    return dataclasses.replace(core, outcome=Outcome.PASS, reason=reason, details=details)


def _q(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


# --- alternatives ----------------------------------------------------------------------------------

WORKING = frozenset({Outcome.PASS, Outcome.SKIP})


# A member works only where it loads and attaches: a skip of those (an absent target, a program its
# loader leaves out) is no failure, but nothing runs there either.
MUST_PASS = frozenset({Check.LOAD, Check.ATTACH})


def member_works(records: Sequence[CellResult]) -> bool:
    """Whether a program passes every check of one cell: no failure (other skips are none), and its
    load and attach passed where the cell has them (one pass at least)."""
    return (
        bool(records)
        and all(r.outcome in WORKING for r in records)
        and all(r.outcome is Outcome.PASS for r in records if r.check in MUST_PASS)
        and any(r.outcome is Outcome.PASS for r in records)
    )


@dataclass(frozen=True)
class GroupVerdict:
    """An alternatives group on one (kernel, arch): PASS when a member passes every check there."""

    object: str
    group: str
    kernel: str
    arch: str
    outcome: Outcome
    working: tuple[str, ...]  # the members that work there, in sidecar order
    reason: str

    def serialize(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel, "arch": self.arch, "outcome": self.outcome.value,
            "working": list(self.working), "reason": self.reason,
        }


def judge_group(
    object_name: str, group: str, kernel: str, arch: str, cells: Mapping[str, Sequence[CellResult]]
) -> GroupVerdict:
    """The verdict of group ``group`` on (kernel, arch) from ``cells``: member program -> its records
    there (checks/across.py's verdicts, before expectations). No member works: ERROR when one of
    them could not be decided, else FAIL naming each member's failing checks."""
    working = tuple(m for m, recs in cells.items() if member_works(recs))
    if working:
        reason = f"works through {', '.join(working)}"
        return GroupVerdict(object_name, group, kernel, arch, Outcome.PASS, working, reason)
    failing = []
    for member, recs in cells.items():
        bad = [
            r.check.value for r in recs
            if r.outcome not in WORKING or (r.check in MUST_PASS and r.outcome is not Outcome.PASS)
        ]
        failing.append(f"{member} ({','.join(bad) or 'no record'})")
    undecided = any(r.outcome is Outcome.ERROR for recs in cells.values() for r in recs)
    outcome = Outcome.ERROR if undecided else Outcome.FAIL
    reason = f"no member works: {'; '.join(failing)}"
    return GroupVerdict(object_name, group, kernel, arch, outcome, (), reason)
