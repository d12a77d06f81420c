"""A throwaway PostgreSQL server for tests: initdb into a temp dir, listen on 127.0.0.1:<free
port> with its unix socket in the same dir, stop and delete at the end.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (created
by the Debian `postgresql` package) through `runuser`. Missing binaries skip locally and
fail in CI (tests/_require.py logic).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

from tests._require import in_ci, require_module


def _missing(message: str):
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def find_bindir() -> str:
    hits = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not hits:
        _missing("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) are not "
                 "installed (.ci/install-accountant.sh installs them)")
    return os.path.dirname(hits[-1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgServer:
    bindir: str
    root: str
    port: int
    run_as: str | None

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "data")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=10"

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = list(args)
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--"] + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            log = ""
            logfile = os.path.join(self.root, "server.log")
            if os.path.exists(logfile):
                with open(logfile) as fh:
                    log = fh.read()[-2000:]
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): "
                               f"{proc.stdout[-1000:]}{proc.stderr[-1000:]}{log}")

    def start(self) -> None:
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-A", "trust",
                  "-U", "postgres", "--no-locale", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=100 -c fsync=off -c shared_buffers=16MB")
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                  os.path.join(self.root, "server.log"), "-w", "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        try:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "fast",
                      "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    require_module("psycopg")
    bindir = find_bindir()
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no 'postgres' user to run the test server")
        if not shutil.which("runuser"):
            _missing("running as root and runuser is missing")
        run_as = "postgres"
    root = tempfile.mkdtemp(prefix="sqlgate-pg-")
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PgServer(bindir, root, _free_port(), run_as)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server
