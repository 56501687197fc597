#!/usr/bin/env python3
"""Real GPUs: a sweep of 16 short PyTorch trainings (examples/train.py on CUDA, each holding 40% of a GPU's
memory, so 2 fit on one GPU), run with --max-processes-per-gpu 2 and then 1, while NVML is sampled every
0.2 s. Prints, per setting: wall time, the fraction of time each GPU had a run on it (occupied), mean
utilization, idle gaps between runs on a GPU, the most processes seen on one GPU, and out-of-memory errors.

    python bench/bench_gpu.py                  # every GPU; needs NVIDIA GPUs, nvidia-ml-py, torch with CUDA
    python bench/bench_gpu.py --runs 8 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Sampler(threading.Thread):
    def __init__(self, nvml, count: int) -> None:
        super().__init__(daemon=True)
        self.nvml, self.count = nvml, count
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.samples: list[tuple[float, list[float], list[int], list[int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        nv = self.nvml
        while not self.stop.is_set():
            mem = [nv.nvmlDeviceGetMemoryInfo(h).used / 2**30 for h in self.handles]
            util = [nv.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            procs = [len(nv.nvmlDeviceGetComputeRunningProcesses(h)) for h in self.handles]
            self.samples.append((time.time(), mem, util, procs))
            time.sleep(0.2)


def idle_gaps(records: list[dict]) -> list[float]:
    """Per GPU: the times between the end of its busy spells and the start of the next (runs merged)."""
    gaps = []
    by_gpu: dict[int, list[tuple[float, float]]] = {}
    for r in records:
        s = datetime.fromisoformat(r["start_time"]).timestamp()
        e = datetime.fromisoformat(r["end_time"]).timestamp()
        by_gpu.setdefault(r["gpu_id"], []).append((s, e))
    for spans in by_gpu.values():
        spans.sort()
        end = spans[0][1]
        for s, e in spans[1:]:
            if s > end:
                gaps.append(s - end)
            end = max(end, e)
    return gaps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--settings", type=int, nargs="+", default=[2, 1], help="values of --max-processes-per-gpu")
    args = ap.parse_args()
    import pynvml

    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    total_gb = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total / 2**30
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    hold = round(0.4 * total_gb, 1)
    print(f"# bench_gpu: {count} x {name} ({total_gb:.0f} GB), {args.runs} runs of examples/train.py, "
          f"each holding {hold} GB, {args.epochs} epochs")
    print("\n| --max-processes-per-gpu | wall s | runs ok | occupied (per GPU) | mean util % | idle gaps median / max s "
          "| most processes on a GPU | out of memory |")
    print("|---:|---:|---:|---|---:|---|---:|---:|")
    for per_gpu in args.settings:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "c.json").write_text(json.dumps([{"lr": 0.01, "hidden": 64, "epochs": args.epochs,
                                                      "mem_gb": hold, "seed": i} for i in range(args.runs)]))
            sampler = Sampler(pynvml, count)
            sampler.start()
            t0 = time.time()
            p = subprocess.run([sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "c.json",
                                "--command", f"python {ROOT / 'examples' / 'train.py'}", "--no-live",
                                "--max-processes-per-gpu", str(per_gpu),
                                "--memory-threshold-gb", f"{0.5 * total_gb:.0f}"],
                               cwd=work, capture_output=True, text=True)
            wall = time.time() - t0
            sampler.stop.set()
            sampler.join()
            records = json.loads((work / "train_sweep_results.json").read_text())
        if p.returncode != 0:
            print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
        during = [s for s in sampler.samples if t0 <= s[0] <= t0 + wall]
        occupied = [sum(s[3][g] > 0 for s in during) / len(during) for g in range(count)]
        util = statistics.mean(u for s in during for u in s[2])
        gaps = idle_gaps(records)
        most = max(max(s[3]) for s in during)
        ooms = sum("out of memory" in (r.get("stderr") or "").lower() for r in records)
        ok = sum(r["state"] == "complete" for r in records)
        gap_text = f"{statistics.median(gaps):.2f} / {max(gaps):.2f}" if gaps else "none"
        print(f"| {per_gpu} | {wall:.1f} | {ok}/{len(records)} | {' '.join(f'{o:.0%}' for o in occupied)} | "
              f"{util:.0f} | {gap_text} | {most} | {ooms} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
