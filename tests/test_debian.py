"""Tests of harness.kernels.debian against a fake archive served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import lzma
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tools import require

from harness.errors import ConfigError, FetchError, IntegrityError
from harness.kernels import debian
from harness.kernels.debian import (
    SuiteIndex,
    fetch_file,
    fetch_suite_index,
    parse_depends,
    parse_inrelease_payload,
    parse_packages,
    parse_release_sha256,
    resolve_image_packages,
    resolve_mirror,
)


class Archive(http.server.ThreadingHTTPServer):
    """A directory served over HTTP, with scripted failures and a request log."""

    root: Path
    fail: dict[str, list[int]]  # path -> status codes to answer before serving it
    log: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Archive

    def do_GET(self) -> None:
        self.server.log.append(self.path)
        queue = self.server.fail.get(self.path)
        if queue:
            code = queue.pop(0)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = self.server.root / self.path.lstrip("/")
        if not target.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    server = Archive(("127.0.0.1", 0), Handler)
    server.root = tmp_path / "mirror"
    server.root.mkdir()
    server.fail = {}
    server.log = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def url(server: Archive) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def para(name: str, version: str, depends: str = "", data: bytes = b"", arch: str = "amd64") -> str:
    filename = f"pool/main/l/linux/{name}_{version}_{arch}.deb"
    lines = [
        f"Package: {name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        f"Filename: {filename}",
        f"Size: {len(data)}",
        f"SHA256: {hashlib.sha256(data).hexdigest()}",
    ]
    if depends:
        lines.insert(3, f"Depends: {depends}")
    return "\n".join(lines) + "\n"


BOOKWORM = "\n".join(
    [
        para("bash", "5.2-1"),
        para("linux-image-amd64", "6.1.115-1", "linux-image-6.1.0-27-amd64 (= 6.1.115-1)"),
        para("linux-image-amd64", "6.1.99-1", "linux-image-6.1.0-22-amd64 (= 6.1.99-1)"),
        para("linux-image-6.1.0-27-amd64", "6.1.115-1", "kmod, initramfs-tools | linux-initramfs-tool"),
        para("linux-image-6.1.0-27-amd64-unsigned", "6.1.115-1", "kmod"),
        para("linux-image-6.1.0-27-amd64-dbg", "6.1.115-1"),
        para("linux-image-6.1.0-22-amd64-unsigned", "6.1.99-1", "kmod"),
        para("linux-image-cloud-amd64", "6.1.115-1", "linux-image-6.1.0-27-cloud-amd64 (= 6.1.115-1)"),
        para("linux-image-6.1.0-27-cloud-amd64-unsigned", "6.1.115-1"),
    ]
)

SID = "\n".join(
    [
        para(
            "linux-image-amd64",
            "7.2.13-1",
            "linux-base-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-amd64 (= 7.2.13-1)",
        ),
        para(
            "linux-image-7.2.13+deb14-amd64",
            "7.2.13-1",
            "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, "
            "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), "
            "linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)",
        ),
        para("linux-binary-7.2.13+deb14-amd64", "7.2.13-1", "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1)"),
        para("linux-binary-unsigned-7.2.13+deb14-amd64", "7.2.13-1"),
        para("linux-modules-7.2.13+deb14-amd64", "7.2.13-1", "kmod"),
        para("linux-base-7.2.13+deb14-amd64", "7.2.13-1"),
    ]
)


def index_of(text: str, suite: str = "bookworm") -> SuiteIndex:
    return SuiteIndex("http://mirror.invalid", suite, "amd64", parse_packages(text.encode()), "test")


# ---------------------------------------------------------------- mirror


def test_resolve_mirror_order(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text("deb http://from-file.invalid/debian bookworm main\n")
    assert resolve_mirror("http://arg.invalid/debian/", {}, [listing]) == "http://arg.invalid/debian"
    env = {"BPF_MATRIX_MIRROR": "http://env.invalid/debian"}
    assert resolve_mirror("", env, [listing]) == "http://env.invalid/debian"
    assert resolve_mirror("", {}, [listing]) == "http://from-file.invalid/debian"


def test_resolve_mirror_skips_security_disabled_and_source_entries(tmp_path: Path) -> None:
    missing = tmp_path / "sources.list"
    one_line = tmp_path / "extra.list"
    one_line.write_text(
        "# comment\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://sec.invalid/debian-security bookworm-security main\n"
        "deb http://ubuntu.invalid/ubuntu jammy main\n"
    )
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://sec2.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: http://main.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert resolve_mirror("", {}, [missing, one_line, deb822]) == "http://main.invalid/debian"


def test_resolve_mirror_none_names_files(tmp_path: Path) -> None:
    only_security = tmp_path / "security.list"
    only_security.write_text("deb http://sec.invalid/debian-security bookworm-security main\n")
    with pytest.raises(ConfigError) as info:
        resolve_mirror("", {}, [tmp_path / "sources.list", only_security])
    assert str(tmp_path / "sources.list") in str(info.value)
    assert str(only_security) in str(info.value)
    assert "BPF_MATRIX_MIRROR" in str(info.value)


# ---------------------------------------------------------------- Packages and resolution


def test_parse_depends_alternatives_and_pins() -> None:
    groups = parse_depends("kmod, dracut | initramfs-tools (>= 0.120), linux-binary-7.2 (= 7.2.13-1)")
    assert groups == [
        [("kmod", "")],
        [("dracut", ""), ("initramfs-tools", "")],
        [("linux-binary-7.2", "7.2.13-1")],
    ]


def test_parse_packages_filters_and_orders_versions() -> None:
    packages = parse_packages(BOOKWORM.encode(), lambda n: n.startswith("linux-image-"))
    assert "bash" not in packages
    versions = [p.version for p in packages["linux-image-amd64"]]
    assert versions == ["6.1.115-1", "6.1.99-1"]


def test_resolve_bookworm_prefers_unsigned_of_highest_meta() -> None:
    pkgs = resolve_image_packages(index_of(BOOKWORM))
    assert [(p.name, p.version) for p in pkgs] == [("linux-image-6.1.0-27-amd64-unsigned", "6.1.115-1")]


def test_resolve_flavour_and_explicit_package() -> None:
    index = index_of(BOOKWORM)
    assert resolve_image_packages(index, flavour="cloud-amd64")[0].name == (
        "linux-image-6.1.0-27-cloud-amd64-unsigned"
    )
    old = resolve_image_packages(index, package="linux-image-6.1.0-22-amd64-unsigned")
    assert [(p.name, p.version) for p in old] == [("linux-image-6.1.0-22-amd64-unsigned", "6.1.99-1")]


def test_resolve_sid_layout_returns_binary_and_modules() -> None:
    pkgs = resolve_image_packages(index_of(SID, "sid"))
    assert pkgs[0].name == "linux-binary-unsigned-7.2.13+deb14-amd64"
    assert sorted(p.name for p in pkgs[1:]) == [
        "linux-base-7.2.13+deb14-amd64",
        "linux-modules-7.2.13+deb14-amd64",
    ]


def test_resolve_unknown_package_names_suite() -> None:
    with pytest.raises(ConfigError, match=r"suite bookworm \(amd64\) has no package 'linux-image-nope'"):
        resolve_image_packages(index_of(BOOKWORM), package="linux-image-nope")


# ---------------------------------------------------------------- downloads


def test_fetch_file_streams_verifies_and_reports_progress(archive: Archive, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    (archive.root / "blob").write_bytes(data)
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "out" / "blob"
    digest = fetch_file(
        f"{url(archive)}/blob",
        dest,
        what="package blob",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert dest.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert list(dest.parent.iterdir()) == [dest]


def test_fetch_file_digest_mismatch_names_package_and_values(archive: Archive, tmp_path: Path) -> None:
    (archive.root / "blob").write_bytes(b"tampered")
    expected = "0" * 64
    dest = tmp_path / "blob"
    with pytest.raises(IntegrityError) as info:
        fetch_file(f"{url(archive)}/blob", dest, what="package linux-image-x", sha256=expected)
    message = str(info.value)
    assert "linux-image-x" in message
    assert expected in message
    assert hashlib.sha256(b"tampered").hexdigest() in message
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == [archive.root]


def test_fetch_file_retries_5xx_then_succeeds(archive: Archive, tmp_path: Path) -> None:
    (archive.root / "blob").write_bytes(b"ok")
    archive.fail["/blob"] = [503, 502]
    fetch_file(f"{url(archive)}/blob", tmp_path / "blob", what="blob", backoff=0.01)
    assert (tmp_path / "blob").read_bytes() == b"ok"
    assert archive.log.count("/blob") == 3


def test_fetch_file_gives_up_after_tries(archive: Archive, tmp_path: Path) -> None:
    archive.fail["/blob"] = [500] * 10
    pattern = r"^mirror http://127\.0\.0\.1:\d+/blob unreachable after 3 tries: 500 "
    with pytest.raises(FetchError, match=pattern):
        fetch_file(f"{url(archive)}/blob", tmp_path / "blob", what="blob", tries=3, backoff=0.01)
    assert archive.log.count("/blob") == 3


def test_fetch_file_404_is_not_retried(archive: Archive, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not found"):
        fetch_file(f"{url(archive)}/nothing", tmp_path / "x", what="blob", backoff=0.01)
    assert archive.log == ["/nothing"]


def test_fetch_file_connection_refused(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    server.server_close()
    with pytest.raises(FetchError, match="unreachable"):
        fetch_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", what="blob", tries=2, backoff=0.01)


# ---------------------------------------------------------------- signed suite index


def make_suite(root: Path, suite: str, packages: str, arch: str = "amd64") -> str:
    """Write dists/<suite>/{Release,main/binary-<arch>/Packages.xz}; return the Release text."""
    dist = root / "dists" / suite
    bindir = dist / "main" / f"binary-{arch}"
    bindir.mkdir(parents=True)
    xz = lzma.compress(packages.encode())
    (bindir / "Packages.xz").write_bytes(xz)
    name = f"main/binary-{arch}/Packages.xz"
    release = (
        f"Origin: Debian\nSuite: {suite}\nCodename: {suite}\nArchitectures: {arch}\nComponents: main\n"
        f"SHA256:\n {hashlib.sha256(xz).hexdigest()} {len(xz)} {name}\n"
    )
    (dist / "Release").write_text(release)
    return release


def make_signing_key(home: Path) -> Path:
    """Make ``home`` a GnuPG home with one signing key; return a keyring file of its public key."""
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Archive <a@example.invalid>",
         "ed25519", "sign", "never"],
        env=env, check=True, capture_output=True, timeout=60,
    )
    keyring = home / "archive.gpg"
    out = subprocess.run(["gpg", "--batch", "--export"], env=env, check=True, capture_output=True, timeout=60)
    keyring.write_bytes(out.stdout)
    return keyring


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway GnuPG home with one signing key, and a keyring file of its public key."""
    require("gpg", "gpgv", why="to sign a fake archive")
    home = tmp_path_factory.mktemp("gnupg")
    return home, make_signing_key(home)


