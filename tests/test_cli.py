"""Tests of the bpf-matrix command line: every command, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.errors import FetchError
from harness.kernels.config import KernelSpec
from harness.report.render import render_markdown, render_terminal
from harness.report.results import CellResult, Check, Matrix, Outcome, Probe, parse_matrix_json

TESTS = Path(__file__).parent
SAMPLE = TESTS / "data" / "sample_matrix.json"

KERNELS_YAML = """\
mirror: http://mirror.invalid/debian
baseline: "5.10"
defaults:
  arches: [x86_64, arm64]
kernels:
  - id: "5.10"
    suite: bullseye
  - id: "6.1"
    suite: bookworm
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bpf-matrix: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


@pytest.fixture
def kernels(tmp_path: Path) -> Path:
    path = tmp_path / "kernels.yaml"
    path.write_text(KERNELS_YAML)
    return path


# --- list ---------------------------------------------------------------------------------------


def test_list_json_is_a_github_matrix_include(kernels: Path) -> None:
    code, out, _ = run("list", "--kernels", str(kernels), "--json")
    assert code == 0
    assert out.count("\n") == 1  # one line, so that it fits in $GITHUB_OUTPUT
    assert json.loads(out) == [
        {"kernel": "5.10", "arch": "x86_64", "key": "5.10-x86_64"},
        {"kernel": "5.10", "arch": "arm64", "key": "5.10-arm64"},
        {"kernel": "6.1", "arch": "x86_64", "key": "6.1-x86_64"},
        {"kernel": "6.1", "arch": "arm64", "key": "6.1-arm64"},
    ]


def test_list_table_keeps_ids_as_text(kernels: Path) -> None:
    code, out, _ = run("list", "--kernels", str(kernels))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["key", "kernel", "arch"]
    assert lines[2].split()[:3] == ["5.10-x86_64", "5.10", "x86_64"]  # not 5.1
    assert lines[2].endswith("baseline")


