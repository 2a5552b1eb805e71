"""Time parsing a vmlinux BTF with btf.spec next to `bpftool btf dump ... format raw` on the same file."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.btf.spec import parse_btf


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default="/sys/kernel/btf/vmlinux", type=Path)
    parser.add_argument("-n", "--runs", type=int, default=5, help="best of N (default 5)")
    args = parser.parse_args(argv)
    data = args.path.read_bytes()

    def parse_only() -> None:
        parse_btf(data, str(args.path))

    def parse_and_index() -> None:
        spec = parse_btf(data, str(args.path))
        spec.func_names()
        spec.by_name("task_struct")

    def parse_and_build_all() -> None:
        spec = parse_btf(data, str(args.path))
        for _ in spec.types:
            pass

    spec = parse_btf(data, str(args.path))
    print(f"{args.path}: {len(data)} bytes, {len(spec) - 1} types, {len(spec.func_names())} functions")
    t_parse = best_of(args.runs, parse_only)
    t_index = best_of(args.runs, parse_and_index)
    print(f"btf.spec parse_btf: {t_parse * 1000:8.1f} ms (best of {args.runs})")
    print(f"btf.spec parse + func_names + name index: {t_index * 1000:8.1f} ms (best of {args.runs})")
    t_all = best_of(max(1, args.runs // 2), parse_and_build_all)
    print(f"harness.btf.spec parse + build every type record:   {t_all * 1000:8.1f} ms")
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        print("bpftool not found: no comparison")
        return 0

    def run_bpftool() -> None:
        subprocess.run(
            [bpftool, "btf", "dump", "file", str(args.path), "format", "raw"],
            stdout=subprocess.DEVNULL, check=True, timeout=120,
        )

    t_tool = best_of(args.runs, run_bpftool)
    print(f"bpftool btf dump format raw > /dev/null:       {t_tool * 1000:8.1f} ms (best of {args.runs})")
    print(f"ratio parse/bpftool: {t_parse / t_tool:.2f}, parse+index/bpftool: {t_index / t_tool:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
