"""The sample corpus of bpf_progs/ on kernels-ci.yaml, cell by cell: how each gotcha shows in the matrix.

All but the last test read the one shared run of the `ci_matrix` fixture. The last one edits an expectation
in a copy of bpf_progs/ and runs only offline symbol checks on cached facts (no boot).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.results import CellResult, Check, Matrix, Outcome

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (
    "blk_account", "vfs_unlink", "syscalls", "task_state", "exec_clone", "recursion", "lsm_file_open",
    "helper_not_allowed", "loader_sets",
    "core_sibling_guard", "args_unread_change", "args_read_moved", "ptregs_wrapper_direct",
    "ptregs_x86_on_arm64",
    "fire_one_kernel", "alt_io_start",
)

P, F, X, S = Outcome.PASS, Outcome.FAIL, Outcome.XFAIL, Outcome.SKIP
K510, K61, A61 = ("5.10", "x86_64"), ("6.1", "x86_64"), ("6.1", "arm64")

# (program, (kernel, arch), check) -> (outcome after expectations, words of the raw reason).
# An XFAIL cell is a raw FAIL that its sidecar accepts: the words are from the raw failure's reason.
EXPECTED: dict[tuple[str, tuple[str, str], Check], tuple[Outcome, str]] = {
    # blk_account: the kprobe on 5.10 only; block_rq_issue everywhere; block_io_start from 6.5.
    ("kprobe_blk_account_io_start", K510, Check.SYMBOL): (P, ""),
    ("kprobe_blk_account_io_start", K510, Check.FIRE): (P, "ran"),
    ("kprobe_blk_account_io_start", K61, Check.SYMBOL): (X, "not in kallsyms on 6.1"),
    ("kprobe_blk_account_io_start", K61, Check.ATTACH): (S, "absent on 6.1: see symbol"),
    ("kprobe_blk_account_io_start", K61, Check.FIRE): (S, "not attached"),
    ("kprobe_blk_account_io_start", A61, Check.SYMBOL): (X, "not in kallsyms on 6.1"),
    ("kprobe_blk_account_io_start", A61, Check.ATTACH): (S, "absent on 6.1: see symbol"),
    ("tp_block_rq_issue", K510, Check.FIRE): (P, "ran"),
    ("tp_block_rq_issue", K61, Check.FIRE): (P, "ran"),
    ("tp_block_rq_issue", A61, Check.FIRE): (P, "ran"),
    # Absent on every kernel of kernels-ci.yaml (6.5 added it): one skip, not a failure per kernel.
    ("tp_block_io_start", K510, Check.SYMBOL): (S, "target absent on every kernel"),
    ("tp_block_io_start", K61, Check.ATTACH): (S, "absent on 6.1: see symbol"),
    ("tp_block_io_start", A61, Check.SYMBOL): (S, "target absent on every kernel"),
    # vfs_unlink: blind kprobe silently wrong (only the prototype shows it), blind fentry refused by
    # the verifier, CO-RE-guarded ones fire everywhere they can attach.
    ("kprobe_vfs_unlink", K510, Check.PROTOTYPE): (P, ""),
    ("kprobe_vfs_unlink", K61, Check.PROTOTYPE): (X, "read param 1 `dentry` struct dentry * moved"),
    ("kprobe_vfs_unlink", K61, Check.FIRE): (P, "ran"),
    ("kprobe_vfs_unlink", A61, Check.FIRE): (P, "ran"),
    ("fentry_vfs_unlink", K510, Check.FIRE): (P, "ran"),
    ("fentry_vfs_unlink", K61, Check.PROTOTYPE): (X, "read param 1 `dentry` struct dentry * moved"),
    ("fentry_vfs_unlink", K61, Check.LOAD): (X, "struct inode"),
    ("fentry_vfs_unlink", A61, Check.LOAD): (X, "struct inode"),
    ("kprobe_vfs_unlink_core", K510, Check.FIRE): (P, "ran"),
    ("kprobe_vfs_unlink_core", K61, Check.PROTOTYPE): (X, "moved to position 2"),
    ("kprobe_vfs_unlink_core", K61, Check.FIRE): (P, "ran"),
    ("kprobe_vfs_unlink_core", A61, Check.FIRE): (P, "ran"),
    ("fentry_vfs_unlink_core", K510, Check.FIRE): (P, "ran"),
    ("fentry_vfs_unlink_core", K61, Check.FIRE): (P, "ran"),
    ("fentry_vfs_unlink_core", A61, Check.LOAD): (P, ""),
    ("fentry_vfs_unlink_core", A61, Check.ATTACH): (X, "ENOTSUPP"),
    # syscalls: x86_64's wrapper is not arm64's; ksyscall and the trace event are portable.
    ("x64_openat", K61, Check.FIRE): (P, "ran"),
    ("x64_openat", A61, Check.SYMBOL): (X, "x86_64 syscall wrapper"),
    ("x64_openat", A61, Check.ATTACH): (X, "ENOENT"),
    ("ksyscall_openat", A61, Check.FIRE): (P, "ran"),
    ("ksyscall_openat", K510, Check.FIRE): (P, "ran"),
    ("tp_openat", A61, Check.FIRE): (P, "ran"),
    # task_state: each blind reader fails on the kernels without its field; the guarded one loads.
    ("state_new_blind", K510, Check.LAYOUT): (X, "field missing on 5.10"),
    ("state_new_blind", K510, Check.CORE): (X, "task_struct.__state"),
    ("state_new_blind", K510, Check.LOAD): (X, "CO-RE relocation"),
    ("state_new_blind", K61, Check.FIRE): (P, "ran"),
    ("state_old_blind", K510, Check.FIRE): (P, "ran"),
    ("state_old_blind", K61, Check.LOAD): (X, "CO-RE relocation"),
    ("state_old_blind", A61, Check.CORE): (X, "task_struct___pre514.state"),
    ("state_guarded", K510, Check.LAYOUT): (P, "the exists check of `task_struct.__state` rules out"),
    ("state_guarded", K510, Check.FIRE): (P, "ran"),
    ("state_guarded", K61, Check.CORE): (P, "on no path the verifier walks"),
    ("state_guarded", A61, Check.FIRE): (P, "ran"),
    # exec_clone: the source name on 5.10, only the .isra clone on 6.1; bprm_execve and the
    # tracepoint on both.
    ("kprobe_do_execveat_common", K510, Check.FIRE): (P, "ran"),
    ("kprobe_do_execveat_common", K61, Check.SYMBOL): (X, "do_execveat_common.isra.0"),
    ("kprobe_do_execveat_common", K61, Check.ATTACH): (X, "ENOENT"),
    ("kprobe_do_execveat_common", A61, Check.SYMBOL): (X, "do_execveat_common.isra.0"),
    ("kprobe_do_execveat_common_isra", K510, Check.SYMBOL): (X, "not in kallsyms on 5.10"),
    ("kprobe_do_execveat_common_isra", K510, Check.ATTACH): (S, "absent on 5.10: see symbol"),
    ("kprobe_do_execveat_common_isra", K61, Check.FIRE): (P, "ran"),
    ("kprobe_do_execveat_common_isra", A61, Check.FIRE): (P, "ran"),
    ("kprobe_bprm_execve", K510, Check.FIRE): (P, "ran"),
    ("kprobe_bprm_execve", A61, Check.FIRE): (P, "ran"),
    ("tp_sched_process_exec", K61, Check.FIRE): (P, "ran"),
    # recursion: nested runs are counted as misses from 5.12; arm64 6.1 has no trampolines.
    ("on_htab_delete", K510, Check.FIRE): (P, "ran"),
    ("on_htab_delete", K61, Check.FIRE): (X, "recursion_misses"),
    ("on_htab_delete", A61, Check.ATTACH): (X, "ENOTSUPP"),
    ("tp_delete", K61, Check.FIRE): (P, "ran"),
    # lsm_file_open: the LSM program where trampolines exist; the kprobe and trace event everywhere.
    ("lsm_file_open", K510, Check.FIRE): (P, "ran"),
    ("lsm_file_open", K61, Check.FIRE): (P, "ran"),
    ("lsm_file_open", A61, Check.ATTACH): (X, "ENOTSUPP"),
    ("kprobe_security_file_open", A61, Check.FIRE): (P, "ran"),
    ("tp_sys_enter_openat", A61, Check.FIRE): (P, "ran"),
    # helper_not_allowed: tracing programs may call bpf_get_current_ancestor_cgroup_id on 6.1, not on
    # 5.10; the features check says so offline, the verifier in the guest.
    ("tp_ancestor_cgroup_id", K510, Check.FEATURES): (
        X, "bpf_get_current_ancestor_cgroup_id not available to tracepoint programs on 5.10"
    ),
    ("tp_ancestor_cgroup_id", K510, Check.LOAD): (X, "unknown func bpf_get_current_ancestor_cgroup_id#123"),
    ("tp_ancestor_cgroup_id", K61, Check.FEATURES): (P, ""),
    ("tp_ancestor_cgroup_id", K61, Check.FIRE): (P, "ran"),
    ("tp_ancestor_cgroup_id", A61, Check.FEATURES): (P, ""),
    ("tp_ancestor_cgroup_id", A61, Check.FIRE): (P, "ran"),
    ("tp_cgroup_id", K510, Check.FEATURES): (P, ""),
    ("tp_cgroup_id", K510, Check.FIRE): (P, "ran"),
    # loader_sets: loads and fires only as its loader sets it (the sidecar's loader:); the program the
    # loader leaves out is skipped.
    ("file_open", K510, Check.SYMBOL): (P, ""),
    ("file_open", K510, Check.LOAD): (P, "attached to `vfs_open` as its loader sets it"),
    ("file_open", K510, Check.FIRE): (P, "ran"),
    ("file_open", K61, Check.FIRE): (P, "ran"),
    ("file_open", A61, Check.LOAD): (P, "attached to `vfs_open`"),
    ("file_open", A61, Check.ATTACH): (X, "ENOTSUPP"),
    ("never_loaded", K61, Check.SYMBOL): (S, "left out by the loader (autoload off)"),
    ("never_loaded", K61, Check.LOAD): (S, "left out by the loader (autoload off)"),
    # core_sibling_guard: the exists check of one field guards the read of the other, both ways.
    ("sibling_guarded", K510, Check.LAYOUT): (P, "exists check of `task_struct___pre514.state` rules out"),
    ("sibling_guarded", K61, Check.LAYOUT): (P, "exists check of `task_struct___pre514.state` rules out"),
    ("sibling_guarded", K510, Check.LOAD): (P, ""),
    ("sibling_guarded", A61, Check.FIRE): (P, "ran"),
    # args_unread_change: vfs_unlink's parameters moved, but the kprobe reads none of them.
    ("count_unlinks", K61, Check.PROTOTYPE): (P, "where the program does not read"),
    ("count_unlinks", K61, Check.FIRE): (P, "ran"),
    # args_read_moved: the fentry reads slot 1, the dentry on 5.10 and the directory's inode on 6.1.
    ("read_dentry", K510, Check.PROTOTYPE): (P, ""),
    ("read_dentry", K61, Check.PROTOTYPE): (X, "read param 1 `dentry` struct dentry * moved to position 2"),
    ("read_dentry", K61, Check.FIRE): (P, "ran"),
    # ptregs_wrapper_direct: PARM2 of the wrapper's own pt_regs, on both arches.
    ("wrapper_parm2", K61, Check.PROTOTYPE): (X, "use BPF_KSYSCALL"),
    ("wrapper_parm2", A61, Check.PROTOTYPE): (X, "reads PARM2 of syscall wrapper `__arm64_sys_openat`"),
    ("wrapper_parm2", K61, Check.FIRE): (P, "ran"),
    # ptregs_x86_on_arm64: x86_64's di read from an arm64 pt_regs, where offset 112 is regs[14].
    ("x86_parm1", K61, Check.PROTOTYPE): (P, ""),
    ("x86_parm1", A61, Check.PROTOTYPE): (X, "reads pt_regs offset 112 (x86_64 di): built for x86_64?"),
    ("x86_parm1", A61, Check.FIRE): (P, "ran"),
    # fire_one_kernel: attaches on both, fires on 5.10 only (fire by difference); arm64 has one kernel.
    ("kprobe_lru_cache_add", K510, Check.FIRE): (P, "ran"),
    ("kprobe_lru_cache_add", K61, Check.ATTACH): (P, ""),
    ("kprobe_lru_cache_add", K61, Check.FIRE): (X, "fired on 5.10 (run_cnt "),
    ("kprobe_lru_cache_add", A61, Check.FIRE): (S, "not reached by the workload on any kernel"),
    ("kprobe_folio_add_lru", K510, Check.SYMBOL): (X, "not in kallsyms on 5.10"),
    ("kprobe_folio_add_lru", K510, Check.ATTACH): (S, "absent on 5.10: see symbol"),
    ("kprobe_folio_add_lru", K61, Check.FIRE): (P, "ran"),
    # alt_io_start: four programs for one job; each member's own cells, the group's verdict below.
    ("fentry_io_start", K510, Check.FIRE): (P, "ran"),
    ("kprobe_io_start", K510, Check.FIRE): (P, "ran"),
    ("fentry_io_start", K61, Check.LOAD): (S, "target `blk_account_io_start` absent on 6.1: see symbol"),
    ("kprobe_io_start", A61, Check.ATTACH): (S, "target `blk_account_io_start` absent on 6.1: see symbol"),
    ("tp_btf_io_start", K510, Check.SYMBOL): (S, "target absent on every kernel"),
    ("tp_rq_issue", K61, Check.FIRE): (P, "ran"),
    ("tp_rq_issue", A61, Check.FIRE): (P, "ran"),
}


def _record(matrix: Matrix, program: str, column: tuple[str, str], check: Check) -> CellResult:
    found = [
        r for r in matrix.records
        if r.probe.object in CORPUS and r.probe.program == program
        and (r.kernel, r.arch) == column and r.check == check
    ]
    assert len(found) == 1, f"{program} {column[0]}/{column[1]} {check.value}: {len(found)} records"
    return found[0]


@pytest.mark.integration
def test_run_is_green_with_the_corpus_expectations(ci_matrix) -> None:  # type: ignore[no-untyped-def]
    """Every failure of the corpus is known and accepted: the gate passes, with xfails."""
    assert ci_matrix.returncode == 0, ci_matrix.output[-4000:]
    corpus = [r for r in ci_matrix.matrix.records if r.probe.object in CORPUS]
    assert {r.probe.object for r in corpus} == set(CORPUS)
    outcomes = {r.outcome for r in corpus}
    assert Outcome.XFAIL in outcomes and not outcomes & {Outcome.FAIL, Outcome.XPASS, Outcome.ERROR}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("program", "column", "check"),
    list(EXPECTED),
    ids=[f"{p}-{k}-{a}-{c.value}" for p, (k, a), c in EXPECTED],
)
def test_corpus_cell(ci_matrix, program: str, column: tuple[str, str], check: Check) -> None:  # type: ignore[no-untyped-def]
    outcome, words = EXPECTED[(program, column, check)]
    rec = _record(ci_matrix.matrix, program, column, check)
    where = f"{program} {column[0]}/{column[1]} {check.value}"
    assert rec.outcome == outcome, f"{where}: {rec.outcome.value} ({rec.reason})"
    assert words in rec.reason, f"{where}: {rec.reason!r} lacks {words!r}"
    if outcome == Outcome.XFAIL:
        # The raw outcome was FAIL; the sidecar's expectation that accepted it is recorded beside it.
        assert rec.expected and rec.expected.startswith(f"{check.value} fail"), rec.expected
    if check == Check.FIRE and outcome == Outcome.PASS:
        assert int(rec.details["run_cnt"]) > 0


@pytest.mark.integration
def test_the_alternatives_group_works_through_the_members_that_load_and_attach(ci_matrix) -> None:  # type: ignore[no-untyped-def]
    (group,) = [g for g in json.loads(ci_matrix.json_path.read_text())["groups"] if g["group"] == "io_start"]
    working = {(v["kernel"], v["arch"]): (v["outcome"], v["working"]) for v in group["verdicts"]}
    assert working == {
        K510: ("pass", ["fentry_io_start", "kprobe_io_start", "tp_rq_issue"]),
        K61: ("pass", ["tp_rq_issue"]),
        A61: ("pass", ["tp_rq_issue"]),
    }
    assert "`io_start` only through tp_rq_issue on 6.1 (x86_64, arm64)" in group["summary"]


@pytest.mark.integration
def test_recursion_misses_are_numbers_in_the_json(ci_matrix) -> None:  # type: ignore[no-untyped-def]
    records = json.loads(ci_matrix.json_path.read_text())["records"]

    def fire(program: str, kernel: str, arch: str) -> dict[str, object]:
        (rec,) = [
            r for r in records
            if r["object"] == "recursion" and r["program"] == program
            and r["kernel"] == kernel and r["arch"] == arch and r["check"] == "fire"
        ]
        details: dict[str, object] = rec["details"]
        return details

    on_61 = fire("on_htab_delete", "6.1", "x86_64")
    assert isinstance(on_61["recursion_misses"], int) and on_61["recursion_misses"] > 0
    assert isinstance(on_61["run_cnt"], int) and on_61["run_cnt"] > 0
    assert fire("tp_delete", "6.1", "x86_64")["recursion_misses"] == 0
    # 5.10 has no recursion counter (5.12 added it) and lets the nested run happen: the fentry
    # program runs more often than the tracepoint that starts each chain.
    on_510 = fire("on_htab_delete", "5.10", "x86_64")
    assert on_510["recursion_misses"] is None
    assert int(str(on_510["run_cnt"])) > int(str(fire("tp_delete", "5.10", "x86_64")["run_cnt"]))


def _pytest_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    return env


@pytest.mark.integration
def test_a_changed_expectation_fails_naming_the_cell_and_both_values(tmp_path: Path) -> None:
    """Offline only (-k symbol on cached facts): no boot."""
    progs = tmp_path / "bpf_progs"
    progs.mkdir()
    shutil.copy2(ROOT / "bpf_progs" / "blk_account.bpf.c", progs)
    sidecar = (ROOT / "bpf_progs" / "blk_account.yaml").read_text()
    # The kprobe fails on 6.1: say it passes there. The tracepoint passes: say it fails there.
    edited = sidecar.replace(
        "  kprobe_blk_account_io_start:\n    expect:\n",
        "  kprobe_blk_account_io_start:\n    expect:\n"
        '      - {check: symbol, outcome: pass, kernels: "6.1", reason: "edited"}\n',
    ).replace(
        "  tp_block_rq_issue:\n    expect:\n",
        "  tp_block_rq_issue:\n    expect:\n"
        '      - {check: symbol, outcome: fail, kernels: "6.1"}\n',
        1,
    )
    assert edited.count("edited") == 1 and 'outcome: fail, kernels: "6.1"}' in edited
    (progs / "blk_account.yaml").write_text(edited)
    argv = [
        sys.executable, "-m", "pytest", "matrix/", "-p", "no:cacheprovider", "-q", "-k", "symbol",
        "--kernels", str(ROOT / "kernels-ci.yaml"), "--kernel", "6.1-x86_64", "--bpf-progs", str(progs),
        "--matrix-json", str(tmp_path / "matrix.json"),
    ]
    proc = subprocess.run(
        argv, cwd=ROOT, env=_pytest_env(), capture_output=True, text=True, timeout=600, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    kprobe = "blk_account:kprobe_blk_account_io_start 6.1/x86_64 symbol"
    assert f"{kprobe}: fail, but expected 'symbol pass on 6.1: edited'" in out
    tracepoint = "blk_account:tp_block_rq_issue 6.1/x86_64 symbol"
    assert f"{tracepoint}: expected 'symbol fail on 6.1' but it passed" in out
    assert "2 failed" in out
    doc = json.loads((tmp_path / "matrix.json").read_text())
    assert not any(k["booted"] for k in doc["kernels"])
    assert {(r["kernel"], r["arch"], r["check"]) for r in doc["records"]} == {("6.1", "x86_64", "symbol")}
