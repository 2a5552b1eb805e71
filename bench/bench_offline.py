"""Times the offline checks: symbol checks of 20 probes on 8 kernel x arch facts directories (loading
included, first with the derived cache as found, then warm), or with --matrix every offline check of a
kernels.yaml matrix as `pytest matrix/` computes them."""

from __future__ import annotations

import argparse
import json
import random
import re
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.checks.symbols import check_symbol, stable_alternatives, with_alternatives
from harness.errors import HarnessError
from harness.kernels.config import ARCHES, resolve_arch
from harness.kernels.facts import KernelFacts, load_facts, parse_kallsyms
from harness.report.results import CellResult, Outcome, Probe

CACHE = Path.home() / ".cache" / "bpf-kernel-matrix" / "kernels"
KERNELS = ("5.10", "6.1", "6.12", "7.2")
TARGET_SECONDS = 3.0

PROBES: tuple[tuple[str, str], ...] = (
    ("kprobe", "vfs_unlink"),
    ("kprobe", "blk_account_io_start"),
    ("kprobe", "blk_account_io_done"),
    ("kprobe", "tcp_v4_connect"),
    ("kprobe", "__x64_sys_openat"),
    ("kprobe", "dump_blkd_tasks"),
    ("kretprobe", "vfs_read"),
    ("kretprobe", "exc_int3"),
    ("kprobe.multi", "tcp_*"),
    ("kprobe.multi", "vfs_*"),
    ("fentry", "vfs_unlink"),
    ("fexit", "blk_account_io_done"),
    ("fmod_ret", "should_failslab"),
    ("ksyscall", "openat"),
    ("ksyscall", "open"),
    ("tracepoint", "block/block_rq_issue"),
    ("tracepoint", "block/block_io_start"),
    ("raw_tp", "sched_switch"),
    ("tp_btf", "sched_switch"),
    ("lsm", "file_open"),
)

# --- synthetic facts of realistic size --------------------------------------------------------------

_SUBSYSTEMS = (
    "blk", "bio", "vfs", "tcp", "udp", "sched", "mm", "ext4", "xfs", "btrfs", "net", "sock", "bpf",
    "kmem", "irq", "page", "inode", "dentry", "file", "ip", "nf", "security", "cgroup", "rcu", "drm",
    "pci", "usb", "acpi", "kvm", "perf", "trace", "crypto", "dev", "skb", "nvme", "scsi", "ata",
)
_WORDS = (
    "alloc", "free", "init", "exit", "start", "done", "read", "write", "lookup", "insert", "remove",
    "update", "get", "put", "lock", "unlock", "queue", "submit", "complete", "open", "release",
    "map", "unmap", "flush", "sync", "attach", "detach", "find", "create", "destroy", "setup",
    "handle", "process", "account", "io", "request", "entry", "work", "timer", "state", "slot",
)
_REAL = (
    "vfs_unlink", "vfs_read", "vfs_write", "tcp_v4_connect", "tcp_sendmsg", "blk_mq_start_request",
    "should_failslab", "security_file_open", "bpf_lsm_file_open", "bpf_lsm_inode_unlink",
)
_EVENTS = (
    "block:block_rq_issue", "block:block_rq_complete", "block:block_bio_queue", "sched:sched_switch",
    "sched:sched_process_exec", "raw_syscalls:sys_enter", "raw_syscalls:sys_exit",
    "syscalls:sys_enter_openat", "tcp:tcp_retransmit_skb", "sock:inet_sock_set_state",
)


def _encode_btf(funcs: Iterable[str], typedefs: Iterable[str]) -> bytes:
    """A little-endian BTF blob with an int, one prototype and the given FUNCs and TYPEDEFs."""
    strings = bytearray(b"\0")
    types = bytearray()
    types += struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)
    strings += b"int\0"
    types += struct.pack("<III", 0, 13 << 24, 1)
    types += struct.pack("<III", 0, 2 << 24, 2)
    for kind, names in ((12, funcs), (8, typedefs)):
        for name in names:
            types += struct.pack("<III", len(strings), (kind << 24) | (1 if kind == 12 else 0),
                                 2 if kind == 12 else 3)
            strings += name.encode() + b"\0"
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)


