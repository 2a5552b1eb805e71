"""Writes each fixture's vmlinux.btf from its btf.txt ("FUNC name" / "TYPEDEF name" lines)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

KIND_INT, KIND_PTR, KIND_TYPEDEF, KIND_FUNC, KIND_FUNC_PROTO = 1, 2, 8, 12, 13


def encode_btf(entries: list[tuple[str, str]]) -> bytes:
    """A minimal little-endian vmlinux-like BTF: int, a prototype, a pointer to it, then entries."""
    strings = bytearray(b"\0")

    def add(name: str) -> int:
        off = len(strings)
        strings.extend(name.encode() + b"\0")
        return off

    types = bytearray()
    types += struct.pack("<IIII", add("int"), KIND_INT << 24, 4, (1 << 24) | 32)  # id 1
    types += struct.pack("<III", 0, KIND_FUNC_PROTO << 24, 1)  # id 2: int (void)
    types += struct.pack("<III", 0, KIND_PTR << 24, 2)  # id 3: int (*)(void)
    for kind, name in entries:
        if kind == "FUNC":  # linkage 1: global
            types += struct.pack("<III", add(name), (KIND_FUNC << 24) | 1, 2)
        elif kind == "TYPEDEF":
            types += struct.pack("<III", add(name), KIND_TYPEDEF << 24, 3)
        else:
            raise SystemExit(f"unknown BTF kind {kind!r}")
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)


def main(root: Path) -> None:
    for listing in sorted(root.glob("*/btf.txt")):
        entries = [tuple(line.split()) for line in listing.read_text().splitlines() if line.strip()]
        (listing.parent / "vmlinux.btf").write_bytes(encode_btf(entries))  # type: ignore[arg-type]


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
