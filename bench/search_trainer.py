#!/usr/bin/env python3
"""A train.py stand-in for the search benchmark: a known noisy function of its hyperparameters, learned
over `steps` steps (key=value arguments, as train_sweep passes them).

The final loss is a bowl in lr (log scale, best at 3e-3), layers (best 5), dropout (best 0.2) and a
penalty for opt=sgd, plus noise of sd 0.02 seeded by the parameters (the same run gives the same curve).
Each step prints `step=K loss=V`: loss = final + 1.5 / sqrt(K), so a bad run looks bad early, the way a
real learning curve does. `sleep` seconds pass per step; the last line is the final loss."""

import math
import random
import sys
import time

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
lr, layers, dropout = float(args["lr"]), int(args["layers"]), float(args["dropout"])
opt, steps, sleep = args.get("opt", "adam"), int(args.get("steps", 30)), float(args.get("sleep", 0.0))
final = ((math.log10(lr) - math.log10(3e-3)) ** 2 + 0.08 * (layers - 5) ** 2 + 4 * (dropout - 0.2) ** 2
         + (0.3 if opt == "sgd" else 0.0))
final += random.Random(f"{lr}|{layers}|{dropout}|{opt}").gauss(0, 0.02)
for k in range(1, steps + 1):
    print(f"step={k} loss={final + 1.5 / math.sqrt(k):.6f}", flush=True)
    if sleep:
        time.sleep(sleep)
