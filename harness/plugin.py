"""The pytest plugin: options, test generation over probe × kernel × arch × check, and the hooks."""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Collection
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import KernelsConfig, KernelSpec, load_kernels_yaml
from harness.kernels.fetch import verify_local_images
from harness.programs.own_loader import resolve_cli_loader
from harness.report.expectations import apply_expectations
from harness.report.reporter import PROP_KERNEL, PROP_RESULTS, MatrixReporter, output_error, output_paths
from harness.report.results import (
    CHECK_ORDER,
    CellResult,
    Check,
    Outcome,
    Probe,
)
from harness.run.boot import GUEST_CHECKS
from harness.run.coordination import register_worker, worker_pids
from harness.run.coordinator import MatrixRun
from harness.run.offline import OFFLINE_CHECKS
from harness.vm.runner import Runner, VngRunner, probe_accelerator, stop_all_vms

RUN_KEY = pytest.StashKey["MatrixRun"]()
REPORTER_KEY = pytest.StashKey["MatrixReporter"]()
OWNED_DIR_KEY = pytest.StashKey[Path]()
COORDINATED_KEY = pytest.StashKey[bool]()
REGROUPED_DIST_MODES = ("load", "loadscope", "loadfile", "worksteal")
OFFLINE_GROUP = "offline"
# The FIRE tests: judged against every kernel's boot (checks/across.py), they run after all of them.
ACROSS_GROUP = "across"
# Testing hook: "module:factory" naming a callable that returns the Runner to boot with instead of vng.
RUNNER_ENV = "BPF_MATRIX_RUNNER"
# Memory a worker needs beyond its guest: the harness, qemu's own overhead, page cache for 9p.
WORKER_OVERHEAD_MB = 768


