"""Sidecar files beside BPF programs: how to trigger each program, what its loader sets, which programs
are alternatives for one job, and what is known and accepted."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.kernels.version import KernelVersion
from harness.programs.own_loader import OwnLoader, parse_own_loader
from harness.report.results import Check, Outcome, Probe

SIDE_KEYS = {
    "trigger", "programs", "expect", "description", "loader", "alternatives", "own_loader", "isolate",
}
PROGRAM_KEYS = {"trigger", "expect", "description"}
LOADER_KEYS = {"attach_targets", "maps", "rodata", "autoload"}
MAP_SIZE_KEYS = ("max_entries", "value_size", "key_size")


@dataclass(frozen=True)
class LoaderSettings:
    """What the object's own loader sets between opening and loading it, which the object alone lacks:
    the function each program attaches to (``bpf_program__set_attach_target``), map sizes, ``.rodata``
    values, and the programs it leaves out (autoload off)."""

    attach_targets: Mapping[str, str] = field(default_factory=dict)  # program -> function
    maps: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # map -> MAP_SIZE_KEYS -> value
    rodata: Mapping[str, int | bool | str] = field(default_factory=dict)  # .rodata variable -> value
    autoload_off: frozenset[str] = frozenset()  # programs left out

    @property
    def programs(self) -> set[str]:
        """The programs these settings name."""
        return set(self.attach_targets) | set(self.autoload_off)


@dataclass(frozen=True)
class Expectation:
    """A known, accepted outcome: ``check`` of the program is ``outcome`` on the matching kernels/arches."""

    outcome: Outcome  # fail, skip, pass, error
    check: Check | None = None  # None: every check ("*")
    kernels: tuple[str, ...] = ()  # kernel ids; empty means every kernel
    arches: tuple[str, ...] = ()  # empty means every arch
    before: KernelVersion | None = None  # applies to kernels older than this ("fails before 5.17")
    since: KernelVersion | None = None  # applies to kernels at or after this version
    reason: str = ""

    def describe(self) -> str:
        where = []
        if self.kernels:
            where.append("on " + ", ".join(self.kernels))
        if self.before is not None:
            where.append(f"before {self.before}")
        if self.since is not None:
            where.append(f"since {self.since}")
        if self.arches:
            where.append("on " + ", ".join(self.arches))
        # "attach fail since 5.17": the check, the expected outcome, where (never "passs" or "skips").
        check = self.check.value if self.check is not None else "every check"
        text = " ".join([check, self.outcome.value, *where])
        return f"{text}: {self.reason}" if self.reason else text


@dataclass(frozen=True)
class Sidecar:
    """The parsed sidecar of one object (empty when there is none)."""

    path: Path | None = None
    trigger: Any = None  # for every program: "default", a shell command or an argv list
    program_triggers: Mapping[str, Any] = field(default_factory=dict)
    expectations: Mapping[str, tuple[Expectation, ...]] = field(default_factory=dict)  # program or "*"
    program_lines: Mapping[str, int] = field(default_factory=dict)  # program -> its line under programs:
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    # Programs that do one job, of which a loader picks one that works: group name -> members.
    alternatives: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    alternative_lines: Mapping[str, int] = field(default_factory=dict)  # group -> its line
    own_loader: OwnLoader | None = None  # the object is loaded by this command in the guest, not by libbpf
    # Its programs are attached and fired alone, never in a batch beside other objects' programs.
    isolate: bool = False

    def group_of(self, program: str) -> tuple[str, tuple[str, ...]] | None:
        """(group name, members) of the alternatives group ``program`` is in, None when in none."""
        return next(((g, m) for g, m in self.alternatives.items() if program in m), None)

    def triggers_for(self, probes: Iterable[Probe]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for probe in probes:
            trig = self.program_triggers.get(probe.program, self.trigger)
            if trig is not None:
                out[probe.program] = trig
        return out

    def expectations_for(self, program: str) -> tuple[Expectation, ...]:
        return tuple(self.expectations.get(program, ())) + tuple(self.expectations.get("*", ()))


def _as_text(where: str, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: {key!r} must be a string, not {type(value).__name__}")
    if isinstance(value, float):
        # YAML reads 5.10 as the number 5.1: the kernel id or version would silently be another one.
        raise ConfigError(
            f"{where}: {key!r} is the number {value!r}: quote kernel ids and versions "
            f"({key}: \"5.10\", not {key}: 5.10, which YAML reads as 5.1)"
        )
    return str(value)


def _as_tuple(where: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(_as_text(where, key, v) for v in value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return (_as_text(where, key, value),)
    raise ConfigError(f"{where}: {key!r} must be a string or a list")


def _check_trigger(where: str, value: Any) -> Any:
    """A trigger is "default", a shell command or an argv list of strings."""
    argv = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    if isinstance(value, str) or argv:
        return value
    raise ConfigError(f"{where}: 'trigger' must be \"default\", a shell command or a list of strings (argv)")


def _as_version(where: str, key: str, item: Mapping[str, Any]) -> KernelVersion | None:
    if key not in item:
        return None
    text = _as_text(where, key, item[key])
    version = KernelVersion.parse(text)
    if version is None:
        raise ConfigError(f"{where}: {key!r} is not a kernel version: {text!r} (e.g. \"5.17\")")
    return version


def _mapping(where: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key!r} must be a mapping")
    return {str(k): v for k, v in value.items()}


def _count(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: {key!r} must be a positive whole number, not {value!r}")
    return value


def parse_loader(where: str, raw: Any) -> LoaderSettings:
    """Parse a ``loader:`` mapping; raises ConfigError naming the entry."""
    at = f"{where}: loader"
    data = _mapping(where, "loader", raw)
    unknown = sorted(set(data) - LOADER_KEYS)
    if unknown:
        raise ConfigError(
            f"{at}: unknown key {', '.join(map(repr, unknown))} (known: {', '.join(sorted(LOADER_KEYS))})"
        )
    targets: dict[str, str] = {}
    for prog, func in _mapping(at, "attach_targets", data.get("attach_targets")).items():
        if not isinstance(func, str) or not func:
            raise ConfigError(f"{at}: attach_targets: {prog!r} must name a function, not {func!r}")
        targets[prog] = func
    maps: dict[str, dict[str, int]] = {}
    for name, sizes in _mapping(at, "maps", data.get("maps")).items():
        given = _mapping(f"{at}: maps", name, sizes)
        bad = sorted(set(given) - set(MAP_SIZE_KEYS))
        if bad or not given:
            raise ConfigError(
                f"{at}: maps: {name!r} sets {', '.join(MAP_SIZE_KEYS)}"
                + (f", not {', '.join(map(repr, bad))}" if bad else "")
            )
        maps[name] = {k: _count(f"{at}: maps: {name!r}", k, v) for k, v in given.items()}
    rodata: dict[str, int | bool | str] = {}
    for var, value in _mapping(at, "rodata", data.get("rodata")).items():
        if not isinstance(value, (bool, int, str)):
            raise ConfigError(
                f"{at}: rodata: {var!r} must be a number, true/false or a string, not {value!r}"
            )
        rodata[var] = value
    off: set[str] = set()
    for prog, on in _mapping(at, "autoload", data.get("autoload")).items():
        if not isinstance(on, bool):
            raise ConfigError(f"{at}: autoload: {prog!r} must be true or false, not {on!r}")
        if not on:
            off.add(prog)
    both = sorted(off & set(targets))
    if both:
        raise ConfigError(
            f"{at}: program {both[0]!r} is left out (autoload: false) but given an attach target"
        )
    return LoaderSettings(targets, maps, rodata, frozenset(off))


def _parse_expectation(w: str, item: Any) -> Expectation:
    allowed = {"outcome", "check", "kernels", "kernel", "arches", "arch", "before", "since", "reason"}
    if not isinstance(item, dict):
        raise ConfigError(f"{w}: expected a mapping")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise ConfigError(f"{w}: unknown key {', '.join(map(repr, unknown))}")
    outcome = str(item.get("outcome", "fail"))
    if outcome not in {o.value for o in Outcome} - {"xfail", "xpass"}:
        raise ConfigError(f"{w}: unknown outcome {outcome!r} (pass, fail, skip or error)")
    check = str(item.get("check", "*"))
    kernels_key = "kernels" if "kernels" in item else "kernel"
    arches_key = "arches" if "arches" in item else "arch"
    if check != "*" and check not in {c.value for c in Check}:
        raise ConfigError(f"{w}: unknown check {check!r} (known: {', '.join(c.value for c in Check)})")
    return Expectation(
        outcome=Outcome(outcome),
        check=Check(check) if check != "*" else None,
        kernels=_as_tuple(w, kernels_key, item.get(kernels_key)),
        arches=_as_tuple(w, arches_key, item.get(arches_key)),
        before=_as_version(w, "before", item),
        since=_as_version(w, "since", item),
        reason=str(item.get("reason", "")),
    )


def parse_expectations(where: str, raw: Any) -> tuple[Expectation, ...]:
    """Parse an ``expect:`` list; raises ConfigError naming the entry."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: 'expect' must be a list")
    return tuple(_parse_expectation(f"{where}: expect[{i}]", item) for i, item in enumerate(raw))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in a mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The 1-based line of each top-level key, (key,), and of each program, ("programs", name)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str, ...], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        lines[(str(key.value),)] = key.start_mark.line + 1
        if key.value in ("programs", "alternatives") and isinstance(value, yaml.MappingNode):
            for name, _ in value.value:
                lines[(str(key.value), str(name.value))] = name.start_mark.line + 1
    return lines


