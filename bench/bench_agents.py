#!/usr/bin/env python3
"""Agents through PostgreSQL (--storage) against one host's journal: the dispatch gap, in one run (issue 27).

    python bench/bench_agents.py --storage postgresql://USER:PASSWORD@HOST:PORT/DATABASE
    TRAIN_SWEEP_TEST_PG=postgresql://... python bench/bench_agents.py --runs 120 --seconds 0.5

The same list (RUNS runs of SECONDS each, tests/fake_trainer.py) through the real CLI: once on one host with its
journal (no --storage), then through PostgreSQL with 1, 2 and 3 agents, each agent in a folder of its own with 2
fake GPUs (tests/fake_nvml), one run a GPU. For each: wall time; the dispatch gap, from a run's end to the next
start on the same agent's same GPU (median, p95, max; taken from the results files' start and end times, so
it is the scheduler's own gap: ending the run, telling the study, taking the next trial, starting it); and
whether every run completed exactly once. Compare within one run: shared machines are noisy.
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
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "tests" / "fake_trainer.py"
FAKE_NVML = ROOT / "tests" / "fake_nvml"


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def sweep(work: Path, agents: int, runs: int, seconds: float, url: str | None) -> dict:
    """`agents` agents on the list (agents=0: one host, no --storage); their records and wall time."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    procs, folders = [], []
    for i in range(max(1, agents)):
        folder = work / f"{'journal' if not agents else f'pg{agents}'}_{i}"
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({"grid": {"i": list(range(runs)), "sleep": [seconds],
                                                              "metric": [0.5]}}))
        (folder / "nvml.json").write_text(json.dumps({"gpus": [{"name": "Fake GPU", "total_mb": 81920,
                                                                "used_mb": 500, "util": 0}] * 2}))
        env = {**os.environ, "PYTHONPATH": str(FAKE_NVML), "FAKE_NVML_STATE": str(folder / "nvml.json"),
               "XDG_CACHE_HOME": str(folder / "cache")}
        storage = ["--storage", url, "--study-name", name] if agents else []
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "cfg.json", "--command",
             f"python {TRAINER}", "--metric", "val_loss", "--no-live", *storage], cwd=folder, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        folders.append(folder)
    start = time.time()
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            print(out[-3000:], file=sys.stderr)
    wall = time.time() - start
    gaps, names = [], Counter()
    for folder in folders:
        records = json.loads((folder / "train_sweep_results.json").read_text())
        names.update(r["model_name"] for r in records if r["state"] == "complete")
        by_gpu: dict = {}
        for r in records:
            by_gpu.setdefault(r["gpu_id"], []).append((stamp(r["start_time"]), stamp(r["end_time"])))
        for spans in by_gpu.values():
            spans.sort()
            gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    gaps.sort()
    return {"wall": wall, "gaps": gaps, "exactly_once": len(names) == runs and set(names.values()) == {1},
            "complete": sum(names.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=os.environ.get("TRAIN_SWEEP_TEST_PG"), metavar="URL")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    if not args.storage:
        parser.error("--storage URL (or TRAIN_SWEEP_TEST_PG): a PostgreSQL database to share")
    print(f"{args.runs} runs of {args.seconds:g} s, 2 fake GPUs an agent, one run a GPU; {os.cpu_count()} CPU cores\n")
    print("| where the study is | agents | wall | dispatch gap median | p95 | max | complete | exactly once |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="bench_agents_") as tmp:
        for agents in (0, 1, 2, 3):
            work = Path(tmp) / str(agents)
            work.mkdir()
            r = sweep(work, agents, args.runs, args.seconds, args.storage)
            g = r["gaps"] or [float("nan")]
            p95 = g[min(len(g) - 1, int(0.95 * len(g)))]
            print(f"| {'journal file (one host)' if not agents else 'PostgreSQL'} | {max(1, agents)} "
                  f"| {r['wall']:.1f} s | {1000 * statistics.median(g):.0f} ms | {1000 * p95:.0f} ms "
                  f"| {1000 * g[-1]:.0f} ms | {r['complete']}/{args.runs} | {'yes' if r['exactly_once'] else 'NO'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
