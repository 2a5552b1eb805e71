"""Tests of programs.hooks: the hook registry that the inventory and every check consult."""

from __future__ import annotations

from harness.programs.hooks import (
    HOOKS,
    SECTION_PREFIXES,
    USER_KINDS,
    Target,
    kinds_where,
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
