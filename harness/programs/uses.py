"""What each program of a BPF object asks of the kernel: the helpers it calls, its kfunc externs and the
types of the maps it references (its static subprograms' included, as libbpf links them in)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.btf.bpf_object import load_object_code
from harness.btf.spec import BTFSpec, parse_btf
from harness.btf.types import Array, Pointer, Struct
from harness.errors import BTFError, ObjectError
from harness.programs.elf import open_elf
from harness.programs.flow import Function
from harness.programs.insns import INSN_SIZE
from harness.programs.uapi import map_type_name

BTF_MAPS_SECTION = ".maps"  # maps defined through BTF: struct { __uint(type, ...); ... } name SEC(".maps")
LEGACY_MAPS_SECTION = "maps"  # struct bpf_map_def (its first word is the type); libbpf 1.0 refuses them


@dataclass(frozen=True)
class MapUse:
    """A map a program references: its name and type (bpftool's name), "" when the object does not say."""

    name: str
    type: str


@dataclass(frozen=True)
class KfuncUse:
    """A kernel function a program calls through a ``__ksym`` extern; ``weak`` ones may be absent, and
    then libbpf leaves the call unresolved: only a call the verifier finds dead (behind
    ``bpf_ksym_exists()``, which loads the function's address: ``checked``) may stay in the program."""

    name: str
    weak: bool = False
    checked: bool = False


@dataclass(frozen=True)
class ProgramUses:
    """What one program needs of the kernel besides its program type."""

    helpers: tuple[int, ...] = ()  # helper numbers (enum bpf_func_id), sorted
    kfuncs: tuple[KfuncUse, ...] = ()
    maps: tuple[MapUse, ...] = ()


@dataclass(frozen=True)
class _Reloc:
    symbol: str
    section: str | None  # None for an undefined (extern) symbol
    weak: bool


def load_object_uses(path: Path) -> dict[str, ProgramUses]:
    """Helpers, kfuncs and maps of every program of a BPF object, by program (function symbol) name.

    A program's entry includes what the static subprograms it calls use, directly or not (the code as
    btf/bpf_object.py links it). Raises ObjectError for an unreadable or non-ELF file, BTFError for
    malformed BTF.
    """
    code = load_object_code(path)
    with open_elf(path) as elf:
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise ObjectError(f"{path}: BPF object has no symbol table")
        relocs = _code_relocations(elf, symtab)
        map_types = object_map_types(elf, symtab, str(path))
    own: dict[tuple[str, int], ProgramUses] = {}
    result: dict[str, ProgramUses] = {}
    for name, program in code.programs.items():
        parts = []
        for function in program.functions:
            key = (function.section, function.offset)
            if key not in own:
                own[key] = _function_uses(function, relocs, map_types)
            parts.append(own[key])
        result[name] = _merge(parts)
    return result


def object_map_types(elf: ELFFile, symtab: SymbolTableSection, name: str = "object") -> dict[str, str]:
    """Map name -> its type (bpftool's name, "" when not given) of the BTF-defined and legacy maps."""
    found: dict[str, str] = {}
    btf_sec = elf.get_section_by_name(".BTF")
    if btf_sec is not None:
        try:
            spec = parse_btf(btf_sec.data(), f"{name}:.BTF")
        except BTFError:
            spec = None
        if spec is not None:
            found.update(_btf_map_types(spec))
    legacy = elf.get_section_by_name(LEGACY_MAPS_SECTION)
    if legacy is not None and legacy["sh_type"] != "SHT_NOBITS":
        data = legacy.data()
        index = elf.get_section_index(LEGACY_MAPS_SECTION)
        order = "<" if elf.little_endian else ">"
        for sym in symtab.iter_symbols():
            if sym["st_shndx"] != index or sym["st_info"]["type"] not in ("STT_OBJECT", "STT_NOTYPE"):
                continue
            off = int(sym["st_value"])
            if sym.name and off + 4 <= len(data):
                (number,) = struct.unpack_from(order + "I", data, off)
                found.setdefault(sym.name, map_type_name(number) or f"type {number}")
    return found


def _btf_map_types(spec: BTFSpec) -> dict[str, str]:
    return {var.name: _btf_map_type(spec, var.type_id) for _info, var in spec.section_vars(BTF_MAPS_SECTION)}


def _btf_map_type(spec: BTFSpec, type_id: int) -> str:
    """The ``type`` of a BTF map definition: ``int (*type)[N]`` (libbpf's __uint) carries N."""
    struct_t = spec.type(spec.skip_mods_and_typedefs(type_id))
    if not isinstance(struct_t, Struct):
        return ""
    for member in struct_t.members:
        if member.name != "type":
            continue
        ptr = spec.type(spec.skip_mods_and_typedefs(member.type_id))
        if isinstance(ptr, Pointer):
            arr = spec.type(spec.skip_mods_and_typedefs(ptr.type_id))
            if isinstance(arr, Array):
                return map_type_name(arr.nelems) or f"type {arr.nelems}"
    return ""


def _code_relocations(elf: ELFFile, symtab: SymbolTableSection) -> dict[tuple[str, int], _Reloc]:
    """(code section, instruction offset) -> the symbol its relocation names, for every code section."""
    symbols = list(symtab.iter_symbols())
    found: dict[tuple[str, int], _Reloc] = {}
    for rel_sec in elf.iter_sections():
        if not isinstance(rel_sec, RelocationSection):
            continue
        applies = elf.get_section(rel_sec["sh_info"])
        if applies["sh_flags"] & 0x4 == 0:  # SHF_EXECINSTR: only code holds calls and map loads
            continue
        for rel in rel_sec.iter_relocations():
            sym = symbols[rel["r_info_sym"]]
            shndx = sym["st_shndx"]
            section = elf.get_section(shndx).name if isinstance(shndx, int) and shndx > 0 else None
            found[(applies.name, int(rel["r_offset"]))] = _Reloc(
                sym.name, section, sym["st_info"]["bind"] == "STB_WEAK"
            )
    return found


def _function_uses(
    f: Function, relocs: Mapping[tuple[str, int], _Reloc], map_types: Mapping[str, str]
) -> ProgramUses:
    helpers: set[int] = set()
    kfuncs: dict[str, KfuncUse] = {}
    addresses: set[str] = set()  # externs whose address the function loads
    maps: dict[str, MapUse] = {}
    for insn in f.insns:
        rel = relocs.get((f.section, f.offset + insn.index * INSN_SIZE))
        if insn.is_call:
            if rel is not None and rel.section is None:
                # clang emits a call to a __ksym extern as a pseudo call with a relocation to the
                # undefined symbol; libbpf turns it into a kfunc call (src_reg 2) at load.
                kfuncs.setdefault(rel.symbol, KfuncUse(rel.symbol, rel.weak))
            elif insn.is_helper_call and rel is None:
                helpers.add(insn.imm)
        elif insn.is_ld_imm64 and rel is not None and rel.section in (BTF_MAPS_SECTION, LEGACY_MAPS_SECTION):
            maps.setdefault(rel.symbol, MapUse(rel.symbol, map_types.get(rel.symbol, "")))
        elif insn.is_ld_imm64 and rel is not None and rel.section is None:
            addresses.add(rel.symbol)
    found = [KfuncUse(k.name, k.weak, k.name in addresses) for k in kfuncs.values()]
    return ProgramUses(tuple(sorted(helpers)), tuple(found), tuple(maps.values()))


def _merge(parts: list[ProgramUses]) -> ProgramUses:
    helpers = sorted({h for p in parts for h in p.helpers})
    kfuncs: dict[str, KfuncUse] = {}
    for k in (k for p in parts for k in p.kfuncs):
        # A check in one function of the program covers its calls in the others.
        seen = kfuncs.get(k.name)
        kfuncs[k.name] = k if seen is None else KfuncUse(k.name, k.weak, seen.checked or k.checked)
    maps = {m.name: m for p in parts for m in p.maps}
    return ProgramUses(
        tuple(helpers),
        tuple(kfuncs[k] for k in sorted(kfuncs)),
        tuple(maps[m] for m in sorted(maps)),
    )
