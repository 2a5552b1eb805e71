"""Tests of vm.runner without a VM: the vng argv, the accelerator probe, console diagnosis, done.json."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from harness.errors import LostVMError
from harness.kernels.config import ARCHES, host_arch
from harness.vm.runner import (
    CONSOLE_TAIL_LINES,
    DONE_FILE,
    GUEST_SHARE,
    Accelerator,
    VMRequest,
    VngRunner,
    build_vng_argv,
    console_tail,
    diagnose_console,
    probe_accelerator,
    read_done,
)

KVM = Accelerator("kvm", "test")
TCG = Accelerator("tcg", "test")
OTHER_ARCH = ARCHES["arm64"] if host_arch().name != "arm64" else ARCHES["x86_64"]


def request(tmp_path: Path, **kw: object) -> VMRequest:
    base: dict[str, object] = {
        "image": tmp_path / "vmlinuz-6.1.0-27-amd64",
        "arch": host_arch(),
        "share": tmp_path / "share",
        "command": ["python3", "/mnt/agent.py", "/mnt"],
        "accelerator": KVM,
    }
    base.update(kw)
    return VMRequest(**base)  # type: ignore[arg-type]


def option(argv: list[str], name: str) -> list[str]:
    """Every value given to ``name`` in ``argv``."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


# ---------------------------------------------------------------- build_vng_argv


def test_argv_host_arch_on_host_root_kvm(tmp_path: Path) -> None:
    req = request(tmp_path)
    argv = build_vng_argv(req, vng="/venv/bin/vng")
    assert argv[:5] == ["/venv/bin/vng", "--run", str(req.image), "--verbose", "--force-9p"]
    # The host's own root and arch: vng needs neither --arch nor --root, and KVM stays on.
    assert "--arch" not in argv and "--root" not in argv
    assert "--disable-kvm" not in argv
    assert option(argv, "--memory") == ["1G"] and option(argv, "--cpus") == ["1"]
    assert f"--rwdir={GUEST_SHARE}={req.share}" in argv
    # The guest command is the last argument, quoted as one shell word list.
    assert argv[-2] == "--exec"
    assert shlex.split(argv[-1]) == list(req.command)
    assert all(isinstance(a, str) for a in argv)


def test_argv_tcg_disables_kvm(tmp_path: Path) -> None:
    argv = build_vng_argv(request(tmp_path, accelerator=TCG))
    assert argv.count("--disable-kvm") == 1


def test_argv_foreign_arch_with_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs-arm64"
    req = request(tmp_path, arch=OTHER_ARCH, root=root, accelerator=TCG, memory="2G", cpus=2)
    argv = build_vng_argv(req)
    assert option(argv, "--arch") == [OTHER_ARCH.vng]
    assert option(argv, "--root") == [str(root)]
    assert "--disable-kvm" in argv
    assert option(argv, "--memory") == ["2G"] and option(argv, "--cpus") == ["2"]
    # With --root a share must be GUEST=HOST: the plain --rwdir=HOST form would not mount.
    rw = [a for a in argv if a.startswith("--rwdir")]
    assert rw == [f"--rwdir={GUEST_SHARE}={req.share}"]


def test_argv_modules_are_shared_read_only_only_on_a_guest_root(tmp_path: Path) -> None:
    mods = tmp_path / "tree" / "lib" / "modules" / "6.1.0-27-arm64"
    on_root = build_vng_argv(request(tmp_path, arch=OTHER_ARCH, root=tmp_path / "rootfs", modules=mods))
    assert [a for a in on_root if a.startswith("--rodir")] == [f"--rodir=/lib/modules/6.1.0-27-arm64={mods}"]
    # On the host's root vng finds the modules itself (virtme_link_mods).
    on_host = build_vng_argv(request(tmp_path, modules=mods))
    assert not [a for a in on_host if a.startswith("--rodir")]


def test_argv_host_arch_on_a_root_filesystem_names_the_arch(tmp_path: Path) -> None:
    argv = build_vng_argv(request(tmp_path, root=tmp_path / "rootfs"))
    assert option(argv, "--arch") == [host_arch().vng]
    assert option(argv, "--root") == [str(tmp_path / "rootfs")]


def test_argv_disks_and_append_in_order(tmp_path: Path) -> None:
    disks = [tmp_path / "a.img", tmp_path / "b.img"]
    append = ["lsm=lockdown,capability,bpf", "nokaslr"]
    argv = build_vng_argv(request(tmp_path, disks=disks, append=append))
    assert option(argv, "--disk") == [str(d) for d in disks]
    assert option(argv, "--append") == append
    assert argv.index("--exec") > max(i for i, a in enumerate(argv) if a in ("--disk", "--append"))


