"""A fake train.py for the end-to-end tests. Takes key=value arguments (as train_sweep passes them):

    sleep=S        sleep S seconds (default 0)
    exit=N         exit with code N at the end
    lines=N        print N numbered lines to stdout (and one to stderr)
    err=TEXT       print TEXT as the last stderr line
    hang=1         ignore SIGTERM and sleep forever (only SIGKILL ends it)
    child=1        start a grandchild in the same process group that sleeps forever
    escape=1       start a grandchild in a new session (it leaves the group) that sleeps forever
    mem_mb=N       "use" N MB on the GPU in CUDA_VISIBLE_DEVICES (via the fake pynvml's procs_dir)
    mem_after=S    ... only after S seconds (a real run allocates after start-up)
    metric=V       print val_loss=V
    early_metric=V print step=1 val_loss=V before the sleep (a running run's latest value)
    fail_once=P    exit 1 if the file P does not exist yet (and create it): fails the first attempt only
    oom_once=P     likewise, printing PyTorch's CUDA out-of-memory error first
    oom=1          always print the out-of-memory error and exit 1
    linger=1       start a grandchild in the same process group that ignores SIGTERM and sleeps forever,
                   wait until it ignores SIGTERM, then exit 0 at once (only SIGKILL ends the grandchild)
    spam=S         print numbered lines (about 100 bytes each, flushed, ~1 ms apart) for S seconds
    ckpt=1         write checkpoints model.pt (1 KB) and checkpoints/step_1.pt (2 KB), and notes.txt;
                   ckpt_outside=PATH: also outside.pt, a link to PATH
    daemon=1       start a daemon (double fork, setsid, an empty environment) that sleeps an hour; its PID
                   goes to $TRAIN_SWEEP_RUN_DIR/daemon.pid
    break_gpu=G    at start, mark GPU G in $FAKE_NVML_STATE as failing (every NVML call on it raises)
    flaky_nvml=N   just before exiting, make the next N memory readings of every GPU fail (then they work)
    break_nvml=1   just before exiting, mark every GPU in $FAKE_NVML_STATE as failing (its NVML calls
                   raise from then on): NVML breaks right after this run, before the next one starts
    rmdir_self=1   delete $TRAIN_SWEEP_RUN_DIR (shutil.rmtree) and exit 0 at once
    term_delay=S   on SIGTERM: log a "term" event, sleep S seconds, log an "exit" event, exit 143
    big_line_mb=N  print one N MB line to stdout (the newline only at its end)
    flood_mb=N     print N MB of 100-byte lines to stdout as fast as it can, then go on
    cr_bar=N       write N tqdm-style progress updates to stderr, '\r'-separated, no newline
    err_mb=N       print one N MB line as the last stderr line
    bad_metrics=K  write a metrics.json that is not plain JSON: K=surrogate (a lone "\ud800" escape)
                   or K=deep (100,000 nested arrays)

Every run writes $TRAIN_SWEEP_RUN_DIR/fake.json (argv, env, cwd, pids, start time; its whole environment
to env.json), and appends one
JSON line to $FAKE_LOG if set (start and end times, GPU), so tests can check what ran where and when.
Any other key is accepted and ignored (hyperparameters under test).
"""

import json
import os
import signal
import subprocess
import sys
import time

start = time.time()
args = {}
for a in sys.argv[1:]:
    k, _, v = a.partition("=")
    args[k] = v

run_dir = os.environ.get("TRAIN_SWEEP_RUN_DIR", ".")
gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
pids = []

if args.get("child") == "1":
    pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]).pid)
if args.get("escape") == "1":
    pids.append(
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True).pid
    )

if args.get("linger") == "1":
    lingerer = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE,
    )
    lingerer.stdout.readline()  # it ignores SIGTERM from now on
    pids.append(lingerer.pid)

info = {
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "pid": os.getpid(),
    "grandchildren": pids,
    "start": start,
    "env": {k: v for k, v in os.environ.items()
            if k.startswith(("CUDA_", "TRAIN_SWEEP_", "PYTHONUNBUFFERED", "WANDB_", "MLFLOW_"))},
}
with open(os.path.join(run_dir, "env.json"), "w") as f:
    json.dump(dict(os.environ), f)
with open(os.path.join(run_dir, "fake.json.tmp"), "w") as f:  # renamed: a test that sees it reads it whole
    json.dump(info, f)
os.replace(os.path.join(run_dir, "fake.json.tmp"), os.path.join(run_dir, "fake.json"))


def log(event):
    path = os.environ.get("FAKE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "name": os.environ.get("TRAIN_SWEEP_RUN_NAME"), "gpu": gpu,
                                "t": time.time(), "pid": os.getpid()}) + "\n")


log("start")

if args.get("rmdir_self") == "1":
    import shutil

    shutil.rmtree(run_dir)
    log("end")
    sys.exit(0)

if "term_delay" in args:
    _terminating = []

    def _slow_term(signum, frame):
        if _terminating:  # a second SIGTERM while winding down: keep winding down
            return
        _terminating.append(1)
        log("term")
        time.sleep(float(args["term_delay"]))
        log("exit")
        os._exit(143)

    signal.signal(signal.SIGTERM, _slow_term)

