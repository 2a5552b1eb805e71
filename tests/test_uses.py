"""Tests for harness.programs.uses and harness.programs.uapi: what a clang-built program asks of a kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.errors import ObjectError
from harness.programs.uapi import HELPER_IDS, HELPERS, MAP_TYPES, helper_name, map_type_name
from harness.programs.uses import KfuncUse, MapUse, ProgramUses, load_object_uses
from tests.tools import needs

SOURCE = r"""
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __ksym __attribute__((section(".ksyms")))
#define __weak __attribute__((weak))
static long (*map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*get_socket_cookie)(void *ctx) = (void *)46;
static long (*ringbuf_output)(void *rb, void *data, unsigned long size, unsigned long flags) = (void *)130;
static long (*get_pid)(void) = (void *)14;

struct { __uint(type, 27); __uint(max_entries, 4096); } events SEC(".maps");
struct {
    __uint(type, 1); __uint(max_entries, 8); __type(key, int); __type(value, long);
} counts SEC(".maps");

extern void *bpf_task_acquire(void *p) __ksym;
extern void *bpf_rdonly_cast(const void *obj, unsigned int btf_id) __ksym __weak;
extern void bpf_rcu_read_lock(void) __ksym __weak;

static __attribute__((noinline)) int emit(void *ctx)
{
    long v = get_socket_cookie(ctx);
    return ringbuf_output(&events, &v, sizeof(v), 0);
}

SEC("raw_tp/sys_enter") int via_subprogram(void *ctx)
{
    int key = 0;
    if (map_lookup_elem(&counts, &key))
        return emit(ctx);
    return 0;
}

SEC("kprobe/do_nanosleep") int plain(void *ctx)
{
    return get_pid() & 1;
}

SEC("tp_btf/task_newtask") int with_kfuncs(unsigned long long *ctx)
{
    bpf_rdonly_cast((void *)ctx[0], 0);
    if (&bpf_rcu_read_lock)  /* bpf_ksym_exists() */
        bpf_rcu_read_lock();
    return bpf_task_acquire((void *)ctx[0]) != 0;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_helper_numbers_follow_the_uapi_order() -> None:
    assert helper_name(1) == "bpf_map_lookup_elem"
    assert helper_name(14) == "bpf_get_current_pid_tgid"
    assert helper_name(46) == "bpf_get_socket_cookie"  # "unknown func bpf_get_socket_cookie#46"
    assert helper_name(113) == "bpf_probe_read_kernel"
    assert helper_name(130) == "bpf_ringbuf_output"
    assert helper_name(211) == "bpf_cgrp_storage_delete"  # the last helper (6.2)
    assert helper_name(0) is None and helper_name(212) is None
    assert len(HELPERS) == 211 and HELPER_IDS["bpf_get_func_ip"] == 173


def test_map_type_numbers_follow_the_uapi_order() -> None:
    assert map_type_name(1) == "hash"
    assert map_type_name(27) == "ringbuf"
    assert map_type_name(31) == "user_ringbuf"
    assert map_type_name(33) == "arena"
    assert map_type_name(0) is None and len(MAP_TYPES) == 33


@needs("clang")
def test_programs_with_their_subprograms_helpers_kfuncs_and_maps(tmp_path: Path) -> None:
    src = tmp_path / "uses.bpf.c"
    src.write_text(SOURCE)
    out = tmp_path / "uses.bpf.o"
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(out)], check=True, timeout=60
    )
    uses = load_object_uses(out)
    # The static subprogram's helpers and map count for the program that calls it.
    assert uses["via_subprogram"] == ProgramUses(
        helpers=(1, 46, 130),
        maps=(MapUse("counts", "hash"), MapUse("events", "ringbuf")),
    )
    assert "emit" not in uses  # a static subprogram is not a program: its uses are its callers'
    assert uses["plain"] == ProgramUses(helpers=(14,))
    assert uses["with_kfuncs"].kfuncs == (
        KfuncUse("bpf_rcu_read_lock", weak=True, checked=True),
        KfuncUse("bpf_rdonly_cast", weak=True, checked=False),
        KfuncUse("bpf_task_acquire", weak=False),
    )
    assert uses["with_kfuncs"].helpers == ()


def test_a_file_that_is_not_elf_is_an_object_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"not an ELF file")
    with pytest.raises(ObjectError):
        load_object_uses(bad)
