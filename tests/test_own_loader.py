"""harness.programs.own_loader: a sidecar's own_loader and the --own-loader options, parsed and resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.kernels.config import ARCHES
from harness.programs.own_loader import (
    DEFAULT_TIME_LIMIT,
    OwnLoader,
    parse_own_loader,
    resolve_cli_loader,
)
from harness.programs.sidecar import parse_sidecar

X86, ARM = ARCHES["x86_64"], ARCHES["arm64"]


def test_full_mapping(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    own = parse_own_loader(
        "s.yaml",
        {"command": ["opensnoop-libbpf", "-T"], "binaries": "bin", "time_limit": 45, "ready": "PID +COMM"},
        tmp_path,
    )
    assert own == OwnLoader(("opensnoop-libbpf", "-T"), (tmp_path / "bin").resolve(), 45.0, "PID +COMM")
    assert own.describe() == "opensnoop-libbpf -T"


def test_just_a_shell_command_takes_the_defaults(tmp_path: Path) -> None:
    own = parse_own_loader("s.yaml", "./load.sh && sleep 100", tmp_path)
    assert own == OwnLoader("./load.sh && sleep 100", None, DEFAULT_TIME_LIMIT, "")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"binaries": "bin"}, "needs a 'command'"),
        ({"command": []}, "'command' must be a shell command or a non-empty list"),
        ({"command": ["a", 1]}, "'command' must be"),
        ({"command": "x", "time_limit": 0}, "'time_limit' must be a positive number"),
        ({"command": "x", "time_limit": True}, "'time_limit' must be a positive number"),
        ({"command": "x", "ready": "(unclosed"}, "'ready' is not a regular expression"),
        ({"command": "x", "binaries": "missing"}, "'binaries' 'missing' is not a directory"),
        ({"command": "x", "timeout": 3}, "key 'timeout' (known: binaries, command, ready, time_limit)"),
        (42, "'own_loader' must be a mapping"),
    ],
)
def test_malformed_loaders_are_refused_naming_the_place(tmp_path: Path, raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_own_loader("s.yaml:3", raw, tmp_path)
    assert str(err.value).startswith("s.yaml:3: ")
    assert message in str(err.value)


def test_binaries_per_arch_with_aliases(tmp_path: Path) -> None:
    (tmp_path / "amd64").mkdir()  # Debian's name for x86_64
    (tmp_path / "arm64").mkdir()
    own = OwnLoader("x", tmp_path)
    assert own.binaries_for(X86) == tmp_path / "amd64"
    assert own.binaries_for(ARM) == tmp_path / "arm64"
    (tmp_path / "x86_64").mkdir()
    assert own.binaries_for(X86) == tmp_path / "x86_64"  # the harness's own name first


def test_binaries_without_arch_directories_serve_every_arch(tmp_path: Path) -> None:
    own = OwnLoader("x", tmp_path)
    assert own.binaries_for(X86) == own.binaries_for(ARM) == tmp_path
    assert OwnLoader("x").binaries_for(ARM) is None


def test_for_object_fills_in_the_object_name() -> None:
    assert OwnLoader("{object}-libbpf -v").for_object("opensnoop").command == "opensnoop-libbpf -v"
    argv = OwnLoader(("run", "/opt/{object}")).for_object("execsnoop").command
    assert argv == ("run", "/opt/execsnoop")


def test_cli_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bins").mkdir()
    assert resolve_cli_loader(None, None, None, None) is None
    own = resolve_cli_loader("{object}-libbpf", "bins", 30.0, "Tracing")
    assert own == OwnLoader("{object}-libbpf", tmp_path / "bins", 30.0, "Tracing")
    assert resolve_cli_loader("x", None, None, None) == OwnLoader("x")


def test_cli_options_without_a_command_are_refused() -> None:
    with pytest.raises(ConfigError, match="need --own-loader COMMAND"):
        resolve_cli_loader(None, "bins", None, None)


def test_sidecar_carries_its_own_loader_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "bin" / "arm64").mkdir(parents=True)
    text = "own_loader:\n  command: [biolatency-libbpf, '30', '1']\n  binaries: bin\n"
    side = parse_sidecar(text, tmp_path / "biolatency.yaml")
    assert side.own_loader is not None
    assert side.own_loader.command == ("biolatency-libbpf", "30", "1")
    assert side.own_loader.binaries_for(ARM) == (tmp_path / "bin" / "arm64").resolve()


def test_sidecar_error_names_the_own_loader_line(tmp_path: Path) -> None:
    text = "description: x\nown_loader:\n  command: x\n  binaries: nowhere\n"
    with pytest.raises(ConfigError, match=r"biolatency.yaml:2: own_loader: 'binaries' 'nowhere'"):
        parse_sidecar(text, tmp_path / "biolatency.yaml")


def test_sidecar_without_own_loader_has_none(tmp_path: Path) -> None:
    assert parse_sidecar("trigger: default\n", tmp_path / "a.yaml").own_loader is None
