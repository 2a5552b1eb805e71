"""Guest records of earlier boots, reused when nothing a boot depends on has changed.

A boot's in-guest records (each object's load, attach and fire records, the scenarios' records) are a
function of what the VM is given: the kernel package, the guest root and its libbpf, the agent's files,
the VM's settings, the object and its plan entry (its sidecar's triggers and loader settings). Each record
is stored under the sha256 of exactly those inputs, read from the share as the guest would see it. A
later boot whose inputs hash the same takes the records instead of loading the object again; when every
object and scenario of a (kernel, arch) is known and its facts are cached, nothing boots at all. The
records are judged afresh each run, so a change to the harness's checks needs no new boot.

Not reused: objects run by their own loader (their binaries live outside the share), guests on the
host's own root (its libbpf is not pinned), records of an agent that crashed on the object, and any
boot whose agent failed. ``--fresh-boots`` turns lookups off (records are still stored).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from harness.files import atomic_write
from harness.kernels.cache import file_sha256
from harness.vm.guest import protocol

LAYOUT = "1"  # bump when what a record holds, or how its key is made, changes
DIR = "guest-records"
# The libbpf of a guest root: what every in-guest check loads with, beside the root's own manifest.
LIBBPF_GLOBS = ("usr/lib/*/libbpf.so.*", "lib/*/libbpf.so.*", "usr/lib64/libbpf.so.*")
# What a reused boot's done.json keeps: who loaded, not how long it took.
DONE_KEYS = ("release", "machine", "lsm", "stats_enabled", "os_release", "libbpf", "bpftool")


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def root_identity(root: Path) -> str:
    """The guest root's manifest (its suite, packages and key files' digests) and its libbpf's digest."""
    parts = [(root.parent / "manifest.json").read_text(errors="replace")]
    for pattern in LIBBPF_GLOBS:
        for lib in sorted(root.glob(pattern)):
            if lib.is_file() and not lib.is_symlink():
                parts.append(f"{lib.relative_to(root)} {file_sha256(lib)}")
    return "\n".join(parts)


def boot_identity(
    share: Path, kernel_digest: str, arch: str, root: Path, vm: Mapping[str, object]
) -> str:
    """The sha256 of what every record of a boot depends on besides its object: the kernel package,
    the guest root, the agent's files as put in ``share``, and the VM's settings ``vm``."""
    digest = hashlib.sha256(f"{LAYOUT}\n{kernel_digest}\n{arch}\n".encode())
    digest.update(root_identity(root).encode())
    for helper in sorted(share.glob("*.py")):
        digest.update(f"\n{helper.name} {file_sha256(helper)}".encode())
    digest.update(canonical(vm).encode())
    return digest.hexdigest()


def object_key(identity: str, share: Path, entry: protocol.PlanObject) -> str | None:
    """The key of one plan entry's record; None for an object that is never reused."""
    if entry.get("own_loader"):
        return None
    obj = share / str(entry["path"])
    payload = f"{identity}\nobject\n{canonical(entry)}\n{file_sha256(obj)}"
    return hashlib.sha256(payload.encode()).hexdigest()


def scenarios_key(identity: str, share: Path, scenarios: Sequence[protocol.UpdateScenario]) -> str:
    """The key of a boot's scenario records: the scenarios and every user-space file they run."""
    digest = hashlib.sha256(f"{identity}\nscenarios\n{canonical(list(scenarios))}".encode())
    user = share / protocol.USER_DIR
    for path in sorted(p for p in user.rglob("*") if p.is_file()) if user.is_dir() else []:
        digest.update(f"\n{path.relative_to(share)} {file_sha256(path)}".encode())
    return digest.hexdigest()


