"""Building bpf_progs/: *.bpf.c compiled per arch with clang against a vmlinux.h; *.bpf.o used as is."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.errors import BuildError, ConfigError
from harness.files import atomic_directory, remove_stale_temps
from harness.kernels.config import Arch

COMPILE_TIMEOUT = 120.0
BTFDUMP_TIMEOUT = 120.0
LIBBPF_INCLUDE = Path("/usr/include")  # libbpf-dev puts bpf/bpf_helpers.h here


@dataclass(frozen=True)
class Source:
    """One program file of bpf_progs/: a C source to compile or a prebuilt object."""

    path: Path
    name: str  # the object's stem, foo for foo.bpf.c / foo.bpf.o
    prebuilt: bool


@dataclass(frozen=True)
class Built:
    """The result of building one source for one arch: an object, or the compiler's message."""

    source: Source
    arch: str
    object: Path | None
    error: str = ""


def find_sources(directory: Path) -> list[Source]:
    """The *.bpf.c and *.bpf.o files of ``directory`` (a .bpf.c wins over a .bpf.o of the same name).

    Raises ConfigError when the directory does not exist or holds neither.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: BPF programs directory does not exist")
    found: dict[str, Source] = {}
    for path in sorted(directory.glob("*.bpf.o")):
        name = path.name[: -len(".bpf.o")]
        found[name] = Source(path, name, prebuilt=True)
    for path in sorted(directory.glob("*.bpf.c")):
        name = path.name[: -len(".bpf.c")]
        found[name] = Source(path, name, prebuilt=False)
    if not found:
        raise ConfigError(f"{directory}: no *.bpf.c or *.bpf.o files")
    return [found[k] for k in sorted(found)]


def build_argv(src: Path, out: Path, arch: Arch, includes: list[Path], clang: str = "clang") -> list[str]:
    """The clang command line for one BPF source (pure)."""
    argv = [clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{arch.target_arch}"]
    for inc in includes:
        argv += ["-I", str(inc)]
    argv += ["-Wno-unused-value", "-Wno-compare-distinct-pointer-types", "-c", str(src), "-o", str(out)]
    return argv


def first_error(stderr: str, limit: int = 3) -> str:
    """The compiler's first error lines, joined to one line."""
    lines = [line.strip() for line in stderr.splitlines() if "error" in line]
    if lines:
        return " | ".join(lines[:limit])
    rest = stderr.strip().splitlines()
    return rest[-1] if rest else "unknown error"


def _digest_inputs(src: Path, extra: list[Path], salt: str) -> str:
    h = hashlib.sha256(salt.encode())
    for path in [src, *extra]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:24]


def render_no_vmlinux_btf(arch: str, causes: list[str]) -> str:
    """Why no vmlinux.h could be generated for ``arch``: each kernel's own error first (the local
    image that does not exist, the download that failed), then what it prevented."""
    first = "; ".join(causes) or f"no kernel for {arch}"
    return f"{first} (so no vmlinux BTF for {arch} to generate vmlinux.h)"


def generate_vmlinux_h(btf: Path, out_dir: Path) -> Path:
    """``bpftool btf dump file BTF format c`` into out_dir/vmlinux.h (cached by the BTF's digest).

    Raises BuildError when bpftool is missing or fails.
    """
    digest = hashlib.sha256(btf.read_bytes()).hexdigest()[:24]
    target_dir = out_dir / f"vmlinux-{digest}"
    header = target_dir / "vmlinux.h"
    if header.exists():
        return header
    bpftool = shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists() else "")
    if not bpftool:
        raise BuildError("bpftool not found: needed to generate vmlinux.h (run ./setup.sh)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target_dir) + ".lock"):
        if header.exists():
            return header
        try:
            proc = subprocess.run(
                [bpftool, "btf", "dump", "file", str(btf), "format", "c"],
                capture_output=True,
                timeout=BTFDUMP_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"bpftool btf dump {btf} timed out") from exc
        if proc.returncode != 0:
            raise BuildError(f"bpftool btf dump {btf} failed: {proc.stderr.decode(errors='replace').strip()}")
        # A failed dump leaves no directory; one killed while writing leaves a temp the next clears.
        remove_stale_temps(target_dir)
        with atomic_directory(target_dir) as tmp:
            (tmp / header.name).write_bytes(proc.stdout)
    return header


def build_source(source: Source, arch: Arch, vmlinux_h: Path | None, out_dir: Path) -> Built:
    """Compile one source for ``arch`` into out_dir (cached by the digest of its inputs).

    A compiler failure is returned as a Built with an error (for that program only), not raised.
    """
    if source.prebuilt:
        return Built(source, arch.name, source.path)
    src_dir = source.path.parent
    headers = sorted(src_dir.glob("*.h"))
    includes = [src_dir]
    if vmlinux_h is not None and not (src_dir / "vmlinux.h").exists():
        includes.append(vmlinux_h.parent)
        headers.append(vmlinux_h)
    includes.append(LIBBPF_INCLUDE)
    clang = shutil.which("clang")
    if clang is None:
        return Built(source, arch.name, None, "clang not found (run ./setup.sh)")
    key = _digest_inputs(source.path, headers, f"{arch.name}|{clang}")
    obj = out_dir / arch.name / key / f"{source.name}.bpf.o"
    if obj.exists():
        return Built(source, arch.name, obj)
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_suffix(f".tmp{os.getpid()}")
    argv = build_argv(source.path, tmp, arch, includes, clang)
    try:
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=COMPILE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return Built(source, arch.name, None, f"clang timed out after {COMPILE_TIMEOUT:.0f} s")
        if proc.returncode != 0:
            return Built(source, arch.name, None, first_error(proc.stderr.decode(errors="replace")))
        tmp.rename(obj)
    finally:
        tmp.unlink(missing_ok=True)  # a failed or interrupted compile leaves no partial object
    return Built(source, arch.name, obj)
