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


def _span(columns: Sequence[str], order: Sequence[str]) -> str:
    """``5.10–6.1`` for columns that follow each other in ``order``, else ``5.10, 6.12``."""
    if not columns:
        return ""
    idx = [order.index(c) for c in columns]
    if len(columns) > 2 and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{columns[0]}–{columns[-1]}"
    return ", ".join(columns)


def _names(m: Matrix) -> dict[tuple[str, str], str]:
    """A column's short name: its kernel id, with the arch when the matrix has several."""
    columns = m.columns()
    several = len({a for _, a in columns}) > 1
    return {(k, a): f"{k}/{a}" if several else k for k, a in columns}


def object_summary(m: Matrix, object_name: str) -> str:
    """``works on 5.10–6.1; `io_start` only through kprobe_start on 6.1``: the columns where every
    program of the object is accepted and every group passes, then the groups that work through
    only some members somewhere, then where it does not work and why."""
    names = _names(m)
    order = [names[c] for c in m.columns()]
    groups = [g for g in m.groups if g.object == object_name]
    members = {p for g in groups for p in g.members}
    verdicts = {g: {(v.kernel, v.arch): v for v in group_verdicts(m, g)} for g in groups}
    works: list[tuple[str, list[str]]] = []
    broken: list[tuple[str, list[str]]] = []
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
        (broken if bad else works).append((names[column], bad))
    parts = [f"works on {_span([c for c, _ in works], order)}" if works else "works on no kernel"]
    for g in groups:
        partial: dict[tuple[str, ...], list[str]] = {}
        for column, v in verdicts[g].items():
            if v.outcome is Outcome.PASS and len(v.working) < len(g.members):
                partial.setdefault(v.working, []).append(names[column])
        for working, columns in partial.items():
            parts.append(f"`{g.group}` only through {', '.join(working)} on {', '.join(columns)}")
    not_on: dict[tuple[str, ...], list[str]] = {}
    for name, bad in broken:
        not_on.setdefault(tuple(bad), []).append(name)
    for bad_here, names_here in not_on.items():
        parts.append(f"not on {', '.join(names_here)} ({', '.join(bad_here)})")
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
