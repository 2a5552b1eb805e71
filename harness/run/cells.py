"""One matrix cell from what the run computed: the in-guest outcome, the offline results, or why neither."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from harness.checks.uprobe import GUEST_USER_DIR, parse_uprobe_target
from harness.errors import BuildError, HarnessError
from harness.kernels.config import Arch, KernelSpec
from harness.programs.hooks import USER_KINDS
from harness.report.results import CellResult, Check, Outcome, Probe
from harness.run.boot import GuestOutcome
from harness.run.programs import BUILD_PROGRAM, ArchObjects


def unchecked(spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
    """The SKIP of a program whose type the harness does not check."""
    kind = f"section {probe.section!r} is a program type the harness does not check"
    msg = f"program {probe.program}: {kind}"
    return CellResult(probe, spec.id, spec.arch.name, check, Outcome.SKIP, msg)


def not_built(spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
    """The SKIP of an object the programs directory has for other arches only."""
    arch = spec.arch.name
    msg = (
        f"not built for {arch}: the programs directory has {probe.object} for other arches only "
        f"(add {arch}/{probe.object}.bpf.o, or a {arch} binary that embeds it)"
    )
    return CellResult(probe, spec.id, arch, check, Outcome.SKIP, msg)
def left_out(spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
    """The SKIP of a program its loader leaves out (its sidecar's ``loader: autoload:`` is false)."""
    from harness.checks.guest import LEFT_OUT

    return CellResult(probe, spec.id, spec.arch.name, check, Outcome.SKIP, LEFT_OUT)


def error_cell(spec: KernelSpec, probe: Probe, check: Check, why: str) -> CellResult:
    return CellResult(probe, spec.id, spec.arch.name, check, Outcome.ERROR, why)


def guest_cell(spec: KernelSpec, probe: Probe, check: Check, outcome: GuestOutcome) -> CellResult:
    """The in-guest ``check`` of ``probe`` from the outcome of its kernel's boot."""
    if outcome.error:
        return CellResult(
            probe, spec.id, spec.arch.name, check, Outcome.ERROR, outcome.error,
            {"console_tail": outcome.console_tail} if outcome.console_tail else {},
        )
    return found_or_skip(spec, probe, check, outcome.results)


def found_or_skip(
    spec: KernelSpec, probe: Probe, check: Check, results: Mapping[tuple[Probe, Check], CellResult]
) -> CellResult:
    found = results.get((probe, check))
    if found is None:
        return CellResult(probe, spec.id, spec.arch.name, check, Outcome.SKIP, "not applicable")
    return found


def input_error(
    spec: KernelSpec,
    probe: Probe,
    built: ArchObjects,
    user_samples: Callable[[Arch], object],
    guest_root: Callable[[KernelSpec], object],
) -> str:
    """Why the harness could not produce what ``probe`` needs on ``spec`` (empty when it could).

    Nothing is known of such a probe's compatibility there: every check of it is an ERROR, never
    a FAIL (a uprobe on a sample that did not build cannot attach, through no fault of its own).
    """
    arch = spec.arch
    if probe.program == BUILD_PROGRAM:
        return built.errors.get(probe.object, "build failed")
    if probe.object in built.errors:
        return built.errors[probe.object]
    if probe.kind not in USER_KINDS:
        return ""
    target = parse_uprobe_target(probe.target)
    if target is not None and target.path.startswith(GUEST_USER_DIR + "/"):
        try:
            user_samples(arch)
        except BuildError as exc:
            return f"the user-space samples did not build for {arch.name}: {exc}"
    try:
        guest_root(spec)
    except HarnessError as exc:
        return f"no {arch.name} root filesystem: {exc}"
    return ""
