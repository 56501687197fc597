#!/usr/bin/env python3
"""A small, real trainer for the example sweep: fits a one-hidden-layer MLP to a synthetic regression task.

    python examples/train.py lr=0.05 hidden=16 epochs=20 seed=0

Takes Hydra-style key=value arguments (as train_sweep passes them), prints progress each epoch and a
final `val_loss=...`, and writes metrics.json to $TRAIN_SWEEP_RUN_DIR (or the current folder).
With PyTorch installed and a GPU visible it trains on the GPU (device=auto), else in pure Python.
`mem_gb=N` holds N GB of GPU memory while training (to try packing); `device=cpu` forces the CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time

DEFAULTS = {"lr": 0.05, "hidden": 16, "epochs": 20, "seed": 0, "samples": 2048, "device": "auto", "mem_gb": 0.0}


def parse_args(argv: list[str]) -> dict:
    hp = dict(DEFAULTS)
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep:
            sys.exit(f"train.py: expected key=value, got {arg!r}")
        if key not in hp:
            sys.exit(f"train.py: unknown hyperparameter {key!r} (known: {', '.join(hp)})")
        try:
            hp[key] = type(DEFAULTS[key])(json.loads(text)) if not isinstance(DEFAULTS[key], str) else text
        except ValueError:
            sys.exit(f"train.py: {key}={text!r} is not a {type(DEFAULTS[key]).__name__}")
    return hp


def make_data(n: int, rng: random.Random) -> list[tuple[float, float, float]]:
    data = []
    for _ in range(n):
        x1, x2 = rng.uniform(-2, 2), rng.uniform(-2, 2)
        data.append((x1, x2, math.sin(x1) + 0.5 * x2 * x2 + rng.gauss(0, 0.05)))
    return data


def train_python(hp: dict, train: list, val: list, rng: random.Random) -> float:
    h = hp["hidden"]
    w1 = [[rng.gauss(0, 0.5) for _ in range(2)] for _ in range(h)]
    b1 = [0.0] * h
    w2 = [rng.gauss(0, 0.5) for _ in range(h)]
    b2 = 0.0

    def forward(x1: float, x2: float) -> tuple[list[float], float]:
        a = [math.tanh(w[0] * x1 + w[1] * x2 + b) for w, b in zip(w1, b1)]
        return a, sum(wi * ai for wi, ai in zip(w2, a)) + b2

    def mse(data: list) -> float:
        return sum((forward(x1, x2)[1] - y) ** 2 for x1, x2, y in data) / len(data)

    for epoch in range(1, hp["epochs"] + 1):
        rng.shuffle(train)
        for x1, x2, y in train:
            a, out = forward(x1, x2)
            g = 2 * (out - y)
            for j in range(h):
                ga = g * w2[j] * (1 - a[j] * a[j])
                w2[j] -= hp["lr"] * g * a[j]
                w1[j][0] -= hp["lr"] * ga * x1
                w1[j][1] -= hp["lr"] * ga * x2
                b1[j] -= hp["lr"] * ga
            b2 -= hp["lr"] * g
        print(f"epoch {epoch}/{hp['epochs']} train_loss={mse(train):.5f}", flush=True)
    return mse(val)


def train_torch(hp: dict, train: list, val: list, device: str) -> float:
    import torch

    torch.manual_seed(hp["seed"])
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device cuda:0 name={props.name} uuid={props.uuid} "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    hold = None
    if hp["mem_gb"] > 0:
        hold = torch.empty(int(hp["mem_gb"] * 2**30), dtype=torch.uint8, device=device)  # noqa: F841
    x = torch.tensor([[a, b] for a, b, _ in train], device=device)
    y = torch.tensor([[c] for *_, c in train], device=device)
    xv = torch.tensor([[a, b] for a, b, _ in val], device=device)
    yv = torch.tensor([[c] for *_, c in val], device=device)
    model = torch.nn.Sequential(torch.nn.Linear(2, hp["hidden"]), torch.nn.Tanh(), torch.nn.Linear(hp["hidden"], 1))
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"])
    for epoch in range(1, hp["epochs"] + 1):
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), 16):
            idx = perm[i : i + 16]
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            print(f"epoch {epoch}/{hp['epochs']} train_loss={torch.nn.functional.mse_loss(model(x), y).item():.5f}",
                  flush=True)
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(xv), yv).item()


def main() -> int:
    hp = parse_args(sys.argv[1:])
    rng = random.Random(hp["seed"])
    data = make_data(hp["samples"], rng)
    train, val = data[: int(0.8 * len(data))], data[int(0.8 * len(data)) :]
    device = hp["device"]
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu-python"
        except ImportError:
            device = "cpu-python"
    start = time.time()
    print(f"training {hp} on {device}", flush=True)
    val_loss = train_python(hp, train, val, rng) if device == "cpu-python" else train_torch(hp, train, val, device)
    if not math.isfinite(val_loss):
        print(f"val_loss={val_loss}: training diverged (learning rate too high?)", file=sys.stderr)
        return 1
    print(f"val_loss={val_loss:.6f}", flush=True)
    out_dir = os.environ.get("TRAIN_SWEEP_RUN_DIR", ".")
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"val_loss": val_loss, "train_seconds": round(time.time() - start, 3)}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
