"""The local Redis's readiness check and its pid file, without starting a server."""

from __future__ import annotations

import os
from pathlib import Path

from workers.common.net import free_port
from workers.common.settings import Settings
from workers.stack.paths import StackPaths
from workers.stack.redis import RedisService


def service(tmp_path: Path) -> tuple[RedisService, Path]:
    paths = StackPaths.under(tmp_path / "state")
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    pid_file = paths.pid_file("redis")
    pid_file.parent.mkdir(parents=True)
    return RedisService(settings, paths), pid_file


def test_an_empty_pid_file_is_a_server_starting_and_is_kept(tmp_path: Path) -> None:
    # redis-server creates its pid file, then writes the pid: a poll in between reads an empty
    # file. Removing it (as a leftover) left the server running with no pid file, and `stack
    # up` then waited for it until its timeout.
    redis, pid_file = service(tmp_path)
    pid_file.write_text("")
    assert redis.poll_ready() == "no redis-server process yet"
    assert pid_file.exists()


def test_a_pid_that_is_not_this_stacks_redis_is_not_ready(tmp_path: Path) -> None:
    redis, pid_file = service(tmp_path)
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but pytest, not redis-server
    assert redis.poll_ready() == "no redis-server process yet"
    assert pid_file.read_text() == f"{os.getpid()}\n"
