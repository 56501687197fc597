#!/usr/bin/env python3
"""The seed's design, as a peer: a loop that checks every second which GPU is free and starts the next job
there (`python peer_polling_loop.py GPUS JOBS_FILE`; one shell command per line)."""

import os
import shlex
import subprocess
import sys
import time

gpus = int(sys.argv[1])
jobs = [line for line in open(sys.argv[2]).read().splitlines() if line.strip()]
running: dict[int, subprocess.Popen] = {}
while jobs or running:
    for gpu, proc in list(running.items()):
        if proc.poll() is not None:
            del running[gpu]
    for gpu in range(gpus):
        if gpu not in running and jobs:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
            running[gpu] = subprocess.Popen(shlex.split(jobs.pop(0)), env=env)
    time.sleep(1.0)
