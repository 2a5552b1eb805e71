"""Tests for harness.btf: hand-built BTF blobs, a clang-compiled object, and the host's vmlinux BTF."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from tools import needs

from harness.btf.bpf_object import load_object_core_relos
from harness.btf.core import CoreReloKind, parse_btf_ext_core_relos
from harness.btf.spec import (
    BTFLayout,
    BTFSpec,
    index_btf,
    load_btf,
    parse_btf,
    parse_btf_header,
    parse_btf_with_layout,
)
from harness.btf.types import (
    Array,
    Const,
    Datasec,
    DeclTag,
    Enum,
    Enum64,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Kind,
    Pointer,
    Restrict,
    Struct,
    Typedef,
    TypeTag,
    Union,
    Var,
    Void,
    Volatile,
)
from harness.errors import BTFError, ObjectError

VMLINUX = Path("/sys/kernel/btf/vmlinux")


class BTFBuilder:
    """Packs header + types + strings the way the kernel lays them out (include/uapi/linux/btf.h)."""

    def __init__(self, first_id: int = 1, str_base: int = 0) -> None:
        self.strings = bytearray(b"" if str_base else b"\0")
        self.str_base = str_base
        self.types: list[list[int]] = []
        self.first_id = first_id

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = self.str_base + len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_type: int, *extra: int, kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types.append([self.s(name), info, size_type, *extra])
        return self.first_id + len(self.types) - 1

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        return self.add(name, 1, 0, size, ((1 if signed else 0) << 24) | size * 8)

    def ptr(self, target: int) -> int:
        return self.add("", 2, 0, target)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False) -> int:
        words: list[int] = []
        for mname, mtype, bit_off in members:
            words += [self.s(mname), mtype, bit_off]
        return self.add(name, 5 if union else 4, len(members), size, *words)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        words: list[int] = []
        for pname, ptype in params:
            words += [self.s(pname), ptype]
        return self.add("", 13, len(params), ret, *words)

    def func(self, name: str, proto: int) -> int:
        return self.add(name, 12, 1, proto)

    def build(self, big_endian: bool = False) -> bytes:
        order = ">" if big_endian else "<"
        body = b"".join(struct.pack(f"{order}{len(t)}I", *t) for t in self.types)
        header = struct.pack(f"{order}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body),
                             len(self.strings))
        return header + body + bytes(self.strings)


def every_kind() -> tuple[BTFBuilder, dict[str, int]]:
    b = BTFBuilder()
    ids: dict[str, int] = {}
    ids["int"] = b.int_("int", 4, signed=True)
    ids["char"] = b.int_("char", 1)
    ids["const_char"] = b.add("", 10, 0, ids["char"])
    ids["ptr_const_char"] = b.ptr(ids["const_char"])
    ids["arr"] = b.add("", 3, 0, 0, ids["char"], ids["int"], 16)
    ids["inode"] = b.struct("inode", 16, [("i_mode", ids["int"], 0), ("i_name", ids["arr"], 32)])
    ids["u"] = b.struct("u", 4, [("a", ids["int"], 0), ("b", ids["int"], 0)], union=True)
    ids["enum"] = b.add("e", 6, 2, 4, b.s("E_A"), 0, b.s("E_NEG"), 0xFFFFFFFF, kflag=1)
    ids["fwd"] = b.add("fwd_u", 7, 0, 0, kflag=1)
    ids["u32"] = b.add("u32", 8, 0, ids["int"])
    ids["volatile"] = b.add("", 9, 0, ids["int"])
    ids["ptr_inode"] = b.ptr(ids["inode"])
    ids["restrict"] = b.add("", 11, 0, ids["ptr_inode"])
    ids["proto"] = b.func_proto(ids["int"], [("dir", ids["ptr_inode"]), ("name", ids["ptr_const_char"])])
    ids["func"] = b.func("vfs_thing", ids["proto"])
    ids["var"] = b.add("counter", 14, 0, ids["int"], 1)
    ids["datasec"] = b.add(".data", 15, 1, 4, ids["var"], 0, 4)
    ids["float"] = b.add("double", 16, 0, 8)
    ids["decl_tag"] = b.add("user", 17, 0, ids["func"], 0xFFFFFFFF)
    ids["type_tag"] = b.add("rcu", 18, 0, ids["inode"])
    ids["enum64"] = b.add("e64", 19, 1, 8, b.s("BIG"), 0x1, 0x80000000)
    ids["void_ptr"] = b.ptr(0)
    ids["cb_proto"] = b.func_proto(ids["int"], [("", ids["void_ptr"])])
    ids["cb_ptr"] = b.ptr(ids["cb_proto"])
    ids["bitfields"] = b.add("bits", 4, 2, 4, b.s("lo"), ids["int"], (3 << 24) | 0,
                             b.s("hi"), ids["int"], (5 << 24) | 3, kflag=1)
    ids["anon_struct"] = b.struct("", 4, [("x", ids["int"], 0)])
    ids["outer"] = b.struct("outer", 12, [("first", ids["int"], 0), ("", ids["anon_struct"], 32),
                                          ("last", ids["int"], 64)])
    ids["const_ptr"] = b.add("", 10, 0, ids["ptr_const_char"])
    ids["variadic"] = b.func_proto(ids["int"], [("fmt", ids["ptr_const_char"]), ("", 0)])
    return b, ids


@pytest.mark.parametrize("big_endian", [False, True])
def test_every_kind_parses(big_endian: bool) -> None:
    b, ids = every_kind()
    spec = parse_btf(b.build(big_endian), "every.btf")
    assert len(spec) == len(b.types) + 1
    assert isinstance(spec[0], Void)
    t = spec[ids["int"]]
    assert isinstance(t, Int) and t.size == 4 and t.signed and t.bits == 32
    arr = spec[ids["arr"]]
    assert isinstance(arr, Array)
    assert (arr.type_id, arr.index_type_id, arr.nelems) == (ids["char"], ids["int"], 16)
    inode = spec[ids["inode"]]
    assert isinstance(inode, Struct) and inode.size == 16
    assert [(m.name, m.type_id, m.bit_offset) for m in inode.members] == [
        ("i_mode", ids["int"], 0), ("i_name", ids["arr"], 32)]
    assert isinstance(spec[ids["u"]], Union)
    enum = spec[ids["enum"]]
    assert isinstance(enum, Enum) and enum.signed and [(v.name, v.value) for v in enum.values] == [
        ("E_A", 0), ("E_NEG", -1)]
    fwd = spec[ids["fwd"]]
    assert isinstance(fwd, Fwd) and fwd.is_union
    assert isinstance(spec[ids["u32"]], Typedef)
    assert isinstance(spec[ids["volatile"]], Volatile)
    assert isinstance(spec[ids["const_char"]], Const)
    assert isinstance(spec[ids["restrict"]], Restrict)
    func = spec[ids["func"]]
    assert isinstance(func, Func) and func.linkage == 1 and func.type_id == ids["proto"]
    proto = spec[ids["proto"]]
    assert isinstance(proto, FuncProto) and [p.name for p in proto.params] == ["dir", "name"]
    var = spec[ids["var"]]
    assert isinstance(var, Var) and var.linkage == 1
    ds = spec[ids["datasec"]]
    assert isinstance(ds, Datasec) and ds.vars[0].type_id == ids["var"] and ds.vars[0].size == 4
    assert isinstance(spec[ids["float"]], Float)
    tag = spec[ids["decl_tag"]]
    assert isinstance(tag, DeclTag) and tag.component_idx == -1 and tag.name == "user"
    assert isinstance(spec[ids["type_tag"]], TypeTag)
    e64 = spec[ids["enum64"]]
    assert isinstance(e64, Enum64) and e64.kind == Kind.ENUM64 and e64.values[0].value == 0x80000000_00000001
    bits = spec[ids["bitfields"]]
    assert isinstance(bits, Struct)
    assert [(m.bit_offset, m.bitfield_size) for m in bits.members] == [(0, 3), (3, 5)]
    assert spec.little_endian is (not big_endian)
    assert spec.count_by_kind()[Kind.STRUCT] == 4
    assert sorted(spec.count_by_kind()) == sorted(set(Kind) - {Kind.VOID})


def test_type_text_renders_c() -> None:
    b, ids = every_kind()
    spec = parse_btf(b.build())
    assert spec.type_text(ids["ptr_inode"]) == "struct inode *"
    assert spec.type_text(ids["ptr_const_char"]) == "const char *"
    assert spec.type_text(ids["u32"]) == "u32"
    assert spec.type_text(ids["cb_ptr"]) == "int (*)(void *)"
    assert spec.type_text(ids["arr"]) == "char [16]"
    assert spec.decl_text(ids["arr"], "comm") == "char comm[16]"
    assert spec.type_text(ids["const_ptr"]) == "const char *const"
    assert spec.type_text(ids["variadic"]) == "int (const char *, ...)"
    assert spec.type_text(ids["func"]) == "int vfs_thing(struct inode *, const char *)"
    assert spec.type_text(ids["fwd"]) == "union fwd_u"
    assert spec.type_text(ids["anon_struct"]) == "struct {...}"
    assert spec.type_text(ids["restrict"]) == "struct inode *restrict"
    assert spec.sizeof(ids["arr"]) == 16
    assert spec.sizeof(ids["u32"]) == 4
    assert spec.sizeof(ids["ptr_inode"]) == 8


def test_lookups() -> None:
    b, ids = every_kind()
    spec = parse_btf(b.build())
    assert spec.func_names() == frozenset({"vfs_thing"})
    assert [t.id for t in spec.by_name("inode")] == [ids["inode"]]
    assert spec.by_name("inode", Kind.UNION) == []
    assert spec.by_name("nope") == []
    assert list(spec.ids(Kind.FUNC)) == [ids["func"]]
    assert spec.find_func_proto("vfs_thing") == spec[ids["proto"]]
    assert spec.skip_mods_and_typedefs(ids["u32"]) == ids["int"]
    assert len(spec.types) == len(spec) and spec.types[-1].id == len(spec) - 1


def test_unknown_kind_names_kind_and_file() -> None:
    b = BTFBuilder()
    b.int_("int", 4)
    b.add("weird", 25, 0, 0)
    with pytest.raises(BTFError, match=r"weird\.btf: type 2 has unknown BTF kind 25"):
        parse_btf(b.build(), "weird.btf")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"\x00\x00" + d[2:], "bad BTF magic"),
        (lambda d: d[:10], "too short"),
        (lambda d: d[:-3], "run past the end"),
    ],
)
def test_malformed(mutate: object, message: str) -> None:
    b, _ = every_kind()
    data = b.build()
    assert callable(mutate)
    with pytest.raises(BTFError, match=message):
        parse_btf(mutate(data), "bad.btf")


@pytest.mark.parametrize("big_endian", [False, True])
def test_header_at_an_offset_in_either_byte_order(big_endian: bool) -> None:
    b, _ = every_kind()
    data = b.build(big_endian=big_endian)
    h = parse_btf_header(b"junk" + data, "blob", offset=4)
    assert h.little_endian is not big_endian
    assert (h.version, h.flags, h.hdr_len, h.type_off) == (1, 0, 24, 0)
    assert h.str_off == h.type_len and 24 + h.str_off + h.str_len == len(data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:2] + b"\x02" + d[3:], r"^h\.btf: unsupported BTF version 2$"),
        (lambda d: d[:23], r"^h\.btf: 23 bytes is too short for a BTF header$"),
        (
            lambda d: d[:4] + struct.pack("<I", 16) + d[8:],
            r"^h\.btf: BTF header length 16 is shorter than 24$",
        ),
    ],
)
def test_header_errors(mutate: Callable[[bytes], bytes], message: str) -> None:
    b, _ = every_kind()
    data = b.build()
    with pytest.raises(BTFError, match=message):
        parse_btf_header(mutate(data), "h.btf")
    with pytest.raises(BTFError, match=message):
        parse_btf(mutate(data), "h.btf")


def test_truncated_type_section() -> None:
    b = BTFBuilder()
    b.struct("s", 8, [("a", 0, 0), ("b", 0, 32)])
    data = bytearray(b.build())
    # Claim a third member the section does not hold.
    info_at = 24 + 4
    struct.pack_into("<I", data, info_at, (4 << 24) | 3)
    with pytest.raises(BTFError, match="truncated"):
        parse_btf(bytes(data), "short.btf")


def test_split_btf_uses_base_ids_and_strings() -> None:
    base_b = BTFBuilder()
    base_int = base_b.int_("int", 4, signed=True)
    base = parse_btf(base_b.build(), "vmlinux")
    split = BTFBuilder(first_id=len(base), str_base=base.strings_len)
    sid = split.struct("mod_thing", 4, [("v", base_int, 0)])
    fid = split.func("mod_func", split.func_proto(base_int, []))
    spec = parse_btf(split.build(), "mod", base=base)
    assert sid == len(base)
    s = spec[sid]
    assert isinstance(s, Struct) and s.members[0].name == "v"
    assert spec.type_text(s.members[0].type_id) == "int"
    assert spec.func_names() == frozenset({"mod_func"})
    assert spec.type_text(fid) == "int mod_func(void)"
    assert [t.id for t in spec.by_name("int")] == [base_int]


def test_load_btf_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BTFError, match="nothere"):
        load_btf(tmp_path / "nothere")


def test_btf_ext_without_core_section() -> None:
    b, _ = every_kind()
    spec = parse_btf(b.build())
    ext = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 0)
    assert parse_btf_ext_core_relos(ext, spec) == []
    with pytest.raises(BTFError, match=r"bad BTF\.ext magic"):
        parse_btf_ext_core_relos(b"\x01\x02" + ext[2:], spec, "x.o:.BTF.ext")


def test_btf_ext_core_relos_hand_built() -> None:
    b, ids = every_kind()
    sec = b.s("kprobe/x")
    acc_field = b.s("0:1:3")
    acc_anon = b.s("0:1:0")
    acc_enum = b.s("1")
    spec = parse_btf(b.build())
    # "0:1:3" on struct inode: member 1 (i_name, a char[16]) then index 3.
    recs = [(8, ids["inode"], acc_field, 0), (16, ids["outer"], acc_anon, 2), (24, ids["enum"], acc_enum, 11)]
    body = struct.pack("<I", 16) + struct.pack("<II", sec, len(recs))
    body += b"".join(struct.pack("<IIII", *r) for r in recs)
    ext = struct.pack("<HBBIIIIIII", 0xEB9F, 1, 0, 32, 0, 0, 0, 0, 0, len(body)) + body
    relos = parse_btf_ext_core_relos(ext, spec)
    assert [(r.path, r.kind, r.local_offset) for r in relos] == [
        ("inode.i_name[3]", CoreReloKind.FIELD_BYTE_OFFSET, 7),
        ("outer.x", CoreReloKind.FIELD_EXISTS, 4),
        ("e::E_NEG", CoreReloKind.ENUMVAL_VALUE, None),
    ]
    assert relos[0].section == "kprobe/x" and relos[0].insn_off == 8
    assert str(relos[1].kind) == "field_exists"


# --- A real object compiled by clang ---------------------------------------------------------------

PRELUDE = """
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64; typedef signed char __s8; typedef short __s16; typedef int __s32;
typedef long long __s64; typedef __u16 __be16; typedef __u32 __be32; typedef __u32 __wsum;
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
"""

SAMPLE = PRELUDE + r"""
struct signal_struct { int nr_threads; int flags; } __attribute__((preserve_access_index));
struct task_struct {
    int pid;
    union { int __state; long state_old; };
    struct task_struct *real_parent;
    struct signal_struct *signal;
    char comm[16];
} __attribute__((preserve_access_index));
struct task_struct___old { long state; } __attribute__((preserve_access_index));
enum pid_type { PIDTYPE_PID, PIDTYPE_TGID };

