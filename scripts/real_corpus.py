#!/usr/bin/env python3
"""Build a corpus of real BPF objects, cut out of the binaries of Debian packages that embed them.

    python scripts/real_corpus.py OUTDIR [--arch x86_64 --arch arm64] [--suite trixie] [--mirror URL]

For each arch the suite's Packages index is fetched and verified as the harness verifies kernels
(Release signature checked with gpgv, Packages.xz against Release's SHA256, each .deb against the
Packages SHA256). Every regular file the packages install is scanned for embedded ELF64 objects of
machine EM_BPF (libbpf skeletons carry their object verbatim); each one that opens and has program
sections is written as OUTDIR/<arch>/<name>.bpf.o, identical objects once. OUTDIR/manifest.json says
which package, version and binary each came from. OUTDIR is replaced whole, or left as it was.

``--keep-binaries BINDIR`` also keeps the verified binaries the objects came from, as
BINDIR/<arch>/<file name> (e.g. ``arm64/opensnoop-libbpf``), with BINDIR/manifest.json naming each
one's package and digest: the loaders a sidecar's ``own_loader`` can run in the guests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.errors import ConfigError, HarnessError, ObjectError
from harness.files import atomic_directory
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import resolve_arch
from harness.kernels.debian import (
    DebPackage,
    apt_source_files,
    fetch_file,
    fetch_suite_index,
    package_url,
    resolve_mirror,
)
from harness.kernels.fetch import run_dpkg_extract
from harness.programs.elf import open_elf
from harness.programs.inventory import EM_BPF, NON_PROGRAM_SECTIONS, parse_section

log = logging.getLogger("real_corpus")

MANIFEST_SCHEMA = 1
DEFAULT_SUITE = "trixie"
DEFAULT_ARCHES = ("x86_64", "arm64")
# libbpf-tools (src:bcc): one skeleton per tool. systemd 257: restrict-fs, restrict-ifaces and
# socket-bind in libsystemd-core (package libsystemd-shared), sysctl-monitor in systemd-networkd
# (systemd), userns-restrict in systemd-nsresourced (systemd-container).
DEFAULT_PACKAGES = ("libbpf-tools", "libsystemd-shared", "systemd", "systemd-container")

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EHDR_SIZE = 64
SHDR_SIZE = 64
PHDR_SIZE = 56
SHT_NOBITS = 8
MAX_SECTIONS = 0xFF00  # SHN_LORESERVE: more would need extended numbering, which BPF objects never use

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]+")
# The source file a BPF object was compiled from: BTF line info keeps its path among its strings.
_SOURCE_NAME = re.compile(rb"([A-Za-z0-9_.+-]+)\.bpf\.c(?![A-Za-z0-9_])")
# A shared library's version: libsystemd-core-257.so -> libsystemd-core.
_LIB_VERSION = re.compile(r"(-[0-9][0-9.]*)?\.so(\.[0-9.]+)?$")


@dataclass(frozen=True)
class Embedded:
    """A BPF ELF object found inside a file: where it starts and its bytes."""

    offset: int
    data: bytes
    programs: int  # global functions in program sections
    hooks: dict[str, int]  # hook kind (the harness's; "unknown" for others) -> programs
    label: str  # the object's own name (its source file's, e.g. restrict_fs), "" when not found


@dataclass(frozen=True)
class CorpusObject:
    """One object of the corpus: its name, bytes and where they came from."""

    name: str  # file name stem: <name>.bpf.o
    package: str
    source: str  # the binary, as installed by the package (/usr/sbin/execsnoop-libbpf)
    offset: int
    data: bytes
    sha256: str
    programs: int
    hooks: dict[str, int]
    also_in: tuple[str, ...] = ()  # other binaries that embed the same bytes

    def serialize(self, arch: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": f"{arch}/{self.name}.bpf.o",
            "package": self.package,
            "source": self.source,
            "offset": self.offset,
            "sha256": self.sha256,
            "size": len(self.data),
            "programs": self.programs,
            "hooks": dict(sorted(self.hooks.items())),
            "also_in": list(self.also_in),
        }


# An arch's manifest part (its packages and how they were verified) and its objects.
ArchCorpus = tuple[dict[str, Any], list[CorpusObject]]


# ---------------------------------------------------------------- finding objects in bytes


def parse_elf_extent(data: bytes, offset: int) -> int | None:
    """The size of the little-endian ELF64 EM_BPF object whose header starts at ``offset`` of
    ``data`` (the furthest of its headers, section headers and section contents), or None when the
    bytes there are not one or it would run past the end of ``data`` (pure)."""
    end = len(data)
    if offset + EHDR_SIZE > end or data[offset:offset + 4] != ELF_MAGIC:
        return None
    if data[offset + 4] != ELFCLASS64 or data[offset + 5] != ELFDATA2LSB:
        return None
    (machine,) = struct.unpack_from("<H", data, offset + 18)
    if machine != EM_BPF:
        return None
    phoff, shoff = struct.unpack_from("<QQ", data, offset + 0x20)
    ehsize, phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<6H", data, offset + 0x34)
    if ehsize != EHDR_SIZE or shentsize != SHDR_SIZE or not 0 < shnum < MAX_SECTIONS or shstrndx >= shnum:
        return None
    if shoff < EHDR_SIZE:
        return None
    extent = shoff + shnum * shentsize
    if phnum:
        if phentsize != PHDR_SIZE:
            return None
        extent = max(extent, phoff + phnum * phentsize)
    if offset + extent > end:
        return None
    for i in range(shnum):
        sh_type, _flags, _addr, sh_offset, sh_size = struct.unpack_from(
            "<IQQQQ", data, offset + shoff + i * shentsize + 4
        )
        if sh_type != SHT_NOBITS and sh_size:
            extent = max(extent, sh_offset + sh_size)
    return extent if offset + extent <= end else None


def _program_sections(elf: ELFFile) -> set[int]:
    """Indexes of the sections that hold programs: executable, not empty, not .text."""
    found: set[int] = set()
    for index, section in enumerate(elf.iter_sections()):
        if section["sh_type"] != "SHT_PROGBITS" or not section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            continue
        if section.name in NON_PROGRAM_SECTIONS or not section["sh_size"]:
            continue
        found.add(index)
    return found


def parse_label(data: bytes, elf: ELFFile) -> str:
    """The object's own name, from the source file it was compiled from (``restrict-fs.bpf.c`` ->
    ``restrict_fs``): the STT_FILE symbol, else a ``*.bpf.c`` path among its BTF strings; "" when
    neither names one (pure)."""
    symtab = elf.get_section_by_name(".symtab")
    if isinstance(symtab, SymbolTableSection):
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] == "STT_FILE" and sym.name.endswith(".bpf.c"):
                return clean_name(Path(sym.name).name[: -len(".bpf.c")])
    btf = elf.get_section_by_name(".BTF")
    where = btf.data() if btf is not None else data
    found = _SOURCE_NAME.search(where)
    return clean_name(found.group(1).decode("ascii")) if found else ""


def parse_bpf_object(data: bytes, name: str = "BPF object") -> Embedded:
    """Check that ``data`` is a BPF ELF object with programs and describe it (pure).

    Raises ObjectError when pyelftools cannot read it, it is not EM_BPF or it has no program section.
    """
    with open_elf(data, name) as elf:
        if elf["e_machine"] not in ("EM_BPF", EM_BPF):
            raise ObjectError(f"{name}: not a BPF object (ELF machine {elf['e_machine']})")
        sections = _program_sections(elf)
        if not sections:
            raise ObjectError(f"{name}: BPF object has no program sections")
        hooks: Counter[str] = Counter()
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for sym in symtab.iter_symbols():
                info = sym["st_info"]
                if info["type"] != "STT_FUNC" or info["bind"] != "STB_GLOBAL":
                    continue
                if sym["st_shndx"] not in sections:
                    continue
                parsed = parse_section(elf.get_section(sym["st_shndx"]).name)
                hooks[parsed[0] if parsed else "unknown"] += 1
        # Reading every section checks that pyelftools can walk the whole object.
        for section in elf.iter_sections():
            section.data()
        label = parse_label(data, elf)
    return Embedded(0, data, sum(hooks.values()), dict(hooks), label)


def parse_embedded_objects(data: bytes, name: str = "file") -> list[Embedded]:
    """Every BPF object embedded in ``data``, in the order they appear (pure).

    An ELF magic that does not start a complete, readable BPF object with programs is skipped.
    """
    found: list[Embedded] = []
    at = data.find(ELF_MAGIC)
    while at >= 0:
        size = parse_elf_extent(data, at)
        if size is not None:
            try:
                obj = parse_bpf_object(data[at:at + size], f"{name}+{at:#x}")
            except ObjectError as exc:
                log.debug("skipped: %s", exc)
            else:
                found.append(Embedded(at, obj.data, obj.programs, obj.hooks, obj.label))
                at = data.find(ELF_MAGIC, at + size)
                continue
        at = data.find(ELF_MAGIC, at + 1)
    return found


# ---------------------------------------------------------------- names


def clean_name(text: str) -> str:
    """``text`` with every run of characters other than [A-Za-z0-9_] turned into one ``_`` (pure)."""
    return _NAME_CHARS.sub("_", text).strip("_")


def binary_stem(path: str) -> str:
    """A binary's name without its library version: ``libsystemd-core-257.so`` -> ``libsystemd_core``."""
    return clean_name(_LIB_VERSION.sub("", Path(path).name)) or "object"


