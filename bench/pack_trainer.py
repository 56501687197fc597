#!/usr/bin/env python3
"""A real PyTorch training for the packing benchmark (bench/bench_gpu_pack.py), on the GPU in
CUDA_VISIBLE_DEVICES. Takes key=value arguments (train_sweep's default style):

    model=small   a character-level transformer of about 10M parameters (6 layers, width 384, context 128,
                  batch 32) trained on random tokens: the small model most sweeps train; it leaves most of
                  an H100 idle, so packing pays
    model=big     the same transformer, wide (width 2048, batch 64): compute-bound, and it holds `hold` of the
                  GPU's memory (default 0.65) as a real large run would (activations, optimizer state), so
                  only one fits on a GPU
    model=sized   the same transformer sized by width=, layers=, batch= (defaults 384, 6, 32) and lr= (3e-4):
                  a grid over them differs 20x in memory (bench/bench_gpu_auto.py)
    steps=N       training steps (default 300 small, 60 big)
    seed=S        ignored but for the run's name

Prints `step=K loss=V` every 20 steps, and `steps_per_s=R` at the end (train_sweep follows them with
--metric loss)."""

import os
import sys
import time

import torch

args = dict(a.split("=", 1) for a in sys.argv[1:])
model_kind = args.get("model", "small")
big = model_kind == "big"
steps = int(args.get("steps", 60 if big else 300))
width, layers, batch, ctx, vocab = (2048, 4, 64, 128, 256) if big else (384, 6, 32, 128, 256)
if model_kind == "sized":
    width, layers, batch = int(args.get("width", width)), int(args.get("layers", layers)), int(args.get("batch", batch))
device = torch.device("cuda")
torch.manual_seed(int(args.get("seed", 0)))
hold = None
if big:  # what a large run keeps on the GPU: here, plain memory, so the footprint is what the test needs
    total = torch.cuda.get_device_properties(device).total_memory
    hold = torch.empty(int(total * float(args.get("hold", 0.65))), dtype=torch.uint8, device=device)


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, 8, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                       torch.nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Parameter(torch.zeros(ctx, width))
        self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        mask = torch.triu(torch.ones(ctx, ctx, dtype=torch.bool, device=idx.device), 1)
        x = self.emb(idx) + self.pos
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


model = Model().to(device)
opt = torch.optim.AdamW(model.parameters(), lr=float(args.get("lr", 3e-4)))
params = sum(p.numel() for p in model.parameters())
print(f"model={model_kind} params={params / 1e6:.1f}M device={torch.cuda.get_device_name(device)} "
      f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
start = time.perf_counter()
for step in range(1, steps + 1):
    idx = torch.randint(0, vocab, (batch, ctx + 1), device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), idx[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % 20 == 0 or step == steps:
        print(f"step={step} loss={loss.item():.4f}", flush=True)
torch.cuda.synchronize()
print(f"steps_per_s={steps / (time.perf_counter() - start):.2f}", flush=True)
