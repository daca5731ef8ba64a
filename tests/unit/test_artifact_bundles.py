"""Artifact bundles: the manifest indexed, bad zips and manifests refused, the work bounded
(docs/debug-files-and-bundles.md, Artifact bundles)."""

from __future__ import annotations

import io
import random
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.support.artifact_bundle_builders import (
    BUNDLE_DEBUG_ID,
    JS_FILES,
    MAIN_DEBUG_ID,
    VENDOR_DEBUG_ID,
    js_manifest,
    write_bundle,
)
from workers.assemble.artifact_bundles import (
    DEFAULT_LIMITS,
    INVALID_BUNDLE,
    BundleLimits,
    bundle_id_for_checksum,
    read_artifact_bundle,
)
from workers.assemble.contents import BadArtifactBundle, BundleArtifact

MAIN = uuid.UUID(MAIN_DEBUG_ID)
VENDOR = uuid.UUID(VENDOR_DEBUG_ID)


def _refusal(path: Path, limits: BundleLimits = DEFAULT_LIMITS) -> BadArtifactBundle:
    with pytest.raises(BadArtifactBundle) as refused:
        read_artifact_bundle(path, limits)
    return refused.value


def _files(manifest: dict[str, object]) -> dict[str, dict[str, object]]:
    files = manifest["files"]
    assert isinstance(files, dict)
    return files


# ---- a valid bundle ----------------------------------------------------------------------


def test_a_bundle_is_indexed_from_its_manifest(tmp_path: Path) -> None:
    contents = read_artifact_bundle(write_bundle(tmp_path / "bundle.zip", js_manifest()))
    assert contents.bundle_id == uuid.UUID(BUNDLE_DEBUG_ID)
    assert (contents.release, contents.dist) == ("frontend@1.0.0", "web")
    assert contents.artifacts == (
        BundleArtifact(
            "files/_/_/main.js",
            "~/main.js",
            "minified_source",
            MAIN,
            len(JS_FILES["files/_/_/main.js"]),
        ),
        BundleArtifact(
            "files/_/_/main.js.map",
            "~/main.js.map",
            "source_map",
            MAIN,
            len(JS_FILES["files/_/_/main.js.map"]),
        ),
        BundleArtifact(
            "files/_/_/vendor.js",
            "~/vendor.js",
            "minified_source",
            VENDOR,
            len(JS_FILES["files/_/_/vendor.js"]),
        ),
        BundleArtifact(
            "files/_/_/vendor.js.map",
            "~/vendor.js.map",
            "source_map",
            VENDOR,
            len(JS_FILES["files/_/_/vendor.js.map"]),
        ),
    )
    assert contents.debug_ids == {
        (MAIN, "minified_source"),
        (MAIN, "source_map"),
        (VENDOR, "minified_source"),
        (VENDOR, "source_map"),
    }


def test_only_upstreams_source_file_types_index_their_debug_ids(tmp_path: Path) -> None:
    manifest = js_manifest()
    _files(manifest)["files/_/_/main.js"]["type"] = "source"
    _files(manifest)["files/_/_/main.js.map"]["type"] = "other"
    contents = read_artifact_bundle(write_bundle(tmp_path / "bundle.zip", manifest))
    assert (MAIN, "source") in contents.debug_ids
    assert not any(file_type == "other" for _, file_type in contents.debug_ids)
    assert contents.artifacts[1].debug_id == MAIN  # still in the index, by url


def test_an_entry_without_a_url_is_skipped_as_upstream_does(tmp_path: Path) -> None:
    manifest = js_manifest()
    del _files(manifest)["files/_/_/vendor.js"]["url"]
    contents = read_artifact_bundle(write_bundle(tmp_path / "bundle.zip", manifest))
    assert "files/_/_/vendor.js" not in {artifact.path for artifact in contents.artifacts}
    assert (VENDOR, "minified_source") not in contents.debug_ids
    assert (VENDOR, "source_map") in contents.debug_ids


