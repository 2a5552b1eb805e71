"""Fault injection: the harness reports the truth about lost guests, downloads and caches, and leaves
nothing behind (no qemu, no temp dir) and loads nothing of the user's BPF on the host.

The VM tests boot the 6.1 x86_64 kernel of kernels-ci.yaml with guest commands that break things; they
are marked integration. The download and cache tests use a fake archive on 127.0.0.1 and no VM. Covered
elsewhere and not repeated here: SHA-256 mismatches (test_debian, test_fetch), 5xx retries and refused
connections (test_debian), corrupted cache entries rebuilt or fetched again (test_cache, test_fetch),
entry paths that would leave the cache root (test_cache).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tools import needs

from harness.errors import ConfigError, FetchError, IntegrityError, LostVMError
from harness.kernels.config import ARCHES, KernelSpec, load_kernels_yaml, parse_kernels_yaml
from harness.kernels.debian import fetch_file
from harness.kernels.fetch import KernelBuild, fetch_kernel
from harness.vm.runner import Accelerator, VMRequest, VMResult, VngRunner, live_vms

REPO = Path(__file__).resolve().parent.parent
CI_KERNELS = REPO / "kernels-ci.yaml"
TCG = Accelerator("tcg", "fault tests run under emulation")
BOOT_TIMEOUT = 300.0  # a whole boot on a busy machine under TCG
HANG_TIMEOUT = 100.0  # long enough to boot and reach the guest command, short enough to be cheap


# ---------------------------------------------------------------- helpers


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every process whose command line contains ``text`` (from /proc)."""
    found: dict[int, str] = {}
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in raw:
            found[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


def qemu_of(text: str) -> dict[int, str]:
    found = processes_mentioning(text)
    return {pid: cmd for pid, cmd in found.items() if "qemu-system" in cmd.split(" ", 1)[0]}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ---------------------------------------------------------------- booting with faults


@pytest.fixture(scope="module")
def kernel() -> KernelBuild:
    """The 6.1 x86_64 kernel of kernels-ci.yaml (from the machine's kernel cache when it is there)."""
    config = load_kernels_yaml(CI_KERNELS).select(["6.1-x86_64"])
    return fetch_kernel(config.kernels[0], mirror=config.mirror)


class Boot:
    """One VngRunner boot in a test's own directories: the share and vng's TMPDIR."""

    def __init__(self, kernel: KernelBuild, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kernel = kernel
        self.share = root / "share"
        self.share.mkdir()
        self.vmtmp = root / "vmtmp"
        self.vmtmp.mkdir()
        monkeypatch.setenv("TMPDIR", str(self.vmtmp))

    def run(self, script: str, timeout: float = BOOT_TIMEOUT) -> VMResult:
        req = VMRequest(
            image=self.kernel.image,
            arch=ARCHES["x86_64"],
            share=self.share,
            command=["sh", "-c", script],
            accelerator=TCG,
            timeout=timeout,
        )
        return VngRunner().run(req)

    def lost(self, script: str, timeout: float = BOOT_TIMEOUT) -> LostVMError:
        with pytest.raises(LostVMError) as info:
            self.run(script, timeout)
        return info.value

    def assert_nothing_left(self) -> None:
        assert qemu_of(str(self.share)) == {}, "a qemu of this test is still running"
        assert processes_mentioning(str(self.share)) == {}
        assert live_vms() == []
        # vng keeps a temp file per boot (its guest's exit code) in TMPDIR.
        assert list(self.vmtmp.iterdir()) == []


@pytest.fixture
def boot(kernel: KernelBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Boot]:
    b = Boot(kernel, tmp_path, monkeypatch)
    yield b
    b.assert_nothing_left()


@pytest.mark.integration
def test_kernel_panic_is_a_lost_vm_with_the_panic(boot: Boot) -> None:
    err = boot.lost("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger")
    assert str(err).startswith("guest ended without a completion record (vng exit ")
    assert str(err).endswith(": Kernel panic - not syncing: sysrq triggered crash")
    assert "\n" not in str(err)
    assert "sysrq triggered crash" in err.console_tail
    assert 0 < len(err.console_tail.splitlines()) <= 40


@pytest.mark.integration
def test_hang_past_the_timeout_is_a_lost_vm(boot: Boot) -> None:
    started = time.monotonic()
    err = boot.lost("touch /mnt/sleeping; sleep 3600", timeout=HANG_TIMEOUT)
    elapsed = time.monotonic() - started
    assert str(err) == f"guest did not finish within {HANG_TIMEOUT:.0f} s"
    assert (boot.share / "sleeping").exists(), "the guest never reached its command: raise HANG_TIMEOUT"
    assert err.console_tail
    # Stopped right after the timeout: SIGTERM, then SIGKILL after a short grace.
    assert HANG_TIMEOUT <= elapsed < HANG_TIMEOUT + 30


@pytest.mark.integration
def test_qemu_killed_from_outside_is_a_lost_vm(boot: Boot) -> None:
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and not (boot.share / "sleeping").exists():
            time.sleep(0.2)
        for pid in qemu_of(str(boot.share)):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    started = time.monotonic()
    try:
        err = boot.lost("touch /mnt/sleeping; sleep 3600")
    finally:
        thread.join(BOOT_TIMEOUT)
    assert len(killed) == 1
    assert str(err).startswith("guest ended without a completion record (vng exit ")
    # Noticed when qemu died, not at the timeout.
    assert time.monotonic() - started < BOOT_TIMEOUT / 2


# Directories virtme-ng overlays with a guest-only tmpfs (its virtme_rw_overlay* boot parameters).
GUEST_OVERLAYS = tuple(f"{d}/" for d in ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp"))


@pytest.mark.integration
def test_broken_done_record_is_lost_and_guest_cannot_write_to_the_host(boot: Boot, tmp_path: Path) -> None:
    """One boot for two faults: the guest tries to write outside /mnt (it sees the host's files
    read-only: writes fail or stay in the guest), then leaves a done.json that is not JSON."""
    # Not under /tmp or /var, which the guest gets as tmpfs or overlays of its own.
    host_dir = REPO / f".fault-{os.getpid()}-{tmp_path.name}"
    host_dir.mkdir()
    try:
        (host_dir / "existing").write_text("host\n")
        targets = {
            "new": host_dir / "new",
            "existing": host_dir / "existing",
            "usr": Path("/usr") / f"bpf-matrix-fault-{tmp_path.name}",
        }
        lines = [f"cat {targets['existing']} > /mnt/read.txt"]
        for name, path in targets.items():
            lines.append(f"if echo guest >> {path} 2>/dev/null; then echo '{name} wrote'; "
                         f"else echo '{name} denied'; fi >> /mnt/writes.txt")
        lines.append("printf '{\"ok\": tru' > /mnt/done.json")
        err = boot.lost("; ".join(lines))
        assert str(err).startswith("guest ended without a completion record (vng exit ")
        assert (boot.share / "done.json").read_text() == '{"ok": tru'
        assert err.console_tail
        # It saw the host's file...
        assert (boot.share / "read.txt").read_text() == "host\n"
        said = dict(line.split(" ", 1) for line in (boot.share / "writes.txt").read_text().splitlines())
        # ...could not write beside it (where virtme-ng gives the guest an overlay of its own, as for a
        # clone under /tmp, the write lands in that overlay: what counts is that the host never sees it)...
        if not str(host_dir.resolve()).startswith(GUEST_OVERLAYS):
            assert said["new"] == said["existing"] == "denied", said
        # ...and whatever it wrote into its own overlays (virtme-ng gives /usr, /etc, /var... a tmpfs
        # overlay) never reached the host.
        assert (host_dir / "existing").read_text() == "host\n"
        for path in targets.values():
            if path != targets["existing"]:
                assert not path.exists(), path
    finally:
        shutil.rmtree(host_dir)


# ---------------------------------------------------------------- signals to a matrix run


def signals_at_default() -> None:
    """In the child before exec: SIGINT and SIGQUIT at their defaults, even where this test run was started
    with them ignored (in the background, under nohup): an ignored signal stays ignored across exec."""
    for signum in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process that looks like a VM: a copy of sleep named qemu-system-x86_64."""
    fake = tmp_path / "bystander" / "qemu-system-x86_64"
    fake.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    proc = subprocess.Popen([str(fake), "3600"])
    yield proc
    proc.kill()
    proc.wait(10)


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_runs_vms_and_no_others(
    tmp_path: Path, bystander: subprocess.Popen[bytes], signum: int
) -> None:
    run_tmp = tmp_path / "run"
    run_tmp.mkdir()
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TMPDIR"] = str(run_tmp)
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        env.pop(var, None)
    argv = [
        sys.executable, "-m", "pytest", "matrix/", "-p", "no:cacheprovider", "-q", "-k", "test_load",
        "--kernels", str(CI_KERNELS), "--kernel", "6.1-x86_64", "--matrix-json", str(tmp_path / "m.json"),
        "--fresh-boots",  # a VM to stop, even when an earlier run's records are in the cache
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=signals_at_default,
    )
    try:
        wait_for(lambda: bool(qemu_of(str(run_tmp))) or proc.poll() is not None, BOOT_TIMEOUT, "a qemu")
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        vms = qemu_of(str(run_tmp))
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text[-3000:]  # pytest: interrupted
    assert "KeyboardInterrupt" in text
    wait_for(lambda: not any(is_alive(pid) for pid in vms), 10, "the run's qemu to exit")
    assert processes_mentioning(str(run_tmp)) == {}
    assert bystander.poll() is None and is_alive(bystander.pid)
    # The run directory with every share is removed, and vng left no temp file.
    assert list(run_tmp.iterdir()) == []


# ---------------------------------------------------------------- the user's BPF never loads on the host


def host_programs() -> dict[int, str]:
    """id -> name of every BPF program loaded on the host."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    argv = [bpftool, "-j", "prog", "show"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return {int(p["id"]): str(p.get("name", "")) for p in json.loads(out.stdout or "[]")}


@needs("strace", "/usr/sbin/bpftool")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_matrix_run_makes_no_bpf_load_on_the_host(tmp_path: Path) -> None:
    """The whole host side of a run (build, inventory, facts, offline checks) against a fake VM: strace
    shows no bpf(2) call that loads a program, a map or BTF, and the host's programs are unchanged."""
    from test_plugin import KERNELS, VMLINUX_H, Project, fake_kernel_image

    (tmp_path / "images").mkdir()
    for k in ("5.10", "6.1"):
        (tmp_path / "images" / f"vmlinuz-{k}.0-fake").write_bytes(fake_kernel_image(k))
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "vmlinux.h").write_text(VMLINUX_H)
    (progs / "probe.bpf.c").write_text(
        '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\nchar LICENSE[] SEC("license") = "GPL";\n'
        'SEC("kprobe/vfs_unlink")\nint host_must_not_load(void *ctx) { return 0; }\n'
    )
    (tmp_path / "kernels.yaml").write_text(KERNELS)
    project = Project(tmp_path, {})
    before = host_programs()
    trace = tmp_path / "bpf.trace"
    out = project.run(wrapper=("strace", "-f", "-qq", "-e", "trace=bpf", "-o", str(trace)))
    after = host_programs()
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.cells("6.1", "load")[0]["outcome"] == "pass"
    assert trace.is_file()
    calls = [ln for ln in trace.read_text().splitlines() if "bpf(" in ln]
    loads = [ln for ln in calls if any(c in ln for c in ("BPF_PROG_LOAD", "BPF_MAP_CREATE", "BPF_BTF_LOAD"))]
    assert loads == []
    # Other programs may come and go on a shared machine; none of them is the user's.
    new = {after[i] for i in set(after) - set(before)}
    assert not any(name.startswith("host_must_not") for name in new), new


# ---------------------------------------------------------------- kernels.yaml paths


@pytest.mark.parametrize("kid", ["../../x", "a/b", "..", "/etc", ".hidden", "x\ny"])
def test_kernel_ids_that_are_paths_are_refused(tmp_path: Path, kid: str) -> None:
    text = f"kernels:\n  - id: {json.dumps(kid)}\n    suite: bookworm\n"
    with pytest.raises(ConfigError, match=r"kernels\.yaml: kernel .*: id .* must be letters, digits"):
        parse_kernels_yaml(text, tmp_path / "kernels.yaml")


def test_local_kernel_entry_stays_in_the_cache(tmp_path: Path) -> None:
    image_dir = tmp_path / "elsewhere"
    image_dir.mkdir()
    (tmp_path / "conf").mkdir()
    (image_dir / "vmlinuz-6.9.0").write_bytes(b"MZ kernel")
    cache = tmp_path / "cache"
    config = parse_kernels_yaml(
        "kernels:\n  - id: mine\n    source: local\n    image: ../elsewhere/vmlinuz-6.9.0\n",
        tmp_path / "conf" / "kernels.yaml",
    )
    build = fetch_kernel(config.kernels[0], cache)
    assert build.image == tmp_path / "conf" / ".." / "elsewhere" / "vmlinuz-6.9.0"
    assert build.entry.resolve().is_relative_to(cache.resolve())
    assert build.facts_dir.resolve().is_relative_to(cache.resolve())
    # The image is used in place: nothing is written beside it.
    assert sorted(p.name for p in image_dir.iterdir()) == ["vmlinuz-6.9.0"]


# ---------------------------------------------------------------- downloads


class Mirror(http.server.ThreadingHTTPServer):
    """Serves ``files``; the first ``truncate[path]`` answers of a path stop halfway through."""

    files: dict[str, bytes]
    truncate: dict[str, int]
    log: list[str]


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self) -> None:
        self.server.log.append(self.path)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.server.truncate.get(self.path, 0) > 0:
            self.server.truncate[self.path] -= 1
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    server = Mirror(("127.0.0.1", 0), MirrorHandler)
    server.files, server.truncate, server.log = {}, {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def base(server: Mirror) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_unreachable_mirror_backs_off_then_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    port = probe.server_address[1]
    probe.server_close()
    waits: list[float] = []
    monkeypatch.setattr("harness.kernels.debian.time.sleep", waits.append)
    dest = tmp_path / "dl" / "pkg.deb"
    with pytest.raises(FetchError) as info:
        fetch_file(f"http://127.0.0.1:{port}/pkg.deb", dest, what="package p", tries=4, backoff=0.5)
    assert waits == [0.5, 1.0, 2.0]  # exponential backoff between the four tries
    message = str(info.value)
    assert message.startswith(f"mirror http://127.0.0.1:{port}/pkg.deb unreachable after 4 tries: ")
    assert message.endswith("Connection refused"), message
    assert "\n" not in message
    assert list(dest.parent.iterdir()) == []


def test_truncated_download_is_retried(mirror: Mirror, tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    mirror.files["/pkg.deb"] = data
    mirror.truncate["/pkg.deb"] = 1
    dest = tmp_path / "dl" / "pkg.deb"
    sha = hashlib.sha256(data).hexdigest()
    digest = fetch_file(f"{base(mirror)}/pkg.deb", dest, what="p", sha256=sha, size=len(data), backoff=0.01)
    assert digest == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert mirror.log == ["/pkg.deb", "/pkg.deb"]
    assert list(dest.parent.iterdir()) == [dest]


def test_always_truncated_download_fails_and_leaves_nothing(mirror: Mirror, tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    mirror.files["/pkg.deb"] = data
    mirror.truncate["/pkg.deb"] = 10
    dest = tmp_path / "dl" / "pkg.deb"
    with pytest.raises(FetchError) as info:
        fetch_file(f"{base(mirror)}/pkg.deb", dest, what="package p", size=len(data), tries=3, backoff=0.01)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"mirror {base(mirror)}/pkg.deb unreachable after 3 tries: ")
    assert "IncompleteRead" in str(info.value) or "Connection broken" in str(info.value)
    assert len(mirror.log) == 3
    assert list(dest.parent.iterdir()) == []


def test_short_body_without_length_is_an_integrity_error(tmp_path: Path) -> None:
    """A server that sends no Content-Length and closes early: the size from the index catches it."""

    class NoLength(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"half")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoLength)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "pkg.deb"
        with pytest.raises(IntegrityError, match=r"^package p: size mismatch for .*: expected 8, got 4$"):
            fetch_file(f"http://127.0.0.1:{server.server_address[1]}/x", dest, what="package p", size=8,
                       backoff=0.01)
        assert list(tmp_path.iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------- two processes, one kernel


def _fetch_in_child(spec: KernelSpec, cache: str, mirror_url: str, start: float, out: str) -> None:
    while time.time() < start:
        pass
    build = fetch_kernel(spec, Path(cache), mirror_url)
    Path(out).write_text(str(build.image))


@needs("dpkg-deb")
def test_two_processes_fetching_one_kernel_download_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import test_fetch

    server = test_fetch.Archive(("127.0.0.1", 0), test_fetch.Handler)
    server.root = tmp_path / "mirror"
    server.root.mkdir()
    server.log = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("BPF_MATRIX_KEYRING", "none")
    try:
        test_fetch.bookworm(server, tmp_path)
        spec = KernelSpec(id="6.1", arch=ARCHES["x86_64"], source="debian", suite="bookworm")
        ctx = multiprocessing.get_context("fork")
        start = time.time() + 0.5
        outs = [tmp_path / f"child{i}.txt" for i in range(2)]
        procs = [
            ctx.Process(target=_fetch_in_child,
                        args=(spec, str(tmp_path / "cache"), test_fetch.mirror_of(server), start, str(o)))
            for o in outs
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0]
        images = {o.read_text() for o in outs}
        assert len(images) == 1 and Path(images.pop()).read_bytes() == test_fetch.IMAGE
        debs = [p for p in server.log if p.endswith(".deb")]
        assert len(debs) == 1, server.log
        assert server.log.count("/dists/bookworm/InRelease") == 1
        entries = tmp_path / "cache" / "kernels" / "x86_64"
        assert [p.name for p in entries.iterdir() if p.name.startswith(".")] == []  # no half-built entry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@needs("dpkg-deb", "gpg", "gpgv")
def test_offline_kernel_fetch_uses_the_stale_verified_index_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import test_debian
    import test_fetch

    server = test_fetch.Archive(("127.0.0.1", 0), test_fetch.Handler)
    server.root = tmp_path / "mirror"
    server.root.mkdir()
    server.log = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "gnupg").mkdir()
    keyring = test_debian.make_signing_key(tmp_path / "gnupg")
    monkeypatch.setenv("BPF_MATRIX_KEYRING", str(keyring))
    monkeypatch.delenv("BPF_MATRIX_REFRESH", raising=False)
    monkeypatch.setattr("harness.kernels.debian.time.sleep", lambda _: None)
    spec = KernelSpec(id="6.1", arch=ARCHES["x86_64"], source="debian", suite="bookworm")
    cache, mirror_url = tmp_path / "cache", test_fetch.mirror_of(server)
    try:
        test_fetch.bookworm(server, tmp_path)
        dist = server.root / "dists" / "bookworm"
        (dist / "InRelease").rename(dist / "Release")
        test_debian.clearsign(tmp_path / "gnupg", dist / "Release", dist / "InRelease")
        online = fetch_kernel(spec, cache, mirror_url)
        assert online.verified.startswith("Release signature verified (gpgv")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    # Seven hours later, with no network: the kernel and the index it came from are in the cache.
    (stamp,) = (cache / "index").glob("*/*/*/verified.json")
    meta = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**meta, "time": meta["time"] - 7 * 3600}))
    offline = fetch_kernel(spec, cache, mirror_url)
    assert offline.image == online.image and offline.digest == online.digest
    assert offline.verified.startswith(online.verified + "; suite index from ")
    assert ", 7 h old: mirror unreachable (" in offline.verified
    monkeypatch.setenv("BPF_MATRIX_REFRESH", "1")
    with pytest.raises(FetchError, match="unreachable after 4 tries"):
        fetch_kernel(spec, cache, mirror_url)


