"""The boot step of a run: one VM per (kernel, arch), retried when lost, and what its guest reported."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import guest as guestlog
from harness.errors import LostVMError, VMError
from harness.kernels.config import KernelSpec
from harness.kernels.facts import parse_config
from harness.kernels.fetch import KernelBuild
from harness.programs.inventory import BPFObject
from harness.programs.own_loader import OwnLoader
from harness.report.results import CellResult, Check, KernelRun, Outcome, Probe
from harness.run.facts import facts_note, store_facts
from harness.run.reuse import Lookup, RecordStore, boot_identity, merged_records, remaining_plan
from harness.run.share import AGENT, loader_mounts
from harness.vm.guest.protocol import (
    FACTS_DIR,
    SCRATCH_DISK_BYTES,
    read_objects,
    read_plan,
    read_scenarios,
    write_objects,
    write_plan,
    write_scenarios,
)
from harness.vm.runner import Accelerator, VMRequest, VMResult, scaled_timeout

GUEST_CHECKS = (Check.LOAD, Check.CORE, Check.ATTACH, Check.FIRE)
LOADER_STOP_SECONDS = 8.0  # an own loader's SIGINT grace in the guest, and some
# SCRATCH_DISK_BYTES: a virtio disk so that block-layer probes have I/O to see.
# LSMs of Debian's CONFIG_LSM; `bpf` is appended when missing so that lsm/ programs can attach.
DEFAULT_LSM = ("lockdown", "capability", "landlock", "yama", "apparmor", "bpf")


@dataclass
class GuestOutcome:
    """What one boot of one (kernel, arch) gave: results per probe and check, and the kernel's record."""

    kernel: KernelRun
    results: dict[tuple[Probe, Check], CellResult] = field(default_factory=dict)
    error: str = ""
    console_tail: str = ""

    def serialize(self) -> dict[str, Any]:
        """A JSON-ready dict: how the other processes of a run read this boot (checks/across.py)."""
        return {
            "kernel": self.kernel.serialize(),
            "results": [r.serialize() for r in self.results.values()],
            "error": self.error,
            "console_tail": self.console_tail,
        }

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> GuestOutcome:
        """Inverse of serialize(); raises KeyError, TypeError or ValueError on a malformed dict."""
        results = [CellResult.deserialize(r) for r in data["results"]]
        return cls(
            KernelRun.deserialize(data["kernel"]),
            {(r.probe, r.check): r for r in results},
            str(data.get("error", "")),
            str(data.get("console_tail", "")),
        )


@dataclass(frozen=True)
class BootJob:
    """One boot to make: the kernel, what the guest loads, and how it runs."""

    spec: KernelSpec
    build: KernelBuild
    base: KernelRun  # what is known of the kernel before the boot
    objects: Sequence[BPFObject]
    probes: Sequence[Probe]
    want_facts: bool
    root: Path | None  # the guest's root filesystem; None for the host's own
    accelerator: Accelerator
    config_text: str | None  # the package's kernel config
    loaders: Mapping[str, OwnLoader] = field(default_factory=dict)  # object -> its own loader


@dataclass(frozen=True)
class BootSteps:
    """How a boot is made: the VM runner, the share's contents, and where boot directories live."""

    run_vm: Callable[[VMRequest], VMResult]
    prepare: Callable[[Path, BootJob], None]  # fills a fresh share for the job
    work_dir: Path
    retries: int
    keep_dir: Path | None = None  # where each boot's directory is copied before it is removed
    records: RecordStore | None = None  # guest records of earlier identical boots (run/reuse.py)


def lsm_append(config_text: str | None) -> str:
    """``lsm=`` for the kernel command line: the kernel's own CONFIG_LSM with ``bpf`` added."""
    lsms: list[str] = list(DEFAULT_LSM)
    configured = parse_config(config_text).get("CONFIG_LSM") if config_text else None
    if configured not in (None, "n"):  # "n": "# CONFIG_LSM is not set"
        lsms = [x for x in str(configured).split(",") if x]
    if "bpf" not in lsms:
        lsms.append("bpf")
    return "lsm=" + ",".join(lsms)


