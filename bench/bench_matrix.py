"""Benchmark of the whole matrix against bare virtme-ng boots, on the same machine in the same run.

Prints, for the kernels of a kernels file (default: kernels-ci.yaml):
  1. the wall time of a bare `vng --run <kernel> --exec true` per (kernel, arch): the floor. Only what
     booting needs here is added: --disable-kvm without usable KVM, --arch/--root for a foreign arch,
     and the harness's --memory/--cpus;
     1b. the same with the harness's own vng flags (the very VM the harness boots, running `true`);
  2. the harness's wall time per (kernel, arch) on the sample corpus (facts not cached), its ratio to (1)
     and to (1b), and the guest agent's part of it;
  3. a warm run of the same (facts cached: only the loads need the VM), and its ratios;
  4. the offline checks of the whole matrix with facts cached (no boot at all);
  5. `-n 1` against `-n 2` (and `-n 4` where there are 4 cores) on up to four entries: the speed-ups;
  6. peak memory of the harness process and of each VM (qemu's VmHWM, sampled).

Run: python bench/bench_matrix.py [--kernels kernels-ci.yaml] [--repeat N] [--skip-parallel]

The machines are shared and noisy (a boot varies by +-0.6 s from one run to the next): --repeat N measures
parts 1-3 N times, interleaved, and prints the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.kernels.config import (  # noqa: E402
    GuestSpec,
    KernelsConfig,
    KernelSpec,
    load_kernels_yaml,
)
from harness.kernels.fetch import fetch_kernel  # noqa: E402
from harness.kernels.rootfs import fetch_rootfs  # noqa: E402
from harness.vm.runner import (  # noqa: E402
    VMRequest,
    accelerator_for,
    build_vng_argv,
    find_vng,
    probe_accelerator,
    vng_env,
)

OFFLINE_SELECTION = "symbol or prototype or layout or tp_format or uprobe"


@dataclass
class MemorySampler:
    """Samples the peak resident memory (VmHWM) of qemu processes and of the pytest process tree."""

    interval: float = 0.5
    qemu_peaks: dict[int, int] = field(default_factory=dict)
    harness_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    root_pid: int = 0

    def start(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    status = (entry / "status").read_text()
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                if hwm is None:
                    continue
                kb = int(hwm.group(1))
                if os.path.basename(cmd).startswith("qemu-system"):
                    pid = int(entry.name)
                    self.qemu_peaks[pid] = max(self.qemu_peaks.get(pid, 0), kb)
                elif int(entry.name) == self.root_pid or self._descends(stat):
                    if "pytest" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        self.harness_peak = max(self.harness_peak, kb)
            self._stop.wait(self.interval)

    def _descends(self, stat: str) -> bool:
        try:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            return False
        return ppid == self.root_pid


def bare_argv(req: VMRequest) -> list[str]:
    """`vng --run <kernel> --exec true` with only what booting needs on this machine."""
    argv = [find_vng(), "--run", str(req.image)]
    if req.root is not None:
        argv += ["--arch", req.arch.vng, "--root", str(req.root)]
        if req.modules is not None:
            argv.append(f"--rodir=/lib/modules/{req.modules.name}={req.modules}")
    if req.accelerator.name != "kvm":
        argv.append("--disable-kvm")
    return [*argv, "--memory", req.memory, "--cpus", str(req.cpus), "--exec", "true"]


def bare_boot(spec: KernelSpec, mirror: str, guest: GuestSpec, harness_flags: bool) -> float:
    """Wall time of `vng --run <kernel> --exec true`: bare, or with the harness's vng flags."""
    build = fetch_kernel(spec, mirror=mirror)
    accel = accelerator_for(spec.arch, probe_accelerator())
    root = None if guest.host else fetch_rootfs(spec.arch, guest, mirror=mirror)
    with tempfile.TemporaryDirectory() as tmp:
        req = VMRequest(
            image=Path(build.image), arch=spec.arch, share=Path(tmp), command=["true"], accelerator=accel,
            root=root, memory=spec.memory, cpus=spec.cpus,
            modules=Path(build.modules) if build.modules else None,
        )
        argv = build_vng_argv(req, find_vng()) if harness_flags else bare_argv(req)
        start = time.monotonic()
        subprocess.run(argv, env=vng_env(), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=spec.timeout * spec.arch.timeout_factor, check=False)
        return time.monotonic() - start


