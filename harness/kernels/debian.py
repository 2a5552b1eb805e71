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
NO_KEYRING = "none"  # $BPF_MATRIX_KEYRING=none: Release signatures deliberately not checked
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
REFRESH_ENV = "BPF_MATRIX_REFRESH"  # 1: a suite index past INDEX_MAX_AGE must be fetched again
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
    note: str = ""  # set when a stale cached index was used because the mirror was unreachable

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
        if any(m in proc.stderr for m in _UNSIGNED_MARKS):
            raise IntegrityError(
                f"{detached or signed}: signature check failed: not signed (gpgv found no OpenPGP "
                f"signature in it)"
            )
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise IntegrityError(
            f"{signed}: signature check failed (gpgv exit {proc.returncode}): "
            f"{lines[-1] if lines else 'no output'}"
        )


# What gpgv says of a file that holds no signature at all (its last line is then only a usage hint).
_UNSIGNED_MARKS = ("no valid OpenPGP data found", "no signature found")
_CLEARSIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"


def _is_clearsigned(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(_CLEARSIGNED) + 8).lstrip().startswith(_CLEARSIGNED)


def resolve_keyring(env: Mapping[str, str], default: Path | None = None) -> Path | None:
    """The keyring to check Release signatures with: $BPF_MATRIX_KEYRING, else ``default`` (Debian's
    archive keyring); None when $BPF_MATRIX_KEYRING is "none" (signatures deliberately not checked).

    Raises ConfigError naming the variable and the path when the keyring is missing or unreadable, or
    when gpgv is not installed: a typo must never turn verification off.
    """
    value = env.get(KEYRING_ENV, "")
    if value == NO_KEYRING:
        return None
    if value:
        keyring = Path(value)
        check_keyring(keyring, f"{KEYRING_ENV}={value}", f"point {KEYRING_ENV} at a keyring file, "
                      f"or set it to {NO_KEYRING!r} to skip signature checks")
        return keyring
    keyring = default or KEYRING
    check_keyring(keyring, f"Debian archive keyring {keyring}", "install debian-archive-keyring "
                  f"(setup.sh does) or set {KEYRING_ENV} to a keyring file")
    return keyring


def check_keyring(keyring: Path, what: str, hint: str) -> None:
    """Raise ConfigError unless ``keyring`` is a readable file and gpgv is installed."""
    try:
        with keyring.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file; Release signatures cannot be checked: {hint}") from None
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot read ({exc.strerror}); Release signatures cannot be checked: {hint}"
        ) from exc
    if shutil.which("gpgv") is None:
        raise ConfigError(f"gpgv is not installed (package gpgv; setup.sh installs it): needed with {what}")


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
    mirror: str, suite: str, dest: Path, keyring: Path | None = KEYRING,
    session: requests.Session | None = None,
) -> tuple[str, str]:
    """Download a suite's InRelease (or Release + Release.gpg) into ``dest`` and verify it with gpgv
    against ``keyring`` (None: not checked, as $BPF_MATRIX_KEYRING=none asks). Returns (Release text,
    what was verified).

    Raises IntegrityError on a bad or missing signature, FetchError when the mirror has no such suite.
    """
    dest.mkdir(parents=True, exist_ok=True)
    base = f"{mirror}/dists/{suite}"
    unchecked = f"Release NOT signature-checked: no keyring ({KEYRING_ENV}={NO_KEYRING})"
    inrelease = dest / "InRelease"
    try:
        fetch_file(f"{base}/InRelease", inrelease, what=f"suite {suite}", session=session)
    except FetchError as exc:
        if isinstance(exc, IntegrityError) or "not found" not in str(exc):
            raise
        release = dest / "Release"
        fetch_file(f"{base}/Release", release, what=f"suite {suite}", session=session)
        if keyring is None:
            return release.read_text(), unchecked
        sig = dest / "Release.gpg"
        fetch_file(f"{base}/Release.gpg", sig, what=f"suite {suite}", session=session)
        run_gpgv(release, release, keyring, detached=sig)
        return release.read_text(), f"Release signature verified (gpgv, {keyring.name})"
    if keyring is None:
        return parse_inrelease_payload(inrelease.read_text()), unchecked
    if not _is_clearsigned(inrelease):
        raise IntegrityError(
            f"suite {suite}: signature check failed: {base}/InRelease is not signed "
            "(no OpenPGP clear-signed message)"
        )
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
    refresh: bool | None = None,
    wanted: Callable[[str], bool] | None = is_kernel_package,
    session: requests.Session | None = None,
) -> SuiteIndex:
    """The verified Packages index of ``suite``/``arch`` (main), reused from ``cache_dir`` when it
    was verified less than ``max_age`` seconds ago. ``keyring`` defaults to resolve_keyring()'s.

    An older index is fetched again; when the mirror cannot be reached, the cached one is used (if
    its signature was verified and its files still match) and ``note`` says so, unless ``refresh``
    (default: $BPF_MATRIX_REFRESH=1) insists on a fresh one.

    Raises ConfigError (keyring), FetchError (mirror, HTTP), IntegrityError (signature or digest).
    """
    if keyring is None:
        keyring = resolve_keyring(os.environ)
    else:
        check_keyring(keyring, f"keyring {keyring}", f"give an existing keyring file or unset {KEYRING_ENV}")
    if refresh is None:
        refresh = os.environ.get(REFRESH_ENV, "").strip().lower() in ("1", "yes", "true")
    where = _index_dir(cache_dir, mirror, suite, arch)
    where.parent.mkdir(parents=True, exist_ok=True)
    # Several workers may want the same suite at once: one fetches, the others reuse its result.
    with FileLock(str(where.with_name(where.name + ".lock"))):
        return _fetch_suite_index_locked(
            mirror, suite, arch, where, keyring, _IndexPolicy(max_age, refresh), wanted, session
        )


