"""BTF drift checks: target prototypes, CO-RE field layouts and tracepoint formats vs a baseline."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.btf.core import CoreRelo, CoreReloKind, essential_name
from harness.btf.spec import BTFSpec
from harness.btf.types import Array, BTFType, Composite, Enum, FuncProto, Int, Kind, Member, Pointer, Typedef
from harness.programs.args import RETURN_SLOT_KINDS, ArgsRead, diagnose_pt_regs, resolve_args_read
from harness.programs.clones import strip_clone_suffix
from harness.programs.flow import CtxRead, ProgramCode, Site, deciding_guards, sites_of
from harness.programs.hooks import Target, resolve_hook
from harness.report.results import CellResult, Check, Outcome, Probe

# --- Prototypes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What a value in a context slot is to the program that loads it: its kind, size and signedness."""

    kind: str  # "pointer", "scalar", "aggregate", "void"
    size: int
    signed: bool = False


def shape_of(spec: BTFSpec, type_id: int) -> Shape:
    """The Shape of a BTF type (typedefs and modifiers skipped)."""
    if type_id == 0:
        return Shape("void", 0)
    t = spec.type(spec.skip_mods_and_typedefs(type_id))
    if isinstance(t, Pointer):
        return Shape("pointer", 8)
    if isinstance(t, Int | Enum):
        return Shape("scalar", spec.sizeof(t.id), t.signed)
    return Shape("aggregate", spec.sizeof(t.id))


@dataclass(frozen=True)
class Prototype:
    """A hook target's parameters as (name, C type) pairs, and its return type."""

    btf_name: str  # the FUNC or typedef it came from
    return_type: str
    params: tuple[tuple[str, str], ...]
    # Derived from the types, so not part of a prototype's identity: one per parameter, and the return's.
    shapes: tuple[Shape, ...] = field(default=(), compare=False)
    return_shape: Shape | None = field(default=None, compare=False)

    def serialize_params(self) -> list[dict[str, str]]:
        return [{"name": n, "type": t} for n, t in self.params]


def _proto_of(spec: BTFSpec, btf_name: str, proto: FuncProto, drop_first: bool) -> Prototype:
    params = []
    shapes = []
    for p in proto.params:
        text = "..." if p.type_id == 0 and not p.name else spec.type_text(p.type_id)
        params.append((p.name, text))
        shapes.append(shape_of(spec, p.type_id))
    if drop_first:
        params, shapes = params[1:], shapes[1:]
    return Prototype(btf_name, spec.type_text(proto.return_type_id), tuple(params), tuple(shapes),
                     shape_of(spec, proto.return_type_id))


def resolve_btf_name(kind: str, target: str) -> str | None:
    """The BTF name that describes a hook's arguments, or None for hooks without one."""
    hook = resolve_hook(kind)
    if hook is None or not hook.btf_prototype:
        return None
    if hook.target is Target.KERNEL_FUNCTION:
        return strip_clone_suffix(target)  # a kernel function with a BTF FUNC of the same name
    if hook.target is Target.LSM:
        return f"bpf_lsm_{target}"
    return f"btf_trace_{target}"  # a tracepoint's raw arguments (typedef btf_trace_<name>, since 5.5)


def resolve_prototype(spec: BTFSpec, kind: str, target: str) -> Prototype | None:
    """The prototype of a hook's target in ``spec``, or None when the kernel's BTF lacks it.

    Raw tracepoints are the typedef ``btf_trace_<name>``: a pointer to a FUNC_PROTO whose first
    parameter is the ``void *`` context, which a program does not see and is dropped.
    """
    btf_name = resolve_btf_name(kind, target)
    if btf_name is None:
        return None
    hook = resolve_hook(kind)
    if hook is not None and hook.target is Target.RAW_TRACEPOINT:
        for td in spec.by_name(btf_name, Kind.TYPEDEF):
            assert isinstance(td, Typedef)
            ptr = spec.type(td.type_id)
            if isinstance(ptr, Pointer):
                proto = spec.type(ptr.type_id)
                if isinstance(proto, FuncProto):
                    return _proto_of(spec, btf_name, proto, drop_first=True)
        return None
    found = spec.find_func_proto(btf_name)
    return _proto_of(spec, btf_name, found, drop_first=False) if found is not None else None