def resolve_names(source: str, objects: Sequence[Embedded]) -> list[str]:
    """The names of the objects embedded in one binary (pure): a lone object takes its own name
    (else the binary's); several take ``<binary>_<own name>`` (else ``<binary>_<n>``)."""
    stem = binary_stem(source)
    if len(objects) == 1:
        return [objects[0].label or stem]
    names: list[str] = []
    for n, obj in enumerate(objects):
        names.append(f"{stem}_{obj.label or n}")
    return names


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"


# ---------------------------------------------------------------- scanning a package's tree


def _regular_files(tree: Path) -> Iterator[Path]:
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def scan_tree(tree: Path, package: str) -> list[CorpusObject]:
    """The BPF objects embedded in the regular files below ``tree`` (an unpacked package), named,
    identical ones once. Raises ObjectError when a file cannot be read."""
    out: list[CorpusObject] = []
    for path in _regular_files(tree):
        source = "/" + path.relative_to(tree).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ObjectError(f"{package}: {source}: cannot read: {exc.strerror}") from exc
        if ELF_MAGIC not in data:
            continue
        objects = parse_embedded_objects(data, source)
        for obj, name in zip(objects, resolve_names(source, objects)):
            out.append(
                CorpusObject(
                    name=name, package=package, source=source, offset=obj.offset, data=obj.data,
                    sha256=hashlib.sha256(obj.data).hexdigest(), programs=obj.programs, hooks=obj.hooks,
                )
            )
    return out


