#!/usr/bin/env python3
"""Packing on real GPUs: how many runs per GPU pay off, and does `--max-processes-per-gpu auto` find it?
Two real PyTorch workloads (bench/pack_trainer.py): small models (a 10M-parameter transformer that leaves
most of a GPU idle, packing pays) and a big model (compute-bound, 65% of the GPU's memory: one fits). Each
workload runs with K = 1, 2, 4, 8 and auto, interleaved (the order rotates each round), while NVML is
sampled every 0.2 s. Prints per workload and K: wall time, against the best fixed K, mean GPU utilization,
the most runs seen on one GPU at once, out-of-memory attempts, and for auto the time from the first
footprint learned until every slot auto decided on was filled (as many runs at once as ever ran).

    python bench/bench_gpu_pack.py                       # every GPU; needs NVIDIA GPUs, nvidia-ml-py, torch
    python bench/bench_gpu_pack.py --small-runs 16 --rounds 2 --ks 1 4 8 auto
    python bench/bench_gpu_pack.py --workloads small --ks 1 4 8 auto 4+mps auto+mps   # +mps: train_sweep --mps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "bench" / "pack_trainer.py"


class Sampler(threading.Thread):
    """NVML every 0.2 s: utilization and the number of compute processes of each GPU."""

    def __init__(self, count: int) -> None:
        import pynvml

        super().__init__(daemon=True)
        self.nv = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.samples: list[tuple[list[int], list[int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            util = [self.nv.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            procs = [len(self.nv.nvmlDeviceGetComputeRunningProcesses(h)) for h in self.handles]
            self.samples.append((util, procs))
            time.sleep(0.2)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class MpsDaemon:
    """--curve --mps: the CUDA MPS control daemon, its pipe and log folders under `folder`; `env` is what its
    clients need. (A K written `4+mps` is train_sweep's own --mps.)"""

    def __init__(self, folder: Path) -> None:
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "mps_pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "mps_log")}
        for path in self.env.values():
            Path(path).mkdir()
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **self.env}, check=True)

    def quit(self) -> None:
        subprocess.run(["nvidia-cuda-mps-control"], check=False, input="quit\n", text=True, env={**os.environ, **self.env},
                       timeout=60)


def run_one(folder: Path, workload: str, runs: int, k: str, gpus: list[str], steps: int | None) -> dict:
    work = folder / f"{workload}_{k.replace('+', '_')}_{time.monotonic_ns()}"
    work.mkdir()
    k, mps = k.removesuffix("+mps"), k.endswith("+mps")
    grid = {"seed": list(range(runs)), "model": [workload]}
    if steps:
        grid["steps"] = [steps]
    (work / "cfg.json").write_text(json.dumps({"grid": grid}))
    sampler = Sampler(len(gpus))
    sampler.start()
    start = time.time()
    p = subprocess.run([sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "cfg.json", "--command",
                        f"python {TRAINER}", "--max-processes-per-gpu", k, "--metric", "loss", "--no-live",
                        "--gpus", *gpus, *(["--mps"] if mps else [])], check=False, cwd=work, capture_output=True,
                       text=True, timeout=1800)
    wall = time.time() - start
    sampler.stop.set()
    sampler.join()
    if p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
    records = json.loads((work / "train_sweep_results.json").read_text())
    ooms = sum(1 for r in records for a in [*r["attempts"], r] if a.get("state") == "oom")
    busy = [s for s in sampler.samples if any(n for n in s[1])]
    util = statistics.mean(statistics.mean(u) for u, _ in busy) if busy else 0.0
    most = max((max(n) for _, n in sampler.samples), default=0)
    fill = None
    log = (work / "outputs" / "sweep.log").read_text().splitlines()
    learned = [line for line in log if line.split(" ", 1)[1].startswith("footprint ")]  # auto's own event
    if k == "auto" and learned:  # first footprint known -> the moment as many runs ran as ever did (every slot)
        first = ts(learned[0].split(" ", 1)[0])
        events = sorted([(ts(r["start_time"]), 1) for r in records] + [(ts(r["end_time"]), -1) for r in records],
                        key=lambda e: (e[0], e[1]))  # an end before a start at the same moment
        running, most_at, peak = 0, first, 0
        for at, step in events:
            running += step
            if running > peak:
                peak, most_at = running, at
        fill = max(0.0, most_at - first)
    return {"wall": wall, "util": util, "most": most, "ooms": ooms, "fill": fill, "ok": p.returncode == 0,
            "decisions": [line.split(" ", 1)[1] for line in log if " packing " in line or " footprint " in line][:6]}


