#!/usr/bin/env python3
"""Render the HTML report of a results JSON and screenshot it with headless Chromium."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.report.render import render_html
from harness.report.results import parse_matrix_json

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_argv(
    chromium: str, html: Path, png: Path, profile: Path, width: int, height: int, fragment: str = ""
) -> list[str]:
    """The headless Chromium command line that screenshots ``html`` into ``png`` (no network use)."""
    url = html.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        url,
    ]


def screenshot(
    results: Path,
    png: Path,
    html_out: Path | None = None,
    width: int = 1400,
    height: int = 900,
    fragment: str = "",
    timeout: float = 120.0,
) -> Path:
    """Render ``results`` to HTML and screenshot it into ``png``; raises RuntimeError on failure."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    matrix = parse_matrix_json(results.read_text(), str(results))
    with tempfile.TemporaryDirectory(prefix="bpf-matrix-shot-") as tmp:
        page = html_out or Path(tmp) / "report.html"
        page.write_text(render_html(matrix, title=f"eBPF kernel compatibility: {results.name}"))
        argv = chromium_argv(chromium, page, png.resolve(), Path(tmp) / "profile", width, height, fragment)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"chromium did not finish in {timeout:.0f} s") from exc
    if proc.returncode != 0 or not png.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {tail}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="a results JSON (e.g. tests/data/sample_matrix.json)")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.png"), help="the PNG to write")
    parser.add_argument("--html", type=Path, help="also keep the rendered HTML here")
    parser.add_argument("--size", default="1400x900", help="window size WIDTHxHEIGHT (default 1400x900)")
    parser.add_argument(
        "--cell", default="", help="open this cell's details first (an id like cell-0-2)"
    )
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x", 1))
        png = screenshot(args.results, args.output, args.html, width, height, args.cell)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"screenshot_report: error: {exc}", file=sys.stderr)
        return 2
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
