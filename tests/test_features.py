"""Tests for harness.kernels.features (bpftool's probe in three states) and harness.checks.features."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.btf.core import CoreRelo, CoreReloKind
from harness.checks.features import (
    check_features,
    contradiction,
    guarded_helpers,
    refused_helper,
    with_load_result,
)
from harness.checks.guest import GuestContext, check_guest_program
from harness.kernels.facts import FactsError, KernelFacts, load_facts
from harness.kernels.features import FeaturesError, KernelFeatures, Support, parse_features
from harness.programs.uapi import HELPER_IDS
from harness.programs.uses import KfuncUse, MapUse, ProgramUses, load_object_uses
from harness.report.results import CellResult, Check, Outcome, Probe
from harness.vm.guest.protocol import FEATURES_ERROR_FILE, FEATURES_FILE
from tests.tools import needs

FACTS = Path(__file__).parent / "data" / "facts"
FIXTURES = ("5.10-x86_64", "6.1-x86_64", "6.1-arm64", "6.12-x86_64")
GUESTLOGS = Path(__file__).parent / "data" / "guestlogs"


def probe_json(
    prog_types: dict[str, bool],
    map_types: dict[str, bool],
    helpers: dict[str, list[str]],
) -> str:
    """bpftool feature probe -j's shape (7.1 and 7.5 alike)."""
    doc: dict[str, Any] = {
        "syscall_config": {"have_bpf_syscall": True},
        "program_types": {f"have_{k}_prog_type": v for k, v in prog_types.items()},
        "map_types": {f"have_{k}_map_type": v for k, v in map_types.items()},
        "helpers": {f"{k}_available_helpers": v for k, v in helpers.items()},
        "misc": {"have_bounded_loops": True},
    }
    return json.dumps(doc)


OLD = probe_json(
    {"kprobe": True, "tracepoint": True, "raw_tracepoint": True, "tracing": True, "lsm": True},
    {"hash": True, "perf_event_array": True, "ringbuf": False},
    {
        "kprobe": ["bpf_map_lookup_elem", "bpf_get_current_pid_tgid"],
        "raw_tracepoint": ["bpf_map_lookup_elem", "bpf_get_current_pid_tgid"],
        "tracepoint": ["bpf_map_lookup_elem"],
        "tracing": [],  # bpftool cannot probe these: unknown, not absent
        "lsm": [],
    },
)


def facts_with(tmp_path: Path, features: str | None = OLD, error: str | None = None) -> KernelFacts:
    directory = tmp_path / "facts"
    shutil.copytree(FACTS / "6.1-x86_64", directory)
    for name in (FEATURES_FILE, FEATURES_ERROR_FILE):
        (directory / name).unlink(missing_ok=True)
    if features is not None:
        (directory / FEATURES_FILE).write_text(features)
    if error is not None:
        (directory / FEATURES_ERROR_FILE).write_text(error + "\n")
    return load_facts(directory)


def probe(kind: str = "kprobe") -> Probe:
    return Probe("obj", "prog", f"{kind}/x", kind, "x")


def uses(*helpers: str, maps: tuple[MapUse, ...] = (), kfuncs: tuple[KfuncUse, ...] = ()) -> ProgramUses:
    return ProgramUses(tuple(sorted(HELPER_IDS[h] for h in helpers)), kfuncs, maps)


# --- the probe --------------------------------------------------------------------------------------


def test_three_states() -> None:
    f = parse_features(OLD)
    assert f.prog_type("kprobe") is Support.SUPPORTED
    assert f.prog_type("netfilter") is Support.UNKNOWN  # a type this bpftool does not know
    assert f.map_type("ringbuf") is Support.UNSUPPORTED
    assert f.helper("kprobe", "bpf_get_current_pid_tgid") is Support.SUPPORTED
    assert f.helper("tracepoint", "bpf_get_current_pid_tgid") is Support.UNSUPPORTED
    # tracing and lsm programs may call every helper a raw_tracepoint program may; the rest is unknown.
    assert f.helper("tracing", "bpf_get_current_pid_tgid") is Support.SUPPORTED
    assert f.helper("lsm", "bpf_map_lookup_elem") is Support.SUPPORTED
    assert f.helper("tracing", "bpf_d_path") is Support.UNKNOWN
    assert "tracing" not in f.helpers
    assert KernelFeatures.unknown("no bpftool").helper("kprobe", "x") is Support.UNKNOWN


def test_helpers_given_as_an_object_of_flags() -> None:
    text = json.dumps({
        "program_types": {"have_kprobe_prog_type": True},
        "map_types": {},
        "helpers": {"kprobe_available_helpers": {"bpf_a": True, "bpf_b": False}},
    })
    assert parse_features(text).helpers == {"kprobe": frozenset({"bpf_a"})}


