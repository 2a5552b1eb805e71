"""A user's own loader: the command that loads an object in the guest instead of the harness, and its
binaries (a sidecar's ``own_loader:`` or the ``--own-loader`` options), parsed and resolved per arch."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.kernels.config import ARCH_ALIASES, Arch

OWN_LOADER_KEYS = {"command", "binaries", "time_limit", "ready"}
DEFAULT_TIME_LIMIT = 20.0
# Where the command line's {object} stands for the object's name (--own-loader's placeholder).
OBJECT_PLACEHOLDER = "{object}"


@dataclass(frozen=True)
class OwnLoader:
    """How an object's own loader runs in the guest.

    ``command`` is an argv list, or a shell command when given as one string. It runs with the binaries
    directory (shared read-only with the guest) as its working directory and first on PATH, for up to
    ``time_limit`` seconds; ``ready`` is a regular expression its output matches once it has attached
    (without it, the guest waits until the programs it loads stop changing).
    """

    command: tuple[str, ...] | str
    binaries: Path | None = None  # absolute; may hold one subdirectory per arch
    time_limit: float = DEFAULT_TIME_LIMIT
    ready: str = ""

    def binaries_for(self, arch: Arch) -> Path | None:
        """The directory of ``arch``'s binaries: ``binaries/<arch>`` (or an alias: amd64, aarch64)
        when there is one, else ``binaries`` itself; None without binaries."""
        if self.binaries is None:
            return None
        names = [arch.name, arch.debian, *(a for a, n in ARCH_ALIASES.items() if n == arch.name)]
        for name in dict.fromkeys(names):
            if (self.binaries / name).is_dir():
                return self.binaries / name
        return self.binaries

    def for_object(self, name: str) -> OwnLoader:
        """This loader with ``{object}`` in its command replaced by ``name``."""
        if isinstance(self.command, str):
            return OwnLoader(self.command.replace(OBJECT_PLACEHOLDER, name), self.binaries,
                             self.time_limit, self.ready)
        argv = tuple(a.replace(OBJECT_PLACEHOLDER, name) for a in self.command)
        return OwnLoader(argv, self.binaries, self.time_limit, self.ready)

    def describe(self) -> str:
        """The command as a user would type it."""
        return self.command if isinstance(self.command, str) else shlex.join(self.command)


def _command(where: str, raw: Any) -> tuple[str, ...] | str:
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, list) and raw and all(isinstance(a, str) for a in raw) and raw[0]:
        return tuple(raw)
    raise ConfigError(f"{where}: 'command' must be a shell command or a non-empty list of strings (argv)")


def parse_time_limit(where: str, raw: Any) -> float:
    """A loader's time limit in seconds; raises ConfigError unless it is a positive number."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise ConfigError(f"{where}: 'time_limit' must be a positive number of seconds, not {raw!r}")
    return float(raw)


def parse_ready(where: str, raw: Any) -> str:
    """A loader's readiness pattern; raises ConfigError when it is not a regular expression."""
    import re

    if not isinstance(raw, str):
        raise ConfigError(f"{where}: 'ready' must be a regular expression the loader's output matches")
    try:
        re.compile(raw)
    except re.error as exc:
        raise ConfigError(f"{where}: 'ready' is not a regular expression: {exc}") from exc
    return raw


def resolve_binaries(where: str, raw: Any, base: Path) -> Path:
    """``raw`` (relative to ``base``, the sidecar's directory) as an existing directory; raises
    ConfigError."""
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: 'binaries' must be a directory")
    path = (base / raw).resolve()
    if not path.is_dir():
        raise ConfigError(f"{where}: 'binaries' {raw!r} is not a directory ({path})")
    return path


def parse_own_loader(where: str, raw: Any, base: Path) -> OwnLoader:
    """A sidecar's ``own_loader:`` (a mapping, or just the command); raises ConfigError naming ``where``."""
    if isinstance(raw, (str, list)):
        raw = {"command": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: 'own_loader' must be a mapping with a 'command', or the command")
    unknown = sorted(set(raw) - OWN_LOADER_KEYS, key=str)
    if unknown:
        known, bad = ", ".join(sorted(OWN_LOADER_KEYS)), ", ".join(map(repr, unknown))
        raise ConfigError(f"{where}: own_loader: unknown key {bad} (known: {known})")
    if "command" not in raw:
        raise ConfigError(f"{where}: own_loader needs a 'command'")
    binaries = resolve_binaries(f"{where}: own_loader", raw["binaries"], base) if "binaries" in raw else None
    return OwnLoader(
        command=_command(f"{where}: own_loader", raw["command"]),
        binaries=binaries,
        time_limit=parse_time_limit(f"{where}: own_loader", raw.get("time_limit", DEFAULT_TIME_LIMIT)),
        ready=parse_ready(f"{where}: own_loader", raw["ready"]) if raw.get("ready") else "",
    )


def _or_default(time_limit: float | None) -> float:
    return DEFAULT_TIME_LIMIT if time_limit is None else time_limit


def resolve_cli_loader(
    command: str | None, binaries: str | None, time_limit: float | None, ready: str | None
) -> OwnLoader | None:
    """The loader the ``--own-loader*`` options give every object without one of its own; None without
    ``--own-loader``. Raises ConfigError for options given without it or with bad values."""
    where = "--own-loader"
    if not command:
        if binaries or time_limit is not None or ready:
            raise ConfigError(f"{where}-binaries, -time-limit and -ready need --own-loader COMMAND")
        return None
    return OwnLoader(
        command=command,
        binaries=resolve_binaries(f"{where}-binaries", binaries, Path.cwd()) if binaries else None,
        time_limit=parse_time_limit(f"{where}-time-limit", _or_default(time_limit)),
        ready=parse_ready(f"{where}-ready", ready) if ready else "",
    )
