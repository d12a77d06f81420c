"""DP-SGD building blocks: accounting, OpenDP noise, per-unit clipping, model loading."""
from __future__ import annotations

import base64
import io
import math
from typing import List

import numpy as np
import pytest

from tests.torch_bridge._deps import require_torch_stack

require_torch_stack()

import torch  # noqa: E402

from tests.torch_bridge.clinic import training_spec  # noqa: E402
from torch_bridge.accounting import (calibrate_sigma, job_cost, plan_sgd, sgd_epsilon,  # noqa: E402
                                     split_epsilon)
from torch_bridge.data import UnitData  # noqa: E402
from torch_bridge.dpsgd import DPSGDTrainer  # noqa: E402
from torch_bridge.models import build_model  # noqa: E402
from torch_bridge.noise import LATTICE_BITS, LatticeGaussian, noisy_count  # noqa: E402
from torch_bridge.spec import SpecError, parse_training_spec  # noqa: E402


def test_calibrated_sigma_meets_the_target_and_is_tight():
    sigma = calibrate_sigma(2.0, 1e-5, 0.05, 200)
    assert sgd_epsilon(sigma, 0.05, 200, 1e-5) <= 2.0
    assert sgd_epsilon(sigma * 0.98, 0.05, 200, 1e-5) > 2.0
    from opacus.accountants.utils import get_noise_multiplier
    reference = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.05,
                                     steps=200, accountant="rdp")
    assert abs(sigma - reference) / reference < 0.03
    # More steps or a smaller target need more noise.
    assert calibrate_sigma(2.0, 1e-5, 0.05, 800) > sigma
    assert calibrate_sigma(0.5, 1e-5, 0.05, 200) > sigma


def test_plan_uses_the_noisy_count_and_splits_epsilon():
    split = split_epsilon(3.0, 1e-5)
    assert math.isclose(split.count_epsilon + split.sgd_epsilon, 3.0)
    plan = plan_sgd(1000, 100, 3, split)
    assert plan.sample_rate == 0.1 and plan.steps_per_epoch == 10 and plan.steps == 30
    assert plan.expected_batch == pytest.approx(100)
    assert plan.epsilon_after(0) == pytest.approx(split.count_epsilon)
    assert plan.epsilon_after(15) < plan.epsilon_after(30) <= 3.0
    small = plan_sgd(50, 100, 3, split)          # fewer units than a batch: q = 1
    assert small.sample_rate == 1.0
    cost = job_cost(3.0, 1e-5)
    assert (cost.measure, cost.epsilon, cost.delta) == ("pure", 3.0, 1e-5)


def test_opendp_lattice_gaussian_and_count():
    noise = LatticeGaussian(4000, 2.0, 1.0, steps=2)
    drawn = noise(np.zeros(4000))
    assert drawn.shape == (4000,) and 1.9 < drawn.std() < 2.1 and abs(drawn.mean()) < 0.2
    # Every output lies on the lattice: data and noise were added as integers.
    steps = drawn / noise.lattice_step
    assert np.array_equal(steps, np.rint(steps))
    shifted = noise(np.full(4000, 10.0))
    assert 9.8 < shifted.mean() < 10.2
    extra = noise(np.zeros(4000))                 # beyond the planned steps: drawn on demand
    assert 1.9 < extra.std() < 2.1 and not np.array_equal(extra, drawn)
    with pytest.raises(ValueError):
        noise(np.zeros(3))
    with pytest.raises(FloatingPointError):
        noise(np.full(4000, np.nan))
    with pytest.raises(OverflowError):
        noise(np.full(4000, 1e30))
    noise.close()
    counts = [noisy_count(1000, 1.0) for _ in range(200)]
    assert all(isinstance(c, int) for c in counts)
    assert 990 < float(np.mean(counts)) < 1010 and len(set(counts)) > 5


def test_lattice_noise_scale_covers_the_rounded_sensitivity():
    """Sums with and without any one unit differ by at most the planned sensitivity in lattice
    steps after rounding, and the OpenDP scale is sigma times that."""
    noise = LatticeGaussian(50, 1.5, 2.0, steps=0)
    rng = np.random.default_rng(4)
    for _ in range(200):
        others = rng.normal(size=50) * rng.uniform(0, 1e3)
        unit = rng.normal(size=50)
        unit *= 2.0 / np.linalg.norm(unit)                      # norm exactly S = 2
        with_unit = np.rint((others + unit) / noise.lattice_step)
        without = np.rint(others / noise.lattice_step)
        assert np.linalg.norm(with_unit - without) <= noise.sensitivity_steps
    assert noise.sensitivity_steps == 2 ** LATTICE_BITS + 2 * math.sqrt(50)
    assert noise.scale_steps == pytest.approx(1.5 * noise.sensitivity_steps)
    assert noise.std >= 1.5 * 2.0


