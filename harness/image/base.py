"""The Dockerfile's base image, made here from Debian packages (docs/deploying.md, The image,
built here).

There is no registry to pull `python:3.11-slim-bookworm` from, so mmdebstrap installs Debian
bookworm's minimal base with its Python 3.11 (`python`, `python -m venv`), CA certificates and
`netbase` from the Debian archive (bookworm, bookworm-updates and bookworm-security), without
documentation or translations. `podman import` stores the root filesystem as
`localhost/python:3.11-slim-bookworm`, labelled with the recipe's hash: a changed recipe makes
a new base, an unchanged one is reused. The tarball is cached too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Final

from harness.image.tools import cache_dir, image_label, run_tool
from workers.stack.service import Echo

SUITE: Final = "bookworm"
#: The Dockerfile's default PYTHON_IMAGE, in local storage.
BASE_IMAGE: Final = "localhost/python:3.11-slim-bookworm"
PACKAGES: Final = (
    "python3.11",
    "python3.11-venv",
    "python-is-python3",
    "ca-certificates",
    "netbase",
)
DPKG_OPTIONS: Final = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
#: Merged /usr made by mmdebstrap itself: the `usrmerge` package would pull in Perl (50 MB).
HOOKS: Final = ("/usr/share/mmdebstrap/hooks/merged-usr",)
#: What `docker run python:3.11-slim-bookworm` would do and know.
IMAGE_CHANGES: Final = ('CMD ["python3"]', "ENV LANG=C.UTF-8")
RECIPE_LABEL: Final = "workers.base-recipe"
# mmdebstrap unpacks and configures a few thousand files with dpkg: on a tmpfs that takes
# a third of the time it takes on a VM's disk.
_FAST_TMP: Final = Path("/dev/shm")
_FAST_TMP_NEEDED_BYTES: Final = 2 << 30
_MMDEBSTRAP_TIMEOUT_SECONDS: Final = 1200.0


def recipe_id() -> str:
    """A short hash of everything that decides the base image's contents."""
    recipe = {
        "suite": SUITE,
        "packages": PACKAGES,
        "dpkg": DPKG_OPTIONS,
        "hooks": HOOKS,
        "changes": IMAGE_CHANGES,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_base(echo: Echo, *, refresh: bool = False, verbose: bool = False) -> str:
    """Make sure BASE_IMAGE exists and is of the current recipe; its name."""
    recipe = recipe_id()
    if not refresh and image_label(BASE_IMAGE, RECIPE_LABEL) == recipe:
        return BASE_IMAGE
    tarball = cache_dir() / f"base-{SUITE}-{recipe}.tar"
    if refresh or not tarball.is_file():
        _bootstrap(tarball, echo, verbose)
    echo(f"importing {tarball.name} as {BASE_IMAGE}")
    changes = [*IMAGE_CHANGES, f"LABEL {RECIPE_LABEL}={recipe}"]
    run_tool(
        ["podman", "import", *(f"--change={change}" for change in changes),
         f"--message=mmdebstrap {SUITE} {' '.join(PACKAGES)}", str(tarball), BASE_IMAGE],
        what="podman import",
        timeout=600,
    )  # fmt: skip
    for old in cache_dir().glob(f"base-{SUITE}-*.tar"):
        if old != tarball:
            old.unlink()
    return BASE_IMAGE


def _bootstrap(tarball: Path, echo: Echo, verbose: bool) -> None:
    echo(f"bootstrapping Debian {SUITE} with {', '.join(PACKAGES)} (mmdebstrap, a minute or two)")
    partial = tarball.with_name(tarball.name + ".partial")
    partial.unlink(missing_ok=True)
    env = dict(os.environ)
    if _FAST_TMP.is_dir() and shutil.disk_usage(_FAST_TMP).free >= _FAST_TMP_NEEDED_BYTES:
        env["TMPDIR"] = str(_FAST_TMP)
    run_tool(
        ["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={','.join(PACKAGES)}",
         *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
            *(f"--hook-dir={hook}" for hook in HOOKS), SUITE, str(partial)],
        what="mmdebstrap",
        timeout=_MMDEBSTRAP_TIMEOUT_SECONDS,
        echo_output=verbose,
        env=env,
    )  # fmt: skip
    partial.rename(tarball)
