"""A throwaway PostgreSQL server for tests: Debian's binaries, a temporary data directory, loopback only.

The server listens on 127.0.0.1 on a free port with its socket in the same temporary directory.
Local (socket) connections trust the ``postgres`` superuser, which creates the test role; TCP
connections need the role's password (scram-sha-256), so a wrong or missing password really fails
and a test of password masking checks a password that is in use. initdb refuses to run as root:
as root every server command runs as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROLE = "resnet"
PASSWORD = "pg-Secret-4711"  # distinctive, so a test can search every output for it
DATABASE = "studies"


def bin_dir() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres (newest Debian version first, then $PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def driver_missing() -> str | None:
    """Why Python cannot talk to PostgreSQL, or None."""
    import importlib.util

    if importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2"):
        return None
    return "no PostgreSQL driver for Python (pip install psycopg2-binary)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One running server; ``url`` has the test role's password in it."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync")
        # -F: no fsync (a test server); -k: the socket stays in our directory, not /var/run.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=100"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def psql(self, sql: str) -> str:
        return self._run(str(self.bindir / "psql"), "-X", "-q", "-h", str(self.root), "-p", str(self.port),
                         "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def start_server(attempts: int = 3) -> Server:
    """Start a server on a free port (retrying if another process takes the port first)."""
    bindir = bin_dir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL's initdb was not found (apt-get install postgresql)")
    error: Exception | None = None
    for _ in range(attempts):
        # Not under pytest's basetemp: that is private to root (0700) and the server runs as postgres.
        root = Path(tempfile.mkdtemp(prefix="resnet-core-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = Server(bindir, root, free_port())
        try:
            server.start()
            return server
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", "") or ""
            error = RuntimeError(f"PostgreSQL did not start: {exc}\n{detail}\n{server.log_tail()}")
            remove(server)
    raise error  # type: ignore[misc]


def remove(server: Server) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)
