"""Tests of programs.sidecar: parsing sidecars, triggers per program, errors that name file and entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.kernels.version import KernelVersion
from harness.programs.sidecar import (
    Expectation,
    LoaderSettings,
    Sidecar,
    check_sidecar_programs,
    load_sidecar,
    parse_expectations,
    parse_sidecar,
)
from harness.report.results import Check, Outcome, Probe

ROOT = Path(__file__).resolve().parent.parent
SIDE = Path("bpf_progs/blk_account.yaml")


def v(text: str) -> KernelVersion:
    parsed = KernelVersion.parse(text)
    assert parsed is not None
    return parsed

FULL = """
description: a kprobe that is inlined away
trigger: "dd if=/dev/vda of=/dev/null bs=4k count=8 iflag=direct"
expect:
  - {check: fire, outcome: skip, arches: arm64, reason: "no scratch disk"}
programs:
  kprobe_blk:
    trigger: default
    expect:
      - {check: symbol, outcome: fail, since: "5.17", reason: "inlined"}
      - {check: attach, kernel: "6.1", arch: x86_64}
  tp_blk:
    trigger: [/bin/sh, -c, "sync"]
"""


def probe(program: str) -> Probe:
    return Probe("blk_account", program, f"kprobe/{program}", "kprobe", program)


def parse(text: str) -> Sidecar:
    return parse_sidecar(text, SIDE)


def test_full_sidecar() -> None:
    side = parse(FULL)
    assert side.path == SIDE
    assert side.trigger == "dd if=/dev/vda of=/dev/null bs=4k count=8 iflag=direct"
    assert side.program_triggers == {"kprobe_blk": "default", "tp_blk": ["/bin/sh", "-c", "sync"]}
    symbol, attach = side.expectations["kprobe_blk"]
    assert symbol == Expectation(outcome=Outcome.FAIL, check=Check.SYMBOL, since=v("5.17"), reason="inlined")
    # `kernel`/`arch` stand for `kernels`/`arches`; the outcome defaults to fail, the check to all.
    assert attach == Expectation(
        outcome=Outcome.FAIL, check=Check.ATTACH, kernels=("6.1",), arches=("x86_64",)
    )
    assert side.expectations["*"] == (
        Expectation(outcome=Outcome.SKIP, check=Check.FIRE, arches=("arm64",), reason="no scratch disk"),
    )


def test_triggers_for_programs_fall_back_to_the_object_trigger() -> None:
    side = parse(FULL)
    triggers = side.triggers_for([probe("kprobe_blk"), probe("tp_blk"), probe("other")])
    assert triggers == {
        "kprobe_blk": "default",
        "tp_blk": ["/bin/sh", "-c", "sync"],
        "other": "dd if=/dev/vda of=/dev/null bs=4k count=8 iflag=direct",
    }
    assert parse("programs: {}").triggers_for([probe("other")]) == {}


def test_expectations_for_a_program_come_before_those_of_the_object() -> None:
    side = parse(FULL)
    assert [e.check for e in side.expectations_for("kprobe_blk")] == [Check.SYMBOL, Check.ATTACH, Check.FIRE]
    assert [e.check for e in side.expectations_for("tp_blk")] == [Check.FIRE]


def test_empty_sidecar_and_missing_sidecar(tmp_path: Path) -> None:
    assert parse("") == Sidecar(SIDE)
    assert load_sidecar(tmp_path, "nothing") == Sidecar()


def test_load_sidecar_reads_yaml_or_yml(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("trigger: 'true'\n")
    side = load_sidecar(tmp_path, "a")
    assert side.path == tmp_path / "a.yml" and side.trigger == "true"


def test_lists_and_ints_of_kernels() -> None:
    raw = [{"kernels": ["5.10", "6.1"], "arches": ["x86_64", "arm64"], "since": 6}]
    (exp,) = parse_expectations("f", raw)
    assert exp.kernels == ("5.10", "6.1") and exp.arches == ("x86_64", "arm64") and exp.since == v("6.0")
    assert str(exp.since) == "6" and exp.outcome is Outcome.FAIL and exp.check is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trigger: [unclosed", f"{SIDE}:1: not valid YAML"),
        ("- a list", f"{SIDE}: expected a mapping"),
        ("triggers: default", f"{SIDE}:1: unknown key 'triggers'"),
        ("programs: [a, b]", f"{SIDE}: 'programs' must be a mapping of program name to settings"),
        ("programs: {p: default}", f"{SIDE}: program 'p': expected a mapping"),
        ("programs: {p: {expected: []}}", f"{SIDE}: program 'p': unknown key 'expected'"),
        ("programs: {p: {expect: {outcome: fail}}}", f"{SIDE}: program 'p': 'expect' must be a list"),
        ("programs: {p: {expect: [fail]}}", f"{SIDE}: program 'p': expect[0]: expected a mapping"),
        (
            "programs: {p: {expect: [{outcome: fail}, {outcome: fail, kernal: '6.1'}]}}",
            f"{SIDE}: program 'p': expect[1]: unknown key 'kernal'",
        ),
        (
            "programs: {p: {expect: [{outcome: xfail}]}}",
            f"{SIDE}: program 'p': expect[0]: unknown outcome 'xfail' (pass, fail, skip or error)",
        ),
        (
            "programs: {p: {expect: [{check: attached}]}}",
            f"{SIDE}: program 'p': expect[0]: unknown check 'attached' (known: symbol, prototype",
        ),
        ("expect: [{kernels: {a: 1}}]", f"{SIDE}: expect[0]: 'kernels' must be a string or a list"),
        ("expect: [{before: [5]}]", f"{SIDE}: expect[0]: 'before' must be a string, not list"),
        ("expect: [{since: sid}]", f"{SIDE}: expect[0]: 'since' is not a kernel version: 'sid'"),
        ("trigger: {sh: x}", f"{SIDE}: 'trigger' must be \"default\", a shell command or a list of strings"),
        ("programs: {p: {trigger: [ls, 1]}}", f"{SIDE}: program 'p': 'trigger' must be \"default\""),
    ],
)
def test_errors_name_the_file_and_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("key", ["kernels", "kernel", "before", "since"])
def test_unquoted_kernel_versions_are_refused(key: str) -> None:
    # YAML reads 5.10 as the float 5.1: taken as is it would match kernel "5.1", never "5.10".
    with pytest.raises(ConfigError) as info:
        parse(f"programs: {{p: {{expect: [{{outcome: fail, {key}: 5.10}}]}}}}")
    assert str(info.value).startswith(f"{SIDE}: program 'p': expect[0]: {key!r} is the number 5.1: quote")


def test_cannot_read_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"x\.yaml: cannot read"):
        load_sidecar(tmp_path, "x")


def test_describe() -> None:
    inlined = Expectation(Outcome.FAIL, Check.ATTACH, since=v("5.17"), reason="inlined")
    assert inlined.describe() == "attach fail since 5.17: inlined"
    anywhere = Expectation(Outcome.PASS, kernels=("6.1",), arches=("arm64",))
    assert anywhere.describe() == "every check pass on 6.1 on arm64"
    assert Expectation(Outcome.SKIP, Check.FIRE, before=v("6.4")).describe() == "fire skip before 6.4"


def test_corpus_sidecars_parse() -> None:
    """Every sidecar of bpf_progs/ parses, and each names only programs its source defines."""
    progs = ROOT / "bpf_progs"
    sidecars = sorted(progs.glob("*.yaml"))
    assert sidecars, "no sidecars in bpf_progs/"
    for path in sidecars:
        side = parse_sidecar(path.read_text(), path)
        source = progs / f"{path.name.removesuffix('.yaml')}.bpf.c"
        assert source.exists(), f"{path.name}: no {source.name} beside it"
        text = source.read_text()
        for name in set(side.program_triggers) | (set(side.expectations) - {"*"}):
            defined = f" {name}(" in text or f"({name}" in text
            assert defined, f"{path.name}: no program {name!r} in {source.name}"


def test_a_program_given_twice_is_refused(tmp_path: Path) -> None:
    # YAML keeps the last of two equal keys without a word: the first program's expectations would vanish.
    text = "programs:\n  p:\n    trigger: a\n  p:\n    trigger: b\n"
    with pytest.raises(ConfigError, match=r"x\.yaml:4: not valid YAML: 'p' is given twice"):
        parse_sidecar(text, tmp_path / "x.yaml")


def test_load_sidecars_checks_each_against_its_object(tmp_path: Path) -> None:
    from harness.programs.sidecar import load_sidecars

    (tmp_path / "a.yaml").write_text("programs:\n  one: {trigger: default}\n")
    (tmp_path / "b.yml").write_text("trigger: \"true\"\n")
    found = load_sidecars(tmp_path, {"a": {"one", "two"}, "b": None, "c": {"x"}})
    assert sorted(found) == ["a", "b"] and found["a"].program_lines == {"one": 2}
    with pytest.raises(ConfigError, match=r"a\.yaml:2: program 'one' is not in object 'a' \(its programs"):
        load_sidecars(tmp_path, {"a": {"two"}, "b": None})
    with pytest.raises(ConfigError, match=r"b\.yml: a sidecar without its object: no b\.bpf\.c or b\.bpf\.o"):
        load_sidecars(tmp_path, {"a": {"one"}})


def test_unknown_key_names_its_line() -> None:
    with pytest.raises(ConfigError, match=r"blk_account\.yaml:3: unknown key 'programz' \(known: "):
        parse("description: x\ntrigger: default\nprogramz:\n  p: {}\n")


# ---------------------------------------------------------------- loader: what the loader sets

LOADER = """
loader:
  attach_targets: {file_open: vfs_open}
  maps:
    stackmap: {max_entries: 256, value_size: 1016}
  rodata: {targ_ms: true, targ_pid: 42, comm: "cat"}
  autoload: {never_loaded: false, kept: true}
