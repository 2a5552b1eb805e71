"""Kernels to boot: Debian image packages fetched, verified, extracted and cached, or local images."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, FetchError
from harness.kernels.cache import (
    Manifest,
    check_entry,
    digest_files,
    ensure_entry,
    entry_path,
    file_sha256,
    resolve_cache_root,
)
from harness.kernels.config import KernelsConfig, KernelSpec
from harness.kernels.debian import (
    DebPackage,
    apt_source_files,
    fetch_file,
    fetch_suite_index,
    package_url,
    resolve_image_packages,
    resolve_mirror,
)

log = logging.getLogger(__name__)

DPKG_TIMEOUT = 600.0
DEPMOD_TIMEOUT = 300.0
TREE = "tree"  # the extracted packages inside an entry: boot/ and lib/modules/<release>/ side by side


@dataclass(frozen=True)
class KernelBuild:
    """A kernel ready to boot: its image, modules and where it came from."""

    spec: KernelSpec
    image: Path  # the kernel image to boot
    modules: Path | None  # the lib/modules/<release> directory, or None
    release: str  # e.g. "6.1.0-27-amd64"
    digest: str  # sha256 of the image package; for local kernels sha256 of the image file
    source: str  # e.g. "debian bookworm linux-image-6.1.0-27-amd64-unsigned 6.1.115-1"
    config: Path | None  # boot/config-<release> when the package has it
    verified: str  # what was verified and how
    entry: Path  # the cache entry directory
    facts_dir: Path  # entry / "facts": kernel facts collected from this build


@dataclass(frozen=True)
class KernelTree:
    """Where the parts of an extracted kernel are, relative to the tree."""

    release: str
    image: str
    modules: str | None
    config: str | None


def run_dpkg_extract(deb: Path, dest: Path, timeout: float = DPKG_TIMEOUT) -> None:
    """Unpack a .deb's files into ``dest`` with ``dpkg-deb -x``; raises FetchError on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["dpkg-deb", "-x", str(deb), str(dest)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{deb.name}: dpkg-deb -x failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"{deb.name}: dpkg-deb -x exit {proc.returncode}: {tail}")


def run_depmod(tree: Path, release: str, timeout: float = DEPMOD_TIMEOUT) -> bool:
    """Build modules.dep for ``release`` inside ``tree`` (packages leave it to their postinst).

    Returns False when depmod is not installed or fails: the guest then has to find modules itself.
    """
    depmod = shutil.which("depmod") or next(
        (p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.access(p, os.X_OK)), None
    )
    if depmod is None:
        log.warning("depmod not found; %s has no modules.dep", tree)
        return False
    argv = [depmod, "-a", "-b", str(tree), release]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("depmod for %s failed: %s", release, exc)
        return False
    if proc.returncode != 0:
        log.warning("depmod for %s exit %d: %s", release, proc.returncode, proc.stderr.strip())
        return False
    return True


def _only(found: list[str], what: str, tree: Path) -> str:
    if len(found) != 1:
        raise FetchError(f"{tree}: expected one {what}, found {sorted(found) or 'none'}")
    return found[0]


def prepare_tree(tree: Path) -> KernelTree:
    """Make an extracted kernel package tree look like boot/vmlinuz-<release> beside
    lib/modules/<release>/ (what virtme-ng expects), whatever the package layout, and check it.

    Layouts: up to bookworm boot/ + lib/modules/; merged /usr (trixie) boot/ + usr/lib/modules/;
    sid-style usr/lib/modules/<release>/vmlinuz with no boot/. Raises FetchError when the tree holds
    no kernel image or several.
    """
    usr_mods = tree / "usr" / "lib" / "modules"
    lib_mods = tree / "lib" / "modules"
    if usr_mods.is_dir() and not lib_mods.exists():
        lib = tree / "lib"
        if not lib.exists() and not lib.is_symlink():
            lib.symlink_to(Path("usr") / "lib")
        else:
            lib_mods.symlink_to(Path("..") / "usr" / "lib" / "modules")
    boot = tree / "boot"
    releases = sorted(p.name for p in lib_mods.iterdir() if p.is_dir()) if lib_mods.is_dir() else []
    # sid-style: the image lives in the modules directory.
    for rel in releases:
        for name in ("vmlinuz", "vmlinuz.unsigned", "vmlinux", "Image"):
            inside = lib_mods / rel / name
            if inside.is_file() and not (boot / f"vmlinuz-{rel}").exists():
                boot.mkdir(exist_ok=True)
                os.replace(inside, boot / f"vmlinuz-{rel}")
        if (lib_mods / rel / "config").is_file() and not (boot / f"config-{rel}").exists():
            shutil.copy2(lib_mods / rel / "config", boot / f"config-{rel}")
    images = [p.name for p in boot.glob("vmlinu[zx]-*") if p.is_file()] if boot.is_dir() else []
    image = _only(images, "kernel image boot/vmlinuz-*", tree)
    release = image.split("-", 1)[1]
    modules: str | None = None
    if (lib_mods / release).is_dir():
        listing = os.listdir(lib_mods / release)
        if "kernel" not in listing and "modules.order" not in listing:
            raise FetchError(f"{tree}: lib/modules/{release} has no kernel/ (lists {sorted(listing)})")
        modules = f"lib/modules/{release}"
    elif releases:
        raise FetchError(f"{tree}: image boot/{image} but modules for {releases}, not {release}")
    config = f"boot/config-{release}" if (boot / f"config-{release}").is_file() else None
    return KernelTree(release=release, image=f"boot/{image}", modules=modules, config=config)


