"""The Markdown renderer: GitHub-flavoured tables (through tabulate) and the reasons as a list."""

from __future__ import annotations

from collections.abc import Mapping

from tabulate import tabulate

from harness.report.footnotes import Footnote, collect_footnotes
from harness.report.groups import group_rows, summaries
from harness.report.labels import MARKDOWN_SYMBOLS, cell_label, render_counts, render_legend
from harness.report.results import Matrix, Outcome, Probe

_MD_SPECIAL = set("\\`*[]<>|")


def _md(text: str) -> str:
    """Escape text for a Markdown table cell or list item (GitHub-flavoured).

    An underscore inside a word (``x86_64``) is never emphasis in GFM and is left alone.
    """
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in _MD_SPECIAL:
            out.append("\\" + ch)
        elif ch == "_":
            before = text[i - 1] if i > 0 else " "
            after = text[i + 1] if i + 1 < len(text) else " "
            inside = (before.isalnum() or before == "_") and (after.isalnum() or after == "_")
            out.append("_" if inside else "\\_")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def _md_code(text: str) -> str:
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', '&#124;')}{fence}"


def _table(rows: list[list[str]], headers: list[str], centred: int = 0) -> list[str]:
    """A GFM table; the last ``centred`` columns centred. tabulate's "pipe" format, not its "github"
    one: the same syntax, with the alignment colons that "github" leaves out."""
    align = ["left"] * (len(headers) - centred) + ["center"] * centred
    text = tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=align)
    return text.splitlines()


def _matrix_table(m: Matrix, cites: Mapping[tuple[Probe, str, str], list[int]]) -> list[str]:
    columns = m.columns()
    headers = ["probe", "hook", "target"] + [f"{_md(k)}<br>{_md(a)}" for k, a in columns]
    rows: list[list[str]] = []
    for probe in m.probes():
        cells = [_md_code(probe.id), _md(probe.kind), _md_code(probe.target)]
        for kernel, arch in columns:
            text = _md(cell_label(m, probe, kernel, arch, MARKDOWN_SYMBOLS))
            numbers = cites.get((probe, kernel, arch), [])
            if numbers:
                text += " <sup>" + ",".join(str(n) for n in numbers) + "</sup>"
            cells.append(text)
        rows.append(cells)
    return _table(rows, headers, centred=len(columns))


def _groups(m: Matrix) -> list[str]:
    """The alternatives groups (the release gate) and each object's line, before the matrix."""
    lines: list[str] = []
    if m.groups:
        headers = ["alternatives", "members"] + [f"{_md(k)}<br>{_md(a)}" for k, a in m.columns()]
        found = group_rows(m, MARKDOWN_SYMBOLS)
        rows = [[_md_code(r[0]), _md(r[1]), *(_md(c) for c in r[2:])] for r in found]
        lines += ["### Alternatives", "", *_table(rows, headers, centred=len(m.columns())), ""]
    lines += ["### Objects", ""]
    lines += [f"- {_md(line)}" for line in summaries(m)]
    return [*lines, "", "### Programs", ""]


def _reason_item(n: Footnote) -> str:
    where = ", ".join(_md(c) for c in n.columns)
    checks = ",".join(c.value for c in n.checks)
    item = f"{n.number}. {_md_code(n.probe.id)} {where} **{checks}**"
    if n.outcome is not Outcome.FAIL:
        item += f" ({n.outcome.value})"
    item += f": {_md(n.reason or n.outcome.value)}"
    if n.expected:
        item += f" — expected: {_md(n.expected)}"
    return item


def _kernels_table(m: Matrix) -> list[str]:
    rows: list[list[str]] = []
    for run in m.kernels:
        version = _md_code(run.version) if run.version else ""
        source = _md(run.source)
        if run.error:
            source = (source + " " if source else "") + f"**error:** {_md(run.error)}"
        rows.append([_md(run.kernel), _md(run.arch), version, source])
    return _table(rows, ["kernel", "arch", "version", "source"])


def render_markdown(m: Matrix) -> str:
    """A GitHub-flavoured Markdown table and its reasons, stable from run to run (no times)."""
    notes, cites = collect_footnotes(m)
    lines = _groups(m)
    lines += _matrix_table(m, cites)
    lines += ["", "Legend: " + render_legend(MARKDOWN_SYMBOLS) + ".", "", _md(render_counts(m)) + "."]
    if notes:
        lines += ["", "### Reasons", ""]
        lines.extend(_reason_item(n) for n in notes)
    if m.kernels:
        lines += ["", "### Kernels", ""]
        lines += _kernels_table(m)
    return "\n".join(lines) + "\n"