def test_argv_quotes_awkward_guest_commands(tmp_path: Path) -> None:
    command = ["sh", "-c", "echo 'a b' > /mnt/out; echo $HOME"]
    argv = build_vng_argv(request(tmp_path, command=command))
    assert shlex.split(argv[-1]) == command


# ---------------------------------------------------------------- probe_accelerator


@pytest.fixture
def fake_kvm(tmp_path: Path) -> tuple[Path, Path]:
    """A /dev/kvm stand-in (a regular file opens read-write) and an empty /sys/module."""
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    modules = tmp_path / "module"
    modules.mkdir()
    return dev, modules


@pytest.mark.parametrize("module", ["kvm_intel", "kvm_amd", "kvm"])
def test_kvm_used_when_device_and_module_are_there(fake_kvm: tuple[Path, Path], module: str) -> None:
    dev, modules = fake_kvm
    (modules / module).mkdir()
    accel = probe_accelerator(dev, modules, env={})
    assert accel == Accelerator("kvm", f"{dev} is usable")


def test_paravirtual_kvm_falls_back_to_tcg(fake_kvm: tuple[Path, Path]) -> None:
    dev, modules = fake_kvm
    (modules / "kvm").mkdir()
    (modules / "kvm_pvm").mkdir()
    accel = probe_accelerator(dev, modules, env={})
    assert accel.name == "tcg"
    assert "kvm_pvm" in accel.reason


def test_no_device_is_tcg(tmp_path: Path) -> None:
    accel = probe_accelerator(tmp_path / "nokvm", tmp_path, env={})
    assert accel == Accelerator("tcg", f"{tmp_path / 'nokvm'} does not exist")


def test_device_without_kvm_module_is_tcg(fake_kvm: tuple[Path, Path]) -> None:
    dev, modules = fake_kvm
    assert probe_accelerator(dev, modules, env={}).reason == "no kvm_intel/kvm_amd module loaded"


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file read-write")
def test_unopenable_device_is_tcg(fake_kvm: tuple[Path, Path]) -> None:
    dev, modules = fake_kvm
    (modules / "kvm").mkdir()
    dev.chmod(0o400)
    accel = probe_accelerator(dev, modules, env={})
    assert accel.name == "tcg" and "cannot be opened" in accel.reason


@pytest.mark.parametrize(("value", "expected"), [("tcg", "tcg"), ("KVM", "kvm"), (" kvm ", "kvm")])
def test_env_override_wins(fake_kvm: tuple[Path, Path], value: str, expected: str) -> None:
    dev, modules = fake_kvm
    (modules / "kvm_pvm").mkdir()
    accel = probe_accelerator(dev, modules, env={"BPF_MATRIX_ACCEL": value})
    assert accel == Accelerator(expected, "forced by BPF_MATRIX_ACCEL")


def test_env_override_with_other_value_is_ignored(fake_kvm: tuple[Path, Path]) -> None:
    dev, modules = fake_kvm
    (modules / "kvm_pvm").mkdir()
    assert probe_accelerator(dev, modules, env={"BPF_MATRIX_ACCEL": "hvf"}).name == "tcg"


# ---------------------------------------------------------------- console


PANIC_CONSOLE = """\
[    0.000000] Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org)
[    1.234567] virtme-init: mounting /mnt
[    7.100000] sysrq: Trigger a crash
[    7.100100] Kernel panic - not syncing: sysrq triggered crash
[    7.100200] CPU: 0 PID: 123 Comm: sh Not tainted 6.1.0-27-amd64 #1  Debian 6.1.115-1
[    7.100300] Call Trace:
[    7.100400]  <TASK>
[    7.100500]  dump_stack_lvl+0x44/0x5c

[    7.100600] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---
"""

OOPS_CONSOLE = """\
[    3.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    3.000100] #PF: supervisor read access in kernel mode
[    3.000200] Oops: 0000 [#1] PREEMPT SMP NOPTI
"""


def test_diagnose_panic_names_the_first_fatal_line() -> None:
    assert diagnose_console(PANIC_CONSOLE) == "Kernel panic - not syncing: sysrq triggered crash"


def test_diagnose_oops_keeps_the_bug_line() -> None:
    assert diagnose_console(OOPS_CONSOLE) == "BUG: kernel NULL pointer dereference, address: 0000000000000000"


