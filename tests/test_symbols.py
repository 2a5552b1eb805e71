"""Tests for harness.checks.symbols: the offline symbol checks on trimmed facts of Debian kernels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.checks.symbols import (
    check_symbol,
    closest_functions,
    pick_clone_targets,
    stable_alternatives,
    with_alternatives,
)
from harness.kernels.config import ARCHES
from harness.kernels.facts import KernelFacts, load_facts
from harness.report.results import CellResult, Check, Outcome, Probe

FACTS = Path(__file__).parent / "data" / "facts"
X86 = ARCHES["x86_64"]
ARM = ARCHES["arm64"]


def probe(kind: str, target: str) -> Probe:
    return Probe("obj", "prog", f"{kind}/{target}", kind, target)


@pytest.fixture(scope="module")
def columns() -> dict[tuple[str, str], KernelFacts]:
    cols: dict[tuple[str, str], KernelFacts] = {}
    for directory in sorted(FACTS.iterdir()):
        if (directory / "kallsyms").is_file():
            kernel, arch = directory.name.split("-")
            cols[(kernel, arch)] = load_facts(directory)
    return cols


def check(columns: dict[tuple[str, str], KernelFacts], kind: str, target: str, column: str) -> CellResult:
    kernel, arch = column.split("-")
    result = check_symbol(probe(kind, target), kernel, ARCHES[arch], columns[(kernel, arch)])
    assert result.check == Check.SYMBOL and result.kernel == kernel and result.arch == arch
    json.dumps(result.serialize())  # details must be JSON-ready
    return result


# --- kprobes ----------------------------------------------------------------------------------------


def test_kprobe_present_and_traceable(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "blk_account_io_start", "5.10-x86_64")
    assert result.outcome == Outcome.PASS
    assert result.reason == ""
    assert result.details["traceable"] is True


def test_kprobe_absent_names_closest(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "blk_account_io_start", "6.1-x86_64")
    assert result.outcome == Outcome.FAIL
    assert result.reason.startswith(
        "`blk_account_io_start` not in kallsyms on 6.1: removed, renamed or inlined"
    )
    closest = result.details["closest"]
    assert closest and "blk_account_io_merge_bio" in closest
    facts = columns[("6.1", "x86_64")]
    assert all(c in (facts.traceable or ()) for c in closest)
    assert "\n" not in result.reason


def test_kprobe_local_symbol_is_still_a_pass(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert columns[("6.1", "x86_64")].symbol_types("blk_account_io_merge_bio") == {"t"}
    assert check(columns, "kprobe", "blk_account_io_merge_bio", "6.1-x86_64").outcome == Outcome.PASS


def test_kprobe_static_inline_out_of_line(columns: dict[tuple[str, str], KernelFacts]) -> None:
    # 5.10 exports blk_account_io_done; 6.1 has it as a local, notrace static inline.
    assert check(columns, "kprobe", "blk_account_io_done", "5.10-x86_64").outcome == Outcome.PASS
    result = check(columns, "kprobe", "blk_account_io_done", "6.1-x86_64")
    assert result.outcome == Outcome.FAIL
    assert "present but not traceable" in result.reason and "static inline" in result.reason


def test_kprobe_present_but_not_traceable_says_why(columns: dict[tuple[str, str], KernelFacts]) -> None:
    noinstr = check(columns, "kprobe", "exc_int3", "6.1-x86_64")
    assert noinstr.outcome == Outcome.FAIL
    assert "present but not traceable" in noinstr.reason
    assert "noinstr" in noinstr.reason
    blacklisted = check(columns, "kretprobe", "do_int3", "6.1-x86_64")
    assert blacklisted.outcome == Outcome.FAIL
    assert "kprobe blacklist" in blacklisted.reason
    assert "local symbol" in blacklisted.reason
    init = check(columns, "kprobe", "trace_init", "6.1-x86_64")
    assert "__init" in init.reason


def test_kprobe_absent_with_clones_points_at_the_body(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "dump_blkd_tasks", "6.1-x86_64")
    assert result.outcome == Outcome.FAIL
    assert result.details["target"] == "dump_blkd_tasks.constprop.0"
    assert "target `dump_blkd_tasks.constprop.0`" in result.reason
    assert "not `.cold`" in result.reason
    combo = check(columns, "kprobe", "sched_use_asym_prio", "6.1-arm64")
    assert combo.details["target"] == "sched_use_asym_prio.constprop.0.isra.0"
    part = check(columns, "kprobe", "blk_account_io_completion", "6.1-x86_64")
    assert "outlined part" in part.reason


def test_kprobe_plain_symbol_with_clones_passes_with_a_note(
    columns: dict[tuple[str, str], KernelFacts],
) -> None:
    result = check(columns, "kprobe", "tcp_sendmsg_locked", "6.1-x86_64")
    assert result.outcome == Outcome.PASS
    assert "tcp_sendmsg_locked.cold" in result.reason
    assert result.details["clones"] == ["tcp_sendmsg_locked.cold"]


def test_kprobe_ambiguous_local_name_is_noted(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "name_show", "6.12-x86_64")
    assert result.outcome == Outcome.PASS
    assert "2 symbols" in result.reason


def test_kprobe_module_function(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "ext4_file_open", "6.1-x86_64")
    assert result.outcome == Outcome.PASS
    assert "module ext4" in result.reason


def test_kprobe_on_another_arch_syscall_wrapper(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "__x64_sys_openat", "6.1-arm64")
    assert result.outcome == Outcome.FAIL
    assert result.reason == (
        "`__x64_sys_openat` is the x86_64 syscall wrapper; on arm64 it is `__arm64_sys_openat` "
        "(or use ksyscall/openat)"
    )
    assert check(columns, "kprobe", "__x64_sys_openat", "6.1-x86_64").outcome == Outcome.PASS
    back = check(columns, "kprobe", "__arm64_sys_openat", "6.1-x86_64")
    assert "`__x64_sys_openat`" in back.reason


def test_kprobe_pre_417_syscall_name(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe", "sys_openat", "5.10-x86_64")
    assert result.outcome == Outcome.FAIL
    assert "`__x64_sys_openat`" in result.reason


def test_kprobe_without_ftrace_facts_is_an_error(tmp_path: Path) -> None:
    shutil.copy(FACTS / "6.1-x86_64" / "kallsyms", tmp_path / "kallsyms")
    result = check_symbol(probe("kprobe", "vfs_read"), "6.1", X86, load_facts(tmp_path))
    assert result.outcome == Outcome.ERROR
    assert "available_filter_functions" in result.reason


def test_malformed_facts_give_error_not_exception(tmp_path: Path) -> None:
    (tmp_path / "kallsyms").write_text("garbage\n")
    shutil.copy(FACTS / "6.1-x86_64" / "available_filter_functions", tmp_path)
    result = check_symbol(probe("kprobe", "vfs_read"), "6.1", X86, KernelFacts(tmp_path))
    assert result.outcome == Outcome.ERROR
    assert "kallsyms" in result.reason


# --- kprobe.multi -----------------------------------------------------------------------------------


def test_kprobe_multi_glob(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe.multi", "vfs_*", "6.1-x86_64")
    assert result.outcome == Outcome.PASS
    assert result.details["matches"] == 4
    assert "vfs_unlink" in result.details["first"]
    none = check(columns, "kprobe.multi", "vfs_nosuch*", "6.1-x86_64")
    assert none.outcome == Outcome.FAIL and "`vfs_nosuch*`" in none.reason


def test_kprobe_multi_needs_fprobe(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "kprobe.multi", "vfs_*", "5.10-x86_64")
    assert result.outcome == Outcome.FAIL
    assert "CONFIG_FPROBE" in result.reason


# --- fentry -----------------------------------------------------------------------------------------


def test_fentry_needs_btf_func(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert check(columns, "fentry", "vfs_unlink", "6.1-x86_64").outcome == Outcome.PASS
    # Traceable, but a static function that BTF does not describe.
    result = check(columns, "fexit", "blk_account_io_done", "6.12-x86_64")
    assert result.outcome == Outcome.FAIL
    assert result.reason.startswith("no BTF FUNC `blk_account_io_done`")
    assert "fexit needs the function in BTF" in result.reason


def test_fentry_without_btf(tmp_path: Path) -> None:
    shutil.copytree(FACTS / "6.1-x86_64", tmp_path / "k")
    (tmp_path / "k" / "vmlinux.btf").unlink()
    result = check_symbol(probe("fentry", "vfs_unlink"), "6.1", X86, load_facts(tmp_path / "k"))
    assert result.outcome == Outcome.FAIL
    assert "kernel has no BTF (CONFIG_DEBUG_INFO_BTF)" in result.reason


def test_fentry_absent_symbol_reports_kallsyms_first(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "fentry", "blk_account_io_start", "6.1-x86_64")
    assert "not in kallsyms" in result.reason


def test_fmod_ret_without_the_error_injection_list(columns: dict[tuple[str, str], KernelFacts]) -> None:
    # Debian's kallsyms does not show the _eil_addr_* markers: offline, nobody can tell.
    assert check(columns, "fmod_ret", "security_file_open", "6.1-x86_64").reason == ""
    result = check(columns, "fmod_ret", "vfs_unlink", "6.1-x86_64")
    assert result.outcome == Outcome.PASS
    assert "could not tell" in result.reason and result.details["error_injection"] is None


def test_fmod_ret_with_the_error_injection_list(tmp_path: Path) -> None:
    shutil.copytree(FACTS / "6.1-x86_64", tmp_path / "k")
    with (tmp_path / "k" / "kallsyms").open("a") as fh:
        fh.write("ffffffff83000100 d _eil_addr_should_failslab\n")
    facts = load_facts(tmp_path / "k")
    assert check_symbol(probe("fmod_ret", "should_failslab"), "6.1", X86, facts).outcome == Outcome.PASS
    result = check_symbol(probe("fmod_ret", "vfs_unlink"), "6.1", X86, facts)
    assert result.outcome == Outcome.FAIL and "error-injection" in result.reason


# --- syscalls ---------------------------------------------------------------------------------------


def test_ksyscall_uses_the_arch_wrapper(columns: dict[tuple[str, str], KernelFacts]) -> None:
    for column in ("6.1-x86_64", "6.1-arm64"):
        result = check(columns, "ksyscall", "openat", column)
        assert result.outcome == Outcome.PASS
        assert result.details["wrapper"] == ARCHES[column.split("-")[1]].syscall_prefix + "openat"


def test_ksyscall_missing_on_arch(columns: dict[tuple[str, str], KernelFacts]) -> None:
    # arm64 uses the generic syscall table: there is no open(2), only openat(2).
    assert check(columns, "ksyscall", "open", "6.1-x86_64").outcome == Outcome.PASS
    result = check(columns, "kretsyscall", "open", "6.1-arm64")
    assert result.outcome == Outcome.FAIL
    assert "`__arm64_sys_open`" in result.reason
    assert "__arm64_sys_openat" in result.details["closest"]


# --- tracepoints ------------------------------------------------------------------------------------


def test_tracepoint(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert check(columns, "tracepoint", "block/block_io_start", "6.12-x86_64").outcome == Outcome.PASS
    result = check(columns, "tracepoint", "block/block_io_start", "6.1-x86_64")
    assert result.outcome == Outcome.FAIL
    assert "`block:block_io_start` not in available_events on 6.1" in result.reason
    assert all(c.startswith("block:") for c in result.details["closest"])
    assert "no `nosuch` events" in check(columns, "tracepoint", "nosuch/x", "6.1-x86_64").reason


def test_raw_tp(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert check(columns, "raw_tp", "sched_switch", "6.1-arm64").outcome == Outcome.PASS
    # DECLARE_TRACE tracepoints have no trace event: kallsyms is the only evidence.
    assert check(columns, "raw_tp", "pelt_cfs_tp", "6.1-arm64").outcome == Outcome.PASS
    wrong = check(columns, "raw_tp", "sched/sched_switch", "6.1-arm64")
    assert wrong.outcome == Outcome.FAIL and "`raw_tp/sched_switch`" in wrong.reason
    syscall = check(columns, "raw_tp", "sys_enter_openat", "6.1-arm64")
    assert syscall.outcome == Outcome.FAIL and "`sys_enter`" in syscall.reason


def test_tp_btf_needs_the_typedef(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert check(columns, "tp_btf", "block_rq_issue", "6.1-x86_64").outcome == Outcome.PASS
    result = check(columns, "tp_btf", "block_rq_insert", "6.1-x86_64")
    assert result.outcome == Outcome.FAIL
    assert "`btf_trace_block_rq_insert`" in result.reason


# --- LSM --------------------------------------------------------------------------------------------


def test_lsm_needs_bpf_active(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert check(columns, "lsm", "file_open", "6.12-x86_64").outcome == Outcome.PASS
    result = check(columns, "lsm", "file_open", "6.1-x86_64")
    assert result.outcome == Outcome.FAIL
    active = ",".join(columns[("6.1", "x86_64")].lsms or ())
    assert f"({'active'}: {active})" in result.reason
    assert f"boot with lsm={active},bpf" in result.reason


def test_lsm_unknown_hook(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "lsm", "file_opn", "6.12-x86_64")
    assert result.outcome == Outcome.FAIL
    assert result.details["closest"][0] == "file_open"


def test_lsm_falls_back_to_config_default(tmp_path: Path) -> None:
    shutil.copytree(FACTS / "6.1-x86_64", tmp_path / "k")
    (tmp_path / "k" / "lsm").unlink()
    result = check_symbol(probe("lsm", "file_open"), "6.1", X86, load_facts(tmp_path / "k"))
    assert result.outcome == Outcome.PASS  # the fixture's CONFIG_LSM ends with bpf
    assert "bpf" in result.details["lsms"]


# --- skips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uprobe", "uretprobe", "usdt", "uprobe.multi"])
def test_user_space_kinds_skip(columns: dict[tuple[str, str], KernelFacts], kind: str) -> None:
    result = check(columns, kind, "/usr/bin/bash:readline", "6.1-x86_64")
    assert result.outcome == Outcome.SKIP
    assert "uprobe checks" in result.reason


def test_unknown_kind_skips_naming_it(columns: dict[tuple[str, str], KernelFacts]) -> None:
    result = check(columns, "struct_ops", "tcp_congestion_ops", "6.1-x86_64")
    assert result.outcome == Outcome.SKIP and "`struct_ops`" in result.reason


# --- helpers ----------------------------------------------------------------------------------------


def test_pick_clone_targets() -> None:
    clones = ["f.cold", "f.part.0", "f.isra.0", "f.constprop.0.isra.0", "f.isra.1"]
    traceable = frozenset(clones) - {"f.isra.1"}
    assert pick_clone_targets(clones, traceable) == ["f.constprop.0.isra.0", "f.isra.0", "f.part.0"]


def test_closest_functions_stays_in_the_subsystem(columns: dict[tuple[str, str], KernelFacts]) -> None:
    found = closest_functions("blk_account_io_start", columns[("6.1", "x86_64")])
    assert found and all(f.startswith("blk_") for f in found)


# --- alternatives across the matrix -----------------------------------------------------------------


def test_stable_alternatives_for_an_unstable_target(columns: dict[tuple[str, str], KernelFacts]) -> None:
    alts = stable_alternatives(probe("kprobe", "blk_account_io_start"), columns)
    assert alts
    plain = [a for a in alts if "(from" not in a]
    assert plain and all(a.startswith("block:") for a in plain)
    for alt in plain:  # present on every column
        assert all(alt in (f.events or ()) for f in columns.values())
    assert "block:block_io_start (from 6.12)" in alts


def test_stable_alternatives_empty_when_stable(columns: dict[tuple[str, str], KernelFacts]) -> None:
    assert stable_alternatives(probe("kprobe", "vfs_unlink"), columns) == []
    assert stable_alternatives(probe("uprobe", "/bin/sh:main"), columns) == []
    assert stable_alternatives(probe("kprobe", "vfs_unlink"), {}) == []


def test_stable_alternatives_find_lsm_hooks(columns: dict[tuple[str, str], KernelFacts]) -> None:
    alts = stable_alternatives(probe("fentry", "do_unlinkat"), columns)
    assert set(alts) >= {"lsm/inode_unlink", "lsm/path_unlink", "syscalls:sys_enter_unlinkat"}


def test_stable_alternatives_never_suggest_the_probe_itself(
    columns: dict[tuple[str, str], KernelFacts],
) -> None:
    assert "lsm/file_open" not in stable_alternatives(probe("lsm", "file_open"), columns)
    tp = stable_alternatives(probe("tracepoint", "block/block_io_start"), columns)
    assert tp and all(not a.startswith("block:block_io_start") for a in tp)


def test_with_alternatives_only_touches_failing_symbol_results(
    columns: dict[tuple[str, str], KernelFacts],
) -> None:
    p = probe("kprobe", "blk_account_io_start")
    other = probe("kprobe", "nosuch_fn")
    results = [check_symbol(p, k, ARCHES[a], f) for (k, a), f in columns.items()]
    results.append(check_symbol(other, "6.1", X86, columns[("6.1", "x86_64")]))
    alts = stable_alternatives(p, columns)
    updated = with_alternatives(results, p, alts)
    assert len(updated) == len(results)
    for before, after in zip(results, updated):
        if before.probe == p and before.outcome == Outcome.FAIL:
            assert after.reason.startswith(before.reason + "; stable alternatives: `block:")
            assert "`block:block_io_start` (from 6.12)" in after.reason
            assert after.details["alternatives"] == alts
        else:
            assert after == before
    assert with_alternatives(results, p, []) == results
