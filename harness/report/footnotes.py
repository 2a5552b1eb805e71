"""The reasons of a matrix's non-pass cells, deduplicated and numbered, as every renderer cites them."""

from __future__ import annotations

from dataclasses import dataclass

from harness.report.results import Check, Matrix, Outcome, Probe


@dataclass(frozen=True)
class Footnote:
    """One deduplicated reason: the same probe, checks, outcome and reason on one or more columns."""

    number: int
    probe: Probe
    checks: tuple[Check, ...]
    outcome: Outcome
    reason: str
    expected: str | None
    columns: tuple[str, ...]

    def text(self) -> str:
        """The footnote without its number: ``vfs_unlink 6.1/x86_64 prototype: <reason>``."""
        where = ", ".join(self.columns)
        checks = ",".join(c.value for c in self.checks)
        line = f"{self.probe.id} {where} {checks}: {self.reason or self.outcome.value}"
        if self.outcome is not Outcome.FAIL and self.outcome is not Outcome.SKIP:
            line += f" ({self.outcome.value})"
        if self.expected:
            line += f" [expected: {self.expected}]"
        return line


_NoteKey = tuple[Probe, tuple[Check, ...], Outcome, str, "str | None"]


def _column_name(kernel: str, arch: str) -> str:
    return f"{kernel}/{arch}"


def collect_footnotes(m: Matrix) -> tuple[list[Footnote], dict[tuple[Probe, str, str], list[int]]]:
    """The reasons of every non-pass cell, deduplicated, numbered in row then column order.

    Only the checks whose outcome is the cell's summary are cited: a cell that failed its symbol
    check and so skipped the rest cites the failure, not the consequent skips. Checks of one cell
    with the same reason share a footnote, and so do cells of one probe with the same reasons.
    Returns the footnotes and, per (probe, kernel, arch) cell, the numbers it cites.
    """
    columns_of: dict[_NoteKey, list[str]] = {}
    cell_keys: dict[tuple[Probe, str, str], list[_NoteKey]] = {}
    for probe in m.probes():
        for kernel, arch in m.columns():
            summary = m.summary(probe, kernel, arch)
            if summary is None or summary is Outcome.PASS:
                continue
            grouped: dict[tuple[str, str | None], list[Check]] = {}
            for rec in m.cell(probe, kernel, arch):
                if rec.outcome is summary:
                    grouped.setdefault((rec.reason, rec.expected), []).append(rec.check)
            for (reason, expected), checks in grouped.items():
                key: _NoteKey = (probe, tuple(checks), summary, reason, expected)
                columns_of.setdefault(key, []).append(_column_name(kernel, arch))
                cell_keys.setdefault((probe, kernel, arch), []).append(key)
    numbers = {key: i + 1 for i, key in enumerate(columns_of)}
    notes = [
        Footnote(
            number=numbers[key],
            probe=key[0],
            checks=key[1],
            outcome=key[2],
            reason=key[3],
            expected=key[4],
            columns=tuple(columns),
        )
        for key, columns in columns_of.items()
    ]
    cites = {cell: sorted({numbers[k] for k in keys}) for cell, keys in cell_keys.items()}
    return notes, cites


def kernel_problems(m: Matrix) -> list[str]:
    """One line per kernel that could not be fetched or booted."""
    return [f"{run.column}: {run.error}" for run in m.kernels if run.error]
