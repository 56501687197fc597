#!/usr/bin/env python3
"""Time to the best model on a real GPU (issue 25): a 12-run grid against the search, through the real CLI.

The training is bench/ttb_trainer.py: a character-level transformer on real text (the Python standard
library's sources), 1,500 steps (--steps), `val_loss` every 100. The space: lr 1e-4..1e-2 (log), layers 2..8,
dropout 0..0.3.
- grid: 12 runs, lr 1e-4, 1e-3, 1e-2 x layers 2, 8 x dropout 0, 0.3, one run a GPU (the seed's default
  packing): its wall time W and its best val_loss B.
- each search variant: 24 trials through `--search tpe` (TPE, train_sweep's defaults), on the same GPU(s),
  with `--max-processes-per-gpu auto` unless the variant says otherwise: `default`; `sha`, successive halving
  from step 100 (3x the trials); `pause`, the same pausing runs, which go on from their checkpoint;
  `pause-late`, pausing from step 300 (2x the trials); `pause-mps`, `pause` with `--mps`; `k8` and `k4`, 8 or 4
  runs a GPU; `baseline`, `default` with the train_sweep in $BENCH_BASELINE (a folder with an earlier
  train_sweep.py and its train_sweep_extras). Its time to B: from the sweep's start to the end of the first
  complete trial with val_loss <= B, as a share of W (the target is 0.25).

    python bench/bench_gpu_time_to_best.py                     # the grid, then default, sha and pause
    python bench/bench_gpu_time_to_best.py --grid 371.6 1.3198 --variants pause --trials 8   # no grid
    python bench/bench_gpu_time_to_best.py --steps 800 --probe  # the landscape at the grid's best, 10 runs
    python bench/bench_gpu_time_to_best.py --steps 800 --schedule cosine --variants default   # lr decayed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = Path(os.environ.get("BENCH_TRAINER", ROOT / "bench" / "ttb_trainer.py"))  # another: a smoke test
SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "layers": {"type": "int", "low": 2, "high": 8},
         "dropout": {"type": "float", "low": 0.0, "high": 0.3}}
GRID = {"lr": [1e-4, 1e-3, 1e-2], "layers": [2, 8], "dropout": [0.0, 0.3]}
SHA = {"type": "successive_halving", "min_resource": 100, "reduction_factor": 3}  # rungs at steps 100, 300, 900
VARIANTS = {  # name: (the search block's extra keys, extra flags, the runs' extra arguments, trials a --trials)
    "default": ({}, [], {}, 1),
    # successive halving: 1/3 of the runs go on at each rung, so 3x the trials spend about what the others do
    # (at 800 steps: 72 x 100 + 24 x 200 + 8 x 500 = 16,000 steps, against 24 x 800 = 19,200)
    "sha": ({"pruner": SHA}, [], {}, 3),
    "pause": ({"pruner": {**SHA, "pause": True}}, [], {"checkpoint": 1}, 3),  # the trainer saves before a report
    # the first rung at step 300, not 100: at step 100 of 800 the deep runs were still on the loss's plateau (2.4)
    # and the pause variants paused them there (H100, 2026-12-07); 2x the trials spend about what the others do
    "pause-late": ({"pruner": {**SHA, "min_resource": 300, "pause": True}}, [], {"checkpoint": 1}, 2),
    "pause-mps": ({"pruner": {**SHA, "pause": True}}, ["--max-processes-per-gpu", "auto", "--mps"], {"checkpoint": 1},
                  3),  # the same, the runs as clients of NVIDIA's MPS (runs packed on a GPU compute at once)
    "k8": ({}, ["--max-processes-per-gpu", "8"], {}, 1),
    # `default` with an earlier train_sweep: the one in BENCH_BASELINE (a folder with train_sweep.py and its extras,
    # e.g. `git archive 9dbb199 train_sweep.py train_sweep_extras | tar x -C DIR`), to compare on one machine
    "baseline": ({}, [], {}, 1),
    "k4": ({}, ["--max-processes-per-gpu", "4"], {}, 1),
}


# --probe: the landscape at the grid's best (lr 1e-3, 8 layers, dropout 0): its seed noise, and what a step away
# in each direction costs; one list sweep of these 10 runs, 10 at once on the GPU
PROBE = ([{"lr": 1e-3, "layers": 8, "dropout": 0.0, "seed": s} for s in (0, 1, 2)]
         + [{"lr": 1e-3, "layers": 8, "dropout": d, "seed": 0} for d in (0.005, 0.01, 0.02, 0.04)]
         + [{"lr": lr, "layers": 8, "dropout": 0.0, "seed": 0} for lr in (7.5e-4, 1.4e-3)]
         + [{"lr": 1e-3, "layers": 7, "dropout": 0.0, "seed": 0}])
# --probe --schedule cosine: where the best is with a cosine decay, 12 runs: lr across the grid's 1e-3 and 1e-2 at
# 8 layers and dropout 0 (with seeds 1 and 2 at 1e-3: the noise), and a step away in layers and dropout
PROBE_COSINE = ([{"lr": lr, "layers": 8, "dropout": 0.0, "seed": 0} for lr in (5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3,
                                                                               1e-2)]
                + [{"lr": 1e-3, "layers": 8, "dropout": 0.0, "seed": s} for s in (1, 2)]
                + [{"lr": 2e-3, "layers": 6, "dropout": 0.0, "seed": 0}, {"lr": 2e-3, "layers": 8, "dropout": 0.1,
                                                                          "seed": 0},
                   {"lr": 2e-3, "layers": 4, "dropout": 0.0, "seed": 0}])


def probe(defaults: dict, tmp: str) -> int:
    work = workdir(tmp, "probe")
    runs = PROBE_COSINE if defaults.get("schedule") == "cosine" else PROBE
    _, records, last = sweep(work, {"runs": runs, "defaults": defaults}, ["--max-processes-per-gpu", str(len(runs))])
    print("| lr | layers | dropout | seed | val_loss |\n| --- | --- | --- | --- | --- |")
    for r in records:
        hp = r["hyperparams"]
        v = value(r)
        shown = "-" if v is None else f"{v:.4f}"
        print(f"| {hp['lr']:g} | {hp['layers']} | {hp['dropout']:g} | {hp['seed']} | {shown} |")
    print(f"# {last}", file=sys.stderr)
    return 0


FOOTPRINTS: Path | None = None  # --footprint-cache: the sweeps remember footprints in this folder (else none)


def workdir(tmp: str, name: str) -> Path:
    """Where a sweep runs: a fresh temporary folder, or with --footprint-cache DIR/work, one folder for every
    sweep of every call, as a user repeats searches in one project folder (footprints are remembered per command,
    working folder and GPU model)."""
    return Path(tmp) / name if FOOTPRINTS is None else FOOTPRINTS / "work"


def sweep(work: Path, config: dict, flags: list[str], code: Path = ROOT) -> tuple[float, list[dict], str]:
    shutil.rmtree(work, ignore_errors=True)  # (--footprint-cache: the previous sweep, kept until now)
    work.mkdir(parents=True)
    (work / "cfg.json").write_text(json.dumps({"command": f"{sys.executable} {TRAINER}", **config}))
    cache = ["--no-footprint-cache"] if FOOTPRINTS is None else []
    env = {**os.environ, **({"XDG_CACHE_HOME": str(FOOTPRINTS)} if FOOTPRINTS is not None else {})}
    t0 = time.time()
    sampler = GpuSampler(t0)
    sampler.start()
    try:
        done = subprocess.run([sys.executable, str(code / "train_sweep.py"), "--config-file", "cfg.json", "--no-live",
                               "--metric", "val_loss", *cache, *flags], cwd=work, capture_output=True, text=True,
                              env=env)
    finally:
        sampler.stop.set()
        sampler.join()
    wall = time.time() - t0
    (work / "gpu_samples.json").write_text(json.dumps(sampler.samples))
    series = {}  # each run's reports: [step, seconds from the sweep's start] (the sweep's train_sweep_metrics.jsonl)
    for f in (work / "outputs").glob("*/train_sweep_metrics.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        series[f.parent.name] = [[r.get("step"), round(r["time"] - t0, 2)] for r in rows if "time" in r]
    (work / "series.json").write_text(json.dumps(series))
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    records = json.loads((work / "train_sweep_results.json").read_text())
    for r in records:  # times from the sweep's start, the earlier attempts' too (a paused run that went on)
        for item in (r, *(r.get("attempts") or ())):
            for key in ("start_time", "end_time"):
                item[key] = datetime.fromisoformat(item[key]).timestamp() - t0 if item.get(key) else None
    return wall, records, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


class GpuSampler(threading.Thread):
    """GPU 0's utilization, memory used and compute processes every 0.5 s while a sweep runs: [t, %, MB, n]."""

    def __init__(self, t0: float) -> None:
        super().__init__(daemon=True)
        self.t0, self.stop, self.samples = t0, threading.Event(), []

    def run(self) -> None:
        import pynvml
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self.stop.wait(0.5):
            with contextlib.suppress(pynvml.NVMLError):
                self.samples.append([round(time.time() - self.t0, 2), pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                                     round(pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20),
                                     len(pynvml.nvmlDeviceGetComputeRunningProcesses(h))])


