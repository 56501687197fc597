#!/usr/bin/env python3
"""Scale: a sweep of N trivial runs (`true`) on 8 slots. Prints runs/second for each thousand runs (overhead
must stay flat from the first to the last thousand) and train_sweep's peak memory (target: below 200 MB).

    python bench/bench_scale.py              # 10,000 runs
    python bench/bench_scale.py --runs 2000 --slots 8

Uses --disable-gpu-monitoring with 8 "GPUs" (slots only), so it needs no GPU; the results file, the
journal and every run folder are written as in a real sweep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--slots", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "config.json").write_text(json.dumps([{"i": i} for i in range(args.runs)]))
        cmd = [sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "config.json", "--command", "true",
               "--gpus", *map(str, range(args.slots)), "--disable-gpu-monitoring"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
            time.sleep(0.2)
        wall = time.time() - t0
        if proc.returncode != 0:
            print(proc.stderr.read(), file=sys.stderr)
            return 1
        results = json.loads((work / "train_sweep_results.json").read_text())
        ends = sorted(dt.datetime.fromisoformat(r["end_time"]).timestamp() for r in results)
    print(f"# bench_scale: {args.runs} runs of `true` on {args.slots} slots; {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'runs':>13} | {'runs/s':>7} | {'ms/run':>6}")
    print(f"{'-' * 13}-+-{'-' * 7}-+-{'-' * 6}")
    step = 1000 if args.runs >= 2000 else max(1, args.runs // 5)
    prev = t0
    for k in range(step, args.runs + 1, step):
        t = ends[k - 1]
        rate = step / (t - prev)
        print(f"{k - step + 1:>6}-{k:<6} | {rate:7.1f} | {1000 / rate:6.2f}")
        prev = t
    print(f"total: {args.runs} runs in {wall:.1f}s ({args.runs / wall:.1f} runs/s); "
          f"train_sweep peak RSS {peak:.1f} MB; results file {len(results)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
