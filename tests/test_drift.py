"""Tests for harness.checks.drift: prototypes, CO-RE layouts and tracepoint formats on hand-built kernels."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from tools import needs

from harness.btf.bpf_object import load_object_code
from harness.btf.core import Accessor, CoreRelo, CoreReloKind
from harness.btf.spec import BTFSpec, load_btf, parse_btf
from harness.checks.drift import (
    Prototype,
    check_layout,
    check_prototype,
    check_tp_format,
    diff_prototypes,
    parse_tp_format,
    render_offsets_table,
    resolve_core_relo,
    resolve_prototype,
)
from harness.kernels.cache import resolve_cache_root
from harness.programs.clones import strip_clone_suffix
from harness.programs.flow import CtxRead, Function, ProgramCode
from harness.programs.insns import decode_instructions
from harness.report.results import CellResult, Check, Outcome, Probe
from tests.conftest import CIRun
from tests.test_insns import insn


class Builder:
    """The smallest BTF writer the tests need: header + u32 type words + strings, little-endian."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types: list[list[int]] = []

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_type: int, *extra: int) -> int:
        self.types.append([self.s(name), (kind << 24) | vlen, size_type, *extra])
        return len(self.types)

    def int_(self, name: str, size: int) -> int:
        return self.add(name, 1, 0, size, size * 8)

    def ptr(self, target: int) -> int:
        return self.add("", 2, 0, target)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], kind: int = 4) -> int:
        words: list[int] = []
        for mname, mtype, byte_off in members:
            words += [self.s(mname), mtype, byte_off * 8]
        return self.add(name, kind, len(members), size, *words)

    def array(self, elem: int, index: int, n: int) -> int:
        return self.add("", 3, 0, 0, elem, index, n)

    def func(self, name: str, ret: int, params: list[tuple[str, int]]) -> int:
        words: list[int] = []
        for pname, ptype in params:
            words += [self.s(pname), ptype]
        proto = self.add("", 13, len(params), ret, *words)
        return self.add(name, 12, 1, proto)

    def spec(self, name: str = "vmlinux") -> BTFSpec:
        body = b"".join(struct.pack(f"<{len(t)}I", *t) for t in self.types)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(self.strings))
        return parse_btf(header + body + bytes(self.strings), name)


def vfs_kernel(version: str) -> BTFSpec:
    """A kernel whose vfs_unlink has the prototype Debian's ``version`` kernel has."""
    b = Builder()
    i = b.int_("int", 4)
    inode = b.ptr(b.struct("inode", 8, [("i_mode", i, 0)]))
    dentry = b.ptr(b.struct("dentry", 8, [("d_flags", i, 0)]))
    inode_pp = b.ptr(inode)
    first = {
        "5.10": [],
        "6.1": [("mnt_userns", b.ptr(b.struct("user_namespace", 8, [("ns", i, 0)])))],
        "6.12": [("idmap", b.ptr(b.struct("mnt_idmap", 8, [("owner", i, 0)])))],
    }[version]
    params = [*first, ("dir", inode), ("dentry", dentry), ("delegated_inode", inode_pp)]
    b.func("vfs_unlink", i, params)
    b.func("bpf_lsm_file_open", i, [("file", b.ptr(b.struct("file", 8, [("f_mode", i, 0)])))])
    void_ptr = b.ptr(0)
    boolean = b.int_("_Bool", 1)
    tp_args = [("", void_ptr), ("", boolean if version != "6.12" else i)]
    proto = b.add("", 13, len(tp_args), 0, *[w for n, t in tp_args for w in (b.s(n), t)])
    b.add("btf_trace_sched_switch", 8, 0, b.ptr(proto))
    return b.spec(f"vmlinux-{version}")


KPROBE = Probe("unlink", "on_unlink", "kprobe/vfs_unlink", "kprobe", "vfs_unlink")


