"""Expectations: known, accepted outcomes that turn the raw matrix into a release gate (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.kernels.version import KernelVersion
from harness.programs.sidecar import Expectation
from harness.report.results import CellResult, Outcome


def matches(exp: Expectation, result: CellResult, version: KernelVersion | None = None) -> bool:
    """Whether ``exp`` speaks about ``result``'s check, kernel and arch.

    ``before``/``since`` compare with ``version``, the kernel the guest ran; without one, with the
    version of the kernels.yaml id. A kernel of no known version is neither before nor since anything.
    """
    if exp.check is not None and exp.check != result.check:
        return False
    if exp.kernels and result.kernel not in exp.kernels:
        return False
    if exp.arches and result.arch not in exp.arches:
        return False
    if version is None:
        version = KernelVersion.parse(result.kernel)
    if exp.before is not None and not (version is not None and version < exp.before):
        return False
    return not (exp.since is not None and not (version is not None and version >= exp.since))


def apply_expectations(
    result: CellResult, expectations: Sequence[Expectation], kernel_version: str = ""
) -> CellResult:
    """``result`` judged against what is expected of it.

    ``kernel_version`` is the release the kernel reported (``KernelRun.version``: uname -r in the
    guest, else the package's): "7.2" in kernels.yaml is whatever sid ships that day. When it is empty
    or unreadable, the kernels.yaml id stands for it.

    A FAIL that an expectation accepts becomes XFAIL; a PASS where a failure is expected becomes XPASS
    (a fix to record). A FAIL where the expectation says something else stays FAIL, with the
    expectation named. ERROR stays ERROR: an infrastructure failure is never what anyone expects.
    """
    version = KernelVersion.parse(kernel_version)
    found = next((e for e in expectations if matches(e, result, version)), None)
    if found is None or result.outcome == Outcome.ERROR:
        return result
    expected = found.describe()
    if found.outcome == result.outcome:
        if result.outcome == Outcome.FAIL:
            return result.with_outcome(Outcome.XFAIL, expected)
        return result.with_outcome(result.outcome, expected)
    if found.outcome == Outcome.FAIL and result.outcome == Outcome.PASS:
        return result.with_outcome(Outcome.XPASS, expected)
    return result.with_outcome(result.outcome, expected)