def save(folder: Path | None, name: str, records: list[dict], work: Path) -> None:
    """SAVE/NAME.json: the runs (hyperparameters, states, times from the sweep's start); SAVE/NAME.log: the
    sweep's decisions (outputs/sweep.log: packing, footprints, the search's verdicts); SAVE/NAME.gpu_samples.json:
    GPU 0 every 0.5 s ([seconds, utilization %, MB used, compute processes]); SAVE/NAME.series.json: each run's
    reports ([step, seconds], from its train_sweep_metrics.jsonl)."""
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        keep = ("model_name", "state", "start_time", "end_time", "metrics", "hyperparams", "attempts")
        (folder / f"{name}.json").write_text(json.dumps([{k: r.get(k) for k in keep} for r in records]))
        for extra in ("gpu_samples.json", "series.json"):  # what the GPU did; when each run reported what step
            if (work / extra).exists():
                (folder / f"{name}.{extra}").write_bytes((work / extra).read_bytes())
        if (work / "outputs" / "sweep.log").exists():
            (folder / f"{name}.log").write_bytes((work / "outputs" / "sweep.log").read_bytes())


def value(r: dict) -> float | None:
    v = (r.get("metrics") or {}).get("val_loss")
    return v if r.get("state") == "complete" and isinstance(v, (int, float)) else None