class InfrastructureError(HarnessError):
    """Raised in a cell's setup so that pytest reports ERROR, never a failure of the probe."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bpf-matrix", "eBPF kernel compatibility matrix")
    group.addoption("--kernels", metavar="FILE", help="kernels file (default: kernels.yaml at the rootdir)")
    group.addoption(
        "--kernel", action="append", default=[], metavar="ID",
        help="run only this kernel id or id-arch key (repeatable; a shard of the matrix)",
    )
    group.addoption("--bpf-progs", metavar="DIR", help="directory of *.bpf.c and *.bpf.o files")
    group.addoption(
        "--matrix-json", metavar="PATH", default="results/matrix.json",
        help="where to write the results document (default: results/matrix.json)",
    )
    group.addoption("--matrix-markdown", metavar="PATH", help="also write the matrix as Markdown")
    group.addoption("--matrix-html", metavar="PATH", help="also write a single-file HTML report")
    group.addoption(
        "--no-expectations", action="store_true",
        help="ignore the expectations of sidecar files: show the raw matrix",
    )
    group.addoption(
        "--vm-retries", type=int, default=1, metavar="N",
        help="boot again this many times when a guest is lost (default 1); failures are never retried",
    )
    group.addoption(
        "--keep-guest-files", metavar="DIR",
        help="keep each boot's shared directory under DIR: plan, agent records (with per-phase timings) "
        "and console log",
    )
    group.addoption(
        "--fresh-boots", action="store_true",
        help="boot every (kernel, arch) for every object: reuse no guest record of an earlier run with the "
        "same kernel, guest root, agent, object and sidecar",
    )
    group.addoption(
        "--own-loader", metavar="COMMAND",
        help="load every object whose sidecar names no own_loader with this command in the guest instead "
        "of libbpf ({object} is the object's name); its load, attach and fire cells say what it did",
    )
    group.addoption(
        "--own-loader-binaries", metavar="DIR",
        help="the loader's binaries, shared read-only with the guest as its working directory "
        "(DIR/<arch>/ when there is one)",
    )
    group.addoption("--own-loader-time-limit", type=float, metavar="SECONDS",
                    help="how long the loader may take to be ready before it is stopped (default 20)")
    group.addoption("--own-loader-ready", metavar="REGEX",
                    help="the loader is ready (attached) once its output matches this")
    group.addoption(
        "--cache-dir-kernels", metavar="DIR",
        help="cache of kernels, facts and builds (default: $BPF_MATRIX_CACHE or ~/.cache/bpf-kernel-matrix)",
    )


def _rootdir(config: pytest.Config) -> Path:
    return Path(str(config.rootpath))


def _load_config(config: pytest.Config) -> KernelsConfig:
    raw = config.getoption("--kernels")
    path = Path(raw) if raw else _rootdir(config) / "kernels.yaml"
    kernels = load_kernels_yaml(path)
    selected = config.getoption("--kernel")
    return kernels.select(selected) if selected else kernels


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _make_runner() -> Runner:
    """VngRunner, or the fake that $BPF_MATRIX_RUNNER names (the harness's own tests use it)."""
    named = os.environ.get(RUNNER_ENV, "")
    if not named:
        return VngRunner()
    module, _, factory = named.partition(":")
    try:
        runner: Runner = getattr(importlib.import_module(module), factory)()
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{RUNNER_ENV}={named}: not a module:factory of a runner ({exc})") from None
    return runner


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C so that every running VM is stopped by its runner's cleanup.
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_interrupt_once(signum: int, frame: FrameType | None) -> None:
    # A worker hears Ctrl-C from the terminal and SIGTERM from its controller: the second signal
    # must not break off the cleanup the first one started (stopping the VM, removing the share).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


class Interrupts:
    """Stops the run's VMs on an interrupt, and on the controller signals its workers to stop theirs
    (pytest-xdist kills a worker that is slow to exit, which would leave its VM running)."""

    def __init__(self, work_dir: Path, controller: bool) -> None:
        self.work_dir = work_dir
        self.controller = controller

    def stop(self) -> None:
        if self.controller:
            for pid in worker_pids(self.work_dir):
                if _parent_of(pid) == os.getpid():
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except (ProcessLookupError, PermissionError):
                        pass
        stop_all_vms()

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop()
        _raise_interrupt(signum, frame)

    def pytest_keyboard_interrupt(self) -> None:
        self.stop()


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _work_dir(config: pytest.Config) -> tuple[Path, bool]:
    """The run directory of this process, and whether it is shared with the run's other processes."""
    if _is_worker(config):
        work_dir = Path(config.workerinput.get("bpf_matrix_dir", "/nonexistent"))  # type: ignore[attr-defined]
        if work_dir.is_dir():
            return work_dir, True
        # A worker on another host (pytest-xdist --tx ssh=...): it cannot see the controller's
        # boot markers, so it boots for whatever facts it lacks instead of waiting for them.
    work_dir = Path(tempfile.mkdtemp(prefix="bpf-matrix-run-"))
    config.stash[OWNED_DIR_KEY] = work_dir
    return work_dir, not _is_worker(config)


def _check_outputs(config: pytest.Config) -> None:
    """Refuse report paths that cannot be written before anything is booted; raises UsageError."""
    for option, path in output_paths(config):
        if why := output_error(path):
            raise pytest.UsageError(f"{option} {path}: {why}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bpf_check(name): the matrix check a test asserts")
    if not _wants_matrix(config):
        return
    try:
        kernels = _load_config(config)
        if not _is_worker(config):
            # Before anything boots: a local image that is not a kernel would run a VM to its timeout.
            verify_local_images(kernels, Path(c) if (c := config.getoption("--cache-dir-kernels")) else None)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not _is_worker(config):
        _check_outputs(config)
    try:
        own_loader = resolve_cli_loader(
            config.getoption("--own-loader"), config.getoption("--own-loader-binaries"),
            config.getoption("--own-loader-time-limit"), config.getoption("--own-loader-ready"),
        )
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    progs = config.getoption("--bpf-progs")
    progs_dir = Path(progs) if progs else _rootdir(config) / "bpf_progs"
    runner = _make_runner()
    work_dir, coordinated = _work_dir(config)
    cache = config.getoption("--cache-dir-kernels")
    run = MatrixRun(
        kernels,
        progs_dir,
        runner,
        probe_accelerator(),
        cache_root=resolve_cache_root(explicit=cache),
        work_dir=work_dir,
        retries=max(0, config.getoption("--vm-retries")),
        keep_dir=Path(keep) if (keep := config.getoption("--keep-guest-files")) else None,
        own_loader=own_loader,
        reuse=not config.getoption("--fresh-boots"),
    )
    config.stash[RUN_KEY] = run
    config.stash[COORDINATED_KEY] = coordinated
    _start(config, run, kernels)


def _start(config: pytest.Config, run: MatrixRun, kernels: KernelsConfig) -> None:
    """Check bpf_progs/ and its sidecars (once, on the controlling process), register the reporter and
    the interrupt handling; raises UsageError."""
    interrupts = Interrupts(run.work_dir, controller=not _is_worker(config))
    if _is_worker(config):
        if config.stash.get(OWNED_DIR_KEY, None) is None:
            register_worker(run.work_dir, os.getpid())
        signal.signal(signal.SIGINT, _raise_interrupt_once)
        signal.signal(signal.SIGTERM, _raise_interrupt_once)
    else:
        # Downloads overlap the build of the objects and the boots (daemon threads, never waited for).
        run.prefetch()
        try:
            run.check_inputs()
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from None
        reporter = MatrixReporter(
            config, [(k.id, k.arch.name) for k in kernels.kernels], kernels.baseline_id or None,
            run.alternatives(),
        )
        config.stash[REPORTER_KEY] = reporter
        config.pluginmanager.register(reporter, "bpf-matrix-reporter")
        signal.signal(signal.SIGTERM, interrupts.on_sigterm)
    config.pluginmanager.register(interrupts, "bpf-matrix-interrupts")
    atexit.register(stop_all_vms)


def _wants_matrix(config: pytest.Config) -> bool:
    """Only runs that collect matrix/ tests pay for the run's setup (the harness's own tests do not)."""
    args = [str(a) for a in config.args] or [str(config.rootpath)]
    return any("matrix" in Path(a.split("::", 1)[0]).parts or a.startswith("matrix") for a in args) or bool(
        config.getoption("--kernels") or config.getoption("--kernel")
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_all_vms()
    owned = config.stash.get(OWNED_DIR_KEY, None)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)


def judged_across(run: MatrixRun, probe: Probe, check: Check) -> bool:
    """Whether a test's verdict needs other cells of the run: FIRE (fire by difference) and every
    check of an alternatives group's member (its group passes when another member does)."""
    return check is Check.FIRE or run.is_alternative(probe)


def across_ids(run: MatrixRun) -> frozenset[str]:
    """The parameter ids of the tests of alternatives members: in the across group, like FIRE."""
    found: set[str] = set()
    for spec in run.config.kernels:
        try:
            probes = [p for p, _ in run.arch_probes(spec.arch)]
        except HarnessError:
            continue
        found.update(i for p, i in zip(probes, _test_ids(run, spec, probes)) if run.is_alternative(p))
    return frozenset(found)


def matrix_group(nodeid: str, keys: list[str], across: Collection[str] = frozenset()) -> str | None:
    """The group of a matrix test from its node id (pure): its (kernel, arch) key for in-guest checks,
    "across" for FIRE and for the tests whose parameter id is in ``across`` (alternatives members),
    "offline" for the others, None for a test that is not a matrix cell.

    A FIRE verdict needs the boots of every kernel of its arch (fire by difference), a member's
    verdict every check of the other members: their tests are one group, handed out after every
    (kernel, arch) group like the offline one, so that each boot they wait for has started or is
    queued ahead of them on another worker, never behind them.
    """
    name, _, rest = nodeid.rpartition("::")[2].partition("[")
    check = name.removeprefix("test_")
    if not rest.endswith("]") or check not in {c.value for c in Check}:
        return None
    if Check(check) is Check.FIRE or rest[:-1] in across:
        return ACROSS_GROUP
    if Check(check) not in GUEST_CHECKS:
        return OFFLINE_GROUP
    param = rest[:-1]
    # The longest key that ends the id: "6.1-x86_64" must not match a kernel called "1-x86_64".
    found = [k for k in keys if param.endswith(f"-{k}")]
    return max(found, key=len) if found else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Keep each (kernel, arch)'s in-guest tests on one worker, so that it boots once.

    pytest-xdist's loadgroup does this from a "@group" suffix of node ids, which its workers can no
    longer add under pytest 9 (node ids became immutable); the scheduler groups by the ids instead.
    """
    run = config.stash.get(RUN_KEY, None)
    if run is None or config.getvalue("dist") not in REGROUPED_DIST_MODES:
        return None
    from xdist.scheduler import LoadScopeScheduling

    # In collection order (kernels.yaml order, the offline group last), not biggest group first: the
    # offline checks wait for facts that the (kernel, arch) groups collect, so handed out first to
    # the only worker they would wait for boots that worker has yet to do.
    config.option.loadscopereorder = False
    keys = [k.key for k in run.config.kernels]
    members = across_ids(run)

    class MatrixScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return matrix_group(nodeid, keys, members) or nodeid

    return MatrixScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Hand every pytest-xdist worker the run's shared directory (boot markers, per-boot shares)."""
    owned = node.config.stash.get(OWNED_DIR_KEY, None)
    if owned is not None:
        node.workerinput["bpf_matrix_dir"] = str(owned)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: as many workers as cores, memory and (kernel, arch) entries allow.

    pytest-xdist asks before pytest_configure, so kernels.yaml is read here on its own.
    """
    if not _wants_matrix(config):
        return None
    try:
        kernels = _load_config(config).kernels
    except HarnessError:
        return None  # pytest_configure reports it
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as fh:
            avail_kb = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    guest_mb = max(_megabytes(k.memory) for k in kernels)
    by_memory = max(1, (avail_kb // 1024) // (guest_mb + WORKER_OVERHEAD_MB))
    return max(1, min(cores, by_memory, len(kernels) + 1))


def _megabytes(size: str) -> int:
    size = size.strip().upper()
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}.get(size[-1:], None)
    try:
        return int(float(size[:-1]) * factor) if factor else int(size) // (1024 * 1024)
    except ValueError:
        return 1024


def _test_ids(run: MatrixRun, spec: KernelSpec, probes: list[Probe]) -> list[str]:
    counts: dict[str, int] = {}
    for p in probes:
        counts[p.program] = counts.get(p.program, 0) + 1
    names = [p.program if counts[p.program] == 1 else f"{p.object}.{p.program}" for p in probes]
    return [f"{n}-{spec.id}-{spec.arch.name}" for n in names]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "matrix_cell" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("bpf_check")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: a matrix test needs @pytest.mark.bpf_check")
    check = Check(marker.args[0])
    run = metafunc.config.stash.get(RUN_KEY, None)
    if run is None:
        metafunc.parametrize("matrix_cell", [], indirect=True)
        return
    params = []
    for spec in run.config.kernels:
        try:
            owned = run.arch_probes(spec.arch)
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from None
        probes = [p for p, _ in owned]
        for (probe, built), test_id in zip(owned, _test_ids(run, spec, probes)):
            if not built.applies(probe, check):
                continue
            params.append(
                # The id ends in the (kernel, arch) key: pytest_xdist_make_scheduler groups by it.
                pytest.param((spec, probe, check), id=test_id)
            )
    metafunc.parametrize("matrix_cell", params, indirect=True)


def _cell_param(item: pytest.Item) -> tuple[KernelSpec, Probe, Check] | None:
    """The (kernel, probe, check) a matrix test is parametrized with (None for other tests, and for the
    placeholder pytest makes of an empty parameter set)."""
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("matrix_cell") if callspec is not None else None
    return param if isinstance(param, tuple) else None


def _order(item: pytest.Item) -> tuple[int, int, int]:
    """In-guest tests grouped per (kernel, arch) in kernels.yaml order, then the offline group, then
    the FIRE tests (the across group)."""
    param = _cell_param(item)
    if param is None:
        return (3, 0, 0)
    spec, _probe, check = param
    run: MatrixRun = item.config.stash[RUN_KEY]
    index = run.config.kernels.index(spec)
    if judged_across(run, _probe, check):
        return (2, index, CHECK_ORDER.index(check))
    if check in GUEST_CHECKS:
        return (0, index, GUEST_CHECKS.index(check))
    return (1, index, OFFLINE_CHECKS.index(check) if check in OFFLINE_CHECKS else 9)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash.get(RUN_KEY, None) is None:
        return
    items.sort(key=_order)


def pytest_collection_finish(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is None:
        return
    planned = set()
    offline = False
    for item in session.items:
        param = _cell_param(item)
        # The across group boots nothing of its own accord: a kernel's group does, when it has tests.
        if param is None or judged_across(run, param[1], param[2]):
            continue
        if param[2] in GUEST_CHECKS:
            planned.add(param[0].key)
        else:
            offline = True
    if session.config.stash.get(COORDINATED_KEY, True):
        run.guest_planned = frozenset(planned)
        run.boots_elsewhere = _is_worker(session.config)
    # Outside xdist's workers this process runs every test it boots for (an xdist controller boots
    # none): its offline checks can be computed while a VM boots.
    run.overlap_offline = offline and not _is_worker(session.config)


class Cell:
    """What a matrix test sees: the results of one check of one probe on one kernel and arch."""

    def __init__(self, results: list[CellResult]) -> None:
        self.results = results

    @property
    def outcome(self) -> Outcome:
        return self.results[0].outcome

    def verify(self) -> None:
        """Pass, fail, skip or xfail the test as its result says."""
        # The reason is the message: pytest need not format this frame's source for every cell.
        __tracebackhide__ = True
        for res in self.results:
            where = f"{res.probe.id} {res.kernel}/{res.arch} {res.check.value}"
            if res.outcome == Outcome.FAIL:
                if res.expected:
                    # An expectation spoke about this cell and said something else: name both values.
                    pytest.fail(f"{where}: fail, but expected {res.expected!r}: {res.reason}", pytrace=False)
                pytest.fail(f"{where}: {res.reason}", pytrace=False)
            if res.outcome == Outcome.XPASS:
                pytest.fail(
                    f"{where}: expected {res.expected!r} but it passed: record the fix in the expectations",
                    pytrace=False,
                )
        for res in self.results:
            if res.outcome == Outcome.XFAIL:
                pytest.xfail(f"{res.reason} (expected: {res.expected})")
            if res.outcome == Outcome.SKIP:
                pytest.skip(res.reason or "not applicable")


@pytest.fixture
def matrix_cell(request: pytest.FixtureRequest) -> Cell:
    """The result of the parametrized (kernel, probe, check), computed by the run (one boot per kernel)."""
    spec, probe, check = request.param
    run: MatrixRun = request.config.stash[RUN_KEY]
    if check in GUEST_CHECKS:
        raw = run.guest_result(spec, probe, check)
    else:
        raw = run.offline_result(spec, probe, check)
    result = raw
    if not request.config.getoption("--no-expectations"):
        try:
            expectations = run.sidecar(probe.object).expectations_for(probe.program)
        except HarnessError as exc:
            result = CellResult(probe, spec.id, spec.arch.name, check, Outcome.ERROR, str(exc))
        else:
            result = apply_expectations(raw, expectations, run.kernel_run(spec).version)
        result = run.alternatives_result(spec, probe, result)
    node = request.node
    node.user_properties.append((PROP_RESULTS, json.dumps([result.serialize()])))
    node.user_properties.append((PROP_KERNEL, json.dumps(run.kernel_run(spec).serialize())))
    if result.outcome == Outcome.ERROR:
        tail = result.details.get("console_tail") if result.details else None
        msg = f"{probe.id} {spec.id}/{spec.arch.name} {check.value}: {result.reason}"
        if tail:
            msg += f"\n--- console tail ---\n{tail}"
        raise InfrastructureError(msg)
    return Cell([result])
