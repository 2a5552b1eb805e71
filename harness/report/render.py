"""The renderers of a results matrix, one module each, importable from here: terminal table,
Markdown, JSON and a self-contained HTML page."""

from __future__ import annotations

from harness.report.footnotes import Footnote, collect_footnotes, kernel_problems
from harness.report.html import render_html
from harness.report.jsondoc import render_json
from harness.report.labels import (
    ASCII_SYMBOLS,
    LEGEND_ORDER,
    MARKDOWN_SYMBOLS,
    OUTCOME_LABELS,
    UNICODE_SYMBOLS,
)
from harness.report.markdown import render_markdown
from harness.report.terminal import render_terminal

__all__ = [
    "ASCII_SYMBOLS",
    "LEGEND_ORDER",
    "MARKDOWN_SYMBOLS",
    "OUTCOME_LABELS",
    "UNICODE_SYMBOLS",
    "Footnote",
    "collect_footnotes",
    "kernel_problems",
    "render_html",
    "render_json",
    "render_markdown",
    "render_terminal",
]
