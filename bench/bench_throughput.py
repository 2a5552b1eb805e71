"""Throughput of the matrix on a corpus: where each (kernel, arch)'s time goes, and the whole run's wall.

For each repetition, interleaved:
  1. the harness's own VM of each (kernel, arch) running `true` instead of the agent (the floor a boot
     cannot go under: same kernel, root, flags);
  2. `pytest matrix/ -n auto` on the corpus with every (kernel, arch) booted (--fresh-boots: no in-guest
     record is reused), the guests' directories kept, facts cached (run the matrix once before).
Then it prints, per (kernel, arch), medians over the repetitions: the `true` VM, the boot, the boot's
overhead over `true`, the guest agent, the agent's load / attach / trigger totals, the per-object medians
of load and of agent time (agent seconds on objects / objects), and the run's wall time.

Run: python bench/bench_throughput.py --bpf-progs DIR [--kernels kernels.yaml] [--repeat 3] [-n auto]
A real corpus: python scripts/real_corpus.py /tmp/corpus (Debian's libbpf-tools and systemd objects).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_matrix import bare_boot  # noqa: E402

from harness.kernels.config import load_kernels_yaml  # noqa: E402

PHASES = ("load", "attach", "trigger")


def run_matrix(kernels: Path, progs: Path, workers: str, keep: Path, out: Path) -> tuple[float, int, str]:
    """Wall time, exit code and last line of one `pytest matrix/` run that boots every (kernel, arch)."""
    argv = [sys.executable, "-m", "pytest", "matrix/", "-q", "-p", "no:cacheprovider", "-n", workers,
            "--kernels", str(kernels), "--bpf-progs", str(progs), "--fresh-boots",
            "--keep-guest-files", str(keep), "--matrix-json", str(out)]
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=7200, check=False)
    lines = proc.stdout.strip().splitlines()
    return time.monotonic() - start, proc.returncode, lines[-1] if lines else ""


def guest_dirs(keep: Path, key: str) -> list[Path]:
    """The kept shares of ``key``'s boots (a retried boot leaves two; the last one counts)."""
    found = sorted(p / "share" for p in keep.glob(f"{key}-*") if (p / "share" / "done.json").exists())
    return found[-1:]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def phase_totals(done: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, float]:
    """load / attach / trigger seconds of one agent: its own totals when it reports them, else the
    sum over its objects' phases."""
    reported = done.get("phases")
    if isinstance(reported, dict):
        return {p: float(reported.get(p, 0.0)) for p in PHASES}
    return {p: sum(float((o.get("phases") or {}).get(p, 0.0)) for o in objects) for p in PHASES}


def measure_boot(share: Path) -> dict[str, float]:
    """The agent's figures of one kept share."""
    done = read_json(share / "done.json") or {}
    objects = [o for o in read_json(share / "objects.json") or [] if isinstance(o, dict)]
    loads = [float((o.get("phases") or {}).get("load", 0.0)) for o in objects if o.get("phases")]
    count = max(1, len(objects))
    figures = {
        "agent": float(done.get("seconds", 0.0)),
        "objects": float(len(objects)),
        "load_median": statistics.median(loads) if loads else 0.0,
        "per_object": float(done.get("objects_seconds", 0.0)) / count,
    }
    figures.update(phase_totals(done, objects))
    return figures


def median(values: Iterable[float]) -> float:
    found = list(values)
    return statistics.median(found) if found else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kernels", type=Path, default=ROOT / "kernels.yaml")
    parser.add_argument("--bpf-progs", type=Path, required=True, metavar="DIR")
    parser.add_argument("--repeat", type=int, default=3, metavar="N")
    parser.add_argument("-n", dest="workers", default="auto")
    parser.add_argument("--skip-true", action="store_true", help="do not boot the `true` VMs")
    parser.add_argument("--keep-results", type=Path, metavar="DIR",
                        help="keep each run's results document as DIR/run-<n>.json")
    args = parser.parse_args()
    config = load_kernels_yaml(args.kernels)
    keys = [k.key for k in config.kernels]
    print(f"machine: {os.cpu_count()} cores; kernels: {args.kernels.name} ({len(keys)} (kernel, arch)); "
          f"corpus: {args.bpf_progs}; -n {args.workers}")

    floors: dict[str, list[float]] = {k: [] for k in keys}
    boots: dict[str, list[float]] = {k: [] for k in keys}
    agents: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    walls: list[float] = []
    for rep in range(max(1, args.repeat)):
        if not args.skip_true:
            for spec in config.kernels:
                floors[spec.key].append(bare_boot(spec, config.mirror, spec.guest, harness_flags=True))
        with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
            keep, out = Path(tmp) / "keep", Path(tmp) / "m.json"
            wall, rc, tail = run_matrix(args.kernels, args.bpf_progs, args.workers, keep, out)
            walls.append(wall)
            print(f"run {rep + 1}: {wall:.1f} s wall, exit {rc}: {tail}", flush=True)
            if args.keep_results is not None and out.exists():
                args.keep_results.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out, args.keep_results / f"run-{rep + 1}.json")
            document = read_json(out) or {}
            for kernel in document.get("kernels", []):
                key = f"{kernel['kernel']}-{kernel['arch']}"
                if key in boots and kernel.get("booted"):
                    boots[key].append(float(kernel.get("boot_seconds", 0.0)))
                    for share in guest_dirs(keep, key):
                        agents[key].append(measure_boot(share))

    reps = f"medians of {max(1, args.repeat)}"
    print(f"\nper (kernel, arch), {reps}; seconds; /obj: per-object medians (load: of each object's "
          "load; agent: agent seconds on objects / objects)")
    print(f"{'entry':<14} {'true VM':>7} {'boot':>6} {'-true':>6} {'agent':>6} {'objs':>4} {'load':>6} "
          f"{'attach':>6} {'trigger':>7} {'load/obj':>8} {'agent/obj':>9}")
    per_object: list[float] = []
    for key in keys:
        rows = agents[key]
        floor, boot = median(floors[key]), median(boots[key])
        fig = {name: median(r[name] for r in rows) for name in
               ("agent", "objects", "load", "attach", "trigger", "load_median", "per_object")}
        per_object += [r["per_object"] for r in rows]
        print(f"{key:<14} {floor:7.1f} {boot:6.1f} {boot - floor if floor else 0.0:6.1f} {fig['agent']:6.1f} "
              f"{fig['objects']:4.0f} {fig['load']:6.1f} {fig['attach']:6.1f} {fig['trigger']:7.1f} "
              f"{fig['load_median']:8.3f} {fig['per_object']:9.3f}")
    print(f"\nagent time per object, median over every (kernel, arch) and run: {median(per_object):.3f} s")
    print(f"whole run, -n {args.workers}: median {median(walls):.1f} s wall "
          f"(runs: {', '.join(f'{w:.1f}' for w in walls)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
