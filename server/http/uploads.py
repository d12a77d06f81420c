"""Upload sessions: an owner's dataset files, streamed to disk before one all-or-nothing load.

Two steps keep large files out of memory and let a client show progress:

1. create a session with the metadata YAML (validated at once, nothing loaded);
2. PUT each table's file; the body is written to `HOME/uploads/<id>/` in chunks with a size
   cap, and `bytes_received` grows as it streams (GET the session to watch it);
3. commit: `Gateway.add_dataset` loads every table or none. Whatever the outcome the session's
   files are deleted.

Sources named in uploaded metadata are ignored: an uploader must never make the server read
files of its own choosing. Sessions live in memory (an upload interrupted by a restart is
simply started again); leftovers on disk are removed when the server starts.
"""
from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator

from sqlgate.errors import (Conflict, InvalidParameter, LimitExceeded, NotFound,
                            TooManyRequests)
from sqlgate.metadata import DatasetMeta

FORMATS = ("csv", "parquet")
_CONTENT_TYPES = {"text/csv": "csv", "application/csv": "csv",
                  "application/vnd.apache.parquet": "parquet",
                  "application/x-parquet": "parquet", "application/parquet": "parquet"}


@dataclass
class UploadFile:
    table: str
    format: str | None = None
    bytes_received: int = 0
    complete: bool = False
    receiving: bool = False
    path: Path | None = None

    def to_dict(self) -> dict:
        return {"table": self.table, "format": self.format, "bytes_received": self.bytes_received,
                "complete": self.complete, "receiving": self.receiving}


@dataclass
class UploadSession:
    id: str
    owner: str
    meta: DatasetMeta
    replace: bool
    directory: Path
    created: float
    touched: float
    status: str = "open"                 # open | committing
    files: dict[str, UploadFile] = field(default_factory=dict)
    # The declared source of each table, only as a format hint (never opened as a path).
    source_hints: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"upload_id": self.id, "dataset": self.meta.name, "owner": self.owner,
                "replace": self.replace, "status": self.status,
                "tables": [f.to_dict() for f in self.files.values()],
                "bytes_received": sum(f.bytes_received for f in self.files.values()),
                "ready": all(f.complete for f in self.files.values())}


def format_for(table_source: str | None, requested: str | None, content_type: str | None) -> str:
    """The file format of an upload: explicit `format`, else the Content-Type, else the suffix
    of the table's declared source, else CSV."""
    if requested:
        if requested not in FORMATS:
            raise InvalidParameter(f"format must be one of {', '.join(FORMATS)}")
        return requested
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _CONTENT_TYPES:
        return _CONTENT_TYPES[media]
    if table_source and table_source.lower().endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


