"""Tests for harness.programs.insns: hand-assembled streams and a clang-compiled program."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from harness.errors import ObjectError
from harness.programs.elf import open_elf
from harness.programs.insns import decode_instructions, instruction_at
from tests.tools import needs


def insn(opcode: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


def test_decodes_loads_jumps_calls_and_wide_constants() -> None:
    data = (
        insn(0x79, dst=6, src=1, off=112)  # r6 = *(u64 *)(r1 + 112)
        + insn(0x18, dst=1, src=1, imm=0x1234)  # r1 = map fd (ld_imm64, two slots)
        + insn(0, imm=-1)
        + insn(0x15, dst=6, off=1)  # if r6 == 0 goto +1
        + insn(0x85, imm=14)  # call bpf_get_current_pid_tgid
        + insn(0x85, src=2, imm=777)  # call a kfunc
        + insn(0xBF, dst=7, src=1)  # r7 = r1
        + insn(0x95)  # exit
    )
    insns = decode_instructions(data)
    assert [i.index for i in insns] == [0, 1, 3, 4, 5, 6, 7]
    load, wide, jump, helper, kfunc, move, leave = insns
    assert load.is_load and (load.dst, load.src, load.off, load.size) == (6, 1, 112, 8)
    assert wide.is_ld_imm64 and wide.slots == 2 and wide.imm == -(1 << 32) + 0x1234
    assert jump.is_conditional_jump and jump.jump_target == 5
    assert helper.is_helper_call and helper.imm == 14 and not helper.is_kfunc_call
    assert kfunc.is_kfunc_call
    assert move.is_register_move and (move.dst, move.src) == (7, 1)
    assert leave.is_exit and leave.jump_target is None
    assert instruction_at(insns, 3) is jump and instruction_at(insns, 2) is None


def test_big_endian_register_nibbles() -> None:
    data = struct.pack(">BBhi", 0x61, (1 << 4) | 2, 8, 0)  # r1 = *(u32 *)(r2 + 8), big-endian
    (load,) = decode_instructions(data, little_endian=False)
    assert (load.dst, load.src, load.off, load.size) == (1, 2, 8, 4)


@pytest.mark.parametrize("data", [b"\x00" * 7, insn(0x18, dst=1)])
def test_truncated_streams_are_object_errors(data: bytes) -> None:
    with pytest.raises(ObjectError, match="prog"):
        decode_instructions(data, name="prog")


@needs("clang")
def test_clang_program_decodes_to_its_helper_calls(tmp_path: Path) -> None:
    src = tmp_path / "p.bpf.c"
    src.write_text(
        "#define SEC(n) __attribute__((section(n), used))\n"
        "static long (*get_pid)(void) = (void *)14;\n"
        "static long (*ktime)(void) = (void *)5;\n"
        'SEC("kprobe/x") int p(void *ctx) { if (get_pid() & 1) return ktime(); return 0; }\n'
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    out = tmp_path / "p.bpf.o"
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)], check=True, timeout=60)
    with open_elf(out) as elf:
        code = elf.get_section_by_name("kprobe/x").data()
    insns = decode_instructions(code)
    assert [i.imm for i in insns if i.is_helper_call] == [14, 5]
    assert insns[-1].is_exit
    assert any(i.is_conditional_jump for i in insns)
