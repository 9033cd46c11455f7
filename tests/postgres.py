"""A real PostgreSQL server for a test: a fresh cluster in a temporary folder, listening on a
free loopback port (as ``nobody`` when the tests run as root: PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


def _bindir() -> Path | None:
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    for candidate in [shutil.which("initdb"), *installed]:
        if candidate and Path(candidate).is_file():
            return Path(os.path.realpath(candidate)).parent
    return None


BINDIR = _bindir()


def _has_driver() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


needs_postgres = pytest.mark.skipif(
    BINDIR is None or not _has_driver(),
    reason="needs PostgreSQL (apt-get install postgresql; tools/system-deps.sh) and its driver "
    "(pip install 'psycopg[binary]')",
)


class Postgres:
    """``url``: a SQLAlchemy URL of database ``edgeship`` (user ``edgeship``, trust login)."""

    def __init__(self) -> None:
        assert BINDIR is not None
        self.folder = Path(tempfile.mkdtemp(prefix="edgeship-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.folder, 65534, 65534)  # nobody
            self.as_user = ["runuser", "-u", "nobody", "--"]
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://edgeship@127.0.0.1:{self.port}/edgeship"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self, timeout: float = 60.0) -> None:
        assert BINDIR is not None
        self._run(str(BINDIR / "initdb"), "-D", str(self.data), "-U", "edgeship", "-A", "trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.as_user, str(BINDIR / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.folder),
                 "-c", "fsync=off", "-c", "synchronous_commit=off"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(BINDIR / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                self._run(str(BINDIR / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "edgeship", "edgeship")  # fmt: skip
                return
            time.sleep(0.2)
        raise TimeoutError(f"postgres did not answer on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # smart shutdown (runuser passes it on)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)
