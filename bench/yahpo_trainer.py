#!/usr/bin/env python3
"""A trial of bench/bench_search_yahpo.py: LCBench's surrogate learning curve of the configuration given as
key=value arguments (train_sweep's default style), played out epoch by epoch. It asks the harness's surrogate
server ($YAHPO_SOCKET) for the curve of $YAHPO_INSTANCE, then for each epoch sleeps the surrogate's time for it
times $YAHPO_SCALE, prints `step=E val_accuracy=V` and appends `TIME VALUE EPOCH` to $YAHPO_LOG (the harness
counts the budget there). Only the standard library: a trial starts in milliseconds."""

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
spent = 0.0
for epoch, (value, cumulative) in enumerate(curve, start=1):
    time.sleep(max(0.0, cumulative - spent) * scale)  # the surrogate's time is cumulative (and not always rising)
    spent = max(spent, cumulative)
    print(f"step={epoch} val_accuracy={value:.4f}", flush=True)
    os.write(log, f"{time.time():.4f} {value:.4f} {epoch}\n".encode())
