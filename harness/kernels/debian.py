"""Debian archive access: the mirror, signed suite indexes, kernel package choice, verified downloads."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from debian.deb822 import Deb822, Packages, PkgRelation, Release
from debian.debian_support import Version
from filelock import FileLock

from harness.errors import ConfigError, FetchError, IntegrityError
from harness.files import atomic_file, atomic_write
from harness.kernels.cache import file_sha256
from harness.kernels.config import DEBIAN_CODENAMES

log = logging.getLogger(__name__)

MIRROR_ENV = "BPF_MATRIX_MIRROR"
KEYRING_ENV = "BPF_MATRIX_KEYRING"  # another keyring to check Release files with
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_DIR = Path("/etc/apt")

INDEX_MAX_AGE = 6 * 3600.0  # seconds a verified suite index is reused before it is fetched again
REQUEST_TIMEOUT = 60.0  # seconds to connect and between bytes of a response
GPGV_TIMEOUT = 60.0
CHUNK = 1 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DebPackage:
    """One binary package paragraph of a suite's Packages index."""

    name: str
    version: str
    arch: str
    filename: str  # path below the mirror root, e.g. pool/main/l/linux/...deb
    sha256: str
    size: int
    depends: str = ""
    source: str = ""


@dataclass(frozen=True)
class SuiteIndex:
    """The kernel-related packages of one suite and arch, from a verified Packages index."""

    mirror: str
    suite: str
    arch: str  # Debian's name: amd64, arm64
    packages: Mapping[str, tuple[DebPackage, ...]]  # by name, highest version first
    verified: str  # how the Release file was checked, e.g. "Release signature verified (gpgv)"

    def highest(self, name: str) -> DebPackage | None:
        """The highest version of ``name``, or None when the suite does not have it."""
        found = self.packages.get(name)
        return found[0] if found else None


# ---------------------------------------------------------------- the mirror


def _suite_is_main_archive(suite: str) -> bool:
    if suite.endswith("-security") or "/" in suite:
        return False
    base = suite.split("-", 1)[0]
    return base in DEBIAN_CODENAMES or base in ("stable", "oldstable", "oldoldstable", "testing")


def parse_sources_list(text: str) -> list[tuple[str, list[str]]]:
    """Return (URI, suites) of each ``deb`` line of a one-line-style sources.list."""
    found: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Options in brackets ([arch=amd64 signed-by=...]) come before the URI.
        line = re.sub(r"\[[^\]]*\]", " ", line)
        fields = line.split()
        if len(fields) < 3 or fields[0] != "deb":
            continue
        found.append((fields[1], [fields[2]]))
    return found


def parse_deb822_sources(text: str) -> list[tuple[str, list[str]]]:
    """Return (URI, suites) of each enabled ``Types: deb`` stanza of a deb822 .sources file."""
    found: list[tuple[str, list[str]]] = []
    for para in Deb822.iter_paragraphs(io.StringIO(text)):
        if "deb" not in para.get("Types", "").split():
            continue
        if para.get("Enabled", "yes").strip().lower() == "no":
            continue
        suites = para.get("Suites", "").split()
        for uri in para.get("URIs", "").split():
            found.append((uri, suites))
    return found


def apt_source_files(apt_dir: Path = APT_DIR) -> list[Path]:
    """The machine's apt source files, in the order apt reads them."""
    d = apt_dir / "sources.list.d"
    listed = sorted(d.glob("*.list")) + sorted(d.glob("*.sources")) if d.is_dir() else []
    return [apt_dir / "sources.list", *listed]


def resolve_mirror(configured: str, env: Mapping[str, str], sources: Sequence[Path]) -> str:
    """The Debian mirror to use: ``configured``, else $BPF_MATRIX_MIRROR, else the first apt source
    that serves Debian's main archive (not -security). Raises ConfigError naming the files it read."""
    if configured:
        return configured.rstrip("/")
    if env.get(MIRROR_ENV):
        return env[MIRROR_ENV].rstrip("/")
    looked: list[str] = []
    for path in sources:
        looked.append(str(path))
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = parse_deb822_sources(text) if path.suffix == ".sources" else parse_sources_list(text)
        for uri, suites in entries:
            if not uri.startswith(("http://", "https://")):
                continue
            if any(_suite_is_main_archive(s) for s in suites):
                return uri.rstrip("/")
    raise ConfigError(
        f"no Debian mirror: set 'mirror:' in kernels.yaml or {MIRROR_ENV}; "
        f"no Debian main archive in {', '.join(looked) or 'no apt source files'}"
    )


