#!/usr/bin/env bash
# The two README commands: `./dev.sh demo` (set up everything, run the main job) and
# `./dev.sh test` (lint, type-check and the whole test suite against the real local stack).
# Fast feedback without the stack: `./dev.sh lint` (ruff, format check, mypy) and
# `./dev.sh unit` (every test not marked `integration`: tests/unit and tests/deploy).
# `./dev.sh image` builds the container image here (buildah, podman: docs/deploying.md).
# Every install is pinned by constraints.txt (the lock): `./dev.sh lock` resolves it afresh,
# `./dev.sh lock-check` checks that .venv holds exactly its versions.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
LOCK=constraints.txt

need_root_or_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root (run as root or install sudo)" >&2; exit 1; fi
}

# Python 3.11+ that can make a virtualenv (Debian splits `venv` out into python3-venv).
ensure_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11+ is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1
  fi
  if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    need_root_or_sudo apt-get update -qq
    need_root_or_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    ensure_python
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when the project's metadata or the lock changed since the last install.
  local stamp="$VENV/.installed-$(cat pyproject.toml "$LOCK" | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    install_locked "$VENV/bin/python" -e '.[test]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

# install_locked PYTHON ARGS...: first the virtualenv's own pip and setuptools (Python 3.11
# bundles an old setuptools) at the lock's versions (pip >= 25.3 knows --build-constraint),
# then `pip install ARGS` with every package, and the build backend of the project itself, at
# its version in the lock. The Dockerfile does the same.
install_locked() {
  local python="$1"
  shift
  "$python" -m pip install -q --disable-pip-version-check -c "$LOCK" pip setuptools
  "$python" -m pip install -q --disable-pip-version-check -c "$LOCK" --build-constraint "$LOCK" "$@"
}

# Resolve the runtime dependencies, the test extra, the build backend and pip afresh (newest
# versions allowed by pyproject.toml) in a throwaway virtualenv, and write them to the lock.
# A dependency behind an environment marker that is false here but true on another CPython
# 3.11-3.14 on Linux (redis needs async-timeout before 3.11.3, for one) is pinned as well.
lock() (
  ensure_python
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip packaging
  "$work/venv/bin/python" - "$work/report.json" "$LOCK" <<'PY'
import json, re, subprocess, sys, tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement

report, lock = sys.argv[1:]
build = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
targets = [
    {**default_environment(), "python_version": version.rsplit(".", 1)[0],
     "python_full_version": version, "platform_machine": machine}
    for version in ("3.11.0", "3.12.0", "3.13.0", "3.14.0")
    for machine in ("x86_64", "aarch64")
]


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


requirements = [".[test]", "pip", *build]
while True:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--dry-run", "--ignore-installed", "--report", report, *requirements],
        check=True,
    )
    items = json.load(open(report))["install"]
    resolved = {canonical(item["metadata"]["name"]) for item in items}
    elsewhere = set()
    for item in items:
        extras = item.get("requested_extras") or [""]
        for text in item["metadata"].get("requires_dist", []):
            requirement = Requirement(text)
            if canonical(requirement.name) in resolved or requirement.marker is None:
                continue
            if any(requirement.marker.evaluate({**target, "extra": extra})
                   for target in targets for extra in extras):
                requirement.marker = None
                elsewhere.add(str(requirement))
    if not elsewhere:
        break
    requirements += sorted(elsewhere)
pins = sorted(
    (canonical(item["metadata"]["name"]), item["metadata"]["version"])
    for item in items
    if "dir_info" not in item["download_info"]  # the project itself
)
python = ".".join(map(str, sys.version_info[:3]))
with open(lock, "w") as out:
    out.write(
        "# The lock: exact versions of every package the project installs (the runtime\n"
        "# dependencies, the test extra, pip and the build backend). Written by `./dev.sh lock`\n"
        f"# from a fresh resolve on CPython {python} ({sys.platform}), with the dependencies that\n"
        "# only other CPython 3.11-3.14 versions need; do not edit by hand. dev.sh (so .ci/run)\n"
        "# and the Dockerfile install with\n"
        "#   pip install -c constraints.txt --build-constraint constraints.txt ...\n"
    )
    out.writelines(f"{name}=={version}\n" for name, version in pins)
print(f"{lock}: {len(pins)} pins")
PY
)

# Every distribution installed in .venv, but the project itself, is in the lock at that
# version (CI runs it on the fresh .venv: a package the lock misses fails it).
lock_check() {
  "$VENV/bin/python" - "$LOCK" <<'PY'
import re, sys
from importlib.metadata import distributions

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

pins = {}
for line in open(sys.argv[1]):
    requirement = line.split("#", 1)[0].strip()
    if requirement:
        name, _, version = requirement.partition("==")
        pins[canonical(name)] = version
problems = []
for dist in distributions():
    name = canonical(dist.metadata["Name"])
    if name == "workers":
        continue
    if name not in pins:
        problems.append(f"{name} {dist.version} is installed but not in the lock")
    elif pins[name] != dist.version:
        problems.append(f"{name} {dist.version} is installed, the lock says {pins[name]}")
for problem in sorted(set(problems)):
    print(f"lock-check: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
}

# The same three checks as .pre-commit-config.yaml.
lint() {
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
}

case "${1:-}" in
  demo)
    ensure_venv
    shift
    exec "$VENV/bin/workers" demo "$@"
    ;;
  test)
    ensure_venv
    shift
    "$VENV/bin/workers" stack up
    "$VENV/bin/workers" migrate
    lint
    exec "$VENV/bin/pytest" "$@"
    ;;
  lint)
    ensure_venv
    lint
    ;;
  unit)
    # No Kafka, PostgreSQL or Redis. The deploy tests' fixture installs promtool (apt) and
    # builds kustomize (Go) on first use, as `workers stack up` does; later runs reuse them.
    ensure_venv
    shift
    paths=(tests/unit tests/deploy)  # unless the arguments name tests themselves
    for arg in "$@"; do case "$arg" in tests/*) paths=() ;; esac; done
    exec "$VENV/bin/pytest" -m "not integration" "${paths[@]}" "$@"
    ;;
  image)
    # The worker image, built with buildah from a base made here from Debian packages, and
    # the podman command that runs it (harness/image, docs/deploying.md); installs the tools.
    ensure_venv
    shift
    exec "$VENV/bin/python" -m harness.image "$@"
    ;;
  lock)
    lock
    ;;
  lock-check)
    ensure_venv
    lock_check
    ;;
  *)
    echo "usage: ./dev.sh demo | test [pytest args] | lint | unit [pytest args] | image [--refresh-base] | lock | lock-check" >&2
    exit 2
    ;;
esac
