"""The compatibility matrix: one test per probe × kernel × arch × check (see harness.plugin).

Offline checks read the kernel's facts (collected in its first boot, then cached); in-guest checks
share one boot per (kernel, arch). A failure is an incompatibility of the probe; an error is the
harness's or the VM's, never the probe's.
"""

import pytest


@pytest.mark.bpf_check("symbol")
def test_symbol(matrix_cell):
    """The target exists and can be attached to (kallsyms, ftrace, BTF, tracepoints, LSM hooks)."""
    matrix_cell.verify()


@pytest.mark.bpf_check("prototype")
def test_prototype(matrix_cell):
    """The target's parameters are those of the baseline kernel."""
    matrix_cell.verify()


@pytest.mark.bpf_check("layout")
def test_layout(matrix_cell):
    """Every struct field the program reads through CO-RE exists (or is guarded)."""
    matrix_cell.verify()


@pytest.mark.bpf_check("tp_format")
def test_tp_format(matrix_cell):
    """The tracepoint's fields are where the baseline kernel has them."""
    matrix_cell.verify()


@pytest.mark.bpf_check("load")
def test_load(matrix_cell):
    """The verifier accepts the program."""
    matrix_cell.verify()


@pytest.mark.bpf_check("core")
def test_core(matrix_cell):
    """libbpf resolves the program's CO-RE relocations."""
    matrix_cell.verify()


@pytest.mark.bpf_check("attach")
def test_attach(matrix_cell):
    """The program attaches to its hook."""
    matrix_cell.verify()


@pytest.mark.bpf_check("fire")
def test_fire(matrix_cell):
    """The program runs after its trigger, without missed executions."""
    matrix_cell.verify()


@pytest.mark.bpf_check("uprobe")
def test_uprobe(matrix_cell):
    """The user-space target exists, is not inlined, and sits at the offset the probe uses."""
    matrix_cell.verify()


@pytest.mark.bpf_check("features")
def test_features(matrix_cell):
    """The kernel has the program's type, and its helpers (for that type), kfuncs and map types."""
    matrix_cell.verify()