def _at(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def parse_sidecar(text: str, path: Path) -> Sidecar:
    """Parse a sidecar's YAML; raises ConfigError naming the file and the entry."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    if data is None:
        return Sidecar(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    lines = _key_lines(text)
    unknown = sorted(set(data) - SIDE_KEYS, key=str)
    if unknown:
        raise ConfigError(
            f"{_at(path, lines.get((str(unknown[0]),)))}: unknown key {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(SIDE_KEYS))})"
        )
    programs = data.get("programs") or {}
    if not isinstance(programs, dict):
        raise ConfigError(f"{path}: 'programs' must be a mapping of program name to settings")
    triggers: dict[str, Any] = {}
    expectations: dict[str, tuple[Expectation, ...]] = {}
    if "expect" in data:
        expectations["*"] = parse_expectations(str(path), data["expect"])
    for name, settings in programs.items():
        where = f"{path}: program {name!r}"
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: expected a mapping")
        bad = sorted(set(settings) - PROGRAM_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key {', '.join(map(repr, bad))}")
        if "trigger" in settings:
            triggers[str(name)] = _check_trigger(where, settings["trigger"])
        if "expect" in settings:
            expectations[str(name)] = parse_expectations(where, settings["expect"])
    trigger = _check_trigger(str(path), data["trigger"]) if data.get("trigger") is not None else None
    program_lines = {str(n): lines[("programs", str(n))] for n in programs if ("programs", str(n)) in lines}
    loader = parse_loader(_at(path, lines.get(("loader",))), data.get("loader"))
    groups = _parse_alternatives(path, data.get("alternatives"), lines)
    group_lines = {g: lines[("alternatives", g)] for g in groups if ("alternatives", g) in lines}
    own = None
    if "own_loader" in data:
        where = _at(path, lines.get(("own_loader",)))
        if "loader" in data:
            raise ConfigError(
                f"{where}: 'own_loader' and 'loader' exclude each other: an own loader sets targets, map"
                " sizes and .rodata itself"
            )
        own = parse_own_loader(where, data["own_loader"], path.parent)
    isolate = data.get("isolate", False)
    if not isinstance(isolate, bool):
        raise ConfigError(f"{_at(path, lines.get(('isolate',)))}: 'isolate' must be true or false")
    return Sidecar(
        path, trigger, triggers, expectations, program_lines, loader, groups, group_lines, own, isolate
    )


def _parse_alternatives(
    path: Path, raw: Any, lines: Mapping[tuple[str, ...], int]
) -> dict[str, tuple[str, ...]]:
    """``alternatives: {group: [program, ...]}``; raises ConfigError naming the file and line."""
    if raw is None:
        return {}
    where = _at(path, lines.get(("alternatives",)))
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'alternatives' must be a mapping of group name to a list of programs")
    groups: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for name, members in raw.items():
        at = _at(path, lines.get(("alternatives", str(name))))
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{at}: alternatives group {name!r} must list two or more program names")
        for member in members:
            if member in seen:
                raise ConfigError(
                    f"{at}: program {member!r} is in alternatives groups {seen[member]!r} and {name!r}"
                )
            seen[member] = str(name)
        groups[str(name)] = tuple(members)
    return groups


def load_sidecar(directory: Path, object_name: str) -> Sidecar:
    """The sidecar ``<object>.yaml`` in ``directory``, or an empty one."""
    for suffix in (".yaml", ".yml"):
        path = directory / f"{object_name}{suffix}"
        if path.exists():
            try:
                return parse_sidecar(path.read_text(), path)
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return Sidecar()


def check_sidecar_programs(sidecar: Sidecar, object_name: str, programs: Collection[str]) -> None:
    """Refuse a sidecar whose ``programs:`` names a program its object does not have (a typo would
    leave the expectations and triggers it gives unused); raises ConfigError naming the file and line."""
    if sidecar.path is None:
        return
    named = set(sidecar.program_lines) | set(sidecar.program_triggers) | (set(sidecar.expectations) - {"*"})
    named |= sidecar.loader.programs
    for group, members in sidecar.alternatives.items():
        for name in members:
            if name not in programs:
                where = _at(sidecar.path, sidecar.alternative_lines.get(group))
                have = ", ".join(sorted(programs)) or "none"
                raise ConfigError(
                    f"{where}: alternatives group {group!r} names program {name!r}, which is not in "
                    f"object {object_name!r} (its programs: {have})"
                )
    for name in sorted(named - set(programs)):
        where = _at(sidecar.path, sidecar.program_lines.get(name))
        have = ", ".join(sorted(programs)) or "none"
        raise ConfigError(
            f"{where}: program {name!r} is not in object {object_name!r} (its programs: {have})"
        )


def load_sidecars(directory: Path, objects: Mapping[str, Collection[str] | None]) -> dict[str, Sidecar]:
    """Every sidecar of ``directory``, by object name, each checked against the programs of its object
    (None: not known, as for an object that built on no arch).

    Raises ConfigError for a malformed sidecar, one with no object (``<name>.bpf.c`` or ``.bpf.o``)
    beside it, and one naming a program its object does not have.
    """
    found: dict[str, Sidecar] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        name = path.name.rsplit(".", 1)[0]
        if name not in objects:
            raise ConfigError(
                f"{path}: a sidecar without its object: no {name}.bpf.c or {name}.bpf.o beside it"
            )
        if name in found:
            continue  # load_sidecar reads the .yaml one
        found[name] = sidecar = load_sidecar(directory, name)
        programs = objects[name]
        if programs is not None:
            check_sidecar_programs(sidecar, name, programs)
    return found