def merge_objects(found: Sequence[CorpusObject]) -> list[CorpusObject]:
    """``found`` with identical objects (same sha256) kept once, the others' binaries in ``also_in``,
    and names made unique (pure)."""
    first: dict[str, CorpusObject] = {}
    others: dict[str, list[str]] = {}
    for obj in found:
        if obj.sha256 in first:
            others[obj.sha256].append(obj.source)
        else:
            first[obj.sha256] = obj
            others[obj.sha256] = []
    taken: set[str] = set()
    out: list[CorpusObject] = []
    for digest, obj in first.items():
        name = _unique(obj.name, taken)
        taken.add(name)
        out.append(
            CorpusObject(
                name=name, package=obj.package, source=obj.source, offset=obj.offset, data=obj.data,
                sha256=digest, programs=obj.programs, hooks=obj.hooks, also_in=tuple(others[digest]),
            )
        )
    return out


# ---------------------------------------------------------------- the archive


def fetch_arch_corpus(
    mirror: str, suite: str, arch_name: str, packages: Sequence[str], cache_root: Path, work: Path
) -> ArchCorpus:
    """Download, verify and unpack ``packages`` of ``suite`` for one arch and collect their objects.

    Returns the arch's manifest part (without objects) and its objects. Raises HarnessError
    subclasses: ConfigError (keyring, a package the suite lacks), FetchError, IntegrityError.
    """
    arch = resolve_arch(arch_name)
    wanted = set(packages)
    index = fetch_suite_index(mirror, suite, arch.debian, cache_root / "index", wanted=wanted.__contains__)
    chosen: list[DebPackage] = []
    for name in packages:
        pkg = index.highest(name)
        if pkg is None:
            raise ConfigError(f"suite {suite} ({arch.debian}) has no package {name!r}")
        chosen.append(pkg)
    found: list[CorpusObject] = []
    described: list[dict[str, Any]] = []
    for pkg in chosen:
        deb = work / arch.name / Path(pkg.filename).name
        digest = fetch_file(
            package_url(mirror, pkg), deb, what=f"{pkg.name} {pkg.version} ({arch.debian})",
            sha256=pkg.sha256, size=pkg.size,
        )
        tree = work / arch.name / pkg.name
        run_dpkg_extract(deb, tree)
        objects = scan_tree(tree, pkg.name)
        if objects:
            log.info("%s %s (%s): %d embedded BPF objects", pkg.name, pkg.version, arch.debian, len(objects))
        else:
            log.warning("%s %s (%s): no embedded BPF objects", pkg.name, pkg.version, arch.debian)
        found.extend(objects)
        described.append(
            {"name": pkg.name, "version": pkg.version, "arch": pkg.arch, "filename": pkg.filename,
             "size": pkg.size, "sha256": digest}
        )
    part = {
        "debian_arch": arch.debian,
        "verified": f"{index.verified}; Packages.xz SHA256 from Release; .deb SHA256 from Packages",
        "note": index.note,
        "packages": described,
    }
    return part, merge_objects(found)


