"""Users, roles, bearer tokens, SCRAM verifiers and per-dataset grants.

One SQLite file per domain, shared by the HTTP API, the PG wire server and the CLI.

* Tokens are random (256 bits) and stored as their SHA-256 only: a stolen users file does not
  hold usable tokens. A token is shown once, when issued.
* Passwords are never stored. We keep the SCRAM-SHA-256 verifier (salt, iterations,
  StoredKey, ServerKey, RFC 5802/7677), which serves both PG wire SCRAM logins and HTTP basic
  auth (the client key recomputed from a password must hash to StoredKey).
* Roles: `admin` manages users and may do everything; `owner` manages the datasets it owns
  (permission `own`, granted or acquired by uploading); `analyst` queries the datasets it was
  granted (permission `query`). Owning a dataset implies querying it.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from server.sqlite_db import sqlite_connection
from sqlgate.errors import AuthenticationFailed, Conflict, InvalidParameter, NotFound

ROLES = ("admin", "owner", "analyst")
PERMISSIONS = ("query", "own")
SCRAM_ITERATIONS = 4096
TOKEN_PREFIX = "sqg_"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,62}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'owner', 'analyst')),
    scram_salt BLOB,
    scram_iterations INTEGER,
    scram_stored_key BLOB,
    scram_server_key BLOB,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES users (name),
    label TEXT,
    created_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (name);
CREATE TABLE IF NOT EXISTS grants (
    name TEXT NOT NULL REFERENCES users (name),
    dataset TEXT NOT NULL,
    permission TEXT NOT NULL CHECK (permission IN ('query', 'own')),
    granted_at TEXT NOT NULL,
    PRIMARY KEY (name, dataset, permission)
);
"""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role}


@dataclass(frozen=True)
class ScramVerifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True)
class TokenInfo:
    token_id: str          # the first 12 hex digits of the token's hash: safe to show
    name: str
    label: str | None
    created_at: str
    revoked: bool


def scram_verifier_for(password: str, salt: bytes | None = None,
                       iterations: int = SCRAM_ITERATIONS) -> ScramVerifier:
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return ScramVerifier(salt, iterations, stored_key, server_key)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def check_name(name: object, what: str = "user name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidParameter(f"{what} must be 1-63 characters: letters, digits, '_', '.', "
                               f"'@' or '-', starting with a letter or '_'")
    return name


class UserStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.executescript(_SCHEMA)

    def _connection(self, *, write: bool = False):
        return sqlite_connection(self.path, write=write, foreign_keys=True)

    # ------------------------------------------------------------ users

    def create_user(self, name: str, role: str, password: str | None = None) -> User:
        check_name(name)
        if role not in ROLES:
            raise InvalidParameter(f"role must be one of {', '.join(ROLES)}")
        verifier = self._verifier_from_password(password) if password is not None else None
        with self._connection(write=True) as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"user '{name}' already exists")
            conn.execute(
                "INSERT INTO users (name, role, scram_salt, scram_iterations, scram_stored_key,"
                " scram_server_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, role, *(_verifier_row(verifier)), _now()))
        return User(name, role)

    def set_password(self, name: str, password: str) -> None:
        verifier = self._verifier_from_password(password)
        with self._connection(write=True) as conn:
            updated = conn.execute(
                "UPDATE users SET scram_salt = ?, scram_iterations = ?, scram_stored_key = ?,"
                " scram_server_key = ? WHERE name = ?", (*_verifier_row(verifier), name)).rowcount
        if not updated:
            raise NotFound(f"user '{name}' does not exist")

    def set_role(self, name: str, role: str) -> User:
        if role not in ROLES:
            raise InvalidParameter(f"role must be one of {', '.join(ROLES)}")
        with self._connection(write=True) as conn:
            if not conn.execute("UPDATE users SET role = ? WHERE name = ?", (role, name)).rowcount:
                raise NotFound(f"user '{name}' does not exist")
        return User(name, role)

    def disable_user(self, name: str) -> None:
        """Users are disabled, never deleted: the audit log and ledger keep naming them."""
        with self._connection(write=True) as conn:
            if not conn.execute("UPDATE users SET disabled = 1 WHERE name = ?", (name,)).rowcount:
                raise NotFound(f"user '{name}' does not exist")
            conn.execute("UPDATE tokens SET revoked = 1 WHERE name = ?", (name,))

    def user(self, name: str) -> User:
        with self._connection() as conn:
            row = conn.execute("SELECT name, role FROM users WHERE name = ? AND disabled = 0",
                               (name,)).fetchone()
        if row is None:
            raise NotFound(f"user '{name}' does not exist")
        return User(*row)

    def users(self) -> list[User]:
        with self._connection() as conn:
            rows = conn.execute("SELECT name, role FROM users WHERE disabled = 0 ORDER BY name")
            return [User(*row) for row in rows]

    def count_users(self) -> int:
        with self._connection() as conn:
            return conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    # ------------------------------------------------------------ tokens

    def issue_token(self, name: str, label: str | None = None) -> str:
        """A new bearer token for `name`. Only its hash is stored: show it to the user once."""
        self.user(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._connection(write=True) as conn:
            conn.execute("INSERT INTO tokens (token_sha256, name, label, created_at)"
                         " VALUES (?, ?, ?, ?)", (_token_hash(token), name, label, _now()))
        return token

    def tokens(self, name: str) -> list[TokenInfo]:
        with self._connection() as conn:
            rows = conn.execute("SELECT token_sha256, name, label, created_at, revoked"
                                " FROM tokens WHERE name = ? ORDER BY created_at", (name,))
            return [TokenInfo(h[:12], n, label, created, bool(revoked))
                    for h, n, label, created, revoked in rows]

    def revoke_token(self, name: str, token_id: str) -> None:
        if not isinstance(token_id, str) or not re.fullmatch(r"[0-9a-f]{12}", token_id):
            raise InvalidParameter("token id must be the 12 hex digits shown by the token list")
        with self._connection(write=True) as conn:
            updated = conn.execute("UPDATE tokens SET revoked = 1 WHERE name = ? AND"
                                   " substr(token_sha256, 1, 12) = ?", (name, token_id)).rowcount
        if not updated:
            raise NotFound(f"user '{name}' has no token '{token_id}'")

    def authenticate_token(self, token: str | None) -> User:
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("a bearer token is required")
        with self._connection() as conn:
            row = conn.execute(
                "SELECT u.name, u.role FROM tokens t JOIN users u ON u.name = t.name"
                " WHERE t.token_sha256 = ? AND t.revoked = 0 AND u.disabled = 0",
                (_token_hash(token),)).fetchone()
        if row is None:
            raise AuthenticationFailed("the token is invalid or revoked")
        return User(*row)

    # ------------------------------------------------------------ passwords / SCRAM

    def scram_verifier(self, name: str) -> ScramVerifier | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT scram_salt, scram_iterations, scram_stored_key, scram_server_key"
                " FROM users WHERE name = ? AND disabled = 0", (name,)).fetchone()
        if row is None or row[0] is None:
            return None
        return ScramVerifier(bytes(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))

    def authenticate_password(self, name: str, password: str) -> User:
        failure = AuthenticationFailed("user name or password is wrong")
        if not isinstance(name, str) or not isinstance(password, str):
            raise failure
        verifier = self.scram_verifier(name)
        # Unknown users still pay for one PBKDF2 so timing does not reveal which names exist.
        probe = verifier or ScramVerifier(b"\0" * 16, SCRAM_ITERATIONS, b"", b"")
        computed = scram_verifier_for(password, probe.salt, probe.iterations)
        if verifier is None or not hmac.compare_digest(computed.stored_key, verifier.stored_key):
            raise failure
        return self.user(name)

    @staticmethod
    def _verifier_from_password(password: str) -> ScramVerifier:
        if not isinstance(password, str) or len(password) < 8:
            raise InvalidParameter("password must be at least 8 characters")
        if len(password) > 1024:
            raise InvalidParameter("password must be at most 1024 characters")
        return scram_verifier_for(password)

    # ------------------------------------------------------------ grants

    def grant(self, name: str, dataset: str, permission: str) -> None:
        if permission not in PERMISSIONS:
            raise InvalidParameter(f"permission must be one of {', '.join(PERMISSIONS)}")
        user = self.user(name)
        if permission == "own" and user.role == "analyst":
            raise InvalidParameter(f"user '{name}' is an analyst; only owners and admins can "
                                   f"own datasets")
        with self._connection(write=True) as conn:
            conn.execute("INSERT OR IGNORE INTO grants (name, dataset, permission, granted_at)"
                         " VALUES (?, ?, ?, ?)", (name, dataset, permission, _now()))

    def revoke(self, name: str, dataset: str, permission: str) -> None:
        with self._connection(write=True) as conn:
            conn.execute("DELETE FROM grants WHERE name = ? AND dataset = ? AND permission = ?",
                         (name, dataset, permission))

    def revoke_dataset(self, dataset: str) -> None:
        """Forget every grant on a dropped dataset, so a new dataset of that name starts clean."""
        with self._connection(write=True) as conn:
            conn.execute("DELETE FROM grants WHERE dataset = ?", (dataset,))

    def can(self, user: User, dataset: str, permission: str) -> bool:
        if user.is_admin:
            return True
        if permission == "own" and user.role != "owner":
            return False
        wanted = ("query", "own") if permission == "query" else ("own",)
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT 1 FROM grants g JOIN users u ON u.name = g.name WHERE g.name = ? AND"
                f" u.disabled = 0 AND g.dataset = ? AND g.permission IN"
                f" ({','.join('?' * len(wanted))})", (user.name, dataset, *wanted)).fetchone()
        return row is not None

    def datasets_for(self, user: User, permission: str, all_datasets=None) -> set[str]:
        """Datasets `user` holds `permission` on. Admins hold every dataset in `all_datasets`."""
        if user.is_admin:
            return set(all_datasets or ())
        if permission == "own" and user.role != "owner":
            return set()
        wanted = ("query", "own") if permission == "query" else ("own",)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT dataset FROM grants WHERE name = ? AND permission IN"
                f" ({','.join('?' * len(wanted))})", (user.name, *wanted))
            return {row[0] for row in rows}

    def grants(self, dataset: str | None = None) -> list[dict]:
        query = "SELECT name, dataset, permission, granted_at FROM grants"
        args: tuple = ()
        if dataset is not None:
            query += " WHERE dataset = ?"
            args = (dataset,)
        with self._connection() as conn:
            return [dict(zip(("user", "dataset", "permission", "granted_at"), row))
                    for row in conn.execute(query + " ORDER BY dataset, name", args)]


def _verifier_row(verifier: ScramVerifier | None) -> tuple:
    if verifier is None:
        return (None, None, None, None)
    return (verifier.salt, verifier.iterations, verifier.stored_key, verifier.server_key)
