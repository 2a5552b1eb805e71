"""Renderers of a results matrix: terminal table, Markdown, JSON and a self-contained HTML page."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from harness.report.results import Check, KernelRun, Matrix, Outcome, Probe

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


def _legend(symbols: Mapping[Outcome | None, str]) -> str:
    return "  ".join(f"{symbols[o]} {OUTCOME_LABELS[o]}" for o in LEGEND_ORDER if symbols[o])


def _counts(m: Matrix) -> dict[Outcome, int]:
    counts = {o: 0 for o in Outcome}
    for probe in m.probes():
        for kernel, arch in m.columns():
            summary = m.summary(probe, kernel, arch)
            if summary is not None:
                counts[summary] += 1
    return counts


def _counts_line(m: Matrix) -> str:
    counts = _counts(m)
    parts = [f"{counts[o]} {o.value}" for o in Outcome if counts[o]]
    cells = sum(counts.values())
    return (
        f"{len(m.probes())} probes × {len(m.columns())} kernels: {cells} cells"
        + (f" ({', '.join(parts)})" if parts else "")
    )


def render_terminal(m: Matrix, ascii_only: bool = False) -> str:
    """A compact table for a terminal: one row per probe, one column per kernel/arch, footnotes.

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
            text = symbols[m.summary(probe, kernel, arch)]
            numbers = cites.get((probe, kernel, arch), [])
            if numbers:
                text += "[" + ",".join(str(n) for n in numbers) + "]"
            row.append(text)
        rows.append(row)
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    counts = _counts_line(m)
    lines = [table, "", "legend: " + _legend(symbols), counts.replace("×", "x") if ascii_only else counts]
    if notes:
        lines.append("")
        lines.extend(f"[{n.number}] {n.text()}" for n in notes)
    problems = kernel_problems(m)
    if problems:
        lines.append("")
        lines.extend(f"kernel {p}" for p in problems)
    text = "\n".join(lines) + "\n"
    if ascii_only:
        text = text.encode("ascii", "replace").decode("ascii")
    return text


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


def render_markdown(m: Matrix) -> str:
    """A GitHub-flavoured Markdown table and its reasons, stable from run to run (no times)."""
    notes, cites = collect_footnotes(m)
    columns = m.columns()
    header = ["probe", "hook", "target"] + [f"{_md(k)}<br>{_md(a)}" for k, a in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * 3 + [":---:"] * len(columns)) + " |",
    ]
    for probe in m.probes():
        cells = [_md_code(probe.id), _md(probe.kind), _md_code(probe.target)]
        for kernel, arch in columns:
            text = MARKDOWN_SYMBOLS[m.summary(probe, kernel, arch)]
            numbers = cites.get((probe, kernel, arch), [])
            if numbers:
                text += " <sup>" + ",".join(str(n) for n in numbers) + "</sup>"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Legend: " + _legend(MARKDOWN_SYMBOLS) + ".", "", _md(_counts_line(m)) + "."]
    if notes:
        lines += ["", "### Reasons", ""]
        for n in notes:
            where = ", ".join(_md(c) for c in n.columns)
            checks = ",".join(c.value for c in n.checks)
            item = f"{n.number}. {_md_code(n.probe.id)} {where} **{checks}**"
            if n.outcome is not Outcome.FAIL:
                item += f" ({n.outcome.value})"
            item += f": {_md(n.reason or n.outcome.value)}"
            if n.expected:
                item += f" — expected: {_md(n.expected)}"
            lines.append(item)
    if m.kernels:
        lines += ["", "### Kernels", "", "| kernel | arch | version | source |", "| --- | --- | --- | --- |"]
        for run in m.kernels:
            version = _md_code(run.version) if run.version else ""
            source = _md(run.source)
            if run.error:
                source = (source + " " if source else "") + f"**error:** {_md(run.error)}"
            lines.append(f"| {_md(run.kernel)} | {_md(run.arch)} | {version} | {source} |")
    return "\n".join(lines) + "\n"


