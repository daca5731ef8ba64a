"""The layout of the state directory (`WORKERS_STATE_DIR`, default `.stack`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StackPaths:
    """The layout of the state directory (`WORKERS_STATE_DIR`, default `.stack`)."""

    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> StackPaths:
        return cls(state_dir.absolute())

    @property
    def kafka(self) -> Path:
        return self.root / "kafka"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def create(self) -> None:
        for directory in (self.root, self.logs, self.run):
            directory.mkdir(parents=True, exist_ok=True)
