"""The offline step of a run: every check that needs no VM, from cached facts and the built objects."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.btf.spec import BTFSpec
from harness.checks import drift, symbols
from harness.checks.features import check_features, guarded_helpers
from harness.checks.uprobe import check_uprobe
from harness.errors import HarnessError
from harness.kernels.config import Arch, KernelsConfig, KernelSpec
from harness.kernels.facts import KernelFacts
from harness.programs.flow import ProgramCode, ctx_reads
from harness.programs.hooks import USER_KINDS
from harness.report.results import CellResult, Check, Outcome, Probe
from harness.run.programs import ArchObjects

OFFLINE_CHECKS = (Check.SYMBOL, Check.PROTOTYPE, Check.LAYOUT, Check.TP_FORMAT, Check.UPROBE, Check.FEATURES)

Cells = dict[tuple[Probe, Check], CellResult]


@dataclass(frozen=True)
class KnownFacts:
    """The facts of every (kernel, arch) key the offline checks use, and why the others have none."""

    facts: Mapping[str, KernelFacts]
    errors: Mapping[str, str]


@dataclass(frozen=True)
class Baseline:
    """The kernel the drift checks compare against, on one arch."""

    kernel: str  # kernels.yaml's baseline id
    spec: KernelSpec | None  # None when kernels.yaml has no such kernel for the arch
    facts: KernelFacts | None
    error: str = ""  # why its facts could not be had


@dataclass(frozen=True)
class UserSpace:
    """What the uprobe check needs of the guests: their root filesystems and the probes' inputs."""

    progs_dir: Path
    cache_root: Path
    guest_root: Callable[[KernelSpec], Path]
    input_error: Callable[[KernelSpec, Probe], str]


def compute_offline(
    specs: Sequence[KernelSpec],
    arches: Sequence[Arch],
    objects: Callable[[Arch], ArchObjects],
    known: KnownFacts,
    baselines: Mapping[str, Baseline],
    user: UserSpace,
) -> dict[str, Cells]:
    """The offline results of every (kernel, arch) key of ``specs``, by key then (probe, check)."""
    out: dict[str, Cells] = {}
    for arch in arches:
        built = objects(arch)
        arch_specs = [s for s in specs if s.arch.name == arch.name]
        columns = {(s.id, s.arch.name): known.facts[s.key] for s in arch_specs if s.key in known.facts}
        probes = [p for o in built.objects for p in o.probes]
        alternatives = {p: symbols.stable_alternatives(p, columns) for p in probes}
        baseline = baselines[arch.name]
        for spec in arch_specs:
            kfacts = known.facts.get(spec.key)
            if kfacts is None:
                out[spec.key] = no_facts_cells(spec, probes, known.errors.get(spec.key, "no facts"))
                continue
            cells: Cells = {}
            for probe in probes:
                cells.update(
                    check_probe(probe, spec, kfacts, built, baseline, alternatives[probe], user)
                )
            out[spec.key] = cells
    return out


def no_facts_cells(spec: KernelSpec, probes: Sequence[Probe], why: str) -> Cells:
    return {
        (probe, check): CellResult(probe, spec.id, spec.arch.name, check, Outcome.ERROR, why)
        for probe in probes
        for check in OFFLINE_CHECKS
    }


def check_probe(
    probe: Probe,
    spec: KernelSpec,
    kfacts: KernelFacts,
    built: ArchObjects,
    baseline: Baseline,
    alternatives: Sequence[str],
    user: UserSpace,
) -> Cells:
    """The offline results of one probe on one kernel."""
    cells: Cells = {}
    sym = symbols.check_symbol(probe, spec.id, spec.arch, kfacts)
    (sym,) = symbols.with_alternatives([sym], probe, alternatives)
    cells[(probe, Check.SYMBOL)] = sym
    code = built.code_of(probe)
    for res in drift_cells(probe, spec, kfacts, baseline, code):
        cells[(probe, res.check)] = res
    layout = layout_cell(probe, spec, kfacts, built, baseline.kernel, kernel_btf(baseline.facts))
    if layout is not None:
        cells[(probe, Check.LAYOUT)] = layout
    if (feat := features_cell(probe, spec, kfacts, built)) is not None:
        cells[(probe, Check.FEATURES)] = feat
    if probe.kind in USER_KINDS and not user.input_error(spec, probe):
        root = user.guest_root(spec)
        up = check_uprobe(probe, spec.id, spec.arch, root, user.progs_dir, user.cache_root)
        if up is not None:
            cells[(probe, Check.UPROBE)] = up
    return cells


def layout_cell(
    probe: Probe,
    spec: KernelSpec,
    kfacts: KernelFacts,
    built: ArchObjects,
    baseline_kernel: str,
    baseline_btf: BTFSpec | None,
) -> CellResult | None:
    """The LAYOUT cell of ``probe`` on ``spec`` (None without relocations). Whether an unresolved read is
    guarded needs this kernel alone; the baseline's BTF (None: not compared) adds the offsets that moved."""
    if why := built.relocation_error(probe, Check.LAYOUT):
        return CellResult(probe, spec.id, spec.arch.name, Check.LAYOUT, Outcome.ERROR, why)
    return drift.check_layout(
        probe, spec.id, spec.arch.name,
        list(built.relocations.get(probe.object, {}).get(probe.program, [])),
        kernel_btf(kfacts), baseline_kernel, baseline_btf, built.code_of(probe),
    )


