"""scripts/real_corpus.py: BPF objects found in the bytes of a binary, named, and deduplicated."""

from __future__ import annotations

import importlib.util
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tools import require

from harness.errors import FetchError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "real_corpus.py"
_spec = importlib.util.spec_from_file_location("real_corpus", SCRIPT)
assert _spec is not None and _spec.loader is not None
real_corpus = importlib.util.module_from_spec(_spec)
sys.modules["real_corpus"] = real_corpus
_spec.loader.exec_module(real_corpus)

# No libbpf headers: the object only needs sections, symbols and BTF.
SOURCE = """\
#define SEC(name) __attribute__((section(name), used))
char LICENSE[] SEC("license") = "GPL";
SEC("kprobe/do_unlinkat") int on_unlink(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_enter_openat") int on_openat(void *ctx) { return 1; }
"""


def compile_bpf(tmp_path: Path, stem: str, source: str = SOURCE) -> bytes:
    """``source`` compiled as ``<stem>.bpf.c`` with clang -target bpf -O2 -g; skips without clang."""
    require("clang")
    clang = shutil.which("clang")
    assert clang is not None
    src = tmp_path / f"{stem}.bpf.c"
    src.write_text(source)
    out = tmp_path / f"{stem}.bpf.o"
    proc = subprocess.run(
        [clang, "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def with_machine(obj: bytes, machine: int) -> bytes:
    return obj[:18] + struct.pack("<H", machine) + obj[20:]


def test_one_object_between_random_bytes(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "unlinksnoop")
    blob = noise(1, 4099) + obj + noise(2, 777)
    found = real_corpus.parse_embedded_objects(blob)
    assert len(found) == 1
    assert found[0].data == obj
    assert found[0].offset == 4099
    assert found[0].label == "unlinksnoop"
    assert found[0].programs == 2
    assert found[0].hooks == {"kprobe": 1, "tracepoint": 1}


def test_an_object_at_the_very_end(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "tail")
    found = real_corpus.parse_embedded_objects(noise(3, 100) + obj)
    assert [f.data for f in found] == [obj]


def test_non_bpf_machine_garbage_and_truncation_are_skipped(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "real")
    x86 = with_machine(obj, 62)  # EM_X86_64: a well-formed ELF, not BPF
    garbage = b"\x7fELF" + noise(4, 200)
    bpf_garbage = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + struct.pack("<H", 247) + noise(5, 300)
    truncated = obj[: len(obj) // 2]
    for blob in (x86, garbage, bpf_garbage, truncated, noise(6, 5000)):
        assert real_corpus.parse_embedded_objects(noise(7, 64) + blob + noise(8, 64)) == []


def test_an_object_with_no_programs_is_skipped(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "maps_only", 'int counter __attribute__((section(".data"), used)) = 1;\n')
    assert real_corpus.parse_embedded_objects(noise(9, 32) + obj) == []


def test_scan_tree_names_and_deduplicates(tmp_path: Path) -> None:
    first = compile_bpf(tmp_path, "restrict-fs")
    second = compile_bpf(tmp_path, "socket-bind", SOURCE.replace("return 1", "return 2"))
    tree = tmp_path / "tree"
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/lib").mkdir(parents=True)
    # A host ELF that embeds one object; another binary with the same bytes; a library with two.
    host = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + struct.pack("<H", 62) + noise(10, 2000)
    (tree / "usr/sbin/restrictor-libbpf").write_bytes(host + first + noise(11, 300))
    (tree / "usr/sbin/restrictor-copy").write_bytes(host + first)
    (tree / "usr/lib/libsystemd-core-257.so").write_bytes(host + second + noise(12, 10) + first)
    (tree / "usr/sbin/link").symlink_to("restrictor-libbpf")
    (tree / "usr/lib/readme.txt").write_text("no ELF here")

    found = real_corpus.scan_tree(tree, "pkg")
    assert sorted(o.name for o in found) == [
        "libsystemd_core_restrict_fs", "libsystemd_core_socket_bind", "restrict_fs", "restrict_fs",
    ]
    merged = real_corpus.merge_objects(found)
    by_name = {o.name: o for o in merged}
    # Sorted paths: the library comes first, so the shared bytes keep its name.
    assert sorted(by_name) == ["libsystemd_core_restrict_fs", "libsystemd_core_socket_bind"]
    assert by_name["libsystemd_core_restrict_fs"].data == first
    assert by_name["libsystemd_core_restrict_fs"].also_in == (
        "/usr/sbin/restrictor-copy", "/usr/sbin/restrictor-libbpf",
    )
    assert by_name["libsystemd_core_socket_bind"].data == second
    assert by_name["libsystemd_core_socket_bind"].source == "/usr/lib/libsystemd-core-257.so"


def test_written_objects_load_in_the_inventory(tmp_path: Path) -> None:
    from harness.programs.inventory import load_object

    obj = compile_bpf(tmp_path, "opensnoop")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "opensnoop-libbpf").write_bytes(noise(13, 500) + obj)
    objects = real_corpus.merge_objects(real_corpus.scan_tree(tree, "libbpf-tools"))
    part = {"debian_arch": "amd64", "verified": "test", "note": "", "packages": []}
    out = tmp_path / "corpus"
    real_corpus.write_corpus(out, "trixie", {"x86_64": (part, objects)})
    loaded = load_object(out / "x86_64" / "opensnoop.bpf.o")
    assert loaded.name == "opensnoop"
    assert sorted(p.kind for p in loaded.probes) == ["kprobe", "tracepoint"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".corpus")] == []


@pytest.mark.parametrize(
    "path,stem",
    [
        ("/usr/sbin/execsnoop-libbpf", "execsnoop_libbpf"),
        ("/usr/lib/x86_64-linux-gnu/systemd/libsystemd-core-257.so", "libsystemd_core"),
        ("/usr/lib/libfoo.so.1.2", "libfoo"),
        ("/usr/lib/systemd/systemd-networkd", "systemd_networkd"),
    ],
)
def test_binary_stem(path: str, stem: str) -> None:
    assert real_corpus.binary_stem(path) == stem


def test_unnamed_objects_are_numbered() -> None:
    anon = real_corpus.Embedded(0, b"", 1, {}, "")
    named = real_corpus.Embedded(0, b"", 1, {}, "tool")
    assert real_corpus.resolve_names("/usr/bin/a-b", [anon]) == ["a_b"]
    assert real_corpus.resolve_names("/usr/bin/a-b", [named]) == ["tool"]
    assert real_corpus.resolve_names("/usr/bin/a-b", [anon, named, anon]) == ["a_b_0", "a_b_tool", "a_b_2"]


def test_unreachable_mirror_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise FetchError("mirror http://mirror.invalid/dists/trixie/InRelease unreachable")

    monkeypatch.setattr(real_corpus, "fetch_suite_index", refuse)
    out = tmp_path / "corpus"
    assert real_corpus.main([str(out), "--arch", "x86_64", "--mirror", "http://mirror.invalid"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err and "Traceback" not in err
    assert not out.exists()


def test_kept_binaries_are_the_ones_the_objects_came_from(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "opensnoop")
    trees = tmp_path / "work"
    sbin = trees / "arm64" / "libbpf-tools" / "usr/sbin"
    sbin.mkdir(parents=True)
    host = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + struct.pack("<H", 183) + noise(20, 500)
    (sbin / "opensnoop-libbpf").write_bytes(host + obj)
    (sbin / "opensnoop-copy").write_bytes(host + obj + b"x")
    (sbin / "unrelated").write_bytes(host)
    tree = trees / "arm64" / "libbpf-tools"
    objects = real_corpus.merge_objects(real_corpus.scan_tree(tree, "libbpf-tools"))
    bindir = tmp_path / "bins"
    real_corpus.write_binaries(bindir, trees, {"arm64": ({}, objects)})
    assert sorted(p.name for p in (bindir / "arm64").iterdir()) == ["opensnoop-copy", "opensnoop-libbpf"]
    assert (bindir / "arm64" / "opensnoop-libbpf").read_bytes() == host + obj
    assert (bindir / "arm64" / "opensnoop-libbpf").stat().st_mode & 0o111
    import json

    manifest = json.loads((bindir / "manifest.json").read_text())
    assert {b["source"] for b in manifest["arches"]["arm64"]} == {
        "/usr/sbin/opensnoop-libbpf", "/usr/sbin/opensnoop-copy",
    }
