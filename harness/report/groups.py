"""Alternatives groups in a matrix and each object's line across kernels, as every renderer shows
them (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.checks.across import GroupVerdict, judge_group
from harness.report.results import Alternatives, CellResult, Matrix, Outcome

# A cell a user accepts: it passes, does not apply, or fails as an expectation (or a group) says.
ACCEPTED = frozenset({Outcome.PASS, Outcome.SKIP, Outcome.XFAIL})


def _member_cells(m: Matrix, group: Alternatives, kernel: str, arch: str) -> dict[str, list[CellResult]]:
    by_program = {p.program: p for p in m.probes() if p.object == group.object}
    cells: dict[str, list[CellResult]] = {}
    for member in group.members:
        probe = by_program.get(member)
        # A member's failures that its group accepted are XFAIL records: judged as they were found.
        records = m.cell(probe, kernel, arch) if probe is not None else []
        cells[member] = [_unaccepted(r) for r in records]
    return cells


def _unaccepted(r: CellResult) -> CellResult:
    return r.with_outcome(Outcome.FAIL, None) if r.outcome is Outcome.XFAIL else r


def group_verdicts(m: Matrix, group: Alternatives) -> list[GroupVerdict]:
    """The verdict of ``group`` on each column of ``m`` that has records of its object."""
    found = []
    for kernel, arch in m.columns():
        cells = _member_cells(m, group, kernel, arch)
        if any(cells.values()):
            found.append(judge_group(group.object, group.group, kernel, arch, cells))
    return found


def _span(kernels: Sequence[str], order: Sequence[str]) -> str:
    """``5.10–6.1`` for three or more kernels that follow each other in ``order``, else ``5.10, 6.12``."""
    idx = [order.index(k) for k in kernels]
    if len(kernels) > 2 and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{kernels[0]}–{kernels[-1]}"
    return ", ".join(kernels)


def _where(m: Matrix, columns: Sequence[tuple[str, str]]) -> str:
    """Columns of ``m`` in words: ``5.10–6.1`` with one arch in the matrix, else the kernels of each
    arch followed by the arches that have just those: ``5.10–6.12 (x86_64) and 6.1 (arm64)``,
    ``5.10 (x86_64, arm64)``."""
    arches = list(dict.fromkeys(a for _, a in m.columns()))
    spans: dict[str, list[str]] = {}  # span -> arches
    for arch in arches:
        order = [k for k, a in m.columns() if a == arch]
        kernels = [k for k, a in columns if a == arch]
        if kernels:
            spans.setdefault(_span(kernels, order), []).append(arch)
    if len(arches) == 1:
        return ", ".join(spans)
    return " and ".join(f"{span} ({', '.join(on)})" for span, on in spans.items())


def object_summary(m: Matrix, object_name: str) -> str:
    """``works on 5.10–6.1; `io_start` only through kprobe_start on 6.1``: the columns where every
    program of the object is accepted and every group passes, then the groups that work through
    only some members somewhere, then where it does not work and why."""
    groups = [g for g in m.groups if g.object == object_name]
    members = {p for g in groups for p in g.members}
    verdicts = {g: {(v.kernel, v.arch): v for v in group_verdicts(m, g)} for g in groups}
    works: list[tuple[tuple[str, str], list[str]]] = []
    broken: list[tuple[tuple[str, str], list[str]]] = []
    for column in m.columns():
        bad = [
            p.program for p in m.probes()
            if p.object == object_name and p.program not in members
            and m.cell(p, *column) and m.summary(p, *column) not in ACCEPTED
        ]
        failing = [g for g in groups if (v := verdicts[g].get(column)) and v.outcome is not Outcome.PASS]
        bad += [f"`{g.group}`" for g in failing]
        if not any(m.cell(p, *column) for p in m.probes() if p.object == object_name):
            continue
        (broken if bad else works).append((column, bad))
    parts = [f"works on {_where(m, [c for c, _ in works])}" if works else "works on no kernel"]
    for g in groups:
        partial: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for column, v in verdicts[g].items():
            if v.outcome is Outcome.PASS and len(v.working) < len(g.members):
                partial.setdefault(v.working, []).append(column)
        for working, columns in partial.items():
            parts.append(f"`{g.group}` only through {', '.join(working)} on {_where(m, columns)}")
    not_on: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for column, bad in broken:
        not_on.setdefault(tuple(bad), []).append(column)
    for bad_here, columns in not_on.items():
        parts.append(f"not on {_where(m, columns)} ({', '.join(bad_here)})")
    return "; ".join(parts)


def serialize_groups(m: Matrix) -> list[dict[str, Any]]:
    """The groups of the results document, with their verdicts and their object's summary."""
    return [
        {
            **g.serialize(),
            "summary": object_summary(m, g.object),
            "verdicts": [v.serialize() for v in group_verdicts(m, g)],
        }
        for g in m.groups
    ]


def group_rows(m: Matrix, symbols: Mapping[Outcome | None, str]) -> list[list[str]]:
    """One row per group: ``object:group``, its members, and per column the verdict's symbol and
    the members that work there (``✓ kprobe_start``)."""
    rows = []
    for g in m.groups:
        by_column = {(v.kernel, v.arch): v for v in group_verdicts(m, g)}
        row = [f"{g.object}:{g.group}", ", ".join(g.members)]
        for column in m.columns():
            v = by_column.get(column)
            working = f" {', '.join(v.working)}" if v and v.working else ""
            row.append(symbols[v.outcome if v else None] + working)
        rows.append(row)
    return rows


def summaries(m: Matrix) -> list[str]:
    """``object: summary`` for each object of the matrix, in object order."""
    objects = sorted({p.object for p in m.probes()})
    return [f"{o}: {object_summary(m, o)}" for o in objects]
