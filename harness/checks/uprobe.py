"""Offline checks of user-space probe targets (uprobe, uretprobe, usdt) on ELF and DWARF."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from elftools.common.exceptions import DWARFError, ELFError
from elftools.dwarf.die import DIE
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection
from filelock import FileLock

from harness.checks.verdict import Verdict
from harness.errors import BuildError, ObjectError
from harness.files import atomic_directory, remove_stale_temps
from harness.kernels.config import Arch
from harness.programs.clones import is_clone_of
from harness.programs.elf import open_elf
from harness.programs.hooks import USER_KINDS
from harness.report.results import CellResult, Check, Outcome, Probe

# Where the harness's shared directory is mounted in every guest, and where the user-space samples
# of bpf_progs/user/ are copied inside it (the same guest path on every arch: one arch per boot).
GUEST_SHARE = "/mnt"
GUEST_USER_DIR = "/mnt/user"
USER_SOURCES = "user"  # bpf_progs/user/*.c
USER_CACHE = "user-bin"  # under the cache root: <arch>/<digest>/<binaries>
CC_TIMEOUT = 120.0
COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
DEFAULT_FLAGS = ("-O2",)
BASE_FLAGS = ("-g",)  # DWARF is what tells an inlined function from a missing one

# Tri-state answers (cilium/ebpf's feature checks): yes, no, or could not tell.
YES, NO, UNKNOWN = "yes", "no", "unknown"

# Directories libbpf's resolve_full_path() searches for a target given without a slash.
LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
)
BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
BUILD_LINE = re.compile(r"^//\s*build:\s*(?P<out>\S+)(?P<flags>.*)$")

# A matrix checks the same few binaries on every kernel of an arch: what was read from one is kept,
# keyed by the file's identity, size and mtime (a rebuilt binary is read again).
_MEMO_SIZE = 256
_FileKey = tuple[str, int, int, int, int]
_V = TypeVar("_V")
_elf_memo: dict[_FileKey, ElfFunctions] = {}
_inlining_memo: dict[tuple[_FileKey, str], Inlining] = {}


def _file_key(path: Path) -> _FileKey | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _remember(memo: dict[Any, _V], key: Any, value: _V) -> _V:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value


# --- the probe's target ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UprobeTarget:
    """Where a uprobe section points: a binary and a function (plus offset), or a raw file offset."""

    path: str  # as written: absolute guest path, or a bare library/program name
    function: str = ""  # empty for a raw offset
    offset: int = 0  # added to the function's start, or the raw file offset

    @property
    def raw(self) -> bool:
        return not self.function

    def describe(self) -> str:
        if self.raw:
            return f"{self.path}:{self.offset:#x}"
        return f"{self.path}:{self.function}" + (f"+{self.offset:#x}" if self.offset else "")


def parse_uprobe_target(target: str) -> UprobeTarget | None:
    """Parse ``path:func[+off]`` or ``path:0x1234`` (the part of a SEC() after ``uprobe/``).

    As libbpf's attach_uprobe(): the path ends at the first colon, the offset follows the last plus.
    None when the section names no target (the loader attaches it itself).
    """
    path, sep, func = target.partition(":")
    if not sep or not path or not func:
        return None
    offset = 0
    base, plus, off = func.rpartition("+")
    if plus:
        try:
            offset = int(off, 0)
            func = base
        except ValueError:
            pass
    if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", func):
        return UprobeTarget(path, "", int(func, 0) + offset)
    return UprobeTarget(path, func, offset)


# --- ELF ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """A function symbol of a user-space binary."""

    name: str
    value: int  # virtual address
    size: int
    offset: int  # file offset: what the kernel's uprobe takes
    bind: str
    table: str  # .symtab or .dynsym


@dataclass(frozen=True)
class ElfFunctions:
    """The function symbols of one ELF file, and what it carries to judge them by."""

    path: Path
    machine: str
    functions: tuple[Function, ...]
    has_symtab: bool
    has_dwarf: bool

    def named(self, name: str) -> list[Function]:
        """Functions called ``name`` (libbpf also matches versioned names ``name@VER``)."""
        return [f for f in self.functions if f.name == name or f.name.split("@", 1)[0] == name]

    def twins(self, name: str) -> list[Function]:
        """GCC clones of ``name``: ``name.part.0``, ``name.cold``, ``name.isra.0``, ..."""
        return sorted((f for f in self.functions if is_clone_of(f.name, name)), key=lambda f: f.name)

    def at_offset(self, offset: int) -> Function | None:
        """The function whose body holds file offset ``offset`` (the innermost, sized one first)."""
        best: Function | None = None
        for f in self.functions:
            if f.offset <= offset < f.offset + max(f.size, 1):
                if best is None or f.size < best.size:
                    best = f
        return best


def _file_offset(segments: list[tuple[int, int, int]], vaddr: int) -> int:
    for p_vaddr, p_memsz, p_offset in segments:
        if p_vaddr <= vaddr < p_vaddr + p_memsz:
            return vaddr - p_vaddr + p_offset
    return vaddr


def load_elf_functions(path: Path) -> ElfFunctions:
    """Read the function symbols (.symtab, then .dynsym) of ``path``; raises ObjectError."""
    key = _file_key(path)
    if key is not None and key in _elf_memo:
        return _elf_memo[key]
    found = _read_elf_functions(path)
    return found if key is None else _remember(_elf_memo, key, found)


def _read_elf_functions(path: Path) -> ElfFunctions:
    with open_elf(path) as elf:
        segments = [
            (int(s["p_vaddr"]), int(s["p_memsz"]), int(s["p_offset"]))
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        ]
        functions: dict[tuple[str, int], Function] = {}
        has_symtab = False
        for table in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(table)
            if not isinstance(section, SymbolTableSection):
                continue
            has_symtab = has_symtab or table == ".symtab"
            for sym in section.iter_symbols():
                kind = sym["st_info"]["type"]
                if kind not in ("STT_FUNC", "STT_GNU_IFUNC") or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                value = int(sym["st_value"])
                if not sym.name or value == 0:
                    continue
                functions.setdefault(
                    (sym.name, value),
                    Function(
                        sym.name, value, int(sym["st_size"]), _file_offset(segments, value),
                        str(sym["st_info"]["bind"]), table,
                    ),
                )
        has_dwarf = elf.get_section_by_name(".debug_info") is not None
        machine = str(elf["e_machine"])
    return ElfFunctions(path, machine, tuple(functions.values()), has_symtab, has_dwarf)


# --- DWARF -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inlining:
    """What DWARF says about one function: whether it was inlined, where, and whether a copy remains."""

    known: bool  # False when the binary has no DWARF (or it could not be read)
    declared: bool = False  # a DW_TAG_subprogram of that name exists
    inlined_into: tuple[str, ...] = ()  # the callers holding a DW_TAG_inlined_subroutine of it
    out_of_line: bool = False  # a concrete instance with low_pc exists
    error: str = ""

    @property
    def inlined(self) -> str:
        if not self.known:
            return UNKNOWN
        return YES if self.inlined_into else NO


def _die_name(die: DIE, depth: int = 0) -> str:
    attr = die.attributes.get("DW_AT_name")
    if attr is not None:
        value = attr.value
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if depth > 4:
        return ""
    for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if ref in die.attributes:
            try:
                return _die_name(die.get_DIE_from_attribute(ref), depth + 1)
            except (DWARFError, KeyError, ValueError):
                return ""
    return ""


def _enclosing_function(die: DIE) -> str:
    parent = die.get_parent()
    while parent is not None:
        if parent.tag == "DW_TAG_subprogram":
            return _die_name(parent) or "?"
        parent = parent.get_parent()
    return "?"


# Relocation sections pyelftools would apply to DWARF sections (".rela" + the section's name).
_DWARF_RELOCATIONS = tuple(
    f"{rel}.{prefix}{name}"
    for rel in (".rel", ".rela")
    for prefix in ("", "z")
    for name in ("debug", "eh_frame", "gnu_debugaltlink")
)


def _iter_dies(path: Path) -> Iterator[DIE]:
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        # Linked binaries have no relocations for their DWARF: one look at the section names spares
        # pyelftools a scan of every section for each DWARF section it loads.
        relocate = any(
            isinstance(section, RelocationSection) and section.name.startswith(_DWARF_RELOCATIONS)
            for section in elf.iter_sections()
        )
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=relocate)
        for cu in dwarf.iter_CUs():
            yield from cu.iter_DIEs()


def load_inlining(path: Path, name: str) -> Inlining:
    """What the DWARF of ``path`` says about function ``name`` (``known`` False without DWARF)."""
    key = _file_key(path)
    if key is not None and (key, name) in _inlining_memo:
        return _inlining_memo[(key, name)]
    found = _read_inlining(path, name)
    return found if key is None else _remember(_inlining_memo, (key, name), found)


def _read_inlining(path: Path, name: str) -> Inlining:
    callers: list[str] = []
    declared = False
    out_of_line = False
    try:
        with path.open("rb") as fh:
            if ELFFile(fh).get_section_by_name(".debug_info") is None:
                return Inlining(known=False)
        for die in _iter_dies(path):
            if die.tag == "DW_TAG_inlined_subroutine":
                if _die_name(die) == name:
                    callers.append(_enclosing_function(die))
            elif die.tag == "DW_TAG_subprogram" and _die_name(die) == name:
                declared = True
                if "DW_AT_low_pc" in die.attributes or "DW_AT_ranges" in die.attributes:
                    out_of_line = True
    except (OSError, ELFError, DWARFError, KeyError, ValueError, AssertionError) as exc:
        return Inlining(known=False, error=f"DWARF unreadable: {exc}")
    return Inlining(True, declared, tuple(dict.fromkeys(callers)), out_of_line)


# --- user-space samples ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One binary built from a C file of bpf_progs/user/ (a ``// build: OUT FLAGS...`` line)."""

    source: Path
    output: str
    flags: tuple[str, ...] = DEFAULT_FLAGS

    @property
    def shared(self) -> bool:
        return "-shared" in self.flags


