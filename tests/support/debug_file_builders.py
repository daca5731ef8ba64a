"""Real debug information files for tests: ELF objects built with gcc and binutils (Debian's
`gcc` and `binutils`), and Mach-O objects built byte by byte (there is no Mach-O toolchain
here). docs/debug-files-and-bundles.md, Debug information files, says what each should give.
"""

from __future__ import annotations

import platform
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.stack.apt import apt_install

#: A build id gcc writes as given; symbolic's debug id is its first 16 bytes as a GUID
#: (the first three fields little-endian) and its code id is the whole id in hex.
BUILD_ID: Final = "00112233445566778899aabbccddeeff00112233"
BUILD_ID_DEBUG_ID: Final = "33221100-5544-7766-8899-aabbccddeeff"
#: symbolic's name of this machine's architecture.
HOST_CPU_NAME: Final = {"x86_64": "x86_64", "aarch64": "arm64"}.get(
    platform.machine(), platform.machine()
)

_PROGRAM: Final = "int add(int a, int b) { return a + b; }\nint main(void) { return add(1, 2); }\n"

# <mach-o/loader.h>, <mach-o/fat.h>, <mach/machine.h>
MH_MAGIC_64: Final = 0xFEEDFACF
MH_EXECUTE: Final = 0x2
LC_UUID: Final = 0x1B
FAT_MAGIC: Final = 0xCAFEBABE
CPU_TYPE_X86_64: Final = 0x01000007
CPU_SUBTYPE_X86_64_ALL: Final = 3
CPU_TYPE_ARM64: Final = 0x0100000C
CPU_SUBTYPE_ARM64_ALL: Final = 0
_MACH_HEADER_64: Final = struct.Struct("<IiiIIIII")
_UUID_COMMAND: Final = struct.Struct("<II16s")
_FAT_HEADER: Final = struct.Struct(">II")
_FAT_ARCH: Final = struct.Struct(">iiIII")
_FAT_ALIGN_LOG2: Final = 12


@dataclass(frozen=True)
class ElfFiles:
    """One program, with its debug information and stripped two ways."""

    with_debug: Path
    #: `strip`: no debug information, no static symbol table (the dynamic one stays).
    stripped: Path
    #: `objcopy --strip-debug`: no debug information.
    without_debug: Path


#: Debian packages of the toolchain the ELF files are built with.
TOOLCHAIN_PACKAGES: Final = ("gcc", "binutils")


def ensure_toolchain() -> None:
    """gcc, strip and objcopy on the PATH, apt-installing them when one is missing."""
    if not all(shutil.which(tool) for tool in ("gcc", "strip", "objcopy")):
        apt_install(list(TOOLCHAIN_PACKAGES), needed_for="building test ELF files", echo=print)


def build_elf_files(directory: Path) -> ElfFiles:
    ensure_toolchain()
    source = directory / "program.c"
    source.write_text(_PROGRAM)
    with_debug = directory / "program"
    subprocess.run(
        ["gcc", "-g", "-O0", f"-Wl,--build-id=0x{BUILD_ID}", "-o", with_debug, source],
        check=True,
    )
    stripped = directory / "program.stripped"
    subprocess.run(["strip", "-o", stripped, with_debug], check=True)
    without_debug = directory / "program.nodebug"
    subprocess.run(["objcopy", "--strip-debug", with_debug, without_debug], check=True)
    return ElfFiles(with_debug, stripped, without_debug)


def thin_macho(cpu_type: int, cpu_subtype: int, debug_id: uuid.UUID | None) -> bytes:
    """A 64-bit Mach-O executable with no segments; with an LC_UUID command if `debug_id`."""
    commands = b"" if debug_id is None else _UUID_COMMAND.pack(LC_UUID, 24, debug_id.bytes)
    count = 0 if debug_id is None else 1
    header = _MACH_HEADER_64.pack(
        MH_MAGIC_64, cpu_type, cpu_subtype, MH_EXECUTE, count, len(commands), 0, 0
    )
    return header + commands


def fat_macho(slices: list[tuple[int, int, bytes]]) -> bytes:
    """A universal binary of (cpu type, cpu subtype, thin Mach-O) slices, page-aligned."""
    page = 1 << _FAT_ALIGN_LOG2
    header = _FAT_HEADER.pack(FAT_MAGIC, len(slices))
    body = b""
    offset = page
    for cpu_type, cpu_subtype, data in slices:
        header += _FAT_ARCH.pack(cpu_type, cpu_subtype, offset, len(data), _FAT_ALIGN_LOG2)
        padded = data + b"\0" * (-len(data) % page)
        body += padded
        offset += len(padded)
    return header.ljust(page, b"\0") + body