# ---------------------------------------------------------------- downloads


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500
    return False


def fetch_file(
    url: str,
    dest: Path,
    *,
    what: str,
    sha256: str = "",
    size: int = -1,
    progress: Progress | None = None,
    session: requests.Session | None = None,
    tries: int = 4,
    backoff: float = 1.0,
    timeout: float = REQUEST_TIMEOUT,
) -> str:
    """Download ``url`` to ``dest`` (streamed into a temp file beside it, renamed when complete and
    checked) and
    return its SHA-256. Retries connection errors and 5xx with exponential backoff.

    Raises IntegrityError when ``sha256`` (or ``size``) is given and differs, FetchError otherwise.
    """
    http = session or requests.Session()
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: BaseException | None = None
    for attempt in range(tries):
        if attempt:
            time.sleep(backoff * (2 ** (attempt - 1)))
        try:
            digest = hashlib.sha256()
            done = 0
            with atomic_file(dest) as out, http.get(url, stream=True, timeout=timeout) as resp:
                if resp.status_code == 404:
                    raise FetchError(f"{what}: {url} not found (HTTP 404)")
                resp.raise_for_status()
                total = int(resp.headers.get("Content-Length") or (size if size >= 0 else 0))
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                # Checked inside the block: a mismatch leaves ``dest`` as it was.
                actual = digest.hexdigest()
                if sha256 and actual != sha256.lower():
                    raise IntegrityError(
                        f"{what}: SHA256 mismatch for {url}: expected {sha256}, got {actual}"
                    )
                if size >= 0 and done != size:
                    raise IntegrityError(f"{what}: size mismatch for {url}: expected {size}, got {done}")
            return actual
        except requests.RequestException as exc:
            if isinstance(exc, requests.HTTPError) and not _retryable(exc):
                raise FetchError(f"{what}: {url}: {exc}") from exc
            last = exc
            log.info("%s: attempt %d of %d failed: %s", what, attempt + 1, tries, exc)
    raise FetchError(f"mirror {url} unreachable after {tries} tries: {_root_cause(last)}") from last


def _root_cause(exc: BaseException | None) -> str:
    """The innermost reason of a requests error, e.g. "[Errno 111] Connection refused", in one line."""
    text = str(exc)
    while exc is not None:
        reason = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
        if isinstance(reason, BaseException) and reason is not exc:
            exc = reason
            text = str(exc)
            continue
        if exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
            text = str(exc)
            continue
        break
    # urllib3 prefixes "<HTTPConnection ...>: " or "HTTPConnection(...): ": keep the reason after it.
    text = re.sub(r"^.*?\)?: (?=\[Errno|\w)", "", text, count=1) if "Errno" in text else text
    return text.splitlines()[0][:200] if text else "unknown error"


# ---------------------------------------------------------------- Release and Packages


