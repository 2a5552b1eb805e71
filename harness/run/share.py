"""The directory shared with a guest: what the host puts in it before a boot and reads from it after."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.programs.inventory import BPFObject
from harness.programs.sidecar import Sidecar

AGENT = Path(__file__).parents[1] / "vm" / "guest" / "agent.py"


def prepare_share(
    share: Path,
    objects: Sequence[BPFObject],
    want_facts: bool,
    sidecar: Callable[[str], Sidecar],
    progs_dir: Path,
    samples: Mapping[str, Path],
) -> None:
    """The agent, its helpers, the objects and plan.json in ``share``; ``samples`` are the user-space
    samples built for the guest's arch (empty when they did not build: their probes are ERROR cells)."""
    shutil.copy2(AGENT, share / AGENT.name)
    objdir = share / "objs"
    objdir.mkdir()
    entries = []
    for obj in objects:
        dest = objdir / obj.path.name
        shutil.copy2(obj.path, dest)
        side = sidecar(obj.name)
        entries.append(
            {"name": obj.name, "path": f"objs/{dest.name}", "triggers": side.triggers_for(obj.probes)}
        )
    from harness.checks.scenarios import plan_scenarios

    plan = {
        "facts": want_facts,
        "objects": entries,
        "scenarios": plan_scenarios(share, objects, progs_dir, samples),
    }
    for helper in AGENT.parent.glob("*.py"):
        if helper != AGENT and helper.name != "__init__.py":
            shutil.copy2(helper, share / helper.name)
    (share / "plan.json").write_text(json.dumps(plan))


def read_objects(share: Path) -> list[dict[str, Any]]:
    return read_json_list(share / "objects.json")


def read_scenarios(share: Path) -> list[dict[str, Any]]:
    return read_json_list(share / "scenarios.json")


def read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
