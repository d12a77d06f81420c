"""Draw data-independent randomness ahead of time, on background threads.

DP-SGD's noise and its Poisson batches do not depend on the data, so they can be drawn before
the step that uses them: a mechanism M(x) = x + Z has the same output distribution whether Z
is drawn before or after x is known. OpenDP's exact samplers cost ~10 us per coordinate and
release the GIL (ctypes), so drawing on other cores while torch computes the gradients takes
the sampler off the critical path. Every drawn item is handed out exactly once.
"""
from __future__ import annotations

import queue
import threading
import weakref
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")

_POLL_SECONDS = 0.2


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[Item]):
    """`make(i)` for i in range(count), run by `workers` threads at most `depth` items ahead.

    Items come out in completion order (they are i.i.d. draws, so order carries nothing).
    A worker's exception is re-raised by `take`. `close` (or dropping the object) stops the
    workers; threads are daemons so an abandoned job never blocks interpreter exit.
    """

    def __init__(self, count: int, make: Callable[[int], Item], *, workers: int = 1,
                 depth: int = 4, name: str = "prefetch"):
        if count < 0 or workers < 1 or depth < 1:
            raise ValueError("count must be >= 0, workers and depth >= 1")
        self.count = count
        self._taken = 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        next_index = iter(range(count))
        index_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=_work, name=f"{name}-{n}", daemon=True,
                             args=(make, next_index, index_lock, self._queue, self._stop))
            for n in range(min(workers, max(count, 1)))]
        # Workers must not keep this object alive: they see only the queue and the stop flag.
        self._finalizer = weakref.finalize(self, self._stop.set)
        for thread in self._threads:
            thread.start()

    @property
    def remaining(self) -> int:
        return self.count - self._taken

    def take(self) -> Item:
        """The next drawn item; blocks while the workers are behind."""
        if self._taken >= self.count:
            raise IndexError("all prefetched items were taken")
        if self._stop.is_set():
            raise RuntimeError("prefetcher is closed")
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        self._taken += 1
        return item

    def close(self) -> None:
        self._stop.set()
        # Unblock workers waiting on a full queue; what they drew is discarded, never reused.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


def _work(make, next_index, index_lock, out: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        with index_lock:
            i = next(next_index, None)
        if i is None:
            return
        try:
            item = make(i)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, not swallowed
            item = _Failure(error)
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_SECONDS)
                break
            except queue.Full:
                continue
        if isinstance(item, _Failure):
            return
