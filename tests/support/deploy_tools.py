"""Deploy tooling the tests and docs/deploying.md need: `kustomize`, `promtool` and `prometheus`.

The tests that use them call these functions (the deploy tests' session fixture, the
observability test), so a fresh machine (CI included) gets them on first use; later calls
return at once.

- `promtool` and `prometheus` come from the Debian package `prometheus` (apt-get, as root).
- `kustomize` is built from its Go module with the machine's Go toolchain
  (`go install sigs.k8s.io/kustomize/kustomize/v5@KUSTOMIZE_VERSION`) into a versioned
  directory under the user's cache (`$XDG_CACHE_HOME/workers/tools`, else `~/.cache/...`), so
  every checkout of the repository shares one build and a version bump builds anew.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.stack.apt import apt_install
from workers.stack.commands import run_command
from workers.stack.errors import StackError
from workers.stack.service import Echo

KUSTOMIZE_MODULE: Final = "sigs.k8s.io/kustomize/kustomize/v5"
KUSTOMIZE_VERSION: Final = "v5.7.1"
PROMETHEUS_PACKAGE: Final = "prometheus"
# Where the Go toolchain lives when it is not on PATH (the machine image's install).
_GO_FALLBACKS: Final = (Path("/usr/local/go/bin/go"), Path("/usr/lib/go/bin/go"))
_GO_INSTALL_TIMEOUT_SECONDS: Final = 900.0


@dataclass(frozen=True)
class DeployTools:
    kustomize: Path
    promtool: Path
    prometheus: Path


def tools_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "workers" / "tools"


def kustomize_path() -> Path:
    return tools_dir() / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"


def _go_binary() -> Path:
    found = shutil.which("go")
    if found:
        return Path(found)
    for candidate in _GO_FALLBACKS:
        if candidate.is_file():
            return candidate
    raise StackError(
        f"building kustomize {KUSTOMIZE_VERSION} needs the Go toolchain (go 1.22 or newer); "
        "install Go and run `workers stack up` again"
    )


def ensure_kustomize(echo: Echo) -> Path:
    """The kustomize binary, built with `go install` on first use."""
    binary = kustomize_path()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = _go_binary()
    echo(f"building kustomize {KUSTOMIZE_VERSION} with {go} (first run only)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    run_command(
        [str(go), "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
        what=f"go install {KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}",
        timeout=_GO_INSTALL_TIMEOUT_SECONDS,
        env={**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-buildvcs=false"},
    )
    if not binary.is_file():
        raise StackError(f"go install finished but {binary} is missing")
    return binary


def ensure_prometheus(echo: Echo) -> tuple[Path, Path]:
    """`(promtool, prometheus)`, apt-installing the Debian package when either is missing."""

    def find() -> tuple[Path, Path] | None:
        promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
        return (Path(promtool), Path(prometheus)) if promtool and prometheus else None

    found = find()
    if found is None:
        apt_install([PROMETHEUS_PACKAGE], needed_for="promtool and Prometheus", echo=echo)
        found = find()
    if found is None:
        raise StackError(f"the Debian package {PROMETHEUS_PACKAGE} left no promtool/prometheus")
    return found


def ensure_deploy_tools(echo: Echo) -> DeployTools:
    promtool, prometheus = ensure_prometheus(echo)
    return DeployTools(kustomize=ensure_kustomize(echo), promtool=promtool, prometheus=prometheus)
