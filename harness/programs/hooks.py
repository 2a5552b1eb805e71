"""The hook registry: every program kind the harness knows, its ELF sections and what checks its target."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from harness.report.results import Check


class Target(str, Enum):
    """Where a hook's target lives, which is where the symbol check looks for it."""

    KERNEL_FUNCTION = "kernel function"  # kallsyms, and available_filter_functions (ftrace)
    SYSCALL = "syscall"  # the arch's syscall wrapper, in kallsyms and ftrace
    TRACE_EVENT = "trace event"  # available_events, tracepoint formats
    RAW_TRACEPOINT = "raw tracepoint"  # the tracepoint itself (kallsyms __tracepoint_*, BTF btf_trace_*)
    LSM = "lsm"  # bpf_lsm_<hook> in BTF and kallsyms, and the active LSMs
    USER_BINARY = "user binary"  # an ELF file in the guest (symbols, DWARF, USDT notes)


@dataclass(frozen=True)
class Hook:
    """One program kind: its SEC() prefixes (libbpf.c section_defs) and how its target is found."""

    name: str
    prefixes: tuple[str, ...]
    target: Target
    # The kernel's program type (enum bpf_prog_type, as libbpf and bpftool name it): what the
    # feature probe says is supported, and which helpers it may call.
    prog_type: str
    trampoline: bool = False  # attached through a BPF trampoline: the target needs a BTF FUNC
    multi: bool = False  # one link to many targets, a glob allowed (fprobe, 5.18+)
    # The context holds nothing after the parameters (no return value there): a parameter appended at
    # the end moves nothing the program reads.
    append_safe: bool = False

    @property
    def btf_prototype(self) -> bool:
        """Whether a BTF prototype describes the arguments the program sees (the prototype check)."""
        if self.target is Target.KERNEL_FUNCTION:
            return not self.multi
        return self.target in (Target.LSM, Target.RAW_TRACEPOINT)

    @property
    def target_at_load(self) -> bool:
        """Whether the kernel resolves the target when the program loads (a BTF ID for trampolines and
        tp_btf): an absent target then fails the load; for the others it fails only the attach."""
        return self.trampoline or self.name == "tp_btf"

    @property
    def checks(self) -> frozenset[Check]:
        """The offline checks that apply to a probe of this kind (the in-guest ones apply to all)."""
        out = {Check.SYMBOL, Check.FEATURES}
        if self.btf_prototype:
            out.add(Check.PROTOTYPE)
        if self.target is Target.TRACE_EVENT:
            out.add(Check.TP_FORMAT)
        if self.target is Target.USER_BINARY:
            out = {Check.UPROBE, Check.FEATURES}
        return frozenset(out)