def features_cell(
    probe: Probe, spec: KernelSpec, kfacts: KernelFacts, built: ArchObjects
) -> CellResult | None:
    """The features result of one probe on one kernel (None for a kind with no program type)."""
    uses = built.program_uses(probe)
    if uses is None:
        why = built.uses_errors.get(probe.object, "helpers and maps unreadable")
        return CellResult(probe, spec.id, spec.arch.name, Check.FEATURES, Outcome.ERROR, why)
    relocations = built.relocations.get(probe.object, {}).get(probe.program, [])
    try:
        return check_features(probe, spec.id, spec.arch.name, uses, kfacts, guarded_helpers(relocations))
    except HarnessError as exc:
        return CellResult(probe, spec.id, spec.arch.name, Check.FEATURES, Outcome.ERROR, str(exc))


def kernel_btf(facts: KernelFacts | None) -> BTFSpec | None:
    """The vmlinux BTF of a kernel for the drift checks; None when it has none."""
    btf = facts.btf if facts is not None and facts.has_btf else None
    if btf is None or isinstance(btf, BTFSpec):
        return btf
    raise TypeError(f"vmlinux BTF parsed as {type(btf).__name__}, not as a BTFSpec")


def drift_cells(
    probe: Probe, spec: KernelSpec, kfacts: KernelFacts, baseline: Baseline, code: ProgramCode | None = None
) -> list[CellResult]:
    """The prototype and tracepoint-format results of one probe against the baseline kernel (the
    prototype judged by the arguments ``code`` reads, when it is known)."""
    base = baseline.facts
    reads = ctx_reads(code) if code is not None else None
    if baseline.spec is None or base is None:
        note = (
            f"baseline {baseline.kernel} is not in kernels.yaml for {spec.arch.name}"
            if baseline.spec is None
            else f"no facts of baseline {baseline.kernel}: {baseline.error}"
        )
        # No baseline in the file is a choice (SKIP); a baseline whose facts could not be had is
        # the harness's failure (ERROR).
        unknown = Outcome.SKIP if baseline.spec is None else Outcome.ERROR
        # What the pt_regs loads mean on this arch needs no baseline.
        regs = drift.check_pt_regs(probe, spec.id, spec.arch.name, reads)
        return [
            regs if regs is not None and check == Check.PROTOTYPE
            else CellResult(probe, spec.id, spec.arch.name, check, unknown, note)
            for check in (Check.PROTOTYPE, Check.TP_FORMAT)
        ]
    btf, base_btf = kernel_btf(kfacts), kernel_btf(base)
    found: list[CellResult | None] = [
        drift.check_prototype(probe, spec.id, spec.arch.name, btf, baseline.kernel, base_btf, reads)
    ]
    if probe.kind == "tracepoint":
        fmt = kfacts.tracepoint_format(probe.target)
        base_fmt = base.tracepoint_format(probe.target)
        found.append(drift.check_tp_format(probe, spec.id, spec.arch.name, fmt, baseline.kernel, base_fmt))
    return [res for res in found if res is not None]


def gather_facts(
    config: KernelsConfig,
    arches: Sequence[Arch],
    facts_of: Callable[[KernelSpec], KernelFacts],
    objects: Callable[[Arch], ArchObjects],
) -> tuple[KnownFacts, dict[str, Baseline]]:
    """The facts of every kernel of the run and of each arch's baseline (``facts_of`` may boot)."""
    facts: dict[str, KernelFacts] = {}
    errors: dict[str, str] = {}

    def gather(spec: KernelSpec) -> None:
        try:
            facts[spec.key] = facts_of(spec)
        except HarnessError as exc:
            errors[spec.key] = str(exc)

    for spec in config.kernels:
        gather(spec)
    baselines: dict[str, Baseline] = {}
    for arch in arches:
        objects(arch)  # built before a boot for the baseline, as each arch's checks are computed
        base = config.baseline_spec(arch.name)
        if base is None:
            baselines[arch.name] = Baseline(config.baseline_id, None, None)
            continue
        if base.key not in facts and base.key not in errors:
            # A shard without its baseline: the baseline's facts come from the cache, or from a
            # boot for them alone, so that the shard diffs as a whole run would.
            gather(base)
        baselines[arch.name] = Baseline(
            config.baseline_id, base, facts.get(base.key), errors.get(base.key, "")
        )
    return KnownFacts(facts, errors), baselines


def facts_cached(
    config: KernelsConfig, arches: Sequence[Arch], facts_dir: Callable[[KernelSpec], Path | None]
) -> bool:
    """Whether the facts of every kernel of the run and of each arch's baseline are in the cache."""
    specs = list(config.kernels)
    specs += [b for a in arches if (b := config.baseline_spec(a.name)) is not None]
    return all(facts_dir(s) is not None for s in specs)
