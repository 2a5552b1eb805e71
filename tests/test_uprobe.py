"""Tests for checks.uprobe: targets, symbols, inlining and GCC clones in ELF files built by gcc here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tools import needs

from harness.checks import uprobe
from harness.checks.uprobe import (
    Inlining,
    UprobeTarget,
    build_user_samples,
    check_uprobe,
    compile_argv,
    judge_target,
    load_elf_functions,
    load_inlining,
    parse_recipes,
    parse_uprobe_target,
    resolve_binary,
    resolve_in_root,
)
from harness.errors import BuildError
from harness.kernels.config import ARCHES
from harness.report.results import Check, Outcome, Probe

X86 = ARCHES["x86_64"]
PROGS = Path(__file__).parent.parent / "bpf_progs"

pytestmark = needs("gcc")

DEMO = """
static int compute(int x) { return x * 3 + 1; }
int main(int argc, char **argv) { int s = 0; for (int i = 0; i < argc; i++) s += compute(i); return s; }
"""

GLOBAL = """
int compute(int x) { return x * 3 + 1; }
int main(int argc, char **argv) { int s = 0; for (int i = 0; i < argc; i++) s += compute(i); return s; }
"""

SPLIT = """
#include <stdio.h>
#include <string.h>
static char table[64][32];
static int lookup(const char *key)
{
	if (key == NULL || key[0] == '\\0')
		return -1;
	for (int i = 0; i < 64; i++) {
		if (strncmp(table[i], key, sizeof(table[i])) == 0)
			return i;
		if (table[i][0] == '\\0') {
			strncpy(table[i], key, sizeof(table[i]) - 1);
			snprintf(table[i] + 16, 16, "%d", i);
			return i;
		}
	}
	fprintf(stderr, "table full at %s\\n", key);
	return -2;
}
int main(int argc, char **argv)
{
	int t = 0;
	for (int i = 1; i < argc; i++)
		t += lookup(argv[i]);
	return t + lookup("") + lookup("a");
}
"""

# v2 grows `head`, so v1's offset of `work` lands inside `head`.
LIB = """
__attribute__((noinline)) int head(int x)
{
#ifdef V2
	for (int i = 0; i < 7; i++)
		x = x * 31 + i;
#endif
	return x + 1;
}
__attribute__((noinline)) int work(int x) { return head(x) * 7; }
"""


def gcc(tmp: Path, name: str, text: str, *flags: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(text)
    out = tmp / name
    subprocess.run(["gcc", *flags, str(src), "-o", str(out)], check=True, timeout=60, capture_output=True)
    return out


def nm_value(path: Path, name: str) -> int | None:
    proc = subprocess.run(["nm", str(path)], check=True, timeout=30, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    return None


def judge(path: Path, target: str) -> tuple[Outcome, str, dict[str, object]]:
    parsed = parse_uprobe_target(target)
    assert parsed is not None
    inline = load_inlining(path, parsed.function) if parsed.function else Inlining(known=False)
    verdict = judge_target(parsed, load_elf_functions(path), inline, "/bin/x")
    return verdict.outcome, verdict.reason, verdict.details


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/usr/bin/x:main", UprobeTarget("/usr/bin/x", "main", 0)),
        ("/mnt/user/demo_O0:compute", UprobeTarget("/mnt/user/demo_O0", "compute", 0)),
        ("/lib/libc.so.6:malloc+0x10", UprobeTarget("/lib/libc.so.6", "malloc", 0x10)),
        ("/x:lookup.part.0", UprobeTarget("/x", "lookup.part.0", 0)),
        ("libc.so.6:0x1234", UprobeTarget("libc.so.6", "", 0x1234)),
        ("/x:4096", UprobeTarget("/x", "", 4096)),
        ("/x:f+bad", UprobeTarget("/x", "f+bad", 0)),
    ],
)
def test_parse_uprobe_target(text: str, expected: UprobeTarget) -> None:
    assert parse_uprobe_target(text) == expected


@pytest.mark.parametrize("text", ["", "/x", "/x:", ":f"])
def test_parse_uprobe_target_without_target(text: str) -> None:
    assert parse_uprobe_target(text) is None


def test_out_of_line_function_passes_with_its_file_offset(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "demo", DEMO, "-g", "-O0")
    outcome, reason, details = judge(binary, "/bin/x:compute")
    value = nm_value(binary, "compute")
    assert value is not None
    # A PIE's text is loaded at its file offset: the symbol's value is the uprobe offset.
    assert (outcome, details["offset"], details["inlined"]) == (Outcome.PASS, value, "no")
    assert reason == f"`compute` at {value:#x}"


def test_inlined_everywhere_fails_before_any_boot(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "demo", DEMO, "-g", "-O2")
    assert nm_value(binary, "compute") is None
    outcome, reason, details = judge(binary, "/bin/x:compute")
    assert outcome == Outcome.FAIL
    assert reason == (
        "`compute` is inlined into its callers in /bin/x: the probe never fires; attach to the caller "
        "at an offset, or build with __attribute__((noinline))"
    )
    assert details["inlined"] == "yes" and details["inlined_into"] == ["main"]


def test_inlined_without_dwarf_could_not_tell(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "demo", DEMO, "-O2")
    outcome, reason, details = judge(binary, "/bin/x:compute")
    assert outcome == Outcome.FAIL and details["inlined"] == "unknown"
    assert "without DWARF it could not be told whether it was inlined" in reason


def test_stripped_binary_says_so(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "demo", DEMO, "-O0", "-s")
    outcome, reason, details = judge(binary, "/bin/x:compute")
    assert outcome == Outcome.FAIL and details["symtab"] is False
    assert "stripped" in reason


def test_global_function_also_inlined_into_callers(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "glob", GLOBAL, "-g", "-O2")
    outcome, reason, details = judge(binary, "/bin/x:compute")
    assert outcome == Outcome.PASS and details["inlined"] == "yes"
    assert "also inlined into `main`: calls from there do not hit the probe" in reason


def test_partial_inlining_names_the_part_clone(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "split", SPLIT, "-g", "-O2")
    part = nm_value(binary, "lookup.part.0")
    assert part is not None and nm_value(binary, "lookup") is None, "gcc did not split lookup"
    outcome, reason, details = judge(binary, "/bin/x:lookup")
    assert outcome == Outcome.FAIL and details["clones"] == ["lookup.part.0"]
    assert "its body is `lookup.part.0`; target `lookup.part.0`" in reason
    outcome, reason, details = judge(binary, "/bin/x:lookup.part.0")
    assert (outcome, details["offset"]) == (Outcome.PASS, part)


def test_offset_past_the_function_fails(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "demo", DEMO, "-g", "-O0")
    size = load_elf_functions(binary).named("compute")[0].size
    assert judge(binary, f"/bin/x:compute+{size - 1:#x}")[0] == Outcome.PASS
    outcome, reason, _ = judge(binary, f"/bin/x:compute+{size:#x}")
    assert outcome == Outcome.FAIL and "past the end of `compute`" in reason


def test_raw_offset_that_moved_names_the_function_now_there(tmp_path: Path) -> None:
    v1 = gcc(tmp_path, "libv1.so", LIB, "-g", "-O2", "-shared", "-fPIC")
    v2 = gcc(tmp_path, "libv2.so", LIB, "-g", "-O2", "-shared", "-fPIC", "-DV2")
    work_v1 = load_elf_functions(v1).named("work")[0].offset
    head_v2 = load_elf_functions(v2).named("head")[0]
    assert head_v2.offset < work_v1 < head_v2.offset + head_v2.size, "v2's head does not cover v1's work"
    start = f"offset {work_v1:#x} is the start of `work`"
    assert judge(v1, f"/bin/x:{work_v1:#x}")[:2] == (Outcome.PASS, start)
    outcome, reason, details = judge(v2, f"/bin/x:{work_v1:#x}")
    assert outcome == Outcome.FAIL and details["function"] == "head"
    assert reason.startswith(f"offset {work_v1:#x} is `head`+{work_v1 - head_v2.offset:#x} in /bin/x")
    outcome, reason, _ = judge(v2, "/bin/x:0x1")
    assert outcome == Outcome.FAIL and "in no function" in reason


def test_resolve_in_root_keeps_absolute_links_inside(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libz.so.1.3").write_bytes(b"\x7fELF")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr" / "lib" / "libz.so.1").symlink_to("/usr/lib/libz.so.1.3")
    assert resolve_in_root(tmp_path, "/lib/libz.so.1") == tmp_path / "usr" / "lib" / "libz.so.1.3"
    found, why = resolve_binary(UprobeTarget("libz.so.1", "f"), tmp_path, None)
    assert (found, why) == (tmp_path / "usr" / "lib" / "libz.so.1.3", "")
    found, why = resolve_binary(UprobeTarget("/usr/bin/nope", "f"), tmp_path, None)
    assert found is None and why == "/usr/bin/nope does not exist in the guest"


def test_samples_map_under_mnt_user() -> None:
    samples = {"demo_O0": Path("/cache/demo_O0")}
    found = resolve_binary(UprobeTarget("/mnt/user/demo_O0", "f"), Path("/"), samples)
    assert found == (samples["demo_O0"], "")
    found, why = resolve_binary(UprobeTarget("/mnt/user/other", "f"), Path("/"), samples)
    assert found is None and "not one of the samples of bpf_progs/user/ (built: demo_O0)" in why
    found, why = resolve_binary(UprobeTarget("/mnt/objs/x", "f"), Path("/"), samples)
    assert found is None and "shared directory" in why


def test_parse_recipes_and_compile_argv(tmp_path: Path) -> None:
    src = tmp_path / "app.c"
    recipes = parse_recipes("// build: libapp -O2 -L{out} -ldemo -Wl,-rpath,/mnt/user\nint x;\n", src)
    flags = ("-O2", "-L{out}", "-ldemo", "-Wl,-rpath,/mnt/user")
    assert [(r.output, r.flags) for r in recipes] == [("libapp", flags)]
    argv = compile_argv(recipes[0], Path("/o"), "gcc")
    assert argv == ["gcc", "-g", "-O2", "-L/o", "-Wl,-rpath,/mnt/user", str(src), "-o", "/o/libapp", "-ldemo"]
    assert [r.output for r in parse_recipes("int main;\n", src)] == ["app"]


def test_check_uprobe_on_the_shipped_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache root is handed in: the environment's is never consulted.
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("BPF_MATRIX_CACHE", str(elsewhere))
    samples = build_user_samples(PROGS, X86, tmp_path)
    assert {"demo_O0", "demo_O2", "split_O2", "libdemo.so", "libdemo.v2.so", "libapp"} <= set(samples)
    assert build_user_samples(PROGS, X86, tmp_path) == samples  # cached: same paths, no rebuild

    def check(program: str, target: str) -> tuple[Outcome, str]:
        probe = Probe("uprobe_demo", program, f"uprobe/{target}", "uprobe", target)
        res = check_uprobe(probe, "6.1", X86, Path("/"), PROGS, tmp_path)
        assert res is not None and res.check == Check.UPROBE
        return res.outcome, res.reason

    assert check("p", "/mnt/user/demo_O0:compute")[0] == Outcome.PASS
    outcome, reason = check("p", "/mnt/user/demo_O2:compute")
    assert outcome == Outcome.FAIL
    assert reason.startswith("`compute` is inlined into its callers in /mnt/user/demo_O2")
    outcome, reason = check("p", "/mnt/user/split_O2:lookup")
    assert outcome == Outcome.FAIL and "target `lookup.part.0`" in reason
    assert check("p", "/mnt/user/nothere:f")[0] == Outcome.FAIL
    kprobe = Probe("o", "p", "kprobe/vfs_read", "kprobe", "vfs_read")
    assert check_uprobe(kprobe, "6.1", X86, Path("/"), PROGS, tmp_path) is None
    bare = Probe("o", "p", "uprobe", "uprobe", "")
    res = check_uprobe(bare, "6.1", X86, Path("/"), PROGS, tmp_path)
    assert res is not None and res.outcome == Outcome.SKIP
    assert not elsewhere.exists()


def test_binaries_are_read_once_until_rebuilt(tmp_path: Path) -> None:
    binary = gcc(tmp_path, "demo", DEMO, "-g", "-O0")
    first = load_elf_functions(binary)
    assert load_elf_functions(binary) is first
    inlining = load_inlining(binary, "compute")
    assert load_inlining(binary, "compute") is inlining and not inlining.inlined_into
    # The same path rebuilt (other size and mtime): read again.
    gcc(tmp_path, "demo", DEMO, "-g", "-O2")
    assert load_elf_functions(binary) is not first
    assert not load_elf_functions(binary).named("compute")
    assert load_inlining(binary, "compute").inlined_into == ("main",)


# --- a failed or interrupted sample build leaves nothing in the cache -------------------------------


def _sample_progs(tmp_path: Path, bad: bool = True) -> Path:
    """A bpf_progs/ whose user/ has a good sample, and one that does not compile when ``bad``."""
    progs = tmp_path / "progs"
    (progs / "user").mkdir(parents=True)
    (progs / "user" / "good.c").write_text("int main(void) { return 0; }\n")
    (progs / "user" / "other.c").write_text("int main(void) { return 0; }\n")
    if bad:
        (progs / "user" / "bad.c").write_text("int main(void) { return undeclared; }\n")
    return progs


def _cache_leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if "tmp" in p.name)


def test_sample_that_does_not_compile_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(BuildError, match=r"bad\.c: bad does not build: .*undeclared"):
        build_user_samples(_sample_progs(tmp_path), X86, cache)
    assert _cache_leftovers(cache) == []
    arch_dir = cache / "user-bin" / X86.name
    assert [p.suffix for p in arch_dir.iterdir()] == [".lock"]  # no entry, complete or not


def test_interrupted_sample_build_leaves_nothing_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    real_run = subprocess.run

    def interrupted(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        out = Path(argv[argv.index("-o") + 1])
        if out.name == "other":  # after good: a built sample is in the temp
            out.write_bytes(b"\x7fELF half a binary")
            raise KeyboardInterrupt
        return real_run(argv, **kwargs)

    monkeypatch.setattr(uprobe.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_user_samples(_sample_progs(tmp_path, bad=False), X86, cache)
    assert _cache_leftovers(cache) == []


KILLED_BUILDER = """
import os, signal, sys
from pathlib import Path
import harness.checks.uprobe as uprobe
from harness.kernels.config import ARCHES

def killed(argv, **kwargs):
    out = Path(argv[argv.index("-o") + 1])
    out.write_bytes(b"half a binary")
    os.kill(os.getpid(), signal.SIGKILL)  # no finally, no handler: as the OOM killer or kill -9

uprobe.subprocess.run = killed
uprobe.build_user_samples(Path(sys.argv[1]), ARCHES["x86_64"], Path(sys.argv[2]))
"""


def test_builder_killed_mid_build_leaves_a_temp_the_next_build_clears(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    progs = _sample_progs(tmp_path, bad=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_BUILDER, str(progs), str(cache)], env=env, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    assert len(_cache_leftovers(cache)) == 1  # what a killed builder leaves behind
    samples = build_user_samples(progs, X86, cache)
    assert _cache_leftovers(cache) == []
    assert subprocess.run([str(samples["good"])], timeout=10, check=False).returncode == 0
