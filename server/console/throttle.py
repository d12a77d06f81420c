"""Failed password sign-ins are throttled per (user name, client address).

Password checks cost one PBKDF2 each, but nothing else stops a client from guessing at
network speed. After `max_failures` failures within `window_s`, that name from that address
is refused (429) until the window has passed since the first counted failure; a success
clears the count. Keyed by name *and* address so a stranger cannot lock a user out from
everywhere. In memory: a restart forgets, which only gives a guesser one more window.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlgate.errors import TooManyRequests


@dataclass
class LoginThrottle:
    max_failures: int = 5
    window_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 10_000
    _failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, name: str, source: str) -> None:
        """Raise TooManyRequests when this name from this address is locked out."""
        with self._lock:
            recent = self._recent(_key(name, source))
            if len(recent) >= self.max_failures:
                wait = max(1, int(recent[0] + self.window_s - self.clock()) + 1)
                raise TooManyRequests(f"too many failed sign-ins; try again in {wait} seconds")

    def failed(self, name: str, source: str) -> None:
        with self._lock:
            key = _key(name, source)
            recent = self._recent(key) + [self.clock()]
            self._failures.pop(key, None)         # re-insert: dict order = last failure
            self._failures[key] = recent[-self.max_failures:]
            if len(self._failures) > self.max_keys:   # bound memory under a spray of names
                self._prune()

    def succeeded(self, name: str, source: str) -> None:
        with self._lock:
            self._failures.pop(_key(name, source), None)

    def _recent(self, key: tuple[str, str]) -> list[float]:
        cutoff = self.clock() - self.window_s
        return [t for t in self._failures.get(key, []) if t > cutoff]

    def _prune(self) -> None:
        """Drop expired entries, then the least recently failing ones, down to 90% of the
        cap (amortised: a spray of fresh names cannot make every failure scan the table)."""
        for key in list(self._failures):
            if not self._recent(key):
                del self._failures[key]
        excess = len(self._failures) - int(self.max_keys * 0.9)
        for key in list(self._failures)[:max(0, excess)]:
            del self._failures[key]


def _key(name: str, source: str) -> tuple[str, str]:
    # User names are at most 63 characters; a longer "name" (from a Basic header) must not
    # make each entry arbitrarily large.
    return (name.lower()[:64], source[:64])
