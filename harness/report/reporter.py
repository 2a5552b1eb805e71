"""The matrix reporter: collects every cell's results on the controlling process, writes the matrix once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.files import atomic_write
from harness.report.results import (
    Alternatives,
    CellResult,
    Check,
    KernelRun,
    Matrix,
    Outcome,
    Probe,
    merge_matrices,
)

PROP_RESULTS = "bpf_matrix_results"  # user property of a matrix test: its results, serialized
PROP_KERNEL = "bpf_matrix_kernel"  # user property of a matrix test: its kernel's record, serialized
EXIT_HARNESS_ERROR = 3  # pytest's "internal error": some cell could not be decided
EXIT_REPORT_UNWRITTEN = 6  # past pytest's own codes (0-5): a report could not be written
REPORT_OPTIONS = ("--matrix-json", "--matrix-markdown", "--matrix-html")


def output_paths(config: pytest.Config) -> list[tuple[str, Path]]:
    """(option, absolute path) of every report the run writes, relative paths from the invocation dir."""
    found = []
    for option in REPORT_OPTIONS:
        raw = config.getoption(option)
        if raw:
            path = Path(raw)
            if not path.is_absolute():
                path = Path(str(config.invocation_params.dir)) / path
            found.append((option, path))
    return found


def output_error(path: Path) -> str:
    """Why a report cannot be written at ``path`` ('' when it can), without creating anything."""
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            return f"{parent} is a dangling symbolic link"
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    return ""


class MatrixReporter:
    """Collects every cell's results on the controlling process and writes the matrix once at the end."""

    def __init__(
        self, config: pytest.Config, order: Sequence[tuple[str, str]], baseline: str | None = None,
        groups: Sequence[Alternatives] = (),
    ) -> None:
        self.config = config
        self.order = list(order)  # (kernel, arch) columns in kernels.yaml order
        self.baseline = baseline  # the kernels.yaml baseline id the drift checks diffed against
        self.groups = tuple(groups)  # the sidecars' alternatives groups
        self.records: dict[tuple[Probe, str, str, Check], CellResult] = {}
        self.kernels: dict[tuple[str, str], KernelRun] = {}
        self.written: list[Path] = []
        self.unwritten: list[str] = []  # one line per report that could not be written

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == PROP_RESULTS:
                for data in json.loads(str(value)):
                    res = CellResult.deserialize(data)
                    self.records[(res.probe, res.kernel, res.arch, res.check)] = res
            elif name == PROP_KERNEL:
                run = KernelRun.deserialize(json.loads(str(value)))
                key = (run.kernel, run.arch)
                known = self.kernels.get(key)
                if known is None or (run.booted and not known.booted) or (run.error and not known.booted):
                    self.kernels[key] = run

    def matrix(self) -> Matrix:
        order = self.order
        kernels = [self.kernels[c] for c in order if c in self.kernels]
        kernels += [k for c, k in self.kernels.items() if c not in order]
        found = Matrix(tuple(self.records.values()), tuple(kernels), self.baseline, self.groups)
        return merge_matrices([found])

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.records:
            return
        self.write(self.matrix())
        # Exit 1 says "a probe is incompatible"; exit 3 says "the harness could not tell" (a VM or
        # download failed), so that CI and users never take an infrastructure failure for a verdict.
        decided = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        if session.exitstatus in decided and any(r.outcome == Outcome.ERROR for r in self.records.values()):
            session.exitstatus = EXIT_HARNESS_ERROR
        # A report left as the previous run wrote it must not be read as this run's.
        if self.unwritten and session.exitstatus in (*decided, EXIT_HARNESS_ERROR):
            session.exitstatus = EXIT_REPORT_UNWRITTEN

    def counts(self) -> str:
        """"3 incompatible, 2 expected failures, 1 harness/VM error" for the summary line."""
        outcomes = [r.outcome for r in self.records.values()]
        parts = [
            (outcomes.count(Outcome.FAIL) + outcomes.count(Outcome.XPASS), "incompatible or changed"),
            (outcomes.count(Outcome.XFAIL), "expected failures"),
            (outcomes.count(Outcome.ERROR), "harness/VM errors"),
            (outcomes.count(Outcome.PASS), "passed"),
        ]
        return ", ".join(f"{n} {what}" for n, what in parts if n)

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        from harness.report.render import render_terminal

        terminalreporter.write_sep("=", "eBPF kernel compatibility matrix")
        terminalreporter.write_line(render_terminal(self.matrix()))
        terminalreporter.write_line(f"checks: {self.counts()}")
        for path in self.written:
            terminalreporter.write_line(f"matrix written to {path}")
        for line in self.unwritten:
            terminalreporter.write_line(line, red=True, bold=True)

    def write(self, matrix: Matrix) -> None:
        """Write every report atomically; one that cannot be written leaves its previous file as it
        was and is noted in ``unwritten``, and the others are still written."""
        from harness.report.render import render_html, render_json, render_markdown

        renderers: dict[str, Callable[[Matrix], str]] = {
            "--matrix-json": render_json, "--matrix-markdown": render_markdown, "--matrix-html": render_html,
        }
        for option, path in output_paths(self.config):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, renderers[option](matrix))
            except OSError as exc:
                why = exc.strerror or str(exc)
                self.unwritten.append(f"ERROR: {option} {path} not written: {why}")
            else:
                self.written.append(path)
