"""Tests for bench/bench_offline_agreement.py: the agreement of layout verdicts with in-guest loads."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_offline_agreement.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_offline_agreement", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rec(program: str, check: str, outcome: str, **details: Any) -> dict[str, Any]:
    reason = str(details.pop("reason", ""))
    return {"object": "o", "program": program, "kernel": "6.1", "arch": "x86_64", "check": check,
            "outcome": outcome, "reason": reason, "details": details}


MISSING = [{"status": "field missing", "kind": "field_byte_offset"}]
EXISTS_NO = [{"status": "field missing", "kind": "field_exists"}]


def test_agreement_counts_only_unresolved_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [
        # guarded read, loaded: agrees
        rec("a", "layout", "pass", relocations=MISSING), rec("a", "load", "pass"),
        rec("a", "core", "pass", relocations=[{"status": "failed"}]),
        # unguarded read, refused for the relocation: agrees
        rec("b", "layout", "fail", relocations=MISSING),
        rec("b", "load", "fail", reason="verifier rejected it: failed to resolve CO-RE relocation x"),
        # predicted a failure, but it loaded: disagrees
        rec("c", "layout", "fail", relocations=MISSING), rec("c", "load", "pass"),
        # refused for a helper: strict disagrees, cause agrees
        rec("d", "layout", "pass", relocations=MISSING),
        rec("d", "load", "fail", reason="verifier rejected it (EINVAL): unknown func bpf_x#46"),
        # only an existence check answering no: not an unresolved read
        rec("e", "layout", "pass", relocations=EXISTS_NO), rec("e", "load", "fail"),
    ]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"records": records}))
    module = bench()
    tallies, wrong = module.measure(records)
    layout = tallies["layout"]
    assert (layout.cells, layout.strict, layout.cause) == (4, 2, 3)
    assert tallies["core"].cells == 1 and tallies["core"].strict == 1
    assert [w.split(":")[0] for w in wrong] == ["o/c/6.1/x86_64", "o/d/6.1/x86_64"]
    assert module.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:4] == ["layout", "4", "50.0%", "75.0%"]
    assert out.splitlines()[3].split()[:2] == ["overall", "5"]
