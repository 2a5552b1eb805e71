"""Tests of harness.programs.loader: a sidecar's loader settings checked against a compiled object and
turned into the plan's entry (.rodata bytes at the offsets libbpf uses)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tools import needs

from harness.errors import ConfigError
from harness.programs.loader import plan_loader
from harness.programs.sidecar import LoaderSettings

needs_clang = needs("clang", why="compiles a BPF object")

# Self-contained (no vmlinux.h): a skeleton-style object with .rodata switches, a BTF-defined map
# and a program.
SOURCE = """\
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef _Bool bool;
char LICENSE[] SEC("license") = "GPL";
const volatile bool flag = 0;
const volatile int delta = 0;
const volatile __u32 pid = 0;
const volatile char comm[8] = {};
struct { __uint(type, 7); __uint(key_size, 4); } stackmap SEC(".maps");
SEC("fentry/dummy") int prog(void *ctx) { return flag + delta + pid + comm[0]; }
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("loader")
    src, out = tmp / "sample.bpf.c", tmp / "sample.bpf.o"
    src.write_text(SOURCE)
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def rodata_symbols(path: Path) -> dict[str, int]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with path.open("rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        rodata = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".rodata")
        return {s.name: s["st_value"] for s in symtab.iter_symbols() if s["st_shndx"] == rodata}


def test_targets_and_autoload_need_no_btf(tmp_path: Path) -> None:
    # Nothing of the object is read for them: a file that is not even ELF will do.
    settings = LoaderSettings(attach_targets={"prog": "vfs_open"}, autoload_off=frozenset({"b", "a"}))
    plan = plan_loader(settings, tmp_path / "missing.bpf.o", "side.yaml")
    assert plan == {"attach_targets": {"prog": "vfs_open"}, "autoload_off": ["a", "b"]}


def test_nothing_set_is_an_empty_plan(tmp_path: Path) -> None:
    assert plan_loader(LoaderSettings(), tmp_path / "missing.bpf.o", "side.yaml") == {}


@needs_clang
def test_rodata_values_become_bytes_at_the_symbols_offsets(obj: Path) -> None:
    settings = LoaderSettings(rodata={"flag": True, "delta": -2, "pid": 4242, "comm": "cat"})
    plan = plan_loader(settings, obj, "side.yaml")
    offsets = rodata_symbols(obj)
    patches = {p["variable"]: p for p in plan["data"]}
    assert {n: p["offset"] for n, p in patches.items()} == {n: offsets[n] for n in patches}
    assert patches["flag"]["hex"] == "01"
    assert patches["delta"]["hex"] == (-2).to_bytes(4, "little", signed=True).hex()
    assert patches["pid"]["hex"] == (4242).to_bytes(4, "little").hex()
    assert patches["comm"]["hex"] == b"cat".ljust(8, b"\0").hex()
    assert all(p["section"] == ".rodata" for p in patches.values())


@needs_clang
def test_map_sizes_are_planned_for_a_map_the_object_has(obj: Path) -> None:
    settings = LoaderSettings(maps={"stackmap": {"max_entries": 64, "value_size": 1016}})
    planned = plan_loader(settings, obj, "side.yaml")["maps"]
    assert planned == {"stackmap": {"max_entries": 64, "value_size": 1016}}


@needs_clang
@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (LoaderSettings(maps={"stackmapp": {"max_entries": 1}}),
         "has no map 'stackmapp' (its maps: stackmap)"),
        (LoaderSettings(rodata={"flags": 1}), "has no .rodata variable 'flags'"),
        (LoaderSettings(rodata={"pid": -1}), "-1 does not fit 'pid' (unsigned, 4 bytes)"),
        (LoaderSettings(rodata={"flag": 300}), "300 does not fit 'flag'"),
        (LoaderSettings(rodata={"comm": "far too long"}), "does not fit 'comm' (8 bytes with its NUL)"),
        (LoaderSettings(rodata={"pid": "cat"}), "'pid' is not a char array"),
    ],
)
def test_settings_the_object_cannot_take_are_refused(obj: Path, settings: LoaderSettings, words: str) -> None:
    with pytest.raises(ConfigError, match=r"side\.yaml: loader") as info:
        plan_loader(settings, obj, "side.yaml")
    assert words in str(info.value)
