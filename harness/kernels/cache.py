"""The download cache: its root, safe entry paths, per-entry locks, atomic builds and checked manifests."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.errors import CacheError, ConfigError, FetchError, IntegrityError
from harness.files import atomic_directory, atomic_write, remove_stale_temps

log = logging.getLogger(__name__)

CACHE_ENV = "BPF_MATRIX_CACHE"
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
LOCK_TIMEOUT = 3600.0  # seconds a worker waits for another that is downloading the same entry

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Manifest:
    """What a cache entry was built from and the digests of its key files."""

    source_digest: str  # digest of what the entry came from (e.g. the .deb's SHA-256)
    files: Mapping[str, str] = field(default_factory=dict)  # path relative to the entry -> sha256
    meta: Mapping[str, Any] = field(default_factory=dict)  # anything else the builder records

    def serialize(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "source_digest": self.source_digest,
            "files": dict(self.files),
            "meta": dict(self.meta),
        }

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of serialize(); raises CacheError on a malformed document."""
        if data.get("schema") != MANIFEST_SCHEMA:
            raise CacheError(f"manifest schema {data.get('schema')!r} (expected {MANIFEST_SCHEMA})")
        files = data.get("files")
        meta = data.get("meta")
        if not isinstance(files, dict) or not isinstance(meta, dict):
            raise CacheError("manifest 'files' and 'meta' must be mappings")
        return cls(str(data["source_digest"]), dict(files), dict(meta))


@dataclass(frozen=True)
class EntryStatus:
    """The result of checking a cache entry against its manifest."""

    path: Path
    ok: bool
    problems: tuple[str, ...] = ()


def resolve_cache_root(env: Mapping[str, str] | None = None, explicit: str | Path | None = None) -> Path:
    """The one cache root of a run (not created): ``explicit`` (--cache-dir-kernels), else
    $BPF_MATRIX_CACHE of ``env`` (os.environ by default), else ~/.cache/bpf-kernel-matrix.

    Resolved once by whoever starts the run and handed to every stage that uses the cache.
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    configured = (os.environ if env is None else env).get(CACHE_ENV, "")
    if configured:
        return Path(configured).expanduser().absolute()
    return Path.home() / ".cache" / "bpf-kernel-matrix"


def safe_name(value: str) -> str:
    """A single path component made from ``value`` (a kernels.yaml id, a package name...).

    Characters other than letters, digits and ``._+-`` become ``_``, leading dots are dropped, and a
    short hash of the original is added whenever anything was changed, so that different values never
    share a component. Raises ConfigError for an empty value.
    """
    if not value:
        raise ConfigError("cache: empty name")
    cleaned = _SAFE.sub("_", value).lstrip(".")
    if cleaned != value or not cleaned:
        cleaned = f"{cleaned or '_'}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return cleaned[:200]


def entry_path(root: Path, *parts: str) -> Path:
    """The entry ``root/part/part...`` with every part made safe; raises ConfigError if the result
    would still lie outside ``root``."""
    if not parts:
        raise ConfigError(f"cache {root}: an entry needs a name")
    base = root.absolute()
    path = base.joinpath(*(safe_name(p) for p in parts))
    resolved = path.resolve()
    if not resolved.is_relative_to(base.resolve()) or resolved == base.resolve():
        raise ConfigError(f"cache {root}: entry {'/'.join(parts)!r} escapes the cache root")
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(entry: Path, relpaths: list[str]) -> dict[str, str]:
    """sha256 of each file of ``entry`` named in ``relpaths``; raises FetchError when one is missing."""
    out: dict[str, str] = {}
    for rel in relpaths:
        try:
            out[rel] = file_sha256(entry / rel)
        except OSError as exc:
            raise FetchError(f"cache entry {entry}: key file {rel} missing: {exc.strerror}") from exc
    return out


def load_manifest(entry: Path) -> Manifest:
    """Read an entry's manifest; raises IntegrityError when it is missing or malformed."""
    path = entry / MANIFEST
    try:
        return Manifest.deserialize(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, CacheError) as exc:
        raise IntegrityError(f"cache entry {entry}: bad manifest {path.name}: {exc}") from exc


def file_sizes(entry: Path, relpaths: list[str]) -> dict[str, int]:
    """The size of each file of ``entry`` named in ``relpaths``; raises OSError when one is missing."""
    return {rel: (entry / rel).stat().st_size for rel in relpaths}