def test_noise_is_drawn_ahead_and_each_draw_is_used_once():
    noise = LatticeGaussian(7, 1.0, 1.0, steps=40)
    outputs = np.stack([noise(np.zeros(7)) for _ in range(40)])
    # 280 i.i.d. draws at scale ~1e6 lattice steps: a repeated vector would mean reuse.
    assert len({row.tobytes() for row in outputs}) == 40
    assert 0.8 < outputs.std() < 1.2
    noise.close()


def test_noise_chunks_grow_and_cover_every_step():
    from torch_bridge.noise import chunk_steps

    assert chunk_steps(0, 8) == []
    assert chunk_steps(1, 8) == [1]
    assert chunk_steps(20, 8) == [1, 2, 4, 8, 5]
    assert sum(chunk_steps(1000, 3)) == 1000 and max(chunk_steps(1000, 3)) == 3


def test_prefetcher_propagates_worker_errors_and_stops_on_close():
    from torch_bridge.prefetch import Prefetcher

    def make(i):
        if i == 3:
            raise ZeroDivisionError("boom")
        return i

    ahead = Prefetcher(6, make, workers=1, depth=2)
    got = [ahead.take() for _ in range(3)]
    assert got == [0, 1, 2]
    with pytest.raises(ZeroDivisionError):
        ahead.take()
    stopped = Prefetcher(1000, lambda i: i, workers=2, depth=2)
    stopped.take()
    stopped.close()
    with pytest.raises(RuntimeError):
        stopped.take()
    for thread in stopped._threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    with pytest.raises(IndexError):
        done = Prefetcher(1, lambda i: i)
        done.take()
        done.take()


def test_poisson_batches_come_from_the_os_csprng_at_the_planned_rate():
    from torch_bridge.sampling import PoissonBatches, poisson_batch

    sizes = [len(poisson_batch(10_000, 0.05)) for _ in range(50)]
    assert 450 < float(np.mean(sizes)) < 550
    assert len(set(map(len, [poisson_batch(10_000, 0.05) for _ in range(5)]))) > 1
    assert np.array_equal(poisson_batch(5, 1.0), np.arange(5))
    with pytest.raises(ValueError):
        poisson_batch(10, 0.0)
    batches = PoissonBatches(1000, 0.1)
    drawn = [batches.next() for _ in range(5)]
    assert all(b.max() < 1000 and len(np.unique(b)) == len(b) for b in drawn)


def _trainer(units: int = 40, rows: int = 3, clip: float = 0.5):
    spec = parse_training_spec(training_spec(max_grad_norm=clip, lr=0.1, optimizer="sgd"))
    rng = np.random.default_rng(0)
    data = UnitData(x=rng.random((units, rows, 9)).astype(np.float32),
                    y=(rng.random((units, rows)) < 0.5).astype(np.float32),
                    mask=np.ones((units, rows), np.float32))
    plan = plan_sgd(units, 10, 1, split_epsilon(2.0, 1e-5))
    return DPSGDTrainer(build_model(spec.model, 9, 1), spec, plan, data), spec


def test_each_unit_contributes_at_most_the_clip_norm_whatever_its_rows():
    trainer, spec = _trainer(clip=0.5)
    x, y, mask = trainer.x, trainer.y, trainer.mask
    grads, losses = trainer._per_unit(x, y, mask)
    assert grads.shape == (40, trainer.dim) and losses.shape == (40,)
    # A unit alone: its clipped contribution has norm <= C (the sensitivity).
    for u in range(5):
        alone = trainer._clipped_sum(grads[u:u + 1] * 1000.0, losses[u:u + 1])
        assert float(alone[:-1].norm()) <= 0.5 + 1e-9
        assert 0.0 <= float(alone[-1]) <= trainer.loss_clip + 1e-9
    # Adding any one unit to a batch moves the sum by at most S = sqrt(C^2 + C_loss^2).
    base = trainer._clipped_sum(grads[:10], losses[:10])
    with_one = trainer._clipped_sum(grads[:11] * 50.0, losses[:11] * 1e6)
    without = trainer._clipped_sum(grads[:10] * 50.0, losses[:10] * 1e6)
    assert float((with_one - without).norm()) <= math.hypot(0.5, trainer.loss_clip) + 1e-6
    assert base.shape == (trainer.dim + 1,)


def test_per_unit_gradient_averages_the_units_rows_and_ignores_padding():
    trainer, _ = _trainer(units=2, rows=3)
    trainer.mask[1, 1:] = 0.0
    grads, _ = trainer._per_unit(trainer.x, trainer.y, trainer.mask)
    single, _ = trainer._per_unit(trainer.x[1:2, :1], trainer.y[1:2, :1], trainer.mask[1:2, :1])
    torch.testing.assert_close(grads[1], single[0])


