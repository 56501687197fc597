#!/usr/bin/env python3
"""A train.py stand-in for the benchmarks: `id=N duration=S log=PATH` (key=value, as train_sweep passes
them). Appends one JSON line with its start and end time and CUDA_VISIBLE_DEVICES to PATH, and sleeps.
`report=N`: it prints a metric line (`step K: val_loss=...`) N times, evenly over its duration."""

import json
import os
import sys
import time

start = time.time()
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
reports = int(args.get("report", 0))
for k in range(reports):
    print(f"step {k}: train loss {1 / (k + 1):.4f}, val_loss={1.5 / (k + 1):.4f}", flush=True)
    time.sleep(float(args.get("duration", 0)) / reports)
if not reports:
    time.sleep(float(args.get("duration", 0)))
line = json.dumps({"id": int(args["id"]), "start": start, "end": time.time(),
                   "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
fd = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (line + "\n").encode())  # one small O_APPEND write: lines from parallel jobs never mix
os.close(fd)
