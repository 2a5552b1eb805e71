"""Tests of programs.hooks: the hook registry that the inventory and every check consult."""

from __future__ import annotations

import pytest

from harness.programs.hooks import (
    HOOKS,
    SECTION_PREFIXES,
    USER_KINDS,
    Target,
    kinds_where,
    observes_bpf,
    prog_type_of,
    resolve_hook,
)
from harness.programs.inventory import parse_section
from harness.report.results import Check


def test_every_prefix_names_one_kind_and_longer_prefixes_win() -> None:
    prefixes = [p for p, _ in SECTION_PREFIXES]
    assert len(prefixes) == len(set(prefixes))
    assert [len(p) for p in prefixes] == sorted((len(p) for p in prefixes), reverse=True)
    assert parse_section("kprobe.multi/vfs_*") == ("kprobe.multi", "vfs_*")
    assert parse_section("fentry.s/vfs_read") == ("fentry", "vfs_read")


def test_where_targets_live() -> None:
    assert kinds_where(Target.KERNEL_FUNCTION) == {
        "kprobe", "kretprobe", "kprobe.multi", "kretprobe.multi", "fentry", "fexit", "fmod_ret"
    }
    assert kinds_where(Target.LSM) == {"lsm", "lsm_cgroup"}
    assert USER_KINDS == {"uprobe", "uretprobe", "uprobe.multi", "uretprobe.multi", "usdt"}
    trampolines = {k for k, h in HOOKS.items() if h.trampoline and h.target is Target.KERNEL_FUNCTION}
    assert trampolines == {"fentry", "fexit", "fmod_ret"}
    assert resolve_hook("socket") is None


def test_checks_that_apply() -> None:
    feat = Check.FEATURES
    assert resolve_hook("fexit").checks == {Check.SYMBOL, Check.PROTOTYPE, feat}  # type: ignore[union-attr]
    assert resolve_hook("kprobe.multi").checks == {Check.SYMBOL, feat}  # type: ignore[union-attr]
    assert resolve_hook("tracepoint").checks == {Check.SYMBOL, Check.TP_FORMAT, feat}  # type: ignore[union-attr]
    assert resolve_hook("usdt").checks == {Check.UPROBE, feat}  # type: ignore[union-attr]
    # A parameter appended moves the return value that fexit, fmod_ret and lsm programs read.
    safe = {k for k, h in HOOKS.items() if h.append_safe}
    assert safe == {"kprobe", "kretprobe", "fentry", "tp_btf", "raw_tp"}


def test_program_types_are_the_kernels() -> None:
    # bpftool's names (enum bpf_prog_type in lower case): what the feature probe reports.
    assert {k: prog_type_of(k) for k in ("kprobe", "ksyscall", "uprobe", "usdt")} == dict.fromkeys(
        ("kprobe", "ksyscall", "uprobe", "usdt"), "kprobe"
    )
    assert {prog_type_of(k) for k in ("fentry", "fexit", "fmod_ret", "tp_btf")} == {"tracing"}
    assert prog_type_of("raw_tp") == "raw_tracepoint"
    assert prog_type_of("tracepoint") == "tracepoint"
    assert prog_type_of("lsm") == prog_type_of("lsm_cgroup") == "lsm"
    assert prog_type_of("socket") is None
    assert all(h.prog_type for h in HOOKS.values())


@pytest.mark.parametrize(
    ("kind", "target", "expected"),
    [
        ("fentry", "htab_map_delete_elem", True),  # the recursion sample: what other programs' maps do
        ("kprobe", "bpf_map_lookup_elem", True),
        ("kprobe", "__htab_map_lookup_elem", True),
        ("kprobe", "array_map_update_elem", True),
        ("kprobe", "__x64_sys_bpf", True),
        ("kprobe", "__arm64_sys_perf_event_open", True),  # what attaching a kprobe does
        ("ksyscall", "bpf", True),
        ("tracepoint", "syscalls/sys_enter_bpf", True),
        ("tracepoint", "syscalls/sys_exit_perf_event_open", True),
        ("tracepoint", "bpf_trace/bpf_trace_printk", True),
        ("raw_tp", "bpf_trace_printk", True),
        ("lsm", "bpf_map", True),
        ("lsm", "bpf", True),
        ("kprobe", "migrate_disable", True),  # every trampoline program's run
        ("kprobe", "do_nanosleep", False),
        ("kprobe", "vfs_read", False),
        ("kprobe", "tcp_v4_connect", False),
        ("kprobe", "kmem_cache_alloc", False),
        ("ksyscall", "openat", False),
        ("tracepoint", "syscalls/sys_enter_openat", False),
        ("tracepoint", "sched/sched_switch", False),
        ("lsm", "file_open", False),
        ("uprobe", "/usr/lib/libbpf.so.1:bpf_object__load", False),  # user space sees no kernel machinery
        ("no_such_kind", "bpf_map_lookup_elem", False),
    ],
)
def test_which_targets_observe_the_bpf_machinery(kind: str, target: str, expected: bool) -> None:
    assert observes_bpf(kind, target) is expected