def check_files(entry: Path, manifest: Manifest, digests: bool = True) -> list[str]:
    """What is wrong with the files of ``entry`` against ``manifest``: a file missing, of another size
    than its ``meta["sizes"]`` (when recorded: a stat, cheap enough for every use) or, when
    ``digests``, of another sha256 (reads every byte). Empty when nothing is."""
    sizes = manifest.meta.get("sizes")
    sizes = sizes if isinstance(sizes, dict) else {}
    problems: list[str] = []
    for rel, expected in manifest.files.items():
        target = entry / rel
        try:
            target.resolve().relative_to(entry.resolve())
            size = target.stat().st_size
        except (OSError, ValueError):
            problems.append(f"{rel}: missing")
            continue
        if rel in sizes and size != sizes[rel]:
            what = "truncated" if size < sizes[rel] else "grown"
            problems.append(f"{rel}: {what} to {size} bytes, manifest {sizes[rel]}")
        elif digests and file_sha256(target) != expected:
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def write_manifest(entry: Path, manifest: Manifest) -> None:
    """Write ``manifest`` into ``entry``, atomically (a reader sees the old one or the new one)."""
    atomic_write(entry / MANIFEST, json.dumps(manifest.serialize(), indent=1, sort_keys=True) + "\n")


def check_entry(entry: Path, source_digest: str | None = None) -> EntryStatus:
    """Check an entry against its manifest: it exists, comes from ``source_digest`` (when given), and
    every key file is present with its recorded digest."""
    if not entry.is_dir():
        return EntryStatus(entry, False, ("missing",))
    try:
        manifest = load_manifest(entry)
    except IntegrityError as exc:
        return EntryStatus(entry, False, (str(exc),))
    problems: list[str] = []
    if source_digest is not None and manifest.source_digest != source_digest:
        problems.append(f"built from {manifest.source_digest}, expected {source_digest}")
    for rel, expected in manifest.files.items():
        target = entry / rel
        try:
            target.resolve().relative_to(entry.resolve())
            actual = file_sha256(target)
        except (OSError, ValueError):
            problems.append(f"{rel} missing")
            continue
        if actual != expected:
            problems.append(f"{rel} changed (sha256 {actual}, manifest {expected})")
    return EntryStatus(entry, not problems, tuple(problems))


def remove_entry(path: Path) -> None:
    """Remove an entry (or a half-built one) without following symlinks out of it."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def lock_for(entry: Path) -> FileLock:
    """The lock that guards building and checking ``entry`` across processes."""
    return FileLock(str(entry.with_name(entry.name + ".lock")))


def ensure_entry(
    entry: Path,
    build: Callable[[Path], Manifest],
    source_digest: str | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Manifest:
    """Return the manifest of a valid ``entry``, building it first when it is missing or corrupted.

    Under the entry's lock: a valid entry is used as is; an invalid one is removed; ``build`` fills a
    fresh temp directory beside the entry and returns its manifest, which is written and checked
    before the directory is renamed into place. Several processes asking for the same entry build it
    once. Raises whatever ``build`` raises, IntegrityError when the built entry fails its own check,
    FetchError when the lock cannot be had in ``lock_timeout`` seconds.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_for(entry)
    try:
        lock.acquire(timeout=lock_timeout)
    except Timeout as exc:
        raise FetchError(f"cache entry {entry}: still locked after {lock_timeout:.0f} s") from exc
    try:
        status = check_entry(entry, source_digest)
        if status.ok:
            return load_manifest(entry)
        if entry.exists() or entry.is_symlink():
            log.warning("cache entry %s is invalid (%s); rebuilding", entry, "; ".join(status.problems))
            remove_entry(entry)
        # Leftovers of a builder that died: nobody else builds this entry while we hold the lock.
        remove_stale_temps(entry)
        started = time.monotonic()
        with atomic_directory(entry) as tmp:
            manifest = build(tmp)
            write_manifest(tmp, manifest)
            built = check_entry(tmp, source_digest)
            if not built.ok:
                raise IntegrityError(
                    f"cache entry {entry}: fresh build fails its check: {'; '.join(built.problems)}"
                )
        log.info("cache entry %s built in %.1f s", entry, time.monotonic() - started)
        return manifest
    finally:
        lock.release()
