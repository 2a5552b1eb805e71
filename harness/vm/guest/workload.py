"""The guest's default workload (stdlib only, Python 3.9): one short pass over what tracing tools probe.

Each part runs once, briefly, and cleans up after itself; a part the guest cannot do (no IPv6, no
scratch disk) is passed over, so the others still run. Under emulation each fork, exec and fsync costs
tens of milliseconds: the whole pass stays well under a second or two.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import threading
import time
from typing import Callable

SCRATCH_DISKS = ("/dev/vda", "/dev/sda")
SECTOR = 512  # the unit of /sys/block/<disk>/size
BLOCK = 4096
DISK_BLOCKS = 8  # per pass: enough for several requests, their merges and completions
MEMORY_BURST = 8 << 20  # bytes allocated and touched at most (a quarter of what is free, if less)
PAGE_CACHE_BYTES = 64 << 10


def files(tmp: str) -> None:
    """Create, write, fsync, read (page cache and mmap), rename, truncate, stat and unlink a file."""
    path = os.path.join(tmp, "f")
    with open(path, "wb") as fh:
        fh.write(b"x" * PAGE_CACHE_BYTES)
        fh.flush()
        os.fsync(fh.fileno())
        os.fdatasync(fh.fileno())
    with open(path, "rb") as fh:
        fh.read()
        with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            sum(mapped[i] for i in range(0, len(mapped), BLOCK))  # a page fault per page
    os.stat(path)
    os.rename(path, path + ".2")
    os.truncate(path + ".2", BLOCK)
    os.unlink(path + ".2")
    os.mkdir(os.path.join(tmp, "d"))
    os.rmdir(os.path.join(tmp, "d"))
    os.sync()  # sync(2): what syncsnoop-like tools watch besides fsync


def processes() -> None:
    """fork/exec/exit: a program run to its end, a forked child's exit status, and a child killed."""
    subprocess.run(["/bin/true"], check=False, timeout=20)
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitpid(pid, 0)
    child = subprocess.Popen(["/bin/sleep", "5"])
    try:
        child.kill()  # a signal sent to another process, and an exit by signal
    finally:
        child.wait(timeout=20)


def signals() -> None:
    """A signal sent to this process and handled, and one sent to a thread (tgkill)."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _tcp(family: int, host: str) -> None:
    import socket

    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        server.bind((host, 0))
        server.listen(1)
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        conn, _ = server.accept()
        try:
            client.sendall(b"ping")
            conn.recv(4)
            conn.sendall(b"pong")
            client.recv(4)
        finally:
            # The client first: its side goes through FIN_WAIT, the server's through CLOSE_WAIT.
            client.close()
            conn.close()
    finally:
        server.close()


def _udp(family: int, host: str) -> None:
    import socket

    receiver = socket.socket(family, socket.SOCK_DGRAM)
    sender = socket.socket(family, socket.SOCK_DGRAM)
    try:
        receiver.bind((host, 0))
        receiver.settimeout(5)
        sender.sendto(b"ping", receiver.getsockname()[:2])
        receiver.recvfrom(4)
    finally:
        sender.close()
        receiver.close()


def network() -> None:
    """TCP and UDP over loopback, IPv4 and IPv6 (bind, listen, connect, accept, send, close), and a
    name lookup."""
    import socket

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for part in (_tcp, _udp):
            try:
                part(family, host)
            except OSError:
                pass  # no IPv6 in this guest: the IPv4 half still ran
    try:
        socket.getaddrinfo("localhost", 80)
    except OSError:
        pass


def futex_contention() -> None:
    """Two threads on one lock, the second blocking until the first lets go (FUTEX_WAIT, FUTEX_WAKE)."""
    lock = threading.Lock()
    started = threading.Event()

    def contend() -> None:
        started.set()
        with lock:
            pass

    for _ in range(2):
        lock.acquire()
        thread = threading.Thread(target=contend)
        thread.start()
        started.wait(5)
        time.sleep(0.005)  # the other thread is blocked in the kernel by now
        lock.release()
        thread.join(5)
        started.clear()


def memory_burst() -> None:
    """Allocate, touch and free anonymous memory (page faults, then unmaps), bounded by what is free."""
    size = MEMORY_BURST
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    size = min(size, int(line.split()[1]) * 1024 // 4)
    except (OSError, ValueError):
        pass
    size -= size % BLOCK
    if size <= 0:
        return
    with mmap.mmap(-1, size) as region:
        region[::BLOCK] = b"\1" * (size // BLOCK)  # one byte a page: every page faulted in, in one call


def scheduling() -> None:
    """Sleeps and yields: the scheduler switches away from this task and wakes it up again."""
    for _ in range(2):
        time.sleep(0.001)
        os.sched_yield()


def mounts(tmp: str) -> None:
    """A tmpfs mounted and unmounted (mount and umount2 calls), where the guest allows it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    target = os.path.join(tmp, "mnt")
    os.mkdir(target)
    try:
        if libc.mount(b"none", target.encode(), b"tmpfs", 0, None) == 0:
            libc.umount2(target.encode(), 0)
    finally:
        os.rmdir(target)


