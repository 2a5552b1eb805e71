"""The guest ↔ host protocol: the share's file names and the JSON records each side writes (stdlib only).

Shipped into the guest beside the agent (Python 3.9 there: annotations stay strings) and imported on the
host as ``harness.vm.guest.protocol``. The records are TypedDicts: what is always written is required,
what depends on the outcome (an errno, a run count) is optional.
"""

from __future__ import annotations

import json
import os
from typing import TypedDict, Union, cast

# The share (the host's run directory, /mnt in the guest). The host writes the plan, the objects under
# OBJECTS_DIR and the user samples under USER_DIR; the agent writes the rest, DONE_FILE last.
PLAN_FILE = "plan.json"
OBJECTS_FILE = "objects.json"
SCENARIOS_FILE = "scenarios.json"
DONE_FILE = "done.json"
FACTS_DIR = "facts"
OBJECTS_DIR = "objs"
USER_DIR = "user"
LOADERS_DIR = "loaders"  # own loaders' binaries, each directory mounted read-only at LOADERS_DIR/<n>

# The scratch disk the guest gets (a sparse image beside the share): the agent writes only to a disk of
# exactly this size, never to one it did not get from the host.
SCRATCH_DISK_BYTES = 4 << 20

# The facts directory (FACTS_DIR in the share; the kernel's facts cache entry on the host).
UNAME_FILE = "uname.json"
KALLSYMS_FILE = "kallsyms"
FILTER_FUNCTIONS_FILE = "available_filter_functions"
EVENTS_FILE = "available_events"
FORMATS_FILE = "tracepoint_formats.json"
BTF_FILE = "vmlinux.btf"
CONFIG_FILE = "config"
LSM_FILE = "lsm"
# ``bpftool feature probe kernel full -j`` as bpftool printed it, or FEATURES_ERROR_FILE (one line: why
# the probe could not be run) when it could not: the features are then "could not tell".
FEATURES_FILE = "features.json"
FEATURES_ERROR_FILE = "features.error"

# What makes a program fire: "default" (the agent's workload), an argv list, or a shell command.
Trigger = Union[str, list[str]]  # evaluated at run time: no `|` before Python 3.10

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------------
# The plan (host → guest)


class MapSizes(TypedDict, total=False):
    """Sizes a loader gives a map before load (bpf_map__set_*)."""

    max_entries: int
    value_size: int
    key_size: int


class DataPatch(TypedDict):
    """Bytes a loader writes into a data section's initial value (a ``const volatile`` of .rodata)."""

    section: str  # ".rodata": libbpf's internal map is named "<object prefix>.rodata"
    variable: str
    offset: int
    size: int
    hex: str  # the bytes, in the object's byte order


class LoaderPlan(TypedDict, total=False):
    """What the object's own loader would set between bpf_object__open and bpf_object__load."""

    attach_targets: dict[str, str]  # program -> function (bpf_program__set_attach_target)
    maps: dict[str, MapSizes]
    data: list[DataPatch]
    autoload_off: list[str]  # programs the loader leaves out


class OwnLoaderPlan(TypedDict):
    """An object's own loader: run instead of the agent's libbpf load, while the triggers run."""

    command: Trigger  # an argv list, or a shell command string
    binaries: str  # its binaries, relative to the share (LOADERS_DIR/<n>); "" for none
    time_limit: float  # seconds it may run before it is stopped
    ready: str  # a regular expression its output matches once attached; "" to watch its programs


class _PlanObjectRequired(TypedDict):
    name: str
    path: str  # relative to the share: OBJECTS_DIR/<file>
    triggers: dict[str, Trigger]


class PlanObject(_PlanObjectRequired, total=False):
    """One object to load: its name, its path in the share, the trigger of each program, and what its
    loader sets (the sidecar's; the agent also sizes maps the object leaves at zero), or the command
    that loads it instead of the agent."""

    loader: LoaderPlan
    own_loader: OwnLoaderPlan  # loaded by this command, not by the agent
    # Why the object is attached and fired alone, never beside others (its sidecar asks, or it
    # observes the BPF machinery that other objects' programs drive); absent: it may share a batch.
    isolate: str


class UpdateScenario(TypedDict):
    """A uprobe attached by offset across a library update (kind "uprobe_update")."""

    kind: str
    object: str
    program: str
    path: str  # the object, relative to the share
    library: str  # where the program expects the library in the guest
    function: str
    v1: str  # the library before and after the update, relative to the share
    v2: str
    v1_offset: int
    v2_offset: int
    stale: str  # what sits at v1_offset in v2, in words
    trigger: Trigger
    modes: list[str]


class Plan(TypedDict):
    facts: bool  # collect the kernel's facts into FACTS_DIR
    objects: list[PlanObject]
    scenarios: list[UpdateScenario]


# ---------------------------------------------------------------------------------------------------
# The objects (guest → host): one record per object, one per program in it


