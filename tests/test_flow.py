"""Tests for harness.programs.flow: blocks, ctx reads and existence-decided reachability."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.btf.bpf_object import load_object_code
from harness.programs.flow import (
    CtxRead,
    Function,
    ProgramCode,
    build_blocks,
    ctx_reads,
    deciding_guards,
    reach,
)
from harness.programs.insns import decode_instructions
from tests.test_insns import insn
from tests.tools import needs

SEC = "kprobe/x"


def program(data: bytes, *more: Function) -> ProgramCode:
    return ProgramCode("p", (Function("p", SEC, 0, tuple(decode_instructions(data))), *more))


def test_blocks_split_at_jumps_and_targets() -> None:
    data = insn(0xB7, dst=1, imm=1) + insn(0x15, dst=1, off=1) + insn(0x95) + insn(0x95)
    blocks = build_blocks(decode_instructions(data))
    assert {s: (b.end, b.successors) for s, b in blocks.items()} == {0: (2, (3, 2)), 2: (3, ()), 3: (4, ())}


def test_ctx_reads_follow_copies_spills_and_probe_reads() -> None:
    data = (
        insn(0xBF, dst=6, src=1)  # r6 = r1
        + insn(0x7B, dst=10, src=6, off=-8)  # *(u64 *)(r10 - 8) = r6
        + insn(0x79, dst=2, src=6, off=112)  # r2 = ctx->di
        + insn(0xB7, dst=6, imm=0)  # r6 = 0: no longer ctx
        + insn(0x79, dst=7, src=10, off=-8)  # r7 = the spilled ctx
        + insn(0x61, dst=3, src=7, off=104)  # r3 = *(u32 *)(ctx + 104)
        + insn(0xBF, dst=3, src=7)  # r3 = ctx
        + insn(0x07, dst=3, imm=80)  # r3 += 80
        + insn(0xB7, dst=2, imm=8)  # r2 = 8
        + insn(0x85, imm=113)  # bpf_probe_read_kernel(r1, 8, ctx + 80)
        + insn(0x79, dst=4, src=6, off=96)  # r6 is 0 here: not a ctx read
        + insn(0x95)
    )
    reads = ctx_reads(program(data))
    found = [(r.offset, r.size, r.via_helper) for r in reads]
    assert found == [(80, 8, True), (104, 4, False), (112, 8, False)]
    assert all(isinstance(r, CtxRead) for r in reads)


def test_ctx_passed_to_a_subprogram() -> None:
    main = insn(0x85, src=1, imm=1) + insn(0x95)  # call sub (slot 2)
    sub_insns = decode_instructions(insn(0x79, dst=0, src=1, off=8) + insn(0x95))
    sub = Function("sub", ".text", 0, tuple(sub_insns))
    code = ProgramCode("p", (Function("p", SEC, 0, tuple(decode_instructions(main)), {0: "sub"}), sub))
    assert [(r.offset, r.site) for r in ctx_reads(code)] == [(8, (".text", 0))]


def guarded() -> ProgramCode:
    return program(
        insn(0xB4, dst=1, imm=1)  # w1 = 1: the existence relocation at byte 0
        + insn(0x7B, dst=10, src=1, off=-16)  # spilled
        + insn(0x79, dst=2, src=10, off=-16)  # and filled
        + insn(0x56, dst=2, imm=0, off=2)  # if w2 != 0 goto +2 (JMP32)
        + insn(0x79, dst=3, src=6, off=0)  # byte 32: the "absent" branch
        + insn(0x95)
        + insn(0x79, dst=3, src=6, off=8)  # byte 48: the "present" branch
        + insn(0x95)
    )


def test_reach_follows_the_answer_through_a_spill() -> None:
    code = guarded()
    present, absent = reach(code, {(SEC, 0): 1}), reach(code, {(SEC, 0): 0})
    assert (SEC, 48) in present.sites and (SEC, 32) not in present.sites
    assert (SEC, 32) in absent.sites and (SEC, 48) not in absent.sites
    assert present.deciding == frozenset({(SEC, 0)})
    unknown = reach(code, {})
    assert {(SEC, 32), (SEC, 48)} <= unknown.sites and not unknown.deciding
    assert deciding_guards(code, {(SEC, 0): 1}, (SEC, 32)) == ((SEC, 0),)
    assert deciding_guards(code, {(SEC, 0): 1}, (SEC, 48)) == ()


SIBLING = r"""
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64; typedef signed char __s8; typedef short __s16; typedef int __s32;
typedef long long __s64; typedef __u16 __be16; typedef __u32 __be32; typedef __u32 __wsum;
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
struct sock___old { unsigned char freebind; } __attribute__((preserve_access_index));
struct sock___new { unsigned long flags; } __attribute__((preserve_access_index));
struct pt_regs { unsigned long di, si; } __attribute__((preserve_access_index));
SEC("kprobe/inet_bind")
int p(struct pt_regs *ctx)
{
    void *sk = (void *)ctx->di;
    unsigned long v;
    if (bpf_core_field_exists(((struct sock___old *)sk)->freebind))
        v = BPF_CORE_READ((struct sock___old *)sk, freebind);
    else
        v = BPF_CORE_READ((struct sock___new *)sk, flags);
    return v;
}
char LICENSE[] SEC("license") = "GPL";
"""


@needs("clang", "/usr/include/bpf/bpf_core_read.h")
def test_clang_sibling_guard(tmp_path: Path) -> None:
    src = tmp_path / "s.bpf.c"
    src.write_text(SIBLING)
    obj = tmp_path / "s.bpf.o"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)],
                   check=True, capture_output=True, timeout=120)
    found = load_object_code(obj)
    code, relos = found.programs["p"], found.relocations["p"]
    sites = {r.path: (r.section, r.insn_off) for r in relos if r.kind_name != "field_exists"}
    (check,) = [(r.section, r.insn_off) for r in relos if r.kind_name == "field_exists"]
    old_read, new_read = sites["sock___old.freebind"], sites["sock___new.flags"]
    on_old = reach(code, {check: 1})
    on_new = reach(code, {check: 0})
    assert old_read in on_old.sites and new_read not in on_old.sites
    assert new_read in on_new.sites and old_read not in on_new.sites
    assert deciding_guards(code, {check: 0}, old_read) == (check,)
    assert [r.offset for r in ctx_reads(code)] == [0]


def test_a_computed_ctx_offset_is_unknown() -> None:
    # r3 = ctx + (exists ? 16 : 8), then bpf_probe_read_kernel(r1, 8, r3): the slot is chosen at run time.
    data = (
        insn(0xBF, dst=3, src=1)  # r3 = ctx
        + insn(0xB7, dst=2, imm=1)  # r2 = exists
        + insn(0x15, dst=2, off=2)  # if r2 == 0 goto +2
        + insn(0x07, dst=3, imm=16)
        + insn(0x05, off=1)  # goto +1
        + insn(0x07, dst=3, imm=8)
        + insn(0xB7, dst=2, imm=8)
        + insn(0x85, imm=113)
        + insn(0x95)
    )
    (read,) = ctx_reads(program(data))
    assert read.offset is None and read.via_helper
    # With the kernel's answer the branch is decided, but ctx_reads is kernel-independent.
    assert (SEC, 40) not in reach(program(data), {(SEC, 8): 1}).sites
