"""Result records (one per probe × kernel × arch × check) and the matrix built from them."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from harness.errors import ResultsError

SCHEMA_NAME = "bpf-kernel-matrix/results"
SCHEMA_VERSION = 2
# Version 1 did not record the baseline; it is read as version 2 with "baseline": null (unknown).
READABLE_VERSIONS = (1, 2)


class Outcome(str, Enum):
    """What one check concluded. ERROR is the harness's or VM's failure, never the probe's."""

    PASS = "pass"
    FAIL = "fail"
    XFAIL = "xfail"  # failed, and an expectation says it should
    XPASS = "xpass"  # passed where an expectation says it should fail
    SKIP = "skip"
    ERROR = "error"


# Worst first: the summary of several checks is the first of these that occurs.
SEVERITY: tuple[Outcome, ...] = (
    Outcome.ERROR,
    Outcome.FAIL,
    Outcome.XPASS,
    Outcome.XFAIL,
    Outcome.PASS,
    Outcome.SKIP,
)


class Check(str, Enum):
    """The checks a probe goes through on a kernel, in the order they are shown."""

    SYMBOL = "symbol"  # offline: target present and attachable (kallsyms, ftrace, BTF, tracepoints)
    PROTOTYPE = "prototype"  # offline: the target's parameters against the baseline kernel
    LAYOUT = "layout"  # offline: CO-RE field accesses resolved against the kernel's BTF
    TP_FORMAT = "tp_format"  # offline: tracepoint format fields against the baseline kernel
    UPROBE = "uprobe"  # offline: user-space target symbol, inlining, offsets
    FEATURES = "features"  # offline: program type, helpers, kfuncs and map types against the kernel's probe
    LOAD = "load"  # guest: verifier accepted the program
    CORE = "core"  # guest: libbpf resolved every CO-RE relocation
    ATTACH = "attach"  # guest: attached to its hook
    FIRE = "fire"  # guest: ran after its trigger, with how many misses


CHECK_ORDER: tuple[Check, ...] = tuple(Check)


def worst(outcomes: Iterable[Outcome]) -> Outcome | None:
    """Return the most severe outcome of ``outcomes``, or None when there are none."""
    present = set(outcomes)
    for outcome in SEVERITY:
        if outcome in present:
            return outcome
    return None


@dataclass(frozen=True)
class Probe:
    """One BPF program of one object: what it hooks and where."""

    object: str  # the object's stem, e.g. "vfs_unlink" for vfs_unlink.bpf.o
    program: str  # the program's (function's) name
    section: str  # the ELF section, e.g. "kprobe/vfs_unlink"
    kind: str  # hook type: kprobe, fentry, tracepoint, lsm, uprobe, ...
    target: str  # the kernel function, tracepoint, LSM hook or user-space symbol

    @property
    def id(self) -> str:
        """A short stable id: the program name, prefixed by the object when they differ."""
        return self.program if self.program == self.object else f"{self.object}:{self.program}"


