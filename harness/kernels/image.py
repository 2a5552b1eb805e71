"""Kernel images on the host: decompress bzImage / Image.gz / EFI zboot and take out the vmlinux BTF."""

from __future__ import annotations

import bz2
import lzma
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.btf.spec import parse_btf_header
from harness.errors import BTFError, ObjectError
from harness.programs.elf import open_elf

DECOMPRESS_TIMEOUT = 120.0

# Compressed payload magics, as the kernel's build (scripts/Makefile.lib) writes them.
MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lzma", b"\x5d\x00\x00"),
    ("lz4", b"\x02\x21\x4c\x18"),  # lz4 legacy frame (lz4 -l)
    ("bzip2", b"BZh"),
)

# init/version.c: every kernel holds its banner ("Linux version <release> (<builder>) ...") as is.
LINUX_BANNER = b"Linux version "


class ToolMissingError(BTFError):
    """A stream needs a decompressor that is not installed: nothing can be told of what it holds."""


@dataclass(frozen=True)
class KernelImageCheck:
    """Whether a boot image holds a kernel: True, False (``reason`` says why not), or None when it
    could not be told (``reason`` says why)."""

    kernel: bool | None
    reason: str = ""


def _run_filter(argv: list[str], data: bytes, what: str) -> bytes:
    try:
        proc = subprocess.run(
            argv, input=data, capture_output=True, timeout=DECOMPRESS_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BTFError(f"{what}: {argv[0]} failed: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BTFError(f"{what}: {argv[0]} exit {proc.returncode}: {err[-1] if err else 'no output'}")
    return proc.stdout


def decompress(kind: str, payload: bytes, what: str = "payload") -> bytes:
    """Decompress one stream of ``kind`` (a MAGICS name), ignoring bytes after its end.

    Raises BTFError when the stream is corrupt, ends early, or the tool it needs is missing.
    """
    decompressor: Any = None
    try:
        if kind == "gzip":
            decompressor = zlib.decompressobj(wbits=31)
        elif kind == "xz":
            decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        elif kind == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        elif kind == "bzip2":
            decompressor = bz2.BZ2Decompressor()
        if decompressor is not None:
            out = bytes(decompressor.decompress(payload))
            # These formats mark their end: bytes that decode without reaching it are a truncated
            # (or random) stream, not a kernel.
            if not decompressor.eof:
                raise BTFError(f"{what}: corrupt {kind} stream: it ends before its end marker")
            return out
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise BTFError(f"{what}: corrupt {kind} stream: {exc}") from exc
    if kind == "zstd":
        try:
            import zstandard  # type: ignore[import-not-found,unused-ignore]

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(payload))
        except ImportError:
            pass
        except Exception as exc:
            raise BTFError(f"{what}: corrupt zstd stream: {exc}") from exc
    tool = {"zstd": "zstd", "lz4": "lz4"}.get(kind)
    if tool is None:
        raise BTFError(f"{what}: unknown compression {kind!r}")
    if shutil.which(tool) is None:
        raise ToolMissingError(f"{what}: {kind}-compressed, and the {tool} command is not installed")
    argv = [tool, "-d", "-c", "-q"]
    try:
        return _run_filter(argv, payload, what)
    except BTFError:
        # x86 appends the decompressed size (4 bytes) after the stream, which the tools reject.
        return _run_filter(argv, payload[:-4], what)


def _kind_at(data: bytes, offset: int) -> str | None:
    for kind, magic in MAGICS:
        if data.startswith(magic, offset):
            return kind
    return None


def _scan_payloads(data: bytes, what: str) -> bytes:
    """Try the compressed-stream magics in ``data``, earliest first: the first stream that holds an
    ELF, an arm64 Image or BTF wins, else the largest that decompresses."""
    hits: list[tuple[int, str]] = []
    for kind, magic in MAGICS:
        pos = data.find(magic)
        count = 0
        while pos != -1 and count < 64:
            hits.append((pos, kind))
            count += 1
            pos = data.find(magic, pos + 1)
    largest = b""
    missing: ToolMissingError | None = None
    for pos, kind in sorted(hits):
        try:
            out = decompress(kind, data[pos:], what)
        except ToolMissingError as exc:
            missing = missing or exc
            continue
        except BTFError:
            continue
        if out.startswith(b"\x7fELF") or out[0x38:0x3C] == b"ARM\x64" or b"\x9f\xeb\x01\x00" in out:
            return out
        if len(out) > len(largest):
            largest = out
    if len(largest) < 1 << 16:
        if missing is not None:
            raise missing
        raise BTFError(f"{what}: no compressed kernel payload found")
    return largest


def decompress_image(data: bytes, what: str = "image") -> bytes:
    """The uncompressed kernel (an ELF vmlinux or a raw arm64 Image) inside a boot image.

    Handles x86 bzImage (payload located by its setup header, else by magic), EFI zboot (arm64 since
    6.1 with CONFIG_EFI_ZBOOT), a whole-file gzip (Debian's arm64 vmlinuz) and already raw images.
    Raises BTFError when nothing decompresses.
    """
    if data.startswith(b"\x7fELF") or data[0x38:0x3C] == b"ARM\x64":
        return data
    kind = _kind_at(data, 0)
    if kind is not None:
        return decompress(kind, data, what)
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        off, size = struct.unpack_from("<II", data, 8)
        comp = data[24:56].split(b"\0", 1)[0].decode("ascii", "replace")
        return decompress_image(decompress(comp, data[off:off + size], what), what)
    if data[0x202:0x206] == b"HdrS":
        setup_sects = data[0x1F1] or 4
        protected = (setup_sects + 1) * 512
        version = struct.unpack_from("<H", data, 0x206)[0]
        if version >= 0x208:
            off, length = struct.unpack_from("<II", data, 0x248)
            payload = data[protected + off:protected + off + length]
            kind = _kind_at(payload, 0)
            if kind is not None:
                return decompress(kind, payload, what)
        return _scan_payloads(data[protected:], what)
    return _scan_payloads(data, what)


def parse_image_release(data: bytes) -> str | None:
    """The kernel release (``uname -r``) named in a boot image, or None when it cannot be told.

    Reads the bzImage header's kernel_version string, else a ``Linux version`` banner.
    """
    if data[0x202:0x206] == b"HdrS" and len(data) > 0x210:
        ptr = struct.unpack_from("<H", data, 0x20E)[0]
        if ptr:
            text = data[ptr + 0x200:ptr + 0x200 + 256].split(b"\0", 1)[0]
            words = text.decode("ascii", "replace").split()
            if words:
                return words[0]
    m = re.search(rb"Linux version (\S{3,}) ", data)
    return m.group(1).decode("ascii", "replace") if m else None


def check_kernel_image(data: bytes, what: str = "image") -> KernelImageCheck:
    """Whether ``data`` is a kernel boot image: it decompresses (see decompress_image) to bytes that
    hold the kernel's banner. Checked before a boot, so that a file that is not a kernel is refused
    at once instead of running a VM to its timeout."""
    try:
        kernel = decompress_image(data, what)
    except ToolMissingError as exc:
        return KernelImageCheck(None, str(exc).removeprefix(f"{what}: "))
    except BTFError as exc:
        return KernelImageCheck(False, str(exc).removeprefix(f"{what}: "))
    if LINUX_BANNER not in kernel:
        return KernelImageCheck(False, f"its {len(kernel)} uncompressed bytes hold no 'Linux version' banner")
    return KernelImageCheck(True)


def _valid_btf_at(data: bytes, pos: int) -> int:
    """The length of a plausible BTF blob starting at ``pos``, or 0."""
    try:
        h = parse_btf_header(data, offset=pos)
    except BTFError:
        return 0
    # Both tested arches are little-endian, and the kernel writes no header flags (nor, so far, a
    # header longer than a few hundred bytes): anything else is a chance match of the magic.
    if not h.little_endian or h.flags != 0 or h.hdr_len > 256:
        return 0
    if h.type_len == 0 or h.str_len == 0 or h.type_off % 4:
        return 0
    if not (h.type_off + h.type_len <= h.str_off or h.str_off + h.str_len <= h.type_off):
        return 0
    end = h.hdr_len + max(h.type_off + h.type_len, h.str_off + h.str_len)
    if pos + end > len(data):
        return 0
    strings = pos + h.hdr_len + h.str_off
    # The string section starts with the empty name and every name is NUL-terminated.
    if data[strings] != 0 or data[strings + h.str_len - 1] != 0:
        return 0
    return int(end)


def find_btf(data: bytes, what: str = "image") -> bytes:
    """The vmlinux BTF blob in an uncompressed kernel: an ELF's .BTF section, else the largest
    valid BTF header (magic 0xeB9F, version 1) in a raw image. Raises BTFError when there is none."""
    if data.startswith(b"\x7fELF"):
        try:
            with open_elf(data, what) as elf:
                section = elf.get_section_by_name(".BTF")
                blob = None if section is None else bytes(section.data())
        except ObjectError as exc:
            raise BTFError(str(exc)) from exc
        if blob is None:
            raise BTFError(f"no BTF in {what}")
        if not _valid_btf_at(blob, 0):
            raise BTFError(f"{what}: .BTF section has no valid BTF header")
        return blob
    best_pos, best_len = -1, 0
    needle = b"\x9f\xeb\x01\x00"
    pos = data.find(needle)
    while pos != -1:
        length = _valid_btf_at(data, pos)
        if length > best_len:
            best_pos, best_len = pos, length
        pos = data.find(needle, pos + 1)
    if best_pos < 0:
        raise BTFError(f"no BTF in {what}")
    return data[best_pos:best_pos + best_len]


def load_image(image: Path) -> bytes:
    """The uncompressed kernel inside the boot image at ``image``; raises BTFError."""
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise BTFError(f"{image}: cannot read: {exc.strerror}") from exc
    return decompress_image(data, str(image))


def extract_btf(image: Path) -> bytes:
    """The vmlinux BTF of a kernel boot image, taken out on the host without booting it.

    Raises BTFError ("no BTF in <image>", or why the image could not be decompressed).
    """
    return find_btf(load_image(image), str(image))

