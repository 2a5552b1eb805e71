"""The arguments a program reads: its context loads mapped to parameter positions, per hook kind and arch.

kprobe and kretprobe programs see a ``struct pt_regs``, whose layout is the arch's (the one table of
it is ``PT_REGS`` below); trampoline and raw tracepoint programs (fentry, fexit, fmod_ret, lsm, tp_btf,
raw_tp) see an array of 8-byte slots, one per parameter, and fexit, fmod_ret and lsm see the return value
in the slot after the last parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.kernels.config import ARCHES
from harness.programs.flow import CtxRead

# struct pt_regs by arch: byte offset -> register (arch/x86/include/asm/ptrace.h; arm64's
# struct user_pt_regs regs[31], sp, pc, pstate at the start of its pt_regs).
_X86_REGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si",
             "di", "orig_ax", "ip", "cs", "flags", "sp", "ss")
PT_REGS: Mapping[str, Mapping[int, str]] = {
    "x86_64": {8 * i: name for i, name in enumerate(_X86_REGS)},
    "arm64": {**{8 * i: f"regs[{i}]" for i in range(31)}, 248: "sp", 256: "pc", 264: "pstate"},
}
# The registers of the first parameters and of the return value (the C calling conventions).
PARAM_REGS: Mapping[str, tuple[str, ...]] = {
    "x86_64": ("di", "si", "dx", "cx", "r8", "r9"),
    "arm64": tuple(f"regs[{i}]" for i in range(8)),
}
RETURN_REG: Mapping[str, str] = {"x86_64": "ax", "arm64": "regs[0]"}

PT_REGS_KINDS = frozenset({"kprobe", "kretprobe"})
SLOT_KINDS = frozenset({"fentry", "fexit", "fmod_ret", "lsm", "lsm_cgroup", "tp_btf", "raw_tp"})
RETURN_SLOT_KINDS = frozenset({"fexit", "fmod_ret", "lsm", "lsm_cgroup"})


def register_at(arch: str, offset: int | None) -> str | None:
    """The pt_regs register of ``arch`` at byte ``offset`` (None past the end or mid-register)."""
    return PT_REGS.get(arch, {}).get(offset) if offset is not None else None


@dataclass(frozen=True)
class ArgsRead:
    """Which parameters (0-based positions) a program loads from its context, and the return value."""

    params: frozenset[int]
    returns: bool


def resolve_args_read(kind: str, arch: str, reads: Sequence[CtxRead], nparams: int) -> ArgsRead | None:
    """The parameters a ``kind`` program on ``arch`` reads, from its context loads (see flow.ctx_reads).

    ``nparams`` is the target's parameter count, where a return slot follows. None for kinds whose
    context is not the target's arguments (tracepoints, uprobes, ...), and when a load's offset is
    computed at run time (which slot it reads is unknown).
    """
    params: set[int] = set()
    returns = False
    if any(read.offset is None for read in reads):
        return None  # a slot chosen at run time: any argument may be read
    if kind in PT_REGS_KINDS:
        regs = PARAM_REGS.get(arch, ())
        for read in reads:
            reg = register_at(arch, read.offset)
            if kind == "kretprobe" and reg == RETURN_REG.get(arch):
                returns = True
            elif reg in regs:
                params.add(regs.index(reg))
        return ArgsRead(frozenset(params), returns)
    if kind in SLOT_KINDS:
        for read in reads:
            slot = (read.offset or 0) // 8
            if kind in RETURN_SLOT_KINDS and slot == nparams:
                returns = True
            else:
                params.add(slot)
        return ArgsRead(frozenset(params), returns)
    return None


def diagnose_pt_regs(kind: str, target: str, arch: str, reads: Sequence[CtxRead]) -> str | None:
    """Why a kprobe's pt_regs loads cannot mean what the program intends on ``arch``, or None.

    Two mistakes, both about which registers a pt_regs holds (so the prototype check, the check of the
    arguments a program reads, carries them): a load of another arch's argument register (the object was
    built for that arch: ``__TARGET_ARCH_x86`` reads ``di`` at 112, which is ``regs[14]`` on arm64), and a
    direct load of PARM2 and later on a syscall wrapper, whose one argument (since 4.17,
    ARCH_HAS_SYSCALL_WRAPPER) is the pt_regs of the syscall, with the real arguments one level down.
    """
    if kind not in PT_REGS_KINDS:
        return None
    own = set(PARAM_REGS.get(arch, ())) | {RETURN_REG.get(arch, "")}
    for read in reads:
        reg = register_at(arch, read.offset)
        if reg in own:
            continue
        for other in sorted(PT_REGS):
            theirs = register_at(other, read.offset)
            if other != arch and theirs is not None and (
                theirs in PARAM_REGS[other] or theirs == RETURN_REG[other]
            ):
                return f"reads pt_regs offset {read.offset} ({other} {theirs}): built for {other}?"
    prefix = ARCHES[arch].syscall_prefix if arch in ARCHES else ""
    if kind == "kprobe" and prefix and target.startswith(prefix):
        regs = PARAM_REGS.get(arch, ())
        later = sorted({regs.index(r) for r in (register_at(arch, x.offset) for x in reads) if r in regs[1:]})
        if later:
            n = later[0] + 1
            syscall = target[len(prefix):]
            return (
                f"reads PARM{n} of syscall wrapper `{target}` directly, whose one argument is the syscall's "
                f"struct pt_regs *: use BPF_KSYSCALL (ksyscall/{syscall}) or PT_REGS_PARM{n}_CORE_SYSCALL"
            )
    return None
