"""Tests of kernels.config: kernels.yaml parsing, every error it reports, select(), the repository's files."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.kernels.config import (
    ARCHES,
    GuestSpec,
    KernelsConfig,
    load_kernels_yaml,
    parse_kernels_yaml,
    resolve_arch,
)

ROOT = Path(__file__).resolve().parent.parent
PATH = Path("/etc/matrix/kernels.yaml")


def parse(text: str, path: Path = PATH) -> KernelsConfig:
    return parse_kernels_yaml(textwrap.dedent(text), path)


def error_of(text: str, path: Path = PATH) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, path)
    return str(info.value)


# ---------------------------------------------------------------- valid files


def test_minimal_debian_kernel_gets_the_defaults() -> None:
    cfg = parse(
        """
        kernels:
          - id: "6.1"
            suite: bookworm
        """
    )
    (spec,) = cfg.kernels
    assert spec.id == "6.1"
    assert spec.source == "debian"
    assert spec.suite == "bookworm"
    assert spec.arch is ARCHES["x86_64"]
    assert (spec.memory, spec.cpus, spec.timeout, spec.append) == ("1G", 1, 300.0, ())
    assert spec.image is None and spec.modules is None
    assert spec.key == "6.1-x86_64"
    assert spec.describe() == "debian bookworm linux-image-amd64 (x86_64)"
    # No baseline given: the first kernel listed is the one others are diffed against.
    assert cfg.baseline == "" and cfg.baseline_id == "6.1"
    assert cfg.guest == GuestSpec(suite="trixie", packages=(), root="debian")
    assert spec.guest == cfg.guest
    assert cfg.path == PATH


def test_defaults_apply_and_entries_override_them() -> None:
    cfg = parse(
        """
        mirror: http://mirror.example/debian
        defaults:
          arches: [x86_64, aarch64]
          memory: 2G
          cpus: 2
          timeout: 600
          append: "nokaslr quiet"
        kernels:
          - id: "5.10"
            suite: bullseye-backports
          - id: "6.12"
            suite: trixie
            arch: arm64
            memory: 4G
            timeout: 90.5
            append: [loglevel=7]
            package: linux-image-6.12.9-arm64
        """
    )
    assert cfg.mirror == "http://mirror.example/debian"
    assert [k.key for k in cfg.kernels] == ["5.10-x86_64", "5.10-arm64", "6.12-arm64"]
    old_x86, old_arm, new = cfg.kernels
    # The alias aarch64 resolves to the arm64 Arch.
    assert old_arm.arch is ARCHES["arm64"]
    assert old_x86.suite == "bullseye-backports"
    assert (old_x86.memory, old_x86.cpus, old_x86.timeout) == ("2G", 2, 600.0)
    assert old_x86.append == ("nokaslr", "quiet")
    assert (new.memory, new.cpus, new.timeout) == ("4G", 2, 90.5)
    assert new.append == ("loglevel=7",)
    assert new.package == "linux-image-6.12.9-arm64"
    assert new.describe() == "debian trixie linux-image-6.12.9-arm64 (arm64)"
    assert cfg.ids() == ["5.10", "6.12"]


def test_duplicate_arches_collapse_to_one_entry() -> None:
    cfg = parse(
        """
        kernels:
          - id: "6.1"
            suite: bookworm
            arches: [x86_64, amd64, arm64]
        """
    )
    assert [k.key for k in cfg.kernels] == ["6.1-x86_64", "6.1-arm64"]


def test_local_kernel_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "kernels.yaml"
    path.parent.mkdir()
    path.write_text(
        textwrap.dedent(
            f"""
            kernels:
              - id: mine
                source: local
                image: build/arch/x86/boot/bzImage
                modules: build/modules/6.13.0
              - id: abs
                source: local
                image: {tmp_path}/vmlinuz
            """
        )
    )
    cfg = load_kernels_yaml(path)
    mine, absolute = cfg.kernels
    assert mine.source == "local"
    assert mine.image == path.parent / "build/arch/x86/boot/bzImage"
    assert mine.modules == path.parent / "build/modules/6.13.0"
    assert mine.suite == ""
    assert mine.describe() == f"local {path.parent / 'build/arch/x86/boot/bzImage'} (x86_64)"
    assert absolute.image == tmp_path / "vmlinuz"
    assert absolute.modules is None


def test_baseline_and_guest() -> None:
    cfg = parse(
        """
        baseline: "6.1"
        guest:
          suite: bookworm
          packages: [strace, bpftrace]
        kernels:
          - {id: "5.10", suite: bullseye}
          - {id: "6.1", suite: bookworm}
        """
    )
    assert cfg.baseline == "6.1" and cfg.baseline_id == "6.1"
    assert cfg.guest.suite == "bookworm"
    assert cfg.guest.packages == ("strace", "bpftrace")
    assert all(k.guest == cfg.guest for k in cfg.kernels)


def test_guest_per_entry_override_keeps_the_file_defaults() -> None:
    cfg = parse(
        """
        guest: {suite: trixie, packages: [strace]}
        kernels:
          - {id: "6.1", suite: bookworm, arches: [x86_64, arm64], guest: {suite: bookworm}}
          - {id: "6.12", suite: trixie, guest: {root: host}}
          - {id: "7.2", suite: sid}
        """
    )
    old_x86, old_arm, host, new = cfg.kernels
    assert old_x86.guest == old_arm.guest == GuestSpec("bookworm", ("strace",), "debian")
    assert host.guest == GuestSpec("trixie", ("strace",), "host") and host.guest.host
    assert new.guest == cfg.guest == GuestSpec("trixie", ("strace",), "debian")
    assert (old_x86.guest.describe(), host.guest.describe()) == ("debian bookworm", "host")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guest: {suite: jessie}\n", "guest: unknown Debian suite 'jessie'"),
        ("guest: {root: chroot}\n", "guest: unknown root 'chroot' (known: debian, host)"),
        ("guest: {flavour: x}\n", "guest: unknown key 'flavour'"),
        ("guest: trixie\n", "guest: must be a mapping"),
        ("guest: {packages: strace}\n", "guest: 'packages' must be a list"),
        ("rootfs: {suite: trixie}\n", "'rootfs' is now 'guest'"),
    ],
)
def test_guest_refused(text: str, message: str) -> None:
    assert message in error_of(text + "kernels: [{id: a, suite: sid}]\n")


def test_guest_refused_in_an_entry() -> None:
    msg = error_of("kernels: [{id: a, suite: sid, guest: {suite: potato}}]\n")
    assert msg.startswith(f"{PATH}: kernel 'a': guest: unknown Debian suite 'potato'")


def test_repository_kernels_files_parse() -> None:
    main = load_kernels_yaml(ROOT / "kernels.yaml")
    assert main.baseline_id in main.ids()
    assert {k.arch.name for k in main.kernels} <= set(ARCHES)
    assert all(k.source == "debian" and k.suite for k in main.kernels)
    ci = load_kernels_yaml(ROOT / "kernels-ci.yaml")
    assert ci.baseline_id in ci.ids()
    # The CI file keeps boots few: every one of its kernels is in the main file too.
    assert set(ci.ids()) <= set(main.ids())
    assert len({k.key for k in ci.kernels}) == len(ci.kernels)


def test_resolve_arch_aliases_and_unknown() -> None:
    assert resolve_arch("amd64") is ARCHES["x86_64"]
    assert resolve_arch("aarch64") is ARCHES["arm64"]
    with pytest.raises(ConfigError, match=r"unknown arch 'riscv64' \(known: x86_64, arm64\)"):
        resolve_arch("riscv64")


# ---------------------------------------------------------------- errors


def test_not_yaml_names_the_file_and_line() -> None:
    msg = error_of("kernels:\n  - id: a\n    suite: sid: bookworm\n  - id: b\n    suite: sid\n")
    assert msg == f"{PATH}:3: not valid YAML: mapping values are not allowed here"


def test_not_yaml_keeps_the_parser_error_as_cause() -> None:
    import yaml

    with pytest.raises(ConfigError) as info:
        parse("kernels:\n  - id: '6.1'\n    suite: [bookworm\n")
    assert str(info.value).startswith(f"{PATH}:4: not valid YAML: expected ',' or ']'")
    assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_not_yaml_tab_indentation_reports_its_line() -> None:
    msg = error_of("kernels:\n\t- id: x\n")
    assert msg.startswith(f"{PATH}:2: not valid YAML")


@pytest.mark.parametrize("text", ["", "- id: x\n", "just a string\n", "42\n"])
def test_not_a_mapping(text: str) -> None:
    assert error_of(text) == f"{PATH}: expected a mapping with a 'kernels' list at the top"


@pytest.mark.parametrize("text", ["mirror: x\n", "kernels: []\n", "kernels: {id: x}\n"])
def test_kernels_must_be_a_non_empty_list(text: str) -> None:
    assert error_of(text) == f"{PATH}: 'kernels' must be a non-empty list"


def test_unknown_top_level_key() -> None:
    msg = error_of("kernel: []\nkernels: [{id: a, suite: sid}]\n")
    assert msg.startswith(f"{PATH}: unknown key 'kernel' (allowed: ")
    assert "kernels" in msg


def test_unknown_defaults_key() -> None:
    msg = error_of("defaults: {arch: arm64}\nkernels: [{id: a, suite: sid}]\n")
    assert msg.startswith(f"{PATH}: defaults: unknown key 'arch'")


def test_defaults_must_be_a_mapping() -> None:
    msg = error_of("defaults: [1]\nkernels: [{id: a, suite: sid}]\n")
    assert msg == f"{PATH}: 'defaults' must be a mapping"


def test_unknown_kernel_key_names_the_entry() -> None:
    msg = error_of(
        """
        kernels:
          - id: "6.1"
            suite: bookworm
            flavor: cloud
        """
    )
    assert msg.startswith(f"{PATH}: kernel '6.1': unknown key 'flavor' (allowed: ")
    assert "flavour" in msg


def test_entry_without_id_is_named_by_index() -> None:
    msg = error_of(
        """
        kernels:
          - {id: a, suite: sid}
          - {suite: sid}
        """
    )
    assert msg == f"{PATH}: kernels[1]: missing 'id'"


def test_entry_that_is_not_a_mapping() -> None:
    msg = error_of("kernels: [{id: a, suite: sid}, sid]\n")
    assert msg == f"{PATH}: kernels[1]: expected a mapping, got str"


def test_unknown_arch_names_the_entry_and_the_value() -> None:
    msg = error_of("kernels: [{id: v6.1, suite: bookworm, arch: arm}]\n")
    assert msg == f"{PATH}: kernel 'v6.1': unknown arch 'arm' (known: x86_64, arm64)"


def test_unknown_arch_in_defaults_is_reported_on_the_entry() -> None:
    msg = error_of("defaults: {arches: [s390x]}\nkernels: [{id: a, suite: sid}]\n")
    assert msg == f"{PATH}: kernel 'a': unknown arch 's390x' (known: x86_64, arm64)"


@pytest.mark.parametrize("arches", ["[]", "x86_64"])
def test_arches_must_be_a_non_empty_list(arches: str) -> None:
    msg = error_of(f"kernels: [{{id: a, suite: sid, arches: {arches}}}]\n")
    assert msg == f"{PATH}: kernel 'a': 'arches' must be a non-empty list"


def test_arch_and_arches_both() -> None:
    msg = error_of("kernels: [{id: a, suite: sid, arch: arm64, arches: [x86_64]}]\n")
    assert msg == f"{PATH}: kernel 'a': give 'arch' or 'arches', not both"


@pytest.mark.parametrize("suite", ["buster", "bookworm-security", "Bookworm", "stable"])
def test_unknown_suite(suite: str) -> None:
    msg = error_of(f"kernels: [{{id: a, suite: {suite}}}]\n")
    assert msg.startswith(f"{PATH}: kernel 'a': unknown Debian suite '{suite}'")


def test_unknown_guest_suite() -> None:
    msg = error_of("guest: {suite: jessie}\nkernels: [{id: a, suite: sid}]\n")
    assert msg.startswith(f"{PATH}: guest: unknown Debian suite 'jessie'")


def test_unknown_source() -> None:
    msg = error_of("kernels: [{id: a, source: ubuntu, suite: noble}]\n")
    assert msg == f"{PATH}: kernel 'a': unknown source 'ubuntu' (known: debian, local)"


def test_duplicate_id() -> None:
    msg = error_of(
        """
        kernels:
          - {id: "6.1", suite: bookworm}
          - {id: "6.1", suite: bookworm-backports}
        """
    )
    assert msg == f"{PATH}: kernel '6.1': duplicate id '6.1'"


@pytest.mark.parametrize("kid", ["6.1/arm", "-6.1", "a b", "x" * 65, "é"])
def test_bad_id_characters(kid: str) -> None:
    msg = error_of(f"kernels: [{{id: '{kid}', suite: sid}}]\n")
    assert msg == f"{PATH}: kernel '{kid}': id '{kid}' must be letters, digits, '.', '_', '+' or '-'"


def test_id_must_be_a_string() -> None:
    msg = error_of("kernels: [{id: [6, 1], suite: sid}]\n")
    assert msg == f"{PATH}: kernel '[6, 1]': 'id' must be a string, not list"


def test_debian_kernel_needs_a_suite() -> None:
    assert error_of("kernels: [{id: a}]\n") == f"{PATH}: kernel 'a': a debian kernel needs a 'suite'"


def test_debian_kernel_rejects_local_keys() -> None:
    msg = error_of("kernels: [{id: a, suite: sid, image: /boot/vmlinuz}]\n")
    assert msg == f"{PATH}: kernel 'a': 'image' is for local kernels"


def test_local_kernel_needs_an_image() -> None:
    msg = error_of("kernels: [{id: a, source: local, modules: lib/modules/6.1}]\n")
    assert msg == f"{PATH}: kernel 'a': a local kernel needs an 'image'"


@pytest.mark.parametrize("key,value", [("timeout", "0"), ("timeout", "-5"), ("cpus", "0")])
def test_non_positive_numbers(key: str, value: str) -> None:
    msg = error_of(f"kernels: [{{id: a, suite: sid, {key}: {value}}}]\n")
    assert msg == f"{PATH}: kernel 'a': 'timeout' and 'cpus' must be positive"


def test_non_positive_timeout_in_defaults_is_reported_on_the_entry() -> None:
    msg = error_of("defaults: {timeout: 0}\nkernels: [{id: a, suite: sid}]\n")
    assert msg == f"{PATH}: kernel 'a': 'timeout' and 'cpus' must be positive"


def test_timeout_not_a_number() -> None:
    with pytest.raises(ConfigError, match="'timeout' and 'cpus' must be numbers") as info:
        parse("kernels: [{id: a, suite: sid, timeout: soon}]\n")
    assert isinstance(info.value.__cause__, ValueError)


def test_baseline_not_an_id() -> None:
    msg = error_of("baseline: '5.4'\nkernels: [{id: '6.1', suite: bookworm}]\n")
    assert msg == f"{PATH}: baseline '5.4' is not a kernel id of this file"


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    expected = f"^{re.escape(str(path))}: cannot read: No such file or directory$"
    with pytest.raises(ConfigError, match=expected):
        load_kernels_yaml(path)


def test_errors_name_the_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "kernels-mine.yaml"
    path.write_text("kernels: [{id: a, suite: sid, arch: sparc}]\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: kernel 'a': unknown arch 'sparc'"):
        load_kernels_yaml(path)


# ---------------------------------------------------------------- select


SELECT_YAML = """
baseline: "5.10"
kernels:
  - {id: "5.10", suite: bullseye, arches: [x86_64]}
  - {id: "6.1", suite: bookworm, arches: [x86_64, arm64]}
  - {id: "6.12", suite: trixie, arches: [x86_64, arm64]}
