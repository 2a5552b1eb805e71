"""Shared fixtures of the harness's own tests, among them one real matrix run that integration tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock
from tools import check_marks

from harness.report.results import Matrix

ROOT = Path(__file__).resolve().parent.parent
CI_KERNELS = ROOT / "kernels-ci.yaml"
MATRIX_RUN_TIMEOUT = 2400


@dataclass(frozen=True)
class CIRun:
    """One `pytest matrix/` run on kernels-ci.yaml and the sample bpf_progs/, with every output."""

    returncode: int
    output: str
    matrix: Matrix
    json_path: Path
    markdown_path: Path
    html_path: Path
    junit_path: Path


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_marks(item)


def _pytest_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_matrix(
    out: Path, *extra: str, timeout: float = MATRIX_RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`pytest matrix/` in a subprocess from the repository root, its outputs under ``out``."""
    argv = [
        sys.executable, "-m", "pytest", "matrix/", "-p", "no:cacheprovider", "-q",
        "--matrix-json", str(out / "matrix.json"),
        "--matrix-markdown", str(out / "matrix.md"),
        "--matrix-html", str(out / "matrix.html"),
        "--junitxml", str(out / "junit.xml"),
        *extra,
    ]
    return subprocess.run(
        argv, cwd=ROOT, env=_pytest_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def ci_matrix(tmp_path_factory: pytest.TempPathFactory) -> CIRun:
    """The matrix of the sample programs on kernels-ci.yaml, run once for the whole test session.

    pytest-xdist workers share it: the first one runs it under a lock, the others read its outputs.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "ci-matrix"
    with FileLock(str(shared / "ci-matrix.lock")):
        done = out / "result.json"
        if not done.exists():
            out.mkdir(parents=True, exist_ok=True)
            # --fresh-boots: these tests are of real boots, whatever records an earlier run left.
            proc = run_matrix(out, "--kernels", str(CI_KERNELS), "-n", "2", "--fresh-boots")
            done.write_text(json.dumps({"returncode": proc.returncode, "output": proc.stdout + proc.stderr}))
        result = json.loads(done.read_text())
    json_path = out / "matrix.json"
    if not json_path.exists():
        pytest.fail(f"the CI matrix run wrote no results:\n{result['output'][-4000:]}")
    return CIRun(
        returncode=result["returncode"],
        output=result["output"],
        matrix=Matrix.deserialize(json.loads(json_path.read_text())),
        json_path=json_path,
        markdown_path=out / "matrix.md",
        html_path=out / "matrix.html",
        junit_path=out / "junit.xml",
    )
