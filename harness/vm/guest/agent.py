"""The guest agent: runs in each VM (stdlib only), collects kernel facts, loads, attaches and fires BPF.

It reads the plan from the shared directory given as its only argument, writes its results as JSON
files there, and writes the completion record last: the host judges the boot by that record alone, never
by the console or by vng's exit status. The files and records are those of protocol.py beside this file.

Loading goes through libbpf itself (ctypes on the guest's libbpf.so), so each program gets its own load
result and log, attach result and run count: bpftool's ``loadall`` is all-or-nothing per object.

Under emulation every guest second counts, so the agent keeps its imports few (the rarely needed modules
are imported where used: ``ctypes.util`` alone costs half a second under TCG) and detaches one object's
programs in the background while the next object loads: detaching waits for RCU grace periods, not CPU.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import re
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import protocol
else:
    import protocol  # in the guest: copied beside the agent

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TRIGGER_TIMEOUT = 60.0


def format_exc() -> str:
    import traceback

    return traceback.format_exc()


write_json = protocol.write_json


def uptime() -> float | None:
    try:
        return float((read_text("/proc/uptime") or "").split()[0])
    except (IndexError, ValueError):
        return None


def read_text(path: str) -> str | None:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def copy_file(src: str, dst: str) -> bool:
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while True:
                chunk = fin.read(1 << 20)
                if not chunk:
                    break
                fout.write(chunk)
        return True
    except OSError:
        return False


def mount_fs(fstype: str, target: str) -> None:
    if os.path.ismount(target):
        return
    subprocess.run(["mount", "-t", fstype, fstype, target], capture_output=True, timeout=20, check=False)


def tracefs() -> str | None:
    for path in TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(path, "available_events")):
            return path
    try:
        mount_fs("tracefs", "/sys/kernel/tracing")
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists("/sys/kernel/tracing/available_events"):
        return "/sys/kernel/tracing"
    try:
        mount_fs("debugfs", "/sys/kernel/debug")
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists("/sys/kernel/debug/tracing/available_events"):
        return "/sys/kernel/debug/tracing"
    return None


def collect_facts(out: str) -> protocol.FactsSummary:
    """Write the kernel's facts into ``out`` (the layout harness.kernels.facts reads); return a summary."""
    os.makedirs(out, exist_ok=True)
    uname = os.uname()
    record: protocol.UnameRecord = {
        "release": uname.release, "machine": uname.machine, "version": uname.version,
    }
    write_json(os.path.join(out, protocol.UNAME_FILE), record)
    have: protocol.FactsSummary = {}
    have["kallsyms"] = copy_file("/proc/kallsyms", os.path.join(out, protocol.KALLSYMS_FILE))
    have["btf"] = copy_file("/sys/kernel/btf/vmlinux", os.path.join(out, protocol.BTF_FILE))
    lsm = read_text("/sys/kernel/security/lsm")
    if lsm is None:
        mount_fs("securityfs", "/sys/kernel/security")
        lsm = read_text("/sys/kernel/security/lsm")
    if lsm is not None:
        with open(os.path.join(out, protocol.LSM_FILE), "w") as fh:
            fh.write(lsm)
    have["lsm"] = lsm
    config = None
    try:
        import gzip

        with gzip.open("/proc/config.gz", "rt") as fh:
            config = fh.read()
    except OSError:
        config = read_text("/boot/config-" + uname.release)
    if config is not None:
        with open(os.path.join(out, protocol.CONFIG_FILE), "w") as fh:
            fh.write(config)
    have["config"] = config is not None
    tfs = tracefs()
    have["tracefs"] = tfs
    if tfs:
        functions, events = protocol.FILTER_FUNCTIONS_FILE, protocol.EVENTS_FILE
        have["available_filter_functions"] = copy_file(
            os.path.join(tfs, functions), os.path.join(out, functions)
        )
        have["available_events"] = copy_file(os.path.join(tfs, events), os.path.join(out, events))
        formats: dict[str, str] = {}
        events_dir = os.path.join(tfs, "events")
        for line in (read_text(os.path.join(tfs, events)) or "").splitlines():
            cat, _, name = line.strip().partition(":")
            if not name:
                continue
            text = read_text(os.path.join(events_dir, cat, name, "format"))
            if text is not None:
                formats[cat + "/" + name] = text
        write_json(os.path.join(out, protocol.FORMATS_FILE), formats)
        have["tracepoint_formats"] = len(formats)
    return have


