"""Tests of report.expectations: which cells an expectation speaks about, and what it makes of them."""

from __future__ import annotations

import pytest

from harness.kernels.version import KernelVersion
from harness.plugin import Cell
from harness.programs.sidecar import Expectation
from harness.report.expectations import apply_expectations, matches
from harness.report.results import CellResult, Check, Outcome, Probe

KPROBE = Probe(
    "blk_account", "kprobe_blk_account_io_start", "kprobe/blk_account_io_start", "kprobe",
    "blk_account_io_start",
)
CELL = "blk_account:kprobe_blk_account_io_start"
INLINED = "`blk_account_io_start` not in kallsyms on 6.1: removed, renamed or inlined"


def v(text: str) -> KernelVersion:
    parsed = KernelVersion.parse(text)
    assert parsed is not None
    return parsed


def res(
    kernel: str = "6.1", arch: str = "x86_64", check: Check = Check.SYMBOL, outcome: Outcome = Outcome.FAIL
) -> CellResult:
    return CellResult(KPROBE, kernel, arch, check, outcome, INLINED if outcome == Outcome.FAIL else "")


@pytest.mark.parametrize(
    ("exp", "kernel", "arch", "check", "expected"),
    [
        (Expectation(Outcome.FAIL), "5.10", "arm64", Check.FIRE, True),
        (Expectation(Outcome.FAIL, check=Check.SYMBOL), "6.1", "x86_64", Check.SYMBOL, True),
        (Expectation(Outcome.FAIL, check=Check.SYMBOL), "6.1", "x86_64", Check.ATTACH, False),
        (Expectation(Outcome.FAIL, kernels=("6.1",)), "6.1", "x86_64", Check.LOAD, True),
        (Expectation(Outcome.FAIL, kernels=("6.1",)), "6.12", "x86_64", Check.LOAD, False),
        (Expectation(Outcome.FAIL, kernels=("5.10", "6.1")), "5.10", "arm64", Check.LOAD, True),
        (Expectation(Outcome.FAIL, arches=("arm64",)), "6.1", "arm64", Check.ATTACH, True),
        (Expectation(Outcome.FAIL, arches=("arm64",)), "6.1", "x86_64", Check.ATTACH, False),
        # Versions compare as numbers: 6.12 is after 6.5, 5.10 before 5.17.
        (Expectation(Outcome.FAIL, before=v("6.5")), "6.1", "x86_64", Check.SYMBOL, True),
        (Expectation(Outcome.FAIL, before=v("6.5")), "6.12", "x86_64", Check.SYMBOL, False),
        (Expectation(Outcome.FAIL, before=v("6.5")), "6.5", "x86_64", Check.SYMBOL, False),
        (Expectation(Outcome.FAIL, since=v("5.17")), "5.10", "x86_64", Check.SYMBOL, False),
        (Expectation(Outcome.FAIL, since=v("5.17")), "6.12", "x86_64", Check.SYMBOL, True),
        (Expectation(Outcome.FAIL, since=v("6.1")), "6.1", "x86_64", Check.SYMBOL, True),
        (Expectation(Outcome.FAIL, since=v("5.12"), before=v("6.4")), "6.1", "x86_64", Check.SYMBOL, True),
        (Expectation(Outcome.FAIL, since=v("5.12"), before=v("6.4")), "6.12", "x86_64", Check.SYMBOL,
         False),
        (Expectation(Outcome.FAIL, arches=("arm64",), before=v("6.4")), "6.1", "arm64", Check.ATTACH, True),
        (Expectation(Outcome.FAIL, arches=("arm64",), before=v("6.4")), "6.12", "arm64", Check.ATTACH,
         False),
        # A kernel id with a suffix is judged by its numbers; one without numbers is never "before" anything.
        (Expectation(Outcome.FAIL, since=v("6.1")), "6.1-rt", "x86_64", Check.SYMBOL, True),
        (Expectation(Outcome.FAIL, before=v("6.5")), "local", "x86_64", Check.SYMBOL, False),
    ],
)
def test_matches(exp: Expectation, kernel: str, arch: str, check: Check, expected: bool) -> None:
    assert matches(exp, res(kernel, arch, check)) is expected


def test_accepted_failure_becomes_xfail_with_the_expectation() -> None:
    exp = Expectation(Outcome.FAIL, Check.SYMBOL, since=v("5.17"), reason="inlined since 5.17")
    out = apply_expectations(res(), [exp])
    assert out.outcome == Outcome.XFAIL
    assert out.reason == INLINED
    assert out.expected == "symbol fail since 5.17: inlined since 5.17"


def test_pass_where_a_failure_is_expected_is_xpass() -> None:
    out = apply_expectations(
        res("6.12", outcome=Outcome.PASS), [Expectation(Outcome.FAIL, Check.SYMBOL, since=v("5.17"))]
    )
    assert out.outcome == Outcome.XPASS and out.expected == "symbol fail since 5.17"


def test_failure_where_something_else_is_expected_stays_a_failure_naming_the_expectation() -> None:
    out = apply_expectations(res(), [Expectation(Outcome.PASS, Check.SYMBOL, kernels=("6.1",))])
    assert out.outcome == Outcome.FAIL and out.expected == "symbol pass on 6.1"


