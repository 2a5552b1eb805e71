"""The directory shared with a guest: what the host puts in it before a boot and reads from it after."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.programs.inventory import BPFObject
from harness.programs.loader import plan_loader
from harness.programs.sidecar import Sidecar
from harness.vm.guest import protocol

AGENT = Path(__file__).parents[1] / "vm" / "guest" / "agent.py"
KERNEL_VERSION_PY = Path(__file__).parents[1] / "kernels" / "version.py"


def prepare_share(
    share: Path,
    objects: Sequence[BPFObject],
    want_facts: bool,
    sidecar: Callable[[str], Sidecar],
    progs_dir: Path,
    samples: Mapping[str, Path],
) -> None:
    """The agent, its helpers, the objects and the plan in ``share``; ``samples`` are the user-space
    samples built for the guest's arch (empty when they did not build: their probes are ERROR cells)."""
    shutil.copy2(AGENT, share / AGENT.name)
    objdir = share / protocol.OBJECTS_DIR
    objdir.mkdir()
    entries: list[protocol.PlanObject] = []
    for obj in objects:
        dest = objdir / obj.path.name
        shutil.copy2(obj.path, dest)
        side = sidecar(obj.name)
        entry: protocol.PlanObject = {
            "name": obj.name, "path": f"{protocol.OBJECTS_DIR}/{dest.name}",
            "triggers": side.triggers_for(obj.probes),
        }
        loader = plan_loader(side.loader, obj.path, str(side.path))
        if loader:
            entry["loader"] = loader
        entries.append(entry)
    from harness.checks.scenarios import plan_scenarios

    plan: protocol.Plan = {
        "facts": want_facts,
        "objects": entries,
        "scenarios": plan_scenarios(share, objects, progs_dir, samples),
    }
    for helper in AGENT.parent.glob("*.py"):
        if helper != AGENT and helper.name != "__init__.py":
            shutil.copy2(helper, share / helper.name)
    shutil.copy2(KERNEL_VERSION_PY, share / KERNEL_VERSION_PY.name)  # the agent's `import version`
    protocol.write_plan(share, plan)
