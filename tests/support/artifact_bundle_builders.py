"""Artifact bundles for tests, laid out as `sentry-cli sourcemaps upload` writes them: a zip
with `manifest.json` and the files under `files/_/_/` (docs/debug-files-and-bundles.md,
Artifact bundles)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

MAIN_DEBUG_ID: Final = "c0ffee00-aaaa-4bbb-8ccc-1234567890ab"
VENDOR_DEBUG_ID: Final = "2b69e5bd-2e98-4c57-8ce1-b58da19110ae"
BUNDLE_DEBUG_ID: Final = "5f2a3c1e-9d4b-4e7a-8f60-0a1b2c3d4e5f"

#: Two minified files and their source maps, with debug ids as `sourcemaps inject` adds them.
JS_FILES: Final[Mapping[str, bytes]] = {
    "files/_/_/main.js": b"function a(){return 1}\n//# debugId=" + MAIN_DEBUG_ID.encode(),
    "files/_/_/main.js.map": b'{"version":3,"sources":["main.ts"],"mappings":"AAAA"}',
    "files/_/_/vendor.js": b"var v=2;\n//# debugId=" + VENDOR_DEBUG_ID.encode(),
    "files/_/_/vendor.js.map": b'{"version":3,"sources":["vendor.ts"],"mappings":"AAAA"}',
}


def js_manifest() -> dict[str, object]:
    """The manifest of `JS_FILES`: header names in both cases, one id in the simple form."""
    return {
        "org": "acme",
        "release": "frontend@1.0.0",
        "dist": "web",
        "debug_id": BUNDLE_DEBUG_ID,
        "files": {
            "files/_/_/main.js": {
                "url": "~/main.js",
                "type": "minified_source",
                "headers": {"debug-id": MAIN_DEBUG_ID, "Sourcemap": "main.js.map"},
            },
            "files/_/_/main.js.map": {
                "url": "~/main.js.map",
                "type": "source_map",
                "headers": {"Debug-Id": MAIN_DEBUG_ID.upper()},
            },
            "files/_/_/vendor.js": {
                "url": "~/vendor.js",
                "type": "minified_source",
                "headers": {"debug-id": VENDOR_DEBUG_ID.replace("-", "")},
            },
            "files/_/_/vendor.js.map": {
                "url": "~/vendor.js.map",
                "type": "source_map",
                "headers": {"debug-id": VENDOR_DEBUG_ID},
            },
        },
    }


def write_bundle(
    path: Path,
    manifest: Mapping[str, object] | bytes | None,
    files: Mapping[str, bytes] = JS_FILES,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """A zip of `files` and `manifest` (JSON-encoded unless bytes; left out if None)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        if manifest is not None:
            data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            archive.writestr("manifest.json", data)
        for name, data in files.items():
            archive.writestr(name, data)
    return path
