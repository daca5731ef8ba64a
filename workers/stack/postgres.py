"""A project-owned PostgreSQL cluster from Debian's packages.

The cluster lives in `<state>/postgres/data`; the machine's own clusters are never touched.
PostgreSQL refuses to run as root, so as root every server command runs as the `postgres`
system user (created when missing) and the cluster's directories belong to it.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from workers.common.settings import Settings, redact_url
from workers.stack.apt import apt_install
from workers.stack.commands import is_root, run_command
from workers.stack.errors import StackError
from workers.stack.lifecycle import wait_until
from workers.stack.logs import start_log, tail
from workers.stack.paths import StackPaths
from workers.stack.pids import pid_alive, pid_exists, read_pid, remove_file, write_pid
from workers.stack.procfs import describe_process, process_name, processes_in
from workers.stack.service import LOCALHOST, Echo

log = logging.getLogger(__name__)

SYSTEM_USER = "postgres"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT = 60
STOP_TIMEOUT = 60
READY_TIMEOUT = 30.0
# How long orphans of a killed postmaster may take to notice and exit.
STALE_PROCESS_TIMEOUT = 15.0
# Unix socket paths are limited to 107 bytes; longer ones disable the socket (TCP still works).
_MAX_SOCKET_PATH = 100


class PostgresService:
    name = "postgres"
    component = "postgres"
    url_variable = "DATABASE_URL"
    ready_timeout = READY_TIMEOUT

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        self._settings = settings
        parsed = urlsplit(settings.database_url)
        try:
            port = parsed.port
        except ValueError as error:
            raise StackError(f"DATABASE_URL has an invalid port: {error}") from None
        self._host = parsed.hostname or LOCALHOST
        self._port = port or 5432
        self._user = unquote(parsed.username or "workers")
        self._database = unquote(parsed.path.lstrip("/")) or self._user
        self._dir = paths.postgres
        self._data = self._dir / "data"
        self._socket_dir = self._dir / "socket"
        self._pid_file = paths.pid_file(self.name)
        self.log_file = paths.log_file(self.name)
        self._logs_dir = paths.logs
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        return redact_url(self._settings.database_url)

    @property
    def ports(self) -> Sequence[int]:
        return (self._port,)

    # --- health ---

    def probe(self) -> str | None:
        try:
            with psycopg.connect(
                self._settings.database_url, connect_timeout=5, autocommit=True
            ) as connection:
                connection.execute("SELECT 1").fetchone()
        except psycopg.Error as error:
            return _first_line(error)
        return None

    # --- ownership ---

    def _postmaster_pid(self) -> int | None:
        """The postmaster running on our data directory, if any."""
        pid = read_pid(self._data / "postmaster.pid")
        if pid is None or not pid_alive(pid):
            return None
        if process_name(pid) not in ("postgres", "postmaster"):
            return None  # A recycled pid: the lock file is stale.
        return pid

    def own_pid(self) -> int | None:
        pid = self._postmaster_pid()
        if pid is None:
            if self._pid_file.exists():
                log.info("removing stale pid file %s", self._pid_file)
                remove_file(self._pid_file)
            return None
        if read_pid(self._pid_file) != pid:
            write_pid(self._pid_file, pid)
        return pid

    # --- start ---

    def _run_as(self) -> str | None:
        return SYSTEM_USER if is_root() else None

    def prepare(self, echo: Echo) -> None:
        self._bin = self._find_binaries(echo)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self._data, self._socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
        start_log(self.log_file, self.name)
        if is_root():
            account = _ensure_system_user(SYSTEM_USER)
            for path in (self._data, self._socket_dir):
                _chown_tree(path, account)
            os.chown(self.log_file, account.pw_uid, account.pw_gid)
            _make_traversable(self._data, account)
        if not (self._data / "PG_VERSION").exists():
            if any(self._data.iterdir()):
                raise StackError(
                    f"{self._data} is not empty but holds no PostgreSQL cluster; "
                    "move it away and run `workers stack up` again"
                )
            echo(f"postgres: creating a database cluster in {self._data}")
            run_command(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self._data),
                    "-U",
                    self._user,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                what="initdb",
                timeout=300,
                cwd=Path("/"),
                as_user=self._run_as(),
            )
        self._clear_stale_lock()

    def _clear_stale_lock(self) -> None:
        """Remove the lock file a killed postmaster left, once its processes are gone.

        PostgreSQL itself refuses to start while the old pid exists (even as a zombie) or
        while orphaned backends, which run in the data directory, still hold shared memory.
        """
        lock_file = self._data / "postmaster.pid"
        if not lock_file.exists() or self._postmaster_pid() is not None:
            return
        old_pid = read_pid(lock_file)

        def gone() -> bool:
            return (old_pid is None or not pid_exists(old_pid)) and not processes_in(self._data)

        if not wait_until(gone, STALE_PROCESS_TIMEOUT, interval=0.1):
            leftovers = ", ".join(describe_process(pid) for pid in processes_in(self._data))
            raise StackError(
                f"processes of a crashed PostgreSQL still run in {self._data}: "
                f"{leftovers or f'pid {old_pid}'}; stop them and run `workers stack up` again"
            )
        log.info("removing stale %s", lock_file)
        remove_file(lock_file)

    def _find_binaries(self, echo: Echo) -> Path:
        wanted = _cluster_version(self._data)
        found = _installed_bindir(wanted)
        if found is None:
            apt_install(
                ["postgresql" if wanted is None else f"postgresql-{wanted}"],
                needed_for="the local PostgreSQL",
                echo=echo,
            )
            found = _installed_bindir(wanted)
        if found is None:
            version = "" if wanted is None else f" {wanted} (the version of {self._data})"
            raise StackError(f"PostgreSQL{version} server binaries (initdb, pg_ctl) not found")
        return found

    def launch(self) -> None:
        assert self._bin is not None, "prepare() first"
        socket_dir = str(self._socket_dir)
        if len(socket_dir) + len(f"/.s.PGSQL.{self._port}") > _MAX_SOCKET_PATH:
            socket_dir = ""
        options = " ".join(
            shlex.quote(option)
            for option in (
                "-p",
                str(self._port),
                "-k",
                socket_dir,
                "-c",
                f"listen_addresses={LOCALHOST}",
            )
        )
        try:
            run_command(
                [
                    str(self._bin / "pg_ctl"),
                    "-D",
                    str(self._data),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(START_TIMEOUT),
                    "start",
                ],
                what="pg_ctl start",
                timeout=START_TIMEOUT + 30,
                cwd=Path("/"),
                as_user=self._run_as(),
            )
        except StackError as error:
            raise StackError(
                f"{error}\nthe last lines of {self.log_file}:\n{tail(self.log_file)}"
            ) from None
        pid = self.own_pid()
        log.info("started PostgreSQL as pid %s, logging to %s", pid, self.log_file)

    def poll_ready(self) -> str | None:
        if self._postmaster_pid() is None:
            raise StackError(
                f"PostgreSQL is not running; the last lines of {self.log_file}:\n"
                f"{tail(self.log_file)}"
            )
        maintenance = make_conninfo(self._settings.database_url, dbname="postgres")
        try:
            with psycopg.connect(maintenance, connect_timeout=5, autocommit=True) as connection:
                exists = connection.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self._database,)
                ).fetchone()
                if exists is None:
                    log.info("creating database %s", self._database)
                    connection.execute(
                        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._database))
                    )
        except psycopg.Error as error:
            return _first_line(error)
        return self.probe()

    # --- stop ---

    def stop(self) -> bool:
        if self.own_pid() is None:
            return False
        bindir = _installed_bindir(_cluster_version(self._data))
        if bindir is None:
            raise StackError("PostgreSQL runs but pg_ctl is not found to stop it")
        run_command(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self._data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(STOP_TIMEOUT),
                "stop",
            ],
            what="pg_ctl stop",
            timeout=STOP_TIMEOUT + 30,
            cwd=Path("/"),
            as_user=self._run_as(),
        )
        remove_file(self._pid_file)
        return True


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _cluster_version(data: Path) -> str | None:
    """The major version an existing cluster was made with (its `PG_VERSION`)."""
    try:
        return (data / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


def _installed_bindir(version: str | None) -> Path | None:
    """Server binaries: Debian's newest (or the given) version, else those on PATH."""
    candidates: list[Path] = []
    if DEBIAN_ROOT.is_dir():
        versions = [entry for entry in DEBIAN_ROOT.iterdir() if (entry / "bin").is_dir()]
        versions.sort(key=lambda entry: _version_key(entry.name), reverse=True)
        candidates += [entry / "bin" for entry in versions]
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if not ((bindir / "initdb").exists() and (bindir / "pg_ctl").exists()):
            continue
        if version is None or _bindir_version(bindir) == version:
            return bindir
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _bindir_version(bindir: Path) -> str | None:
    if bindir.parent.parent == DEBIAN_ROOT:
        return bindir.parent.name
    try:
        output = run_command([str(bindir / "pg_ctl"), "--version"], what="pg_ctl --version")
    except StackError:
        return None
    # "pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" → "15"
    words = output.split()
    number = words[2] if len(words) > 2 else ""
    return number.split(".")[0] or None


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    log.info("creating the system user %s to run PostgreSQL", name)
    run_command(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/postgresql",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        what=f"useradd {name}",
    )
    return pwd.getpwnam(name)


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    if root.stat().st_uid == account.pw_uid:
        return
    log.info("giving %s to the %s user", root, account.pw_name)
    for directory, subdirectories, files in os.walk(root):
        os.chown(directory, account.pw_uid, account.pw_gid)
        for name in subdirectories + files:
            os.lchown(Path(directory) / name, account.pw_uid, account.pw_gid)


def _make_traversable(path: Path, account: pwd.struct_passwd) -> None:
    """Let `account` reach `path`: add the search (x) bit where an ancestor lacks it."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for ancestor in path.absolute().parents:
        info = ancestor.stat()
        if info.st_uid == account.pw_uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            log.warning("adding o+x to %s so that %s can reach %s", ancestor, account.pw_name, path)
            os.chmod(ancestor, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