class SetRecord(TypedDict, total=False):
    """One thing set on an object before its load: by its sidecar, or by the harness (a zero-sized map)."""

    what: str  # "attach_target", "map", "data", "autoload"
    name: str  # the program, map or variable
    by: str  # "sidecar" or "harness"
    text: str  # in words: "max_entries 1024 (the object has 0)"
    errno: int  # the libbpf call failed
    error: str


class _LoadRequired(TypedDict):
    ok: bool


class LoadRecord(_LoadRequired, total=False):
    """A load: of the whole object (``whole_load``), or of one program."""

    stage: str  # "open", "load", or "set_attach_target" (the loader's target was refused)
    programs: list[str]  # the object's programs, as libbpf named them
    log: str  # what libbpf printed
    errno: int
    error: str
    seconds: float
    target: str  # the attach target that was refused, or that the kernel's BTF lacks
    set: list[SetRecord]  # what was set before this load
    # Programs left out of this load: their attach target was refused, or their BTF target is absent.
    refused: dict[str, LoadRecord]


class _AttachRequired(TypedDict):
    ok: bool
    log: str


class AttachRecord(_AttachRequired, total=False):
    errno: int
    error: str


class FireRecord(TypedDict, total=False):
    """The program's counters after its trigger (bpf_prog_info), or why they could not be read."""

    id: int
    run_cnt: int
    run_time_ns: int
    recursion_misses: int  # 5.12+
    kprobe_missed: int  # from the link, 6.7+
    error: str
    trigger: Trigger
    # Counted alone after its batch showed a miss or no run: these counters are of that run, and
    # ``batch`` keeps what the batch counted.
    alone: bool
    batch: dict[str, int]


class _ProgramRequired(TypedDict):
    load: LoadRecord


class ProgramRecord(_ProgramRequired, total=False):
    attach: AttachRecord  # only when loaded
    fire: FireRecord  # only when attached


class _TriggerRequired(TypedDict):
    trigger: Trigger | None  # None: the default workload, which failed
    ok: bool
    seconds: float


class TriggerRun(_TriggerRequired, total=False):
    returncode: int
    output: str  # the last 2000 characters of stdout and stderr
    error: str


class Phases(TypedDict, total=False):
    """Seconds spent per phase of one object."""

    load: float
    attach: float
    wait_detach: float
    trigger: float  # of a batch: the batch's trigger, shared by its objects
    alone: float  # attaching, triggering and counting it again alone (after a doubtful batch)
    unlink: float  # of a whole agent: destroying links (in the background)
    close: float  # of a whole agent: closing objects (in the background)
    last_detach: float  # of a whole agent: waiting for the last batch's detach at the end


class LoaderAttachment(TypedDict, total=False):
    """Where one of an own loader's programs is attached: a BPF link, or a perf event it holds open."""

    via: str  # "link" or "perf_event"
    id: int  # the link's id
    type: str  # the link type, or the perf event's (kprobe, kretprobe, tracepoint, uprobe, ...)
    target: str  # the function, tracepoint or file, where the kernel tells
    btf_id: int  # a tracing link's target BTF id
    attach_type: int


class _LoadedRequired(TypedDict):
    id: int
    name: str  # as the kernel keeps it: at most 15 characters (BPF_OBJ_NAME_LEN)
    type: str  # bpf_prog_type, without BPF_PROG_TYPE_ ("kprobe", "tracing", ...)


class LoadedProgram(_LoadedRequired, total=False):
    """A program an own loader loaded, as last seen in the kernel."""

    full_name: str  # its function's whole name, from the program's BTF, where it has one
    run_cnt: int
    run_time_ns: int
    recursion_misses: int
    attached: list[LoaderAttachment]


class _LoaderRequired(TypedDict):
    command: Trigger
    seconds: float


class OwnLoaderRecord(_LoaderRequired, total=False):
    """What an own loader did: how it ended, what it printed, what it loaded and attached."""

    error: str  # it could not be started at all
    returncode: int  # its exit status (negative: the signal that ended it)
    exited: bool  # it ended on its own, before the agent stopped it
    stopped: str  # how the agent stopped it: "SIGINT", or "SIGKILL" when SIGINT did not do
    ready: str  # what readiness was judged by: "output", "programs", "exited" or "time limit"
    output: str  # the last 2000 characters of its stdout and stderr
    time_limit: float
    programs: list[LoadedProgram]  # programs it loaded (those present before it started left out)
    links: int  # BPF links it created
    triggers: list[TriggerRun]


class _ObjectRequired(TypedDict):
    object: str


class ObjectRecord(_ObjectRequired, total=False):
    programs: dict[str, ProgramRecord]
    whole_load: LoadRecord
    load_log: str  # the whole object's load log, when it loaded at once
    phases: Phases
    triggers: list[TriggerRun]
    loader_set: list[SetRecord]  # what was set before each load, in plan order
    left_out: list[str]  # programs not loaded: the loader leaves them out (autoload off)
    own_loader: OwnLoaderRecord  # the object's own loader ran instead of the agent's load
    batch: list[str]  # the objects whose programs were attached and fired together with this one's
    seconds: float
    error: str  # the object could not be handled at all: every program's checks are ERROR
    traceback: str


