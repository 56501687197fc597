#!/usr/bin/env python3
"""Does `--max-processes-per-gpu auto` pack as well as the best fixed number of runs a GPU, and safely?
(issue 23). Real PyTorch trainings (bench/pack_trainer.py) through the real CLI on the GPUs given:

  (a) identical small runs (a 10M-parameter transformer, ~1.4 GB): auto against fixed K = 1 2 4 8 12 16;
  (b) a grid whose runs differ ~20x in memory (batch 64/512 x layers 2/8 x width 384/768 x 2 learning rates),
      in config order and --shuffle'd: auto against fixed K with --memory-threshold-gb 60;
  (c) auto again over the same runs in a new output folder, with the footprints (a) and (b) remembered.

Each sweep gets its own footprint cache (XDG_CACHE_HOME) but (c), which reuses its workload's. Prints for each:
wall time, against the best fixed K that completed every run, out-of-memory attempts, the most runs at once,
the longest stretch with no run of the sweep on the GPU while runs were left (a wait), runs started in the
first 2 s, and auto's decisions from sweep.log.

    python bench/bench_gpu_auto.py                      # both parts, every GPU
    python bench/bench_gpu_auto.py --parts a c          # (a), then (c) on it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = Path(os.environ.get("BENCH_TRAINER", ROOT / "bench" / "pack_trainer.py"))  # another: a smoke test
sys.path.insert(0, str(ROOT / "bench"))
from bench_gpu_pack import Sampler  # noqa: E402

WORKLOADS = {
    "small": {"seed": list(range(12)), "model": ["small"], "steps": [150]},
    "grid": {"batch": [64, 512], "layers": [2, 8], "width": [384, 768], "lr": [1e-3, 3e-4], "model": ["sized"],
             "steps": [60]},
}


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def sweep(folder: Path, workload: str, k: str, gpus: list[str], cache: Path, shuffle: bool = False,
          again: Path | None = None) -> dict:
    """One sweep in a folder of its own; `again`: the same runs again in that sweep's folder (the footprints are
    remembered per command, folder and GPU model), into a new output folder."""
    work = again or folder / f"{workload}_{k}{'_shuffled' if shuffle else ''}_{time.monotonic_ns()}"
    out = ["--output-dir", "outputs_again", "--output-file", "again.json"] if again else []
    work.mkdir(exist_ok=again is not None)
    (work / "cfg.json").write_text(json.dumps({"grid": WORKLOADS[workload]}))
    threshold = ["--memory-threshold-gb", "60"] if k != "auto" else []
    sampler = Sampler(max(int(g) for g in gpus) + 1)
    sampler.start()
    start = time.time()
    p = subprocess.run([sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "cfg.json", "--command",
                        f"python {TRAINER}", "--max-processes-per-gpu", k, *threshold, "--metric", "loss",
                        "--no-live", "--gpus", *gpus, *(["--shuffle", "--seed", "1"] if shuffle else []), *out],
                       check=False, cwd=work, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    wall = time.time() - start
    sampler.stop.set()
    sampler.join()
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
    records = json.loads((work / ("again.json" if again else "train_sweep_results.json")).read_text())
    ooms = sum(1 for r in records for a in [*r.get("attempts", []), r] if a.get("state") == "oom")
    spans = []  # every attempt's (start, end)
    for r in records:
        for a in [*r.get("attempts", []), r]:
            if a.get("start_time") and a.get("end_time"):
                spans.append((stamp(a["start_time"]), stamp(a["end_time"])))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], -x[1]))
    running, idle_from, gap, most = 0, start, 0.0, 0
    last_end = max(e for _, e in spans) if spans else start
    for at, step in events:
        if running == 0 and step == 1 and at <= last_end:
            gap = max(gap, at - idle_from)
        running += step
        most = max(most, running)
        if running == 0:
            idle_from = at
    first = min(s for s, _ in spans) if spans else start
    early = sum(1 for s, _ in spans if s - first < 2.0)
    log = (work / ("outputs_again" if again else "outputs") / "sweep.log").read_text().splitlines()
    decisions = [line.split(" ", 1)[1] for line in log if " packing " in line or " footprint " in line]
    complete = sum(r["state"] == "complete" for r in records)
    return {"work": work, "wall": wall, "ooms": ooms, "most": most, "gap": gap, "early": early, "complete": complete,
            "runs": len(records), "ok": p.returncode == 0, "decisions": decisions,
            "tip": [line for line in p.stdout.splitlines() if line.startswith("Tip:")]}


def table(title: str, rows: dict[str, dict]) -> None:
    done = {k: r["wall"] for k, r in rows.items() if not k.startswith("auto") and r["complete"] == r["runs"]}
    best = min(done.values(), default=float("nan"))
    best_k = min(done, key=done.get) if done else "-"
    print(f"### {title}\n")
    print(f"| K | wall | against the best fixed K (K={best_k}) | complete | OOM attempts | most at once "
          "| longest wait with the GPU empty | started in the first 2 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, r in rows.items():
        print(f"| {k} | {r['wall']:.1f} s | {r['wall'] / best:.2f} | {r['complete']}/{r['runs']} | {r['ooms']} "
              f"| {r['most']} | {r['gap']:.1f} s | {r['early']} |")
    for k, r in rows.items():
        if k.startswith("auto"):
            print(f"\n{k}: {len(r['decisions'])} decision(s) in sweep.log, the first ones:")
            for line in r["decisions"][:8]:
                print(f"    {line[:160]}")
            for line in r["tip"]:
                print(f"    summary: {line[:160]}")
    print(flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--small-ks", nargs="+", default=["1", "2", "4", "8", "12", "16"])
    parser.add_argument("--grid-ks", nargs="+", default=["2", "4", "8"])
    parser.add_argument("--gpus", nargs="+", default=None)
    args = parser.parse_args()
    import pynvml

    pynvml.nvmlInit()
    gpus = args.gpus or [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(int(gpus[0])))
    print(f"{len(gpus)} x {name}, {os.cpu_count()} CPU cores\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_auto_") as tmp:
        folder = Path(tmp)
        caches = {w: folder / f"cache_{w}" for w in WORKLOADS}
        for part, workload, ks in (("a", "small", args.small_ks), ("b", "grid", args.grid_ks)):
            if part not in args.parts:
                continue
            rows: dict[str, dict] = {}
            orders = [False, True] if workload == "grid" else [False]
            for k in ks:
                rows[k] = sweep(folder, workload, k, gpus, folder / f"cache_{workload}_{k}")
                print(f"# {workload} K={k}: {rows[k]['wall']:.1f} s", file=sys.stderr, flush=True)
            for shuffle in orders:
                key = "auto" + (" shuffled" if shuffle else "")
                cache = caches[workload] if not shuffle else folder / f"cache_{workload}_shuffled"
                rows[key] = sweep(folder, workload, "auto", gpus, cache, shuffle)
                print(f"# {workload} {key}: {rows[key]['wall']:.1f} s", file=sys.stderr, flush=True)
            if "c" in args.parts:  # (c) the same runs again, a new output folder, the footprints remembered
                rows["auto again (remembered)"] = sweep(folder, workload, "auto", gpus, caches[workload],
                                                        again=rows["auto"]["work"])
            runs = rows[ks[0]]["runs"] if ks else 0
            table(f"({part}) {workload}: {runs} runs", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