@pytest.mark.parametrize("text", ["[]", "{", json.dumps({"helpers": {}})])
def test_not_a_probe_is_an_error_naming_the_file(text: str) -> None:
    with pytest.raises(FeaturesError, match=r"features\.json"):
        parse_features(text, "features.json")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_collected_probes_of_the_fixture_kernels_parse(fixture: str) -> None:
    f = load_facts(FACTS / fixture).features
    assert not f.error
    for prog_type in ("kprobe", "tracepoint", "raw_tracepoint", "tracing", "lsm"):
        assert f.prog_type(prog_type) is Support.SUPPORTED, prog_type
    assert f.map_type("hash") is Support.SUPPORTED
    assert f.map_type("ringbuf") is Support.SUPPORTED  # 5.8+
    # "full": bpf_trace_printk is probed too (bpf_printk is everywhere)
    assert f.helper("kprobe", "bpf_trace_printk") is Support.SUPPORTED
    assert f.helper("tracing", "bpf_get_current_pid_tgid") is Support.SUPPORTED


def test_fixture_probes_show_what_changed_between_5_10_and_6_1() -> None:
    old, new = (load_facts(FACTS / k).features for k in ("5.10-x86_64", "6.1-x86_64"))
    assert old.map_type("user_ringbuf") is Support.UNSUPPORTED  # 6.1
    assert new.map_type("user_ringbuf") is Support.SUPPORTED
    assert old.map_type("task_storage") is Support.UNSUPPORTED  # 5.11
    assert old.helper("kprobe", "bpf_get_func_ip") is Support.UNSUPPORTED  # 5.15
    assert new.helper("kprobe", "bpf_get_func_ip") is Support.SUPPORTED


def test_facts_without_a_probe_say_why(tmp_path: Path) -> None:
    assert facts_with(tmp_path, None, "bpftool not found in the guest").features.error == (
        "bpftool not found in the guest"
    )
    shutil.rmtree(tmp_path / "facts")
    assert "no feature probe" in facts_with(tmp_path, None).features.error


def test_a_malformed_probe_file_is_a_facts_error(tmp_path: Path) -> None:
    with pytest.raises(FactsError, match=re.escape(FEATURES_FILE)):
        _ = facts_with(tmp_path, "{nope").features


# --- the check --------------------------------------------------------------------------------------


def test_helper_not_available_to_the_program_type_fails_naming_it(tmp_path: Path) -> None:
    facts = facts_with(tmp_path)
    res = check_features(probe("tracepoint"), "5.10", "x86_64", uses("bpf_get_current_pid_tgid"), facts)
    assert res is not None and res.check is Check.FEATURES and res.outcome is Outcome.FAIL
    assert res.reason == "bpf_get_current_pid_tgid not available to tracepoint programs on 5.10"
    ok = check_features(probe("kprobe"), "5.10", "x86_64", uses("bpf_get_current_pid_tgid"), facts)
    assert ok is not None and ok.outcome is Outcome.PASS and ok.reason == ""
    assert ok.details["program_type"] == "kprobe"
    assert ok.details["helpers"] == ["bpf_get_current_pid_tgid"]


def test_map_type_and_kfunc_failures(tmp_path: Path) -> None:
    facts = facts_with(tmp_path)
    res = check_features(probe(), "5.4", "x86_64", uses(maps=(MapUse("rb", "ringbuf"),)), facts)
    assert res is not None and res.outcome is Outcome.FAIL
    assert res.reason == "map type ringbuf not supported on 5.4 (map rb)"
    funcs = sorted(facts.btf_func_names)
    present, absent = funcs[0], "bpf_no_such_kfunc"
    res = check_features(probe(), "6.1", "x86_64", uses(kfuncs=(KfuncUse(present), KfuncUse(absent))), facts)
    assert res is not None and res.outcome is Outcome.FAIL
    assert res.reason == "kfunc bpf_no_such_kfunc absent from kernel BTF on 6.1"
    checked = KfuncUse(absent, weak=True, checked=True)
    weak = check_features(probe(), "6.1", "x86_64", uses(kfuncs=(checked,)), facts)
    assert weak is not None and weak.outcome is Outcome.PASS
    assert "behind its bpf_ksym_exists check" in weak.details["notes"][0]  # type: ignore[index]
    # systemd's userns_restrict calls its weak bpf_rdonly_cast unchecked: 6.1's verifier refuses it.
    unchecked = KfuncUse(absent, weak=True)
    weak = check_features(probe(), "6.1", "x86_64", uses(kfuncs=(unchecked,)), facts)
    assert weak is not None and weak.outcome is Outcome.FAIL
    assert weak.reason == (
        "kfunc bpf_no_such_kfunc absent from kernel BTF on 6.1"
        " (weak, but called without a bpf_ksym_exists check)"
    )


