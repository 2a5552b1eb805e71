"""Tests for harness.programs.args: context loads as parameters, and the pt_regs diagnoses per arch."""

from __future__ import annotations

import pytest

from harness.programs.args import ArgsRead, diagnose_pt_regs, register_at, resolve_args_read
from harness.programs.flow import CtxRead


def at(*offsets: int) -> list[CtxRead]:
    return [CtxRead(off, 8, False, False, ("s", 8 * n)) for n, off in enumerate(offsets)]


def test_pt_regs_table() -> None:
    assert register_at("x86_64", 112) == "di" and register_at("x86_64", 80) == "ax"
    assert register_at("arm64", 8) == "regs[1]" and register_at("arm64", 4) is None


@pytest.mark.parametrize(
    ("kind", "arch", "offsets", "nparams", "expected"),
    [
        ("kprobe", "x86_64", (112, 96, 120), 3, ArgsRead(frozenset({0, 2}), False)),
        ("kretprobe", "x86_64", (80,), 3, ArgsRead(frozenset(), True)),
        ("kretprobe", "arm64", (0,), 3, ArgsRead(frozenset(), True)),
        ("kprobe", "arm64", (0, 16), 3, ArgsRead(frozenset({0, 2}), False)),
        ("fentry", "x86_64", (0, 8), 2, ArgsRead(frozenset({0, 1}), False)),
        ("fexit", "arm64", (8, 16), 2, ArgsRead(frozenset({1}), True)),
        ("tp_btf", "x86_64", (16,), 2, ArgsRead(frozenset({2}), False)),
    ],
)
def test_args_read(kind: str, arch: str, offsets: tuple[int, ...], nparams: int, expected: ArgsRead) -> None:
    assert resolve_args_read(kind, arch, at(*offsets), nparams) == expected


def test_tracepoints_have_no_argument_slots() -> None:
    assert resolve_args_read("tracepoint", "x86_64", at(8), 1) is None


def test_other_arch_registers() -> None:
    assert diagnose_pt_regs("kprobe", "vfs_read", "arm64", at(112)) == (
        "reads pt_regs offset 112 (x86_64 di): built for x86_64?"
    )
    assert diagnose_pt_regs("kretprobe", "vfs_read", "arm64", at(80)) == (
        "reads pt_regs offset 80 (x86_64 ax): built for x86_64?"
    )
    # arm64's regs[1] at 8 is x86_64's r14: no argument there.
    assert diagnose_pt_regs("kprobe", "vfs_read", "x86_64", at(8)) == (
        "reads pt_regs offset 8 (arm64 regs[1]): built for arm64?"
    )
    assert diagnose_pt_regs("kprobe", "vfs_read", "x86_64", at(112, 104, 80)) is None
    assert diagnose_pt_regs("fentry", "vfs_read", "arm64", at(112)) is None


def test_syscall_wrapper_read_directly() -> None:
    why = diagnose_pt_regs("kprobe", "__x64_sys_openat", "x86_64", at(112, 104))
    assert why == (
        "reads PARM2 of syscall wrapper `__x64_sys_openat` directly, whose one argument is the syscall's "
        "struct pt_regs *: use BPF_KSYSCALL (ksyscall/openat) or PT_REGS_PARM2_CORE_SYSCALL"
    )
    # PARM1 is the inner pt_regs pointer itself: reading it is how the CORE_SYSCALL accessors start.
    assert diagnose_pt_regs("kprobe", "__x64_sys_openat", "x86_64", at(112)) is None
    assert diagnose_pt_regs("kprobe", "__arm64_sys_openat", "arm64", at(0, 8)) is not None


def test_a_computed_offset_reads_any_argument() -> None:
    reads = [*at(0), CtxRead(None, 8, False, True, ("s", 64))]
    assert resolve_args_read("fentry", "x86_64", reads, 3) is None
    assert diagnose_pt_regs("kprobe", "vfs_read", "arm64", reads) is None
