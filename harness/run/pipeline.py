"""One run of the matrix: build the programs, boot each (kernel, arch) once, compute every result."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import guest as guestlog
from harness.checks.uprobe import GUEST_USER_DIR, build_user_samples, parse_uprobe_target
from harness.errors import BuildError, HarnessError, LostVMError, ObjectError, VMError
from harness.files import atomic_write
from harness.kernels.config import Arch, KernelsConfig, KernelSpec, host_arch
from harness.programs.build import build_source, find_sources, generate_vmlinux_h, render_no_vmlinux_btf
from harness.programs.inventory import USER_KINDS, BPFObject, load_object
from harness.programs.sidecar import Sidecar, load_sidecar
from harness.report.results import CellResult, Check, KernelRun, Outcome, Probe
from harness.vm.guest import protocol
from harness.vm.runner import Accelerator, Runner, VMRequest, VMResult, accelerator_for, scaled_timeout

AGENT = Path(__file__).parents[1] / "vm" / "guest" / "agent.py"
GUEST_CHECKS = (Check.LOAD, Check.CORE, Check.ATTACH, Check.FIRE)
OFFLINE_CHECKS = (Check.SYMBOL, Check.PROTOTYPE, Check.LAYOUT, Check.TP_FORMAT, Check.UPROBE)
FACTS_MARKER = "facts-done"  # written in the facts directory once every file of it is in place
SCRATCH_DISK_BYTES = 4 << 20  # a virtio disk so that block-layer probes have I/O to see
# LSMs of Debian's CONFIG_LSM; `bpf` is appended when missing so that lsm/ programs can attach.
DEFAULT_LSM = ("lockdown", "capability", "landlock", "yama", "apparmor", "bpf")

# Pseudo-program of a source that produced no object: its row carries the build error.
BUILD_PROGRAM = "(build)"
# Hook kind of a program whose section names a type the harness cannot check (socket, xdp, ...).
UNKNOWN_KIND = "unknown"


@dataclass(frozen=True)
class ArchObjects:
    """The programs of bpf_progs/ built for one arch: objects, their probes, and what failed."""

    arch: str
    objects: tuple[BPFObject, ...]
    errors: Mapping[str, str]  # object name -> one-line build or inventory error
    vmlinux_h: str = ""  # where the vmlinux.h came from
    relocated: frozenset[tuple[str, str]] = frozenset()  # (object, program) with CO-RE relocations

    def applies(self, probe: Probe, check: Check) -> bool:
        """Whether ``check`` says anything about ``probe``: tests are generated only where it does."""
        from harness.checks.drift import resolve_btf_name

        if probe.program == BUILD_PROGRAM:
            return check in (Check.SYMBOL, Check.LOAD)
        if check in (Check.LAYOUT, Check.CORE):
            return (probe.object, probe.program) in self.relocated
        if check == Check.PROTOTYPE:
            return resolve_btf_name(probe.kind, probe.target) is not None
        if check == Check.TP_FORMAT:
            return probe.kind == "tracepoint"
        if check == Check.UPROBE:
            return probe.kind in USER_KINDS
        return True

    def probes(self) -> list[Probe]:
        found = [p for o in self.objects for p in o.probes]
        found += [Probe(o.name, prog, sec, UNKNOWN_KIND, "") for o in self.objects for prog, sec in o.unknown]
        found += [Probe(name, BUILD_PROGRAM, "", "build", "") for name in sorted(self.errors)]
        return found


@dataclass
class GuestOutcome:
    """What one boot of one (kernel, arch) gave: results per probe and check, and the kernel's record."""

    kernel: KernelRun
    results: dict[tuple[Probe, Check], CellResult] = field(default_factory=dict)
    error: str = ""
    console_tail: str = ""


def lsm_append(config_text: str | None) -> str:
    """``lsm=`` for the kernel command line: the kernel's own CONFIG_LSM with ``bpf`` added."""
    lsms: list[str] = list(DEFAULT_LSM)
    if config_text:
        for line in config_text.splitlines():
            if line.startswith("CONFIG_LSM="):
                lsms = [x for x in line.split("=", 1)[1].strip().strip('"').split(",") if x]
                break
    if "bpf" not in lsms:
        lsms.append("bpf")
    return "lsm=" + ",".join(lsms)


