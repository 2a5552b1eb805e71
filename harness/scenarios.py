"""Guest scenarios beyond load/attach/fire (e.g. a uprobe across a library update): planning and results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.config import Arch
from harness.guestlog import GuestContext
from harness.inventory import BPFObject
from harness.results import CellResult, Probe


def plan_scenarios(
    share: Path, objects: Sequence[BPFObject], progs_dir: Path, arch: Arch
) -> list[dict[str, Any]]:
    """The scenarios the guest agent runs after the objects, with their files written into ``share``.

    Each scenario is a JSON-ready dict with a "kind" the agent's scenarios module knows.
    """
    return []


def check_scenarios(
    probes: Sequence[Probe], records: Sequence[Mapping[str, Any]], ctx: GuestContext
) -> list[CellResult]:
    """Results of the scenarios' records (scenarios.json); they replace the plain in-guest results."""
    return []
