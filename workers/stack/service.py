"""What every service of the local stack is: the `Service` protocol, its status and
the address it binds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

# Every service of the local stack binds this address and nothing else.
LOCALHOST = "127.0.0.1"

Echo = Callable[[str], None]
ServiceState = Literal["running", "down", "external"]


@dataclass(frozen=True)
class ServiceStatus:
    """One service of the stack as `workers stack up` / `status` report it."""

    name: str
    state: ServiceState
    url: str
    detail: str


class Service(Protocol):
    """What the stack needs from each service module (each Kafka node, PostgreSQL, Redis)."""

    @property
    def name(self) -> str:
        """What `workers stack` calls it: `postgres`, `kafka`, or `kafka-2` in a cluster."""
        ...

    @property
    def component(self) -> str:
        """What it is a part of, as `Settings.external_services` names it (`kafka`, …)."""
        ...

    @property
    def url(self) -> str:
        """The connection URL, credentials redacted."""
        ...

    @property
    def ports(self) -> Sequence[int]:
        """The local ports a started service binds on 127.0.0.1."""
        ...

    @property
    def url_variable(self) -> str:
        """The environment variable that points the fleet at another instance."""
        ...

    @property
    def ready_timeout(self) -> float:
        """Seconds a launched service may take to answer."""
        ...

    def probe(self) -> str | None:
        """`None` when the service answers; otherwise why not, in a few words."""
        ...

    def own_pid(self) -> int | None:
        """The live process this stack started, cleaning up a stale pid file."""
        ...

    def prepare(self, echo: Echo) -> None:
        """Install, download and initialise whatever `launch` needs (idempotent)."""
        ...

    def launch(self) -> None:
        """Start the service's process without waiting for it to become ready."""
        ...

    @property
    def log_file(self) -> Path:
        """Where the service's output goes."""
        ...

    def poll_ready(self) -> str | None:
        """One readiness check after `launch`: `None` once the service answers, else what
        it is waiting for; `StackError` when it can no longer come up (it exited)."""
        ...

    def stop(self) -> bool:
        """Stop the process this stack started; `False` when there was none."""
        ...
