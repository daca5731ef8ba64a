"""Process plumbing shared by the local stack's services.

Pid files, port probes, detached process start and stop, running commands with a readable
error, the Debian package installer, and the layout of the state directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

log = logging.getLogger(__name__)

# Every service of the local stack binds this address and nothing else.
LOCALHOST = "127.0.0.1"

Echo = Callable[[str], None]
ServiceState = Literal["running", "down", "external"]


class StackError(Exception):
    """The local stack could not reach the requested state; the message says why."""


@dataclass(frozen=True)
class ServiceStatus:
    """One service of the stack as `workers stack up` / `status` report it."""

    name: str
    state: ServiceState
    url: str
    detail: str


class Service(Protocol):
    """What the stack needs from each service module (Kafka, PostgreSQL, Redis)."""

    @property
    def name(self) -> str: ...

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


# --- processes -------------------------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


def pid_alive(pid: int) -> bool:
    """True when `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # No procfs: trust kill(0).
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def pid_exists(pid: int) -> bool:
    """True while `pid` exists at all, zombies included (what `kill -0` sees)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (Linux procfs, best effort)."""
    target = directory.resolve()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_cwd(int(entry.name)) == target:
            found.append(int(entry.name))
    return found


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def describe_process(pid: int) -> str:
    """`pid 123 (java -Xmx1g …)`: a short, human description of a process."""
    command = " ".join(process_cmdline(pid)) or process_name(pid) or "?"
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {pid} ({command})"


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split(maxsplit=1)[:1]
    except OSError:
        return None
    if not first or not first[0].isdigit():
        return None
    pid = int(first[0])
    return pid if pid > 0 else None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{pid}\n")
    temporary.replace(path)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def live_pid(pid_file: Path, is_ours: Callable[[int], bool]) -> int | None:
    """The pid recorded in `pid_file` if that process is alive and ours; else clean up."""
    pid = read_pid(pid_file)
    if pid is None:
        if pid_file.exists():
            log.warning("removing unreadable pid file %s", pid_file)
            remove_file(pid_file)
        return None
    if pid_alive(pid) and is_ours(pid):
        return pid
    log.info("removing stale pid file %s (pid %d is gone)", pid_file, pid)
    remove_file(pid_file)
    return None


def find_own_pid(
    pid_file: Path, port: int, is_ours: Callable[[int], bool], service: str
) -> int | None:
    """The stack's own process for a service: from its pid file, or else by who holds the
    port (a pid file can be lost while the process keeps running); records what it finds."""
    pid = live_pid(pid_file, is_ours)
    if pid is not None:
        return pid
    for candidate in listening_pids(port):
        if is_ours(candidate):
            log.info("found the stack's %s running as pid %d, recording it", service, candidate)
            write_pid(pid_file, candidate)
            return candidate
    return None


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start `argv` in its own session, output appended to `log_path`; return its pid.

    The process is started through a shell that exits at once, so it is never a child of
    this Python process: it outlives it, and no zombie or `ResourceWarning` is left behind.
    """
    script = 'log=$1; shift; exec "$@" </dev/null >>"$log" 2>&1 & echo $!'
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(log_path), *argv],
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise StackError(f"could not start {argv[0]}: {error}") from error
    pid_text = result.stdout.strip()
    if not pid_text.isdigit():
        raise StackError(f"could not start {argv[0]}: no pid from the launcher ({pid_text!r})")
    return int(pid_text)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


def terminate(pid: int, *, name: str, timeout: float) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL."""
    log.info("stopping %s (pid %d)", name, pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_until(lambda: not pid_alive(pid), timeout, interval=0.1):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.0f s, killing it", name, pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not pid_alive(pid), 10.0, interval=0.1):
        raise StackError(f"{name} (pid {pid}) did not exit after SIGKILL")


# --- ports -----------------------------------------------------------------------------------


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_pids(port: int) -> set[int]:
    """Processes listening on TCP `port` (best effort: Linux procfs, same namespace)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target in inodes:
                pids.add(int(entry.name))
                break
    return pids


def port_user(port: int) -> str:
    """Who holds `port`, for error messages: `pid 12 (java …)` or `an unknown process`."""
    pids = sorted(listening_pids(port))
    if not pids:
        return "an unknown process"
    return ", ".join(describe_process(pid) for pid in pids)


# --- commands --------------------------------------------------------------------------------


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a (log) file, or a note that it is missing."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 64 * 1024))
            text = file.read().decode(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    selected = text.splitlines()[-lines:]
    return "\n".join(f"  {line}" for line in selected) if selected else f"({path} is empty)"


def start_log(path: Path, service: str, max_bytes: int = 20 * 1024 * 1024) -> None:
    """Begin a start's section of a service log: rotate a big log to `<name>.1`, add a marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with path.open("a") as file:
        file.write(f"----- {stamp} workers stack up: starting {service} -----\n")


def run_command(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float = 300.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    as_user: str | None = None,
) -> str:
    """Run a command to completion and return its output; `StackError` when it fails.

    `as_user` runs it as that system user through `runuser` when this process is root.
    """
    command = list(argv)
    if as_user is not None and is_root():
        command = ["runuser", "-u", as_user, "--", *command]
    log.debug("running %s", command)
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as error:
        raise StackError(f"{what} failed: {error.filename or command[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise StackError(f"{what} did not finish within {timeout:.0f} s") from error
    except OSError as error:
        raise StackError(f"{what} failed: {error}") from error
    if result.returncode != 0:
        output = "\n".join(f"  {line}" for line in result.stdout.splitlines()[-20:])
        raise StackError(f"{what} failed (exit status {result.returncode}):\n{output}")
    return result.stdout


def apt_install(packages: Sequence[str], *, needed_for: str, echo: Echo) -> None:
    """Install Debian packages with apt-get when root; otherwise say how to install them."""
    names = " ".join(packages)
    if not is_root():
        raise StackError(
            f"{needed_for} needs the Debian package(s) {names}, which are not installed; "
            f"install them with: sudo apt-get install -y {names}"
        )
    if shutil.which("apt-get") is None:
        raise StackError(
            f"{needed_for} needs {names}, and apt-get is not available: "
            "install it with this system's package manager"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    echo(f"installing Debian package(s) {names} for {needed_for}")
    try:
        run_command(install, what=f"apt-get install {names}", timeout=900, env=env)
    except StackError as first:
        # Usually the package lists are missing or stale (a fresh container): refresh them.
        log.info("apt-get install failed, running apt-get update and retrying: %s", first)
        run_command(["apt-get", "update"], what="apt-get update", timeout=900, env=env)
        run_command(install, what=f"apt-get install {names}", timeout=900, env=env)


# --- locking ---------------------------------------------------------------------------------


@contextlib.contextmanager
def stack_lock(paths: StackPaths, echo: Echo, timeout: float = 900.0) -> Iterator[None]:
    """Serialise `up` and `down` runs that share a state directory."""
    paths.create()
    with (paths.run / "stack.lock").open("a") as handle:
        announced = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not announced:
                echo(f"waiting for another `workers stack` command using {paths.root}")
                announced = True
            if time.monotonic() > deadline:
                raise StackError(f"another `workers stack` command holds {paths.root} too long")
            time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