def test_expected_pass_and_expected_skip_keep_their_outcome() -> None:
    passed = apply_expectations(res(outcome=Outcome.PASS), [Expectation(Outcome.PASS)])
    assert passed.outcome == Outcome.PASS and passed.expected == "every check pass"
    skipped = apply_expectations(res(outcome=Outcome.SKIP), [Expectation(Outcome.SKIP, Check.SYMBOL)])
    assert skipped.outcome == Outcome.SKIP


def test_error_is_never_expected() -> None:
    err = CellResult(KPROBE, "6.1", "x86_64", Check.ATTACH, Outcome.ERROR, "guest lost")
    assert apply_expectations(err, [Expectation(Outcome.ERROR), Expectation(Outcome.FAIL)]) == err


def test_no_matching_expectation_leaves_the_result_alone() -> None:
    raw = res()
    assert apply_expectations(raw, []) is raw
    assert apply_expectations(raw, [Expectation(Outcome.FAIL, kernels=("5.10",))]) is raw
    assert apply_expectations(raw, [Expectation(Outcome.FAIL, Check.ATTACH)]) is raw


def test_first_matching_expectation_wins() -> None:
    on_arm = Expectation(
        Outcome.FAIL, Check.ATTACH, arches=("arm64",), before=v("6.4"), reason="trampolines"
    )
    anywhere = Expectation(Outcome.PASS, Check.ATTACH)
    assert apply_expectations(res("6.1", "arm64", Check.ATTACH), [on_arm, anywhere]).outcome == Outcome.XFAIL
    # The same failure on x86_64 only matches the second, which expects a pass: it stays a failure.
    x86 = apply_expectations(res("6.1", "x86_64", Check.ATTACH), [on_arm, anywhere])
    assert x86.outcome == Outcome.FAIL and x86.expected == "attach pass"


def failure_of(cell: Cell) -> str:
    with pytest.raises(pytest.fail.Exception) as info:
        cell.verify()
    return str(info.value)


def test_verify_names_the_cell_the_actual_and_the_expected_value() -> None:
    cell = Cell([apply_expectations(res(), [Expectation(Outcome.PASS, Check.SYMBOL, kernels=("6.1",))])])
    msg = failure_of(cell)
    assert msg.startswith(f"{CELL} 6.1/x86_64 symbol: fail, but expected ")
    assert "'symbol pass on 6.1'" in msg and INLINED in msg


def test_verify_of_xpass_names_the_cell_and_the_expectation() -> None:
    passed = res("6.12", outcome=Outcome.PASS)
    cell = Cell([apply_expectations(passed, [Expectation(Outcome.FAIL, Check.SYMBOL)])])
    msg = failure_of(cell)
    assert msg.startswith(f"{CELL} 6.12/x86_64 symbol: expected 'symbol fail'")
    assert "but it passed" in msg


def test_verify_of_xfail_xfails() -> None:
    cell = Cell([apply_expectations(res(), [Expectation(Outcome.FAIL, Check.SYMBOL, reason="inlined")])])
    with pytest.raises(pytest.xfail.Exception) as info:
        cell.verify()
    assert str(info.value) == f"{INLINED} (expected: symbol fail: inlined)"


def test_verify_of_an_unexpected_failure_names_the_cell_and_the_reason() -> None:
    assert failure_of(Cell([res()])) == f"{CELL} 6.1/x86_64 symbol: {INLINED}"


# ---------------------------------------------------------------- the guest's version, not the id


def test_before_and_since_compare_with_the_version_the_guest_reported() -> None:
    # kernels.yaml's "7.2" is whatever sid ships: here a 6.17 kernel, before 7.0 and not since 7.0.
    since = [Expectation(Outcome.FAIL, Check.SYMBOL, since=v("7.0"), reason="gone in 7.0")]
    before = [Expectation(Outcome.FAIL, Check.SYMBOL, before=v("7.0"), reason="back in 7.0")]
    sid = res("7.2")
    assert apply_expectations(sid, since, "6.17.8+deb14-amd64").outcome == Outcome.FAIL
    assert apply_expectations(sid, before, "6.17.8+deb14-amd64").outcome == Outcome.XFAIL
    assert apply_expectations(sid, since, "7.2.1-1-amd64").outcome == Outcome.XFAIL


def test_the_kernel_id_stands_in_when_no_version_is_known() -> None:
    since = [Expectation(Outcome.FAIL, Check.SYMBOL, since=v("7.0"))]
    assert apply_expectations(res("7.2"), since).outcome == Outcome.XFAIL
    assert apply_expectations(res("7.2"), since, "").outcome == Outcome.XFAIL
    assert apply_expectations(res("7.2"), since, "unknown").outcome == Outcome.XFAIL
    assert apply_expectations(res("6.1"), since, "").outcome == Outcome.FAIL


def test_a_release_candidate_is_before_its_release() -> None:
    exp = Expectation(Outcome.FAIL, Check.SYMBOL, before=v("6.12"))
    assert matches(exp, res("6.12"), v("6.12.0-rc3-amd64"))
    assert not matches(exp, res("6.12"), v("6.12.0-1-amd64"))