def test_vfs_unlink_param_added_on_6_1() -> None:
    r = check_prototype(KPROBE, "6.1", "x86_64", vfs_kernel("6.1"), "5.10", vfs_kernel("5.10"))
    assert r is not None and r.check == Check.PROTOTYPE
    assert r.outcome == Outcome.FAIL
    assert r.reason == (
        "prototype differs from 5.10: param 0 `dir` struct inode * -> "
        "`mnt_userns` struct user_namespace * (param added)"
    )
    assert r.details["params"][0] == {"name": "mnt_userns", "type": "struct user_namespace *"}
    assert [p["name"] for p in r.details["baseline_params"]] == ["dir", "dentry", "delegated_inode"]
    assert r.details["changes"] == [
        {"change": "added", "index": 0, "name": "mnt_userns", "type": "struct user_namespace *"}
    ]


def test_vfs_unlink_param_replaced_on_6_12() -> None:
    r = check_prototype(KPROBE, "6.12", "arm64", vfs_kernel("6.12"), "6.1", vfs_kernel("6.1"))
    assert r is not None and r.outcome == Outcome.FAIL
    assert "param 0 `mnt_userns` struct user_namespace * -> `idmap` struct mnt_idmap *" in r.reason
    assert r.reason.endswith("(param replaced)")
    assert r.details["changes"][0]["change"] == "replaced"


def test_same_prototype_passes() -> None:
    same = check_prototype(KPROBE, "5.10", "x86_64", vfs_kernel("5.10"), "5.10", vfs_kernel("5.10"))
    assert same is not None and same.outcome == Outcome.PASS and same.reason == ""
    other = check_prototype(KPROBE, "6.1-bpo", "x86_64", vfs_kernel("6.1"), "6.1", vfs_kernel("6.1"))
    assert other is not None and other.outcome == Outcome.PASS
    assert other.reason == "same prototype as 6.1" and other.details["changes"] == []


def test_clone_suffix_is_stripped() -> None:
    assert strip_clone_suffix("vfs_unlink.isra.0") == "vfs_unlink"
    assert strip_clone_suffix("foo.constprop.0.isra.0") == "foo"
    assert strip_clone_suffix("foo.part.3") == "foo"
    assert strip_clone_suffix("foo.cold") == "foo"
    assert strip_clone_suffix("foo_bar") == "foo_bar"
    probe = Probe("u", "p", "fentry/vfs_unlink.isra.0", "fentry", "vfs_unlink.isra.0")
    r = check_prototype(probe, "6.1", "x86_64", vfs_kernel("6.1"), "6.1", vfs_kernel("6.1"))
    assert r is not None and r.outcome == Outcome.PASS and r.details["function"] == "vfs_unlink"


def test_skips_and_not_applicable() -> None:
    k = vfs_kernel("6.1")
    r = check_prototype(KPROBE, "6.1", "x86_64", None, "5.10", k)
    assert r is not None and r.outcome == Outcome.SKIP and r.reason == "no BTF"
    missing = Probe("u", "p", "kprobe/nope", "kprobe", "nope")
    r = check_prototype(missing, "6.1", "x86_64", k, "5.10", k)
    assert r is not None and r.outcome == Outcome.SKIP and "`nope` not in the BTF of 6.1" in r.reason
    for kind in ("ksyscall", "tracepoint", "uprobe", "usdt", "kprobe.multi"):
        p = Probe("u", "p", f"{kind}/x", kind, "vfs_unlink")
        assert check_prototype(p, "6.1", "x86_64", k, "5.10", k) is None


def test_lsm_and_raw_tracepoint() -> None:
    lsm = Probe("l", "p", "lsm/file_open", "lsm", "file_open")
    proto = resolve_prototype(vfs_kernel("6.1"), "lsm", "file_open")
    assert proto == Prototype("bpf_lsm_file_open", "int", (("file", "struct file *"),))
    r = check_prototype(lsm, "6.1", "x86_64", vfs_kernel("6.1"), "5.10", vfs_kernel("5.10"))
    assert r is not None and r.outcome == Outcome.PASS
    tp = Probe("t", "p", "tp_btf/sched_switch", "tp_btf", "sched_switch")
    raw = resolve_prototype(vfs_kernel("6.1"), "tp_btf", "sched_switch")
    assert raw is not None and raw.params == (("", "_Bool"),)  # the void *ctx is dropped
    r = check_prototype(tp, "6.12", "x86_64", vfs_kernel("6.12"), "6.1", vfs_kernel("6.1"))
    assert r is not None and r.outcome == Outcome.FAIL
    assert r.reason == "prototype differs from 6.1: param 0 _Bool -> int (type changed)"