_CHANGE_LABELS = {
    "added": "param added",
    "removed": "param removed",
    "renamed": "param renamed",
    "replaced": "param replaced",
    "type_changed": "type changed",
    "reordered": "params reordered",
}


def diff_prototypes(base: Prototype, cur: Prototype) -> list[dict[str, Any]]:
    """The changes from ``base`` to ``cur``: params added, removed, renamed, reordered, retyped.

    Named parameters are matched by name (a removed and an added parameter at the same position are a
    rename, or a replacement when the type changed too); unnamed ones (raw tracepoints) by position.
    """
    changes: list[dict[str, Any]] = []
    if base.return_type != cur.return_type:
        changes.append(
            {"change": "return_type_changed", "from": base.return_type, "to": cur.return_type}
        )
    bnames = [n for n, _ in base.params]
    cnames = [n for n, _ in cur.params]
    named = (all(bnames) and all(cnames) and len(set(bnames)) == len(bnames)
             and len(set(cnames)) == len(cnames))
    if not named:
        for i in range(max(len(base.params), len(cur.params))):
            if i >= len(base.params):
                changes.append({"change": "added", "index": i, "name": cnames[i],
                                "type": cur.params[i][1]})
            elif i >= len(cur.params):
                changes.append({"change": "removed", "index": i, "name": bnames[i],
                                "type": base.params[i][1]})
            elif base.params[i][1] != cur.params[i][1]:
                changes.append({"change": "type_changed", "index": i, "name": cnames[i],
                                "from": base.params[i][1], "to": cur.params[i][1]})
        return changes
    btypes = dict(base.params)
    ctypes = dict(cur.params)
    added = {i: n for i, n in enumerate(cnames) if n not in btypes}
    removed = {i: n for i, n in enumerate(bnames) if n not in ctypes}
    for i in sorted(set(added) & set(removed)):
        old, new = removed.pop(i), added.pop(i)
        same_type = btypes[old] == ctypes[new]
        changes.append({"change": "renamed" if same_type else "replaced", "index": i,
                        "from": old, "to": new, "from_type": btypes[old], "to_type": ctypes[new]})
    for i, n in sorted(removed.items()):
        changes.append({"change": "removed", "index": i, "name": n, "type": btypes[n]})
    for i, n in sorted(added.items()):
        changes.append({"change": "added", "index": i, "name": n, "type": ctypes[n]})
    common_b = [n for n in bnames if n in ctypes]
    common_c = [n for n in cnames if n in btypes]
    if common_b != common_c:
        for n in common_c:
            if common_b.index(n) != common_c.index(n):
                changes.append({"change": "reordered", "name": n, "from_index": bnames.index(n),
                                "to_index": cnames.index(n)})
    for n in common_c:
        if btypes[n] != ctypes[n]:
            changes.append({"change": "type_changed", "index": cnames.index(n), "name": n,
                            "from": btypes[n], "to": ctypes[n]})
    return changes


def _param_text(param: tuple[str, str] | None) -> str:
    if param is None:
        return "(none)"
    name, text = param
    return f"`{name}` {text}" if name else text


def _describe_first_change(base: Prototype, cur: Prototype, changes: list[dict[str, Any]]) -> str:
    for i in range(max(len(base.params), len(cur.params))):
        b = base.params[i] if i < len(base.params) else None
        c = cur.params[i] if i < len(cur.params) else None
        if b == c:
            continue
        names = {p[0] for p in (b, c) if p is not None and p[0]}
        labels = []
        for ch in changes:
            involved = {ch.get("name"), ch.get("from"), ch.get("to")} & names
            if ch.get("index") == i or ch.get("to_index") == i or involved:
                label = _CHANGE_LABELS.get(ch["change"])
                if label and label not in labels:
                    labels.append(label)
        why = f" ({', '.join(labels)})" if labels else ""
        return f"param {i} {_param_text(b)} -> {_param_text(c)}{why}"
    return f"return type {base.return_type} -> {cur.return_type}"


