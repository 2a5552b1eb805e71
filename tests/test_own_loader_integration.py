"""An own loader in real guests (kernels-ci.yaml, 6.1 on both arches): a small loader of the test's,
Python over the guest's libbpf, loads two of an object's three programs and attaches one; the cells
must say exactly that, which the harness's own libbpf load (every program, every attach) never would."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from tools import needs

from conftest import run_matrix
from harness.programs.build import LIBBPF_INCLUDE

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ("6.1-x86_64", "6.1-arm64")

# Two programs whose names the kernel cuts to the same 15 characters ("handle_openat_e"): only their BTF
# tells them apart.
OBJECT = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";
__u64 hits = 0;

SEC("tp/syscalls/sys_enter_openat")
int handle_openat_enter(void *ctx) { __sync_fetch_and_add(&hits, 1); return 0; }

SEC("tp/syscalls/sys_enter_openat")
int handle_openat_enter_twin(void *ctx) { __sync_fetch_and_add(&hits, 2); return 0; }

SEC("tp/syscalls/sys_enter_unlinkat")
int on_unlinkat(void *ctx) { return 0; }
"""

# Loads all but the twin, attaches only handle_openat_enter, says so, and waits to be stopped.
LOADER = """\
import ctypes, os, sys, time
lib = ctypes.CDLL("libbpf.so.1")
lib.bpf_object__open_file.restype = ctypes.c_void_p
lib.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
lib.bpf_object__find_program_by_name.restype = ctypes.c_void_p
lib.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.bpf_program__set_autoload.argtypes = [ctypes.c_void_p, ctypes.c_bool]
lib.bpf_object__load.argtypes = [ctypes.c_void_p]
lib.bpf_program__attach.restype = ctypes.c_void_p
lib.bpf_program__attach.argtypes = [ctypes.c_void_p]
obj = lib.bpf_object__open_file(os.environ["BPF_MATRIX_OBJECT"].encode(), None)
lib.bpf_program__set_autoload(lib.bpf_object__find_program_by_name(obj, b"handle_openat_enter_twin"), False)
if lib.bpf_object__load(obj) != 0:
    print("my-loader: load failed")
    sys.exit(3)
if not lib.bpf_program__attach(lib.bpf_object__find_program_by_name(obj, b"handle_openat_enter")):
    print("my-loader: attach failed")
    sys.exit(4)
print("my-loader: attached")
while True:
    time.sleep(1)
"""

SIDECAR = """\
own_loader:
  command: [python3, -S, my-loader.py]
  binaries: loader
  time_limit: 60
  ready: "my-loader: attached"
"""


@pytest.mark.integration
@needs("clang", str(LIBBPF_INCLUDE / "bpf" / "bpf_helpers.h"), why="the object is built for each arch")
def test_cells_come_from_the_loader(tmp_path: Path) -> None:
    progs = tmp_path / "progs"
    (progs / "loader").mkdir(parents=True)
    (progs / "mine.bpf.c").write_text(OBJECT)
    (progs / "mine.yaml").write_text(SIDECAR)
    (progs / "loader" / "my-loader.py").write_text(textwrap.dedent(LOADER))
    selected = [arg for key in KERNELS for arg in ("--kernel", key)]
    proc = run_matrix(
        tmp_path, "--kernels", str(ROOT / "kernels-ci.yaml"), *selected, "--bpf-progs", str(progs),
        "-n", "2", "--no-expectations", "-k", "load or attach or fire",
    )
    out = proc.stdout + proc.stderr
    records = json.loads((tmp_path / "matrix.json").read_text())["records"]
    cells = {(r["program"], r["kernel"] + "-" + r["arch"], r["check"]): r for r in records}
    for key in KERNELS:
        def cell(program: str, check: str, key: str = key) -> tuple[str, str]:
            rec = cells[(program, key, check)]
            return rec["outcome"], rec["reason"]

        where = f"{key}: {out[-3000:]}"
        outcome, reason = cell("handle_openat_enter", "load")
        assert outcome == "pass" and reason.startswith("loaded by my-loader.py (tracepoint program"), where
        # libbpf 1.5 attaches tracepoints through a perf_event BPF link, older ones by the perf event alone.
        outcome, reason = cell("handle_openat_enter", "attach")
        assert outcome == "pass", where
        assert reason in (
            "attached by my-loader.py: tracepoint sys_enter_openat",
            "attached by my-loader.py: perf_event link, tracepoint sys_enter_openat",
        ), where
        outcome, reason = cell("handle_openat_enter", "fire")
        assert outcome == "pass" and reason.endswith("times under my-loader.py"), where
        assert cells[("handle_openat_enter", key, "fire")]["details"]["run_cnt"] > 0
        assert cell("handle_openat_enter_twin", "load")[0] == "skip", where
        assert cell("handle_openat_enter_twin", "load")[1].startswith("left out by the loader"), where
        assert cell("on_unlinkat", "load")[0] == "pass", where
        assert cell("on_unlinkat", "attach") == ("skip", "loaded but left unattached by my-loader.py"), where
