"""Booting a kernel with virtme-ng: the argv (pure), the accelerator probe, and a runner with a timeout."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.errors import LostVMError, VMError
from harness.kernels.config import Arch, host_arch
from harness.vm.guest import protocol
from harness.vm.guest.protocol import DONE_FILE as DONE_FILE

# Where the run's shared directory appears inside the guest. /mnt exists in the host's root and in
# Debian root filesystems; virtme-ng mounts the share over it (read-write), the rest of the root stays
# read-only.
GUEST_SHARE = "/mnt"
CONSOLE_TAIL_LINES = 40

# Console lines that explain why a guest never reported back.
FATAL_MARKERS = ("Kernel panic", "BUG: ", "Oops", "general protection fault", "Attempted to kill init")


@dataclass(frozen=True)
class Accelerator:
    """How guests are run: kvm or tcg (QEMU's emulation), and why that was chosen."""

    name: str
    reason: str


@dataclass(frozen=True)
class VMRequest:
    """Everything needed to boot one kernel once and run the guest agent in it."""

    image: Path
    arch: Arch
    share: Path  # host directory shared read-write with the guest at GUEST_SHARE
    command: Sequence[str]  # argv run in the guest (paths under GUEST_SHARE)
    accelerator: Accelerator
    root: Path | None = None  # a guest root filesystem; None boots on the host's own root (read-only)
    memory: str = "1G"
    cpus: int = 1
    append: Sequence[str] = ()
    disks: Sequence[Path] = ()
    timeout: float = 300.0
    modules: Path | None = None  # the kernel's lib/modules/<release>, for guests on their own root
    # (place inside the share, host directory): directories shared read-only over places in the share
    readonly: Sequence[tuple[str, Path]] = ()


@dataclass(frozen=True)
class VMResult:
    """What came back from one boot: the completion record the agent wrote, and the console."""

    done: protocol.DoneRecord
    console: str
    seconds: float
    returncode: int
    accelerator: Accelerator
    argv: tuple[str, ...] = field(default=())


def console_tail(text: str, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a console log."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def diagnose_console(text: str) -> str:
    """One line saying what the console shows went wrong, or '' when nothing is recognised."""
    for line in text.splitlines():
        for marker in FATAL_MARKERS:
            if marker in line:
                return line.split("] ", 1)[-1].strip()[:200]
    return ""


def build_vng_argv(req: VMRequest, vng: str = "vng") -> list[str]:
    """The vng command line for ``req`` (pure: no I/O, testable without a VM)."""
    # --force-9p: 9p is what every guest ends up on. vng otherwise first tries a virtiofsd for the root
    # and for each share, and QEMU 7's own C virtiofsd (what Debian 12's qemu packages install) takes
    # other arguments: each try fails after vng's 3.1 s of polling, 6 s of every boot spent waiting.
    argv = [vng, "--run", str(req.image), "--verbose", "--force-9p"]
    if req.arch != host_arch() or req.root is not None:
        # vng wants a root filesystem of the guest's arch; the host's is only right for the host's arch.
        argv += ["--arch", req.arch.vng]
    if req.root is not None:
        argv += ["--root", str(req.root)]
    if req.accelerator.name != "kvm":
        argv.append("--disable-kvm")
    argv += ["--memory", req.memory, "--cpus", str(req.cpus)]
    # With --root a share must be given as GUEST=HOST; the same form works on the host's root.
    argv.append(f"--rwdir={GUEST_SHARE}={req.share}")
    # virtme-ng mounts the read-write directories first, so these land inside the share.
    for where, host in req.readonly:
        argv.append(f"--rodir={GUEST_SHARE}/{where}={host}")
    if req.root is not None and req.modules is not None:
        # vng finds the modules of a kernel booted on the host's root itself; a guest root filesystem
        # has none, so without them no module loads (virtio_blk for the scratch disk, for one).
        argv.append(f"--rodir=/lib/modules/{req.modules.name}={req.modules}")
    for disk in req.disks:
        argv += ["--disk", str(disk)]
    for item in req.append:
        argv += ["--append", item]
    argv += ["--exec", shlex.join(req.command)]
    return argv


def probe_accelerator(
    dev: Path = Path("/dev/kvm"), modules: Path = Path("/sys/module"), env: dict[str, str] | None = None
) -> Accelerator:
    """Decide kvm or tcg for this machine, without booting.

    BPF_MATRIX_ACCEL=kvm|tcg forces a choice. Otherwise KVM is used when /dev/kvm opens read-write and is
    not the paravirtual kvm_pvm module, under which stock distro kernels hang right after "Probing EDD".
    """
    env = dict(os.environ) if env is None else env
    forced = env.get("BPF_MATRIX_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, "forced by BPF_MATRIX_ACCEL")
    if not dev.exists():
        return Accelerator("tcg", f"{dev} does not exist")
    if (modules / "kvm_pvm").exists():
        return Accelerator("tcg", "/dev/kvm is paravirtual KVM (kvm_pvm), which stock kernels hang under")
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Accelerator("tcg", f"{dev} cannot be opened: {exc.strerror}")
    os.close(fd)
    if not any((modules / name).exists() for name in ("kvm_intel", "kvm_amd", "kvm")):
        return Accelerator("tcg", "no kvm_intel/kvm_amd module loaded")
    return Accelerator("kvm", f"{dev} is usable")


def accelerator_for(arch: Arch, native: Accelerator) -> Accelerator:
    """KVM only runs guests of the host's arch; others are emulated."""
    if arch == host_arch():
        return native
    return Accelerator("tcg", f"{arch.name} guest on a {host_arch().name} host is emulated")


def scaled_timeout(base: float, arch: Arch, accel: Accelerator) -> float:
    """A boot's timeout: emulated foreign arches are several times slower than native TCG."""
    return base * (1.0 if arch == host_arch() else arch.timeout_factor)


def find_vng() -> str:
    """The vng beside this Python (a virtualenv's bin/), else on PATH; raises VMError when absent."""
    beside = Path(sys.executable).parent / "vng"
    if beside.exists():
        return str(beside)
    found = shutil.which("vng")
    if not found:
        raise VMError("virtme-ng (vng) is not installed: run ./setup.sh or pip install virtme-ng")
    return found


def vng_env() -> dict[str, str]:
    """vng runs virtme-run and depmod by name: put this Python's bin/ and sbin on PATH."""
    env = dict(os.environ)
    parts = [str(Path(sys.executable).parent), *env.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]
    env["PATH"] = os.pathsep.join(dict.fromkeys(p for p in parts if p))
    return env


class Runner(Protocol):
    """Boots one VM; the real one runs vng, tests use a fake with the same shape."""

    def run(self, req: VMRequest) -> VMResult: ...


# Process groups of VMs started by this process, so that a signal handler can stop them all (and only
# them). Guarded by a lock: xdist workers are processes, but tests may boot from threads.
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()


def live_vms() -> list[int]:
    with _LIVE_LOCK:
        return sorted(_LIVE)


def kill_group(pgid: int, grace: float = 5.0, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM a VM's process group, then SIGKILL what is left after ``grace`` seconds.

    ``reap`` (the leader's Popen.poll) collects the leader once it exits: a group whose leader is an
    unreaped zombie still exists for killpg, which would make every stop last the whole grace.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_all_vms() -> None:
    """Stop every VM this process started (used on SIGINT/SIGTERM and at exit)."""
    for pgid in live_vms():
        kill_group(pgid, grace=2.0)
        with _LIVE_LOCK:
            _LIVE.discard(pgid)


def read_done(share: Path) -> protocol.DoneRecord | None:
    """The agent's completion record, or None when it never wrote one (or wrote garbage)."""
    return protocol.read_done(share)


class VngRunner:
    """Runs vng as a subprocess in its own process group, with a timeout and a console log."""

    def __init__(self, console_log: Path | None = None, vng: str | None = None) -> None:
        self.console_log = console_log
        self.vng = vng  # the vng to run; None finds it (find_vng)

    def run(self, req: VMRequest) -> VMResult:
        """Boot, wait for the guest to finish, and return its completion record.

        Raises LostVMError (with the console's tail) when the guest wrote no completion record: it
        panicked, hung past the timeout, or qemu died. vng's own exit status is not trusted: it exits
        255 now and then although the guest ran to the end (seen with Debian 5.10, 6.12 and 7.3).
        """
        argv = build_vng_argv(req, self.vng or find_vng())
        log_path = self.console_log or (req.share / "console.log")
        start = time.monotonic()
        timed_out = False
        with log_path.open("wb") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=vng_env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise VMError(f"cannot start {argv[0]}: {exc.strerror}") from exc
            with _LIVE_LOCK:
                _LIVE.add(proc.pid)
            try:
                proc.wait(timeout=req.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                kill_group(proc.pid, grace=3.0, reap=proc.poll)
                proc.wait()
                with _LIVE_LOCK:
                    _LIVE.discard(proc.pid)
        seconds = time.monotonic() - start
        console = log_path.read_text(errors="replace")
        done = read_done(req.share)
        if done is None:
            tail = console_tail(console)
            what = diagnose_console(console)
            if what and what not in tail:
                # A panic's backtrace can push its first line out of the tail: keep it in view, within
                # the same number of lines.
                tail = f"{what}\n...\n{console_tail(console, CONSOLE_TAIL_LINES - 2)}"
            if timed_out:
                msg = f"guest did not finish within {req.timeout:.0f} s"
            elif "Could not access KVM" in console or "failed to initialize kvm" in console.lower():
                msg = "KVM could not be used (set BPF_MATRIX_ACCEL=tcg)"
            else:
                msg = f"guest ended without a completion record (vng exit {proc.returncode})"
            if what:
                msg += f": {what}"
            raise LostVMError(msg, tail)
        return VMResult(done, console, seconds, proc.returncode, req.accelerator, tuple(argv))
