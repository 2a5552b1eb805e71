"""Offline symbol checks: is a probe's target present and attachable on a kernel, judged from its facts."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.checks.verdict import Verdict
from harness.errors import HarnessError
from harness.kernels.config import ARCHES, Arch
from harness.kernels.facts import KernelFacts, name_stem
from harness.kernels.version import version_key
from harness.programs.clones import clone_kinds
from harness.programs.hooks import Target, resolve_hook
from harness.report.results import CellResult, Check, Outcome, Probe

# Trace events that are not tracepoints: raw_tp and tp_btf cannot attach to them. The syscalls:*
# events are made by ftrace's syscall tracer on top of raw_syscalls:sys_enter/sys_exit.
NON_TRACEPOINT_CATEGORIES = frozenset({"syscalls", "ftrace"})

# The details key of a FAIL whose target is nowhere on the kernel (not merely untraceable or cloned):
# checks/across.py tells a target absent on every kernel of a run (set by its loader) from drift.
ABSENT = "absent"
# How many suggestions a reason names.
MAX_CLOSEST = 3
MAX_ALTERNATIVES = 5

_GLOB_CHARS = re.compile(r"[*?\[]")


def _q(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _closest(name: str, candidates: Iterable[str], n: int = MAX_CLOSEST) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def closest_functions(name: str, facts: KernelFacts, n: int = MAX_CLOSEST) -> list[str]:
    """Traceable functions whose names are closest to ``name``, among those of the same stem.

    Pre-filtering by stem (``blk`` for ``blk_account_io_start``) keeps difflib to a few hundred
    candidates instead of the 50-70k traceable functions of a distro kernel.
    """
    candidates = facts.traceable_by_stem.get(name_stem(name), ())
    return _closest(name, (c for c in candidates if c != name), n)


# --- clones -----------------------------------------------------------------------------------------


def pick_clone_targets(clones: Sequence[str], traceable: frozenset[str]) -> list[str]:
    """The clones a probe should attach to instead of their (absent) original, best first.

    ``.cold`` is only the unlikely path split off a function; ``.part`` is the part left after
    partial inlining (callers run the head inline); ``.isra``/``.constprop`` hold the whole body,
    with some arguments removed or fixed.
    """

    def rank(clone: str) -> int:
        kinds = clone_kinds(clone)
        return 1 if "part" in kinds else 0

    usable = [c for c in clones if c in traceable and "cold" not in clone_kinds(c)]
    return sorted(usable, key=lambda c: (rank(c), c))


# --- kernel functions -------------------------------------------------------------------------------


def _untraceable_evidence(name: str, facts: KernelFacts) -> list[str]:
    """Why ftrace may not list ``name``: what kallsyms says about it."""
    evidence: list[str] = []
    symbols = facts.symbols
    if f"_kbl_addr_{name}" in symbols:
        evidence.append("in the kprobe blacklist (NOKPROBE_SYMBOL)")
    region = facts.kallsyms.region_of(name)
    if region:
        evidence.append(region)
    types = symbols.get(name, "")
    if types and types.islower():
        # The kernel's `inline` implies notrace: a static inline that GCC emitted out of line
        # is in kallsyms but not in ftrace (6.1's blk_account_io_done).
        evidence.append(f"local symbol ({types[0]}): likely a static inline kept out of line (notrace)")
    if not evidence:
        evidence.append("notrace, or an address ftrace does not manage")
    return evidence


def _syscall_hint(name: str, arch: Arch, facts: KernelFacts) -> Verdict | None:
    """A kprobe on another arch's syscall wrapper, or on a pre-4.17 ``sys_*`` name."""
    for other in ARCHES.values():
        if other.name == arch.name or not name.startswith(other.syscall_prefix):
            continue
        syscall = name[len(other.syscall_prefix):]
        own = arch.syscall_prefix + syscall
        if own in facts.symbols:
            return Verdict(
                Outcome.FAIL,
                f"`{name}` is the {other.name} syscall wrapper; on {arch.name} it is `{own}` "
                f"(or use ksyscall/{syscall})",
                {"arch_wrapper": own, "syscall": syscall},
            )
    if name.startswith("sys_"):
        syscall = name[len("sys_"):]
        own = arch.syscall_prefix + syscall
        if own in facts.symbols:
            # 4.17 put pt_regs-based wrappers in front of every syscall (ARCH_HAS_SYSCALL_WRAPPER).
            return Verdict(
                Outcome.FAIL,
                f"`{name}` is the pre-4.17 syscall name; on {arch.name} it is `{own}` "
                f"(or use ksyscall/{syscall})",
                {"arch_wrapper": own, "syscall": syscall},
            )
    return None