def _combined_digest(pkgs: tuple[DebPackage, ...]) -> str:
    if len(pkgs) == 1:
        return pkgs[0].sha256
    text = "\n".join(f"{p.name} {p.version} {p.sha256}" for p in pkgs)
    return hashlib.sha256(text.encode()).hexdigest()


def _build_from_manifest(spec: KernelSpec, entry: Path, manifest: Manifest) -> KernelBuild:
    meta: dict[str, Any] = dict(manifest.meta)
    base = entry / meta.get("tree", "")
    facts = entry / "facts"
    facts.mkdir(exist_ok=True)
    return KernelBuild(
        spec=spec,
        image=base / meta["image"],
        modules=(base / meta["modules"]) if meta.get("modules") else None,
        release=str(meta["release"]),
        digest=str(meta["digest"]),
        source=str(meta["source"]),
        config=(base / meta["config"]) if meta.get("config") else None,
        verified=str(meta["verified"]),
        entry=entry,
        facts_dir=facts,
    )


def _fetch_debian(
    spec: KernelSpec, root: Path, mirror: str, progress: Callable[[int, int], None] | None
) -> KernelBuild:
    where = resolve_mirror(spec.mirror or mirror, os.environ, apt_source_files())
    index = fetch_suite_index(where, spec.suite, spec.arch.debian, root / "index")
    pkgs = resolve_image_packages(index, spec.flavour, spec.package)
    first = pkgs[0]
    entry = entry_path(root, "kernels", spec.arch.name, f"{first.name}_{first.version}")
    names = " + ".join(p.name for p in pkgs)
    source = f"debian {spec.suite} {names} {first.version}"
    verified = (
        f"{index.verified}; Packages.xz SHA256 from Release; {names} SHA256 from Packages"
    )

    def build(tmp: Path) -> Manifest:
        tree = tmp / TREE
        _fetch_packages(where, pkgs, tmp / ".debs", tree, progress)
        return _debian_manifest(tree, pkgs, source, verified)

    manifest = ensure_entry(entry, build, _combined_digest(pkgs))
    found = _build_from_manifest(spec, entry, manifest)
    # A stale suite index used offline: the kernel's notes say so beside how it was verified.
    return replace(found, verified=f"{found.verified}; {index.note}") if index.note else found


