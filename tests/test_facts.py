"""Tests for harness.kernels.facts: the parsers of each facts file and the lazy KernelFacts."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.kernels.facts import (
    FactsError,
    KernelFacts,
    load_derived,
    load_facts,
    name_stem,
    parse_available_events,
    parse_config,
    parse_filter_functions,
    parse_kallsyms,
    parse_lsm,
    parse_tracepoint_formats,
    parse_uname,
)

FACTS = Path(__file__).parent / "data" / "facts"


@pytest.fixture
def facts_61() -> KernelFacts:
    return load_facts(FACTS / "6.1-x86_64")


# --- parsers ----------------------------------------------------------------------------------------


def test_parse_kallsyms_core_modules_and_duplicates() -> None:
    text = (
        "ffffffff81000000 T _stext\n"
        "ffffffff81100000 t name_show\n"
        "ffffffff81100040 t name_show\n"
        "ffffffff81100080 T vfs_unlink\n"
        "ffffffff81100080 W arch_cpu_idle\n"
        "ffffffffc0a00000 t ext4_file_open\t[ext4]\n"
        "ffffffffc0a00040 T vfs_unlink\t[shadow]\n"
    )
    ks = parse_kallsyms(text)
    assert ks.core["name_show"] == "tt"
    assert ks.core["vfs_unlink"] == "T"
    assert ks.core["arch_cpu_idle"] == "W"
    assert "ext4_file_open" not in ks.core
    assert ks.modules == {"ext4_file_open": "ext4", "vfs_unlink": "shadow"}
    assert ks.address_of("vfs_unlink") == 0xFFFFFFFF81100080
    assert ks.address_of("nope") is None


def test_parse_kallsyms_last_line_without_newline() -> None:
    ks = parse_kallsyms("ffffffff81000000 T _stext\nffffffff81000040 T last_one")
    assert ks.address_of("last_one") == 0xFFFFFFFF81000040


def test_parse_kallsyms_regions() -> None:
    ks = parse_kallsyms(
        "ffffffff81000000 T __noinstr_text_start\n"
        "ffffffff81000040 T exc_int3\n"
        "ffffffff81000100 T __noinstr_text_end\n"
        "ffffffff81000140 T vfs_read\n"
    )
    assert ks.region_of("exc_int3") is not None and "noinstr" in ks.region_of("exc_int3")  # type: ignore[operator]
    assert ks.region_of("vfs_read") is None


def test_parse_kallsyms_unprivileged_read_has_no_regions() -> None:
    # Read without root, every address is 0: names are still usable, regions are not.
    ks = parse_kallsyms(
        "0000000000000000 T __noinstr_text_start\n"
        "0000000000000000 T exc_int3\n"
        "0000000000000000 T __noinstr_text_end\n"
    )
    assert ks.core["exc_int3"] == "T"
    assert ks.region_of("exc_int3") is None


def test_parse_kallsyms_rejects_garbage() -> None:
    with pytest.raises(FactsError, match="kallsyms"):
        parse_kallsyms("this is not kallsyms\n", "6.1/kallsyms")


def test_parse_filter_functions() -> None:
    text = (
        "vfs_read\n"
        "blk_rq_cur_bytes.isra.0\n"
        "ext4_file_open [ext4]\n"
        "__ftrace_invalid_address___64\n"
        "vfs_read\n"
    )
    assert parse_filter_functions(text) == {"vfs_read", "blk_rq_cur_bytes.isra.0", "ext4_file_open"}


def test_parse_available_events() -> None:
    assert parse_available_events("block:block_rq_issue\nsched:sched_switch\n\n") == {
        "block:block_rq_issue",
        "sched:sched_switch",
    }


def test_parse_tracepoint_formats_normalises_keys() -> None:
    formats = parse_tracepoint_formats(json.dumps({"block:block_rq_issue": "name: x", "sched/s": "y"}))
    assert formats == {"block/block_rq_issue": "name: x", "sched/s": "y"}
    with pytest.raises(FactsError, match=r"formats\.json"):
        parse_tracepoint_formats('{"a/b": 1}', "formats.json")
    with pytest.raises(FactsError, match="not JSON"):
        parse_tracepoint_formats("{", "formats.json")


def test_parse_config() -> None:
    config = parse_config(
        'CONFIG_BPF_LSM=y\n# CONFIG_FPROBE is not set\nCONFIG_LSM="landlock,lockdown,bpf"\n'
        "CONFIG_NR_CPUS=8192\n# comment\n"
    )
    assert config == {
        "CONFIG_BPF_LSM": "y",
        "CONFIG_FPROBE": "n",
        "CONFIG_LSM": "landlock,lockdown,bpf",
        "CONFIG_NR_CPUS": "8192",
    }


def test_parse_lsm() -> None:
    assert parse_lsm("lockdown,capability,landlock,yama,apparmor,bpf") == (
        "lockdown", "capability", "landlock", "yama", "apparmor", "bpf",
    )
    assert parse_lsm("\n") == ()


def test_parse_uname() -> None:
    uname = parse_uname('{"release": "6.1.0-27-amd64", "machine": "x86_64", "version": "#1 SMP"}')
    assert (uname.release, uname.machine) == ("6.1.0-27-amd64", "x86_64")
    with pytest.raises(FactsError, match=r"k/uname\.json"):
        parse_uname('["6.1"]', "k/uname.json")
    with pytest.raises(FactsError, match="not JSON"):
        parse_uname("6.1.0", "k/uname.json")


def test_name_stem() -> None:
    assert name_stem("__blk_account_io_start") == "blk"
    assert name_stem("blk_rq_cur_bytes.isra.0") == "blk"
    assert name_stem("schedule") == "schedule"


# --- KernelFacts ------------------------------------------------------------------------------------


def test_load_facts_needs_kallsyms(tmp_path: Path) -> None:
    (tmp_path / "uname.json").write_text('{"release": "6.1.0-27-amd64"}')
    with pytest.raises(HarnessError, match=re.escape(f"facts for {tmp_path} are incomplete: no kallsyms")):
        load_facts(tmp_path)


def test_facts_are_parsed_lazily(facts_61: KernelFacts) -> None:
    assert "kallsyms" not in facts_61.__dict__
    assert facts_61.release == "6.1.0-27-amd64"
    assert "kallsyms" not in facts_61.__dict__
    assert facts_61.symbol_types("blk_account_io_done") == {"t"}
    assert "kallsyms" in facts_61.__dict__


def test_fixture_facts(facts_61: KernelFacts) -> None:
    assert facts_61.machine == "x86_64"
    # 6.1 inlined blk_account_io_start and made blk_account_io_done local (5.10 had both global).
    assert "blk_account_io_start" not in facts_61.symbols
    facts_510 = load_facts(FACTS / "5.10-x86_64")
    assert facts_510.symbol_types("blk_account_io_done") == {"T"}
    assert facts_61.module_symbols["ext4_file_open"] == "ext4"
    assert facts_61.traceable is not None and "ext4_file_open" in facts_61.traceable
    assert facts_61.events is not None and "block:block_rq_issue" in facts_61.events
    assert "block" in facts_61.event_names["block_rq_issue"]
    fmt = facts_61.tracepoint_format("block:block_rq_issue")
    assert fmt is not None and fmt.startswith("name: block_rq_issue")
    assert facts_61.tracepoint_format("block/nope") is None
    assert facts_61.config is not None and facts_61.config["CONFIG_DEBUG_INFO_BTF"] == "y"
    assert facts_61.lsms is not None and "bpf" not in facts_61.lsms
    assert facts_61.kallsyms_all


def test_clone_index(facts_61: KernelFacts) -> None:
    assert facts_61.clones["dump_blkd_tasks"] == (
        "dump_blkd_tasks.constprop.0",
        "dump_blkd_tasks.constprop.0.cold",
    )
    assert facts_61.clones["sched_use_asym_prio"] == ("sched_use_asym_prio.constprop.0.isra.0",)
    assert "tcp_sendmsg_locked.cold" in facts_61.clones["tcp_sendmsg_locked"]
    # Symbols with dots that are not clones stay out of the index.
    assert all("." in c for cs in facts_61.clones.values() for c in cs)


def test_traceable_by_stem(facts_61: KernelFacts) -> None:
    blk = facts_61.traceable_by_stem["blk"]
    assert "blk_account_io_merge_bio" in blk
    assert all(name_stem(n) == "blk" for n in blk)


def test_missing_optional_files_are_none(tmp_path: Path) -> None:
    shutil.copy(FACTS / "6.1-x86_64" / "kallsyms", tmp_path / "kallsyms")
    facts = load_facts(tmp_path)
    assert facts.uname is None and facts.release == ""
    assert facts.traceable is None
    assert facts.events is None
    assert facts.tracepoint_formats is None
    assert facts.config is None
    assert facts.lsms is None
    assert not facts.has_btf and facts.btf is None
    assert facts.btf_func_names == frozenset()


def test_malformed_file_names_it(tmp_path: Path) -> None:
    shutil.copy(FACTS / "6.1-x86_64" / "kallsyms", tmp_path / "kallsyms")
    (tmp_path / "uname.json").write_text("{")
    with pytest.raises(FactsError, match=re.escape(str(tmp_path / "uname.json"))):
        _ = load_facts(tmp_path).release


def test_btf_with_the_real_reader(facts_61: KernelFacts) -> None:
    pytest.importorskip("harness.btf.spec")
    assert facts_61.has_btf
    assert "vfs_unlink" in facts_61.btf_func_names
    assert "blk_account_io_done" not in facts_61.btf_func_names
    assert facts_61.btf is not None and facts_61.btf.by_name("btf_trace_sched_switch")


class FakeBTF:
    def __init__(self, funcs: set[str]) -> None:
        self.funcs = frozenset(funcs)

    def func_names(self) -> frozenset[str]:
        return self.funcs

    def by_name(self, name: str, kind: Any = None) -> list[str]:
        return [name] if name in self.funcs else []


def test_btf_parser_is_injectable() -> None:
    seen: list[int] = []

    def parser(data: bytes, name: str) -> FakeBTF:
        seen.append(len(data))
        return FakeBTF({"only_this"})

    facts = load_facts(FACTS / "6.1-x86_64", btf_parser=parser)
    assert facts.btf_func_names == {"only_this"}
    _ = facts.btf_func_names
    assert len(seen) == 1 and seen[0] > 24


def _synthetic_kallsyms(lines: int) -> str:
    out = []
    for i in range(lines):
        kind = "t" if i % 2 else "T"
        suffix = ".isra.0" if i % 97 == 0 else ""
        out.append(f"{0xFFFFFFFF81000000 + i * 16:016x} {kind} subsys{i % 300}_function_{i}{suffix}")
    out += [f"ffffffffc0a{i:05x} t mod_fn_{i}\t[mod{i % 40}]" for i in range(5000)]
    return "\n".join(out) + "\n"


def test_parse_kallsyms_of_distro_size() -> None:
    # Distro kernels list 150-200k symbols (its speed is measured by bench/bench_offline.py).
    ks = parse_kallsyms(_synthetic_kallsyms(200_000))
    assert len(ks.core) == 200_000 and len(ks.modules) == 5000


# --- derived cache ----------------------------------------------------------------------------------

_DERIVED_PROPS = (
    "symbols", "module_symbols", "clones", "error_injection", "traceable", "traceable_by_stem",
    "lsm_hooks", "config", "btf_func_names", "kallsyms_all",
)


def _snapshot(facts: KernelFacts) -> dict[str, Any]:
    out = {name: getattr(facts, name) for name in _DERIVED_PROPS}
    out["traceable_by_stem"] = {k: sorted(v) for k, v in facts.traceable_by_stem.items()}
    out["markers"] = facts.kallsyms.markers
    out["region"] = facts.kallsyms.region_of("exc_int3")
    out["address"] = facts.kallsyms.address_of("vfs_unlink")
    assert facts.btf is not None
    out["btf"] = [(t.id, t.name) for t in facts.btf.by_name("btf_trace_sched_switch")]
    return out


@pytest.fixture
def cached_facts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The fixture's files are small: lower the threshold so that they are cached like a distro's.
    monkeypatch.setattr("harness.kernels.facts.DERIVED_MIN_BYTES", 0)
    directory = tmp_path / "6.1-x86_64"
    shutil.copytree(FACTS / "6.1-x86_64", directory)
    with (directory / "kallsyms").open("a") as fh:
        fh.write("ffffffff81000000 T __noinstr_text_start\nffffffff81000040 T exc_int3\n"
                 "ffffffff81000100 T __noinstr_text_end\nffffffff81000200 d _eil_addr_should_failslab\n")
    return directory


def test_derived_cache_gives_the_same_facts(cached_facts_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = _snapshot(load_facts(cached_facts_dir))
    written = sorted(p.name for p in (cached_facts_dir / "derived").iterdir())
    assert written == [
        "available_filter_functions.pickle", "btf_func_names.pickle", "btf_layout.pickle",
        "config.pickle", "kallsyms.pickle",
    ]

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed again although the derived cache is fresh")

    for name in ("parse_kallsyms", "parse_filter_functions", "parse_config", "index_clones"):
        monkeypatch.setattr(f"harness.kernels.facts.{name}", no_parsing)
    monkeypatch.setattr("harness.btf.spec.index_btf", no_parsing)
    cached = load_facts(cached_facts_dir)
    assert _snapshot(cached) == fresh
    # Loaded from the cache, the kallsyms text is only read for address lookups.
    assert cached.kallsyms.source == cached_facts_dir / "kallsyms"


def test_derived_cache_is_rebuilt_when_the_file_changes(cached_facts_dir: Path) -> None:
    assert "vfs_unlink" in load_facts(cached_facts_dir).symbols
    kallsyms = cached_facts_dir / "kallsyms"
    kallsyms.write_text(kallsyms.read_text().replace(" vfs_unlink\n", " vfs_unlink_renamed\n"))
    facts = load_facts(cached_facts_dir)
    assert "vfs_unlink" not in facts.symbols and "vfs_unlink_renamed" in facts.symbols


def test_damaged_derived_cache_is_ignored_and_rewritten(cached_facts_dir: Path) -> None:
    fresh = _snapshot(load_facts(cached_facts_dir))
    derived = cached_facts_dir / "derived"
    (derived / "kallsyms.pickle").write_bytes(b"not a pickle")
    (derived / "available_filter_functions.pickle").write_bytes(b"")
    (derived / "config.pickle").write_bytes(pickle.dumps(["a", "list", "not", "a", "keyed", "tuple"]))
    assert _snapshot(load_facts(cached_facts_dir)) == fresh
    assert pickle.loads((derived / "kallsyms.pickle").read_bytes())[0][1] == "kallsyms"


def test_unwritable_derived_cache_is_skipped(cached_facts_dir: Path) -> None:
    (cached_facts_dir / "derived").write_text("a file where the cache directory would be")
    facts = load_facts(cached_facts_dir)
    assert facts.symbol_types("blk_account_io_done") == {"t"}
    assert facts.traceable is not None and "vfs_unlink" in facts.traceable


def test_small_files_are_not_cached() -> None:
    facts = load_facts(FACTS / "6.1-x86_64")
    assert facts.symbols and facts.traceable and facts.config and facts.btf_func_names
    assert not (FACTS / "6.1-x86_64" / "derived").exists()


def test_load_derived_derives_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def derive() -> dict[str, int]:
        calls.append(1)
        return {"answer": 42}

    cache = tmp_path / "sub" / "x.pickle"
    assert load_derived(cache, (1, 2), derive) == {"answer": 42}
    assert load_derived(cache, (1, 2), derive) == {"answer": 42}
    assert len(calls) == 1
    assert load_derived(cache, (1, 3), derive) == {"answer": 42}
    assert len(calls) == 2
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]
