"""The probe inventory: which programs a BPF object holds, their hook types and targets (ELF sections)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.elf.sections import SymbolTableSection

from harness.errors import ObjectError
from harness.programs.elf import open_elf
from harness.programs.hooks import SECTION_PREFIXES
from harness.report.results import Probe

EM_BPF = 247

# libbpf's SEC() prefixes mapped to the hook kind we report (the hook registry's).
SECTION_KINDS = SECTION_PREFIXES

# Sections that hold code but are not programs.
NON_PROGRAM_SECTIONS = (".text",)


@dataclass(frozen=True)
class BPFObject:
    """A compiled BPF object and the probes it holds."""

    path: Path
    name: str
    probes: tuple[Probe, ...]
    unknown: tuple[tuple[str, str], ...] = ()  # (program, section) of types the harness cannot check


def object_name(path: Path) -> str:
    """The object's stem: ``foo`` for ``foo.bpf.o`` and ``foo.o``."""
    name = path.name
    for suffix in (".bpf.o", ".o"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def parse_section(section: str) -> tuple[str, str] | None:
    """Return (kind, target) for a libbpf section name, or None for a type the harness does not know.

    The target drops kprobe offsets (``func+0x10``) and, for uprobes, keeps ``path:symbol``.
    """
    for prefix, kind in SECTION_KINDS:
        if section.startswith(prefix):
            target = section[len(prefix):]
            if kind in ("kprobe", "kretprobe") and "+" in target:
                target = target.split("+", 1)[0]
            return kind, target
    return None


def load_object(path: Path) -> BPFObject:
    """Read the programs of a BPF ELF object; raises ObjectError for anything else."""
    with open_elf(path) as elf:
        if elf["e_machine"] not in ("EM_BPF", EM_BPF):
            raise ObjectError(
                f"{path}: not a BPF object (ELF machine {elf['e_machine']}, expected EM_BPF)"
            )
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise ObjectError(f"{path}: BPF object has no symbol table")
        probes: list[Probe] = []
        unknown: list[tuple[str, str]] = []
        name = object_name(path)
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_info"]["bind"] != "STB_GLOBAL":
                continue
            shndx = sym["st_shndx"]
            if not isinstance(shndx, int):
                continue
            section = elf.get_section(shndx).name
            if section in NON_PROGRAM_SECTIONS:
                continue
            parsed = parse_section(section)
            if parsed is None:
                unknown.append((sym.name, section))
                continue
            kind, target = parsed
            probes.append(Probe(name, sym.name, section, kind, target))
    if not probes and not unknown:
        raise ObjectError(f"{path}: BPF object has no programs")
    probes.sort(key=lambda p: p.program)
    return BPFObject(path, name, tuple(probes), tuple(sorted(unknown)))
