"""Poisson batch selection for DP-SGD from the operating system's CSPRNG.

Amplification by subsampling needs batches that are secret and unpredictable, so membership
comes from `os.urandom` (never a seeded PRNG). Each unit joins a step's batch independently
when its 32-bit uniform is below floor(q * 2^32): the realised rate q' <= q differs from q by
< 2^-32, and privacy amplification is monotone in the rate, so accounting with q stays sound.
"""
from __future__ import annotations

import math
import os

import numpy as np

from torch_bridge.prefetch import Prefetcher


def poisson_batch(units: int, sample_rate: float) -> np.ndarray:
    """Indices of the units selected for one step."""
    if not 0 < sample_rate <= 1:
        raise ValueError("sample rate must be in (0, 1]")
    if units <= 0:
        return np.zeros(0, dtype=np.int64)
    if sample_rate >= 1.0:
        return np.arange(units, dtype=np.int64)
    threshold = math.floor(sample_rate * 2 ** 32)
    uniforms = np.frombuffer(os.urandom(4 * units), dtype=np.uint32)
    return np.flatnonzero(uniforms < threshold)


class PoissonBatches:
    """The batches of `steps` steps, drawn ahead on a background thread; more steps than
    planned are drawn on demand."""

    def __init__(self, units: int, sample_rate: float, steps: int):
        poisson_batch(0, sample_rate)  # validate eagerly, not on a worker thread
        self.units = units
        self.sample_rate = sample_rate
        self._ahead = Prefetcher(steps, lambda _i: poisson_batch(units, sample_rate),
                                 depth=8, name="dpsgd-batches")

    def next(self) -> np.ndarray:
        if self._ahead.remaining > 0:
            return self._ahead.take()
        return poisson_batch(self.units, self.sample_rate)

    def close(self) -> None:
        self._ahead.close()
