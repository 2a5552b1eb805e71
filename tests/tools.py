"""External tools the harness's tests need: a skip outside CI, a failure in CI (``CI=true``).

./setup.sh --dev promises every tool named here. In CI a quiet skip is how a missing install step
stays green, so there a missing tool fails the test that needs it, naming the tool.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
MARK = "needs_tool"


def find(tool: str) -> str | None:
    """The path of ``tool``: a command on PATH (or in /usr/sbin), or an absolute path that exists."""
    if tool.startswith("/"):
        return tool if Path(tool).exists() else None
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def missing(*tools: str) -> list[str]:
    return [t for t in tools if find(t) is None]


def require(*tools: str, why: str = "") -> None:
    """Skip the running test when a tool is missing; in CI, fail it."""
    absent = missing(*tools)
    if not absent:
        return
    because = f" ({why})" if why else ""
    msg = f"{', '.join(absent)} not installed{because}: ./setup.sh --dev installs it"
    if IN_CI:
        pytest.fail(f"CI: {msg}", pytrace=False)
    pytest.skip(msg)


def needs(*tools: str, why: str = "") -> pytest.MarkDecorator:
    """A mark for a test (or ``pytestmark``) that needs ``tools``; checked when the test is set up."""
    return getattr(pytest.mark, MARK)(*tools, why=why)


def check_marks(item: pytest.Item) -> None:
    """Apply every needs_tool mark of ``item`` (called from conftest's pytest_runtest_setup)."""
    for mark in item.iter_markers(MARK):
        require(*mark.args, why=str(mark.kwargs.get("why", "")))
