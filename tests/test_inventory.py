"""Tests of harness.programs.inventory: libbpf section names, and the programs of compiled BPF objects."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tools import require

from harness.errors import ObjectError
from harness.programs.inventory import SECTION_KINDS, load_object, object_name, parse_section

CLANG = shutil.which("clang")
HOST_CC = shutil.which("cc") or shutil.which("gcc")

# No libbpf headers: the objects only need sections and symbols.
PRELUDE = '#define SEC(name) __attribute__((section(name), used))\nchar LICENSE[] SEC("license") = "GPL";\n'


def compile_bpf(tmp_path: Path, name: str, body: str) -> Path:
    """``body`` compiled with clang -target bpf into tmp_path/<name>; skips when clang is missing."""
    require("clang")
    assert CLANG is not None
    src = tmp_path / f"{name}.c"
    src.write_text(PRELUDE + body)
    out = tmp_path / name
    proc = subprocess.run(
        [CLANG, "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out


# ---------------------------------------------------------------- parse_section


@pytest.mark.parametrize("prefix,kind", SECTION_KINDS)
def test_every_known_prefix(prefix: str, kind: str) -> None:
    assert parse_section(prefix + "target_fn") == (kind, "target_fn")


@pytest.mark.parametrize(
    "section,expected",
    [
        ("kprobe/vfs_unlink", ("kprobe", "vfs_unlink")),
        ("kprobe/blk_account_io_start+0x10", ("kprobe", "blk_account_io_start")),
        ("kprobe/do_sys_open+16", ("kprobe", "do_sys_open")),
        ("kretprobe/tcp_v4_connect+0x4", ("kretprobe", "tcp_v4_connect")),
        # Multi-kprobes take globs, not offsets: the pattern is kept whole.
        ("kprobe.multi/vfs_*", ("kprobe.multi", "vfs_*")),
        ("kretprobe.multi/tcp_*", ("kretprobe.multi", "tcp_*")),
        ("ksyscall/openat", ("ksyscall", "openat")),
        ("fentry.s/bpf_fentry_test1", ("fentry", "bpf_fentry_test1")),
        ("fmod_ret/security_file_open", ("fmod_ret", "security_file_open")),
        ("tp/syscalls/sys_enter_openat", ("tracepoint", "syscalls/sys_enter_openat")),
        ("tracepoint/block/block_rq_issue", ("tracepoint", "block/block_rq_issue")),
        ("raw_tracepoint.w/sched_switch", ("raw_tp", "sched_switch")),
        ("tp_btf/sched_switch", ("tp_btf", "sched_switch")),
        ("lsm.s/file_open", ("lsm", "file_open")),
        ("lsm_cgroup/socket_bind", ("lsm_cgroup", "socket_bind")),
        # uprobes keep path:symbol, the path's own slash included.
        ("uprobe//usr/lib/libc.so.6:malloc", ("uprobe", "/usr/lib/libc.so.6:malloc")),
        ("uretprobe.s//bin/bash:readline", ("uretprobe", "/bin/bash:readline")),
        ("uprobe.multi//usr/bin/app:handler_*", ("uprobe.multi", "/usr/bin/app:handler_*")),
        ("usdt/libc.so.6:libc:setjmp", ("usdt", "libc.so.6:libc:setjmp")),
    ],
)
def test_targets(section: str, expected: tuple[str, str]) -> None:
    assert parse_section(section) == expected


@pytest.mark.parametrize(
    "section",
    [
        "xdp", "tc", "socket", "cgroup/skb", "struct_ops/dctcp_init", "iter/task",
        # A bare kprobe or tracepoint section has no target to check; a typo is no known type.
        "kprobe", "tracepoint", ".text", "kprobes/vfs_unlink",
    ],
)
def test_unknown_types(section: str) -> None:
    assert parse_section(section) is None


def test_object_name() -> None:
    assert object_name(Path("/x/vfs_unlink.bpf.o")) == "vfs_unlink"
    assert object_name(Path("probe.o")) == "probe"
    assert object_name(Path("weird.elf")) == "weird"


# ---------------------------------------------------------------- load_object


def test_load_object_programs_kinds_targets(tmp_path: Path) -> None:
    obj = compile_bpf(
        tmp_path,
        "mixed.bpf.o",
        """
        static __attribute__((noinline)) int helper(int x) { return x * 3; }
        int global_sub(int x) { return helper(x) + 1; }
        SEC("kprobe/do_unlinkat+0x10") int kp_unlink(void *ctx) { return global_sub(1); }
        SEC("fentry/vfs_read") int fe_read(void *ctx) { return 0; }
        SEC("tp/syscalls/sys_enter_openat") int tp_openat(void *ctx) { return 0; }
        SEC("lsm/file_open") int lsm_open(void *ctx) { return 0; }
        SEC("uprobe//usr/bin/bash:readline") int up_readline(void *ctx) { return 0; }
        SEC("kprobe/vfs_write") static int hidden(void *ctx) { return 0; }
        """,
    )
    loaded = load_object(obj)
    assert loaded.path == obj
    assert loaded.name == "mixed"
    got = [(p.program, p.kind, p.target, p.section, p.object) for p in loaded.probes]
    # Sorted by program; the .text subprograms and the static function are not programs.
    assert got == [
        ("fe_read", "fentry", "vfs_read", "fentry/vfs_read", "mixed"),
        ("kp_unlink", "kprobe", "do_unlinkat", "kprobe/do_unlinkat+0x10", "mixed"),
        ("lsm_open", "lsm", "file_open", "lsm/file_open", "mixed"),
        ("tp_openat", "tracepoint", "syscalls/sys_enter_openat", "tp/syscalls/sys_enter_openat", "mixed"),
        ("up_readline", "uprobe", "/usr/bin/bash:readline", "uprobe//usr/bin/bash:readline", "mixed"),
    ]
    assert loaded.unknown == ()


def test_program_in_an_unknown_section_type(tmp_path: Path) -> None:
    obj = compile_bpf(
        tmp_path,
        "net.bpf.o",
        """
        SEC("xdp") int xdp_pass(void *ctx) { return 2; }
        SEC("tc") int tc_ok(void *ctx) { return 0; }
        SEC("kprobe/tcp_v4_connect") int kp_connect(void *ctx) { return 0; }
        """,
    )
    loaded = load_object(obj)
    assert [p.program for p in loaded.probes] == ["kp_connect"]
    assert loaded.unknown == (("tc_ok", "tc"), ("xdp_pass", "xdp"))


def test_only_unknown_programs_is_still_an_object(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "sock.bpf.o", 'SEC("socket") int filt(void *ctx) { return 0; }\n')
    loaded = load_object(obj)
    assert loaded.probes == () and loaded.unknown == (("filt", "socket"),)


def test_object_with_no_programs(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "empty.bpf.o", "int counter = 0;\nint sub(int x) { return x + counter; }\n")
    with pytest.raises(ObjectError, match=f"^{re.escape(str(obj))}: BPF object has no programs$"):
        load_object(obj)


def test_not_an_elf_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.bpf.o"
    path.write_text("// not compiled yet\n")
    with pytest.raises(ObjectError, match=f"^{re.escape(str(path))}: not an ELF file"):
        load_object(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.bpf.o"
    path.write_bytes(b"")
    with pytest.raises(ObjectError, match=f"^{re.escape(str(path))}: "):
        load_object(path)


def test_host_elf_is_not_a_bpf_object(tmp_path: Path) -> None:
    require("gcc")
    assert HOST_CC is not None
    src = tmp_path / "host.c"
    src.write_text('__attribute__((section("kprobe/vfs_read"))) int f(void) { return 0; }\n')
    obj = tmp_path / "host.bpf.o"
    subprocess.run([HOST_CC, "-c", str(src), "-o", str(obj)], check=True, timeout=60, capture_output=True)
    expected = rf"^{re.escape(str(obj))}: not a BPF object \(ELF machine EM_\w+, expected EM_BPF\)$"
    with pytest.raises(ObjectError, match=expected):
        load_object(obj)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.bpf.o"
    expected = f"^{re.escape(str(path))}: cannot read: No such file or directory$"
    with pytest.raises(ObjectError, match=expected):
        load_object(path)


def test_truncated_bpf_object(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "cut.bpf.o", 'SEC("kprobe/f") int p(void *ctx) { return 0; }\n')
    data = obj.read_bytes()
    obj.write_bytes(data[: len(data) // 3])
    with pytest.raises(ObjectError, match=f"^{re.escape(str(obj))}: "):
        load_object(obj)
