"""The arguments a program reads: its context loads mapped to parameter positions, per hook kind and arch.

kprobe and kretprobe programs see a ``struct pt_regs``, whose layout is the arch's (the one table of
it is ``PT_REGS`` below); trampoline and raw tracepoint programs (fentry, fexit, fmod_ret, lsm, tp_btf,
raw_tp) see an array of 8-byte slots, one per parameter, and fexit, fmod_ret and lsm see the return value
in the slot after the last parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def register_at(arch: str, offset: int) -> str | None:
    """The pt_regs register of ``arch`` at byte ``offset`` (None past the end or mid-register)."""
    return PT_REGS.get(arch, {}).get(offset)


@dataclass(frozen=True)
class ArgsRead:
    """Which parameters (0-based positions) a program loads from its context, and the return value."""

    params: frozenset[int]
    returns: bool


def resolve_args_read(kind: str, arch: str, reads: Sequence[CtxRead], nparams: int) -> ArgsRead | None:
    """The parameters a ``kind`` program on ``arch`` reads, from its context loads (see flow.ctx_reads).

    ``nparams`` is the target's parameter count, where a return slot follows. None for kinds whose
    context is not the target's arguments (tracepoints, uprobes, ...).
    """
    params: set[int] = set()
    returns = False
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
            slot = read.offset // 8
            if kind in RETURN_SLOT_KINDS and slot == nparams:
                returns = True
            else:
                params.add(slot)
        return ArgsRead(frozenset(params), returns)
    return None