_F, _S, _E, _R, _L, _U = (
    Target.KERNEL_FUNCTION, Target.SYSCALL, Target.TRACE_EVENT, Target.RAW_TRACEPOINT, Target.LSM,
    Target.USER_BINARY,
)
HOOKS: Mapping[str, Hook] = {
    h.name: h
    for h in (
        # Every k/uprobe flavour is a kprobe program; fentry and friends, tp_btf, lsm are "tracing"
        # or "lsm" programs told apart by their attach type.
        Hook("kprobe", ("kprobe/",), _F, "kprobe", append_safe=True),
        Hook("kretprobe", ("kretprobe/",), _F, "kprobe", append_safe=True),
        Hook("kprobe.multi", ("kprobe.multi/",), _F, "kprobe", multi=True),
        Hook("kretprobe.multi", ("kretprobe.multi/",), _F, "kprobe", multi=True),
        Hook("ksyscall", ("ksyscall/",), _S, "kprobe"),
        Hook("kretsyscall", ("kretsyscall/",), _S, "kprobe"),
        Hook("fentry", ("fentry.s/", "fentry/"), _F, "tracing", trampoline=True, append_safe=True),
        Hook("fexit", ("fexit.s/", "fexit/"), _F, "tracing", trampoline=True),
        Hook("fmod_ret", ("fmod_ret.s/", "fmod_ret/"), _F, "tracing", trampoline=True),
        Hook("tp_btf", ("tp_btf/",), _R, "tracing", append_safe=True),
        Hook("raw_tp", ("raw_tp.w/", "raw_tp/", "raw_tracepoint.w/", "raw_tracepoint/"), _R,
             "raw_tracepoint", append_safe=True),
        Hook("tracepoint", ("tracepoint/", "tp/"), _E, "tracepoint"),
        Hook("lsm", ("lsm.s/", "lsm/"), _L, "lsm", trampoline=True),
        Hook("lsm_cgroup", ("lsm_cgroup/",), _L, "lsm", trampoline=True),
        Hook("uprobe.multi", ("uprobe.multi.s/", "uprobe.multi/"), _U, "kprobe", multi=True),
        Hook("uretprobe.multi", ("uretprobe.multi.s/", "uretprobe.multi/"), _U, "kprobe", multi=True),
        Hook("uprobe", ("uprobe.s/", "uprobe/"), _U, "kprobe"),
        Hook("uretprobe", ("uretprobe.s/", "uretprobe/"), _U, "kprobe"),
        Hook("usdt", ("usdt/",), _U, "kprobe"),
    )
}

# (section prefix, kind), longest prefix first so that a longer one always wins.
SECTION_PREFIXES: tuple[tuple[str, str], ...] = tuple(
    sorted(((p, h.name) for h in HOOKS.values() for p in h.prefixes), key=lambda pk: -len(pk[0]))
)


def resolve_hook(kind: str) -> Hook | None:
    """The registry's entry for a probe kind, or None for a kind the harness does not know."""
    return HOOKS.get(kind)


def prog_type_of(kind: str) -> str | None:
    """The kernel program type (bpftool's name) of a probe kind, None for a kind the harness does not know."""
    hook = HOOKS.get(kind)
    return hook.prog_type if hook is not None else None


def kinds_where(target: Target) -> frozenset[str]:
    """The kinds whose target lives in ``target``."""
    return frozenset(h.name for h in HOOKS.values() if h.target is target)


USER_KINDS = kinds_where(Target.USER_BINARY)


# Kernel functions, syscalls, events and LSM hooks through which a program sees the BPF machinery itself:
# maps, program runs, links and the perf events and ftrace ops that attaching makes. A probe on one of
# them counts what other objects' programs do, so the agent attaches and fires its object alone.
BPF_MACHINERY = re.compile(
    r"^_*(?:bpf|htab|array_map|prog_array|trie_|pcpu_freelist|ringbuf|perf_event|perf_trace|"
    r"trace_call_bpf|ftrace|kprobe|rethook|fprobe|migrate_(?:dis|en)able|rcu_read_(?:un)?lock|"
    r"(?:x64|arm64|ia32)_sys_(?:bpf|perf_event_open)\b|sys_(?:bpf|perf_event_open)\b)"
    r"|_map_\w*_elem"
)


def observes_bpf(kind: str, target: str) -> bool:
    """Whether a program of ``kind`` on ``target`` sees the BPF machinery (BPF_MACHINERY): for a trace
    event ``category/name``, the syscalls' entry and exit events name their syscall."""
    hook = resolve_hook(kind)
    if hook is None or hook.target is Target.USER_BINARY:
        return False
    names = target.split("/")
    if hook.target is Target.TRACE_EVENT and len(names) == 2:
        category, name = names
        if category in ("bpf_trace", "bpf_test_run"):
            return True
        names = [re.sub(r"^sys_(?:enter|exit)_", "sys_", name) if category == "syscalls" else name]
    if hook.target is Target.SYSCALL:
        names = ["sys_" + target]
    return any(BPF_MACHINERY.search(n) for n in names)
