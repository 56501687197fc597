#!/usr/bin/env python3
"""Real GPUs: a TPE search with the median pruner over a small real PyTorch training
(bench/gpu_search_trainer.py), through the real CLI, while NVML is sampled every 20 ms. Prints: wall time,
trials complete and pruned, the fraction of the sweep each GPU had a run on it (occupied) and its mean
utilization, and for each pruned run how long after the pruning event its process still held GPU memory
(the last NVML sample that listed its PID), and how long its slot stayed empty.

    python bench/bench_gpu_search.py                       # every GPU; needs NVIDIA GPUs, nvidia-ml-py, torch, optuna
    python bench/bench_gpu_search.py --trials 32 --per-gpu 4
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


def main() -> int:
    import pynvml as nv

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--per-gpu", type=int, default=4, help="--max-processes-per-gpu")
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args()
    nv.nvmlInit()
    count = nv.nvmlDeviceGetCount()
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    seen: dict[int, float] = {}  # PID -> the last time NVML listed it on a GPU
    samples: list[tuple[float, list[int], list[int]]] = []  # time, utilization, our processes per GPU
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now = time.time()
            util, procs = [], []
            for h in handles:
                util.append(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                listed = nv.nvmlDeviceGetComputeRunningProcesses(h)
                procs.append(len(listed))
                for proc in listed:
                    seen[proc.pid] = now
            samples.append((now, util, procs))
            time.sleep(0.02)

    with tempfile.TemporaryDirectory(prefix="bench_gpu_search_") as tmp:
        work = Path(tmp)
        config = {"command": f"{sys.executable} {ROOT / 'bench' / 'gpu_search_trainer.py'}",
                  "defaults": {"steps": args.steps},
                  "search": {"sampler": "tpe", "n_trials": args.trials, "seed": 0, "metric": "val_loss",
                             "pruner": {"type": "median", "n_startup_trials": 4, "n_warmup_steps": 50},
                             "params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                                        "width": {"type": "int", "low": 64, "high": 1024, "step": 64},
                                        "layers": {"type": "int", "low": 1, "high": 4},
                                        "opt": {"type": "categorical", "choices": ["adam", "sgd"]}}}}
        (work / "search.json").write_text(json.dumps(config))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.time()
        done = subprocess.run([sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "search.json",
                               "--no-live", "--max-processes-per-gpu", str(args.per_gpu), "--memory-threshold-gb",
                               "1000"], cwd=work, capture_output=True, text=True)
        wall = time.time() - t0
        stop.set()
        sampler.join()
        if done.returncode not in (0, 1):
            print(done.stdout[-3000:], done.stderr[-3000:])
            return 1
        records = json.loads((work / "train_sweep_results.json").read_text())
        log = (work / "outputs" / "sweep.log").read_text().splitlines()
        pids = {r["model_name"]: int((Path(r["run_dir"]) / "pid").read_text()) for r in records
                if (Path(r["run_dir"]) / "pid").exists()}
    t = lambda text: datetime.fromisoformat(text).timestamp()  # noqa: E731
    pruned_at = {line.split()[2].rstrip(":"): t(line.split()[0]) for line in log if line.split()[1:2] == ["pruning"]}
    release = [seen[pids[name]] - at for name, at in pruned_at.items() if pids.get(name) in seen]
    spans = sorted((t(r["start_time"]), t(r["end_time"]), r["model_name"]) for r in records if r.get("end_time"))
    refill = []  # a pruned run's end -> the next start after it
    for _, end, name in spans:
        if name in pruned_at:
            later = [s for s, _, _ in spans if s >= end]
            if later:
                refill.append(min(later) - end)
    states = {s: sum(r["state"] == s for r in records) for s in ("complete", "pruned", "failed", "oom")}
    print(f"{count} GPU(s) {nv.nvmlDeviceGetName(handles[0])}, {args.trials} trials, --max-processes-per-gpu "
          f"{args.per_gpu}, {args.steps} steps a run; wall {wall:.1f} s; {states}")
    first, last = spans[0][0], max(e for _, e, _ in spans)
    inside = [s for s in samples if first <= s[0] <= last]
    for g in range(count):
        occupied = sum(1 for s in inside if s[2][g]) / max(1, len(inside))
        util = statistics.mean(s[1][g] for s in inside) if inside else float("nan")
        print(f"GPU {g}: occupied {100 * occupied:.1f}% of the sweep (first start to last end), mean utilization "
              f"{util:.0f}%")
    if release:
        print(f"pruned runs' memory: last listed by NVML {statistics.median(release) * 1000:.0f} ms (median), "
              f"{max(release) * 1000:.0f} ms (max) after the pruning event, over {len(release)} runs")
    if refill:
        print(f"slot of a pruned run refilled: {statistics.median(refill) * 1000:.0f} ms (median), "
              f"{max(refill) * 1000:.0f} ms (max) after it ended")
    best = min((r for r in records if r["state"] == "complete"), key=lambda r: r["metrics"]["val_loss"])
    print(f"best: {best['model_name']} val_loss={best['metrics']['val_loss']:.5f}")
    print(done.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
