#!/usr/bin/env python3
"""How fast does a search find the best model? YAHPO Gym's LCBench surrogate (Pfisterer et al., 2022) through the
real CLI, GPU-free (issue 25).

Each trial is bench/yahpo_trainer.py: it asks a surrogate server (this script, one process holding the ONNX
model) for its configuration's learning curve, then prints `step=E val_accuracy=V` epoch by epoch, sleeping the
surrogate's own `time` for each epoch, scaled so that the instance's median full run (52 epochs) takes
--run-seconds. train_sweep runs the trials, N at once (--slots), on no GPU, with its pruner killing hopeless ones.
Every epoch a trainer reports is one line in a shared log; the sweep is stopped (SIGINT) once the budget is
spent: YAHPO's single-objective protocol, 20 + 40 sqrt(7) = 125.8 full runs = 6,543 epochs for LCBench's 7
hyperparameters, val_accuracy maximized, normalized regret (max - best) / (max - min) with each instance's
min and max from global_statistics/instance_target_statistics.csv.

Methods, all in this harness and run (a config file's "search" block each):
  random        Optuna's random sampler, no pruner
  tpe           Optuna's TPE (train_sweep's default sampler: 8 random start-up trials), no pruner
  tpe+hyperband TPE with Optuna's Hyperband pruner (min_resource 1, max_resource 52, reduction factor 3)
  tpe+asha      TPE with asynchronous successive halving (Optuna's SuccessiveHalvingPruner: min_resource 1,
                reduction factor 3)
  tpe+asha6     the same, its first rung at epoch 6 (rungs 6, 18, 54: the last is the full run)
  tpe+asha6+pause  the same, pausing a run at its rung and going on from its checkpoint later (freeze-thaw)
  tpe+median    TPE with the median pruner (4 start-up trials, no verdict before epoch 6)
--load adds sweeps saved by --raw, also of methods measured with other code (bench/README.md's TPE variants)

Prints per instance, medians over seeds: the regret at the end of the budget; the regret after 25% and 50% of
the budget; and the simulated wall time (real time / scale) each method took to reach the regret random search
had at the end of its budget, against random search's own time to the end of the budget.

Needs: pip install yahpo-gym==1.0.2 configspace==0.6.1 onnxruntime optuna (and train_sweep's psutil, rich).
    python bench/bench_search_yahpo.py --data ../shared/benchmarks/yahpo_data --seeds 10
    python bench/bench_search_yahpo.py --data DIR --instances 167168 --seeds 2 --methods random tpe+asha
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "bench" / "yahpo_trainer.py"
MAX_EPOCH = 52
BUDGET = round((20 + 40 * math.sqrt(7)) * MAX_EPOCH)  # 6,543 epochs
INSTANCES = ["167168", "189873", "189906"]
SPACE = {  # LCBench's search space, as YAHPO Gym's config space has it
    "batch_size": {"type": "int", "low": 16, "high": 512, "log": True},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "max_dropout": {"type": "float", "low": 0.0, "high": 1.0},
    "max_units": {"type": "int", "low": 64, "high": 1024, "log": True},
    "momentum": {"type": "float", "low": 0.1, "high": 0.99},
    "num_layers": {"type": "int", "low": 1, "high": 5},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1},
}
METHODS = {
    "random": {"sampler": "random"},
    "tpe": {"sampler": "tpe"},
    "tpe+hyperband": {"sampler": "tpe", "pruner": {"type": "hyperband", "min_resource": 1, "max_resource": MAX_EPOCH,
                                                   "reduction_factor": 3}},
    "tpe+asha": {"sampler": "tpe", "pruner": {"type": "successive_halving", "min_resource": 1,
                                              "reduction_factor": 3}},
    "tpe+asha6": {"sampler": "tpe", "pruner": {"type": "successive_halving", "min_resource": 6,
                                               "reduction_factor": 3}},
    "tpe+asha6+pause": {"sampler": "tpe", "pruner": {"type": "successive_halving", "min_resource": 6,
                                                     "reduction_factor": 3, "pause": True}},
    "tpe+median": {"sampler": "tpe", "pruner": {"type": "median", "n_startup_trials": 4, "n_warmup_steps": 6}},
    # --pruner successive_halving: the first rung at a ninth of the first finished trial's epochs, reduction factor 3
    "tpe+sh": {"sampler": "tpe", "pruner": "successive_halving"},
    "tpe+sh+pause": {"sampler": "tpe", "pruner": {"type": "successive_halving", "pause": True}},
}
DEFAULT_METHODS = ["random", "tpe", "tpe+hyperband", "tpe+asha"]


class Surrogate:
    """LCBench's ONNX surrogate, one instance at a time: a configuration's whole curve in one call."""

    def __init__(self, data: Path) -> None:
        folder = tempfile.mkdtemp(prefix="yahpo_cfg_")  # YAHPO's data path, without writing ~/.config/yahpo_gym
        (Path(folder) / "config.yaml").write_text(f"data_path: {data}\n")
        os.environ["YAHPO_LOCAL_CONFIG"] = str(Path(folder) / "config.yaml")
        from yahpo_gym import BenchmarkSet

        with contextlib.redirect_stdout(io.StringIO()):  # its "please cite" banner
            self.bench = BenchmarkSet("lcbench", instance=INSTANCES[0], check=False, multithread=False)
        import pandas

        stats = pandas.read_csv(data / "global_statistics" / "instance_target_statistics.csv", dtype={"instance": str})
        self.range = {i: (float(stats.query(f"scenario == 'lcbench' and instance == '{i}' and metric == "
                                            "'val_accuracy' and statistic == 'min'").value.iloc[0]),
                          float(stats.query(f"scenario == 'lcbench' and instance == '{i}' and metric == "
                                            "'val_accuracy' and statistic == 'max'").value.iloc[0]))
                      for i in INSTANCES}
        self.lock = threading.Lock()

    def curve(self, instance: str, config: dict) -> list[tuple[float, float]]:
        """[(val_accuracy, cumulative time)] for epochs 1..52."""
        with self.lock:
            self.bench.set_instance(instance)
            rows = self.bench.objective_function([dict(config, epoch=e) for e in range(1, MAX_EPOCH + 1)])
        return [(float(r["val_accuracy"]), float(r["time"])) for r in rows]

    def median_run_time(self, instance: str, n: int = 300) -> float:
        import random

        rng = random.Random(0)
        times = []
        for _ in range(n):
            config = {k: (math.exp(rng.uniform(math.log(p["low"]), math.log(p["high"]))) if p.get("log") else
                          rng.uniform(p["low"], p["high"])) for k, p in SPACE.items()}
            times.append(self.curve(instance, config)[-1][1])
        return statistics.median(times)

    def regret(self, instance: str, best: float) -> float:
        low, high = self.range[instance]
        return (high - best) / (high - low)


def serve(surrogate: Surrogate, path: str) -> socketserver.UnixStreamServer:
    live = {}  # --share: the trials computing, per sweep (its instance's socket): counted by open connections
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request = json.loads(self.rfile.readline())
            self.wfile.write(json.dumps(surrogate.curve(request["instance"], request["config"])).encode() + b"\n")
            self.wfile.flush()
            ready = False
            try:
                for line in self.rfile:  # --share: "ready" once started up, then "c" for the count, until it ends
                    if line == b"ready\n" and not ready:
                        with lock:
                            live[path] = live.get(path, 0) + 1
                        ready = True
                    elif line == b"c\n":
                        self.wfile.write(f"{live.get(path, 0)}\n".encode())
                        self.wfile.flush()
            except OSError:
                pass
            finally:
                if ready:
                    with lock:
                        live[path] -= 1

    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


SHARES = {  # --share: one GPU the trials share: its throughput (runs' work a second, against one run alone) at c
    # runs at once, as measured on an H100 with bench/ttb_trainer.py (bench/README.md, bench_gpu_time_to_best.py:
    # 2.8 at 3 and 3.5 at 4 from the runs' report times, 5.5 at 16 from a 16-run wave against the same run alone)
    "h100": "1:1,3:2.8,4:3.5,16:5.5",
}


def one_sweep(work: Path, method: str, instance: str, seed: int, slots: int, scale: float, socket_path: str,
              share: tuple[str, float] | None = None) -> list[tuple[float, float]]:
    """One search until the budget is spent: [(seconds since its first report, val_accuracy)] per epoch (with
    --share, since its first trial started)."""
    work.mkdir(parents=True)
    (work / "cfg.json").write_text(json.dumps({"search": {**METHODS[method], "params": SPACE, "n_trials": 5000,
                                                          "seed": seed, "metric": "val_accuracy", "mode": "max"}}))
    log = work / "epochs.log"
    log.touch()
    env = {**os.environ, "YAHPO_SOCKET": socket_path, "YAHPO_INSTANCE": instance, "YAHPO_SCALE": str(scale),
           "YAHPO_LOG": str(log), "XDG_CACHE_HOME": str(work / "cache"),
           **({"YAHPO_SHARE": SHARES[share[0]], "YAHPO_STARTUP": str(share[1])} if share else {})}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_sweep.py"), "--config-file", "cfg.json", "--command",
                             f"{sys.executable} {TRAINER}", "--gpus", "0", "--disable-gpu-monitoring",
                             "--max-processes-per-gpu", str(slots), "--no-live", "--no-fail-fast"],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:  # the budget: epochs reported by every trial so far
        time.sleep(0.2)
        if log.stat().st_size and sum(1 for _ in open(log)) >= BUDGET:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    if proc.returncode not in (0, 1, 130):
        print(f"{method} {instance} seed {seed}: exit {proc.returncode}: {err[-500:]}", file=sys.stderr)
    events = sorted((float(t), float(v)) for t, v in (line.split()[:2] for line in open(log) if line.strip()))
    t0 = events[0][0] if events else 0.0
    if share:  # from the first trial's start, not its first report: what a wave of trials at once delays
        from datetime import datetime
        starts = [datetime.fromisoformat(r["start_time"]).timestamp() for f in work.glob("outputs/*/run.json")
                  if isinstance(r := json.loads(f.read_text()), dict) and r.get("start_time")]
        t0 = min(starts, default=t0)
    return [(t - t0, v) for t, v in events[:BUDGET]]


def summarize(results: dict, trial_counts: dict, surrogate: Surrogate, scale: dict[str, float],
              methods: list[str]) -> None:
    print(f"budget {BUDGET} epochs (YAHPO's 20 + 40 sqrt(7) full runs); regret: (max - best) / (max - min); "
          "medians over seeds; times simulated (the surrogate's seconds)\n")
    for instance in sorted({i for _, i, _ in results}):
        seeds = sorted({s for m, i, s in results if i == instance})
        runs = {m: [results[(m, instance, s)] for s in seeds if (m, instance, s) in results] for m in methods}

        def regret_at(events: list, epochs: int) -> float:
            best = max((v for _, v in events[:epochs]), default=-math.inf)
            return surrogate.regret(instance, best)

        ref = next((m for m in methods if m.split("@")[0] == "random" and runs.get(m)), None)  # (the most slots)
        target = statistics.median(regret_at(e, BUDGET) for e in runs[ref]) if ref else None
        random_time = statistics.median(e[-1][0] for e in runs[ref]) / scale[instance] if target else None

        def regret_by(events: list, seconds: float) -> float:  # the best so far at a simulated time
            best = max((v for t, v in events if t / scale[instance] <= seconds), default=-math.inf)
            return surrogate.regret(instance, best) if math.isfinite(best) else 1.0
        print(f"### LCBench {instance} ({len(seeds)} seeds)\n")
        print("| method | regret at 25% | at 50% | at the end | time to random's final regret (median) | against "
              "random's whole budget | at 10% of random's time | at 25% of it | trials |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for m in methods:
            if not runs.get(m):
                continue
            reach = []
            for events in runs[m]:
                best, when = -math.inf, math.inf
                for t, v in events:
                    best = max(best, v)
                    if target is not None and surrogate.regret(instance, best) <= target:
                        when = t / scale[instance]
                        break
                reach.append(when)
            reached = statistics.median(reach)
            trials = statistics.median(trial_counts[(m, instance, s)] for s in seeds if (m, instance, s) in results)
            when = f"{reached:,.0f} s | {reached / random_time:.2f}" if math.isfinite(reached) else \
                "not reached (in half the seeds or more) | -"
            print(f"| {m} | {statistics.median(regret_at(e, BUDGET // 4) for e in runs[m]):.4f} "
                  f"| {statistics.median(regret_at(e, BUDGET // 2) for e in runs[m]):.4f} "
                  f"| {statistics.median(regret_at(e, BUDGET) for e in runs[m]):.4f} "
                  f"| {when} | {statistics.median(regret_by(e, random_time / 10) for e in runs[m]):.4f} "
                  f"| {statistics.median(regret_by(e, random_time / 4) for e in runs[m]):.4f} | {trials:.0f} |"
                  if random_time else "")
        print(flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "yahpo_data")
    parser.add_argument("--instances", nargs="+", default=INSTANCES)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST_SEED .. FIRST_SEED+SEEDS-1 (more "
                        "seeds for a file --load adds to)")
    parser.add_argument("--slots", type=int, nargs="+", default=[8], help="trials at once (several: each method "
                        "at each, named METHOD@SLOTS)")
    parser.add_argument("--share", choices=list(SHARES), help="the trials share one simulated GPU whose throughput "
                        "against the trials at once is SHARES' (else each trial runs at its own speed, whatever the "
                        "number at once)")
    parser.add_argument("--startup", type=float, default=0.25, help="with --share: each trial's start-up (on the "
                        "CPU, before it computes) as a share of the median full run")
    parser.add_argument("--run-seconds", type=float, default=0.5, help="real seconds of a median full run")
    parser.add_argument("--raw", type=Path, help="also write every sweep's epochs here (JSON)")
    parser.add_argument("--load", type=Path, nargs="*", default=[],
                        help="earlier --raw files: their sweeps join the table (e.g. random search's, measured once)")
    args = parser.parse_args()
    surrogate = Surrogate(args.data.resolve())
    scale = {i: args.run_seconds / surrogate.median_run_time(i) for i in args.instances}
    results: dict = {}
    trial_counts: dict = {}
    labels = [(m, k) for m in args.methods for k in args.slots]
    with tempfile.TemporaryDirectory(prefix="bench_yahpo_") as tmp:
        socket_path = str(Path(tmp) / "surrogate.sock")
        server = serve(surrogate, socket_path)
        try:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for instance in args.instances:
                    for k, (method, slots) in enumerate(labels):  # the order rotates: no method always first
                        method, slots = labels[(k + seed) % len(labels)]
                        label = method if len(args.slots) == 1 else f"{method}@{slots}"
                        work = Path(tmp) / f"{label.replace('+', '_').replace('@', '_')}_{instance}_{seed}"
                        start = time.time()
                        events = one_sweep(work, method, instance, seed, slots, scale[instance], socket_path,
                                           (args.share, args.startup * args.run_seconds) if args.share else None)
                        results[(label, instance, seed)] = events
                        trials = len([p for p in work.glob("outputs/*/run.json")])
                        trial_counts[(label, instance, seed)] = trials
                        best = max((v for _, v in events), default=-math.inf)
                        print(f"# {label} {instance} seed {seed}: regret {surrogate.regret(instance, best):.4f}, "
                              f"{len(events)} epochs, {trials} trials, {time.time() - start:.0f} s", file=sys.stderr,
                              flush=True)
        finally:
            server.shutdown()
    if args.raw:
        args.raw.write_text(json.dumps({" ".join(map(str, k)): {"events": v, "trials": trial_counts[k]}
                                        for k, v in results.items()}))
    methods = [m if len(args.slots) == 1 else f"{m}@{k}" for m, k in labels]
    for path in args.load:  # (a method measured with another version of the code keeps the name it was saved as)
        for key, value in json.loads(path.read_text()).items():
            method, instance, seed = key.split()[0], key.split()[1], int(key.split()[2])
            if instance in args.instances and (method, instance, seed) not in results:
                results[(method, instance, seed)] = [tuple(e) for e in value["events"]]
                trial_counts[(method, instance, seed)] = value["trials"]
                methods += [method] if method not in methods else []
    summarize(results, trial_counts, surrogate, scale,
              sorted(methods, key=lambda m: (m.split("@")[0] not in METHODS, m.split("@")[0],
                                             -int(m.split("@")[1]) if "@" in m else 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