def test_list_selects_kernels(kernels: Path) -> None:
    code, out, _ = run("list", "--kernels", str(kernels), "--json", "--kernel", "6.1-arm64")
    assert code == 0
    assert [e["key"] for e in json.loads(out)] == ["6.1-arm64"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kernels: [\n", "not valid YAML"),
        ("kernels: []\n", "'kernels' must be a non-empty list"),
        ("kernels:\n  - id: '6.1'\n    suite: bookworm\n    arch: sparc\n", "unknown arch 'sparc'"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_list_malformed_kernels_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "kernels.yaml"
    path.write_text(text)
    code, out, err = run("list", "--kernels", str(path))
    assert out == ""
    assert_one_line_error(code, err, fragment, str(path))


def test_list_missing_kernels_yaml(tmp_path: Path) -> None:
    code, _, err = run("list", "--kernels", str(tmp_path / "nope.yaml"))
    assert_one_line_error(code, err, "nope.yaml: no such file")


def test_list_unknown_kernel(kernels: Path) -> None:
    code, _, err = run("list", "--kernels", str(kernels), "--kernel", "9.9")
    assert_one_line_error(code, err, "unknown kernel '9.9'")


# --- fetch --------------------------------------------------------------------------------------


class FakeFetch:
    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[tuple[str, Any, str]] = []
        self.fail = fail

    def fetch_kernel(
        self, spec: KernelSpec, cache_root: Path | None = None, mirror: str = "", progress: Any = None
    ) -> Any:
        self.calls.append((spec.key, cache_root, mirror))
        if spec.key in self.fail:
            raise FetchError(f"{spec.key}: mirror unreachable")
        if progress is not None:
            progress(50, 100)
            progress(100, 100)
        return types.SimpleNamespace(
            release=f"{spec.id}.0-1-{spec.arch.debian}", source=f"debian {spec.suite}",
            verified="Release signature verified",
        )


@pytest.fixture
def fake_fetch(monkeypatch: pytest.MonkeyPatch) -> FakeFetch:
    fake = FakeFetch()
    module = types.ModuleType("harness.kernels.fetch")
    module.fetch_kernel = fake.fetch_kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "harness.kernels.fetch", module)
    return fake


def test_fetch_calls_fetch_kernel_per_spec(kernels: Path, fake_fetch: FakeFetch) -> None:
    code, out, err = run("fetch", "--kernels", str(kernels), "--kernel", "6.1")
    assert code == 0, err
    assert fake_fetch.calls == [
        ("6.1-x86_64", None, "http://mirror.invalid/debian"),
        ("6.1-arm64", None, "http://mirror.invalid/debian"),
    ]
    assert out.splitlines() == [
        "6.1-x86_64: 6.1.0-1-amd64 (debian bookworm; Release signature verified)",
        "6.1-arm64: 6.1.0-1-arm64 (debian bookworm; Release signature verified)",
    ]
    assert err == ""  # no progress bar when stderr is not a terminal


def test_fetch_failure_goes_on_and_exits_1(kernels: Path, fake_fetch: FakeFetch) -> None:
    fake_fetch.fail = {"5.10-arm64"}
    code, out, err = run("fetch", "--kernels", str(kernels))
    assert code == 1
    assert len(fake_fetch.calls) == 4
    assert len(out.splitlines()) == 3
    assert "5.10-arm64: mirror unreachable" in err
    assert err.splitlines()[-1] == "bpf-matrix: error: 1 of 4 kernels could not be fetched"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_tty() -> None:
    stream = FakeTTY()
    bar = cli.ProgressBar("6.1-x86_64", stream)
    bar(0, 4 << 20)
    bar(4 << 20, 4 << 20)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r6.1-x86_64:   0%|")
    assert "6.1-x86_64: 100%|" in text
    assert "4.00MiB/4.00MiB" in text
    assert text.endswith("\n") and text.count("\n") == 1
    silent = io.StringIO()
    cli.ProgressBar("x", silent)(1, 2)
    assert silent.getvalue() == ""


def test_progress_bar_without_a_total_counts_bytes() -> None:
    stream = FakeTTY()
    bar = cli.ProgressBar("5.10-arm64", stream)
    bar(3 << 20, 0)
    bar.close()
    text = stream.getvalue()
    assert "5.10-arm64: 3.00MiB" in text and "%" not in text


# --- render -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "html", "json"])
def test_render_each_format(tmp_path: Path, fmt: str) -> None:
    out_file = tmp_path / f"out.{fmt}"
    code, out, err = run("render", str(SAMPLE), "--format", fmt, "-o", str(out_file))
    assert (code, out, err) == (0, "", "")
    text = out_file.read_text()
    m = parse_matrix_json(SAMPLE.read_text())
    if fmt == "terminal":
        assert text == render_terminal(m)
    elif fmt == "markdown":
        assert text == render_markdown(m)
    elif fmt == "html":
        assert text.startswith("<!DOCTYPE html>")
    else:
        assert text == SAMPLE.read_text()


def test_render_reads_a_version_1_document_as_baseline_unknown(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    data = {**json.loads(SAMPLE.read_text()), "version": 1}
    del data["baseline"]
    old.write_text(json.dumps(data))
    code, out, err = run("render", str(old), "--format", "json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["version"], data["baseline"]) == (2, None)
    assert data["records"] == json.loads(SAMPLE.read_text())["records"]


def test_render_to_stdout_ascii() -> None:
    code, out, _ = run("render", str(SAMPLE), "--ascii")
    assert code == 0
    out.encode("ascii")
    assert "X symbol[1]" in out  # the cell names the check that failed
    assert "exec_trace: works on 5.10, 6.1 (x86_64) and 5.10 (arm64);" in out


def _doc(**changes: Any) -> str:
    data = json.loads(SAMPLE.read_text())
    data.update(changes)
    return json.dumps(data)


def _bad_record(**changes: Any) -> str:
    data = json.loads(SAMPLE.read_text())
    data["records"][3].update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a results document"),
        (b"\xff\xfe\x00garbage", "not a text file"),
        (_doc(version=3), "results version 3 is not supported (expected one of 1, 2)"),
        (_doc(baseline=5.1), ": baseline: 5.1 is not of type 'string', 'null'"),
        (_doc(schema="something/else"), "not a bpf-kernel-matrix/results document"),
        (_doc(records={"a": 1}), ": records: {'a': 1} is not of type 'array'"),
        (_doc(records=[1]), ": records[0]: 1 is not of type 'object'"),
        (_doc(kernels=["x"]), ": kernels[0]: 'x' is not of type 'object'"),
        (_doc(kernels=[{"arch": "x86_64"}]), ": kernels[0]: 'kernel' is a required property"),
        (_bad_record(outcome="passed"), ": records[3].outcome: 'passed' is not one of ['pass', 'fail',"),
        (_bad_record(details=[1]), ": records[3].details: [1] is not of type 'object'"),
        (_bad_record(duration="slow"), ": records[3].duration: 'slow' is not of type 'number'"),
        (_bad_record(arch="arm"), ": records[3].arch: 'arm' is not one of ['x86_64', 'arm64']"),
        (_doc(extra=1), ": Additional properties are not allowed ('extra' was unexpected)"),
        (_doc(records=[[{"a": [1, 2, 3, 4]}] * 9]), (
            "records[0]: [{'a': [...]}, {'a': [...]}, {'a': [...]}, ...] is not of type 'object'"
        )),
    ],
)
def test_render_bad_input(tmp_path: Path, content: str | bytes | None, fragment: str) -> None:
    path = tmp_path / "results.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, out, err = run("render", str(path))
    assert out == ""
    assert_one_line_error(code, err, fragment, str(path))


def test_render_directory_is_bad_input(tmp_path: Path) -> None:
    code, _, err = run("render", str(tmp_path))
    assert_one_line_error(code, err, "is a directory")


def test_bad_input_as_a_process_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(_doc(version=99))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "render", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"bpf-matrix: error: {path}: results version 99 is not supported (expected one of 1, 2)\n"
    )


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        run("render")
    assert exc.value.code == 2


# --- merge --------------------------------------------------------------------------------------


def _shard(tmp_path: Path, name: str, arch: str) -> Path:
    data = json.loads(SAMPLE.read_text())
    data["records"] = [r for r in data["records"] if r["arch"] == arch]
    data["kernels"] = [k for k in data["kernels"] if k["arch"] == arch]
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _canonical(m: Matrix) -> tuple[list[str], list[str]]:
    records = sorted(json.dumps(r.serialize(), sort_keys=True) for r in m.records)
    kernels = sorted(json.dumps(k.serialize(), sort_keys=True) for k in m.kernels)
    return records, kernels


def test_two_shards_merge_to_the_whole(tmp_path: Path) -> None:
    a = _shard(tmp_path, "shard-x86_64.json", "x86_64")
    b = _shard(tmp_path, "shard-arm64.json", "arm64")
    merged = tmp_path / "out" / "matrix.json"
    md, page = tmp_path / "matrix.md", tmp_path / "matrix.html"
    code, out, err = run("merge", str(a), str(b), "-o", str(merged), "--markdown", str(md),
                         "--html", str(page))
    assert code == 0, err
    assert "merged 2 shards: 80 records, 4 kernels" in err
    assert out == ""  # the reports go to files, the summary to stderr
    whole = parse_matrix_json(SAMPLE.read_text())
    result = parse_matrix_json(merged.read_text())
    assert _canonical(result) == _canonical(whole)
    assert render_terminal(result) == render_terminal(whole)
    assert md.read_text() == render_markdown(whole)
    assert page.read_text().startswith("<!DOCTYPE html>")
    # Byte for byte the document that merging one file holding both gives, in either shard order.
    single, backwards = tmp_path / "single.json", tmp_path / "backwards.json"
    assert run("merge", str(SAMPLE), "-o", str(single))[0] == 0
    assert run("merge", str(b), str(a), "-o", str(backwards))[0] == 0
    assert merged.read_text() == single.read_text() == backwards.read_text()


def test_merge_orders_columns_like_kernels_yaml_and_flags_missing_shards(
    tmp_path: Path, kernels: Path
) -> None:
    # Only the arm64 shard arrived, and kernels.yaml lists x86_64 first.
    b = _shard(tmp_path, "shard-arm64.json", "arm64")
    merged = tmp_path / "matrix.json"
    code, _, err = run("merge", str(b), "-o", str(merged), "--kernels", str(kernels))
    assert code == 0, err
    result = parse_matrix_json(merged.read_text())
    assert result.columns() == [
        ("5.10", "x86_64"), ("5.10", "arm64"), ("6.1", "x86_64"), ("6.1", "arm64")
    ]
    missing = result.kernel_run("5.10", "x86_64")
    assert missing is not None and "shard missing" in missing.error
    arrived = result.kernel_run("5.10", "arm64")
    assert arrived is not None and arrived.error == "" and arrived.booted
    assert "kernel 5.10/x86_64: no results for this kernel (shard missing)" in render_terminal(result)


def _with_prototype(path: Path, dest: Path, outcome: str, reason: str) -> Path:
    """A copy of the shard at ``path`` whose prototype verdicts on 6.1 are ``outcome``."""
    data = json.loads(path.read_text())
    for r in data["records"]:
        if r["check"] == "prototype" and r["kernel"] == "6.1":
            r["outcome"], r["reason"] = outcome, reason
    dest.write_text(json.dumps(data))
    return dest


def test_merge_refuses_cells_that_differ_between_shards(tmp_path: Path) -> None:
    # Four prototype verdicts in two shards: FAIL in one, PASS in the other (a rerun after a fix).
    whole = tmp_path / "whole.json"
    whole.write_text(SAMPLE.read_text())
    failed = _with_prototype(whole, tmp_path / "failed.json", "fail", "args 0-2 shift by one")
    passed = _with_prototype(whole, tmp_path / "passed.json", "pass", "")
    merged = tmp_path / "m.json"
    for order in ((failed, passed), (passed, failed)):
        code, out, err = run("merge", *map(str, order), "-o", str(merged))
        assert code == cli.EXIT_BAD_INPUT == 2 and out == ""
        lines = err.splitlines()
        conflicts = [ln for ln in lines if ln.startswith("bpf-matrix: error: conflict: ")]
        assert len(conflicts) == 4 and len(lines) == 5, err
        assert all(" 6.1/" in ln and " prototype: " in ln for ln in conflicts)
        assert all("fail (args 0-2 shift by one) in " in ln and "pass in " in ln for ln in conflicts)
        assert lines[-1].startswith("bpf-matrix: error: 4 cell(s) differ between shards")
        assert "Traceback" not in err
        assert not merged.exists()


def test_merge_keeps_identical_duplicates_once(tmp_path: Path) -> None:
    a = _shard(tmp_path, "a.json", "arm64")
    data = json.loads(a.read_text())
    for r in data["records"]:
        r["duration"] += 1.5  # the same verdicts, timed again
    again = tmp_path / "again.json"
    again.write_text(json.dumps(data))
    merged = tmp_path / "m.json"
    code, _, err = run("merge", str(a), str(again), "-o", str(merged))
    assert code == 0, err
    assert _canonical(parse_matrix_json(merged.read_text())) == _canonical(parse_matrix_json(a.read_text()))


def test_merge_refuses_shards_with_different_baselines(tmp_path: Path) -> None:
    a = _shard(tmp_path, "a.json", "x86_64")
    b = tmp_path / "b.json"
    arm64 = json.loads(_shard(tmp_path, "b0.json", "arm64").read_text())
    b.write_text(json.dumps({**arm64, "baseline": "6.1"}))
    merged = tmp_path / "m.json"
    code, _, err = run("merge", str(a), str(b), "-o", str(merged))
    assert_one_line_error(code, err, "different baselines", f"{a} against 5.10", f"{b} against 6.1")
    assert not merged.exists()


def test_merge_records_the_baseline_and_takes_version_1_shards(tmp_path: Path) -> None:
    a = _shard(tmp_path, "a.json", "x86_64")
    old = tmp_path / "old.json"
    data = json.loads(_shard(tmp_path, "b.json", "arm64").read_text())
    del data["baseline"]
    old.write_text(json.dumps({**data, "version": 1}))
    merged = tmp_path / "m.json"
    code, _, err = run("merge", str(old), str(a), "-o", str(merged))
    assert code == 0, err
    assert f"warning: {old} records no baseline; merged as diffed against 5.10" in err
    document = json.loads(merged.read_text())
    assert (document["version"], document["baseline"]) == (2, "5.10")
    whole = parse_matrix_json(SAMPLE.read_text())
    assert _canonical(parse_matrix_json(merged.read_text())) == _canonical(whole)
    # Version 1 alone: the baseline stays unknown rather than guessed.
    code, _, err = run("merge", str(old), "-o", str(merged))
    assert code == 0 and "warning" not in err
    assert json.loads(merged.read_text())["baseline"] is None


def test_merge_refuses_a_kernels_yaml_with_another_baseline(tmp_path: Path, kernels: Path) -> None:
    kernels.write_text(KERNELS_YAML.replace('baseline: "5.10"', 'baseline: "6.1"'))
    code, _, err = run("merge", str(SAMPLE), "-o", str(tmp_path / "m.json"), "--kernels", str(kernels))
    assert_one_line_error(code, err, "baseline '6.1', but the shards were diffed against '5.10'")


def test_merge_bad_shard(tmp_path: Path) -> None:
    good = _shard(tmp_path, "a.json", "arm64")
    bad = tmp_path / "b.json"
    bad.write_text(_doc(version=0))
    out_path = tmp_path / "m.json"
    code, _, err = run("merge", str(good), str(bad), "-o", str(out_path))
    assert_one_line_error(code, err, "b.json", "version 0")
    assert not out_path.exists()


def test_merge_requires_output(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run("merge", str(SAMPLE))
    assert exc.value.code == 2


def test_offsets_table_per_kernel(tmp_path: Path) -> None:
    probe = Probe("task", "on_exec", "tp/sched/sched_process_exec", "tracepoint", "sched/sched_process_exec")

    def layout(kernel: str, offset: int | None) -> CellResult:
        row = {"path": "task_struct.comm", "kind": "field_byte_offset", "status":
               "ok" if offset is not None else "field missing", "offset": offset, "size": 16}
        return CellResult(probe, kernel, "x86_64", Check.LAYOUT,
                          Outcome.PASS if offset is not None else Outcome.FAIL, "", {"relocations": [row]})

    path = tmp_path / "m.json"
    path.write_text(json.dumps(Matrix((layout("5.10", 2736), layout("6.1", 2976))).serialize()))
    code, out, err = run("offsets", str(path))
    assert code == 0, err
    header, _, row = out.strip().splitlines()
    assert header.index("5.10/x86_64") < header.index("6.1/x86_64")
    assert "task_struct.comm" in row and "2736" in row and "2976" in row
    code, _, err = run("offsets", str(path), "--program", "nope")
    assert code == 2 and "no layout results for nope" in err
