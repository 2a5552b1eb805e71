"""Control and data flow of a BPF program: basic blocks, and a forward analysis of what registers hold.

A register (or an 8-byte fp-relative stack slot) may hold the program's context pointer plus an offset,
a constant, or the value of an existence CO-RE relocation (field_exists, type_exists, ...) as it
resolves on one kernel. The analysis answers two questions, both pure:

- which context slots a program loads (``ctx_reads``): the arguments a probe reads;
- which instructions a kernel can reach (``reach``) when the conditional jumps on existence checks are
  decided by that kernel's answers, which is how the verifier sees a guarded CO-RE read (libbpf patches
  the check to a constant, and the verifier never walks the branch the constant rules out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from harness.programs.insns import (
    ALU_ADD,
    ALU_MOV,
    CLASS_ALU,
    CLASS_ALU64,
    CLASS_JMP32,
    CLASS_LDX,
    CLASS_ST,
    CLASS_STX,
    CTX_REG,
    FRAME_REG,
    INSN_SIZE,
    MODE_MEM,
    Instruction,
)

# Helpers that copy kernel memory: bpf_probe_read (4) and bpf_probe_read_kernel (113), as BPF_CORE_READ
# and the CO-RE PT_REGS accessors use them (dst r1, size r2, source r3).
PROBE_READ_HELPERS = frozenset({4, 113})
_ARG_REGS = range(1, 6)
_CALLER_SAVED = range(0, 6)

# A site: (ELF section, byte offset of the instruction in it), as .BTF.ext records instructions.
Site = tuple[str, int]


@dataclass(frozen=True)
class Function:
    """One function of a program's code: its instructions, where they sit, and the subprograms it calls."""

    name: str
    section: str
    offset: int  # byte offset of the first instruction in its section
    insns: tuple[Instruction, ...]
    calls: Mapping[int, str] = field(default_factory=dict)  # slot of a BPF-to-BPF call -> callee name

    def site(self, insn: Instruction) -> Site:
        return self.section, self.offset + insn.index * INSN_SIZE


@dataclass(frozen=True)
class ProgramCode:
    """A program as libbpf links it: its own function first, then every subprogram it may call."""

    name: str
    functions: tuple[Function, ...]

    @property
    def entry(self) -> Function:
        return self.functions[0]


@dataclass(frozen=True)
class BasicBlock:
    """Instructions ``start`` .. ``end`` (positions in the function's list, end exclusive) and the
    positions of the blocks control may go to next."""

    start: int
    end: int
    successors: tuple[int, ...]


def build_blocks(insns: Sequence[Instruction]) -> dict[int, BasicBlock]:
    """The basic blocks of one function, by the position of their first instruction.

    A jump out of the function (malformed or cut code) ends its block without a successor there.
    """
    position = {insn.index: pos for pos, insn in enumerate(insns)}
    leaders = {0} if insns else set()
    for pos, insn in enumerate(insns):
        target = insn.jump_target
        if target is not None and target in position:
            leaders.add(position[target])
        if (target is not None or insn.is_exit) and pos + 1 < len(insns):
            leaders.add(pos + 1)
    starts = sorted(leaders)
    blocks: dict[int, BasicBlock] = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(insns)
        last = insns[end - 1]
        succ: list[int] = []
        target = last.jump_target
        if target is not None and target in position:
            succ.append(position[target])
        falls_through = not last.is_exit and not last.is_unconditional_jump
        if falls_through and end < len(insns):
            succ.append(end)
        blocks[start] = BasicBlock(start, end, tuple(dict.fromkeys(succ)))
    return blocks


# --- what a register holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class CtxPointer:
    """The context pointer plus ``offset`` bytes (None: an offset the analysis does not know)."""

    offset: int | None = 0


@dataclass(frozen=True)
class Constant:
    """A known number; ``site`` is the existence relocation it came from (None for a plain constant)."""

    value: int
    site: Site | None = None


Value = CtxPointer | Constant


@dataclass(frozen=True)
class CtxRead:
    """A load of ``size`` bytes at ``offset`` into the context: directly, or through a probe-read helper
    (``via_helper``, as BPF_CORE_READ of a pt_regs field does), at instruction ``site``. ``offset`` is
    None for a computed one (``&ctx[cond ? 2 : 1]``): then any slot may be read."""

    offset: int | None
    size: int
    signed: bool
    via_helper: bool
    site: Site


@dataclass
class _State:
    regs: dict[int, Value]
    stack: dict[int, Value]

    def copy(self) -> _State:
        return _State(dict(self.regs), dict(self.stack))

    def join(self, other: _State) -> bool:
        """Keep what both agree on (the context at two offsets is the context at an unknown one); True
        when this state lost something."""
        before = (self.regs, self.stack)
        self.regs = _join_values(self.regs, other.regs)
        self.stack = _join_values(self.stack, other.stack)
        return (self.regs, self.stack) != before


