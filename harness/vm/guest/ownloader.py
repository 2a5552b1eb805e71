"""An object's own loader in the guest (stdlib only): run it with a time limit while the triggers run,
and read from the kernel what it loaded and attached, and how often each program ran.

Copied beside the agent into the share. What the loader did is read from the kernel, not from its
output: the programs and links that appeared after it started (bpf(2) ID iteration and
BPF_OBJ_GET_INFO_BY_FD through the guest's libbpf), and the perf events and raw tracepoints its
processes hold open (BPF_TASK_FD_QUERY), which is how kprobes and tracepoints attach on kernels
without perf-event links (before 5.15) and how their targets are named on every kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING or __package__:
    from . import protocol
else:
    import protocol  # in the guest: copied beside the agent

POLL_SECONDS = 0.2
# Without a readiness pattern the loader is taken as ready once its programs and attachments have not
# changed for this long: libbpf skeletons load every program, then attach them one after another.
STABLE_SECONDS = 1.0
STOP_GRACE_SECONDS = 5.0  # between SIGINT (tools print their summary and detach) and SIGKILL
OUTPUT_TAIL = 2000

# enum bpf_prog_type (include/uapi/linux/bpf.h), the types tracing loaders use.
PROG_TYPES = {
    1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint", 6: "xdp",
    7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 13: "sock_ops", 17: "raw_tracepoint",
    18: "cgroup_sock_addr", 24: "raw_tracepoint_writable", 26: "tracing", 27: "struct_ops", 28: "ext",
    29: "lsm", 30: "sk_lookup", 31: "syscall", 32: "netfilter",
}
# enum bpf_link_type
LINK_TYPES = {
    1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp", 7: "perf_event",
    8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx", 12: "uprobe_multi", 13: "netkit",
}
LINK_RAW_TRACEPOINT, LINK_TRACING, LINK_KPROBE_MULTI = 1, 2, 8
# enum bpf_task_fd_type: what BPF_TASK_FD_QUERY says an fd attaches a program to.
FD_TYPES = {0: "raw_tracepoint", 1: "tracepoint", 2: "kprobe", 3: "kretprobe", 4: "uprobe", 5: "uretprobe"}

Attachments = dict[tuple[int, str, str], protocol.LoaderAttachment]  # (prog id, via, key) -> attachment


class KernelView:
    """The BPF programs and links in the kernel, and what a process's fds attach, through libbpf."""

    def __init__(self, lib: ctypes.CDLL, prog_info_type: type) -> None:
        self.lib = lib
        self.prog_info_type = prog_info_type  # the agent's struct bpf_prog_info
        self.full_names: dict[int, str] = {}  # program id -> its function's name from its BTF
        u32p = ctypes.POINTER(ctypes.c_uint32)
        for name in ("bpf_prog_get_next_id", "bpf_link_get_next_id"):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_uint32, u32p]
        for name in ("bpf_prog_get_fd_by_id", "bpf_link_get_fd_by_id"):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_uint32]
        lib.bpf_task_fd_query.restype = ctypes.c_int
        lib.bpf_task_fd_query.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p, u32p, u32p, u32p,
            ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
        ]

    def _ids(self, next_id: Callable[..., int]) -> list[int]:
        ids: list[int] = []
        current, found = 0, ctypes.c_uint32(0)
        while next_id(current, ctypes.byref(found)) == 0:
            current = found.value
            ids.append(current)
        return ids

    def prog_ids(self) -> list[int]:
        return self._ids(self.lib.bpf_prog_get_next_id)

    def link_ids(self) -> list[int]:
        return self._ids(self.lib.bpf_link_get_next_id)

    def program(self, prog_id: int) -> protocol.LoadedProgram | None:
        """The program's name, type and run counts; None when it is gone."""
        fd = self.lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            return None
        try:
            info = self.prog_info_type()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
                return None
            record: protocol.LoadedProgram = {
                "id": prog_id, "name": info.name.decode(errors="replace"),
                "type": PROG_TYPES.get(info.type, str(info.type)),
                "run_cnt": info.run_cnt, "run_time_ns": info.run_time_ns,
            }
            if size.value >= type(info).recursion_misses.offset + 8:
                record["recursion_misses"] = info.recursion_misses
            if prog_id not in self.full_names:
                has_btf = info.btf_id and info.nr_func_info
                self.full_names[prog_id] = self._full_name(fd, info.btf_id) if has_btf else ""
            if self.full_names[prog_id]:
                record["full_name"] = self.full_names[prog_id]
            return record
        finally:
            os.close(fd)

    def _full_name(self, fd: int, btf_id: int) -> str:
        """The program's whole function name, from its BTF (its first func_info names its FUNC): the
        kernel keeps only 15 characters of it, which libbpf-tools' names often share."""
        func = (ctypes.c_uint32 * 2)()  # struct bpf_func_info: insn_off, type_id
        info = self.prog_info_type()
        info.nr_func_info = 1
        info.func_info_rec_size = ctypes.sizeof(func)
        info.func_info = ctypes.addressof(func)
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
            return ""
        try:
            load = self.lib.btf__load_from_kernel_by_id  # libbpf 0.6+
        except AttributeError:
            return ""
        load.restype, load.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
        self.lib.btf__type_by_id.restype = ctypes.c_void_p
        self.lib.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.lib.btf__name_by_offset.restype = ctypes.c_char_p
        self.lib.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.lib.btf__free.restype, self.lib.btf__free.argtypes = None, [ctypes.c_void_p]
        btf = load(btf_id)
        if not btf:
            return ""
        try:
            btf_type = self.lib.btf__type_by_id(btf, func[1])
            if not btf_type:
                return ""
            name_off = ctypes.cast(btf_type, ctypes.POINTER(ctypes.c_uint32))[0]  # struct btf_type.name_off
            name = self.lib.btf__name_by_offset(btf, name_off)
            return name.decode(errors="replace") if name else ""
        finally:
            self.lib.btf__free(btf)

    def link(self, link_id: int) -> tuple[int, protocol.LoaderAttachment] | None:
        """(program id, attachment) of a link; None when it is gone."""
        fd = self.lib.bpf_link_get_fd_by_id(link_id)
        if fd < 0:
            return None
        try:
            buf = (ctypes.c_uint64 * 32)()
            size = ctypes.c_uint32(ctypes.sizeof(buf))
            if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(buf), ctypes.byref(size)) != 0:
                return None
            raw = bytes(buf)
            return parse_link_info(raw, link_id)
        finally:
            os.close(fd)

    def fd_attachments(self, pid: int) -> list[tuple[int, protocol.LoaderAttachment]]:
        """(program id, attachment) of each perf event or raw tracepoint fd of process ``pid``."""
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return []
        found: list[tuple[int, protocol.LoaderAttachment]] = []
        for name in fds:
            buf = ctypes.create_string_buffer(256)
            length, prog_id, fd_type = ctypes.c_uint32(len(buf)), ctypes.c_uint32(0), ctypes.c_uint32(0)
            offset, addr = ctypes.c_uint64(0), ctypes.c_uint64(0)
            rc = self.lib.bpf_task_fd_query(
                pid, int(name), 0, buf, ctypes.byref(length), ctypes.byref(prog_id), ctypes.byref(fd_type),
                ctypes.byref(offset), ctypes.byref(addr),
            )
            if rc != 0 or not prog_id.value:
                continue
            target = buf.value.decode(errors="replace")
            if offset.value and target:
                target += f"+{offset.value:#x}"
            kind = FD_TYPES.get(fd_type.value, str(fd_type.value))
            found.append((prog_id.value, {"via": "perf_event", "type": kind, "target": target}))
        return found