def _compatible_change(
    kind: str, base: Prototype, changes: list[dict[str, Any]], baseline_kernel: str
) -> str | None:
    """A note when every change leaves the probe's view of its arguments intact, else None."""
    kinds = {c["change"] for c in changes}
    if kinds == {"renamed"}:
        renames = ", ".join(f"{c['from']} -> {c['to']}" for c in changes)
        return f"params renamed since {baseline_kernel} (same types and positions): {renames}"
    hook = resolve_hook(kind)
    # fexit, fmod_ret and lsm programs see the return value after the last parameter: an appended
    # parameter moves it.
    if kinds == {"added"} and hook is not None and hook.append_safe:
        if all(c["index"] >= len(base.params) for c in changes):
            added = ", ".join(_param_text((c["name"], c["type"])) for c in changes)
            return f"params appended since {baseline_kernel}: {added}"
    return None


def _read_breaks(kind: str, base: Prototype, cur: Prototype, read: ArgsRead) -> list[str]:
    """Why the parameters and return value ``read`` (positions in the baseline's context) no longer
    mean what they did: moved, removed, or another size, signedness or kind (pointer or scalar)."""
    found: list[str] = []
    cnames = [n for n, _ in cur.params]
    for i in sorted(read.params):
        if i >= len(base.params):
            continue
        bname = base.params[i][0]
        what = f"read param {i} {_param_text(base.params[i])}"
        if i >= len(cur.params):
            found.append(f"{what} removed")
            continue
        cname, ctext = cur.params[i]
        if bname and cname != bname and bname in cnames:
            found.append(f"{what} moved to position {cnames.index(bname)}")
        elif base.shapes and cur.shapes and base.shapes[i] != cur.shapes[i]:
            found.append(f"{what} -> {ctext} ({_shape_change(base.shapes[i], cur.shapes[i])})")
    if read.returns:
        if kind in RETURN_SLOT_KINDS and len(base.params) != len(cur.params):
            found.append(f"read return value moved from slot {len(base.params)} to {len(cur.params)}")
        elif base.return_shape != cur.return_shape:
            found.append(f"read return value {base.return_type} -> {cur.return_type}")
    return found


def _shape_change(old: Shape, new: Shape) -> str:
    if old.kind != new.kind:
        return f"{old.kind} -> {new.kind}"
    if old.size != new.size:
        return f"size {old.size} -> {new.size}"
    return "signedness changed"


def check_pt_regs(
    probe: Probe, kernel: str, arch: str, reads: Sequence[CtxRead] | None
) -> CellResult | None:
    """The prototype FAIL of a kprobe whose pt_regs loads are wrong on ``arch`` whatever the kernel's BTF
    or the baseline (args.diagnose_pt_regs); None when they are not, or are unknown."""
    why = diagnose_pt_regs(probe.kind, probe.target, arch, reads) if reads is not None else None
    if why is None:
        return None
    return CellResult(probe, kernel, arch, Check.PROTOTYPE, Outcome.FAIL, why, {})