def test_diff_prototypes_kinds() -> None:
    base = Prototype("f", "int", (("a", "int"), ("b", "char *"), ("c", "long")))
    reordered = Prototype("f", "int", (("b", "char *"), ("a", "int"), ("c", "long")))
    assert {c["change"] for c in diff_prototypes(base, reordered)} == {"reordered"}
    renamed = Prototype("f", "int", (("a", "int"), ("buf", "char *"), ("c", "long")))
    assert diff_prototypes(base, renamed) == [
        {"change": "renamed", "index": 1, "from": "b", "to": "buf",
         "from_type": "char *", "to_type": "char *"}
    ]
    removed = Prototype("f", "long", (("a", "int"), ("c", "long")))
    changes = diff_prototypes(base, removed)
    assert [c["change"] for c in changes] == ["return_type_changed", "removed"]
    retyped = Prototype("f", "int", (("a", "int"), ("b", "const char *"), ("c", "long")))
    assert diff_prototypes(base, retyped)[0]["change"] == "type_changed"
    assert diff_prototypes(base, base) == []


def proto_kernel(params: list[tuple[str, str]]) -> BTFSpec:
    b = Builder()
    types = {"int": b.int_("int", 4), "long": b.int_("long", 8)}
    b.func("f", types["int"], [(n, types[t]) for n, t in params])
    return b.spec()


@pytest.mark.parametrize(
    ("kind", "new_params", "outcome", "reason"),
    [
        ("fentry", [("a", "int"), ("x", "long")], Outcome.PASS,
         "params renamed since 5.10 (same types and positions): b -> x"),
        ("fentry", [("a", "int"), ("b", "long"), ("c", "int")], Outcome.PASS,
         "params appended since 5.10: `c` int"),
        # fexit's return value follows the last parameter in its context: an appended one moves it.
        ("fexit", [("a", "int"), ("b", "long"), ("c", "int")], Outcome.FAIL,
         "prototype differs from 5.10: param 2 (none) -> `c` int (param added)"),
        ("kprobe", [("b", "long"), ("a", "int")], Outcome.FAIL,
         "prototype differs from 5.10: param 0 `a` int -> `b` long (params reordered) (+1 more)"),
    ],
)
def test_compatible_and_breaking_changes(
    kind: str, new_params: list[tuple[str, str]], outcome: Outcome, reason: str
) -> None:
    probe = Probe("o", "p", f"{kind}/f", kind, "f")
    base = proto_kernel([("a", "int"), ("b", "long")])
    r = check_prototype(probe, "6.1", "x86_64", proto_kernel(new_params), "5.10", base)
    assert r is not None and (r.outcome, r.reason) == (outcome, reason)


# --- Layouts -------------------------------------------------------------------------------------


def task_kernel(with_real_parent: bool, state_name: str, pad: int) -> BTFSpec:
    """A kernel with task_struct { int pid; union { int <state_name>; }; [real_parent]; comm[16] }."""
    b = Builder()
    i = b.int_("int", 4)
    ch = b.int_("char", 1)
    anon = b.struct("", 4, [(state_name, i, 0)], kind=5)
    comm = b.array(ch, i, 16)
    task_ptr = b.ptr(len(b.types) + 2)  # the task_struct added below
    members = [("pid", i, 0), ("", anon, 8 + pad)]
    off = 16 + pad
    if with_real_parent:
        members.append(("real_parent", task_ptr, off))
        off += 8
    members.append(("comm", comm, off))
    assert b.struct("task_struct", off + 16, members) == task_ptr + 1
    b.add("pid_type", 6, 2, 4, b.s("PIDTYPE_PID"), 0, b.s("PIDTYPE_TGID"), 1)
    return b.spec()


