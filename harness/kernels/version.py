"""Kernel versions: one parser for kernels.yaml ids, release strings and uname (stdlib only, Python 3.9).

The guest agent imports this file as a sibling module from the VM's share directory, so it must not
import anything of the harness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# "6.1", "6.1.115", "6.1.0-27-amd64", "6.12-rc3", "7.0.0-rc3-cloud-amd64", "6.12.9+bpo-amd64".
# A bare major ("6", as in "since: 6") is 6.0.
_VERSION = re.compile(r"^v?(?P<major>\d+)(?:\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?)?(?P<rest>\D.*)?$")
_RC = re.compile(r"^-rc(?P<rc>\d+)")
_FINAL = 1 << 30  # a release sorts after every one of its release candidates


@dataclass(frozen=True, order=True)
class KernelVersion:
    """A kernel's major.minor.patch (and -rcN), totally ordered; str() is the text it was parsed from."""

    major: int
    minor: int
    patch: int = 0
    rc: int = _FINAL  # the N of -rcN; _FINAL for a release
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> KernelVersion | None:
        """The version of a kernels.yaml id or a ``uname -r``; None when ``text`` does not start with one."""
        match = _VERSION.match(text.strip())
        if match is None:
            return None
        rest = match["rest"] or ""
        rc = _RC.match(rest)
        return cls(
            int(match["major"]),
            int(match["minor"] or 0),
            int(match["patch"] or 0),
            int(rc["rc"]) if rc else _FINAL,
            text.strip(),
        )

    @property
    def is_rc(self) -> bool:
        return self.rc != _FINAL

    @property
    def major_minor(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        if self.text:
            return self.text
        base = f"{self.major}.{self.minor}" + (f".{self.patch}" if self.patch else "")
        return base + (f"-rc{self.rc}" if self.is_rc else "")


_ZERO = KernelVersion(0, 0)


def version_key(text: str, unparsable_last: bool = False) -> tuple[int, KernelVersion, str]:
    """A sort key for kernel ids or releases by version; unparsable ones ("sid") first, or last.

    The text breaks ties, so that the order never depends on the order the ids came in.
    """
    parsed = KernelVersion.parse(text)
    if parsed is None:
        return (1 if unparsable_last else -1, _ZERO, text)
    return (0, parsed, text)
