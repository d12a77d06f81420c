"""Secure summation of integer vectors with pairwise additive masks (Bonawitz et al. 2017).

Every party (domain) holds an integer vector x_i. Each pair of parties {i, j} shares a secret
key K_ij (configured out of band). For one query, both derive the same mask vector

    m_ij = SHAKE-256( HMAC-SHA256(K_ij, context) )   as little-endian uint64 words,

where `context` binds the query (nonce, plan fingerprint, party list). Party i sends

    s_i = x_i + sum_{j after i} m_ij - sum_{j before i} m_ij      (mod 2^64)

in the fixed party order. Each s_i is uniformly distributed to anyone who does not know the
pair keys of i (every mask m_ij is), so the aggregator learns nothing from a single share or
any proper subset of shares; in the sum over all parties every mask appears once with + and
once with -, so sum_i s_i = sum_i x_i (mod 2^64).

Values are signed integers encoded in two's complement in Z_{2^64}; callers keep every
partial within +-2^62 / n so that the true total (plus noise) stays inside (-2^63, 2^63)
and decodes unambiguously.

Trust assumptions (document them to owners): the aggregator (router) does not know any pair
key; a coalition of the router and n-2 parties learns the sum of the remaining two (inherent
to secure summation); there is no dropout recovery: all shares are needed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

RING_BITS = 64
RING = 1 << RING_BITS
SIGNED_LIMIT = 1 << 63
_DOMAIN_SEPARATOR = b"sqlgate/secure-sum/v1"


class IncompleteShares(RuntimeError):
    """The total was asked for before every party's share arrived."""


def encode_signed(values: Iterable[int]) -> np.ndarray:
    """Signed integers -> uint64 words (two's complement). Raises on overflow."""
    words = []
    for v in values:
        v = int(v)
        if not -SIGNED_LIMIT <= v < SIGNED_LIMIT:
            raise OverflowError("value outside the signed 64-bit range")
        words.append(v % RING)
    return np.array(words, dtype=np.uint64)


def decode_signed(words: np.ndarray) -> list[int]:
    """uint64 words -> signed integers (two's complement)."""
    return [int(w) - RING if int(w) >= SIGNED_LIMIT else int(w) for w in words.tolist()]


def pair_seed(pair_key: bytes, context: bytes) -> bytes:
    return hmac.new(pair_key, _DOMAIN_SEPARATOR + b"\x00seed\x00" + context,
                    hashlib.sha256).digest()


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """A pseudorandom uint64 vector from a 32-byte seed (SHAKE-256 as the stream)."""
    if length == 0:
        return np.zeros(0, dtype=np.uint64)
    stream = hashlib.shake_256(_DOMAIN_SEPARATOR + b"\x00mask\x00" + seed).digest(8 * length)
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def pair_mask(pair_key: bytes, context: bytes, length: int) -> np.ndarray:
    return expand_mask(pair_seed(pair_key, context), length)


def mask_share(me: str, parties: Sequence[str], values: np.ndarray,
               pair_keys: Mapping[str, bytes], context: bytes) -> np.ndarray:
    """This party's masked share: values + masks towards later parties - masks towards earlier."""
    if me not in parties:
        raise ValueError("this party is not in the party list")
    if len(set(parties)) != len(parties):
        raise ValueError("duplicate party names")
    share = np.array(values, dtype=np.uint64, copy=True)
    mine = parties.index(me)
    with np.errstate(over="ignore"):
        for position, peer in enumerate(parties):
            if peer == me:
                continue
            key = pair_keys.get(peer)
            if key is None:
                raise KeyError(f"no pair key configured for peer '{peer}'")
            mask = pair_mask(key, context, len(share))
            if position > mine:
                share += mask  # uint64 arithmetic wraps: exactly mod 2^64
            else:
                share -= mask
    return share


def to_wire(words: np.ndarray) -> str:
    return base64.b64encode(np.asarray(words, dtype="<u8").tobytes()).decode("ascii")


def from_wire(text: str, length: int) -> np.ndarray:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("a share is not valid base64") from None
    if len(raw) != 8 * length:
        raise ValueError("a share has the wrong length")
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


@dataclass
class SecureSum:
    """The aggregator's view: masked shares in, the total out only once all have arrived."""

    parties: tuple[str, ...]
    length: int
    _shares: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, party: str, share: np.ndarray) -> None:
        if party not in self.parties:
            raise ValueError(f"'{party}' is not a party of this sum")
        if party in self._shares:
            raise ValueError(f"a share from '{party}' already arrived")
        if len(share) != self.length:
            raise ValueError("a share has the wrong length")
        self._shares[party] = np.asarray(share, dtype=np.uint64)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in self.parties if p not in self._shares)

    @property
    def complete(self) -> bool:
        return not self.missing

    def total(self) -> list[int]:
        if not self.complete:
            raise IncompleteShares("the total needs every party's share; missing: "
                                   + ", ".join(self.missing))
        acc = np.zeros(self.length, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for party in self.parties:
                acc += self._shares[party]
        return decode_signed(acc)


def mask_context(*parts: str | bytes) -> bytes:
    """An unambiguous byte string from the fields that bind masks to one query."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)
