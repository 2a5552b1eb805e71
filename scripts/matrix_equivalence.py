#!/usr/bin/env python3
"""Compare two results documents cell by cell: outcome, reason and expectation, timings aside.

    python scripts/matrix_equivalence.py before.json after.json

Exits 0 when every cell (object, program, kernel, arch, check) has the same outcome, reason and
expectation in both, and when both booted the same kernels; otherwise prints each difference and exits 1.
How many times a probe ran is a measurement, not a verdict ("ran 306 times" and "ran 256 times" compare
equal); whether it ran, and its missed executions, are compared.
A refactoring of the harness shows it changed no verdict this way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

KEY = ("object", "program", "kernel", "arch", "check")
COMPARED = ("outcome", "reason", "expected", "hook", "section", "target")
KERNEL_KEY = ("kernel", "arch")
KERNEL_COMPARED = ("booted", "error", "digest", "lsm")


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"matrix_equivalence: {path}: cannot read a results document: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise SystemExit(f"matrix_equivalence: {path}: not a results document (no records list)")
    return doc


_RUN_COUNT = re.compile(r"\bran \d+ times?\b")


def _comparable(field: str, value: Any) -> Any:
    if field == "reason" and isinstance(value, str):
        return _RUN_COUNT.sub("ran N times", value)
    return value


def _index(rows: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(row.get(k) for k in key): row for row in rows}


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Every way the two documents' verdicts differ, one line each (empty when they are equivalent)."""
    out: list[str] = []
    for what, rows_key, key, compared in (
        ("kernel", "kernels", KERNEL_KEY, KERNEL_COMPARED),
        ("cell", "records", KEY, COMPARED),
    ):
        a = _index(before.get(rows_key) or [], key)
        b = _index(after.get(rows_key) or [], key)
        for k in sorted(a.keys() - b.keys(), key=str):
            out.append(f"{what} {'/'.join(map(str, k))}: only in the first")
        for k in sorted(b.keys() - a.keys(), key=str):
            out.append(f"{what} {'/'.join(map(str, k))}: only in the second")
        for k in sorted(a.keys() & b.keys(), key=str):
            for field in compared:
                if _comparable(field, a[k].get(field)) != _comparable(field, b[k].get(field)):
                    out.append(
                        f"{what} {'/'.join(map(str, k))}: {field} {a[k].get(field)!r} -> {b[k].get(field)!r}"
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = _load(args.before), _load(args.after)
    diffs = differences(before, after)
    for line in diffs:
        print(line)
    cells = len(before["records"])
    if diffs:
        print(f"{len(diffs)} difference(s) over {cells} cells")
        return 1
    print(f"equivalent: {cells} cells, {len(before.get('kernels') or [])} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
