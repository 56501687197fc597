#!/usr/bin/env python3
"""A trial of bench/bench_search_yahpo.py: LCBench's surrogate learning curve of the configuration given as
key=value arguments (train_sweep's default style), played out epoch by epoch. It asks the harness's surrogate
server ($YAHPO_SOCKET) for the curve of $YAHPO_INSTANCE, then for each epoch sleeps the surrogate's time for it
times $YAHPO_SCALE, prints `step=E val_accuracy=V` and appends `TIME VALUE EPOCH` to $YAHPO_LOG (the harness
counts the budget there). A run that goes on after a pause (TRAIN_SWEEP_RESUME=1) starts after the epoch of
its checkpoint (a file in its folder, written before each report). Only the standard library: a trial
starts in milliseconds."""

import json
import os
import socket
import sys
import time

config = {}
for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    config[key] = float(value)
with socket.socket(socket.AF_UNIX) as s:
    s.connect(os.environ["YAHPO_SOCKET"])
    s.sendall(json.dumps({"instance": os.environ["YAHPO_INSTANCE"], "config": config}).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
curve = json.loads(data)
scale = float(os.environ["YAHPO_SCALE"])
log = os.open(os.environ["YAHPO_LOG"], os.O_WRONLY | os.O_APPEND)
checkpoint = os.path.join(os.environ.get("TRAIN_SWEEP_RUN_DIR", "."), "checkpoint")
done = 0  # a paused run that goes on (TRAIN_SWEEP_RESUME=1) starts after its checkpoint's epoch
if os.environ.get("TRAIN_SWEEP_RESUME") == "1" and os.path.exists(checkpoint):
    done = int(open(checkpoint).read())
spent = max([0.0] + [c for _, c in curve[:done]])
for epoch, (value, cumulative) in enumerate(curve, start=1):
    if epoch <= done:
        continue
    time.sleep(max(0.0, cumulative - spent) * scale)  # the surrogate's time is cumulative (and not always rising)
    spent = max(spent, cumulative)
    with open(checkpoint, "w") as f:  # before the report the pruner judges
        f.write(str(epoch))
    print(f"step={epoch} val_accuracy={value:.4f}", flush=True)
    os.write(log, f"{time.time():.4f} {value:.4f} {epoch}\n".encode())