def relo(
    kind: CoreReloKind, root: str, *names: str | int, root_kind: str = "struct", at: int = 8
) -> CoreRelo:
    accessors = [Accessor(None, 0)]
    path = root
    for n in names:
        if isinstance(n, int):
            accessors.append(Accessor(None, n))
            path += f"[{n}]"
        else:
            accessors.append(Accessor(n, 0))
            path += f".{n}"
    if kind.is_type:
        accessors, path = [], root
    return CoreRelo("kprobe/do_exit", at, 1, "0", kind, root_kind, root, path, tuple(accessors))


def guarded_code() -> ProgramCode:
    """``if (exists at slot 0) read at slot 2; else read at slot 4``, in section kprobe/do_exit."""
    data = (
        insn(0xB7, dst=1, imm=1)  # r1 = 1 (the existence relocation)
        + insn(0x15, dst=1, off=2)  # if r1 == 0 goto 4
        + insn(0x79, dst=2, src=6)  # r2 = *(u64 *)(r6 + 0): the guarded read
        + insn(0x95)
        + insn(0x79, dst=2, src=6, off=8)  # the other branch's read
        + insn(0x95)
    )
    func = Function("on_exit", "kprobe/do_exit", 0, tuple(decode_instructions(data)))
    return ProgramCode("on_exit", (func,))


OFF, EXISTS = CoreReloKind.FIELD_BYTE_OFFSET, CoreReloKind.FIELD_EXISTS
EXIT = Probe("exit", "on_exit", "kprobe/do_exit", "kprobe", "do_exit")


def test_resolve_walks_anonymous_members_and_arrays() -> None:
    k = task_kernel(True, "__state", pad=8)
    res = resolve_core_relo(relo(OFF, "task_struct", "__state"), k)
    assert (res.status, res.offset, res.size) == ("ok", 16, 4)
    res = resolve_core_relo(relo(OFF, "task_struct", "comm", 3), k)
    assert (res.status, res.offset, res.size) == ("ok", 24 + 8 + 3, 1)
    res = resolve_core_relo(relo(OFF, "task_struct___v2", "real_parent"), k)
    assert (res.status, res.offset, res.size) == ("ok", 24, 8)
    assert resolve_core_relo(relo(OFF, "task_struct", "state"), k).status == "field missing"
    assert resolve_core_relo(relo(OFF, "mm_struct", "pgd"), k).status == "type missing"
    size = resolve_core_relo(relo(CoreReloKind.TYPE_SIZE, "task_struct"), k)
    assert size.status == "ok" and size.size == 48
    enum = CoreRelo("s", 0, 1, "1", CoreReloKind.ENUMVAL_VALUE, "enum", "pid_type",
                    "pid_type::PIDTYPE_TGID", (Accessor("PIDTYPE_TGID", 1),))
    assert resolve_core_relo(enum, k).value == 1


