"""How well the offline features check predicts in-guest load failures on a corpus of real objects.

    PYTHONPATH=$PWD python bench/bench_features.py /work/realcorpus [--matrix-json RUN.json ...]

Runs the features check on every program of CORPUS/<arch>/*.bpf.o against each kernel's cached facts
and prints, per (kernel, arch), how many cells it predicts FAIL. Given the results of a real run of the
same objects (``pytest matrix/ --bpf-progs CORPUS/<arch> --no-expectations --matrix-json RUN.json``), it
also prints how many of those the in-guest load also failed for a feature reason (the verifier's
"unknown func" / "invalid func", a program or map type the kernel lacks, a kfunc missing from its BTF),
and precision and recall of the prediction against those load failures.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.bench_offline import CACHE, find_cached_facts
from harness.btf.bpf_object import load_object_core_relos
from harness.checks.features import check_features, contradiction, guarded_helpers
from harness.errors import HarnessError
from harness.kernels.facts import KernelFacts, load_facts
from harness.kernels.version import version_key
from harness.programs.inventory import load_object
from harness.programs.uses import load_object_uses
from harness.report.results import CellResult, Check, Outcome, parse_matrix_json

# What the verifier or libbpf says when a load fails for want of a kernel feature.
FEATURE_FAILURE = re.compile(
    r"unknown func |invalid func |program of this type cannot use helper|"
    r"unknown program type|prog_type \d+ not supported|invalid map type|map type \S+ not supported|"
    r"failed to find (?:kernel )?BTF for extern|kfunc .* is not (?:found|allowed)|"
    r"kfunc '\S+' is referenced but wasn't resolved|"
    r"calling kernel function .* is not allowed"
)

Cell = tuple[str, str, str, str]  # object, program, kernel, arch


@dataclass(frozen=True)
class Tally:
    predicted: int = 0  # features FAIL
    agreed: int = 0  # features FAIL and the load failed for a feature reason
    actual: int = 0  # loads failed for a feature reason
    loaded_anyway: int = 0  # features FAIL but the load passed (the other FAILs failed to load otherwise)
    cells: int = 0  # features cells computed
    skipped: int = 0  # features SKIP (could not tell)


def predict(corpus: Path, columns: Mapping[tuple[str, str], KernelFacts]) -> dict[Cell, CellResult]:
    """The features cell of every program of the corpus on every (kernel, arch) with facts."""
    out: dict[Cell, CellResult] = {}
    for arch_dir in sorted(p for p in corpus.iterdir() if p.is_dir()):
        arch = arch_dir.name
        kernels = [(k, f) for (k, a), f in columns.items() if a == arch]
        for path in sorted(arch_dir.glob("*.bpf.o")):
            try:
                obj = load_object(path)
                uses = load_object_uses(path)
                relos = load_object_core_relos(path)
            except HarnessError as exc:
                print(f"{path}: skipped: {exc}", file=sys.stderr)
                continue
            for probe in obj.probes:
                guarded = guarded_helpers(relos.get(probe.program, []))
                for kernel, facts in kernels:
                    res = check_features(probe, kernel, arch, uses.get(probe.program), facts, guarded)
                    if res is not None:
                        out[(probe.object, probe.program, kernel, arch)] = res
    return out


def feature_load_failures(paths: Iterable[Path]) -> tuple[dict[Cell, str], dict[Cell, CellResult]]:
    """Load cells of real runs that failed for a feature reason (with the line saying so), and every
    load cell that ran (passed or failed)."""
    failed: dict[Cell, str] = {}
    ran: dict[Cell, CellResult] = {}
    for path in paths:
        matrix = parse_matrix_json(path.read_text(), str(path))
        for r in matrix.records:
            if r.check is not Check.LOAD or r.outcome not in (Outcome.PASS, Outcome.FAIL):
                continue
            cell = (r.probe.object, r.probe.program, r.kernel, r.arch)
            ran[cell] = r
            if r.outcome is not Outcome.FAIL:
                continue
            lines = [r.reason, *(str(x) for x in r.details.get("verifier_tail", []) or [])]
            why = next((ln for ln in lines if FEATURE_FAILURE.search(ln)), None)
            if why is not None:
                failed[cell] = why
    return failed, ran


def tally(
    predicted: Mapping[Cell, CellResult], failed: Mapping[Cell, str], ran: Mapping[Cell, CellResult] | None
) -> dict[tuple[str, str], Tally]:
    counts: dict[tuple[str, str], Counter[str]] = {}
    for cell, res in predicted.items():
        if ran is not None and cell not in ran:
            continue  # no in-guest truth to compare with
        c = counts.setdefault((cell[2], cell[3]), Counter())
        c["cells"] += 1
        c["skipped"] += res.outcome is Outcome.SKIP
        if res.outcome is Outcome.FAIL:
            c["predicted"] += 1
            c["agreed"] += cell in failed
            c["loaded_anyway"] += ran is not None and ran[cell].outcome is Outcome.PASS
    for cell in failed:
        if cell in predicted:
            counts.setdefault((cell[2], cell[3]), Counter())["actual"] += 1
    return {k: Tally(**{f: c[f] for f in Tally.__dataclass_fields__}) for k, c in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="directory of <arch>/*.bpf.o")
    parser.add_argument("--matrix-json", type=Path, action="append", default=[],
                        help="results of a real run of the corpus with --no-expectations (repeatable)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"kernel cache (default {CACHE})")
    parser.add_argument("--kernels", default="", help="comma-separated kernel ids (default: all cached)")
    parser.add_argument("--show", type=int, default=5, help="FAIL reasons shown per kernel (default 5)")
    args = parser.parse_args(argv)
    wanted = {k for k in args.kernels.split(",") if k}
    columns = {
        col: load_facts(d) for col, d in sorted(find_cached_facts(args.cache).items())
        if not wanted or col[0] in wanted
    }
    columns = {col: f for col, f in columns.items() if not f.features.error}
    if not columns:
        print(f"no cached facts with a feature probe under {args.cache}", file=sys.stderr)
        return 1
    predicted = predict(args.corpus, columns)
    failed, ran = feature_load_failures(args.matrix_json) if args.matrix_json else ({}, None)
    programs = len({(*c[:2], c[3]) for c in predicted})
    guest = f"; in-guest load cells {len(ran)}" if ran is not None else ""
    print(f"corpus {args.corpus}: {programs} (program, arch) pairs; features cells {len(predicted)}{guest}")
    header = f"{'kernel':<14}{'cells':>7}{'skip':>6}{'FAIL':>6}"
    if ran is not None:
        header += f"{'load also':>11}{'load ok':>9}{'load feat.':>12}{'precision':>11}{'recall':>8}"
        print("FAIL: features cells predicted FAIL; load also: of those, loads that failed for a feature "
              "reason;\nload ok: of those, loads that passed; load feat.: loads failed for a feature reason")
    print(header)
    totals = Counter[str]()
    results = tally(predicted, failed, ran)
    for (kernel, arch) in sorted(results, key=lambda k: (k[1], version_key(k[0]))):
        t = results[(kernel, arch)]
        for f in Tally.__dataclass_fields__:
            totals[f] += getattr(t, f)
        line = f"{kernel + ' ' + arch:<14}{t.cells:>7}{t.skipped:>6}{t.predicted:>6}"
        if ran is not None:
            line += f"{t.agreed:>11}{t.loaded_anyway:>9}{t.actual:>12}{_ratio(t.agreed, t.predicted):>11}"
            line += f"{_ratio(t.agreed, t.actual):>8}"
        print(line)
    if ran is not None:
        print(f"{'all':<14}{totals['cells']:>7}{totals['skipped']:>6}{totals['predicted']:>6}"
              f"{totals['agreed']:>11}{totals['loaded_anyway']:>9}{totals['actual']:>12}"
              f"{_ratio(totals['agreed'], totals['predicted']):>11}"
              f"{_ratio(totals['agreed'], totals['actual']):>8}")
    reasons = Counter(
        (c[2], c[3], r.reason) for c, r in predicted.items()
        if r.outcome is Outcome.FAIL and (ran is None or c in ran)
    )
    for (kernel, arch) in sorted({k[:2] for k in reasons}, key=lambda k: (k[1], version_key(k[0]))):
        top = [(n, why) for (k, a, why), n in reasons.most_common() if (k, a) == (kernel, arch)]
        print(f"\n{kernel} {arch}: most frequent FAIL reasons")
        for n, why in top[: args.show]:
            print(f"  {n:4d}  {why}")
    missed = sorted(c for c in failed if c in predicted and predicted[c].outcome is not Outcome.FAIL)
    if missed:
        print("\nload failed for a feature reason, features did not predict it:")
        for cell in missed[: args.show * 4]:
            print(f"  {cell[2]} {cell[3]} {cell[0]}:{cell[1]}: {failed[cell][:120]}"
                  f" (features {predicted[cell].outcome.value}: {predicted[cell].reason[:80]})")
    disagree = sorted(
        (cell, why) for cell, load in (ran or {}).items()
        if cell in predicted and (why := contradiction(predicted[cell], load))
    )
    if disagree:
        print(f"\n{len(disagree)} contradictions between the features cell and the in-guest load:")
        for cell, why in disagree[: args.show * 4]:
            print(f"  {cell[2]} {cell[3]} {cell[0]}:{cell[1]}: {why[:160]}")
    return 0


def _ratio(num: int, den: int) -> str:
    return f"{100.0 * num / den:.1f}%" if den else "-"


if __name__ == "__main__":
    sys.exit(main())