def synthesize_facts(directory: Path, kernel: str, arch: str, lines: int = 200_000) -> None:
    """Write a facts directory with ``lines`` kallsyms lines shaped like a Debian kernel's."""
    rng = random.Random(f"{kernel}-{arch}")
    prefix = ARCHES[arch].syscall_prefix
    names: list[tuple[str, str]] = []
    seen: set[str] = set()
    untraced: set[str] = set()
    for name in _REAL:
        names.append(("T", name))
    for syscall in ("openat", "read", "write", "bpf", "execve", "unlinkat", "connect"):
        names.append(("T", prefix + syscall))
    if arch == "x86_64":
        names += [("T", prefix + "open"), ("T", "__noinstr_text_start"), ("T", "exc_int3"),
                  ("T", "__noinstr_text_end")]
    names += [("t", "dump_blkd_tasks.constprop.0"), ("t", "dump_blkd_tasks.constprop.0.cold")]
    # 5.10 exports blk_account_io_start; 6.1 inlines it; later kernels keep a local copy.
    if kernel == "5.10":
        names += [("T", "blk_account_io_start"), ("T", "blk_account_io_done")]
    elif kernel != "6.1":
        names += [("t", "blk_account_io_start"), ("t", "blk_account_io_done")]
    else:
        names += [("t", "blk_account_io_done")]
    while len(names) < lines:
        sub = rng.choice(_SUBSYSTEMS)
        name = f"{sub}_{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{rng.randrange(4000)}"
        if name in seen:
            continue
        seen.add(name)
        # Debian 6.1 amd64 (KALLSYMS_ALL): about 45% data symbols, 2% compiler clones, and about
        # half of the functions in available_filter_functions.
        roll = rng.random()
        if roll < 0.02:
            name += rng.choice((".isra.0", ".constprop.0", ".part.0", ".cold"))
            names.append(("t", name))
        elif roll < 0.47:
            names.append((rng.choice("dDbBrR"), name))
        else:
            names.append(("T" if roll < 0.75 else "t", name))
            if rng.random() < 0.5:
                untraced.add(name)
    names += [("D", "init_task"), ("D", "jiffies"), ("d", "_eil_addr_should_failslab"),
              ("d", "__tracepoint_sched_switch")]
    base = 0xFFFFFFFF81000000 if arch == "x86_64" else 0xFFFF800008000000
    kallsyms = [f"{base + i * 64:016x} {t} {n}" for i, (t, n) in enumerate(names)]
    kallsyms += [f"ffffffffc0a{i:05x} t {rng.choice(_SUBSYSTEMS)}_mod_fn_{i}\t[mod{i % 60}]"
                 for i in range(3000)]
    traceable = [n for t, n in names if t in "tT" and not n.endswith(".cold") and n != "exc_int3"
                 and not n.startswith("__noinstr") and n not in untraced]
    # Most events are the same from kernel to kernel; a few come and go.
    shared = random.Random("events")
    events = list(_EVENTS)
    events += [f"{shared.choice(_SUBSYSTEMS)}:{shared.choice(_WORDS)}_{shared.choice(_WORDS)}_{i}"
               for i in range(2000) if rng.random() < 0.97]
    if kernel not in ("5.10", "6.1"):
        events += ["block:block_io_start", "block:block_io_done"]
    directory.mkdir(parents=True, exist_ok=True)
    release = f"{kernel}.0-1-{ARCHES[arch].debian}"
    (directory / "uname.json").write_text(json.dumps(
        {"release": release, "machine": ARCHES[arch].uname, "version": "#1 SMP Debian"}))
    (directory / "kallsyms").write_text("\n".join(kallsyms) + "\n")
    (directory / "available_filter_functions").write_text("\n".join(traceable) + "\n")
    (directory / "available_events").write_text("\n".join(events) + "\n")
    formats = {
        e.replace(":", "/"): f"name: {e.split(':')[1]}\nID: {i}\nformat:\n" for i, e in enumerate(events)
    }
    (directory / "tracepoint_formats.json").write_text(json.dumps(formats))
    fprobe = "CONFIG_FPROBE=y\n" if kernel != "5.10" else ""
    (directory / "config").write_text(
        f"CONFIG_DEBUG_INFO_BTF=y\nCONFIG_BPF_LSM=y\nCONFIG_KALLSYMS_ALL=y\n{fprobe}"
        'CONFIG_LSM="landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,bpf"\n'
    )
    lsm = "lockdown,capability,landlock,yama,apparmor" + (",bpf" if kernel == "7.2" else "")
    (directory / "lsm").write_text(lsm)
    btf_funcs = [n for n in traceable if "." not in n and rng.random() < 0.9]
    typedefs = [f"btf_trace_{e.split(':')[1]}" for e in events]
    (directory / "vmlinux.btf").write_bytes(_encode_btf(btf_funcs, typedefs))


# --- the run ----------------------------------------------------------------------------------------


def find_cached_facts(cache: Path) -> dict[tuple[str, str], Path]:
    """Facts directories the guest agent left in the kernel cache, keyed by (kernel, arch)."""
    found: dict[tuple[str, str], Path] = {}
    for kallsyms in sorted(cache.glob("**/facts/kallsyms")):
        directory = kallsyms.parent
        try:
            uname = json.loads((directory / "uname.json").read_text())
            arch = resolve_arch(uname["machine"]).name
        except (OSError, ValueError, KeyError, HarnessError):
            continue
        match = re.match(r"(\d+\.\d+)", uname.get("release", ""))
        if match:
            found.setdefault((match.group(1), arch), directory)
    return found