def test_a_manifest_without_ids_release_or_files_is_an_empty_bundle(tmp_path: Path) -> None:
    contents = read_artifact_bundle(write_bundle(tmp_path / "bundle.zip", {}, files={}))
    assert contents.bundle_id is None
    assert (contents.artifacts, contents.debug_ids) == ((), frozenset())
    assert (contents.release, contents.dist) == (None, None)


def test_file_contents_are_never_read(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "bundle.zip", js_manifest(), compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    at = data.index(b"function a()")
    data[at] ^= 0xFF  # the CRC no longer matches: reading main.js would fail
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive, pytest.raises(zipfile.BadZipFile):
        archive.read("files/_/_/main.js")
    assert len(read_artifact_bundle(path).artifacts) == 4


def test_the_bundle_id_of_a_manifest_without_one_comes_from_the_checksum() -> None:
    checksum = "8b2d5b0f99bd4e6f8c2aa1c0b8d3f1e2a1b2c3d4"
    assert bundle_id_for_checksum(checksum) == uuid.UUID("8b2d5b0f-99bd-4e6f-8c2a-a1c0b8d3f1e2")


# ---- refusals upstream makes: "the bundle is invalid" ------------------------------------


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    path.write_bytes(random.Random(15).randbytes(4096))
    refusal = _refusal(path)
    assert refusal.detail == INVALID_BUNDLE == "the bundle is invalid"
    assert "not a zip" in refusal.reason


def test_a_truncated_zip_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "bundle.zip", js_manifest())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    assert _refusal(path).detail == INVALID_BUNDLE


def test_a_zip_whose_manifest_fails_its_crc_is_refused(tmp_path: Path) -> None:
    manifest = b'{"files": {}}'
    path = write_bundle(tmp_path / "bundle.zip", manifest, files={}, compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[data.index(manifest) + 1] ^= 0x01
    path.write_bytes(bytes(data))
    refusal = _refusal(path)
    assert refusal.detail == INVALID_BUNDLE
    assert "not a readable zip" in refusal.reason


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (None, "no manifest.json in the zip"),
        (b"{not json", "manifest.json is not JSON"),
        (b"\xff\xfe", "manifest.json is not JSON"),
        (b"[]", "manifest.json is not an object"),
        (b'{"files": ["files/_/_/main.js"]}', "manifest.json: files is not a mapping"),
        (b'{"files": {"files/_/_/main.js": "~/main.js"}}', "is not an object"),
        (
            b'{"files": {"files/_/_/main.js": {"url": "~/main.js", "headers": []}}}',
            "the headers of files/_/_/main.js are not a mapping",
        ),
        (
            b'{"files": {"files/_/_/main.js": {"url": "~/main.js", "headers": {"debug-id": 7}}}}',
            "the debug id of files/_/_/main.js is not a string",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "not-utf8",
        "not-an-object",
        "files-a-list",
        "entry-a-string",
        "headers-a-list",
        "debug-id-a-number",
    ],
)
def test_a_bad_manifest_gets_upstreams_detail(
    tmp_path: Path, manifest: bytes | None, reason: str
) -> None:
    refusal = _refusal(write_bundle(tmp_path / "bundle.zip", manifest))
    assert refusal.detail == INVALID_BUNDLE
    assert reason in refusal.reason


# ---- refusals of our own: "the bundle is invalid: <why>" ---------------------------------


def test_an_entry_missing_from_the_zip_is_refused(tmp_path: Path) -> None:
    manifest = js_manifest()
    _files(manifest)["files/_/_/gone.js"] = {"url": "~/gone.js", "type": "minified_source"}
    refusal = _refusal(write_bundle(tmp_path / "bundle.zip", manifest))
    assert refusal.detail == (
        "the bundle is invalid: files/_/_/gone.js is in manifest.json but not in the zip"
    )


def test_an_invalid_file_debug_id_is_refused(tmp_path: Path) -> None:
    manifest = js_manifest()
    _files(manifest)["files/_/_/main.js"]["headers"] = {"Debug-ID": "not-a-debug-id"}
    refusal = _refusal(write_bundle(tmp_path / "bundle.zip", manifest))
    assert refusal.detail == (
        "the bundle is invalid: invalid debug id 'not-a-debug-id' in files/_/_/main.js"
    )