def test_layout_missing_field_fails_unless_guarded() -> None:
    old, new = task_kernel(True, "state", 0), task_kernel(False, "__state", 8)
    relos = [relo(OFF, "task_struct", "real_parent"), relo(OFF, "task_struct", "pid")]
    r = check_layout(EXIT, "6.1", "x86_64", relos, new, "5.10", old)
    assert r is not None and r.check == Check.LAYOUT and r.outcome == Outcome.FAIL
    assert r.reason.startswith("`task_struct.real_parent` field missing on 6.1 (field_byte_offset")
    rows = {row["path"]: row for row in r.details["relocations"]}
    assert rows["task_struct.real_parent"]["baseline_offset"] == 16
    assert rows["task_struct.real_parent"]["guarded"] is False
    assert rows["task_struct.pid"]["offset"] == 0 and rows["task_struct.pid"]["status"] == "ok"

    # Read only on the branch where its own exists check is true: that check is false on 6.1.
    guarded = [relo(EXISTS, "task_struct", "real_parent", at=0),
               relo(OFF, "task_struct", "real_parent", at=16), relo(OFF, "task_struct", "pid", at=32)]
    r = check_layout(EXIT, "6.1", "x86_64", guarded, new, "5.10", old, guarded_code())
    assert r is not None and r.outcome == Outcome.PASS
    assert r.reason == ("`task_struct.real_parent` field missing: unresolved on 6.1, on a path the exists "
                        "check of `task_struct.real_parent` rules out")
    assert all(row["guarded"] for row in r.details["relocations"] if row["kind"] == "field_byte_offset"
               and row["path"].endswith("real_parent"))
    # Without the code, nothing shows the read unreachable.
    r = check_layout(EXIT, "6.1", "x86_64", guarded, new, "5.10", old)
    assert r is not None and r.outcome == Outcome.FAIL


def test_layout_sibling_guard_on_another_flavour() -> None:
    new = task_kernel(False, "__state", 8)
    relos = [relo(EXISTS, "task_struct___old", "state", at=0),
             relo(OFF, "task_struct___old", "state", at=16), relo(OFF, "task_struct", "__state", at=32)]
    r = check_layout(EXIT, "6.1", "x86_64", relos, new, "6.1", new, guarded_code())
    assert r is not None and r.outcome == Outcome.PASS
    assert "exists check of `task_struct___old.state` rules out" in r.reason
    # The guard on the wrong branch: the missing field is read where the check says it is absent.
    swapped = [relos[0], relo(OFF, "task_struct___old", "state", at=32),
               relo(OFF, "task_struct", "__state", at=16)]
    r = check_layout(EXIT, "6.1", "x86_64", swapped, new, "6.1", new, guarded_code())
    assert r is not None and r.outcome == Outcome.FAIL
    assert r.reason.startswith("`task_struct___old.state` field missing on 6.1")


def test_layout_guard_on_type() -> None:
    new = task_kernel(False, "__state", 8)
    relos = [relo(CoreReloKind.TYPE_EXISTS, "mm_struct___old", at=0),
             relo(OFF, "mm_struct___old", "pgd", at=16)]
    r = check_layout(EXIT, "6.1", "x86_64", relos, new, "6.1", new, guarded_code())
    assert r is not None and r.outcome == Outcome.PASS and "`mm_struct___old`" in r.reason
    # The same read in another program, without the guard, fails.
    r = check_layout(EXIT, "6.1", "x86_64", relos[1:], new, "6.1", new, guarded_code())
    assert r is not None and r.outcome == Outcome.FAIL


def test_layout_none_and_no_btf() -> None:
    assert check_layout(EXIT, "6.1", "x86_64", [], None, "5.10", None) is None
    r = check_layout(EXIT, "6.1", "x86_64", [relo(OFF, "task_struct", "pid")], None, "5.10", None)
    assert r is not None and r.outcome == Outcome.SKIP and r.reason == "no BTF"


def test_render_offsets_table() -> None:
    relos = [relo(OFF, "task_struct", "__state"), relo(OFF, "task_struct", "real_parent")]
    results: list[CellResult] = []
    kernels = (("5.10", task_kernel(True, "__state", 0)), ("6.1", task_kernel(False, "__state", 8)))
    for kernel, spec in kernels:
        r = check_layout(EXIT, kernel, "x86_64", relos, spec, "5.10", task_kernel(True, "__state", 0))
        assert r is not None
        results.append(r)
    table = render_offsets_table(results)
    assert table.splitlines() == [
        "| field | relocation | 5.10/x86_64 | 6.1/x86_64 |",
        "|---|---|---|---|",
        "| task_struct.__state | field_byte_offset | 8 (4) | 16 (4) |",
        "| task_struct.real_parent | field_byte_offset | 16 (8) | field missing |",
    ]


needs_clang = needs("clang", "/usr/include/bpf/bpf_core_read.h")

