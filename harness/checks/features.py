"""The features check: a program's type, helpers, kfuncs and map types against its kernel's feature probe."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from harness.btf.core import CoreRelo, CoreReloKind, essential_name
from harness.kernels.facts import KernelFacts
from harness.kernels.features import Support
from harness.programs.hooks import prog_type_of
from harness.programs.uapi import helper_name
from harness.programs.uses import ProgramUses
from harness.report.results import CellResult, Check, Outcome, Probe

_FUNC_ID_ENUM = "bpf_func_id"
_FUNC_ID_PREFIX = "BPF_FUNC_"


@dataclass(frozen=True)
class Finding:
    """One thing a program needs, and what the kernel's probe says of it."""

    what: str  # "helper", "kfunc", "map", "program type"
    name: str  # bpf_get_socket_cookie, ringbuf, tracing, ...
    support: Support
    reason: str  # one line: why it fails, or why it could not be told, or how it passes


def guarded_helpers(relocations: Iterable[CoreRelo]) -> frozenset[str]:
    """Helpers whose existence the program tests: ``bpf_core_enum_value_exists(enum bpf_func_id,
    BPF_FUNC_x)`` relocations (libbpf-tools' idiom for a helper newer than some kernels)."""
    found: set[str] = set()
    for relo in relocations:
        if relo.kind is CoreReloKind.ENUMVAL_EXISTS and relo.essential_name == _FUNC_ID_ENUM:
            value = essential_name(relo.path.rpartition("::")[2])
            if value.startswith(_FUNC_ID_PREFIX):
                found.add("bpf_" + value[len(_FUNC_ID_PREFIX):])
    return frozenset(found)


def find_features(
    probe: Probe,
    kernel: str,
    uses: ProgramUses,
    facts: KernelFacts,
    guarded: frozenset[str] = frozenset(),
) -> list[Finding]:
    """What ``probe``'s program needs of ``kernel`` and whether the kernel has it, in program order:
    its program type, helpers, kfuncs, then maps. Raises FactsError for malformed facts."""
    prog_type = prog_type_of(probe.kind)
    if prog_type is None:
        return []
    features = facts.features
    out: list[Finding] = []
    support = features.prog_type(prog_type)
    out.append(Finding("program type", prog_type, support, {
        Support.SUPPORTED: "",
        Support.UNSUPPORTED: f"{prog_type} programs not supported on {kernel}",
        Support.UNKNOWN: f"{prog_type} programs not probed on {kernel}",
    }[support]))
    defined = facts.helper_names
    for number in uses.helpers:
        name = helper_name(number) or f"helper #{number}"
        support = features.helper(prog_type, name)
        reason = ""
        if support is Support.UNSUPPORTED:
            reason = f"{name} not available to {prog_type} programs on {kernel}"
        elif support is Support.UNKNOWN:
            if defined is not None and name not in defined:
                # Its number is unknown to this kernel: no program type may call it.
                support, reason = Support.UNSUPPORTED, f"{name} not available on {kernel} (newer helper)"
            else:
                reason = f"{name} not probed for {prog_type} programs on {kernel}"
        if support is Support.UNSUPPORTED and name in guarded:
            support = Support.SUPPORTED
            reason = f"{name} missing on {kernel}, behind its bpf_core_enum_value_exists check"
        out.append(Finding("helper", name, support, reason))
    btf_funcs = facts.btf_func_names if facts.has_btf else None
    for kfunc in uses.kfuncs:
        if btf_funcs is None:
            why = f"kfunc {kfunc.name}: {kernel} has no BTF"
            out.append(Finding("kfunc", kfunc.name, Support.UNKNOWN, why))
        elif kfunc.name in btf_funcs:
            out.append(Finding("kfunc", kfunc.name, Support.SUPPORTED, ""))
        elif kfunc.weak and kfunc.checked:
            # libbpf resolves an absent __weak kfunc to 0: bpf_ksym_exists() is false, the call dead.
            out.append(Finding("kfunc", kfunc.name, Support.SUPPORTED,
                               f"weak kfunc {kfunc.name} absent from kernel BTF on {kernel}, "
                               "behind its bpf_ksym_exists check"))
        elif kfunc.weak:
            # Unresolved and reachable: the verifier refuses the call ("kfunc 'x' is referenced but
            # wasn't resolved", as libbpf rewrites its log).
            out.append(Finding("kfunc", kfunc.name, Support.UNSUPPORTED,
                               f"kfunc {kfunc.name} absent from kernel BTF on {kernel} "
                               "(weak, but called without a bpf_ksym_exists check)"))
        else:
            out.append(Finding("kfunc", kfunc.name, Support.UNSUPPORTED,
                               f"kfunc {kfunc.name} absent from kernel BTF on {kernel}"))
    for m in uses.maps:
        if not m.type:
            why = f"map {m.name}: its type is not in the object"
            out.append(Finding("map", m.name, Support.UNKNOWN, why))
            continue
        support = features.map_type(m.type)
        out.append(Finding("map", m.type, support, {
            Support.SUPPORTED: "",
            Support.UNSUPPORTED: f"map type {m.type} not supported on {kernel} (map {m.name})",
            Support.UNKNOWN: f"map type {m.type} not probed on {kernel} (map {m.name})",
        }[support]))
    return out