if "flood_mb" in args:
    block = "".join(f"flood line {i:08d} " + "x" * 79 + "\n" for i in range(10_000)).encode()  # 1 MB
    for _ in range(int(args["flood_mb"])):
        sys.stdout.buffer.write(block)
    sys.stdout.flush()
if "big_line_mb" in args:
    sys.stdout.write("x" * (int(args["big_line_mb"]) * 1024 * 1024) + "\n")
    sys.stdout.flush()
if "cr_bar" in args:
    total = int(args["cr_bar"])
    for i in range(total):
        sys.stderr.write(f"\r{i + 1}/{total} |{'#' * (20 * (i + 1) // total):<20}|")
    sys.stderr.flush()
if args.get("bad_metrics") == "surrogate":
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        f.write('{"val_loss": "\\ud800"}')
elif args.get("bad_metrics") == "deep":
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        f.write('{"val_loss": ' + "[" * 100000 + "]" * 100000 + "}")


def edit_nvml(change):
    """Change the fake NVML's GPUs (a list of dicts) in its state file, atomically."""
    state_path = os.environ["FAKE_NVML_STATE"]
    with open(state_path) as f:
        state = json.load(f)
    change(state["gpus"])
    with open(state_path + f".{os.getpid()}.tmp", "w") as f:
        json.dump(state, f)
    os.replace(state_path + f".{os.getpid()}.tmp", state_path)


if args.get("daemon") == "1":  # a daemon the usual way: double fork, new session, a clean environment
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            with open(os.path.join(run_dir, "daemon.pid.tmp"), "w") as f:  # renamed: never seen empty
                f.write(str(os.getpid()))
            os.replace(os.path.join(run_dir, "daemon.pid.tmp"), os.path.join(run_dir, "daemon.pid"))
            os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)"], {})
        os._exit(0)
    os.waitpid(first, 0)
    while not os.path.exists(os.path.join(run_dir, "daemon.pid")):
        time.sleep(0.01)

if args.get("ckpt") == "1":  # checkpoints: model.pt, checkpoints/step_1.pt, and notes.txt (not a checkpoint)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    for rel, size in (("model.pt", 1024), (os.path.join("checkpoints", "step_1.pt"), 2048), ("notes.txt", 10)):
        with open(os.path.join(run_dir, rel), "wb") as f:
            f.write(b"\0" * size)
    if "ckpt_outside" in args:  # a link to a file outside the run folder: the link may go, never the file
        os.symlink(args["ckpt_outside"], os.path.join(run_dir, "outside.pt"))

if "break_gpu" in args:
    edit_nvml(lambda gpus: gpus[int(args["break_gpu"])].update(fail=True))


def use_memory():
    state_path = os.environ.get("FAKE_NVML_STATE")
    if not state_path or not gpu:
        return
    with open(state_path) as f:
        procs_dir = json.load(f)["procs_dir"]
    os.makedirs(procs_dir, exist_ok=True)
    with open(os.path.join(procs_dir, f"{os.getpid()}.json"), "w") as f:
        json.dump({"gpu": int(gpu.split(",")[0]), "mb": int(args["mem_mb"])}, f)


if "mem_mb" in args:
    if "mem_after" in args:
        time.sleep(float(args["mem_after"]))
    use_memory()

for i in range(int(args.get("lines", 0))):
    print(f"line {i}")
if "lines" in args:
    print("stderr line", file=sys.stderr)

if args.get("hang") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("hanging", flush=True)
    while True:
        time.sleep(1)

OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
       "79.15 GiB of which 1.2 GiB is free.")
for key in ("fail_once", "oom_once"):
    if key in args and not os.path.exists(args[key]):
        open(args[key], "w").close()
        if key == "oom_once":
            print(OOM, file=sys.stderr)
        log("end")
        sys.exit(1)
if args.get("oom") == "1":
    print(OOM, file=sys.stderr)
    log("end")
    sys.exit(1)

if "spam" in args:
    spam_end = time.time() + float(args["spam"])
    i = 0
    while time.time() < spam_end:
        print(f"spam line {i:08d} " + "x" * 80, flush=True)
        i += 1
        time.sleep(0.001)

if "early_metric" in args:
    print(f"step=1 val_loss={args['early_metric']}", flush=True)
time.sleep(float(args.get("sleep", 0)))
if "metric" in args:
    print(f"val_loss={args['metric']}")
if "err" in args:
    print(args["err"], file=sys.stderr)
if args.get("break_nvml") == "1":
    edit_nvml(lambda gpus: [g.update(fail=True) for g in gpus])
if "flaky_nvml" in args:
    edit_nvml(lambda gpus: [g.update(fail_reads=int(args["flaky_nvml"])) for g in gpus])
if "err_mb" in args:
    sys.stderr.write("E" * (int(args["err_mb"]) * 1024 * 1024) + "\n")
    sys.stderr.flush()
log("end")
sys.exit(int(args.get("exit", 0)))