SAMPLE = r"""
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64; typedef signed char __s8; typedef short __s16; typedef int __s32;
typedef long long __s64; typedef __u16 __be16; typedef __u32 __be32; typedef __u32 __wsum;
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
struct task_struct {
    int pid;
    union { int __state; };
    struct task_struct *real_parent;
    char comm[16];
} __attribute__((preserve_access_index));
struct task_struct___old { int state; } __attribute__((preserve_access_index));

SEC("kprobe/do_exit")
int on_exit(void *ctx)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    int s = BPF_CORE_READ(t, __state);
    if (bpf_core_field_exists(((struct task_struct___old *)t)->state))
        s += BPF_CORE_READ((struct task_struct___old *)t, state);
    return s + BPF_CORE_READ(t, comm[2]);
}

SEC("kprobe/do_exit")
int parent(void *ctx)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    return BPF_CORE_READ(t, real_parent, pid);
}
char LICENSE[] SEC("license") = "GPL";
"""


@needs_clang
def test_compiled_object_against_kernels(tmp_path: Path) -> None:
    src = tmp_path / "exit.bpf.c"
    src.write_text(SAMPLE)
    obj = tmp_path / "exit.bpf.o"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)],
                   check=True, capture_output=True, timeout=120)
    found = load_object_code(obj)
    relos, code = found.relocations, found.programs
    old, new = task_kernel(True, "state", 0), task_kernel(False, "__state", 8)
    on_exit = Probe("exit", "on_exit", "kprobe/do_exit", "kprobe", "do_exit")
    parent = Probe("exit", "parent", "kprobe/do_exit", "kprobe", "do_exit")
    # On the old kernel __state is missing, and read on every path.
    r = check_layout(on_exit, "5.10", "x86_64", relos["on_exit"], old, "5.10", old, code["on_exit"])
    assert r is not None and r.outcome == Outcome.FAIL
    assert r.reason.startswith("`task_struct.__state` field missing on 5.10")
    rows = {(row["path"], row["kind"]): row for row in r.details["relocations"]}
    assert rows[("task_struct___old.state", "field_byte_offset")]["offset"] == 8
    assert rows[("task_struct.comm[2]", "field_byte_offset")]["offset"] == 16 + 8 + 2
    # On the new kernel the ___old read sits behind its exists check, which 6.1 answers "no".
    r = check_layout(on_exit, "6.1", "x86_64", relos["on_exit"], new, "5.10", old, code["on_exit"])
    assert r is not None and r.outcome == Outcome.PASS
    assert "exists check of `task_struct___old.state` rules out" in r.reason
    rows = {(row["path"], row["kind"]): row for row in r.details["relocations"]}
    assert rows[("task_struct___old.state", "field_byte_offset")]["guarded"] is True
    r = check_layout(parent, "6.1", "x86_64", relos["parent"], new, "5.10", old, code["parent"])
    assert r is not None and r.outcome == Outcome.FAIL and "real_parent" in r.reason


# --- Real kernels, when the lead's boots have cached their BTF ----------------------------------


# vfs_unlink's parameters by kernel release: 5.12 put the mount's user namespace first (idmapped mounts),
# 6.3 replaced it by struct mnt_idmap, 7.x turned the delegated inode into a struct of its own.
VFS_UNLINK = [
    ((5, 12), ("dir", "dentry", "delegated_inode"), ("struct inode *", "struct dentry *", "struct inode **")),
    ((6, 3), ("mnt_userns", "dir", "dentry", "delegated_inode"),
     ("struct user_namespace *", "struct inode *", "struct dentry *", "struct inode **")),
    ((7, 0), ("idmap", "dir", "dentry", "delegated_inode"),
     ("struct mnt_idmap *", "struct inode *", "struct dentry *", "struct inode **")),
    ((99, 0), ("idmap", "dir", "dentry", "delegated_inode"),
     ("struct mnt_idmap *", "struct inode *", "struct dentry *", "struct delegated_inode *")),
]