def render_json(m: Matrix) -> str:
    """The results document (harness/report/schema.json) as indented, key-sorted JSON."""
    return json.dumps(m.serialize(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
:root{--pass:#1f9d55;--fail:#d93025;--xfail:#e8a317;--xpass:#e8590c;--skip:#9aa0a6;
--error:#7b3fbf;--none:#f1f3f4;--ink:#202124;--muted:#5f6368;--line:#dadce0;--bg:#fff}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:#f8f9fa;margin:0;padding:24px 32px}
h1{font-size:22px;margin:0 0 4px}
.sub{color:var(--muted);margin:0 0 16px}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin:0 0 16px;padding:0;list-style:none}
.legend li{display:flex;align-items:center;gap:6px;color:var(--muted)}
.sw{display:inline-block;width:14px;height:14px;border-radius:3px}
.card{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:16px;
margin-bottom:20px;overflow-x:auto}
table.grid{border-collapse:separate;border-spacing:3px}
table.grid th{font-weight:600;font-size:12px;color:var(--muted);padding:4px 6px;text-align:center;
white-space:nowrap}
table.grid th.k{cursor:help;border-bottom:2px solid var(--line)}
table.grid th.k .ver{display:block;font-weight:400;font-size:11px}
table.grid th.k.kerr{color:var(--error);border-bottom-color:var(--error)}
table.grid th.p{text-align:left}
table.grid td.p{padding:4px 12px 4px 4px;white-space:nowrap}
td.p .id{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-weight:600}
td.p .hook{display:inline-block;font-size:11px;padding:0 6px;border-radius:9px;background:#e8eaed;
color:var(--muted);margin-left:6px}
td.p .tgt{display:block;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;
color:var(--muted)}
td.c{width:84px;min-width:84px;height:40px;padding:0;border-radius:6px;text-align:center}
td.c button{all:unset;display:block;width:100%;height:100%;min-height:40px;cursor:pointer;
color:#fff;font-weight:600;font-size:13px;border-radius:6px}
td.c button:focus-visible{outline:3px solid #1a73e8;outline-offset:1px}
td.c.sel button{box-shadow:inset 0 0 0 3px rgba(0,0,0,.45)}
td.c .n{display:block;font-weight:400;font-size:10px;opacity:.9}
.o-pass{background:var(--pass)}.o-fail{background:var(--fail)}.o-xfail{background:var(--xfail)}
.o-xpass{background:var(--xpass)}.o-skip{background:var(--skip)}.o-error{background:var(--error)}
.o-none{background:var(--none)}.sw.o-none{border:1px solid var(--line)}
td.c.o-none button{color:var(--muted);cursor:default}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:0 7px;font-size:12px;font-weight:600}
.detail h2{font-size:16px;margin:0 0 8px}
.detail .meta{color:var(--muted);margin:0 0 10px;font-size:13px}
table.checks{border-collapse:collapse;width:100%;margin-bottom:8px}
table.checks>tbody>tr>th,table.checks>tbody>tr>td,table.checks>thead>tr>th{border-top:1px solid
var(--line);padding:6px 8px;text-align:left;vertical-align:top}
table.checks>thead>tr>th{color:var(--muted);font-size:12px;border-top:0}
table.checks td.t{white-space:nowrap;color:var(--muted)}
table.checks td.ck{font-family:ui-monospace,"DejaVu Sans Mono",monospace;white-space:nowrap}
table.kv{border-collapse:collapse;font-size:12px;margin:4px 0}
table.kv th,table.kv td{border:1px solid var(--line);padding:3px 6px;text-align:left;
vertical-align:top}
table.kv th{background:#f1f3f4;font-weight:600}
.expected{color:var(--muted);font-style:italic}
pre{background:#202124;color:#e8eaed;border-radius:6px;padding:8px 10px;overflow-x:auto;
font:12px/1.4 ui-monospace,"DejaVu Sans Mono",monospace;margin:4px 0;max-height:320px}
pre .add{color:#81c995}pre .del{color:#f28b82}pre .hunk{color:#8ab4f8}
.hint{color:var(--muted);font-size:13px}
section.cell{display:none}section.cell.shown{display:block}
.noscript section.cell{display:block;border-top:1px solid var(--line);padding-top:12px;margin-top:12px}
.kernels td,.kernels th{font-size:12px}
.tools{margin:0 0 10px;color:var(--muted);font-size:13px}
"""

_JS = """
(function(){
  document.documentElement.classList.remove('noscript');
  var cur=null;
  function show(id){
    var sec=document.getElementById('d-'+id); if(!sec) return;
    if(cur){cur.classList.remove('shown');}
    document.querySelectorAll('td.c.sel').forEach(function(td){td.classList.remove('sel');});
    var td=document.querySelector('td.c[data-cell="'+id+'"]'); if(td) td.classList.add('sel');
    sec.classList.add('shown'); cur=sec;
    var hint=document.getElementById('hint'); if(hint) hint.style.display='none';
    if(history.replaceState) history.replaceState(null,'','#'+id);
  }
  document.querySelectorAll('td.c button').forEach(function(b){
    b.addEventListener('click',function(){show(b.parentNode.getAttribute('data-cell'));
      document.getElementById('detail').scrollIntoView({block:'nearest'});});
  });
  var only=document.getElementById('only-problems');
  if(only) only.addEventListener('change',function(){
    document.querySelectorAll('tr.row').forEach(function(tr){
      tr.style.display=(only.checked && tr.getAttribute('data-ok')==='1')?'none':'';});
  });
  if(location.hash.length>1) show(location.hash.slice(1));
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _scalar(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pre(text: str, diff: bool = False) -> str:
    if not diff:
        return f"<pre>{_e(text)}</pre>"
    out = []
    for line in text.splitlines():
        cls = ""
        if line.startswith(("+++", "---")):
            cls = "hunk"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        out.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    return "<pre>" + "\n".join(out) + "</pre>"


def _is_log_key(key: str) -> bool:
    return key in {"log", "diff", "stderr", "stdout", "console"} or key.endswith(("_log", "_diff"))


def _table_of_dicts(rows: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(str(key))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_value_html(k, row.get(k))}</td>" for k in keys) + "</tr>"
        for row in rows
    )
    return f'<table class="kv"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _value_html(key: str, value: Any) -> str:
    if isinstance(value, str):
        if "\n" in value or _is_log_key(key):
            return _pre(value, diff=key == "diff" or key.endswith("_diff"))
        return _e(value)
    if isinstance(value, Mapping):
        return _mapping_html(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, Mapping) for v in value):
            return _table_of_dicts(value)
        if not value:
            return "—"
        return ", ".join(_value_html(key, v) for v in value)
    return _e(_scalar(value))


def _mapping_html(details: Mapping[str, Any]) -> str:
    if not details:
        return ""
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_value_html(str(k), details[k])}</td></tr>"
        for k in sorted(details, key=str)
    )
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _outcome_class(outcome: Outcome | None) -> str:
    return f"o-{outcome.value}" if outcome is not None else "o-none"


def _badge(outcome: Outcome) -> str:
    return f'<span class="badge {_outcome_class(outcome)}">{_e(outcome.value)}</span>'


def _kernel_tooltip(kernel: str, arch: str, run: KernelRun | None) -> str:
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
        if run.error:
            lines.append(f"error: {run.error}")
        lines.extend(run.notes)
    return "\n".join(lines)


def _cell_id(row: int, col: int) -> str:
    return f"cell-{row}-{col}"


def _cell_section(m: Matrix, probe: Probe, kernel: str, arch: str, cell_id: str) -> str:
    records = m.cell(probe, kernel, arch)
    summary = m.summary(probe, kernel, arch)
    run = m.kernel_run(kernel, arch)
    parts = [f'<section class="cell detail" id="d-{_e(cell_id)}">']
    title = f"{_e(probe.id)} on {_e(kernel)}/{_e(arch)}"
    if summary is not None:
        title += " " + _badge(summary)
    parts.append(f"<h2>{title}</h2>")
    meta = [f"{_e(probe.kind)} <code>{_e(probe.target)}</code>", f"section <code>{_e(probe.section)}</code>"]
    if run is not None and run.version:
        meta.append(f"kernel <code>{_e(run.version)}</code>")
    if run is not None and run.booted:
        meta.append(f"{_e(run.accelerator or '?')}, boot {run.boot_seconds:.1f} s")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
    if not records:
        parts.append('<p class="hint">No check ran for this probe on this kernel.</p>')
        if run is not None and run.error:
            parts.append(f"<pre>{_e(run.error)}</pre>")
    else:
        parts.append(
            '<table class="checks"><thead><tr><th>check</th><th>outcome</th><th>reason</th>'
            "<th>details</th><th>time</th></tr></thead><tbody>"
        )
        for rec in records:
            reason = _e(rec.reason)
            if rec.expected:
                reason += f'<div class="expected">expected: {_e(rec.expected)}</div>'
            details = rec.details if isinstance(rec.details, Mapping) else {"value": rec.details}
            parts.append(
                f'<tr><td class="ck">{_e(rec.check.value)}</td><td>{_badge(rec.outcome)}</td>'
                f"<td>{reason}</td><td>{_mapping_html(details)}</td>"
                f'<td class="t">{f"{rec.duration:.2f} s" if rec.duration else ""}</td></tr>'
            )
        parts.append("</tbody></table>")
    parts.append("</section>")
    return "".join(parts)


def render_html(m: Matrix, title: str = "eBPF kernel compatibility matrix") -> str:
    """One self-contained HTML page (inline CSS and JS, no network): a coloured grid of cells,
    each expandable to its checks, reasons and details."""
    columns = m.columns()
    probes = m.probes()
    notes, cites = collect_footnotes(m)
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en" class="noscript"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(_counts_line(m))}</p>',
        '<ul class="legend">',
    ]
    for outcome in LEGEND_ORDER:
        out.append(
            f'<li><span class="sw {_outcome_class(outcome)}"></span>{_e(OUTCOME_LABELS[outcome])}</li>'
        )
    out.append("</ul>")
    out.append('<div class="card">')
    out.append(
        '<p class="tools"><label><input type="checkbox" id="only-problems"> '
        "only probes with a non-pass cell</label></p>"
    )
    out.append('<table class="grid"><thead><tr><th class="p">probe</th>')
    for kernel, arch in columns:
        run = m.kernel_run(kernel, arch)
        cls = "k kerr" if run is not None and run.error else "k"
        version = f'<span class="ver">{_e(run.version)}</span>' if run and run.version else ""
        out.append(
            f'<th class="{cls}" title="{_e(_kernel_tooltip(kernel, arch, run))}">'
            f"{_e(kernel)}<br>{_e(arch)}{version}</th>"
        )
    out.append("</tr></thead><tbody>")
    sections: list[str] = []
    for r, probe in enumerate(probes):
        summaries = [m.summary(probe, k, a) for k, a in columns]
        ok = all(s in (Outcome.PASS, Outcome.SKIP, None) for s in summaries)
        out.append(
            f'<tr class="row" data-ok="{1 if ok else 0}"><td class="p"><span class="id">'
            f'{_e(probe.id)}</span><span class="hook">{_e(probe.kind)}</span>'
            f'<span class="tgt">{_e(probe.target)}</span></td>'
        )
        for c, ((kernel, arch), summary) in enumerate(zip(columns, summaries)):
            cid = _cell_id(r, c)
            numbers = cites.get((probe, kernel, arch), [])
            label = _e(summary.value) if summary is not None else "—"
            note = (
                f'<span class="n">{_e(", ".join(f"[{n}]" for n in numbers))}</span>' if numbers else ""
            )
            tip = f"{probe.id} on {kernel}/{arch}: {summary.value if summary else 'not run'}"
            for rec in m.cell(probe, kernel, arch):
                if rec.reason and rec.outcome is summary:
                    tip += f"\n{rec.check.value}: {rec.reason}"
            run = m.kernel_run(kernel, arch)
            if summary is None and run is not None and run.error:
                tip += f"\nkernel: {run.error}"
            out.append(
                f'<td class="c {_outcome_class(summary)}" data-cell="{cid}" title="{_e(tip)}">'
                f'<button type="button" aria-label="{_e(tip)}">{label}{note}</button></td>'
            )
            sections.append(_cell_section(m, probe, kernel, arch, cid))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    out.append('<div class="card" id="detail">')
    out.append('<p class="hint" id="hint">Click a cell to see its checks, reasons and details.</p>')
    out.extend(sections)
    out.append("</div>")
    if notes:
        out.append('<div class="card"><h2 style="font-size:16px;margin:0 0 8px">Reasons</h2><ol>')
        for n in notes:
            out.append(f'<li value="{n.number}">{_e(n.text())}</li>')
        out.append("</ol></div>")
    if m.kernels:
        out.append(
            '<div class="card kernels"><h2 style="font-size:16px;margin:0 0 8px">Kernels</h2>'
            '<table class="kv"><thead><tr><th>kernel</th><th>arch</th>'
            "<th>version</th><th>source</th><th>accelerator</th><th>boot</th><th>lsm</th>"
            "<th>error</th></tr></thead><tbody>"
        )
        for run in m.kernels:
            boot = (
                f"{run.boot_seconds:.1f} s (agent {run.agent_seconds:.1f} s)" if run.booted else "not booted"
            )
            out.append(
                f"<tr><td>{_e(run.kernel)}</td><td>{_e(run.arch)}</td><td>{_e(run.version)}</td>"
                f"<td>{_e(run.source)}</td><td>{_e(run.accelerator)}</td><td>{_e(boot)}</td>"
                f"<td>{_e(run.lsm)}</td><td>{_e(run.error)}</td></tr>"
            )
        out.append("</tbody></table></div>")
    out.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(out) + "\n"