def _present_verdict(
    name: str, kernel: str, facts: KernelFacts, traceable: frozenset[str], details: dict[str, Any]
) -> Verdict:
    """``name`` is in kallsyms (or a module): is ftrace able to trace it?"""
    types = facts.symbols.get(name, "")
    module = facts.module_symbols.get(name)
    clones = facts.clones.get(name, ())
    if name in traceable:
        notes: list[str] = []
        if module and not types:
            notes.append(f"in module {module} (must be loaded)")
        if len(types) > 1:
            # 6.7 made kprobes by name fail with EADDRNOTAVAIL when several symbols match.
            notes.append(f"{len(types)} symbols are named `{name}`: attaching by name is ambiguous")
        if clones:
            notes.append(f"GCC clones {_q(clones)} also exist: calls that go through them bypass `{name}`")
        return Verdict(Outcome.PASS, "; ".join(notes), details)
    evidence = _untraceable_evidence(name, facts)
    details["evidence"] = evidence
    reason = (
        f"`{name}` is present but not traceable on {kernel}: not in available_filter_functions "
        f"({'; '.join(evidence)})"
    )
    targets = pick_clone_targets(clones, traceable)
    if targets:
        details["target"] = targets[0]
        reason += f"; its clone `{targets[0]}` is traceable"
    return Verdict(Outcome.FAIL, reason, details)


def _clones_only_verdict(
    name: str, kernel: str, clones: Sequence[str], traceable: frozenset[str], details: dict[str, Any]
) -> Verdict:
    """``name`` is not in kallsyms, but GCC's clones of it are."""
    targets = pick_clone_targets(clones, traceable)
    if not targets:
        reason = f"`{name}` not in kallsyms on {kernel}: only clones {_q(clones)}, none traceable"
        return Verdict(Outcome.FAIL, reason, details)
    details["target"] = targets[0]
    what = "whole body" if "part" not in clone_kinds(targets[0]) else "outlined part"
    reason = (
        f"`{name}` not in kallsyms on {kernel}: GCC cloned it as {_q(clones)}; "
        f"target `{targets[0]}` ({what}, arguments may differ)"
    )
    if len(targets) > 1:
        reason += f", and also {_q(targets[1:])}"
    if any("cold" in clone_kinds(c) for c in clones):
        reason += "; not `.cold`, the unlikely path only"
    return Verdict(Outcome.FAIL, reason, details)


def _function_verdict(name: str, kernel: str, arch: Arch, facts: KernelFacts) -> Verdict:
    """Is kernel function ``name`` in kallsyms and traceable by ftrace?"""
    traceable = facts.traceable
    if traceable is None:
        return Verdict(
            Outcome.ERROR,
            f"facts for {kernel} {arch.name} lack available_filter_functions: cannot tell traceability",
        )
    types = facts.symbols.get(name, "")
    module = facts.module_symbols.get(name)
    clones = facts.clones.get(name, ())
    details: dict[str, Any] = {"kallsyms": types or None, "traceable": name in traceable}
    if module:
        details["module"] = module
    if clones:
        details["clones"] = list(clones)
    if types or module:
        return _present_verdict(name, kernel, facts, traceable, details)
    hint = _syscall_hint(name, arch, facts)
    if hint is not None:
        return hint
    if clones:
        return _clones_only_verdict(name, kernel, clones, traceable, details)
    closest = closest_functions(name, facts)
    details["closest"] = closest
    details[ABSENT] = True
    reason = f"`{name}` not in kallsyms on {kernel}: removed, renamed or inlined"
    if closest:
        reason += f"; closest: {_q(closest)}"
    return Verdict(Outcome.FAIL, reason, details)


def _btf_verdict(name: str, kind: str, kernel: str, facts: KernelFacts) -> Verdict | None:
    """The extra requirements of fentry/fexit/fmod_ret; None when they are met."""
    if not facts.has_btf:
        return Verdict(Outcome.FAIL, f"kernel has no BTF (CONFIG_DEBUG_INFO_BTF): {kind} needs it")
    if name not in facts.btf_func_names:
        return Verdict(
            Outcome.FAIL,
            f"no BTF FUNC `{name}` on {kernel}: {kind} needs the function in BTF "
            "(static or inlined functions are often missing)",
            {"btf_func": False},
        )
    if kind == "fmod_ret" and not name.startswith("security_"):
        # check_attach_modify_return(): ALLOW_ERROR_INJECTION functions or security_* only.
        listed = facts.error_injection
        if listed is None:
            return Verdict(
                Outcome.PASS,
                f"could not tell whether `{name}` is on the error-injection list that fmod_ret "
                "needs (kallsyms does not show it): the load check decides",
                {"error_injection": None},
            )
        if name not in listed:
            return Verdict(
                Outcome.FAIL,
                f"fmod_ret cannot modify `{name}` on {kernel}: not on the error-injection list "
                "(ALLOW_ERROR_INJECTION) and not a security_* hook",
                {"error_injection": False},
            )
    return None


