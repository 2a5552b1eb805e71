"""The facts step of a run: where a kernel's cached facts and BTF are, and storing what a guest collected."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.files import atomic_write
from harness.kernels.fetch import KernelBuild
from harness.vm.guest.protocol import BTF_FILE, CONFIG_FILE, KALLSYMS_FILE

FACTS_MARKER = "facts-done"  # written in the facts directory once every file of it is in place


def complete_facts_dir(build: KernelBuild) -> Path | None:
    """The facts directory of ``build``'s cache entry when every file of it is in place, else None."""
    facts = Path(build.facts_dir)
    return facts if (facts / FACTS_MARKER).exists() else None


def store_facts(source: Path, dest: Path, config: Path | None) -> None:
    """Move the guest's facts into the kernel's cache entry, atomically.

    Debian kernels have no /proc/config.gz: their config comes from the package's boot/config-*.
    """
    if not (source / KALLSYMS_FILE).exists():
        return
    if config is not None and not (source / CONFIG_FILE).exists():
        shutil.copy2(config, source / CONFIG_FILE)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    (tmp / FACTS_MARKER).write_text("ok\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def vmlinux_btf(build: KernelBuild) -> Path:
    """The vmlinux BTF of ``build``: its cached facts', else one extracted from its image into the
    cache entry (written atomically: concurrent writers write the same bytes). Raises HarnessError
    when the image has none."""
    facts_btf = Path(build.facts_dir) / BTF_FILE
    if facts_btf.exists():
        return facts_btf
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