def reported_seconds(value: object) -> float:
    """A duration the guest reported, or 0.0 when it reported none (or nonsense)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return 0.0


def vm_request(job: BootJob, share: Path, disk: Path) -> VMRequest:
    """The VM that runs the guest agent on ``share`` for ``job`` (pure)."""
    spec, build = job.spec, job.build
    return VMRequest(
        image=Path(build.image),
        arch=spec.arch,
        share=share,
        command=["python3", "-S", f"/mnt/{AGENT.name}", "/mnt"],  # -S: no site-packages to scan
        accelerator=job.accelerator,
        root=job.root,
        memory=spec.memory,
        cpus=spec.cpus,
        append=[lsm_append(job.config_text), *spec.append],
        disks=[disk],
        modules=Path(build.modules) if build.modules else None,
        # Own loaders may each take their time limit to be ready, however fast the guest is.
        timeout=scaled_timeout(spec.timeout, spec.arch, job.accelerator)
        + sum(own.time_limit + LOADER_STOP_SECONDS for own in job.loaders.values()),
        readonly=loader_mounts(job.loaders, spec.arch),
    )


def failed(base: KernelRun, error: str, tail: str = "", accel: Accelerator | None = None) -> GuestOutcome:
    """The outcome of a (kernel, arch) that could not be booted, or whose guest failed."""
    kernel = KernelRun(
        base.kernel, base.arch, version=base.version, source=base.source, digest=base.digest,
        accelerator=accel.name if accel else "", error=error, notes=base.notes,
    )
    return GuestOutcome(kernel, error=error, console_tail=tail)


def boot(job: BootJob, steps: BootSteps) -> GuestOutcome:
    """Boot ``job`` until its guest finishes, at most ``steps.retries`` more times when the VM is lost
    or the agent fails, and read its results (stores the facts the guest collected)."""
    last_error, tail = "", ""
    for attempt in range(steps.retries + 1):
        work = Path(tempfile.mkdtemp(prefix=f"{job.spec.key}-", dir=steps.work_dir))
        try:
            found = _attempt(job, steps, work, attempt)
        finally:
            keep_guest_files(work, steps.keep_dir)
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(found, GuestOutcome):
            return found
        last_error, tail = found
    return failed(job.base, last_error, tail, job.accelerator)


def _attempt(job: BootJob, steps: BootSteps, work: Path, attempt: int) -> GuestOutcome | tuple[str, str]:
    """One boot in ``work``: the outcome, or (error, console tail) of a lost VM or failed agent."""
    share = work / "share"
    share.mkdir()
    steps.prepare(share, job)
    disk = work / "scratch.img"
    with disk.open("wb") as fh:
        fh.truncate(SCRATCH_DISK_BYTES)
    req = vm_request(job, share, disk)
    lookup = look_up_records(job, steps.records, share, req)
    if lookup is not None and lookup.done is not None and lookup.everything and not job.want_facts:
        # Every record is an earlier identical boot's: no VM.
        write_objects(share, merged_records(lookup.plan, lookup, []))
        write_scenarios(share, lookup.scenarios or [])
        return read_outcome(job, share, lookup.done, booted_kernel(job, lookup.done, 0.0, 0, lookup))
    start = time.monotonic()
    try:
        result = steps.run_vm(req)
    except LostVMError as exc:
        return str(exc), exc.console_tail
    except VMError as exc:
        return str(exc), ""
    done = result.done
    if not done.get("ok"):
        why = f"guest agent failed: {done.get('error', 'no reason given')}"
        return why, str(done.get("traceback", ""))[-3000:]
    if job.want_facts:
        store_facts(share / FACTS_DIR, Path(job.build.facts_dir), job.build.config)
    seconds = time.monotonic() - start
    if lookup is not None and steps.records is not None and not done.get("loader_error"):
        merge_records(share, lookup, steps.records, done)
    kernel = booted_kernel(job, done, seconds, attempt, lookup if lookup and lookup.found else None)
    return read_outcome(job, share, done, kernel)


def look_up_records(
    job: BootJob, records: RecordStore | None, share: Path, req: VMRequest
) -> Lookup | None:
    """What earlier identical boots left for ``job`` (None when nothing is reused: no store, or the
    host's own root); the share's plan is cut down to what the guest still has to do."""
    if records is None or job.root is None:
        return None
    vm = {"memory": req.memory, "cpus": req.cpus, "append": list(req.append),
          "accelerator": req.accelerator.name, "modules": req.modules.name if req.modules else ""}
    try:
        identity = boot_identity(share, job.build.digest, job.spec.arch.name, job.root, vm)
        plan = read_plan(share)
        lookup = records.lookup(identity, share, plan)
    except (OSError, ValueError):
        return None  # an unreadable root manifest or share: boot as if nothing were stored
    if lookup.found or lookup.scenarios is not None:
        write_plan(share, remaining_plan(plan, lookup))
    return lookup


def merge_records(share: Path, lookup: Lookup, records: RecordStore, done: Mapping[str, Any]) -> None:
    """Store what the guest just did, and put the reused records beside it in the share."""
    fresh = read_objects(share)
    scenarios = read_scenarios(share)
    records.store(lookup, done, fresh, scenarios)
    if lookup.found:
        write_objects(share, merged_records(lookup.plan, lookup, fresh))
    if lookup.scenarios is not None:
        write_scenarios(share, lookup.scenarios)


def booted_kernel(
    job: BootJob, done: Mapping[str, Any], seconds: float, attempt: int, reused: Lookup | None = None
) -> KernelRun:
    """The record of a kernel whose guest finished, from the agent's done.json (pure); ``reused``
    says which records came from an earlier identical boot."""
    spec, build, accel = job.spec, job.build, job.accelerator
    notes = (
        build.verified,
        facts_note(build) if job.want_facts else "",
        f"accelerator {accel.name}: {accel.reason}",
        f"booted with {lsm_append(job.config_text)} so that lsm/ programs can attach",
        f"guest userland: {done['os_release']}" if done.get("os_release") else "",
        f"attempt {attempt + 1}" if attempt else "",
        reuse_note(reused),
    )
    return KernelRun(
        spec.id, spec.arch.name,
        version=str(done.get("release", build.release)),
        source=build.source, digest=build.digest,
        accelerator=accel.name, booted=True,
        boot_seconds=seconds,
        agent_seconds=reported_seconds(done.get("seconds")),
        lsm=str(done.get("lsm") or ""),
        guest=spec.guest.describe(),
        libbpf=str(done.get("libbpf") or ""),
        bpftool=str(done.get("bpftool") or ""),
        notes=tuple(n for n in notes if n),
    )


def reuse_note(reused: Lookup | None) -> str:
    """What a kernel's note says of records taken from an earlier identical boot ("" for none)."""
    if reused is None or not (reused.found or reused.scenarios is not None):
        return ""
    which = f"{len(reused.found)} of {len(reused.keys)} objects"
    if reused.scenarios is not None:
        which += " and the scenarios"
    how = "no VM this run" if reused.everything else "the rest booted"
    return (f"in-guest records of {which} reused from an identical boot of {reused.when} ({how}; "
            "--fresh-boots boots again)")


def read_outcome(job: BootJob, share: Path, done: Mapping[str, Any], kernel: KernelRun) -> GuestOutcome:
    """The in-guest results of every probe of ``job`` from the records the agent left in ``share``."""
    spec = job.spec
    outcome = GuestOutcome(kernel)
    records = read_objects(share)
    ctx = guestlog.GuestContext(spec.id, spec.arch.name, bool(done.get("stats_enabled", True)))
    if done.get("loader_error"):
        for probe in job.probes:
            for check in GUEST_CHECKS:
                outcome.results[(probe, check)] = CellResult(
                    probe, spec.id, spec.arch.name, check, Outcome.ERROR,
                    f"loader unavailable in the guest: {done['loader_error']}",
                )
        return outcome
    from harness.checks.own_loader import check_loader_objects

    # Objects run by their own loader are judged by what it did; the others by the agent's loads.
    own = [r for r in records if "own_loader" in r]
    own_names = {str(r.get("object")) for r in own}
    agent_probes = [p for p in job.probes if p.object not in own_names]
    for res in guestlog.check_guest_objects(agent_probes, [r for r in records if "own_loader" not in r], ctx):
        outcome.results[(res.probe, res.check)] = res
    own_probes = [p for p in job.probes if p.object in own_names]
    for res in check_loader_objects(own_probes, own, ctx):
        outcome.results[(res.probe, res.check)] = res
    from harness.checks.scenarios import check_scenarios

    for res in check_scenarios(job.probes, read_scenarios(share), ctx):
        outcome.results[(res.probe, res.check)] = res
    return outcome


def keep_guest_files(work: Path, keep_dir: Path | None) -> None:
    """Copy a boot's directory (share, scratch disk left out) to keep_dir, when asked to."""
    if keep_dir is None:
        return
    try:
        keep_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(work, keep_dir / work.name, ignore=shutil.ignore_patterns("scratch.img"))
    except OSError:
        pass  # a debugging aid must not turn a result into an error