def _release(facts: Path) -> tuple[int, int]:
    release = json.loads((facts / "uname.json").read_text())["release"]
    major, minor = release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()))


@pytest.mark.integration
def test_cached_kernels_vfs_unlink(ci_matrix: CIRun) -> None:
    """vfs_unlink's prototype in the BTF of every kernel booted on this machine (the CI matrix run
    boots at least 5.10 and 6.1 and caches their facts)."""
    cached = sorted((resolve_cache_root(os.environ) / "kernels").glob("**/facts/vmlinux.btf"))
    releases = set()
    for path in cached:
        if not (path.parent / "uname.json").exists():
            continue
        releases.add(_release(path.parent))
        version = _release(path.parent)
        names, types = next((n, t) for before, n, t in VFS_UNLINK if version < before)
        proto = resolve_prototype(load_btf(path), "kprobe", "vfs_unlink")
        assert proto is not None, path
        assert tuple(n for n, _ in proto.params) == names, (version, proto.params)
        assert tuple(t for _, t in proto.params) == types, (version, proto.params)
    assert {(5, 10), (6, 1)} <= releases, (ci_matrix.returncode, releases)


# --- Tracepoint formats --------------------------------------------------------------------------

FMT_510 = """name: sched_process_exec
ID: 300
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:1;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;

print fmt: "filename=%s pid=%d old_pid=%d", __get_str(filename), REC->pid, REC->old_pid
"""

TP = Probe("exec", "on_exec", "tracepoint/sched/sched_process_exec", "tracepoint", "sched/sched_process_exec")


def test_parse_tp_format() -> None:
    fields = parse_tp_format(FMT_510)
    assert [(f.name, f.offset, f.size, f.signed) for f in fields] == [
        ("common_type", 0, 2, False), ("common_flags", 2, 1, False),
        ("common_preempt_count", 3, 1, False), ("common_pid", 4, 4, True),
        ("filename", 8, 4, True), ("pid", 12, 4, True), ("old_pid", 16, 4, True),
    ]
    assert fields[4].decl == "__data_loc char[] filename"
    arr = parse_tp_format("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n")
    assert arr[0].name == "comm"


def test_tp_format_same_added_moved() -> None:
    same = check_tp_format(TP, "6.1", "x86_64", FMT_510, "5.10", FMT_510)
    assert same is not None and same.check == Check.TP_FORMAT
    assert same.outcome == Outcome.PASS and same.reason == "same format as 5.10"
    added = FMT_510.replace("\nprint", "\tfield:int extra;\toffset:20;\tsize:4;\tsigned:1;\n\nprint")
    r = check_tp_format(TP, "6.1", "x86_64", added, "5.10", FMT_510)
    assert r is not None and r.outcome == Outcome.PASS and r.reason == "fields added since 5.10: extra"
    moved = FMT_510.replace("pid_t pid;\toffset:12;\tsize:4", "pid_t pid;\toffset:12;\tsize:8").replace(
        "old_pid;\toffset:16", "old_pid;\toffset:20")
    r = check_tp_format(TP, "6.1", "x86_64", moved, "5.10", FMT_510)
    assert r is not None and r.outcome == Outcome.FAIL
    assert r.reason == ("format differs from 5.10: `pid` resized (size 4 -> 8), "
                        "`old_pid` moved (offset 16 -> 20)")
    removed = FMT_510.replace("\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n", "")
    r = check_tp_format(TP, "6.1", "x86_64", removed, "5.10", FMT_510)
    assert r is not None and r.outcome == Outcome.FAIL and "`old_pid` removed" in r.reason
    assert r.details["changes"] == [{"change": "removed", "name": "old_pid", "offset": 16, "size": 4}]


def test_tp_format_skip_and_none() -> None:
    r = check_tp_format(TP, "6.1", "x86_64", None, "5.10", FMT_510)
    assert r is not None and r.outcome == Outcome.SKIP
    assert check_tp_format(KPROBE, "6.1", "x86_64", FMT_510, "5.10", FMT_510) is None
    r = check_tp_format(TP, "6.1", "x86_64", FMT_510, "5.10", None)
    assert r is not None and r.outcome == Outcome.PASS and "no format on baseline 5.10" in r.reason


