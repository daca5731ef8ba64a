"""`workers run NAME ...` in a subprocess, exactly as production starts it, and a supervisor
that restarts it whenever it exits (as Kubernetes restarts a pod's container)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from workers.common.net import free_port
from workers.fleet import FLEET_REGISTRY_LOADER

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """One worker process; `env` is added to this process's environment (e.g. the URLs of
    another stack) and its output goes to `<log_dir>/test-<log_name>.log`."""

    def __init__(
        self,
        name: str,
        *args: str,
        loader: str = FLEET_REGISTRY_LOADER,
        log_name: str = "",
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.log = (log_dir or ROOT / ".stack" / "logs") / f"test-{log_name or name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "workers.registry_cli", loader, "run", name,
            "--metrics-port", str(self.metrics_port), "--commit-interval-ms", "200",
            "--join-timeout", "10", *args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {}), "WORKERS_LOG_FORMAT": "json"},
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


class Supervised:
    """A worker restarted whenever it exits, as Kubernetes restarts a pod's container.

    `check()` (called from the caller's polling loop) notices an exit, records its code and
    starts a new process, but not sooner than `restart_delay` seconds after the previous
    start: a worker that exits at once (its broker is down) does not spin. `kill()` is a
    kill -9 from outside: the next `check()` restarts the worker without recording an exit.
    """

    def __init__(self, start: Callable[[], WorkerProcess], restart_delay: float = 0.0) -> None:
        self.__start = start
        self.__restart_delay = restart_delay
        self.worker = start()
        self.__started = time.monotonic()
        self.__exit_recorded = False
        self.exit_codes: list[int] = []

    def check(self) -> None:
        code = self.worker.process.poll()
        if code is None:
            return
        if not self.__exit_recorded:
            self.exit_codes.append(code)
            self.__exit_recorded = True
        if time.monotonic() - self.__started >= self.__restart_delay:
            self.worker = self.__start()
            self.__started = time.monotonic()
            self.__exit_recorded = False

    def kill(self) -> None:
        self.worker.process.kill()
        self.worker.process.wait(30)
        self.__exit_recorded = True
