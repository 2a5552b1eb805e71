"""The .BTF.ext section of a BPF object: its header and the raw bpf_core_relo records, section by section."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from harness.errors import BTFError

# sizeof(struct btf_ext_header) without, and with, the CO-RE relocation fields (libbpf >= 0.0.6).
BTF_EXT_MIN_HEADER_LEN = 24
BTF_EXT_CORE_HEADER_LEN = 32
# sizeof(struct bpf_core_relo): a bigger record size is allowed (newer fields are skipped).
_CORE_RELO_MIN_SIZE = 16


class RawCoreRelo(NamedTuple):
    """struct bpf_core_relo as stored: the access string is an offset into the .BTF strings."""

    insn_off: int
    type_id: int
    access_off: int
    kind: int


def _byte_order(data: bytes, name: str) -> str:
    if len(data) < 8:
        raise BTFError(f"{name}: {len(data)} bytes is too short for a BTF.ext header")
    if data[0:2] == b"\x9f\xeb":
        return "<"
    if data[0:2] == b"\xeb\x9f":
        return ">"
    raise BTFError(f"{name}: bad BTF.ext magic 0x{data[0:2].hex()} (expected 0xeb9f)")


def _core_relo_bounds(data: bytes, name: str, order: str) -> tuple[int, int] | None:
    """(start, end) of the CO-RE relocation subsection, or None when there is none."""
    (hdr_len,) = struct.unpack_from(order + "I", data, 4)
    if hdr_len < BTF_EXT_MIN_HEADER_LEN or hdr_len > len(data):
        raise BTFError(f"{name}: bad BTF.ext header length {hdr_len}")
    if hdr_len < BTF_EXT_CORE_HEADER_LEN:
        return None
    core_off, core_len = struct.unpack_from(order + "II", data, 24)
    if core_len == 0:
        return None
    start = hdr_len + core_off
    end = start + core_len
    if end > len(data) or core_len < 4:
        raise BTFError(f"{name}: CO-RE relocation section {core_off}+{core_len} out of bounds")
    return start, end


def iter_core_relo_sections(data: bytes, name: str = ".BTF.ext") -> Iterator[tuple[int, list[RawCoreRelo]]]:
    """(string offset of the ELF section name, its records) for each section with CO-RE relocations.

    Yields nothing when the .BTF.ext predates CO-RE records. Raises BTFError when malformed; a
    section is checked whole before it is yielded, the next one only when asked for.
    """
    order = _byte_order(data, name)
    bounds = _core_relo_bounds(data, name, order)
    if bounds is None:
        return
    start, end = bounds
    (rec_size,) = struct.unpack_from(order + "I", data, start)
    if rec_size < _CORE_RELO_MIN_SIZE:
        raise BTFError(f"{name}: CO-RE relocation record size {rec_size} is below 16")
    pos = start + 4
    while pos < end:
        if pos + 8 > end:
            raise BTFError(f"{name}: CO-RE relocation section truncated at byte {pos}")
        sec_off, count = struct.unpack_from(order + "II", data, pos)
        pos += 8
        if pos + count * rec_size > end:
            raise BTFError(f"{name}: CO-RE relocation section truncated at byte {pos}")
        records = [
            RawCoreRelo(*struct.unpack_from(order + "IIII", data, pos + i * rec_size)) for i in range(count)
        ]
        pos += count * rec_size
        yield sec_off, records
