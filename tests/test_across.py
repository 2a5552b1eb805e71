"""Tests of harness.checks.across: verdicts judged against every kernel of a run (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.checks import across
from harness.checks.symbols import check_symbol
from harness.kernels.config import ARCHES
from harness.kernels.facts import load_facts
from harness.report.results import CellResult, Check, Outcome, Probe

FACTS = Path(__file__).resolve().parent / "data" / "facts"
KPROBE = Probe("blk", "kp", "kprobe/blk_account_io_start", "kprobe", "blk_account_io_start")
NEVER = "attached but never fired after its trigger (target inlined, or the trigger misses it?)"


def fire(kernel: str, run_cnt: int, arch: str = "x86_64", **extra: Any) -> CellResult:
    outcome = Outcome.PASS if run_cnt else Outcome.FAIL
    details = {"run_cnt": run_cnt, "recursion_misses": 0, **extra}
    return CellResult(KPROBE, kernel, arch, Check.FIRE, outcome, "" if run_cnt else NEVER, details)


def test_never_fired_on_any_kernel_is_not_reached() -> None:
    peers = [fire("5.10", 0), fire("6.1", 0)]
    judged = across.judge_fire(peers[1], peers, triggered=False)
    assert judged.outcome is Outcome.SKIP
    assert judged.reason == across.NOT_REACHED


def test_never_fired_anywhere_with_its_own_trigger_stays_fail() -> None:
    peers = [fire("5.10", 0), fire("6.1", 0)]
    assert across.judge_fire(peers[1], peers, triggered=True) == peers[1]


def test_fired_elsewhere_is_fail_naming_where_with_run_counts() -> None:
    peers = [fire("5.10", 12), fire("6.1", 3), fire("6.12", 0)]
    judged = across.judge_fire(peers[2], peers, triggered=False, hint="GCC clones `x.isra.0` here")
    assert judged.outcome is Outcome.FAIL
    assert judged.reason == (
        "fired on 5.10 (run_cnt 12), 6.1 (3); never here after its trigger: GCC clones `x.isra.0` here"
    )
    assert judged.details["fired_on"] == {"5.10": 12, "6.1": 3}


def test_fired_only_on_another_arch_is_not_a_difference() -> None:
    peers = [fire("6.1", 5, arch="arm64"), fire("6.1", 0)]
    assert across.judge_fire(peers[1], peers, triggered=False).outcome is Outcome.SKIP


def test_missed_executions_count_as_fired_and_are_left_alone() -> None:
    missed = CellResult(KPROBE, "5.10", "x86_64", Check.FIRE, Outcome.FAIL, "ran 0 times but missed",
                        {"run_cnt": 0, "recursion_misses": 4})
    peers = [missed, fire("6.1", 0)]
    assert across.judge_fire(missed, peers, triggered=False) == missed
    assert not across.never_fired(missed)


@pytest.mark.parametrize("outcome", [Outcome.PASS, Outcome.SKIP, Outcome.ERROR])
def test_other_fire_records_are_unchanged(outcome: Outcome) -> None:
    rec = CellResult(KPROBE, "6.1", "x86_64", Check.FIRE, outcome, "x", {})
    assert across.judge_fire(rec, [rec], triggered=False) == rec


def test_fire_hint_names_what_the_facts_suggest() -> None:
    f510 = load_facts(FACTS / "5.10-x86_64")
    f61 = load_facts(FACTS / "6.1-x86_64")
    # 6.1's blk_account_io_done is a local symbol where 5.10's is global: inlined into its callers.
    hint = across.fire_hint("blk_account_io_done", "kprobe", f61, [f510])
    assert hint.startswith("`blk_account_io_done` became local (t) here"), hint
    clone = next(name for name, clones in f61.clones.items() if clones and name not in f61.symbols)
    assert "GCC clones" in across.fire_hint(clone, "kprobe", f61, [f510])
    assert across.fire_hint("sched/sched_switch", "tracepoint", f61, [f510]) == ""
    assert across.fire_hint("blk_account_io_done", "kprobe", None, [f510]) == ""


def symbol(kernel: str, probe: Probe) -> CellResult:
    return check_symbol(probe, kernel, ARCHES["x86_64"], load_facts(FACTS / f"{kernel}-x86_64"))


def test_a_target_absent_on_every_kernel_is_one_skip() -> None:
    dummy = Probe("tool", "fe", "fentry/dummy_file_open", "fentry", "dummy_file_open")
    peers = [symbol("5.10", dummy), symbol("6.1", dummy)]
    assert all(across.absent(r) for r in peers)
    for rec in peers:
        judged = across.judge_absent(rec, peers)
        assert (judged.outcome, judged.reason) == (Outcome.SKIP, across.ABSENT_EVERYWHERE)
        assert judged.details["here"] == rec.reason


def test_a_target_absent_on_some_kernels_stays_fail() -> None:
    peers = [symbol("5.10", KPROBE), symbol("6.1", KPROBE)]
    assert peers[0].outcome is Outcome.PASS and across.absent(peers[1]), peers
    assert across.judge_absent(peers[1], peers) == peers[1]


def test_untraceable_or_cloned_targets_are_not_absent() -> None:
    untraceable = Probe("blk", "kd", "kprobe/blk_account_io_done", "kprobe", "blk_account_io_done")
    rec = symbol("6.1", untraceable)
    assert rec.outcome is Outcome.FAIL and not across.absent(rec)


def test_load_and_attach_failures_of_an_absent_target_defer_to_symbol() -> None:
    sym = symbol("6.1", KPROBE)
    attach = CellResult(KPROBE, "6.1", "x86_64", Check.ATTACH, Outcome.FAIL, "attach failed: ENOENT", {})
    judged = across.defer_to_symbol(attach, sym)
    assert judged.outcome is Outcome.SKIP
    assert judged.reason == "target `blk_account_io_start` absent on 6.1: see symbol"
    assert judged.details["guest_reason"] == "attach failed: ENOENT"
    # Present there: the guest's failure is the truth and stays.
    assert across.defer_to_symbol(attach, symbol("5.10", KPROBE)) == attach
    fired = fire("6.1", 0)
    assert across.defer_to_symbol(fired, sym) == fired


def cell(program: str, kernel: str, *outcomes: Outcome) -> list[CellResult]:
    probe = Probe("alt", program, f"kprobe/{program}", "kprobe", program)
    checks = (Check.SYMBOL, Check.LOAD, Check.FIRE)
    return [CellResult(probe, kernel, "x86_64", c, o) for c, o in zip(checks, outcomes)]


def test_a_group_passes_through_the_members_that_pass_every_check() -> None:
    cells = {
        "fentry_start": cell("fentry_start", "6.1", Outcome.PASS, Outcome.FAIL),
        "kprobe_start": cell("kprobe_start", "6.1", Outcome.PASS, Outcome.PASS, Outcome.SKIP),
        "tp_start": cell("tp_start", "6.1", Outcome.PASS, Outcome.PASS),
    }
    verdict = across.judge_group("alt", "io_start", "6.1", "x86_64", cells)
    assert (verdict.outcome, verdict.working) == (Outcome.PASS, ("kprobe_start", "tp_start"))
    assert verdict.reason == "works through kprobe_start, tp_start"


def test_a_group_with_no_working_member_fails_naming_each_members_checks() -> None:
    cells = {
        "fentry_start": cell("fentry_start", "6.1", Outcome.PASS, Outcome.FAIL),
        "kprobe_start": cell("kprobe_start", "6.1", Outcome.FAIL, Outcome.SKIP),
    }
    verdict = across.judge_group("alt", "io_start", "6.1", "x86_64", cells)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.reason == "no member works: fentry_start (load); kprobe_start (symbol,load)"
    cells["kprobe_start"] = cell("kprobe_start", "6.1", Outcome.ERROR)
    assert across.judge_group("alt", "io_start", "6.1", "x86_64", cells).outcome is Outcome.ERROR


def test_a_member_of_skips_alone_does_not_work() -> None:
    assert not across.member_works(cell("x", "6.1", Outcome.SKIP, Outcome.SKIP))
    assert not across.member_works([])
    assert across.member_works(cell("x", "6.1", Outcome.SKIP, Outcome.PASS))
    # A target absent on every kernel skips symbol and load alike: nothing runs, the member does not work.
    probe = Probe("alt", "x", "kprobe/x", "kprobe", "x")
    features = CellResult(probe, "6.1", "x86_64", Check.FEATURES, Outcome.PASS)
    assert not across.member_works([*cell("x", "6.1", Outcome.SKIP, Outcome.SKIP), features])


def test_a_target_present_on_another_arch_only_is_not_absent_everywhere() -> None:
    x64 = Probe("sys", "x", "kprobe/__x64_sys_openat", "kprobe", "__x64_sys_openat")
    arm = check_symbol(x64, "6.1", ARCHES["arm64"], load_facts(FACTS / "6.1-arm64"))
    x86 = symbol("6.1", x64)
    assert x86.outcome is Outcome.PASS and arm.outcome is Outcome.FAIL
    assert across.judge_absent(arm, [x86, arm]) == arm


def test_a_run_of_one_kernel_cannot_tell_a_placeholder_from_drift() -> None:
    dummy = Probe("tool", "fe", "fentry/dummy_file_open", "fentry", "dummy_file_open")
    only = symbol("6.1", dummy)
    assert across.judge_absent(only, [only]) == only


# ---------------------------------------------------------------- CORE of a program that did not load

FENTRY = Probe("bio", "fe", "fentry/blk_account_io_start", "fentry", "blk_account_io_start")


def core_fail(probe: Probe, *specs: str) -> CellResult:
    relos = [{"index": i, "spec": s, "status": "failed"} for i, s in enumerate(specs)]
    reason = f"relocation {', '.join(specs)} failed on 6.1"
    return CellResult(probe, "6.1", "x86_64", Check.CORE, Outcome.FAIL, reason, {"relocations": relos})


def layout(outcome: Outcome, *guarded: tuple[str, str]) -> CellResult:
    relos = [{"path": p, "guard": g, "guarded": True} for p, g in guarded]
    relos.append({"path": "request___x.q", "guard": None, "guarded": False})
    return CellResult(FENTRY, "6.1", "x86_64", Check.LAYOUT, outcome, "", {"relocations": relos})


def test_a_core_failure_the_layout_check_finds_guarded_passes_with_a_note() -> None:
    core = core_fail(FENTRY, "struct request___x.rq_disk")
    judged = across.core_guarded(core, layout(Outcome.PASS, ("request___x.rq_disk", "request___x.rq_disk")))
    assert judged.outcome is Outcome.PASS
    assert judged.reason.startswith(
        "relocation `request___x.rq_disk` unresolved on 6.1, on a path the exists check of"
        " `request___x.rq_disk` rules out"
    )
    assert judged.details["guest_reason"] == core.reason


def test_a_core_failure_stays_where_one_relocation_is_unguarded_or_layout_fails() -> None:
    core = core_fail(FENTRY, "struct request___x.rq_disk", "struct request___x.q")
    guarded = layout(Outcome.PASS, ("request___x.rq_disk", "request___x.rq_disk"))
    assert across.core_guarded(core, guarded) == core  # request___x.q is read unguarded
    one = core_fail(FENTRY, "struct request___x.rq_disk")
    assert across.core_guarded(one, layout(Outcome.FAIL, ("request___x.rq_disk", "x"))) == one
    assert across.core_guarded(one, None) == one


def test_core_defers_to_an_absent_target_only_where_the_load_looks_it_up() -> None:
    sym = symbol("6.1", FENTRY)
    judged = across.defer_to_symbol(core_fail(FENTRY, "struct request___x.rq_disk"), sym)
    assert judged.outcome is Outcome.SKIP
    assert judged.reason == "target `blk_account_io_start` absent on 6.1: see symbol"
    # A kprobe loads without its target: its CORE and LOAD failures are its own.
    kprobe_core = core_fail(KPROBE, "struct request___x.rq_disk")
    assert across.defer_to_symbol(kprobe_core, symbol("6.1", KPROBE)) == kprobe_core
