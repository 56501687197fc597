#!/usr/bin/env python3
"""A small real PyTorch training for bench/bench_gpu_search.py: an MLP fitted to a synthetic regression task
on the GPU (key=value arguments: lr, width, layers, opt, steps, batch). Every 10 steps it prints
`step=K val_loss=V` (the metric the search optimizes and the pruner reads); its PID goes to
$TRAIN_SWEEP_RUN_DIR/pid so that the benchmark can follow its GPU memory in NVML."""

import math
import os
import sys

import torch

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
lr, width, layers = float(args["lr"]), int(args["width"]), int(args["layers"])
opt, steps, batch = args.get("opt", "adam"), int(args.get("steps", 600)), int(args.get("batch", 8192))
with open(os.path.join(os.environ.get("TRAIN_SWEEP_RUN_DIR", "."), "pid"), "w") as f:
    f.write(str(os.getpid()))
torch.manual_seed(0)
device = "cuda"
g = torch.Generator(device="cpu").manual_seed(1)
x = torch.rand(65536, 16, generator=g) * 4 - 2
y = torch.sin(x[:, :8]).sum(1, keepdim=True) + 0.5 * (x[:, 8:] ** 2).sum(1, keepdim=True) / 8
x, y = x.to(device), y.to(device)
xv, yv = x[-8192:], y[-8192:]
blocks: list[torch.nn.Module] = [torch.nn.Linear(16, width), torch.nn.GELU()]
for _ in range(layers - 1):
    blocks += [torch.nn.Linear(width, width), torch.nn.GELU()]
model = torch.nn.Sequential(*blocks, torch.nn.Linear(width, 1)).to(device)
optim = (torch.optim.Adam if opt == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
for step in range(1, steps + 1):
    idx = torch.randint(0, 65536 - 8192, (batch,), device=device)
    loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    if step % 10 == 0:
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(xv), yv).item()
        print(f"step={step} val_loss={val if math.isfinite(val) else 1e9:.6f}", flush=True)
