"""The matrix reporter: collects every cell's results on the controlling process, writes the matrix once."""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.files import atomic_write
from harness.report.results import CellResult, Check, KernelRun, Matrix, Outcome, Probe, merge_matrices

PROP_RESULTS = "bpf_matrix_results"  # user property of a matrix test: its results, serialized
PROP_KERNEL = "bpf_matrix_kernel"  # user property of a matrix test: its kernel's record, serialized
EXIT_HARNESS_ERROR = 3  # pytest's "internal error": some cell could not be decided


class MatrixReporter:
    """Collects every cell's results on the controlling process and writes the matrix once at the end."""

    def __init__(
        self, config: pytest.Config, order: Sequence[tuple[str, str]], baseline: str | None = None
    ) -> None:
        self.config = config
        self.order = list(order)  # (kernel, arch) columns in kernels.yaml order
        self.baseline = baseline  # the kernels.yaml baseline id the drift checks diffed against
        self.records: dict[tuple[Probe, str, str, Check], CellResult] = {}
        self.kernels: dict[tuple[str, str], KernelRun] = {}
        self.written: list[Path] = []

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
        return merge_matrices([Matrix(tuple(self.records.values()), tuple(kernels), self.baseline)])

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.records:
            return
        self.written = list(self.write(self.matrix()))
        # Exit 1 says "a probe is incompatible"; exit 3 says "the harness could not tell" (a VM or
        # download failed), so that CI and users never take an infrastructure failure for a verdict.
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and any(
            r.outcome == Outcome.ERROR for r in self.records.values()
        ):
            session.exitstatus = EXIT_HARNESS_ERROR

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

    def write(self, matrix: Matrix) -> Generator[Path, None, None]:
        from harness.report.render import render_html, render_json, render_markdown

        outputs = [
            (self.config.getoption("--matrix-json"), render_json),
            (self.config.getoption("--matrix-markdown"), render_markdown),
            (self.config.getoption("--matrix-html"), render_html),
        ]
        for raw, render in outputs:
            if not raw:
                continue
            path = Path(raw)
            if not path.is_absolute():
                path = Path(str(self.config.invocation_params.dir)) / path
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, render(matrix))
            yield path
