"""A throwaway PostgreSQL server for tests: initdb into a temp dir, pg_ctl on 127.0.0.1:<free
port> with its unix socket in the same dir, stopped and deleted at the end.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (created
by the Debian `postgresql` package) through `runuser`. Missing binaries skip locally and fail
in CI (CI=true), like tests/_require.py.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from tests._require import in_ci, require_module


def _missing(message: str):
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _version(initdb: str) -> int:
    part = initdb.split("/")[4]
    return int(part) if part.isdigit() else 0


def _bindir() -> str:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    hits = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if not hits:
        _missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed (the Debian "
                 "package postgresql: .ci/install-accountant.sh, install-backends.sh and "
                 "install-pgwire.sh install it)")
    return os.path.dirname(hits[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """`with PostgresServer() as server:` (or `.start()` / `.stop()`)."""

    def __init__(self):
        require_module("psycopg")
        self.bindir = _bindir()
        self.run_as = None
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                _missing("running as root and runuser is missing")
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _missing("running as root and there is no 'postgres' user")
            self.run_as = "postgres"
        self.root = tempfile.mkdtemp(prefix="sqlgate-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.port = _free_port()
        self.user = "sqlgate"
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={self.user}"

    @property
    def conninfo(self) -> str:
        return self.dsn()

    def new_database(self, name: str) -> str:
        """A fresh database on this server; returns its conninfo."""
        import psycopg
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--"] + cmd
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{os.path.basename(args[0])} failed:\n{done.stdout[-2000:]}")

    def start(self) -> "PostgresServer":
        try:
            self._run(os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-A", "trust",
                      "-U", self.user, "--no-sync", "--no-locale", "-E", "UTF8")
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories="
                       f"{self.root} -c fsync=off -c full_page_writes=off -c max_connections=100 "
                       "-c shared_buffers=16MB")
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                      os.path.join(self.root, "log"), "-o", options, "-w", "-t", "60", "start")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import psycopg
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.conninfo, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "immediate",
                      "-w", "stop")
        except Exception:
            pass  # never started, or already gone: the directory goes either way
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