def _fetch_packages(
    where: str,
    pkgs: tuple[DebPackage, ...],
    debs: Path,
    tree: Path,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Download each package into ``debs`` (progress counts bytes over all of them), extract it into
    ``tree``, then delete it; ``debs`` is removed at the end."""
    total = sum(p.size for p in pkgs)
    done_before = 0
    for pkg in pkgs:

        def step(done: int, _total: int, base: int = done_before) -> None:
            if progress is not None:
                progress(base + done, total)

        deb = debs / Path(pkg.filename).name
        fetch_file(
            package_url(where, pkg),
            deb,
            what=f"package {pkg.name} {pkg.version}",
            sha256=pkg.sha256,
            size=pkg.size,
            progress=step,
        )
        done_before += pkg.size
        run_dpkg_extract(deb, tree)
        deb.unlink()
    debs.rmdir()


def _debian_manifest(
    tree: Path, pkgs: tuple[DebPackage, ...], source: str, verified: str
) -> Manifest:
    """The cache manifest of an extracted Debian kernel tree (depmod run first when it was not)."""
    layout = prepare_tree(tree)
    from harness.kernels.image import check_kernel_image

    checked = check_kernel_image((tree / layout.image).read_bytes(), layout.image)
    if checked.kernel is False:
        raise FetchError(f"{source}: {layout.image} is not a kernel: {checked.reason}")
    if layout.modules is not None and not (tree / layout.modules / "modules.dep").exists():
        run_depmod(tree, layout.release)
    key = [layout.image] + ([layout.config] if layout.config else [])
    files = digest_files(tree, key)
    return Manifest(
        source_digest=_combined_digest(pkgs),
        files={f"{TREE}/{rel}": d for rel, d in files.items()},
        meta={
            "tree": TREE,
            "release": layout.release,
            "image": layout.image,
            "modules": layout.modules,
            "config": layout.config,
            "digest": pkgs[0].sha256,
            "source": source,
            "verified": verified,
            "packages": [
                {"name": p.name, "version": p.version, "sha256": p.sha256, "size": p.size}
                for p in pkgs
            ],
        },
    )


def _fetch_local(spec: KernelSpec, root: Path) -> KernelBuild:
    image = spec.image
    if image is None or not image.is_file():
        raise ConfigError(f"{spec.label}: local image {image} does not exist")
    if spec.modules is not None and not spec.modules.is_dir():
        raise ConfigError(f"{spec.label}: local modules {spec.modules} is not a directory")
    try:
        digest = file_sha256(image)
    except OSError as exc:
        raise ConfigError(f"{spec.label}: cannot read {image}: {exc.strerror}") from exc
    release = spec.modules.name if spec.modules is not None else ""
    if not release:
        from harness.kernels.image import parse_image_release

        try:
            release = parse_image_release(image.read_bytes()[:1 << 20]) or ""
        except OSError:
            release = ""
    if not release and image.name.startswith(("vmlinuz-", "vmlinux-")):
        release = image.name.split("-", 1)[1]
    entry = entry_path(root, "local", spec.key, digest[:16])

    def build(tmp: Path) -> Manifest:
        return Manifest(
            source_digest=digest,
            files={},
            meta={"image": str(image), "release": release},
        )

    ensure_entry(entry, build, digest)
    config = image.with_name(f"config-{release}") if release else None
    facts = entry / "facts"
    facts.mkdir(exist_ok=True)
    return KernelBuild(
        spec=spec,
        image=image,
        modules=spec.modules,
        release=release,
        digest=digest,
        source=f"local {image}",
        config=config if config is not None and config.is_file() else None,
        verified=f"local image, sha256 {digest} (not verified against any source)",
        entry=entry,
        facts_dir=facts,
    )


def _verify_local_image(where: str, spec: KernelSpec, image: Path, root: Path) -> None:
    """Refuse ``image`` unless it is a kernel; a verified image is remembered by its digest."""
    from harness.kernels.image import check_kernel_image

    try:
        data = image.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: {spec.label}: cannot read {image}: {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    verified = entry_path(root, "verified-images", digest)
    if check_entry(verified, digest).ok:
        return
    checked = check_kernel_image(data, str(image))
    if checked.kernel is False:
        raise ConfigError(f"{where}: {spec.label}: local image {image} is not a kernel: {checked.reason}")
    if checked.kernel is None:
        log.warning("%s: cannot tell whether %s is a kernel: %s", spec.label, image, checked.reason)
        return
    ensure_entry(verified, lambda tmp: Manifest(source_digest=digest, meta={"kernel": True}), digest)


def verify_local_images(config: KernelsConfig, cache_root: Path | None = None) -> None:
    """Refuse, before anything boots, a local image of ``config`` that is not a kernel.

    Such a file would otherwise be booted and waited for to the VM's timeout, once per try. Each
    image is decompressed once: a verified one is remembered in the cache by its digest. A missing
    image is left to fetch_kernel (that kernel alone is then not available). Raises ConfigError
    naming the file and the entry.
    """
    root = cache_root if cache_root is not None else resolve_cache_root(os.environ)
    seen: set[Path] = set()
    for spec in config.kernels:
        image = spec.image
        if spec.source != "local" or image is None or image in seen or not image.is_file():
            continue
        seen.add(image)
        _verify_local_image(str(config.path), spec, image, root)


def render_kernel_error(spec: KernelSpec, exc: Exception) -> str:
    """``exc`` as one line that names ``spec``'s kernel first, and once (fetch_kernel's own errors
    already name it)."""
    text = str(exc)
    return text if text.startswith(spec.label) else f"{spec.label}: {text}"


def fetch_kernel(
    spec: KernelSpec,
    cache_root: Path | None = None,
    mirror: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> KernelBuild:
    """The kernel of ``spec``, downloaded, verified and extracted into the cache when needed.

    ``mirror`` is kernels.yaml's (``spec.mirror`` wins over it; else $BPF_MATRIX_MIRROR, else the
    machine's apt sources). ``progress(done_bytes, total_bytes)`` is called while downloading.
    Raises ConfigError (no mirror, unknown package, missing local image), FetchError, IntegrityError.
    """
    root = cache_root if cache_root is not None else resolve_cache_root(os.environ)
    if spec.source == "local":
        return _fetch_local(spec, root)
    if spec.source != "debian":
        raise ConfigError(f"{spec.label}: unknown source {spec.source!r}")
    return _fetch_debian(spec, root, mirror, progress)
