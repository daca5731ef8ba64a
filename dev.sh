#!/usr/bin/env bash
# The two README commands: `./dev.sh demo` (set up everything, run the main job) and
# `./dev.sh test` (lint, type-check and the whole test suite against the real local stack).
# Fast feedback without the stack: `./dev.sh lint` (ruff, format check, mypy) and
# `./dev.sh unit` (every test not marked `integration`: tests/unit and tests/deploy).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv

need_root_or_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root (run as root or install sudo)" >&2; exit 1; fi
}

ensure_venv() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11+ is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
      need_root_or_sudo apt-get update -qq
      need_root_or_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when the project's metadata changed since the last install.
  local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
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
  *)
    echo "usage: ./dev.sh demo | test [pytest args] | lint | unit [pytest args]" >&2
    exit 2
    ;;
esac
