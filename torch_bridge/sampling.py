"""Poisson batch selection for DP-SGD from a cryptographically secure generator.

Amplification by subsampling needs batches that are secret and unpredictable, so membership
comes from a CSPRNG (a ChaCha20 keystream keyed from `os.urandom`), never a seeded PRNG.
Each unit joins a step's batch independently when its 32-bit uniform is below
floor(q * 2^32): the realised rate q' <= q differs from q by < 2^-32, and privacy
amplification is monotone in the rate, so accounting with q stays sound. (q = 1 selects
everyone.)
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np



class ChaChaStream:
    """A CSPRNG: the ChaCha20 keystream under a fresh 256-bit key from the OS (the
    construction the kernel's own getrandom uses), ~10x cheaper per byte than a getrandom
    call. Re-keyed from the OS every `REKEY_BYTES`, far below the 32-bit block counter's
    256 GiB."""

    REKEY_BYTES = 1 << 30

    def __init__(self):
        self._zeros = b""
        self._rekey()

    def _rekey(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        self._cipher = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)),
                              mode=None).encryptor()
        self._produced = 0

    def __call__(self, size: int) -> bytes:
        if self._produced + size > self.REKEY_BYTES:
            self._rekey()
        self._produced += size
        if len(self._zeros) < size:
            self._zeros = bytes(size)
        return self._cipher.update(memoryview(self._zeros)[:size])


def poisson_batch(units: int, sample_rate: float,
                  random_bytes: Callable[[int], bytes] = os.urandom) -> np.ndarray:
    """Indices of the units selected for one step.

    Unit i is selected when its 32-bit uniform U_i < T = floor(q * 2^32). U_i is compared a
    byte at a time, exactly: its top byte decides unless it equals T's top byte (probability
    1/256), and only those units draw their other three bytes. That reads ~1 byte per unit
    from the CSPRNG instead of 4, cheap enough to run inline on the training thread (a
    background sampler contended for the GIL with every torch call)."""
    if not 0 < sample_rate <= 1:
        raise ValueError("sample rate must be in (0, 1]")
    if units <= 0:
        return np.zeros(0, dtype=np.int64)
    threshold = math.floor(sample_rate * 2 ** 32)
    if threshold >= 2 ** 32:
        return np.arange(units, dtype=np.int64)
    top, rest = threshold >> 24, threshold & 0xFFFFFF
    first = np.frombuffer(random_bytes(units), dtype=np.uint8)
    candidates = np.flatnonzero(first <= top)
    tied = first[candidates] == top
    keep = ~tied
    ties = int(tied.sum())
    if ties and rest:
        low = np.frombuffer(random_bytes(4 * ties), dtype=np.uint32) & 0xFFFFFF
        keep[tied] = low < rest
    return candidates[keep]


class PoissonBatches:
    """The batches of successive steps, from one keystream."""

    def __init__(self, units: int, sample_rate: float):
        poisson_batch(0, sample_rate)  # validate eagerly
        self.units = units
        self.sample_rate = sample_rate
        self._random_bytes = ChaChaStream()

    def next(self) -> np.ndarray:
        return poisson_batch(self.units, self.sample_rate, self._random_bytes)
