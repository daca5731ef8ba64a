"""Debug information files as symbolic reads them, with upstream's refusals
(docs/debug-files-and-bundles.md, Debug information files)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest
from symbolic.debuginfo import Archive
from symbolic.exceptions import ObjectErrorUnsupportedObject

from tests.support.debug_file_builders import (
    BUILD_ID,
    BUILD_ID_DEBUG_ID,
    CPU_SUBTYPE_ARM64_ALL,
    CPU_SUBTYPE_X86_64_ALL,
    CPU_TYPE_ARM64,
    CPU_TYPE_X86_64,
    HOST_CPU_NAME,
    ElfFiles,
    build_elf_files,
    fat_macho,
    thin_macho,
)
from workers.assemble.contents import BadDebugFile
from workers.assemble.debug_files import architectures_detail, detect_debug_files

X86_64_UUID = uuid.UUID("7fa8f06c-d6d9-4685-bd0e-6134b2437784")
ARM64_UUID = uuid.UUID("1ad63102-2429-473d-b65c-2cbcb5e536f3")


@pytest.fixture(scope="session")
def elf_files(tmp_path_factory: pytest.TempPathFactory) -> ElfFiles:
    return build_elf_files(tmp_path_factory.mktemp("elf"))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- ELF ---------------------------------------------------------------------------------


def test_an_elf_with_debug_information_is_one_object_with_its_build_id(
    elf_files: ElfFiles,
) -> None:
    (found,) = detect_debug_files(elf_files.with_debug, "build/out/program")
    assert found.file_format == "elf"
    assert found.cpu_name == HOST_CPU_NAME
    assert found.debug_id == BUILD_ID_DEBUG_ID
    assert found.code_id == BUILD_ID
    assert found.object_name == "program"
    assert found.object_kind in {"exe", "lib"}  # gcc links a PIE (`lib`) by default
    assert found.features == ("debug", "symtab", "unwind")


@pytest.mark.parametrize("variant", ["stripped", "without_debug"])
def test_stripping_removes_the_debug_feature_but_keeps_the_ids(
    elf_files: ElfFiles, variant: str
) -> None:
    (full,) = detect_debug_files(elf_files.with_debug, "program")
    (stripped,) = detect_debug_files(getattr(elf_files, variant), "program")
    assert "debug" in full.features
    assert "debug" not in stripped.features
    assert "symtab" in stripped.features
    assert list(stripped.features) == sorted(stripped.features)
    assert (stripped.debug_id, stripped.code_id) == (full.debug_id, full.code_id)


def test_a_truncated_elf_is_refused(elf_files: ElfFiles, tmp_path: Path) -> None:
    data = elf_files.with_debug.read_bytes()
    truncated = _write(tmp_path / "truncated", data[: len(data) // 2])
    with pytest.raises(BadDebugFile) as refused:
        detect_debug_files(truncated, "truncated")
    assert refused.value.detail.startswith("Invalid debug information file: invalid ELF file")


# ---- not debug files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [random.Random(15).randbytes(4096), b"", b"not a debug file\n"],
    ids=["random", "empty", "text"],
)
def test_a_file_of_other_bytes_gets_upstreams_detail(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path / "junk.bin", data)
    with pytest.raises(BadDebugFile) as refused:
        detect_debug_files(path, "junk.bin")
    assert refused.value.detail == "Invalid debug information file: unsupported object file format"


def test_an_unsupported_object_gets_upstreams_other_detail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """symbolic 13 reports unknown formats as ObjectErrorUnknown; upstream still maps this."""

    def unsupported(path: str | bytes) -> Archive:
        raise ObjectErrorUnsupportedObject("unsupported object file format")

    monkeypatch.setattr(Archive, "open", unsupported)
    with pytest.raises(BadDebugFile) as refused:
        detect_debug_files(_write(tmp_path / "x", b"x"), "x")
    assert (
        refused.value.detail == "Unsupported debug information file: unsupported object file format"
    )


# ---- Mach-O ------------------------------------------------------------------------------


def test_a_fat_macho_gives_one_object_per_architecture(tmp_path: Path) -> None:
    fat = fat_macho(
        [
            (
                CPU_TYPE_X86_64,
                CPU_SUBTYPE_X86_64_ALL,
                thin_macho(CPU_TYPE_X86_64, CPU_SUBTYPE_X86_64_ALL, X86_64_UUID),
            ),
            (
                CPU_TYPE_ARM64,
                CPU_SUBTYPE_ARM64_ALL,
                thin_macho(CPU_TYPE_ARM64, CPU_SUBTYPE_ARM64_ALL, ARM64_UUID),
            ),
        ]
    )
    objects = detect_debug_files(_write(tmp_path / "App", fat), "Payload/App")
    assert [(found.cpu_name, found.debug_id) for found in objects] == [
        ("x86_64", str(X86_64_UUID)),
        ("arm64", str(ARM64_UUID)),
    ]
    for found in objects:
        assert (found.file_format, found.object_kind, found.object_name) == ("macho", "exe", "App")
        assert found.code_id == uuid.UUID(found.debug_id).hex
        assert found.features == ()


def test_a_thin_macho_is_one_object(tmp_path: Path) -> None:
    thin = thin_macho(CPU_TYPE_ARM64, CPU_SUBTYPE_ARM64_ALL, ARM64_UUID)
    (found,) = detect_debug_files(_write(tmp_path / "App", thin), "App")
    assert (found.cpu_name, found.debug_id) == ("arm64", str(ARM64_UUID))


def test_an_object_without_a_debug_id_is_refused(tmp_path: Path) -> None:
    thin = thin_macho(CPU_TYPE_X86_64, CPU_SUBTYPE_X86_64_ALL, None)
    with pytest.raises(BadDebugFile) as refused:
        detect_debug_files(_write(tmp_path / "App", thin), "App")
    assert refused.value.detail == (
        "Invalid debug information file: missing debug identifier, likely stripped"
    )
    assert refused.value.reason == "x86_64 object without a debug id"


def test_a_file_with_no_objects_gets_upstreams_assemble_detail(tmp_path: Path) -> None:
    with pytest.raises(BadDebugFile) as refused:
        detect_debug_files(_write(tmp_path / "empty-fat", fat_macho([])), "empty-fat")
    assert refused.value.detail == "Object contains 0 architectures (1 expected)"
    assert architectures_detail(2) == "Object contains 2 architectures (1 expected)"


# ---- Breakpad ----------------------------------------------------------------------------


def test_a_breakpad_file_is_named_without_its_sym_suffix(tmp_path: Path) -> None:
    text = b"MODULE Linux x86_64 6D5EFEF452188C451A0A2F632618EA660 program\nFILE 0 program.c\n"
    (found,) = detect_debug_files(_write(tmp_path / "program.sym", text), "syms/program.sym")
    assert (found.file_format, found.object_kind) == ("breakpad", "dbg")
    assert found.object_name == "program"
    assert found.debug_id == "6d5efef4-5218-8c45-1a0a-2f632618ea66"
