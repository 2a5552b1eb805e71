"""CO-RE relocations of a BPF object file, by program: its .BTF.ext read, and the BPF-to-BPF calls that link
subprograms (and their relocations) into programs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.btf.core import CoreRelo, parse_btf_ext_core_relos
from harness.btf.spec import parse_btf
from harness.programs.elf import open_elf


@dataclass(frozen=True)
class _FuncSym:
    name: str
    section: str
    offset: int
    size: int
    is_global: bool


_BPF_CALL = 0x85  # BPF_JMP | BPF_CALL
_BPF_PSEUDO_CALL = 1  # src_reg of a call to a BPF subprogram


def _owner(funcs: list[_FuncSym], offset: int) -> _FuncSym | None:
    for f in funcs:
        if f.offset <= offset < f.offset + max(f.size, 8):
            return f
    return None


def _subprogram_calls(
    code: dict[str, bytes],
    rel_targets: dict[tuple[str, int], tuple[str, int]],
    by_section: dict[str, list[_FuncSym]],
    little_endian: bool,
) -> dict[_FuncSym, set[_FuncSym]]:
    """Which functions each function calls directly (BPF-to-BPF calls, same section or via .rel)."""
    order = "<" if little_endian else ">"
    calls: dict[_FuncSym, set[_FuncSym]] = {}
    for section, funcs in by_section.items():
        data = code.get(section, b"")
        for f in funcs:
            callees: set[_FuncSym] = set()
            end = min(len(data), f.offset + f.size)
            for off in range(f.offset, end - 7, 8):
                op, regs, _, imm = struct.unpack_from(order + "BBhi", data, off)
                src = regs >> 4 if little_endian else regs & 0x0F
                if op != _BPF_CALL or src != _BPF_PSEUDO_CALL:
                    continue
                # A call into another section is resolved through its ELF relocation (symbol value
                # plus the instruction's relative offset, as libbpf computes it).
                target_sec, base = rel_targets.get((section, off), (section, off))
                callee = _owner(by_section.get(target_sec, []), base + (imm + 1) * 8)
                if callee is not None and callee != f:
                    callees.add(callee)
            calls[f] = callees
    return calls


def _assign_programs(
    relos: list[CoreRelo], funcs: list[_FuncSym], calls: dict[_FuncSym, set[_FuncSym]]
) -> dict[str, list[CoreRelo]]:
    by_section: dict[str, list[_FuncSym]] = {}
    for f in funcs:
        by_section.setdefault(f.section, []).append(f)
    own: dict[_FuncSym | str, list[CoreRelo]] = {}
    for relo in relos:
        owner = _owner(by_section.get(relo.section, []), relo.insn_off)
        # A relocation outside any function symbol (should not happen with clang output) is kept
        # under its section's name so that it is not silently lost.
        own.setdefault(owner if owner is not None else relo.section, []).append(relo)
    result: dict[str, list[CoreRelo]] = {}
    for key, found in own.items():
        result.setdefault(key if isinstance(key, str) else key.name, []).extend(found)
    # libbpf appends every subprogram a program calls to that program, relocations included.
    for f in funcs:
        if not f.is_global:
            continue
        seen: set[_FuncSym] = {f}
        todo = list(calls.get(f, ()))
        extra: list[CoreRelo] = []
        while todo:
            callee = todo.pop()
            if callee in seen:
                continue
            seen.add(callee)
            extra.extend(own.get(callee, []))
            todo.extend(calls.get(callee, ()))
        if extra:
            result.setdefault(f.name, []).extend(extra)
    return result


def load_object_core_relos(path: Path) -> dict[str, list[CoreRelo]]:
    """CO-RE relocations of a BPF object, by program (function symbol) name.

    A program's list includes the relocations of the static subprograms it calls, directly or not
    (libbpf links those into the program); subprograms are also listed under their own names. Returns
    {} when the object has no .BTF.ext. Raises ObjectError for an unreadable or non-ELF file and
    BTFError for malformed BTF.
    """
    with open_elf(path) as elf:
        btf_sec = elf.get_section_by_name(".BTF")
        ext_sec = elf.get_section_by_name(".BTF.ext")
        if btf_sec is None or ext_sec is None:
            return {}
        spec = parse_btf(btf_sec.data(), f"{path}:.BTF")
        relos = parse_btf_ext_core_relos(ext_sec.data(), spec, f"{path}:.BTF.ext")
        if not relos:
            return {}
        funcs: list[_FuncSym] = []
        rel_targets: dict[tuple[str, int], tuple[str, int]] = {}
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            funcs = _function_symbols(elf, symtab)
            rel_targets = _call_relocation_targets(elf, symtab)
        # Global functions (programs) win over local symbols at the same offset.
        funcs.sort(key=lambda f: (f.section, f.offset, not f.is_global))
        by_section: dict[str, list[_FuncSym]] = {}
        for f in funcs:
            by_section.setdefault(f.section, []).append(f)
        code: dict[str, bytes] = {}
        for name in by_section:
            section = elf.get_section_by_name(name)
            if section is not None:
                code[name] = section.data()
        calls = _subprogram_calls(code, rel_targets, by_section, elf.little_endian)
    return _assign_programs(relos, funcs, calls)


def _function_symbols(elf: ELFFile, symtab: SymbolTableSection) -> list[_FuncSym]:
    funcs: list[_FuncSym] = []
    for sym in symtab.iter_symbols():
        shndx = sym["st_shndx"]
        if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int):
            continue
        funcs.append(
            _FuncSym(
                sym.name,
                elf.get_section(shndx).name,
                int(sym["st_value"]),
                int(sym["st_size"]),
                sym["st_info"]["bind"] == "STB_GLOBAL",
            )
        )
    return funcs


def _call_relocation_targets(
    elf: ELFFile, symtab: SymbolTableSection
) -> dict[tuple[str, int], tuple[str, int]]:
    """(code section, instruction offset) to (target section, symbol value) for every .rel entry of code."""
    symbols = list(symtab.iter_symbols())
    names: dict[int, str] = {}
    rel_targets: dict[tuple[str, int], tuple[str, int]] = {}
    for rel_sec in elf.iter_sections():
        if not isinstance(rel_sec, RelocationSection) or rel_sec.is_RELA():
            continue
        applies = elf.get_section(rel_sec["sh_info"])
        # Only code can call a subprogram: the relocations of .BTF, .BTF.ext and DWARF
        # sections are many and say nothing about calls.
        if not applies["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            continue
        for rel in rel_sec.iter_relocations():
            sym = symbols[rel["r_info_sym"]]
            shndx = sym["st_shndx"]
            if isinstance(shndx, int) and shndx > 0:
                if shndx not in names:
                    names[shndx] = elf.get_section(shndx).name
                rel_targets[(applies.name, int(rel["r_offset"]))] = (names[shndx], int(sym["st_value"]))
    return rel_targets
