"""Kernel facts collected in a guest (kallsyms, ftrace, tracepoints, BTF, config, LSMs, BPF features), parsed
lazily."""

from __future__ import annotations

import json
import os
import pickle
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from harness.errors import BTFError, HarnessError
from harness.files import atomic_file
from harness.kernels.features import FeaturesError, KernelFeatures, parse_features
from harness.programs.clones import parse_clone
from harness.vm.guest.protocol import (  # the files the guest agent writes
    BTF_FILE,
    CONFIG_FILE,
    EVENTS_FILE,
    FEATURES_ERROR_FILE,
    FEATURES_FILE,
    FILTER_FUNCTIONS_FILE,
    FORMATS_FILE,
    KALLSYMS_FILE,
    LSM_FILE,
    UNAME_FILE,
)

# One kallsyms line: "<addr> <type> <name>", and "\t[<module>]" after the name for module symbols.
_CORE_LINE = re.compile(r"^[0-9a-fA-F]+ (\S) ([^\t\n]+)$", re.M)
_FIRST_WORD = re.compile(r"^(\S+)", re.M)
_MODULE_LINE = re.compile(r"^[0-9a-fA-F]+ (\S) ([^\t\n]+)\t\[([^\]\n]+)\]$", re.M)

# Marker symbols around text that ftrace or kprobes leave alone: (start, end, what it means).
TEXT_REGIONS: tuple[tuple[str, str, str], ...] = (
    ("__noinstr_text_start", "__noinstr_text_end", "in .noinstr.text (noinstr, 5.8+)"),
    ("__kprobes_text_start", "__kprobes_text_end", "in .kprobes.text (__kprobes)"),
    ("__cpuidle_text_start", "__cpuidle_text_end", "in .cpuidle.text (__cpuidle, noinstr since 5.19)"),
    ("__entry_text_start", "__entry_text_end", "in .entry.text (low-level entry code)"),
    ("__irqentry_text_start", "__irqentry_text_end", "in .irqentry.text"),
    ("__softirqentry_text_start", "__softirqentry_text_end", "in .softirqentry.text"),
    ("_sinittext", "_einittext", "__init text, freed after boot"),
)

# Since 6.0 ftrace lists addresses it cannot resolve under this name instead of dropping them.
_FTRACE_INVALID = "__ftrace_invalid_address__"

# What is derived from the big files (indexes of kallsyms, ftrace's functions, BTF function names) is
# kept beside them in <facts>/derived/<what>.pickle, keyed by the source file's size and mtime: a warm
# run loads it instead of parsing megabytes again. Smaller files are parsed every time (the cache
# would cost more than it saves, and test fixtures stay untouched).
DERIVED_DIR = "derived"
DERIVED_MIN_BYTES = 64 * 1024
# Bump when the shape of a cached value changes: older files are then ignored and rewritten.
_DERIVED_FORMAT = 1
_EIL_PREFIX = "_eil_addr_"
_LSM_PREFIX = "bpf_lsm_"

_T = TypeVar("_T")


class FactsError(HarnessError):
    """A kernel facts directory is incomplete or one of its files is malformed."""


class BTFLike(Protocol):
    """What the symbol checks need of a parsed BTF spec (harness.btf.spec.BTFSpec satisfies it)."""

    def func_names(self) -> frozenset[str]: ...

    def by_name(self, name: str, kind: Any = None) -> Any: ...


BTFParser = Callable[[bytes, str], BTFLike]


@dataclass(frozen=True)
class Uname:
    """The guest's uname: release (uname -r), machine (uname -m) and version (uname -v)."""

    release: str
    machine: str
    version: str = ""


@dataclass(frozen=True)
class Kallsyms:
    """Parsed /proc/kallsyms: core symbols with their types, module symbols with their module."""

    # name -> one type letter per kallsyms entry ("tt": two local symbols share the name)
    core: Mapping[str, str]
    modules: Mapping[str, str]  # name -> module of the first entry
    markers: Mapping[str, int]  # addresses of the TEXT_REGIONS marker symbols that are present
    text: str = field(default="", repr=False, compare=False)
    # The kallsyms file, read on the first address_of() when ``text`` is empty (indexes loaded from
    # the derived cache come without the text).
    source: Path | None = field(default=None, repr=False, compare=False)

    def address_of(self, name: str) -> int | None:
        """The address of the first core symbol ``name``, or None (a scan of the text: not hot).

        Raises FactsError when the text has to be read from ``source`` and cannot be.
        """
        if not self.text and self.source is not None:
            try:
                text = self.source.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise FactsError(f"{self.source}: cannot read: {exc.strerror}") from exc
            # Frozen for callers; the text is only a lazily read copy of what ``source`` holds.
            object.__setattr__(self, "text", text)
        return _address_in(self.text, name)

    def region_of(self, name: str) -> str | None:
        """Which special text region (TEXT_REGIONS) holds ``name``, or None when none or unknown."""
        addr = self.address_of(name)
        if not addr:  # kallsyms read without root shows every address as 0
            return None
        for start, end, what in TEXT_REGIONS:
            lo, hi = self.markers.get(start), self.markers.get(end)
            if lo is not None and hi is not None and lo <= addr < hi:
                return what
        return None


