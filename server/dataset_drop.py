"""What dropping a dataset means beyond the engine: grants and pending requests go too.

Shared by the HTTP API and `sqlgate dataset drop`, so a dataset re-uploaded under the same
name starts clean whichever way the old one was dropped: its old owners hold no grant on it,
and requests made against the old data cannot be approved against the new.
"""
from __future__ import annotations

from server.auth import UserStore
from server.requests import RequestStore
from sqlgate.errors import Conflict

DROPPED_REASON = "the dataset was dropped"


def forget_dropped_dataset(users: UserStore, requests: RequestStore, dataset: str,
                           reviewer: str) -> int:
    """Revoke every grant on `dataset` and deny its pending requests; return how many."""
    users.revoke_dataset(dataset)
    denied = 0
    while True:
        pending = requests.list(datasets={dataset}, status="pending", limit=1000)
        if not pending:
            return denied
        for request in pending:
            try:
                requests.deny(request.id, reviewer, DROPPED_REASON)
                denied += 1
            except Conflict:
                pass   # decided meanwhile by someone else
