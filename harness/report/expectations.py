"""Expectations: known, accepted outcomes that turn the raw matrix into a release gate (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.programs.sidecar import Expectation
from harness.report.results import CellResult, Outcome


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.replace("-", ".").split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def matches(exp: Expectation, result: CellResult) -> bool:
    """Whether ``exp`` speaks about ``result``'s check, kernel and arch."""
    if exp.check not in ("*", result.check.value):
        return False
    if exp.kernels and result.kernel not in exp.kernels:
        return False
    if exp.arches and result.arch not in exp.arches:
        return False
    version = _version(result.kernel)
    if exp.before and not (version and version < _version(exp.before)):
        return False
    return not (exp.since and not (version and version >= _version(exp.since)))


def apply_expectations(result: CellResult, expectations: Sequence[Expectation]) -> CellResult:
    """``result`` judged against what is expected of it.

    A FAIL that an expectation accepts becomes XFAIL; a PASS where a failure is expected becomes XPASS
    (a fix to record). A FAIL where the expectation says something else stays FAIL, with the
    expectation named. ERROR stays ERROR: an infrastructure failure is never what anyone expects.
    """
    found = next((e for e in expectations if matches(e, result)), None)
    if found is None or result.outcome == Outcome.ERROR:
        return result
    expected = found.describe()
    if found.outcome == result.outcome.value:
        if result.outcome == Outcome.FAIL:
            return result.with_outcome(Outcome.XFAIL, expected)
        return result.with_outcome(result.outcome, expected)
    if found.outcome == Outcome.FAIL.value and result.outcome == Outcome.PASS:
        return result.with_outcome(Outcome.XPASS, expected)
    return result.with_outcome(result.outcome, expected)
