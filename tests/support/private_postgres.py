"""A throwaway PostgreSQL cluster of our own, for tests that stop, restart or break it.

The machine's shared server (127.0.0.1:5432) serves every other test and other people's
work; chaos tests must never restart it. ``PrivatePostgres`` initdb's a fresh cluster in a
temporary folder, listens on 127.0.0.1 at a free port with its unix sockets in that folder,
and removes it all on exit.

    with PrivatePostgres() as pg:
        pg.create_database("app")
        engine = create_engine(pg.url("app"))
        pg.restart()
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg
import pytest
from psycopg import sql

from relightq.serving import free_port

HOST = "127.0.0.1"
SUPERUSER = "postgres"
# PostgreSQL refuses to run as root: as root we run it as this OS user.
OS_USER = "postgres"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")

ShutdownMode = Literal["smart", "fast", "immediate"]


def _has_server_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS)


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def find_bindir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres, newest version first; None if absent."""
    # Debian/Ubuntu keep server programs off PATH, one directory per major version.
    if DEBIAN_ROOT.is_dir():
        for version in sorted(DEBIAN_ROOT.iterdir(), key=_version_key, reverse=True):
            if _has_server_programs(version / "bin"):
                return version / "bin"
    # pg_config also comes with libpq-dev alone, so its bindir may lack the server programs.
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0 and _has_server_programs(Path(done.stdout.strip())):
            return Path(done.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb and _has_server_programs(Path(initdb).parent):
        return Path(initdb).parent
    return None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot run here, or None when it can."""
    if find_bindir() is None:
        return (
            "no PostgreSQL server programs (initdb, pg_ctl, postgres) under "
            f"{DEBIAN_ROOT}/<version>/bin, `pg_config --bindir` or PATH"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL as"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_private_postgres() -> None:
    """Skip the calling test when no private cluster can run here, but fail in CI: a chaos
    test that silently skips there proves nothing."""
    reason = unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI is set but a private PostgreSQL cannot run: {reason}", pytrace=False)
    pytest.skip(f"private PostgreSQL unavailable: {reason}")


class PrivatePostgresError(RuntimeError):
    """A PostgreSQL program failed; the message carries its output and the server log."""


class PrivatePostgres:
    """A fresh PostgreSQL cluster on 127.0.0.1 at a free port, trust auth, user ``postgres``.

    ``with PrivatePostgres() as pg`` creates and starts it; leaving the block stops it and
    removes its folder, also when the block raised. Without ``with``, call ``setup()`` and
    ``close()``.
    """

    def __init__(self, *, base_dir: str | os.PathLike[str] = "/tmp", timeout: float = 30.0):
        self.bindir = find_bindir()
        if self.bindir is None:
            raise PrivatePostgresError(unavailable_reason() or "no PostgreSQL server programs")
        # /tmp by default: the postgres OS user must traverse every parent, and pytest's
        # tmp_path (/tmp/pytest-of-root, mode 0700) is closed to it.
        self.base_dir = Path(base_dir)
        self.timeout = timeout
        self.port = 0
        self.root: Path | None = None
        self._as_root = os.geteuid() == 0
        self._user: pwd.struct_passwd | None = pwd.getpwnam(OS_USER) if self._as_root else None

    # -- paths ---------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.root is None:
            raise PrivatePostgresError("the cluster is not set up (use `with` or setup())")
        return self.root / name

    @property
    def datadir(self) -> Path:
        return self._path("data")

    @property
    def socket_dir(self) -> Path:
        return self._path("sockets")

    @property
    def log_path(self) -> Path:
        return self._path("postgres.log")

    # -- addresses -----------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL, as RELIGHTQ_DATABASE_URL takes it."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq URL, as psycopg.connect takes it."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo(database), connect_timeout=5, **kwargs)

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> PrivatePostgres:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def setup(self) -> None:
        """initdb a new cluster and start it."""
        if self.root is not None:
            raise PrivatePostgresError("already set up")
        self.root = Path(tempfile.mkdtemp(prefix="relightq-pg-", dir=self.base_dir))
        try:
            self.socket_dir.mkdir()
            self._give_to_postgres(self.root, self.socket_dir)
            self._run(
                "initdb",
                "--pgdata",
                str(self.datadir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                # C locale: exists everywhere, whatever locales the machine has generated.
                "--locale",
                "C",
                # Nothing to lose in a throwaway cluster: skipping the final fsync saves ~1 s.
                "--no-sync",
            )
            self._start_on_a_free_port()
        except BaseException:
            self.close()
            raise

    def _start_on_a_free_port(self, attempts: int = 5) -> None:
        # free_port only says the port was free a moment ago: if another process takes it
        # before the postmaster binds, try another.
        for attempt in range(attempts):
            self.port = free_port(HOST)
            self._write_config()
            try:
                self.start()
                return
            except PrivatePostgresError:
                if attempt == attempts - 1 or "already in use" not in self._log_text():
                    raise

    def _write_config(self) -> None:
        # Appended, so a later setting of the same name overrides initdb's default.
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(self.port),
            # Our own socket directory: the shared server's /var/run/postgresql is not ours
            # (and may not exist on a machine where that server never ran).
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "100",
            "logging_collector": "off",
        }
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# relightq PrivatePostgres\n" + lines)

    def start(self) -> None:
        """Start the server; return once it accepts connections on its TCP port."""
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.datadir),
            "--log",
            str(self.log_path),
            "--wait",
            "--timeout",
            str(int(self.timeout)),
        )
        # pg_ctl's wait reads postmaster.pid; a real query proves the TCP listener too.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server and wait until it is gone. ``fast`` rolls back open transactions
        and disconnects clients; ``immediate`` is a crash (recovery runs on next start)."""
        self._run(
            "pg_ctl",
            "stop",
            "--pgdata",
            str(self.datadir),
            "--mode",
            mode,
            "--wait",
            "--timeout",
            str(int(self.timeout)),
        )

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """stop() then start(): same port, same data."""
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        # pg_ctl status: 0 running, 3 not running, 4 no data directory.
        return self._run("pg_ctl", "status", "--pgdata", str(self.datadir), check=False) == 0

    def close(self) -> None:
        """Stop the server if it runs and remove the folder; safe to call twice."""
        if self.root is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._force_stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _force_stop(self) -> None:
        # Cleanup must not leave a postmaster behind: fast, then immediate, then SIGKILL.
        modes: tuple[ShutdownMode, ...] = ("fast", "immediate")
        for mode in modes:
            try:
                self.stop(mode)
                return
            except PrivatePostgresError:
                pass
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    # -- databases -----------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; return its SQLAlchemy URL."""
        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # -- running PostgreSQL's programs ---------------------------------------------------

    def _give_to_postgres(self, *paths: Path) -> None:
        if self._user is not None:
            for path in paths:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # The caller's PGDATA, PGPORT, locale... must not leak into our cluster.
            if not k.startswith(("PG", "LC_")) and k != "LANG"
        }
        # English messages (the port-in-use check reads the log); HOME the postgres user
        # can read (root's is closed to it).
        env.update(LC_ALL="C", HOME=str(self.root))
        return env

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        assert self.bindir is not None and self.root is not None
        # subprocess drops to the postgres user itself (setgid/setgroups/setuid), so no
        # runuser/su/setpriv is needed; the empty extra_groups drops root's groups.
        as_user: dict[str, Any] = {}
        if self._user is not None:
            as_user = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bindir / program), *args],
            env=self._env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=self.timeout + 30,
            **as_user,
        )
        if check and done.returncode != 0:
            raise PrivatePostgresError(
                f"{program} {' '.join(args)} exited {done.returncode}\n"
                f"{done.stdout}{done.stderr}\n--- server log (end)\n{self._log_text()[-3000:]}"
            )
        return done.returncode

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, PrivatePostgresError):
            return ""
