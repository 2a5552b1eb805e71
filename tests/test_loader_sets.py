"""Loader-set parameters from a sidecar reach the guest and change the outcome (boots kernels-ci.yaml's 5.10).

One run, one boot: bpf_progs/loader_sets three times over, with its sidecar, with a sidecar that sizes the
maps but leaves the placeholder target, and with none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.report.results import CellResult, Check, Matrix, Outcome
from tests.conftest import CI_KERNELS, run_matrix

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "bpf_progs" / "loader_sets"
MAPS_ONLY = """\
loader:
  maps:
    stackmap: {max_entries: 256, value_size: 1016}
    counts: {value_size: 8}
  autoload: {never_loaded: false}
"""


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    tmp = tmp_path_factory.mktemp("loader-sets")
    progs = tmp / "progs"
    progs.mkdir()
    for name in ("loader_sets", "no_sidecar", "maps_only"):
        shutil.copy2(SAMPLE.with_suffix(".bpf.c"), progs / f"{name}.bpf.c")
    shutil.copy2(SAMPLE.with_suffix(".yaml"), progs / "loader_sets.yaml")
    (progs / "maps_only.yaml").write_text(MAPS_ONLY)
    proc = run_matrix(tmp, "--kernels", str(CI_KERNELS), "--kernel", "5.10-x86_64", "--bpf-progs", str(progs),
                      "--no-expectations", "-n", "1")
    out = tmp / "matrix.json"
    assert out.exists(), (proc.stdout + proc.stderr)[-4000:]
    return Matrix.deserialize(json.loads(out.read_text()))


def cell(matrix: Matrix, obj: str, program: str, check: Check) -> CellResult:
    (found,) = [
        r for r in matrix.records if (r.probe.object, r.probe.program, r.check) == (obj, program, check)
    ]
    return found


@pytest.mark.integration
def test_with_its_sidecar_the_retargeted_fentry_loads_and_fires(matrix: Matrix) -> None:
    load = cell(matrix, "loader_sets", "file_open", Check.LOAD)
    assert load.outcome is Outcome.PASS, load.reason
    assert "attached to `vfs_open` as its loader sets it" in load.reason
    sets = {(s["what"], s["name"]): s for s in load.details["loader_set"]}
    assert sets[("map", "stackmap")]["by"] == "sidecar"
    assert "max_entries 256" in sets[("map", "stackmap")]["text"]
    assert "value_size 1016" in sets[("map", "stackmap")]["text"]
    assert "value_size 8" in sets[("map", "counts")]["text"]
    assert sets[("data", "with_stacks")]["text"].startswith(".rodata with_stacks = 0x01")
    fire = cell(matrix, "loader_sets", "file_open", Check.FIRE)
    assert fire.outcome is Outcome.PASS, fire.reason
    # The offline checks look at the loader's target, not the placeholder.
    assert cell(matrix, "loader_sets", "file_open", Check.SYMBOL).outcome is Outcome.PASS
    assert cell(matrix, "loader_sets", "file_open", Check.SYMBOL).probe.target == "vfs_open"


@pytest.mark.integration
@pytest.mark.parametrize("check", [Check.SYMBOL, Check.LOAD, Check.ATTACH, Check.FIRE])
def test_the_program_the_loader_leaves_out_is_skipped(matrix: Matrix, check: Check) -> None:
    found = cell(matrix, "loader_sets", "never_loaded", check)
    assert (found.outcome, found.reason) == (Outcome.SKIP, "left out by the loader (autoload off)")


@pytest.mark.integration
def test_without_the_target_the_placeholder_fails_to_load(matrix: Matrix) -> None:
    # The target is absent: the load cell points at the symbol check, the guest's reason in its details.
    load = cell(matrix, "maps_only", "file_open", Check.LOAD)
    assert load.outcome is Outcome.SKIP
    assert load.reason == "target `dummy_file_open` absent on 5.10: see symbol"
    assert "failed to find kernel BTF type ID of 'dummy_file_open'" in load.details["guest_reason"]
    symbol = cell(matrix, "maps_only", "file_open", Check.SYMBOL)
    assert symbol.outcome is Outcome.FAIL and "dummy_file_open" in symbol.reason


@pytest.mark.integration
def test_without_a_sidecar_the_map_the_loader_sizes_fails_to_be_created(matrix: Matrix) -> None:
    load = cell(matrix, "no_sidecar", "file_open", Check.LOAD)
    assert load.outcome is Outcome.SKIP  # its placeholder target is absent too: see symbol
    assert "map 'counts': failed to create" in load.details["guest_reason"]
    # The stack map the object leaves at zero the harness sized, and says so.
    sets = {s["name"]: s for s in load.details["loader_set"]}
    assert sets["stackmap"]["by"] == "harness"
    assert "sized by the harness" in load.details["notes"]
