"""A PostgreSQL server of a run's own (``initdb`` into a directory, a free loopback port),
that the chaos suite restarts: ``restart()`` stops it the hard way (``pg_ctl stop -m
immediate``: every backend killed, no checkpoint, crash recovery at the next start) and starts
it again on the same port and data. Found from ``pg_config --bindir`` or Debian's
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root: as root, the
server's commands run as the ``postgres`` user (``runuser``), in a directory of its own under
the temporary directory."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from core.net import free_port

__all__ = ["PostgresServer", "find_pg_bin"]


def find_pg_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        candidates += sorted((p / "bin" for p in debian.iterdir()), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()),
                None)  # fmt: skip


class PostgresServer:
    """``initdb`` once, then start / restart / stop; ``admin_url`` reaches its ``postgres``
    database as the ``postgres`` superuser (trust on loopback)."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.bin = bin_dir
        self.port = free_port()
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            # postgres must reach the directory: one of its own under /tmp, not one under a
            # root-only parent
            self.dir = Path(tempfile.mkdtemp(prefix="ordersync-pg-"))
            self.data = self.dir / "data"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr.strip()[-500:]}")

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._as:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "--no-sync", "-E", "UTF8")  # fmt: skip

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")  # fmt: skip
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                  "-t", "60", "-l", str(self.dir / "server.log"), "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stopped (if it runs) and its directory deleted."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        """Killed (every backend, mid-transaction or not) and started again: crash recovery."""
        self.stop("immediate")
        self.start()
