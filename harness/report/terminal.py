"""The terminal renderer: a compact table with footnotes, in Unicode or plain ASCII."""

from __future__ import annotations

from tabulate import tabulate

from harness.report.footnotes import collect_footnotes, kernel_problems
from harness.report.groups import group_rows, summaries
from harness.report.labels import ASCII_SYMBOLS, UNICODE_SYMBOLS, cell_label, render_counts, render_legend
from harness.report.results import Matrix

# What the text itself holds beyond ASCII (ranges of kernels, counts, quotes), spelled in ASCII.
ASCII_PUNCTUATION = str.maketrans({
    "–": "-", "—": "-", "×": "x", "→": "->", "…": "...", "‘": "'", "’": "'", "“": '"', "”": '"',
})


def render_terminal(m: Matrix, ascii_only: bool = False) -> str:
    """A compact table for a terminal: one row per probe, one column per kernel/arch, each cell its
    outcome and the checks that gave it (``✗ fire[3]``), footnotes with the reasons.

    With ``ascii_only`` every symbol is plain ASCII (for terminals and logs without UTF-8).
    """
    symbols = ASCII_SYMBOLS if ascii_only else UNICODE_SYMBOLS
    notes, cites = collect_footnotes(m)
    columns = m.columns()
    headers = ["probe", "hook", "target"] + [f"{k}\n{a}" for k, a in columns]
    rows: list[list[str]] = []
    for probe in m.probes():
        row = [probe.id, probe.kind, probe.target]
        for kernel, arch in columns:
            text = cell_label(m, probe, kernel, arch, symbols)
            numbers = cites.get((probe, kernel, arch), [])
            if numbers:
                text += "[" + ",".join(str(n) for n in numbers) + "]"
            row.append(text)
        rows.append(row)
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    counts = render_counts(m)
    lines = []
    if m.groups:
        # The release gate first: a group works where one of its members passes every check.
        group_headers = ["alternatives", "members", *headers[3:]]
        lines += [tabulate(group_rows(m, symbols), headers=group_headers, tablefmt="simple",
                           disable_numparse=True), ""]
    lines += [*summaries(m), ""]
    lines += [table, "", "legend: " + render_legend(symbols), counts]
    if notes:
        lines.append("")
        lines.extend(f"[{n.number}] {n.text()}" for n in notes)
    problems = kernel_problems(m)
    if problems:
        lines.append("")
        lines.extend(f"kernel {p}" for p in problems)
    text = "\n".join(lines) + "\n"
    if ascii_only:
        text = text.translate(ASCII_PUNCTUATION).encode("ascii", "replace").decode("ascii")
    return text
