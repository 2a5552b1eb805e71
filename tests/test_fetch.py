"""Tests of harness.kernels.fetch: the three Debian package layouts from a fake archive, local kernels."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import lzma
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tools import needs

from harness.errors import ConfigError, FetchError, IntegrityError
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import ARCHES, KernelSpec, parse_kernels_yaml
from harness.kernels.fetch import fetch_kernel, prepare_tree, render_kernel_error, verify_local_images

pytestmark = needs("dpkg-deb")


class Archive(http.server.ThreadingHTTPServer):
    root: Path
    log: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Archive

    def do_GET(self) -> None:
        self.server.log.append(self.path)
        target = self.server.root / self.path.lstrip("/")
        data = target.read_bytes() if target.is_file() else None
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Archive]:
    server = Archive(("127.0.0.1", 0), Handler)
    server.root = tmp_path / "mirror"
    server.root.mkdir()
    server.log = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The fake archive is unsigned: point the keyring away from the machine's.
    monkeypatch.setenv("BPF_MATRIX_KEYRING", "none")
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def mirror_of(server: Archive) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def build_deb(work: Path, name: str, version: str, files: dict[str, bytes], depends: str = "") -> Path:
    """A real .deb holding ``files`` (path -> content), built with dpkg-deb."""
    root = work / f"{name}-src"
    (root / "DEBIAN").mkdir(parents=True)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.invalid>\n"
        f"Description: test\n"
    )
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN" / "control").write_text(control)
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    out = work / f"{name}_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out)],
        check=True, capture_output=True, timeout=60,
    )
    return out


def publish(server: Archive, suite: str, debs: list[tuple[Path, str, str, str]], extra: str = "") -> None:
    """Put .debs in the pool and an unsigned InRelease + Packages.xz for them in dists/<suite>."""
    paras = [extra] if extra else []
    for deb, name, version, depends in debs:
        filename = f"pool/main/l/linux/{deb.name}"
        (server.root / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(deb, server.root / filename)
        data = deb.read_bytes()
        para = (
            f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
            + (f"Depends: {depends}\n" if depends else "")
            + f"Filename: {filename}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
        paras.append(para)
    xz = lzma.compress("\n".join(paras).encode())
    dist = server.root / "dists" / suite
    (dist / "main" / "binary-amd64").mkdir(parents=True)
    (dist / "main" / "binary-amd64" / "Packages.xz").write_bytes(xz)
    (dist / "InRelease").write_text(
        f"Suite: {suite}\nSHA256:\n"
        f" {hashlib.sha256(xz).hexdigest()} {len(xz)} main/binary-amd64/Packages.xz\n"
    )


def meta(name: str, version: str, target: str) -> str:
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nDepends: {target} (= {version})\n"
        f"Filename: pool/main/l/linux/{name}.deb\nSize: 1\nSHA256: {'0' * 64}\n"
    )


# A stand-in the harness takes for a kernel: one gzip stream holding the kernel's banner.
IMAGE = gzip.compress(b"Linux version 6.1.0-27-amd64 (test) #1 SMP\n" + os.urandom(4096))


def bookworm(server: Archive, work: Path, image: bytes = IMAGE) -> str:
    rel = "6.1.0-27-amd64"
    deb = build_deb(work, f"linux-image-{rel}-unsigned", "6.1.115-1", {
        f"boot/vmlinuz-{rel}": image,
        f"boot/config-{rel}": b"CONFIG_DEBUG_INFO_BTF=y\n",
        f"lib/modules/{rel}/kernel/fs/9p/9p.ko": b"ko",
        f"lib/modules/{rel}/modules.order": b"kernel/fs/9p/9p.ko\n",
    })
    publish(server, "bookworm", [(deb, f"linux-image-{rel}-unsigned", "6.1.115-1", "kmod")],
            meta("linux-image-amd64", "6.1.115-1", f"linux-image-{rel}") + "\n"
            + meta(f"linux-image-{rel}", "6.1.115-1", "kmod"))
    return rel


def trixie(server: Archive, work: Path) -> str:
    rel = "6.12.57+deb13-amd64"
    deb = build_deb(work, f"linux-image-{rel}-unsigned", "6.12.57-1", {
        f"boot/vmlinuz-{rel}": IMAGE,
        f"boot/config-{rel}": b"CONFIG_X=y\n",
        f"usr/lib/modules/{rel}/kernel/fs/9p/9p.ko.xz": b"ko",
        f"usr/lib/modules/{rel}/modules.order": b"kernel/fs/9p/9p.ko\n",
    })
    publish(server, "trixie", [(deb, f"linux-image-{rel}-unsigned", "6.12.57-1", "")],
            meta("linux-image-amd64", "6.12.57-1", f"linux-image-{rel}-unsigned"))
    return rel


def sid(server: Archive, work: Path) -> str:
    rel = "7.2.13+deb14-amd64"
    v = "7.2.13-1"
    binary = build_deb(work, f"linux-binary-unsigned-{rel}", v,
                       {f"usr/lib/modules/{rel}/vmlinuz.unsigned": IMAGE})
    modules = build_deb(work, f"linux-modules-{rel}", v,
                        {f"usr/lib/modules/{rel}/kernel/fs/9p/9p.ko.xz": b"ko"})
    base = build_deb(work, f"linux-base-{rel}", v, {
        f"usr/lib/modules/{rel}/config": b"CONFIG_Y=y\n",
        f"usr/lib/modules/{rel}/modules.order": b"kernel/fs/9p/9p.ko\n",
    })
    image_deps = f"linux-base-{rel} (= {v}), linux-binary-{rel} (= {v}), linux-modules-{rel} (= {v})"
    publish(
        server, "sid",
        [
            (binary, f"linux-binary-unsigned-{rel}", v, ""),
            (modules, f"linux-modules-{rel}", v, "kmod"),
            (base, f"linux-base-{rel}", v, ""),
        ],
        meta("linux-image-amd64", v, f"linux-image-{rel}") + "\n"
        + f"Package: linux-image-{rel}\nVersion: {v}\nArchitecture: amd64\nDepends: {image_deps}\n"
        + f"Filename: pool/x.deb\nSize: 1\nSHA256: {'0' * 64}\n",
    )
    return rel


LAYOUTS = {"bookworm": bookworm, "trixie": trixie, "sid": sid}


def spec(suite: str, kid: str = "k") -> KernelSpec:
    return KernelSpec(id=kid, arch=ARCHES["x86_64"], source="debian", suite=suite)


@pytest.mark.parametrize("suite", sorted(LAYOUTS))
def test_fetch_kernel_layouts(archive: Archive, tmp_path: Path, suite: str) -> None:
    release = LAYOUTS[suite](archive, tmp_path)
    seen: list[tuple[int, int]] = []
    cache = tmp_path / "cache"
    build = fetch_kernel(spec(suite), cache, mirror_of(archive), progress=lambda d, t: seen.append((d, t)))
    tree = build.entry / "tree"
    assert build.release == release
    assert build.image == tree / "boot" / f"vmlinuz-{release}"
    assert build.image.read_bytes() == IMAGE
    # What virtme-ng looks for: lib/modules/<release> beside boot/, whatever the package layout.
    assert build.modules == tree / "lib" / "modules" / release
    assert os.listdir(tree / "lib" / "modules") == [release]
    assert "kernel" in os.listdir(build.modules)
    assert build.config is not None and build.config == tree / "boot" / f"config-{release}"
    assert build.facts_dir == build.entry / "facts" and build.facts_dir.is_dir()
    assert build.entry.is_relative_to(cache)
    assert build.source.startswith(f"debian {suite} linux-")
    assert build.verified.startswith("Release NOT signature-checked: no keyring")
    first_deb = next(p for p in archive.log if p.endswith(".deb"))
    assert build.digest == hashlib.sha256((archive.root / first_deb.lstrip("/")).read_bytes()).hexdigest()
    assert seen and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    # Reused: no package is downloaded again.
    archive.log.clear()
    again = fetch_kernel(spec(suite), cache, mirror_of(archive))
    assert again.image == build.image
    assert not [p for p in archive.log if p.endswith(".deb")]


def test_corrupted_kernel_entry_is_fetched_again(archive: Archive, tmp_path: Path) -> None:
    bookworm(archive, tmp_path)
    cache = tmp_path / "cache"
    build = fetch_kernel(spec("bookworm"), cache, mirror_of(archive))
    build.image.write_bytes(b"damaged")
    archive.log.clear()
    again = fetch_kernel(spec("bookworm"), cache, mirror_of(archive))
    assert again.image.read_bytes() == IMAGE
    assert [p for p in archive.log if p.endswith(".deb")]


def test_package_digest_mismatch(archive: Archive, tmp_path: Path) -> None:
    bookworm(archive, tmp_path)
    deb = next((archive.root / "pool").rglob("*.deb"))
    data = deb.read_bytes()
    deb.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(IntegrityError, match=r"package linux-image-6\.1\.0-27-amd64-unsigned 6\.1\.115-1"):
        fetch_kernel(spec("bookworm"), tmp_path / "cache", mirror_of(archive))
    kernels = tmp_path / "cache" / "kernels" / "x86_64"
    assert [p.name for p in kernels.iterdir() if not p.name.endswith(".lock")] == []


def test_unknown_package_is_a_config_error(archive: Archive, tmp_path: Path) -> None:
    bookworm(archive, tmp_path)
    s = KernelSpec(id="k", arch=ARCHES["x86_64"], source="debian", suite="bookworm", package="linux-image-x")
    with pytest.raises(ConfigError, match="linux-image-x"):
        fetch_kernel(s, tmp_path / "cache", mirror_of(archive))


def test_local_kernel(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(IMAGE)
    mods = tmp_path / "mods" / "6.9.0-test"
    mods.mkdir(parents=True)
    cache = tmp_path / "cache"
    s = KernelSpec(id="../../escape", arch=ARCHES["x86_64"], source="local", image=image, modules=mods)
    build = fetch_kernel(s, cache)
    assert build.image == image  # used in place, not copied
    assert build.digest == hashlib.sha256(IMAGE).hexdigest()
    assert build.release == "6.9.0-test"
    assert build.modules == mods
    assert build.entry.resolve().is_relative_to(cache.resolve())
    assert build.facts_dir.is_dir()
    assert not list(cache.rglob("bzImage"))


def test_local_kernel_missing_image(tmp_path: Path) -> None:
    s = KernelSpec(id="mine", arch=ARCHES["x86_64"], source="local", image=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"kernel 'mine' \(x86_64\): local image .*nope does not exist"):
        fetch_kernel(s, tmp_path / "cache")


def test_package_whose_image_is_not_a_kernel_is_refused_before_it_is_cached(
    archive: Archive, tmp_path: Path
) -> None:
    bookworm(archive, tmp_path, image=os.urandom(1 << 16))
    with pytest.raises(FetchError) as info:
        fetch_kernel(spec("bookworm"), tmp_path / "cache", mirror_of(archive))
    assert str(info.value) == (
        "debian bookworm linux-image-6.1.0-27-amd64-unsigned 6.1.115-1: boot/vmlinuz-6.1.0-27-amd64 "
        "is not a kernel: no compressed kernel payload found"
    )
    kernels = tmp_path / "cache" / "kernels" / "x86_64"
    assert [p.name for p in kernels.iterdir() if not p.name.endswith(".lock")] == []


TWO_LOCAL = """\
kernels:
  - {id: "6.1", source: local, image: images/vmlinuz-6.1.0, arches: [x86_64, arm64]}
  - {id: junk, source: local, image: images/random.bin}
  - {id: gone, source: local, image: images/nope}
