#!/usr/bin/env python3
"""Build a corpus of real BPF objects, cut out of the binaries of Debian packages that embed them.

    python scripts/real_corpus.py OUTDIR [--arch x86_64 --arch arm64] [--suite trixie] [--mirror URL]
                                         [--binaries BINDIR]

For each arch the suite's Packages index is fetched and verified as the harness verifies kernels
(Release signature checked with gpgv, Packages.xz against Release's SHA256, each .deb against the
Packages SHA256). Every regular file the packages install is scanned for embedded ELF64 objects of
machine EM_BPF (libbpf skeletons carry their object verbatim); each one that opens and has program
sections is written as OUTDIR/<arch>/<name>.bpf.o, identical objects once. OUTDIR/manifest.json says
which package, version and binary each came from. OUTDIR is replaced whole, or left as it was.

With --binaries BINDIR, the verified binaries that embed objects are kept too, as
BINDIR/<arch>/<file name> (e.g. BINDIR/x86_64/opensnoop-libbpf), replaced whole like OUTDIR: what
`--bpf-progs BINDIR/x86_64` (or BINDIR itself, per-arch) tests as a release's binaries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from harness.programs.embedded import (
    ELF_MAGIC,
    parse_embedded_objects,
    resolve_names,
)

log = logging.getLogger("real_corpus")

MANIFEST_SCHEMA = 1
DEFAULT_SUITE = "trixie"
DEFAULT_ARCHES = ("x86_64", "arm64")
# libbpf-tools (src:bcc): one skeleton per tool. systemd 257: restrict-fs, restrict-ifaces and
# socket-bind in libsystemd-core (package libsystemd-shared), sysctl-monitor in systemd-networkd
# (systemd), userns-restrict in systemd-nsresourced (systemd-container).
DEFAULT_PACKAGES = ("libbpf-tools", "libsystemd-shared", "systemd", "systemd-container")

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


def embedding_files(tree: Path, found: Sequence[CorpusObject]) -> list[Path]:
    """The files below ``tree`` that ``found`` came from (the binaries that embed objects)."""
    return sorted({tree / obj.source.lstrip("/") for obj in found})


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
    mirror: str, suite: str, arch_name: str, packages: Sequence[str], cache_root: Path, work: Path,
    keep: Path | None = None,
) -> ArchCorpus:
    """Download, verify and unpack ``packages`` of ``suite`` for one arch and collect their objects;
    with ``keep``, the binaries that embed them are copied into it.

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
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for binary in embedding_files(tree, objects):
                shutil.copy2(binary, keep / binary.name)
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


def write_binaries(bindir: Path, kept: Path) -> None:
    """Move the kept binaries (``kept/<arch>/``) to ``bindir``, replacing it whole; raises OSError."""
    bindir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(bindir) as tmp:
        for arch_dir in sorted(p for p in kept.iterdir() if p.is_dir()):
            shutil.copytree(arch_dir, tmp / arch_dir.name)


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
    parser.add_argument("--binaries", type=Path, metavar="BINDIR",
                        help="also keep the binaries that embed objects, as BINDIR/<arch>/<name>")
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
            kept = Path(work) / "binaries"
            for arch in arches:
                keep = kept / arch if args.binaries else None
                results[arch] = fetch_arch_corpus(
                    mirror, args.suite, arch, packages, cache_root, Path(work), keep
                )
            write_corpus(args.outdir, args.suite, results)
            if args.binaries:
                write_binaries(args.binaries, kept)
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
    print(f"wrote {args.outdir}" + (f" and {args.binaries}" if args.binaries else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
