"""The programs step of a run: bpf_progs/ built per arch, their probes and their CO-RE relocation index."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.btf.bpf_object import load_object_code
from harness.btf.core import CoreRelo
from harness.errors import HarnessError, ObjectError
from harness.kernels.config import Arch, KernelsConfig, KernelSpec
from harness.kernels.fetch import KernelBuild
from harness.kernels.version import version_key
from harness.programs.build import build_source, find_sources, generate_vmlinux_h
from harness.programs.flow import ProgramCode
from harness.programs.hooks import HOOKS, USER_KINDS
from harness.programs.inventory import BPFObject, load_object
from harness.programs.uses import ProgramUses, load_object_uses
from harness.report.results import Check, Probe

# Pseudo-program of a source that produced no object: its row carries the build error.
BUILD_PROGRAM = "(build)"
# Hook kind of a program whose section names a type the harness cannot check (socket, xdp, ...).
UNKNOWN_KIND = "unknown"


@dataclass(frozen=True)
class ArchObjects:
    """The programs of bpf_progs/ built for one arch: objects, their probes, and what failed."""

    arch: str
    objects: tuple[BPFObject, ...]
    errors: Mapping[str, str]  # object name -> one-line build or inventory error
    vmlinux_h: str = ""  # where the vmlinux.h came from
    relocated: frozenset[tuple[str, str]] = frozenset()  # (object, program) with CO-RE relocations
    # object name -> program -> its CO-RE relocations (subprograms' included)
    relocations: Mapping[str, Mapping[str, Sequence[CoreRelo]]] = field(default_factory=dict)
    # object name -> why its CO-RE relocations could not be read (its layout and core cells are ERROR)
    relocation_errors: Mapping[str, str] = field(default_factory=dict)
    # objects the programs directory has for other arches only (prebuilt per arch, or in a binary of
    # another arch): their cells on this arch are SKIP
    absent: frozenset[str] = frozenset()
    digests: Mapping[str, str] = field(default_factory=dict)  # object name -> sha256 of what was loaded
    # object name -> program -> the helpers, kfuncs and maps it uses (its subprograms' included)
    uses: Mapping[str, Mapping[str, ProgramUses]] = field(default_factory=dict)
    # object name -> why those could not be read (its features cells are ERROR)
    uses_errors: Mapping[str, str] = field(default_factory=dict)
    # object name -> program -> its instructions and subprograms (what it reads, what guards what)
    code: Mapping[str, Mapping[str, ProgramCode]] = field(default_factory=dict)

    def applies(self, probe: Probe, check: Check) -> bool:
        """Whether ``check`` says anything about ``probe``: tests are generated only where it does."""
        from harness.checks.drift import resolve_btf_name

        if probe.program == BUILD_PROGRAM:
            return check in (Check.SYMBOL, Check.LOAD)
        if check in (Check.LAYOUT, Check.CORE):
            return (probe.object, probe.program) in self.relocated or probe.object in self.relocation_errors
        if check == Check.PROTOTYPE:
            return resolve_btf_name(probe.kind, probe.target) is not None
        if check == Check.TP_FORMAT:
            return probe.kind == "tracepoint"
        if check == Check.UPROBE:
            return probe.kind in USER_KINDS
        if check == Check.FEATURES:
            return probe.kind in HOOKS
        return True

    def probes(self) -> list[Probe]:
        found = [p for o in self.objects for p in o.probes]
        found += [Probe(o.name, prog, sec, UNKNOWN_KIND, "") for o in self.objects for prog, sec in o.unknown]
        found += [Probe(name, BUILD_PROGRAM, "", "build", "") for name in sorted(self.errors)]
        return found

    def code_of(self, probe: Probe) -> ProgramCode | None:
        """The instructions of ``probe``'s program (None when its object's code could not be read)."""
        return self.code.get(probe.object, {}).get(probe.program)

    def relocation_error(self, probe: Probe, check: Check) -> str:
        """Why a layout or core cell of ``probe`` cannot be decided (empty when it can)."""
        if check not in (Check.LAYOUT, Check.CORE) or probe.object not in self.relocation_errors:
            return ""
        return self.relocation_errors[probe.object]

    def program_uses(self, probe: Probe) -> ProgramUses | None:
        """What ``probe``'s program uses of the kernel; None when its object could not be read."""
        if probe.object in self.uses_errors:
            return None
        return self.uses.get(probe.object, {}).get(probe.program, ProgramUses())