def curve(levels: list[int], workload: str, steps: int | None, gpu: str, mps_env: dict) -> None:
    """Without train_sweep: c trainings started at once on one GPU, for each c; what the GPU and the CPUs do,
    and what it yields (runs a minute, steps a second over all of them). The data the auto rule rests on."""
    import psutil

    print(f"### {workload}: c trainings at once on GPU {gpu}{' under MPS' if mps_env else ''}\n")
    print("| c | wall | runs/min | against c=1 | steps/s of one | steps/s in all | mean GPU util | mean CPU busy "
          "| GPU memory used |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for c in levels:
        sampler = Sampler(int(gpu) + 1)
        sampler.start()
        psutil.cpu_percent(None)
        cpu = []
        start = time.time()
        argv = [sys.executable, str(TRAINER), f"model={workload}"] + ([f"steps={steps}"] if steps else [])
        procs = [subprocess.Popen(argv, env={**os.environ, **mps_env, "CUDA_VISIBLE_DEVICES": gpu},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(c)]
        mem = 0.0
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            cpu.append(psutil.cpu_percent(None))
            h = sampler.handles[int(gpu)]
            mem = max(mem, sampler.nv.nvmlDeviceGetMemoryInfo(h).used / 2**30)
        wall = time.time() - start
        sampler.stop.set()
        sampler.join()
        outs = [p.stdout.read() for p in procs]
        rates = [float(line.split("=")[1]) for o in outs for line in o.splitlines() if line.startswith("steps_per_s=")]
        failed = sum(p.returncode != 0 for p in procs)
        busy = [u[int(gpu)] for u, n in sampler.samples if n[int(gpu)]]
        per_min = (c - failed) / wall * 60
        base = base or per_min
        print(f"| {c} | {wall:.1f} s | {per_min:.2f} | {per_min / base:.2f} | "
              f"{statistics.median(rates) if rates else 0:.1f} | {sum(rates):.1f} | "
              f"{statistics.mean(busy) if busy else 0:.0f}% | {statistics.mean(cpu) if cpu else 0:.0f}% | {mem:.1f} GB |"
              + (f" ({failed} failed: {next(o.strip().splitlines()[-1] for o, p in zip(outs, procs) if p.returncode)[:80]})"
                 if failed else ""), flush=True)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", nargs="+", default=["1", "2", "4", "8", "auto"],
                        help="runs per GPU to compare; K+mps runs K with --mps (the CUDA MPS control daemon)")
    parser.add_argument("--small-runs", type=int, default=16)
    parser.add_argument("--big-runs", type=int, default=4)
    parser.add_argument("--small-steps", type=int, default=None)
    parser.add_argument("--big-steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workloads", nargs="+", default=["small", "big"])
    parser.add_argument("--gpus", nargs="+", default=None)
    parser.add_argument("--curve", nargs="+", type=int, metavar="C",
                        help="instead: start C trainings at once on the first GPU, for each C (no train_sweep)")
    parser.add_argument("--mps", action="store_true", help="--curve under the CUDA MPS control daemon")
    args = parser.parse_args()
    import pynvml

    pynvml.nvmlInit()
    if args.curve:
        with tempfile.TemporaryDirectory(prefix="bench_mps_") as tmp:
            mps = MpsDaemon(Path(tmp)) if args.mps else None
            try:
                for workload in args.workloads:
                    curve(args.curve if workload == "small" else args.curve[:2], workload,
                          args.small_steps if workload == "small" else args.big_steps, (args.gpus or ["0"])[0],
                          mps.env if mps else {})
            finally:
                if mps:
                    mps.quit()
        return 0
    gpus = args.gpus or [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(int(gpus[0])))
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        for rnd in range(args.rounds):
            for workload in args.workloads:
                ks = args.ks[rnd % len(args.ks):] + args.ks[: rnd % len(args.ks)]
                for k in ks:
                    runs = args.small_runs if workload == "small" else args.big_runs
                    steps = args.small_steps if workload == "small" else args.big_steps
                    r = run_one(Path(tmp), workload, runs, k, gpus, steps)
                    results.setdefault((workload, k), []).append(r)
                    print(f"# {workload} K={k}: {r['wall']:.1f} s, util {r['util']:.0f}%, most {r['most']}, "
                          f"ooms {r['ooms']}, fill {r['fill']}", file=sys.stderr, flush=True)
    print(f"{len(gpus)} x {name}, {args.rounds} round(s), medians\n")
    for workload in args.workloads:
        runs = args.small_runs if workload == "small" else args.big_runs
        print(f"### {workload} models ({runs} runs)\n")
        print("| K | wall | against the best fixed K | against K=1 | mean GPU util | most runs on a GPU | OOM attempts "
              "| slots filled after the first footprint |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        walls = {k: statistics.median(r["wall"] for r in results[(workload, k)]) for k in args.ks}
        best_fixed = min((w for k, w in walls.items() if "auto" not in k), default=float("nan"))
        one = walls.get("1", float("nan"))
        for k in args.ks:
            rs = results[(workload, k)]
            fills = [r["fill"] for r in rs if r["fill"] is not None]
            print(f"| {k} | {walls[k]:.1f} s | {walls[k] / best_fixed:.2f} | {walls[k] / one:.2f} "
                  f"| {statistics.median(r['util'] for r in rs):.0f}% | {max(r['most'] for r in rs)} "
                  f"| {sum(r['ooms'] for r in rs)} | {f'{statistics.median(fills):.2f} s' if fills else '-'} |"
                  + ("" if all(r["ok"] for r in rs) else " (a run failed)"))
        for k in [k for k in args.ks if k.startswith("auto")]:
            print(f"\n{k}'s decisions (sweep.log):")
            for line in results[(workload, k)][0]["decisions"]:
                print(f"    {line}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
