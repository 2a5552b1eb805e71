"""One run of the matrix: each step (fetch, build, boot, facts, offline checks) done once and remembered."""

from __future__ import annotations

import dataclasses
import functools
import queue
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from harness.checks import across
from harness.checks.features import with_load_result
from harness.checks.symbols import check_symbol
from harness.checks.uprobe import build_user_samples
from harness.errors import BuildError, ConfigError, HarnessError
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import Arch, KernelsConfig, KernelSpec, host_arch
from harness.kernels.facts import KernelFacts
from harness.kernels.fetch import KernelBuild
from harness.kernels.version import version_key
from harness.programs.build import find_sources
from harness.programs.inventory import BPFObject
from harness.programs.loader import plan_loader
from harness.programs.own_loader import OwnLoader
from harness.programs.sidecar import Sidecar, load_sidecar, load_sidecars
from harness.report.results import Alternatives, CellResult, Check, KernelRun, Outcome, Probe
from harness.run import cells
from harness.run.boot import GUEST_CHECKS, BootJob, BootSteps, GuestOutcome, boot, failed
from harness.run.coordination import BootMarkers, boot_wait
from harness.run.facts import complete_facts_dir, no_facts_error
from harness.run.memo import Memo
from harness.run.offline import Cells, UserSpace, compute_offline, facts_cached, gather_facts, layout_cell
from harness.run.programs import (
    UNKNOWN_KIND,
    ArchObjects,
    build_objects,
    probes_with_builds,
    vmlinux_btf_for_arch,
    with_loader_targets,
)
from harness.run.reuse import RecordStore
from harness.run.share import prepare_share
from harness.vm.runner import Accelerator, Runner, VMRequest, VMResult, accelerator_for, stop_all_vms