# ---------------------------------------------------------------------------------------------------
# Scenarios (guest → host)


class _RunRequired(TypedDict):
    ok: bool
    seconds: float


class RunRecord(_RunRequired, total=False):
    returncode: int
    output: str
    error: str


class _ModeRequired(TypedDict):
    mode: str


class ModeRecord(_ModeRequired, total=False):
    """One replace mode of an update scenario; counts are run_cnt deltas around each run."""

    library: str
    runs: list[RunRecord]
    v1: int
    inode_before: int
    inode_after: int
    after_update: int
    after_reattach: int
    error: str


class ScenarioEcho(TypedDict, total=False):
    """The plan's keys the host judges a scenario by, echoed in its record."""

    v1_offset: int
    v2_offset: int
    stale: str
    library: str
    function: str


class _ScenarioRequired(TypedDict):
    kind: str | None


class ScenarioRecord(_ScenarioRequired, total=False):
    object: str | None
    program: str | None
    modes: dict[str, ModeRecord]
    plan: ScenarioEcho
    error: str
    traceback: str


# ---------------------------------------------------------------------------------------------------
# Facts and completion (guest → host)


class UnameRecord(TypedDict):
    release: str
    machine: str
    version: str


class FactsSummary(TypedDict, total=False):
    """Which facts files the agent could collect."""

    kallsyms: bool
    btf: bool
    lsm: str | None
    config: bool
    tracefs: str | None
    available_filter_functions: bool
    available_events: bool
    tracepoint_formats: int  # how many formats
    features: str | None  # None when bpftool probed the kernel's features, else why it could not


class _DoneRequired(TypedDict):
    ok: bool
    release: str
    machine: str
    uptime_start: float | None  # how long the guest took to boot to the agent


class DoneRecord(_DoneRequired, total=False):
    """The completion record, written last: the host judges a boot by it alone."""

    facts: FactsSummary
    facts_seconds: float
    lsm: str
    stats_enabled: bool  # kernel.bpf_stats_enabled could be set: run counts are meaningful
    loader_error: str  # libbpf could not be used: every in-guest check is ERROR
    libbpf: str  # the version of the libbpf.so the agent loads with ("" when there is none)
    bpftool: str  # the guest's bpftool version ("" when there is none)
    os_release: str  # PRETTY_NAME of the guest's /etc/os-release: which userland it booted
    objects_seconds: float
    phases: Phases  # the objects' phases summed, each batch's trigger once
    scenarios_seconds: float
    error: str
    traceback: str
    seconds: float


# ---------------------------------------------------------------------------------------------------
# Reading and writing


def write_json(path: PathLike, data: object) -> None:
    """Write ``data`` as JSON at ``path`` atomically: a reader sees the old file or the whole new one."""
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.rename(tmp, path)


def _read_json(path: PathLike) -> object:
    """The JSON document at ``path``, or None when it is missing or not JSON."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_list(path: PathLike) -> list[object]:
    data = _read_json(path)
    return data if isinstance(data, list) else []


def write_plan(share: PathLike, plan: Plan) -> None:
    write_json(os.path.join(share, PLAN_FILE), plan)


def read_plan(share: PathLike) -> Plan:
    """The plan in ``share``; raises OSError or ValueError when it is missing or not JSON."""
    with open(os.path.join(share, PLAN_FILE)) as fh:
        return cast(Plan, json.load(fh))


def write_objects(share: PathLike, records: list[ObjectRecord]) -> None:
    write_json(os.path.join(share, OBJECTS_FILE), records)


def read_objects(share: PathLike) -> list[ObjectRecord]:
    """The agent's object records; empty when it wrote none (or garbage)."""
    return cast(list[ObjectRecord], _read_list(os.path.join(share, OBJECTS_FILE)))


def write_scenarios(share: PathLike, records: list[ScenarioRecord]) -> None:
    write_json(os.path.join(share, SCENARIOS_FILE), records)


def read_scenarios(share: PathLike) -> list[ScenarioRecord]:
    """The agent's scenario records; empty when it wrote none (or garbage)."""
    return cast(list[ScenarioRecord], _read_list(os.path.join(share, SCENARIOS_FILE)))


def write_done(share: PathLike, done: DoneRecord) -> None:
    write_json(os.path.join(share, DONE_FILE), done)


def read_done(share: PathLike) -> DoneRecord | None:
    """The agent's completion record, or None when it never wrote one (or wrote garbage)."""
    data = _read_json(os.path.join(share, DONE_FILE))
    return cast(DoneRecord, data) if isinstance(data, dict) else None