def disk_bytes(dev: str) -> int | None:
    """The size of a block device from sysfs, or None when it cannot be read."""
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/size") as fh:
            return int(fh.read()) * SECTOR
    except (OSError, ValueError):
        return None


def block_io(scratch_bytes: int, disks: tuple[str, ...] = SCRATCH_DISKS) -> None:
    """Reads and writes on the scratch disk that reach the block layer and complete: O_DIRECT reads
    and writes, then buffered writes (buffer heads, dirty pages) and a buffered read (readahead), each
    followed by fsync (a flush request). Only a disk of exactly ``scratch_bytes`` is the scratch disk."""
    for dev in disks:
        if not os.path.exists(dev) or disk_bytes(dev) != scratch_bytes:
            continue
        try:
            fd = os.open(dev, os.O_RDWR | getattr(os, "O_DIRECT", 0))
        except OSError:
            continue
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        try:
            for i in range(DISK_BLOCKS):
                os.preadv(fd, [buf], i * BLOCK)
            buf.write(b"bpf-kernel-matrix scratch\n")
            for i in range(DISK_BLOCKS):
                os.pwritev(fd, [buf], (DISK_BLOCKS + i) * BLOCK)
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
            buf.close()
        try:
            fd = os.open(dev, os.O_RDWR)
            try:
                os.pwrite(fd, b"y" * BLOCK * 2, 2 * DISK_BLOCKS * BLOCK)
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.pread(fd, BLOCK * DISK_BLOCKS, 0)
            finally:
                os.close(fd)
        except OSError:
            pass
        return


def _rmtree(top: str) -> None:
    """Remove ``top`` and what is left in it (shutil costs a dozen module reads over 9p)."""
    for root, dirs, names in os.walk(top, topdown=False):
        for name in names:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            if os.path.ismount(path):
                import ctypes

                ctypes.CDLL(None).umount2(path.encode(), 2)  # MNT_DETACH
            os.rmdir(path)
    os.rmdir(top)


PARTS: tuple[tuple[str, Callable[[str], None]], ...] = (
    ("files", files),
    ("processes", lambda tmp: processes()),
    ("signals", lambda tmp: signals()),
    ("network", lambda tmp: network()),
    ("futex", lambda tmp: futex_contention()),
    ("memory", lambda tmp: memory_burst()),
    ("scheduling", lambda tmp: scheduling()),
    ("mounts", mounts),
)


def run_default(scratch_bytes: int, tmp_root: str = "/tmp") -> dict[str, str]:
    """Run every part once in a directory of its own under ``tmp_root`` (removed afterwards), block I/O
    on the scratch disk of ``scratch_bytes``; returns the parts that failed and why (the others ran)."""
    tmp = os.path.join(tmp_root, f"bpfmatrix-{os.getpid()}")  # not tempfile: it reads a dozen modules
    os.makedirs(tmp, exist_ok=True)
    failed: dict[str, str] = {}
    parts = (*PARTS, ("block_io", lambda _tmp: block_io(scratch_bytes)))
    try:
        for name, part in parts:
            try:
                part(tmp)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            _rmtree(tmp)
        except OSError as exc:
            failed["cleanup"] = f"{type(exc).__name__}: {exc}"
    return failed
