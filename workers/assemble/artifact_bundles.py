"""Artifact bundles: the zip sentry-cli uploads, its manifest and index (docs/assemble.md)."""

from __future__ import annotations

from pathlib import Path

from workers.assemble.contents import BundleContents


def read_artifact_bundle(path: Path) -> BundleContents:
    """The manifest's contents of the bundle at `path`; raises `BadArtifactBundle`."""
    raise NotImplementedError("filled in by the artifact-bundles change")