def build_objects(
    progs_dir: Path, arch: Arch, build_dir: Path, vmlinux_btf: Callable[[], Path]
) -> ArchObjects:
    """bpf_progs/ built for ``arch`` into build_dir (cached on disk), inventoried and indexed.

    ``vmlinux_btf`` gives the BTF to generate vmlinux.h from when bpf_progs/ has none (raises
    HarnessError): every source to compile is then an error with its message.
    """
    sources = find_sources(progs_dir, arch)
    absent = frozenset({s.name for s in find_sources(progs_dir)} - {s.name for s in sources})
    vmlinux_h: Path | None = None
    where = ""
    errors: dict[str, str] = {}
    if any(not s.prebuilt for s in sources):
        if (progs_dir / "vmlinux.h").exists():
            where = str(progs_dir / "vmlinux.h")
        else:
            try:
                btf = vmlinux_btf()
                vmlinux_h = generate_vmlinux_h(btf, build_dir)
                where = str(btf)
            except HarnessError as exc:
                for s in sources:
                    if not s.prebuilt:
                        errors[s.name] = str(exc)
    objects: list[BPFObject] = []
    # clang, one per core: a compile against a generated vmlinux.h takes a second or more.
    todo = [s for s in sources if s.name not in errors]
    with ThreadPoolExecutor(max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        builds = list(pool.map(lambda s: build_source(s, arch, vmlinux_h, build_dir), todo))
    for source, built in zip(todo, builds):
        if built.object is None:
            errors[source.name] = (
                built.error if source.embedded else f"{source.path.name} does not compile: {built.error}"
            )
            continue
        try:
            objects.append(load_object(built.object))
        except ObjectError as exc:
            errors[source.name] = str(exc)
    index = index_relocations(objects)
    relocated = frozenset(
        (name, prog) for name, progs in index.relocations.items() for prog, items in progs.items() if items
    )
    digests = {o.name: hashlib.sha256(o.path.read_bytes()).hexdigest() for o in objects}
    uses, uses_errors = index_uses(objects)
    return ArchObjects(
        arch.name,
        tuple(objects),
        errors,
        where,
        relocated,
        index.relocations,
        index.errors,
        absent=absent,
        digests=digests,
        uses=uses,
        uses_errors=uses_errors,
        code=index.code,
    )


def with_loader_targets(built: ArchObjects, targets: Callable[[str], Mapping[str, str]]) -> ArchObjects:
    """``built`` with each probe's target replaced by the function its loader attaches it to (the
    sidecar's ``loader: attach_targets:``): the offline checks then look at the real target, not a
    placeholder such as ``fentry/dummy_file_open``. ``targets`` gives them by object name."""
    objects: list[BPFObject] = []
    for obj in built.objects:
        given = targets(obj.name)
        if given:
            probes = tuple(replace(p, target=given.get(p.program, p.target)) for p in obj.probes)
            obj = replace(obj, probes=probes)
        objects.append(obj)
    return replace(built, objects=tuple(objects))


@dataclass(frozen=True)
class CodeIndex:
    """The CO-RE relocations and the code of each object by program, and why an object's could not be read."""

    relocations: dict[str, dict[str, list[CoreRelo]]]
    errors: dict[str, str]
    code: dict[str, dict[str, ProgramCode]]


def index_relocations(objects: Iterable[BPFObject]) -> CodeIndex:
    """The CO-RE relocations and code of each object by program (see CodeIndex)."""
    index = CodeIndex({}, {}, {})
    for obj in objects:
        try:
            found = load_object_code(obj.path)
        except HarnessError as exc:
            index.errors[obj.name] = f"CO-RE relocations unreadable: {exc}"
            continue
        index.relocations[obj.name] = found.relocations
        index.code[obj.name] = found.programs
    return index


def index_uses(
    objects: Iterable[BPFObject],
) -> tuple[dict[str, dict[str, ProgramUses]], dict[str, str]]:
    """What each object's programs use of the kernel, and why that of an object could not be read."""
    uses: dict[str, dict[str, ProgramUses]] = {}
    errors: dict[str, str] = {}
    for obj in objects:
        try:
            uses[obj.name] = load_object_uses(obj.path)
        except HarnessError as exc:
            errors[obj.name] = f"helpers and maps unreadable: {exc}"
    return uses, errors


def probes_with_builds(
    arch: Arch, arches: Sequence[Arch], objects: Callable[[Arch], ArchObjects]
) -> list[tuple[Probe, ArchObjects]]:
    """Every probe of ``arch``, each with the build that says which checks apply to it.

    An object that did not build for ``arch`` shows the probes it has on another arch of the run
    (their cells on ``arch`` are ERROR with the build error); built nowhere, it is a "(build)" row.
    One the programs directory has for other arches only shows their probes too (SKIP cells).
    """
    built = objects(arch)
    found = [(p, built) for p in built.probes() if p.program != BUILD_PROGRAM]
    for name in sorted(built.absent):
        for other in arches:
            if other == arch:
                continue
            other_built = objects(other)
            obj = next((o for o in other_built.objects if o.name == name), None)
            if obj is not None:
                found += [(p, other_built) for p in obj.probes]
                break
    for name in sorted(built.errors):
        borrowed: list[tuple[Probe, ArchObjects]] = []
        for other in arches:
            other_built = objects(other) if other != arch else built
            for obj in other_built.objects:
                if obj.name == name and not borrowed:
                    borrowed = [(p, other_built) for p in obj.probes]
        found += borrowed or [(Probe(name, BUILD_PROGRAM, "", "build", ""), built)]
    return found


def vmlinux_btf_for_arch(
    config: KernelsConfig, arch: Arch, fetch: Callable[[KernelSpec], KernelBuild]
) -> Path:
    """A vmlinux BTF of ``arch`` for vmlinux.h: cached facts, else extracted from a kernel image.

    The newest kernel of the arch is tried first: programs are usually written against it, and
    CO-RE adapts them to older kernels. Raises HarnessError when no kernel of the arch has one.
    """
    from harness.kernels.fetch import render_kernel_error
    from harness.programs.build import render_no_vmlinux_btf
    from harness.run.facts import vmlinux_btf

    errors: list[str] = []
    # From the whole file, not the selection: a shard must build the objects a full run builds.
    universe = [s for s in config.universe or config.kernels if s.arch == arch]
    for spec in sorted(universe, key=lambda s: version_key(s.id), reverse=True):
        try:
            return vmlinux_btf(fetch(spec))
        except HarnessError as exc:
            errors.append(render_kernel_error(spec, exc))
    raise HarnessError(render_no_vmlinux_btf(arch.name, errors))