def parse_link_info(raw: bytes, link_id: int) -> tuple[int, protocol.LoaderAttachment]:
    """(program id, attachment) from the bytes of a struct bpf_link_info (pure).

    type, id and prog_id come first, then a union aligned to 8: a tracing link's attach_type,
    target_obj_id and target_btf_id; a kprobe_multi link's address array and count. Raw tracepoints
    and perf events are named by BPF_TASK_FD_QUERY on the fds that hold them instead.
    """
    import sys

    def u32(at: int) -> int:
        return int.from_bytes(raw[at:at + 4], sys.byteorder)

    link_type, prog_id = u32(0), u32(8)
    kind = LINK_TYPES.get(link_type, str(link_type))
    record: protocol.LoaderAttachment = {"via": "link", "id": link_id, "type": kind}
    if link_type == LINK_TRACING:
        record["attach_type"] = u32(16)
        record["btf_id"] = u32(24)
    elif link_type == LINK_KPROBE_MULTI:
        record["target"] = f"{u32(24)} functions"
    return prog_id, record


def group_pids(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (the loader and what it started)."""
    pids: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid):
            pids.append(int(name))
    return pids


class Watch:
    """What the loader has loaded and attached so far: programs and links new since it started, each
    program's counters as last seen (they are gone once the loader exits)."""

    def __init__(self, view: KernelView) -> None:
        self.view = view
        self.before_progs = set(view.prog_ids())
        self.before_links = set(view.link_ids())
        self.programs: dict[int, protocol.LoadedProgram] = {}
        self.attachments: Attachments = {}
        self.links: set[int] = set()
        self.lock = threading.Lock()

    def sample(self, pgid: int | None) -> tuple[int, int, int]:
        """Read the kernel once; returns (programs now present, attachments, links) for stability."""
        present = [i for i in self.view.prog_ids() if i not in self.before_progs]
        seen = {i: rec for i in present if (rec := self.view.program(i)) is not None}
        attached: list[tuple[int, protocol.LoaderAttachment]] = []
        links = [i for i in self.view.link_ids() if i not in self.before_links]
        for link_id in links:
            found = self.view.link(link_id)
            if found is not None:
                attached.append(found)
        for pid in group_pids(pgid) if pgid is not None else []:
            attached.extend(self.view.fd_attachments(pid))
        with self.lock:
            self.programs.update(seen)
            self.links.update(links)
            for prog_id, att in attached:
                key = (prog_id, str(att.get("via")), str(att.get("id", att.get("target", ""))))
                self.attachments[key] = att
            return len(seen), len(self.attachments), len(self.links)

    def records(self) -> list[protocol.LoadedProgram]:
        with self.lock:
            out: list[protocol.LoadedProgram] = []
            for prog_id in sorted(self.programs):
                rec = dict(self.programs[prog_id])
                mine = sorted((k, a) for k, a in self.attachments.items() if k[0] == prog_id)
                rec["attached"] = [a for _k, a in mine]
                out.append(rec)  # type: ignore[arg-type]
            return out


class Output:
    """The loader's output, read from the pseudo-terminal it writes to into a file in the background.

    A terminal, not a pipe or a file: C programs buffer what they print to a file until they exit, so a
    readiness line (a tool's header, printed once attached) would only appear at the end. The whole
    output is searched for the readiness pattern as it arrives; tools print on, and a tail would lose it.
    """

    def __init__(self, path: str, ready: str) -> None:
        self.path = path
        self.pattern = re.compile(ready.encode()) if ready else None
        self.ready = threading.Event()
        try:
            self.master, self.slave = os.openpty()
        except OSError:  # no devpts in the guest: a pipe, with what buffering the loader gives it
            self.master, self.slave = os.pipe()
        self.thread = threading.Thread(target=self._read, name="loader-output", daemon=True)

    def start(self) -> None:
        os.close(self.slave)  # the loader holds it now: reads end (EIO) once it and its children exit
        self.thread.start()

    def _read(self) -> None:
        carry = b""
        with open(self.path, "wb") as fh:
            while True:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                fh.write(chunk)
                fh.flush()
                if self.pattern is not None and not self.ready.is_set():
                    text = carry + chunk
                    if self.pattern.search(text.replace(b"\r\n", b"\n")):
                        self.ready.set()
                    carry = text[-4096:]

    def close(self, timeout: float = 2.0) -> None:
        self.thread.join(timeout)
        try:
            os.close(self.master)
        except OSError:
            pass
        self.thread.join(timeout)


def tail_of(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - OUTPUT_TAIL))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def start_loader(
    loader: protocol.OwnLoaderPlan, share: str, obj_path: str, out: Output
) -> subprocess.Popen[bytes]:
    """Start the loader in its own session, in its binaries' directory, its output to ``out``'s
    terminal; raises OSError."""
    command = loader["command"]
    argv = [str(a) for a in command] if isinstance(command, list) else ["/bin/sh", "-c", str(command)]
    bindir = os.path.join(share, loader["binaries"]) if loader.get("binaries") else share
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"])
    env["BPF_MATRIX_OBJECT"] = obj_path  # the harness's build of the object, for loaders that take one
    env.setdefault("TERM", "dumb")
    with stop_signal_at_default():
        return subprocess.Popen(
            argv, cwd=bindir, env=env, stdin=subprocess.DEVNULL, stdout=out.slave, stderr=out.slave,
            start_new_session=True,
        )


