"""A throwaway PostgreSQL server on this machine, for tests and benchmarks.

:class:`LocalPostgres` runs ``initdb`` and ``pg_ctl`` from Debian's ``postgresql``
package (``/usr/lib/postgresql/*/bin``, or ``pg_config --bindir``) on a new temporary data
folder, listening on a free loopback port only, with its Unix socket in that folder and
trust authentication for the local user ``shoplens``. ``initdb`` refuses to run as root,
so as root both run as the ``postgres`` system user. :class:`PostgresUnavailable` says why
a server cannot be started (binaries missing, no user to run them as, start-up failure)::

    with LocalPostgres() as pg:
        url = pg.create_database("shop")   # postgresql://shoplens@127.0.0.1:PORT/shop
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from shoplens.db.adapter import PgParams, connect_raw, quote_ident

USER = "shoplens"
#: Settings that trade durability for speed (tests only: a crash may lose commits).
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


class PostgresUnavailable(RuntimeError):
    """A local PostgreSQL server cannot be started here; the message says why."""


def find_bindir() -> Path | None:
    """Folder of ``initdb``/``pg_ctl``: the newest /usr/lib/postgresql/N/bin, else
    ``pg_config --bindir``, else None."""
    versions = [Path(p).parent.parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    versions = [v for v in versions if v.name.isdigit()]
    if versions:
        return max(versions, key=lambda v: int(v.name)) / "bin"
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").is_file():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """A PostgreSQL server in a temporary folder (started by :meth:`start`, removed with
    its data by :meth:`stop`); a context manager.

    Args:
        durable: Keep PostgreSQL's default durability (fsync on every commit); False uses
            :data:`FAST_SETTINGS`, for tests.
        settings: More server settings (``name: value``).
    """

    def __init__(self, *, durable: bool = True, settings: dict[str, str] | None = None) -> None:
        self.bindir = find_bindir()
        self.settings = {**({} if durable else FAST_SETTINGS), **(settings or {})}
        self.folder: Path | None = None
        self.port = 0
        self.version = ""

    def _command(self, *args: str) -> list[str]:
        if os.geteuid() != 0:
            return list(args)
        return ["runuser", "-u", "postgres", "--", *args]

    def _run(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            self._command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            log = ""
            if self.folder and (self.folder / "server.log").is_file():
                log = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]} {log}".strip()
            )
        return proc.stdout

    def start(self) -> LocalPostgres:
        """initdb + pg_ctl start; PostgresUnavailable when it cannot."""
        if self.bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL server binaries not found (install Debian's 'postgresql' "
                "package: make postgres)"
            )
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root (initdb refuses) and there is no 'postgres' user to run "
                    "the server as"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root and 'runuser' is missing")
        self.folder = Path(tempfile.mkdtemp(prefix="shoplens-pg-"))
        try:
            if os.geteuid() == 0:
                os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._start(self.folder)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, folder: Path) -> None:
        assert self.bindir is not None
        data = folder / "data"
        self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
            "-E", "UTF8", "--no-instructions", "--no-sync",  # throwaway data folder
        )  # fmt: skip
        self.port = _free_port()
        options = [f"-p {self.port}", f"-k {folder}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {k}={v}" for k, v in self.settings.items()]
        atexit.register(self.stop)
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
            "-o", " ".join(options), "-w", "-t", "60", "start",
        )  # fmt: skip
        self.version = self._run(str(self.bindir / "postgres"), "--version").strip()

    def params(self, database: str = "postgres") -> PgParams:
        return PgParams(host="127.0.0.1", port=self.port, database=database, user=USER)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping an older one); its URL."""
        conn = connect_raw(self.params())
        try:
            conn.run(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
            conn.run(f"CREATE DATABASE {quote_ident(name)}")
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its folder (data included)."""
        if self.folder is None:
            return
        folder, self.folder = self.folder, None
        atexit.unregister(self.stop)
        if self.bindir is not None and (folder / "data" / "postmaster.pid").exists():
            subprocess.run(
                self._command(
                    str(self.bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate",
                    "-w", "stop",
                ),
                capture_output=True,
                timeout=60,
                check=False,
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