# ---------------------------------------------------------------- kernel images and vmlinux.h


def test_local_image_that_is_not_a_kernel_is_a_usage_error_before_any_boot(tmp_path: Path) -> None:
    """A random file beside a real kernel used to be booted to the VM's timeout, twice (the retry):
    it is refused at configure time, one usage line naming the kernels.yaml entry, nothing booted."""
    from test_plugin import KERNELS, VMLINUX_H, Project, fake_kernel_image

    images = tmp_path / "images"
    images.mkdir()
    (images / "vmlinuz-6.1.0-fake").write_bytes(fake_kernel_image("6.1"))
    (images / "vmlinuz-5.10.0-fake").write_bytes(os.urandom(1 << 20))
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "vmlinux.h").write_text(VMLINUX_H)
    (progs / "probe.bpf.c").write_text(
        '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\nchar LICENSE[] SEC("license") = "GPL";\n'
        'SEC("kprobe/vfs_unlink")\nint on_unlink(void *ctx) { return 0; }\n'
    )
    (tmp_path / "kernels.yaml").write_text(KERNELS)
    out = Project(tmp_path, {}).run()
    assert out.returncode == 4, out.stdout[-3000:] + out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("ERROR:")]
    assert errors == [
        f"ERROR: {tmp_path / 'kernels.yaml'}: kernel '5.10' (x86_64): local image "
        f"{images / 'vmlinuz-5.10.0-fake'} is not a kernel: no compressed kernel payload found"
    ], out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert out.boots == [] and out.matrix is None