static __attribute__((noinline)) int helper(struct task_struct *t)
{
    return BPF_CORE_READ(t, pid);
}

SEC("kprobe/do_exit")
int on_exit(void *ctx)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct task_struct *p = BPF_CORE_READ(t, real_parent);
    int n = BPF_CORE_READ(t, signal, nr_threads);
    if (bpf_core_field_exists(((struct task_struct___old *)t)->state))
        n += BPF_CORE_READ((struct task_struct___old *)t, state);
    return n + (p != 0) + helper(t);
}

SEC("kprobe/do_exit")
int on_exit_too(void *ctx)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    return BPF_CORE_READ(t, pid);
}

SEC("fentry/vfs_unlink")
int on_unlink(void *ctx)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    char c = BPF_CORE_READ(t, comm[1]);
    int s = BPF_CORE_READ(t, __state);
    return c + s + bpf_core_type_exists(struct task_struct___old)
        + bpf_core_enum_value(enum pid_type, PIDTYPE_TGID) + bpf_core_type_size(struct task_struct);
}
char LICENSE[] SEC("license") = "GPL";
"""

needs_clang = needs("clang", "/usr/include/bpf/bpf_core_read.h")


def compile_bpf(tmp_path: Path, source: str, name: str = "sample") -> Path:
    src = tmp_path / f"{name}.bpf.c"
    src.write_text(source)
    out = tmp_path / f"{name}.bpf.o"
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)],
        check=True, capture_output=True, timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def sample_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(tmp_path_factory.mktemp("bpf"), SAMPLE)


@needs_clang
def test_object_core_relos_by_program(sample_object: Path) -> None:
    relos = load_object_core_relos(sample_object)
    got = {prog: [(r.path, r.kind_name) for r in rs] for prog, rs in relos.items()}
    assert got["on_exit"] == [
        ("task_struct.real_parent", "field_byte_offset"),
        ("task_struct.signal", "field_byte_offset"),
        ("signal_struct.nr_threads", "field_byte_offset"),
        ("task_struct___old.state", "field_exists"),
        ("task_struct___old.state", "field_byte_offset"),
        # from the static subprogram it calls (libbpf links it into the program)
        ("task_struct.pid", "field_byte_offset"),
    ]
    assert got["on_exit_too"] == [("task_struct.pid", "field_byte_offset")]
    assert sorted(got["on_unlink"]) == sorted([
        ("task_struct.comm[1]", "field_byte_offset"),
        ("task_struct.__state", "field_byte_offset"),
        ("task_struct___old", "type_exists"),
        ("pid_type::PIDTYPE_TGID", "enumval_value"),
        ("task_struct", "type_size"),
    ])
    # The static subprogram's relocations are listed under its own name.
    assert got["helper"] == [("task_struct.pid", "field_byte_offset")]
    by_path = {r.path: r for r in relos["on_unlink"]}
    assert by_path["task_struct.__state"].local_offset == 8  # inside the anonymous union
    assert by_path["task_struct.comm[1]"].local_offset == 33
    assert by_path["task_struct.__state"].essential_name == "task_struct"
    assert relos["on_exit"][3].essential_name == "task_struct"
    sections = {r.section for r in relos["on_exit"] + relos["on_exit_too"]}
    assert sections == {"kprobe/do_exit", ".text"}
    assert relos["on_exit"][-1] is relos["helper"][0]


@needs_clang
def test_object_without_core(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, PRELUDE + 'SEC("kprobe/x") int p(void *c) { return 0; }\n'
                      'char LICENSE[] SEC("license") = "GPL";\n', "plain")
    assert load_object_core_relos(obj) == {}


def test_object_not_elf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"not an elf at all")
    with pytest.raises(ObjectError, match=r"bad\.bpf\.o"):
        load_object_core_relos(bad)


# --- The host's vmlinux against bpftool ----------------------------------------------------------

needs_vmlinux = pytest.mark.skipif(
    shutil.which("bpftool") is None or not VMLINUX.exists(), reason="bpftool or vmlinux BTF missing"
)

_RAW_TYPE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'")
_RAW_MEMBER = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)")


@pytest.fixture(scope="module")
def bpftool_raw() -> list[str]:
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return out.stdout.splitlines()


@needs_vmlinux
def test_vmlinux_matches_bpftool(bpftool_raw: list[str]) -> None:
    spec = load_btf(VMLINUX)
    kinds: Counter[str] = Counter()
    names: dict[int, tuple[str, str]] = {}
    members: dict[int, list[tuple[str, int, int]]] = {}
    current = 0
    for line in bpftool_raw:
        m = _RAW_TYPE.match(line)
        if m:
            current = int(m.group(1))
            kinds[m.group(2)] += 1
            names[current] = (m.group(2), "" if m.group(3) == "(anon)" else m.group(3))
            continue
        mm = _RAW_MEMBER.match(line)
        if mm and names[current][0] in ("STRUCT", "UNION"):
            name = "" if mm.group(1) == "(anon)" else mm.group(1)
            members.setdefault(current, []).append((name, int(mm.group(2)), int(mm.group(3))))
    assert {k.name: v for k, v in spec.count_by_kind().items()} == dict(kinds)
    assert len(spec) == max(names) + 1
    for tid in list(names)[:: max(1, len(names) // 2000)]:
        assert (spec.kind_of(tid).name, spec.name_of(tid)) == names[tid], tid
    checked = 0
    for tid, expected in list(members.items())[:: max(1, len(members) // 300)]:
        t = spec[tid]
        assert isinstance(t, (Struct, Union))
        assert [(m.name, m.type_id, m.bit_offset) for m in t.members] == expected, tid
        checked += 1
    assert checked > 50
    assert "vfs_unlink" in spec.func_names()
    task = spec.by_name("task_struct", Kind.STRUCT)
    assert len(task) == 1


@needs_vmlinux
def test_vmlinux_pointer_and_proto_text() -> None:
    spec = load_btf(VMLINUX)
    proto = spec.find_func_proto("vfs_unlink")
    assert proto is not None
    texts = [(p.name, spec.type_text(p.type_id)) for p in proto.params]
    assert ("dentry", "struct dentry *") in texts
    assert ("delegated_inode", "struct inode **") in texts
    td = spec.by_name("btf_trace_sched_switch", Kind.TYPEDEF)
    assert td and spec.type_text(td[0].id) == "btf_trace_sched_switch"
    target = spec[td[0].id]
    assert isinstance(target, Typedef)
    assert isinstance(spec[target.type_id], Pointer)
    assert spec.type_text(target.type_id).startswith("void (*)(void *, ")


NESTED = PRELUDE + r"""
struct task_struct { int pid; int tgid; struct task_struct *parent; } __attribute__((preserve_access_index));

