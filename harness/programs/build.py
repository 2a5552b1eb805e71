"""Building bpf_progs/: *.bpf.c compiled per arch with clang against a vmlinux.h; *.bpf.o used as is;
per-arch prebuilt objects (``<arch>/*.bpf.o``); objects embedded in executables and shared libraries
cut out into the build directory."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.errors import BuildError, ConfigError
from harness.files import atomic_directory, remove_stale_temps
from harness.kernels.config import Arch, arch_names, resolve_elf_machine
from harness.programs.embedded import ELF_MAGIC, parse_embedded_objects, resolve_names

COMPILE_TIMEOUT = 120.0
BTFDUMP_TIMEOUT = 120.0
LIBBPF_INCLUDE = Path("/usr/include")  # libbpf-dev puts bpf/bpf_helpers.h here


@dataclass(frozen=True)
class Source:
    """One program of bpf_progs/: a C source to compile, a prebuilt object, or an object embedded in
    a binary (an executable or shared library)."""

    path: Path
    name: str  # the object's stem, foo for foo.bpf.c / foo.bpf.o, <binary>@<own name> when embedded
    prebuilt: bool
    arch: str = ""  # the only arch it is for (a per-arch directory, a binary's machine); "": every arch
    offset: int = -1  # embedded: where the object starts in ``path`` (-1: the whole file)
    size: int = 0  # embedded: its length
    sha256: str = ""  # embedded: the object's digest

    @property
    def embedded(self) -> bool:
        return self.offset >= 0


@dataclass(frozen=True)
class Built:
    """The result of building one source for one arch: an object, or the compiler's message."""

    source: Source
    arch: str
    object: Path | None
    error: str = ""


ET_EXEC, ET_DYN = 2, 3
# Files of bpf_progs/ that are never binaries to look into.
NOT_BINARIES = (".bpf.c", ".bpf.o", ".c", ".h", ".yaml", ".yml", ".md", ".txt", ".json")


def find_sources(directory: Path, arch: Arch | None = None) -> list[Source]:
    """The programs of ``directory`` for ``arch``: its *.bpf.c and *.bpf.o files (a .bpf.c wins over
    a .bpf.o of the same name), the BPF objects embedded in its executables and shared libraries, and
    those of its per-arch directory (``x86_64/``, ``arm64/`` or an alias), which win over the flat ones
    of the same name. ``directory`` may also be one binary. Without ``arch``: every program of any arch
    (each name once), e.g. to check the sidecars.

    A binary is for the arch of its ELF machine only. Raises ConfigError when ``directory`` does not
    exist or holds no program, when a binary in a per-arch directory is for another arch, and when
    a binary given alone embeds no BPF object.
    """
    if directory.is_file():
        if read_elf_machine(directory) is None:
            raise ConfigError(
                f"{directory}: not a directory of BPF programs, nor an executable or shared library"
            )
        found = _binary_sources(directory, None)
        if not found:
            raise ConfigError(f"{directory}: no BPF object embedded in it (no ELF image of machine EM_BPF)")
        return _for_arch({}, found, arch)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: BPF programs directory does not exist")
    flat = _dir_sources(directory, None)
    per_arch: list[Source] = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        sub_arch = arch_names().get(sub.name)
        if sub_arch is not None:
            per_arch.extend(_dir_sources(sub, sub_arch).values())
    if not flat and not per_arch:
        raise ConfigError(
            f"{directory}: no *.bpf.c or *.bpf.o files, no binaries embedding BPF objects, and no "
            f"per-arch directory ({', '.join(arch_names())}) with any"
        )
    return _for_arch(flat, per_arch, arch)


def _for_arch(flat: dict[str, Source], per_arch: list[Source], arch: Arch | None) -> list[Source]:
    """The sources ``arch`` builds: the flat ones for every arch, then the arch's own over them."""
    chosen = {n: s for n, s in flat.items() if not s.arch or arch is None or s.arch == arch.name}
    for source in per_arch:
        if arch is None:
            chosen.setdefault(source.name, source)
        elif source.arch == arch.name:
            chosen[source.name] = source
    return [chosen[k] for k in sorted(chosen)]