def clearsign(home: Path, release: Path, dest: Path) -> None:
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--yes", "--clearsign", "--output", str(dest), str(release)],
        env=env, check=True, capture_output=True, timeout=60,
    )


def test_fetch_suite_index_signed(archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    home, keyring = signing_key
    make_suite(archive.root, "bookworm", BOOKWORM)
    dist = archive.root / "dists" / "bookworm"
    clearsign(home, dist / "Release", dist / "InRelease")
    index = fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)
    assert index.verified.startswith("Release signature verified (gpgv")
    assert "bash" not in index.packages
    assert resolve_image_packages(index)[0].name == "linux-image-6.1.0-27-amd64-unsigned"

    # Reused from the cache: nothing is downloaded a second time.
    archive.log.clear()
    again = fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)
    assert archive.log == []
    assert again.packages == index.packages
    # Too old: fetched again.
    fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring, max_age=0)
    assert "/dists/bookworm/InRelease" in archive.log


def test_fetch_suite_index_detached_signature(
    archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    home, keyring = signing_key
    make_suite(archive.root, "bullseye", BOOKWORM)
    dist = archive.root / "dists" / "bullseye"
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--yes", "--detach-sign", "--output", str(dist / "Release.gpg"),
         str(dist / "Release")],
        env=env, check=True, capture_output=True, timeout=60,
    )
    index = fetch_suite_index(url(archive), "bullseye", "amd64", tmp_path / "idx", keyring=keyring)
    assert index.verified.startswith("Release signature verified")