@contextlib.contextmanager
def stop_signal_at_default() -> Iterator[None]:
    """SIGINT at its default action while a loader starts, where this process ignores it (started in
    the background, say): an ignored signal stays ignored across exec, and ``stop`` must reach the tool."""
    saved = None
    try:
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            saved = signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:
        pass  # not the main thread: signals cannot be set here
    try:
        yield
    finally:
        if saved is not None:
            signal.signal(signal.SIGINT, saved)


def wait_ready(proc: subprocess.Popen[bytes], watch: Watch, out: Output, deadline: float) -> str:
    """Wait until the loader is ready (its output matches ``ready``, or its programs and attachments
    have not changed for STABLE_SECONDS), exits, or reaches ``deadline``; returns which."""
    last: tuple[int, int, int] = (0, 0, 0)
    since = time.monotonic()
    while True:
        counts = watch.sample(proc.pid)
        if proc.poll() is not None:
            return "exited"
        now = time.monotonic()
        if out.pattern is not None:
            if out.ready.is_set():
                return "output"
        elif counts != last:
            last, since = counts, now
        elif counts[0] and counts[1] and now - since >= STABLE_SECONDS:
            return "programs"
        if now >= deadline:
            return "time limit"
        time.sleep(POLL_SECONDS)


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGINT the loader's process group, SIGKILL it after STOP_GRACE_SECONDS; returns the last signal sent
    ("" when it had already exited)."""
    if proc.poll() is not None:
        return ""
    sent = "SIGINT"
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        sent = "SIGKILL"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what it started and left behind
    except (ProcessLookupError, PermissionError):
        pass
    return sent


class Sampler:
    """Samples the kernel in the background while the triggers run: a loader may exit meanwhile (an
    interval tool such as `biolatency 1 1`), taking its programs and their counters with it."""

    def __init__(self, watch: Watch, pgid: int) -> None:
        self.watch, self.pgid = watch, pgid
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="loader-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(POLL_SECONDS * 2):
            self.watch.sample(self.pgid)


def run_loader_object(
    view: KernelView,
    spec: protocol.PlanObject,
    share: str,
    run_trigger: Callable[[protocol.Trigger, str], protocol.TriggerRun],
) -> protocol.ObjectRecord:
    """Run the object's own loader while its triggers run; record how it ended and what it loaded."""
    loader = spec["own_loader"]
    start = time.monotonic()
    record: protocol.OwnLoaderRecord = {"command": loader["command"], "seconds": 0.0,
                                     "time_limit": float(loader["time_limit"])}
    result: protocol.ObjectRecord = {"object": spec["name"], "own_loader": record}
    watch = Watch(view)
    path = f"/tmp/bpfmatrix-loader-{os.getpid()}-{spec['name']}.out"
    out = Output(path, loader.get("ready", ""))
    try:
        proc = start_loader(loader, share, os.path.join(share, spec["path"]), out)
    except OSError as exc:
        os.close(out.slave)
        os.close(out.master)
        record["error"] = f"cannot run {loader['command']!r}: {exc.strerror or exc}"
        record["seconds"] = time.monotonic() - start
        return result
    out.start()
    try:
        record["ready"] = wait_ready(proc, watch, out, start + loader["time_limit"])
        if record["ready"] != "exited" or watch.sample(None)[0]:
            # An exited loader may have pinned what it attached: fire it all the same.
            triggers = _distinct(spec.get("triggers") or {})
            with Sampler(watch, proc.pid):
                record["triggers"] = [run_trigger(t, share) for t in triggers]
            watch.sample(proc.pid)
        record["exited"] = proc.poll() is not None
        stopped = stop(proc)
        if stopped:
            record["stopped"] = stopped
    finally:
        if proc.poll() is None:
            stop(proc)
    out.close()
    record["returncode"] = proc.returncode
    record["output"] = tail_of(path)
    record["programs"] = watch.records()
    record["links"] = len(watch.links)
    record["seconds"] = time.monotonic() - start
    try:
        os.unlink(path)
    except OSError:
        pass
    return result


def _distinct(triggers: dict[str, protocol.Trigger]) -> list[protocol.Trigger]:
    """The object's triggers, each once ("default" when none is given)."""
    found: list[protocol.Trigger] = []
    for trig in list(triggers.values()) or ["default"]:
        if trig not in found:
            found.append(trig)
    return found