class UploadSessions:
    def __init__(self, root: str | Path, *, max_file_bytes: int, ttl_s: float,
                 max_sessions_per_owner: int | None = None, max_total_bytes: int | None = None):
        """`max_sessions_per_owner` bounds the open sessions of one uploader (429 beyond);
        `max_total_bytes` bounds the bytes held on disk by all open sessions together (413
        beyond), so uploads cannot fill the server's disk. None: no limit."""
        self.root = Path(root)
        self.max_file_bytes = int(max_file_bytes)
        self.ttl_s = float(ttl_s)
        self.max_sessions_per_owner = max_sessions_per_owner
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()
        self._sessions: dict[str, UploadSession] = {}
        # Files of sessions from an earlier run can never be committed: remove them.
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def create(self, owner: str, meta: DatasetMeta, *, replace_existing: bool) -> UploadSession:
        self.expire()
        session_id = uuid.uuid4().hex
        directory = self.root / session_id
        directory.mkdir(mode=0o700)
        tables = {name: replace(t, source=None) for name, t in meta.tables.items()}
        now = time.monotonic()
        session = UploadSession(
            id=session_id, owner=owner, meta=replace(meta, tables=tables),
            replace=replace_existing, directory=directory, created=now, touched=now,
            files={name: UploadFile(name) for name in tables},
            source_hints={name: t.source for name, t in meta.tables.items()})
        with self._lock:
            # Counted and inserted under one lock, so parallel creates cannot overshoot.
            limit = self.max_sessions_per_owner
            held = sum(1 for s in self._sessions.values() if s.owner == owner)
            if limit is not None and held >= limit:
                shutil.rmtree(directory, ignore_errors=True)
                raise TooManyRequests(
                    f"you already have {held} open upload sessions (the limit is {limit}); "
                    f"commit or abort one (DELETE /v1/uploads/{{id}}) first",
                    details={"limit": limit, "open_sessions": held})
            self._sessions[session_id] = session
        return session

    def get(self, session_id: str, user: str, *, is_admin: bool = False) -> UploadSession:
        """A session its creator (or an admin) may use; others get not found."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or (session.owner != user and not is_admin):
            raise NotFound(f"upload '{str(session_id)[:64]}' does not exist")
        return session

    async def receive(self, session: UploadSession, table: str, fmt: str,
                      chunks: AsyncIterator[bytes], declared_length: int | None) -> UploadFile:
        """Stream one table's file to disk; over the size cap the partial file is deleted."""
        upload = session.files.get(table.lower())
        if upload is None:
            raise NotFound(f"table '{table}' is not declared in the upload's metadata")
        with self._lock:
            if session.status != "open":
                raise Conflict(f"upload '{session.id}' is {session.status}")
            if upload.receiving:
                raise Conflict(f"table '{upload.table}' is already being uploaded")
            upload.receiving = True
        try:
            if declared_length is not None and declared_length > self.max_file_bytes:
                raise LimitExceeded(f"the file is larger than the limit of "
                                    f"{self.max_file_bytes} bytes",
                                    details={"limit_bytes": self.max_file_bytes})
            self._forget_file(upload)
            if declared_length is not None:
                with self._lock:
                    self._check_total(declared_length)
            path = session.directory / f"{upload.table}.{fmt}"
            upload.format, upload.path = fmt, path
            try:
                # Plain writes: chunks are small (the server's receive size) and local disk
                # writes do not block the loop noticeably.
                with open(path, "wb") as handle:
                    async for chunk in chunks:
                        if upload.bytes_received + len(chunk) > self.max_file_bytes:
                            raise LimitExceeded(f"the file is larger than the limit of "
                                                f"{self.max_file_bytes} bytes",
                                                details={"limit_bytes": self.max_file_bytes})
                        with self._lock:
                            # Check and count together (before writing): concurrent PUTs
                            # cannot both pass the total cap.
                            self._check_total(len(chunk))
                            upload.bytes_received += len(chunk)
                        handle.write(chunk)
                        session.touched = time.monotonic()
            except BaseException:
                self._forget_file(upload)
                raise
            if upload.bytes_received == 0:
                self._forget_file(upload)
                raise InvalidParameter(f"the file for table '{upload.table}' is empty")
            upload.complete = True
            return upload
        finally:
            upload.receiving = False

    def begin_commit(self, session: UploadSession) -> dict[str, Path]:
        """Mark the session committing and return its table files; every table is needed."""
        with self._lock:
            if session.status != "open":
                raise Conflict(f"upload '{session.id}' is {session.status}")
            if any(f.receiving for f in session.files.values()):
                raise Conflict("a file is still being uploaded; commit when it has finished")
            missing = [f.table for f in session.files.values() if not f.complete]
            if missing:
                raise InvalidParameter(f"no file uploaded for table(s) {', '.join(missing)}",
                                       details={"missing_tables": missing})
            session.status = "committing"
        return {f.table: f.path for f in session.files.values()}

    def discard(self, session: UploadSession) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
        shutil.rmtree(session.directory, ignore_errors=True)

    def expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        with self._lock:
            stale = [s for s in self._sessions.values()
                     if s.touched < cutoff and s.status == "open"
                     and not any(f.receiving for f in s.files.values())]
        for session in stale:
            self.discard(session)

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self.discard(session)

    def held_bytes(self) -> int:
        """Bytes all open sessions hold on disk (complete files and files still streaming)."""
        with self._lock:
            return self._held_bytes()

    def _held_bytes(self) -> int:
        return sum(f.bytes_received for s in self._sessions.values() for f in s.files.values())

    def _check_total(self, more: int) -> None:
        """Under self._lock: refuse `more` bytes that would pass the total cap."""
        limit = self.max_total_bytes
        if limit is not None and self._held_bytes() + more > limit:
            raise LimitExceeded(
                f"open uploads on this server would hold more than {limit} bytes; commit or "
                f"abort open uploads, or try again later",
                details={"limit_bytes": limit, "scope": "all open uploads"})

    @staticmethod
    def _forget_file(upload: UploadFile) -> None:
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)
        upload.path, upload.bytes_received, upload.complete = None, 0, False
