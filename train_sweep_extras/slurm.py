"""--backend slurm: one Slurm job per run through submitit (SlurmBackend, SlurmLauncher, ClusterSlots), the task
that runs in each job (SlurmTask), and re-attaching to the jobs an earlier sweep left.
Needs: pip install 'train-sweep[slurm]'."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from train_sweep import (
    CPU,
    HINT_NODE_FAILURE,
    HINT_PREEMPTED,
    HINT_TIMEOUT,
    SET_ASIDE,
    SLURM_DIR,
    GpuReading,
    Journal,
    LogFollower,
    Outcome,
    OutputError,
    Plan,
    Run,
    Settings,
    State,
    SweepSpec,
    UserError,
    _is_number,
    _is_whole,
    _json_type,
    check_known,
    one_line,
    parse_set,
    prepare_run_dir,
    read_json,
    record_damage,
    run_env,
    signal_group,
    sweep_group,
    tracker_env,
    write_json_atomic,
)


class ClusterSlots:
    """Placement on a cluster (--backend slurm): the cluster's scheduler picks nodes and GPUs; the sweep only
    bounds how many runs it has there at once (a search's trials: --slurm-max-parallel; a list: all of them,
    the job array's own throttle bounding how many run)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.gpus: list[int] = []
        self.running = 0
        self.readings: dict[int, GpuReading] = {}
        self.notes: list[str] = []

    reads_memory = False  # runs wait for a slot only
    threshold_mb = None

    def free_mb(self, gpu: int) -> None:
        return None

    @property
    def slots(self) -> int:
        return self.limit or max(1, self.running)

    def slot_free(self) -> bool:
        return self.limit is None or self.running < self.limit

    def busy(self) -> bool:
        return self.running > 0

    def unplaceable(self, run: Run) -> str | None:
        return None

    def read(self, now: float) -> None:
        return None

    def place(self, run: Run, now: float, min_free_mb: float | None = None) -> tuple[tuple[int, ...], str]:
        return (CPU,), "the cluster's scheduler places it"

    def launched(self, run: Run, gpus: Sequence[int], now: float) -> None:
        self.running += 1

    def release(self, run: Run) -> None:
        self.running -= 1

    def ended(self, run: Run, now: float) -> None:
        """Nothing to learn: the cluster places runs."""

    def read_due(self, now: float) -> None:
        return None

    def packing(self) -> None:
        return None

    def summary(self) -> list[str]:
        return []


SLURM_KEYS = {  # the config's "slurm" object: key -> (what it must be, its test)
    "partition": ("a string", lambda v: isinstance(v, str) and bool(v)),
    "time": ("a number of minutes > 0", lambda v: _is_number(v) and v > 0),
    "gpus_per_run": ("a whole number >= 0", lambda v: _is_whole(v) and v >= 0),
    "cpus_per_run": ("a whole number >= 1", lambda v: _is_whole(v) and v >= 1),
    "mem_gb": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "max_parallel": ("a whole number >= 1", lambda v: _is_whole(v) and v >= 1),
    "requeues": ("a whole number >= 0", lambda v: _is_whole(v) and v >= 0),
    "params": ("an object of submitit's SlurmExecutor parameters", lambda v: isinstance(v, dict)),
}


SLURM_OWN = ("partition", "time", "gpus_per_node", "cpus_per_task", "mem", "array_parallelism", "job_name",
             "signal_delay_s")  # set from the flags above: --slurm-param cannot set these


SEARCH_PARALLEL = 4  # a search's trials at once on a cluster, unless --slurm-max-parallel says


SLURM_POLL_S = 0.5  # how often finished jobs' results are looked for (a stat per running job)


SACCT_S = 3.0  # how often Slurm is asked for the jobs' states (one sacct call for all)


SLURM_GONE_S = 30.0  # a job that Slurm's accounting has never heard of this long after it was submitted is lost


SLURM_TURN = {"None", "Priority", "Resources", "BeginTime", "JobArrayTaskLimit", "Dependency", "Prolog",
              "Reservation", "NodeDown", "PartitionDown", "JobHeldUser"}  # waiting reasons that are a turn in the queue


SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED", "UNKNOWN", ""}


def set_job(run: Run, job_id: str | None = None, node: str | None = None, requeues: int | None = None) -> None:
    """What the run's record keeps of its Slurm job (Run.job), and where it runs in words (Run.location)."""
    job = run.job
    if job_id is not None:
        job.update(slurm_job_id=job_id, node=None, slurm_requeues=0)
    if node is not None:
        job["node"] = node
    if requeues is not None:
        job["slurm_requeues"] = requeues
    if job:
        run.location = f"job {job['slurm_job_id']}" + (f" on {job['node']}" if job.get("node") else "")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What each run's Slurm job asks for: the --slurm-* flags over the config's "slurm" object."""

    partition: str | None = None
    time_min: int | None = None  # the job's time limit (None: the partition's default)
    gpus_per_run: int | None = None  # None: each run's own gpus_per_run
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    max_parallel: int | None = None  # jobs running at once (a list's job array; a search's trials)
    requeues: int = 3  # how often a job that Slurm preempts or times out is requeued
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # anything else submitit takes

    def parameters(self, gpus: int, name: str) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for a job of `gpus` GPUs."""
        out: dict[str, Any] = {"job_name": name, **self.params}
        if self.partition:
            out["partition"] = self.partition
        if self.time_min:
            out["time"] = self.time_min
            out["signal_delay_s"] = int(min(90, max(5, self.time_min * 60 // 6)))  # USR2 before the limit
        if gpus:
            out["gpus_per_node"] = gpus
        if self.cpus_per_run:
            out["cpus_per_task"] = self.cpus_per_run
        if self.mem_gb:
            out["mem"] = f"{int(self.mem_gb)}GB" if self.mem_gb == int(self.mem_gb) else f"{int(self.mem_gb * 1024)}MB"
        if self.max_parallel:
            out["array_parallelism"] = self.max_parallel
        return out

    def describe(self) -> str:
        asks = [f"partition {self.partition}" if self.partition else "the default partition",
                "gpus_per_run GPU(s)" if self.gpus_per_run is None else f"{self.gpus_per_run} GPU(s)"]
        asks += [f"{self.cpus_per_run} CPUs"] if self.cpus_per_run else []
        asks += [f"{self.mem_gb:g} GB"] if self.mem_gb else []
        asks += [f"{self.time_min} min"] if self.time_min else []
        text = "one Slurm job per run (" + ", ".join(asks) + ")"
        text += f", at most {self.max_parallel} at once" if self.max_parallel else ", as many at once as Slurm runs"
        return text + f"; a preempted or timed-out job is requeued up to {self.requeues} time(s)"


def slurm_options(settings: Settings, config: Mapping[str, Any], where: str) -> SlurmOptions:
    """The flags over the config's "slurm" object; --timeout gives the time limit when neither says it.
    UserError (naming the key) for what cannot be a Slurm request."""
    check_known(config, SLURM_KEYS, f"{where}: 'slurm'")
    for key, value in config.items():
        what, ok = SLURM_KEYS[key]
        if not ok(value):
            raise UserError(f"{where}: 'slurm' key {key!r} must be {what}, got {_json_type(value)}")
    params = dict(config.get("params", {}))
    params.update(parse_set(settings.slurm_param, "--slurm-param"))
    for key in params:
        if key in SLURM_OWN:
            use = {"partition": "--slurm-partition", "time": "--slurm-time", "gpus_per_node": "--slurm-gpus-per-run",
                   "cpus_per_task": "--slurm-cpus-per-run", "mem": "--slurm-mem-gb",
                   "array_parallelism": "--slurm-max-parallel", "job_name": "the run's name",
                   "signal_delay_s": "before the time limit, from --slurm-time"}[key]
            raise UserError(f"--slurm-param {key}: train_sweep sets it ({'use ' if use.startswith('--') else ''}{use})")
    time_min = settings.slurm_time if settings.slurm_time is not None else config.get("time")
    if time_min is None and settings.timeout:
        time_min = settings.timeout / 60
    return SlurmOptions(
        partition=settings.slurm_partition or config.get("partition"),
        time_min=None if time_min is None else max(1, math.ceil(time_min)),
        gpus_per_run=settings.slurm_gpus_per_run if settings.slurm_gpus_per_run is not None else
        config.get("gpus_per_run"),
        cpus_per_run=settings.slurm_cpus_per_run or config.get("cpus_per_run"),
        mem_gb=settings.slurm_mem_gb or config.get("mem_gb"),
        max_parallel=settings.slurm_max_parallel or config.get("max_parallel"),
        requeues=next(v for v in (settings.slurm_requeues, config.get("requeues"), 3) if v is not None),
        params=params,
    )


def import_submitit() -> Any:
    """submitit, imported when the Slurm backend is asked for."""
    try:
        import submitit
    except ImportError:
        raise UserError("--backend slurm needs submitit: pip install 'train-sweep[slurm]' (or pip install submitit)") \
            from None
    return submitit


def check_slurm(options: SlurmOptions) -> None:
    """Before anything is submitted: Slurm answers here (sinfo), and the partition asked for exists."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"--backend slurm: Slurm does not answer here (sinfo: {e})") from None
    if out.returncode != 0:
        last = [line for line in out.stderr.splitlines() if line.strip()][-1:] or [f"exit code {out.returncode}"]
        raise UserError(f"--backend slurm: Slurm does not answer here (sinfo: {one_line(last[0], 300)})")
    partitions = [p.rstrip("*") for p in out.stdout.split()]
    missing = [p for p in (options.partition or "").split(",") if p and p not in partitions]  # a list: any of them
    if missing:
        raise UserError(f"--slurm-partition {options.partition}: no partition {missing[0]!r} here (sinfo lists: "
                        f"{', '.join(partitions) or 'none'})")


class captured_stderr:
    """File descriptor 2 into a temporary file for a while: sbatch's messages (which submitit lets through)
    go into the run's error instead of over the live view. `text` holds them afterwards."""

    text = ""

    def __enter__(self) -> captured_stderr:
        import tempfile

        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc: Any) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl+C (SIGTERM, SIGHUP) held back while sbatch runs: it inherits them blocked, so the terminal's SIGINT to
    the process group cannot end it after the controller took the job and before its id came back (the job ran
    on, unknown to the sweep, which said it had cancelled every job). The sweep takes them once sbatch is done."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def slurm_executor(submitit: Any, folder: Path, options: SlurmOptions) -> Any:
    """submitit's SlurmExecutor with the options' parameters; UserError when this is no Slurm cluster or
    submitit refuses a parameter."""
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.requeues)
    except RuntimeError as e:
        raise UserError(f"--backend slurm: {e} (srun is not on PATH)") from None
    try:
        executor.update_parameters(**options.parameters(options.gpus_per_run or 0, "train_sweep"))
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--slurm-param: submitit refuses it: {first}") from None
    return executor


class SlurmTask:
    """What a run's Slurm job runs (pickled by submitit, called on the node): the train command in its run
    folder with the same environment contract as locally (Slurm sets CUDA_VISIBLE_DEVICES), its stdout and
    stderr written straight to the run's log files and combined.log made from them on the node, so that
    a detached sweep loses nothing. Returns the exit code. On SIGTERM (scancel, a requeue) it ends the
    command and exits without a result, so that only a command that ended on its own is a result. On
    submitit's checkpoint signal (a time limit or preemption coming) it ends the command (SIGTERM, the grace
    period, SIGKILL) and asks submitit to requeue it, up to `requeues` times."""

    def __init__(self, argv: list[str], argv_template: list[str], command_len: int, cwd: str, env: dict[str, str],
                 logs: tuple[Path, Path, Path], grace: float, requeues: int, restarts: int = 0) -> None:
        self.argv, self.argv_template, self.command_len = argv, argv_template, command_len
        self.cwd, self.env, self.logs, self.grace = cwd, env, logs, grace
        self.requeues, self.restarts = requeues, restarts
        self._popen: Any = None
        self._follower: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_popen", "_follower")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _popen=None, _follower=None)

    def __call__(self) -> dict[str, Any]:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else os.environ.get("SLURM_JOB_ID", "?")
        env = {**os.environ, **self.env, "TRAIN_SWEEP_SLURM_JOB_ID": job}
        env.setdefault("CUDA_VISIBLE_DEVICES", "")  # no GPU asked for: none, not every GPU of the node
        argv = self.argv
        if self.argv_template:  # {gpu}: the GPUs Slurm gave the job
            text = env["CUDA_VISIBLE_DEVICES"]
            argv = [a.replace("{gpu}", text) for a in self.argv_template[: self.command_len]] + \
                self.argv_template[self.command_len:]
        stdout, stderr, combined = self.logs
        restart = max(self.restarts, int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        with open(stdout, "ab") as out, open(stderr, "ab") as err:
            self._follower = LogFollower(stdout, stderr, combined, resume=True)  # from here on into combined.log
            if restart:
                err.write(b"train_sweep: job %s restarted by Slurm (restart %d) on %s\n"
                          % (job.encode(), restart, os.uname().nodename.encode()))
                err.flush()
            signal.signal(signal.SIGTERM, self._terminated)
            started = time.time()
            self._popen = subprocess.Popen(argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=err, start_new_session=True)
        while (rc := self._popen.poll()) is None:
            time.sleep(0.2)
            self._follower.pump()
        self._follower.pump(final=True)
        self._follower.close()
        return {"returncode": rc, "started_at": started, "ended_at": time.time(), "node": os.uname().nodename,
                "restarts": restart, "argv": argv, "gpus": env["CUDA_VISIBLE_DEVICES"]}

    def _end_command(self) -> None:
        """SIGTERM to the command's process group, SIGKILL after the grace period; its last output kept."""
        if self._popen is None:
            return
        signal_group(self._popen.pid, signal.SIGTERM)
        try:
            self._popen.wait(self.grace)
        except subprocess.TimeoutExpired:
            signal_group(self._popen.pid, signal.SIGKILL)
            self._popen.wait()
        signal_group(self._popen.pid, signal.SIGKILL)  # leftovers of its group
        if self._follower is not None:
            self._follower.pump(final=True)

    def _terminated(self, signum: int, frame: Any) -> None:
        self._end_command()
        os._exit(128 + signum)  # no result: Slurm says why the job ended (cancelled, requeued)

    def checkpoint(self) -> Any:
        """submitit's hook for a coming time limit or preemption: end the command, requeue the job."""
        from submitit.helpers import DelayedSubmission

        self._end_command()
        if self.restarts >= self.requeues:
            with open(self.logs[1], "ab") as err:
                err.write(b"train_sweep: Slurm stops the job (time limit or preemption); it was requeued %d time(s), "
                          b"the bound (--slurm-requeues)\n" % self.restarts)
            if self._follower is not None:
                self._follower.pump(final=True)
            return None  # submitit then records the job as not requeued
        return DelayedSubmission(SlurmTask(self.argv, self.argv_template, self.command_len, self.cwd, self.env,
                                           self.logs, self.grace, self.requeues, self.restarts + 1))


def put_back_attempt_files(run: Run, attempt: Any) -> None:
    """A retry withdrawn before it ran: the files of the attempt it followed, which its start moved into
    attempt_<n>/ (archive_attempt_files), go back into the run's folder, over the new attempt's empty logs."""
    folder = run.run_dir / f"attempt_{attempt}"
    with suppress(OSError):
        for path in list(folder.iterdir()) if _is_whole(attempt) and folder.is_dir() else ():
            os.replace(path, run.run_dir / path.name)
        folder.rmdir()


def sacct(job_ids: Iterable[str], fields: str = "JobID,State",
          timeout: float = 60.0) -> tuple[dict[str, dict[str, str]], str | None]:
    """One sacct call for these jobs (asked by their arrays' ids): each task's fields, read as submitit reads them
    (a job array's tasks not started yet are one line, 123_[0-5]), and None; or {} and why sacct failed."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    arrays = ",".join(sorted({job.split("_")[0] for job in job_ids}))
    try:
        out = subprocess.run(["sacct", "-o", fields, "--parsable2", "-j", arrays], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return {}, str(e)
    if out.returncode != 0:
        return {}, next((line for line in reversed(out.stderr.splitlines()) if line.strip()),
                        f"exit code {out.returncode}")
    return SlurmInfoWatcher().read_info(out.stdout), None


def sacct_time(text: str | None) -> float | None:
    """A time as sacct prints it (Start: ISO 8601 in this machine's time zone) as a timestamp; None for Unknown."""
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


@dataclasses.dataclass(eq=False)
class SlurmAttempt:
    """A run's attempt as a Slurm job: the submitit job once submitted, what Slurm last said of it."""

    run: Run
    task: SlurmTask | None  # None: re-attached to a job an earlier sweep submitted
    job: Any = None  # submitit's SlurmJob, once submitted
    error: str | None = None  # why it could not be submitted (or was lost)
    submitted_at: float = 0.0
    state: str = "PENDING"  # Slurm's latest word
    node: str = ""
    ran: bool = False  # it has been seen running (a later PENDING is a requeue)
    ran_at: float | None = None  # when it last started running, as sacct says (its start, if it leaves no result)
    requeued: int = 0
    reader: LogFollower | None = None  # its stdout, for metrics (combined.log is made on the node)
    polled: bool = False  # looked at once (a re-attached job found ended at the first look ended unwatched)
    asked: int = 0  # the sacct answer it was last judged on
    cancelled: bool = False  # the sweep cancelled it (Ctrl+C, the pruner, fail fast)
    final_lines: list[str] | None = None  # its last stdout lines, read when it ended (for observe)


class SlurmLauncher:
    """Runs as Slurm jobs through submitit: start() queues a run, flush() submits what was queued (a job
    array for runs that ask for the same resources), poll() looks for the job's result (the train command's
    exit code, written by submitit when the command ended on its own) and otherwise asks Slurm (sacct, at
    most every SACCT_S for all jobs) whether the job ended without one: failed, cancelled, timeout, node
    failure, preempted. stop() cancels the job (scancel). With detach the jobs are left to Slurm."""

    def __init__(self, options: SlurmOptions, folder: Path, cwd: Path, sweep_id: str, kill_grace: float,
                 extra_env: Mapping[str, str] | None = None, group: str = "") -> None:
        self.submitit = import_submitit()
        import cloudpickle  # submitit's pickler: SlurmTask goes to the node by value, so that the node needs
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # train_sweep_extras only where it is installed
        self.options, self.folder, self.cwd = options, folder, cwd
        self.executor = slurm_executor(self.submitit, folder, options)
        self.sweep_id, self.group, self.kill_grace = sweep_id, group or sweep_id, kill_grace
        self.extra_env = dict(extra_env or {})
        self.unsubmitted: list[SlurmAttempt] = []
        self.jobs: set[SlurmAttempt] = set()
        self.notes: list[str] = []
        self._sacct_at = -math.inf
        self._asks = 0  # sacct calls so far: each attempt is judged on a new answer once
        self.info: dict[str, dict[str, str]] = {}  # sacct's latest word on each job
        self._sacct_failed = False
        self._array_size: int | None = None
        self._reasons_at = 0.0
        self._said_reasons: set[str] = set()
        self.reasons: dict[str, int] = {}  # why jobs wait, other than their turn (squeue's reason)

    own_timeout = True  # each job has its time limit in Slurm

    def stopping(self, running: int) -> str:
        return f"cancelling the sweep's {running} Slurm job(s) (scancel)"

    def detached(self, runs: Sequence[Run], pending: int) -> list[str]:
        jobs = [r.job["slurm_job_id"] for r in runs if r.job.get("slurm_job_id")]
        shown = ", ".join(jobs[:4]) + (f", ... {jobs[-1]}" if len(jobs) > 4 else "")
        return [f"Detached: {len(jobs)} run(s) left to Slurm as jobs {shown}" +
                (f"; {pending} not submitted yet" if pending else "") + ".",
                "Run the same command again to re-attach: running jobs are followed, ended ones collected (their "
                "results file written), failed ones submitted again. squeue --me lists them."]

    def env(self, run: Run) -> dict[str, str]:
        env = {**self.extra_env, **run_env(run, self.sweep_id), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        for key, value in tracker_env({**os.environ, **self.extra_env}, self.group, run).items():
            env.setdefault(key, value)
        return env

    def start(self, run: Run, gpus: tuple[int, ...]) -> SlurmAttempt:
        if run.job.get("slurm_job_id") and run.reattach:  # a job an earlier sweep submitted: followed, not again
            attempt = SlurmAttempt(run, None, self.submitit.SlurmJob(self.folder, run.job["slurm_job_id"]),
                                   submitted_at=-math.inf)  # long ago: unknown to Slurm means lost at once
            self.jobs.add(attempt)
            return attempt
        prepare_run_dir(run)
        try:
            for path in (run.stdout_log, run.stderr_log, run.combined_log):
                open(path, "wb").close()
        except OSError as e:
            raise OutputError(f"cannot write the run folder {run.run_dir}: {e.strerror or e}") from None
        task = SlurmTask(list(run.argv), list(run.argv_template), run.command_len, str(self.cwd), self.env(run),
                         (run.stdout_log, run.stderr_log, run.combined_log), self.kill_grace, self.options.requeues)
        attempt = SlurmAttempt(run, task)
        self.unsubmitted.append(attempt)
        return attempt

    def flush(self) -> None:
        """Submit the queued runs: one job array per set of runs that ask for the same resources (sbatch once
        for all of them); a submission that fails fails its runs, with sbatch's message."""
        queued, self.unsubmitted = self.unsubmitted, []
        if not queued:
            return  # (the loop calls this at every wake-up)
        by_gpus: dict[int, list[SlurmAttempt]] = {}
        for attempt in queued:
            by_gpus.setdefault(self._gpus(attempt.run), []).append(attempt)
        chunk = self._max_array()
        batches = [(gpus, group[i:i + chunk]) for gpus, group in by_gpus.items() for i in range(0, len(group), chunk)]
        for gpus, attempts in batches:
            names = attempts[0].run.name if len(attempts) == 1 else f"{self.group}"
            said = captured_stderr()
            try:
                self.executor.update_parameters(**self.options.parameters(gpus, f"ts-{names}"[:100]))
                with said, signals_held():
                    if len(attempts) == 1:
                        jobs = [self.executor.submit(attempts[0].task)]
                    else:
                        with self.executor.batch():  # one sbatch: a job array
                            jobs = [self.executor.submit(attempt.task) for attempt in attempts]
            except Exception as e:  # sbatch refused (a limit, an account, a node that cannot exist): the runs fail
                lines = [line for line in said.text.splitlines() if line.strip()] or str(e).splitlines()
                message = one_line(" ".join((lines[-1] if lines else type(e).__name__).split()), 400)
                for attempt in attempts:
                    attempt.error = attempt.run.error = f"Slurm refused the job: {message}"
                    self.jobs.add(attempt)
                continue
            now = time.monotonic()
            for attempt, job in zip(attempts, jobs):
                attempt.job, attempt.submitted_at = job, now
                set_job(attempt.run, job_id=job.job_id)
                self.jobs.add(attempt)
        self._sacct_at = -math.inf  # the new jobs' states at the next poll

    def _max_array(self) -> int:
        """How many tasks one job array may have here (Slurm's MaxArraySize less one; 1000 if unknown)."""
        if self._array_size is None:
            self._array_size = 1000
            try:
                out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
                found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
                if found and int(found.group(1)) > 1:
                    self._array_size = int(found.group(1)) - 1
            except (OSError, subprocess.SubprocessError):
                pass
        return self._array_size

    def _gpus(self, run: Run) -> int:
        return run.gpus_needed if self.options.gpus_per_run is None else self.options.gpus_per_run

    def poll(self, handle: SlurmAttempt) -> Outcome | None:
        attempt = handle
        outcome = self._poll(attempt)
        if attempt.task is None and outcome is not None and (not attempt.polled or attempt.state == "UNKNOWN"):
            # re-attached, and found ended (or lost): it ended while no sweep followed it
            outcome = dataclasses.replace(outcome, rerun=f"its Slurm job {attempt.job.job_id} ended "
                                                         f"({attempt.state.lower()}) while no sweep followed it: "
                                                         "submitted again, as resume runs what did not complete")
        attempt.polled = True
        return outcome

    def _poll(self, attempt: SlurmAttempt) -> Outcome | None:
        if attempt.error is not None:
            self.jobs.discard(attempt)
            return Outcome(None, error=attempt.error, ran=False)
        if attempt.job is None:
            return None  # not submitted yet
        attempt.run.reattach = False  # reported: from here on it is this sweep's
        now = time.monotonic()
        if now - self._sacct_at >= SACCT_S:
            self._sacct_at = now
            self._ask_sacct()
        asked, attempt.asked = attempt.asked != self._asks, self._asks  # a new answer since this job's last look
        self._follow_state(attempt, now)
        if attempt.state not in ("PENDING", "REQUEUED") or attempt.ran or asked:  # sacct lags: a short job can
            # end while it still says PENDING; queued jobs are looked at with each sacct call, others at each poll
            outcome = self._result(attempt)
            if outcome is not None:
                return outcome
        if attempt.state in SLURM_ACTIVE and not ((attempt.state == "UNKNOWN" or attempt.cancelled) and asked and
                                                  self._lost(attempt, now)):
            return None
        outcome = self._result(attempt)  # it may have ended between the look and sacct's word
        return outcome or self._ended_without_result(attempt)

    def _ask_sacct(self) -> None:
        """One sacct call for every job the sweep follows (what submitit's watcher does, but also for states
        it takes for final, SUSPENDED or CONFIGURING, and with its complaints kept off the terminal)."""
        ids = [a.job.job_id for a in self.jobs if a.job is not None]
        if not ids:
            return
        self._asks += 1
        info, failed = sacct(ids, "JobID,State,NodeList,Start,End")
        if failed is None:
            self.info.update(info)
            self._ask_reasons()
        elif not self._sacct_failed:
            self._sacct_failed = True
            self.notes.append(f"warning: sacct fails here ({one_line(failed, 200)}): a job that ends without its "
                              f"command's exit code is noticed once squeue no longer lists it ({SLURM_GONE_S:g} s "
                              "after its submission at the earliest)")

    def _ask_reasons(self) -> None:
        """Why jobs wait in the queue (squeue's reason), every 15 s once one has waited 10 s: a reason that
        is not a turn in the queue (a partition's time limit, an account's limit, ...) is said once."""
        now = time.monotonic()
        waiting = [a for a in self.jobs if a.job is not None and not a.ran and now - a.submitted_at >= 10.0]
        if not waiting or now < self._reasons_at:
            return
        self._reasons_at = now + 15.0
        try:
            out = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i|%r", "-j",
                                  ",".join(sorted({a.job.job_id.split("_")[0] for a in waiting}))],
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return
        reasons: dict[str, int] = {}
        for line in out.stdout.splitlines():
            job, _, reason = line.partition("|")
            if reason and reason not in SLURM_TURN:
                reasons[reason] = reasons.get(reason, 0) + (job.count(",") + 1 if "[" not in job else 1)
        for reason, n in reasons.items():
            if reason not in self._said_reasons:
                self._said_reasons.add(reason)
                self.notes.append(f"{'waiting':<11} Slurm holds job(s) of this sweep: {reason}; such a job may never "
                                  "start (check --slurm-time against the partition's limit, --slurm-partition, "
                                  "--slurm-param account/qos; squeue --me says more)")
        self.reasons = reasons

    def _follow_state(self, attempt: SlurmAttempt, now: float) -> None:
        info = self.info.get(attempt.job.job_id, {})
        state = (info.get("State") or "UNKNOWN").split()[0].upper()  # "CANCELLED by 0" -> CANCELLED
        node = info.get("NodeList", "")
        if state == attempt.state:
            return
        run = attempt.run
        if state == "RUNNING":
            if attempt.ran and attempt.state in ("PENDING", "REQUEUED", "PREEMPTED"):
                self.notes.append(f"{'running':<11} {run.name}: Slurm job {run.job.get('slurm_job_id')} runs again on {node}")
            attempt.ran, attempt.ran_at = True, sacct_time(info.get("Start")) or time.time()
            attempt.node = node if node not in ("", "None assigned") else attempt.node
            set_job(run, node=attempt.node)
        elif attempt.state not in ("PENDING", "REQUEUED", "PREEMPTED", "REQUEUE_HOLD") and (
                state in ("REQUEUED", "REQUEUE_HOLD") or (state in ("PENDING", "PREEMPTED") and attempt.ran)):
            self._requeued(attempt, attempt.requeued + 1, state.lower())
        attempt.state = state

    def _requeued(self, attempt: SlurmAttempt, count: int, how: str) -> None:
        """Slurm requeued the job (preemption, a time limit, scontrol requeue): said once per requeue."""
        run = attempt.run
        attempt.requeued = count
        set_job(run, requeues=count)
        self.notes.append(f"{'requeued':<11} {run.name}: Slurm job {run.job.get('slurm_job_id')} was stopped ({how}) and requeued "
                          f"({count}); its command starts again in the same folder")

    def _lost(self, attempt: SlurmAttempt, now: float) -> bool:
        """squeue no longer lists a job that Slurm's accounting never heard of (purged, another cluster) long
        after it was submitted, or that the sweep cancelled (a queued array task cancelled before it ran has
        no row of its own in sacct)."""
        if now - attempt.submitted_at < SLURM_GONE_S and not attempt.cancelled:
            return False
        try:
            out = subprocess.run(["squeue", "-h", "-j", attempt.job.job_id, "-o", "%T"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode != 0 or not out.stdout.strip()

    def _result(self, attempt: SlurmAttempt) -> Outcome | None:
        """The outcome submitit recorded for the job: the command's exit code, or the wrapper's error."""
        path = attempt.job.paths.result_pickle
        if not path.exists():
            return None
        try:
            import cloudpickle

            with open(path, "rb") as f:
                kind, value = cloudpickle.load(f)
        except (OSError, EOFError, ValueError, ImportError, AttributeError, TypeError) as e:
            return self._done(attempt, Outcome(None, error=f"cannot read Slurm job {attempt.job.job_id}'s result "
                                                           f"{path}: {e}"))
        if kind == "success" and isinstance(value, dict):
            set_job(attempt.run, node=value.get("node") or attempt.node)
            attempt.run.argv = list(value.get("argv") or attempt.run.argv)  # {gpu} as the job filled it
            attempt.run.gpus = tuple(int(g) for g in str(value.get("gpus") or "").split(",") if g.strip().isdigit())
            restarts = int(value.get("restarts") or 0)
            if restarts > attempt.requeued:  # requeued between two looks of sacct
                self._requeued(attempt, restarts, "seen from its restart count")
            return self._done(attempt, Outcome(value.get("returncode"), value.get("ended_at"),
                                               started_at=value.get("started_at")))
        text = str(value)
        if "not requeued" in text:  # the checkpoint signal came once more than --slurm-requeues allows
            return self._done(attempt, Outcome(None, hint=HINT_TIMEOUT, error=(
                f"Slurm stopped job {attempt.job.job_id} (time limit or preemption) after {self.options.requeues} "
                "requeue(s), the bound (--slurm-requeues)")))
        last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["(no trace)"]
        return self._done(attempt, Outcome(None, error=f"the job's wrapper failed on {attempt.node or 'its node'}: "
                                                       f"{one_line(last[0], 300)} (see {attempt.job.paths.stderr})"))

    def _ended_without_result(self, attempt: SlurmAttempt) -> Outcome:
        state, job = attempt.state, attempt.job.job_id
        hint = {"TIMEOUT": HINT_TIMEOUT, "DEADLINE": HINT_TIMEOUT, "NODE_FAIL": HINT_NODE_FAILURE,
                "PREEMPTED": HINT_PREEMPTED, "BOOT_FAIL": HINT_NODE_FAILURE}.get(state)
        why = {
            "TIMEOUT": f"Slurm ended job {job} at its time limit",
            "DEADLINE": f"Slurm ended job {job} at its deadline",
            "NODE_FAIL": f"job {job}'s node {attempt.node or ''} failed",
            "BOOT_FAIL": f"job {job}'s node {attempt.node or ''} failed to boot",
            "PREEMPTED": f"Slurm preempted job {job} and did not requeue it",
            "OUT_OF_MEMORY": f"job {job} ran out of host memory (--slurm-mem-gb)",
            "CANCELLED": f"job {job} was cancelled outside the sweep (scancel, or an administrator)",
            "COMPLETED": f"job {job} ended without its command's exit code (its wrapper was killed)",
            "UNKNOWN": f"Slurm no longer knows job {job} and it left no result",
        }.get(state, f"Slurm job {job} ended {state} without its command's exit code (killed: see "
                     f"{attempt.job.paths.stderr})")
        info = self.info.get(job, {})  # (a job that ended unwatched, never seen running: sacct's times still hold)
        return self._done(attempt, Outcome(None, sacct_time(info.get("End")), hint=hint, error=why,
                                           started_at=sacct_time(info.get("Start"))))

    def _done(self, attempt: SlurmAttempt, outcome: Outcome) -> Outcome:
        """The job has ended: what its command wrote last is read now (for observe), however short it ran."""
        self.jobs.discard(attempt)
        if outcome.started_at is None and not attempt.ran:
            outcome = dataclasses.replace(outcome, ran=False)
        elif outcome.started_at is None:  # cancelled or killed as it ran: its start is sacct's (else when it was
            outcome = dataclasses.replace(outcome, started_at=attempt.ran_at)  # seen running), not its submission
        reader = attempt.reader or self._reader(attempt)
        if reader is not None:
            attempt.final_lines = reader.pump(final=True)
            reader.close()
        attempt.reader = None
        return outcome

    @staticmethod
    def _reader(attempt: SlurmAttempt) -> LogFollower | None:
        try:
            return LogFollower(attempt.run.stdout_log, attempt.run.stderr_log, None)
        except OSError:
            return None

    def stop(self, handle: SlurmAttempt, hard: bool) -> bool:
        attempt = handle
        if attempt.job is None:  # queued, not submitted: it never starts
            if attempt in self.unsubmitted:
                self.unsubmitted.remove(attempt)
                attempt.error = "cancelled before it was submitted"
                self.jobs.add(attempt)
            return True
        if attempt.job.paths.result_pickle.exists():
            return False  # its command ended on its own: its exit code stands
        attempt.cancelled = True
        try:
            subprocess.run(["scancel", *(["--signal=KILL", "--full"] if hard else []), attempt.job.job_id],
                           capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            self.notes.append(f"warning: scancel {attempt.job.job_id} failed: {e}")
        self._sacct_at = -math.inf
        return True

    def observe(self, handle: SlurmAttempt) -> list[str]:
        attempt = handle
        if attempt.final_lines is not None:  # it has ended: what it wrote last, once
            lines, attempt.final_lines = attempt.final_lines, []
            return lines
        if attempt.reader is None:
            if not attempt.ran:
                return []  # queued (its logs are opened once it runs: a long queue holds no files open)
            attempt.reader = self._reader(attempt)
        return attempt.reader.pump() if attempt.reader is not None else []

    def next_poll(self, now: float) -> float | None:
        return now + SLURM_POLL_S if self.jobs or self.unsubmitted else None

    def queued(self) -> int:
        return len(self.queued_attempts()) + len(self.unsubmitted)

    def withdraw(self, handle: SlurmAttempt) -> bool:
        if handle.ran or handle.error or handle.state not in ("PENDING", "REQUEUED", "UNKNOWN"):
            return False
        if not self.stop(handle, hard=False):
            return False
        if handle.run.attempts:  # a retry, never run: its run ends as its last attempt did, that attempt's files back
            put_back_attempt_files(handle.run, handle.run.attempts[-1].get("attempt"))
        return True

    def queued_attempts(self) -> list[SlurmAttempt]:
        return [a for a in self.jobs if a.state in ("PENDING", "REQUEUED", "UNKNOWN") and not a.error]

    def describe(self) -> list[str]:
        """The jobs as Slurm has them: pending and running per partition, with the nodes."""
        pending = len(self.queued_attempts())
        running = [a for a in self.jobs if a.state in ("RUNNING", "COMPLETING")]
        nodes: dict[str, int] = {}
        for a in running:
            nodes[a.node or "?"] = nodes.get(a.node or "?", 0) + 1
        where_ = ", ".join(f"{n} on {node}" for node, n in sorted(nodes.items()))
        part = self.options.partition or "default partition"
        held = "; held: " + ", ".join(f"{n} {r}" for r, n in self.reasons.items()) if self.reasons else ""
        return [f"slurm {part}: {len(running)} running" + (f" ({where_})" if where_ else "") + f", {pending} pending"
                + held]

    def close(self, detach: bool = False) -> None:
        """Nothing is left to end: jobs the sweep was following ended or were cancelled (or, detached, are
        left to Slurm)."""


def attach_jobs(runs: Sequence[Run], journal: Journal) -> None:
    """Runs whose Slurm job an earlier sweep submitted and never saw end (detached, or killed): their run.json
    names the job and an attempt the journal does not hold. They are re-attached to it (Run.reattach), not
    submitted again: the job is followed if it still runs, collected if it ended."""
    for run in runs:
        record = read_json(run.run_dir / "run.json")
        if not isinstance(record, dict) or record.get("identity") != run.identity or \
                record.get("state") != State.RUNNING.value or not isinstance(record.get("slurm_job_id"), str):
            continue
        if any(r.get("attempt") == record.get("attempt") for r in journal.get(run.name, [])):
            continue
        if why := record_damage(record):
            raise UserError(f"{run.run_dir / 'run.json'} is damaged: {why} (mend or delete it)")
        set_job(run, job_id=record["slurm_job_id"])
        run.reattach = True
        run.attempt = int(record.get("attempt") or 1)


def cancel_orphan_jobs(output_dir: Path, keep: set[str]) -> list[str]:
    """Jobs an earlier sweep left queued or running that this sweep does not re-attach to (`keep`): a search's
    unfinished trials (asked again), runs of another command or hyperparameters, --rerun. They are cancelled
    before anything is submitted, so that no two jobs write into one folder. Returns what was done, to say."""
    said = []
    for path in sorted(output_dir.glob("*/run.json")):
        if path.parent.name in keep or SET_ASIDE in path.parent.name:  # (<name>~1: cancelled when set aside)
            continue
        record = read_json(path)
        if isinstance(record, dict) and record.get("state") == State.RUNNING.value and \
                isinstance(record.get("slurm_job_id"), str):
            try:
                done = subprocess.run(["scancel", record["slurm_job_id"]], capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            with suppress(OSError):  # its run.json no longer says running (status and list took it for a job)
                write_json_atomic(path, {**record, "state": State.INTERRUPTED.value,
                                         "error": f"Slurm job {record['slurm_job_id']} cancelled by a later sweep"})
            if done.returncode != 0:
                continue  # it had ended
            said.append(f"{'cancelled':<11} {path.parent.name}: Slurm job {record['slurm_job_id']}, left running by an "
                        "earlier sweep for what this sweep does not run (a trial asked again, --rerun, another "
                        "command or hyperparameters)")
    return said


class SlurmBackend:
    """--backend slurm: one Slurm job per run, through submitit. The cluster places the runs (ClusterSlots only
    bounds how many the sweep has there at once); SlurmLauncher submits, follows and cancels the jobs; a sweep
    run again re-attaches to the jobs an earlier one left."""

    note = ""

    @classmethod
    def resolve(cls, settings: Settings, spec: SweepSpec) -> Settings:
        """The --slurm-* flags over the config's "slurm" object, into the settings the sweep keeps."""
        options = slurm_options(settings, spec.slurm, spec.source)
        return dataclasses.replace(
            settings, slurm_partition=options.partition, slurm_time=options.time_min,
            slurm_gpus_per_run=options.gpus_per_run, slurm_cpus_per_run=options.cpus_per_run,
            slurm_mem_gb=options.mem_gb, slurm_max_parallel=options.max_parallel, slurm_requeues=options.requeues)

    def __init__(self, plan: Plan) -> None:
        settings = self.settings = plan.settings
        self.plan = plan
        self.options = slurm_options(settings, plan.spec.slurm, plan.spec.source)
        if settings.mps:
            raise UserError("--mps starts NVIDIA's MPS daemon on this machine; with --backend slurm, MPS is the "
                            "cluster's to give (Slurm's gres/mps, through --slurm-param)")
        if settings.gpus:
            raise UserError("--gpus names this machine's GPUs; with --backend slurm Slurm picks them (use "
                            "--slurm-gpus-per-run)")
        if settings.detach and plan.searching:
            raise UserError("--detach submits a list and exits; a search (or a pruner) decides as runs report, so "
                            "train_sweep must keep running: start it in tmux or screen, or as a Slurm job itself")
        self.placement = self.options.describe()
        self.output_dir = Path(settings.output_dir)

    def check(self) -> None:
        """submitit can write its folder, and Slurm answers here with the partition asked for."""
        slurm_executor(import_submitit(), self.output_dir.resolve() / SLURM_DIR, self.options)
        check_slurm(self.options)

    def attach(self, runs: Sequence[Run], journal: Journal, plan: Plan) -> list[str]:
        """Jobs an earlier sweep left: followed if they are this sweep's runs, else cancelled."""
        if plan.search is None and not plan.searching and not self.settings.rerun:
            attach_jobs(runs, journal)
        return cancel_orphan_jobs(self.output_dir, {r.name for r in runs if r.reattach})

    def start(self, sweep_id: str) -> list[str]:
        return []

    def record(self) -> dict[str, Any]:
        return {"gpus": [], "slurm": dataclasses.asdict(self.options)}

    def open(self, sweep_id: str, lock: int, say: Callable[[str], None]) -> tuple[SlurmLauncher, ClusterSlots]:
        launcher = SlurmLauncher(self.options, self.output_dir.resolve() / SLURM_DIR, Path.cwd(), sweep_id,
                                 self.settings.kill_grace, self.plan.spec.env, sweep_group(self.output_dir))
        return launcher, ClusterSlots((self.options.max_parallel or SEARCH_PARALLEL) if self.plan.searching else None)

    def close(self, say: Callable[[str], None] | None = None) -> None:
        """Nothing of this machine's to stop: the launcher has closed (or detached) the jobs."""
