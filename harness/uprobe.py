"""Offline checks of user-space probe targets (uprobe, uretprobe, usdt) on ELF and DWARF."""

from __future__ import annotations

from pathlib import Path

from harness.config import Arch
from harness.results import CellResult, Probe


def check_uprobe(probe: Probe, kernel: str, arch: Arch, root: Path, progs_dir: Path) -> CellResult | None:
    """The UPROBE check of ``probe`` against its target as the guest of (kernel, arch) sees it.

    ``root`` is that guest's root filesystem (the host's "/" for the host's arch). None when the
    probe is not a user-space one.
    """
    return None
