"""Tests of harness.kernels.rootfs: package lists, safe paths inside a guest tree, completion, caching."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from tools import require

from harness.errors import ConfigError, FetchError
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import ARCHES, GuestSpec
from harness.kernels.rootfs import (
    DEFAULT_PACKAGES,
    complete_rootfs,
    fetch_rootfs,
    inside,
    resolve_packages,
    run_mmdebstrap,
)

FAKE_MMDEBSTRAP = """#!/bin/sh
# Stands in for mmdebstrap: $5 is the target directory; records each run in $FAKE_LOG.
echo "$@" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then echo "E: $FAKE_FAIL" >&2; exit 1; fi
set -e
mkdir -p "$5/usr/bin" "$5/usr/sbin" "$5/usr/share/base-passwd" "$5/etc"
ln -s usr/bin "$5/bin"
ln -s /usr/sbin "$5/sbin"
echo busybox > "$5/usr/bin/busybox"
echo bash > "$5/usr/bin/bash"
echo python > "$5/usr/bin/python3.13"
ln -s python3.13 "$5/usr/bin/python3"
echo bpftool > "$5/usr/sbin/bpftool"
echo "root:x:0:0:root:/root:/bin/bash" > "$5/usr/share/base-passwd/passwd.master"
echo "root:*:0:" > "$5/usr/share/base-passwd/group.master"
"""


@pytest.fixture
def fake_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "mmdebstrap"
    script.write_text(FAKE_MMDEBSTRAP)
    script.chmod(0o755)
    log = tmp_path / "mmdebstrap.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return log


def test_resolve_packages_sorted_with_extras() -> None:
    pkgs = resolve_packages(GuestSpec(packages=("strace", "bash")))
    assert pkgs == tuple(sorted(set(DEFAULT_PACKAGES) | {"strace"}))
    assert {"python3", "bpftool", "busybox-static", "libbpf1", "base-passwd"} <= set(pkgs)


@pytest.mark.parametrize("bad", ["../x", "a b", "Foo", "", "x;rm"])
def test_resolve_packages_rejects_non_package_names(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a Debian package name"):
        resolve_packages(GuestSpec(packages=(bad,)))


def test_inside_keeps_absolute_links_and_dotdot_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("/usr/bin")  # absolute: on the host this would leave the tree
    (root / "escape").symlink_to("../../../../etc")
    assert inside(root, "bin/sh") == root / "usr" / "bin" / "sh"
    assert inside(root, "/bin/../../../etc/passwd") == root / "etc" / "passwd"
    assert inside(root, "escape/passwd") == root / "etc" / "passwd"


def test_inside_loop_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(FetchError, match="too many symlinks"):
        inside(root, "a/x")


def make_tree(root: Path) -> None:
    env = {**os.environ, "FAKE_LOG": os.devnull}
    subprocess.run(["sh", "-c", FAKE_MMDEBSTRAP, "x", "1", "2", "3", "4", str(root)],
                   env=env, check=True, timeout=30)


def test_complete_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    complete_rootfs(root)
    for name in ("proc", "sys", "dev", "run", "tmp", "opt", "srv"):
        assert (root / name).is_dir(), name
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(root / "usr" / "bin" / "sh") == "bash"
    assert (root / "etc" / "passwd").read_text().startswith("root:x:0:0")
    assert (root / "etc" / "group").read_text().startswith("root:*:0:")
    # sbin is an absolute link: poweroff must land in the tree's usr/sbin, not the host's.
    assert os.readlink(root / "usr" / "sbin" / "poweroff") == "/bin/busybox"
    complete_rootfs(root)  # idempotent


def test_complete_rootfs_needs_busybox(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    (root / "usr" / "bin" / "busybox").unlink()
    with pytest.raises(FetchError, match="busybox"):
        complete_rootfs(root)


def test_fetch_rootfs_builds_once_per_package_list(tmp_path: Path, fake_mmdebstrap: Path) -> None:
    cache = tmp_path / "cache"
    arm64 = ARCHES["arm64"]
    mirror = "http://127.0.0.1:9/debian"
    first = fetch_rootfs(arm64, GuestSpec(suite="trixie"), cache, mirror)
    again = fetch_rootfs(arm64, GuestSpec(suite="trixie"), cache, mirror)
    assert first == again
    assert first.is_relative_to(cache)
    runs = fake_mmdebstrap.read_text().splitlines()
    assert len(runs) == 1
    argv = runs[0].split()
    include = ",".join(resolve_packages(GuestSpec()))
    assert argv[:3] == ["--variant=extract", "--arch=arm64", f"--include={include}"]
    assert argv[3] == "trixie" and argv[5] == mirror
    assert (first / "etc" / "passwd").is_file()

    other = fetch_rootfs(arm64, GuestSpec(suite="trixie", packages=("strace",)), cache, mirror)
    assert other != first
    assert len(fake_mmdebstrap.read_text().splitlines()) == 2

    # A damaged key file is noticed and the tree is built again.
    (first / "usr" / "bin" / "busybox").write_text("changed")
    assert fetch_rootfs(arm64, GuestSpec(suite="trixie"), cache, mirror) == first
    assert len(fake_mmdebstrap.read_text().splitlines()) == 3
    assert (first / "usr" / "bin" / "busybox").read_text() == "busybox\n"


def test_mmdebstrap_failure_is_reported(
    tmp_path: Path, fake_mmdebstrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "Unable to locate package nosuch")
    with pytest.raises(FetchError, match=r"rootfs trixie/arm64: mmdebstrap exit 1: E: Unable to locate"):
        run_mmdebstrap(ARCHES["arm64"], "trixie", ("nosuch",), tmp_path / "d", "http://127.0.0.1:9/d")
    with pytest.raises(FetchError):
        fetch_rootfs(ARCHES["arm64"], GuestSpec(), tmp_path / "cache", "http://127.0.0.1:9/d")
    leftovers = list((tmp_path / "cache").rglob("*"))
    assert all(p.name.endswith(".lock") or p.is_dir() for p in leftovers)
    assert not [p for p in leftovers if p.name.startswith(".")]


@pytest.mark.integration
def test_real_arm64_trixie_rootfs(tmp_path: Path) -> None:
    require("mmdebstrap")
    # The machine's own cache: the matrix runs of the other integration tests reuse what this fetches.
    cache = resolve_cache_root(os.environ)
    started = time.monotonic()
    root = fetch_rootfs(ARCHES["arm64"], GuestSpec(suite="trixie"), cache)
    elapsed = time.monotonic() - started
    for rel in ("usr/bin/python3", "usr/sbin/bpftool", "usr/bin/busybox", "etc/passwd", "etc/group"):
        assert inside(root, rel).is_file(), rel
    assert inside(root, "bin/sh").exists()
    assert os.readlink(inside(root, "sbin") / "poweroff") == "/bin/busybox"
    assert list(inside(root, "usr/lib").glob("aarch64-linux-gnu/libbpf.so.1*"))
    out = subprocess.run(["file", "-L", str(inside(root, "usr/sbin/bpftool"))],
                         capture_output=True, text=True, timeout=30, check=False).stdout
    if out:
        assert "aarch64" in out or "ARM aarch64" in out
    print(f"arm64 trixie rootfs at {root} in {elapsed:.1f} s")