def _multi_verdict(pattern: str, kind: str, kernel: str, facts: KernelFacts) -> Verdict:
    config = facts.config
    if config is not None and config.get("CONFIG_FPROBE", "n") == "n":
        return Verdict(
            Outcome.FAIL, f"{kind} needs CONFIG_FPROBE (5.18+), which {kernel} does not have"
        )
    traceable = facts.traceable
    if traceable is None:
        return Verdict(
            Outcome.ERROR,
            f"facts for {kernel} lack available_filter_functions: cannot match `{pattern}`",
        )
    # libbpf matches kprobe.multi globs against available_filter_functions too (1.2+).
    literal = _GLOB_CHARS.split(pattern, 1)[0]
    candidates = facts.traceable_by_stem.get(name_stem(literal), ()) if literal else traceable
    matches = sorted(fnmatch.filter(candidates, pattern))
    if not matches and literal and name_stem(literal) != literal.lstrip("_"):
        matches = sorted(fnmatch.filter(traceable, pattern))
    details: dict[str, Any] = {"matches": len(matches), "first": matches[:10]}
    if matches:
        return Verdict(Outcome.PASS, "", details)
    closest = closest_functions(literal or pattern, facts)
    details["closest"] = closest
    reason = f"no traceable function matches `{pattern}` on {kernel}"
    if closest:
        reason += f"; closest: {_q(closest)}"
    return Verdict(Outcome.FAIL, reason, details)


def _syscall_verdict(syscall: str, kernel: str, arch: Arch, facts: KernelFacts) -> Verdict:
    wrapper = arch.syscall_prefix + syscall
    verdict = _function_verdict(wrapper, kernel, arch, facts)
    verdict.details["wrapper"] = wrapper
    if verdict.outcome != Outcome.FAIL or wrapper in facts.symbols:
        return verdict
    wrappers = facts.traceable_by_stem.get(name_stem(wrapper), ())
    closest = _closest(wrapper, wrappers)
    verdict.details["closest"] = closest
    reason = (
        f"no syscall wrapper `{wrapper}` on {kernel}: `{syscall}` does not exist on {arch.name} "
        "or was removed"
    )
    if closest:
        reason += f"; closest: {_q(closest)}"
    return Verdict(Outcome.FAIL, reason, verdict.details)


# --- tracepoints ------------------------------------------------------------------------------------


def _tracepoint_verdict(target: str, kernel: str, facts: KernelFacts) -> Verdict:
    cat, _, name = target.replace(":", "/", 1).partition("/")
    if not name:
        return Verdict(
            Outcome.FAIL, f"tracepoint target `{target}` is not `category/name` (e.g. sched/sched_switch)"
        )
    events = facts.events
    if events is None:
        formats = facts.tracepoint_formats
        if formats is None:
            return Verdict(
                Outcome.ERROR,
                f"facts for {kernel} lack available_events: cannot tell whether `{target}` exists",
            )
        events = frozenset(k.replace("/", ":", 1) for k in formats)
    if f"{cat}:{name}" in events:
        return Verdict(Outcome.PASS, "", {"event": f"{cat}:{name}"})
    same_cat = [e for e in events if e.startswith(cat + ":")]
    closest = _closest(f"{cat}:{name}", same_cat or events)
    reason = f"tracepoint `{cat}:{name}` not in available_events on {kernel}"
    if not same_cat:
        reason += f" (no `{cat}` events at all)"
    if closest:
        reason += f"; closest: {_q(closest)}"
    return Verdict(Outcome.FAIL, reason, {"closest": closest, ABSENT: True})