def check_prototype(
    probe: Probe,
    kernel: str,
    arch: str,
    spec: BTFSpec | None,
    baseline_kernel: str,
    baseline_spec: BTFSpec | None,
    reads: Sequence[CtxRead] | None = None,
) -> CellResult | None:
    """Compare the probe target's prototype on ``kernel`` with the baseline kernel's.

    With the program's context loads (``reads``, flow.ctx_reads), FAIL only when a parameter it reads
    moved, went away or changed size, signedness or kind (pointer or scalar), or when the return value it
    reads changed or moved; other changes are a passing cell's note. Without them, FAIL when any
    parameter the probe sees changed. PASS with a note when parameters were only renamed, or appended
    where nothing follows them in the context. A kprobe whose pt_regs loads are another arch's
    registers, or a syscall wrapper's PARM2+, fails whatever the BTF (args.diagnose_pt_regs). None for
    hooks without a BTF prototype (ksyscall,
    tracepoint, uprobe, ...). SKIP when the kernel has no BTF or its BTF lacks the target (the symbol
    check reports that).
    """
    btf_name = resolve_btf_name(probe.kind, probe.target)
    if btf_name is None:
        return None

    def result(outcome: Outcome, reason: str, details: dict[str, Any] | None = None) -> CellResult:
        return CellResult(probe, kernel, arch, Check.PROTOTYPE, outcome, reason, details or {})

    if (regs := check_pt_regs(probe, kernel, arch, reads)) is not None:
        return regs
    if spec is None:
        return result(Outcome.SKIP, "no BTF")
    cur = resolve_prototype(spec, probe.kind, probe.target)
    if cur is None:
        return result(Outcome.SKIP, f"`{btf_name}` not in the BTF of {kernel}")
    base = resolve_prototype(baseline_spec, probe.kind, probe.target) if baseline_spec else None
    details: dict[str, Any] = {
        "function": btf_name,
        "return": cur.return_type,
        "params": cur.serialize_params(),
        "baseline_kernel": baseline_kernel,
        "baseline_return": base.return_type if base else None,
        "baseline_params": base.serialize_params() if base else None,
        "changes": [],
    }
    if base is None:
        return result(Outcome.PASS, f"no prototype on baseline {baseline_kernel} to compare", details)
    changes = diff_prototypes(base, cur)
    details["changes"] = changes
    if not changes:
        reason = "" if kernel == baseline_kernel else f"same prototype as {baseline_kernel}"
        return result(Outcome.PASS, reason, details)
    note = _compatible_change(probe.kind, base, changes, baseline_kernel)
    if note is not None:
        return result(Outcome.PASS, note, details)
    read = resolve_args_read(probe.kind, arch, reads, len(base.params)) if reads is not None else None
    if read is not None:
        details["args_read"] = {"params": sorted(read.params), "returns": read.returns}
        breaks = _read_breaks(probe.kind, base, cur, read)
        if not breaks:
            first = _describe_first_change(base, cur, changes)
            return result(Outcome.PASS, f"changed since {baseline_kernel} where the program does not read: "
                          f"{first}", details)
        reason = f"prototype differs from {baseline_kernel}: {breaks[0]}"
        if len(breaks) > 1:
            reason += f" (+{len(breaks) - 1} more)"
        return result(Outcome.FAIL, reason, details)
    reason = f"prototype differs from {baseline_kernel}: {_describe_first_change(base, cur, changes)}"
    if len(changes) > 1:
        reason += f" (+{len(changes) - 1} more)"
    return result(Outcome.FAIL, reason, details)


# --- CO-RE layouts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReloResolution:
    """How one CO-RE relocation resolves against a kernel's BTF (libbpf's rules, simplified)."""

    status: str  # "ok", "field missing", "type missing", "enumval missing", "ambiguous"
    offset: int | None = None  # field byte offset
    size: int | None = None  # field or type size in bytes
    value: int | None = None  # enumerator value
    bitfield_bits: int = 0  # the field's width when it is a bitfield
    candidate: str = ""  # the kernel type it matched, e.g. "struct task_struct"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_ROOT_KINDS: dict[str, frozenset[Kind]] = {
    "struct": frozenset({Kind.STRUCT}),
    "union": frozenset({Kind.UNION}),
    "enum": frozenset({Kind.ENUM, Kind.ENUM64}),
    "typedef": frozenset({Kind.TYPEDEF}),
    "int": frozenset({Kind.INT}),
    "float": frozenset({Kind.FLOAT}),
    "fwd": frozenset({Kind.FWD, Kind.STRUCT, Kind.UNION}),
}


