"""`workers run NAME ...` in a subprocess, exactly as production starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from workers.common.net import free_port
from workers.fleet import FLEET_REGISTRY_LOADER

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(
        self, name: str, *args: str, loader: str = FLEET_REGISTRY_LOADER, log_name: str = ""
    ) -> None:
        self.metrics_port = free_port()
        self.log = ROOT / ".stack" / "logs" / f"test-{log_name or name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "workers.registry_cli", loader, "run", name,
            "--metrics-port", str(self.metrics_port), "--commit-interval-ms", "200",
            "--join-timeout", "10", *args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "WORKERS_LOG_FORMAT": "json"},
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def scrape_or_none(self) -> str | None:
        try:
            return self.scrape()
        except OSError:
            return None

    def metrics_containing(self, fragment: str) -> str | None:
        """The scraped metrics if they contain `fragment` (for `wait_for`), else None."""
        text = self.scrape_or_none()
        return text if text is not None and fragment in text else None

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")