def _raw_tracepoint_verdict(target: str, kind: str, kernel: str, facts: KernelFacts) -> Verdict:
    if "/" in target or ":" in target:
        bare = target.replace(":", "/").rsplit("/", 1)[1]
        return Verdict(
            Outcome.FAIL,
            f"{kind} takes the bare tracepoint name: `{kind}/{bare}`, not `{kind}/{target}`",
        )
    if facts.events is None:
        return Verdict(
            Outcome.ERROR, f"facts for {kernel} lack available_events: cannot tell whether `{target}` exists"
        )
    cats = [c for c in facts.event_names.get(target, ()) if c not in NON_TRACEPOINT_CATEGORIES]
    # Tracepoints declared with DECLARE_TRACE (no trace event, e.g. sched's pelt_cfs_tp) only show
    # in kallsyms, and only with CONFIG_KALLSYMS_ALL.
    in_kallsyms = f"__tracepoint_{target}" in facts.symbols
    details: dict[str, Any] = {"categories": cats, "kallsyms": in_kallsyms}
    if not cats and not in_kallsyms:
        syscall_event = "syscalls" in facts.event_names.get(target, ())
        if syscall_event:
            return Verdict(
                Outcome.FAIL,
                f"`syscalls:{target}` is a syscall trace event, not a tracepoint: {kind} attaches to "
                f"`{'sys_enter' if target.startswith('sys_enter') else 'sys_exit'}` (raw_syscalls)",
                details,
            )
        names = [n for n, cs in facts.event_names.items() if set(cs) - NON_TRACEPOINT_CATEGORIES]
        closest = _closest(target, names)
        details["closest"] = closest
        details[ABSENT] = True
        reason = f"tracepoint `{target}` not on {kernel}"
        if closest:
            reason += f"; closest: {_q(closest)}"
        return Verdict(Outcome.FAIL, reason, details)
    if kind == "tp_btf":
        if not facts.has_btf:
            return Verdict(Outcome.FAIL, "kernel has no BTF (CONFIG_DEBUG_INFO_BTF): tp_btf needs it")
        btf = facts.btf
        typedef = f"btf_trace_{target}"
        if btf is None or not btf.by_name(typedef):
            return Verdict(
                Outcome.FAIL,
                f"no BTF typedef `{typedef}` on {kernel}: tp_btf needs the tracepoint's BTF prototype",
                details,
            )
        details["btf_typedef"] = typedef
    return Verdict(Outcome.PASS, "", details)


# --- LSM --------------------------------------------------------------------------------------------


def _lsm_verdict(hook: str, kind: str, kernel: str, facts: KernelFacts) -> Verdict:
    config = facts.config or {}
    if config.get("CONFIG_BPF_LSM") == "n":
        return Verdict(Outcome.FAIL, f"{kernel} is built without CONFIG_BPF_LSM (5.7+): no {kind} programs")
    func = f"bpf_lsm_{hook}"
    if not facts.has_btf:
        return Verdict(Outcome.FAIL, f"kernel has no BTF (CONFIG_DEBUG_INFO_BTF): {kind} needs it")
    in_btf = func in facts.btf_func_names
    in_kallsyms = func in facts.symbols
    details: dict[str, Any] = {"btf_func": in_btf, "kallsyms": in_kallsyms}
    if not in_btf and not in_kallsyms:
        hooks = [f for f in facts.btf_func_names if f.startswith("bpf_lsm_")]
        closest = [c[len("bpf_lsm_"):] for c in _closest(func, hooks)]
        details["closest"] = closest
        details[ABSENT] = True
        reason = f"no LSM hook `{hook}` on {kernel}: `{func}` is neither in BTF nor in kallsyms"
        if closest:
            reason += f"; closest: {_q(closest)}"
        return Verdict(Outcome.FAIL, reason, details)
    lsms = facts.lsms
    source = "active"
    if lsms is None:
        # Without securityfs the build's default order is the best evidence left.
        default = config.get("CONFIG_LSM")
        if default is None:
            return Verdict(
                Outcome.ERROR,
                f"facts for {kernel} lack lsm and CONFIG_LSM: cannot tell whether bpf is active",
            )
        lsms = tuple(p for p in default.split(",") if p)
        source = "CONFIG_LSM default"
    details["lsms"] = list(lsms)
    if "bpf" not in lsms:
        needed = ",".join((*lsms, "bpf"))
        return Verdict(
            Outcome.FAIL,
            f"bpf LSM not active on {kernel} ({source}: {','.join(lsms) or 'none'}): "
            f"boot with lsm={needed}",
            details,
        )
    return Verdict(Outcome.PASS, "", details)


# --- the check --------------------------------------------------------------------------------------


