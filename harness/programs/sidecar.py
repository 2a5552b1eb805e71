"""Sidecar files beside BPF programs: how to trigger each program, and what is known and accepted."""

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

SIDE_KEYS = {"trigger", "programs", "expect", "description", "own_loader"}
PROGRAM_KEYS = {"trigger", "expect", "description"}


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
    own_loader: OwnLoader | None = None  # the object is loaded by this command in the guest, not by libbpf

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
        if key.value == "programs" and isinstance(value, yaml.MappingNode):
            for name, _ in value.value:
                lines[("programs", str(name.value))] = name.start_mark.line + 1
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
    own = None
    if "own_loader" in data:
        own = parse_own_loader(_at(path, lines.get(("own_loader",))), data["own_loader"], path.parent)
    return Sidecar(path, trigger, triggers, expectations, program_lines, own)


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
