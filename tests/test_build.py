"""Tests of programs.build: finding sources, the clang argv, compiler errors, the build cache, vmlinux.h."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tools import require

import harness.programs.build
from harness.errors import BuildError, ConfigError
from harness.kernels.config import ARCHES
from harness.programs.build import (
    LIBBPF_INCLUDE,
    Source,
    build_argv,
    build_source,
    find_sources,
    first_error,
    generate_vmlinux_h,
)
from harness.programs.inventory import load_object

CLANG = shutil.which("clang")
BPFTOOL = shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists() else None)
HOST_BTF = Path("/sys/kernel/btf/vmlinux")
X86 = ARCHES["x86_64"]
ARM64 = ARCHES["arm64"]

GOOD = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";
__u64 hits = 0;

SEC("kprobe/do_nanosleep")
int count_sleeps(void *ctx)
{
\t__sync_fetch_and_add(&hits, 1);
\treturn 0;
}
"""

BAD = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("kprobe/do_nanosleep")
int broken(void *ctx)
{
\treturn undeclared_thing;
}
"""

# Enough of a vmlinux.h for bpf_helpers.h: its types, nothing of a kernel.
TINY_VMLINUX_H = """\
#ifndef __VMLINUX_H__
#define __VMLINUX_H__
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
enum bpf_map_type { BPF_MAP_TYPE_UNSPEC = 0 };
#endif
"""


def needs_clang() -> None:
    require("clang", str(LIBBPF_INCLUDE / "bpf" / "bpf_helpers.h"))


def progs(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "bpf_progs"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


# ---------------------------------------------------------------- find_sources


def test_find_sources_c_wins_over_o(tmp_path: Path) -> None:
    d = progs(
        tmp_path,
        **{"b.bpf.c": "", "b.bpf.o": "", "a.bpf.o": "", "c.bpf.c": "", "notes.txt": "", "x.o": "", "y.c": ""},
    )
    found = find_sources(d)
    assert found == [
        Source(d / "a.bpf.o", "a", prebuilt=True),
        Source(d / "b.bpf.c", "b", prebuilt=False),
        Source(d / "c.bpf.c", "c", prebuilt=False),
    ]


def test_find_sources_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    expected = f"^{re.escape(str(missing))}: BPF programs directory does not exist$"
    with pytest.raises(ConfigError, match=expected):
        find_sources(missing)


def test_find_sources_a_file_is_not_a_dir(tmp_path: Path) -> None:
    path = tmp_path / "file.bpf.c"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"file\.bpf\.c: not a directory of BPF programs, nor an exec"):
        find_sources(path)


def test_find_sources_empty_dir(tmp_path: Path) -> None:
    d = progs(tmp_path, **{"README.md": "", "helper.h": ""})
    empty = rf"^{re.escape(str(d))}: no \*\.bpf\.c or \*\.bpf\.o files, no binaries"
    with pytest.raises(ConfigError, match=empty):
        find_sources(d)


# ---------------------------------------------------------------- build_argv, first_error


def test_build_argv_per_arch() -> None:
    src, out = Path("/p/a.bpf.c"), Path("/o/a.bpf.o")
    argv = build_argv(src, out, X86, [Path("/p"), Path("/usr/include")], clang="/usr/bin/clang")
    assert argv[0] == "/usr/bin/clang"
    assert argv[argv.index("-target") + 1] == "bpf"
    assert "-g" in argv and "-O2" in argv
    assert "-D__TARGET_ARCH_x86" in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-I"] == ["/p", "/usr/include"]
    assert argv[-4:] == ["-c", str(src), "-o", str(out)]
    arm = build_argv(src, out, ARM64, [])
    assert arm[0] == "clang"
    assert "-D__TARGET_ARCH_arm64" in arm and "-D__TARGET_ARCH_x86" not in arm
    assert "-I" not in arm


def test_first_error_keeps_error_lines() -> None:
    stderr = (
        "a.bpf.c:3:5: warning: unused variable 'x'\n"
        "a.bpf.c:7:9: error: use of undeclared identifier 'y'\n"
        "    7 |         return y;\n"
        "a.bpf.c:9:1: error: expected '}'\n"
        "a.bpf.c:10:1: error: third\n"
        "a.bpf.c:11:1: error: fourth\n"
        "4 errors generated.\n"
    )
    assert first_error(stderr) == (
        "a.bpf.c:7:9: error: use of undeclared identifier 'y' | a.bpf.c:9:1: error: expected '}' | "
        "a.bpf.c:10:1: error: third"
    )
    assert first_error(stderr, limit=1) == "a.bpf.c:7:9: error: use of undeclared identifier 'y'"


def test_first_error_without_error_lines() -> None:
    crashed = "clang: killed\nSegmentation fault (core dumped)\n"
    assert first_error(crashed) == "Segmentation fault (core dumped)"
    assert first_error("") == "unknown error"
    assert first_error("  \n\n") == "unknown error"


# ---------------------------------------------------------------- build_source


def test_prebuilt_is_used_as_is(tmp_path: Path) -> None:
    d = progs(tmp_path, **{"pre.bpf.o": "whatever"})
    (source,) = find_sources(d)
    built = build_source(source, X86, None, tmp_path / "out")
    assert built.object == d / "pre.bpf.o" and built.error == "" and built.arch == "x86_64"
    assert not (tmp_path / "out").exists()


def test_good_source_builds_once_then_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_clang()
    d = progs(tmp_path, **{"sleep.bpf.c": GOOD, "vmlinux.h": TINY_VMLINUX_H})
    (source,) = find_sources(d)
    out = tmp_path / "out"
    first = build_source(source, X86, None, out)
    assert first.error == "" and first.object is not None
    assert first.object.name == "sleep.bpf.o"
    assert first.object.is_relative_to(out / "x86_64")
    obj = load_object(first.object)
    assert [(p.program, p.kind, p.target) for p in obj.probes] == [("count_sleeps", "kprobe", "do_nanosleep")]
    # No temporary files are left beside the object.
    assert [p.name for p in first.object.parent.iterdir()] == ["sleep.bpf.o"]

    calls: list[Any] = []

    def no_compile(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("compiled again")

    monkeypatch.setattr(harness.programs.build.subprocess, "run", no_compile)
    mtime = first.object.stat().st_mtime_ns
    second = build_source(source, X86, None, out)
    assert second.object == first.object and second.error == ""
    assert first.object.stat().st_mtime_ns == mtime
    assert calls == []


def test_changed_header_or_arch_rebuilds(tmp_path: Path) -> None:
    needs_clang()
    d = progs(tmp_path, **{"sleep.bpf.c": GOOD, "vmlinux.h": TINY_VMLINUX_H})
    (source,) = find_sources(d)
    out = tmp_path / "out"
    x86 = build_source(source, X86, None, out)
    arm = build_source(source, ARM64, None, out)
    assert x86.object is not None and arm.object is not None
    assert arm.object.is_relative_to(out / "arm64") and arm.object != x86.object
    (d / "vmlinux.h").write_text(TINY_VMLINUX_H + "/* regenerated */\n")
    again = build_source(source, X86, None, out)
    assert again.object is not None and again.object != x86.object


def test_vmlinux_h_from_elsewhere_is_included(tmp_path: Path) -> None:
    needs_clang()
    d = progs(tmp_path, **{"sleep.bpf.c": GOOD})
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "vmlinux.h").write_text(TINY_VMLINUX_H)
    (source,) = find_sources(d)
    missing = build_source(source, X86, None, tmp_path / "out")
    assert missing.object is None and "vmlinux.h" in missing.error
    built = build_source(source, X86, gen / "vmlinux.h", tmp_path / "out")
    assert built.error == "" and built.object is not None


def test_bad_source_error_names_file_and_line_only_for_it(tmp_path: Path) -> None:
    needs_clang()
    d = progs(tmp_path, **{"good.bpf.c": GOOD, "bad.bpf.c": BAD, "vmlinux.h": TINY_VMLINUX_H})
    out = tmp_path / "out"
    built = {s.name: build_source(s, X86, None, out) for s in find_sources(d)}
    bad, good = built["bad"], built["good"]
    assert bad.object is None
    assert f"{d / 'bad.bpf.c'}:7:" in bad.error
    assert "undeclared_thing" in bad.error
    assert "\n" not in bad.error
    assert good.error == "" and good.object is not None and good.object.exists()
    # A failed compile leaves no object or temporary file behind to be mistaken for a build.
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.startswith("bad.")]
    assert leftovers == []


def test_clang_missing_is_an_error_of_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = progs(tmp_path, **{"sleep.bpf.c": GOOD})
    monkeypatch.setattr(harness.programs.build.shutil, "which", lambda name: None)
    (source,) = find_sources(d)
    built = build_source(source, X86, None, tmp_path / "out")
    assert built.object is None and built.error == "clang not found (run ./setup.sh)"


# ---------------------------------------------------------------- generate_vmlinux_h


def test_generate_vmlinux_h_from_the_host_btf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.access(HOST_BTF, os.R_OK):
        pytest.skip(f"{HOST_BTF} is not readable")
    require("bpftool")
    header = generate_vmlinux_h(HOST_BTF, tmp_path / "out")
    assert header.name == "vmlinux.h" and header.parent.name.startswith("vmlinux-")
    text = header.read_text()
    assert "#ifndef __VMLINUX_H__" in text
    assert "struct task_struct {" in text
    assert not list(header.parent.glob("*.tmp*"))

    def no_bpftool(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("bpftool run again")

    monkeypatch.setattr(harness.programs.build.subprocess, "run", no_bpftool)
    assert generate_vmlinux_h(HOST_BTF, tmp_path / "out") == header


def test_generate_vmlinux_h_bad_btf(tmp_path: Path) -> None:
    require("bpftool")
    btf = tmp_path / "vmlinux.btf"
    btf.write_bytes(b"\x00" * 64)
    with pytest.raises(BuildError, match=f"^bpftool btf dump {re.escape(str(btf))} failed: "):
        generate_vmlinux_h(btf, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("vmlinux.h"))
    # Not even an empty vmlinux-<digest>/ is left: only the lock beside where it would be.
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".lock"]


def test_generate_vmlinux_h_without_bpftool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    btf = tmp_path / "vmlinux.btf"
    btf.write_bytes(b"\x9f\xeb" + b"\x00" * 30)
    monkeypatch.setattr(harness.programs.build.shutil, "which", lambda name: None)
    monkeypatch.setattr(harness.programs.build, "Path", _PathWithoutSbinBpftool)
    with pytest.raises(BuildError, match=r"^bpftool not found"):
        generate_vmlinux_h(btf, tmp_path / "out")


class _PathWithoutSbinBpftool(type(Path())):  # type: ignore[misc]
    """A Path under which /usr/sbin/bpftool does not exist."""

    def exists(self, *args: Any, **kwargs: Any) -> bool:
        if str(self) == "/usr/sbin/bpftool":
            return False
        return bool(super().exists(*args, **kwargs))


def test_compiled_with_debug_info(tmp_path: Path) -> None:
    needs_clang()
    from elftools.elf.elffile import ELFFile

    d = progs(tmp_path, **{"sleep.bpf.c": GOOD, "vmlinux.h": TINY_VMLINUX_H})
    (source,) = find_sources(d)
    built = build_source(source, X86, None, tmp_path / "out")
    assert built.object is not None
    # -g gives the object BTF, which CO-RE and the offline layout checks read.
    with built.object.open("rb") as fh:
        names = {s.name for s in ELFFile(fh).iter_sections()}
    assert {".BTF", ".BTF.ext"} <= names


def test_no_vmlinux_btf_names_each_kernels_cause_first() -> None:
    from harness.programs.build import render_no_vmlinux_btf

    causes = [
        "kernel '6.1' (x86_64): local image /x/bzImage does not exist",
        "kernel '5.10' (x86_64): no BTF in /y",
    ]
    assert render_no_vmlinux_btf("x86_64", causes) == (
        "kernel '6.1' (x86_64): local image /x/bzImage does not exist; kernel '5.10' (x86_64): no BTF in /y "
        "(so no vmlinux BTF for x86_64 to generate vmlinux.h)"
    )


# ---------------------------------------------------------------- per-arch objects and binaries

# No headers: an object only needs sections and symbols to be found and inventoried.
PLAIN = """\
#define SEC(name) __attribute__((section(name), used))
char LICENSE[] SEC("license") = "GPL";
SEC("kprobe/PROBE") int PROG(void *ctx) { return 0; }
"""

# How a program embeds an object as a libbpf skeleton does: its bytes in .rodata.
INCBIN = """__asm__(".section .rodata\\n.balign 8\\n.global NAME\\nNAME:\\n.incbin \\"OBJ\\"\\n.previous\\n");
extern const char NAME[];
"""


def compile_plain(tmp_path: Path, stem: str, prog: str, probe: str = "do_nanosleep") -> Path:
    """A tiny BPF object ``<stem>.bpf.o`` with one kprobe program ``prog``; skips without clang."""
    require("clang")
    src = tmp_path / "src" / f"{stem}.bpf.c"
    src.parent.mkdir(exist_ok=True)
    src.write_text(PLAIN.replace("PROBE", probe).replace("PROG", prog))
    out = src.with_suffix(".o")
    proc = subprocess.run([CLANG or "clang", "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def embedding_binary(tmp_path: Path, name: str, *objects: Path, cc: str = "cc") -> Path:
    """An executable ``name`` built with ``cc`` that embeds ``objects`` (.incbin); skips without cc."""
    require(cc)
    src = tmp_path / "src" / f"{name}.c"
    src.parent.mkdir(exist_ok=True)
    blobs = "".join(INCBIN.replace("NAME", f"skel_{i}").replace("OBJ", str(o)) for i, o in enumerate(objects))
    uses = " + ".join(f"skel_{i}[0]" for i in range(len(objects)))
    src.write_text(f"{blobs}int main(void) {{ return {uses} == 0; }}\n")
    out = tmp_path / "bin" / name
    out.parent.mkdir(exist_ok=True)
    proc = subprocess.run([cc, "-O0", "-o", str(out), str(src)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def with_elf_machine(binary: Path, machine: int, dest: Path) -> Path:
    """A copy of ``binary`` whose ELF header says ``machine`` (what read_elf_machine reads)."""
    data = bytearray(binary.read_bytes())
    data[18:20] = machine.to_bytes(2, "little")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(data))
    return dest


def test_per_arch_directories_win_over_flat_objects_and_stay_on_their_arch(tmp_path: Path) -> None:
    progs = tmp_path / "progs"
    for sub in ("amd64", "aarch64"):  # aliases of x86_64 and arm64
        (progs / sub).mkdir(parents=True)
    shared = compile_plain(tmp_path, "shared", "p_shared")
    x86 = compile_plain(tmp_path, "x86", "p_x86", "__x64_sys_openat")
    arm = compile_plain(tmp_path, "arm", "p_arm", "__arm64_sys_openat")
    shutil.copy(shared, progs / "shared.bpf.o")
    shutil.copy(shared, progs / "flat.bpf.o")
    shutil.copy(x86, progs / "amd64" / "shared.bpf.o")
    shutil.copy(arm, progs / "aarch64" / "shared.bpf.o")
    shutil.copy(arm, progs / "aarch64" / "armonly.bpf.o")
    on_x86 = {s.name: s for s in find_sources(progs, X86)}
    on_arm = {s.name: s for s in find_sources(progs, ARM64)}
    assert sorted(on_x86) == ["flat", "shared"]
    assert sorted(on_arm) == ["armonly", "flat", "shared"]
    assert on_x86["shared"].path == progs / "amd64" / "shared.bpf.o" and on_x86["shared"].arch == "x86_64"
    assert on_arm["shared"].path == progs / "aarch64" / "shared.bpf.o" and on_arm["shared"].arch == "arm64"
    assert on_x86["flat"].path == on_arm["flat"].path == progs / "flat.bpf.o"
    # Without an arch: every name once (what the sidecars are checked against).
    assert [s.name for s in find_sources(progs)] == ["armonly", "flat", "shared"]


def test_an_only_per_arch_directory_is_enough(tmp_path: Path) -> None:
    (tmp_path / "progs" / "arm64").mkdir(parents=True)
    shutil.copy(compile_plain(tmp_path, "a", "p_a"), tmp_path / "progs" / "arm64" / "a.bpf.o")
    assert [s.name for s in find_sources(tmp_path / "progs", ARM64)] == ["a"]
    assert find_sources(tmp_path / "progs", X86) == []
    (tmp_path / "empty" / "x86_64").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no \*\.bpf\.c or \*\.bpf\.o files, no binaries embedding BPF"):
        find_sources(tmp_path / "empty")


def test_objects_embedded_in_a_binary_are_found_named_and_extracted(tmp_path: Path) -> None:
    one = compile_plain(tmp_path, "opensnoop", "handle_open")
    two = compile_plain(tmp_path, "execsnoop", "handle_exec")
    binary = embedding_binary(tmp_path, "mytool-libbpf", one, two)
    progs = tmp_path / "progs"
    progs.mkdir()
    shutil.copy(binary, progs / binary.name)
    (progs / "README.txt").write_text("not a binary\n")
    sources = find_sources(progs, X86)
    assert [s.name for s in sources] == ["mytool_libbpf@execsnoop", "mytool_libbpf@opensnoop"]
    assert all(s.embedded and s.prebuilt and s.arch == "x86_64" for s in sources)
    # A host binary is for the host's arch only.
    assert find_sources(progs, ARM64) == []
    out = tmp_path / "build"
    by_name = {s.name: s for s in sources}
    built = build_source(by_name["mytool_libbpf@opensnoop"], X86, None, out)
    assert built.object is not None and built.object.name == "mytool_libbpf@opensnoop.bpf.o"
    assert built.object.read_bytes() == one.read_bytes()
    obj = load_object(built.object)
    assert obj.name == "mytool_libbpf@opensnoop" and [p.program for p in obj.probes] == ["handle_open"]
    # Extracted once: a second build reuses the file.
    mtime = built.object.stat().st_mtime_ns
    assert build_source(by_name["mytool_libbpf@opensnoop"], X86, None, out).object == built.object
    assert built.object.stat().st_mtime_ns == mtime
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    # The binary given alone works as a directory of one.
    assert [s.name for s in find_sources(progs / binary.name, X86)] == [s.name for s in sources]


def test_a_binary_that_changed_since_it_was_scanned_is_a_build_error(tmp_path: Path) -> None:
    binary = embedding_binary(tmp_path, "tool", compile_plain(tmp_path, "o", "p_o"))
    (source,) = find_sources(binary, X86)
    data = bytearray(binary.read_bytes())
    data[source.offset + 100] ^= 0xFF
    binary.write_bytes(bytes(data))
    built = build_source(source, X86, None, tmp_path / "build")
    assert built.object is None and "changed while the run read it" in built.error


def test_a_binary_of_another_arch_in_a_per_arch_directory_is_refused(tmp_path: Path) -> None:
    binary = embedding_binary(tmp_path, "tool", compile_plain(tmp_path, "o", "p_o"))
    shutil.copy(binary, with_elf_machine(binary, 62, tmp_path / "progs" / "arm64" / "tool"))
    with pytest.raises(ConfigError, match=r"arm64/tool: a x86_64 binary in the arm64 directory"):
        find_sources(tmp_path / "progs", ARM64)
    # In the flat directory, a binary of a machine no guest runs is refused too.
    with_elf_machine(binary, 243, tmp_path / "riscv" / "tool")  # EM_RISCV
    with pytest.raises(ConfigError, match=r"tool: a binary for ELF machine 243"):
        find_sources(tmp_path / "riscv")


def test_an_arm64_binary_is_for_arm64(tmp_path: Path) -> None:
    obj = compile_plain(tmp_path, "o", "p_o")
    binary = embedding_binary(tmp_path, "armtool", obj, cc="aarch64-linux-gnu-gcc")
    (source,) = find_sources(binary, ARM64)
    assert (source.name, source.arch) == ("armtool@o", "arm64")
    assert find_sources(binary, X86) == []


def test_a_binary_without_objects(tmp_path: Path) -> None:
    require("cc")
    src = tmp_path / "plain.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["cc", "-o", str(tmp_path / "plain"), str(src)], check=True, timeout=60)
    with pytest.raises(ConfigError, match="no BPF object embedded in it"):
        find_sources(tmp_path / "plain")
