"""The Quix Streams virtualenv of the benchmark: `bench/.venv-quix` (gitignored).

Quix Streams pins confluent-kafka < 2.13 and the fleet needs 2.16, so the Quix peer of
`bench.billing` runs in its own virtualenv, made on demand from PyPI with pinned versions
(orjson and msgspec pinned to the fleet's versions, so both sides decode with the same
libraries). It is idempotent: a stamp file records what was installed (requirements and
interpreter) and the virtualenv is made again, from scratch, only when that changes or the
stamp is missing.

    python -m bench.quix_env          # make it (or confirm it is up to date), print its python
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path
from typing import Final

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = BENCH_DIR.parent
VENV_DIR: Final = BENCH_DIR / ".venv-quix"
STAMP: Final = VENV_DIR / "bench-quix-stamp.txt"
QUIXSTREAMS_VERSION: Final = "3.28.1"
REQUIREMENTS: Final = (
    f"quixstreams=={QUIXSTREAMS_VERSION}",
    "orjson==3.13.0",
    "msgspec==0.22.0",
)


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    return venv_dir / "bin" / "python"


def _stamp_text() -> str:
    interpreter = ".".join(str(part) for part in sys.version_info[:3])
    return "\n".join((f"python {interpreter}", *REQUIREMENTS)) + "\n"


def ensure_quix_venv(venv_dir: Path = VENV_DIR) -> Path:
    """Make the Quix virtualenv unless its stamp matches; returns its python."""
    stamp = venv_dir / STAMP.name
    wanted = _stamp_text()
    python = venv_python(venv_dir)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"making {venv_dir} ({', '.join(REQUIREMENTS)})", file=sys.stderr)
    venv.EnvBuilder(clear=True, with_pip=True).create(venv_dir)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *REQUIREMENTS,
        ],
        check=True,
    )
    subprocess.run(
        [str(python), "-c", "import quixstreams, orjson, msgspec, confluent_kafka"],
        check=True,
        cwd=venv_dir,
    )
    stamp.write_text(wanted)
    return python


if __name__ == "__main__":
    print(ensure_quix_venv())
