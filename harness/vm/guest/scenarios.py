"""Guest scenario handlers (stdlib only, Python 3.9): run_<kind>(lb, scenario, share) -> record."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING or __package__:
    from . import protocol
else:
    import protocol  # in the guest: copied beside the agent

RUN_TIMEOUT = 60.0
ECHOED = ("v1_offset", "v2_offset", "stale", "library", "function")  # plan keys the host judges by


def echo(scenario: protocol.UpdateScenario) -> protocol.ScenarioEcho:
    """The plan's keys the host judges the scenario by (ECHOED), those the plan has."""
    source: dict[str, object] = dict(scenario)
    return cast(protocol.ScenarioEcho, {k: source[k] for k in ECHOED if k in source})


def _setup_uprobe_calls(lb: Any) -> None:
    """Argument types of bpf_program__attach_uprobe (libbpf 0.2+): prog, retprobe, pid, path, offset."""
    fn = lb.lib.bpf_program__attach_uprobe
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_bool, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]


def _run(trigger: protocol.Trigger, share: str, env_extra: dict[str, str]) -> protocol.RunRecord:
    """Run the scenario's trigger (an argv list or a shell command) with extra environment."""
    env = dict(os.environ)
    env.update(env_extra)
    argv = [str(a) for a in trigger] if isinstance(trigger, list) else ["/bin/sh", "-c", str(trigger)]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT, check=False, cwd=share, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"ok": False, "error": str(exc), "seconds": time.monotonic() - start}
    return {
        "ok": proc.returncode == 0,
        "returncode": proc.returncode,
        "output": (proc.stdout + proc.stderr).decode(errors="replace")[-500:],
        "seconds": time.monotonic() - start,
    }


def _open_one(lb: Any, path: str, program: str) -> tuple[int | None, int | None, str]:
    """Open ``path`` and load only ``program``: (object, program) or (None, None, why)."""
    with lb.capture():
        return _load_one(lb, path, program)


def _load_one(lb: Any, path: str, program: str) -> tuple[int | None, int | None, str]:
    lb.take_log()
    obj = lb.lib.bpf_object__open_file(path.encode(), None)
    err = lb.error_of(obj)
    if err:
        return None, None, f"open {path}: {os.strerror(err)}"
    found = None
    for prog in lb.programs(obj):
        name = lb.prog_name(prog)
        lb.lib.bpf_program__set_autoload(prog, name == program)
        if name == program:
            found = prog
    if found is None:
        lb.lib.bpf_object__close(obj)
        return None, None, f"program {program} not in {path}"
    rc = lb.lib.bpf_object__load(obj)
    if rc != 0:
        lb.lib.bpf_object__close(obj)
        return None, None, f"load {program}: {os.strerror(-rc)}"
    return obj, found, ""


def _attach(lb: Any, prog: int, path: str, offset: int) -> tuple[int | None, str]:
    with lb.capture():
        lb.take_log()
        link = lb.lib.bpf_program__attach_uprobe(prog, False, -1, path.encode(), offset)
        err = lb.error_of(link)
        log = lb.take_log().strip().splitlines()
    if err:
        last = f": {log[-1]}" if log else ""
        return None, f"attach at {offset:#x}: {os.strerror(err)}{last}"
    return int(link), ""


def _run_cnt(lb: Any, prog: int) -> int:
    info = lb.prog_info(lb.lib.bpf_program__fd(prog))
    return int(info.get("run_cnt", 0))


def _replace(lib: str, new: str, mode: str) -> None:
    """Put ``new`` in place of ``lib``: over the same inode (as ``cp`` does) or by rename (as dpkg does)."""
    if mode == "overwrite":
        with open(new, "rb") as fin, open(lib, "r+b") as fout:
            fout.truncate(0)
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
    elif mode == "rename":
        tmp = lib + ".dpkg-new"
        shutil.copyfile(new, tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, lib)
    else:
        raise ValueError(f"unknown replace mode {mode!r}")


def _update_once(lb: Any, scenario: protocol.UpdateScenario, share: str, mode: str) -> protocol.ModeRecord:
    program = str(scenario["program"])
    work = os.path.join(share, protocol.USER_DIR, f"update-{program}-{mode}")
    os.makedirs(work, exist_ok=True)
    lib = os.path.join(work, os.path.basename(str(scenario["library"])))
    shutil.copyfile(os.path.join(share, str(scenario["v1"])), lib)
    os.chmod(lib, 0o755)
    env = {"LD_LIBRARY_PATH": work}
    trigger = scenario["trigger"]
    rec: protocol.ModeRecord = {"mode": mode, "library": lib}
    obj, prog, why = _open_one(lb, os.path.join(share, str(scenario["path"])), program)
    if obj is None or prog is None:
        rec["error"] = why
        return rec
    runs: list[protocol.RunRecord] = []
    rec["runs"] = runs
    link = None
    try:
        link, why = _attach(lb, prog, lib, int(scenario["v1_offset"]))
        if link is None:
            rec["error"] = why
            return rec
        before = _run_cnt(lb, prog)
        runs.append(_run(trigger, share, env))
        rec["v1"] = _run_cnt(lb, prog) - before
        rec["inode_before"] = os.stat(lib).st_ino
        _replace(lib, os.path.join(share, str(scenario["v2"])), mode)
        rec["inode_after"] = os.stat(lib).st_ino
        before = _run_cnt(lb, prog)
        runs.append(_run(trigger, share, env))
        rec["after_update"] = _run_cnt(lb, prog) - before
        lb.lib.bpf_link__destroy(link)
        link, why = _attach(lb, prog, lib, int(scenario["v2_offset"]))
        if link is None:
            rec["error"] = "re-" + why
            return rec
        before = _run_cnt(lb, prog)
        runs.append(_run(trigger, share, env))
        rec["after_reattach"] = _run_cnt(lb, prog) - before
    finally:
        if link is not None:
            lb.lib.bpf_link__destroy(link)
        lb.lib.bpf_object__close(obj)
    return rec


def run_uprobe_update(lb: Any, scenario: protocol.UpdateScenario, share: str) -> protocol.ScenarioRecord:
    """A uprobe attached by offset across a library update, once per replace mode.

    Per mode: attach at the v1 offset and run (fires), replace the library with v2 and run again
    (quiet: the offset is stale, or the probe stayed on the old inode), re-attach at v2's offset
    and run (fires again). Run counts are deltas of the program's run_cnt around each run.
    """
    modes: dict[str, protocol.ModeRecord] = {}
    rec: protocol.ScenarioRecord = {
        "kind": "uprobe_update",
        "object": scenario.get("object"),
        "program": scenario.get("program"),
        "modes": modes,
        # Echoed for the host, which judges the record without the plan.
        "plan": echo(scenario),
    }
    try:
        _setup_uprobe_calls(lb)
    except AttributeError as exc:
        rec["error"] = f"libbpf has no bpf_program__attach_uprobe: {exc}"
        return rec
    for mode in scenario.get("modes") or ["overwrite", "rename"]:
        try:
            modes[mode] = _update_once(lb, scenario, share, str(mode))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "error")
            modes[mode] = {"mode": mode, "error": f"{name}: {exc}"}
    return rec
