"""The facts step of a run: where a kernel's cached facts and BTF are, and storing what a guest collected."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from harness.errors import HarnessError, IntegrityError
from harness.files import atomic_directory, atomic_write, remove_stale_temps, remove_tree
from harness.kernels.cache import (
    MANIFEST,
    Manifest,
    check_files,
    digest_files,
    file_sizes,
    load_manifest,
    lock_for,
    write_manifest,
)
from harness.kernels.facts import DERIVED_DIR
from harness.kernels.fetch import KernelBuild
from harness.vm.guest.protocol import (
    BTF_FILE,
    CONFIG_FILE,
    FEATURES_ERROR_FILE,
    FEATURES_FILE,
    KALLSYMS_FILE,
)

log = logging.getLogger(__name__)

FACTS_MARKER = "facts-done"  # written in the facts directory once every file of it is in place
# Why the facts of a kernel were collected again: written beside its facts directory when they are
# found corrupt, carried into the next facts stored (RECOLLECTED_FILE), read into the kernel's notes.
_RECOLLECT_SUFFIX = ".recollect"
RECOLLECTED_FILE = "recollected"
_NO_FEATURES = "facts in the cache had no feature probe (stored before it was collected): collected again"
# Facts whose every sha256 this process has checked, by directory: the manifest's (inode, mtime,
# size) then. Later uses check the sizes only (a stat per file; the digests of a 6.1 kernel's 11 MB
# of facts take 8-16 ms to read, once per process and entry).
_checked: dict[Path, tuple[int, int, int]] = {}
_checked_lock = threading.Lock()


def complete_facts_dir(build: KernelBuild) -> Path | None:
    """The facts directory of ``build``'s cache entry when every file of it is in place and matches
    its manifest, else None. Facts found corrupt (or stored without a manifest) are removed, so
    that the next boot collects them again, which notes why (facts_note)."""
    facts = Path(build.facts_dir)
    if not (facts / FACTS_MARKER).exists() and not (facts / MANIFEST).exists():
        return None  # never collected (the fetch leaves an empty directory)
    if not check_facts(facts):
        if has_feature_probe(facts):
            return facts
        note_predates_features(facts)
        return None
    return facts if discard_facts(facts) else None


def has_feature_probe(facts: Path) -> bool:
    """Whether the guest that collected ``facts`` ran the feature probe (whatever it found)."""
    return (facts / FEATURES_FILE).exists() or (facts / FEATURES_ERROR_FILE).exists()


def note_predates_features(facts: Path) -> None:
    """Note why sound facts stored before feature probes were collected are not complete: the next
    boot (which a run makes anyway for its in-guest checks) collects them again, and the store replaces
    the entry with the same files and the probe. Their features are not marked "could not tell" instead: every
    cached kernel would then skip the features check for good. The entry stays in place meanwhile
    (it is sound, and other checkouts of the harness may be using it)."""
    reason = facts.with_name(facts.name + _RECOLLECT_SUFFIX)
    if not reason.exists():
        try:
            atomic_write(reason, _NO_FEATURES + "\n")
        except OSError:
            pass  # a read-only cache: the note is only for the kernel's notes


def check_facts(facts: Path, deep: bool | None = None) -> list[str]:
    """What is wrong with a stored facts directory (empty when nothing): its manifest is missing or
    malformed, a file is missing, of another size or (``deep``) of other bytes. ``deep`` by default
    the first time this process checks that manifest."""
    try:
        manifest = load_manifest(facts)
        stamp = (facts / MANIFEST).stat()
    except IntegrityError:
        # Stored before facts had manifests: nothing says its bytes are the ones collected, and
        # writing a manifest now would bless a corrupt file for good.
        return ["no manifest" if not (facts / MANIFEST).exists() else "bad manifest"]
    except OSError:
        return ["no manifest"]
    key = (stamp.st_ino, stamp.st_mtime_ns, stamp.st_size)
    if deep is None:
        with _checked_lock:
            deep = _checked.get(facts) != key
    problems = check_files(facts, manifest, digests=deep)
    if not problems and deep:
        with _checked_lock:
            _checked[facts] = key
    return problems


def discard_facts(facts: Path) -> bool:
    """Remove a facts directory found wrong, recording why beside it; True when, under its lock, it
    turned out to be sound after all (another process had just stored it again)."""
    with lock_for(facts):
        problems = check_facts(facts, deep=True)
        if not problems:
            return True
        if problems == ["no manifest"]:
            why = "facts in the cache had no manifest (stored before facts were verified): collected again"
        else:
            why = f"facts in the cache were corrupt ({'; '.join(problems)}): collected again"
        log.warning("%s: %s", facts, why)
        atomic_write(facts.with_name(facts.name + _RECOLLECT_SUFFIX), why + "\n")
        with _checked_lock:
            _checked.pop(facts, None)
        remove_stale_temps(facts)
        with atomic_directory(facts):
            pass  # an empty facts directory, as the fetch leaves it, replaces the corrupt one
    return False


def facts_manifest(facts: Path) -> Manifest:
    """The manifest of a facts directory: sha256 and size of each file but the derived caches."""
    rels = sorted(
        str(p.relative_to(facts)) for p in facts.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(facts).parts[0] != DERIVED_DIR
    )
    # Facts come from a guest, not a download: the kernel entry they sit in names the package.
    return Manifest("guest", digest_files(facts, rels), {"sizes": file_sizes(facts, rels)})


def store_facts(source: Path, dest: Path, config: Path | None) -> None:
    """Move the guest's facts into the kernel's cache entry, atomically, with a manifest written last.

    Debian kernels have no /proc/config.gz: their config comes from the package's boot/config-*.
    A failed or interrupted store leaves the old facts as they were and no temp behind.
    """
    if not (source / KALLSYMS_FILE).exists():
        return
    reason = dest.with_name(dest.name + _RECOLLECT_SUFFIX)
    with lock_for(dest):
        remove_stale_temps(dest)
        with atomic_directory(dest) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            if config is not None and not (tmp / CONFIG_FILE).exists():
                shutil.copy2(config, tmp / CONFIG_FILE)
            if reason.exists():
                shutil.copy2(reason, tmp / RECOLLECTED_FILE)
            (tmp / FACTS_MARKER).write_text("ok\n")
            write_manifest(tmp, facts_manifest(tmp))
        remove_tree(reason)
        with _checked_lock:
            _checked.pop(dest, None)


def facts_note(build: KernelBuild) -> str:
    """Why the facts of ``build`` were collected again (for the kernel's notes), else ""."""
    try:
        return (Path(build.facts_dir) / RECOLLECTED_FILE).read_text().strip()
    except OSError:
        return ""


def vmlinux_btf(build: KernelBuild) -> Path:
    """The vmlinux BTF of ``build``: its cached facts' (when they are sound), else one extracted from
    its image into the cache entry (written atomically: concurrent writers write the same bytes).
    Raises HarnessError when the image has none."""
    facts = complete_facts_dir(build)
    if facts is not None and (facts / BTF_FILE).exists():
        return facts / BTF_FILE
    extracted = Path(build.entry) / BTF_FILE
    if extracted.exists():
        return extracted
    from harness.kernels.image import extract_btf

    data = extract_btf(Path(build.image))
    atomic_write(extracted, data)
    return extracted


def no_facts_error(key: str, why: str) -> HarnessError:
    """The error of a (kernel, arch) whose facts could not be had."""
    return HarnessError(f"no facts for {key}: {why}")
