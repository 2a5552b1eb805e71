"""Tests of harness.checks.guest on real guest agent records and on hand-written libbpf logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.checks.guest import (
    VERIFIER_BEGIN,
    GuestContext,
    Relocation,
    check_fire,
    check_guest_objects,
    check_guest_program,
    errno_name,
    errno_text,
    parse_relocations,
    verifier_tail,
)
from harness.report.results import Check, Outcome, Probe

GUESTLOGS = Path(__file__).resolve().parent / "data" / "guestlogs"
CTX = GuestContext("6.1", "x86_64")
ARM = GuestContext("6.1", "arm64")

KPROBE_UNLINK = Probe("vfs_unlink", "kprobe_vfs_unlink", "kprobe/vfs_unlink", "kprobe", "vfs_unlink")
FENTRY_UNLINK = Probe("vfs_unlink", "fentry_vfs_unlink", "fentry/vfs_unlink", "fentry", "vfs_unlink")
KPROBE_BLK = Probe(
    "blk_account", "kprobe_blk_account_io_start", "kprobe/blk_account_io_start", "kprobe",
    "blk_account_io_start",
)
TP_BLK = Probe(
    "blk_account", "tp_block_rq_issue", "tp/block/block_rq_issue", "tracepoint", "block/block_rq_issue"
)

# libbpf 1.x when a field does not exist in the kernel's BTF: the instruction is poisoned, and the
# verifier rejects the program when the poisoned instruction is reachable.
FAILED_RELO_LOG = """\
libbpf: prog 'p': relo #0: <byte_off> [2] struct pt_regs.si (0:13 @ offset 104)
libbpf: prog 'p': relo #0: matching candidate #0 <byte_off> [159] struct pt_regs.si (0:13 @ offset 104)
libbpf: prog 'p': relo #0: patched insn #0 (LDX/ST/STX) off 104 -> 104
libbpf: prog 'other': relo #0: <byte_off> [5] struct file.f_path (0:1 @ offset 16)
libbpf: prog 'other': relo #0: no matching targets found
libbpf: prog 'p': relo #1: <field_exists> [17] struct dentry.d_name (0:4 @ offset 32)
libbpf: prog 'p': relo #1: matching candidate #0 <field_exists> [973] struct dentry.d_name (0:4 @ offset 32)
libbpf: prog 'p': relo #1: patched insn #3 (ALU/ALU64) imm 1 -> 1
libbpf: CO-RE relocating [17] struct dentry: found target candidate [973] struct dentry in [vmlinux]
libbpf: prog 'p': relo #2: <byte_off> [17] struct dentry.d_old_name (0:9 @ offset 200)
libbpf: prog 'p': relo #2: no matching targets found
libbpf: prog 'p': relo #2: substituting insn #5 w/ invalid insn
libbpf: prog 'p': BPF program load failed: Invalid argument
libbpf: prog 'p': -- BEGIN PROG LOAD LOG --
0: R1=ctx(off=0,imm=0) R10=fp0
0: (79) r6 = *(u64 *)(r1 +104)
1: (b7) r1 = 0
5: (85) call unknown#195896080
invalid func unknown#195896080
processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
-- END PROG LOAD LOG --
libbpf: prog 'p': failed to load: -22
libbpf: failed to load object 'core'
"""

VERIFIER_LOG = """\
libbpf: prog 'p': BPF program load failed: Permission denied
libbpf: prog 'p': -- BEGIN PROG LOAD LOG --
0: R1=ctx(off=0,imm=0) R10=fp0
; int BPF_KPROBE(p, struct inode *dir, struct dentry *dentry)
0: (79) r1 = *(u64 *)(r1 +104)        ; R1_w=scalar()
1: (61) r2 = *(u32 *)(r1 +36)
R1 invalid mem access 'scalar'
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
-- END PROG LOAD LOG --
libbpf: prog 'p': failed to load: -13
libbpf: failed to load object 'verif'
"""


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, Any]]:
    """objects.json of a real boot of Debian 6.1 on x86_64, by object name."""
    data = json.loads((GUESTLOGS / "objects-6.1-x86_64.json").read_text())
    return {str(o["object"]): o for o in data}


def probe(program: str, kind: str = "kprobe", target: str = "f") -> Probe:
    return Probe("obj", program, f"{kind}/{target}", kind, target)


def only(results: list[Any], check: Check) -> Any:
    (found,) = [r for r in results if r.check is check]
    return found


# ---------------------------------------------------------------- parse_relocations


def test_relocations_from_a_real_load_log(recorded: dict[str, dict[str, Any]]) -> None:
    log = recorded["vfs_unlink"]["load_log"]
    relos = parse_relocations(log, "kprobe_vfs_unlink")
    assert relos == [
        Relocation(
            index=0, kind="byte_off", spec="struct pt_regs.si", status="resolved", local_offset=104,
            target="struct pt_regs.si (0:13 @ offset 104)", value=104,
        ),
        Relocation(
            index=1, kind="byte_off", spec="struct dentry.d_name.len", status="resolved", local_offset=36,
            target="struct dentry.d_name.len (0:4:0:0:1 @ offset 36)", value=36,
        ),
    ]
    # The other program of the object has none, and map relocations ("sec '.rel...': relo #0: insn #1
    # against 'unlinks'") are not CO-RE relocations.
    assert parse_relocations(log, "fentry_vfs_unlink") == []
    assert parse_relocations(recorded["blk_account"]["load_log"], "tp_block_rq_issue") == []


def test_failed_relocation_is_poisoned_not_raised() -> None:
    relos = parse_relocations(FAILED_RELO_LOG, "p")
    assert [(r.index, r.kind, r.spec, r.status) for r in relos] == [
        (0, "byte_off", "struct pt_regs.si", "resolved"),
        (1, "field_exists", "struct dentry.d_name", "resolved"),
        (2, "byte_off", "struct dentry.d_old_name", "failed"),
    ]
    failed = relos[2]
    assert failed.local_offset == 200
    assert failed.value is None and failed.target == ""
    # The first failure line says why; later lines of the same relocation do not overwrite it.
    assert failed.message == "no matching targets found"
    assert relos[1].value == 1
    assert failed.serialize()["status"] == "failed"


def test_relocations_of_one_program_only() -> None:
    (other,) = parse_relocations(FAILED_RELO_LOG, "other")
    assert (other.spec, other.status, other.local_offset) == ("struct file.f_path", "failed", 16)
    assert parse_relocations(FAILED_RELO_LOG, "absent") == []


def test_a_kfunc_libbpf_poisons_is_no_core_relocation() -> None:
    # systemd's userns_restrict on Debian's 6.1, libbpf 1.5: the kfunc is the load's failure, not CO-RE's.
    log = (
        "libbpf: prog 'p': relo #0: <byte_off> [7] struct user_namespace.ns.inum (0:9:2 @ offset 276)\n"
        "libbpf: prog 'p': relo #0: patched insn #3 (LDX/ST/STX) off 276 -> 276\n"
        "libbpf: prog 'p': relo #4: poisoning insn #13 that calls kfunc 'bpf_rdonly_cast'\n"
    )
    (relo,) = parse_relocations(log, "p")
    assert (relo.index, relo.spec, relo.status) == (0, "struct user_namespace.ns.inum", "resolved")


def test_failed_to_resolve_wording() -> None:
    log = (
        "libbpf: prog 'p': relo #4: <enumval_value> [30] enum bpf_func_id::BPF_FUNC_x = 200\n"
        "libbpf: prog 'p': relo #4: failed to resolve CO-RE relocation <enumval_value> [30] ...: -3\n"
    )
    (relo,) = parse_relocations(log, "p")
    assert relo.index == 4 and relo.kind == "enumval_value" and relo.status == "failed"
    assert relo.message.startswith("failed to resolve CO-RE relocation")


# ---------------------------------------------------------------- verifier_tail


def test_verifier_tail_is_inside_the_load_log() -> None:
    tail = verifier_tail(VERIFIER_LOG)
    assert tail[-1] == "R1 invalid mem access 'scalar'"
    assert all("processed" not in line for line in tail)
    assert all("failed to load" not in line for line in tail)
    assert tail[0] == "0: R1=ctx(off=0,imm=0) R10=fp0"
    assert verifier_tail(VERIFIER_LOG, lines=2) == [
        "1: (61) r2 = *(u32 *)(r1 +36)",
        "R1 invalid mem access 'scalar'",
    ]


def test_verifier_tail_without_markers_uses_the_whole_log() -> None:
    log = "libbpf: a\n\nlibbpf: b\nverification time 12 usec\nlibbpf: c\n"
    assert verifier_tail(log) == ["a", "b", "c"]


def test_verifier_tail_of_a_long_log_keeps_the_end() -> None:
    body = "\n".join(f"{i}: (b7) r{i % 10} = {i}" for i in range(500))
    log = f"{VERIFIER_BEGIN}\n{body}\nR0 !read_ok\n-- END PROG LOAD LOG --\n"
    assert verifier_tail(log)[-1] == "R0 !read_ok"


# ---------------------------------------------------------------- check_guest_program: real records


def test_real_records_pass_load_attach_fire(recorded: dict[str, dict[str, Any]]) -> None:
    obj = recorded["vfs_unlink"]
    results = check_guest_program(KPROBE_UNLINK, obj["programs"]["kprobe_vfs_unlink"], obj, CTX)
    assert [(r.check, r.outcome) for r in results] == [
        (Check.LOAD, Outcome.PASS), (Check.CORE, Outcome.PASS),
        (Check.ATTACH, Outcome.PASS), (Check.FIRE, Outcome.PASS),
    ]
    core = only(results, Check.CORE)
    assert core.reason == "2 relocations resolved"
    specs = [r["spec"] for r in core.details["relocations"]]
    assert specs == ["struct pt_regs.si", "struct dentry.d_name.len"]
    fire = only(results, Check.FIRE)
    assert fire.reason == "ran 6 times, recursion_misses 0"
    assert fire.details["run_cnt"] == 6 and fire.details["trigger"] == "default"
    assert all((r.kernel, r.arch, r.probe) == ("6.1", "x86_64", KPROBE_UNLINK) for r in results)

    fentry = check_guest_program(FENTRY_UNLINK, obj["programs"]["fentry_vfs_unlink"], obj, CTX)
    assert only(fentry, Check.CORE).outcome is Outcome.SKIP


def test_real_record_attach_enoent_on_an_inlined_function(recorded: dict[str, dict[str, Any]]) -> None:
    obj = recorded["blk_account"]
    results = check_guest_program(KPROBE_BLK, obj["programs"]["kprobe_blk_account_io_start"], obj, CTX)
    attach = only(results, Check.ATTACH)
    assert attach.outcome is Outcome.FAIL
    assert attach.reason == (
        "attach failed: ENOENT (No such file or directory): "
        "no kprobe-able `blk_account_io_start` on this kernel"
    )
    assert attach.details["errno"] == 2
    assert "failed to create kprobe 'blk_account_io_start+0x0'" in attach.details["log"]
    fire = only(results, Check.FIRE)
    assert (fire.outcome, fire.reason) == (Outcome.SKIP, "not attached")
    assert only(results, Check.LOAD).outcome is Outcome.PASS


def test_check_guest_objects_on_the_recorded_run(recorded: dict[str, dict[str, Any]]) -> None:
    probes = [KPROBE_UNLINK, FENTRY_UNLINK, KPROBE_BLK, TP_BLK, probe("lost")]
    results = check_guest_objects(probes, list(recorded.values()), CTX)
    by = {(r.probe.program, r.check): r for r in results}
    assert by[("tp_block_rq_issue", Check.FIRE)].outcome is Outcome.PASS
    assert by[("kprobe_blk_account_io_start", Check.ATTACH)].outcome is Outcome.FAIL
    # An object the agent never reported is the harness's failure.
    for check in (Check.LOAD, Check.ATTACH, Check.FIRE):
        assert by[("lost", check)].outcome is Outcome.ERROR
        assert by[("lost", check)].reason == "the guest agent did not report obj"


def test_program_missing_from_the_object_record(recorded: dict[str, dict[str, Any]]) -> None:
    (res,) = check_guest_program(probe("ghost"), None, recorded["syscalls"], CTX)
    assert (res.check, res.outcome) == (Check.LOAD, Outcome.ERROR)
    assert res.reason == "program ghost not found by libbpf in obj"


# ---------------------------------------------------------------- check_guest_program: failures


def test_load_failure_with_verifier_log() -> None:
    p = probe("p")
    record = {"load": {"ok": False, "errno": 13, "log": VERIFIER_LOG}}
    results = check_guest_program(p, record, {"object": "obj"}, CTX)
    load = only(results, Check.LOAD)
    assert load.outcome is Outcome.FAIL
    # The verifier's error, and the instruction it refused.
    assert load.reason == (
        "verifier rejected it (EACCES): R1 invalid mem access 'scalar' at insn 1 `r2 = *(u32 *)(r1 +36)`"
    )
    assert load.details["verifier_tail"][-1] == "R1 invalid mem access 'scalar'"
    assert only(results, Check.CORE).outcome is Outcome.SKIP
    assert [(r.check, r.outcome, r.reason) for r in results[-2:]] == [
        (Check.ATTACH, Outcome.SKIP, "not loaded"), (Check.FIRE, Outcome.SKIP, "not loaded"),
    ]


def test_load_failure_from_a_failed_relocation() -> None:
    record = {"load": {"ok": False, "errno": 22, "log": FAILED_RELO_LOG}}
    results = check_guest_program(probe("p"), record, {"object": "obj"}, CTX)
    assert only(results, Check.LOAD).reason == (
        "verifier rejected it (EINVAL): invalid func unknown#195896080 (a CO-RE relocation failed: see the "
        "core check) at insn 5 `call unknown#195896080`"
    )
    core = only(results, Check.CORE)
    assert core.outcome is Outcome.FAIL
    assert core.reason == "relocation `struct dentry.d_old_name` failed on 6.1"
    assert [r["status"] for r in core.details["relocations"]] == ["resolved", "resolved", "failed"]


def test_unresolved_relocation_that_was_guarded_passes() -> None:
    record = {
        "load": {"ok": True, "log": FAILED_RELO_LOG.split("libbpf: prog 'p': BPF program")[0]},
        "attach": {"ok": True},
        "fire": {"run_cnt": 3, "recursion_misses": 0},
    }
    results = check_guest_program(probe("p"), record, {"object": "obj"}, CTX)
    core = only(results, Check.CORE)
    assert core.outcome is Outcome.PASS
    assert "on no path the verifier walks (the program loaded)" in core.reason


def test_load_failure_without_verifier_log() -> None:
    log = "libbpf: prog 'p': failed to find BTF for extern 'bpf_loop'\nlibbpf: failed to load object 'x'\n"
    record = {"load": {"ok": False, "errno": 3, "log": log}}
    load = only(check_guest_program(probe("p"), record, {"object": "obj"}, CTX), Check.LOAD)
    # libbpf's own reason, not its generic last line.
    assert load.reason == "load failed (ESRCH): failed to find BTF for extern 'bpf_loop'"


def test_load_log_from_the_whole_object_when_the_program_has_none() -> None:
    obj = {"object": "obj", "load_log": FAILED_RELO_LOG}
    results = check_guest_program(probe("p"), {"load": {"ok": True}, "attach": {"ok": True},
                                               "fire": {"run_cnt": 1}}, obj, CTX)
    assert len(only(results, Check.CORE).details["relocations"]) == 3


def test_attach_enotsupp_fentry_on_arm64_names_trampolines() -> None:
    p = probe("fe", "fentry", "vfs_read")
    attach_record = {"ok": False, "errno": 524, "error": "Unknown error 524", "log": ""}
    record = {"load": {"ok": True}, "attach": attach_record}
    results = check_guest_program(p, record, {"object": "obj"}, ARM)
    attach = only(results, Check.ATTACH)
    assert attach.outcome is Outcome.FAIL
    assert attach.reason == (
        "attach failed: ENOTSUPP (operation not supported by this kernel): "
        "BPF trampolines (fentry/fexit/lsm) need ftrace direct calls, on arm64 from 6.4"
    )
    assert (attach.arch, attach.details["errno"]) == ("arm64", 524)
    assert only(results, Check.FIRE).outcome is Outcome.SKIP


def test_attach_enotsupp_elsewhere() -> None:
    p = probe("fe", "fentry", "vfs_read")
    record = {"load": {"ok": True}, "attach": {"ok": False, "errno": 524}}
    attach = only(check_guest_program(p, record, {"object": "obj"}, CTX), Check.ATTACH)
    assert attach.reason.endswith(": the kernel does not support this attach type here")
    kp = probe("kp", "kprobe", "vfs_read")
    attach = only(check_guest_program(kp, record, {"object": "obj"}, ARM), Check.ATTACH)
    assert "trampolines" not in attach.reason


def test_attach_failure_without_hint_carries_libbpf_line() -> None:
    p = probe("lsm_open", "lsm", "file_open")
    log = "libbpf: prog 'lsm_open': failed to attach: Invalid argument\n"
    attach_record = {"ok": False, "errno": 22, "error": "Invalid argument", "log": log}
    record = {"load": {"ok": True}, "attach": attach_record}
    attach = only(check_guest_program(p, record, {"object": "obj"}, CTX), Check.ATTACH)
    assert attach.reason == (
        "attach failed: EINVAL (Invalid argument): prog 'lsm_open': failed to attach: Invalid argument"
    )


def test_errno_text() -> None:
    assert errno_text(524) == "ENOTSUPP (operation not supported by this kernel)"
    assert errno_text(2) == "ENOENT (No such file or directory)"
    assert errno_text(95, "custom") == "EOPNOTSUPP (custom)"


def test_eopnotsupp_is_not_named_like_the_kernel_internal_enotsupp() -> None:
    # Linux has one errno 95 with two names; the kernel returns it as EOPNOTSUPP. Python's table
    # gives ENOTSUP, one letter away from ENOTSUPP (524), which is a different error.
    assert errno_name(95) == "EOPNOTSUPP"
    assert errno_name(524) == "ENOTSUPP"
    p = probe("km", "kprobe.multi", "vfs_*")
    record = {"load": {"ok": True}, "attach": {"ok": False, "errno": 95, "error": "Operation not supported"}}
    attach = only(check_guest_program(p, record, {"object": "obj"}, CTX), Check.ATTACH)
    assert attach.reason == "attach failed: EOPNOTSUPP (Operation not supported)"


def test_object_open_error_is_error_not_fail() -> None:
    obj = {"object": "obj", "error": "libbpf could not open the object: Invalid argument", "programs": {}}
    results = check_guest_program(probe("p"), None, obj, CTX)
    assert [(r.check, r.outcome) for r in results] == [
        (Check.LOAD, Outcome.ERROR), (Check.ATTACH, Outcome.ERROR), (Check.FIRE, Outcome.ERROR),
    ]
    assert {r.reason for r in results} == {"libbpf could not open the object: Invalid argument"}


def test_object_libbpf_cannot_open_says_libbpfs_message() -> None:
    log = ("libbpf: elf: failed to open /mnt/objs/x.bpf.o: No such file or directory\n"
           "libbpf: failed to load object '/mnt/objs/x.bpf.o'\n")
    obj = {"object": "obj", "error": "libbpf could not open the object: No such file or directory",
           "whole_load": {"stage": "open", "ok": False, "errno": 2, "log": log}, "programs": {}}
    results = check_guest_program(probe("p"), None, obj, CTX)
    assert {(r.outcome, r.reason) for r in results} == {
        (Outcome.ERROR, "libbpf could not open the object (ENOENT): elf: failed to open /mnt/objs/x.bpf.o: "
                        "No such file or directory"),
    }


# ---------------------------------------------------------------- fire


def ok_record(fire: dict[str, Any] | None) -> dict[str, Any]:
    return {"load": {"ok": True}, "attach": {"ok": True}, "fire": fire}


def test_never_fired_is_a_failure() -> None:
    results = check_guest_program(probe("p"), ok_record({"run_cnt": 0, "recursion_misses": 0}), {}, CTX)
    fire = only(results, Check.FIRE)
    assert fire.outcome is Outcome.FAIL
    assert "never fired" in fire.reason
    assert fire.details["run_cnt"] == 0


def test_recursion_misses_fail_with_numbers() -> None:
    fire = check_fire(probe("p"), {"run_cnt": 40, "recursion_misses": 3, "trigger": "default"}, CTX)
    assert fire.outcome is Outcome.FAIL
    assert fire.reason == "ran 40 times but missed executions (recursion_misses 3)"
    assert fire.details["recursion_misses"] == 3


def test_kprobe_misses_alone_fail_even_without_runs() -> None:
    fire = check_fire(probe("p"), {"run_cnt": 0, "recursion_misses": 0, "kprobe_missed": 7}, CTX)
    assert fire.outcome is Outcome.FAIL
    assert fire.reason == "ran 0 times but missed executions (kprobe missed 7)"
    both = check_fire(probe("p"), {"run_cnt": 2, "recursion_misses": 1, "kprobe_missed": 7}, CTX)
    assert both.reason == "ran 2 times but missed executions (recursion_misses 1, kprobe missed 7)"


def test_fire_on_a_kernel_without_recursion_misses() -> None:
    fire = check_fire(probe("p"), {"run_cnt": 5}, CTX)
    assert (fire.outcome, fire.reason) == (Outcome.PASS, "ran 5 times")


@pytest.mark.parametrize(
    "fire,reason",
    [
        (None, "could not read run count: no run count"),
        ({"error": "Bad file descriptor"}, "could not read run count: Bad file descriptor"),
    ],
)
def test_unreadable_run_count_is_error(fire: dict[str, Any] | None, reason: str) -> None:
    res = check_fire(probe("p"), fire, CTX)
    assert (res.outcome, res.reason) == (Outcome.ERROR, reason)


def test_stats_disabled_is_error() -> None:
    ctx = GuestContext("6.1", "x86_64", stats_enabled=False)
    res = check_fire(probe("p"), {"run_cnt": 0}, ctx)
    assert (res.outcome, res.reason) == (Outcome.ERROR, "kernel.bpf_stats_enabled could not be set")


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        # libbpf 1.x: the attach target of an fentry is not in the kernel's BTF.
        ("libbpf: prog 'fentry_start': failed to find kernel BTF type ID of 'blk_account_io_start': -3\n"
         "libbpf: prog 'fentry_start': failed to prepare load attributes: -3\n"
         "libbpf: prog 'fentry_start': failed to load: -3\n"
         "libbpf: failed to load object '/mnt/objs/biolatency.bpf.o'\n",
         "no `blk_account_io_start` in the kernel's BTF to attach to "
         "(failed to find kernel BTF type ID of 'blk_account_io_start')"),
        # A map the loader sizes, loaded without it: the first try, then the summary line.
        ("libbpf: map 'stackmap': created successfully, fd=4\n"
         "libbpf: Error in bpf_create_map_xattr(counts):Invalid argument(-22). Retrying without BTF.\n"
         "libbpf: map 'counts': failed to create: Invalid argument(-22)\n"
         "libbpf: failed to load object '/mnt/objs/x.bpf.o'\n",
         "map 'counts': failed to create: Invalid argument"),
        ("libbpf: extern (func ksym) 'bpf_task_acquire': not found in kernel or module BTFs\n"
         "libbpf: failed to load object 'x'\n",
         "func ksym `bpf_task_acquire` is not in the kernel's BTF "
         "(a kfunc or kernel variable this kernel lacks)"),
        # Debug chatter before the cause does not win over it.
        ("libbpf: elf: section(3) kprobe/x, size 120, link 0, flags 6, type=1\n"
         "libbpf: sec 'kprobe/x': found program 'x' at insn offset 0 (0 bytes), code size 15 insns\n"
         "libbpf: prog 'x': failed to find kernel BTF type ID of 'y': -3\n",
         "no `y` in the kernel's BTF to attach to (failed to find kernel BTF type ID of 'y')"),
        ("libbpf: failed to load object 'x'\n", "libbpf names no cause (its log is in the details)"),
    ],
)
def test_load_reason_is_the_root_cause_not_the_generic_tail(log: str, reason: str) -> None:
    record = {"load": {"ok": False, "errno": 22, "log": log}}
    load = only(check_guest_program(probe("p"), record, {"object": "obj"}, CTX), Check.LOAD)
    assert load.reason == f"load failed (EINVAL): {reason}"
    assert not load.reason.endswith("failed to load object 'x'")


# ---------------------------------------------------------------- what the loader set

FENTRY_OPEN = Probe("loader_sets", "file_open", "fentry/dummy_file_open", "fentry", "vfs_open")
SIZED: dict[str, Any] = {
    "what": "map", "name": "stackmap", "by": "harness",
    "text": "max_entries 1024 (the object has 0), value_size 1016 (the object has 0)",
}
TARGET: dict[str, Any] = {"what": "attach_target", "name": "file_open", "by": "sidecar", "text": "vfs_open"}


def loaded_object(*sets: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "object": "loader_sets",
        "loader_set": list(sets),
        "programs": {"file_open": {
            "load": {"ok": True}, "attach": {"ok": True, "log": ""}, "fire": {"run_cnt": 3},
        }},
        **extra,
    }


def by_check(results: list[Any]) -> dict[Check, Any]:
    return {r.check: r for r in results}


def test_a_map_the_harness_sized_is_said_in_the_load_cell() -> None:
    obj = loaded_object(SIZED, TARGET)
    got = by_check(check_guest_program(FENTRY_OPEN, obj["programs"]["file_open"], obj, CTX))
    load = got[Check.LOAD]
    assert load.outcome == Outcome.PASS
    assert "map 'stackmap': max_entries 1024 (the object has 0)" in load.reason
    assert "sized by the harness: the object leaves it to its loader" in load.reason
    assert "attached to `vfs_open` as its loader sets it" in load.reason
    assert load.details["loader_set"] == [SIZED, TARGET]
    assert got[Check.FIRE].outcome == Outcome.PASS


def test_a_plain_load_says_nothing() -> None:
    obj = loaded_object()
    got = by_check(check_guest_program(FENTRY_OPEN, obj["programs"]["file_open"], obj, CTX))
    assert got[Check.LOAD].reason == "" and "loader_set" not in got[Check.LOAD].details


def test_a_program_the_loader_leaves_out_is_skipped_on_every_check() -> None:
    never = Probe("loader_sets", "never_loaded", "kprobe/absent", "kprobe", "absent")
    obj = loaded_object(left_out=["never_loaded"])
    results = check_guest_program(never, None, obj, CTX)
    assert {r.check for r in results} == {Check.LOAD, Check.CORE, Check.ATTACH, Check.FIRE}
    assert {(r.outcome, r.reason) for r in results} == {
        (Outcome.SKIP, "left out by the loader (autoload off)"),
    }


def test_a_refused_attach_target_is_a_load_failure_naming_it() -> None:
    refused = {"stage": "set_attach_target", "ok": False, "errno": 3, "target": "vfs_open",
               "log": "prog 'file_open': bpf_program__set_attach_target 'vfs_open': No such process\n"}
    obj = {"object": "loader_sets", "programs": {"file_open": {"load": refused}}}
    got = by_check(check_guest_program(FENTRY_OPEN, obj["programs"]["file_open"], obj, CTX))
    assert got[Check.LOAD].outcome == Outcome.FAIL
    assert got[Check.LOAD].reason == (
        "the loader's attach target `vfs_open` was refused: ESRCH (No such process) "
        "(no such function in this kernel's BTF)"
    )
    assert got[Check.ATTACH].outcome == Outcome.SKIP


def test_a_setting_the_agent_could_not_apply_is_an_error_not_a_failure() -> None:
    broken = {"what": "map", "name": "counts", "by": "sidecar", "errno": 16,
              "error": "bpf_map__set_value_size(8): Device or resource busy"}
    obj = loaded_object(broken)
    results = check_guest_program(FENTRY_OPEN, obj["programs"]["file_open"], obj, CTX)
    assert {r.outcome for r in results} == {Outcome.ERROR}
    assert results[0].reason == (
        "could not set what the loader sets: map 'counts': "
        "bpf_map__set_value_size(8): Device or resource busy"
    )


def test_a_program_left_out_of_the_load_for_an_absent_btf_target() -> None:
    """The agent looked the fentry's target up before the load and left it out: LOAD says why in
    libbpf's words, CORE that it was never relocated (not that it has no relocations)."""
    line = ("libbpf: prog 'fentry_vfs_unlink': failed to find kernel BTF type ID of 'vfs_unlink': -3 "
            "(looked up before the load, as the load looks it up)\n")
    record = {"load": {"stage": "load", "ok": False, "errno": 3, "error": "No such process", "log": line,
                       "target": "vfs_unlink"}}
    results = {r.check: r for r in check_guest_program(FENTRY_UNLINK, record, {"object": "vfs_unlink"}, CTX)}
    assert results[Check.LOAD].outcome is Outcome.FAIL
    assert "no `vfs_unlink` in the kernel's BTF to attach to" in results[Check.LOAD].reason
    assert results[Check.CORE].outcome is Outcome.SKIP
    assert results[Check.CORE].reason.startswith("not relocated: left out of the load")
    assert results[Check.ATTACH].reason == "not loaded"
