"""BPF instructions as small values: the decoding of a program's bytes (the eBPF ISA, RFC 9669)."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from harness.errors import ObjectError

INSN_SIZE = 8

# Instruction classes (the low three bits of the opcode).
CLASS_LD = 0x00
CLASS_LDX = 0x01
CLASS_ST = 0x02
CLASS_STX = 0x03
CLASS_ALU = 0x04
CLASS_JMP = 0x05
CLASS_JMP32 = 0x06
CLASS_ALU64 = 0x07

# Load/store modes and sizes.
MODE_IMM = 0x00
MODE_ABS = 0x20
MODE_IND = 0x40
MODE_MEM = 0x60
MODE_MEMSX = 0x80  # sign-extending load (ISA v4, clang -mcpu=v4)
MODE_ATOMIC = 0xC0
SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}

# ALU and jump operations (the high four bits of the opcode).
ALU_ADD = 0x00
ALU_MOV = 0xB0
JMP_JA = 0x00
JMP_JEQ = 0x10
JMP_JNE = 0x50
JMP_CALL = 0x80
JMP_EXIT = 0x90
SOURCE_X = 0x08  # the source operand is src_reg, else imm

# src_reg of a call: a helper (by number), a BPF-to-BPF call (pc-relative), a kfunc (by BTF id).
CALL_HELPER = 0
CALL_PSEUDO = 1
CALL_KFUNC = 2

# src_reg of an ld_imm64: a plain constant, a map fd, a map value, a kernel BTF id, ...
LD_IMM64 = CLASS_LD | MODE_IMM | 0x18
PSEUDO_MAP_FD = 1
PSEUDO_MAP_VALUE = 2
PSEUDO_BTF_ID = 3
PSEUDO_FUNC = 4

CTX_REG = 1  # the program's context pointer on entry
RET_REG = 0
FRAME_REG = 10


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction at slot ``index`` (8-byte units from the program's start); an ld_imm64
    takes two slots and ``imm`` is its whole 64-bit constant."""

    index: int
    opcode: int
    dst: int
    src: int
    off: int
    imm: int

    @property
    def cls(self) -> int:
        return self.opcode & 0x07

    @property
    def slots(self) -> int:
        return 2 if self.opcode == LD_IMM64 else 1

    @property
    def op(self) -> int:
        """The ALU or jump operation (high four bits) of an ALU or jump instruction."""
        return self.opcode & 0xF0

    @property
    def mode(self) -> int:
        return self.opcode & 0xE0

    @property
    def size(self) -> int:
        """The access width in bytes of a load or store."""
        return SIZES[self.opcode & 0x18]

    @property
    def uses_src_reg(self) -> bool:
        return bool(self.opcode & SOURCE_X)

    @property
    def is_alu(self) -> bool:
        return self.cls in (CLASS_ALU, CLASS_ALU64)

    @property
    def is_jump_class(self) -> bool:
        return self.cls in (CLASS_JMP, CLASS_JMP32)

    @property
    def is_call(self) -> bool:
        return self.cls == CLASS_JMP and self.op == JMP_CALL

    @property
    def is_helper_call(self) -> bool:
        return self.is_call and self.src == CALL_HELPER

    @property
    def is_subprogram_call(self) -> bool:
        return self.is_call and self.src == CALL_PSEUDO

    @property
    def is_kfunc_call(self) -> bool:
        return self.is_call and self.src == CALL_KFUNC

    @property
    def is_exit(self) -> bool:
        return self.cls == CLASS_JMP and self.op == JMP_EXIT

    @property
    def is_unconditional_jump(self) -> bool:
        return self.is_jump_class and self.op == JMP_JA

    @property
    def is_conditional_jump(self) -> bool:
        return self.is_jump_class and self.op not in (JMP_JA, JMP_CALL, JMP_EXIT)

    @property
    def is_load(self) -> bool:
        """A memory load ``dst = *(size *)(src + off)`` (plain or sign-extending)."""
        return self.cls == CLASS_LDX and self.mode in (MODE_MEM, MODE_MEMSX)

    @property
    def is_signed_load(self) -> bool:
        return self.cls == CLASS_LDX and self.mode == MODE_MEMSX

    @property
    def is_ld_imm64(self) -> bool:
        return self.opcode == LD_IMM64

    @property
    def is_register_move(self) -> bool:
        """``dst = src`` as a whole 64-bit register (not a sign-extending move: off is 0)."""
        return self.cls == CLASS_ALU64 and self.op == ALU_MOV and self.uses_src_reg and self.off == 0

    @property
    def jump_target(self) -> int | None:
        """The slot a jump goes to when taken (None for other instructions, calls and exit).

        ``ja`` in the JMP32 class (``gotol``, ISA v4) carries its offset in imm.
        """
        if not self.is_jump_class or self.op in (JMP_CALL, JMP_EXIT):
            return None
        offset = self.imm if self.cls == CLASS_JMP32 and self.op == JMP_JA else self.off
        return self.index + 1 + offset

    @property
    def call_target(self) -> int | None:
        """The slot a BPF-to-BPF call (pc-relative) goes to; None for other instructions."""
        return self.index + 1 + self.imm if self.is_subprogram_call else None


def iter_instructions(
    data: bytes, little_endian: bool = True, name: str = "program"
) -> Iterator[Instruction]:
    """Decode ``data`` (a program's bytes, a whole number of 8-byte slots) into instructions.

    Raises ObjectError naming ``name`` for a length that is not a multiple of 8 or an ld_imm64 cut
    off at the end.
    """
    if len(data) % INSN_SIZE:
        raise ObjectError(f"{name}: {len(data)} bytes is not a whole number of BPF instructions")
    order = "<" if little_endian else ">"
    count = len(data) // INSN_SIZE
    index = 0
    while index < count:
        opcode, regs, off, imm = struct.unpack_from(order + "BBhi", data, index * INSN_SIZE)
        dst, src = (regs & 0x0F, regs >> 4) if little_endian else (regs >> 4, regs & 0x0F)
        if opcode == LD_IMM64:
            if index + 1 >= count:
                raise ObjectError(f"{name}: ld_imm64 at instruction {index} has no second half")
            (high,) = struct.unpack_from(order + "i", data, (index + 1) * INSN_SIZE + 4)
            imm = (imm & 0xFFFFFFFF) | (high << 32)
        yield Instruction(index, opcode, dst, src, off, imm)
        index += 2 if opcode == LD_IMM64 else 1


def decode_instructions(data: bytes, little_endian: bool = True, name: str = "program") -> list[Instruction]:
    """All instructions of ``data`` (see iter_instructions)."""
    return list(iter_instructions(data, little_endian, name))


def instruction_at(insns: Sequence[Instruction], index: int) -> Instruction | None:
    """The instruction starting at slot ``index`` of a decoded stream (None inside an ld_imm64 or outside)."""
    lo, hi = 0, len(insns)
    while lo < hi:
        mid = (lo + hi) // 2
        if insns[mid].index < index:
            lo = mid + 1
        else:
            hi = mid
    return insns[lo] if lo < len(insns) and insns[lo].index == index else None
