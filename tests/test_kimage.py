"""Tests of harness.kernels.image: decompressing kernel images and taking out their BTF."""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tools import needs, require

from harness.errors import BTFError, ObjectError
from harness.kernels.cache import resolve_cache_root
from harness.kernels.config import ARCHES, KernelSpec
from harness.kernels.image import (
    check_kernel_image,
    decompress,
    decompress_image,
    extract_btf,
    find_btf,
    parse_image_release,
)


def make_btf(names: tuple[str, ...] = ("int", "long")) -> bytes:
    """A small valid BTF blob: one INT type per name."""
    strings = b"\0"
    types = b""
    for name in names:
        off = len(strings)
        strings += name.encode() + b"\0"
        # struct btf_type {name_off, info (kind INT = 1 << 24), size} then the INT encoding word.
        types += struct.pack("<IIII", off, 1 << 24, 4, 32)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


BTF = make_btf()


def raw_image(btf: bytes = BTF) -> bytes:
    """An uncompressed arm64-style Image: the arm64 magic at 0x38, noise, a decoy, the BTF, noise."""
    head = bytearray(os.urandom(0x1000))
    head[0x38:0x3C] = b"ARM\x64"
    decoy = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 1 << 30, 1 << 30, 16)  # sizes do not fit
    return bytes(head) + decoy + os.urandom(999) + btf + os.urandom(3000)


def bzimage(payload: bytes, version_text: bytes = b"6.1.0-27-amd64 (debian-kernel) #1 SMP") -> bytes:
    """A minimal x86 bzImage: setup header with payload_offset/length, then the payload."""
    setup_sects = 3
    setup = bytearray((setup_sects + 1) * 512)
    setup[0:2] = b"MZ"
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<H", setup, 0x20E, 0x400 - 0x200)
    setup[0x400:0x400 + len(version_text) + 1] = version_text + b"\0"
    pre = os.urandom(777)
    struct.pack_into("<II", setup, 0x248, len(pre), len(payload))
    return bytes(setup) + pre + payload + os.urandom(100)


def elf_with_btf(tmp_path: Path, btf: bytes) -> bytes:
    """A real ELF file carrying ``btf`` as its .BTF section (objcopy onto a copy of a host binary)."""
    require("objcopy", why="to build an ELF with a .BTF section")
    blob = tmp_path / "btf.bin"
    blob.write_bytes(btf)
    out = tmp_path / "vmlinux"
    subprocess.run(
        ["objcopy", "--add-section", f".BTF={blob}", "/bin/true", str(out)],
        check=True, capture_output=True, timeout=60,
    )
    return out.read_bytes()


def test_find_btf_in_raw_image_returns_exactly_the_blob() -> None:
    assert find_btf(raw_image()) == BTF


def test_find_btf_prefers_largest_valid_blob() -> None:
    small = make_btf(("a",))
    big = make_btf(tuple(f"name{i}" for i in range(50)))
    assert find_btf(raw_image(small) + big + os.urandom(64)) == big


