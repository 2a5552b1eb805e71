"""Load reasons from real libbpf logs: kept guest records of Debian's libbpf-tools objects on its 6.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks.guest import root_cause

LOGS = Path(__file__).resolve().parent / "data" / "libbpf-logs"


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        # fsslower's fentry on a placeholder its loader replaces (libbpf 1.1, 6.1 x86_64).
        ("fsslower-file_open_fentry.6.1-x86_64.log",
         "no `dummy_file_open` in the kernel's BTF to attach to "
         "(failed to find kernel BTF type ID of 'dummy_file_open')"),
        # biosnoop's tp_btf on block_io_start, a tracepoint new in 6.5.
        ("biosnoop-block_io_start.6.1-x86_64.log",
         "no `block_io_start` in the kernel's BTF to attach to "
         "(failed to find kernel BTF type ID of 'block_io_start')"),
        # cachestat's fentry on account_page_dirtied, gone by 6.1.
        ("cachestat-fentry_account_page_dirtied.6.1-x86_64.log",
         "no `account_page_dirtied` in the kernel's BTF to attach to "
         "(failed to find kernel BTF type ID of 'account_page_dirtied')"),
        # capable's stack map, which its loader sizes, loaded as the object has it (no harness sizing).
        ("capable-kprobe__cap_capable_entry.6.1-x86_64.log",
         "map 'stackmap': failed to create: Invalid argument"),
    ],
)
def test_real_load_logs_give_their_root_cause(name: str, cause: str) -> None:
    log = (LOGS / name).read_text()
    assert "failed to load object" in log  # the generic tail is there, and is not the reason
    assert root_cause(log) == cause