T = TypeVar("T")
PREFETCH_THREADS = 3  # downloads at once: the network, not the CPU, is what they wait for
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
        reuse: bool = True,
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
        # Whether a boot reuses the guest records of an identical earlier boot (run/reuse.py).
        self.reuse = reuse
        # Set when this process also reports the offline checks (no xdist): they are then computed
        # while the first VM boots, when their facts are all cached.
        self.overlap_offline = False
        # Set in a pytest-xdist worker that shares the run directory: the planned boots are another
        # worker's, whose outcomes it waits for instead of booting them again.
        self.boots_elsewhere = False
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

    def prefetch(self, threads: int = PREFETCH_THREADS) -> list[threading.Thread]:
        """Start fetching every kernel of the run and building each guest root, in the background.

        What the run needs first comes first: the newest kernel of each arch (the objects are built
        against its BTF before anything boots), then the kernels in kernels.yaml order (the order the
        workers boot them), each guest root beside its arch's first kernel. A worker that needs one
        meanwhile waits for it on the cache entry's lock instead of downloading it again, so downloads
        and extraction overlap each other and the boots. Failures are left to the run's own fetch,
        which reports them where they matter. The threads are daemons: an exit (a usage error, Ctrl-C)
        never waits for a download, whose temp directory the next fetch of that entry clears.
        """
        specs = list(self.config.kernels)
        newest: dict[str, KernelSpec] = {}
        for spec in sorted(self.config.universe or specs, key=lambda s: version_key(s.id), reverse=True):
            newest.setdefault(spec.arch.name, spec)
        order = list(dict.fromkeys([*newest.values(), *specs]))
        todo: queue.Queue[Callable[[], None]] = queue.Queue()
        roots: set[str] = set()
        for spec in order:
            todo.put(functools.partial(self._prefetch_one, spec))
            if spec in specs and spec.guest.describe() + spec.arch.name not in roots:
                roots.add(spec.guest.describe() + spec.arch.name)
                todo.put(functools.partial(self._prefetch_root, spec))

        def work() -> None:
            while True:
                try:
                    todo.get_nowait()()
                except queue.Empty:
                    return

        started = [threading.Thread(target=work, name="prefetch", daemon=True) for _ in range(threads)]
        for thread in started:
            thread.start()
        return started

    def _prefetch_one(self, spec: KernelSpec) -> None:
        # Into the cache only, not this process's memo: a failure here is not remembered for the run.
        fetch = self._fetch
        if fetch is None:
            from harness.kernels.fetch import fetch_kernel

            fetch = fetch_kernel
        try:
            fetch(spec, cache_root=self.cache_root, mirror=self.config.mirror)
        except Exception:  # reported by the run's own fetch of it
            pass

    def _prefetch_root(self, spec: KernelSpec) -> None:
        if spec.guest.host:
            return
        from harness.kernels.rootfs import fetch_rootfs

        try:
            fetch_rootfs(spec.arch, spec.guest, self.cache_root, self.config.mirror)
        except Exception:  # reported by the boot that needs it
            pass

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
            built = build_objects(
                self.progs_dir, arch, build_dir, lambda: vmlinux_btf_for_arch(self.config, arch, self.fetch)
            )
            self._objects[arch.name] = with_loader_targets(
                built, lambda name: self.sidecar(name).loader.attach_targets
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

    def guest_root(self, spec: KernelSpec) -> Path:
        """The root filesystem ``spec``'s guest boots on: one built from its guest suite for its arch
        (tried once per process), or the host's own "/" when kernels.yaml asks for ``root: host``.

        Raises HarnessError when it cannot be built, ConfigError for the host's root on another arch.
        """
        guest, arch = spec.guest, spec.arch
        if guest.host:
            if arch != host_arch():
                raise ConfigError(
                    f"{spec.label}: guest root 'host' is the host's own {host_arch().name} root: "
                    f"{arch.name} guests need a built one (remove root: host)"
                )
            return Path("/")
        from harness.kernels.rootfs import fetch_rootfs

        mirror = self.config.mirror
        key = f"{arch.name}/{guest.suite}/{','.join(guest.packages)}"
        return self._roots.get(key, lambda: fetch_rootfs(arch, guest, self.cache_root, mirror))

    def user_samples(self, arch: Arch) -> dict[str, Path]:
        """bpf_progs/user/ built for ``arch`` (once per process); raises BuildError."""
        return self._samples.get(
            arch.name, lambda: build_user_samples(self.progs_dir, arch, self.cache_root)
        )

    def input_error(self, spec: KernelSpec, probe: Probe) -> str:
        """Why the harness could not produce what ``probe`` needs on ``spec`` (empty when it could)."""
        return cells.input_error(spec, probe, self.objects(spec.arch), self.user_samples, self.guest_root)

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
                try:
                    self.markers.store_outcome(spec.key, outcome.serialize())
                except OSError:
                    pass  # the FIRE tests of other processes then boot this kernel again
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
        try:
            found = self.guest_root(spec)
        except HarnessError as exc:
            return failed(base, f"no {spec.arch.name} root filesystem: {exc}")
        root = None if found == Path("/") else found
        config_text = Path(build.config).read_text(errors="replace") if build.config else None
        probes = [p for o in objects for p in o.probes]
        accel = accelerator_for(spec.arch, self.accelerator)
        loaders = {o.name: x for o in objects if (x := self.loader_for(o.name)) is not None}
        job = BootJob(spec, build, base, objects, probes, want_facts, root, accel, config_text, loaders)
        steps = BootSteps(
            self._run_vm, self._prepare_share, self.work_dir, self.retries, self.keep_dir,
            RecordStore(self.cache_root, lookups=self.reuse),
        )
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
        """The result of an in-guest ``check`` of ``probe`` on ``spec``, booting on first use, judged
        with what the run knows beyond the cell (checks/across.py): FIRE against every kernel of the
        arch, LOAD and ATTACH against this kernel's facts."""
        if check is Check.FIRE:
            here = self._guest_result(spec, probe, check, self.guest_elsewhere)
            if not across.never_fired(here):
                return here  # the other kernels are looked at (booted) only when this one never fired
            same_arch = [s for s in self.config.kernels if s.arch == spec.arch]
            peers = [
                here if s == spec else self._guest_result(s, probe, check, self.guest_elsewhere)
                for s in same_arch
            ]
            fired = [s for s, r in zip(same_arch, peers) if across.fired(r)]
            hint = across.fire_hint(
                probe.target, probe.kind, self._known_facts(spec),
                [f for f in map(self._known_facts, fired) if f is not None],
            )
            return across.judge_fire(here, peers, self._triggered(probe), hint)
        # A member's checks are judged in the across group too: the boot is another worker's.
        outcome = self.guest_elsewhere if self.is_alternative(probe) else self.guest
        result = self._guest_result(spec, probe, check, outcome)
        if check in across.DEFERRED_CHECKS and result.outcome is Outcome.FAIL:
            facts = self._known_facts(spec)
            if facts is not None:
                result = across.defer_to_symbol(result, check_symbol(probe, spec.id, spec.arch, facts))
        if check is Check.CORE and result.outcome is Outcome.FAIL:
            facts = self._known_facts(spec)
            if facts is not None:
                # This kernel's facts alone (never the whole offline run: other workers' boots).
                built = self.objects(spec.arch)
                layout = layout_cell(probe, spec, facts, built, self.config.baseline_id, None)
                result = across.core_guarded(result, layout)
        return result

    def _guest_result(
        self,
        spec: KernelSpec,
        probe: Probe,
        check: Check,
        outcome_of: Callable[[KernelSpec], GuestOutcome],
    ) -> CellResult:
        """The cell of an in-guest check; ``outcome_of`` gives the boot's outcome (this process's or
        another's), asked only when the cell needs it."""
        built = self.objects(spec.arch)
        if probe.object in built.absent:
            return cells.not_built(spec, probe, check)
        if why := self.input_error(spec, probe):
            return cells.error_cell(spec, probe, check, why)
        if probe.kind == UNKNOWN_KIND:
            return cells.unchecked(spec, probe, check)
        if probe.program in self.sidecar(probe.object).loader.autoload_off:
            return cells.left_out(spec, probe, check)
        if why := built.relocation_error(probe, check):
            return cells.error_cell(spec, probe, check, why)
        outcome = outcome_of(spec)
        cell = cells.guest_cell(spec, probe, check, outcome)
        digest = built.digests.get(probe.object)
        if check == Check.LOAD and digest and not outcome.error:
            # Which build this arch loaded: per-arch objects differ, and a cell must say whose it is.
            cell = dataclasses.replace(cell, details={**cell.details, "object_sha256": digest})
        return cell


    def guest_elsewhere(self, spec: KernelSpec) -> GuestOutcome:
        """The outcome of ``spec``'s boot with its objects: this process's, or, in a pytest-xdist
        worker, the one the worker that booted it left in the run directory (waited for)."""
        cached = self._guest.get(spec.key)
        if cached is not None and (cached.error or spec.key in self._objects_run):
            return cached
        if not self.boots_elsewhere or spec.key not in self.guest_planned:
            return self.guest(spec)
        wait = boot_wait(self.config.kernels, self.accelerator, self.retries, self.guest_planned)
        marker = self.markers.wait(spec.key, wait)
        document = self.markers.read_outcome(spec.key)
        if document is not None:
            try:
                return GuestOutcome.deserialize(document)
            except (KeyError, TypeError, ValueError):
                pass
        return failed(self.kernel_run(spec), f"no in-guest results from the boot of {spec.key}: "
                      f"{marker or 'it did not finish in time'}")

    def _known_facts(self, spec: KernelSpec) -> KernelFacts | None:
        """The facts of ``spec`` when cached (never a boot for them), else None."""
        if self.facts_dir(spec) is None:
            return None
        try:
            return self.facts(spec)
        except HarnessError:
            return None

    def _triggered(self, probe: Probe) -> bool:
        """Whether the sidecar gives ``probe`` a trigger of its own (then it should fire)."""
        try:
            return bool(self.sidecar(probe.object).triggers_for([probe]))
        except HarnessError:
            return False

    def alternatives(self) -> list[Alternatives]:
        """The alternatives groups of the sidecars read so far (all of them after check_inputs)."""
        return [
            Alternatives(name, group, members)
            for name, side in sorted(self._sidecars.items())
            for group, members in side.alternatives.items()
        ]

    def is_alternative(self, probe: Probe) -> bool:
        """Whether ``probe`` is a member of an alternatives group of its sidecar."""
        try:
            return self.sidecar(probe.object).group_of(probe.program) is not None
        except HarnessError:
            return False

    def cell_results(self, spec: KernelSpec, probe: Probe) -> list[CellResult]:
        """Every check that applies to ``probe`` on ``spec`` (before expectations)."""
        built = next((b for p, b in self.arch_probes(spec.arch) if p == probe), None)
        found = []
        for check in Check:
            if built is None or not built.applies(probe, check):
                continue
            if check in GUEST_CHECKS:
                found.append(self.guest_result(spec, probe, check))
            else:
                found.append(self.offline_result(spec, probe, check))
        return found

    def alternatives_result(self, spec: KernelSpec, probe: Probe, result: CellResult) -> CellResult:
        """A FAIL of a member of an alternatives group where another member passes every check:
        XFAIL, the group named as what accepts it (a loader picks the member that works). In a run
        that boots nothing for ``spec`` (an offline-only selection) the member keeps its own verdict."""
        if result.outcome is not Outcome.FAIL:
            return result
        try:
            found = self.sidecar(probe.object).group_of(probe.program)
        except HarnessError:
            return result
        if found is None:
            return result
        if spec.key not in self.guest_planned and spec.key not in self._guest:
            return result  # an offline-only selection: the group's in-guest results need a boot it has not
        group, members = found
        probes = {p.program: p for p, _ in self.arch_probes(spec.arch) if p.object == probe.object}
        others = {
            m: self.cell_results(spec, probes[m]) for m in members if m != probe.program and m in probes
        }
        verdict = across.judge_group(probe.object, group, spec.id, spec.arch.name, others)
        if verdict.outcome is not Outcome.PASS:
            return result
        return result.with_outcome(Outcome.XFAIL, f"alternatives `{group}`: {verdict.reason} here")

    def offline_result(self, spec: KernelSpec, probe: Probe, check: Check) -> CellResult:
        """The result of an offline ``check`` of ``probe`` on ``spec`` (facts from the cache); a SYMBOL
        is judged against the other kernels of the run (a target absent on every one), a FEATURES
        prediction against this process's own boot of the kernel."""
        if probe.object in self.objects(spec.arch).absent:
            return cells.not_built(spec, probe, check)
        if why := self.input_error(spec, probe):
            return cells.error_cell(spec, probe, check, why)
        if probe.kind == UNKNOWN_KIND:
            return cells.unchecked(spec, probe, check)
        if probe.program in self.sidecar(probe.object).loader.autoload_off:
            return cells.left_out(spec, probe, check)
        result = cells.found_or_skip(spec, probe, check, self.offline(spec))
        if check is Check.SYMBOL and across.absent(result):
            peers = [cells.found_or_skip(s, probe, check, self.offline(s)) for s in self.config.kernels]
            result = across.judge_absent(result, peers)
        booted = self._guest.get(spec.key) if spec.key in self._objects_run else None
        if check == Check.FEATURES and booted is not None:
            # This process booted the kernel: its load result is the truth the prediction answers to.
            load = booted.results.get((probe, Check.LOAD))
            if load is not None:
                return with_load_result(result, load)
        return result

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
    sidecars = load_sidecars(progs_dir, programs)
    for arch in arches:
        for obj in objects(arch).objects:
            if obj.name in sidecars:
                # Its maps and .rodata variables exist, and its values fit them (ConfigError before a boot).
                plan_loader(sidecars[obj.name].loader, obj.path, str(sidecars[obj.name].path))
    return sidecars