def run_gpgv(signed: Path, out: Path, keyring: Path = KEYRING, detached: Path | None = None) -> None:
    """Check a signature with gpgv; write the signed text to ``out`` (inline) or leave it alone
    (detached). Raises IntegrityError when gpgv rejects it."""
    argv = ["gpgv", "--keyring", str(keyring)]
    if detached is not None:
        argv += [str(detached), str(signed)]
    else:
        argv += ["--output", str(out), str(signed)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=GPGV_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IntegrityError(f"{signed}: gpgv could not run: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise IntegrityError(
            f"{signed}: signature check failed (gpgv exit {proc.returncode}): "
            f"{lines[-1] if lines else 'no output'}"
        )


def parse_release_sha256(text: str, name: str) -> tuple[str, int]:
    """Return (sha256, size) of the index file ``name`` (e.g. main/binary-amd64/Packages.xz) in a
    Release file's SHA256 list; raises IntegrityError when it is not listed."""
    release = Release(text)
    for entry in release.get("SHA256", []):
        if entry["name"] == name:
            return str(entry["sha256"]), int(entry["size"])
    suite = release.get("Suite") or release.get("Codename") or "?"
    raise IntegrityError(f"Release of suite {suite}: no SHA256 for {name}")


def parse_inrelease_payload(text: str) -> str:
    """The payload of a clear-signed InRelease, split off its armour by python-debian.

    Used only when there is nothing to verify with: a verified InRelease is read from gpgv's output.
    """
    _, payload, _ = Deb822.split_gpg_and_payload(iter(text.splitlines()))
    # RFC 4880 section 7.1: the signer escapes a payload line that starts with a dash as "- -".
    return "".join((line[2:] if line.startswith(b"- ") else line).decode() + "\n" for line in payload)


def _prefer(p: DebPackage) -> Version:
    return Version(p.version)


def filter_packages(data: bytes, wanted: Callable[[str], bool]) -> bytes:
    """The paragraphs of a Packages index whose package name ``wanted`` accepts (pure)."""
    keep: list[bytes] = []
    for raw in data.split(b"\n\n"):
        head = raw.lstrip(b"\n").split(b"\n", 1)[0]
        if head.startswith(b"Package: ") and wanted(head[9:].strip().decode("utf-8", "replace")):
            keep.append(raw.strip(b"\n") + b"\n\n")
    return b"".join(keep)


def parse_packages(
    data: bytes, wanted: Callable[[str], bool] | None = None
) -> dict[str, tuple[DebPackage, ...]]:
    """Parse a Packages index (uncompressed bytes) into packages by name, highest version first.

    ``wanted`` filters on the package name before the paragraph is parsed (a full index is large).
    """
    selected = data if wanted is None else filter_packages(data, wanted)
    byname: dict[str, list[DebPackage]] = {}
    para: Any
    for para in Packages.iter_paragraphs(io.BytesIO(selected), use_apt_pkg=False):
        try:
            pkg = DebPackage(
                name=para["Package"],
                version=para["Version"],
                arch=para.get("Architecture", ""),
                filename=para["Filename"],
                sha256=para["SHA256"],
                size=int(para["Size"]),
                depends=para.get("Depends", ""),
                source=para.get("Source", ""),
            )
        except (KeyError, ValueError):
            continue
        byname.setdefault(pkg.name, []).append(pkg)
    return {n: tuple(sorted(ps, key=_prefer, reverse=True)) for n, ps in byname.items()}


def is_kernel_package(name: str) -> bool:
    """Whether a package name is one the image resolution may look at."""
    return name.startswith(("linux-image-", "linux-binary-", "linux-modules-", "linux-base-"))


def _index_dir(cache_dir: Path, mirror: str, suite: str, arch: str) -> Path:
    tag = hashlib.sha256(mirror.encode()).hexdigest()[:12]
    safe_suite = re.sub(r"[^A-Za-z0-9._+-]", "_", suite)
    safe_arch = re.sub(r"[^A-Za-z0-9._+-]", "_", arch)
    return cache_dir / tag / safe_suite / safe_arch


def fetch_release(
    mirror: str, suite: str, dest: Path, keyring: Path = KEYRING, session: requests.Session | None = None
) -> tuple[str, str]:
    """Download a suite's InRelease (or Release + Release.gpg) into ``dest`` and verify it with gpgv
    when the keyring and gpgv exist. Returns (Release text, what was verified).

    Raises IntegrityError on a bad signature, FetchError when the mirror has no such suite.
    """
    dest.mkdir(parents=True, exist_ok=True)
    base = f"{mirror}/dists/{suite}"
    can_verify = keyring.is_file() and shutil.which("gpgv") is not None
    inrelease = dest / "InRelease"
    try:
        fetch_file(f"{base}/InRelease", inrelease, what=f"suite {suite}", session=session)
    except FetchError as exc:
        if isinstance(exc, IntegrityError) or "not found" not in str(exc):
            raise
        release = dest / "Release"
        fetch_file(f"{base}/Release", release, what=f"suite {suite}", session=session)
        if not can_verify:
            return release.read_text(), "Release NOT signature-checked: no keyring"
        sig = dest / "Release.gpg"
        fetch_file(f"{base}/Release.gpg", sig, what=f"suite {suite}", session=session)
        run_gpgv(release, release, keyring, detached=sig)
        return release.read_text(), f"Release signature verified (gpgv, {keyring.name})"
    if not can_verify:
        return parse_inrelease_payload(inrelease.read_text()), "Release NOT signature-checked: no keyring"
    out = dest / "Release.verified"
    out.unlink(missing_ok=True)
    run_gpgv(inrelease, out, keyring)
    return out.read_text(), f"Release signature verified (gpgv, {keyring.name})"


def fetch_suite_index(
    mirror: str,
    suite: str,
    arch: str,
    cache_dir: Path,
    *,
    keyring: Path | None = None,
    max_age: float = INDEX_MAX_AGE,
    wanted: Callable[[str], bool] | None = is_kernel_package,
    session: requests.Session | None = None,
) -> SuiteIndex:
    """The verified Packages index of ``suite``/``arch`` (main), reused from ``cache_dir`` when it
    was verified less than ``max_age`` seconds ago. ``keyring`` defaults to $BPF_MATRIX_KEYRING, else
    Debian's archive keyring.

    Raises FetchError (mirror, HTTP), IntegrityError (signature or digest mismatch).
    """
    if keyring is None:
        keyring = Path(os.environ.get(KEYRING_ENV) or KEYRING)
    where = _index_dir(cache_dir, mirror, suite, arch)
    where.parent.mkdir(parents=True, exist_ok=True)
    # Several workers may want the same suite at once: one fetches, the others reuse its result.
    with FileLock(str(where.with_name(where.name + ".lock"))):
        return _fetch_suite_index_locked(mirror, suite, arch, where, keyring, max_age, wanted, session)


def _fetch_suite_index_locked(
    mirror: str,
    suite: str,
    arch: str,
    where: Path,
    keyring: Path,
    max_age: float,
    wanted: Callable[[str], bool] | None,
    session: requests.Session | None,
) -> SuiteIndex:
    name = f"main/binary-{arch}/Packages.xz"
    verified = _reusable_index(where, mirror, suite, arch, name, max_age)
    if not verified:
        verified = _refresh_index(mirror, suite, where, name, keyring, session)
    packages = _load_index_packages(where, suite, name, wanted)
    return SuiteIndex(mirror=mirror, suite=suite, arch=arch, packages=packages, verified=verified)


def _reusable_index(where: Path, mirror: str, suite: str, arch: str, name: str, max_age: float) -> str:
    """How the cached index was verified, when it is recent, from ``mirror`` and matches its
    Release; else ""."""
    stamp = where / "verified.json"
    packages_xz = where / "Packages.xz"
    release_text = ""
    try:
        meta: dict[str, Any] = json.loads(stamp.read_text())
        if time.time() - float(meta["time"]) < max_age and meta["mirror"] == mirror:
            release_text = (where / "Release.text").read_text()
            expected, _ = parse_release_sha256(release_text, name)
            if file_sha256(packages_xz) != expected:
                raise IntegrityError(f"cached {packages_xz} does not match its Release")
            return str(meta["verified"])
    except (OSError, ValueError, KeyError, TypeError, IntegrityError) as exc:
        if release_text or stamp.exists():
            log.info("suite %s/%s: cached index not reused: %s", suite, arch, exc)
    return ""


def _refresh_index(
    mirror: str, suite: str, where: Path, name: str, keyring: Path, session: requests.Session | None
) -> str:
    """Fetch and verify the suite's Release, then the Packages.xz it lists; returns how it was verified."""
    stamp = where / "verified.json"
    where.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    release_text, verified = fetch_release(mirror, suite, where, keyring, session)
    expected, size = parse_release_sha256(release_text, name)
    fetch_file(
        f"{mirror}/dists/{suite}/{name}",
        where / "Packages.xz",
        what=f"suite {suite} {name}",
        sha256=expected,
        size=size,
        session=session,
    )
    atomic_write(where / "Release.text", release_text)
    atomic_write(stamp, json.dumps({"time": time.time(), "mirror": mirror, "verified": verified}))
    return verified


def _load_index_packages(
    where: Path, suite: str, name: str, wanted: Callable[[str], bool] | None
) -> dict[str, tuple[DebPackage, ...]]:
    """The packages of the verified Packages.xz in ``where`` that ``wanted`` accepts."""
    packages_xz = where / "Packages.xz"
    # Decompressing a whole Packages.xz takes seconds; the kernel packages' paragraphs are kept beside
    # it, tied to its digest, so that a warm run parses a few kilobytes instead.
    subset = where / "Packages.kernel"
    subset_digest = where / "Packages.kernel.sha256"
    digest = file_sha256(packages_xz)
    if wanted is is_kernel_package and subset.exists() and _read(subset_digest) == digest:
        return parse_packages(subset.read_bytes())
    try:
        data = lzma.decompress(packages_xz.read_bytes())
    except lzma.LZMAError as exc:
        raise IntegrityError(f"suite {suite} {name}: not valid xz: {exc}") from exc
    if wanted is is_kernel_package:
        kept = filter_packages(data, wanted)
        atomic_write(subset, kept)
        atomic_write(subset_digest, digest)
        return parse_packages(kept)
    return parse_packages(data, wanted)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- which packages hold the kernel


def parse_depends(depends: str) -> list[list[tuple[str, str]]]:
    """Split a Depends field (python-debian's PkgRelation) into alternatives of (name, version
    pinned with '=' or '')."""
    groups: list[list[tuple[str, str]]] = []
    if not depends.strip():
        return groups  # python-debian would warn that it cannot parse ""
    for group in PkgRelation.parse_relations(depends):
        alts = [
            (rel["name"], rel["version"][1] if rel["version"] and rel["version"][0] == "=" else "")
            for rel in group
            if rel["name"]
        ]
        if alts:
            groups.append(alts)
    return groups


def _pick(index: SuiteIndex, name: str, version: str = "") -> DebPackage | None:
    found = index.packages.get(name, ())
    if version:
        for p in found:
            if p.version == version:
                return p
    return found[0] if found else None


def resolve_image_packages(index: SuiteIndex, flavour: str = "", package: str = "") -> tuple[DebPackage, ...]:
    """The packages to download for a kernel image and its modules, image-holding package first.

    Follows ``package`` (or the meta-package ``linux-image-<flavour>``) through Depends on
    ``linux-image-*`` to the ABI package, then prefers its ``-unsigned`` twin. In sid-style layouts
    the ABI package holds neither and depends on ``linux-binary-<abi>`` and ``linux-modules-<abi>``.
    Raises ConfigError naming the suite and package when the suite lacks them.
    """
    start = package or f"linux-image-{flavour or index.arch}"
    current = _pick(index, start)
    if current is None:
        raise ConfigError(f"suite {index.suite} ({index.arch}) has no package {start!r}")
    seen = {current.name}
    while True:
        nxt: DebPackage | None = None
        for group in parse_depends(current.depends):
            for dep, pinned in group:
                if dep.startswith("linux-image-") and not dep.endswith("-dbg") and dep not in seen:
                    nxt = _pick(index, dep, pinned) or _pick(index, f"{dep}-unsigned", pinned)
                    if nxt is not None:
                        break
            if nxt is not None:
                break
        if nxt is None:
            break
        seen.add(nxt.name)
        current = nxt
    if not current.name.endswith("-unsigned"):
        twin = _pick(index, current.name + "-unsigned", current.version)
        if twin is not None:
            return (twin,)
    binary: DebPackage | None = None
    rest: list[DebPackage] = []
    abi = ""
    for group in parse_depends(current.depends):
        for dep, pinned in group:
            if dep.startswith("linux-binary-") and binary is None:
                abi = dep[len("linux-binary-"):]
                binary = _pick(index, f"linux-binary-unsigned-{abi}", pinned) or _pick(index, dep, pinned)
    if binary is None:
        return (current,)
    # linux-base-<abi> carries config, modules.order and modules.builtin (which modprobe needs).
    for group in parse_depends(current.depends):
        for dep, pinned in group:
            if dep in (f"linux-modules-{abi}", f"linux-base-{abi}"):
                found = _pick(index, dep, pinned)
                if found is not None and found not in rest:
                    rest.append(found)
    return (binary, *rest)


def package_url(mirror: str, pkg: DebPackage) -> str:
    """The download address of a package."""
    return f"{mirror}/{pkg.filename}"
