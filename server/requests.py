"""Approval requests: what an analyst asks for that DP cannot give (exact aggregate, row
sample, training job), held until a data owner approves or denies it.

One SQLite file per domain (`requests.sqlite`, WAL, `synchronous=FULL`), so requests survive
restarts. Every state change is one `BEGIN IMMEDIATE` transaction that re-reads the status,
so two owners approving at once, or two fetches of one result, cannot both succeed.

Life cycle (status):

    pending --approve--> approved --start--> running --finish--> done --fetch--> fetched
       |                     |                  |--fail--> failed
       +--deny--> denied     +--fail--> failed

The result (bytes + content type) is stored only between `finish` and the single `fetch`,
which hands it to the requesting analyst and erases it: a result is released exactly once.
Runners (exact/sample built in, training from torch_bridge) report progress with
`set_progress` and end with `finish` or `fail`.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from server.sqlite_db import sqlite_connection
from sqlgate.errors import (Conflict, InvalidParameter, NotFound, SqlgateError,
                            TooManyRequests)

KINDS = ("exact", "sample", "training")
STATUSES = ("pending", "approved", "running", "done", "failed", "denied", "fetched")
MAX_SQL_CHARS = 100_000
MAX_PURPOSE_CHARS = 4_000
MAX_REASON_CHARS = 4_000
MAX_SPEC_BYTES = 64_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    dataset TEXT NOT NULL,
    requester TEXT NOT NULL,
    sql TEXT NOT NULL,
    purpose TEXT NOT NULL,
    spec TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    reviewer TEXT,
    reason TEXT,
    decided_at TEXT,
    progress TEXT,
    result BLOB,
    content_type TEXT,
    summary TEXT,
    error_code TEXT,
    error_message TEXT,
    fetched_at TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_requester ON requests (requester);
CREATE INDEX IF NOT EXISTS requests_by_dataset ON requests (dataset);
"""
_COLUMNS = ("id", "kind", "dataset", "requester", "sql", "purpose", "spec", "status",
            "created_at", "updated_at", "reviewer", "reason", "decided_at", "progress",
            "content_type", "summary", "error_code", "error_message", "fetched_at")


class ResultGone(SqlgateError):
    """The result was already fetched (results are released exactly once)."""

    code = "result_gone"
    sqlstate = "55000"
    http_status = 410


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    kind: str
    dataset: str
    requester: str
    sql: str
    purpose: str
    spec: dict | None
    status: str
    created_at: str
    updated_at: str
    reviewer: str | None = None
    reason: str | None = None
    decided_at: str | None = None
    progress: dict | None = None
    content_type: str | None = None
    summary: dict | None = None         # public facts about the result (rows, truncated...)
    error_code: str | None = None
    error_message: str | None = None
    fetched_at: str | None = None

    def to_dict(self) -> dict:
        body = {name: getattr(self, name) for name in _COLUMNS}
        body["result_available"] = self.status == "done"
        return body


