"""The demo's gateway step: a real `sentry-cli debug-files upload --wait` through a gateway
started as a subprocess (`workers serve gateway`), as a user would run it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg

from workers.common.net import free_port
from workers.common.settings import Settings
from workers.demo.scrape import get, metric_total
from workers.gateway.tokens import create_token

READY_TIMEOUT_SECONDS: Final = 30.0
UPLOAD_TIMEOUT_SECONDS: Final = 120.0
STOP_TIMEOUT_SECONDS: Final = 30.0
_POLL_SECONDS: Final = 0.1
_DEBUG_SOURCE: Final = "int main(void) { return 0; }\n"
_ALREADY_THERE: Final = "Nothing to upload"
#: The states of an assemble answer, in the order a file goes through them.
ASSEMBLE_STATES: Final = ("not_found", "created", "assembling", "ok", "error")


@dataclass(frozen=True)
class GatewayUpload:
    debug_file: Path
    returncode: int
    #: sentry-cli's line for the file, e.g. `OK <debug id> (demo-debug; x86_64)`, or
    #: `Nothing to upload, all files are on the server` when it was uploaded before.
    result_line: str
    chunks_accepted: int
    bytes_accepted: int
    assembled_ok: int
    #: How many assemble answers the gateway gave in each state, in the order of the states
    #: (`not_found`, `created`, `assembling`, `ok`, `error`): what sentry-cli saw.
    assemble_answers: dict[str, int]
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result_line.startswith(("OK ", _ALREADY_THERE))


def sentry_cli_path() -> str:
    beside = Path(sys.executable).parent / "sentry-cli"
    found = str(beside) if beside.exists() else shutil.which("sentry-cli")
    if found is None:
        raise RuntimeError("sentry-cli is not installed (pip install sentry-cli==3.8.2)")
    return found


def debug_file(directory: Path) -> Path:
    """A small ELF program with a build id and debug info (compiled once with gcc; without a
    C compiler, a copy of this Python interpreter's executable)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "demo-debug"
    if target.exists():
        return target
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is not None:
        source = directory / "demo-debug.c"
        source.write_text(_DEBUG_SOURCE)
        subprocess.run(
            [compiler, "-g", "-O0", "-Wl,--build-id", "-o", str(target), str(source)], check=True
        )
    else:
        shutil.copyfile(os.path.realpath(sys.executable), target)
    return target


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}; see {log_path}")
        try:
            get(f"{url}/health")
            return
        except OSError:
            time.sleep(_POLL_SECONDS)
    raise RuntimeError(f"gateway not ready within {READY_TIMEOUT_SECONDS:.0f} s; see {log_path}")


def upload_with_sentry_cli(
    settings: Settings, organization: str, project: str, topic: str
) -> GatewayUpload:
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        token = create_token(connection, organization, ["project:releases"], name="demo").token
    file = debug_file(settings.state_dir / "demo-files")
    port, metrics_port = free_port(), free_port()
    log_path = settings.state_dir / "logs" / "demo-gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "workers", "serve", "gateway", "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", str(metrics_port), "--topic", topic,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        gateway = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WORKERS_LOG_FORMAT": "json"},
        )
    try:
        _wait_ready(gateway, url, log_path)
        result = subprocess.run(
            [sentry_cli_path(), "debug-files", "upload", "--wait", str(file)],
            env={
                **os.environ,
                "SENTRY_URL": url,
                "SENTRY_AUTH_TOKEN": token,
                "SENTRY_ORG": organization,
                "SENTRY_PROJECT": project,
                "SENTRY_DISABLE_UPDATE_CHECK": "true",
            },
            capture_output=True,
            text=True,
            timeout=UPLOAD_TIMEOUT_SECONDS,
            check=False,
        )
        metrics = get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
    lines = [line.strip().removeprefix("> ") for line in result.stdout.splitlines()]
    result_line = next(
        (line for line in lines if line.startswith(("OK ", "ERROR ", "PENDING ", _ALREADY_THERE))),
        (result.stderr.strip().splitlines() or ["no output"])[-1],
    )
    return GatewayUpload(
        debug_file=file,
        returncode=result.returncode,
        result_line=result_line,
        chunks_accepted=int(metric_total(metrics, "workers_gateway_chunks_accepted_total")),
        bytes_accepted=int(metric_total(metrics, "workers_gateway_chunk_bytes_accepted_total")),
        assembled_ok=int(metric_total(metrics, "workers_gateway_assemble_total", state="ok")),
        assemble_answers={
            state: count
            for state in ASSEMBLE_STATES
            if (count := int(metric_total(metrics, "workers_gateway_assemble_total", state=state)))
        },
        log_path=log_path,
    )