def _vmlinux_h_errors(tmp_path: Path, kernels_yaml: str, fetch: Callable[..., KernelBuild] | None) -> str:
    """The build error of a program when every kernel fails to give a vmlinux BTF (no VM is run)."""
    from test_pipeline import ARCH, KVM, SAMPLE, FakeRunner

    progs = tmp_path / "bpf_progs"
    progs.mkdir()
    (progs / "sleepy.bpf.c").write_text(SAMPLE)  # no vmlinux.h: it is generated from a kernel's BTF
    config = parse_kernels_yaml(kernels_yaml.replace("ARCH", ARCH.name), tmp_path / "kernels.yaml")
    from harness.run.coordinator import MatrixRun

    runner = FakeRunner()
    work = tmp_path / "work"
    work.mkdir()
    run = MatrixRun(config, progs, runner, KVM, cache_root=tmp_path / "cache", work_dir=work, fetch=fetch)
    errors = run.objects(ARCH).errors
    assert runner.count() == 0 and list(errors) == ["sleepy"]
    return errors["sleepy"]


def test_missing_local_image_is_named_first_in_the_build_error(tmp_path: Path) -> None:
    """The (build) row used to read "no vmlinux BTF for x86_64 to generate vmlinux.h: ..." and bury
    the missing image after it."""
    from test_pipeline import ARCH

    image = tmp_path / "x" / "bzImage"
    yaml_text = f"kernels:\n  - {{id: '6.1', source: local, image: {image}, arches: [ARCH]}}\n"
    msg = _vmlinux_h_errors(tmp_path, yaml_text, None)
    assert msg == (
        f"kernel '6.1' ({ARCH.name}): local image {image} does not exist "
        f"(so no vmlinux BTF for {ARCH.name} to generate vmlinux.h)"
    )