def parse_recipes(text: str, source: Path) -> list[Recipe]:
    """The ``// build:`` lines of a sample's source; one -O2 program named after the file when none."""
    recipes = []
    for line in text.splitlines():
        m = BUILD_LINE.match(line.strip())
        if m:
            recipes.append(Recipe(source, m["out"], tuple(m["flags"].split())))
    return recipes or [Recipe(source, source.stem)]


def compile_argv(recipe: Recipe, out_dir: Path, cc: str) -> list[str]:
    """The compiler command line of one recipe (pure); ``{out}`` in flags is the output directory."""
    flags = [f.replace("{out}", str(out_dir)) for f in recipe.flags]
    libs = [f for f in flags if f.startswith("-l")]
    rest = [f for f in flags if not f.startswith("-l")]
    return [cc, *BASE_FLAGS, *rest, str(recipe.source), "-o", str(out_dir / recipe.output), *libs]


def _samples_digest(sources: list[Path], cc: str, arch: str) -> str:
    h = hashlib.sha256(f"{arch}|{cc}".encode())
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:24]


def build_user_samples(progs_dir: Path, arch: Arch, cache_root: Path) -> dict[str, Path]:
    """Build bpf_progs/user/*.c for ``arch`` (cached by the sources' digest); output name -> path.

    Libraries are built first so that programs can link against them. Empty when there is no
    bpf_progs/user/. Raises BuildError naming the source and the compiler's first error.
    """
    src_dir = progs_dir / USER_SOURCES
    sources = sorted(src_dir.glob("*.c")) if src_dir.is_dir() else []
    if not sources:
        return {}
    cc_name = COMPILERS.get(arch.name, "gcc")
    cc = shutil.which(cc_name)
    if cc is None:
        raise BuildError(f"{src_dir}: {cc_name} not found: needed to build the {arch.name} samples")
    headers = sorted(src_dir.glob("*.h"))
    recipes = [r for s in sources for r in parse_recipes(s.read_text(errors="replace"), s)]
    recipes.sort(key=lambda r: (not r.shared, r.output))
    entry = cache_root / USER_CACHE / arch.name / _samples_digest(sources + headers, cc, arch.name)
    done = entry / ".done"
    if not done.exists():
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            if not done.exists():
                # A builder killed here left its temp; a failed or interrupted one leaves nothing.
                remove_stale_temps(entry)
                with atomic_directory(entry) as tmp:
                    _compile_recipes(recipes, tmp, cc, cc_name)
                    (tmp / ".done").write_text("ok\n")
    return {r.output: entry / r.output for r in recipes}