def test_several_problems_show_the_first_and_count_the_rest(tmp_path: Path) -> None:
    facts = facts_with(tmp_path)
    res = check_features(
        probe("tracepoint"), "5.10", "x86_64",
        uses("bpf_get_current_pid_tgid", maps=(MapUse("rb", "ringbuf"),)), facts,
    )
    assert res is not None and res.outcome is Outcome.FAIL
    assert res.reason.endswith("(and 1 more)")
    assert len(res.details["missing"]) == 2  # type: ignore[arg-type]


def test_unknown_features_never_fail(tmp_path: Path) -> None:
    facts = facts_with(tmp_path, None, "bpftool feature probe timed out after 300 s")
    res = check_features(probe(), "6.1", "x86_64", uses("bpf_get_current_pid_tgid"), facts)
    assert res is not None and res.outcome is Outcome.SKIP
    assert res.reason == "features of 6.1 unknown: bpftool feature probe timed out after 300 s"
    # A helper bpftool could not probe for tracing programs is noted, not failed.
    facts = facts_with(tmp_path / "again")
    res = check_features(probe("fentry"), "6.1", "x86_64", uses("bpf_d_path"), facts)
    assert res is not None and res.outcome is Outcome.PASS
    assert res.details["unchecked"] == ["bpf_d_path not probed for tracing programs on 6.1"]


def test_unsupported_program_type_fails_and_an_unknown_kind_has_no_cell(tmp_path: Path) -> None:
    facts = facts_with(tmp_path, probe_json({"kprobe": True, "lsm": False}, {"hash": True}, {}))
    res = check_features(probe("lsm"), "5.4", "x86_64", uses(), facts)
    assert res is not None and res.outcome is Outcome.FAIL
    assert res.reason == "lsm programs not supported on 5.4"
    assert check_features(Probe("o", "p", "socket", "unknown", ""), "5.4", "x86_64", uses(), facts) is None
    assert check_features(probe(), "5.4", "x86_64", None, facts) is None


def _enum_exists(value: str) -> CoreRelo:
    return CoreRelo("kprobe/x", 0, 1, "0", CoreReloKind.ENUMVAL_EXISTS, "enum", "bpf_func_id",
                    f"bpf_func_id::{value}", ())


def test_a_helper_behind_its_existence_check_passes(tmp_path: Path) -> None:
    facts = facts_with(tmp_path)
    guarded = guarded_helpers([_enum_exists("BPF_FUNC_get_current_pid_tgid")])
    assert guarded == {"bpf_get_current_pid_tgid"}
    res = check_features(
        probe("tracepoint"), "5.10", "x86_64", uses("bpf_get_current_pid_tgid"), facts, guarded
    )
    assert res is not None and res.outcome is Outcome.PASS
    assert "bpf_core_enum_value_exists" in res.details["notes"][0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "helper"),
    [
        ("verifier rejected it (EINVAL): unknown func bpf_get_socket_cookie#46", "bpf_get_socket_cookie"),
        ("invalid func unknown#173", "bpf_get_func_ip"),  # past 5.10's last helper: named by number
        ("R1 type=ctx expected=fp", None),
    ],
)
def test_refused_helper_from_the_verifier_log(text: str, helper: str | None) -> None:
    assert refused_helper(text) == helper


def test_a_load_refusing_a_helper_the_features_cell_passed_is_a_contradiction(tmp_path: Path) -> None:
    p = probe()
    tail = ["0: (85) call bpf_get_socket_cookie#46", "unknown func bpf_get_socket_cookie#46"]
    load = CellResult(p, "5.10", "x86_64", Check.LOAD, Outcome.FAIL,
                      "verifier rejected it (EINVAL): processed 3 insns", {"verifier_tail": tail})
    passed = CellResult(p, "5.10", "x86_64", Check.FEATURES, Outcome.PASS)
    failed = CellResult(p, "5.10", "x86_64", Check.FEATURES, Outcome.FAIL,
                        "bpf_get_socket_cookie not available to kprobe programs on 5.10")
    assert contradiction(passed, load) == (
        "the verifier refused bpf_get_socket_cookie on 5.10; features said pass"
    )
    assert contradiction(failed, load) == ""
    loaded = CellResult(p, "5.10", "x86_64", Check.LOAD, Outcome.PASS)
    assert contradiction(failed, loaded).startswith("the verifier accepted it on 5.10; features said: ")
    assert contradiction(passed, loaded) == ""


