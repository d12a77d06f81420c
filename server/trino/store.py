"""Statements in flight and their answers, per query id, in memory (bounded, expiring).

The DP answer of a statement is computed once and kept here; every `nextUri` page is a
slice of that one stored answer, so paging can never draw noise again. Ids and the slug in
each `nextUri` are random (unguessable), and only the submitting user may read them.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from sqlgate.errors import NotFound

from server.trino.errors import QUERY_QUEUE_FULL, TrinoError

QUEUED, RUNNING, FINISHED, FAILED = "QUEUED", "RUNNING", "FINISHED", "FAILED"


@dataclass
class StoredQuery:
    query_id: str
    slug: str
    owner: str
    sql: str
    created: float
    state: str = QUEUED
    columns: list[dict] | None = None
    rows: list[list] = field(default_factory=list)
    error: dict | None = None
    warnings: list[dict] = field(default_factory=list)
    update_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    finished_at: float | None = None

    def finish(self, columns: list[dict] | None, rows: list[list], *, warnings=(),
               update_type: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.columns, self.rows = columns, rows
        self.warnings = list(warnings)
        self.update_type = update_type
        self.headers = dict(headers or {})
        self.state = FINISHED
        self.finished_at = time.monotonic()
        self.done.set()

    def fail(self, error: dict) -> None:
        self.error = error
        self.state = FAILED
        self.finished_at = time.monotonic()
        self.done.set()


class QueryStore:
    def __init__(self, *, max_queries: int = 1000, ttl_s: float = 900.0):
        self.max_queries = max_queries
        self.ttl_s = ttl_s
        self._queries: dict[str, StoredQuery] = {}
        self._lock = threading.Lock()

    def create(self, owner: str, sql: str) -> StoredQuery:
        now = time.monotonic()
        query = StoredQuery(query_id=_query_id(), slug=secrets.token_urlsafe(24), owner=owner,
                            sql=sql, created=now)
        with self._lock:
            self._expire(now)
            if len(self._queries) >= self.max_queries:
                raise TrinoError(QUERY_QUEUE_FULL, "too many statements are open on this "
                                                   "server; fetch or cancel some first")
            self._queries[query.query_id] = query
        return query

    def get(self, query_id: str, slug: str | None, user: str) -> StoredQuery:
        """The query if it exists and belongs to `user`; another user's query and a wrong
        slug look exactly like a missing one."""
        with self._lock:
            self._expire(time.monotonic())
            query = self._queries.get(query_id)
        if query is None or query.owner != user or (
                slug is not None and not secrets.compare_digest(query.slug, slug)):
            raise NotFound(f"query '{query_id}' does not exist or has expired")
        return query

    def drop(self, query_id: str) -> None:
        with self._lock:
            self._queries.pop(query_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queries)

    def _expire(self, now: float) -> None:
        stale = [qid for qid, q in self._queries.items()
                 if now - (q.finished_at if q.finished_at is not None else q.created) > self.ttl_s]
        for qid in stale:
            query = self._queries.pop(qid)
            query.cancel.set()
        if len(self._queries) >= self.max_queries:
            # Make room by forgetting the oldest answers that are complete.
            done = sorted((q for q in self._queries.values() if q.done.is_set()),
                          key=lambda q: q.finished_at or 0.0)
            for query in done[:len(self._queries) - self.max_queries + 1]:
                self._queries.pop(query.query_id, None)


def _query_id() -> str:
    # Trino ids look like 20240515_143022_00001_xyz12; keep the shape, make the tail random.
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    return f"{stamp}_{secrets.randbelow(100000):05d}_{secrets.token_hex(8)}"