def _compile_recipes(recipes: list[Recipe], out_dir: Path, cc: str, cc_name: str) -> None:
    """Run the compiler for each recipe into ``out_dir``; raises BuildError at the first failure."""
    for recipe in recipes:
        argv = compile_argv(recipe, out_dir, cc)
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=CC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{recipe.source}: {cc_name} timed out building {recipe.output}") from exc
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            first = next((ln for ln in err if "error" in ln), err[-1] if err else "failed")
            raise BuildError(f"{recipe.source}: {recipe.output} does not build: {first.strip()}")


# --- finding the binary ------------------------------------------------------------------------------


def resolve_in_root(root: Path, path: str, hops: int = 40) -> Path:
    """``path`` as seen from a guest whose root filesystem is ``root``: absolute symlinks stay inside it."""
    if root == Path("/"):
        return Path(path).resolve()
    parts = [p for p in path.split("/") if p and p != "."]
    current = root
    while parts and hops > 0:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops -= 1
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p and p != "."] + parts
            if link.startswith("/"):
                current = root
            continue
        current = candidate
    return current


def resolve_binary(
    target: UprobeTarget, root: Path, samples: Mapping[str, Path] | None
) -> tuple[Path | None, str]:
    """The host path of the target's binary, or (None, why not). ``samples`` maps /mnt/user/ names."""
    path = target.path
    if path.startswith(GUEST_USER_DIR + "/"):
        name = path[len(GUEST_USER_DIR) + 1:]
        if samples is None:
            return None, f"{path}: the user-space samples could not be built"
        found = samples.get(name)
        if found is None:
            known = ", ".join(sorted(samples)) or "none"
            return None, f"{path} is not one of the samples of bpf_progs/user/ (built: {known})"
        return found, ""
    if path.startswith(GUEST_SHARE + "/"):
        return None, f"{path} is in the harness's shared directory: only bpf_progs/user/ samples are there"
    if path.startswith("/"):
        host = resolve_in_root(root, path)
        return (host, "") if host.is_file() else (None, f"{path} does not exist in the guest")
    if "/" in path:
        return None, f"{path} is relative to the loader's working directory: use an absolute path"
    dirs = LIB_DIRS if ".so" in path else BIN_DIRS
    for directory in dirs:
        host = resolve_in_root(root, f"{directory}/{path}")
        if host.is_file():
            return host, ""
    return None, f"{path} not found in {', '.join(dirs)} of the guest"


