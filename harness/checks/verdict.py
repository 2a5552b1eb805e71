"""A check's verdict before it becomes a result record: outcome, the one-line reason and the details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.report.results import Outcome


@dataclass(frozen=True)
class Verdict:
    """What a check concluded about one probe on one kernel; ``details`` go into the record as they are."""

    outcome: Outcome
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
