"""A query's charge made (reserved) on a worker thread while the engine runs.

The ledger's atomic check-and-charge ends in a durable commit (an fsync, 0.2-0.5 ms), the
largest fixed cost of a DP query after the engine itself. SQLite's commit and DuckDB's
execution both release the GIL, so the charge can commit while the engine reads the data:
`Gateway.query` reserves right after its budget pre-check (`Accountant.reserve`: when the
ledger's lock is free, the re-check and insert run right there and only the COMMIT is left)
and hands the rest to a worker here, then waits for it after the engine and the noise,
before anything is released (privacy rule 4 is about release: nothing noisy leaves before
the charge is durable). Leaving only the COMMIT to the worker matters on small machines:
a whole charge (~0.1 ms of Python) beside the engine took the GIL and a core from DuckDB
and slowed it by about as much as the hidden fsync saved. Even a bare fdatasync costs CPU
in the kernel: on the 2-vCPU bench machine it slowed a 2-thread DuckDB query from 0.83 to
0.92 ms, so the gain there is smaller than the commit's wall time; with a spare core it is
the whole commit.

If the query fails before any noise touched data (engine error, timeout, cancel, dataset
replaced), the reservation is refunded: a durable ledger write that takes it out of the
budget sums and keeps it in the history as refunded, with the reason. A crash between the
reserve and the refund leaves the analyst charged for a query that returned nothing:
conservative, never an overspend. A failure once noise was applied to data is charged.

A refused reservation (BudgetExhausted: a concurrent query spent the budget after the
pre-check) wins over whatever the engine did: its result is dropped unseen.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from sqlgate.errors import BudgetExhausted

# Concurrent queries of one gateway whose whole charges can wait for the ledger at once; more
# wait in line (SQLite serialises the commits anyway). Begun charges only commit: one holds
# the ledger's lock at a time, so a few workers suffice. Threads start only when needed.
WORKERS = 8
COMMIT_WORKERS = 2

_log = logging.getLogger(__name__)


class Reservation:
    """One charge being made on a worker; settle it with `charge_id()` or `refund()`."""

    def __init__(self, accountant, future: Future):
        self._accountant = accountant
        self._future = future

    def charge_id(self) -> int:
        """Wait for the charge and return its id. Raises its refusal (BudgetExhausted) or
        the ledger's error: then nothing was charged and nothing may be released."""
        return self._future.result()

    def refund(self, reason: str) -> str:
        """Take the charge back: the query failed before noise touched data. If the
        reservation was refused for budget, raises that BudgetExhausted (the caller's own
        failure is then not reported). Any other reservation failure charged nothing, so
        there is nothing to refund and the caller raises its own error. A refund that fails
        leaves the charge standing (conservative) and is logged. Returns what became of the
        charge: "refunded", "not charged" or "kept" (the refund failed)."""
        try:
            charge_id = self._future.result()
        except BudgetExhausted:
            raise
        except Exception:  # noqa: BLE001 - nothing was charged: nothing to take back
            return "not charged"
        try:
            self._accountant.refund(charge_id, reason)
        except Exception:  # noqa: BLE001 - over-charging is the safe failure
            _log.warning("could not refund privacy charge %s (%s); it stays charged",
                         charge_id, reason, exc_info=True)
            return "kept"
        return "refunded"


class ChargeAhead:
    """Two small worker pools per gateway and process for charges made while the engine runs.

    Commits of charges begun under the ledger's lock (`PendingCharge.begun`) have a pool of
    their own: they never wait for a lock, while whole charges may wait for the very lock a
    begun charge holds until its commit runs; one queue for both could deadlock until the
    ledger's busy timeout. Re-created in a forked child (its parent's worker threads do not
    exist there). Each worker keeps its own ledger connection (one per thread)."""

    def __init__(self, workers: int = WORKERS, commit_workers: int = COMMIT_WORKERS):
        self._sizes = {True: commit_workers, False: workers}
        self._lock = threading.Lock()
        self._pools: dict[bool, ThreadPoolExecutor] = {}
        self._pid = None
        self._closed = False

    def submit(self, accountant, pending) -> Reservation:
        """Run `pending.finish` (an `Accountant.reserve` result) now, on a worker."""
        with self._lock:
            if not self._closed:
                if self._pid != os.getpid():
                    self._pools, self._pid = {}, os.getpid()
                pool = self._pools.get(pending.begun)
                if pool is None:
                    name = "sqlgate-commit" if pending.begun else "sqlgate-charge"
                    pool = ThreadPoolExecutor(self._sizes[pending.begun], thread_name_prefix=name)
                    self._pools[pending.begun] = pool
                return Reservation(accountant, pool.submit(pending.finish))
        return Reservation(accountant, _run_now(pending.finish))

    def close(self) -> None:
        """Stop taking work; charges already submitted still complete (their queries wait
        for them), so none is left half made."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, {}
        if self._pid == os.getpid():
            for pool in pools.values():
                pool.shutdown(wait=False, cancel_futures=False)


def _run_now(call: Callable[[], int]) -> Future:
    future: Future = Future()
    try:
        future.set_result(call())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits, as a worker would
        future.set_exception(exc)
    return future