def test_non_finite_unit_gradients_count_as_zero():
    trainer, _ = _trainer()
    grads, losses = trainer._per_unit(trainer.x[:3], trainer.y[:3], trainer.mask[:3])
    bad = grads.clone()
    bad[1, 0] = float("nan")
    total = trainer._clipped_sum(bad, losses)
    expected = trainer._clipped_sum(grads[[0, 2]], losses[[0, 2]])
    torch.testing.assert_close(total[:-1], expected[:-1])
    assert torch.isfinite(total).all()


def test_a_step_adds_noise_and_moves_the_weights():
    trainer, _ = _trainer()
    before = {k: v.clone() for k, v in trainer.state().items()}
    loss = trainer.step()
    after = trainer.state()
    assert math.isfinite(loss)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert set(after) == {"weight", "bias"}


def _scripted(module: torch.nn.Module) -> str:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return base64.b64encode(buffer.getvalue()).decode()


class _WithBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(9, 1)
        self.register_buffer("seen", torch.zeros(9))

    def forward(self, x):
        return self.lin(x)


class _Prints(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(9, 1)

    def forward(self, x):
        print(x)
        return self.lin(x)


class _WritesIntoWeights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(9, 1)

    def forward(self, x):
        self.lin.weight.detach().add_(x.sum())
        return self.lin(x)


class _Remembers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(9, 1)
        self.seen: List[float] = [0.0]

    def forward(self, x):
        self.seen.append(float(x.sum()))
        return self.lin(x)


class _Uninitialised(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(9, 1)

    def forward(self, x):
        return self.lin(x) + torch.empty(x.shape[0], 1)


def test_torchscript_models_load_without_pickle_and_are_restricted():
    good = parse_training_spec(training_spec(model={
        "type": "torchscript",
        "data": _scripted(torch.nn.Sequential(torch.nn.Linear(9, 4), torch.nn.Tanh(),
                                              torch.nn.Linear(4, 1)))}))
    model = build_model(good.model, 9, 1)
    assert isinstance(model, torch.jit.ScriptModule)
    with pytest.raises(SpecError, match="must return"):
        build_model(good.model, 9, 3)
    with pytest.raises(SpecError, match="accept"):
        build_model(good.model, 5, 1)
    for module, message in ((_WithBuffer(), "buffers"), (_Prints(), "not allowed"),
                            (_WritesIntoWeights(), "in place"), (_Remembers(), "in place"),
                            (_Uninitialised(), "not allowed")):
        spec = parse_training_spec(training_spec(model={"type": "torchscript",
                                                        "data": _scripted(module)}))
        with pytest.raises(SpecError, match=message):
            build_model(spec.model, 9, 1)
    # A zip that is not a TorchScript archive.
    junk = base64.b64encode(b"PK\x03\x04not really a zip").decode()
    spec = parse_training_spec(training_spec(model={"type": "torchscript", "data": junk}))
    with pytest.raises(SpecError, match="could not be loaded"):
        build_model(spec.model, 9, 1)


def test_scripted_model_trains_with_per_unit_loop():
    data_spec = training_spec(model={"type": "torchscript",
                                     "data": _scripted(torch.nn.Linear(9, 1))})
    spec = parse_training_spec(data_spec)
    rng = np.random.default_rng(1)
    data = UnitData(x=rng.random((30, 2, 9)).astype(np.float32),
                    y=(rng.random((30, 2)) < 0.5).astype(np.float32),
                    mask=np.ones((30, 2), np.float32))
    model = build_model(spec.model, 9, 1)
    trainer = DPSGDTrainer(model, spec, plan_sgd(30, 10, 1, split_epsilon(2.0, 1e-5)), data)
    grads, _ = trainer._per_unit(trainer.x[:4], trainer.y[:4], trainer.mask[:4])
    # Same per-unit gradients as the functional path on an equal eager model.
    eager = torch.nn.Linear(9, 1)
    with torch.no_grad():
        eager.weight.copy_(model.weight)
        eager.bias.copy_(model.bias)
    reference = DPSGDTrainer(eager, parse_training_spec(training_spec()),
                             plan_sgd(30, 10, 1, split_epsilon(2.0, 1e-5)), data)
    expected, _ = reference._per_unit(reference.x[:4], reference.y[:4], reference.mask[:4])
    torch.testing.assert_close(grads, expected, rtol=1e-4, atol=1e-6)
    trainer.run(trainer.plan.steps)
    assert trainer.steps_done == trainer.plan.steps


@pytest.mark.parametrize("model, loss_spec", [
    ({"type": "logistic"}, {}),
    ({"type": "mlp", "hidden": [8, 4], "activation": "tanh"}, {}),
    ({"type": "mlp", "hidden": [6], "activation": "gelu"},
     {"task": "multiclass", "label": "grade", "loss": "cross_entropy"}),
    ({"type": "mlp", "hidden": [6], "activation": "relu"},
     {"task": "regression", "label": "score", "loss": "huber"}),
])
def test_batched_per_unit_gradients_equal_torch_func(model, loss_spec):
    spec = parse_training_spec(training_spec(model=model, **loss_spec))
    outputs = 3 if spec.task == "multiclass" else 1
    rng = np.random.default_rng(2)
    labels = rng.integers(0, outputs, (12, 3)) if outputs > 1 else rng.random((12, 3))
    mask = np.ones((12, 3), np.float32)
    mask[0, 1:] = 0.0
    mask[5] = 0.0                                     # a unit without any usable row
    data = UnitData(x=rng.random((12, 3, 9)).astype(np.float32),
                    y=labels.astype(np.float32), mask=mask)
    net = build_model(spec.model, 9, outputs, seed=3)
    trainer = DPSGDTrainer(net, spec, plan_sgd(12, 4, 1, split_epsilon(2.0, 1e-5)), data)
    assert trainer._stack is not None
    fast, fast_losses = trainer._stack_grads(trainer.x, trainer.y, trainer.mask)
    slow, slow_losses = trainer._vmap_grads()(trainer.x, trainer.y, trainer.mask)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast_losses, slow_losses, rtol=1e-5, atol=1e-6)
    assert float(fast[5].abs().sum()) == 0.0
    assert not fast.requires_grad
    before = flat_params(trainer)
    assert math.isfinite(trainer.step())
    assert not torch.equal(before, flat_params(trainer))


def flat_params(trainer) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in trainer.state().values()])


