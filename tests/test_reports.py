"""Reports from one real run on the CI kernels: JSON against its schema, Markdown, HTML in Chromium, JUnit;
and shards run separately, then merged, against the run over all of them."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tools import require

from harness.report.results import Check, Matrix, Outcome
from tests.conftest import CI_KERNELS, ROOT, CIRun, run_matrix

pytestmark = pytest.mark.integration

OFFLINE = ("symbol", "prototype", "layout", "tp_format", "uprobe")


def test_json_is_valid_against_the_schema(ci_matrix: CIRun) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "harness" / "report" / "schema.json").read_text())
    document = json.loads(ci_matrix.json_path.read_text())
    jsonschema.validate(document, schema)
    kernels = {(k["kernel"], k["arch"]) for k in document["kernels"]}
    assert kernels == {("5.10", "x86_64"), ("6.1", "x86_64"), ("6.1", "arm64")}
    assert all(k["booted"] and k["accelerator"] in ("kvm", "tcg") for k in document["kernels"])
    checks = {r["check"] for r in document["records"]}
    assert {"symbol", "prototype", "load", "attach", "fire"} <= checks


def test_no_cell_is_an_error(ci_matrix: CIRun) -> None:
    errors = [r for r in ci_matrix.matrix.records if r.outcome == Outcome.ERROR]
    assert not errors, [(r.probe.id, r.kernel, r.arch, r.check.value, r.reason) for r in errors[:5]]


def test_markdown_and_html_show_every_column(ci_matrix: CIRun) -> None:
    markdown = ci_matrix.markdown_path.read_text()
    html = ci_matrix.html_path.read_text()
    for column in ("5.10", "6.1", "x86_64", "arm64"):
        assert column in markdown and column in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_junit_names_each_cell(ci_matrix: CIRun) -> None:
    tree = ET.parse(ci_matrix.junit_path)
    names = {case.get("name") for case in tree.iter("testcase")}
    assert "test_symbol[ksyscall_openat-6.1-arm64]" in names
    assert any(n and n.startswith("test_fire[") and n.endswith("-5.10-x86_64]") for n in names)


def test_html_report_renders_in_chromium(ci_matrix: CIRun, tmp_path: Path) -> None:
    require("chromium")
    png = tmp_path / "report.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(ci_matrix.json_path),
         "-o", str(png)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def _offline_outcomes(matrix: Matrix) -> dict[tuple[str, str, str, str, str], str]:
    # A member of an alternatives group is judged with its group's in-guest results, which an offline
    # shard does not boot for: it keeps its own verdict there, so members are compared apart.
    # So is a target absent on some kernel: whether it is absent on every kernel is judged among the
    # kernels of one run (README: shards and verdicts across kernels).
    members = {(g.object, m) for g in matrix.groups for m in g.members}
    return {
        (r.probe.object, r.probe.program, r.kernel, r.arch, r.check.value): r.outcome.value
        for r in matrix.records
        if r.check.value in OFFLINE and (r.probe.object, r.probe.program) not in members
        and not (r.check is Check.SYMBOL and (r.details or {}).get("absent"))
    }


def test_shards_merged_equal_one_run(ci_matrix: CIRun, tmp_path: Path) -> None:
    """Two shards of the offline checks (facts cached by the CI run: no boot) merge into the matrix of
    the run over both shards' kernels."""
    selection = " or ".join(OFFLINE)
    shards = []
    for name, keys in (("a", ["5.10-x86_64"]), ("b", ["6.1-x86_64", "6.1-arm64"])):
        out = tmp_path / name
        out.mkdir()
        extra = [x for key in keys for x in ("--kernel", key)]
        proc = run_matrix(out, "--kernels", str(CI_KERNELS), "-k", selection, *extra, timeout=600)
        assert proc.returncode in (0, 1), proc.stdout[-3000:]
        document = json.loads((out / "matrix.json").read_text())
        assert not any(k["booted"] for k in document["kernels"]), "an offline shard booted a kernel"
        shards.append(out / "matrix.json")
    merged = tmp_path / "merged.json"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "merge", *map(str, shards), "-o", str(merged)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    merged_matrix = Matrix.deserialize(json.loads(merged.read_text()))
    assert _offline_outcomes(merged_matrix) == _offline_outcomes(ci_matrix.matrix)


def test_a_rerun_reuses_every_guest_record_and_boots_nothing(ci_matrix: CIRun, tmp_path: Path) -> None:
    """The CI matrix again, nothing changed: every (kernel, arch) takes the records the first run stored
    (no VM at all), and every cell has the first run's outcome and reason, FIRE counts included."""
    proc = run_matrix(tmp_path, "--kernels", str(CI_KERNELS), "-n", "2")
    assert proc.returncode == ci_matrix.returncode, proc.stdout[-3000:]
    again = Matrix.deserialize(json.loads((tmp_path / "matrix.json").read_text()))
    for kernel in again.kernels:
        assert kernel.boot_seconds == 0.0, kernel
        reused = [n for n in kernel.notes if "reused from an identical boot" in n]
        assert reused and "no VM this run" in reused[0], kernel
    first = {(r.probe, r.kernel, r.arch, r.check): (r.outcome, r.reason) for r in ci_matrix.matrix.records}
    second = {(r.probe, r.kernel, r.arch, r.check): (r.outcome, r.reason) for r in again.records}
    assert second == first