# --- the check ---------------------------------------------------------------------------------------


def _q(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _twin_advice(name: str, twins: list[Function], where: str) -> str:
    part = [t for t in twins if ".part." in t.name]
    other = [t for t in twins if ".cold" not in t.name and ".part." not in t.name]
    if part:
        body = part[0].name
        return (
            f"`{name}` was split by GCC's partial inlining in {where}: its early exit is inlined into "
            f"the callers and its body is `{body}`; target `{body}` (it runs only past the early exit)"
        )
    if other:
        clone = other[0].name
        return (
            f"`{name}` exists only as GCC's clone `{clone}` in {where} (specialised arguments): "
            f"target `{clone}` and read its arguments as the clone takes them"
        )
    cold = twins[0].name
    return (
        f"`{name}` is inlined into its callers in {where}; only its cold path `{cold}` is out of line: "
        "the probe would fire only on that path; "
        "attach to the caller, or build with __attribute__((noinline))"
    )


def _offset_verdict(target: UprobeTarget, elf: ElfFunctions, where: str, details: dict[str, Any]) -> Verdict:
    """A target given as a raw file offset: is it still a function's start?"""
    func = elf.at_offset(target.offset)
    if func is None:
        return Verdict(
            Outcome.FAIL,
            f"offset {target.offset:#x} is in no function of {where}: the binary changed since the "
            "offset was taken; attach by symbol name",
            details,
        )
    details.update(function=func.name, function_offset=func.offset)
    if func.offset == target.offset:
        return Verdict(Outcome.PASS, f"offset {target.offset:#x} is the start of `{func.name}`", details)
    return Verdict(
        Outcome.FAIL,
        f"offset {target.offset:#x} is `{func.name}`+{target.offset - func.offset:#x} in {where}, not a "
        "function's start: the binary changed since the offset was taken; attach by symbol name",
        details,
    )


def _found_verdict(
    target: UprobeTarget, found: list[Function], twins: list[Function], inline: Inlining, where: str,
    details: dict[str, Any],
) -> Verdict:
    """The target function has a symbol: is the offset inside it, and does every call reach it?"""
    name = target.function
    func = min(found, key=lambda f: (f.table != ".symtab", f.value))
    details.update(offset=func.offset + target.offset, size=func.size, table=func.table)
    if target.offset and func.size and target.offset >= func.size:
        return Verdict(
            Outcome.FAIL,
            f"`{name}`+{target.offset:#x} is past the end of `{name}` ({func.size} bytes) in {where}",
            details,
        )
    notes = [f"`{name}` at {func.offset + target.offset:#x}"]
    if inline.inlined_into:
        notes.append(f"also inlined into {_q(inline.inlined_into)}: calls from there do not hit the probe")
    elif not inline.known:
        notes.append("no DWARF: whether it is also inlined could not be told")
    part = [t.name for t in twins if ".part." in t.name]
    if part:
        notes.append(f"its body is in `{part[0]}` (GCC partial inlining)")
    return Verdict(Outcome.PASS, "; ".join(notes), details)


def _missing_reason(
    name: str, elf: ElfFunctions, inline: Inlining, where: str, details: dict[str, Any]
) -> str:
    """Why the target function, with neither a symbol nor clones, cannot be probed."""
    if inline.inlined_into and not inline.out_of_line:
        details["inlined_into"] = list(inline.inlined_into)
        return (
            f"`{name}` is inlined into its callers in {where}: the probe never fires; attach to the "
            "caller at an offset, or build with __attribute__((noinline))"
        )
    if inline.known and inline.declared:
        return f"`{name}` has no symbol in {where} and no inlined copy either (removed as unused?)"
    if not elf.has_symtab:
        return (
            f"`{name}` is not in the dynamic symbols of {where}, which is stripped: a local function "
            "cannot be found by name; use its debug symbols' offset or an exported function"
        )
    if not inline.known:
        return (
            f"`{name}` is not in the symbol table of {where}; without DWARF it could not be told "
            "whether it was inlined or never existed"
        )
    return f"`{name}` is not a function of {where}"


def judge_target(target: UprobeTarget, elf: ElfFunctions, inline: Inlining, where: str) -> Verdict:
    """The UPROBE verdict of ``target`` in the binary ``elf`` (pure, given the ELF and DWARF facts)."""
    details: dict[str, Any] = {
        "binary": where,
        "symtab": elf.has_symtab,
        "dwarf": elf.has_dwarf,
        "inlined": inline.inlined,
    }
    if target.raw:
        return _offset_verdict(target, elf, where, details)
    name = target.function
    found = elf.named(name)
    twins = elf.twins(name)
    if twins:
        details["clones"] = [t.name for t in twins]
    if found:
        return _found_verdict(target, found, twins, inline, where, details)
    if twins:
        return Verdict(Outcome.FAIL, _twin_advice(name, twins, where), details)
    reason = _missing_reason(name, elf, inline, where, details)
    return Verdict(Outcome.FAIL, reason, details)


def check_uprobe(
    probe: Probe, kernel: str, arch: Arch, root: Path, progs_dir: Path, cache_root: Path
) -> CellResult | None:
    """The UPROBE check of ``probe`` against its target as the guest of (kernel, arch) sees it.

    ``root`` is that guest's root filesystem (the host's "/" for the host's arch). None when the
    probe is not a user-space one. The samples of bpf_progs/user/ are built under ``cache_root``.
    """
    if probe.kind not in USER_KINDS:
        return None

    def result(outcome: Outcome, reason: str, details: Mapping[str, Any] | None = None) -> CellResult:
        return CellResult(probe, kernel, arch.name, Check.UPROBE, outcome, reason, dict(details or {}))

    if probe.kind == "usdt":
        return result(Outcome.SKIP, "usdt notes are not checked offline yet")
    target = parse_uprobe_target(probe.target)
    if target is None:
        return result(Outcome.SKIP, "no target in the section: the loader attaches it")
    samples: dict[str, Path] | None = None
    if target.path.startswith(GUEST_USER_DIR + "/"):
        try:
            samples = build_user_samples(progs_dir, arch, cache_root)
        except BuildError as exc:
            return result(Outcome.ERROR, str(exc))
    binary, why = resolve_binary(target, root, samples)
    if binary is None:
        return result(Outcome.FAIL, why, {"binary": target.path})
    try:
        elf = load_elf_functions(binary)
    except ObjectError as exc:
        return result(Outcome.FAIL, f"{target.path}: {exc}", {"binary": target.path})
    inline = load_inlining(binary, target.function) if target.function else Inlining(known=False)
    verdict = judge_target(target, elf, inline, target.path)
    return result(verdict.outcome, verdict.reason, verdict.details)