"""


def test_select_by_id_keeps_every_arch_in_file_order() -> None:
    cfg = parse(SELECT_YAML)
    chosen = cfg.select(["6.12", "6.1"])
    assert [k.key for k in chosen.kernels] == ["6.1-x86_64", "6.1-arm64", "6.12-x86_64", "6.12-arm64"]
    # Selection keeps the file's settings.
    assert chosen.path == cfg.path and chosen.baseline == "5.10" and chosen.guest == cfg.guest


def test_select_by_id_arch_key() -> None:
    cfg = parse(SELECT_YAML)
    chosen = cfg.select(["6.1-arm64", "5.10"])
    assert [k.key for k in chosen.kernels] == ["5.10-x86_64", "6.1-arm64"]


def test_select_unknown_key_names_it_and_the_known_ones() -> None:
    cfg = parse(SELECT_YAML)
    with pytest.raises(ConfigError) as info:
        cfg.select(["6.1", "5.10-arm64", "7.0"])
    msg = str(info.value)
    assert msg.startswith(f"{PATH}: unknown kernel '5.10-arm64', '7.0' (known: ")
    assert "6.12-arm64" in msg and "5.10-x86_64" in msg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # YAML reads 5.10 as the float 5.1: the entry would silently name another kernel.
        ("kernels:\n  - id: 5.10\n    suite: bullseye\n",
         "kernel '5.10': id 5.10 was read as a number (5.1): quote it (id: \"5.10\")"),
        # The hint quotes what was written, not always "5.10".
        ("kernels:\n  - {id: 6.1, suite: bookworm}\n",
         "kernel '6.1': id 6.1 was read as a number: quote it (id: \"6.1\")"),
        ("kernels:\n  - {id: 6.10, suite: trixie}\n",
         "kernel '6.10': id 6.10 was read as a number (6.1): quote it (id: \"6.10\")"),
        # The baseline gets the same hint (it used to say "baseline '5.1' is not a kernel id").
        ("baseline: 5.10\nkernels: [{id: '5.10', suite: bullseye}]\n",
         "baseline 5.10 was read as a number (5.1): quote it (baseline: \"5.10\")"),
        ("baseline: 6.1\nkernels: [{id: '6.1', suite: bookworm}]\n",
         "baseline 6.1 was read as a number: quote it (baseline: \"6.1\")"),
    ],
    ids=["id-5.10", "id-6.1", "id-6.10", "baseline-5.10", "baseline-6.1"],
)
def test_unquoted_version_is_refused_quoting_what_was_written(text: str, message: str) -> None:
    assert error_of(text) == f"{PATH}: {message}"


def test_numbers_elsewhere_keep_the_text_they_were_written_as() -> None:
    cfg = parse("kernels: [{id: '6.1', suite: bookworm, package: 5.10, memory: 2.50}]\n")
    assert (cfg.kernels[0].package, cfg.kernels[0].memory) == ("5.10", "2.50")


def test_arch_names_and_elf_machines_come_from_one_table() -> None:
    from harness.kernels.config import arch_names, resolve_elf_machine

    names = arch_names()
    assert list(names) == ["x86_64", "arm64", "amd64", "aarch64"]
    assert names["amd64"] is ARCHES["x86_64"] and names["aarch64"] is ARCHES["arm64"]
    assert resolve_elf_machine(62) is ARCHES["x86_64"]  # EM_X86_64
    assert resolve_elf_machine(183) is ARCHES["arm64"]  # EM_AARCH64
    assert resolve_elf_machine(243) is None  # EM_RISCV: no guest runs it
