"""How often the offline layout verdict (and the in-guest core verdict) agrees with the in-guest load result.

Reads matrix JSON documents (``--matrix-json``; a run with ``--no-expectations`` on a real corpus) and
looks at the (program, kernel, arch) cells where a CO-RE relocation is unresolved: offline, a layout row
that did not resolve (existence checks apart, "missing" is their answer); in the guest, a relocation
libbpf failed. A verdict agrees when it passes where the verifier accepted the program and fails where
it refused it. ``--offline`` takes the layout verdicts from other documents (another tree's run of the
same corpus and kernels), so that two versions of the offline checks are measured on one in-guest truth.

Loads refused for a reason that is not a relocation (a helper, a map type) say nothing of the layout:
the "cause" column counts a layout PASS as agreeing with those, the "strict" column does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXISTS_KINDS = frozenset({"field_exists", "type_exists", "type_matches", "enumval_exists"})
# What libbpf writes when a poisoned (unresolved) relocation's instruction is reached: its
# "failed to resolve CO-RE relocation" line, and the verifier's call to the poison helper 0xbad2310.
RELOCATION_CAUSES = ("failed to resolve CO-RE relocation", "unknown#195896080")

Key = tuple[str, str, str, str]  # object, program, kernel, arch


def load_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The records of every matrix JSON document in ``paths``."""
    found: list[dict[str, Any]] = []
    for path in paths:
        doc = json.loads(path.read_text())
        found.extend(doc.get("records", []))
    return found


def by_check(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[Key, Mapping[str, Any]]]:
    cells: dict[str, dict[Key, Mapping[str, Any]]] = {}
    for r in records:
        key = (str(r["object"]), str(r["program"]), str(r["kernel"]), str(r["arch"]))
        cells.setdefault(str(r["check"]), {})[key] = r
    return cells


def unresolved_offline(layout: Mapping[str, Any]) -> bool:
    rows = (layout.get("details") or {}).get("relocations") or []
    return any(row.get("status") != "ok" and row.get("kind") not in EXISTS_KINDS for row in rows)


def unresolved_in_guest(core: Mapping[str, Any] | None) -> bool:
    rows = ((core or {}).get("details") or {}).get("relocations") or []
    return any(row.get("status") == "failed" for row in rows)


def load_failed_by_relocation(load: Mapping[str, Any]) -> bool:
    details = load.get("details") or {}
    text = " ".join([str(load.get("reason", "")), *map(str, details.get("verifier_tail") or [])])
    return any(cause in text for cause in RELOCATION_CAUSES)


@dataclass
class Tally:
    cells: int = 0
    strict: int = 0
    cause: int = 0

    def add(self, verdict: str, load: Mapping[str, Any]) -> None:
        loaded = load["outcome"] == "pass"
        self.cells += 1
        self.strict += (verdict == "pass") == loaded
        by_relocation = not loaded and load_failed_by_relocation(load)
        self.cause += (verdict == "pass") == (loaded or not by_relocation)

    def line(self, name: str) -> str:
        if not self.cells:
            return f"{name:<8} {0:>6} {'-':>8} {'-':>8}"
        return (f"{name:<8} {self.cells:>6} {100 * self.strict / self.cells:>7.1f}% "
                f"{100 * self.cause / self.cells:>7.1f}%")


def measure(
    truth: Iterable[Mapping[str, Any]], offline: Iterable[Mapping[str, Any]] | None = None
) -> tuple[dict[str, Tally], list[str]]:
    """Per check (layout, core) the agreement with the in-guest load, and the layout cells that disagree."""
    cells = by_check(truth)
    layouts = by_check(offline)["layout"] if offline is not None else cells.get("layout", {})
    tallies = {"layout": Tally(), "core": Tally()}
    wrong: list[str] = []
    for key, load in cells.get("load", {}).items():
        if load["outcome"] not in ("pass", "fail"):
            continue  # ERROR and SKIP say nothing of compatibility
        layout, core = layouts.get(key), cells.get("core", {}).get(key)
        if layout is not None and layout["outcome"] in ("pass", "fail") and (
            unresolved_offline(layout) or unresolved_in_guest(core)
        ):
            tallies["layout"].add(str(layout["outcome"]), load)
            if (layout["outcome"] == "pass") != (load["outcome"] == "pass"):
                wrong.append(f"{'/'.join(key)}: layout {layout['outcome']} ({layout.get('reason', '')}), "
                             f"load {load['outcome']} ({str(load.get('reason', ''))[:120]})")
        if core is not None and core["outcome"] in ("pass", "fail") and unresolved_in_guest(core):
            tallies["core"].add(str(core["outcome"]), load)
    return tallies, wrong


def render(tallies: Mapping[str, Tally]) -> str:
    lines = [f"{'check':<8} {'cells':>6} {'strict':>8} {'cause':>8}"]
    lines += [t.line(name) for name, t in tallies.items()]
    total = Tally()
    for t in tallies.values():
        total.cells += t.cells
        total.strict += t.strict
        total.cause += t.cause
    lines.append(total.line("overall"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("matrix", nargs="+", type=Path, help="matrix JSON documents with in-guest results")
    parser.add_argument("--offline", nargs="+", type=Path, help="take the layout verdicts from these instead")
    parser.add_argument("--show", type=int, default=10, help="list up to N disagreeing layout cells")
    args = parser.parse_args(argv)
    try:
        truth = load_records(args.matrix)
        offline = load_records(args.offline) if args.offline else None
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench_offline_agreement: {exc}", file=sys.stderr)
        return 2
    tallies, wrong = measure(truth, offline)
    sys.stdout.write(render(tallies))
    for line in wrong[: args.show]:
        print(f"  disagrees: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