"""


def test_loader_settings_parse() -> None:
    loader = parse(LOADER).loader
    assert loader.attach_targets == {"file_open": "vfs_open"}
    assert loader.maps == {"stackmap": {"max_entries": 256, "value_size": 1016}}
    assert loader.rodata == {"targ_ms": True, "targ_pid": 42, "comm": "cat"}
    assert loader.autoload_off == frozenset({"never_loaded"})  # true is what libbpf does anyway
    assert loader.programs == {"file_open", "never_loaded"}


def test_no_loader_key_sets_nothing() -> None:
    assert parse(FULL).loader == LoaderSettings()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("loader: [a]", "'loader' must be a mapping"),
        ("loader: {attach: {p: f}}", "unknown key 'attach' (known: attach_targets, autoload, maps, rodata)"),
        ("loader: {attach_targets: {p: 3}}", "attach_targets: 'p' must name a function"),
        ("loader: {maps: {m: {entries: 3}}}",
         "maps: 'm' sets max_entries, value_size, key_size, not 'entries'"),
        ("loader: {maps: {m: {max_entries: 0}}}", "'max_entries' must be a positive whole number, not 0"),
        ("loader: {maps: {m: {value_size: true}}}", "'value_size' must be a positive whole number"),
        ("loader: {rodata: {v: [1]}}", "rodata: 'v' must be a number, true/false or a string"),
        ("loader: {autoload: {p: no_thanks}}", "autoload: 'p' must be true or false"),
        ("loader: {autoload: {p: false}, attach_targets: {p: f}}", "'p' is left out (autoload: false)"),
    ],
)
def test_bad_loader_settings_name_the_file_and_entry(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=str(SIDE)) as info:
        parse(text)
    assert words in str(info.value)


def test_loader_programs_are_checked_against_the_object() -> None:
    side = parse("loader: {attach_targets: {file_opem: vfs_open}}")
    with pytest.raises(ConfigError, match="program 'file_opem' is not in object 'blk_account'"):
        check_sidecar_programs(side, "blk_account", ["file_open"])
def test_alternatives_groups_and_their_members(tmp_path: Path) -> None:
    text = "description: x\nalternatives:\n  io_start: [fentry_start, kprobe_start]\n  other: [a, b, c]\n"
    side = parse_sidecar(text, tmp_path / "x.yaml")
    assert side.alternatives == {"io_start": ("fentry_start", "kprobe_start"), "other": ("a", "b", "c")}
    assert side.alternative_lines == {"io_start": 3, "other": 4}
    assert side.group_of("kprobe_start") == ("io_start", ("fentry_start", "kprobe_start"))
    assert side.group_of("nobody") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alternatives: [a, b]\n", r"x\.yaml:1: 'alternatives' must be a mapping"),
        ("alternatives:\n  g: [a]\n", r"x\.yaml:2: alternatives group 'g' must list two or more"),
        ("alternatives:\n  g: a\n", r"x\.yaml:2: alternatives group 'g' must list two or more"),
        ("alternatives:\n  g: [a, b]\n  h: [b, c]\n",
         r"x\.yaml:3: program 'b' is in alternatives groups 'g' and 'h'"),
    ],
)
def test_malformed_alternatives_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_sidecar(text, tmp_path / "x.yaml")


def test_an_alternative_that_is_not_in_the_object_is_refused_with_its_line(tmp_path: Path) -> None:
    from harness.programs.sidecar import load_sidecars

    (tmp_path / "a.yaml").write_text("description: x\nalternatives:\n  job: [one, tow]\n")
    assert load_sidecars(tmp_path, {"a": {"one", "tow"}})["a"].alternatives == {"job": ("one", "tow")}
    with pytest.raises(ConfigError, match=r"a\.yaml:3: alternatives group 'job' names program 'tow', which"):
        load_sidecars(tmp_path, {"a": {"one", "two"}})


def test_isolate_is_a_boolean(tmp_path: Path) -> None:
    assert parse_sidecar("isolate: true\n", tmp_path / "a.yaml").isolate is True
    assert parse_sidecar("trigger: default\n", tmp_path / "a.yaml").isolate is False
    with pytest.raises(ConfigError, match="'isolate' must be true or false"):
        parse_sidecar("isolate: always\n", tmp_path / "a.yaml")
