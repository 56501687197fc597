#!/usr/bin/env python3
"""A real PyTorch training for bench/bench_gpu_time_to_best.py: a character-level transformer (width 384,
context 128, batch 64, bf16 autocast) trained on real text, the Python standard library's own source files
(present on every machine), with a held-out tenth for validation. key=value arguments: lr, layers, dropout,
steps (default 1500), seed, schedule (constant, the default: lr at every step; cosine: a linear warm-up over the
first tenth of the steps, at most 100, then a cosine decay to lr/10 at the last step, as nanoGPT trains). Prints `step=K val_loss=V` every 100 steps (the loss on 8 fixed held-out
batches), the metric the search ranks by and its pruner reads. It keeps train_sweep's resume contract
(docs/search.md, "Pause and go on"): with checkpoint=1, before each report it saves its model, optimizer
and step to $TRAIN_SWEEP_RUN_DIR/checkpoint.pt (170 MB at 8 layers), and with TRAIN_SWEEP_RESUME=1 it goes on
from there."""

import math
import os
import sys
from pathlib import Path

import torch

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
lr, layers, dropout = float(args["lr"]), int(args["layers"]), float(args.get("dropout", 0.0))
steps, width, ctx, batch, vocab = int(args.get("steps", 1500)), 384, 128, 64, 256
schedule = args.get("schedule", "constant")
if schedule not in ("constant", "cosine"):
    sys.exit(f"ttb_trainer: schedule={schedule}: constant or cosine")
torch.manual_seed(int(args.get("seed", 0)))
device = torch.device("cuda")
files = sorted(Path(os.__file__).parent.glob("*.py"))  # the same files, in the same order, on every run
text = b"".join(f.read_bytes() for f in files)[:4_000_000]
data = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(device=device, dtype=torch.long)
split = int(0.9 * len(data))
train, val = data[:split], data[split:]
g = torch.Generator(device="cpu").manual_seed(1234)
val_starts = torch.randint(0, len(val) - ctx - 1, (8, batch), generator=g)


def batch_of(source: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts.to(device)[:, None] + torch.arange(ctx + 1, device=device)[None, :]
    chunk = source[idx]
    return chunk[:, :-1], chunk[:, 1:]


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, 6, dropout=dropout, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                       torch.nn.Linear(4 * width, width), torch.nn.Dropout(dropout))

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
        self.ln = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        mask = torch.triu(torch.ones(ctx, ctx, dtype=torch.bool, device=idx.device), 1)
        x = self.emb(idx) + self.pos
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def lr_at(step: int) -> float:
    if schedule == "constant":
        return lr
    warmup = min(100, steps // 10)
    if step <= warmup:
        return lr * step / warmup
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def loss_of(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))


model = Model().to(device)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
checkpoint = Path(os.environ.get("TRAIN_SWEEP_RUN_DIR", ".")) / "checkpoint.pt"
first = 1
if os.environ.get("TRAIN_SWEEP_RESUME") == "1" and checkpoint.exists():
    state = torch.load(checkpoint, map_location="cpu")  # the RNG states must stay CPU tensors
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])  # (moved to the parameters' device)
    torch.set_rng_state(state["rng"])  # the batches'
    torch.cuda.set_rng_state(state["cuda_rng"])  # dropout's
    first = state["step"] + 1
    print(f"resumed from step {state['step']}", flush=True)
for step in range(first, steps + 1):
    x, y = batch_of(train, torch.randint(0, len(train) - ctx - 1, (batch,)))
    for group in opt.param_groups:
        group["lr"] = lr_at(step)
    loss = loss_of(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 100 == 0 or step == steps:
        model.eval()
        with torch.no_grad():
            val_loss = sum(loss_of(model, *batch_of(val, s)).item() for s in val_starts) / len(val_starts)
        model.train()
        value = val_loss if val_loss == val_loss and val_loss < 1e9 else 1e9  # NaN or overflow: a poor value
        if args.get("checkpoint") == "1" and "TRAIN_SWEEP_RUN_DIR" in os.environ and step < steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(), "step": step}, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
        print(f"step={step} val_loss={value:.4f} train_loss={loss.item():.4f}", flush=True)
