"""Pairwise additive masks over Z_2^64: masks cancel only in the full sum."""
from __future__ import annotations

import secrets

import numpy as np
import pytest

from server import secure_sum as ss

PARTIES = ("a", "b", "c", "d")


def keys_for(parties):
    pair = {frozenset((p, q)): secrets.token_bytes(32) for p in parties for q in parties if p < q}
    return {p: {q: pair[frozenset((p, q))] for q in parties if q != p} for p in parties}


def shares(values, context=b"query-1"):
    keys = keys_for(PARTIES)
    return {p: ss.mask_share(p, PARTIES, ss.encode_signed(values[p]), keys[p], context)
            for p in PARTIES}, keys


def test_masks_cancel_in_the_full_sum_including_negative_values():
    values = {"a": [5, -7, 0], "b": [1, 2, 3], "c": [-(2**40), 0, 9], "d": [0, 0, -1]}
    masked, _ = shares(values)
    total = ss.SecureSum(PARTIES, 3)
    for p in PARTIES:
        total.add(p, ss.from_wire(ss.to_wire(masked[p]), 3))
    assert total.total() == [sum(values[p][i] for p in PARTIES) for i in range(3)]


def test_total_needs_every_share_and_refuses_duplicates_or_strangers():
    masked, _ = shares({p: [1] for p in PARTIES})
    total = ss.SecureSum(PARTIES, 1)
    total.add("a", masked["a"])
    with pytest.raises(ValueError):
        total.add("a", masked["a"])
    with pytest.raises(ValueError):
        total.add("zed", masked["a"])
    with pytest.raises(ss.IncompleteShares):
        total.total()
    assert total.missing == ("b", "c", "d")


def test_a_lone_share_does_not_depend_on_the_value():
    """Same masks, different secrets: the share is the mask plus the value, and the mask is
    fresh per context, so equal values under two contexts give unrelated shares."""
    keys = keys_for(PARTIES)
    one = ss.mask_share("b", PARTIES, ss.encode_signed([42] * 64), keys["b"], b"ctx-1")
    two = ss.mask_share("b", PARTIES, ss.encode_signed([42] * 64), keys["b"], b"ctx-2")
    assert not np.any(one == two)
    high_bits = np.concatenate([one, two]) >> np.uint64(63)
    assert 30 < int(high_bits.sum()) < 98  # ~uniform, not all 0 as for the small value 42


def test_overflow_and_wire_errors():
    with pytest.raises(OverflowError):
        ss.encode_signed([2**63])
    with pytest.raises(ValueError):
        ss.from_wire("!!!", 1)
    with pytest.raises(ValueError):
        ss.from_wire(ss.to_wire(np.zeros(2, dtype=np.uint64)), 3)
    with pytest.raises(KeyError):
        ss.mask_share("a", PARTIES, ss.encode_signed([1]), {"b": b"k" * 32}, b"ctx")