def _address_in(text: str, name: str) -> int | None:
    # str.find instead of a multi-line regex: this runs on megabytes of text.
    needle = f" {name}\n"
    pos = text.find(needle)
    if pos < 0:
        if not text.endswith(f" {name}"):
            return None
        pos = len(text) - len(name) - 1
    line_start = text.rfind("\n", 0, pos) + 1
    try:
        return int(text[line_start:pos].split(" ", 1)[0], 16)
    except ValueError:
        return None


def parse_uname(text: str, name: str = UNAME_FILE) -> Uname:
    """Parse uname.json; raises FactsError naming ``name`` when it is not the expected object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FactsError(f"{name}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("release"), str):
        raise FactsError(f"{name}: expected an object with a string 'release', got {text[:60]!r}")
    return Uname(
        release=data["release"],
        machine=str(data.get("machine", "")),
        version=str(data.get("version", "")),
    )


def parse_kallsyms(text: str, name: str = KALLSYMS_FILE) -> Kallsyms:
    """Parse /proc/kallsyms text; raises FactsError when it holds no symbol at all."""
    pairs = _CORE_LINE.findall(text)
    core: dict[str, str] = {sym: typ for typ, sym in pairs}
    if len(core) != len(pairs):
        # Several static functions can share a name; keep one type letter per entry.
        repeated = {sym for sym, n in Counter(sym for _typ, sym in pairs).items() if n > 1}
        for sym in repeated:
            core[sym] = ""
        for typ, sym in pairs:
            if sym in repeated:
                core[sym] += typ
    modules: dict[str, str] = {}
    # Module symbols follow the core ones; only scan from the first tab to keep this cheap.
    first_tab = text.find("\t")
    if first_tab >= 0:
        start = text.rfind("\n", 0, first_tab) + 1
        for _typ, sym, module in _MODULE_LINE.findall(text, start):
            modules.setdefault(sym, module)
    if not core and not modules:
        raise FactsError(f"{name}: no kallsyms lines ('<address> <type> <name>'), got {text[:60]!r}")
    markers: dict[str, int] = {}
    for start_sym, end_sym, _what in TEXT_REGIONS:
        for marker in (start_sym, end_sym):
            addr = _address_in(text, marker) if marker in core else None
            if addr is not None:
                markers[marker] = addr
    return Kallsyms(core=core, modules=modules, markers=markers, text=text)


def parse_filter_functions(text: str) -> frozenset[str]:
    """Function names of tracefs available_filter_functions (core and module ones alike)."""
    names = set(_FIRST_WORD.findall(text))
    if _FTRACE_INVALID in text:
        names = {n for n in names if not n.startswith(_FTRACE_INVALID)}
    return frozenset(names)


def parse_available_events(text: str) -> frozenset[str]:
    """The "category:name" events of tracefs available_events."""
    return frozenset(line.strip() for line in text.splitlines() if ":" in line)


def parse_tracepoint_formats(text: str, name: str = FORMATS_FILE) -> dict[str, str]:
    """Parse tracepoint_formats.json into {"cat/name": format text}; raises FactsError when malformed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FactsError(f"{name}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise FactsError(f"{name}: expected an object of \"cat/name\": format text")
    return {k.replace(":", "/", 1): v for k, v in data.items()}


def parse_config(text: str) -> dict[str, str]:
    """Kernel config text to {"CONFIG_X": value}; "# CONFIG_X is not set" becomes "n", quotes are dropped."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            config[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2 : -len(" is not set")]] = "n"
    return config


def parse_lsm(text: str) -> tuple[str, ...]:
    """The active LSMs of /sys/kernel/security/lsm (comma-separated, in order)."""
    return tuple(part.strip() for part in text.strip().split(",") if part.strip())


def index_clones(symbols: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Base name -> its compiler clones among ``symbols`` (foo -> foo.isra.0, foo.cold), sorted."""
    index: dict[str, list[str]] = {}
    for sym in symbols:
        parsed = parse_clone(sym)
        if parsed:
            index.setdefault(parsed[0], []).append(sym)
    return {k: tuple(sorted(v)) for k, v in index.items()}