# ---------------------------------------------------------------------------------------------------
# libbpf through ctypes

PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to recursion_misses (include/uapi/linux/bpf.h; fields only append)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),  # since 5.12
    ]


# struct bpf_link_info: type, id, prog_id, then a union aligned to 8. For perf-event links
# (BPF_LINK_TYPE_PERF_EVENT, 6.6+ for the info), the kprobe's `missed` sits at byte 48 (6.7+);
# for kprobe_multi links (BPF_LINK_TYPE_KPROBE_MULTI) `missed` sits at byte 32 (6.9+).
LINK_TYPE_KPROBE_MULTI = 8
LINK_TYPE_PERF_EVENT = 7
PERF_EVENT_TYPE_KPROBE = 2
PERF_EVENT_TYPE_KRETPROBE = 3


class Libbpf:
    """The few libbpf calls the agent needs, with its log captured per operation."""

    def __init__(self) -> None:
        self.lib, self.path = self._open()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        self.libc.vsnprintf.restype = ctypes.c_int
        lib = self.lib
        lib.bpf_object__open_file.restype = ctypes.c_void_p
        lib.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        lib.bpf_object__next_program.restype = ctypes.c_void_p
        lib.bpf_object__next_program.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_program__name.restype = ctypes.c_char_p
        lib.bpf_program__name.argtypes = [ctypes.c_void_p]
        lib.bpf_program__section_name.restype = ctypes.c_char_p
        lib.bpf_program__section_name.argtypes = [ctypes.c_void_p]
        lib.bpf_program__set_autoload.restype = ctypes.c_int
        lib.bpf_program__set_autoload.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.bpf_object__load.restype = ctypes.c_int
        lib.bpf_object__load.argtypes = [ctypes.c_void_p]
        lib.bpf_object__close.restype = None
        lib.bpf_object__close.argtypes = [ctypes.c_void_p]
        lib.bpf_program__fd.restype = ctypes.c_int
        lib.bpf_program__fd.argtypes = [ctypes.c_void_p]
        lib.bpf_program__attach.restype = ctypes.c_void_p
        lib.bpf_program__attach.argtypes = [ctypes.c_void_p]
        lib.bpf_link__fd.restype = ctypes.c_int
        lib.bpf_link__fd.argtypes = [ctypes.c_void_p]
        lib.bpf_link__destroy.restype = ctypes.c_int
        lib.bpf_link__destroy.argtypes = [ctypes.c_void_p]
        lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int
        lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        lib.libbpf_get_error.restype = ctypes.c_long
        lib.libbpf_get_error.argtypes = [ctypes.c_void_p]
        lib.libbpf_set_print.restype = ctypes.c_void_p
        lib.libbpf_set_print.argtypes = [PRINT_FN]
        self._log: dict[int, list[str]] = {}  # per thread: a background detach must not pollute a load's log
        self._lock = threading.Lock()
        self._printer = PRINT_FN(self._print)  # kept alive: libbpf holds the pointer
        lib.libbpf_set_print(self._printer)
        self.version = self._version()

    @staticmethod
    def _open() -> tuple[ctypes.CDLL, str]:
        """libbpf by its sonames first; ctypes.util.find_library (slow: it runs ldconfig) as a fallback."""
        last: Exception | None = None
        for cand in ("libbpf.so.1", "libbpf.so.0", "libbpf.so", None):
            if cand is None:
                from ctypes.util import find_library

                cand = find_library("bpf")
                if not cand:
                    break
            try:
                return ctypes.CDLL(cand, use_errno=True), cand
            except OSError as exc:
                last = exc
        raise RuntimeError(f"libbpf not found in the guest: {last or 'no libbpf.so'}")

    def _version(self) -> str:
        try:
            fn = self.lib.libbpf_version_string
        except AttributeError:
            return "unknown"
        fn.restype = ctypes.c_char_p
        value = fn()
        return value.decode() if value else "unknown"

    def _print(self, level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(8192)
        self.libc.vsnprintf(buf, len(buf), fmt, args)
        self.log(buf.value.decode(errors="replace"))
        return 0

    def log(self, text: str) -> None:
        with self._lock:
            self._log.setdefault(threading.get_ident(), []).append(text)

    def take_log(self) -> str:
        """What libbpf printed in this thread since the last call."""
        with self._lock:
            return "".join(self._log.pop(threading.get_ident(), []))

    def error_of(self, ptr: int | None) -> int:
        """The errno of a failed constructor: NULL with errno (libbpf 1.x) or an ERR_PTR (0.x)."""
        if not ptr:
            return ctypes.get_errno() or errno.EINVAL
        err = self.lib.libbpf_get_error(ptr)
        return -err if err else 0

    def programs(self, obj: int) -> list[int]:
        progs: list[int] = []
        prog = self.lib.bpf_object__next_program(obj, None)
        while prog:
            progs.append(prog)
            prog = self.lib.bpf_object__next_program(obj, prog)
        return progs

    def prog_name(self, prog: int) -> str:
        value = self.lib.bpf_program__name(prog)
        return value.decode() if value else "?"

    def prog_info(self, fd: int) -> protocol.FireRecord:
        info = BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
            return {"error": os.strerror(ctypes.get_errno() or errno.EINVAL)}
        out: protocol.FireRecord = {"id": info.id, "run_cnt": info.run_cnt, "run_time_ns": info.run_time_ns}
        # The kernel reports how much of the struct it knows; older kernels have no recursion_misses.
        if size.value >= BpfProgInfo.recursion_misses.offset + 8:
            out["recursion_misses"] = info.recursion_misses
        return out

    def link_missed(self, link_fd: int, kernel: tuple[int, int]) -> int | None:
        """The kprobe's missed count from its link, where the kernel reports it (6.7+), else None."""
        buf = (ctypes.c_uint64 * 32)()
        size = ctypes.c_uint32(ctypes.sizeof(buf))
        if self.lib.bpf_obj_get_info_by_fd(link_fd, ctypes.byref(buf), ctypes.byref(size)) != 0:
            return None
        raw = bytes(buf)
        link_type = int.from_bytes(raw[0:4], sys.byteorder)
        if link_type == LINK_TYPE_PERF_EVENT and kernel >= (6, 7):
            pe_type = int.from_bytes(raw[16:20], sys.byteorder)
            if pe_type in (PERF_EVENT_TYPE_KPROBE, PERF_EVENT_TYPE_KRETPROBE):
                return int.from_bytes(raw[48:56], sys.byteorder)
        if link_type == LINK_TYPE_KPROBE_MULTI and kernel >= (6, 9):
            return int.from_bytes(raw[32:40], sys.byteorder)
        return None


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a ``uname -r`` ("6.12-rc3" is 6.12); (0, 0) when it cannot be read."""
    try:
        from version import KernelVersion  # type: ignore[import-not-found]  # copied beside the agent
    except ImportError:
        if not __package__:
            return (0, 0)  # a lone agent: no feature gate opens
        from ...kernels.version import KernelVersion  # the agent imported from its package (host tests)
    parsed = KernelVersion.parse(release)
    return parsed.major_minor if parsed is not None else (0, 0)


# ---------------------------------------------------------------------------------------------------
# Workloads that make probes fire


def default_workload(share: str) -> None:
    """Exercise the usual hooks: files (open, write, rename, unlink), exec, a loopback TCP connection,
    and direct block I/O on the scratch disk when there is one."""
    import socket  # here, not at the top: only this workload needs it

    tmp = f"/tmp/bpfmatrix-{os.getpid()}"  # not tempfile: importing it reads a dozen modules over 9p
    os.makedirs(tmp, exist_ok=True)
    try:
        # Once each: a probe either fires on these or not at all (a run count of 1 is a pass), and under
        # emulation every fsync and exec costs tens of milliseconds.
        path = os.path.join(tmp, "f")
        with open(path, "w") as fh:
            fh.write("x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        with open(path) as fh:
            fh.read()
        os.rename(path, path + ".2")
        os.unlink(path + ".2")
        os.mkdir(os.path.join(tmp, "d"))
        os.rmdir(os.path.join(tmp, "d"))
    finally:
        for name in ("f", "f.2", "d"):
            path = os.path.join(tmp, name)
            if os.path.isdir(path):
                os.rmdir(path)
            elif os.path.exists(path):
                os.unlink(path)
        os.rmdir(tmp)
    subprocess.run(["/bin/true"], check=False, timeout=20)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        client.sendall(b"ping")
        conn.recv(4)
        conn.close()
        client.close()
    except OSError:
        pass
    finally:
        server.close()
    os.getpid()
    block_io()


def scratch_disk() -> None:
    """Make the scratch disk appear: guests without udev do not load virtio_blk by themselves."""
    if os.path.exists("/dev/vda"):
        return
    try:
        subprocess.run(["modprobe", "virtio_blk"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return
    deadline = time.monotonic() + 5
    while not os.path.exists("/dev/vda") and time.monotonic() < deadline:
        time.sleep(0.1)


def block_io() -> None:
    """Read the scratch disk with O_DIRECT so the request reaches the block layer."""
    scratch_disk()
    for dev in ("/dev/vda", "/dev/sda"):
        if not os.path.exists(dev):
            continue
        try:
            fd = os.open(dev, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        except OSError:
            continue
        try:
            import mmap

            buf = mmap.mmap(-1, 4096)
            for i in range(8):
                os.preadv(fd, [buf], i * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        return


def run_trigger(trigger: protocol.Trigger | None, share: str) -> protocol.TriggerRun:
    """Run one trigger: "default", an argv list, or a shell command string (the user's own, in the guest)."""
    start = time.monotonic()
    try:
        if trigger is None or trigger == "default":
            default_workload(share)
            return {"trigger": "default", "ok": True, "seconds": time.monotonic() - start}
        if isinstance(trigger, list):
            argv = [str(a) for a in trigger]
        else:
            argv = ["/bin/sh", "-c", str(trigger)]
        proc = subprocess.run(
            argv, capture_output=True, timeout=TRIGGER_TIMEOUT, check=False, cwd=share
        )
        return {
            "trigger": trigger,
            "ok": proc.returncode == 0,
            "returncode": proc.returncode,
            "output": (proc.stdout + proc.stderr).decode(errors="replace")[-2000:],
            "seconds": time.monotonic() - start,
        }
    except (OSError, subprocess.SubprocessError) as exc:
        return {"trigger": trigger, "ok": False, "error": str(exc), "seconds": time.monotonic() - start}


# ---------------------------------------------------------------------------------------------------
# One object: load (whole, then without each program the kernel rejects), attach each, trigger, count


def load_object(
    lb: Libbpf, path: str, only: list[str] | None
) -> tuple[int | None, protocol.LoadRecord]:
    """Open ``path`` and load it (just the programs ``only`` when given). Returns (object or None, record)."""
    lb.take_log()
    obj = lb.lib.bpf_object__open_file(path.encode(), None)
    err = lb.error_of(obj)
    if err:
        return None, {"stage": "open", "ok": False, "errno": err, "error": os.strerror(err),
                      "log": lb.take_log()}
    names = []
    for prog in lb.programs(obj):
        name = lb.prog_name(prog)
        names.append(name)
        if only is not None:
            lb.lib.bpf_program__set_autoload(prog, name in only)
    rc = lb.lib.bpf_object__load(obj)
    record: protocol.LoadRecord = {"stage": "load", "ok": rc == 0, "programs": names, "log": lb.take_log()}
    if rc != 0:
        record["errno"] = -rc
        record["error"] = os.strerror(-rc)
        lb.lib.bpf_object__close(obj)
        return None, record
    return obj, record


REJECTED = re.compile(r"prog '([^']+)': (?:failed to load|BPF program load failed)")


def rejected_program(log: str, candidates: list[str]) -> str | None:
    """The program libbpf names as the one that failed a load (the last it names), if among candidates."""
    named = [m.group(1) for m in REJECTED.finditer(log)]
    return named[-1] if named and named[-1] in candidates else None


class Detacher:
    """Destroys links and closes objects in a background thread.

    The kernel's side of a detach mostly waits for RCU grace periods (measured under TCG: ~0.1 s per
    object, nearly all of it asleep), which the next object's load and attach overlap. ``wait`` is
    called before any trigger runs, so no other object's programs are attached while one object fires.
    """

    def __init__(self, lb: Libbpf) -> None:
        self.lb = lb
        self.pending: queue.Queue[tuple[list[int], list[int]]] = queue.Queue()
        self.thread: threading.Thread | None = None

    def submit(self, links: list[int], objects: list[int]) -> None:
        if not links and not objects:
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="detach", daemon=True)
            self.thread.start()
        self.pending.put((links, objects))

    def wait(self) -> float:
        """Block until everything submitted is detached and closed; returns the seconds waited."""
        start = time.monotonic()
        self.pending.join()
        return time.monotonic() - start

    def _run(self) -> None:
        while True:
            links, objects = self.pending.get()
            try:
                for link in links:
                    self.lb.lib.bpf_link__destroy(link)
                for obj in objects:
                    self.lb.lib.bpf_object__close(obj)
                self.lb.take_log()  # whatever libbpf said while detaching belongs to no load
            finally:
                self.pending.task_done()


def run_object(
    lb: Libbpf, spec: protocol.PlanObject, share: str, detacher: Detacher
) -> protocol.ObjectRecord:
    """Load, attach, trigger and count the programs of one object of the plan."""
    path = os.path.join(share, str(spec["path"]))
    triggers = spec.get("triggers") or {}
    assert isinstance(triggers, dict)
    programs: dict[str, protocol.ProgramRecord] = {}
    result: protocol.ObjectRecord = {"object": spec["name"], "programs": programs}
    start = time.monotonic()
    obj, whole = load_object(lb, path, None)
    result["whole_load"] = whole
    if whole.get("stage") == "open":
        result["error"] = "libbpf could not open the object: {}".format(whole.get("error"))
        return result
    if obj is not None:
        loaded: list[tuple[int, str, int]] = []
        for prog in lb.programs(obj):
            name = lb.prog_name(prog)
            programs[name] = {"load": {"ok": True, "seconds": time.monotonic() - start}}
            loaded.append((obj, name, prog))
        objects = [obj]
        result["load_log"] = whole["log"]
    else:
        loaded, objects = load_without_rejected(lb, path, whole, start, programs)
    phases: protocol.Phases = {"load": time.monotonic() - start}
    result["phases"] = phases
    mark = time.monotonic()
    links = attach_programs(lb, loaded, programs)
    phases["attach"] = time.monotonic() - mark
    if links:
        phases["wait_detach"] = detacher.wait()  # the previous object's programs are gone before ours fire
        mark = time.monotonic()
        result["triggers"] = fire_programs(lb, loaded, links, triggers, share, programs)
        phases["trigger"] = time.monotonic() - mark
    detacher.submit(list(links.values()), objects)
    result["seconds"] = time.monotonic() - start
    return result


def load_without_rejected(
    lb: Libbpf,
    path: str,
    whole: protocol.LoadRecord,
    start: float,
    programs: dict[str, protocol.ProgramRecord],
) -> tuple[list[tuple[int, str, int]], list[int]]:
    """Load an object the kernel rejected as a whole without its rejected programs.

    Fills ``programs`` with each program's load record; returns the loaded (object, program name,
    program pointer) and the objects to close.
    """
    # One rejected program fails the whole object. libbpf names it: record its failure and load the
    # others without it, once per rejected program (not once per program: each load re-reads the
    # kernel's BTF). Programs libbpf does not tell apart are then loaded one at a time.
    loaded: list[tuple[int, str, int]] = []
    objects: list[int] = []
    names = whole.get("programs")
    pending = [str(n) for n in names] if isinstance(names, list) else []
    attempt, t0 = whole, start
    while pending:
        culprit = rejected_program(str(attempt.get("log", "")), pending)
        if culprit is None:
            break
        failed = attempt.copy()
        failed["seconds"] = time.monotonic() - t0
        programs[culprit] = {"load": failed}
        pending.remove(culprit)
        if not pending:
            break
        t0 = time.monotonic()
        rest, attempt = load_object(lb, path, pending)
        if rest is not None:
            objects.append(rest)
            for prog in lb.programs(rest):
                name = lb.prog_name(prog)
                if name in pending:
                    programs[name] = {"load": {"ok": True, "seconds": time.monotonic() - t0,
                                               "log": attempt["log"]}}
                    loaded.append((rest, name, prog))
            pending = []
    for name in pending:
        t0 = time.monotonic()
        one, rec = load_object(lb, path, [name])
        rec["seconds"] = time.monotonic() - t0
        programs[name] = {"load": rec}
        if one is not None:
            objects.append(one)
            for prog in lb.programs(one):
                if lb.prog_name(prog) == name:
                    loaded.append((one, name, prog))
    return loaded, objects


def attach_programs(
    lb: Libbpf, loaded: list[tuple[int, str, int]], programs: dict[str, protocol.ProgramRecord]
) -> dict[str, int]:
    """Attach each loaded program, recording the outcome in ``programs``; returns the links by name."""
    links: dict[str, int] = {}
    for _obj, name, prog in loaded:
        lb.take_log()
        link = lb.lib.bpf_program__attach(prog)
        err = lb.error_of(link)
        attach: protocol.AttachRecord = {"ok": not err, "log": lb.take_log()}
        if err:
            attach["errno"] = err
            attach["error"] = os.strerror(err)
        else:
            links[name] = int(link)
        programs[name]["attach"] = attach
    return links


def fire_programs(
    lb: Libbpf,
    loaded: list[tuple[int, str, int]],
    links: dict[str, int],
    triggers: dict[str, protocol.Trigger],
    share: str,
    programs: dict[str, protocol.ProgramRecord],
) -> list[protocol.TriggerRun]:
    """Run each distinct trigger of the attached programs once, then record their counters."""
    ran: list[protocol.TriggerRun] = []
    wanted = [triggers.get(name, "default") for name in links]
    seen: list[protocol.Trigger] = []
    for trig in wanted:
        if trig not in seen:
            seen.append(trig)
            ran.append(run_trigger(trig, share))
    kver = kernel_version(os.uname().release)
    for _obj, name, prog in loaded:
        if name not in links:
            continue
        info = lb.prog_info(lb.lib.bpf_program__fd(prog))
        missed = lb.link_missed(lb.lib.bpf_link__fd(links[name]), kver)
        if missed is not None:
            info["kprobe_missed"] = missed
        info["trigger"] = triggers.get(name, "default")
        programs[name]["fire"] = info
    return ran


def run_own_loader(
    lb: Libbpf, spec: protocol.PlanObject, share: str, detacher: Detacher
) -> protocol.ObjectRecord:
    """Run the object's own loader instead of loading it (ownloader.py beside this file)."""
    try:
        if TYPE_CHECKING or __package__:
            from . import ownloader
        else:
            import ownloader  # copied beside the agent
    except ImportError as exc:
        return {"object": spec["name"], "error": f"no own-loader support in the guest: {exc}"}
    detacher.wait()  # the previous object's programs are gone: they are not the loader's
    try:
        view = ownloader.KernelView(lb.lib, BpfProgInfo)
    except AttributeError as exc:
        return {"object": spec["name"], "error": f"libbpf {lb.version} cannot list programs: {exc}"}
    return ownloader.run_loader_object(view, spec, share, run_trigger)


def run_scenarios(
    lb: Libbpf, scenarios: list[protocol.UpdateScenario], share: str
) -> list[protocol.ScenarioRecord]:
    """Run each scenario with the handler of its kind from scenarios.py beside this file."""
    try:
        if TYPE_CHECKING or __package__:
            from . import scenarios as handlers
        else:
            import scenarios as handlers  # copied beside the agent
    except ImportError as exc:
        return [{"kind": s.get("kind"), "error": f"no scenario handlers: {exc}"} for s in scenarios]
    out: list[protocol.ScenarioRecord] = []
    for scenario in scenarios:
        handler = getattr(handlers, "run_" + str(scenario.get("kind")), None)
        if handler is None:
            out.append({"kind": scenario.get("kind"), "error": "unknown scenario kind"})
            continue
        try:
            out.append(handler(lb, scenario, share))
        except Exception as exc:
            out.append({"kind": scenario.get("kind"), "error": f"scenario crashed: {exc!r}",
                        "traceback": format_exc()})
    return out


def enable_stats() -> bool:
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as fh:
            fh.write("1")
        return True
    except OSError:
        return False


def run_plan_objects(plan: protocol.Plan, share: str, done: protocol.DoneRecord) -> None:
    """Load, attach and fire the plan's objects, then run its scenarios; timings and libbpf go in ``done``."""
    scratch_disk()
    done["stats_enabled"] = enable_stats()
    try:
        lb = Libbpf()
    except (RuntimeError, AttributeError) as exc:
        done["loader_error"] = str(exc)
        return
    done["libbpf"] = lb.version
    t0 = time.monotonic()
    detacher = Detacher(lb)
    results: list[protocol.ObjectRecord] = []
    for spec in plan.get("objects") or []:
        try:
            run = run_own_loader if spec.get("loader") else run_object
            results.append(run(lb, spec, share, detacher))
        except Exception as exc:  # one object's crash must not lose the others
            results.append({"object": str(spec.get("name")), "error": f"agent crashed: {exc!r}",
                            "traceback": format_exc()})
    protocol.write_objects(share, results)
    detacher.wait()
    done["objects_seconds"] = time.monotonic() - t0
    scenarios = plan.get("scenarios") or []
    if scenarios:
        t0 = time.monotonic()
        protocol.write_scenarios(share, run_scenarios(lb, scenarios, share))
        done["scenarios_seconds"] = time.monotonic() - t0


def main(argv: list[str]) -> int:
    share = argv[1] if len(argv) > 1 else "/mnt"
    start = time.monotonic()
    uname = os.uname()
    done: protocol.DoneRecord = {
        "ok": False, "release": uname.release, "machine": uname.machine,
        "uptime_start": uptime(),  # how long the guest took to boot to the agent
    }
    try:
        plan = protocol.read_plan(share)
        if plan.get("facts"):
            t0 = time.monotonic()
            done["facts"] = collect_facts(os.path.join(share, protocol.FACTS_DIR))
            done["facts_seconds"] = time.monotonic() - t0
        lsm = read_text("/sys/kernel/security/lsm")
        if lsm is None:
            mount_fs("securityfs", "/sys/kernel/security")
            lsm = read_text("/sys/kernel/security/lsm")
        done["lsm"] = (lsm or "").strip()
        if plan.get("objects"):
            run_plan_objects(plan, share, done)
        done["ok"] = True
    except Exception as exc:
        done["error"] = f"{type(exc).__name__}: {exc}"
        done["traceback"] = format_exc()
    done["seconds"] = time.monotonic() - start
    protocol.write_done(share, done)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
