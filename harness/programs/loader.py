"""What a sidecar's loader settings become in the guest's plan: checked against the object, .rodata
values turned into bytes at their offsets (from the object's BTF DATASEC)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from elftools.elf.sections import SymbolTableSection

from harness.btf.spec import BTFSpec, parse_btf
from harness.btf.types import Array, Enum, Int
from harness.errors import BTFError, ConfigError
from harness.programs.elf import open_elf
from harness.programs.sidecar import LoaderSettings
from harness.vm.guest.protocol import DataPatch, LoaderPlan, MapSizes

RODATA = ".rodata"
MAPS = ".maps"


@dataclass(frozen=True)
class DataVar:
    """A variable of a data section: where it sits and what it holds (after typedefs and qualifiers)."""

    section: str
    name: str
    offset: int
    size: int
    type: Int | Enum | Array | None  # None: a type a sidecar cannot set (a struct, a pointer)


def _datasec_vars(
    spec: BTFSpec, section: str, symbols: Mapping[str, int] | None = None
) -> dict[str, DataVar]:
    """The variables of ``section`` by name; ``symbols`` gives their offsets where the ELF symbol table
    has them (objects linked from skeletons leave the DATASEC's offsets 0, and libbpf takes the
    symbols' values instead when it opens them)."""
    found: dict[str, DataVar] = {}
    for info, var in spec.section_vars(section):
        typ = spec.type(spec.skip_mods_and_typedefs(var.type_id))
        kept = typ if isinstance(typ, (Int, Enum, Array)) else None
        offset = symbols.get(var.name, info.offset) if symbols else info.offset
        found[var.name] = DataVar(section, var.name, offset, info.size, kept)
    return found


def encode_value(spec: BTFSpec, var: DataVar, value: int | bool | str, where: str) -> bytes:
    """``value`` as the bytes of ``var`` (in the object's byte order); raises ConfigError when it does
    not fit the variable's type."""
    order: Literal["little", "big"] = "little" if spec.little_endian else "big"
    typ = var.type
    if isinstance(value, str):
        elem = spec.type(spec.skip_mods_and_typedefs(typ.type_id)) if isinstance(typ, Array) else None
        if not (isinstance(elem, Int) and elem.size == 1):
            raise ConfigError(f"{where}: {var.name!r} is not a char array: give a number or true/false")
        raw = value.encode()
        if len(raw) >= var.size:
            raise ConfigError(f"{where}: {value!r} does not fit {var.name!r} ({var.size} bytes with its NUL)")
        return raw.ljust(var.size, b"\0")
    if not isinstance(typ, (Int, Enum)):
        raise ConfigError(f"{where}: {var.name!r} is not a number or bool: cannot set it to {value!r}")
    signed = typ.signed
    number = int(value)
    try:
        return number.to_bytes(var.size, order, signed=signed)
    except OverflowError as exc:
        kind = "signed" if signed else "unsigned"
        raise ConfigError(f"{where}: {value!r} does not fit {var.name!r} ({kind}, {var.size} bytes)") from exc


def load_object_btf(path: Path, section: str = RODATA) -> tuple[BTFSpec | None, dict[str, int]]:
    """The object's own BTF (its .BTF section; None when it has none) and the offsets of the symbols
    defined in ``section``; raises ObjectError, BTFError."""
    with open_elf(path) as elf:
        btf = elf.get_section_by_name(".BTF")
        spec = parse_btf(btf.data(), f"{path}:.BTF") if btf is not None else None
        offsets: dict[str, int] = {}
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for sym in symtab.iter_symbols():
                index = sym["st_shndx"]
                if isinstance(index, int) and elf.get_section(index).name == section:
                    offsets[sym.name] = int(sym["st_value"])
        return spec, offsets


def plan_loader(settings: LoaderSettings, path: Path, where: str) -> LoaderPlan:
    """The plan's loader entry for the object at ``path`` from its sidecar's ``loader:`` settings.

    Raises ConfigError (``where`` names the sidecar) for a map or .rodata variable the object does not
    have, or a value that does not fit its variable.
    """
    plan: LoaderPlan = {}
    if settings.attach_targets:
        plan["attach_targets"] = dict(settings.attach_targets)
    if settings.autoload_off:
        plan["autoload_off"] = sorted(settings.autoload_off)
    if not settings.maps and not settings.rodata:
        return plan
    try:
        spec, offsets = load_object_btf(path)
    except BTFError as exc:
        raise ConfigError(f"{where}: loader: the object's BTF is unreadable: {exc}") from exc
    if spec is None:
        raise ConfigError(f"{where}: loader: {path.name} has no BTF: its maps and .rodata cannot be found")
    if settings.maps:
        declared = _datasec_vars(spec, MAPS)
        for name in settings.maps:
            if declared and name not in declared:
                have = ", ".join(sorted(declared))
                raise ConfigError(
                    f"{where}: loader: maps: {path.name} has no map {name!r} (its maps: {have})"
                )
        plan["maps"] = {name: cast(MapSizes, dict(sizes)) for name, sizes in settings.maps.items()}
    if settings.rodata:
        variables = _datasec_vars(spec, RODATA, offsets)
        patches: list[DataPatch] = []
        for name, value in settings.rodata.items():
            var = variables.get(name)
            if var is None:
                have = ", ".join(sorted(variables)) or "none"
                raise ConfigError(
                    f"{where}: loader: rodata: {path.name} has no .rodata variable {name!r} "
                    f"(its variables: {have})"
                )
            data = encode_value(spec, var, value, f"{where}: loader: rodata")
            patches.append({"section": RODATA, "variable": name, "offset": var.offset, "size": var.size,
                            "hex": data.hex()})
        plan["data"] = patches
    return plan