"""


def test_local_image_that_is_not_a_kernel_is_refused_naming_the_entry(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "vmlinuz-6.1.0").write_bytes(IMAGE)
    (tmp_path / "images" / "random.bin").write_bytes(os.urandom(1 << 20))
    config = parse_kernels_yaml(TWO_LOCAL, tmp_path / "kernels.yaml")
    with pytest.raises(ConfigError) as info:
        verify_local_images(config, tmp_path / "cache")
    assert str(info.value) == (
        f"{tmp_path / 'kernels.yaml'}: kernel 'junk' (x86_64): local image "
        f"{tmp_path / 'images' / 'random.bin'} is not a kernel: no compressed kernel payload found"
    )


def test_verified_local_images_are_remembered_and_a_missing_one_is_left_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.kernels.image as image_module

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "vmlinuz-6.1.0").write_bytes(IMAGE)
    config = parse_kernels_yaml(TWO_LOCAL, tmp_path / "kernels.yaml").select(["6.1", "gone"])
    checks: list[str] = []
    real = image_module.check_kernel_image
    monkeypatch.setattr(image_module, "check_kernel_image", lambda d, w: checks.append(w) or real(d, w))
    verify_local_images(config, tmp_path / "cache")
    verify_local_images(config, tmp_path / "cache")
    # One image for two arches, decompressed once, then known by its digest.
    assert checks == [str(tmp_path / "images" / "vmlinuz-6.1.0")]
    gone = next(k for k in config.kernels if k.id == "gone")
    with pytest.raises(ConfigError, match=r"^kernel 'gone' \(x86_64\): local image .*nope does not exist$"):
        fetch_kernel(gone, tmp_path / "cache")


def test_render_kernel_error_names_the_kernel_first_and_once() -> None:
    s = KernelSpec(id="6.1", arch=ARCHES["arm64"], source="debian", suite="bookworm")
    unreachable = FetchError("mirror unreachable")
    assert render_kernel_error(s, unreachable) == "kernel '6.1' (arm64): mirror unreachable"
    named = ConfigError("kernel '6.1' (arm64): local image /x does not exist")
    assert render_kernel_error(s, named) == str(named)


def test_prepare_tree_rejects_two_images(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-1").write_bytes(b"a")
    (tmp_path / "boot" / "vmlinuz-2").write_bytes(b"b")
    with pytest.raises(Exception, match="expected one kernel image"):
        prepare_tree(tmp_path)


# ---------------------------------------------------------------- the real archive


@pytest.mark.integration
@pytest.mark.parametrize(
    ("suite", "pattern"), [("bullseye", r"5\.10\.\S+-amd64"), ("bookworm", r"6\.1\.\S+-amd64")]
)
def test_real_debian_kernels(tmp_path: Path, suite: str, pattern: str) -> None:
    # The machine's own cache: the matrix runs of the other integration tests reuse what this fetches.
    cache = resolve_cache_root(os.environ)
    started = time.monotonic()
    build = fetch_kernel(spec(suite, suite), cache)
    elapsed = time.monotonic() - started
    assert re.fullmatch(pattern, build.release), build.release
    assert build.image.is_file() and build.modules is not None and build.modules.is_dir()
    assert build.config is not None and "CONFIG_DEBUG_INFO_BTF=y" in build.config.read_text()
    assert build.verified.startswith("Release signature verified (gpgv")
    assert os.listdir(build.entry / "tree" / "lib" / "modules") == [build.release]
    print(f"{suite}: {build.source} {build.image.stat().st_size} bytes image, {elapsed:.1f} s")
