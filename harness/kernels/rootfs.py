"""Guest root filesystems, one per (arch, Debian suite, package list): unpacked by mmdebstrap, completed,
cached. Every arch, the host's included, boots one, so that all guests load with the same userland."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from harness.errors import ConfigError, FetchError
from harness.kernels.cache import Manifest, digest_files, ensure_entry, entry_path, resolve_cache_root
from harness.kernels.config import Arch, GuestSpec
from harness.kernels.debian import apt_source_files, resolve_mirror

log = logging.getLogger(__name__)

MMDEBSTRAP_TIMEOUT = 1800.0
ROOT = "root"  # the filesystem inside its cache entry, beside manifest.json

# What the guest agent needs: a Python with ctypes for libbpf, bpftool, a shell and the usual tools,
# busybox for poweroff, base-passwd for /etc/passwd and /etc/group.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "python3-minimal",
    "python3",
    "libbpf1",
    "bpftool",
    "busybox-static",
    "bash",
    "coreutils",
    "util-linux",
    "mount",
    "kmod",
    "grep",
    "sed",
    "findutils",
    "procps",
    "iproute2",
    "libc-bin",
    "base-passwd",
)

# Directories the guest's init mounts on or writes to; --variant=extract does not create them all.
GUEST_DIRS: tuple[tuple[str, int], ...] = (
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("opt", 0o755),
    ("srv", 0o755),
    ("root", 0o700),
    ("mnt", 0o755),  # the harness's shared directory is mounted here
)
# Part of the cache key: bump it when the tree's layout changes so that old entries are rebuilt.
LAYOUT_VERSION = 2

# Files whose digests the manifest keeps: a changed or missing one means a broken tree.
KEY_FILES: tuple[str, ...] = ("bin/busybox", "bin/bash", "usr/bin/python3", "usr/sbin/bpftool")


def resolve_packages(spec: GuestSpec) -> tuple[str, ...]:
    """The sorted, de-duplicated package list: the defaults plus ``spec.packages``.

    Raises ConfigError for a name that is not a Debian package name.
    """
    names = set(DEFAULT_PACKAGES)
    for name in spec.packages:
        if not name or not name[0].isalnum() or any(
            not (c.isalnum() or c in "+-.") or c.isupper() for c in name
        ):
            raise ConfigError(f"kernels.yaml: guest package {name!r} is not a Debian package name")
        names.add(name)
    return tuple(sorted(names))


def inside(root: Path, path: str) -> Path:
    """``path`` inside ``root`` as the guest sees it: symlinks are followed as if ``root`` were ``/``
    (absolute targets stay in ``root``), and ``..`` never climbs above it."""
    parts: list[str] = []
    pending = list(PurePosixPath(path).parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("/", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        candidate = root.joinpath(*parts, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise FetchError(f"{root}: too many symlinks resolving {path}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                parts = []
            pending = list(target.parts) + pending
            continue
        parts.append(part)
    return root.joinpath(*parts)


def run_mmdebstrap(
    arch: Arch, suite: str, packages: tuple[str, ...], dest: Path, mirror: str,
    timeout: float = MMDEBSTRAP_TIMEOUT,
) -> None:
    """Unpack ``packages`` (and what they depend on) of ``suite`` for ``arch`` into ``dest`` without
    running anything from them (no binfmt needed). Raises FetchError with mmdebstrap's last words."""
    argv = [
        "mmdebstrap",
        "--variant=extract",
        f"--arch={arch.debian}",
        f"--include={','.join(packages)}",
        suite,
        str(dest),
        mirror,
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise FetchError(f"rootfs {suite}/{arch.name}: mmdebstrap is not installed") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"rootfs {suite}/{arch.name}: mmdebstrap failed: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")] or proc.stderr.splitlines()
        raise FetchError(
            f"rootfs {suite}/{arch.name}: mmdebstrap exit {proc.returncode}: "
            f"{lines[-1] if lines else 'no output'}"
        )


def complete_rootfs(root: Path) -> None:
    """Add what an unpacked-only tree lacks to boot as a guest root: the mount-point directories,
    /bin/sh, /etc/passwd and /etc/group (from base-passwd's masters) and a busybox poweroff (else
    the guest panics with "Attempted to kill init" after its command). Raises FetchError when a
    needed package is missing from the tree."""
    for name, mode in GUEST_DIRS:
        d = inside(root, name)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
    busybox = inside(root, "bin/busybox")
    if not busybox.is_file():
        raise FetchError(f"{root}: no bin/busybox (is busybox-static in the package list?)")
    sh = inside(root, "bin/sh")
    if not sh.exists():
        sh.unlink(missing_ok=True)  # a dangling link
        sh.symlink_to("bash" if inside(root, "bin/bash").is_file() else "busybox")
    for name in ("passwd", "group"):
        dest = inside(root, f"etc/{name}")
        if dest.exists():
            continue
        master = inside(root, f"usr/share/base-passwd/{name}.master")
        if not master.is_file():
            raise FetchError(f"{root}: no usr/share/base-passwd/{name}.master (is base-passwd included?)")
        shutil.copyfile(master, dest)
    for name in ("sbin/poweroff", "sbin/reboot", "sbin/halt"):
        link = inside(root, name)
        if not link.exists():
            link.unlink(missing_ok=True)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")


def fetch_rootfs(
    arch: Arch, spec: GuestSpec, cache_root: Path | None = None, mirror: str = ""
) -> Path:
    """A guest root filesystem of ``spec.suite`` for ``arch`` with the default packages plus
    ``spec.packages``, built once per (arch, suite, package list) and cached. The host's arch gets
    one too: booting the host's own root would load with whatever libbpf the host has.

    Raises ConfigError (no mirror, bad package name), FetchError (mmdebstrap failed).
    """
    root = cache_root if cache_root is not None else resolve_cache_root(os.environ)
    packages = resolve_packages(spec)
    where = resolve_mirror(mirror, os.environ, apt_source_files())
    listing = "\n".join(packages)
    key = hashlib.sha256(f"{LAYOUT_VERSION}\n{arch.debian}\n{spec.suite}\n{listing}".encode()).hexdigest()
    entry = entry_path(root, "rootfs", arch.name, spec.suite, key[:16])

    def build(tmp: Path) -> Manifest:
        tree = tmp / ROOT
        run_mmdebstrap(arch, spec.suite, packages, tree, where)
        complete_rootfs(tree)
        rels = [str(inside(tree, k).relative_to(tree)) for k in KEY_FILES if inside(tree, k).is_file()]
        files = {f"{ROOT}/{rel}": d for rel, d in digest_files(tree, rels).items()}
        return Manifest(
            source_digest=key,
            files=files,
            meta={"arch": arch.name, "suite": spec.suite, "packages": list(packages)},
        )

    ensure_entry(entry, build, key)
    return entry / ROOT