@needs("clang")
def test_the_ancestor_cgroup_helper_of_a_tracepoint_on_the_fixture_kernels(tmp_path: Path) -> None:
    # What bpf_progs/helper_not_allowed.bpf.c does, without vmlinux.h: helper 123 from a tracepoint.
    src = tmp_path / "p.bpf.c"
    src.write_text(
        "#define SEC(n) __attribute__((section(n), used))\n"
        "static unsigned long long (*ancestor)(int level) = (void *)123;\n"
        "unsigned long long id;\n"
        'SEC("tp/syscalls/sys_enter_openat") int p(void *ctx) { id = ancestor(1); return 0; }\n'
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    out = tmp_path / "p.bpf.o"
    argv = ["clang", "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(out)]
    subprocess.run(argv, check=True, timeout=60)
    used = load_object_uses(out)["p"]
    tp = Probe("p", "p", "tp/syscalls/sys_enter_openat", "tracepoint", "syscalls/sys_enter_openat")
    outcomes = {
        k: check_features(tp, *k.split("-"), used, load_facts(FACTS / k)) for k in FIXTURES
    }
    old = outcomes.pop("5.10-x86_64")
    assert old is not None and old.outcome is Outcome.FAIL
    assert old.reason == "bpf_get_current_ancestor_cgroup_id not available to tracepoint programs on 5.10"
    assert all(r is not None and r.outcome is Outcome.PASS for r in outcomes.values()), outcomes


def test_the_in_guest_load_wins_over_the_prediction() -> None:
    p = probe()
    refused = CellResult(p, "5.10", "x86_64", Check.LOAD, Outcome.FAIL,
                         "verifier rejected it (EINVAL): unknown func bpf_get_socket_cookie#46")
    passed = CellResult(p, "5.10", "x86_64", Check.FEATURES, Outcome.PASS, "", {"helpers": ["x"]})
    fixed = with_load_result(passed, refused)
    assert fixed.outcome is Outcome.FAIL and fixed.check is Check.FEATURES
    assert fixed.reason == (
        "bpf_get_socket_cookie refused by the verifier on 5.10 (the feature probe did not predict it)"
    )
    assert fixed.details["predicted"] == "pass" and fixed.details["helpers"] == ["x"]
    failed = CellResult(p, "5.10", "x86_64", Check.FEATURES, Outcome.FAIL, "bpf_x not available to kprobes")
    loaded = CellResult(p, "5.10", "x86_64", Check.LOAD, Outcome.PASS)
    dead = with_load_result(failed, loaded)
    assert dead.outcome is Outcome.PASS and dead.reason == ""
    assert dead.details["notes"] == ["predicted: bpf_x not available to kprobes; the verifier accepted it"]
    assert with_load_result(failed, refused) is failed
    assert with_load_result(passed, loaded) is passed


def test_the_recorded_5_10_guest_refuses_what_the_features_check_fails(tmp_path: Path) -> None:
    # objects.json of bpf_progs/helper_not_allowed on Debian's 5.10 x86_64 (libbpf 1.1), as the agent
    # wrote it in a real boot.
    recorded = json.loads((GUESTLOGS / "5.10-x86_64" / "helper_not_allowed.objects.json").read_text())
    (record,) = recorded
    tp = Probe("helper_not_allowed", "tp_ancestor_cgroup_id", "tp/syscalls/sys_enter_openat", "tracepoint",
               "syscalls/sys_enter_openat")
    ctx = GuestContext("5.10", "x86_64")
    load = next(r for r in check_guest_program(tp, record["programs"][tp.program], record, ctx)
                if r.check is Check.LOAD)
    assert load.outcome is Outcome.FAIL
    assert load.reason == (
        "verifier rejected it (EINVAL): unknown func bpf_get_current_ancestor_cgroup_id#123"
        " at insn 1 `call bpf_get_current_ancestor_cgroup_id#123`"
    )
    used = ProgramUses(helpers=(HELPER_IDS["bpf_get_current_ancestor_cgroup_id"],))
    features = check_features(tp, "5.10", "x86_64", used, load_facts(FACTS / "5.10-x86_64"))
    assert features is not None and features.outcome is Outcome.FAIL
    assert contradiction(features, load) == ""
    assert with_load_result(features, load) is features
    ok = next(r for r in check_guest_program(tp, record["programs"]["tp_cgroup_id"], record, ctx)
              if r.check is Check.LOAD)
    assert ok.outcome is Outcome.PASS