def write_corpus(outdir: Path, suite: str, arches: dict[str, ArchCorpus]) -> None:
    """Write every arch's objects and manifest.json into ``outdir``, replacing it whole; raises OSError."""
    outdir.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"schema": MANIFEST_SCHEMA, "suite": suite, "arches": {}}
    with atomic_directory(outdir) as tmp:
        for arch, (part, objects) in arches.items():
            (tmp / arch).mkdir()
            for obj in objects:
                (tmp / arch / f"{obj.name}.bpf.o").write_bytes(obj.data)
            doc["arches"][arch] = {**part, "objects": [obj.serialize(arch) for obj in objects]}
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")


def binary_sources(objects: Sequence[CorpusObject]) -> list[tuple[str, str]]:
    """(package, installed path) of every binary that embeds one of ``objects``, each once, in order
    (pure)."""
    found: dict[str, str] = {}
    for obj in objects:
        for source in (obj.source, *obj.also_in):
            found.setdefault(source, obj.package)
    return [(pkg, source) for source, pkg in found.items()]


def write_binaries(bindir: Path, trees: Path, arches: dict[str, ArchCorpus]) -> None:
    """Copy the binaries the objects came from out of the unpacked packages under ``trees``
    (``<arch>/<package>/...``, as fetch_arch_corpus leaves them) into ``bindir/<arch>/``, with a
    manifest; ``bindir`` is replaced whole, or left as it was. Raises OSError, ConfigError when two
    binaries of one arch have the same file name."""
    bindir.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"schema": MANIFEST_SCHEMA, "arches": {}}
    with atomic_directory(bindir) as tmp:
        for arch, (_part, objects) in arches.items():
            (tmp / arch).mkdir()
            kept: list[dict[str, Any]] = []
            for package, source in binary_sources(objects):
                name = Path(source).name
                dest = tmp / arch / name
                if dest.exists():
                    raise ConfigError(f"{arch}: two binaries are called {name!r}; the second is {source}")
                data = (trees / arch / package / source.lstrip("/")).read_bytes()
                dest.write_bytes(data)
                dest.chmod(0o755)
                kept.append({"file": f"{arch}/{name}", "package": package, "source": source,
                             "sha256": hashlib.sha256(data).hexdigest()})
            doc["arches"][arch] = kept
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")


def render_summary(arches: dict[str, ArchCorpus]) -> str:
    """One line per arch and package: version, objects, programs (pure)."""
    lines: list[str] = []
    for arch, (part, objects) in arches.items():
        for pkg in part["packages"]:
            mine = [o for o in objects if o.package == pkg["name"]]
            lines.append(
                f"{arch} {pkg['name']} {pkg['version']}: {len(mine)} objects, "
                f"{sum(o.programs for o in mine)} programs"
            )
        hooks: Counter[str] = Counter()
        for obj in objects:
            hooks.update(obj.hooks)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(hooks.items()))
        lines.append(f"{arch}: {len(objects)} objects, programs by hook kind: {kinds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--arch", action="append", dest="arches", help="x86_64 or arm64 (repeatable)")
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    parser.add_argument("--mirror", default="", help="default: $BPF_MATRIX_MIRROR, else the apt sources'")
    parser.add_argument("--package", action="append", dest="packages",
                        help=f"repeatable; default: {' '.join(DEFAULT_PACKAGES)}")
    parser.add_argument("--keep-binaries", type=Path, metavar="BINDIR",
                        help="also keep the binaries the objects came from in BINDIR/<arch>/")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="real_corpus: %(message)s")
    packages = tuple(dict.fromkeys(args.packages or DEFAULT_PACKAGES))
    try:
        arches = [resolve_arch(a).name for a in dict.fromkeys(args.arches or DEFAULT_ARCHES)]
        mirror = resolve_mirror(args.mirror, os.environ, apt_source_files())
        cache_root = resolve_cache_root()
        results: dict[str, ArchCorpus] = {}
        with tempfile.TemporaryDirectory(prefix="real-corpus-") as work:
            for arch in arches:
                results[arch] = fetch_arch_corpus(mirror, args.suite, arch, packages, cache_root, Path(work))
            if args.keep_binaries is not None:
                write_binaries(args.keep_binaries, Path(work), results)
        write_corpus(args.outdir, args.suite, results)
    except HarnessError as exc:
        print(f"real_corpus: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"real_corpus: {exc.filename or args.outdir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("real_corpus: interrupted; nothing written", file=sys.stderr)
        return 130
    print(render_summary(results))
    print(f"wrote {args.outdir}" + (f" and {args.keep_binaries}" if args.keep_binaries else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
