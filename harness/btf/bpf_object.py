"""A BPF object file's code by program: its CO-RE relocations (.BTF.ext), its instructions, and the
BPF-to-BPF calls that link subprograms (and their relocations) into programs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.btf.core import CoreRelo, parse_btf_ext_core_relos
from harness.btf.spec import parse_btf
from harness.programs.elf import open_elf
from harness.programs.flow import Function, ProgramCode
from harness.programs.insns import INSN_SIZE, Instruction, decode_instructions


@dataclass(frozen=True)
class _FuncSym:
    name: str
    section: str
    offset: int
    size: int
    is_global: bool


@dataclass(frozen=True)
class ObjectCode:
    """What one object's code says by program (function symbol) name."""

    relocations: dict[str, list[CoreRelo]]  # a program's own and its subprograms' CO-RE relocations
    programs: dict[str, ProgramCode]  # every global function, with the subprograms it may call


def _owner(funcs: list[_FuncSym], offset: int) -> _FuncSym | None:
    for f in funcs:
        if f.offset <= offset < f.offset + max(f.size, 8):
            return f
    return None


def _function_insns(data: bytes, f: _FuncSym, little_endian: bool) -> list[Instruction]:
    end = min(len(data), f.offset + f.size)
    usable = end - f.offset - (end - f.offset) % INSN_SIZE
    return decode_instructions(data[f.offset:f.offset + max(usable, 0)], little_endian,
                               f"{f.section}:{f.name}")


def _subprogram_calls(
    insns: dict[_FuncSym, list[Instruction]],
    rel_targets: dict[tuple[str, int], tuple[str, int]],
    by_section: dict[str, list[_FuncSym]],
) -> dict[_FuncSym, dict[int, _FuncSym]]:
    """The functions each function calls directly (BPF-to-BPF calls, same section or via .rel), by the
    slot of the call instruction in the caller."""
    calls: dict[_FuncSym, dict[int, _FuncSym]] = {}
    for f, code in insns.items():
        callees: dict[int, _FuncSym] = {}
        for insn in code:
            if not insn.is_subprogram_call:
                continue
            off = f.offset + insn.index * INSN_SIZE
            # A call into another section is resolved through its ELF relocation (symbol value
            # plus the instruction's relative offset, as libbpf computes it).
            target_sec, base = rel_targets.get((f.section, off), (f.section, off))
            callee = _owner(by_section.get(target_sec, []), base + (insn.imm + 1) * INSN_SIZE)
            if callee is not None and callee != f:
                callees[insn.index] = callee
        calls[f] = callees
    return calls


def _reachable_functions(f: _FuncSym, calls: dict[_FuncSym, dict[int, _FuncSym]]) -> list[_FuncSym]:
    """``f`` then every function it calls, directly or not, each once."""
    seen: list[_FuncSym] = [f]
    todo = list(calls.get(f, {}).values())
    while todo:
        callee = todo.pop(0)
        if callee in seen:
            continue
        seen.append(callee)
        todo.extend(calls.get(callee, {}).values())
    return seen


def _assign_programs(
    relos: list[CoreRelo], funcs: list[_FuncSym], calls: dict[_FuncSym, dict[int, _FuncSym]]
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
        extra = [r for callee in _reachable_functions(f, calls)[1:] for r in own.get(callee, [])]
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
    return load_object_code(path).relocations


def load_object_code(path: Path) -> ObjectCode:
    """The CO-RE relocations (see load_object_core_relos) and the code of every program of a BPF object.

    Raises ObjectError for an unreadable or non-ELF file or cut instructions, BTFError for malformed BTF.
    """
    with open_elf(path) as elf:
        relos: list[CoreRelo] = []
        btf_sec = elf.get_section_by_name(".BTF")
        ext_sec = elf.get_section_by_name(".BTF.ext")
        if btf_sec is not None and ext_sec is not None:
            spec = parse_btf(btf_sec.data(), f"{path}:.BTF")
            relos = parse_btf_ext_core_relos(ext_sec.data(), spec, f"{path}:.BTF.ext")
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
        insns: dict[_FuncSym, list[Instruction]] = {}
        for name, in_section in by_section.items():
            section = elf.get_section_by_name(name)
            data = section.data() if section is not None else b""
            for f in in_section:
                insns[f] = _function_insns(data, f, elf.little_endian)
        calls = _subprogram_calls(insns, rel_targets, by_section)
    programs = {
        f.name: _program_code(f, insns, calls) for f in funcs if f.is_global
    }
    return ObjectCode(_assign_programs(relos, funcs, calls) if relos else {}, programs)


def _program_code(
    f: _FuncSym, insns: dict[_FuncSym, list[Instruction]], calls: dict[_FuncSym, dict[int, _FuncSym]]
) -> ProgramCode:
    functions = tuple(
        Function(g.name, g.section, g.offset, tuple(insns.get(g, ())),
                 {slot: callee.name for slot, callee in calls.get(g, {}).items()})
        for g in _reachable_functions(f, calls)
    )
    return ProgramCode(f.name, functions)


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