def _function_hook_verdict(kind: str, multi: bool, trampoline: bool, target: str, kernel: str,
                           arch: Arch, facts: KernelFacts) -> Verdict:
    if multi:
        found = _multi_verdict(target, kind, kernel, facts)
        if found.outcome != Outcome.PASS:
            return found
    verdict = _function_verdict(target, kernel, arch, facts)
    if verdict.outcome == Outcome.PASS and trampoline:
        btf = _btf_verdict(target, kind, kernel, facts)
        if btf is not None:
            reason = "; ".join(r for r in (btf.reason, verdict.reason) if r)
            return Verdict(btf.outcome, reason, {**verdict.details, **btf.details})
        verdict.details["btf_func"] = True
    return verdict


def _verdict(probe: Probe, kernel: str, arch: Arch, facts: KernelFacts) -> Verdict:
    kind, target = probe.kind, probe.target
    hook = resolve_hook(kind)
    where = hook.target if hook is not None else None
    if where is Target.USER_BINARY:
        return Verdict(Outcome.SKIP, "user-space target: checked by the uprobe checks")
    if hook is not None and hook.multi and _GLOB_CHARS.search(target):
        return _multi_verdict(target, kind, kernel, facts)
    if hook is not None and where is Target.KERNEL_FUNCTION:
        return _function_hook_verdict(kind, hook.multi, hook.trampoline, target, kernel, arch, facts)
    if where is Target.SYSCALL:
        return _syscall_verdict(target, kernel, arch, facts)
    if where is Target.TRACE_EVENT:
        return _tracepoint_verdict(target, kernel, facts)
    if where is Target.RAW_TRACEPOINT:
        return _raw_tracepoint_verdict(target, kind, kernel, facts)
    if where is Target.LSM:
        return _lsm_verdict(target, kind, kernel, facts)
    return Verdict(Outcome.SKIP, f"no symbol check for hook kind `{kind}`")


def check_symbol(probe: Probe, kernel: str, arch: Arch, facts: KernelFacts) -> CellResult:
    """Whether ``probe``'s target exists and can be attached on (kernel, arch), from its facts.

    Never raises for bad facts: a facts file that cannot be read or parsed gives an ERROR result.
    """
    start = time.perf_counter()
    try:
        verdict = _verdict(probe, kernel, arch, facts)
    except HarnessError as exc:
        verdict = Verdict(Outcome.ERROR, str(exc))
    return CellResult(
        probe=probe,
        kernel=kernel,
        arch=arch.name,
        check=Check.SYMBOL,
        outcome=verdict.outcome,
        reason=verdict.reason,
        details=verdict.details,
        duration=time.perf_counter() - start,
    )


# --- stable alternatives across the matrix ----------------------------------------------------------

# Kernel-name words that name the same subsystem as a trace event category (blk_* -> block:*).
_ALIASES = {
    "blk": "block", "bio": "block", "bdev": "block", "rq": "request",
    "sk": "sock", "inet": "sock", "kmalloc": "kmem", "kfree": "kmem", "kmem": "kmem",
    "mm": "mm", "filemap": "filemap", "wb": "writeback", "softirq": "irq", "hardirq": "irq",
    "signal": "signal", "sig": "signal", "syscalls": "sys", "raw": "sys",
}
# Words that say little about what a function does: they only break ties.
_GENERIC = frozenset({
    "do", "sys", "x64", "arm64", "ia32", "compat", "se", "start", "end", "done", "common", "one",
    "all", "init", "exit", "get", "put", "set", "fn", "func", "handle", "internal", "bpf", "lsm",
    "enter", "entry", "event", "account", "io", "new", "alloc", "free", "security", "dump",
    "show", "print", "info", "data", "list", "task", "tasks", "work", "state", "update",
})


@functools.lru_cache(maxsize=65536)
def _tokens(name: str) -> tuple[str, ...]:
    words = re.split(r"[_:/.]+", name.lower())
    return tuple(_ALIASES.get(w, w) for w in words if w and not w.isdigit())


def _relatedness(target: str, candidate: str) -> float:
    """How related ``candidate`` looks to ``target``: 0 when not at all."""
    words = _tokens(target)
    if not words:
        return 0.0
    stem = words[0]
    theirs = set(_tokens(candidate))
    shared = set(words) & theirs
    # unlinkat ~ unlink, renameat2 ~ rename: a long word that starts another counts as shared.
    shared |= {
        w for w in words
        if len(w) >= 5 and any(t.startswith(w) or (len(t) >= 5 and w.startswith(t)) for t in theirs)
    }
    distinctive = shared - _GENERIC
    score = len(distinctive) + 0.5 * len(shared & _GENERIC)
    if stem in theirs and stem not in _GENERIC:
        score += 2.0
    elif not distinctive:
        return 0.0
    return score