@dataclass(frozen=True)
class StoredResult:
    body: bytes
    content_type: str
    summary: dict | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _text(value: Any, what: str, limit: int, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidParameter(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise InvalidParameter(f"{what} must be at most {limit} characters")
    return value


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text else None


class RequestStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.executescript(_SCHEMA)

    def _connection(self, *, write: bool = False):
        return sqlite_connection(self.path, write=write)

    # ------------------------------------------------------------ reading

    def get(self, request_id: str) -> ApprovalRequest:
        with self._connection() as conn:
            return self._get(conn, request_id)

    def list(self, *, requester: str | None = None, datasets: set[str] | None = None,
             status: str | None = None, kind: str | None = None,
             limit: int = 100) -> list[ApprovalRequest]:
        """Requests matching every given filter, newest first. `datasets` scopes to an
        owner's datasets (compared case-insensitively, like dataset names in SQL)."""
        clauses, args = ["1"], []
        if requester is not None:
            clauses.append("requester = ?")
            args.append(requester)
        if status is not None:
            if status not in STATUSES:
                raise InvalidParameter(f"status must be one of {', '.join(STATUSES)}")
            clauses.append("status = ?")
            args.append(status)
        if kind is not None:
            if kind not in KINDS:
                raise InvalidParameter(f"kind must be one of {', '.join(KINDS)}")
            clauses.append("kind = ?")
            args.append(kind)
        if datasets is not None:
            names = sorted({d.lower() for d in datasets})
            clauses.append(f"lower(dataset) IN ({','.join('?' * len(names))})" if names else "0")
            args.extend(names)
        limit = max(1, min(int(limit), 1000))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE {' AND '.join(clauses)} "
                f"ORDER BY created_at DESC, id LIMIT ?", (*args, limit)).fetchall()
        return [_request(row) for row in rows]

    # ------------------------------------------------------------ analyst

    def create(self, *, requester: str, dataset: str, kind: str, sql: str, purpose: str,
               spec: dict | None = None, max_pending: int | None = None) -> ApprovalRequest:
        """A new pending request. With `max_pending`, a requester who already has that many
        pending requests is refused (TooManyRequests, 429): each one holds disk and an
        owner's attention until decided."""
        if kind not in KINDS:
            raise InvalidParameter(f"kind must be one of {', '.join(KINDS)}")
        _text(sql, "sql", MAX_SQL_CHARS)
        _text(purpose, "purpose", MAX_PURPOSE_CHARS)
        if spec is not None and not isinstance(spec, dict):
            raise InvalidParameter("spec must be a JSON object")
        spec_text = json.dumps(spec, sort_keys=True) if spec is not None else None
        if spec_text is not None and len(spec_text) > MAX_SPEC_BYTES:
            raise InvalidParameter(f"spec must be at most {MAX_SPEC_BYTES} bytes of JSON")
        now = _now()
        request_id = uuid.uuid4().hex
        with self._connection(write=True) as conn:
            # Counted inside the write transaction: parallel creates cannot overshoot.
            if max_pending is not None:
                (pending,) = conn.execute(
                    "SELECT COUNT(*) FROM requests WHERE requester = ? AND status = 'pending'",
                    (requester,)).fetchone()
                if pending >= max_pending:
                    raise TooManyRequests(
                        f"you already have {pending} pending requests (the limit is "
                        f"{max_pending}); wait for an owner to decide some first",
                        details={"limit": max_pending, "pending": pending})
            conn.execute(
                "INSERT INTO requests (id, kind, dataset, requester, sql, purpose, spec, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (request_id, kind, dataset, requester, sql, purpose, spec_text, now, now))
            return self._get(conn, request_id)

    def fetch_result(self, request_id: str) -> StoredResult:
        """Hand out the result once: `done` -> `fetched`, and the stored bytes are erased."""
        with self._connection(write=True) as conn:
            request = self._get(conn, request_id)
            if request.status == "fetched":
                raise ResultGone(f"the result of request '{request_id}' was already fetched; "
                                 f"results are released once")
            if request.status != "done":
                raise Conflict(f"request '{request_id}' has no result to fetch (status "
                               f"{request.status})", details={"status": request.status})
            body, content_type, summary = conn.execute(
                "SELECT result, content_type, summary FROM requests WHERE id = ?",
                (request_id,)).fetchone()
            now = _now()
            conn.execute("UPDATE requests SET status = 'fetched', result = NULL, fetched_at = ?,"
                         " updated_at = ? WHERE id = ?", (now, now, request_id))
        return StoredResult(bytes(body), content_type, _json_or_none(summary))

    # ------------------------------------------------------------ owner

    def approve(self, request_id: str, reviewer: str, reason: str) -> ApprovalRequest:
        return self._decide(request_id, reviewer, reason, "approved")

    def deny(self, request_id: str, reviewer: str, reason: str) -> ApprovalRequest:
        return self._decide(request_id, reviewer, reason, "denied")

    def _decide(self, request_id: str, reviewer: str, reason: str, status: str) -> ApprovalRequest:
        _text(reason, "reason", MAX_REASON_CHARS)
        return self._move(request_id, ("pending",), status, reviewer=reviewer, reason=reason,
                          decided_at=_now())

    # ------------------------------------------------------------ runners

    def start(self, request_id: str) -> ApprovalRequest:
        return self._move(request_id, ("approved",), "running")

    def set_progress(self, request_id: str, progress: dict) -> ApprovalRequest:
        """Public progress facts of a running request (epoch, step...), never data values."""
        if not isinstance(progress, dict):
            raise InvalidParameter("progress must be a JSON object")
        return self._move(request_id, ("running",), "running",
                          progress=json.dumps(progress, sort_keys=True, default=str))

    def finish(self, request_id: str, result: bytes, content_type: str,
               summary: dict | None = None) -> ApprovalRequest:
        if not isinstance(result, (bytes, bytearray)):
            raise InvalidParameter("result must be bytes")
        return self._move(request_id, ("running",), "done", result=bytes(result),
                          content_type=str(content_type),
                          summary=json.dumps(summary, sort_keys=True, default=str)
                          if summary is not None else None)

    def fail(self, request_id: str, code: str, message: str) -> ApprovalRequest:
        """`message` is shown to the analyst: build it from public facts only."""
        return self._move(request_id, ("approved", "running"), "failed", error_code=code,
                          error_message=message)

    # ------------------------------------------------------------ internals

    def _move(self, request_id: str, allowed: tuple[str, ...], status: str,
              **fields: Any) -> ApprovalRequest:
        with self._connection(write=True) as conn:
            current = self._get(conn, request_id)
            if current.status not in allowed:
                raise Conflict(f"request '{request_id}' is {current.status}; this needs it to be "
                               f"{' or '.join(allowed)}", details={"status": current.status})
            fields.update(status=status, updated_at=_now())
            names = sorted(fields)
            conn.execute(f"UPDATE requests SET {', '.join(f'{n} = ?' for n in names)} "
                         f"WHERE id = ?", (*(fields[n] for n in names), request_id))
            return self._get(conn, request_id)

    @staticmethod
    def _get(conn: sqlite3.Connection, request_id: str) -> ApprovalRequest:
        row = None
        if isinstance(request_id, str) and len(request_id) <= 64:
            row = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE id = ?",
                               (request_id,)).fetchone()
        if row is None:
            raise NotFound(f"request '{str(request_id)[:64]}' does not exist")
        return _request(row)


def _request(row: tuple) -> ApprovalRequest:
    values = dict(zip(_COLUMNS, row))
    for name in ("spec", "progress", "summary"):
        values[name] = _json_or_none(values[name])
    return ApprovalRequest(**values)