static __attribute__((noinline)) int deeper(struct task_struct *t) { return BPF_CORE_READ(t, tgid); }
static __attribute__((noinline)) int middle(struct task_struct *t) { return deeper(t) + 1; }

SEC("kprobe/a")
int prog_a(void *ctx) { return middle((struct task_struct *)bpf_get_current_task()); }

SEC("kprobe/b")
int prog_b(void *ctx) { return BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), parent, pid); }
char LICENSE[] SEC("license") = "GPL";
"""


@needs_clang
def test_nested_subprogram_relocations_reach_the_program(tmp_path: Path) -> None:
    relos = load_object_core_relos(compile_bpf(tmp_path, NESTED, "nested"))
    assert [r.path for r in relos["prog_a"]] == ["task_struct.tgid"]
    assert [r.path for r in relos["prog_b"]] == ["task_struct.parent", "task_struct.pid"]
    assert [r.path for r in relos["deeper"]] == ["task_struct.tgid"]
    assert "middle" not in relos


def _names_by_decoding(spec: BTFSpec) -> dict[str, list[int]]:
    """Every type's name decoded one by one: what by_name must agree with."""
    index: dict[str, list[int]] = {}
    for tid in range(1, len(spec)):
        name = spec.name_of(tid)
        if name:
            index.setdefault(name, []).append(tid)
    return index