def test_no_btf(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz-none"
    image.write_bytes(gzip.compress(raw_image(b"")))
    with pytest.raises(BTFError, match=f"no BTF in {image}"):
        extract_btf(image)


def _flagged(blob: bytearray) -> None:
    blob[3] = 1


def _big_endian(blob: bytearray) -> None:
    blob[0:2] = b"\xeb\x9f"
    blob[4:24] = struct.pack(">IIIII", *struct.unpack_from("<IIIII", blob, 4))


@pytest.mark.parametrize("mutate", [_flagged, _big_endian], ids=["flags", "big-endian"])
def test_btf_section_the_kernel_would_not_write_is_refused(
    tmp_path: Path, mutate: Callable[[bytearray], None]
) -> None:
    """The header parser accepts both byte orders and any flags; a vmlinux .BTF has neither."""
    blob = bytearray(make_btf())
    mutate(blob)
    with pytest.raises(BTFError, match=r"^vmlinux: \.BTF section has no valid BTF header$"):
        find_btf(elf_with_btf(tmp_path, bytes(blob)), "vmlinux")
    assert find_btf(elf_with_btf(tmp_path, BTF), "vmlinux") == BTF


def test_malformed_elf_header_is_a_btf_error() -> None:
    with pytest.raises(BTFError, match=r"^vmlinux: malformed ELF: Invalid EI_CLASS") as info:
        find_btf(b"\x7fELF\x09" + bytes(200), "vmlinux")
    assert isinstance(info.value.__cause__, ObjectError)


def test_gzipped_arm64_image(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz"
    image.write_bytes(gzip.compress(raw_image()))
    assert extract_btf(image) == BTF


def test_uncompressed_arm64_image(tmp_path: Path) -> None:
    image = tmp_path / "Image"
    image.write_bytes(raw_image())
    assert extract_btf(image) == BTF


def test_bzimage_xz_payload_with_elf(tmp_path: Path) -> None:
    elf = elf_with_btf(tmp_path, BTF)
    # The kernel appends the decompressed size after the stream.
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ) + struct.pack("<I", len(elf))
    image = tmp_path / "vmlinuz-xz"
    image.write_bytes(bzimage(payload))
    assert decompress_image(image.read_bytes()) == elf
    assert extract_btf(image) == BTF


@needs("zstd")
def test_bzimage_zstd_payload_with_size_appended(tmp_path: Path) -> None:
    elf = elf_with_btf(tmp_path, BTF)
    stream = subprocess.run(
        ["zstd", "-q", "-c"], input=elf, capture_output=True, check=True, timeout=60
    ).stdout
    image = tmp_path / "vmlinuz-zstd"
    image.write_bytes(bzimage(stream + struct.pack("<I", len(elf))))
    assert extract_btf(image) == BTF


def test_bzimage_without_header_offsets_is_scanned(tmp_path: Path) -> None:
    data = bytearray(bzimage(gzip.compress(raw_image())))
    struct.pack_into("<H", data, 0x206, 0x204)  # an old boot protocol: no payload_offset field
    image = tmp_path / "vmlinuz-old"
    image.write_bytes(bytes(data))
    assert extract_btf(image) == BTF


def test_efi_zboot(tmp_path: Path) -> None:
    payload = gzip.compress(raw_image())
    head = bytearray(64)
    head[0:2] = b"MZ"
    head[4:8] = b"zimg"
    struct.pack_into("<II", head, 8, 512, len(payload))
    head[24:28] = b"gzip"
    data = bytes(head) + bytes(512 - 64) + payload + os.urandom(300)
    image = tmp_path / "vmlinuz-zboot"
    image.write_bytes(data)
    assert extract_btf(image) == BTF


def test_corrupt_stream(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz-bad"
    image.write_bytes(b"\x1f\x8b\x08" + os.urandom(2000))
    with pytest.raises(BTFError, match="corrupt gzip stream"):
        extract_btf(image)


def test_parse_image_release() -> None:
    assert parse_image_release(bzimage(b"x")) == "6.1.0-27-amd64"
    assert parse_image_release(b"xx Linux version 7.2.0-rc1 (gcc) #1") == "7.2.0-rc1"
    assert parse_image_release(os.urandom(4096).replace(b"Linux", b"")) is None


# ---------------------------------------------------------------- real Debian kernels


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_btf_of_real_kernels(tmp_path: Path, arch: str) -> None:
    from harness.kernels.fetch import fetch_kernel

    # The machine's own cache: the matrix runs of the other integration tests reuse what this fetches.
    cache = resolve_cache_root(os.environ)
    spec = KernelSpec(id="6.1", arch=ARCHES[arch], source="debian", suite="bookworm")
    build = fetch_kernel(spec, cache)
    blob = extract_btf(build.image)
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        "<HBBIIIII", blob
    )
    assert (magic, version, flags, hdr_len) == (0xEB9F, 1, 0, 24)
    assert len(blob) == hdr_len + max(type_off + type_len, str_off + str_len)
    require("bpftool")
    path = tmp_path / "vmlinux.btf"
    path.write_bytes(blob)
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(path), "format", "raw"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert out.startswith("[1] ")
    assert "STRUCT 'task_struct'" in out


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2"])
def test_truncated_stream_is_corrupt_and_trailing_bytes_are_not(kind: str) -> None:
    import bz2
    import gzip
    import lzma

    raw = os.urandom(1 << 16)
    compress = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}[kind]
    stream = compress(raw)
    assert decompress(kind, stream + b"\x00\x10\x00\x00") == raw  # x86 appends the size after the stream
    with pytest.raises(BTFError, match=f"corrupt {kind} stream: it ends before its end marker"):
        decompress(kind, stream[: len(stream) // 2])


def test_random_bytes_after_a_gzip_magic_are_always_corrupt(tmp_path: Path) -> None:
    # Random data used to decode, now and then, into a few bytes without an error: "no BTF" instead.
    for i in range(300):
        image = tmp_path / f"vmlinuz-{i}"
        image.write_bytes(b"\x1f\x8b\x08" + os.urandom(2000))
        with pytest.raises(BTFError, match="corrupt gzip stream"):
            extract_btf(image)


# ---------------------------------------------------------------- is it a kernel at all

BANNER = b"Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP\n"


def _zboot(payload: bytes) -> bytes:
    head = bytearray(64)
    head[0:2] = b"MZ"
    head[4:8] = b"zimg"
    struct.pack_into("<II", head, 8, 512, len(payload))
    head[24:28] = b"gzip"
    return bytes(head) + bytes(512 - 64) + payload


@pytest.mark.parametrize(
    "make",
    [
        lambda: bzimage(gzip.compress(raw_image() + BANNER)),
        lambda: bzimage(lzma.compress(raw_image() + BANNER, format=lzma.FORMAT_XZ)),
        lambda: gzip.compress(raw_image() + BANNER),
        lambda: raw_image() + BANNER,
        lambda: _zboot(gzip.compress(raw_image() + BANNER)),
    ],
    ids=["bzImage-gzip", "bzImage-xz", "gzip-Image", "Image", "zboot"],
)
def test_kernel_stand_ins_are_kernels(make: Callable[[], bytes]) -> None:
    checked = check_kernel_image(make(), "/x/vmlinuz")
    assert (checked.kernel, checked.reason) == (True, "")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: os.urandom(1 << 20), "no compressed kernel payload found"),
        (lambda: b"\x1f\x8b\x08" + os.urandom(2000), "corrupt gzip stream"),
        (lambda: bzimage(gzip.compress(os.urandom(1 << 17))), "bytes hold no 'Linux version' banner"),
        (lambda: gzip.compress(b"\x7fELF" + os.urandom(1 << 17)), "hold no 'Linux version' banner"),
    ],
    ids=["random", "corrupt-gzip", "bzImage-without-banner", "elf-that-is-no-kernel"],
)
def test_files_that_are_not_kernels_are_refused_with_why(make: Callable[[], bytes], reason: str) -> None:
    checked = check_kernel_image(make(), "/x/vmlinuz")
    assert checked.kernel is False
    # The reason is the image's own: the caller names the file once.
    assert reason in checked.reason and not checked.reason.startswith("/x/vmlinuz"), checked.reason


def test_without_the_decompressor_it_cannot_be_told(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.kernels.image as image_module

    monkeypatch.setattr(image_module.shutil, "which", lambda name: None)
    checked = check_kernel_image(bzimage(b"\x02\x21\x4c\x18" + os.urandom(1 << 12)), "/x/vmlinuz")
    assert checked.kernel is None
    assert checked.reason == "lz4-compressed, and the lz4 command is not installed"
