"""A kernel's BPF features as its guest's ``bpftool feature probe`` found them, in three states."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from harness.errors import HarnessError

_PROG_TYPE = ("have_", "_prog_type")
_MAP_TYPE = ("have_", "_map_type")
_HELPERS = "_available_helpers"

# Program types whose helpers bpftool cannot probe (a load needs an attach target in BTF), each with
# the probed type whose helpers it can call too: the kernel's tracing_prog_func_proto ends in
# raw_tp_prog_func_proto, and bpf_lsm_func_proto in tracing_prog_func_proto (5.7+).
HELPERS_OF_SUPERSET: Mapping[str, str] = {"tracing": "raw_tracepoint", "lsm": "raw_tracepoint"}


class FeaturesError(HarnessError):
    """A feature probe file is not bpftool's JSON."""


class Support(str, Enum):
    """Whether a kernel has a feature; UNKNOWN when the probe could not tell (never a failure)."""

    SUPPORTED = "supported"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"


def _tri(value: bool | None) -> Support:
    return Support.UNKNOWN if value is None else Support.SUPPORTED if value else Support.UNSUPPORTED


@dataclass(frozen=True)
class KernelFeatures:
    """Program types, map types and helpers per program type of one kernel.

    ``error`` says why nothing is known (bpftool missing or failed, facts collected before feature
    probes): every question is then UNKNOWN.
    """

    prog_types: Mapping[str, bool] = field(default_factory=dict)
    map_types: Mapping[str, bool] = field(default_factory=dict)
    # program type -> the helpers a program of it may call; only types whose helpers were probed
    helpers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def unknown(cls, why: str) -> KernelFeatures:
        return cls(error=why)

    def prog_type(self, name: str) -> Support:
        return _tri(self.prog_types.get(name))

    def map_type(self, name: str) -> Support:
        return _tri(self.map_types.get(name))

    def helper(self, prog_type: str, helper: str) -> Support:
        """Whether a program of ``prog_type`` may call ``helper`` (``bpf_get_socket_cookie``)."""
        allowed = self.helpers.get(prog_type)
        if allowed is not None:
            return Support.SUPPORTED if helper in allowed else Support.UNSUPPORTED
        superset = HELPERS_OF_SUPERSET.get(prog_type)
        if superset is not None and helper in self.helpers.get(superset, frozenset()):
            return Support.SUPPORTED
        return Support.UNKNOWN

    def helper_anywhere(self, helper: str) -> bool:
        """Whether any probed program type may call ``helper``."""
        return any(helper in found for found in self.helpers.values())


def parse_features(text: str, name: str = "features.json") -> KernelFeatures:
    """Parse ``bpftool feature probe kernel -j`` output; raises FeaturesError naming ``name``.

    bpftool 7.1 and 7.5 print the same sections (``program_types``, ``map_types``, ``helpers``) but
    not the same keys in them: unknown keys are ignored. A program type whose helper list is empty
    had its helpers not probed (tracing, lsm, ext, struct_ops need an attach target; some types need
    a device): its helpers are unknown, not absent.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeaturesError(f"{name}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise FeaturesError(f"{name}: expected bpftool's feature object, got {text[:60]!r}")
    prog_types = _flags(data.get("program_types"), _PROG_TYPE)
    map_types = _flags(data.get("map_types"), _MAP_TYPE)
    helpers: dict[str, frozenset[str]] = {}
    section = data.get("helpers")
    if isinstance(section, dict):
        for key, value in section.items():
            if not key.endswith(_HELPERS):
                continue
            if isinstance(value, dict):  # {"bpf_x": true, ...}
                value = [k for k, v in value.items() if v]
            if isinstance(value, list) and value:
                helpers[key[: -len(_HELPERS)]] = frozenset(str(v) for v in value)
    if not prog_types and not map_types:
        raise FeaturesError(f"{name}: no program_types or map_types: not bpftool's feature probe")
    return KernelFeatures(prog_types, map_types, helpers)


def _flags(section: object, affixes: tuple[str, str]) -> dict[str, bool]:
    prefix, suffix = affixes
    found: dict[str, bool] = {}
    if isinstance(section, dict):
        for key, value in section.items():
            if key.startswith(prefix) and key.endswith(suffix) and isinstance(value, bool):
                found[key[len(prefix): -len(suffix)]] = value
    return found