def check_features(
    probe: Probe,
    kernel: str,
    arch: str,
    uses: ProgramUses | None,
    facts: KernelFacts,
    guarded: frozenset[str] = frozenset(),
) -> CellResult | None:
    """FAIL when the kernel lacks the program's type, a helper for that type, a kfunc or a map type;
    SKIP when the kernel's features could not be probed; None for a kind with no program type.

    ``uses`` None means the object could not be read for them (the caller reports that as ERROR).
    Raises FactsError for malformed facts.
    """
    if prog_type_of(probe.kind) is None or uses is None:
        return None

    def cell(outcome: Outcome, reason: str, **details: object) -> CellResult:
        return CellResult(probe, kernel, arch, Check.FEATURES, outcome, reason, details)

    features = facts.features
    if features.error:
        return cell(Outcome.SKIP, f"features of {kernel} unknown: {features.error}")
    found = find_features(probe, kernel, uses, facts, guarded)
    details: dict[str, object] = {
        "program_type": found[0].name,
        "helpers": [f.name for f in found if f.what == "helper"],
    }
    if uses.kfuncs:
        details["kfuncs"] = [k.name for k in uses.kfuncs]
    if uses.maps:
        details["maps"] = [{"name": m.name, "type": m.type} for m in uses.maps]
    failed = [f for f in found if f.support is Support.UNSUPPORTED]
    unknown = [f.reason for f in found if f.support is Support.UNKNOWN]
    notes = [f.reason for f in found if f.support is Support.SUPPORTED and f.reason]
    if unknown:
        details["unchecked"] = unknown
    if notes:
        details["notes"] = notes
    if failed:
        details["missing"] = [f.reason for f in failed]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return cell(Outcome.FAIL, failed[0].reason + more, **details)
    if found[0].support is Support.UNKNOWN:
        return cell(Outcome.SKIP, found[0].reason, **details)
    return cell(Outcome.PASS, "", **details)


# The verifier's words for a helper call it refuses: "unknown func bpf_x#N" (the program type may not
# call it) or "invalid func unknown#N" (a number past this kernel's last helper).
_REFUSED_HELPER = re.compile(r"(?:unknown|invalid) func ([A-Za-z0-9_]+)#(\d+)")


def refused_helper(text: str) -> str | None:
    """The helper a verifier log or load reason says was refused (``bpf_get_socket_cookie``), else None."""
    found = _REFUSED_HELPER.search(text)
    if found is None:
        return None
    name, number = found.group(1), int(found.group(2))
    return name if name.startswith("bpf_") else helper_name(number) or f"helper #{number}"


def contradiction(features: CellResult, load: CellResult) -> str:
    """Why a features cell and the in-guest load cell of the same probe and kernel disagree ("" when
    they do not): the verifier refused a helper the features check passed, or the verifier accepted a
    program the features check failed (its call is dead code on that kernel, or the probe is wrong)."""
    refused = next((h for h in map(refused_helper, _load_lines(load)) if h), None)
    if load.outcome is Outcome.FAIL and refused and features.outcome is not Outcome.FAIL:
        return f"the verifier refused {refused} on {load.kernel}; features said {features.outcome.value}"
    if load.outcome is Outcome.PASS and features.outcome is Outcome.FAIL:
        return f"the verifier accepted it on {load.kernel}; features said: {features.reason}"
    return ""


def with_load_result(features: CellResult, load: CellResult) -> CellResult:
    """The features cell corrected by the in-guest load of the same probe on the same kernel, whose
    truth wins: a helper the verifier refused fails the cell (the probe had not predicted it), and a
    program the verifier accepted passes it (the failing call is dead code there), with the
    prediction kept as a note. Unchanged when they agree or nothing is known of the load."""
    why = contradiction(features, load)
    if not why:
        return features
    details = dict(features.details)
    if load.outcome is Outcome.FAIL:
        details["predicted"] = features.outcome.value
        refused = next(h for h in (refused_helper(x) for x in _load_lines(load)) if h)
        reason = f"{refused} refused by the verifier on {load.kernel} (the feature probe did not predict it)"
        return replace(features, outcome=Outcome.FAIL, reason=reason, details=details)
    details["notes"] = [*details.get("notes", []), f"predicted: {features.reason}; the verifier accepted it"]
    return replace(features, outcome=Outcome.PASS, reason="", details=details)


def _load_lines(load: CellResult) -> list[str]:
    return [load.reason, *(str(x) for x in load.details.get("verifier_tail", None) or ())]