def test_download_error_is_named_first_in_the_build_error(tmp_path: Path) -> None:
    from test_pipeline import ARCH, FakeFetch

    fetch = FakeFetch(tmp_path / "cache")
    fetch.fail[f"6.12-{ARCH.name}"] = "mirror http://127.0.0.1:9/ unreachable: Connection refused"
    fetch.fail[f"6.1-{ARCH.name}"] = "bookworm: Release signature does not verify"
    yaml_text = "defaults: {arches: [ARCH]}\nkernels:\n  - {id: '6.1', suite: bookworm}\n" \
        "  - {id: '6.12', suite: trixie}\n"
    msg = _vmlinux_h_errors(tmp_path, yaml_text, fetch)
    # The newest kernel is tried first.
    assert msg == (
        f"kernel '6.12' ({ARCH.name}): mirror http://127.0.0.1:9/ unreachable: Connection refused; "
        f"kernel '6.1' ({ARCH.name}): bookworm: Release signature does not verify "
        f"(so no vmlinux BTF for {ARCH.name} to generate vmlinux.h)"
    )


# ---------------------------------------------------------------- signals while a guest works

STAND_IN_ENV = "STAND_IN_VNG"
# What the stand-in does in place of a guest: keeps working (a long sleep) until it is stopped. The
# runner starts it in its own process group, as it starts vng; the sleep is its child in that group.
STAND_IN_VNG = """\
#!/bin/sh
here=$(dirname "$0")
"$here/guest-work" 3600 &
echo $! > "$here/started"
wait
"""