def _join_values(mine: dict[int, Value], theirs: dict[int, Value]) -> dict[int, Value]:
    joined: dict[int, Value] = {}
    for key, value in mine.items():
        other = theirs.get(key)
        if other == value:
            joined[key] = value
        elif isinstance(value, CtxPointer) and isinstance(other, CtxPointer):
            joined[key] = CtxPointer(None)
    return joined


_MASK64 = (1 << 64) - 1


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def decide_jump(insn: Instruction, left: int, right: int) -> bool:
    """Whether conditional jump ``insn`` is taken for operands ``left`` (dst) and ``right``."""
    bits = 32 if insn.cls == CLASS_JMP32 else 64
    ul, ur = left & ((1 << bits) - 1), right & ((1 << bits) - 1)
    sl, sr = _signed(left, bits), _signed(right, bits)
    ops = {
        0x10: ul == ur, 0x50: ul != ur, 0x20: ul > ur, 0x30: ul >= ur, 0xA0: ul < ur, 0xB0: ul <= ur,
        0x40: bool(ul & ur), 0x60: sl > sr, 0x70: sl >= sr, 0xC0: sl < sr, 0xD0: sl <= sr,
    }
    return ops.get(insn.op, True)


@dataclass(frozen=True)
class Reach:
    """What one kernel's existence answers leave of a program: reachable sites, and the existence
    checks whose answer cut a branch off."""

    sites: frozenset[Site]
    deciding: frozenset[Site]  # existence relocation sites that decided a jump


class _Analysis:
    """The forward data flow over one program's functions (a worklist over basic blocks)."""

    def __init__(self, code: ProgramCode, exists: Mapping[Site, int]) -> None:
        self.code = code
        self.exists = exists
        self.by_name = {f.name: f for f in code.functions}
        self.blocks = {f.name: build_blocks(f.insns) for f in code.functions}
        self.states: dict[tuple[str, int], _State] = {}
        # One read per instruction, from its last (most general) visit: states only widen.
        self.reads: dict[Site, CtxRead] = {}
        self.deciding: set[Site] = set()

    def run(self) -> None:
        entry = self.code.entry
        if not entry.insns:
            return
        todo: list[tuple[str, int]] = []
        self._enter(entry.name, 0, _State({CTX_REG: CtxPointer()}, {}), todo)
        while todo:
            key = todo.pop()
            fname, start = key
            state = self.states[key].copy()
            func = self.by_name[fname]
            block = self.blocks[fname][start]
            for pos in range(block.start, block.end - 1):
                self._step(func, func.insns[pos], state, todo)
            last = func.insns[block.end - 1]
            taken = self._branch(func, last, state)
            self._step(func, last, state, todo)
            for succ in block.successors:
                is_target = last.jump_target is not None and func.insns[succ].index == last.jump_target
                if taken is None or taken == is_target or (is_target and succ == block.end):
                    self._enter(fname, succ, state, todo)

    def _enter(self, fname: str, start: int, state: _State, todo: list[tuple[str, int]]) -> None:
        key = (fname, start)
        known = self.states.get(key)
        if known is None:
            self.states[key] = state.copy()
            todo.append(key)
        elif known.join(state):
            todo.append(key)

    def _branch(self, func: Function, insn: Instruction, state: _State) -> bool | None:
        """Whether a conditional jump on an existence check is taken (None: either way, or no jump)."""
        if not insn.is_conditional_jump:
            return None
        left = state.regs.get(insn.dst)
        right = state.regs.get(insn.src) if insn.uses_src_reg else Constant(insn.imm)
        if not isinstance(left, Constant) or not isinstance(right, Constant):
            return None
        if left.site is None and right.site is None:
            return None  # only existence answers decide: the rest is the program's own logic
        for value in (left, right):
            if value.site is not None:
                self.deciding.add(value.site)
        return decide_jump(insn, left.value, right.value)

    def _step(self, func: Function, insn: Instruction, state: _State, todo: list[tuple[str, int]]) -> None:
        regs = state.regs
        site = func.site(insn)
        if insn.is_call:
            self._call(func, insn, state, todo)
            return
        if insn.is_ld_imm64 or (insn.is_alu and insn.op == ALU_MOV and not insn.uses_src_reg):
            if site in self.exists:
                regs[insn.dst] = Constant(self.exists[site], site)
            elif insn.is_ld_imm64 and insn.src != 0:
                regs.pop(insn.dst, None)  # a map or BTF id, not a number the program computes with
            else:
                regs[insn.dst] = Constant(insn.imm & (_MASK64 if insn.cls != CLASS_ALU else 0xFFFFFFFF))
            return
        if insn.is_register_move or (insn.cls == CLASS_ALU and insn.op == ALU_MOV and insn.uses_src_reg):
            value = regs.get(insn.src)
            if insn.cls == CLASS_ALU and not isinstance(value, Constant):
                value = None  # a 32-bit move keeps a number, not a pointer
            self._set(regs, insn.dst, value)
            return
        if insn.cls == CLASS_ALU64 and insn.op == ALU_ADD and not insn.uses_src_reg:
            value = regs.get(insn.dst)
            self._set(regs, insn.dst, _moved(value, insn.imm) if isinstance(value, CtxPointer) else None)
            return
        if insn.cls == CLASS_ALU64 and insn.op == ALU_ADD and insn.uses_src_reg:
            value, other = regs.get(insn.dst), regs.get(insn.src)
            # ctx + a constant register: how clang adds a relocated offset (``r1 = 112; r3 += r1``).
            if isinstance(value, CtxPointer):
                self._set(regs, insn.dst, _moved(value, other.value if isinstance(other, Constant) else None))
            elif isinstance(other, CtxPointer):
                self._set(regs, insn.dst, _moved(other, value.value if isinstance(value, Constant) else None))
            else:
                regs.pop(insn.dst, None)
            return
        if insn.is_alu:
            regs.pop(insn.dst, None)
            return
        if insn.cls == CLASS_LDX:
            self._load(insn, state, site)
            return
        if insn.cls in (CLASS_STX, CLASS_ST):
            self._store(insn, state)

    @staticmethod
    def _set(regs: dict[int, Value], reg: int, value: Value | None) -> None:
        if value is None:
            regs.pop(reg, None)
        else:
            regs[reg] = value

    def _load(self, insn: Instruction, state: _State, site: Site) -> None:
        base = state.regs.get(insn.src)
        value: Value | None = None
        if insn.src == FRAME_REG and insn.size == 8 and insn.is_load:
            value = state.stack.get(insn.off)
        elif isinstance(base, CtxPointer) and insn.is_load:
            offset = None if base.offset is None else base.offset + insn.off
            self.reads[site] = CtxRead(offset, insn.size, insn.is_signed_load, False, site)
        self._set(state.regs, insn.dst, value)

    def _store(self, insn: Instruction, state: _State) -> None:
        if insn.dst != FRAME_REG:
            return
        # Overlapping slots are forgotten: a narrower store changes part of a spilled value.
        for slot in [s for s in state.stack if s < insn.off + insn.size and insn.off < s + 8]:
            del state.stack[slot]
        value = state.regs.get(insn.src) if insn.cls == CLASS_STX else None
        if insn.cls == CLASS_STX and insn.mode == MODE_MEM and insn.size == 8 and value is not None:
            state.stack[insn.off] = value

    def _call(self, func: Function, insn: Instruction, state: _State, todo: list[tuple[str, int]]) -> None:
        regs = state.regs
        if insn.is_helper_call and insn.imm in PROBE_READ_HELPERS:
            src, size = regs.get(3), regs.get(2)
            if isinstance(src, CtxPointer):
                site = func.site(insn)
                width = size.value if isinstance(size, Constant) else 0
                self.reads[site] = CtxRead(src.offset, width, False, True, site)
        callee = func.calls.get(insn.index)
        if callee is not None and callee in self.by_name and self.blocks[callee]:
            args = {r: v for r, v in regs.items() if r in _ARG_REGS}
            self._enter(callee, 0, _State(args, {}), todo)
        for reg in _CALLER_SAVED:
            regs.pop(reg, None)

    def reachable(self) -> frozenset[Site]:
        found: set[Site] = set()
        for (fname, start) in self.states:
            func = self.by_name[fname]
            block = self.blocks[fname][start]
            found.update(func.site(func.insns[pos]) for pos in range(block.start, block.end))
        return frozenset(found)