def _similarity(target: str, hook: str) -> float:
    name = hook.split(":", 1)[-1].split("/", 1)[-1]
    return difflib.SequenceMatcher(None, target, name).ratio()


def _hooks_of(facts: KernelFacts) -> set[str]:
    """Tracepoints as "cat:name" and LSM hooks as "lsm/hook" that a probe can attach to."""
    hooks = {e for e in facts.events or () if not e.startswith("ftrace:")}
    hooks.update(f"lsm/{hook}" for hook in facts.lsm_hooks)
    return hooks


def stable_alternatives(
    probe: Probe, facts_by_column: Mapping[tuple[str, str], KernelFacts]
) -> list[str]:
    """Related tracepoints and LSM hooks for a target that is missing or untraceable somewhere.

    ``facts_by_column`` maps (kernel id, arch name) to facts. Returns [] when the target passes on
    every column. Hooks present on every column come first, best match first; then hooks that
    exist from some kernel on, marked "(from <kernel>)".
    """
    if not facts_by_column:
        return []
    unstable = False
    for (kernel, arch_name), facts in facts_by_column.items():
        arch = ARCHES.get(arch_name)
        if arch is None:
            continue
        if check_symbol(probe, kernel, arch, facts).outcome == Outcome.FAIL:
            unstable = True
            break
    if not unstable:
        return []
    hooks_by_column = {col: _hooks_of(f) for col, f in facts_by_column.items()}
    own = {f"lsm/{probe.target}", probe.target.replace("/", ":", 1)}
    probe_hook = resolve_hook(probe.kind)
    lsm_probe = probe_hook is not None and probe_hook.target is Target.LSM
    for hooks in hooks_by_column.values():
        hooks -= own
        if lsm_probe:
            # Another LSM hook needs the same bpf LSM that the probe's own hook lacks.
            hooks -= {h for h in hooks if h.startswith("lsm/")}
    everywhere = set.intersection(*hooks_by_column.values())
    somewhere = set.union(*hooks_by_column.values()) - everywhere
    target = probe.target

    split = re.split(r"[_:/.]+", target.lower())
    words = [w for w in split if len(w) > 2] + [_ALIASES[w] for w in split if w in _ALIASES]
    words = [w[:5] for w in words]  # unlinkat must still find inode_unlink

    def ranked(hooks: Iterable[str]) -> list[tuple[float, str]]:
        # A substring test first: most hooks share no word with the target at all.
        scored = [(_relatedness(target, h), h) for h in hooks if any(w in h for w in words)]
        kept = [(s, h) for s, h in scored if s > 0]
        # Ties go to the closest spelling (blk_account_io_start: block_io_start before block_plug).
        return sorted(kept, key=lambda x: (-x[0], -_similarity(target, x[1]), x[1]))

    found = [h for _, h in ranked(everywhere)][:MAX_ALTERNATIVES]
    kernels = sorted({k for k, _ in facts_by_column}, key=version_key)
    for _, hook in ranked(somewhere):
        if len(found) >= MAX_ALTERNATIVES:
            break
        # A hook added in some release: present on every column of that kernel and later ones.
        has = [all(hook in hooks_by_column[c] for c in hooks_by_column if c[0] == k) for k in kernels]
        if any(has) and not has[0] and has == sorted(has):
            found.append(f"{hook} (from {kernels[has.index(True)]})")
    return found


def _q_alternatives(alternatives: Sequence[str]) -> str:
    quoted = []
    for alt in alternatives:
        hook, sep, note = alt.partition(" (")
        quoted.append(f"`{hook}`" + (f" ({note}" if sep else ""))
    return ", ".join(quoted)


def with_alternatives(
    results: Iterable[CellResult], probe: Probe, alternatives: Sequence[str]
) -> list[CellResult]:
    """``results`` with ``alternatives`` appended to the reason of each FAIL SYMBOL result of ``probe``."""
    out: list[CellResult] = []
    for result in results:
        if (
            alternatives
            and result.probe == probe
            and result.check == Check.SYMBOL
            and result.outcome == Outcome.FAIL
        ):
            details = {**result.details, "alternatives": list(alternatives)}
            reason = f"{result.reason}; stable alternatives: {_q_alternatives(alternatives)}"
            result = dataclasses.replace(result, reason=reason, details=details)
        out.append(result)
    return out
