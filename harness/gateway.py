"""The chunk-upload gateway in a subprocess (`workers serve gateway`), and multipart bodies."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.waiting import wait_for
from workers.common.net import free_port

ROOT = Path(__file__).resolve().parents[1]


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class GatewayProcess:
    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        log_name: str = "gateway",
        ready_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = ROOT / ".stack" / "logs" / f"test-{log_name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "workers", "serve", "gateway", "--host", "127.0.0.1",
            "--port", str(self.port), "--metrics-port", str(self.metrics_port), *args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "WORKERS_LOG_FORMAT": "json", **(env or {})},
            )  # fmt: skip
        try:
            wait_for(self.__ready, ready_timeout, f"gateway on port {self.port}")
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited with {self.process.returncode}; see {self.log}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def rss_bytes(self) -> int:
        return self.__status_bytes("VmRSS:")

    def peak_rss_bytes(self) -> int:
        """The high-water mark of resident memory since the process started (`VmHWM`)."""
        return self.__status_bytes("VmHWM:")

    def __status_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} line")


def multipart_body(
    parts: Sequence[tuple[str, str | None, bytes]], boundary: str | None = None
) -> tuple[bytes, str]:
    """(body, content type) of `(field, filename or None, data)` parts."""
    boundary = boundary or uuid.uuid4().hex
    pieces: list[bytes] = []
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        pieces.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        pieces.append(data)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces), f"multipart/form-data; boundary={boundary}"