def _moved(pointer: CtxPointer, by: int | None) -> CtxPointer:
    if pointer.offset is None or by is None:
        return CtxPointer(None)
    return CtxPointer(pointer.offset + by)


def reach(code: ProgramCode, exists: Mapping[Site, int]) -> Reach:
    """The sites a kernel can reach, given the value each existence relocation site (``exists``) takes
    there (1 when the field, type or enumerator exists, else 0)."""
    analysis = _Analysis(code, exists)
    analysis.run()
    return Reach(analysis.reachable(), frozenset(analysis.deciding))


def ctx_reads(code: ProgramCode) -> tuple[CtxRead, ...]:
    """Every context slot the program loads, on any path, ordered by offset."""
    analysis = _Analysis(code, {})
    analysis.run()
    return tuple(sorted(analysis.reads.values(), key=lambda r: (r.offset is None, r.offset or 0, r.site)))


def deciding_guards(code: ProgramCode, exists: Mapping[Site, int], site: Site) -> tuple[Site, ...]:
    """The existence checks that keep ``site`` unreachable: each one, answered "unknown" instead,
    lets a path reach it. Empty when ``site`` is reachable."""
    full = reach(code, exists)
    if site in full.sites:
        return ()
    found = []
    for guard in sorted(full.deciding):
        without = {s: v for s, v in exists.items() if s != guard}
        if site in reach(code, without).sites:
            found.append(guard)
    return tuple(found) or tuple(sorted(full.deciding))


def sites_of(code: ProgramCode) -> Iterable[Site]:
    """Every instruction site of the program's code."""
    for func in code.functions:
        for insn in func.insns:
            yield func.site(insn)