@pytest.mark.parametrize("big_endian", [False, True])
def test_by_name_agrees_with_decoding_every_name(big_endian: bool) -> None:
    b, ids = every_kind()
    b.add("inode", 7, 0, 0)  # a forward declaration beside the struct
    # A name that is the tail of another string ("node" in "inode"), and a string stored twice.
    ids_tail = len(b.types) + 1
    b.types.append([b.str_base + b.strings.index(b"inode\0") + 1, 8 << 24, ids["int"]])
    b.types.append([b.s("twice"), 8 << 24, ids["int"]])
    b.types.append([b.s("twice"), 8 << 24, ids["int"]])
    spec = parse_btf(b.build(big_endian))
    expected = _names_by_decoding(spec)
    assert expected["node"] == [ids_tail]
    for name, found in expected.items():
        assert [t.id for t in spec.by_name(name)] == found, name
    for missing in ("nod", "inod", "inode ", "no_such_type", "\ufffd", "a\0b"):
        assert spec.by_name(missing) == []
    assert [t.kind for t in spec.by_name("inode")] == [Kind.STRUCT, Kind.FWD]


def test_by_name_in_split_btf_finds_names_in_base_strings() -> None:
    base_b = BTFBuilder()
    base_int = base_b.int_("int", 4, signed=True)
    base_b.struct("shared", 4, [("v", base_int, 0)])
    base = parse_btf(base_b.build(), "vmlinux")
    split = BTFBuilder(first_id=len(base), str_base=base.strings_len)
    # A module's type named by an offset into the base's strings (as pahole's dedup makes them).
    split.types.append([base.strings_len - len(b"shared\0"), 7 << 24, 0])
    sid = split.struct("mod_only", 4, [("v", base_int, 0)])
    spec = parse_btf(split.build(), "mod", base=base)
    assert [t.kind for t in spec.by_name("shared")] == [Kind.STRUCT, Kind.FWD]
    assert [t.id for t in spec.by_name("mod_only")] == [sid]
    assert spec.by_name("int", Kind.INT)[0].id == base_int


def test_parse_btf_with_layout_is_parse_btf() -> None:
    b, _ = every_kind()
    data = b.build()
    layout = index_btf(data, "k.btf")
    spec, again = parse_btf(data, "k.btf"), parse_btf_with_layout(data, layout, "k.btf")
    assert list(again.types) == list(spec.types)
    assert again.func_names() == spec.func_names()
    other = BTFBuilder()
    other.int_("int", 4)
    with pytest.raises(BTFError, match="layout does not fit"):
        parse_btf_with_layout(other.build(), layout, "other.btf")
    with pytest.raises(BTFError, match="unknown kinds"):
        parse_btf_with_layout(data, BTFLayout(layout.starts, bytes([25]) * len(layout.kinds)), "k.btf")