@dataclass(frozen=True)
class CellResult:
    """The outcome of one check of one probe on one kernel and arch."""

    probe: Probe
    kernel: str  # the kernels.yaml id, e.g. "6.1"
    arch: str  # x86_64 or arm64
    check: Check
    outcome: Outcome
    reason: str = ""  # one line a user can act on; empty for a plain pass
    details: Mapping[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    expected: str | None = None  # the expectation that turned FAIL into XFAIL (or PASS into XPASS)

    def serialize(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the schema documented in the README)."""
        return {
            "object": self.probe.object,
            "program": self.probe.program,
            "section": self.probe.section,
            "hook": self.probe.kind,
            "target": self.probe.target,
            "kernel": self.kernel,
            "arch": self.arch,
            "check": self.check.value,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "details": dict(self.details),
            "duration": round(self.duration, 3),
            "expected": self.expected,
        }

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> CellResult:
        """Inverse of serialize(); raises KeyError or ValueError on a malformed record."""
        probe = Probe(
            object=data["object"],
            program=data["program"],
            section=data["section"],
            kind=data["hook"],
            target=data["target"],
        )
        return cls(
            probe=probe,
            kernel=str(data["kernel"]),
            arch=data["arch"],
            check=Check(data["check"]),
            outcome=Outcome(data["outcome"]),
            reason=data.get("reason", ""),
            details=data.get("details") or {},
            duration=float(data.get("duration", 0.0)),
            expected=data.get("expected"),
        )

    def with_outcome(self, outcome: Outcome, expected: str | None) -> CellResult:
        """Return a copy with another outcome, recording the expectation that caused it."""
        return dataclasses.replace(self, outcome=outcome, expected=expected)


@dataclass(frozen=True)
class KernelRun:
    """What the run learned about one (kernel, arch): its version, how it was booted, how long it took."""

    kernel: str
    arch: str
    version: str = ""  # uname -r in the guest, or the package's version when not booted
    source: str = ""  # e.g. "debian bookworm linux-image-6.1.0-27-amd64-unsigned 6.1.115-1"
    digest: str = ""  # sha256 of the package the kernel came from
    accelerator: str = ""  # kvm or tcg; empty when the kernel was not booted
    booted: bool = False
    boot_seconds: float = 0.0
    agent_seconds: float = 0.0  # the part of the boot the guest agent ran (facts, loads, triggers)
    lsm: str = ""  # the active LSMs in the guest
    guest: str = ""  # the guest userland kernels.yaml chose: "debian trixie", or "host"
    libbpf: str = ""  # the libbpf version the guest loaded with (the loader of every in-guest check)
    bpftool: str = ""  # the guest's bpftool version
    error: str = ""  # set when the kernel could not be fetched or booted
    notes: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        return f"{self.kernel}/{self.arch}"

    def serialize(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        data["boot_seconds"] = round(self.boot_seconds, 3)
        data["agent_seconds"] = round(self.agent_seconds, 3)
        return data

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> KernelRun:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["notes"] = tuple(values.get("notes", ()))
        values["kernel"] = str(values["kernel"])
        return cls(**values)


@dataclass(frozen=True)
class Alternatives:
    """An alternatives group of a sidecar: programs of one object that do one job (a loader picks one)."""

    object: str
    group: str
    members: tuple[str, ...]

    def serialize(self) -> dict[str, Any]:
        return {"object": self.object, "group": self.group, "members": list(self.members)}

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> Alternatives:
        return cls(str(data["object"]), str(data["group"]), tuple(str(m) for m in data["members"]))


@dataclass(frozen=True)
class Matrix:
    """Every record of a run (or of merged runs), plus what is known of each kernel and the
    alternatives groups of its sidecars."""

    records: tuple[CellResult, ...]
    kernels: tuple[KernelRun, ...] = ()
    baseline: str | None = None  # the kernels.yaml id prototypes were diffed against; None: unknown
    groups: tuple[Alternatives, ...] = ()

    def columns(self) -> list[tuple[str, str]]:
        """(kernel, arch) pairs in kernels.yaml order, then any seen only in records."""
        seen: dict[tuple[str, str], None] = {}
        for run in self.kernels:
            seen.setdefault((run.kernel, run.arch), None)
        for rec in self.records:
            seen.setdefault((rec.kernel, rec.arch), None)
        return list(seen)

    def probes(self) -> list[Probe]:
        """Probes sorted by object then program (stable from run to run)."""
        return list(self._probes)

    @functools.cached_property
    def _probes(self) -> tuple[Probe, ...]:
        return tuple(sorted({r.probe for r in self.records}, key=lambda p: (p.object, p.program)))

    @functools.cached_property
    def _cells(self) -> dict[tuple[Probe, str, str], list[CellResult]]:
        """Every cell's records in check order, indexed once (the reports ask for each cell often)."""
        cells: dict[tuple[Probe, str, str], list[CellResult]] = {}
        for r in self.records:
            cells.setdefault((r.probe, r.kernel, r.arch), []).append(r)
        for found in cells.values():
            found.sort(key=lambda r: CHECK_ORDER.index(r.check))
        return cells

    def cell(self, probe: Probe, kernel: str, arch: str) -> list[CellResult]:
        """The records of one cell, in check order."""
        return list(self._cells.get((probe, kernel, arch), ()))

    def summary(self, probe: Probe, kernel: str, arch: str) -> Outcome | None:
        """The cell's overall outcome: its worst check, or None when it has no records."""
        return worst(r.outcome for r in self.cell(probe, kernel, arch))

    def kernel_run(self, kernel: str, arch: str) -> KernelRun | None:
        for run in self.kernels:
            if run.kernel == kernel and run.arch == arch:
                return run
        return None

    def serialize(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "baseline": self.baseline,
            "kernels": [k.serialize() for k in self.kernels],
            "records": [r.serialize() for r in self.records],
            "groups": [g.serialize() for g in self.groups],
        }

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> Matrix:
        """Build a Matrix from a results document of any readable version (an older one is
        migrated first); raises ResultsError naming what is wrong."""
        data = migrate_document(data)
        baseline = data.get("baseline")
        if baseline is not None and not isinstance(baseline, str):
            raise ResultsError(f"malformed baseline: {baseline!r} (expected a kernel id or null)")
        try:
            records = tuple(CellResult.deserialize(r) for r in data["records"])
            kernels = tuple(KernelRun.deserialize(k) for k in data.get("kernels", []))
            groups = tuple(Alternatives.deserialize(g) for g in data.get("groups", []))
        except (KeyError, TypeError) as exc:
            raise ResultsError(f"malformed results record: {exc}") from exc
        except ValueError as exc:  # an unknown check or outcome
            raise ResultsError(str(exc)) from exc
        return cls(records=records, kernels=kernels, baseline=baseline or None, groups=groups)


def migrate_document(data: Mapping[str, Any]) -> dict[str, Any]:
    """A results document of a readable version in the current version's shape (pure).

    Version 1 did not record the baseline: it becomes ``"baseline": null``, which reads as unknown.
    Raises ResultsError for another schema or an unsupported version.
    """
    if data.get("schema") != SCHEMA_NAME:
        raise ResultsError(f"not a {SCHEMA_NAME} document (schema={data.get('schema')!r})")
    version = data.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ResultsError(
            f"results version {version!r} is not supported (expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    if version == 1:
        return {**data, "version": SCHEMA_VERSION, "baseline": None}
    return dict(data)


def parse_matrix_json(text: str, name: str = "results") -> Matrix:
    """Parse a results document; raises ResultsError naming the file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{name}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{name}: not a results document")
    try:
        return Matrix.deserialize(data)
    except ResultsError as exc:
        raise ResultsError(f"{name}: {exc}") from exc


class MergeConflictError(ResultsError):
    """Shards that disagree: the same cell with another outcome or reason, or other baselines."""

    def __init__(self, message: str, conflicts: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.conflicts = tuple(conflicts)


CellKey = tuple[Probe, str, str, Check]


def _verdict(r: CellResult) -> tuple[Outcome, str]:
    """What two copies of one cell must agree on; durations and details may differ between runs."""
    return (r.outcome, r.reason)


def _describe(r: CellResult) -> str:
    return f"{r.outcome.value} ({r.reason})" if r.reason else r.outcome.value


def merge_baseline(baselines: Sequence[tuple[str, str | None]]) -> str | None:
    """The one baseline of shards given as (name, baseline); None when no shard records one.

    A shard without a baseline (a version 1 document, or a run without one) agrees with any;
    two shards with different baselines raise MergeConflictError naming both.
    """
    known: dict[str, str] = {}
    for name, baseline in baselines:
        if baseline is not None:
            known.setdefault(baseline, name)
    if len(known) > 1:
        listed = ", ".join(f"{name} against {base}" for base, name in known.items())
        raise MergeConflictError(f"shards were diffed against different baselines: {listed}")
    return next(iter(known), None)


def merge_matrices(matrices: Iterable[Matrix], names: Sequence[str] = ()) -> Matrix:
    """Merge shards (named by ``names``, else by position): the records and kernels of each.

    A cell in several shards must have the same outcome and reason in each; it is kept once (the
    copy that sorts first, so the result does not depend on the shards' order). Raises
    MergeConflictError listing every cell that differs, one line each, or naming other baselines.
    """
    shards = list(matrices)
    label = [names[i] if i < len(names) else f"shard {i + 1}" for i in range(len(shards))]
    baseline = merge_baseline([(label[i], m.baseline) for i, m in enumerate(shards)])
    records: dict[CellKey, tuple[CellResult, str]] = {}
    kernels: dict[tuple[str, str], KernelRun] = {}
    conflicts: dict[CellKey, str] = {}
    groups: dict[Alternatives, None] = {}
    for name, m in zip(label, shards):
        groups.update(dict.fromkeys(m.groups))
        for k in m.kernels:
            kernels[(k.kernel, k.arch)] = k
        for r in m.records:
            key = (r.probe, r.kernel, r.arch, r.check)
            seen = records.get(key)
            if seen is None:
                records[key] = (r, name)
            elif _verdict(seen[0]) != _verdict(r):
                conflicts.setdefault(key, (
                    f"{r.probe.id} {r.kernel}/{r.arch} {r.check.value}: "
                    f"{_describe(seen[0])} in {seen[1]}, {_describe(r)} in {name}"
                ))
            elif _sort_key(r) < _sort_key(seen[0]):
                records[key] = (r, seen[1])
    if conflicts:
        lines = list(conflicts.values())
        raise MergeConflictError(
            f"{len(lines)} {'cell differs' if len(lines) == 1 else 'cells differ'} between shards "
            "(same object, program, kernel, arch and check):\n" + "\n".join(lines),
            lines,
        )
    return Matrix(
        records=tuple(r for r, _ in records.values()), kernels=tuple(kernels.values()), baseline=baseline,
        groups=tuple(groups),
    )


def _sort_key(r: CellResult) -> str:
    return json.dumps(r.serialize(), sort_keys=True)
