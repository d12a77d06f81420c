"""DP-SGD time over non-private training of the same model, data, epochs and batch size.

Run: python bench/dpsgd_bench.py [--units 20000] [--epochs 2] [--repeats 3]
     (writes bench/results/dpsgd.json and prints one line per model)

Both sides train on the same in-memory tensors (data selection through the Gateway is the
same for both and excluded). Non-private: shuffled minibatches of `batch_size`, one
autograd backward per batch, same optimiser, torch on one thread. DP-SGD:
`torch_bridge.dpsgd.DPSGDTrainer` exactly as a job runs it (CSPRNG Poisson sampling over
units, per-unit clipping, OpenDP discrete Gaussian noise on a fixed-point lattice drawn ahead
by background sampler threads, on the other cores). `ratio_without_opendp_noise` re-runs the
same code with the sampler closed and a pass-through instead (timing only), and
`sampler_us_per_coordinate` is OpenDP's own cost per noise coordinate on one thread: models
whose noise (steps x parameters x that cost / sampler threads) exceeds their torch time are
bounded by the sampler. Target: total ratio <= 3.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.torch_bridge.clinic import clinic_frames, design_matrix  # noqa: E402
from torch_bridge.accounting import plan_sgd, split_epsilon  # noqa: E402
from torch_bridge.data import UnitData  # noqa: E402
from torch_bridge.dpsgd import DPSGDTrainer, row_losses  # noqa: E402
from torch_bridge.models import build_model  # noqa: E402
from torch_bridge.noise import default_workers  # noqa: E402
from torch_bridge.spec import parse_training_spec  # noqa: E402

MODELS = {"logistic": {"type": "logistic"},
          "mlp32": {"type": "mlp", "hidden": [32], "activation": "relu"},
          "mlp64x64": {"type": "mlp", "hidden": [64, 64], "activation": "relu"}}


def spec_for(model: dict, epochs: int, batch: int):
    return parse_training_spec({
        "model": model, "sql": "SELECT age, bmi, smoker, region, sex, at_risk FROM patients",
        "label": "at_risk", "task": "binary", "optimizer": "adam", "lr": 0.05,
        "epochs": epochs, "batch_size": batch, "max_grad_norm": 1.0, "epsilon": 3.0,
        "delta": 1e-5})


def non_private(spec, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    model = build_model(spec.model, x.shape[1], 1, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    n, steps = x.shape[0], 0
    start = time.perf_counter()
    for _ in range(spec.epochs):
        order = torch.randperm(n)
        for i in range(0, n, spec.batch_size):
            idx = order[i:i + spec.batch_size]
            opt.zero_grad()
            row_losses(spec.loss, model(x[idx]), y[idx]).mean().backward()
            opt.step()
            steps += 1
    return time.perf_counter() - start, steps


def private(spec, data: UnitData, *, opendp_noise: bool = True) -> tuple[float, float, int]:
    """Seconds for the whole DP-SGD run (trainer construction included, so the samplers get
    no free head start), seconds the steps spent waiting for / adding noise, steps.

    opendp_noise=False closes the OpenDP sampler and swaps in a pass-through (TIMING ONLY,
    never a release) to measure the torch part alone on exactly the same code path."""
    split = split_epsilon(spec.epsilon, spec.delta)
    plan = plan_sgd(data.units, spec.batch_size, spec.epochs, split)  # calibration excluded
    model = build_model(spec.model, data.x.shape[2], 1, seed=0)
    noise_time = 0.0
    start = time.perf_counter()
    trainer = DPSGDTrainer(model, spec, plan, data)
    sampler = trainer.noise
    if not opendp_noise:
        trainer.noise.close()
        sampler = (lambda v: np.asarray(v, np.float64))

    def timed_noise(values):
        nonlocal noise_time
        t0 = time.perf_counter()
        out = sampler(values)
        noise_time += time.perf_counter() - t0
        return out

    trainer.noise = timed_noise
    try:
        for _ in range(plan.steps):
            trainer.step()
    finally:
        if opendp_noise:
            sampler.close()
    return time.perf_counter() - start, noise_time, plan.steps


def sampler_us_per_coordinate(samples: int = 1 << 15) -> float:
    """OpenDP discrete Gaussian throughput on one thread (the sampler's own cost)."""
    from torch_bridge.noise import LatticeGaussian, _draw

    noise = LatticeGaussian(1, 1.0, 1.0, steps=0)
    _draw(noise._measurement, 1000)
    t0 = time.perf_counter()
    _draw(noise._measurement, samples)
    return 1e6 * (time.perf_counter() - t0) / samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    frame = clinic_frames(args.units, seed=3)["patients"]
    x = torch.from_numpy(design_matrix(frame))
    y = torch.tensor(frame["at_risk"].to_numpy(), dtype=torch.float32)
    data = UnitData(x=x.numpy()[:, None, :].copy(), y=y.numpy()[:, None].copy(),
                    mask=torch.ones(len(frame), 1).numpy())
    results = []
    sampler_us = round(sampler_us_per_coordinate(), 2)
    for name, model in MODELS.items():
        spec = spec_for(model, args.epochs, args.batch)
        private(spec, data)  # warm-up: torch.func tracing, OpenDP measurement build
        base = min(non_private(spec, x, y)[0] for _ in range(args.repeats))
        runs = [private(spec, data) for _ in range(args.repeats)]
        total, noise, steps = min(runs, key=lambda r: r[0])
        compute = min(private(spec, data, opendp_noise=False)[0] for _ in range(args.repeats))
        params = sum(p.numel() for p in build_model(spec.model, x.shape[1], 1).parameters())
        row = {"model": name, "parameters": params, "units": args.units,
               "epochs": args.epochs, "batch_size": args.batch, "dp_steps": steps,
               "non_private_s": round(base, 4), "dpsgd_s": round(total, 4),
               "dpsgd_noise_wait_s": round(noise, 4),
               "ratio": round(total / base, 2),
               "dpsgd_torch_only_s": round(compute, 4),
               "ratio_without_opendp_noise": round(compute / base, 2),
               "noise_coordinates": steps * (params + 1),
               "sampler_us_per_coordinate": sampler_us,
               "sampler_threads": default_workers(),
               "meets_target_3x": total / base <= 3.0}
        results.append(row)
        print(f"{name:9s} params={params:6d} non-private {base:.3f}s  DP-SGD {total:.3f}s "
              f"(waiting for noise {noise:.3f}s)  ratio {row['ratio']}x "
              f"(without noise {row['ratio_without_opendp_noise']}x)")
    out = ROOT / "bench" / "results" / "dpsgd.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "DP-SGD time / non-private time (same model, data, epochs, batch)",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "processor": platform.processor()},
        "target_ratio": 3.0,
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    if not math.isfinite(sum(r["ratio"] for r in results)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