def pytest_matrix(
    kernels: Path, *extra: str, sampler: MemorySampler | None = None
) -> tuple[float, int, str, int, float]:
    """Wall time, exit code, output tail, number of booted kernels and the guest agents' seconds of
    `pytest matrix/` with ``extra``."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "pytest", "matrix/", "-q", "-p", "no:cacheprovider",
                "--kernels", str(kernels), "--matrix-json", str(Path(tmp) / "m.json"), *extra]
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if sampler is not None:
            sampler.start(proc.pid)
        out, _ = proc.communicate(timeout=7200)
        elapsed = time.monotonic() - start
        if sampler is not None:
            sampler.stop()
        try:
            kernels_run = json.loads((Path(tmp) / "m.json").read_text())["kernels"]
        except (OSError, ValueError, KeyError):
            kernels_run = []
        booted = sum(1 for k in kernels_run if k.get("booted"))
        agent = sum(float(k.get("agent_seconds", 0)) for k in kernels_run)
        return elapsed, proc.returncode, out.strip().splitlines()[-1] if out.strip() else "", booted, agent


def drop_facts(spec: KernelSpec, mirror: str) -> None:
    """Forget the cached facts of ``spec`` so that the next run collects them in its boot."""
    build = fetch_kernel(spec, mirror=mirror)
    shutil.rmtree(build.facts_dir, ignore_errors=True)
    Path(build.facts_dir).mkdir(parents=True, exist_ok=True)


def parallel(kernels: Path, config: KernelsConfig) -> int:
    """-n 1 against -n 2 (and -n 4 on a machine with 4 cores or more) on up to four entries, each run
    collecting its facts in its boots."""
    entries = [k.key for k in config.kernels][:4]
    sel = [x for key in entries for x in ("--kernel", key)]
    counts = [1, 2] + ([4] if (os.cpu_count() or 1) >= 4 and len(entries) >= 4 else [])
    times = []
    for workers in counts:
        for spec in config.kernels:
            if spec.key in entries:
                drop_facts(spec, config.mirror)
        took, rc, tail, booted, _ = pytest_matrix(kernels, *sel, "-n", str(workers))
        times.append(took)
        print(f"   -n {workers}: {took:.1f}s, {booted} kernels booted, exit {rc}: {tail}")
    speedups = ", ".join(f"-n {n} over -n 1: {times[0] / t:.2f}x" for n, t in zip(counts[1:], times[1:]))
    print(f"5. {len(entries)} entries ({', '.join(entries)}), facts collected in the run: speed-up of "
          f"{speedups}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kernels", type=Path, default=ROOT / "kernels-ci.yaml")
    parser.add_argument("--offline-kernels", type=Path, default=ROOT / "kernels.yaml",
                        help="kernels file of the warm offline run (default: the default matrix)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure parts 1-3 N times and print the medians (default 1)")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--only-parallel", action="store_true", help="run part 5 alone")
    args = parser.parse_args()
    config = load_kernels_yaml(args.kernels)
    accel = probe_accelerator()
    print(f"machine: {os.cpu_count()} cores; accelerator {accel.name} ({accel.reason})")
    print(f"kernels: {args.kernels.name}: {', '.join(k.key for k in config.kernels)}\n")

    rows = []
    for spec in [] if args.only_parallel else config.kernels:
        samples: list[tuple[float, ...]] = []
        sampler = MemorySampler()
        for _ in range(max(1, args.repeat)):
            floor = bare_boot(spec, config.mirror, spec.guest, harness_flags=False)
            same_vm = bare_boot(spec, config.mirror, spec.guest, harness_flags=True)
            drop_facts(spec, config.mirror)
            sampler = MemorySampler()
            cold, rc_cold, _, _, agent_cold = pytest_matrix(
                args.kernels, "--kernel", spec.key, sampler=sampler
            )
            warm, rc_warm, _, _, agent_warm = pytest_matrix(args.kernels, "--kernel", spec.key)
            samples.append((floor, same_vm, cold, agent_cold, warm, agent_warm))
        medians = [statistics.median(column) for column in zip(*samples)]
        vm_peak = max(sampler.qemu_peaks.values(), default=0)
        rows.append((spec.key, *medians, sampler.harness_peak, vm_peak, rc_cold, rc_warm))
    if rows:
        times = f"medians of {args.repeat} runs" if args.repeat > 1 else "one run each"
        print(f"1-3. one (kernel, arch) at a time, -n 0, {times} (exit codes: 0 all pass, 1 some failed);")
        print("     (1) bare vng, (1b) the harness's VM running `true`; agent: the guest agent's part")
        print(f"{'entry':<14} {'(1)':>7} {'(1b)':>7} {'harness':>8} {'/(1)':>5} {'/(1b)':>5} {'agent':>6} "
              f"{'warm':>7} {'/(1)':>5} {'/(1b)':>5} {'agent':>6} {'harness RSS':>11} {'VM RSS':>7}")
    for key, floor, same, cold, acold, warm, awarm, hpeak, vpeak, rc1, rc2 in rows:
        print(f"{key:<14} {floor:6.1f}s {same:6.1f}s {cold:7.1f}s {cold / floor:5.2f} {cold / same:5.2f} "
              f"{acold:5.1f}s {warm:6.1f}s {warm / floor:5.2f} {warm / same:5.2f} {awarm:5.1f}s "
              f"{hpeak / 1024:9.0f}MB {vpeak / 1024:5.0f}MB  (exit {rc1}/{rc2})")

    if args.only_parallel:
        return parallel(args.kernels, config)
    offline_cfg = load_kernels_yaml(args.offline_kernels)
    missing = [s.key for s in offline_cfg.kernels
               if not (Path(fetch_kernel(s, mirror=offline_cfg.mirror).facts_dir) / "facts-done").exists()]
    print(f"\n4. warm offline checks of {args.offline_kernels.name} "
          f"({len(offline_cfg.kernels)} entries), facts cached, no boot:")
    if missing:
        print(f"   facts not cached for {', '.join(missing)}: run the matrix on it once first; skipped")
    else:
        took, rc, tail, booted, _ = pytest_matrix(args.offline_kernels, "-k", OFFLINE_SELECTION)
        print(f"   {took:.1f}s wall, kernels booted: {booted}, exit {rc}: {tail}")

    if not args.skip_parallel:
        parallel(args.kernels, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