def _candidates(spec: BTFSpec, relo: CoreRelo) -> list[BTFType]:
    if not relo.root_name:
        return []
    kinds = _ROOT_KINDS.get(relo.root_kind)
    found = spec.by_name(relo.essential_name)
    return [t for t in found if kinds is None or t.kind in kinds]


def _find_member(spec: BTFSpec, comp: Composite, name: str, depth: int = 0) -> tuple[int, Member] | None:
    """(bit offset, member) of a member by name, searching anonymous struct/union members too."""
    for m in comp.members:
        if m.name and essential_name(m.name) == name:
            return m.bit_offset, m
    if depth > 32:
        return None
    for m in comp.members:
        if not m.name:
            inner = spec.type(spec.skip_mods_and_typedefs(m.type_id))
            if isinstance(inner, Composite):
                hit = _find_member(spec, inner, name, depth + 1)
                if hit is not None:
                    return m.bit_offset + hit[0], hit[1]
    return None


def _resolve_field(spec: BTFSpec, cand: BTFType, relo: CoreRelo) -> ReloResolution:
    tid = spec.skip_mods_and_typedefs(cand.id)
    first = relo.accessors[0].index if relo.accessors else 0
    bits = first * spec.sizeof(tid) * 8 if first else 0
    member: Member | None = None
    for acc in relo.accessors[1:]:
        t = spec.type(tid)
        if acc.name is None:
            if not isinstance(t, Array):
                return ReloResolution("field missing")
            tid = spec.skip_mods_and_typedefs(t.type_id)
            bits += acc.index * spec.sizeof(tid) * 8
            member = None
            continue
        if not isinstance(t, Composite):
            return ReloResolution("field missing")
        hit = _find_member(spec, t, essential_name(acc.name))
        if hit is None:
            return ReloResolution("field missing")
        bits += hit[0]
        member = hit[1]
        tid = spec.skip_mods_and_typedefs(member.type_id)
    candidate = spec.type_text(cand.id)
    if member is not None and member.bitfield_size:
        return ReloResolution("ok", bits // 8, None, None, member.bitfield_size, candidate)
    return ReloResolution("ok", bits // 8, spec.sizeof(tid), None, 0, candidate)


def resolve_core_relo(relo: CoreRelo, spec: BTFSpec) -> ReloResolution:
    """Resolve a relocation against a kernel's BTF: candidates by essential name and kind, then the
    access path by member name (through anonymous members), as libbpf does.

    Not modelled: libbpf's field type compatibility checks and type_matches' deep comparison (a
    candidate of the right name and kind counts as a match).
    """
    cands = _candidates(spec, relo)
    if not cands:
        return ReloResolution("type missing")
    if relo.kind.is_type:
        cand = cands[0]
        size = spec.sizeof(cand.id) if cand.kind not in (Kind.FWD, Kind.FUNC) else None
        return ReloResolution("ok", None, size, None, 0, spec.type_text(cand.id))
    if relo.kind.is_enumval:
        want = essential_name(relo.accessors[0].name or "") if relo.accessors else ""
        for cand in cands:
            enum = spec.type(spec.skip_mods_and_typedefs(cand.id))
            if isinstance(enum, Enum):
                for v in enum.values:
                    if essential_name(v.name) == want:
                        return ReloResolution("ok", None, enum.size, v.value, 0, spec.type_text(cand.id))
        return ReloResolution("enumval missing", candidate=spec.type_text(cands[0].id))
    matches = [r for r in (_resolve_field(spec, c, relo) for c in cands) if r.ok]
    if not matches:
        return ReloResolution("field missing", candidate=spec.type_text(cands[0].id))
    if len({(m.offset, m.size, m.bitfield_bits) for m in matches}) > 1:
        # libbpf refuses candidates that disagree.
        return ReloResolution("ambiguous", candidate=matches[0].candidate)
    return matches[0]


# The existence checks: their answer is a 0 or 1 the program branches on, and "missing" is an answer.
EXISTS_KINDS = frozenset({
    CoreReloKind.FIELD_EXISTS, CoreReloKind.TYPE_EXISTS, CoreReloKind.TYPE_MATCHES,
    CoreReloKind.ENUMVAL_EXISTS,
})


def exists_answers(relos: Sequence[CoreRelo], spec: BTFSpec) -> dict[Site, int]:
    """The value (1 or 0) each existence relocation of a program takes on the kernel of ``spec``."""
    return {
        (r.section, r.insn_off): int(resolve_core_relo(r, spec).ok) for r in relos if r.kind in EXISTS_KINDS
    }


def guard_of(
    relo: CoreRelo, relos: Sequence[CoreRelo], answers: dict[Site, int], code: ProgramCode | None
) -> str | None:
    """The existence check (its path) that rules out every path to ``relo``'s instruction on the kernel
    whose ``answers`` are given, or None when a path reaches it (or the code is unknown).

    The check may be on another type or field than the read it guards (``if
    (bpf_core_field_exists(old___o->f)) read old; else read new___x->g``): what counts is that the
    verifier, seeing the patched constant, never walks the branch with the unresolved read.
    """
    site = (relo.section, relo.insn_off)
    if code is None or site not in set(sites_of(code)):
        return None
    guards = deciding_guards(code, answers, site)
    if not guards:
        return None
    paths = {(r.section, r.insn_off): r.path for r in relos if r.kind in EXISTS_KINDS}
    return paths.get(guards[0], f"instruction {guards[0][1] // 8} of {guards[0][0]}")


@dataclass(frozen=True)
class _Resolved:
    rows: list[dict[str, Any]]
    failing: list[str]
    guarded: list[tuple[str, str]]  # (unresolved relocation, the exists check that rules it out)


def _resolve_relos(
    relos: list[CoreRelo], spec: BTFSpec, baseline_spec: BTFSpec | None, code: ProgramCode | None
) -> _Resolved:
    """A row per relocation of ``relos`` against ``spec``, the unguarded failures and the guarded ones."""
    answers = exists_answers(relos, spec)
    found = _Resolved([], [], [])
    seen: set[tuple[str, str, int]] = set()
    for relo in relos:
        key = (relo.path, relo.kind_name, relo.insn_off)
        if key in seen:
            continue
        seen.add(key)
        res = resolve_core_relo(relo, spec)
        base = resolve_core_relo(relo, baseline_spec) if baseline_spec is not None else None
        # An existence check answering "no" is fine: that is what it is for.
        guard = None if res.ok or relo.kind in EXISTS_KINDS else guard_of(relo, relos, answers, code)
        found.rows.append({
            "path": relo.path,
            "kind": relo.kind_name,
            "offset": res.offset,
            "size": res.size,
            "bitfield_bits": res.bitfield_bits,
            "value": res.value,
            "status": res.status,
            "guarded": guard is not None,
            "guard": guard,
            "baseline_offset": base.offset if base is not None else None,
            "insn_off": relo.insn_off,
        })
        if res.ok or relo.kind in EXISTS_KINDS:
            continue
        label = f"`{relo.path}` {res.status}"
        if guard is None and label not in found.failing:
            found.failing.append(label)
        elif guard is not None and label not in [g[0] for g in found.guarded]:
            found.guarded.append((label, guard))
    return found


def check_layout(
    probe: Probe,
    kernel: str,
    arch: str,
    relos: list[CoreRelo],
    spec: BTFSpec | None,
    baseline_kernel: str,
    baseline_spec: BTFSpec | None,
    code: ProgramCode | None = None,
) -> CellResult | None:
    """Resolve the program's CO-RE relocations against the kernel's BTF.

    FAIL when a field or type the program reads is missing on a path the kernel can take: one that no
    existence check (field_exists, type_exists, enumval_exists, type_matches, on any type) rules out on
    that kernel, as ``code`` shows (without it every unresolved read counts as reachable). None when the
    program has no relocations; SKIP without BTF.
    """
    if not relos:
        return None

    def result(outcome: Outcome, reason: str, details: dict[str, Any] | None = None) -> CellResult:
        return CellResult(probe, kernel, arch, Check.LAYOUT, outcome, reason, details or {})

    if spec is None:
        return result(Outcome.SKIP, "no BTF")
    found = _resolve_relos(relos, spec, baseline_spec, code)
    rows, failing = found.rows, found.failing
    details: dict[str, Any] = {"relocations": rows, "baseline_kernel": baseline_kernel}
    if failing:
        reason = f"{failing[0]} on {kernel} ({_rows_kind(rows, failing[0])}, not guarded by an exists check)"
        if len(failing) > 1:
            reason += f" (+{len(failing) - 1} more: {', '.join(failing[1:3])})"
        return result(Outcome.FAIL, reason, details)
    if found.guarded:
        return result(Outcome.PASS, render_guarded(kernel, found.guarded), details)
    return result(Outcome.PASS, "", details)


def render_guarded(kernel: str, guarded: Sequence[tuple[str, str]]) -> str:
    """The note of a passing cell whose unresolved relocations no path reaches."""
    label, guard = guarded[0]
    text = f"{label}: unresolved on {kernel}, on a path the exists check of `{guard}` rules out"
    if len(guarded) > 1:
        text += f" (+{len(guarded) - 1} more)"
    return text


def _rows_kind(rows: list[dict[str, Any]], label: str) -> str:
    """The relocation kind of the first row a failure label (from check_layout) refers to."""
    for row in rows:
        if label.startswith(f"`{row['path']}` ") and row["status"] != "ok":
            return str(row["kind"])
    return "?"


def _offset_cell(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status', '?')}{' (guarded)' if row.get('guarded') else ''}"
    kind = row.get("kind")
    if row.get("value") is not None:
        return str(row["value"])
    if row.get("offset") is None:
        return "yes" if row.get("size") is None else f"size {row['size']}"
    if row.get("bitfield_bits"):
        return f"{row['offset']} ({row['bitfield_bits']} bits)"
    if kind in ("field_exists",):
        return "yes"
    return f"{row['offset']} ({row['size']})"


def render_offsets_table(results: Sequence[CellResult]) -> str:
    """A Markdown table of each relocated field's offset (size) per kernel/arch column.

    ``results`` are layout CellResults (of one or several programs); cells read "offset (size)",
    "field missing", "type missing" or "-" when the kernel has no record.
    """
    columns: list[str] = []
    programs = {r.probe.id for r in results if r.check == Check.LAYOUT}
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in results:
        if r.check != Check.LAYOUT:
            continue
        col = f"{r.kernel}/{r.arch}"
        if col not in columns:
            columns.append(col)
        for row in r.details.get("relocations", ()):
            key = (r.probe.id, str(row.get("path")), str(row.get("kind")))
            rows.setdefault(key, {})[col] = _offset_cell(row)
    head = (["program"] if len(programs) > 1 else []) + ["field", "relocation", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for (prog, path, kind), cells in rows.items():
        values = ([prog] if len(programs) > 1 else []) + [path, kind]
        values += [cells.get(c, "-") for c in columns]
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines) + "\n"


# --- Tracepoint formats --------------------------------------------------------------------------


@dataclass(frozen=True)
class TPField:
    """One field of a tracepoint's format file."""

    name: str
    decl: str  # as written, e.g. "char prev_comm[16]", "__data_loc char[] name"
    offset: int
    size: int
    signed: bool


_FIELD_RE = re.compile(
    r"field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>\d+);)?"
)
_NAME_RE = re.compile(r"([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)*$")


def parse_tp_format(text: str) -> tuple[TPField, ...]:
    """The fields of a tracefs ``events/<cat>/<name>/format`` file, common_* fields included."""
    fields = []
    for m in _FIELD_RE.finditer(text):
        decl = m.group("decl").strip()
        nm = _NAME_RE.search(decl)
        fields.append(
            TPField(
                nm.group(1) if nm else decl,
                decl,
                int(m.group("offset")),
                int(m.group("size")),
                m.group("signed") == "1",
            )
        )
    return tuple(fields)


def diff_tp_formats(base: Sequence[TPField], cur: Sequence[TPField]) -> list[dict[str, Any]]:
    """Changes from ``base`` to ``cur`` by field name: removed, moved, resized, retyped, added."""
    bmap = {f.name: f for f in base}
    cmap = {f.name: f for f in cur}
    changes: list[dict[str, Any]] = []
    for f in base:
        c = cmap.get(f.name)
        if c is None:
            changes.append({"change": "removed", "name": f.name, "offset": f.offset, "size": f.size})
            continue
        if c.offset != f.offset:
            changes.append({"change": "moved", "name": f.name, "from": f.offset, "to": c.offset})
        if c.size != f.size:
            changes.append({"change": "resized", "name": f.name, "from": f.size, "to": c.size})
        if c.decl != f.decl or c.signed != f.signed:
            changes.append({"change": "type_changed", "name": f.name, "from": f.decl, "to": c.decl})
    for f in cur:
        if f.name not in bmap:
            changes.append({"change": "added", "name": f.name, "offset": f.offset, "size": f.size})
    return changes


def _describe_tp_change(ch: dict[str, Any]) -> str:
    if ch["change"] in ("moved", "resized"):
        what = "offset" if ch["change"] == "moved" else "size"
        return f"`{ch['name']}` {ch['change']} ({what} {ch['from']} -> {ch['to']})"
    return f"`{ch['name']}` {ch['change']}"


def check_tp_format(
    probe: Probe,
    kernel: str,
    arch: str,
    format_text: str | None,
    baseline_kernel: str,
    baseline_format_text: str | None,
) -> CellResult | None:
    """Compare a tracepoint's format on ``kernel`` with the baseline kernel's.

    FAIL when a field the baseline has moved, changed size or disappeared; PASS with a note when fields
    were only added or retyped in place. None for hooks other than ``tracepoint``.
    """
    if probe.kind != "tracepoint":
        return None

    def result(outcome: Outcome, reason: str, details: dict[str, Any] | None = None) -> CellResult:
        return CellResult(probe, kernel, arch, Check.TP_FORMAT, outcome, reason, details or {})

    if format_text is None:
        return result(Outcome.SKIP, f"tracepoint `{probe.target}` has no format on {kernel}")
    cur = parse_tp_format(format_text)
    base = parse_tp_format(baseline_format_text) if baseline_format_text is not None else None
    details: dict[str, Any] = {
        "fields": [_field_dict(f) for f in cur],
        "baseline_kernel": baseline_kernel,
        "baseline_fields": [_field_dict(f) for f in base] if base is not None else None,
        "changes": [],
    }
    if base is None:
        return result(Outcome.PASS, f"no format on baseline {baseline_kernel} to compare", details)
    changes = diff_tp_formats(base, cur)
    details["changes"] = changes
    breaking = [c for c in changes if c["change"] in ("removed", "moved", "resized")]
    if breaking:
        text = ", ".join(_describe_tp_change(c) for c in breaking[:3])
        more = f" (+{len(breaking) - 3} more)" if len(breaking) > 3 else ""
        return result(Outcome.FAIL, f"format differs from {baseline_kernel}: {text}{more}", details)
    if changes:
        notes = []
        added = [c["name"] for c in changes if c["change"] == "added"]
        retyped = [c["name"] for c in changes if c["change"] == "type_changed"]
        if added:
            notes.append(f"fields added since {baseline_kernel}: {', '.join(added)}")
        if retyped:
            notes.append(f"retyped in place since {baseline_kernel}: {', '.join(retyped)}")
        return result(Outcome.PASS, "; ".join(notes), details)
    reason = "" if kernel == baseline_kernel else f"same format as {baseline_kernel}"
    return result(Outcome.PASS, reason, details)


def _field_dict(f: TPField) -> dict[str, Any]:
    return {"name": f.name, "decl": f.decl, "offset": f.offset, "size": f.size, "signed": f.signed}