@dataclass(frozen=True)
class _IndexPolicy:
    max_age: float  # seconds a verified index is reused without asking the mirror
    refresh: bool  # an older one must be fetched again: no falling back to it


@dataclass(frozen=True)
class _CachedIndex:
    verified: str  # how its Release was checked when it was fetched
    time: float  # when it was fetched and verified (epoch seconds)

    @property
    def signed(self) -> bool:
        return self.verified.startswith("Release signature verified")


def _fetch_suite_index_locked(
    mirror: str,
    suite: str,
    arch: str,
    where: Path,
    keyring: Path | None,
    policy: _IndexPolicy,
    wanted: Callable[[str], bool] | None,
    session: requests.Session | None,
) -> SuiteIndex:
    name = f"main/binary-{arch}/Packages.xz"
    cached = _cached_index(where, mirror, suite, arch, name)
    # A cached index that was not signature-checked is only good for a run that checks nothing.
    usable = cached is not None and (cached.signed or keyring is None)
    note = ""
    if cached is not None and usable and time.time() - cached.time < policy.max_age:
        verified = cached.verified
    else:
        try:
            verified = _refresh_index(mirror, suite, where, name, keyring, session)
        except FetchError as exc:
            # Offline with a verified index in the cache: use it, and say how old it is.
            if policy.refresh or cached is None or not cached.signed or not _unreachable(exc):
                raise
            if _cached_index(where, mirror, suite, arch, name) != cached:
                raise
            verified, note = cached.verified, _stale_note(cached, exc)
            log.warning("suite %s/%s: %s", suite, arch, note)
    packages = _load_index_packages(where, suite, name, wanted)
    return SuiteIndex(
        mirror=mirror, suite=suite, arch=arch, packages=packages, verified=verified, note=note
    )


def _unreachable(exc: FetchError) -> bool:
    """Whether a fetch failed for a network reason (refused, timed out, cut, 5xx after the tries)."""
    cause = exc.__cause__
    return (
        not isinstance(exc, IntegrityError)
        and isinstance(cause, requests.RequestException)
        and _retryable(cause)
    )


def _stale_note(cached: _CachedIndex, exc: FetchError) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cached.time))
    hours = (time.time() - cached.time) / 3600
    return (
        f"suite index from {when}, {hours:.0f} h old: mirror unreachable ({_root_cause(exc.__cause__)}); "
        f"used the copy verified then (set {REFRESH_ENV}=1 to insist on a fresh one)"
    )


def _cached_index(where: Path, mirror: str, suite: str, arch: str, name: str) -> _CachedIndex | None:
    """How and when the cached index was verified, when it is from ``mirror`` and its Packages.xz
    matches its Release; else None."""
    stamp = where / "verified.json"
    packages_xz = where / "Packages.xz"
    release_text = ""
    try:
        meta: dict[str, Any] = json.loads(stamp.read_text())
        if meta["mirror"] != mirror:
            return None
        release_text = (where / "Release.text").read_text()
        expected, _ = parse_release_sha256(release_text, name)
        if file_sha256(packages_xz) != expected:
            raise IntegrityError(f"cached {packages_xz} does not match its Release")
        return _CachedIndex(verified=str(meta["verified"]), time=float(meta["time"]))
    except (OSError, ValueError, KeyError, TypeError, IntegrityError) as exc:
        if release_text or stamp.exists():
            log.info("suite %s/%s: cached index not reused: %s", suite, arch, exc)
    return None


def _refresh_index(
    mirror: str, suite: str, where: Path, name: str, keyring: Path | None,
    session: requests.Session | None,
) -> str:
    """Fetch and verify the suite's Release, then the Packages.xz it lists; returns how it was verified.

    Every file is replaced whole, and Packages.xz only once it matches the new Release: until
    Release.text and the stamp are written last, the cached index stays as it was or fails its check.
    """
    stamp = where / "verified.json"
    where.mkdir(parents=True, exist_ok=True)
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
