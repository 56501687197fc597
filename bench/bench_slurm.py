#!/usr/bin/env python3
"""Slurm benchmark, on a real Slurm: how long submitting a sweep takes (one job array against one sbatch per
run), and how long a freed slot stays empty (from a job's end to the next job's start).

    sudo python bench/bench_slurm.py                 # starts a localhost Slurm (tests/slurm/setup.sh), 5 repeats
    SLURM_CONF=/etc/slurm/slurm.conf python bench/bench_slurm.py --partition gpu   # on a real cluster

submit:  100 runs of `true` handed to SlurmLauncher (train_sweep's own code: run folders, tasks pickled by
         submitit), then flush(): as one job array (what train_sweep does), and as 100 single jobs (each run
         flushed on its own: what a launcher without arrays does). Wall time of the submission only; the jobs
         are cancelled right after.
refill:  the real CLI, 12 runs of 1 s with one slot: a list (the job array's throttle %1: Slurm starts the
         next task) and a random search on --slurm-max-parallel 1 (train_sweep sees the result, asks a trial,
         submits it). The gap is the next command's start minus the previous command's end, from the fake
         trainer's own clock. Ratios are within this run: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
FAKE_TRAINER = ROOT / "tests" / "fake_trainer.py"


def submit_times(n: int, partition: str | None, folder: Path) -> dict[str, float]:
    import train_sweep as ts
    from train_sweep_extras.slurm import SlurmLauncher, SlurmOptions

    out = {}
    for how in ("array", "one by one"):
        work = folder / how.replace(" ", "_")
        work.mkdir()
        options = SlurmOptions(partition=partition, gpus_per_run=0, time_min=5)
        launcher = SlurmLauncher(options, work / ts.SLURM_DIR, work, "bench", 5.0)
        runs = [ts.Run(i, f"r{i}", {}, ["true"], work / f"r{i}") for i in range(n)]
        start = time.perf_counter()
        for run in runs:
            launcher.start(run, (ts.CPU,))
            if how == "one by one":
                launcher.flush()
        launcher.flush()
        out[how] = time.perf_counter() - start
        missing = [r.name for r in runs if not r.job_id]
        assert not missing, f"not submitted: {missing[:3]}"
        ids = sorted({r.job_id.split("_")[0] for r in runs})
        subprocess.run(["scancel", *ids], capture_output=True)
    return out


def refill_gaps(kind: str, partition: str | None, folder: Path, runs: int = 12) -> list[float]:
    work = folder / kind
    work.mkdir()
    log = work / "fake_log.jsonl"
    args = [sys.executable, str(ROOT / "train_sweep.py"), "--backend", "slurm", "--no-live", "--slurm-gpus-per-run", "0",
            "--slurm-max-parallel", "1", "--command", f"python {FAKE_TRAINER} sleep=1"]
    args += ["--slurm-partition", partition] if partition else []
    if kind == "list":
        (work / "train_sweep_config.json").write_text(json.dumps({"grid": {"n": list(range(runs))}}))
    else:
        args += ["--search", "random", "--n-trials", str(runs), "--metric", "val_loss", "metric=interval(0, 1)"]
    p = subprocess.run(args, cwd=work, env={**os.environ, "FAKE_LOG": str(log)}, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = sorted(e["t"] for e in events if e["event"] == "start")
    ends = sorted(e["t"] for e in events if e["event"] == "end")
    return [s - e for s, e in zip(starts[1:], ends[:-1])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="runs submitted at once (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the submission (default 5)")
    parser.add_argument("--partition", help="partition to submit to (default: the cluster's default)")
    args = parser.parse_args()
    cluster = None
    if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists():  # no cluster here: ours
        from slurm.cluster import start_cluster

        cluster = start_cluster(Path(tempfile.mkdtemp(prefix="bench_slurm_")))
        os.environ.update(cluster.variables)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_slurm_") as tmp:
            folder = Path(tmp)
            times: dict[str, list[float]] = {"array": [], "one by one": []}
            for i in range(args.repeats):
                sub = folder / f"submit{i}"
                sub.mkdir()
                for how, t in submit_times(args.runs, args.partition, sub).items():
                    times[how].append(t)
            print(f"Submitting {args.runs} runs ({args.repeats} repeats, median):\n")
            array, single = statistics.median(times["array"]), statistics.median(times["one by one"])
            print("| how | seconds | per run | against the array |\n| --- | --- | --- | --- |")
            print(f"| one job array (train_sweep) | {array:.2f} | {array / args.runs * 1000:.1f} ms | 1.00 |")
            print(f"| one sbatch per run | {single:.2f} | {single / args.runs * 1000:.1f} ms | {single / array:.2f} |")
            print("\nA freed slot: from a job's end to the next job's start (12 runs of 1 s, one slot):\n")
            print("| what | median | max |\n| --- | --- | --- |")
            for kind, what in (("list", "a list: the job array's throttle (%1)"),
                               ("search", "a search: result seen, trial asked, submitted")):
                gaps = refill_gaps(kind, args.partition, folder)
                print(f"| {what} | {statistics.median(gaps):.2f} s | {max(gaps):.2f} s |")
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