def test_diagnose_init_killed_and_nothing() -> None:
    text = "[ 9.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\n"
    assert diagnose_console(text) == "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000"
    assert diagnose_console("[ 1.0] all fine\nvirtme-init: done\n") == ""
    assert diagnose_console("") == ""


def test_diagnose_is_one_short_line() -> None:
    text = "[ 1.0] Kernel panic - not syncing: " + "x" * 500 + "\n"
    what = diagnose_console(text)
    assert "\n" not in what and len(what) == 200


def test_console_tail_drops_blank_lines_and_keeps_the_end() -> None:
    tail = console_tail(PANIC_CONSOLE, lines=3)
    assert tail.splitlines() == [
        "[    7.100400]  <TASK>",
        "[    7.100500]  dump_stack_lvl+0x44/0x5c",
        "[    7.100600] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---",
    ]
    long = "\n".join(f"line {i}" for i in range(100))
    assert console_tail(long).splitlines() == [f"line {i}" for i in range(60, 100)]
    assert console_tail("") == ""


# ---------------------------------------------------------------- done.json


def test_read_done_missing(tmp_path: Path) -> None:
    assert read_done(tmp_path) is None
    assert read_done(tmp_path / "no-such-share") is None


@pytest.mark.parametrize("content", [b"", b"{", b'{"ok": tru', b"\xff\xfe\x00", b"[1, 2]", b'"ok"', b"null"])
def test_read_done_broken_or_not_a_record(tmp_path: Path, content: bytes) -> None:
    (tmp_path / DONE_FILE).write_bytes(content)
    assert read_done(tmp_path) is None


def test_read_done_directory_in_its_place(tmp_path: Path) -> None:
    (tmp_path / DONE_FILE).mkdir()
    assert read_done(tmp_path) is None


def test_read_done_record(tmp_path: Path) -> None:
    (tmp_path / DONE_FILE).write_text('{"ok": true, "release": "6.1.0-27-amd64"}')
    assert read_done(tmp_path) == {"ok": True, "release": "6.1.0-27-amd64"}


# ---------------------------------------------------------------- VngRunner with a stand-in for vng


def test_lost_vm_keeps_the_panic_line_and_at_most_forty_lines(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A guest that panics and prints a long backtrace, then vng exits 255 with no done.json.
    lines = ["[    1.0] Booting", "[    7.1] Kernel panic - not syncing: sysrq triggered crash"]
    lines += [f"[    7.2] frame {i}" for i in range(60)]
    script = tmp_path / "vng"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\nexit 255\n")
    script.chmod(0o755)
    monkeypatch.setattr("harness.vm.runner.find_vng", lambda: str(script))
    share = tmp_path / "share"
    share.mkdir()
    with pytest.raises(LostVMError) as info:
        VngRunner().run(request(tmp_path, share=share, timeout=30.0))
    err = info.value
    assert str(err) == ("guest ended without a completion record (vng exit 255): "
                        "Kernel panic - not syncing: sysrq triggered crash")
    tail = err.console_tail.splitlines()
    assert len(tail) == CONSOLE_TAIL_LINES
    assert tail[:2] == ["Kernel panic - not syncing: sysrq triggered crash", "..."]
    assert tail[-1] == "[    7.2] frame 59"


def test_kill_group_reaps_its_leader_instead_of_waiting_out_the_grace() -> None:
    """A stopped vng that is still our child is a zombie until reaped, and killpg still finds its
    group: the stop must reap it, not wait for the whole grace (seen as 3 s on every interrupt)."""
    import subprocess
    import time

    from harness.vm.runner import kill_group

    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    start = time.monotonic()
    kill_group(proc.pid, grace=10.0, reap=proc.poll)
    assert time.monotonic() - start < 5
    assert proc.poll() is not None


def test_argv_shares_loader_binaries_read_only_inside_the_share(tmp_path: Path) -> None:
    bins = tmp_path / "bins" / "arm64"
    argv = build_vng_argv(request(tmp_path, arch=OTHER_ARCH, root=tmp_path / "rootfs",
                                  readonly=[("loaders/0", bins)]))
    rw = [a for a in argv if a.startswith("--rwdir")]
    ro = [a for a in argv if a.startswith("--rodir")]
    assert ro == [f"--rodir=/mnt/loaders/0={bins}"]
    # virtme-ng mounts every --rwdir before any --rodir: the share is there when the binaries go in it.
    assert argv.index(rw[0]) < argv.index(ro[0])
