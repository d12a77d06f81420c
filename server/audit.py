"""The audit log: every request, append-only and hash-chained.

Each record's `hash` is HMAC-SHA256(key, prev_hash || canonical JSON of the record). Editing,
deleting or reordering any record breaks every later link, so `verify()` finds it. The key
lives in a separate file (`audit.key`, mode 0600): someone who can rewrite the log database
but not read the key cannot recompute a valid chain. Without a key the chain is a plain
SHA-256 chain (still detects edits, not a forger who rewrites everything after).

Appends take SQLite's write lock (`BEGIN IMMEDIATE`) to read the head and insert in one
transaction, so threads and processes extend one linear chain. Update and delete are refused
by triggers as well.

Records hold what happened (who, when, from where, query text as sent and as rewritten, cost,
decision, rows out), never result values.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from server.sqlite_db import sqlite_connection

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "actor", "role", "source", "channel", "action", "dataset", "query",
          "rewritten", "epsilon", "delta", "decision", "code", "rows_out", "details")
_MAX_QUERY_CHARS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT,
    role TEXT,
    source TEXT,
    channel TEXT NOT NULL,
    action TEXT NOT NULL,
    dataset TEXT,
    query TEXT,
    rewritten TEXT,
    epsilon REAL,
    delta REAL,
    decision TEXT NOT NULL,
    code TEXT,
    rows_out INTEGER,
    details TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit (actor);
CREATE INDEX IF NOT EXISTS audit_by_dataset ON audit (dataset);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class AuditEvent:
    """One thing that happened. `decision` is ok, refused, error, approved, denied..."""

    channel: str                 # http, pgwire, trino, cli, router, console
    action: str                  # query, explain, upload, approve, login, ...
    decision: str
    actor: str | None = None
    role: str | None = None
    source: str | None = None    # client address
    dataset: str | None = None
    query: str | None = None
    rewritten: str | None = None
    epsilon: float | None = None
    delta: float | None = None
    code: str | None = None      # error code when refused or failed
    rows_out: int | None = None
    details: dict | None = None  # public facts only (request id, file name, ...)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "records": self.records, "first_bad_seq": self.first_bad_seq,
                "reason": self.reason}


def decision_for(exc: BaseException | None) -> tuple[str, str | None]:
    """(decision, code) of an outcome: ok, refused (the caller's error) or error (ours).
    Every front end records outcomes this way, so audit queries can filter on them."""
    if exc is None:
        return "ok", None
    from sqlgate.errors import SqlgateError
    if isinstance(exc, SqlgateError):
        return ("error" if exc.http_status >= 500 else "refused"), exc.code
    return "error", "internal_error"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _canonical(record: dict) -> bytes:
    return json.dumps({k: record[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, default=str).encode()


def load_or_create_key(path: str | Path) -> bytes:
    path = Path(path)
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    # O_EXCL: two processes starting at once agree on one key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
        handle.flush()
        os.fsync(handle.fileno())
    return key


class AuditLog:
    def __init__(self, path: str | Path, key: bytes | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = key
        with self._connection() as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def in_home(cls, home: str | Path) -> "AuditLog":
        home = Path(home)
        return cls(home / "audit.sqlite", load_or_create_key(home / "audit.key"))

    def _connection(self, *, write: bool = False):
        return sqlite_connection(self.path, write=write, timeout_s=60.0)

    def _link(self, prev_hash: str, record: dict) -> str:
        payload = prev_hash.encode() + _canonical(record)
        if self._key:
            return hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        return hashlib.sha256(payload).hexdigest()

    def append(self, event: AuditEvent) -> int:
        record = {
            "ts": _now(), "actor": event.actor, "role": event.role, "source": event.source,
            "channel": event.channel, "action": event.action, "dataset": event.dataset,
            "query": _clip(event.query), "rewritten": _clip(event.rewritten),
            "epsilon": None if event.epsilon is None else float(event.epsilon),
            "delta": None if event.delta is None else float(event.delta),
            "decision": event.decision, "code": event.code,
            "rows_out": None if event.rows_out is None else int(event.rows_out),
            "details": json.dumps(event.details, sort_keys=True, default=str)
            if event.details else None,
        }
        with self._connection(write=True) as conn:
            head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
            record["seq"] = seq
            digest = self._link(prev_hash, record)
            conn.execute(
                f"INSERT INTO audit ({', '.join(FIELDS)}, prev_hash, hash) VALUES "
                f"({', '.join('?' * (len(FIELDS) + 2))})",
                (*(record[k] for k in FIELDS), prev_hash, digest))
        return seq

    def records(self, *, actor: str | None = None, dataset: str | None = None,
                datasets: set[str] | None = None, action: str | None = None,
                decision: str | None = None, channel: str | None = None,
                since: str | None = None, until: str | None = None, after_seq: int = 0,
                limit: int = 100, include_unscoped: bool = True,
                owned_since: dict[str, str] | None = None) -> list[dict]:
        """Records matching every given filter, oldest first.

        `datasets` restricts to records about those datasets (an owner's view); records with no
        dataset (logins, user admin) are kept only when `include_unscoped`.
        `owned_since` ({dataset: ISO time}) further keeps a dataset's records only from that
        time on: an owner's view starts when they were granted `own` (see read_audit).
        """
        clauses, args = ["seq > ?"], [int(after_seq)]
        for column, value in (("actor", actor), ("dataset", dataset), ("action", action),
                              ("decision", decision), ("channel", channel)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append("ts >= ?")
            args.append(since)
        if until is not None:
            clauses.append("ts < ?")
            args.append(until)
        if datasets is not None:
            scoped = f"dataset IN ({','.join('?' * len(datasets))})" if datasets else "0"
            clauses.append(f"({scoped} OR dataset IS NULL)" if include_unscoped else scoped)
            args.extend(sorted(datasets))
        if owned_since is not None:
            # One JSON parameter, whatever the number of datasets. Timestamps are all
            # datetime.now(timezone.utc).isoformat() text, which sorts chronologically.
            clauses.append("(dataset IS NULL OR EXISTS (SELECT 1 FROM json_each(?) AS o "
                           "WHERE o.key = audit.dataset AND audit.ts >= o.value))")
            args.append(json.dumps({str(k): str(v) for k, v in owned_since.items()}))
        limit = max(1, min(int(limit), 10_000))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(FIELDS)}, prev_hash, hash FROM audit WHERE "
                f"{' AND '.join(clauses)} ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        out = []
        for row in rows:
            record = dict(zip(FIELDS + ("prev_hash", "hash"), row))
            record["details"] = json.loads(record["details"]) if record["details"] else None
            out.append(record)
        return out

    def verify(self) -> ChainReport:
        """Walk the whole chain; report the first record whose link does not hold."""
        prev_hash, expected_seq, count = GENESIS, 1, 0
        with self._connection() as conn:
            cursor = conn.execute(f"SELECT {', '.join(FIELDS)}, prev_hash, hash FROM audit "
                                  f"ORDER BY seq")
            for row in cursor:
                record = dict(zip(FIELDS + ("prev_hash", "hash"), row))
                seq = record["seq"]
                if seq != expected_seq:
                    return ChainReport(False, count, expected_seq, "a record is missing")
                if record["prev_hash"] != prev_hash:
                    return ChainReport(False, count, seq, "the link to the previous record "
                                                          "is broken")
                if not hmac.compare_digest(self._link(prev_hash, record), record["hash"]):
                    return ChainReport(False, count, seq, "the record was modified")
                prev_hash, expected_seq, count = record["hash"], seq + 1, count + 1
        return ChainReport(True, count)

    def head(self) -> dict[str, Any]:
        with self._connection() as conn:
            row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return {"seq": row[0], "hash": row[1]} if row else {"seq": 0, "hash": GENESIS}


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _MAX_QUERY_CHARS else text[:_MAX_QUERY_CHARS] + "...[clipped]"
