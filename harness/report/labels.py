"""What the renderers call each outcome: cell symbols per medium, labels, the legend and the counts line."""

from __future__ import annotations

from collections.abc import Mapping

from harness.report.results import Check, Matrix, Outcome, Probe

# Cell symbols, worst first as in results.SEVERITY; None is a cell with no record.
UNICODE_SYMBOLS: dict[Outcome | None, str] = {
    Outcome.ERROR: "E",
    Outcome.FAIL: "✗",
    Outcome.XPASS: "!",
    Outcome.XFAIL: "⊘",
    Outcome.PASS: "✓",
    Outcome.SKIP: "–",
    None: "·",
}
ASCII_SYMBOLS: dict[Outcome | None, str] = {
    Outcome.ERROR: "E",
    Outcome.FAIL: "X",
    Outcome.XPASS: "!",
    Outcome.XFAIL: "x",
    Outcome.PASS: "+",
    Outcome.SKIP: "-",
    None: ".",
}
MARKDOWN_SYMBOLS: dict[Outcome | None, str] = {
    Outcome.ERROR: "⚠️",
    Outcome.FAIL: "❌",
    Outcome.XPASS: "❗",
    Outcome.XFAIL: "⭕",
    Outcome.PASS: "✅",
    Outcome.SKIP: "➖",
    None: "·",
}
LEGEND_ORDER: tuple[Outcome | None, ...] = (
    Outcome.PASS,
    Outcome.FAIL,
    Outcome.XFAIL,
    Outcome.XPASS,
    Outcome.SKIP,
    Outcome.ERROR,
    None,
)
OUTCOME_LABELS: dict[Outcome | None, str] = {
    Outcome.PASS: "pass",
    Outcome.FAIL: "fail",
    Outcome.XFAIL: "expected failure",
    Outcome.XPASS: "unexpected pass",
    Outcome.SKIP: "skip",
    Outcome.ERROR: "harness/VM error",
    None: "not run",
}


# Outcomes whose cells name the checks that gave them (``✗ fire``): a pass or a skip names none.
NAMED_OUTCOMES = frozenset({Outcome.FAIL, Outcome.XPASS, Outcome.XFAIL, Outcome.ERROR})


def cell_checks(m: Matrix, probe: Probe, kernel: str, arch: str) -> list[Check]:
    """The checks of a cell whose outcome is its summary, in check order (none for a pass or skip)."""
    summary = m.summary(probe, kernel, arch)
    if summary not in NAMED_OUTCOMES:
        return []
    return [r.check for r in m.cell(probe, kernel, arch) if r.outcome is summary]


def cell_label(m: Matrix, probe: Probe, kernel: str, arch: str, symbols: Mapping[Outcome | None, str]) -> str:
    """A cell's text: its summary's symbol and the checks that gave it, ``✗ fire`` or ``✗ symbol,attach``."""
    symbol = symbols[m.summary(probe, kernel, arch)]
    checks = ",".join(c.value for c in cell_checks(m, probe, kernel, arch))
    return f"{symbol} {checks}" if checks else symbol


def render_legend(symbols: Mapping[Outcome | None, str]) -> str:
    """``✓ pass  ✗ fail  …``: each outcome's symbol and label, in legend order."""
    return "  ".join(f"{symbols[o]} {OUTCOME_LABELS[o]}" for o in LEGEND_ORDER if symbols[o])


def count_cells(m: Matrix) -> dict[Outcome, int]:
    """How many cells have each outcome as their summary (cells with no record are not counted)."""
    counts = {o: 0 for o in Outcome}
    for probe in m.probes():
        for kernel, arch in m.columns():
            summary = m.summary(probe, kernel, arch)
            if summary is not None:
                counts[summary] += 1
    return counts


def render_counts(m: Matrix) -> str:
    """``4 probes × 4 kernels: 16 cells (9 pass, 4 fail, …)``."""
    counts = count_cells(m)
    parts = [f"{counts[o]} {o.value}" for o in Outcome if counts[o]]
    cells = sum(counts.values())
    return (
        f"{len(m.probes())} probes × {len(m.columns())} kernels: {cells} cells"
        + (f" ({', '.join(parts)})" if parts else "")
    )
