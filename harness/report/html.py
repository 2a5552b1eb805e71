"""The HTML renderer: one self-contained page from the Jinja2 templates in report/templates/."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from harness.report.footnotes import collect_footnotes
from harness.report.groups import group_rows, summaries
from harness.report.labels import LEGEND_ORDER, OUTCOME_LABELS, UNICODE_SYMBOLS, cell_label, render_counts
from harness.report.results import CellResult, KernelRun, Matrix, Outcome, Probe

TEMPLATE = "report.html"


@dataclass(frozen=True)
class Column:
    """A kernel/arch column header: its label, the tooltip of what is known of the kernel."""

    kernel: str
    arch: str
    run: KernelRun | None
    tooltip: str


@dataclass(frozen=True)
class Cell:
    """One cell of the grid and the detail section it opens."""

    id: str
    probe: Probe
    kernel: str
    arch: str
    summary: Outcome | None
    label: str  # the summary and the checks that gave it: "✗ fire"
    notes: str  # the footnotes it cites, "[1], [3]"
    tip: str  # the tooltip: the summary and the reasons behind it
    records: tuple[CellResult, ...]
    run: KernelRun | None


@dataclass(frozen=True)
class Row:
    probe: Probe
    ok: bool  # no cell worse than a skip: hidden by "only probes with a non-pass cell"
    cells: tuple[Cell, ...]


def outcome_class(outcome: Outcome | None) -> str:
    """The CSS class that colours an outcome."""
    return f"o-{outcome.value}" if outcome is not None else "o-none"


def format_scalar(value: Any) -> str:
    """A detail value that is neither text, a mapping nor a list."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def is_log_key(key: str) -> bool:
    """Whether a detail is shown preformatted whatever its content."""
    return key in {"log", "diff", "stderr", "stdout", "console"} or key.endswith(("_log", "_diff"))


def diff_class(line: str) -> str:
    """The CSS class of one line of a unified diff ("" for a context line)."""
    if line.startswith(("+++", "---", "@@")):
        return "hunk"
    if line.startswith("+"):
        return "add"
    if line.startswith("-"):
        return "del"
    return ""


def row_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of a table of mappings: every key, in order of first appearance."""
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(str(key))
    return keys


def sorted_keys(details: Mapping[str, Any]) -> list[str]:
    """A mapping's keys in the order its table shows them."""
    return sorted(details, key=str)


def is_listlike(value: object) -> bool:
    return isinstance(value, (list, tuple))


def kernel_tooltip(kernel: str, arch: str, run: KernelRun | None) -> str:
    """What is known of a kernel, one fact a line, for its column header."""
    lines = [f"kernel {kernel} ({arch})"]
    if run is not None:
        if run.version:
            lines.append(f"version: {run.version}")
        if run.source:
            lines.append(f"source: {run.source}")
        if run.digest:
            lines.append(f"sha256: {run.digest[:16]}…")
        if run.booted:
            lines.append(f"booted with {run.accelerator or '?'} in {run.boot_seconds:.1f} s"
                         f" (agent {run.agent_seconds:.1f} s)")
        else:
            lines.append("not booted")
        if run.lsm:
            lines.append(f"lsm: {run.lsm}")
        if run.guest:
            lines.append(f"guest: {run.guest}, libbpf {run.libbpf or '?'}, bpftool {run.bpftool or '?'}")
        if run.error:
            lines.append(f"error: {run.error}")
        lines.extend(run.notes)
    return "\n".join(lines)


def _cell(m: Matrix, probe: Probe, kernel: str, arch: str, cell_id: str, numbers: list[int]) -> Cell:
    summary = m.summary(probe, kernel, arch)
    records = tuple(m.cell(probe, kernel, arch))
    run = m.kernel_run(kernel, arch)
    tip = f"{probe.id} on {kernel}/{arch}: {summary.value if summary else 'not run'}"
    for rec in records:
        if rec.reason and rec.outcome is summary:
            tip += f"\n{rec.check.value}: {rec.reason}"
    if summary is None and run is not None and run.error:
        tip += f"\nkernel: {run.error}"
    notes = ", ".join(f"[{n}]" for n in numbers)
    label = cell_label(m, probe, kernel, arch, UNICODE_SYMBOLS) if summary is not None else "—"
    return Cell(cell_id, probe, kernel, arch, summary, label, notes, tip, records, run)


def _rows(m: Matrix) -> list[Row]:
    _, cites = collect_footnotes(m)
    rows: list[Row] = []
    for r, probe in enumerate(m.probes()):
        cells = tuple(
            _cell(m, probe, kernel, arch, f"cell-{r}-{c}", cites.get((probe, kernel, arch), []))
            for c, (kernel, arch) in enumerate(m.columns())
        )
        ok = all(cell.summary in (Outcome.PASS, Outcome.SKIP, None) for cell in cells)
        rows.append(Row(probe, ok, cells))
    return rows


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("harness.report", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(scalar=format_scalar, outcome_class=outcome_class)
    env.globals.update(
        is_log_key=is_log_key, diff_class=diff_class, row_keys=row_keys, sorted_keys=sorted_keys
    )
    env.tests.update(listlike=is_listlike)
    return env


def render_html(m: Matrix, title: str = "eBPF kernel compatibility matrix") -> str:
    """One self-contained HTML page (inline CSS and JS, no network): a coloured grid of cells,
    each expandable to its checks, reasons and details."""
    notes, _ = collect_footnotes(m)
    columns = [Column(k, a, m.kernel_run(k, a), kernel_tooltip(k, a, m.kernel_run(k, a)))
               for k, a in m.columns()]
    page = _environment().get_template(TEMPLATE).render(
        title=title,
        counts=render_counts(m),
        legend=[(outcome_class(o), OUTCOME_LABELS[o]) for o in LEGEND_ORDER],
        columns=columns,
        rows=_rows(m),
        notes=notes,
        kernels=m.kernels,
        groups=group_rows(m, UNICODE_SYMBOLS),
        summaries=summaries(m),
    )
    return page + "\n"
