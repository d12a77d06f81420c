"""Noise for DP-SGD, drawn with OpenDP (privacy rule 2), never with torch/numpy RNGs.

* `LatticeGaussian`: the Gaussian mechanism on a fixed-point lattice. The summed (gradient,
  loss) vector is rounded to integer multiples of `step = S / 2^LATTICE_BITS` (S the L2
  sensitivity of one unit), and OpenDP's exact discrete Gaussian (`make_gaussian` over an
  i64 vector domain) is added in integers, then scaled back (post-processing).
  - Sensitivity: rounding a sum with and without one unit moves each coordinate by at most
    one lattice step (plus the float error of the scaling, below 2^-9 of a step while sums
    stay under `MAX_LATTICE`), so the integer sums differ by at most
    `2^LATTICE_BITS + 2 sqrt(d)` steps in L2; the scale is `sigma` times that, so the noise
    multiplier relative to the true sensitivity is at least `sigma` (at d = 5,000 the
    rounding costs 1.4e-4 more noise).
  - Floating point: data and noise meet only in exact integer arithmetic, so the
    floating-point attacks on naive samplers (Mironov 2012) have nothing to act on; this is
    the fixed-point rule 2 asks for sums.
  - Accounting: the discrete Gaussian's Renyi divergence at every integer order alpha is at
    most alpha * Delta^2 / (2 sigma^2) (Canonne, Kamath & Steinke 2020), the continuous
    Gaussian's; Zhu & Wang 2019's bound for Poisson subsampling at integer orders is then the
    same sum Opacus evaluates (`torch_bridge.accounting` uses integer orders only).
  - Speed: the noise does not depend on the data, so it is drawn ahead, in chunks growing
    to about `CHUNK_SAMPLES` coordinates (one OpenDP call costs ~0.6 ms plus ~10 us per coordinate), on
    background threads that run while torch computes the gradients (OpenDP releases the GIL).
* `noisy_count`: OpenDP integer Laplace for the number of selected units.
"""
from __future__ import annotations

import math
import os

import numpy as np
import opendp.prelude as dp

from torch_bridge.prefetch import Prefetcher

dp.enable_features("contrib")

LATTICE_BITS = 20
CHUNK_SAMPLES = 1 << 15
# Sums are refused above this many lattice steps (2^24 units' worth): below it the float
# error of scaling is under 2^-9 of a step, and sum + noise stays exact in float64.
MAX_LATTICE = 2 ** 44


def default_workers() -> int:
    """Sampler threads: every core but the one running torch, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class LatticeGaussian:
    """Adds discrete Gaussian noise of multiplier `noise_multiplier` (relative to the L2
    sensitivity `sensitivity`) to `steps` float vectors of `length` coordinates."""

    def __init__(self, length: int, noise_multiplier: float, sensitivity: float, steps: int,
                 *, workers: int | None = None):
        if length < 1:
            raise ValueError("noise vector length must be positive")
        if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
            raise ValueError("noise multiplier must be positive")
        if not (sensitivity > 0 and math.isfinite(sensitivity)):
            raise ValueError("sensitivity must be positive")
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.length = int(length)
        self.lattice_step = sensitivity / 2 ** LATTICE_BITS
        self.sensitivity_steps = 2 ** LATTICE_BITS + 2 * math.sqrt(self.length)
        self.scale_steps = noise_multiplier * self.sensitivity_steps
        self.std = self.scale_steps * self.lattice_step
        measurement = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")),
                                         dp.l2_distance(T="i64"), scale=self.scale_steps)
        rho = measurement.map(math.ceil(self.sensitivity_steps))
        if rho > math.ceil(self.sensitivity_steps) ** 2 / (2 * self.scale_steps ** 2) * (1 + 1e-9):
            raise ArithmeticError("OpenDP's discrete Gaussian map exceeds the planned rho")
        self._measurement = measurement
        sizes = [steps_in_chunk * self.length for steps_in_chunk in
                 chunk_steps(steps, max(1, CHUNK_SAMPLES // self.length))]
        self._ahead = Prefetcher(len(sizes), lambda i: _draw(measurement, sizes[i]),
                                 workers=workers or default_workers(), depth=4,
                                 name="dpsgd-noise")
        self._buffer = np.zeros(0, dtype=np.int64)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if flat.shape[0] != self.length:
            raise ValueError("noise vector has the wrong length")
        lattice = np.rint(flat / self.lattice_step)
        largest = np.abs(lattice).max()
        if not largest < MAX_LATTICE:  # also catches NaN
            if not np.all(np.isfinite(flat)):
                # A clipped sum is always finite; a non-finite value means the model diverged.
                raise FloatingPointError("non-finite gradient sum")
            raise OverflowError("gradient sum too large for the fixed-point lattice")
        noisy = lattice.astype(np.int64) + self._noise()
        return noisy * self.lattice_step

    def close(self) -> None:
        """Stop drawing ahead (a cancelled or finished job)."""
        self._ahead.close()

    def _noise(self) -> np.ndarray:
        if self._buffer.shape[0] < self.length:
            if self._ahead.remaining > 0:
                self._buffer = self._ahead.take()
            else:  # more steps than planned: draw this one now
                self._buffer = _draw(self._measurement, self.length)
        noise, self._buffer = self._buffer[:self.length], self._buffer[self.length:]
        return noise


def chunk_steps(steps: int, most: int) -> list[int]:
    """Steps per OpenDP call: 1, 2, 4, ... up to `most`, summing to `steps`. Small first
    chunks let the first steps start at once; large later ones amortise the call cost."""
    sizes, size = [], 1
    while steps > 0:
        take = min(size, most, steps)
        sizes.append(take)
        steps -= take
        size *= 2
    return sizes


def _draw(measurement, size: int) -> np.ndarray:
    """`size` i.i.d. discrete Gaussian samples: the mechanism applied to zeros."""
    return np.asarray(measurement([0] * size), dtype=np.int64)


def noisy_count(count: int, epsilon: float) -> int:
    """count + integer Laplace(1/epsilon) (sensitivity 1: one unit more or less)."""
    measurement = dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int),
                                    scale=1.0 / epsilon)
    if measurement.map(1) > epsilon * (1 + 1e-9):
        raise ArithmeticError("OpenDP Laplace map exceeds the count's epsilon share")
    return int(measurement(int(count)))