def _dir_sources(directory: Path, arch: Arch | None) -> dict[str, Source]:
    """The programs directly in ``directory``: for ``arch`` only (a per-arch directory), else flat."""
    found: dict[str, Source] = {}
    tag = arch.name if arch is not None else ""
    for path in sorted(directory.glob("*.bpf.o")):
        name = path.name[: -len(".bpf.o")]
        found[name] = Source(path, name, prebuilt=True, arch=tag)
    if arch is None:
        for path in sorted(directory.glob("*.bpf.c")):
            name = path.name[: -len(".bpf.c")]
            found[name] = Source(path, name, prebuilt=False)
    for path in sorted(directory.iterdir()):
        if path.name.endswith(NOT_BINARIES) or not path.is_file():
            continue
        for source in _binary_sources(path, arch):
            found.setdefault(source.name, source)
    return found


def read_elf_machine(path: Path) -> int | None:
    """The ELF machine of an executable or shared library at ``path``; None for any other file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != ELF_MAGIC or head[5] not in (1, 2):
        return None
    order = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(order + "HH", head, 16)
    return e_machine if e_type in (ET_EXEC, ET_DYN) else None


def _binary_sources(path: Path, arch: Arch | None) -> list[Source]:
    """The BPF objects embedded in the binary at ``path`` (none when it is no executable or shared
    library), for the arch of its ELF machine. Raises ConfigError when ``arch`` (its per-arch
    directory's) is another, or the harness boots no guest of its machine."""
    machine = read_elf_machine(path)
    if machine is None:
        return []
    stat = path.stat()
    embedded = _scan_binary(str(path), stat.st_mtime_ns, stat.st_size)
    if not embedded:
        return []
    own = resolve_elf_machine(machine)
    if own is None:
        raise ConfigError(f"{path}: a binary for ELF machine {machine}, which no guest of the harness runs")
    if arch is not None and own != arch:
        raise ConfigError(f"{path}: a {own.name} binary in the {arch.name} directory {path.parent}")
    return [
        Source(path, name, prebuilt=True, arch=own.name, offset=offset, size=size, sha256=digest)
        for name, offset, size, digest in embedded
    ]


@functools.lru_cache(maxsize=256)
def _scan_binary(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, int, int, str], ...]:
    """(name, offset, size, sha256) of each BPF object embedded in a binary; cached per version of
    the file (its mtime and size are part of the key): a run asks once per arch and for the sidecars."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    objects = parse_embedded_objects(data, path)
    names = resolve_names(path, objects, qualified=True)
    return tuple(
        (name, obj.offset, len(obj.data), hashlib.sha256(obj.data).hexdigest())
        for name, obj in zip(names, objects)
    )


def extract_embedded(source: Source, out_dir: Path) -> Path:
    """The object embedded in ``source``'s binary as ``<name>.bpf.o`` under ``out_dir`` (written once,
    atomically, keyed by its digest). Raises BuildError when the binary changed since it was scanned."""
    obj = out_dir / "embedded" / source.sha256[:24] / f"{source.name}.bpf.o"
    if obj.exists():
        return obj
    try:
        with source.path.open("rb") as fh:
            fh.seek(source.offset)
            data = fh.read(source.size)
    except OSError as exc:
        raise BuildError(f"{source.path}: cannot read: {exc.strerror}") from exc
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise BuildError(f"{source.path}: changed while the run read it (embedded object {source.name})")
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_suffix(f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.rename(obj)
    finally:
        tmp.unlink(missing_ok=True)
    return obj


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
    if source.embedded:
        try:
            return Built(source, arch.name, extract_embedded(source, out_dir))
        except BuildError as exc:
            return Built(source, arch.name, None, str(exc))
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
