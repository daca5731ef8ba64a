"""A project-owned Redis server from Debian's `redis-server` package."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from urllib.parse import urlsplit

import redis

from workers.common.settings import Settings, redact_url
from workers.stack.apt import apt_install
from workers.stack.commands import run_command
from workers.stack.errors import StackError
from workers.stack.lifecycle import terminate
from workers.stack.logs import start_log
from workers.stack.paths import StackPaths
from workers.stack.pids import find_own_pid, pid_alive, read_pid, remove_file
from workers.stack.procfs import process_cwd, process_name
from workers.stack.service import LOCALHOST, Echo

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0
# How long a freshly launched server may take to write its pid file and answer PING.
READY_TIMEOUT = 20.0


class RedisService:
    name = "redis"
    component = "redis"
    url_variable = "REDIS_URL"
    ready_timeout = READY_TIMEOUT

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        self._settings = settings
        parsed = urlsplit(settings.redis_url)
        try:
            port = parsed.port
        except ValueError as error:
            raise StackError(f"REDIS_URL has an invalid port: {error}") from None
        self._host = parsed.hostname or LOCALHOST
        self._port = port or 6379
        self._dir = paths.redis
        self._pid_file = paths.pid_file(self.name)
        self.log_file = paths.log_file(self.name)
        self._logs_dir = paths.logs
        self._server: str | None = None

    @property
    def url(self) -> str:
        return redact_url(self._settings.redis_url)

    @property
    def ports(self) -> Sequence[int]:
        return (self._port,)

    # --- health ---

    def probe(self) -> str | None:
        client = redis.Redis.from_url(
            self._settings.redis_url, socket_connect_timeout=3, socket_timeout=3
        )
        try:
            if not client.ping():
                return "PING was not answered with PONG"
        except redis.RedisError as error:
            return str(error).strip() or type(error).__name__
        finally:
            client.close()
        return None

    # --- ownership ---

    def _is_ours(self, pid: int) -> bool:
        # redis-server runs in its --dir, which identifies this stack's server.
        return process_name(pid).startswith("redis-server") and process_cwd(pid) == self._dir

    def own_pid(self) -> int | None:
        return find_own_pid(self._pid_file, self._port, self._is_ours, "Redis")

    # --- start ---

    def prepare(self, echo: Echo) -> None:
        server = shutil.which("redis-server")
        if server is None:
            apt_install(["redis-server"], needed_for="the local Redis", echo=echo)
            server = shutil.which("redis-server")
            if server is None:
                raise StackError("the Debian package redis-server is installed but not on PATH")
        self._server = server
        self._dir.mkdir(parents=True, exist_ok=True)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        self._pid_file.parent.mkdir(parents=True, exist_ok=True)

    def launch(self) -> None:
        assert self._server is not None, "prepare() first"
        start_log(self.log_file, self.name)
        # Redis writes its own pid file once daemonized; a leftover one would confuse us.
        remove_file(self._pid_file)
        run_command(
            [
                self._server,
                "--bind",
                LOCALHOST,
                "--port",
                str(self._port),
                "--protected-mode",
                "yes",
                "--dir",
                str(self._dir),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self._pid_file),
                "--logfile",
                str(self.log_file),
                "--appendonly",
                "yes",
            ],
            what="redis-server",
            timeout=30,
            cwd=self._dir,
        )

    def poll_ready(self) -> str | None:
        # The daemonized server writes its pid file once it runs. It creates the file before
        # it writes the pid, so an empty file is a server starting, not a leftover (`launch`
        # removed those): it is read again on the next poll, never removed.
        pid = read_pid(self._pid_file)
        if pid is None or not (pid_alive(pid) and self._is_ours(pid)):
            return "no redis-server process yet"
        return self.probe()

    # --- stop ---

    def stop(self) -> bool:
        pid = self.own_pid()
        if pid is None:
            return False
        terminate(pid, name="Redis", timeout=STOP_TIMEOUT)
        remove_file(self._pid_file)
        return True
