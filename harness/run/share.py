"""The directory shared with a guest: what the host puts in it before a boot and reads from it after."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.kernels.config import Arch
from harness.programs.hooks import observes_bpf
from harness.programs.inventory import BPFObject
from harness.programs.loader import plan_loader
from harness.programs.own_loader import OwnLoader
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
    loaders: Mapping[str, OwnLoader] | None = None,
    arch: Arch | None = None,
) -> None:
    """The agent, its helpers, the objects and the plan in ``share``; ``samples`` are the user-space
    samples built for the guest's arch (empty when they did not build: their probes are ERROR cells).
    The objects named in ``loaders`` are loaded by their own loader, its binaries those of ``arch``
    (mounted by the VM at the places loader_mounts gives)."""
    shutil.copy2(AGENT, share / AGENT.name)
    mounts = loader_mounts(loaders or {}, arch) if arch is not None else []
    for where, _host in mounts:
        (share / where).mkdir(parents=True)  # the mount points: the guest mounts the binaries over them
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
        own = (loaders or {}).get(obj.name)
        if own is not None and arch is not None:
            entry["own_loader"] = loader_plan(own, arch, mounts)
            # Every program fires under the loader at once: each trigger is run, the default one too.
            entry["triggers"] = {p.program: entry["triggers"].get(p.program, "default") for p in obj.probes}
        elif loader := plan_loader(side.loader, obj.path, str(side.path)):
            entry["loader"] = loader
        if why := isolation(side, obj):
            entry["isolate"] = why
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


def isolation(side: Sidecar, obj: BPFObject) -> str:
    """Why ``obj``'s programs must be attached and fired alone ("" when they may share a batch)."""
    if side.isolate:
        return "its sidecar asks for isolation"
    seen = next((p for p in obj.probes if observes_bpf(p.kind, p.target)), None)
    return f"{seen.program} observes the BPF machinery ({seen.kind} {seen.target})" if seen else ""


def loader_mounts(loaders: Mapping[str, OwnLoader], arch: Arch) -> list[tuple[str, Path]]:
    """(place in the share, host directory) of the binaries of every own loader on ``arch``, each
    directory once, in the order of ``loaders``: what the VM shares read-only."""
    dirs = dict.fromkeys(d for own in loaders.values() if (d := own.binaries_for(arch)) is not None)
    return [(f"{protocol.LOADERS_DIR}/{i}", d) for i, d in enumerate(dirs)]


def loader_plan(own: OwnLoader, arch: Arch, mounts: Sequence[tuple[str, Path]]) -> protocol.OwnLoaderPlan:
    """The plan's entry for an own loader on ``arch``, its binaries at their place in ``mounts``."""
    binaries = own.binaries_for(arch)
    where = next((w for w, d in mounts if d == binaries), "")
    command: protocol.Trigger = own.command if isinstance(own.command, str) else list(own.command)
    return {"command": command, "binaries": where, "time_limit": own.time_limit, "ready": own.ready}
