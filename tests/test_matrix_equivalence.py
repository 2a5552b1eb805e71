"""scripts/matrix_equivalence.py: two results documents compared cell by cell."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "matrix_equivalence.py"
_spec = importlib.util.spec_from_file_location("matrix_equivalence", SCRIPT)
assert _spec is not None and _spec.loader is not None
equivalence = importlib.util.module_from_spec(_spec)
sys.modules["matrix_equivalence"] = equivalence
_spec.loader.exec_module(equivalence)


def _doc() -> dict[str, Any]:
    cell = {"object": "o", "program": "p", "kernel": "6.1", "arch": "x86_64", "hook": "kprobe",
            "section": "kprobe/f", "target": "f", "expected": None}
    return {
        "schema": "bpf-kernel-matrix/results", "version": 1,
        "kernels": [
            {"kernel": "6.1", "arch": "x86_64", "booted": True, "error": "", "digest": "d", "lsm": "bpf",
             "boot_seconds": 30.0}
        ],
        "records": [
            {**cell, "check": "load", "outcome": "pass", "reason": "", "duration": 0.1},
            {**cell, "check": "fire", "outcome": "pass", "reason": "ran 12 times, recursion_misses 0",
             "duration": 0},
        ],
    }


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_same_verdicts_with_other_timings_and_run_counts_are_equivalent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    after = _doc()
    after["kernels"][0]["boot_seconds"] = 99.0
    after["records"][0]["duration"] = 5.0
    after["records"][1]["reason"] = "ran 7 times, recursion_misses 0"
    assert equivalence.main([_write(tmp_path, "a.json", _doc()), _write(tmp_path, "b.json", after)]) == 0
    assert "equivalent: 2 cells, 1 kernels" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["records"][0].update(outcome="fail"), "o/p/6.1/x86_64/load: outcome 'pass' -> 'fail'"),
        (lambda d: d["records"][1].update(reason="ran 7 times, recursion_misses 3"), "fire: reason"),
        (lambda d: d["records"].pop(0), "o/p/6.1/x86_64/load: only in the first"),
        (lambda d: d["kernels"][0].update(booted=False), "kernel 6.1/x86_64: booted True -> False"),
    ],
)
def test_a_changed_verdict_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any,
                                       expected: str) -> None:
    after = copy.deepcopy(_doc())
    edit(after)
    assert equivalence.main([_write(tmp_path, "a.json", _doc()), _write(tmp_path, "b.json", after)]) == 1
    assert expected in capsys.readouterr().out


def test_a_file_that_is_not_a_results_document_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(SystemExit, match="cannot read a results document"):
        equivalence.main([str(bad), str(bad)])
