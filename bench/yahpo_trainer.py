#!/usr/bin/env python3
"""A trial of bench/bench_search_yahpo.py: LCBench's surrogate learning curve of the configuration given as
key=value arguments (train_sweep's default style), played out epoch by epoch. It asks the harness's surrogate
server ($YAHPO_SOCKET) for the curve of $YAHPO_INSTANCE, then for each epoch sleeps the surrogate's time for it
times $YAHPO_SCALE, prints `step=E val_accuracy=V` and appends `TIME VALUE EPOCH` to $YAHPO_LOG (the harness
counts the budget there). A run that goes on after a pause (TRAIN_SWEEP_RESUME=1) starts after the epoch of
its checkpoint (a file in its folder, written before each report). With $YAHPO_SHARE (the harness's --share) the
trials share one simulated GPU: each waits $YAHPO_STARTUP seconds (its start-up, on the CPU), then computes at
the GPU's throughput at the number of trials computing, shared equally (the harness counts their open
connections). Only the standard library: a trial starts in milliseconds."""

import json
import math
import os
import socket
import sys
import time

config = {}
for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    config[key] = float(value)
s = socket.socket(socket.AF_UNIX)  # (--share: kept open while the trial lives; the harness counts them)
s.connect(os.environ["YAHPO_SOCKET"])
s.sendall(json.dumps({"instance": os.environ["YAHPO_INSTANCE"], "config": config}).encode() + b"\n")
reader = s.makefile("rb")
curve = json.loads(reader.readline())
scale = float(os.environ["YAHPO_SCALE"])
share = os.environ.get("YAHPO_SHARE")  # --share: "c:throughput,..." of one GPU the trials share
if share:
    points = sorted((float(c), float(t)) for c, t in (p.split(":") for p in share.split(",")))
    time.sleep(float(os.environ["YAHPO_STARTUP"]))  # start-up (imports, data): the CPU's, not the GPU's
    s.sendall(b"ready\n")


def speed() -> float:
    """This trial's speed against alone: the GPU's throughput at the trials computing now, shared equally
    (interpolated in log c between the measured points, flat past the last)."""
    s.sendall(b"c\n")
    c = max(1.0, float(reader.readline()))
    lo = max((p for p in points if p[0] <= c), default=points[0])
    hi = min((p for p in points if p[0] >= c), default=points[-1])
    t = lo[1] if hi[0] == lo[0] else lo[1] + (hi[1] - lo[1]) * math.log(c / lo[0]) / math.log(hi[0] / lo[0])
    return t / c


def work(seconds: float) -> None:
    """`seconds` of this trial's computation alone, at the speed the GPU's sharing gives it (re-read every
    20 ms), or a plain sleep without --share."""
    while share and seconds > 0:
        v = speed()
        step = min(0.02, seconds / v)
        time.sleep(step)
        seconds -= step * v
    if not share:
        time.sleep(seconds)


log = os.open(os.environ["YAHPO_LOG"], os.O_WRONLY | os.O_APPEND)
checkpoint = os.path.join(os.environ.get("TRAIN_SWEEP_RUN_DIR", "."), "checkpoint")
done = 0  # a paused run that goes on (TRAIN_SWEEP_RESUME=1) starts after its checkpoint's epoch
if os.environ.get("TRAIN_SWEEP_RESUME") == "1" and os.path.exists(checkpoint):
    done = int(open(checkpoint).read())
spent = max([0.0] + [c for _, c in curve[:done]])
for epoch, (value, cumulative) in enumerate(curve, start=1):
    if epoch <= done:
        continue
    work(max(0.0, cumulative - spent) * scale)  # the surrogate's time is cumulative (and not always rising)
    spent = max(spent, cumulative)
    with open(checkpoint, "w") as f:  # before the report the pruner judges
        f.write(str(epoch))
    print(f"step={epoch} val_accuracy={value:.4f}", flush=True)
    os.write(log, f"{time.time():.4f} {value:.4f} {epoch}\n".encode())
