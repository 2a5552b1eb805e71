"""One run of the matrix: each step (fetch, build, boot, facts, offline checks) done once and remembered."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from harness.checks.uprobe import build_user_samples
from harness.errors import BuildError, HarnessError
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import Arch, KernelsConfig, KernelSpec, host_arch
from harness.kernels.facts import KernelFacts
from harness.kernels.fetch import KernelBuild
from harness.programs.build import find_sources
from harness.programs.inventory import BPFObject
from harness.programs.own_loader import OwnLoader
from harness.programs.sidecar import Sidecar, load_sidecar, load_sidecars
from harness.report.results import CellResult, Check, KernelRun, Probe
from harness.run import cells
from harness.run.boot import BootJob, BootSteps, GuestOutcome, boot, failed
from harness.run.coordination import BootMarkers, boot_wait
from harness.run.facts import complete_facts_dir, no_facts_error
from harness.run.memo import Memo
from harness.run.offline import Cells, UserSpace, compute_offline, facts_cached, gather_facts
from harness.run.programs import (
    UNKNOWN_KIND,
    ArchObjects,
    build_objects,
    probes_with_builds,
    vmlinux_btf_for_arch,
)
from harness.run.share import prepare_share
from harness.vm.runner import Accelerator, Runner, VMRequest, VMResult, accelerator_for, stop_all_vms

T = TypeVar("T")
Fetch = Callable[..., KernelBuild]  # fetch_kernel's shape: (spec, cache_root=, mirror=)


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
        fetch: Fetch | None = None,
        guest_planned: frozenset[str] = frozenset(),
        keep_dir: Path | None = None,
        own_loader: OwnLoader | None = None,
    ) -> None:
        self.config = config
        self.progs_dir = progs_dir
        self.runner = runner
        self.accelerator = accelerator
        self.cache_root = cache_root if cache_root is not None else resolve_cache_root()
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="bpf-matrix-"))
        self.retries = retries
        self._fetch = fetch
        # (kernel, arch) keys whose in-guest tests this run selected: some process boots them, and
        # the offline checks wait for their facts instead of booting them a second time.
        self.guest_planned = guest_planned
        self.keep_dir = keep_dir  # where each boot's directory is copied before it is removed
        self.own_loader = own_loader  # the loader of every object whose sidecar names none
        # Set when this process also reports the offline checks (no xdist): they are then computed
        # while the first VM boots, when their facts are all cached.
        self.overlap_offline = False
        self._builds: Memo[KernelBuild] = Memo()
        self._objects: dict[str, ArchObjects] = {}
        self._facts: Memo[KernelFacts] = Memo()
        self._sidecars: dict[str, Sidecar] = {}
        self._roots: Memo[Path] = Memo()
        self._samples: Memo[dict[str, Path]] = Memo(BuildError)
        self._guest: dict[str, GuestOutcome] = {}
        self._objects_run: set[str] = set()  # keys whose boot ran the objects, not the facts alone
        self._offline: dict[str, Cells] | None = None
        self._kernel_runs: dict[str, KernelRun] = {}

    # --- kernels -----------------------------------------------------------------------------------

    def fetch(self, spec: KernelSpec) -> KernelBuild:
        """The KernelBuild of ``spec`` (fetched once per process); raises HarnessError."""
        fetch = self._fetch
        if fetch is None:
            from harness.kernels.fetch import fetch_kernel

            fetch = fetch_kernel
        mirror = self.config.mirror
        return self._builds.get(spec.key, lambda: fetch(spec, cache_root=self.cache_root, mirror=mirror))

    def arches(self) -> list[Arch]:
        return list(dict.fromkeys(k.arch for k in self.config.kernels))

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

    # --- programs ----------------------------------------------------------------------------------

    def objects(self, arch: Arch) -> ArchObjects:
        """bpf_progs/ built for ``arch`` (once per process; the build itself is cached on disk)."""
        if arch.name not in self._objects:
            build_dir = self.cache_root / "build"
            self._objects[arch.name] = build_objects(
                self.progs_dir, arch, build_dir, lambda: vmlinux_btf_for_arch(self.config, arch, self.fetch)
            )
        return self._objects[arch.name]

    def arch_probes(self, arch: Arch) -> list[tuple[Probe, ArchObjects]]:
        """Every probe of ``arch``, each with the build that says which checks apply to it."""
        return probes_with_builds(arch, self.arches(), self.objects)

    def sidecar(self, object_name: str) -> Sidecar:
        """The sidecar of an object (parsed once); raises ConfigError for a malformed one."""
        if object_name not in self._sidecars:
            self._sidecars[object_name] = load_sidecar(self.progs_dir, object_name)
        return self._sidecars[object_name]

    def loader_for(self, object_name: str) -> OwnLoader | None:
        """The own loader of an object: its sidecar's, else --own-loader's; None to load it with libbpf."""
        own = self.sidecar(object_name).own_loader
        if own is None and self.own_loader is not None:
            own = self.own_loader.for_object(object_name)
        return own

    def check_inputs(self) -> None:
        """Refuse bpf_progs/ before a boot: raises ConfigError when it holds no program, or a sidecar is
        malformed, has no object beside it or names a program its object has on no arch of the run."""
        self._sidecars.update(checked_sidecars(self.progs_dir, self.arches(), self.objects))

    def guest_root(self, arch: Arch) -> Path:
        """The root filesystem guests of ``arch`` boot on: the host's own for its arch, else one built
        from Debian packages (raises HarnessError when it cannot be built; tried once per process)."""
        if arch == host_arch():
            return Path("/")
        from harness.kernels.rootfs import fetch_rootfs

        config = self.config
        return self._roots.get(
            arch.name, lambda: fetch_rootfs(arch, config.rootfs, self.cache_root, config.mirror)
        )

    def user_samples(self, arch: Arch) -> dict[str, Path]:
        """bpf_progs/user/ built for ``arch`` (once per process); raises BuildError."""
        return self._samples.get(
            arch.name, lambda: build_user_samples(self.progs_dir, arch, self.cache_root)
        )

    def input_error(self, arch: Arch, probe: Probe) -> str:
        """Why the harness could not produce what ``probe`` needs on ``arch`` (empty when it could)."""
        return cells.input_error(arch, probe, self.objects(arch), self.user_samples, self.guest_root)

    # --- facts -------------------------------------------------------------------------------------

    def facts_dir(self, spec: KernelSpec) -> Path | None:
        """The cached facts of ``spec``'s kernel when complete, else None."""
        try:
            return complete_facts_dir(self.fetch(spec))
        except HarnessError:
            return None

    def facts(self, spec: KernelSpec) -> KernelFacts:
        """The KernelFacts of ``spec`` from the cache, booting for them when missing.

        Raises HarnessError (the fetch or the boot failed).
        """
        return self._facts.get(spec.key, lambda: self._load_facts(spec))

    def _load_facts(self, spec: KernelSpec) -> KernelFacts:
        from harness.kernels.facts import load_facts

        directory = self.facts_dir(spec)
        if directory is None and spec.key in self.guest_planned and spec.key not in self._guest:
            wait = boot_wait(self.config.kernels, self.accelerator, self.retries, self.guest_planned)
            self.markers.wait(spec.key, wait)
            directory = self.facts_dir(spec)
            if directory is None:
                raise no_facts_error(spec.key, self.markers.read(spec.key) or "boot failed")
        if directory is None:
            outcome = self.guest(spec, with_objects=False)
            directory = self.facts_dir(spec)
            if directory is None:
                raise no_facts_error(spec.key, outcome.error or "the guest wrote none")
        return load_facts(directory)

    # --- the guest ---------------------------------------------------------------------------------

    @property
    def markers(self) -> BootMarkers:
        return BootMarkers(self.work_dir)

    def guest(self, spec: KernelSpec, with_objects: bool = True) -> GuestOutcome:
        """Boot ``spec`` once and run the agent: facts when not cached, and every object of its arch."""
        cached = self._guest.get(spec.key)
        # A boot for the facts alone loaded no objects: it answers no in-guest check, unless it failed.
        if cached is not None and (not with_objects or cached.error or spec.key in self._objects_run):
            return cached
        objects = list(self.objects(spec.arch).objects) if with_objects else []
        with self.markers.booting(spec.key):
            outcome = self._boot(spec, objects)
            if with_objects:
                self._objects_run.add(spec.key)
            self.markers.record(spec.key, outcome.error or "ok")
        self._guest[spec.key] = outcome
        self._kernel_runs[spec.key] = outcome.kernel
        return outcome

    def _boot(self, spec: KernelSpec, objects: Sequence[BPFObject]) -> GuestOutcome:
        base = self.kernel_run(spec)
        try:
            build = self.fetch(spec)
        except HarnessError as exc:
            return failed(base, f"kernel not available: {exc}")
        want_facts = complete_facts_dir(build) is None
        if not want_facts and not objects:
            return GuestOutcome(base)
        root: Path | None = None
        if spec.arch != host_arch():
            try:
                root = self.guest_root(spec.arch)
            except HarnessError as exc:
                return failed(base, f"no {spec.arch.name} root filesystem: {exc}")
        config_text = Path(build.config).read_text(errors="replace") if build.config else None
        probes = [p for o in objects for p in o.probes]
        accel = accelerator_for(spec.arch, self.accelerator)
        loaders = {o.name: x for o in objects if (x := self.loader_for(o.name)) is not None}
        job = BootJob(spec, build, base, objects, probes, want_facts, root, accel, config_text, loaders)
        steps = BootSteps(self._run_vm, self._prepare_share, self.work_dir, self.retries, self.keep_dir)
        return boot(job, steps)

    def _prepare_share(self, share: Path, job: BootJob) -> None:
        try:
            samples = self.user_samples(job.spec.arch)
        except BuildError:
            samples = {}  # the probes on them are ERROR cells (input_error)
        prepare_share(
            share, job.objects, job.want_facts, self.sidecar, self.progs_dir, samples,
            job.loaders, job.spec.arch,
        )

    def _run_vm(self, req: VMRequest) -> VMResult:
        """Run one VM; meanwhile compute the offline checks, when this process reports them and every
        fact they need is cached (no boot of their own: one VM at a time)."""
        if (
            not self.overlap_offline
            or self._offline is not None
            or not facts_cached(self.config, self.arches(), self.facts_dir)
        ):
            return self.runner.run(req)
        result, self._offline = run_vm_meanwhile(self.runner, req, self.compute_offline)
        return result

    # --- results -----------------------------------------------------------------------------------

    def guest_result(self, spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
        """The result of an in-guest ``check`` of ``probe`` on ``spec``, booting on first use."""
        if why := self.input_error(spec.arch, probe):
            return cells.error_cell(spec, probe, check, why)
        if probe.kind == UNKNOWN_KIND:
            return cells.unchecked(spec, probe, check)
        if why := self.objects(spec.arch).relocation_error(probe, check):
            return cells.error_cell(spec, probe, check, why)
        return cells.guest_cell(spec, probe, check, self.guest(spec))

    def offline_result(self, spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
        """The result of an offline ``check`` of ``probe`` on ``spec`` (facts from the cache)."""
        if why := self.input_error(spec.arch, probe):
            return cells.error_cell(spec, probe, check, why)
        if probe.kind == UNKNOWN_KIND:
            return cells.unchecked(spec, probe, check)
        return cells.found_or_skip(spec, probe, check, self.offline(spec))

    def offline(self, spec: KernelSpec) -> Cells:
        if self._offline is None:
            self._offline = self.compute_offline()
        return self._offline.get(spec.key, {})

    def compute_offline(self) -> dict[str, Cells]:
        """The offline results of every kernel of the run, by (kernel, arch) key (boots for missing facts)."""
        known, baselines = gather_facts(self.config, self.arches(), self.facts, self.objects)
        user = UserSpace(self.progs_dir, self.cache_root, self.guest_root, self.input_error)
        return compute_offline(self.config.kernels, self.arches(), self.objects, known, baselines, user)



def run_vm_meanwhile(runner: Runner, req: VMRequest, meanwhile: Callable[[], T]) -> tuple[VMResult, T | None]:
    """Run one VM in a thread while ``meanwhile`` runs in this one: the VM's result and what
    ``meanwhile`` gave (None when it raised: the offline tests compute it again, and report it)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="vm")
    join = True
    try:
        vm = pool.submit(runner.run, req)
        try:
            found: T | None = meanwhile()
        except Exception:
            found = None
        return vm.result(), found
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C or SIGTERM: the guest is not waited for. Its VM is stopped first, which ends the
        # runner's wait in the pool's thread; joining that thread before would wait for the guest
        # (up to its timeout).
        stop_all_vms()
        join = False
        raise
    finally:
        pool.shutdown(wait=join, cancel_futures=not join)


def checked_sidecars(
    progs_dir: Path, arches: Sequence[Arch], objects: Callable[[Arch], ArchObjects]
) -> dict[str, Sidecar]:
    """The sidecars of ``progs_dir``, each checked against the programs its object has on any arch;
    raises ConfigError (see MatrixRun.check_inputs)."""
    programs: dict[str, set[str] | None] = {s.name: None for s in find_sources(progs_dir)}
    for arch in arches:
        for obj in objects(arch).objects:
            names = {p.program for p in obj.probes} | {prog for prog, _ in obj.unknown}
            programs[obj.name] = (programs.get(obj.name) or set()) | names
    return load_sidecars(progs_dir, programs)
