"""The worker processes under test, each restarted whenever it exits (`harness.worker_process.
Supervised`, checked every 0.1 s on a thread of its own), as Kubernetes restarts a pod."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable

from harness.worker_process import Supervised, WorkerProcess

CHECK_INTERVAL_SECONDS = 0.1
#: A worker that exits is started again no sooner than this after its previous start.
RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 60.0


class Fleet:
    def __init__(self) -> None:
        self.__workers: dict[str, Supervised] = {}
        self.__lock = threading.Lock()
        self.__stopped = threading.Event()
        self.__thread = threading.Thread(target=self.__supervise, name="fleet", daemon=True)
        self.__thread.start()

    def add(self, name: str, start: Callable[[], WorkerProcess]) -> None:
        with self.__lock:
            self.__workers[name] = Supervised(start, RESTART_DELAY_SECONDS)

    def names(self) -> list[str]:
        with self.__lock:
            return list(self.__workers)

    def worker(self, name: str) -> WorkerProcess:
        with self.__lock:
            return self.__workers[name].worker

    def kill(self, name: str) -> None:
        """kill -9 the worker's current process (restarted by the supervising thread)."""
        with self.__lock:
            self.__workers[name].kill()

    def exit_codes(self, name: str) -> list[int]:
        """Exits of the worker's own accord (kills from outside are not counted)."""
        with self.__lock:
            return list(self.__workers[name].exit_codes)

    def __supervise(self) -> None:
        while not self.__stopped.wait(CHECK_INTERVAL_SECONDS):
            with self.__lock:
                for supervised in self.__workers.values():
                    supervised.check()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every worker (no more restarts); each one's exit code (None: it had to be
        killed after `STOP_TIMEOUT_SECONDS`)."""
        self.__stopped.set()
        self.__thread.join()
        codes: dict[str, int | None] = {}
        with self.__lock:
            for supervised in self.__workers.values():
                process = supervised.worker.process
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name, supervised in self.__workers.items():
                process = supervised.worker.process
                try:
                    codes[name] = process.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(30)
                    codes[name] = None
        return codes
