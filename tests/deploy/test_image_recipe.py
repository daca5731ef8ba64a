"""harness/image without building anything: the offline build matches the Dockerfile, the
rebuild key sees every change that matters, and `podman run` runs the image as the pods do."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from harness.image.base import BASE_IMAGE, recipe_id
from harness.image.build import IMAGE, WHEELS_MOUNT, bud_argv, context_id
from harness.image.run import TMP_SIZE, hardened_run_argv, image_user
from harness.image.wheelhouse import build_stage_sources
from tests.deploy.support import KUBERNETES, ROOT


def _stage_args(stage: int) -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    return set(re.findall(r"^ARG\s+(\w+)", stages[stage], flags=re.MULTILINE))


def test_the_wheelhouse_copies_what_the_build_stage_copies() -> None:
    sources = build_stage_sources(ROOT / "Dockerfile")
    assert sources == ["pyproject.toml", "README.md", "constraints.txt", "workers"]
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert not ignored & set(sources)
    assert {".venv", ".stack"} <= ignored


def test_the_offline_build_passes_only_arguments_the_dockerfile_declares() -> None:
    argv = bud_argv(ROOT, BASE_IMAGE, Path("/cache/wheels-x"), "abc")
    passed = dict(a.removeprefix("--build-arg=").split("=", 1) for a in argv if "build-arg" in a)
    assert passed == {
        "PYTHON_IMAGE": BASE_IMAGE,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": WHEELS_MOUNT,
    }
    assert "PYTHON_IMAGE" in _stage_args(0), "declared before the first FROM"
    assert {"PIP_NO_INDEX", "PIP_FIND_LINKS"} <= _stage_args(1), "declared in the build stage"
    assert f"--volume=/cache/wheels-x:{WHEELS_MOUNT}:ro" in argv
    assert {"--network=none", "--pull=never", f"--tag={IMAGE}"} <= set(argv)
    # The base stands in for the Dockerfile's default, under the same name.
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert default is not None
    assert f"localhost/{default[1]}" == BASE_IMAGE


def _tree(root: Path) -> None:
    shutil.copy(ROOT / "Dockerfile", root / "Dockerfile")
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        (root / name).write_text(name)
    (root / "workers" / "__pycache__").mkdir(parents=True)
    (root / "workers" / "a.py").write_text("A = 1\n")


def test_the_rebuild_key_changes_with_the_sources_and_ignores_caches(tmp_path: Path) -> None:
    _tree(tmp_path)
    wheels = tmp_path / "wheels-1"
    first = context_id(tmp_path, "sha256:base", wheels)
    (tmp_path / "workers" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "notes.txt").write_text("not copied")
    assert context_id(tmp_path, "sha256:base", wheels) == first
    (tmp_path / "workers" / "a.py").write_text("A = 2\n")
    changed = context_id(tmp_path, "sha256:base", wheels)
    assert changed != first
    assert context_id(tmp_path, "sha256:other", wheels) != changed
    assert context_id(tmp_path, "sha256:base", tmp_path / "wheels-2") != changed
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert context_id(tmp_path, "sha256:base", wheels) != changed


def test_the_base_recipe_id_is_stable() -> None:
    assert recipe_id() == recipe_id()
    assert re.fullmatch(r"[0-9a-f]{12}", recipe_id())


def _billing_pod() -> dict[str, Any]:
    for document in yaml.safe_load_all((KUBERNETES / "base" / "billing.yaml").read_text()):
        if document["kind"] == "Deployment":
            pod: dict[str, Any] = document["spec"]["template"]["spec"]
            return pod
    raise AssertionError("no billing Deployment")


def test_podman_runs_the_image_with_the_pods_security_context() -> None:
    pod = _billing_pod()
    container = pod["containers"][0]["securityContext"]
    argv = hardened_run_argv(IMAGE, ["workers", "run", "--list"], name="n", env=["A"])
    assert argv[-4:] == [IMAGE, "workers", "run", "--list"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert f"--user={user}" in argv
    assert image_user() == user
    assert container["readOnlyRootFilesystem"] is True
    assert {"--read-only", "--read-only-tmpfs=false"} <= set(argv)
    assert container["capabilities"]["drop"] == ["ALL"]
    assert "--cap-drop=ALL" in argv
    assert container["allowPrivilegeEscalation"] is False
    assert "--security-opt=no-new-privileges" in argv
    (tmp,) = [volume for volume in pod["volumes"] if volume["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"] == TMP_SIZE.replace("m", "Mi")
    assert f"--tmpfs=/tmp:rw,size={TMP_SIZE},mode=1777" in argv
    assert {"--env=A", "--name=n", "--rm"} <= set(argv)
