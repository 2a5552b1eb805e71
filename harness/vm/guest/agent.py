"""The guest agent: runs in each VM (stdlib only), collects kernel facts, loads, attaches and fires BPF.

It reads the plan from the shared directory given as its only argument, writes its results as JSON
files there, and writes the completion record last: the host judges the boot by that record alone, never
by the console or by vng's exit status. The files and records are those of protocol.py beside this file.

Loading goes through libbpf itself (ctypes on the guest's libbpf.so), so each program gets its own load
result and log, attach result and run count: bpftool's ``loadall`` is all-or-nothing per object.

Under emulation every guest second counts, so the agent keeps its imports few (the rarely needed modules
are imported where used: ``ctypes.util`` alone costs half a second under TCG), attaches and fires objects
in batches (one workload run for several objects; run_batch says what stays alone), and destroys one
batch's links in the background while the next batch loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import re
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING or __package__:
    from . import protocol
else:
    import protocol  # in the guest: copied beside the agent

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TRIGGER_TIMEOUT = 60.0
# Objects attached and fired together: one trigger run for all (their loads stay one after the other).
# Every object of a batch stays loaded until the batch is counted, which bounds the guest's memory.
BATCH_OBJECTS = 8
# bpftool's feature probe loads one tiny program per (program type, helper): about 6,000 loads, 1 s on
# a host, tens of seconds under emulation.
FEATURES_TIMEOUT = 300.0
BPFTOOL_CANDIDATES = ("/usr/sbin/bpftool", "/usr/bin/bpftool", "/sbin/bpftool")


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
    have["features"] = probe_features(out)
    return have


def probe_features(out: str) -> str | None:
    """Write bpftool's feature probe of the kernel into ``out``; None when done, else why not (which is
    written to FEATURES_ERROR_FILE instead, so that the host reads "could not tell")."""
    why = None
    tool = next((p for p in BPFTOOL_CANDIDATES if os.access(p, os.X_OK)), None)
    if tool is None:
        why = "bpftool not found in the guest"
    else:
        # "full": without it bpftool skips bpf_trace_printk and bpf_probe_write_user (they warn in
        # dmesg), and every program using bpf_printk would look unsupported.
        argv = [tool, "feature", "probe", "kernel", "full", "-j"]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=FEATURES_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            why = f"bpftool feature probe timed out after {FEATURES_TIMEOUT:.0f} s"
        except OSError as exc:
            why = f"bpftool feature probe could not run: {exc.strerror}"
        else:
            text = proc.stdout.decode(errors="replace")
            if proc.returncode != 0 or not text.lstrip().startswith("{"):
                err = proc.stderr.decode(errors="replace").strip().splitlines()
                why = f"bpftool feature probe exited {proc.returncode}: {err[-1] if err else 'no output'}"
            else:
                with open(os.path.join(out, protocol.FEATURES_FILE), "w") as fh:
                    fh.write(text)
                return None
    with open(os.path.join(out, protocol.FEATURES_ERROR_FILE), "w") as fh:
        fh.write(why + "\n")
    return why


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
# enum bpf_perf_event_type: unspec 0, uprobe 1, uretprobe 2, kprobe 3, kretprobe 4, tracepoint 5, event 6.
PERF_EVENT_TYPE_KPROBE = 3
PERF_EVENT_TYPE_KRETPROBE = 4


class LogSink:
    """libbpf's messages written by C, with no Python per message (under TCG a call into Python per
    message cost 15-20 ms per object: a load prints hundreds of lines).

    libbpf_set_print gets libc's vdprintf: its (int fd, format, va_list) is libbpf_print_fn_t's
    (enum libbpf_print_level, format, va_list), so a WARN, INFO or DEBUG message (0, 1, 2) is written to
    fd 0, 1 or 2. Inside a capture those three point at one memfd (one file offset: the messages stay in
    order); outside, at the agent's own stdin, stdout and stderr (the console), where the rare message
    of a background detach belongs. Captures nest.
    """

    def __init__(self, printer: object, fd: int) -> None:
        self.printer = printer
        self.fd = fd
        self.saved = [os.dup(i) for i in (0, 1, 2)]
        self.depth = 0

    @classmethod
    def make(cls, libc: ctypes.CDLL) -> LogSink | None:
        """The sink, or None where there is no memfd or vdprintf (then libbpf prints through Python)."""
        try:
            address = ctypes.cast(libc.vdprintf, ctypes.c_void_p).value
            fd = os.memfd_create("libbpf-log", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        return cls(PRINT_FN(address), fd) if address else None

    def __enter__(self) -> LogSink:
        if self.depth == 0:
            sys.stdout.flush()
            sys.stderr.flush()
            for i in (0, 1, 2):
                os.dup2(self.fd, i, inheritable=False)
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            for i in (0, 1, 2):
                os.dup2(self.saved[i], i)

    def drain(self) -> str:
        """What was written since the last drain."""
        size = os.lseek(self.fd, 0, os.SEEK_CUR)
        data = os.pread(self.fd, size, 0) if size else b""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return data.decode(errors="replace")


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
        self._sink = LogSink.make(self.libc)
        # Kept alive: libbpf holds the pointer.
        self._printer = self._sink.printer if self._sink is not None else PRINT_FN(self._print)
        lib.libbpf_set_print(self._printer)
        self.version = self._version()

    @staticmethod
    def _open() -> tuple[ctypes.CDLL, str]:
        return open_libbpf()

    def _version(self) -> str:
        return libbpf_version(self.lib)

    def _print(self, level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(8192)
        self.libc.vsnprintf(buf, len(buf), fmt, args)
        self.log(buf.value.decode(errors="replace"))
        return 0

    def log(self, text: str) -> None:
        with self._lock:
            self._log.setdefault(threading.get_ident(), []).append(text)

    def take_log(self) -> str:
        """What libbpf printed in this thread since the last call (in a capture, when by C)."""
        with self._lock:
            text = "".join(self._log.pop(threading.get_ident(), []))
        sink = getattr(self, "_sink", None)
        return text + sink.drain() if sink is not None else text

    def drop_thread_log(self) -> None:
        """Forget what libbpf printed through Python in this thread (never the C-level sink: that is
        the capture of whichever thread holds it, a load's)."""
        with self._lock:
            self._log.pop(threading.get_ident(), None)

    def capture(self) -> contextlib.AbstractContextManager[object]:
        """A block whose libbpf messages take_log returns (all of them, without a C-level sink)."""
        sink = getattr(self, "_sink", None)
        return sink if sink is not None else contextlib.nullcontext()

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

    def setup_loader_calls(self) -> None:
        """Argument types of the calls a loader makes between open and load (libbpf 0.8+ has them all);
        raises AttributeError when this libbpf lacks one."""
        if getattr(self, "_loader_calls", False):
            return
        lib = self.lib
        lib.bpf_object__next_map.restype = ctypes.c_void_p
        lib.bpf_object__next_map.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_map__name.restype = ctypes.c_char_p
        lib.bpf_map__name.argtypes = [ctypes.c_void_p]
        for getter in ("type", "max_entries", "value_size", "key_size"):
            fn = getattr(lib, "bpf_map__" + getter)
            fn.restype = ctypes.c_uint32
            fn.argtypes = [ctypes.c_void_p]
        for setter in ("max_entries", "value_size", "key_size"):
            fn = getattr(lib, "bpf_map__set_" + setter)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.bpf_map__initial_value.restype = ctypes.c_void_p
        lib.bpf_map__initial_value.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.bpf_map__set_initial_value.restype = ctypes.c_int
        lib.bpf_map__set_initial_value.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.bpf_program__set_attach_target.restype = ctypes.c_int
        lib.bpf_program__set_attach_target.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        self._loader_calls = True

    def maps(self, obj: int) -> list[int]:
        self.setup_loader_calls()
        found: list[int] = []
        bpf_map = self.lib.bpf_object__next_map(obj, None)
        while bpf_map:
            found.append(bpf_map)
            bpf_map = self.lib.bpf_object__next_map(obj, bpf_map)
        return found

    def map_name(self, bpf_map: int) -> str:
        value = self.lib.bpf_map__name(bpf_map)
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


def open_libbpf() -> tuple[ctypes.CDLL, str]:
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


def libbpf_version(lib: ctypes.CDLL) -> str:
    """The loaded libbpf's version, ``1.5.0`` style (libbpf_version_string and libbpf_major_version /
    libbpf_minor_version are there since 0.6), or "unknown" for an older one."""
    try:
        fn = lib.libbpf_version_string
    except AttributeError:
        fn = None
    if fn is not None:
        fn.restype = ctypes.c_char_p
        value = fn()
        if value:
            return str(value.decode()).lstrip("v")
    try:
        major, minor = lib.libbpf_major_version, lib.libbpf_minor_version
    except AttributeError:
        return "unknown"
    major.restype = minor.restype = ctypes.c_uint32
    return f"{major()}.{minor()}"


BPFTOOL_PATHS = ("/usr/sbin/bpftool", "/sbin/bpftool", "/usr/bin/bpftool")


def bpftool_version(candidates: tuple[str, ...] = BPFTOOL_PATHS) -> str:
    """The guest's bpftool version (``7.5.0``), "" when there is none or it cannot tell."""
    import json

    for path in candidates:
        if os.path.exists(path):
            break
    else:
        return ""
    try:
        proc = subprocess.run([path, "-j", "version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=30, check=False)
        found = json.loads(proc.stdout.decode(errors="replace") or "{}").get("version")
        if found:
            return str(found)
        # bpftool before 5.x prints only text: "bpftool v7.1.0" or "/usr/sbin/bpftool v5.10.0".
        proc = subprocess.run([path, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=30, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"\bv(\d+\.\d+(?:\.\d+)?)", proc.stdout.decode(errors="replace"))
    return m.group(1) if m else ""


def os_release() -> str:
    """PRETTY_NAME of the guest's /etc/os-release ("" when it has none)."""
    for line in (read_text("/etc/os-release") or read_text("/usr/lib/os-release") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return ""


def report_userland(done: protocol.DoneRecord) -> None:
    """The guest's loader in ``done``: libbpf (the .so the agent loads with), bpftool, the OS. Never
    raises: a guest without libbpf still runs (and its loads are ERROR cells)."""
    done["os_release"] = os_release()
    done["bpftool"] = bpftool_version()
    try:
        done["libbpf"] = libbpf_version(open_libbpf()[0])
    except (RuntimeError, OSError, AttributeError):
        done["libbpf"] = ""


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


def default_workload(share: str) -> dict[str, str]:
    """The default trigger: workload.py's one pass over files, processes, signals, the network, futexes,
    memory, the scheduler, mounts and block I/O. Returns the parts that could not run, and why."""
    if TYPE_CHECKING or __package__:
        from . import workload
    else:
        import workload  # copied beside the agent
    return workload.run_default(protocol.SCRATCH_DISK_BYTES)


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


def run_trigger(trigger: protocol.Trigger | None, share: str) -> protocol.TriggerRun:
    """Run one trigger: "default", an argv list, or a shell command string (the user's own, in the guest)."""
    start = time.monotonic()
    try:
        if trigger is None or trigger == "default":
            missed = default_workload(share)
            run: protocol.TriggerRun = {"trigger": "default", "ok": True, "seconds": time.monotonic() - start}
            if missed:
                run["output"] = "; ".join(f"{part}: {why}" for part, why in sorted(missed.items()))[-2000:]
            return run
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
# What a loader sets between open and load: the sidecar's settings, and sizes for zero-sized maps

# Map types (include/uapi/linux/bpf.h) whose max_entries 0 the kernel refuses. Left out: the storage
# maps (sk, inode, task, cgrp), which must have 0; PERF_EVENT_ARRAY, which libbpf sizes to the CPUs
# itself; ring buffers, whose size is their max_entries (a power of two of pages the object gives).
SIZED_MAP_TYPES = {1, 2, 5, 6, 7, 9, 10, 11, 12, 13, 22, 23, 30}
MAP_TYPE_STACK_TRACE = 7
DEFAULT_MAX_ENTRIES = 1024  # what tools commonly give a hash of pids or a stack map
STACK_TRACE_VALUE_SIZE = 127 * 8  # PERF_MAX_STACK_DEPTH frames of u64


def size_map(lb: Libbpf, bpf_map: int, sizes: protocol.MapSizes, by: str) -> protocol.SetRecord:
    """Give ``bpf_map`` the ``sizes`` (before load); a record of what was set, with the errno if refused."""
    name = lb.map_name(bpf_map)
    parts = []
    given: dict[str, int] = dict(sizes)  # type: ignore[arg-type]  # a TypedDict of ints
    for key in ("max_entries", "value_size", "key_size"):
        if key not in given:
            continue
        value = int(given[key])
        old = getattr(lb.lib, "bpf_map__" + key)(bpf_map)
        rc = getattr(lb.lib, "bpf_map__set_" + key)(bpf_map, value)
        if rc != 0:
            return {"what": "map", "name": name, "by": by, "errno": -rc,
                    "error": f"bpf_map__set_{key}({value}): {os.strerror(-rc)}"}
        parts.append(f"{key} {value} (the object has {old})")
    return {"what": "map", "name": name, "by": by, "text": ", ".join(parts)}


def default_sizes(lb: Libbpf, bpf_map: int) -> protocol.MapSizes:
    """Sizes for what the object leaves at zero for its loader to fill in (empty when nothing is)."""
    kind = lb.lib.bpf_map__type(bpf_map)
    if kind not in SIZED_MAP_TYPES:
        return {}
    sizes: protocol.MapSizes = {}
    if lb.lib.bpf_map__max_entries(bpf_map) == 0:
        sizes["max_entries"] = DEFAULT_MAX_ENTRIES
    if kind == MAP_TYPE_STACK_TRACE and lb.lib.bpf_map__value_size(bpf_map) == 0:
        sizes["value_size"] = STACK_TRACE_VALUE_SIZE
    return sizes


def patch_data(lb: Libbpf, bpf_map: int, patch: protocol.DataPatch) -> protocol.SetRecord:
    """Write a variable's bytes into a data section's initial value (before load)."""
    name = str(patch["variable"])
    rec: protocol.SetRecord = {"what": "data", "name": name, "by": "sidecar"}
    size = ctypes.c_size_t(0)
    ptr = lb.lib.bpf_map__initial_value(bpf_map, ctypes.byref(size))
    value = bytes.fromhex(str(patch["hex"]))
    offset = int(patch["offset"])
    if not ptr or offset + len(value) > size.value:
        rec["error"] = f"{patch['section']} has {size.value} bytes: no room for {name} at {offset}"
        return rec
    data = bytearray(ctypes.string_at(ptr, size.value))
    data[offset:offset + len(value)] = value
    rc = lb.lib.bpf_map__set_initial_value(bpf_map, bytes(data), size.value)
    if rc != 0:
        rec["errno"] = -rc
        rec["error"] = f"bpf_map__set_initial_value: {os.strerror(-rc)}"
        return rec
    rec["text"] = f"{patch['section']} {name} = 0x{patch['hex']} at offset {offset}"
    return rec


def apply_loader(
    lb: Libbpf, obj: int, progs: dict[str, int], loader: protocol.LoaderPlan
) -> tuple[list[protocol.SetRecord], dict[str, protocol.LoadRecord]]:
    """Set on an opened object what its loader would: attach targets, map sizes (the sidecar's, else
    sizes for zero-sized maps), .rodata values, autoload off. Returns what was set, and the load
    records of programs whose attach target could not be set (those are left out of the load)."""
    sets: list[protocol.SetRecord] = []
    refused: dict[str, protocol.LoadRecord] = {}
    for name in loader.get("autoload_off") or []:
        if name in progs:
            lb.lib.bpf_program__set_autoload(progs[name], False)
            sets.append({"what": "autoload", "name": name, "by": "sidecar", "text": "autoload off"})
    targets = loader.get("attach_targets") or {}
    try:
        all_maps = lb.maps(obj)
    except AttributeError as exc:
        if targets or loader.get("maps") or loader.get("data"):
            sets.append({"what": "loader", "name": "", "by": "sidecar",
                         "error": f"libbpf {lb.version} lacks a loader call: {exc}"})
        return sets, refused
    for name, func in targets.items():
        if name not in progs:
            continue
        lb.take_log()
        rc = lb.lib.bpf_program__set_attach_target(progs[name], 0, str(func).encode())
        if rc != 0:
            err = -rc
            line = f"prog '{name}': bpf_program__set_attach_target '{func}': {os.strerror(err)}\n"
            refused[name] = {"stage": "set_attach_target", "ok": False, "errno": err,
                             "error": os.strerror(err), "log": lb.take_log() + line, "target": str(func)}
            lb.lib.bpf_program__set_autoload(progs[name], False)
        else:
            sets.append({"what": "attach_target", "name": name, "by": "sidecar", "text": str(func)})
    wanted = loader.get("maps") or {}
    by_section: dict[str, list[protocol.DataPatch]] = {}
    for patch in loader.get("data") or []:
        by_section.setdefault(str(patch["section"]), []).append(patch)
    for bpf_map in all_maps:
        name = lb.map_name(bpf_map)
        if name in wanted:
            sets.append(size_map(lb, bpf_map, wanted[name], "sidecar"))
        else:
            sizes = default_sizes(lb, bpf_map)
            if sizes:
                sets.append(size_map(lb, bpf_map, sizes, "harness"))
        for section, patches in by_section.items():
            # libbpf names an internal map "<object name prefix><section>", e.g. "biolaten.rodata".
            if name.endswith(section):
                sets += [patch_data(lb, bpf_map, p) for p in patches]
    return sets, refused


# ---------------------------------------------------------------------------------------------------
# One object: load (whole, then without each program the kernel rejects), attach each, trigger, count


def load_object(
    lb: Libbpf,
    path: str,
    only: list[str] | None,
    loader: protocol.LoaderPlan | None = None,
    look_up: bool = True,
) -> tuple[int | None, protocol.LoadRecord]:
    """Open ``path``, set what its loader sets, and load it (just the programs ``only`` when given);
    with ``look_up``, programs whose BTF target is absent are left out first (look_up_targets).
    Returns (object or None, record)."""
    with lb.capture():
        return _load_object(lb, path, only, loader, look_up)


def _load_object(
    lb: Libbpf, path: str, only: list[str] | None, loader: protocol.LoaderPlan | None, look_up: bool
) -> tuple[int | None, protocol.LoadRecord]:
    lb.take_log()
    obj = lb.lib.bpf_object__open_file(path.encode(), None)
    err = lb.error_of(obj)
    if err:
        return None, {"stage": "open", "ok": False, "errno": err, "error": os.strerror(err),
                      "log": lb.take_log()}
    names = []
    progs: dict[str, int] = {}
    for prog in lb.programs(obj):
        name = lb.prog_name(prog)
        names.append(name)
        progs[name] = prog
        if only is not None:
            lb.lib.bpf_program__set_autoload(prog, name in only)
    opened = lb.take_log()
    sets, refused = apply_loader(lb, obj, progs, loader or {})
    if look_up:
        targeted = set((loader or {}).get("attach_targets") or {})
        refused.update(look_up_targets(lb, progs, set(refused) | targeted))
    rc = lb.lib.bpf_object__load(obj)
    record: protocol.LoadRecord = {
        "stage": "load", "ok": rc == 0, "programs": names, "log": opened + lb.take_log(),
    }
    if sets:
        record["set"] = sets
    if refused:
        record["refused"] = refused
    if rc != 0:
        record["errno"] = -rc
        record["error"] = os.strerror(-rc)
        lb.lib.bpf_object__close(obj)
        return None, record
    return obj, record


BTF_ATTACHED_TYPES = (26, 29)  # enum bpf_prog_type: BPF_PROG_TYPE_TRACING, BPF_PROG_TYPE_LSM


def look_up_targets(lb: Libbpf, progs: dict[str, int], skip: set[str]) -> dict[str, protocol.LoadRecord]:
    """Look up the kernel BTF target of each program attached by BTF ID (fentry, fexit, fmod_ret,
    tp_btf, lsm, iter) before the load, as the load itself would: bpf_program__set_attach_target runs
    the same lookup (find_kernel_btf_id, vmlinux then modules) that the load runs for a program whose
    target is not set. A program whose target the kernel lacks (ESRCH) is recorded as failing its load
    with libbpf's words and left out of it: the object's other programs then load at once, instead of
    once more per such program (a libbpf-tools object carries fentry twins of its kprobes, and
    placeholders its loader retargets). The kernel BTF the lookup parsed stays with the object for its
    load, which does not parse it again."""
    out: dict[str, protocol.LoadRecord] = {}
    try:
        lb.setup_loader_calls()
        kind, autoload = lb.lib.bpf_program__type, lb.lib.bpf_program__autoload
    except AttributeError:
        return out  # an old libbpf: the load finds out
    kind.restype, kind.argtypes = ctypes.c_int, [ctypes.c_void_p]
    autoload.restype, autoload.argtypes = ctypes.c_bool, [ctypes.c_void_p]
    for name, prog in progs.items():
        if name in skip or not autoload(prog) or kind(prog) not in BTF_ATTACHED_TYPES:
            continue
        section = (lb.lib.bpf_program__section_name(prog) or b"").decode(errors="replace")
        target = section.partition("/")[2]
        if not target:
            continue  # no target in the section: the loader sets one (or the load fails on its own)
        rc = lb.lib.bpf_program__set_attach_target(prog, 0, target.encode())
        if rc != -errno.ESRCH:
            continue  # found (the load uses it), or another error, which the load reports itself
        line = (f"libbpf: prog '{name}': failed to find kernel BTF type ID of '{target}': {rc} "
                "(looked up before the load, as the load looks it up)\n")
        out[name] = {"stage": "load", "ok": False, "errno": errno.ESRCH, "error": os.strerror(errno.ESRCH),
                     "log": line, "target": target}
        lb.lib.bpf_program__set_autoload(prog, False)
    return out


REJECTED = re.compile(r"prog '([^']+)': (?:failed to load|BPF program load failed)")


def rejected_program(log: str, candidates: list[str]) -> str | None:
    """The program libbpf names as the one that failed a load (the last it names), if among candidates."""
    named = [m.group(1) for m in REJECTED.finditer(log)]
    return named[-1] if named and named[-1] in candidates else None


class Detacher:
    """Destroys links and closes objects in a background thread, links first.

    Destroying a batch's links (hundreds of kprobes and trampolines: each an ftrace update and an
    RCU grace period) takes seconds under TCG, which the next batch's load and attach overlap; closing
    the objects takes little and isolates nothing. ``wait`` is called before any trigger runs and
    returns once every submitted link is gone, so no other object's programs are attached while a
    batch fires; ``wait_all`` also waits for the objects' closes (before a run alone, before an own
    loader lists the kernel's programs, and at the end).
    """

    def __init__(self, lb: Libbpf) -> None:
        self.lb = lb
        self.pending: queue.Queue[tuple[list[int], list[int]]] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.linked = 0  # submissions whose links are not destroyed yet
        self.cond = threading.Condition()
        self.seconds = {"unlink": 0.0, "close": 0.0}  # spent in the background

    def submit(self, links: list[int], objects: list[int]) -> None:
        if not links and not objects:
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="detach", daemon=True)
            self.thread.start()
        with self.cond:
            self.linked += 1
        self.pending.put((links, objects))

    def wait(self) -> float:
        """Block until every submitted link is destroyed; returns the seconds waited."""
        start = time.monotonic()
        with self.cond:
            self.cond.wait_for(lambda: self.linked == 0)
        return time.monotonic() - start

    def wait_all(self) -> float:
        """Block until everything submitted is detached and closed; returns the seconds waited."""
        start = time.monotonic()
        self.pending.join()
        return time.monotonic() - start

    def _run(self) -> None:
        while True:
            links, objects = self.pending.get()
            start = time.monotonic()
            try:
                for link in links:
                    self.lb.lib.bpf_link__destroy(link)
            finally:
                with self.cond:
                    self.linked -= 1
                    self.cond.notify_all()
                mark = time.monotonic()
                self.seconds["unlink"] += mark - start
            try:
                for obj in objects:
                    self.lb.lib.bpf_object__close(obj)
                self.lb.drop_thread_log()  # whatever libbpf said while detaching belongs to no load
            finally:
                self.seconds["close"] += time.monotonic() - mark
                self.pending.task_done()


class Loaded:
    """One object of a batch after its load: its record, its loaded programs and their links."""

    def __init__(self, spec: protocol.PlanObject, result: protocol.ObjectRecord, start: float) -> None:
        self.spec = spec
        self.result = result
        self.start = start
        self.loaded: list[tuple[int, str, int]] = []  # (object, program name, program)
        self.objects: list[int] = []  # the libbpf objects to close
        self.links: dict[str, int] = {}

    @property
    def programs(self) -> dict[str, protocol.ProgramRecord]:
        return self.result.setdefault("programs", {})

    @property
    def triggers(self) -> dict[str, protocol.Trigger]:
        found = self.spec.get("triggers") or {}
        return found if isinstance(found, dict) else {}


def load_phase(lb: Libbpf, spec: protocol.PlanObject, share: str) -> Loaded:
    """Load one object of the plan (whole, then without each program the kernel rejects)."""
    path = os.path.join(share, str(spec["path"]))
    loader: protocol.LoaderPlan = spec.get("loader") or {}
    unit = Loaded(spec, {"object": spec["name"], "programs": {}}, time.monotonic())
    result, programs = unit.result, unit.programs
    obj, whole = load_object(lb, path, None, loader)
    look_up = True
    absent = [n for n, r in (whole.get("refused") or {}).items() if r.get("stage") == "load"]
    if obj is None and absent and whole.get("stage") == "load":
        left = [str(n) for n in whole.get("programs") or [] if n not in (whole.get("refused") or {})]
        if rejected_program(str(whole.get("log", "")), left) is None:
            # It failed before any program's turn (a map, the object's BTF), where the programs left
            # out would have failed too: load it again as if no target had been looked up.
            look_up = False
            obj, whole = load_object(lb, path, None, loader, look_up=False)
    result["whole_load"] = whole
    if whole.get("stage") == "open":
        result["error"] = "libbpf could not open the object: {}".format(whole.get("error"))
        return unit
    sets = whole.pop("set", [])
    if sets:
        result["loader_set"] = sets
    refused = whole.pop("refused", {})
    for name, rec in refused.items():
        programs[name] = {"load": rec}
    names = [str(n) for n in whole.get("programs") or []]
    left_out = [n for n in loader.get("autoload_off") or [] if n in names]
    if left_out:
        result["left_out"] = left_out
    skipped = set(left_out) | set(refused)
    if obj is not None:
        for prog in lb.programs(obj):
            name = lb.prog_name(prog)
            if name in skipped:
                continue
            programs[name] = {"load": {"ok": True, "seconds": time.monotonic() - unit.start}}
            unit.loaded.append((obj, name, prog))
        unit.objects = [obj]
        result["load_log"] = whole["log"]
    else:
        unit.loaded, unit.objects = load_without_rejected(
            lb, path, whole, unit.start, programs, loader, skipped, look_up
        )
    result["phases"] = {"load": time.monotonic() - unit.start}
    return unit


def batchable(spec: protocol.PlanObject) -> bool:
    """Whether an object may be attached and fired beside others: not asked to be alone, no loader of
    its own, and every program on the default trigger (another's trigger would count in its runs)."""
    triggers = spec.get("triggers") or {}
    return (
        not spec.get("isolate") and not spec.get("own_loader")
        and all(t == "default" for t in (triggers.values() if isinstance(triggers, dict) else [1]))
    )


def plan_batches(specs: list[protocol.PlanObject], size: int) -> list[list[protocol.PlanObject]]:
    """The plan's objects in batches, in plan order: up to ``size`` batchable objects together, every
    other object alone."""
    batches: list[list[protocol.PlanObject]] = []
    current: list[protocol.PlanObject] = []
    for spec in specs:
        if not batchable(spec):
            batches.append([spec])
            continue
        current.append(spec)
        if len(current) >= size:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def doubtful(unit: Loaded) -> bool:
    """Whether a batch's counts of this object need a run alone: a program that missed runs (or whose
    counters could not be read). Another object's program can only hold a program off by running when
    its hook fires: the nested run is skipped and counted as a miss (the recursion_misses of 5.12+,
    the kprobe's missed count of its link on 6.7+). A program that never ran was not held off: its hook
    never fired, or fired only inside other BPF programs, which is the BPF machinery whose observers
    are never batched (share.py's isolation)."""
    for name in unit.links:
        fire = unit.programs[name].get("fire") or {}
        if "error" in fire or fire.get("recursion_misses") or fire.get("kprobe_missed"):
            return True
    return False


def run_batch(
    lb: Libbpf,
    specs: list[protocol.PlanObject],
    share: str,
    detacher: Detacher,
    again: list[protocol.ObjectRecord] | None = None,
) -> list[protocol.ObjectRecord]:
    """Load the objects of one batch, attach all their programs, run their triggers once, and count.

    Counts are taken with every program of the batch attached. The record of an object of a batch of
    several whose counts are doubtful (a program that missed runs) goes into ``again``: run_again
    loads, attaches, triggers and counts it afresh alone once every batch is done, and its record
    then holds those counts, so a batch never turns a pass alone into a failure. Without ``again`` it
    is run again at once.
    """
    units = [load_phase(lb, spec, share) for spec in specs]
    names = [str(spec["name"]) for spec in specs]
    for unit in units:
        if len(units) > 1:
            unit.result["batch"] = [n for n in names if n != unit.result["object"]]
        mark = time.monotonic()
        unit.links = attach_programs(lb, unit.loaded, unit.programs)
        unit.result.setdefault("phases", {})["attach"] = time.monotonic() - mark
    attached = [u for u in units if u.links]
    if attached:
        waited = detacher.wait()  # the previous batch's programs are gone before these fire
        mark = time.monotonic()
        ran = run_triggers(attached, share)
        took = time.monotonic() - mark
        kver = kernel_version(os.uname().release)
        for unit in attached:
            unit.result["triggers"] = ran
            phases = unit.result.setdefault("phases", {})
            phases["wait_detach"], phases["trigger"] = waited, took
            count_runs(lb, unit, kver)
    doubtful_ones = [u.result for u in attached if len(units) > 1 and doubtful(u)]
    for unit in units:
        detacher.submit(list(unit.links.values()), unit.objects)
        unit.result["seconds"] = time.monotonic() - unit.start
    if again is None:
        run_again(lb, doubtful_ones, specs, share, detacher)
    else:
        again.extend(doubtful_ones)
    return [u.result for u in units]


COUNTERS = ("run_cnt", "run_time_ns", "recursion_misses", "kprobe_missed")  # kept of a batch's run


def run_again(
    lb: Libbpf,
    records: list[protocol.ObjectRecord],
    specs: list[protocol.PlanObject],
    share: str,
    detacher: Detacher,
) -> None:
    """Run each object of ``records`` again alone, from a fresh load (a loaded object's maps keep what
    its batch's run put in them), and put that run's counts in its record, the batch's beside them."""
    by_name = {str(spec["name"]): spec for spec in specs}
    for record in records:
        detacher.wait_all()  # nothing else loaded, nothing being freed: as the object would run alone
        mark = time.monotonic()
        alone = run_batch(lb, [by_name[str(record["object"])]], share, detacher)[0]
        for name, program in (alone.get("programs") or {}).items():
            fire = program.get("fire")
            if fire is None:
                continue
            fire["alone"] = True
            old = (record.get("programs") or {}).get(name)
            before = cast(dict[str, object], old.get("fire") or {}) if old else {}
            if before:
                fire["batch"] = {k: v for k, v in before.items() if k in COUNTERS and isinstance(v, int)}
        phases = cast(protocol.Phases, {**(record.get("phases") or {}), "alone": time.monotonic() - mark})
        mutable = cast(dict[str, object], record)  # the very record the results list holds
        mutable.clear()
        mutable.update(alone)
        record["phases"] = phases


def phase_totals(results: list[protocol.ObjectRecord]) -> protocol.Phases:
    """The objects' phases summed; a batch's shared trigger (the same run in each of its records) once."""
    totals: dict[str, float] = {}
    seen: set[int] = set()
    for record in results:
        phases = cast(dict[str, float], record.get("phases") or {})
        for key, value in phases.items():
            if key == "trigger":
                runs = record.get("triggers") or []
                if runs and id(runs) in seen:
                    continue
                seen.add(id(runs))
            totals[key] = totals.get(key, 0.0) + float(value)
    return cast(protocol.Phases, totals)


def run_object(
    lb: Libbpf, spec: protocol.PlanObject, share: str, detacher: Detacher
) -> protocol.ObjectRecord:
    """Load, attach, trigger and count the programs of one object of the plan, alone."""
    return run_batch(lb, [spec], share, detacher)[0]


def run_triggers(units: list[Loaded], share: str) -> list[protocol.TriggerRun]:
    """Run each distinct trigger of the attached programs of ``units`` once, in order."""
    seen: list[protocol.Trigger] = []
    for unit in units:
        for name in unit.links:
            trig = unit.triggers.get(name, "default")
            if trig not in seen:
                seen.append(trig)
    return [run_trigger(trig, share) for trig in seen]


def count_runs(lb: Libbpf, unit: Loaded, kver: tuple[int, int]) -> None:
    """Record each attached program's counters (and its link's missed count, where there is one)."""
    for _obj, name, prog in unit.loaded:
        if name not in unit.links:
            continue
        info = lb.prog_info(lb.lib.bpf_program__fd(prog))
        missed = lb.link_missed(lb.lib.bpf_link__fd(unit.links[name]), kver)
        if missed is not None:
            info["kprobe_missed"] = missed
        info["trigger"] = unit.triggers.get(name, "default")
        unit.programs[name]["fire"] = info





def load_without_rejected(
    lb: Libbpf,
    path: str,
    whole: protocol.LoadRecord,
    start: float,
    programs: dict[str, protocol.ProgramRecord],
    loader: protocol.LoaderPlan | None = None,
    skipped: set[str] | None = None,
    look_up: bool = True,
) -> tuple[list[tuple[int, str, int]], list[int]]:
    """Load an object the kernel rejected as a whole without its rejected programs (and without the
    ``skipped`` ones: left out by its loader, or whose attach target was refused).

    Fills ``programs`` with each program's load record; returns the loaded (object, program name,
    program pointer) and the objects to close.
    """
    # One rejected program fails the whole object. libbpf names it: record its failure and load the
    # others without it, once per rejected program (not once per program: each load re-reads the
    # kernel's BTF). Programs libbpf does not tell apart are then loaded one at a time.
    loaded: list[tuple[int, str, int]] = []
    objects: list[int] = []
    names = whole.get("programs")
    pending = [str(n) for n in names if str(n) not in (skipped or set())] if isinstance(names, list) else []
    attempt, t0 = whole, start
    while pending:
        culprit = rejected_program(str(attempt.get("log", "")), pending)
        if culprit is None:
            break
        failed = attempt.copy()
        failed.pop("set", None)
        failed.pop("refused", None)
        failed["seconds"] = time.monotonic() - t0
        programs[culprit] = {"load": failed}
        pending.remove(culprit)
        if not pending:
            break
        t0 = time.monotonic()
        rest, attempt = load_object(lb, path, pending, loader, look_up)
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
        one, rec = load_object(lb, path, [name], loader, look_up)
        rec.pop("set", None)
        rec.pop("refused", None)
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
        with lb.capture():
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
    detacher.wait_all()  # the previous object's programs are gone: they are not the loader's
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
    report_userland(done)
    try:
        lb = Libbpf()
    except (RuntimeError, AttributeError) as exc:
        done["loader_error"] = str(exc)
        return
    t0 = time.monotonic()
    detacher = Detacher(lb)
    results: list[protocol.ObjectRecord] = []
    again: list[protocol.ObjectRecord] = []  # doubtful objects of batches, run alone after them all
    for batch in plan_batches(list(plan.get("objects") or []), BATCH_OBJECTS):
        try:
            if batch[0].get("own_loader"):
                results.append(run_own_loader(lb, batch[0], share, detacher))
            else:
                results.extend(run_batch(lb, batch, share, detacher, again))
        except Exception as exc:  # one batch's crash must not lose the others
            for spec in batch:
                results.append({"object": str(spec.get("name")), "error": f"agent crashed: {exc!r}",
                                "traceback": format_exc()})
    try:
        run_again(lb, again, list(plan.get("objects") or []), share, detacher)
    except Exception as exc:
        for record in again:
            record["error"] = f"agent crashed: {exc!r}"
            record["traceback"] = format_exc()
    protocol.write_objects(share, results)
    waited = detacher.wait_all()
    done["objects_seconds"] = time.monotonic() - t0
    done["phases"] = phase_totals(results)
    done["phases"]["unlink"], done["phases"]["close"] = detacher.seconds["unlink"], detacher.seconds["close"]
    done["phases"]["last_detach"] = waited
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
        if plan.get("objects") or plan.get("scenarios"):  # scenarios alone: the objects' records reused
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
