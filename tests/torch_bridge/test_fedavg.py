"""Federated averaging over three in-process domains with the pairwise-mask secure sum."""
from __future__ import annotations

import numpy as np
import pytest

from tests.torch_bridge._deps import require_torch_stack

require_torch_stack()

from server.secure_sum import SecureSum, encode_signed, mask_context  # noqa: E402
from sqlgate.errors import InvalidParameter  # noqa: E402
from sqlgate.gateway import Gateway  # noqa: E402
from tests.torch_bridge.clinic import clinic_frames, clinic_metadata, training_spec  # noqa: E402
from tests.torch_bridge.conftest import accuracy  # noqa: E402
from torch_bridge.fedavg import (FIXED_POINT_BITS, LocalTrainer, Party, decode_mean,  # noqa: E402
                                 encode_update, federated_average, pairwise_keys)
from torch_bridge.spec import parse_training_spec  # noqa: E402
from torch_bridge.weights import from_safetensors  # noqa: E402


@pytest.fixture()
def domains(tmp_path):
    gateways = []
    for i in range(3):
        gw = Gateway(tmp_path / f"domain{i}")
        gw.add_dataset(clinic_metadata(), clinic_frames(1500, seed=20 + i, first_id=1 + 10_000 * i))
        gateways.append(gw)
    yield [Party(f"hospital-{i}", gw, "clinic", "alice") for i, gw in enumerate(gateways)]
    for gw in gateways:
        gw.close()


def test_secure_sum_of_masked_updates_equals_the_sum_of_updates(domains):
    spec = parse_training_spec(training_spec(epochs=1, epsilon=2.0))
    names = [p.name for p in domains]
    keys = pairwise_keys(names)
    trainers = [LocalTrainer(p, spec, rounds=1, job_id="sum-check") for p in domains]
    start = trainers[0].initial_state()
    for t in trainers:
        t.prepare()
    context = mask_context("sqlgate/fedavg", "sum-check", "1", ",".join(names))
    updates, aggregate = [], SecureSum(tuple(names), sum(v.numel() for v in start.values()))
    for t in trainers:
        encoded = t.train_round(start, update_clip=10.0)
        share = t.share(encoded, names, keys[t.party.name], context)
        # A share alone reveals nothing of the update: it is masked.
        assert not np.array_equal(share, encode_signed(encoded))
        updates.append(encoded)
        aggregate.add(t.party.name, share)
    assert aggregate.total() == [sum(col) for col in zip(*updates)]
    mean = decode_mean(aggregate.total(), 3)
    assert np.allclose(mean, np.mean(np.array(updates, dtype=float), axis=0) / 2 ** FIXED_POINT_BITS)
    # Every domain charged its own ledger once for the full target.
    for p in domains:
        assert p.gateway.budget("alice", "clinic").spent_epsilon == pytest.approx(2.0)


def test_update_encoding_clips_and_rounds():
    big = np.full(4, 10.0)                       # norm 20
    encoded = encode_update(big, update_clip=2.0)
    assert np.linalg.norm(np.array(encoded, float) / 2 ** FIXED_POINT_BITS) == pytest.approx(2.0)
    assert encode_update(np.array([np.nan, 1.0]), 1.0) == [0, 0]
    assert encode_update(np.array([0.5, -0.25]), 10.0) == [2 ** 23, -(2 ** 22)]


def test_federated_model_beats_chance_within_each_domains_budget(domains, holdout):
    x, y, majority = holdout
    spec = parse_training_spec(training_spec(epochs=2, epsilon=3.0, lr=0.1))
    rounds = []
    result = federated_average(domains, spec, rounds=4, on_round=rounds.append)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for name in (p.name for p in domains):
        spent = [r["epsilon_spent"][name] for r in rounds]
        assert spent == sorted(spent) and spent[-1] <= 3.0
    tensors, info = from_safetensors(result.weights)
    assert info["federated"] is True and info["rounds"] == 4
    assert set(tensors) == set(result.state)
    assert all(np.allclose(tensors[k].numpy(), result.state[k].numpy()) for k in tensors)
    acc = accuracy(tensors, spec, x, y)
    assert acc > majority + 0.10, (acc, majority)
    for p in domains:
        status = p.gateway.budget("alice", "clinic")
        assert status.queries == 1 and status.spent_epsilon == pytest.approx(3.0)


def test_bad_federations_are_refused_before_any_charge(domains):
    spec = parse_training_spec(training_spec(epochs=1))
    with pytest.raises(InvalidParameter):
        federated_average(domains[:1], spec, rounds=2)
    with pytest.raises(InvalidParameter):
        federated_average(domains, spec, rounds=0)
    bad = parse_training_spec(training_spec(sql="SELECT income, at_risk FROM clinic.patients"))
    with pytest.raises(InvalidParameter):
        federated_average(domains, bad, rounds=2)
    for p in domains:
        assert p.gateway.budget("alice", "clinic").queries == 0