def run(columns: dict[tuple[str, str], Path]) -> tuple[float, float, list[CellResult]]:
    """Load every column's facts and run every check; returns (wall seconds, CPU seconds, results)."""
    probes = [Probe("bench", f"p{i}", f"{k}/{t}", k, t) for i, (k, t) in enumerate(PROBES)]
    start = time.perf_counter()
    cpu = time.process_time()
    facts: dict[tuple[str, str], KernelFacts] = {col: load_facts(d) for col, d in columns.items()}
    results: list[CellResult] = []
    for p in probes:
        cells = [check_symbol(p, k, ARCHES[a], f) for (k, a), f in facts.items()]
        results += with_alternatives(cells, p, stable_alternatives(p, facts))
    return time.perf_counter() - start, time.process_time() - cpu, results


def run_matrix(kernels_yaml: Path, progs: Path) -> int:
    """Time MatrixRun's offline checks (every probe x kernel x arch) twice, objects built beforehand."""
    from harness.kernels.config import load_kernels_yaml
    from harness.run.coordinator import MatrixRun
    from harness.vm.runner import VngRunner, probe_accelerator

    config = load_kernels_yaml(kernels_yaml)
    times: list[tuple[float, float]] = []
    results = 0
    for _ in range(2):
        matrix = MatrixRun(config, progs, VngRunner(), probe_accelerator())
        for arch in matrix.arches():
            matrix.objects(arch)
        start, cpu = time.perf_counter(), time.process_time()
        cells = matrix.compute_offline()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
        results = sum(len(c) for c in cells.values())
    print(f"matrix: {kernels_yaml} ({len(config.kernels)} kernel x arch entries), {progs}: {results} results")
    for label, (wall, cpu) in zip(("first", "second"), times):
        print(f"offline checks, {label} run: {wall:.2f} s wall, {cpu:.2f} s CPU "
              f"(target {TARGET_SECONDS:.0f} s)")
    return 0 if times[-1][0] < TARGET_SECONDS else 1


def bench_kallsyms(directory: Path, repeat: int = 5) -> str:
    """parse_kallsyms of one synthetic kallsyms against a baseline read of the same text in the same
    run (split every line into its fields): the parser's cost over merely reading the lines."""
    text = (directory / "kallsyms").read_text()

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    parse = best(lambda: parse_kallsyms(text))
    baseline = best(lambda: [line.split() for line in text.splitlines()])
    lines = text.count("\n")
    return (
        f"parse_kallsyms: {lines} lines in {parse * 1000:.0f} ms; baseline (split every line) "
        f"{baseline * 1000:.0f} ms; ratio {parse / baseline:.2f} (best of {repeat})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", type=Path, help="a directory of <kernel>-<arch>/ facts directories")
    parser.add_argument("--synthetic", action="store_true", help="ignore cached real facts")
    parser.add_argument("--lines", type=int, default=200_000, help="kallsyms lines per synthetic kernel")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every FAIL reason")
    parser.add_argument("--matrix", type=Path, metavar="KERNELS_YAML",
                        help="time every offline check of this matrix instead (facts must be cached)")
    parser.add_argument("--progs", type=Path, default=Path("bpf_progs"), help="with --matrix: the programs")
    args = parser.parse_args(argv)
    if args.matrix:
        return run_matrix(args.matrix, args.progs)

    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        columns: dict[tuple[str, str], Path] = {}
        source = ""
        if args.facts:
            for d in sorted(args.facts.iterdir()):
                if (d / "kallsyms").is_file() and "-" in d.name:
                    kernel, arch = d.name.rsplit("-", 1)
                    columns[(kernel, arch)] = d
            source = str(args.facts)
        elif not args.synthetic:
            columns = find_cached_facts(CACHE)
            source = f"cached facts under {CACHE}"
        if not columns:
            t0 = time.perf_counter()
            for kernel in KERNELS:
                for arch in ARCHES:
                    columns[(kernel, arch)] = Path(tmp) / f"{kernel}-{arch}"
                    synthesize_facts(columns[(kernel, arch)], kernel, arch, args.lines)
            written = time.perf_counter() - t0
            source = f"synthetic, {args.lines} kallsyms lines each (written in {written:.1f} s)"
        # The first run parses what the derived cache lacks (all of it for synthetic facts), the
        # second loads it.
        first, first_cpu, _ = run(columns)
        seconds, cpu, results = run(columns)
        kallsyms_line = bench_kallsyms(next(iter(columns.values())))

    outcomes = Counter(r.outcome.value for r in results)
    print(f"facts: {len(columns)} columns ({source})")
    print(f"checks: {len(PROBES)} probes x {len(columns)} columns = {len(results)} results: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"first run: {first:.2f} s wall, {first_cpu:.2f} s CPU (derived cache as found)")
    print(
        f"warm run: {seconds:.2f} s wall, {cpu:.2f} s CPU "
        f"(loading included; target {TARGET_SECONDS:.0f} s)"
    )
    print(kallsyms_line)
    if args.verbose:
        for r in results:
            if r.outcome in (Outcome.FAIL, Outcome.ERROR):
                print(f"  {r.kernel}/{r.arch} {r.probe.section}: {r.outcome.value}: {r.reason}")
    return 0 if seconds < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