# --- Prototypes judged by the arguments the program reads ----------------------------------------


def reads_at(*offsets: int) -> list[CtxRead]:
    return [CtxRead(off, 8, False, False, ("s", 8 * n)) for n, off in enumerate(offsets)]


def test_read_param_that_moved_fails_and_unread_changes_pass() -> None:
    old, new = vfs_kernel("5.10"), vfs_kernel("6.1")
    # PARM2 (si, pt_regs offset 104 on x86_64) is `dentry` on 5.10 and `dir` on 6.1.
    r = check_prototype(KPROBE, "6.1", "x86_64", new, "5.10", old, reads_at(104))
    assert r is not None and r.outcome == Outcome.FAIL
    assert r.reason == ("prototype differs from 5.10: read param 1 `dentry` struct dentry * "
                        "moved to position 2")
    assert r.details["args_read"] == {"params": [1], "returns": False}
    # The same positions on arm64 are regs[1].
    r = check_prototype(KPROBE, "6.1", "arm64", new, "5.10", old, reads_at(8))
    assert r is not None and r.outcome == Outcome.FAIL and "read param 1 `dentry`" in r.reason
    # A program that reads no argument of vfs_unlink is not broken by the new first parameter.
    r = check_prototype(KPROBE, "6.1", "x86_64", new, "5.10", old, reads_at())
    assert r is not None and r.outcome == Outcome.PASS
    assert r.reason.startswith("changed since 5.10 where the program does not read: param 0 `dir`")


@pytest.mark.parametrize(
    ("kind", "new_params", "offsets", "outcome", "reason"),
    [
        # A read parameter retyped to another size.
        ("fentry", [("a", "long"), ("b", "long")], (0,), Outcome.FAIL,
         "prototype differs from 5.10: read param 0 `a` int -> long (size 4 -> 8)"),
        # The same change to a parameter it does not read.
        ("fentry", [("a", "long"), ("b", "long")], (8,), Outcome.PASS,
         "changed since 5.10 where the program does not read: param 0 `a` int -> `a` long (type changed)"),
        # fexit reads its return value in the slot after the parameters: a removed one moves it.
        ("fexit", [("a", "int")], (16,), Outcome.FAIL,
         "prototype differs from 5.10: read return value moved from slot 2 to 1"),
        ("kretprobe", [("a", "int")], (80,), Outcome.PASS,
         "changed since 5.10 where the program does not read: param 1 `b` long -> (none) (param removed)"),
    ],
)
def test_read_arguments_decide(
    kind: str, new_params: list[tuple[str, str]], offsets: tuple[int, ...], outcome: Outcome, reason: str
) -> None:
    probe = Probe("o", "p", f"{kind}/f", kind, "f")
    base = proto_kernel([("a", "int"), ("b", "long")])
    r = check_prototype(probe, "6.1", "x86_64", proto_kernel(new_params), "5.10", base, reads_at(*offsets))
    assert r is not None and (r.outcome, r.reason) == (outcome, reason)


def test_pt_regs_mistakes_fail_without_btf() -> None:
    wrapper = Probe("w", "p", "kprobe/__arm64_sys_openat", "kprobe", "__arm64_sys_openat")
    r = check_prototype(wrapper, "6.1", "arm64", None, "5.10", None, reads_at(0, 8))
    assert r is not None and r.outcome == Outcome.FAIL and "PT_REGS_PARM2_CORE_SYSCALL" in r.reason
    r = check_prototype(KPROBE, "6.1", "arm64", None, "5.10", None, reads_at(112))
    assert r is not None and r.reason == "reads pt_regs offset 112 (x86_64 di): built for x86_64?"
    r = check_prototype(KPROBE, "6.1", "arm64", None, "5.10", None, reads_at(8))
    assert r is not None and r.outcome == Outcome.SKIP