def spans(records: list[dict]) -> list[tuple[float, float]]:
    """Every attempt's (start, end) from the sweep's start: a paused run that went on has several."""
    return [(a["start_time"], a["end_time"]) for r in records for a in (*(r.get("attempts") or ()), r)
            if a.get("start_time") is not None and a.get("end_time") is not None]


def ramp(records: list[dict]) -> str:
    """How fast the packing filled the GPU: the most runs at once (every attempt) and when it first was, how many
    started in the sweep's first 2 s, and when the first trial completed."""
    attempts = spans(records)
    events = sorted([(s, 1) for s, _ in attempts] + [(e, -1) for _, e in attempts])  # (ends first)
    running, most, at = 0, 0, 0.0
    for t, step in events:
        running += step
        if running > most:
            most, at = running, t
    early = sum(s <= 2.0 for s, _ in attempts)
    first = min((r["end_time"] for r in records if value(r) is not None), default=None)
    return (f"at most {most} runs at once, first at {at:.1f} s; {early} started in the first 2 s; the first "
            f"result at {'-' if first is None else f'{first:.1f} s'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["default", "sha", "pause"], choices=list(VARIANTS))
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500, help="training steps a run")
    p.add_argument("--grid", nargs=2, type=float, metavar=("WALL", "BEST"),
                   help="skip the grid: its wall time and best val_loss from an earlier call on the same machine")
    p.add_argument("--save", type=Path, help="write each sweep's results (times from its start) to SAVE/NAME.json")
    p.add_argument("--footprint-cache", type=Path, metavar="DIR",
                   help="the sweeps remember their runs' footprints in DIR (XDG_CACHE_HOME) and all run in DIR/work,"
                        " so that each later sweep (of this call or a later one) starts from them; without it they "
                        "remember nothing (--no-footprint-cache)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="the runs' learning rate schedule (bench/ttb_trainer.py)")
    p.add_argument("--probe", action="store_true",
                   help="only the landscape at the grid's best: 10 runs near lr 1e-3, 8 layers, dropout 0 (PROBE); "
                        "with --schedule cosine 12 runs across lr 5e-4..1e-2 and a step away (PROBE_COSINE)")
    args = p.parse_args()
    global FOOTPRINTS
    FOOTPRINTS = args.footprint_cache
    import pynvml
    pynvml.nvmlInit()
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    print(f"{pynvml.nvmlDeviceGetCount()} x {name}\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ttb_") as tmp:
        defaults = {"steps": args.steps, **({"schedule": "cosine"} if args.schedule == "cosine" else {})}
        if args.probe:
            return probe(defaults, tmp)
        if args.grid:
            wall, best = args.grid
            rows.append(("grid, 12 runs, one a GPU (an earlier call)", wall, best, None, 12, 0, "-", None))
        else:
            work = workdir(tmp, "grid")
            wall, records, last = sweep(work, {"grid": GRID, "defaults": defaults}, ["--max-processes-per-gpu", "1"])
            save(args.save, "grid", records, work)
            values = [v for r in records if (v := value(r)) is not None]
            best = min(values)
            first = min(r["end_time"] for r in records if value(r) == best)
            by_quarter = min((v for r in records if (v := value(r)) is not None and r["end_time"] <= wall / 4),
                             default=None)
            print(f"# grid: wall {wall:.1f} s, best val_loss {best:.4f} at {first:.1f} s; {last}", file=sys.stderr,
                  flush=True)
            rows.append(("grid, 12 runs, one a GPU", wall, best, first, len(values), 0, "-", by_quarter))
        for variant in args.variants:
            extra, flags, run_args, times = VARIANTS[variant]
            search = {"sampler": "tpe", "n_trials": args.trials * times, "seed": args.seed, "metric": "val_loss",
                      "params": SPACE, **extra}
            flags = flags or ["--max-processes-per-gpu", "auto"]
            work = workdir(tmp, variant)
            code = Path(os.environ["BENCH_BASELINE"]) if variant == "baseline" else ROOT
            w, recs, last = sweep(work, {"search": search, "defaults": {**defaults, **run_args}}, flags, code)
            save(args.save, variant, recs, work)
            done = sorted((r["end_time"], v) for r in recs if (v := value(r)) is not None)
            reach = next((t for t, v in done if v <= best), None)
            pruned = sum(r.get("state") == "pruned" for r in recs)
            top = min((v for _, v in done), default=float("nan"))
            went_on = sum(bool(r.get("attempts")) for r in recs)  # a paused run that went on: a second attempt
            resumed = sum("resumed from step" in log.read_text(errors="replace")  # ... from its checkpoint
                          for log in (work / "outputs").glob("*/train_stdout.log"))
            print(f"# {variant}: wall {w:.1f} s, best {top:.4f}, reached the grid's best at {reach} s; "
                  f"{went_on} run(s) of more than one attempt, {resumed} resumed from a checkpoint; {ramp(recs)}; "
                  f"{last}",
                  file=sys.stderr, flush=True)
            rows.append((f"search: {variant}, {args.trials * times} trials ({' '.join(flags)})", w, top, reach,
                         len(done), pruned,
                         f"{reach / wall:.2f}" if reach is not None else "never",
                         min((v for t, v in done if t <= wall / 4), default=None)))
    grid_wall = rows[0][1]
    print(f"| sweep | wall | best val_loss | reached the grid's best at | as a share of the grid's wall time "
          f"({grid_wall:.1f} s) | best by a quarter of it ({grid_wall / 4:.1f} s) | complete | pruned |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for what, w, top, reach, n, pruned, share, by_quarter in rows:
        at = f"{reach:.1f} s" if reach is not None else "never" if share != "-" else "-"
        share = share if share != "-" else f"{reach / grid_wall:.2f}" if reach is not None else "-"
        quarter = f"{by_quarter:.4f}" if by_quarter is not None else "-"
        print(f"| {what} | {w:.1f} s | {top:.4f} | {at} | {share} | {quarter} "
              f"| {n} | {pruned} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