def index_by_stem(functions: Iterable[str]) -> dict[str, list[str]]:
    """name_stem() -> the functions with it (in the order given)."""
    index: dict[str, list[str]] = {}
    for fn in functions:
        # name_stem() inlined: this runs over every traceable function.
        key = fn.lstrip("_").split("_", 1)[0].split(".", 1)[0]
        found = index.get(key)
        if found is None:
            index[key] = [fn]
        else:
            found.append(fn)
    return index


def _lsm_hooks_in(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n[len(_LSM_PREFIX):] for n in names if n.startswith(_LSM_PREFIX))


def load_derived(cache: Path, key: tuple[Any, ...], derive: Callable[[], _T]) -> _T:
    """The value pickled in ``cache`` under ``key``, else ``derive()`` (then stored there).

    A cache file that is missing, unreadable, stale (another key) or not a pickle is ignored and
    rewritten; one that cannot be written (a read-only cache) is skipped. Raises what ``derive`` raises.
    """
    try:
        with cache.open("rb") as fh:
            stored = pickle.load(fh)
        if isinstance(stored, tuple) and len(stored) == 2 and stored[0] == key:
            return cast(_T, stored[1])
    except Exception:
        pass  # whatever is wrong with a cache file, deriving the value again fixes it
    value = derive()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache) as fh:
            pickle.dump((key, value), fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.fchmod(fh.fileno(), 0o644)  # readable by the other users of a shared cache, whatever the umask
    except OSError:
        pass
    return value


def _split_event(event: str) -> tuple[str, str]:
    cat, _, name = event.replace(":", "/", 1).partition("/")
    return cat, name


def _default_btf_parser(data: bytes, name: str) -> BTFLike:
    # Imported here: harness.btf.spec is only needed by fentry, lsm and tp_btf probes.
    from harness.btf import spec as btf

    spec: BTFLike = btf.parse_btf(data, name)
    return spec


@dataclass(frozen=True)
class KernelFacts:
    """The facts of one booted (kernel, arch); every file is read and parsed on first use.

    Optional files may be missing: their properties are then None (``kallsyms`` alone is required).
    Properties raise FactsError (or harness.errors.BTFError) when a file is malformed.
    """

    directory: Path
    btf_parser: BTFParser | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return str(self.directory)

    def _read_text(self, filename: str) -> str | None:
        path = self.directory / filename
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FactsError(f"{path}: cannot read: {exc.strerror}") from exc

    def _derived(self, filename: str, what: str, derive: Callable[[], _T]) -> _T | None:
        """``derive()`` (which reads ``filename``), cached in derived/<what>.pickle for big files.

        None when ``filename`` is missing.
        """
        path = self.directory / filename
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FactsError(f"{path}: cannot read: {exc.strerror}") from exc
        if st.st_size < DERIVED_MIN_BYTES:
            return derive()
        key = (_DERIVED_FORMAT, what, st.st_size, st.st_mtime_ns)
        return load_derived(self.directory / DERIVED_DIR / f"{what}.pickle", key, derive)

    @cached_property
    def uname(self) -> Uname | None:
        text = self._read_text(UNAME_FILE)
        return None if text is None else parse_uname(text, str(self.directory / UNAME_FILE))

    @property
    def release(self) -> str:
        """uname -r, or "" when uname.json is missing."""
        return self.uname.release if self.uname else ""

    @property
    def machine(self) -> str:
        """uname -m, or "" when uname.json is missing."""
        return self.uname.machine if self.uname else ""

    @cached_property
    def _kallsyms_index(
        self,
    ) -> tuple[Kallsyms, Mapping[str, tuple[str, ...]], frozenset[str] | None]:
        """kallsyms parsed, its clone index and its error-injection list (see ``error_injection``)."""
        path = self.directory / KALLSYMS_FILE
        missing = f"facts for {self.directory} are incomplete: no kallsyms"
        parsed: list[Kallsyms] = []

        def derive() -> tuple[Any, ...]:
            text = self._read_text(KALLSYMS_FILE)
            if text is None:
                raise FactsError(missing)
            ks = parse_kallsyms(text, str(path))
            parsed.append(ks)
            core = ks.core
            eil = frozenset(s[len(_EIL_PREFIX):] for s in core if s.startswith(_EIL_PREFIX))
            return core, ks.modules, ks.markers, index_clones(core), eil or None

        index = self._derived(KALLSYMS_FILE, "kallsyms", derive)
        if index is None:
            raise FactsError(missing)
        core, modules, markers, clones, eil = index
        # Freshly parsed, the text is at hand for address_of(); loaded from the cache, it is read on
        # first use.
        ks = parsed[0] if parsed else Kallsyms(core, modules, markers, source=path)
        return ks, clones, eil

    @cached_property
    def kallsyms(self) -> Kallsyms:
        return self._kallsyms_index[0]

    @property
    def symbols(self) -> Mapping[str, str]:
        """Core-kernel symbol name -> its kallsyms types, one letter per entry ("T", "t", "tt", "W")."""
        return self.kallsyms.core

    @property
    def module_symbols(self) -> Mapping[str, str]:
        """Module symbol name -> the module it was seen in."""
        return self.kallsyms.modules

    @cached_property
    def kallsyms_all(self) -> bool:
        """Whether kallsyms lists data symbols too (CONFIG_KALLSYMS_ALL): _kbl_addr_*, _eil_addr_*."""
        core = self.kallsyms.core
        return "init_task" in core or "jiffies" in core

    @cached_property
    def error_injection(self) -> frozenset[str] | None:
        """Functions on the error-injection list (ALLOW_ERROR_INJECTION), None when not visible.

        The list's _eil_addr_<fn> markers live in their own section, which Debian's kallsyms
        (6.1, 5.10) leaves out even with CONFIG_KALLSYMS_ALL: None is the usual answer.
        """
        return self._kallsyms_index[2]

    def symbol_types(self, name: str) -> frozenset[str]:
        """The set of kallsyms types of core symbol ``name`` (empty when absent)."""
        return frozenset(self.kallsyms.core.get(name, ""))

    @cached_property
    def _traceable_index(
        self,
    ) -> tuple[frozenset[str], Mapping[str, Sequence[str]], frozenset[str]] | None:
        """available_filter_functions parsed, indexed by stem, and its LSM hooks; None when missing."""

        def derive() -> tuple[frozenset[str], dict[str, list[str]], frozenset[str]] | None:
            text = self._read_text(FILTER_FUNCTIONS_FILE)
            if text is None:
                return None
            names = parse_filter_functions(text)
            return names, index_by_stem(names), _lsm_hooks_in(names)

        return self._derived(FILTER_FUNCTIONS_FILE, "available_filter_functions", derive)

    @cached_property
    def traceable(self) -> frozenset[str] | None:
        """Functions ftrace can attach to (available_filter_functions), None when not collected."""
        index = self._traceable_index
        return None if index is None else index[0]

    @cached_property
    def events(self) -> frozenset[str] | None:
        """Trace events as "cat:name" (available_events), None when not collected."""
        text = self._read_text(EVENTS_FILE)
        return None if text is None else parse_available_events(text)

    @cached_property
    def tracepoint_formats(self) -> Mapping[str, str] | None:
        text = self._read_text(FORMATS_FILE)
        if text is None:
            return None
        return parse_tracepoint_formats(text, str(self.directory / FORMATS_FILE))

    def tracepoint_format(self, event: str) -> str | None:
        """The format text of ``event`` ("cat/name" or "cat:name"), None when unknown."""
        formats = self.tracepoint_formats
        return None if formats is None else formats.get(event.replace(":", "/", 1))

    @cached_property
    def event_names(self) -> Mapping[str, tuple[str, ...]]:
        """Event name -> its categories (a raw_tp or tp_btf target is the bare name)."""
        index: dict[str, list[str]] = {}
        for event in self.events or ():
            cat, name = _split_event(event)
            index.setdefault(name, []).append(cat)
        return {k: tuple(sorted(v)) for k, v in index.items()}

    @cached_property
    def config(self) -> Mapping[str, str] | None:
        def derive() -> dict[str, str] | None:
            text = self._read_text(CONFIG_FILE)
            return None if text is None else parse_config(text)

        return self._derived(CONFIG_FILE, "config", derive)

    @cached_property
    def lsms(self) -> tuple[str, ...] | None:
        """The active LSMs in order, None when the lsm file was not collected."""
        text = self._read_text(LSM_FILE)
        return None if text is None else parse_lsm(text)

    @cached_property
    def features(self) -> KernelFeatures:
        """The guest's feature probe; every feature UNKNOWN (with why) when it could not be had.

        Raises FactsError when the probe's file is malformed.
        """
        text = self._read_text(FEATURES_FILE)
        if text is not None:
            try:
                return parse_features(text, str(self.directory / FEATURES_FILE))
            except FeaturesError as exc:
                raise FactsError(str(exc)) from exc
        why = self._read_text(FEATURES_ERROR_FILE)
        if why is not None:
            return KernelFeatures.unknown(why.strip() or "the feature probe failed")
        return KernelFeatures.unknown("no feature probe in these facts")

    @cached_property
    def helper_names(self) -> frozenset[str] | None:
        """The helpers this kernel defines (``bpf_`` + enum bpf_func_id's names), None without BTF."""
        spec = self.btf if self.has_btf else None
        if spec is None:
            return None
        names: set[str] = set()
        for enum in spec.by_name("bpf_func_id"):
            for value in getattr(enum, "values", ()):
                if value.name.startswith("BPF_FUNC_") and value.name != "BPF_FUNC_unspec":
                    names.add("bpf_" + value.name[len("BPF_FUNC_"):])
        # __BPF_FUNC_MAX_ID is not a helper
        names.discard("bpf_MAX_ID")
        return frozenset(names) or None

    @cached_property
    def has_btf(self) -> bool:
        path = self.directory / BTF_FILE
        return path.is_file() and path.stat().st_size > 0

    @cached_property
    def btf(self) -> BTFLike | None:
        """vmlinux BTF, parsed on first use; None when the kernel has none."""
        if not self.has_btf:
            return None
        path = self.directory / BTF_FILE
        if self.btf_parser is not None:
            return self.btf_parser(path.read_bytes(), str(path))
        # Imported here: harness.btf.spec is only needed by fentry, lsm and tp_btf probes.
        from harness.btf import spec as btf

        data = path.read_bytes()

        def derive() -> tuple[Sequence[int], bytes]:
            layout = btf.index_btf(data, str(path))
            return layout.starts, layout.kinds

        found = self._derived(BTF_FILE, "btf_layout", derive)
        if found is None:
            return _default_btf_parser(data, str(path))
        try:
            return btf.parse_btf_with_layout(data, btf.BTFLayout(*found), str(path))
        except BTFError:
            # A layout that does not fit (written for another file): walk the types again.
            return _default_btf_parser(data, str(path))

    @cached_property
    def btf_func_names(self) -> frozenset[str]:
        """Names of the BTF FUNC types of vmlinux (empty without BTF)."""
        if not self.has_btf:
            return frozenset()

        def derive() -> frozenset[str]:
            spec = self.btf
            return spec.func_names() if spec is not None else frozenset()

        if self.btf_parser is not None:
            # Another parser may see other names: only the default one's are cached.
            return derive()
        names = self._derived(BTF_FILE, "btf_func_names", derive)
        return names if names is not None else frozenset()

    @property
    def clones(self) -> Mapping[str, tuple[str, ...]]:
        """Base name -> its compiler clones in kallsyms (foo -> foo.isra.0, foo.cold), sorted."""
        return self._kallsyms_index[1]

    @property
    def traceable_by_stem(self) -> Mapping[str, Sequence[str]]:
        """name_stem() -> traceable functions with it (unordered): the candidates for "closest"."""
        index = self._traceable_index
        return {} if index is None else index[1]

    @cached_property
    def lsm_hooks(self) -> frozenset[str]:
        """LSM hooks a BPF LSM program can attach to: ``file_open`` for ``bpf_lsm_file_open``."""
        index = self._traceable_index
        if index is not None:
            # The bpf_lsm_* stubs are traceable: a third of the names of kallsyms to scan.
            return index[2]
        return _lsm_hooks_in(self.kallsyms.core)


def name_stem(name: str) -> str:
    """The first word of a kernel name without leading underscores: the subsystem, usually.

    ``__blk_account_io_start`` -> ``blk``; ``__x64_sys_openat`` -> ``x64``.
    """
    return name.lstrip("_").split("_", 1)[0].split(".", 1)[0]


def load_facts(directory: Path, btf_parser: BTFParser | None = None) -> KernelFacts:
    """The facts in ``directory``, parsed lazily; raises FactsError when it has no kallsyms."""
    if not (directory / KALLSYMS_FILE).is_file():
        raise FactsError(f"facts for {directory} are incomplete: no kallsyms")
    return KernelFacts(directory, btf_parser)
