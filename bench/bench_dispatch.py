#!/usr/bin/env python3
"""Dispatch benchmark: train_sweep against the tools users would pick instead, on the same jobs, in one run.

    python bench/bench_dispatch.py                     # 4 slots ("GPUs"), workloads mixed and tiny, every peer found
    python bench/bench_dispatch.py --gpus 8 --workloads tiny --tools train_sweep gnu_parallel
    python bench/bench_dispatch.py --ray-python ~/ray-venv/bin/python     # also Ray Tune (slow to start)
    python bench/bench_dispatch.py --gpus 2 --real-nvml --tools train_sweep train_sweep_nvml   # on 2 real GPUs
    python bench/bench_dispatch.py --baseline REV --tools train_sweep train_sweep_baseline   # before/after a change
    python bench/bench_dispatch.py --tools train_sweep_prints train_sweep_metric   # the cost of following --metric

Workloads (fixed seed): mixed = 100 jobs, durations log-normal around 1 s, clipped to 0.2-4 s;
tiny = 300 jobs of zero duration (pure dispatch cost). Each job is bench/synthetic_job.py, a Python
process that logs its start, end and CUDA_VISIBLE_DEVICES. No GPU is needed: "GPUs" are slot ids.

Columns: wall time; the lower bound max(sum(d)/G, max d); efficiency = bound/wall; scheduler overhead per
job = (wall - bound) x G / N; median and p95 gap between a job's end and the next start on the same GPU;
the tool's own CPU time and peak memory (its main process, children excluded); and correctness: jobs
missing, jobs run twice, two jobs overlapping on one GPU. Compare ratios within one run, not absolute
times across runs: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JOB = HERE / "synthetic_job.py"
FAKE_NVML = ROOT / "tests" / "fake_nvml"


def workload(name: str) -> list[float]:
    rng = random.Random(20261122)
    if name == "mixed":
        return [min(4.0, max(0.2, rng.lognormvariate(0.0, 0.6))) for _ in range(100)]
    if name == "tiny":
        return [0.0] * 300
    raise SystemExit(f"unknown workload {name!r}")


def job_line(i: int, d: float, log: Path) -> str:
    return f"{shlex.quote(sys.executable)} {JOB} id={i} duration={d:.4f} log={log}"


# -- drivers: each returns (argv, env, stdin text or None, setup/teardown hooks) -------------------


def installed_train_sweep(folder: Path = ROOT) -> list[str]:
    """train_sweep as `pip install .` installs it: the `train-sweep` command imports the module from its
    bytecode, compiled at install time. Here: compile it once (py_compile writes even where
    PYTHONDONTWRITEBYTECODE is set), then import it as the command does."""
    import importlib.util
    import py_compile

    source = folder / "train_sweep.py"
    py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); sys.argv[0] = 'train-sweep'; "
                                  "from train_sweep import cli; cli()"]


BASELINE: list[Path] = []  # --baseline REV: that revision's train_sweep.py, in a folder of its own


def baseline_folder(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench_baseline_"))
    text = subprocess.run(["git", "show", f"{rev}:train_sweep.py"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    (folder / "train_sweep.py").write_text(text)
    return folder


def drive_train_sweep(work: Path, durations: list[float], gpus: int, log: Path, monitoring: bool,
                      script: bool = False, folder: Path = ROOT, report: bool = False, metric: bool = False) -> dict:
    (work / "config.json").write_text(json.dumps([{"id": i, "duration": round(d, 4)} for i, d in enumerate(durations)]))
    head = [sys.executable, str(folder / "train_sweep.py")] if script else installed_train_sweep(folder)
    argv = [*head, "--config-file", "config.json",
            "--command", f"{shlex.quote(sys.executable)} {JOB} log={log}", "--gpus", *map(str, range(gpus)),
            "--no-live", "--output-dir", "outputs", "--memory-threshold-gb", "1000"]
    if report:  # every job prints 20 metric lines
        argv[argv.index("--command") + 1] += " report=20"
    if metric:  # ... and train_sweep follows and ranks them
        argv += ["--metric", "val_loss"]
    env = dict(os.environ)
    if monitoring and REAL_NVML:
        pass  # the machine's own GPUs and NVML (--real-nvml)
    elif monitoring:
        procs = work / "gpu_procs"
        procs.mkdir()
        (work / "nvml.json").write_text(json.dumps({"gpus": [{"name": "bench", "total_mb": 81920, "used_mb": 0}
                                                              for _ in range(gpus)], "procs_dir": str(procs)}))
        env["PYTHONPATH"] = str(FAKE_NVML)
        env["FAKE_NVML_STATE"] = str(work / "nvml.json")
    else:
        argv.append("--disable-gpu-monitoring")
    return {"argv": argv, "env": env}


def drive_gnu_parallel(work: Path, durations: list[float], gpus: int, log: Path) -> dict:
    jobs = "\n".join(f"{i} {d:.4f}" for i, d in enumerate(durations)) + "\n"
    cmd = f"CUDA_VISIBLE_DEVICES=$(({{%}} - 1)) {shlex.quote(sys.executable)} {JOB} id={{1}} duration={{2}} log={log}"
    return {"argv": ["parallel", "-j", str(gpus), "--colsep", " ", cmd], "stdin": jobs}


def drive_simple_gpu_scheduler(work: Path, durations: list[float], gpus: int, log: Path) -> dict:
    exe = shutil.which("simple_gpu_scheduler") or str(Path(sys.executable).parent / "simple_gpu_scheduler")
    jobs = "\n".join(job_line(i, d, log) for i, d in enumerate(durations)) + "\n"
    return {"argv": [exe, "--gpus", *map(str, range(gpus))], "stdin": jobs}


def drive_polling_loop(work: Path, durations: list[float], gpus: int, log: Path) -> dict:
    (work / "jobs.txt").write_text("\n".join(job_line(i, d, log) for i, d in enumerate(durations)) + "\n")
    return {"argv": [sys.executable, str(HERE / "peer_polling_loop.py"), str(gpus), str(work / "jobs.txt")]}


def drive_task_spooler(work: Path, durations: list[float], gpus: int, log: Path) -> dict:
    """tsp has no GPU assignment (Debian's build): jobs get no CUDA_VISIBLE_DEVICES, so per-GPU columns are n/a."""
    script = work / "tsp.sh"
    lines = [f"export TS_SOCKET={work}/tsp.sock TS_MAXFINISHED=100000", f"tsp -S {gpus}"]
    lines += [f"tsp -n {job_line(i, d, log)} > /dev/null" for i, d in enumerate(durations)]
    lines += ["while [ \"$(tsp -l | awk 'NR>1 && ($2==\"running\" || $2==\"queued\")' | wc -l)\" != 0 ]; do sleep 0.01; done",
              "tsp -K"]
    script.write_text("\n".join(lines) + "\n")
    return {"argv": ["bash", str(script)], "no_cpu": "tsp runs as a separate server process"}


def drive_ray_tune(work: Path, durations: list[float], gpus: int, log: Path) -> dict:
    """Ray Tune needs its own environment (pip install 'ray[tune]'); --ray-python names its Python."""
    (work / "jobs.json").write_text(json.dumps([round(d, 4) for d in durations]))
    env = dict(os.environ, JOB_PYTHON=sys.executable)
    return {"argv": [RAY_PYTHON[0], str(HERE / "peer_ray_tune.py"), str(gpus), str(work / "jobs.json"), str(log),
                     str(JOB)], "env": env, "note": "tool CPU and memory: the driver process only, not Ray's workers"}


RAY_PYTHON: list[str] = []
REAL_NVML = False  # --real-nvml: train_sweep_nvml reads the real GPUs (needs G real GPUs)

DRIVERS = {
    "train_sweep": lambda w, d, g, log: drive_train_sweep(w, d, g, log, monitoring=False),
    "train_sweep_nvml": lambda w, d, g, log: drive_train_sweep(w, d, g, log, monitoring=True),
    "train_sweep_script": lambda w, d, g, log: drive_train_sweep(w, d, g, log, monitoring=False, script=True),
    "train_sweep_baseline": lambda w, d, g, log: drive_train_sweep(w, d, g, log, monitoring=False,
                                                                   folder=BASELINE[0]),
    "train_sweep_prints": lambda w, d, g, log: drive_train_sweep(w, d, g, log, monitoring=False, report=True),
    "train_sweep_metric": lambda w, d, g, log: drive_train_sweep(w, d, g, log, monitoring=False, report=True,
                                                                 metric=True),
    "gnu_parallel": drive_gnu_parallel,
    "simple_gpu_scheduler": drive_simple_gpu_scheduler,
    "task_spooler": drive_task_spooler,
    "polling_loop_1s": drive_polling_loop,
    "ray_tune": drive_ray_tune,
}
DEFAULT_TOOLS = [t for t in DRIVERS if t not in ("ray_tune", "train_sweep_baseline", "train_sweep_prints",
                                                  "train_sweep_metric")]
NEEDS = {"gnu_parallel": "parallel", "task_spooler": "tsp"}


def available(tool: str) -> str | None:
    """None if the tool can run here, else what to install."""
    if tool in NEEDS and shutil.which(NEEDS[tool]) is None:
        return f"apt-get install {'parallel' if tool == 'gnu_parallel' else 'task-spooler'}"
    if tool == "train_sweep_baseline" and not BASELINE:
        return "--baseline REV (a git revision of train_sweep.py to compare with)"
    if tool == "ray_tune" and not RAY_PYTHON:
        return "--ray-python PYTHON (a Python with ray[tune] installed)"
    if tool == "simple_gpu_scheduler" and not (shutil.which("simple_gpu_scheduler")
                                               or (Path(sys.executable).parent / "simple_gpu_scheduler").exists()):
        return "pip install simple_gpu_scheduler"
    return None


# -- measuring ------------------------------------------------------------------------------------


def run_tool(tool: str, durations: list[float], gpus: int) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix=f"bench_{tool}_") as tmp:
        work = Path(tmp)
        log = work / "jobs.jsonl"
        spec = DRIVERS[tool](work, durations, gpus, log)
        t0 = time.time()
        proc = subprocess.Popen(spec["argv"], cwd=work, env=spec.get("env"), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if spec.get("stdin"):
            proc.stdin.write(spec["stdin"])
        proc.stdin.close()
        ps = psutil.Process(proc.pid)
        usage = {"cpu": 0.0, "peak": 0.0}

        def sample() -> None:  # the tool's CPU and memory every 50 ms, beside the exact wait below
            while proc.returncode is None:
                try:
                    t = ps.cpu_times()
                    usage["cpu"] = t.user + t.system
                    usage["peak"] = max(usage["peak"], ps.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        t_end = time.time()
        sampler.join()
        cpu, peak = usage["cpu"], usage["peak"]
        wall = t_end - t0
        err = proc.stderr.read()
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if proc.returncode != 0:
        print(f"  {tool}: exit {proc.returncode}: {err.strip().splitlines()[-1:] if err.strip() else ''}", file=sys.stderr)
    row = analyse(tool, durations, gpus, wall, records, cpu if "no_cpu" not in spec else None,
                  peak if "no_cpu" not in spec else None)
    if records:  # fixed costs: tool start -> first job start, last job end -> tool exit seen
        row["first_ms"] = (min(r["start"] for r in records) - t0) * 1000
        row["last_ms"] = (t_end - max(r["end"] for r in records)) * 1000
    return row


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def analyse(tool: str, durations: list[float], gpus: int, wall: float, records: list[dict], cpu, peak) -> dict:
    n = len(durations)
    bound = max(sum(durations) / gpus, max(durations))
    ids = [r["id"] for r in records]
    missing = n - len(set(ids))
    twice = len(ids) - len(set(ids))
    by_gpu: dict[str, list[dict]] = {}
    for r in records:
        by_gpu.setdefault(r["gpu"], []).append(r)
    gaps: list[float] = []
    overlaps = 0
    per_gpu = all(g != "" for g in by_gpu)
    if per_gpu:
        for rs in by_gpu.values():
            rs.sort(key=lambda r: r["start"])
            for a, b in zip(rs, rs[1:]):
                gaps.append(b["start"] - a["end"])
                overlaps += b["start"] < a["end"] - 1e-3
    return {
        "tool": tool, "wall": wall, "bound": bound, "eff": bound / wall, "overhead_ms": (wall - bound) * gpus / n * 1000,
        "gap_med_ms": statistics.median(gaps) * 1000 if gaps else None, "gap_p95_ms": pct(gaps, 0.95) * 1000 if gaps else None,
        "cpu_s": cpu, "peak_mb": peak, "missing": missing, "twice": twice, "overlaps": overlaps if per_gpu else None,
    }


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(name: str, n: int, gpus: int, rows: list[dict]) -> None:
    print(f"\n### {name}: {n} jobs on {gpus} GPUs (slots)\n")
    print("| tool | wall s | bound s | efficiency | overhead/job ms | gap median ms | gap p95 ms | tool CPU s | "
          "tool peak MB | first start ms | exit after ms | missing | twice | overlaps |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tool']} | {r['wall']:.2f} | {r['bound']:.2f} | {r['eff']:.1%} | {r['overhead_ms']:.1f} | "
              f"{fmt(r['gap_med_ms'], '.1f')} | {fmt(r['gap_p95_ms'], '.1f')} | {fmt(r['cpu_s'], '.2f')} | "
              f"{fmt(r['peak_mb'], '.0f')} | {fmt(r.get('first_ms'), '.0f')} | {fmt(r.get('last_ms'), '.0f')} | {r['missing']} | {r['twice']} | {fmt(r['overlaps'], 'd')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--workloads", nargs="+", default=["mixed", "tiny"])
    ap.add_argument("--tools", nargs="+", default=DEFAULT_TOOLS, choices=list(DRIVERS))
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="N rounds of every tool, interleaved; each row is the tool's median round (default 1)")
    ap.add_argument("--ray-python", metavar="PYTHON", help="a Python with ray[tune]: adds ray_tune to the tools")
    ap.add_argument("--baseline", metavar="REV",
                    help="a git revision: adds train_sweep_baseline, that revision's train_sweep.py, installed form")
    ap.add_argument("--real-nvml", action="store_true",
                    help="train_sweep_nvml reads the machine's real NVML (needs --gpus real GPUs)")
    args = ap.parse_args()
    global REAL_NVML
    REAL_NVML = args.real_nvml
    if args.baseline:
        BASELINE.append(baseline_folder(args.baseline))
        if "train_sweep_baseline" not in args.tools:
            args.tools.append("train_sweep_baseline")
    if args.ray_python:
        RAY_PYTHON.append(args.ray_python)
        if "ray_tune" not in args.tools:
            args.tools.append("ray_tune")
    print(f"# bench_dispatch: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    tools = []
    for tool in args.tools:
        missing = available(tool)
        if missing:
            print(f"  skipping {tool}: {missing}", file=sys.stderr)
        else:
            tools.append(tool)
    for name in args.workloads:
        durations = workload(name)
        runs: dict[str, list[dict]] = {tool: [] for tool in tools}
        for k in range(args.repeat):  # rounds: every tool once per round, so drift hits them alike
            for tool in tools:
                print(f"  {name}: {tool} (round {k + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
                runs[tool].append(run_tool(tool, durations, args.gpus))
        rows = [sorted(rs, key=lambda r: r["wall"])[(len(rs) - 1) // 2] for rs in runs.values()]  # median wall
        print_table(name, len(durations), args.gpus, rows)
        if args.repeat > 1:
            print(f"\nEach row is the round with the median wall time of {args.repeat}. Wall times (s) of every round:\n")
            for tool, rs in runs.items():
                walls = ", ".join(f"{r['wall']:.2f}" for r in rs)
                print(f"- {tool}: {walls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