def test_fetch_suite_index_bad_signature(
    archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    home, keyring = signing_key
    make_suite(archive.root, "bookworm", BOOKWORM)
    dist = archive.root / "dists" / "bookworm"
    clearsign(home, dist / "Release", dist / "InRelease")
    signed = (dist / "InRelease").read_text()
    (dist / "InRelease").write_text(signed.replace("Origin: Debian", "Origin: Evil"))
    with pytest.raises(IntegrityError, match="signature check failed"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)


def test_fetch_suite_index_unsigned_says_so(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = make_suite(archive.root, "sid", SID)
    (archive.root / "dists" / "sid" / "InRelease").write_text(release)
    monkeypatch.setenv("BPF_MATRIX_KEYRING", "none")
    index = fetch_suite_index(url(archive), "sid", "amd64", tmp_path / "idx")
    assert index.verified == "Release NOT signature-checked: no keyring (BPF_MATRIX_KEYRING=none)"
    assert len(resolve_image_packages(index)) == 3


def test_fetch_suite_index_packages_digest_mismatch(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_suite(archive.root, "bookworm", BOOKWORM)
    (archive.root / "dists/bookworm/main/binary-amd64/Packages.xz").write_bytes(lzma.compress(b"x"))
    monkeypatch.setenv("BPF_MATRIX_KEYRING", "none")
    with pytest.raises(IntegrityError, match=r"Packages\.xz"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx")


# ---------------------------------------------------------------- keyrings


def test_configured_keyring_that_is_missing_is_an_error_not_unchecked(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = make_suite(archive.root, "bookworm", BOOKWORM)
    (archive.root / "dists" / "bookworm" / "InRelease").write_text("junk\n" + release)
    typo = tmp_path / "archive-keyrnig.gpg"
    monkeypatch.setenv("BPF_MATRIX_KEYRING", str(typo))
    with pytest.raises(ConfigError) as info:
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx")
    message = str(info.value)
    assert message.startswith(f"BPF_MATRIX_KEYRING={typo}: no such file")
    assert "NOT signature-checked" not in message
    assert archive.log == []  # nothing fetched, nothing cached
    # Unreadable (a directory here) is as bad as missing; so is a keyring passed by path.
    monkeypatch.setenv("BPF_MATRIX_KEYRING", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^BPF_MATRIX_KEYRING={tmp_path}: cannot read"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx")
    with pytest.raises(ConfigError, match=rf"^keyring {typo}: no such file"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=typo)


def test_missing_default_keyring_is_an_error_with_the_package_to_install(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = make_suite(archive.root, "bookworm", BOOKWORM)
    (archive.root / "dists" / "bookworm" / "InRelease").write_text(release)
    monkeypatch.delenv("BPF_MATRIX_KEYRING", raising=False)
    monkeypatch.setattr(debian, "KEYRING", tmp_path / "debian-archive-keyring.gpg")
    with pytest.raises(ConfigError, match=r"no such file.*install debian-archive-keyring"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx")
    assert archive.log == []


def test_unsigned_inrelease_is_reported_as_not_signed(
    archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    _, keyring = signing_key
    release = make_suite(archive.root, "bookworm", BOOKWORM)
    (archive.root / "dists" / "bookworm" / "InRelease").write_text(release)
    with pytest.raises(IntegrityError, match=r"signature check failed: .*/InRelease is not signed"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)
    # A junk detached signature: gpgv finds no signature in it, and says so rather than its usage hint.
    (archive.root / "dists" / "bookworm" / "InRelease").unlink()
    (archive.root / "dists" / "bookworm" / "Release.gpg").write_text("junk\n")
    with pytest.raises(IntegrityError, match=r"Release\.gpg: signature check failed: not signed"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)


# ---------------------------------------------------------------- offline with a stale index


def _age_index(cache: Path, hours: float) -> None:
    """Make the cached index look as if it had been verified ``hours`` ago."""
    (stamp,) = cache.glob("*/*/*/verified.json")
    meta = json.loads(stamp.read_text())
    meta["time"] = time.time() - hours * 3600
    stamp.write_text(json.dumps(meta))


def _refuse_connections(server: Archive) -> None:
    """The mirror goes away: its port now refuses connections."""
    server.shutdown()
    server.server_close()


def test_stale_verified_index_is_used_when_the_mirror_refuses_connections(
    archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, keyring = signing_key
    make_suite(archive.root, "bookworm", BOOKWORM)
    dist = archive.root / "dists" / "bookworm"
    clearsign(home, dist / "Release", dist / "InRelease")
    mirror, cache = url(archive), tmp_path / "idx"
    fresh = fetch_suite_index(mirror, "bookworm", "amd64", cache, keyring=keyring)
    _age_index(cache, 7)
    _refuse_connections(archive)
    waits: list[float] = []
    monkeypatch.setattr("harness.kernels.debian.time.sleep", waits.append)
    monkeypatch.delenv("BPF_MATRIX_REFRESH", raising=False)

    offline = fetch_suite_index(mirror, "bookworm", "amd64", cache, keyring=keyring)
    assert waits == [1.0, 2.0, 4.0]  # the mirror was tried before the cache was settled for
    assert offline.packages == fresh.packages and offline.verified == fresh.verified
    assert fresh.note == ""
    assert offline.note.startswith("suite index from ")
    assert ", 7 h old: mirror unreachable (" in offline.note
    assert "Connection refused)" in offline.note

    # Asked for a refresh, staleness is an error again.
    with pytest.raises(FetchError, match="unreachable after 4 tries"):
        fetch_suite_index(mirror, "bookworm", "amd64", cache, keyring=keyring, refresh=True)
    monkeypatch.setenv("BPF_MATRIX_REFRESH", "1")
    with pytest.raises(FetchError, match="unreachable after 4 tries"):
        fetch_suite_index(mirror, "bookworm", "amd64", cache, keyring=keyring)


def test_stale_index_not_signature_checked_or_corrupt_is_never_used_offline(
    archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, keyring = signing_key
    release = make_suite(archive.root, "bookworm", BOOKWORM)
    (archive.root / "dists" / "bookworm" / "InRelease").write_text(release)
    monkeypatch.setattr("harness.kernels.debian.time.sleep", lambda _: None)
    monkeypatch.setenv("BPF_MATRIX_KEYRING", "none")
    unchecked = tmp_path / "unchecked"
    fetch_suite_index(url(archive), "bookworm", "amd64", unchecked)
    dist = archive.root / "dists" / "bookworm"
    clearsign(home, dist / "Release", dist / "InRelease")
    corrupt = tmp_path / "corrupt"
    fetch_suite_index(url(archive), "bookworm", "amd64", corrupt, keyring=keyring)
    (packages_xz,) = corrupt.glob("*/*/*/Packages.xz")
    packages_xz.write_bytes(packages_xz.read_bytes() + b"\0")
    _age_index(unchecked, 7)
    _age_index(corrupt, 7)
    _refuse_connections(archive)
    with pytest.raises(FetchError, match="unreachable"):
        fetch_suite_index(url(archive), "bookworm", "amd64", unchecked)
    with pytest.raises(FetchError, match="unreachable"):
        fetch_suite_index(url(archive), "bookworm", "amd64", corrupt, keyring=keyring)


def test_stale_index_is_not_used_when_the_mirror_answers_with_a_bad_signature(
    archive: Archive, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    home, keyring = signing_key
    make_suite(archive.root, "bookworm", BOOKWORM)
    dist = archive.root / "dists" / "bookworm"
    clearsign(home, dist / "Release", dist / "InRelease")
    fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)
    _age_index(tmp_path / "idx", 7)
    tampered = (dist / "InRelease").read_text().replace("Origin: Debian", "Origin: Evil")
    (dist / "InRelease").write_text(tampered)
    with pytest.raises(IntegrityError, match="signature check failed"):
        fetch_suite_index(url(archive), "bookworm", "amd64", tmp_path / "idx", keyring=keyring)


def test_release_without_entry() -> None:
    with pytest.raises(IntegrityError, match=r"suite trixie: no SHA256 for main/binary-arm64/Packages\.xz"):
        parse_release_sha256("Suite: trixie\nSHA256:\n abc 1 main/binary-amd64/Packages.xz\n",
                             "main/binary-arm64/Packages.xz")


def test_parse_inrelease_payload() -> None:
    text = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nSuite: sid\n- -dashed\n"
        "-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----\n"
    )
    assert parse_inrelease_payload(text) == "Suite: sid\n-dashed\n"