def test_an_invalid_bundle_debug_id_is_refused(tmp_path: Path) -> None:
    manifest = js_manifest() | {"debug_id": "nope"}
    refusal = _refusal(write_bundle(tmp_path / "bundle.zip", manifest))
    assert refusal.detail == "the bundle is invalid: invalid debug id 'nope' in manifest.json"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"release": 1}, "the bundle is invalid: manifest.json: release is not a string"),
        ({"dist": ["web"]}, "the bundle is invalid: manifest.json: dist is not a string"),
    ],
    ids=["release", "dist"],
)
def test_a_release_or_dist_that_is_not_text_is_refused(
    tmp_path: Path, change: dict[str, object], detail: str
) -> None:
    refusal = _refusal(write_bundle(tmp_path / "bundle.zip", js_manifest() | change))
    assert refusal.detail == detail


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        ({"url": 3}, "the bundle is invalid: the url of files/_/_/main.js is not a string"),
        (
            {"url": "~/main.js", "type": "x" * 33},
            "the bundle is invalid: the type of files/_/_/main.js is not a string of at most 32 "
            "characters",
        ),
    ],
    ids=["url", "type"],
)
def test_a_bad_url_or_type_is_refused(
    tmp_path: Path, entry: dict[str, object], detail: str
) -> None:
    manifest = js_manifest()
    _files(manifest)["files/_/_/main.js"] = entry
    assert _refusal(write_bundle(tmp_path / "bundle.zip", manifest)).detail == detail


# ---- bounds ------------------------------------------------------------------------------


def test_more_entries_than_the_limit_are_refused_before_the_zip_is_loaded(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "bundle.zip", js_manifest())  # 5 entries
    assert len(read_artifact_bundle(path, BundleLimits(max_entries=5)).artifacts) == 4
    refusal = _refusal(path, BundleLimits(max_entries=4))
    assert refusal.detail == "the bundle is invalid: more than 4 entries in the zip"


def test_a_zip64_directory_is_counted_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bundle.zip"
    with monkeypatch.context() as patched:
        patched.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)  # zipfile writes the zip64 records
        write_bundle(path, js_manifest())
    assert b"PK\x06\x06" in path.read_bytes()
    assert len(read_artifact_bundle(path, BundleLimits(max_entries=5)).artifacts) == 4
    assert _refusal(path, BundleLimits(max_entries=4)).detail.endswith(
        "more than 4 entries in the zip"
    )


def test_a_directory_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "bundle.zip", js_manifest())
    refusal = _refusal(path, BundleLimits(max_directory_bytes=100))
    assert refusal.detail == "the bundle is invalid: the zip's directory is larger than 100 bytes"


def test_a_manifest_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "bundle.zip", js_manifest())
    refusal = _refusal(path, BundleLimits(max_manifest_bytes=64))
    assert refusal.detail == "the bundle is invalid: manifest.json is larger than 64 bytes"


# ---- a binary file object ----------------------------------------------------------------


def test_a_bundle_in_a_binary_file_reads_as_from_its_path_and_stays_open(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "bundle.zip", js_manifest())
    stream = io.BytesIO(path.read_bytes())
    stream.seek(7)  # read from the file's start, wherever it stands
    assert read_artifact_bundle(stream) == read_artifact_bundle(path)
    assert not stream.closed
    stream.seek(0)
    assert read_artifact_bundle(stream, BundleLimits(max_entries=5)).bundle_id == uuid.UUID(
        BUNDLE_DEBUG_ID
    )


def test_a_binary_file_gets_the_same_refusals_and_bounds(tmp_path: Path) -> None:
    not_a_zip = io.BytesIO(random.Random(15).randbytes(4096))
    with pytest.raises(BadArtifactBundle) as refused:
        read_artifact_bundle(not_a_zip)
    assert "not a zip" in refused.value.reason
    bundle = io.BytesIO(write_bundle(tmp_path / "bundle.zip", js_manifest()).read_bytes())
    with pytest.raises(BadArtifactBundle) as refused:
        read_artifact_bundle(bundle, BundleLimits(max_entries=4))
    assert refused.value.detail == "the bundle is invalid: more than 4 entries in the zip"
