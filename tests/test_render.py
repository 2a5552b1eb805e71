"""Tests of the renderers; golden files under tests/golden/ (regenerate with UPDATE_GOLDEN=1)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import re
import shutil
import struct
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tools import needs

from harness.report.groups import object_summary
from harness.report.render import (
    ASCII_SYMBOLS,
    UNICODE_SYMBOLS,
    collect_footnotes,
    render_html,
    render_json,
    render_markdown,
    render_terminal,
)
from harness.report.results import (
    Alternatives,
    CellResult,
    Check,
    KernelRun,
    Matrix,
    Outcome,
    Probe,
    parse_matrix_json,
)

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden"
SAMPLE = TESTS / "data" / "sample_matrix.json"
ROOT = TESTS.parent


def sample() -> Matrix:
    return parse_matrix_json(SAMPLE.read_text(), str(SAMPLE))


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; with UPDATE_GOLDEN=1 in the environment, rewrite it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest tests/test_render.py"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs (UPDATE_GOLDEN=1 to accept)"


KPROBE = Probe("blk", "blk_account_io_start", "kprobe/blk_account_io_start", "kprobe",
               "blk_account_io_start")
FENTRY = Probe("vfs_unlink", "vfs_unlink", "fentry/vfs_unlink", "fentry", "vfs_unlink")


def rec(probe: Probe, kernel: str, arch: str, check: Check, outcome: Outcome, reason: str = "",
        **kw: object) -> CellResult:
    return CellResult(probe, kernel, arch, check, outcome, reason, **kw)  # type: ignore[arg-type]


def every_outcome() -> Matrix:
    """One probe with a cell of each outcome, plus a cell with no record."""
    recs = [rec(KPROBE, k, "x86_64", Check.SYMBOL, o, f"because {o.value}")
            for k, o in zip(["a", "b", "c", "d", "e", "f"], list(Outcome))]
    kernels = tuple(KernelRun(k, "x86_64") for k in ["a", "b", "c", "d", "e", "f", "g"])
    return Matrix(records=tuple(recs), kernels=kernels)


# --- golden files --------------------------------------------------------------------------------


def test_terminal_golden() -> None:
    assert_golden("sample.terminal.txt", render_terminal(sample()))


def test_terminal_ascii_golden() -> None:
    assert_golden("sample.ascii.txt", render_terminal(sample(), ascii_only=True))


def test_markdown_golden() -> None:
    assert_golden("sample.md", render_markdown(sample()))


def test_html_golden() -> None:
    assert_golden("sample.html", render_html(sample(), title="sample"))


def test_json_is_the_sample_document() -> None:
    # The sample is stored as render_json wrote it: this is its golden file.
    assert render_json(sample()) == SAMPLE.read_text(encoding="utf-8")


# --- terminal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ascii_only", [False, True])
def test_terminal_symbol_per_outcome(ascii_only: bool) -> None:
    symbols = ASCII_SYMBOLS if ascii_only else UNICODE_SYMBOLS
    text = render_terminal(every_outcome(), ascii_only=ascii_only)
    row = next(line for line in text.splitlines() if line.startswith(KPROBE.id + " "))
    cells = re.split(r"\s{2,}", row.strip())[3:]
    # A failing, erring or expected cell names the check that gave it; a pass or a skip does not.
    named = (Outcome.FAIL, Outcome.XPASS, Outcome.XFAIL, Outcome.ERROR)
    expected = [symbols[o] + (" symbol" if o in named else "") for o in Outcome] + [symbols[None]]
    assert [c.split("[")[0] for c in cells] == expected
    # Every non-pass cell cites a footnote, a pass cell and an empty cell do not.
    assert ["[" in c for c in cells] == [o is not Outcome.PASS for o in Outcome] + [False]
    assert "legend:" in text


def test_ascii_fallback_is_pure_ascii() -> None:
    text = render_terminal(sample(), ascii_only=True)
    text.encode("ascii")
    assert "4 probes x 4 kernels" in text


def test_footnotes_deduplicate_same_reason_across_columns() -> None:
    m = sample()
    notes, cites = collect_footnotes(m)
    blk = next(n for n in notes if n.probe.program == "blk_account_io_start")
    assert blk.columns == ("6.1/x86_64", "6.1/arm64")
    assert blk.checks == (Check.SYMBOL,)
    assert blk.text() == (
        "blk_account_io_start 6.1/x86_64, 6.1/arm64 symbol: not in kallsyms (inlined or removed)"
    )
    # The consequent skips of load/attach/fire are not cited.
    assert all(n.outcome is not Outcome.SKIP or n.probe.id == "vfs_unlink" for n in notes)
    assert cites[(blk.probe, "6.1", "x86_64")] == cites[(blk.probe, "6.1", "arm64")] == [blk.number]
    # Numbers are dense and in row order.
    assert [n.number for n in notes] == list(range(1, len(notes) + 1))


def test_terminal_footnote_text_and_xfail_expectation() -> None:
    text = render_terminal(sample())
    assert "[1] blk_account_io_start 6.1/x86_64, 6.1/arm64 symbol: not in kallsyms" in text
    assert "(xfail) [expected: arm64 < 6.0" in text
    assert "vfs_unlink 6.1/x86_64, 6.1/arm64 prototype: new first parameter" in text


def test_terminal_lists_kernel_errors() -> None:
    m = dataclasses.replace(
        sample(), kernels=(*sample().kernels, KernelRun("7.2", "arm64", error="boot timed out"))
    )
    assert "kernel 7.2/arm64: boot timed out" in render_terminal(m)


# --- markdown -----------------------------------------------------------------------------------


def test_markdown_is_stable_under_record_order_and_durations() -> None:
    m = sample()
    shuffled = list(m.records)
    random.Random(7).shuffle(shuffled)
    timed = tuple(dataclasses.replace(r, duration=r.duration + 12.5) for r in shuffled)
    kernels = tuple(dataclasses.replace(k, boot_seconds=k.boot_seconds * 3) for k in m.kernels)
    assert render_markdown(Matrix(timed, kernels)) == render_markdown(m)


def test_markdown_table_shape_and_escaping() -> None:
    probe = Probe("o", "p", "kprobe/x", "kprobe", "x")
    m = Matrix((rec(probe, "6.1", "x86_64", Check.SYMBOL, Outcome.FAIL, "a | b <script> *c*"),))
    text = render_markdown(m)
    table = [line for line in text.splitlines() if line.startswith("|")]
    # Header, separator and one row, all with the same number of unescaped pipes.
    assert len(table) == 3
    counts = {line.replace("\\|", "").count("|") for line in table}
    assert counts == {5}  # probe, hook, target and one kernel column
    assert "a \\| b \\<script\\> \\*c\\*" in text
    assert "<script>" not in text


def table_cells(text: str) -> list[list[str]]:
    """The cells of each row of the Markdown tables in ``text``, padding stripped."""
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_markdown_uses_symbols_and_reasons() -> None:
    text = render_markdown(sample())
    rows = table_cells(text)
    assert rows[0][:4] == ["probe", "hook", "target", "5.10<br>x86_64"]
    assert rows[1] == [":" + "-" * (len(c) - 1) for c in rows[1][:3]] + rows[1][3:]
    assert all(c.startswith(":") and c.endswith(":") for c in rows[1][3:])  # kernel columns centred
    assert rows[2] == [
        "`blk_account_io_start`", "kprobe", "`blk_account_io_start`", "✅", "✅", "❌ symbol <sup>1</sup>",
        "❌ symbol <sup>1</sup>",
    ]
    assert "1. `blk_account_io_start` 6.1/x86_64, 6.1/arm64 **symbol**: not in kallsyms" in text
    assert "boot" not in text.lower()


# --- json and its schema --------------------------------------------------------------------------


def schema_validator() -> object:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "harness" / "report" / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_json_round_trips_and_is_key_sorted() -> None:
    m = sample()
    text = render_json(m)
    assert parse_matrix_json(text) == m
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert list(data["records"][0]) == sorted(data["records"][0])


def test_real_output_validates_against_schema() -> None:
    validator = schema_validator()
    for m in (sample(), every_outcome()):
        errors = list(validator.iter_errors(json.loads(render_json(m))))  # type: ignore[attr-defined]
        assert errors == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["records"][0].update(outcome="passed"),
        lambda d: d["records"][0].update(check="verifier"),
        lambda d: d["records"][0].pop("target"),
        lambda d: d["records"][0].update(details=[1, 2]),
        lambda d: d["records"][0]["details"].update(run_cnt=-1),
        lambda d: d["kernels"][0].update(accelerator="hvf"),
        lambda d: d["kernels"][0].update(arch="riscv64"),
        lambda d: d.update(version=3),
        lambda d: d.update(extra=True),
    ],
)
def test_schema_rejects_malformed_documents(mutate: Callable[[dict[str, object]], None]) -> None:
    validator = schema_validator()
    data = json.loads(render_json(sample()))
    data["records"][0]["details"] = {"run_cnt": 3}
    assert list(validator.iter_errors(data)) == []  # type: ignore[attr-defined]
    mutate(data)
    assert list(validator.iter_errors(data)) != []  # type: ignore[attr-defined]


# --- html ---------------------------------------------------------------------------------------


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.mismatches: list[str] = []

    VOID = frozenset({"meta", "br", "input", "link", "img"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.mismatches.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()


def parse_html(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


def test_html_is_well_formed_and_self_contained() -> None:
    text = render_html(sample())
    parsed = parse_html(text)
    assert parsed.mismatches == [] and parsed.stack == []
    for tag, attrs in parsed.tags:
        assert tag not in {"link", "img", "iframe"}, tag
        for name in ("src", "href"):
            assert not (attrs.get(name) or "").startswith(("http:", "https:", "//")), (tag, attrs)
    assert "@import" not in text and "url(" not in text
    assert text.count("<style>") == 1 and text.count("<script>") == 1


def test_html_cells_are_coloured_and_expandable() -> None:
    m = sample()
    parsed = parse_html(render_html(m))
    cells = [a for t, a in parsed.tags if t == "td" and "c" in (a.get("class") or "").split()]
    assert len(cells) == len(m.probes()) * len(m.columns())
    classes = [(a.get("class") or "").split()[1] for a in cells]
    assert classes.count("o-pass") == 9 and classes.count("o-fail") == 4
    assert {"o-xfail", "o-skip", "o-error"} <= set(classes)
    sections = {a.get("id") for t, a in parsed.tags if t == "section"}
    assert {f"d-{a.get('data-cell')}" for a in cells} == sections


def test_html_header_tooltip_has_version_accelerator_and_boot_time() -> None:
    parsed = parse_html(render_html(sample()))
    titles = [a.get("title") or "" for t, a in parsed.tags if t == "th" and a.get("title")]
    assert any("6.1.0-27-arm64" in t and "tcg" in t and "29.1 s" in t for t in titles)


def test_html_shows_details() -> None:
    text = render_html(sample())
    assert "<th>relocations</th>" in text and "<th>baseline_offset</th>" in text  # table of relocs
    assert '<span class="add">+  0: struct user_namespace *mnt_userns</span>' in text  # BTF diff
    assert "<pre>sh: 1: stress-ng: not found" in text  # log
    assert "<th>run_cnt</th>" in text and "<th>recursion_misses</th>" in text


def test_html_escapes_everything() -> None:
    evil = "<script>alert(1)</script>\"'&"
    probe = Probe(evil, evil, "kprobe/" + evil, "kprobe", evil)
    m = Matrix(
        (rec(probe, "6.1", "x86_64", Check.LOAD, Outcome.FAIL, evil,
             details={evil: evil, "log": evil, "relocations": [{evil: evil}]}, expected=evil),),
        (KernelRun("6.1", "x86_64", version=evil, source=evil, error=evil),),
    )
    text = render_html(m, title=evil)
    assert "<script>alert" not in text
    assert text.count("<script>") == 1
    assert parse_html(text).mismatches == []


# --- screenshot ---------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    return None


@needs("chromium")
def test_screenshot_of_report(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        screenshot_report = importlib.import_module("screenshot_report")
    finally:
        sys.path.pop(0)
    png = tmp_path / "report.png"
    assert screenshot_report.main([str(SAMPLE), "-o", str(png), "--size", "1000x700"]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 700)
    # A blank page compresses to a few kB; the coloured grid and text do not.
    assert len(data) > 20_000


def test_templates_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["harness"]
    package = ROOT / "harness"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    templates = set((package / "report" / "templates").iterdir())
    assert templates and templates <= shipped


# --- alternatives groups ---------------------------------------------------------------------------

FENTRY_START = Probe("alt_io", "fentry_start", "fentry/blk_account_io_start", "fentry",
                     "blk_account_io_start")
KPROBE_START = Probe("alt_io", "kprobe_start", "kprobe/blk_mq_start_request", "kprobe",
                     "blk_mq_start_request")
ALT_OTHER = Probe("alt_io", "io_done", "tp/block/block_rq_complete", "tracepoint", "block/block_rq_complete")


def alternatives_sample(other_fails_on: str = "") -> Matrix:
    """alt_io: io_start through fentry_start or kprobe_start; fentry_start fails to load on 6.1."""
    recs = []
    for kernel in ("5.10", "6.1", "6.12"):
        fentry = Outcome.PASS if kernel == "5.10" else Outcome.XFAIL
        accepted = "alternatives `io_start`: works through kprobe_start here"
        expected = None if fentry is Outcome.PASS else accepted
        recs += [
            rec(FENTRY_START, kernel, "x86_64", Check.SYMBOL, Outcome.PASS),
            rec(FENTRY_START, kernel, "x86_64", Check.LOAD, fentry, "" if fentry is Outcome.PASS
                else "load failed (ESRCH): failed to find kernel BTF type ID", expected=expected),
            rec(KPROBE_START, kernel, "x86_64", Check.SYMBOL, Outcome.PASS),
            rec(KPROBE_START, kernel, "x86_64", Check.LOAD, Outcome.PASS),
            rec(ALT_OTHER, kernel, "x86_64", Check.SYMBOL,
                Outcome.FAIL if kernel == other_fails_on else Outcome.PASS, "gone"),
        ]
    kernels = tuple(KernelRun(k, "x86_64") for k in ("5.10", "6.1", "6.12"))
    groups = (Alternatives("alt_io", "io_start", ("fentry_start", "kprobe_start")),)
    return Matrix(tuple(recs), kernels, "5.10", groups)


def test_groups_come_first_naming_the_member_that_works() -> None:
    text = render_terminal(alternatives_sample())
    assert text.index("alternatives") < text.index("probe ")
    row = next(line for line in text.splitlines() if line.startswith("alt_io:io_start"))
    assert re.split(r"\s{2,}", row.strip())[2:] == [
        "✓ fentry_start, kprobe_start", "✓ kprobe_start", "✓ kprobe_start"
    ]
    assert "alt_io: works on 5.10–6.12; `io_start` only through kprobe_start on 6.1, 6.12" in text
    ascii_text = render_terminal(alternatives_sample(), ascii_only=True)
    assert "alt_io: works on 5.10-6.12;" in ascii_text  # the range in ASCII, not "?"
    assert_golden("alternatives.terminal.txt", text)
    assert_golden("alternatives.md", render_markdown(alternatives_sample()))


def test_object_summary_says_where_it_does_not_work_and_why() -> None:
    m = alternatives_sample(other_fails_on="6.12")
    assert object_summary(m, "alt_io") == (
        "works on 5.10, 6.1; `io_start` only through kprobe_start on 6.1, 6.12; not on 6.12 (io_done)"
    )


def test_object_summary_with_two_arches_names_each_arch_s_kernels() -> None:
    m = alternatives_sample(other_fails_on="6.12")
    arm = tuple(dataclasses.replace(r, arch="arm64") for r in m.records if r.kernel != "6.12")
    kernels = (*m.kernels, KernelRun("5.10", "arm64"), KernelRun("6.1", "arm64"))
    both = Matrix(m.records + arm, kernels, "5.10", m.groups)
    assert object_summary(both, "alt_io") == (
        "works on 5.10, 6.1 (x86_64, arm64); `io_start` only through kprobe_start on 6.1, 6.12 (x86_64)"
        " and 6.1 (arm64); not on 6.12 (x86_64) (io_done)"
    )


def test_json_groups_carry_verdicts_and_the_summary_and_round_trip() -> None:
    m = alternatives_sample()
    document = json.loads(render_json(m))
    schema_validator().validate(document)  # type: ignore[attr-defined]
    (group,) = document["groups"]
    assert group["summary"].startswith("works on 5.10–6.12")
    assert [(v["kernel"], v["outcome"], v["working"]) for v in group["verdicts"]] == [
        ("5.10", "pass", ["fentry_start", "kprobe_start"]),
        ("6.1", "pass", ["kprobe_start"]),
        ("6.12", "pass", ["kprobe_start"]),
    ]
    assert parse_matrix_json(render_json(m)).groups == m.groups


def test_html_shows_the_groups_before_the_grid() -> None:
    page = render_html(alternatives_sample(), title="alt")
    assert page.index('id="alternatives"') < page.index('class="tools"')
    assert "✓ kprobe_start" in page and "works on 5.10–6.12" in page
