#!/usr/bin/env python3
"""Search benchmark: does the search find better models than random search, does pruning save training,
and does asking a sampler for each trial slow the queue? Everything runs through the real CLI, no GPU.

    python bench/bench_search.py                          # quality (10 seeds x 30 trials) and dispatch
    python bench/bench_search.py --seeds 3 --parts quality

quality:  bench/search_trainer.py (a known noisy function of lr, layers, dropout and opt, learned over 20
          steps of 0.1 s) searched on 4 slots, for each seed: random search, TPE, TPE with the median pruner
          (30 trials each), and TPE with the median or the hyperband pruner given 60 trials. Per variant: the
          median (over seeds) of the best final loss found, how often it beats random's best on the same seed, the training
          steps run in total (a pruned run's steps count up to where it was stopped), the runs pruned, and
          the steps spent until a run first reached the target (TPE's median best): how many seeds got
          there, and the median steps of those; then, per seed, the steps each variant spent to reach the best
          TPE found on that seed, against TPE's own.
dispatch: 60 zero-length runs on 1 slot; the median gap between a run's end and the next run's start (from
          the results file), for the plain list, a random search, and a TPE search whose study already
          holds 1,000 finished trials. Ratios are within this run: shared machines are noisy.
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
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRAINER = HERE / "search_trainer.py"
STEPS, STEP_S = 20, 0.1  # a run: 20 steps of 0.1 s (the sweep reads new output every 0.2 s)
SPACE = {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
         "layers": {"type": "int", "low": 1, "high": 10},
         "dropout": {"type": "float", "low": 0.0, "high": 0.6},
         "opt": {"type": "categorical", "choices": ["adam", "sgd"]}}


def sweep(work: Path, config: dict, *flags: str) -> list[dict]:
    """Run train_sweep in `work` with this config; its results."""
    (work / "config.json").write_text(json.dumps(config))
    argv = [sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "config.json", "--no-live",
            "--disable-gpu-monitoring", "--output-file", "results.json", *flags]
    done = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"train_sweep exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return json.loads((work / "results.json").read_text())


def steps_to(records: list[dict], target: float) -> float:
    """Training steps spent (by the runs ended so far, in the order they ended) until a complete run reached
    `target`; inf if none did."""
    spent = 0
    for r in sorted(records, key=lambda r: r["end_time"] or ""):
        spent += (r.get("metric") or {}).get("step") or 0
        if r["state"] == "complete" and r["metrics"]["loss"] <= target:
            return spent
    return float("inf")


def quality(seeds: int, trials: int) -> None:
    variants = {"random": ("random", "none", trials), "tpe": ("tpe", "none", trials),
                "tpe + median pruner": ("tpe", "median", trials),
                f"tpe + median pruner, {2 * trials} trials": ("tpe", "median", 2 * trials),
                f"tpe + hyperband pruner, {2 * trials} trials": ("tpe", "hyperband", 2 * trials)}
    rows: dict[str, dict[str, list]] = {v: {"best": [], "steps": [], "pruned": [], "wall": [], "records": []}
                                        for v in variants}
    for seed in range(seeds):
        for name, (sampler, pruner, n) in variants.items():
            with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
                config = {"command": f"{sys.executable} {TRAINER}", "defaults": {"steps": STEPS, "sleep": STEP_S},
                          "search": {"sampler": sampler, "n_trials": n, "seed": seed, "params": SPACE,
                                     "pruner": pruner, "metric": "loss", "mode": "min"}}
                t0 = time.monotonic()
                records = sweep(Path(tmp), config, "--gpus", "0", "1", "2", "3")
                rows[name]["wall"].append(time.monotonic() - t0)
            complete = [r["metrics"]["loss"] for r in records if r["state"] == "complete"]
            rows[name]["best"].append(min(complete))
            rows[name]["steps"].append(sum((r.get("metric") or {}).get("step") or 0 for r in records))
            rows[name]["pruned"].append(sum(r["state"] == "pruned" for r in records))
            rows[name]["records"].append(records)
        print(f"  seed {seed}: " + ", ".join(f"{n} {rows[n]['best'][-1]:.4f}" for n in variants), file=sys.stderr)
    target = statistics.median(rows["tpe"]["best"])
    print(f"\nquality: {seeds} seeds, 4 slots, {STEPS} steps of {STEP_S:g} s a run (lower loss is better); target = "
          f"tpe's median best {target:.4f}\n")
    print("| variant | trials | median best loss | beats random (seeds) | steps trained (mean) | pruned runs (mean) "
          "| reached the target (seeds) | steps to the target (median of those) | wall (mean) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        wins = sum(b < rb for b, rb in zip(r["best"], rows["random"]["best"]))
        reach = [x for x in (steps_to(recs, target) for recs in r["records"]) if x != float("inf")]
        print(f"| {name} | {variants[name][2]} | {statistics.median(r['best']):.4f} | "
              f"{'-' if name == 'random' else f'{wins}/{seeds}'} | {statistics.mean(r['steps']):.0f} | "
              f"{statistics.mean(r['pruned']):.1f} | {len(reach)}/{seeds} | "
              f"{statistics.median(reach) if reach else float('nan'):.0f} | {statistics.mean(r['wall']):.1f} s |")
    print("\nThe same best with fewer steps: per seed, the steps each variant spent until it first reached the best "
          "that tpe (no pruning) found on that seed, over the steps tpe spent to find it.\n")
    print("| variant | reached tpe's best (seeds) | steps vs tpe's (median of those) |")
    print("| --- | --- | --- |")
    for name, r in rows.items():
        if name == "tpe":
            continue
        ratios = []
        for records, tpe_records, best in zip(r["records"], rows["tpe"]["records"], rows["tpe"]["best"]):
            mine = steps_to(records, best)
            if mine != float("inf"):
                ratios.append(mine / steps_to(tpe_records, best))
        print(f"| {name} | {len(ratios)}/{seeds} | {statistics.median(ratios) if ratios else float('nan'):.2f} |")


def gaps(records: list[dict]) -> list[float]:
    """Seconds from each run's end to the next run's start (one slot: runs follow one another)."""
    def t(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    spans = sorted((t(r["start_time"]), t(r["end_time"])) for r in records if r.get("start_time") and r.get("end_time"))
    return [b[0] - a[1] for a, b in zip(spans, spans[1:])]


def seeded_study(work: Path, n: int, command: str) -> None:
    """A study in work/outputs/study.log holding n finished trials of the search below, as train_sweep
    would have left them (so that the sweep resumes it)."""
    sys.path.insert(0, str(ROOT))
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from train_sweep_extras.search import distribution
    from train_sweep_extras.space import parse_search

    spec = parse_search({"params": SPACE, "metric": "loss", "mode": "min"}, "bench")
    (work / "outputs").mkdir()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(work / "outputs" / "study.log"))),
                                study_name="train_sweep", directions=["minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    study.set_user_attr("search", spec.space_key(["loss"], ["min"], command))
    for _ in range(n):
        trial = study.ask({k: distribution(p) for k, p in spec.params.items()})
        study.tell(trial, sum(abs(v) for v in trial.params.values() if isinstance(v, float)))


def dispatch(runs: int, prior: int) -> None:
    command = f"{sys.executable} -c pass"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_dispatch_list_") as tmp:
        config = {"command": command, "runs": [{"i": i} for i in range(runs)]}
        results["list"] = sweep(Path(tmp), config, "--gpus", "0")
    for name, sampler, seed in (("random search", "random", 0), (f"tpe search, {prior} trials in the study", "tpe", prior)):
        with tempfile.TemporaryDirectory(prefix="bench_dispatch_search_") as tmp:
            if seed:
                seeded_study(Path(tmp), prior, command)
            config = {"command": command, "search": {"sampler": sampler, "params": SPACE, "metric": "loss",
                                                     "n_trials": runs + (prior if seed else 0)}}
            results[name] = sweep(Path(tmp), config, "--gpus", "0")
            results[name] = [r for r in results[name] if r.get("trial", 0) >= (prior if seed else 0)]
    base = statistics.median(gaps(results["list"]))
    print(f"\ndispatch: {runs} zero-length runs, 1 slot; gap = a run's end -> the next run's start\n")
    print("| source | runs | median gap | p90 gap | median vs list |")
    print("| --- | --- | --- | --- | --- |")
    for name, records in results.items():
        g = sorted(gaps(records))
        print(f"| {name} | {len(records)} | {statistics.median(g) * 1000:.1f} ms | {g[int(0.9 * (len(g) - 1))] * 1000:.1f} ms | "
              f"{(statistics.median(g) - base) * 1000:+.1f} ms |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--runs", type=int, default=60, help="runs of the dispatch part")
    p.add_argument("--prior", type=int, default=1000, help="finished trials in the dispatch part's TPE study")
    p.add_argument("--parts", nargs="+", default=["quality", "dispatch"], choices=["quality", "dispatch"])
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if "quality" in args.parts:
        quality(args.seeds, args.trials)
    if "dispatch" in args.parts:
        dispatch(args.runs, args.prior)
    return 0


if __name__ == "__main__":
    sys.exit(main())