def stand_in_runner() -> VngRunner:
    """BPF_MATRIX_RUNNER factory: the real VngRunner, running the stand-in vng that $STAND_IN_VNG names."""
    return VngRunner(vng=os.environ[STAND_IN_ENV])


@needs("clang", "/usr/include/bpf/bpf_helpers.h", why="clang builds the test program")
@pytest.mark.parametrize(
    "selection", [(), ("-k", "test_load"), ("-n", "2")], ids=["every-check", "test_load", "xdist"]
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_working_guest_at_once(
    tmp_path: Path, signum: int, selection: tuple[str, ...]
) -> None:
    """With every check selected and the facts cached, the VM runs in a thread while the offline checks
    are computed: an interrupt there stops the VM at once instead of waiting for the guest."""
    from test_plugin import GOOD_C, KERNELS, VMLINUX_H, Project, fake_kernel_image

    (tmp_path / "images").mkdir()
    for k in ("5.10", "6.1"):
        (tmp_path / "images" / f"vmlinuz-{k}.0-fake").write_bytes(fake_kernel_image(k))
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "vmlinux.h").write_text(VMLINUX_H)
    (progs / "good.bpf.c").write_text(GOOD_C)
    (tmp_path / "kernels.yaml").write_text(KERNELS)
    project = Project(tmp_path, {})
    cached = project.run()  # the fake runner's boots cache every kernel's facts
    assert cached.returncode == 0, cached.stdout[-3000:]
    stand_in = tmp_path / "stand-in"
    stand_in.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", stand_in / "guest-work")
    (stand_in / "vng").write_text(STAND_IN_VNG)
    (stand_in / "vng").chmod(0o755)
    stand_in_env = {"BPF_MATRIX_RUNNER": "test_faults:stand_in_runner", STAND_IN_ENV: str(stand_in / "vng")}
    argv, env = project.command(*selection, env=stand_in_env)
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=signals_at_default,
    )
    try:
        started = stand_in / "started"
        wait_for(lambda: started.exists() or proc.poll() is not None, 120, "the stand-in guest")
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        wait_for(lambda: bool(processes_mentioning(str(stand_in / "guest-work"))), 10, "the guest's work")
        # Under pytest-xdist the workers must also exit (about 2 s idle, more on a loaded 2-core machine
        # running this suite): a deadline of its own, still far below a guest's timeout.
        deadline = 10.0 if "-n" in selection else 5.0
        proc.send_signal(signum)
        start = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            name = signal.Signals(signum).name
            raise AssertionError(f"pytest still running {deadline:.0f} s after {name}") from None
        assert time.monotonic() - start < deadline
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_mentioning(str(stand_in)):
            os.kill(pid, signal.SIGKILL)
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text[-3000:]  # pytest: interrupted
    assert "KeyboardInterrupt" in text
    assert processes_mentioning(str(stand_in)) == {}
    assert [p for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("pytest-of-")] == []
