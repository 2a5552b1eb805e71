"""Tests of bench/bench_throughput.py's reading of a kept guest share (the figures it prints)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def bench() -> Any:
    path = ROOT / "bench" / "bench_throughput.py"
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def share(tmp_path: Path, done: dict[str, Any], objects: list[dict[str, Any]]) -> Path:
    where = tmp_path / "6.1-x86_64-abc" / "share"
    where.mkdir(parents=True)
    (where / "done.json").write_text(json.dumps(done))
    (where / "objects.json").write_text(json.dumps(objects))
    return where


def test_an_agent_that_reports_its_totals_is_read_by_them(tmp_path: Path) -> None:
    b = bench()
    objects = [
        {"object": f"o{i}", "phases": {"load": 0.1 * i, "attach": 0.5, "trigger": 2.0}} for i in (1, 2, 3)
    ]
    done = {"seconds": 9.0, "objects_seconds": 6.0, "phases": {"load": 0.6, "attach": 1.5, "trigger": 2.0}}
    figures = b.measure_boot(share(tmp_path, done, objects))
    # The batch's trigger counted once (the agent's own totals), not once per object.
    assert figures["trigger"] == 2.0 and figures["load"] == 0.6
    assert figures["per_object"] == 2.0 and figures["objects"] == 3
    assert abs(figures["load_median"] - 0.2) < 1e-9
    assert b.guest_dirs(tmp_path, "6.1-x86_64") == [tmp_path / "6.1-x86_64-abc" / "share"]
    assert b.guest_dirs(tmp_path, "6.12-x86_64") == []


def test_an_older_agent_is_read_by_its_objects_phases(tmp_path: Path) -> None:
    b = bench()
    objects = [{"object": "a", "phases": {"load": 1.0, "trigger": 0.5}}, {"object": "b", "error": "x"}]
    figures = b.measure_boot(share(tmp_path, {"seconds": 3.0, "objects_seconds": 2.0}, objects))
    assert (figures["load"], figures["attach"], figures["trigger"]) == (1.0, 0.0, 0.5)
    assert figures["per_object"] == 1.0 and figures["load_median"] == 1.0
