"""Tests of report.results: records round-trip through JSON, the matrix's views, parsing and merging."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.errors import ResultsError
from harness.report.results import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    CellResult,
    Check,
    KernelRun,
    Matrix,
    MergeConflictError,
    Outcome,
    Probe,
    merge_matrices,
    parse_matrix_json,
    worst,
)

DATA = Path(__file__).resolve().parent / "data"

UNLINK = Probe("vfs_unlink", "kprobe_vfs_unlink", "kprobe/vfs_unlink", "kprobe", "vfs_unlink")
FENTRY = Probe("vfs_unlink", "fentry_vfs_unlink", "fentry/vfs_unlink", "fentry", "vfs_unlink")
OPENAT = Probe(
    "syscalls", "tp_openat", "tp/syscalls/sys_enter_openat", "tracepoint", "syscalls/sys_enter_openat"
)


def rec(probe: Probe, kernel: str, arch: str, check: Check, outcome: Outcome, reason: str = "") -> CellResult:
    return CellResult(probe, kernel, arch, check, outcome, reason)


def test_probe_id() -> None:
    assert UNLINK.id == "vfs_unlink:kprobe_vfs_unlink"
    assert Probe("blk", "blk", "kprobe/blk", "kprobe", "blk").id == "blk"


def test_cell_result_round_trip_through_json() -> None:
    original = CellResult(
        UNLINK, "6.1", "arm64", Check.ATTACH, Outcome.XFAIL, "attach failed: ENOENT",
        {"errno": 2, "log": ["a", "b"], "nested": {"x": None}}, 1.23456, "attach fails from 6.3",
    )
    data = json.loads(json.dumps(original.serialize()))
    assert data["hook"] == "kprobe" and data["check"] == "attach" and data["outcome"] == "xfail"
    assert data["duration"] == 1.235
    back = CellResult.deserialize(data)
    assert back.probe == UNLINK
    assert (back.kernel, back.arch, back.check, back.outcome) == ("6.1", "arm64", Check.ATTACH, Outcome.XFAIL)
    assert back.reason == original.reason and back.expected == original.expected
    assert back.details == original.details
    assert back.duration == 1.235
    # Serializing again gives the same document (stable through any number of round trips).
    assert back.serialize() == data


def test_cell_result_deserialize_defaults_and_numeric_kernel() -> None:
    data = {
        "object": "o", "program": "p", "section": "kprobe/f", "hook": "kprobe", "target": "f",
        "kernel": 6.1, "arch": "x86_64", "check": "load", "outcome": "pass",
    }
    back = CellResult.deserialize(data)
    assert back.kernel == "6.1"
    assert (back.reason, back.details, back.duration, back.expected) == ("", {}, 0.0, None)


def test_cell_result_deserialize_rejects_unknown_enums() -> None:
    data = CellResult(UNLINK, "6.1", "x86_64", Check.LOAD, Outcome.PASS).serialize()
    with pytest.raises(ValueError):
        CellResult.deserialize({**data, "check": "verify"})
    with pytest.raises(ValueError):
        CellResult.deserialize({**data, "outcome": "ok"})
    del data["target"]
    with pytest.raises(KeyError):
        CellResult.deserialize(data)


def test_with_outcome_records_the_expectation() -> None:
    fail = rec(UNLINK, "6.1", "x86_64", Check.SYMBOL, Outcome.FAIL, "not in kallsyms")
    xfail = fail.with_outcome(Outcome.XFAIL, "inlined from 6.1")
    assert xfail.outcome is Outcome.XFAIL
    assert (xfail.expected, xfail.reason) == ("inlined from 6.1", "not in kallsyms")
    assert fail.outcome is Outcome.FAIL and fail.expected is None


def test_kernel_run_round_trip_and_unknown_keys() -> None:
    run = KernelRun(
        "6.1", "x86_64", version="6.1.0-27-amd64", source="debian bookworm", digest="ab" * 32,
        accelerator="kvm", booted=True, boot_seconds=12.34567, lsm="lockdown,bpf", notes=("a", "b"),
    )
    data = json.loads(json.dumps(run.serialize()))
    assert data["notes"] == ["a", "b"] and data["boot_seconds"] == 12.346
    back = KernelRun.deserialize({**data, "kernel": 6.1, "added_later": True})
    assert back == KernelRun(**{**run.__dict__, "boot_seconds": 12.346})
    assert back.column == "6.1/x86_64"


def test_worst_follows_severity() -> None:
    assert worst([]) is None
    assert worst([Outcome.SKIP, Outcome.PASS]) is Outcome.PASS
    assert worst([Outcome.PASS, Outcome.XFAIL]) is Outcome.XFAIL
    assert worst([Outcome.XFAIL, Outcome.XPASS]) is Outcome.XPASS
    assert worst([Outcome.XPASS, Outcome.FAIL, Outcome.PASS]) is Outcome.FAIL
    assert worst([Outcome.FAIL, Outcome.ERROR]) is Outcome.ERROR
    assert worst([Outcome.SKIP]) is Outcome.SKIP


# ---------------------------------------------------------------- Matrix views


def sample_matrix() -> Matrix:
    return Matrix(
        records=(
            rec(UNLINK, "6.1", "x86_64", Check.FIRE, Outcome.PASS),
            rec(UNLINK, "6.1", "x86_64", Check.SYMBOL, Outcome.PASS),
            rec(UNLINK, "6.1", "x86_64", Check.LOAD, Outcome.SKIP),
            rec(OPENAT, "7.0", "arm64", Check.ATTACH, Outcome.FAIL, "no tracepoint"),
            rec(OPENAT, "7.0", "arm64", Check.LOAD, Outcome.PASS),
            rec(FENTRY, "5.10", "x86_64", Check.LOAD, Outcome.ERROR, "VM lost"),
        ),
        kernels=(KernelRun("5.10", "x86_64"), KernelRun("6.1", "x86_64")),
        baseline="5.10",
    )


def test_columns_kernels_first_then_records() -> None:
    assert sample_matrix().columns() == [("5.10", "x86_64"), ("6.1", "x86_64"), ("7.0", "arm64")]


def test_probes_sorted_by_object_then_program() -> None:
    assert sample_matrix().probes() == [OPENAT, FENTRY, UNLINK]


def test_cell_in_check_order() -> None:
    m = sample_matrix()
    assert [r.check for r in m.cell(UNLINK, "6.1", "x86_64")] == [Check.SYMBOL, Check.LOAD, Check.FIRE]
    assert m.cell(UNLINK, "6.1", "arm64") == []
    assert m.cell(UNLINK, "5.10", "x86_64") == []


def test_summary_is_the_worst_check() -> None:
    m = sample_matrix()
    assert m.summary(UNLINK, "6.1", "x86_64") is Outcome.PASS
    assert m.summary(OPENAT, "7.0", "arm64") is Outcome.FAIL
    assert m.summary(FENTRY, "5.10", "x86_64") is Outcome.ERROR
    assert m.summary(FENTRY, "6.1", "x86_64") is None


def test_kernel_run_lookup() -> None:
    m = sample_matrix()
    assert m.kernel_run("6.1", "x86_64") == KernelRun("6.1", "x86_64")
    assert m.kernel_run("7.0", "arm64") is None


# ---------------------------------------------------------------- documents


def test_matrix_round_trip() -> None:
    m = sample_matrix()
    text = json.dumps(m.serialize())
    back = parse_matrix_json(text)
    assert back == m
    assert json.loads(text)["schema"] == SCHEMA_NAME and json.loads(text)["version"] == SCHEMA_VERSION
    assert json.loads(text)["baseline"] == "5.10"


def test_version_1_document_is_migrated_with_an_unknown_baseline() -> None:
    current = sample_matrix().serialize()
    old = {k: v for k, v in current.items() if k != "baseline"} | {"version": 1}
    m = parse_matrix_json(json.dumps(old), "old.json")
    assert m.baseline is None
    assert m.records == sample_matrix().records and m.kernels == sample_matrix().kernels
    # Written again, it is a current document that says the baseline is not known.
    again = m.serialize()
    assert again["version"] == SCHEMA_VERSION == 2 and again["baseline"] is None


def test_sample_matrix_file_round_trips() -> None:
    text = (DATA / "sample_matrix.json").read_text()
    m = parse_matrix_json(text, "sample_matrix.json")
    assert m.records and m.columns()
    assert parse_matrix_json(json.dumps(m.serialize())) == m


@pytest.mark.parametrize(
    "text,expected",
    [
        ("{not json", r"^run\.json: not JSON: "),
        ("[1, 2]", r"^run\.json: not a results document$"),
        (
            '{"schema": "other", "version": 1, "records": []}',
            r"^run\.json: not a bpf-kernel-matrix/results document \(schema='other'\)$",
        ),
        (
            json.dumps({"schema": SCHEMA_NAME, "version": 99, "records": []}),
            r"^run\.json: results version 99 is not supported \(expected one of 1, 2\)$",
        ),
        (
            json.dumps({"schema": SCHEMA_NAME, "version": 1}),
            r"^run\.json: malformed results record: 'records'$",
        ),
        (
            json.dumps({"schema": SCHEMA_NAME, "version": 1, "records": [{"object": "o"}]}),
            r"^run\.json: malformed results record: 'program'$",
        ),
        (
            json.dumps({"schema": SCHEMA_NAME, "version": 1, "records": [], "kernels": [{"arch": "x86_64"}]}),
            r"^run\.json: malformed results record: 'kernel'$",
        ),
        (
            json.dumps({"schema": SCHEMA_NAME, "version": 1, "records": [
                {**rec(UNLINK, "6.1", "x86_64", Check.LOAD, Outcome.PASS).serialize(), "outcome": "great"}
            ]}),
            r"^run\.json: 'great' is not a valid Outcome$",
        ),
    ],
)
def test_parse_matrix_json_errors_name_the_file(text: str, expected: str) -> None:
    with pytest.raises(ResultsError, match=expected):
        parse_matrix_json(text, "run.json")


# ---------------------------------------------------------------- merging


def test_merge_refuses_a_cell_that_differs_between_shards_in_either_order() -> None:
    fail = rec(UNLINK, "6.1", "x86_64", Check.PROTOTYPE, Outcome.FAIL, "args 0-2 shift by one")
    passed = rec(UNLINK, "6.1", "x86_64", Check.PROTOTYPE, Outcome.PASS)
    other = rec(UNLINK, "6.1", "x86_64", Check.PROTOTYPE, Outcome.FAIL, "another reason")
    first = Matrix((fail, rec(UNLINK, "6.1", "x86_64", Check.SYMBOL, Outcome.PASS)))
    for shards, names in (([first, Matrix((passed,))], ["a.json", "b.json"]),
                          ([Matrix((passed,)), first], ["b.json", "a.json"])):
        with pytest.raises(MergeConflictError) as info:
            merge_matrices(shards, names)
        assert len(info.value.conflicts) == 1
        line = info.value.conflicts[0]
        assert line.startswith("vfs_unlink:kprobe_vfs_unlink 6.1/x86_64 prototype: ")
        assert "fail (args 0-2 shift by one) in a.json" in line and "pass in b.json" in line
    # Another reason for the same outcome is a conflict too.
    with pytest.raises(MergeConflictError, match="another reason"):
        merge_matrices([first, Matrix((other,))])


def test_merge_keeps_an_identical_cell_once_whatever_its_timings() -> None:
    slow = dataclasses.replace(
        rec(UNLINK, "6.1", "x86_64", Check.LOAD, Outcome.PASS), duration=2.0, details={"insns": 9}
    )
    fast = dataclasses.replace(slow, duration=0.5)
    one = merge_matrices([Matrix((slow,)), Matrix((fast,))])
    other = merge_matrices([Matrix((fast,)), Matrix((slow,))])
    assert len(one.records) == 1 and one == other  # the same copy, whichever shard came first


def test_merge_later_kernel_entry_wins() -> None:
    first = Matrix(records=(), kernels=(KernelRun("6.1", "x86_64", error="lost"),))
    second = Matrix(records=(), kernels=(KernelRun("6.1", "x86_64", booted=True),))
    assert merge_matrices([first, second]).kernels == (KernelRun("6.1", "x86_64", booted=True),)


@pytest.mark.parametrize(
    ("baselines", "merged"),
    [
        (["5.10", "5.10"], "5.10"),
        ([None, "5.10"], "5.10"),  # a version 1 shard (baseline unknown) agrees with any
        (["5.10", None, None], "5.10"),
        ([None, None], None),
    ],
)
def test_merge_keeps_the_one_baseline(baselines: list[str | None], merged: str | None) -> None:
    shards = [
        Matrix((rec(UNLINK, f"k{i}", "x86_64", Check.LOAD, Outcome.PASS),), baseline=b)
        for i, b in enumerate(baselines)
    ]
    assert merge_matrices(shards).baseline == merged


def test_merge_refuses_shards_diffed_against_different_baselines() -> None:
    a = Matrix((rec(UNLINK, "6.1", "x86_64", Check.LOAD, Outcome.PASS),), baseline="5.10")
    b = Matrix((rec(UNLINK, "6.6", "x86_64", Check.LOAD, Outcome.PASS),), baseline="6.1")
    with pytest.raises(MergeConflictError, match=r"different baselines: a\.json against 5\.10, "
                       r"b\.json against 6\.1$"):
        merge_matrices([a, Matrix(()), b], ["a.json", "old.json", "b.json"])


def test_two_shards_equal_one_document() -> None:
    whole = sample_matrix()
    by_kernel: dict[str, list[CellResult]] = {}
    for r in whole.records:
        by_kernel.setdefault(r.kernel, []).append(r)
    shards = [
        Matrix(tuple(by_kernel["5.10"] + by_kernel["7.0"]), whole.kernels[:1]),
        Matrix(tuple(by_kernel["6.1"]), whole.kernels[1:]),
    ]
    # Shards travel as JSON between processes.
    shards = [parse_matrix_json(json.dumps(s.serialize())) for s in shards]
    merged = merge_matrices(shards)
    def key(r: CellResult) -> str:
        return json.dumps(r.serialize(), sort_keys=True)

    assert sorted(map(key, merged.records)) == sorted(map(key, whole.records))
    assert merged.kernels == whole.kernels
    assert merged.columns() == whole.columns()
    assert merged.probes() == whole.probes()
    for probe in whole.probes():
        for kernel, arch in whole.columns():
            assert merged.cell(probe, kernel, arch) == whole.cell(probe, kernel, arch)


def test_merge_nothing() -> None:
    assert merge_matrices([]) == Matrix(records=(), kernels=())