@dataclass
class Lookup:
    """What a boot found in the store, and what its guest must still do."""

    identity: str
    plan: protocol.Plan  # the whole plan, before what was found is cut out of it
    keys: dict[str, str | None]  # object name -> its record's key (None: never reused)
    found: dict[str, protocol.ObjectRecord] = field(default_factory=dict)
    scenarios_key: str = ""
    scenarios: list[protocol.ScenarioRecord] | None = None  # None: to run (or there are none)
    done: dict[str, Any] | None = None  # the reused boot's done.json fields
    when: str = ""  # when the oldest reused record was made

    @property
    def everything(self) -> bool:
        """Whether no object nor scenario is left for a guest to run."""
        return len(self.found) == len(self.keys) and (not self.scenarios_key or self.scenarios is not None)


class RecordStore:
    """The records under ``cache_root/guest-records``: one JSON file per key, written atomically."""

    def __init__(self, cache_root: Path, lookups: bool = True) -> None:
        self.root = cache_root / DIR
        self.lookups = lookups

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.lookups:
            return None
        try:
            data = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("layout") == LAYOUT else None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Store ``value`` (a cache that cannot be written only costs the next run a boot)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({"layout": LAYOUT, "made": time.time(), **value}))
        except OSError:
            pass

    def lookup(self, identity: str, share: Path, plan: protocol.Plan) -> Lookup:
        """The records ``plan`` (as written in ``share``) can take from earlier boots."""
        objects = plan.get("objects") or []
        found = Lookup(identity, plan, {str(e["name"]): object_key(identity, share, e) for e in objects})
        scenarios = plan.get("scenarios") or []
        if scenarios:
            found.scenarios_key = scenarios_key(identity, share, scenarios)  # to store under, at least
        boot = self.get(identity)
        if boot is None or not isinstance(boot.get("done"), dict):
            return found  # no earlier boot of this identity: nothing to say who loaded the records
        found.done = cast(dict[str, Any], boot["done"])
        made: list[float] = []
        for name, key in found.keys.items():
            record = self.get(key) if key else None
            if record is not None and isinstance(record.get("record"), dict):
                found.found[name] = cast(protocol.ObjectRecord, record["record"])
                made.append(float(record.get("made", 0)))
        if found.scenarios_key:
            stored = self.get(found.scenarios_key)
            if stored is not None and isinstance(stored.get("records"), list):
                found.scenarios = cast(list[protocol.ScenarioRecord], stored["records"])
                made.append(float(stored.get("made", 0)))
        if made:
            found.when = time.strftime("%Y-%m-%d %H:%M", time.localtime(min(made)))
        return found

    def store(
        self,
        lookup: Lookup,
        done: Mapping[str, Any],
        records: Iterable[protocol.ObjectRecord],
        scenarios: list[protocol.ScenarioRecord] | None,
    ) -> None:
        """Keep what a successful boot's guest did: its loader, each object's record, the scenarios'."""
        self.put(lookup.identity, {"done": {k: done[k] for k in DONE_KEYS if k in done}})
        for record in records:
            key = lookup.keys.get(str(record.get("object")))
            if key and "error" not in record and str(record.get("object")) not in lookup.found:
                self.put(key, {"record": record})
        if lookup.scenarios_key and scenarios is not None and lookup.scenarios is None:
            if not any("error" in s for s in scenarios):
                self.put(lookup.scenarios_key, {"records": scenarios})


def remaining_plan(plan: protocol.Plan, lookup: Lookup) -> protocol.Plan:
    """``plan`` without what ``lookup`` found: what the guest still has to do."""
    left: protocol.Plan = {
        "facts": plan.get("facts", False),
        "objects": [e for e in plan.get("objects") or [] if str(e["name"]) not in lookup.found],
        "scenarios": (plan.get("scenarios") or []) if lookup.scenarios is None else [],
    }
    return left


def merged_records(
    plan: protocol.Plan, lookup: Lookup, fresh: Sequence[protocol.ObjectRecord]
) -> list[protocol.ObjectRecord]:
    """Every object's record in the plan's order: the reused ones and those the guest just made."""
    by_name = {str(r.get("object")): r for r in fresh}
    out: list[protocol.ObjectRecord] = []
    for entry in plan.get("objects") or []:
        name = str(entry["name"])
        record = lookup.found.get(name) or by_name.get(name)
        if record is not None:
            out.append(record)
    return out