@pytest.mark.parametrize("model, rows", [
    ({"type": "logistic"}, 1),
    ({"type": "mlp", "hidden": [8, 4], "activation": "relu"}, 1),
    ({"type": "mlp", "hidden": [8], "activation": "tanh"}, 3),
])
def test_ghost_clipping_equals_materialised_clipping(model, rows):
    spec = parse_training_spec(training_spec(model=model, max_grad_norm=0.05))
    rng = np.random.default_rng(4)
    mask = np.ones((16, rows), np.float32)
    mask[0, 1:] = 0.0
    x = rng.random((16, rows, 9)).astype(np.float32)
    x[3, 0, 2] = np.inf                                 # one unit with a non-finite gradient
    data = UnitData(x=x, y=(rng.random((16, rows)) < 0.5).astype(np.float32), mask=mask)
    trainer = DPSGDTrainer(build_model(spec.model, 9, 1, seed=5), spec,
                           plan_sgd(16, 4, 1, split_epsilon(2.0, 1e-5)), data)
    ghost = trainer._stack_clipped_sum(trainer.x, trainer.y, trainer.mask)
    grads, losses = trainer._stack_grads(trainer.x, trainer.y, trainer.mask)
    materialised = trainer._clipped_sum(grads, losses)
    assert torch.isfinite(ghost).all()
    torch.testing.assert_close(ghost, materialised, rtol=1e-4, atol=1e-6)
    # Each unit alone stays within the clip norm.
    for u in range(16):
        alone = trainer._stack_clipped_sum(trainer.x[u:u + 1], trainer.y[u:u + 1],
                                           trainer.mask[u:u + 1])
        assert float(alone[:-1].norm()) <= 0.05 + 1e-7


def test_poisson_sampling_equals_the_32_bit_uniform_rule():
    """The byte-wise draw selects exactly the units whose 32-bit uniform U < floor(q 2^32)."""
    import torch_bridge.sampling as sampling

    rng = np.random.default_rng(7)
    q = 0.3
    threshold = math.floor(q * 2 ** 32)
    top = threshold >> 24
    uniforms = rng.integers(0, 2 ** 32, 5000, dtype=np.uint64)
    uniforms[:200] = (top << 24) + rng.integers(0, 2 ** 24, 200)    # many ties on the top byte
    first = (uniforms >> 24).astype(np.uint8)
    tied_low = (uniforms[first == top] & 0xFFFFFF).astype(np.uint32)
    reads = iter([first.tobytes(), tied_low.tobytes()])
    chosen = sampling.poisson_batch(5000, q, lambda n: next(reads))
    assert np.array_equal(chosen, np.flatnonzero(uniforms < threshold))


def test_chacha_stream_is_keyed_fresh_and_rekeys():
    from torch_bridge.sampling import ChaChaStream

    one, two = ChaChaStream(), ChaChaStream()
    first = one(64)
    assert len(first) == 64 and first != two(64) and first != one(64)
    one.REKEY_BYTES = 100
    key_before = one._cipher
    one(80)
    assert one._cipher is not key_before and one._produced == 80
    counts = np.bincount(np.frombuffer(ChaChaStream()(256_000), dtype=np.uint8), minlength=256)
    assert counts.min() > 800 and counts.max() < 1200           # ~1000 per byte value