def reported_seconds(value: object) -> float:
    """A duration the guest reported, or 0.0 when it reported none (or nonsense)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return 0.0


def version_key(kernel_id: str) -> tuple[int, ...]:
    parts = []
    for piece in kernel_id.replace("-", ".").split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class MatrixRun:
    """The state of one run in one process: built objects, fetched kernels, boots and results.

    Every (kernel, arch) is booted at most once per process; pytest-xdist keeps all the in-guest tests
    of a (kernel, arch) on one worker, so that is once per run. Facts are cached with the kernel.
    """

    def __init__(
        self,
        config: KernelsConfig,
        progs_dir: Path,
        runner: Runner,
        accelerator: Accelerator,
        cache_root: Path | None = None,
        work_dir: Path | None = None,
        retries: int = 1,
        fetch: Callable[..., Any] | None = None,
        guest_planned: frozenset[str] = frozenset(),
        keep_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.progs_dir = progs_dir
        self.runner = runner
        self.accelerator = accelerator
        self.cache_root = cache_root
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="bpf-matrix-"))
        self.retries = retries
        self._fetch = fetch
        # (kernel, arch) keys whose in-guest tests this run selected: some process boots them, and
        # the offline checks wait for their facts instead of booting them a second time.
        self.guest_planned = guest_planned
        self.keep_dir = keep_dir  # where each boot's directory is copied before it is removed
        # Set when this process also reports the offline checks (no xdist): they are then computed
        # while the first VM boots, when their facts are all cached.
        self.overlap_offline = False
        self._objects: dict[str, ArchObjects] = {}
        self._builds: dict[str, Any] = {}
        self._guest: dict[str, GuestOutcome] = {}
        self._objects_run: set[str] = set()  # keys whose boot ran the objects, not the facts alone
        self._offline: dict[str, dict[tuple[Probe, Check], CellResult]] | None = None
        self._facts: dict[str, Any] = {}
        self._sidecars: dict[str, Sidecar] = {}
        self._roots: dict[str, Path | HarnessError] = {}
        self._samples: dict[str, dict[str, Path] | BuildError] = {}
        self._kernel_runs: dict[str, KernelRun] = {}

    # --- kernels -----------------------------------------------------------------------------------

    def fetch(self, spec: KernelSpec) -> Any:
        """The KernelBuild of ``spec`` (fetched once per process); raises HarnessError."""
        if spec.key in self._builds:
            cached = self._builds[spec.key]
            if isinstance(cached, HarnessError):
                raise cached
            return cached
        fetch = self._fetch
        if fetch is None:
            from harness.kernels.fetch import fetch_kernel

            fetch = fetch_kernel
        try:
            build = fetch(spec, cache_root=self.cache_root, mirror=self.config.mirror)
        except HarnessError as exc:
            self._builds[spec.key] = exc
            raise
        self._builds[spec.key] = build
        return build

    def specs(self, arch: str | None = None) -> list[KernelSpec]:
        return [k for k in self.config.kernels if arch is None or k.arch.name == arch]

    def arches(self) -> list[Arch]:
        return list(dict.fromkeys(k.arch for k in self.config.kernels))

    # --- programs ----------------------------------------------------------------------------------

    def _btf_for_arch(self, arch: Arch) -> Path:
        """A vmlinux BTF of ``arch`` for vmlinux.h: cached facts, else extracted from a kernel image.

        The newest kernel of the arch is tried first: programs are usually written against it, and
        CO-RE adapts them to older kernels.
        """
        from harness.kernels.fetch import render_kernel_error

        errors: list[str] = []
        # From the whole file, not the selection: a shard must build the objects a full run builds.
        universe = [s for s in self.config.universe or self.config.kernels if s.arch == arch]
        for spec in sorted(universe, key=lambda s: version_key(s.id), reverse=True):
            try:
                build = self.fetch(spec)
            except HarnessError as exc:
                errors.append(render_kernel_error(spec, exc))
                continue
            facts_btf = Path(build.facts_dir) / "vmlinux.btf"
            if facts_btf.exists():
                return facts_btf
            extracted = Path(build.entry) / "vmlinux.btf"
            if extracted.exists():
                return extracted
            try:
                from harness.kernels.image import extract_btf

                data = extract_btf(Path(build.image))
            except HarnessError as exc:
                errors.append(render_kernel_error(spec, exc))
                continue
            atomic_write(extracted, data)
            return extracted
        raise HarnessError(render_no_vmlinux_btf(arch.name, errors))

    def objects(self, arch: Arch) -> ArchObjects:
        """bpf_progs/ built for ``arch`` (once per process; the build itself is cached on disk)."""
        if arch.name in self._objects:
            return self._objects[arch.name]
        sources = find_sources(self.progs_dir)
        build_dir = self._cache_dir() / "build"
        vmlinux_h: Path | None = None
        where = ""
        errors: dict[str, str] = {}
        if any(not s.prebuilt for s in sources):
            if (self.progs_dir / "vmlinux.h").exists():
                where = str(self.progs_dir / "vmlinux.h")
            else:
                try:
                    btf = self._btf_for_arch(arch)
                    vmlinux_h = generate_vmlinux_h(btf, build_dir)
                    where = str(btf)
                except HarnessError as exc:
                    for s in sources:
                        if not s.prebuilt:
                            errors[s.name] = str(exc)
        objects: list[BPFObject] = []
        for source in sources:
            if source.name in errors:
                continue
            built = build_source(source, arch, vmlinux_h, build_dir)
            if built.object is None:
                errors[source.name] = f"{source.path.name} does not compile: {built.error}"
                continue
            try:
                objects.append(load_object(built.object))
            except ObjectError as exc:
                errors[source.name] = str(exc)
        from harness.btf.bpf_object import load_object_core_relos

        relocated: set[tuple[str, str]] = set()
        for obj in objects:
            try:
                relos = load_object_core_relos(obj.path)
            except HarnessError:
                continue
            relocated.update((obj.name, prog) for prog, items in relos.items() if items)
        result = ArchObjects(arch.name, tuple(objects), errors, where, frozenset(relocated))
        self._objects[arch.name] = result
        return result

    def arch_probes(self, arch: Arch) -> list[tuple[Probe, ArchObjects]]:
        """Every probe of ``arch``, each with the build that says which checks apply to it.

        An object that did not build for ``arch`` shows the probes it has on another arch of the run
        (their cells on ``arch`` are ERROR with the build error); built nowhere, it is a "(build)" row.
        """
        built = self.objects(arch)
        found = [(p, built) for p in built.probes() if p.program != BUILD_PROGRAM]
        for name in sorted(built.errors):
            borrowed: list[tuple[Probe, ArchObjects]] = []
            for other in self.arches():
                other_built = self.objects(other) if other != arch else built
                for obj in other_built.objects:
                    if obj.name == name and not borrowed:
                        borrowed = [(p, other_built) for p in obj.probes]
            found += borrowed or [(Probe(name, BUILD_PROGRAM, "", "build", ""), built)]
        return found

    def _cache_dir(self) -> Path:
        if self.cache_root is not None:
            return self.cache_root
        from harness.kernels.cache import resolve_cache_root

        return resolve_cache_root(os.environ)

    def sidecar(self, object_name: str) -> Sidecar:
        """The sidecar of an object (parsed once); raises ConfigError for a malformed one."""
        if object_name not in self._sidecars:
            self._sidecars[object_name] = load_sidecar(self.progs_dir, object_name)
        return self._sidecars[object_name]

    # --- facts -------------------------------------------------------------------------------------

    def facts_dir(self, spec: KernelSpec) -> Path | None:
        """The cached facts of ``spec``'s kernel when complete, else None."""
        try:
            build = self.fetch(spec)
        except HarnessError:
            return None
        facts = Path(build.facts_dir)
        return facts if (facts / FACTS_MARKER).exists() else None

    def facts(self, spec: KernelSpec) -> Any:
        """The KernelFacts of ``spec`` from the cache, booting for them when missing.

        Raises HarnessError (the fetch or the boot failed).
        """
        if spec.key in self._facts:
            cached = self._facts[spec.key]
            if isinstance(cached, HarnessError):
                raise cached
            return cached
        from harness.kernels.facts import load_facts

        directory = self.facts_dir(spec)
        if directory is None and spec.key in self.guest_planned and spec.key not in self._guest:
            self._wait_for_boot(spec)
            directory = self.facts_dir(spec)
            if directory is None:
                err = HarnessError(f"no facts for {spec.key}: {self._boot_marker(spec) or 'boot failed'}")
                self._facts[spec.key] = err
                raise err
        if directory is None:
            outcome = self.guest(spec, with_objects=False)
            directory = self.facts_dir(spec)
            if directory is None:
                err = HarnessError(f"no facts for {spec.key}: {outcome.error or 'the guest wrote none'}")
                self._facts[spec.key] = err
                raise err
        facts = load_facts(directory)
        self._facts[spec.key] = facts
        return facts

    # --- the guest ---------------------------------------------------------------------------------

    def _marker(self, spec: KernelSpec) -> Path:
        return self.work_dir / f"{spec.key}.booted"

    def _boot_marker(self, spec: KernelSpec) -> str | None:
        try:
            return self._marker(spec).read_text().strip()
        except OSError:
            return None

    def _wait_for_boot(self, spec: KernelSpec) -> None:
        """Wait until the process that boots ``spec`` in this run has finished with it.

        pytest-xdist hands the offline group out after every (kernel, arch) group, so the boot it waits
        for has started or is queued ahead of it on another worker; the deadline covers a whole boot
        with its retries for every kernel.
        """
        per_boot = max(scaled_timeout(s.timeout, s.arch, self.accelerator) for s in self.config.kernels)
        deadline = time.monotonic() + per_boot * (self.retries + 1) * max(1, len(self.guest_planned))
        while self._boot_marker(spec) is None and time.monotonic() < deadline:
            time.sleep(0.5)

    def kernel_run(self, spec: KernelSpec) -> KernelRun:
        """What is known of ``spec`` so far (booted or not)."""
        if spec.key in self._kernel_runs:
            return self._kernel_runs[spec.key]
        try:
            build = self.fetch(spec)
        except HarnessError as exc:
            return KernelRun(spec.id, spec.arch.name, source=spec.describe(), error=str(exc))
        return KernelRun(
            spec.id, spec.arch.name, version=build.release, source=build.source, digest=build.digest,
            notes=(build.verified,) if build.verified else (),
        )

    def guest(self, spec: KernelSpec, with_objects: bool = True) -> GuestOutcome:
        """Boot ``spec`` once and run the agent: facts when not cached, and every object of its arch."""
        cached = self._guest.get(spec.key)
        # A boot for the facts alone loaded no objects: it answers no in-guest check, unless it failed.
        if cached is not None and (not with_objects or cached.error or spec.key in self._objects_run):
            return cached
        probes: list[Probe] = []
        objects: list[BPFObject] = []
        if with_objects:
            built = self.objects(spec.arch)
            objects = list(built.objects)
            probes = [p for o in objects for p in o.probes]
        outcome = self._boot(spec, objects, probes)
        if with_objects:
            self._objects_run.add(spec.key)
        self._marker(spec).write_text(outcome.error or "ok")
        self._guest[spec.key] = outcome
        self._kernel_runs[spec.key] = outcome.kernel
        return outcome

    def guest_root(self, arch: Arch) -> Path:
        """The root filesystem guests of ``arch`` boot on: the host's own for its arch, else one built
        from Debian packages (raises HarnessError when it cannot be built; tried once per process)."""
        if arch == host_arch():
            return Path("/")
        if arch.name not in self._roots:
            from harness.kernels.rootfs import fetch_rootfs

            try:
                self._roots[arch.name] = fetch_rootfs(
                    arch, self.config.rootfs, self.cache_root, self.config.mirror
                )
            except HarnessError as exc:
                self._roots[arch.name] = exc
        root = self._roots[arch.name]
        if isinstance(root, HarnessError):
            raise root
        return root

    def user_samples(self, arch: Arch) -> dict[str, Path]:
        """bpf_progs/user/ built for ``arch`` (once per process); raises BuildError."""
        if arch.name not in self._samples:
            try:
                self._samples[arch.name] = build_user_samples(self.progs_dir, arch, self._cache_dir())
            except BuildError as exc:
                self._samples[arch.name] = exc
        samples = self._samples[arch.name]
        if isinstance(samples, BuildError):
            raise samples
        return samples

    def input_error(self, arch: Arch, probe: Probe) -> str:
        """Why the harness could not produce what ``probe`` needs on ``arch`` (empty when it could).

        Nothing is known of such a probe's compatibility there: every check of it is an ERROR, never
        a FAIL (a uprobe on a sample that did not build cannot attach, through no fault of its own).
        """
        if probe.program == BUILD_PROGRAM:
            return self.objects(arch).errors.get(probe.object, "build failed")
        if probe.object in self.objects(arch).errors:
            return self.objects(arch).errors[probe.object]
        if probe.kind not in USER_KINDS:
            return ""
        target = parse_uprobe_target(probe.target)
        if target is not None and target.path.startswith(GUEST_USER_DIR + "/"):
            try:
                self.user_samples(arch)
            except BuildError as exc:
                return f"the user-space samples did not build for {arch.name}: {exc}"
        try:
            self.guest_root(arch)
        except HarnessError as exc:
            return f"no {arch.name} root filesystem: {exc}"
        return ""

    def _boot(self, spec: KernelSpec, objects: Sequence[BPFObject], probes: Sequence[Probe]) -> GuestOutcome:
        base = self.kernel_run(spec)
        try:
            build = self.fetch(spec)
        except HarnessError as exc:
            return self._failed(spec, base, f"kernel not available: {exc}")
        want_facts = self.facts_dir(spec) is None
        if not want_facts and not objects:
            return GuestOutcome(base)
        root: Path | None = None
        if spec.arch != host_arch():
            try:
                root = self.guest_root(spec.arch)
            except HarnessError as exc:
                return self._failed(spec, base, f"no {spec.arch.name} root filesystem: {exc}")
        accel = accelerator_for(spec.arch, self.accelerator)
        config_text = Path(build.config).read_text(errors="replace") if build.config else None
        last_error = ""
        tail = ""
        for attempt in range(self.retries + 1):
            work = Path(tempfile.mkdtemp(prefix=f"{spec.key}-", dir=self.work_dir))
            try:
                share = work / "share"
                share.mkdir()
                self._prepare_share(share, objects, want_facts, spec.arch)
                disk = work / "scratch.img"
                with disk.open("wb") as fh:
                    fh.truncate(SCRATCH_DISK_BYTES)
                req = VMRequest(
                    image=Path(build.image),
                    arch=spec.arch,
                    share=share,
                    command=["python3", "-S", f"/mnt/{AGENT.name}", "/mnt"],  # -S: no site-packages to scan
                    accelerator=accel,
                    root=root,
                    memory=spec.memory,
                    cpus=spec.cpus,
                    append=[lsm_append(config_text), *spec.append],
                    disks=[disk],
                    modules=Path(build.modules) if build.modules else None,
                    timeout=scaled_timeout(spec.timeout, spec.arch, accel),
                )
                start = time.monotonic()
                try:
                    result = self._run_vm(req)
                except LostVMError as exc:
                    last_error, tail = str(exc), exc.console_tail
                    continue
                except VMError as exc:
                    last_error, tail = str(exc), ""
                    continue
                done = result.done
                if not done.get("ok"):
                    last_error = f"guest agent failed: {done.get('error', 'no reason given')}"
                    tail = str(done.get("traceback", ""))[-3000:]
                    continue
                if want_facts:
                    self._store_facts(share / protocol.FACTS_DIR, Path(build.facts_dir), build.config)
                kernel = KernelRun(
                    spec.id, spec.arch.name,
                    version=str(done.get("release", build.release)),
                    source=build.source, digest=build.digest,
                    accelerator=accel.name, booted=True,
                    boot_seconds=time.monotonic() - start,
                    agent_seconds=reported_seconds(done.get("seconds")),
                    lsm=str(done.get("lsm") or ""),
                    notes=tuple(
                        n for n in (
                            build.verified,
                            f"accelerator {accel.name}: {accel.reason}",
                            f"booted with {lsm_append(config_text)} so that lsm/ programs can attach",
                            f"libbpf {done.get('libbpf', '?')} in the guest",
                            f"attempt {attempt + 1}" if attempt else "",
                        ) if n
                    ),
                )
                outcome = GuestOutcome(kernel)
                records = self._read_objects(share)
                ctx = guestlog.GuestContext(spec.id, spec.arch.name, bool(done.get("stats_enabled", True)))
                if done.get("loader_error"):
                    for probe in probes:
                        for check in GUEST_CHECKS:
                            outcome.results[(probe, check)] = CellResult(
                                probe, spec.id, spec.arch.name, check, Outcome.ERROR,
                                f"loader unavailable in the guest: {done['loader_error']}",
                            )
                    return outcome
                for res in guestlog.check_guest_objects(probes, records, ctx):
                    outcome.results[(res.probe, res.check)] = res
                from harness.checks.scenarios import check_scenarios

                for res in check_scenarios(probes, protocol.read_scenarios(share), ctx):
                    outcome.results[(res.probe, res.check)] = res
                return outcome
            finally:
                self._keep(work)
                shutil.rmtree(work, ignore_errors=True)
        return self._failed(spec, base, last_error, tail, accel)

    def _run_vm(self, req: VMRequest) -> VMResult:
        """Run one VM; meanwhile compute the offline checks, when this process reports them and every
        fact they need is cached (no boot of their own: one VM at a time)."""
        if not self.overlap_offline or self._offline is not None or not self._offline_ready():
            return self.runner.run(req)
        with ThreadPoolExecutor(1, thread_name_prefix="vm") as pool:
            vm = pool.submit(self.runner.run, req)
            try:
                self._offline = self._compute_offline()
            except Exception:  # computed again, and reported, by the offline tests
                self._offline = None
            return vm.result()

    def _offline_ready(self) -> bool:
        specs = list(self.config.kernels)
        specs += [b for a in self.arches() if (b := self.config.baseline_spec(a.name)) is not None]
        return all(self.facts_dir(s) is not None for s in specs)

    def _keep(self, work: Path) -> None:
        """Copy a boot's directory (share, scratch disk left out) to keep_dir, when asked to."""
        if self.keep_dir is None:
            return
        try:
            self.keep_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(work, self.keep_dir / work.name, ignore=shutil.ignore_patterns("scratch.img"))
        except OSError:
            pass  # a debugging aid must not turn a result into an error

    def _failed(
        self, spec: KernelSpec, base: KernelRun, error: str, tail: str = "", accel: Accelerator | None = None
    ) -> GuestOutcome:
        kernel = KernelRun(
            base.kernel, base.arch, version=base.version, source=base.source, digest=base.digest,
            accelerator=accel.name if accel else "", error=error, notes=base.notes,
        )
        return GuestOutcome(kernel, error=error, console_tail=tail)

    def _prepare_share(
        self, share: Path, objects: Sequence[BPFObject], want_facts: bool, arch: Arch
    ) -> None:
        shutil.copy2(AGENT, share / AGENT.name)
        objdir = share / protocol.OBJECTS_DIR
        objdir.mkdir()
        entries: list[protocol.PlanObject] = []
        for obj in objects:
            dest = objdir / obj.path.name
            shutil.copy2(obj.path, dest)
            side = self.sidecar(obj.name)
            entries.append({
                "name": obj.name, "path": f"{protocol.OBJECTS_DIR}/{dest.name}",
                "triggers": side.triggers_for(obj.probes),
            })
        from harness.checks.scenarios import plan_scenarios

        try:
            samples = self.user_samples(arch)
        except BuildError:
            samples = {}  # the probes on them are ERROR cells (input_error)
        plan: protocol.Plan = {
            "facts": want_facts,
            "objects": entries,
            "scenarios": plan_scenarios(share, objects, self.progs_dir, samples),
        }
        for helper in AGENT.parent.glob("*.py"):
            if helper != AGENT and helper.name != "__init__.py":
                shutil.copy2(helper, share / helper.name)
        protocol.write_plan(share, plan)

    def _store_facts(self, source: Path, dest: Path, config: Path | None) -> None:
        """Move the guest's facts into the kernel's cache entry, atomically.

        Debian kernels have no /proc/config.gz: their config comes from the package's boot/config-*.
        """
        if not (source / protocol.KALLSYMS_FILE).exists():
            return
        if config is not None and not (source / protocol.CONFIG_FILE).exists():
            shutil.copy2(config, source / protocol.CONFIG_FILE)
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        (tmp / FACTS_MARKER).write_text("ok\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)

    @staticmethod
    def _read_objects(share: Path) -> list[protocol.ObjectRecord]:
        return protocol.read_objects(share)

    def guest_result(self, spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
        """The result of an in-guest ``check`` of ``probe`` on ``spec``, booting on first use."""
        if why := self.input_error(spec.arch, probe):
            return CellResult(probe, spec.id, spec.arch.name, check, Outcome.ERROR, why)
        if probe.kind == UNKNOWN_KIND:
            return self.unchecked(spec, probe, check)
        outcome = self.guest(spec)
        if outcome.error:
            return CellResult(
                probe, spec.id, spec.arch.name, check, Outcome.ERROR, outcome.error,
                {"console_tail": outcome.console_tail} if outcome.console_tail else {},
            )
        found = outcome.results.get((probe, check))
        if found is None:
            return CellResult(probe, spec.id, spec.arch.name, check, Outcome.SKIP, "not applicable")
        return found

    def unchecked(self, spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
        kind = f"section {probe.section!r} is a program type the harness does not check"
        msg = f"program {probe.program}: {kind}"
        return CellResult(probe, spec.id, spec.arch.name, check, Outcome.SKIP, msg)

    # --- offline checks ----------------------------------------------------------------------------

    def offline_result(self, spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
        """The result of an offline ``check`` of ``probe`` on ``spec`` (facts from the cache)."""
        if why := self.input_error(spec.arch, probe):
            return CellResult(probe, spec.id, spec.arch.name, check, Outcome.ERROR, why)
        if probe.kind == UNKNOWN_KIND:
            return self.unchecked(spec, probe, check)
        results = self.offline(spec)
        found = results.get((probe, check))
        if found is None:
            return CellResult(probe, spec.id, spec.arch.name, check, Outcome.SKIP, "not applicable")
        return found

    def offline(self, spec: KernelSpec) -> dict[tuple[Probe, Check], CellResult]:
        if self._offline is None:
            self._offline = self._compute_offline()
        return self._offline.get(spec.key, {})

    def _compute_offline(self) -> dict[str, dict[tuple[Probe, Check], CellResult]]:
        from harness.btf.bpf_object import load_object_core_relos
        from harness.checks import drift, symbols
        from harness.checks.uprobe import check_uprobe

        facts: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for spec in self.config.kernels:
            try:
                facts[spec.key] = self.facts(spec)
            except HarnessError as exc:
                errors[spec.key] = str(exc)
        out: dict[str, dict[tuple[Probe, Check], CellResult]] = {}
        baseline = self.config.baseline_id
        for arch in self.arches():
            built = self.objects(arch)
            relos: dict[str, dict[str, Any]] = {}
            for obj in built.objects:
                try:
                    relos[obj.name] = load_object_core_relos(obj.path)
                except HarnessError:
                    relos[obj.name] = {}
            base_spec = self.config.baseline_spec(arch.name)
            base_facts = None
            if base_spec is not None:
                if base_spec.key not in facts and base_spec.key not in errors:
                    # A shard without its baseline: the baseline's facts come from the cache, or
                    # from a boot for them alone, so that the shard diffs as a whole run would.
                    try:
                        facts[base_spec.key] = self.facts(base_spec)
                    except HarnessError as exc:
                        errors[base_spec.key] = str(exc)
                base_facts = facts.get(base_spec.key)
            columns = {(s.id, s.arch.name): facts[s.key] for s in self.specs(arch.name) if s.key in facts}
            probes = [p for o in built.objects for p in o.probes]
            alternatives = {p: symbols.stable_alternatives(p, columns) for p in probes}
            for spec in self.specs(arch.name):
                cell: dict[tuple[Probe, Check], CellResult] = {}
                out[spec.key] = cell
                kfacts = facts.get(spec.key)
                if kfacts is None:
                    why = errors.get(spec.key, "no facts")
                    for probe in probes:
                        for check in OFFLINE_CHECKS:
                            cell[(probe, check)] = CellResult(
                                probe, spec.id, spec.arch.name, check, Outcome.ERROR, why
                            )
                    continue
                btf = kfacts.btf if kfacts.has_btf else None
                base_btf = base_facts.btf if base_facts is not None and base_facts.has_btf else None
                for probe in probes:
                    sym = symbols.check_symbol(probe, spec.id, spec.arch, kfacts)
                    (sym,) = symbols.with_alternatives([sym], probe, alternatives[probe])
                    cell[(probe, Check.SYMBOL)] = sym
                    if base_spec is None or base_facts is None:
                        note = (
                            f"baseline {baseline} is not in kernels.yaml for {arch.name}"
                            if base_spec is None
                            else f"no facts of baseline {baseline}: {errors.get(base_spec.key, '')}"
                        )
                        # No baseline in the file is a choice (SKIP); a baseline whose facts could
                        # not be had is the harness's failure (ERROR).
                        unknown = Outcome.SKIP if base_spec is None else Outcome.ERROR
                        for check in (Check.PROTOTYPE, Check.TP_FORMAT):
                            cell[(probe, check)] = CellResult(
                                probe, spec.id, spec.arch.name, check, unknown, note
                            )
                    else:
                        proto = drift.check_prototype(probe, spec.id, spec.arch.name, btf, baseline, base_btf)
                        if proto is not None:
                            cell[(probe, Check.PROTOTYPE)] = proto
                        if probe.kind == "tracepoint":
                            event = probe.target
                            fmt = kfacts.tracepoint_format(event)
                            base_fmt = base_facts.tracepoint_format(event) if base_facts else None
                            tp = drift.check_tp_format(
                                probe, spec.id, spec.arch.name, fmt, baseline, base_fmt
                            )
                            if tp is not None:
                                cell[(probe, Check.TP_FORMAT)] = tp
                    layout = drift.check_layout(
                        probe, spec.id, spec.arch.name,
                        list(relos.get(probe.object, {}).get(probe.program, [])),
                        btf, baseline, base_btf,
                    )
                    if layout is not None:
                        cell[(probe, Check.LAYOUT)] = layout
                    if probe.kind in USER_KINDS and not self.input_error(spec.arch, probe):
                        root = self.guest_root(spec.arch)
                        up = check_uprobe(probe, spec.id, spec.arch, root, self.progs_dir)
                        if up is not None:
                            cell[(probe, Check.UPROBE)] = up
        return out

    def all_kernel_runs(self) -> list[KernelRun]:
        return [self._kernel_runs.get(s.key) or self.kernel_run(s) for s in self.config.kernels]


def probes_by_spec(run: MatrixRun) -> Iterable[tuple[KernelSpec, Probe]]:
    """Every (kernel spec, probe) pair of the run, in kernels.yaml order then object/program order."""
    for spec in run.config.kernels:
        for probe, _built in run.arch_probes(spec.arch):
            yield spec, probe

