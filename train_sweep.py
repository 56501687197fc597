#!/usr/bin/env python3
"""train_sweep: train many models with different hyperparameters on the GPUs of one machine, and walk away.

Reads a JSON list of hyperparameter dicts (or an object with a grid), names each run readably and keeps every
listed GPU busy with `train.py` subprocesses: a folder, live logs and a run.json per run; never overpacking a GPU
(NVML memory readings, per-GPU run counts, declared memory, or `auto`: learned footprints); never leaving a
process behind (timeouts, Ctrl+C, even kill -9 of the sweep: the guardian); never losing a finished result (a
journal, resume, retries, out-of-memory requeue); showing what runs where and which run won. This file is the
scheduler and needs only psutil, nvidia-ml-py and rich; what is optional (an Optuna search, W&B sweep files,
Slurm, MPS, TensorBoard, best-K checkpoints, report/list/status/watch/cleanup, plots, the Python API) lives in
the package beside it, train_sweep_extras/, found through EXTRAS below.

    python train_sweep.py --gpus 0 1 2 3                       # train_sweep_config.json, python train.py
    python train_sweep.py --gpus 0 1 --max-processes-per-gpu auto --metric val_loss
    python train_sweep.py --gpus 0 1 lr=1e-3,1e-4 model.depth='range(2,5)'   # a grid in Hydra's syntax
    python train_sweep.py --search tpe --n-trials 50 --metric val_loss --pruner median lr='tag(log,interval(1e-5,1e-2))'
    python train_sweep.py --backend slurm --slurm-partition gpu --detach   # Slurm jobs; run it again to re-attach
    python train_sweep.py --dry-run                              # names, command lines, placement; runs nothing
    python train_sweep.py report --plots plots/                  # table, CSV/JSON, PNGs of a finished sweep
    python -c "import train_sweep; print(train_sweep.load('outputs').best(3))"   # the Python API

Map of this file (sections in the order data flows; each uses only what comes before it):
    1. Constants and helpers    exit codes, run states (State), OOM patterns, formatting; EXTRAS, extra()
    2. Settings                 every flag as one typed field with its one description (--help, docs/flags.md);
                                Ranking: which metric ranks, and which way
    3. Config                   the config file's two forms (SPEC_FIELDS), grids, Hydra overrides, --set
    4. Runs and names           readable names, labels, templates, argument styles, Run, run folders
    5. GPU probe                NVML readings through pynvml, in one place
    6. Placement                pick_gpus, settling, declared memory, GpuPool (auto: extras' packing); classify,
                                requeue_reason, broken_setup
    7. Sources and launchers    the RunSource, Launcher and Placement protocols; ListSource; the guardian,
                                cgroups, LogFollower, LocalLauncher
    8. Results and metrics      records, atomic writes, tails; MetricReader, read_metrics, printed_metrics;
                                the records' check (RECORD_FIELDS), the journal, resume, the locks
    9. Reporting                Progress snapshots, event lines, sweep.log, the live view, the summary
    10. The event loop          Sweep (wait for an event, update, place what can start, report) with its
                                Leaderboard, MetricFeed and FailFast; Wakeups (sleep, signals)
    11. Running a sweep         plan_runs (settings resolved once), the Backend protocol and LocalBackend,
                                run_sweep; the Python API (run(), load(): the extras' api module), execute
    12. CLI                     argparse from the settings, main(), cli() (the command)
"""

from __future__ import annotations

import _signal  # already loaded at the interpreter's start, like os: no time passes before the handler is set
import os

if __name__ == "__main__":  # until main() takes over, Ctrl+C (SIGTERM, SIGHUP) ends it at once: nothing is written yet
    for _sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):  # exit 130, as interrupted later (not 143)
        if _signal.getsignal(_sig) != _signal.SIG_IGN:  # (an ignored SIGHUP stays ignored: nohup)
            _signal.signal(_sig, lambda *_: os._exit(130))
    import sys
    sys.modules.setdefault("train_sweep", sys.modules[__name__])  # the extras' `import train_sweep` is this module

import argparse
import ast
import dataclasses
import enum
import functools
import hashlib
import importlib
import json
import math
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any, NamedTuple, Protocol

__version__ = "0.1.0"

# ----------------------------------------------------------------------------------------------
# 1. Constants, states, helpers and the registry of extras
# ----------------------------------------------------------------------------------------------

EXIT_OK = 0  # every run succeeded
EXIT_RUN_FAILED = 1  # at least one run failed or timed out
EXIT_BAD_INPUT = 2  # bad config, flag, GPU id, folder or train script: nothing launched
EXIT_SWEEP_ERROR = 3  # the sweep stopped on an error of its own: output not writable, every GPU's NVML failing
EXIT_INTERRUPTED = 130  # Ctrl+C, SIGTERM or SIGHUP

LOCK_WAIT_S = 600.0  # longest wait for the guardian of a dead sweep to end its runs before a new sweep starts
DRY_RUN_ROWS = 200  # --dry-run shows this many runs, then how many more there are
MAX_RUNS = 100_000  # a sweep of more runs is made only with --max-runs (a sample of it), never whole
MAX_NAME_BYTES = 200  # longest run name (a folder name); longer names are cut and get a hash
TAIL_LINES = 100  # lines of stdout/stderr kept in the results file (full logs stay in the run folder)
TAIL_BYTES = 32 * 1024  # ... read from at most the last 32 KB of each log
LINE_SHOW = 2000  # a line kept or shown is cut to this many characters, with a marker
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this many seconds
SETTLE_TIMEOUT_S = 60.0  # a GPU's memory reading is trusted again at most this long after a launch
SETTLE_STABLE_S = 2.0  # ... or once it has grown and then held steady this long
SETTLE_GROWTH_MB = 64.0  # growth that counts as "the new run has allocated"
POLL_MIN_S, POLL_MAX_S = 0.05, 0.5  # NVML polling interval while runs wait for memory (backs off)
CLEANUP_POLL_S = 0.05  # how often leftovers of a finished run are checked while they are being ended
FOLLOW_S = 0.2  # how often running runs' new output is read (combined.log, metrics)
OOM_WAIT_S = 600.0  # longest wait of a run that ran out of memory for a GPU with more free memory
NVML_FAILS, NVML_FAIL_S = 3, 2.0  # a GPU is taken out after its NVML calls failed this often, this long
MAX_OOM_REQUEUES = 3  # default bound on out-of-memory requeues of one run (--max-oom-requeues)
SUMMARY_TOP = 10  # the best complete runs the summary always shows
FAIL_FAST_RUNS, FAIL_FAST_S = 3, 10.0  # the first 3 runs failing within 10 s with the same last line: stop launching
SLURM_DIR = ".slurm"  # in the output folder: submitit's files of each Slurm job (its pickles, sbatch script, logs)
JOURNAL = "journal.jsonl"  # in the output folder: one line per finished attempt, appended and fsynced
LOCK = ".train_sweep.lock"  # in the output folder: the PID of the sweep that holds it (the lock is on the folder)
SERIES = "train_sweep_metrics.jsonl"  # in a run folder: the metrics the run printed, one JSON line per report
RUN_MARK = ".train_sweep_run"  # in each run folder the sweep made: folders without it are not the sweep's
STUDY = "study.log"  # in the output folder: a search's Optuna study (Optuna's journal file; optuna-dashboard opens it)
MPS_DIR = ".mps"  # in the output folder: --mps's pipe and log folders
OWNED_FILES = (JOURNAL, "sweep.json", "sweep.log", LOCK, "best", STUDY, SLURM_DIR, MPS_DIR)  # the sweep's own files
MB = 1024 * 1024
CPU = -1  # the device id of the CPU when no GPU is used (runs see CUDA_VISIBLE_DEVICES="")


class State(str, enum.Enum):
    """The life of a run. The values are what results files and progress lines show."""

    PENDING = "pending"  # not started (yet)
    RUNNING = "running"
    COMPLETE = "complete"  # exited with code 0
    FAILED = "failed"  # non-zero exit code, killed by a signal, or could not start
    TIMEOUT = "timeout"  # ran past --timeout and was ended
    INTERRUPTED = "interrupted"  # ended because the sweep was stopped (Ctrl+C, SIGTERM, SIGHUP)
    OOM = "oom"  # failed with a GPU out-of-memory error (requeued until --max-oom-requeues)
    PRUNED = "pruned"  # stopped early by the pruner: its metric was hopeless (not a failure)

    def __str__(self) -> str: return self.value


# Out-of-memory errors, as PyTorch, cuBLAS, JAX/XLA and TensorFlow print them (extended by --oom-pattern).
OOM_PATTERNS = (r"CUDA out of memory", r"torch\.(cuda\.)?OutOfMemoryError", r"CUBLAS_STATUS_ALLOC_FAILED",
                r"CUDNN_STATUS_(NOT_SUPPORTED|ALLOC_FAILED).*memory|cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                r"RESOURCE_EXHAUSTED: Out of memory", r"CUDA_ERROR_OUT_OF_MEMORY", r"HIP out of memory")


class UserError(Exception):
    """Bad input: printed as one line on stderr, exit code 2, nothing launched."""


class OutputError(Exception):
    """The sweep's own output cannot be written (disk full, read-only): the sweep stops cleanly, exit 3."""


def say_error(message: str) -> None:
    """`train_sweep: error: ...` on stderr, one line; a closed or hung-up terminal is no reason to crash."""
    with suppress(OSError, ValueError):
        sys.stderr.write(f"train_sweep: error: {message}\n")
        sys.stderr.flush()


# -- The registry of extras ---------------------------------------------------------------------
# The optional features are modules of train_sweep_extras/, known here only by name, imported when first needed
# and reached only through the protocols (RunSource, Launcher, Placement, Backend): a backend is a module and a line.
EXTRAS_PACKAGE = "train_sweep_extras"
EXTRAS: dict[str, tuple[str, str]] = {  # name -> ("module:object" in the package, the pip extra it needs)
    "space": ("space", "search"),  # a search's space: the config's "search", Hydra's interval()/tag(log, ...)
    "search space": ("space:parse_search", "search"),
    "source search": ("search:SearchSetup", "search"),  # --search, --pruner: an Optuna study as the run source
    "source shared": ("agents:SharedSetup", "agents"),  # --storage: one study in PostgreSQL, an agent per host
    "search choices": ("search:describe_choices", "search"),  # --dry-run: the sampler's and pruner's settings
    "sweep file": ("sweepfiles:read_sweep_file", "search"),  # --sweep-file: W&B and Protein sweep files
    "backend slurm": ("slurm:SlurmBackend", "slurm"),  # --backend slurm: jobs through submitit
    "packing": ("packing", ""),  # --max-processes-per-gpu auto: footprints per configuration, remembered
    "mps": ("mps:MpsDaemon", ""),  # --mps: NVIDIA's MPS daemon for the local runs
    "metrics tensorboard": ("tensorboard:TensorBoardFollower", "tensorboard"),  # metrics from event files
    "best-k": ("bestk:open_best_k", ""),  # --top-k: checkpoints kept in the K best runs only
    "best-k check": ("bestk:check_settings", ""),
    "commands": ("tools:main", ""),  # report, list, status, watch, cleanup
    "api": ("api", ""),  # the Python API: run(), load(), SweepResult
}
COMMANDS = ("report", "list", "cleanup", "status", "watch", "flags")  # `train_sweep COMMAND ...`: the "commands" extra
NEEDED_BY = {"space": "a search", "search space": "the config's 'search' block",
             "source search": "--search or --pruner", "source shared": "--storage", "search choices": "--pruner",
             "sweep file": "--sweep-file", "packing": "--max-processes-per-gpu auto",
             "backend slurm": "--backend slurm", "mps": "--mps",
             "metrics tensorboard": "TensorBoard metrics", "best-k": "--top-k", "best-k check": "--top-k",
             "commands": "report, list, status, watch, cleanup and flags",
             "api": "the Python API"}  # how the messages name what needs an extra


def extra(name: str) -> Any:
    """The extra registered as `name`, imported now (a UserError says what to install if it is missing)."""
    where, pip_extra = EXTRAS[name]
    module, _, attr = where.partition(":")
    try:
        found = importlib.import_module(f"{EXTRAS_PACKAGE}.{module}")
    except ModuleNotFoundError as e:
        if e.name not in (EXTRAS_PACKAGE, f"{EXTRAS_PACKAGE}.{module}"):
            raise
        install = f"pip install 'train-sweep[{pip_extra}]'" if pip_extra else "pip install train-sweep"
        raise UserError(f"{NEEDED_BY.get(name, name)} needs {EXTRAS_PACKAGE}/, the package beside train_sweep.py, "
                        f"which is not here: {install} (or copy that folder beside the script)") from None
    return getattr(found, attr) if attr else found


def optional_extra(name: str) -> Any:
    """The extra, or None where the package is not beside this file (a feature that is simply off then)."""
    try:
        return extra(name)
    except UserError:
        return None


def fmt_duration(seconds: float | None) -> str:
    """12.3s, 4:05 or 1:02:03 (`-` for none)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_bytes(n: float) -> str:
    """512 bytes, 1.5 KB, 2.0 MB, 3.1 GB (GB the largest unit)."""
    for unit in ("bytes", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def gpu_label(gpus: Any) -> str:
    """Where a run ran, from a Run's gpus or a record's gpu_id: `0`, `0,1`, or `CPU`."""
    if isinstance(gpus, int) and gpus != CPU:
        return str(gpus)
    return ",".join(map(str, gpus)) if isinstance(gpus, (list, tuple)) and gpus else "CPU"


def where(gpus: Any) -> str:
    """`GPU 0,1` or `CPU`."""
    label = gpu_label(gpus)
    return label if label == "CPU" else f"GPU {label}"


def redact(text: str) -> str:
    """A text (an argument, a URL) with the passwords of the URLs in it as ***: USER:***@HOST (also with an @ in
    the password) and ?password=***. What is printed or written."""
    def netloc(m: re.Match) -> str:
        user, at, host = m.group(1).rpartition("@")
        return "://" + (user.split(":", 1)[0] + ":***" if ":" in user else user) + at + host
    text = re.sub(r"://([^/\s?#]*)", netloc, text)
    return re.sub(r"([?&]password=)[^&\s#]*", r"\1***", text, flags=re.IGNORECASE)


def one_line(text: str, limit: int = 500) -> str:
    """A line fit to show: at most `limit` characters, cut with a marker."""
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit:,} more characters cut]"


def format_value(value: Any) -> str:
    """A hyperparameter value as it reads in a name: 5e-06, 1 (for 1.0), none, 1-2-3 (for [1, 2, 3])."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, list):
        return "-".join(format_value(v) for v in value) or "empty"
    if isinstance(value, dict):
        return "-".join(f"{k}-{format_value(v)}" for k, v in value.items()) or "empty"
    return str(value)


def readable(value: Any) -> str:
    """A value as a person reads it: 4 significant digits for a fraction (the results keep every digit)."""
    return f"{value:.4g}" if isinstance(value, float) and not value.is_integer() else format_value(value)


def signal_name(returncode: int | None) -> str | None:
    """The signal that killed a process, from Popen's negative return code."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


# ----------------------------------------------------------------------------------------------
# 2. Settings: every flag, described once
# ----------------------------------------------------------------------------------------------

def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value
    return parse


_positive_int = _whole_number(1)
_nonneg_int = _whole_number(0)


def _per_gpu(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or auto)") from None


def _nonneg_float(text: str, least: str = ">= 0") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 if least == "> 0" else value >= 0) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {least}")
    return value


def _positive_float(text: str) -> float: return _nonneg_float(text, "> 0")


def _command_line(text: str) -> str:
    try:
        if shlex.split(text) and "\0" not in text:
            return text
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    raise argparse.ArgumentTypeError(f"{text!r} {'holds a NUL character' if chr(0) in text else 'is empty'}")


def _modes(text: str) -> str:
    """--mode: min, max, or one of them per objective (min,max)."""
    if not text or any(m not in ("min", "max") for m in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r}: give min or max, or one per objective (min,max)")
    return text


ARG_STYLES = ("hydra", "argparse", "equals")
SAMPLERS = ("tpe", "random", "gp", "cmaes", "nsga2", "qmc", "grid")  # --search (train_sweep_extras.search)
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")  # --pruner
BACKEND_NAMES = ("local", "slurm")  # --backend (BACKENDS, below, says where each lives)

GROUPS = {  # the flags' groups, in the order --help and docs/flags.md show them
    "run": "what to run", "place": "where runs go (placement)", "end": "how runs end",
    "metrics": "metrics and the best model", "output": "output",
    "search": "search (Optuna; pip install 'train-sweep[search]'; see docs/search.md)",
    "slurm": "on a Slurm cluster (submitit; pip install 'train-sweep[slurm]'; see docs/slurm.md)",
    "agents": "several hosts without Slurm: an agent on each (PostgreSQL; pip install 'train-sweep[agents]'; see "
              "docs/agents.md)",
}


def flag(default: Any, group: str, help: str, **argparse_kw: Any) -> Any:
    """A setting that is a flag: its default, its group, its one description (--help, docs/flags.md) and how
    argparse reads it (type, metavar, choices; a False default makes a switch, a tuple a repeatable flag)."""
    return dataclasses.field(default=default, metadata={"group": group, "help": help, **argparse_kw})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a sweep, one field per flag, resolved once (plan_runs): the flags, then the config file,
    then the defaults. Saved in <output-dir>/sweep.json; --help and docs/flags.md are made from these fields."""

    config_file: str | None = flag(
        "train_sweep_config.json", "run", "a JSON array of hyperparameter objects (one run each), or an object "
        "with runs, grid, defaults, command, ... (docs/config.md)", metavar="FILE")
    set: tuple[str, ...] = flag(
        (), "run", "set a hyperparameter on every run, over the config (repeatable); VALUE is read as JSON (8, 1e-3, "
        "true, null, [1,2]), else kept as text", metavar="KEY=VALUE")
    configs: tuple[str, ...] = flag(
        (), "run", "batch mode: each file (globs expanded) is one run, passed to the command as its first argument, "
        "named after the file; instead of --config-file", nargs="+", metavar="FILE")
    command: str | None = flag(
        None, "run", "the train command, split like a shell would and run without one; each hyperparameter is "
        "appended (as a Hydra override key=value by default); a leading 'python' is the Python running "
        "train_sweep; {name}, {run_dir} and {gpu} are filled in per run (default: the config file's 'command', "
        "else 'python train.py')", type=_command_line, metavar="COMMAND")
    arg_style: str | None = flag(
        None, "run", "how hyperparameters are passed: hydra (key=value), argparse (--key value), equals "
        "(--key=value) (default: the config file's 'arg_style', else hydra)", choices=ARG_STYLES)
    name_template: str | None = flag(
        None, "run", "run names from a template: '{env}_lr{training.lr}' (hyperparameter keys and {index}) "
        "(default: the config's 'name_template', else automatic names)", metavar="TEMPLATE")
    abbrev: tuple[str, ...] = flag(
        (), "run", "how a key reads in run names, e.g. training.bisim_lr=lr; an empty SHORT (env=) shows the value "
        "alone (repeatable: one KEY=SHORT a flag; a bare KEY=VALUE after it is an override)", metavar="KEY=SHORT")
    max_runs: int | None = flag(None, "run", "run only the first N runs of the expanded sweep", type=_positive_int,
                                metavar="N")
    shuffle: bool = flag(False, "run", "put the expanded runs in a random order (the same order for the same --seed)")
    seed: int = flag(0, "run", "seed for --shuffle, and a search's sampler", type=int, metavar="N")
    dry_run: bool = flag(False, "run", "print each run's name and command line and the placement; run nothing")
    gpus: tuple[str, ...] = flag(
        (), "place", "GPU ids as nvidia-smi numbers them (0 1, or 0,1), or 'all' (default: every GPU NVML reports; "
        "the CPU if none)", nargs="+", metavar="ID")
    max_processes_per_gpu: int | str | None = flag(
        None, "place", "runs of this sweep at once on one GPU; auto: the sweep decides, from each run's GPU memory "
        "(learned from NVML, per configuration, remembered across sweeps) and the CPU cores (default: the "
        "config's 'max_processes_per_gpu', else 1)", type=_per_gpu, metavar="N|auto")
    no_footprint_cache: bool = flag(
        False, "place", "auto: neither use nor keep the footprints remembered across sweeps (in "
        "$XDG_CACHE_HOME/train_sweep/footprints.jsonl, else ~/.cache/train_sweep/)")
    memory_threshold_gb: float = flag(
        40.0, "place", "a GPU whose used memory (anyone's) is at or above this takes no new run (not used by auto)",
        type=_positive_float, metavar="GB")
    disable_gpu_monitoring: bool = flag(
        False, "place", "do not read NVML: place runs by --max-processes-per-gpu slots only (needs --gpus)")
    mps: bool | None = flag(
        None, "place", "start NVIDIA's MPS control daemon for the sweep (its pipe and logs in <output-dir>/.mps/) and "
        "run the runs as its clients: runs packed on a GPU compute at once rather than in turns; a fatal GPU error "
        "in one can end the others on its GPU (default: the config's 'mps', else off)",
        action=argparse.BooleanOptionalAction)
    gpus_per_run: int | None = flag(
        None, "place", "GPUs each run gets, all free ones (default: the config's 'gpus_per_run', else 1)",
        type=_positive_int, metavar="N")
    gpu_memory_gb: float | None = flag(
        None, "place", "GPU memory each run needs: a GPU takes it only when that much is free (after what recent "
        "runs declared but have not allocated yet)", type=_positive_float, metavar="GB")
    max_parallel: int | None = flag(None, "place", "at most N runs at once over all GPUs", type=_positive_int,
                                    metavar="N")
    settle_seconds: float = flag(
        SETTLE_TIMEOUT_S, "place", "longest wait for a just-launched run's memory to show before the GPU takes "
        "another", type=_positive_float, metavar="SECONDS")
    timeout: float = flag(36000.0, "end", "end a run that runs longer than this; 0 means never",
                          type=_nonneg_float, metavar="SECONDS", shown="36000 = 10 hours")
    kill_grace: float = flag(KILL_GRACE_S, "end", "between SIGTERM and SIGKILL when a run is ended",
                             type=_nonneg_float, metavar="SECONDS")
    retries: int = flag(0, "end", "retry a failed run up to N times, after the runs not yet started",
                        type=_nonneg_int, metavar="N")
    oom_pattern: tuple[str, ...] = flag(
        (), "end", "another output line that means 'out of GPU memory' (regular expression; repeatable)",
        metavar="REGEX")
    max_oom_requeues: int = flag(
        MAX_OOM_REQUEUES, "end", "how often a run that ran out of GPU memory is put back in the queue",
        type=_nonneg_int, metavar="N")
    no_fail_fast: bool = flag(
        False, "end", f"keep launching when the first {FAIL_FAST_RUNS} runs all fail within {FAIL_FAST_S:g}s with "
        "the same error (by default the sweep stops launching and names the error: a broken setup)")
    rerun: bool = flag(
        False, "end", "run every run again, also those an earlier sweep completed; their folders are kept as "
        "<name>~1, ~2, ...")
    metric: tuple[str, ...] = flag(
        (), "metrics", "follow this metric while runs run and rank runs by it (repeatable: the first ranks, the "
        "others are shown): from <run_dir>/metrics.jsonl or metrics.json, else stdout lines like NAME=0.41, "
        "NAME: 0.41, 'NAME': 0.41 or 'val loss 0.41' for val_loss", metavar="NAME")
    metric_regex: str | None = flag(
        None, "metrics", "find the (first) --metric in stdout with this regular expression: a group named value, "
        "optionally one named step, e.g. 'Eval .* acc (?P<value>[0-9.]+)'", metavar="PATTERN")
    mode: str | None = flag(
        None, "metrics", "whether a lower or higher --metric is better; min,max,...: one per objective of a "
        "multi-objective search, the first metrics in order (default: the search's mode, else min)", type=_modes,
        metavar="min|max")
    top_k: int | None = flag(
        None, "metrics", "keep checkpoints (--checkpoint-glob) only in the K best complete runs by --metric; the "
        "others' are deleted as the ranking changes; <output-dir>/best/ ranks the K best", type=_positive_int,
        metavar="K")
    checkpoint_glob: str | None = flag(
        None, "metrics", "with --top-k: the checkpoint files of a run folder, e.g. '*.pt' (any depth), './*.pt' (its "
        "top) or 'checkpoints/' (every file in it); logs, run.json and metrics are never deleted", metavar="PATTERN")
    keep_checkpoints: bool = flag(False, "metrics", "with --top-k: delete nothing, only log what would go")
    output_file: str = flag(
        "train_sweep_results.json", "output", "results file, rewritten as runs finish; FILE.partial on "
        "interruption", metavar="FILE")
    output_dir: str = flag(
        "outputs", "output", "where run folders go: DIR/<name>/, with the journal, sweep.json and sweep.log",
        metavar="DIR")
    no_live: bool = flag(
        False, "output", "plain timestamped event lines instead of the live view (the default when stdout is not a "
        "terminal)")
    search: str | None = flag(
        None, "search", "search with this sampler instead of running a list: " + ", ".join(SAMPLERS) + "; the "
        "overrides in Hydra's Optuna-sweeper syntax (lr='tag(log, interval(1e-5, 1e-2))' layers='range(2, 9)' "
        "opt=adam,sgd) or the config's 'search' block give the space; a trial is asked whenever a GPU slot frees "
        "up (default: the config's 'search' block or --sweep-file says whether and how)", choices=SAMPLERS,
        metavar="SAMPLER")
    n_trials: int | None = flag(
        None, "search", "the search's budget of trials (default: the config's n_trials, the sweep file's run_cap, "
        "the grid's size)", type=_positive_int, metavar="N")
    search_hours: float | None = flag(None, "search", "ask no new trial after H hours", type=_positive_float,
                                      metavar="H")
    warm_start: str | None = flag(
        None, "search", "seed a new search's study with the complete trials of an earlier sweep (its --output-dir) "
        "that fall in this search's space and were ranked by the same metric: they guide the sampler from its first "
        "trial, and count in neither the budget nor the results; it says what it took and what it left", metavar="DIR")
    pruner: str | None = flag(
        None, "search", "stop hopeless runs early by their --metric as it appears (also in a plain list or grid): " +
        ", ".join(PRUNERS) + ", or one with its arguments: 'successive_halving(min_resource=100,pause=true)' "
        "(default: the config's, else none)", metavar="PRUNER")
    sweep_file: str | None = flag(
        None, "search", "a W&B sweep configuration (YAML or JSON: method, metric, parameters, early_terminate, "
        "command, run_cap) or a Protein one, searched locally with Optuna; instead of --config-file", metavar="FILE")
    backend: str = flag(
        "local", "slurm", "where runs run: local (this machine's GPUs) or slurm (one Slurm job per run; the output "
        "folder must be on a filesystem the nodes share)", choices=BACKEND_NAMES)
    slurm_partition: str | None = flag(
        None, "slurm", "the partition of the runs' jobs, or several, comma-separated (default: the config's, else "
        "Slurm's)", metavar="NAME")
    slurm_time: float | None = flag(
        None, "slurm", "each job's time limit (default: the config's, else --timeout rounded up to minutes)",
        type=_positive_float, metavar="MINUTES")
    slurm_gpus_per_run: int | None = flag(
        None, "slurm", "GPUs each job asks for (default: the config's, else gpus_per_run)", type=_nonneg_int,
        metavar="N")
    slurm_cpus_per_run: int | None = flag(None, "slurm", "CPUs each job asks for (default: the config's, else "
                                          "Slurm's)", type=_positive_int, metavar="N")
    slurm_mem_gb: float | None = flag(None, "slurm", "host memory each job asks for (default: the config's, else "
                                      "Slurm's)", type=_positive_float, metavar="GB")
    slurm_max_parallel: int | None = flag(
        None, "slurm", "a search's trials at once; for a list, each job array's throttle (%N: runs asking for other "
        "GPU counts form arrays of their own, retries are single jobs) (default: the config's, else no bound for a "
        "list and 4 for a search)", type=_positive_int, metavar="N")
    slurm_requeues: int | None = flag(
        None, "slurm", "how often a job that Slurm preempts or times out is requeued, its command started again in "
        "the same folder (default: the config's, else 3; 0: a time-out is final, as locally)", type=_nonneg_int,
        metavar="N")
    slurm_param: tuple[str, ...] = flag(
        (), "slurm", "any other parameter of submitit's SlurmExecutor: account=ml, qos=high, constraint=a100, "
        "setup='[\"module load cuda\"]' (repeatable; VALUE is read as JSON, else text)", metavar="KEY=VALUE")
    detach: bool = flag(
        False, "slurm", "submit the runs and exit; run the same command again to re-attach: running jobs are "
        "followed, finished ones collected, failed ones submitted again")
    storage: str | None = flag(
        None, "agents", "the same command on several hosts joins one sweep: its study lives in this PostgreSQL "
        "database (postgresql://USER@HOST:PORT/DATABASE; the password in ~/.pgpass or PGPASSWORD, or in the URL: it "
        "is never printed or written); each host runs the list's runs or the search's trials as its GPUs free up, "
        "into its own --output-dir", metavar="URL")
    study_name: str | None = flag(
        None, "agents", "the sweep's name in the --storage database: one name, one sweep (default: train_sweep)",
        metavar="NAME")
    agent_grace: float | None = flag(
        None, "agents", "with --storage: a host whose agent has not been heard of for this long (killed, down, cut "
        "off) loses its running trials to the other hosts, which run them again (default: 120)",
        type=_positive_float, metavar="SECONDS")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The flags as parsed; lists become tuples, flags not given keep the defaults above."""
        given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None})

    @functools.cached_property
    def ranking(self) -> Ranking:
        """The first --metric, the way --mode says (the first objective of a multi-objective search)."""
        return Ranking(self.metric[0] if self.metric else None, self.modes[0])

    @property
    def modes(self) -> tuple[str, ...]:
        """The direction of each objective: one, or one per metric of a multi-objective search."""
        return tuple((self.mode or "min").split(","))

    @property
    def source(self) -> str:
        """What the runs come from, for messages and sweep.json."""
        return f"--configs {' '.join(self.configs)}" if self.configs else self.config_file or "the command line"


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Which metric ranks the runs, and which way (None: nothing ranks): made once and handed to all that ranks."""

    metric: str | None = None
    mode: str = "min"

    @classmethod
    def saved(cls, settings: Any, name: str | None = None) -> Ranking:
        """The ranking a saved sweep used (sweep.json's settings, best.json), by its objective `name` if that is one."""
        try:
            metrics, modes = settings["metric"], str(settings.get("mode") or "min").split(",")
            at = metrics.index(name) if isinstance(metrics, list) and name in metrics[: len(modes)] else 0
            metric, mode = metrics[at] if isinstance(metrics, list) else metrics, modes[at]
        except (KeyError, TypeError, IndexError, AttributeError):
            return cls()
        return cls(metric, mode) if isinstance(metric, str) and mode in ("min", "max") else cls()

    def __str__(self) -> str: return f"{self.mode} {self.metric}"


def flag_default(field: dataclasses.Field[Any]) -> str | None:
    """How a flag's default reads in --help and docs/flags.md (None: off, empty, or the help says it)."""
    if field.default is None or field.default is False or field.default == () or "(default:" in field.metadata["help"]:
        return None
    if "shown" in field.metadata:
        return field.metadata["shown"]
    return f"{field.default:g}" if isinstance(field.default, float) else str(field.default)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Every Settings field as a flag, in its group, described by its metadata."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for field in dataclasses.fields(Settings):
        meta = dict(field.metadata)
        group, text = meta.pop("group"), meta.pop("help")
        meta.pop("shown", None)
        default = flag_default(field)
        text = (text + (f" (default: {default})" if default else "")).replace("%", "%%")
        if field.default is False:
            meta.setdefault("action", "store_true")
        elif field.default == () and "nargs" not in meta:
            meta.setdefault("action", "append")
        if field.default not in (None, False, ()):
            meta["default"] = field.default
        groups[group].add_argument("--" + field.name.replace("_", "-"), help=text, **meta)


# ----------------------------------------------------------------------------------------------
# 3. Config
# ----------------------------------------------------------------------------------------------

_BAD_KEY = re.compile(r"[\s=,\0]")


class JsonObject(dict):  # type: ignore[type-arg]
    """A JSON object as read from a config file; `duplicate`: a key it had twice (reported where known)."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


MAX_DEPTH = 64  # nesting of a hyperparameter's value (lists in lists ...)


def check_value(value: Any, where: str) -> None:
    """A value that reaches a command line and JSON unchanged: no NUL, lone surrogate, NaN, Infinity, key twice
    in an object, or nesting over MAX_DEPTH."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            if "\0" in item:
                raise UserError(f"{where}: a NUL character cannot be passed on a command line")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{where}: a lone UTF-16 surrogate ({item!r}) is not text") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise UserError(f"{where}: {item} is not a number JSON allows (NaN and Infinity are not)")
        elif isinstance(item, dict):
            if getattr(item, "duplicate", None) is not None:
                raise UserError(f"{where}: key {item.duplicate!r} appears twice in one object")
            for key, sub in item.items():
                stack += [(key, depth + 1), (sub, depth + 1)]
        elif isinstance(item, list):
            stack += [(sub, depth + 1) for sub in item]


def check_key(key: Any, where: str) -> None:
    """The one key rule (entries, defaults, grids, --set): non-empty text without spaces, '=' or ',', not
    starting with '-', so that it survives every argument style."""
    if not isinstance(key, str) or not key:
        raise UserError(f"{where} has an empty key")
    if _BAD_KEY.search(key):
        raise UserError(f"{where}: key {key!r} may not contain spaces, '=', ',' or NUL")
    if key.startswith("-"):
        raise UserError(f"{where}: key {key!r} may not start with '-'")


def validate_entries(data: Any, source: str) -> list[dict[str, Any]]:
    """`data` is a non-empty list of hyperparameter objects with usable keys (build_runs finds twins)."""
    if not isinstance(data, list):
        raise UserError(f"{source}: expected a JSON array of objects, got {_json_type(data)}")
    if not data:
        raise UserError(f"{source}: the list of runs is empty")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UserError(f"{source}: entry [{i}] must be an object of hyperparameters, got {_json_type(entry)}")
        check_hyperparams(entry, f"{source}: entry [{i}]")
    return data


def check_known(data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Every key of `data` is one of `known`, or a UserError names the first that is not."""
    known = list(known)
    if unknown := [k for k in data if k not in known]:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")


def check_hyperparams(hyperparams: Mapping[str, Any], where: str) -> None:
    """Every key (check_key) and value (check_value) of one set of hyperparameters."""
    if getattr(hyperparams, "duplicate", None) is not None:
        raise UserError(f"{where}: key {hyperparams.duplicate!r} appears twice in one object")  # type: ignore[attr-defined]
    for key, value in hyperparams.items():
        check_key(key, where)
        check_value(value, f"{where}: {key!r}")


def _json_type(value: Any) -> str:
    """A config value as typed (0, [1], 'x'), or its kind where that is long (objects: a subclass of dict)."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    names = {bool: "a boolean", dict: "an object", list: "an array", str: "a string", type(None): "null"}
    return text if len(text) <= 40 else next((n for kind, n in names.items() if isinstance(value, kind)), "a number")


def canonical_json(value: Any) -> str:
    """One spelling per value (sorted keys), for hashing and for telling entries apart."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_abbreviations(pairs: Sequence[str]) -> dict[str, str]:
    """`--abbrev training.bisim_lr=lr env=` -> {"training.bisim_lr": "lr", "env": ""}."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, short = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--abbrev {pair!r}: expected KEY=SHORT (SHORT may be empty)")
        out[key] = short
    return out


def _is_whole(v: Any) -> bool: return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool: return isinstance(v, (int, float)) and not isinstance(v, bool)


def _splits(command: str) -> bool:
    """A command line a shell would split into at least one word."""
    try:
        return bool(_command_line(command))
    except argparse.ArgumentTypeError:
        return False


# The object form's keys: what each must be and its test (SPEC_VALUES: of each value). The one place a key is checked.
SPEC_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "command": ("a command line (not empty, its quotes closed, no NUL)", lambda v: isinstance(v, str) and _splits(v)),
    "arg_style": (f"one of {', '.join(ARG_STYLES)}", lambda v: v in ARG_STYLES),
    "env": ("an object of strings", lambda v: isinstance(v, dict)),
    "defaults": ("an object of hyperparameters", lambda v: isinstance(v, dict)),
    "runs": ("a non-empty array of objects", lambda v: isinstance(v, list) and bool(v)),
    "grid": ("an object of lists", lambda v: isinstance(v, dict)),
    "name_template": ("a string whose { and } go around a hyperparameter key or index", lambda v: isinstance(v, str)
                      and re.fullmatch(r"([^{}]|\{[^{}]+\})*", v)),
    "gpus_per_run": ("a whole number >= 1", lambda v: _is_whole(v) and v >= 1),
    "gpu_memory_gb": ("a finite number > 0", lambda v: _is_number(v) and 0 < v < math.inf),
    "max_processes_per_gpu": ('a whole number >= 1 or "auto"', lambda v: v == "auto" or (_is_whole(v) and v >= 1)),
    "mps": ("true or false", lambda v: isinstance(v, bool)),
    "abbrev": ("an object of strings", lambda v: isinstance(v, dict)),
    "search": ("an object: sampler, n_trials, seed, params, pruner, metric, mode (see docs/search.md)",
               lambda v: isinstance(v, dict)),
    "slurm": ("an object: partition, time, gpus_per_run, cpus_per_run, mem_gb, max_parallel, requeues, params (see "
              "docs/slurm.md)", lambda v: isinstance(v, dict)),
}
SPEC_VALUES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "env": ("a string", lambda v: isinstance(v, str)), "abbrev": ("a string", lambda v: isinstance(v, str)),
    "grid": ("a non-empty list of values, none twice", lambda v: isinstance(v, list) and len(v) == len(
        {canonical_json(x) for x in v}) > 0)}
RUN_SETTINGS = ("gpus_per_run", "gpu_memory_gb")  # in the object form's run entries: settings, not hyperparameters


def check_field(key: str, value: Any, where: str) -> Any:
    """The value of a config key, as SPEC_FIELDS and SPEC_VALUES say it must be (else a UserError)."""
    what, ok = SPEC_FIELDS[key]
    if not ok(value):
        raise UserError(f"{where}: {key!r} must be {what}, got {_json_type(value)}")
    if key in SPEC_VALUES:
        what, ok = SPEC_VALUES[key]
        for name, item in value.items():
            if not ok(item):
                raise UserError(f"{where}: {key!r} value of {name!r} must be {what}, got {_json_type(item)}")
    return value


@dataclasses.dataclass
class SweepSpec:
    """What a config file says: the seed's array form fills `runs` only; the object form can say more."""

    source: str
    runs: list[dict[str, Any]]
    form: str = "array"
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    command: str | None = None
    arg_style: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    name_template: str | None = None
    gpus_per_run: int | None = None
    gpu_memory_gb: float | None = None
    abbrev: dict[str, str] = dataclasses.field(default_factory=dict)
    search: Any = None  # what to search (train_sweep_extras.space.SearchSpec), from the "search" key
    slurm: dict[str, Any] = dataclasses.field(default_factory=dict)  # the "slurm" object (--backend slurm)
    max_processes_per_gpu: int | str | None = None
    mps: bool | None = None


MAX_CONFIG_BYTES = 1 << 30  # a config file larger than this is refused with its size (a pipe: 256 MB read)


def read_bounded(path: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """A file's bytes, refused past `limit` before it is read (a pipe or device such as /dev/zero: a quarter)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if os.path.isfile(path) and size > limit:
            raise UserError(f"{path}: {fmt_bytes(size)}, larger than {fmt_bytes(limit)}: not a config file")
        cap = limit if os.path.isfile(path) else limit // 4
        data = f.read(cap + 1)
    if len(data) > cap:
        raise UserError(f"{path}: larger than {fmt_bytes(cap)} (it reads without end): not a config file")
    return data


def read_json(path: Path) -> Any:
    """A record file's JSON (run.json, sweep.json, best.json), or None where it is missing, unreadable, not JSON,
    nested too deeply, or not a plain file (a FIFO put in its place would be waited on forever)."""
    try:
        return json.loads(path.read_bytes()) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None


def read_json_file(path: str) -> Any:
    """A config file's JSON; every way it cannot be read is a UserError that names the file."""
    try:
        text = read_bounded(path).decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found (pass --config-file)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read config file: {e}") from None
    try:
        data = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise UserError(f"{path}: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read") from None
    if isinstance(data, JsonObject) and data.duplicate is not None:
        raise UserError(f"{path}: key {data.duplicate!r} appears twice in one object")
    return data


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read a config file in either form: a JSON array of runs (the seed's), or an object (docs/config.md)."""
    path = str(path)
    data = read_json_file(path)
    if isinstance(data, list):
        return SweepSpec(path, validate_entries(data, path))
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON array of runs or an object, got {_json_type(data)}")
    check_known(data, SPEC_FIELDS, path)
    given = {key: check_field(key, value, path) for key, value in data.items() if value is not None}
    for key in ("defaults", "grid", "env", "abbrev", "slurm", "search"):  # each key once, no '=' or NUL in one,
        check_hyperparams(given.get(key, {}), f"{path}: {key!r}")  # each value plain (no NUL, NaN, key twice)
    if "search" in given and ("runs" in given or "grid" in given):
        raise UserError(f"{path}: a 'search' searches one space: 'runs' and 'grid' cannot go with it (give shared "
                        "values in 'defaults', lists to choose from as categorical params)")
    runs = validate_entries(given.get("runs", [{}]), f"{path}: 'runs'")
    for i, run in enumerate(runs):
        for key in RUN_SETTINGS:
            if key in run:
                check_field(key, run[key], f"{path}: 'runs' entry [{i}]")
    values = {k: given.get(k) for k in ("command", "arg_style", "name_template", "gpus_per_run", "gpu_memory_gb",
                                        "max_processes_per_gpu", "mps")}
    objects = {k: dict(given.get(k, {})) for k in ("grid", "defaults", "env", "abbrev", "slurm")}
    search = extra("search space")(given["search"], path) if "search" in given else None
    return SweepSpec(path, [dict(r) for r in runs], form="object", search=search, **values, **objects)


def parse_set(pairs: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """--set key=value (and --slurm-param): the value read as JSON (8, 1e-3, true, null, [1,2]), else as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key in out:
            raise UserError(f"{flag} {pair!r}: " + (f"{key!r} is set twice" if sep else "expected KEY=VALUE"))
        check_key(key, f"{flag} {pair!r}")
        try:
            out[key] = json.loads(text, object_pairs_hook=_object)
        except (ValueError, RecursionError):
            out[key] = text
        check_value(out[key], f"{flag} {key}")
    return out


_SIMPLE_KEY = re.compile(r"[A-Za-z_][\w.\-]*")
_SIMPLE_WORDS = (  # the plain values whose reading by Hydra's grammar is known (else hydra-core reads them)
    (re.compile(r"[+-]?(0|[1-9][0-9]*)"), int),
    (re.compile(r"[+-]?((0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(0|[1-9][0-9]*)[eE][+-]?[0-9]+"
                r"|[+-]?(inf|nan)", re.IGNORECASE), float),
    (re.compile(r"true|false", re.IGNORECASE), lambda w: w.lower() == "true"),
    (re.compile(r"null", re.IGNORECASE), lambda w: None), (re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*"), str),
)


class SimpleOverride:
    """`key=value` or `key=a,b,c` of plain numbers, booleans, null and words, read as Hydra reads them (1e-3 a
    float, 8 an int, true, null, adam) without hydra-core, which only richer syntax (range(), interval(),
    quotes, lists, ...) and values of less obvious reading (1.2.3, 007) need."""

    def __init__(self, key: str, words: list[str]) -> None:
        self.key_or_group, self._values = key, [self._scalar(w) for w in words]
        self._sweep = len(words) > 1

    @staticmethod
    def parse(text: str) -> SimpleOverride | None:
        key, _, value = text.partition("=")
        words = value.split(",")
        if not _SIMPLE_KEY.fullmatch(key) or (words != [""] and not all(map(SimpleOverride._known, words))):
            return None
        return SimpleOverride(key, words)

    @staticmethod
    def _known(word: str) -> bool: return any(pattern.fullmatch(word) for pattern, _ in _SIMPLE_WORDS)

    @staticmethod
    def _scalar(word: str) -> Any:
        return next((read(word) for pattern, read in _SIMPLE_WORDS if pattern.fullmatch(word)), word)  # key=: ""

    def is_sweep_override(self) -> bool: return self._sweep
    def sweep_iterator(self) -> Iterator[Any]: return iter(self._values)
    def value(self) -> Any: return self._values[0]


def _parsed_overrides(overrides: Sequence[str]) -> Iterator[tuple[str, str, Any]]:
    """Each override as (text, key, parsed), by Hydra's parser (without hydra-core: SimpleOverride)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:  # (Ctrl+C waits for Hydra's import to end: omegaconf, imported by it, turns it into errors of its own)
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException
    except ImportError:
        parser = None
    else:
        parser = OverridesParser.create()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # (a Ctrl+C meanwhile: KeyboardInterrupt now)
    seen: dict[str, str] = {}
    for text in overrides:
        if parser is None:
            override: Any = SimpleOverride.parse(text)
            if override is None:
                raise UserError(f"override {text!r} is read with Hydra's parser: pip install hydra-core (plain "
                                "key=value and key=a,b need no Hydra)") from None
            key = override.key_or_group
        else:
            try:
                override = parser.parse_override(text)
            except HydraException as e:
                raise UserError(f"override {text!r}: {str(e).splitlines()[0]}") from None
            prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(override.type.name, "")
            if prefix == "~":
                raise UserError(f"override {text!r}: deleting a key (~key) is not supported in a sweep")
            if override.package:
                raise UserError(f"override {text!r}: package overrides (@pkg) are not supported")
            key = prefix + override.key_or_group
        if key in seen:
            raise UserError(f"override {text!r}: {key!r} is already given by {seen[key]!r}; give each key once")
        seen[key] = text
        yield text, key, override


def parse_sweep_overrides(overrides: Sequence[str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Hydra multirun overrides: sweeps (`lr=1e-3,1e-4`: more runs) and plain values (`seed=0`: on every run)."""
    sweeps: dict[str, list[Any]] = {}
    plain: dict[str, Any] = {}
    for text, key, override in _parsed_overrides(overrides):
        if override.is_sweep_override():
            try:
                values = sweep_values(text, override)
            except UserError:
                raise
            except Exception as e:  # interval() and other sweeps that need a search, not a list
                raise UserError(f"override {text!r}: {e} (train_sweep expands lists, choice() and range(); "
                                "interval() needs a search: --search tpe)") from None
            seen_values = [canonical_json(v) for v in values]
            twice = next((v for i, v in enumerate(values) if seen_values[i] in seen_values[:i]), None)
            if len(set(seen_values)) < len(values):
                raise UserError(f"override {text!r}: the value {format_value(twice)} is listed twice (every run would "
                                "have a twin)")
            sweeps[key] = values
        else:
            plain[key] = _plain_value(override.value())
    return sweeps, plain


def sweep_values(text: str, override: Any) -> list[Any]:
    """An override's values; a range() is counted before it is listed (range(0, 10**9) would fill the memory)."""
    value = override.value()
    if all(hasattr(value, a) for a in ("start", "stop", "step")):
        if value.step == 0:
            raise UserError(f"override {text!r}: range() needs a step other than 0")
        if (value.stop - value.start) / value.step > MAX_RUNS:
            raise UserError(f"override {text!r}: range() makes more than {MAX_RUNS:,} values")
    if not (values := [_plain_value(v) for v in override.sweep_iterator()]):  # range(0): not one run
        raise UserError(f"override {text!r} gives no values")
    return values


def _plain_value(value: Any) -> Any:
    """Hydra's parsed values as plain JSON-like Python values."""
    if isinstance(value, dict):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


@dataclasses.dataclass
class Entry:
    """One expanded run before it gets a name: hyperparameters, the keys its name is built from, settings."""

    hyperparams: dict[str, Any]
    name_keys: list[str]
    gpus_per_run: int = 1
    gpu_memory_gb: float | None = None
    config_file: str | None = None
    name: str | None = None  # a name made elsewhere (a search's trial), instead of one from name_keys
    origin: str = ""  # where it came from, for messages: "entry [2]", "'runs' entry [0] with lr=0.1", a file


def expand(spec: SweepSpec, cli_sweeps: Mapping[str, list[Any]] | None = None,
           overrides: Mapping[str, Any] | None = None, gpus_per_run: int | None = None,
           gpu_memory_gb: float | None = None, max_runs: int | None = None, shuffle: bool = False,
           seed: int = 0) -> list[Entry]:
    """The runs of a sweep, in order: each entry of `runs` x each combination of `grid` x each of the command-line
    sweeps (the last key varies fastest). A key's value comes from, weakest first: `defaults`, the entry, `grid`,
    the sweeps, plain overrides and --set. Names come from the keys the entry, grid and sweeps set (not those
    the same for every run: so names stay stable as runs are added). Runs are counted before they are made:
    `shuffle` (with `seed`) orders them repeatably, `max_runs` keeps the first N; over MAX_RUNS runs need
    max_runs (the first N, or with shuffle a sample of N) and are never made whole."""
    import random
    cli_sweeps = dict(cli_sweeps or {})
    overrides = dict(overrides or {})
    keys = [*spec.grid, *cli_sweeps]
    choices = [*spec.grid.values(), *cli_sweeps.values()]
    per_run = math.prod(len(c) for c in choices)
    total = len(spec.runs) * per_run
    if total > MAX_RUNS:
        if not max_runs:
            raise UserError(f"{spec.source}: the sweep has {total:,} runs, more than {MAX_RUNS:,}; pass --max-runs N "
                            "to run the first N of them (with --shuffle: a random sample of N)")
        picks: Sequence[int] = (random.Random(seed).sample(range(total), max_runs) if shuffle
                                else range(min(total, max_runs)))
    else:
        picks = list(range(total))
        if shuffle:
            random.Random(seed).shuffle(picks)
        picks = picks[:max_runs] if max_runs else picks

    def entry(k: int) -> Entry:
        i, rest = divmod(k, per_run)
        combo = []
        for options in reversed(choices):  # the last key varies fastest
            rest, j = divmod(rest, len(options))
            combo.append(options[j])
        swept = dict(zip(keys, reversed(combo)))
        run = spec.runs[i]
        settings = {k: run[k] for k in RUN_SETTINGS if k in run} if spec.form == "object" else {}
        own = {k: v for k, v in run.items() if k not in settings}
        origin = ("entry" if spec.form == "array" else "'runs' entry") + f" [{i}]"
        if swept:
            origin += " with " + " ".join(f"{k}={format_value(v)}" for k, v in swept.items())
        return Entry({**spec.defaults, **own, **swept, **overrides}, list(dict.fromkeys([*own, *keys])),
                     gpus_per_run or settings.get("gpus_per_run") or spec.gpus_per_run or 1,
                     gpu_memory_gb or settings.get("gpu_memory_gb") or spec.gpu_memory_gb, origin=origin)
    return [entry(k) for k in picks]


def select_entries(entries: list[Entry], max_runs: int | None, shuffle: bool, seed: int) -> list[Entry]:
    """--shuffle (with --seed) puts the runs in a random but repeatable order; --max-runs N keeps the first N."""
    if shuffle:
        import random
        entries = list(entries)
        random.Random(seed).shuffle(entries)
    return entries[:max_runs] if max_runs else entries


def expand_config_files(patterns: Sequence[str], overrides: Mapping[str, Any]) -> list[Entry]:
    """--configs: each file (globs expanded here too, for quoted patterns) is one run, named after its stem."""
    import glob
    files: list[str] = []
    for pattern in patterns:
        if not (matches := sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]):
            raise UserError(f"--configs {pattern!r}: no file matches")
        for f in matches:
            if not Path(f).is_file():
                raise UserError(f"--configs: {f}: no such file")
            if f not in files:
                files.append(f)
    return [Entry(dict(overrides), [], config_file=f, origin=f) for f in files]


# ----------------------------------------------------------------------------------------------
# 4. Runs, names and run folders
# ----------------------------------------------------------------------------------------------

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=+-]+")


def clean(text: str) -> str:
    """The one cleaning rule for names: only [A-Za-z0-9._=+-], no '..', no leading or trailing '._-'."""
    text = _UNSAFE_CHARS.sub("_", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"_{2,}", "_", text)
    return text.strip("._-")


def default_short(key: str) -> str:
    """A key's default abbreviation: its last dotted part (`training.epochs` -> `epochs`)."""
    return key.lstrip("+~").rsplit(".", 1)[-1]


LABEL_CHARS = 48  # a run's label in the live view, the summary and plots is cut to this many characters


def label_of(hyperparams: Mapping[str, Any], keys: Iterable[str], fallback: str) -> str:
    """A run as the view shows it: `lr=0.001 seed=2` for `keys`, cut to LABEL_CHARS; `fallback` without keys."""
    def shown(value: Any) -> str:
        return json.dumps(value) if isinstance(value, (list, dict)) else readable(value)
    text = " ".join(f"{default_short(k)}={shown(hyperparams[k])}" for k in keys if k in hyperparams)
    return (text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…") or fallback


def varying_keys(sets: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hyperparameters whose values differ across these runs, in the order they first appear."""
    keys = list(dict.fromkeys(k for hp in sets for k in hp))
    return [k for k in keys if len({canonical_json(hp[k]) if k in hp else None for hp in sets}) > 1]


def run_labels(sets: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each run's label by the keys whose values differ across the sweep (names stay stable as runs are added)."""
    varying = varying_keys(list(sets.values()))
    return {name: label_of(hp, varying, name) for name, hp in sets.items()}


def name_part(key: str, value: Any, abbrev: Mapping[str, str]) -> str:
    """One `short_value` piece of a name. Booleans read `short` / `no_short`; an empty short keeps the value."""
    short = abbrev.get(key, default_short(key))
    if isinstance(value, bool):
        return format_value(value) if not short else short if value else f"no_{short}"
    text = format_value(value)
    return f"{short}_{text}" if short else text


def params_hash(hyperparams: Mapping[str, Any]) -> str:
    """8 hex digits that identify a set of hyperparameters."""
    return hashlib.sha256(canonical_json(dict(hyperparams)).encode()).hexdigest()[:8]


def _with_hash(name: str, hyperparams: Mapping[str, Any], limit: int = MAX_NAME_BYTES) -> str:
    """The name cut to fit `limit` bytes with the hyperparameters' hash: unique, whatever the cut."""
    suffix = "_" + params_hash(hyperparams)
    room = limit - len(suffix)
    cut = name.encode()[:room].decode(errors="ignore").rstrip("._-")
    return (cut + suffix) if cut else suffix[1:]


def run_name(hyperparams: Mapping[str, Any], abbrev: Mapping[str, str] | None = None) -> str:
    """The readable name of one run: `short_value` pieces in the entry's key order, joined by `_`."""
    abbrev = abbrev or {}
    name = clean("_".join(name_part(k, v, abbrev) for k, v in hyperparams.items())) or "run"
    return _with_hash(name, hyperparams) if len(name.encode()) > MAX_NAME_BYTES else name


# Hydra override values. A string goes bare when Hydra reads it back as the same string, else quoted.
_HYDRA_BARE = re.compile(r"[A-Za-z_./][A-Za-z0-9_/\-+.%*@?|:]*")
_HYDRA_KEYWORDS = re.compile(r"(true|false|null|[+-]?inf|[+-]?nan)", re.IGNORECASE)
_HYDRA_DICT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def hydra_value(value: Any) -> str:
    """Render a JSON value in Hydra's override grammar so that the app receives exactly that value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 5e-06, 1.0, inf, nan: all FLOAT tokens in Hydra's grammar
    if isinstance(value, str):
        return _hydra_string(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not _HYDRA_DICT_KEY.fullmatch(k):
                raise UserError(f"dict key {k!r} cannot be passed to Hydra (use letters, digits, '_', '-')")
            items.append(f"{k}:{hydra_value(v)}")
        return "{" + ",".join(items) + "}"
    raise UserError(f"unsupported value {value!r}")


def _hydra_string(text: str) -> str:
    if _HYDRA_BARE.fullmatch(text) and not _HYDRA_KEYWORDS.fullmatch(text) and not re.match(r"\.[0-9]", text):
        return text
    # OmegaConf resolves ${...} even inside quotes: escape it (and double the backslashes before it).
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    # Inside single quotes Hydra un-escapes only backslashes that precede a quote, and trailing ones.
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def hydra_override(key: str, value: Any) -> str:
    """`key=value` as a Hydra command-line override."""
    return f"{key}={hydra_value(value)}"


@dataclasses.dataclass(eq=False)
class Run:
    """One training run: what it is (fixed when made), what its attempts add up to, and what its current attempt
    did (next_attempt keeps a summary and resets it). What only a cluster knows of an attempt is in `job`."""

    # -- what the run is: fixed when it is made
    index: int  # position in the config list
    name: str
    hyperparams: dict[str, Any]
    argv: list[str]
    run_dir: Path
    identity: str = ""  # what makes two runs "the same" for resume: hash of hyperparameters + --command
    label: str = ""  # how the view and the summary show it: the hyperparameters that tell it apart
    argv_template: list[str] = dataclasses.field(default_factory=list)  # argv before {gpu} is filled in
    command_len: int = 0  # how many leading argv words are the command (where placeholders are filled)
    gpus_needed: int = 1  # gpus_per_run
    memory_mb: float | None = None  # gpu_memory_gb: free memory a GPU needs to take this run
    config_file: str | None = None  # --configs: the file passed to the command, copied as config_used<ext>
    trial: int | None = None  # the number of its Optuna trial (a search, or a list with a pruner)
    # -- across its attempts
    attempt: int = 1  # this attempt's number (retries, OOM requeues and resumed sweeps add attempts)
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # earlier attempts, summarized
    retries_used: int = 0
    ooms: int = 0
    min_free_mb: float | None = None  # after an OOM: only a GPU with more free memory than this (or an empty one)
    requeued: dict[str, Any] | None = None  # its ended attempt's record, while it waits to go again (its end if not)
    skipped: bool = False  # already complete in an earlier sweep: not run again
    resumed: bool = False  # paused by its source (freeze-thaw) and going on: TRAIN_SWEEP_RESUME=1, pause not its end
    # -- what its current attempt did (next_attempt resets it)
    state: State = State.PENDING
    gpus: tuple[int, ...] = ()
    start_time: float | None = None  # wall clock (time.time())
    end_time: float | None = None
    started_at: float = 0.0  # scheduler clock, for timeouts and durations
    returncode: int | None = None
    signal_name: str | None = None  # the signal that killed it, if one did
    error: str | None = None  # why it could not start
    metrics: dict[str, Any] | None = None  # the attempt's final metrics (metrics.json over what it printed)
    latest: dict[str, float] = dataclasses.field(default_factory=dict)  # metrics seen while it runs, latest value
    step: int | None = None  # the step of the latest metric seen
    best: float | None = None  # the best value of the ranking metric seen in this attempt
    points: int = 0  # how many values of the ranking metric were seen
    metric_note: str | None = None  # why a complete run has no ranking metric
    free_at_launch_mb: float | None = None  # the GPU's free memory when this attempt started
    pgid: int | None = None  # the process group of its local attempt (auto learns its GPU memory by it)
    job: dict[str, Any] = dataclasses.field(default_factory=dict)  # a cluster launcher's own record of this
    # attempt (Slurm's: slurm_job_id, node, slurm_requeues), kept as it is in run.json, the journal and results
    location: str = ""  # where a cluster runs this attempt, in words ("job 41_3 on node2"); "": its GPUs say it
    reattach: bool = False  # the attempt an earlier sweep left with the launcher: followed, not started again

    def assign(self, gpus: tuple[int, ...]) -> None:
        """The GPUs of this attempt (() is the CPU), filled into {gpu} in the command."""
        self.gpus = gpus
        if self.argv_template:
            text = ",".join(str(g) for g in gpus)
            head = [a.replace("{gpu}", text) for a in self.argv_template[: self.command_len]]
            self.argv = head + self.argv_template[self.command_len :]

    def next_attempt(self, summary: dict[str, Any]) -> None:
        """Keep this attempt's summary (attempt_summary of its record) and reset for the next one."""
        self.attempts.append(summary)
        self.attempt += 1
        self.state, self.gpus, self.job, self.location, self.latest, self.points = State.PENDING, (), {}, "", {}, 0
        self.start_time = self.end_time = self.returncode = self.signal_name = self.error = None
        self.metrics = self.best = self.step = self.metric_note = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to end of this attempt (None until it ended)."""
        return None if self.start_time is None or self.end_time is None else self.end_time - self.start_time

    @functools.cached_property
    def stdout_log(self) -> Path: return self.run_dir / "train_stdout.log"
    @functools.cached_property
    def stderr_log(self) -> Path: return self.run_dir / "train_stderr.log"
    @functools.cached_property
    def combined_log(self) -> Path: return self.run_dir / "combined.log"


def resolve_command(command: str) -> list[str]:
    """Split --command like a shell would; a leading `python`/`python3` means the Python running train_sweep."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UserError(f"--command {command!r}: {e}") from None
    if not argv:
        raise UserError("--command is empty")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def command_problem(argv: Sequence[str], cwd: Path, path: str | None = None) -> str | None:
    """Why the command cannot start (its program, on the runs' PATH, or the Python script it names does not exist)."""
    program = argv[0]
    if os.sep in program and not (cwd / program).exists():
        return f"train command not found: {program}"
    if os.sep not in program and shutil.which(program, path=path) is None:  # (the config's env may set the PATH)
        return f"train command not found on PATH: {program}"
    script = Path(program).name.startswith("python") and len(argv) > 1 and not argv[1].startswith("-")
    return f"train script not found: {argv[1]} (looked in {cwd}; run from the folder that holds it or pass " \
        "--command)" if script and not (cwd / argv[1]).is_file() else None


def run_identity(hyperparams: Mapping[str, Any], command: str) -> str:
    """A run is "the same run" as an earlier one when its hyperparameters and --command text are the same."""
    return params_hash({"hyperparams": dict(hyperparams), "command": command})


def template_name(template: str, hyperparams: Mapping[str, Any], index: int) -> str:
    """--name-template "{env}_lr{training.lr}": fields are hyperparameter keys and {index}, cleaned as in names."""
    def field(m: re.Match[str]) -> str:
        key = m.group(1)
        if not key or not m.group(0).endswith("}"):  # '{p', 'p}', '{}'
            raise UserError(f"--name-template {template!r}: each {{ and }} goes around a hyperparameter key or index")
        if key == "index":
            return str(index)
        if key not in hyperparams:
            raise UserError(f"--name-template: run [{index}] has no hyperparameter {key!r}")
        return format_value(hyperparams[key])
    return clean(re.sub(r"\{([^{}]*)\}?|\}", field, template)) or "run"


def render_args(hyperparams: Mapping[str, Any], style: str) -> list[str]:
    """Hyperparameters as command-line arguments in one of three styles:
    hydra     key=value in Hydra's override grammar (see hydra_value);
    argparse  --key value; true -> --key, false -> --no-key (argparse.BooleanOptionalAction), null -> left
              out (the script's default applies), a list -> --key a b c (nargs), an object -> JSON text;
              a value that starts with '-' is written --key=value so argparse does not take it for a flag;
    equals    --key=value as nanoGPT's configurator reads it (ast.literal_eval, else the text): True, False,
              None, 5e-06, [1, 2]; a string is quoted only where literal_eval would read something else."""
    if style == "hydra":
        return [hydra_override(k, v) for k, v in hyperparams.items()]
    out: list[str] = []
    for key, value in hyperparams.items():
        if style == "equals":
            out.append(f"--{key}={_python_literal(value)}")
        elif isinstance(value, bool):
            out.append(f"--{key}" if value else f"--no-{key}")
        elif value is None:
            continue
        elif isinstance(value, list):
            out += [f"--{key}", *(_arg_text(v) for v in value)]
        else:
            text = _arg_text(value)
            out += [f"--{key}={text}"] if text.startswith("-") else [f"--{key}", text]
    return out


def _arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else str(value)


def _python_literal(value: Any) -> str:
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value  # the configurator keeps it as text
    return repr(value)


def dedupe_names(names: list[str], hash_sources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names that clash (ignoring case), with each other or a file the sweep keeps ('best'), get a hash each."""
    count = Counter(name.lower() for name in names) + Counter(f.lower() for f in OWNED_FILES)
    return [_with_hash(name, hash_sources[i]) if count[name.lower()] > 1 else name for i, name in enumerate(names)]


def build_runs(entries: Sequence[Entry | Mapping[str, Any]], command: Sequence[str], output_dir: Path,
               abbrev: Mapping[str, str] | None = None, command_text: str = "", arg_style: str = "hydra",
               name_template: str | None = None, source: str = "", known: Mapping[str, str] | None = None) -> list[Run]:
    """Expanded entries -> Runs: a unique name, a folder in output_dir, the argv (the command with its placeholders,
    the --configs file, the hyperparameters in `arg_style`). `known` (identity -> name, from the journal): a run
    an earlier sweep ran keeps its name there, so that a clash renames only the new run."""
    entries = [e if isinstance(e, Entry) else Entry(dict(e), list(e)) for e in entries]
    sources = [e.hyperparams if e.config_file is None else {"config_file": e.config_file, **e.hyperparams}
               for e in entries]
    seen: dict[str, int] = {}
    for i, src in enumerate(sources):
        canon = canonical_json(src)
        if canon in seen:
            first, second = (entries[j].origin or f"run [{j}]" for j in (seen[canon], i))
            raise UserError(f"{source + ': ' if source else ''}{first} and {second} are identical runs "
                            "(the same hyperparameters)")
        seen[canon] = i
    text, style = command_text or shlex.join(command), "" if arg_style == "hydra" else f" [{arg_style}]"
    identities = [run_identity(e.hyperparams, text + (f" {e.config_file} {_file_hash(e.config_file)}" if e.config_file
                                                      else "") + style) for e in entries]
    if name_template:
        names = [template_name(name_template, e.hyperparams, i) for i, e in enumerate(entries)]
        names = [_with_hash(n, s) if len(n.encode()) > MAX_NAME_BYTES else n for n, s in zip(names, sources)]
        first_of: dict[str, int] = {}
        for i, name in enumerate(names):
            if name.lower() in first_of:
                raise UserError(f"--name-template gives runs [{first_of[name.lower()]}] and [{i}] the same name "
                                f"{name!r}")
            first_of[name.lower()] = i
    else:
        base = [e.name if e.name is not None else (clean(Path(e.config_file).stem) or "run") if e.config_file
                is not None else run_name({k: e.hyperparams[k] for k in e.name_keys}, abbrev) for e in entries]
        names = dedupe_names(base, sources)
        if known:
            names = _keep_known_names(names, base, sources, identities, known)
    root = output_dir.resolve()
    runs = []
    for i, (entry, name) in enumerate(zip(entries, names)):
        run_dir = root / name  # a folder made where it exists already must be the sweep's own (see owned())
        if os.sep in name or name in (".", ".."):  # names are cleaned; this guards the rule itself
            raise UserError(f"entry [{i}]: run name {name!r} would leave the output folder")
        if name.lower() in {f.lower() for f in OWNED_FILES} or name.lower().startswith(f"{STUDY}.lock"):
            raise UserError(f"run [{i}] would be named {name!r}, a file the sweep keeps in its output folder; "
                            "give it another name")
        head = [a.replace("{name}", name).replace("{run_dir}", str(run_dir)) for a in command]
        if entry.config_file is not None:
            head.append(entry.config_file)
        argv = [*head, *render_args(entry.hyperparams, arg_style)]
        runs.append(Run(i, name, dict(entry.hyperparams), argv, run_dir, identity=identities[i],
                        argv_template=list(argv), command_len=len(head), gpus_needed=entry.gpus_per_run,
                        memory_mb=None if entry.gpu_memory_gb is None else entry.gpu_memory_gb * 1024,
                        config_file=entry.config_file))
    return runs


def _keep_known_names(names: list[str], base: list[str], sources: Sequence[Mapping[str, Any]],
                      identities: Sequence[str], known: Mapping[str, str]) -> list[str]:
    """Give back to each run an earlier sweep ran its name then (plain or hashed), unless two names would clash."""
    kept = list(names)
    for i, identity in enumerate(identities):
        prior = known.get(identity)
        if prior and prior != kept[i] and prior in (base[i], _with_hash(base[i], sources[i])):
            kept[i] = prior
    lowered = [n.lower() for n in kept]
    if len(set(lowered)) < len(lowered):
        clashing = {n for n in lowered if lowered.count(n) > 1}
        kept = [n if n.lower() not in clashing else names[i] for i, n in enumerate(kept)]
        if len({n.lower() for n in kept}) < len(kept):
            return names
    return kept


def _file_hash(path: str) -> str:
    """12 hex digits of a --configs file's content: part of its run's identity."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


Journal = dict[str, list[dict[str, Any]]]  # records of finished attempts by run name, oldest first


def owned(folder: Path, name: str) -> bool:
    """Did train_sweep make this folder (its mark, or a run.json of that run from an earlier version)?"""
    if (folder / RUN_MARK).exists():
        return True
    return isinstance(record := read_json(folder / "run.json"), dict) and record.get("model_name") == name


SET_ASIDE = "~"  # <name>~1, ~2, ...: a run folder (or journal, study) set aside; never in a run name


def set_aside(path: Path) -> Path:
    """Rename path to path~1 (or ~2, ...: the first free one)."""
    k = 1
    while path.with_name(f"{path.name}{SET_ASIDE}{k}").exists():
        k += 1
    target = path.with_name(f"{path.name}{SET_ASIDE}{k}")
    path.rename(target)
    return target


def archive_attempt_files(run: Run) -> None:
    """Before an attempt starts, move an earlier attempt's logs and run.json into attempt_<n>/."""
    if not run.stdout_log.exists() and not run.stderr_log.exists():
        return
    record = read_json(run.run_dir / "run.json")
    n = record["attempt"] if isinstance(record, dict) and _is_whole(record.get("attempt")) else run.attempt - 1
    folder = run.run_dir / f"attempt_{max(n, 1)}"
    if folder.exists():
        set_aside(folder)  # an older folder of that name (from a --rerun-less restart) is kept as attempt_n~1
    folder.mkdir()
    for name in ("train_stdout.log", "train_stderr.log", "combined.log", "run.json", "metrics.json", "metrics.jsonl",
                 SERIES):
        if (run.run_dir / name).exists():
            os.replace(run.run_dir / name, folder / name)


# ----------------------------------------------------------------------------------------------
# 5. GPU probe
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GpuReading:
    """What NVML says about one GPU at one moment."""

    index: int
    name: str = ""
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    utilization: int | None = None  # percent, None when NVML cannot tell
    pids: frozenset[int] = frozenset()  # compute processes on it (any user's, as far as NVML shows)
    pid_mb: Mapping[int, float | None] = dataclasses.field(default_factory=dict)  # their memory (None: unknown)

    @property
    def processes(self) -> int: return len(self.pids)


class NvmlProbe:
    """All NVML calls live here. Indexes are NVML's, which are nvidia-smi's (PCI bus order)."""

    def __init__(self) -> None:
        import pynvml  # nvidia-ml-py; imported here so that the tool runs without a GPU
        self._nvml = pynvml
        pynvml.nvmlInit()
        self.count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        self.failed: dict[int, str] = {}  # GPUs whose NVML calls keep failing, with the error
        self._failing: dict[int, tuple[float, int]] = {}  # GPUs whose calls failed lately: since when, how often

    def name(self, index: int) -> str:
        name = self._nvml.nvmlDeviceGetName(self._handles[index])
        return name.decode() if isinstance(name, bytes) else str(name)

    def uuids(self, indexes: Iterable[int]) -> list[str]:
        """The GPUs' UUIDs (GPU-...); empty where NVML cannot tell one of them."""
        try:
            uuids = [self._nvml.nvmlDeviceGetUUID(self._handles[i]) for i in indexes]
        except self._nvml.NVMLError:
            return []
        return [u.decode() if isinstance(u, bytes) else str(u) for u in uuids]

    def read(self, indexes: Iterable[int]) -> dict[int, GpuReading]:
        """One reading per GPU. A GPU whose NVML calls fail is left out; after NVML_FAILS failures in a row over at
        least NVML_FAIL_S, it goes in `failed` (a transient error takes no GPU out)."""
        out = {}
        for i in indexes:
            if i in self.failed:
                continue
            try:
                out[i] = self._read_one(i)
                self._failing.pop(i, None)
            except self._nvml.NVMLError as e:
                first, count = self._failing.get(i, (time.monotonic(), 0))
                self._failing[i] = (first, count + 1)
                if count + 1 >= NVML_FAILS and time.monotonic() - first >= NVML_FAIL_S:
                    self.failed[i] = str(e)
        return out

    def _read_one(self, i: int) -> GpuReading:
        nv, handle = self._nvml, self._handles[i]
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        try:
            util: int | None = nv.nvmlDeviceGetUtilizationRates(handle).gpu
        except nv.NVMLError:
            util = None
        pid_mb: dict[int, float | None] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            with suppress(nv.NVMLError, AttributeError):
                for p in getattr(nv, getter)(handle):
                    used = getattr(p, "usedGpuMemory", None)  # None where the driver does not tell (containers)
                    mb = used / MB if isinstance(used, int) else None
                    before = pid_mb.get(p.pid)
                    pid_mb[p.pid] = before if mb is None else mb + (before or 0.0)
        return GpuReading(i, self.name(i), mem.used / MB, mem.total / MB, util, frozenset(pid_mb), pid_mb)

    def close(self) -> None:
        with suppress(Exception): self._nvml.nvmlShutdown()


def open_probe() -> tuple[NvmlProbe | None, str]:
    """An NVML probe, or None and the reason there is none (no pynvml, no driver, no GPU)."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        probe = NvmlProbe()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML is not available ({e})"
    if probe.count == 0:
        probe.close()
        return None, "NVML reports no GPU"
    return probe, ""


# ----------------------------------------------------------------------------------------------
# 6. Placement and outcome rules (pure functions; GpuPool holds the GPUs' state)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Policy:
    """How runs are placed. `memory_threshold_mb` None means slots only (no NVML readings)."""

    max_per_gpu: int = 1
    memory_threshold_mb: float | None = 40.0 * 1024
    max_parallel: int | None = None  # cap on runs at once over all GPUs
    auto: bool = False  # --max-processes-per-gpu auto: the extras' Packer decides how many runs a GPU takes
    cpu_cores: int = 1  # ... bounded by the CPU cores the sweep may use
    mps: bool = False  # --mps: the runs are clients of the sweep's MPS daemon (said here; MpsDaemon runs it)
    settle_timeout_s: float = SETTLE_TIMEOUT_S
    settle_stable_s: float = SETTLE_STABLE_S
    settle_growth_mb: float = SETTLE_GROWTH_MB

    def describe(self, gpus: Sequence[int]) -> str:
        """The placement in one line, for --dry-run and sweep.log."""
        where = "the CPU" if list(gpus) == [CPU] else "GPU " + " ".join(str(g) for g in gpus)
        if self.auto:
            text = extra("packing").describe(self, where)
        else:
            text = f"up to {self.max_per_gpu} run(s) at once on {'each of ' if len(gpus) > 1 else ''}{where}"
            text += f", at most {self.max_parallel} in all" if self.max_parallel else ""
            text += " (slots only: no memory readings)" if self.memory_threshold_mb is None else (
                f"; a GPU takes a run while its used memory is below {self.memory_threshold_mb / 1024:g} GB, "
                "lowest memory use first, then fewest processes")
        return text + ("; under MPS (--mps): the runs on a GPU compute at once" if self.mps else "")


@dataclasses.dataclass
class _Settling:
    since: float  # when the run was launched
    baseline_mb: float  # the GPU's used memory just before
    samples: list[tuple[float, float]]  # (time, used_mb) seen since


class SettleTracker:
    """A run just launched has not allocated its memory yet, so its GPU's reading is stale: the GPU takes no
    more runs until its memory grew by `settle_growth_mb` and then held within max(64 MB, 2%) for
    `settle_stable_s`, or `settle_timeout_s` passed, or the run ended."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._gpus: dict[int, _Settling] = {}

    def launched(self, gpu: int, now: float, used_mb: float) -> None: self._gpus[gpu] = _Settling(now, used_mb, [])
    def ended(self, gpu: int) -> None: self._gpus.pop(gpu, None)

    def observe(self, gpu: int, now: float, used_mb: float) -> None:
        s = self._gpus.get(gpu)
        if s is not None:
            s.samples.append((now, used_mb))
            horizon = now - 2 * self.policy.settle_stable_s
            while len(s.samples) > 2 and s.samples[1][0] < horizon:
                s.samples.pop(0)

    def settling(self, gpu: int, now: float) -> bool:
        s = self._gpus.get(gpu)
        if s is None:
            return False
        if now - s.since >= self.policy.settle_timeout_s or self._stable(s, now):
            del self._gpus[gpu]
            return False
        return True

    def _stable(self, s: _Settling, now: float) -> bool:
        if not s.samples or (latest := s.samples[-1][1]) < s.baseline_mb + self.policy.settle_growth_mb:
            return False
        tolerance = max(64.0, 0.02 * latest)
        steady_since = now
        for t, mb in reversed(s.samples):  # the first sample of the latest steady stretch
            if abs(mb - latest) > tolerance:
                break
            steady_since = t
        return steady_since <= now - self.policy.settle_stable_s


def pick_gpus(gpus: Sequence[int], running: Mapping[int, int], readings: Mapping[int, GpuReading] | None,
              settling: Callable[[int], bool], policy: Policy, n: int = 1, min_free_mb: float | None = None,
              need_mb: float | None = None, pending_mb: Callable[[int], float] | None = None,
              limits: Mapping[int, int] | None = None) -> tuple[tuple[int, ...] | None, str]:
    """Choose the GPU(s) for the next run, or None and why it must wait.

    A GPU takes a run while this sweep runs fewer than `max_per_gpu` on it (`limits`, auto: its own; none for a run
    of n > 1 GPUs), its used memory (everyone's) is below the threshold and its reading is not stale after a launch:
    lowest memory use first, then fewest processes, then lowest index. Without readings: fewest runs of ours, then
    lowest index. `need_mb` (gpu_memory_gb): free memory less what recent runs declared but have not allocated
    (`pending_mb`) must cover it (no settle wait). `min_free_mb` (after an OOM): more free memory, or an empty GPU."""
    total = sum(running.values())
    if policy.max_parallel is not None and total >= policy.max_parallel:
        return None, f"--max-parallel {policy.max_parallel} reached"
    limit = 1 if n > 1 else policy.max_per_gpu
    free = [g for g in gpus if running.get(g, 0) < (min(limit, limits[g]) if limits is not None else limit)]
    if len(free) < n:
        if n > 1:
            return None, f"a run of {n} GPUs waits for {n} GPUs without runs ({len(free)} now)"
        return None, "every GPU has its maximum number of runs"
    if readings is None or policy.memory_threshold_mb is None:
        if min_free_mb is not None:
            free = [g for g in free if running.get(g, 0) == 0]
            if len(free) < n:
                return None, "after running out of memory it waits for a GPU of its own"
        return tuple(sorted(free, key=lambda g: (running.get(g, 0), g))[:n]), "free slot"
    reasons, candidates = [], []
    for g in free:
        r = readings.get(g)
        if r is None:
            reasons.append(f"GPU {g}: no reading")
            continue
        free_mb = r.memory_total_mb - r.memory_used_mb
        if r.memory_used_mb >= policy.memory_threshold_mb:
            reasons.append(f"GPU {g}: {r.memory_used_mb / 1024:.1f} GB used >= "
                           f"{policy.memory_threshold_mb / 1024:g} GB (--memory-threshold-gb)")
        elif need_mb is not None and free_mb - (pending_mb(g) if pending_mb else 0.0) < need_mb:
            reasons.append(f"GPU {g}: less than the {need_mb / 1024:g} GB the run needs is free")
        elif need_mb is None and settling(g):
            reasons.append(f"GPU {g}: waiting for the last run's memory to show")
        elif min_free_mb is not None and not (free_mb > min_free_mb or (r.processes == 0 and running.get(g, 0) == 0)):
            reasons.append(f"GPU {g}: not more free memory than when the run ran out of it "
                           f"({min_free_mb / 1024:.1f} GB)")
        else:
            candidates.append(r)
    if len(candidates) < n:
        return None, "; ".join(reasons) or f"a run of {n} GPUs waits for {n} free GPUs"
    best = sorted(candidates, key=lambda r: (r.memory_used_mb, max(r.processes, running.get(r.index, 0)), r.index))[:n]
    why = ", ".join(f"GPU {r.index}: {r.memory_used_mb / 1024:.1f} GB used, {r.processes} process(es)" for r in best)
    return tuple(r.index for r in best), why


class MemoryPledges:
    """gpu_memory_gb: memory that runs launched recently on a GPU declared but may not have allocated yet: for
    those launched within the settle timeout, their declared total less the GPU's growth since the earliest
    started (never below 0): conservative when several start together, released as they allocate."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._by_gpu: dict[int, list[tuple[float, float, float, Run]]] = {}  # (launched, baseline, need, run)

    def launched(self, gpu: int, now: float, used_mb: float, need_mb: float, run: Run) -> None:
        self._by_gpu.setdefault(gpu, []).append((now, used_mb, need_mb, run))

    def ended(self, gpu: int, run: Run) -> None:
        self._by_gpu[gpu] = [p for p in self._by_gpu.get(gpu, []) if p[3] is not run]

    def pending_mb(self, gpu: int, now: float, used_mb: float) -> float:
        live = [p for p in self._by_gpu.get(gpu, []) if now - p[0] < self.timeout_s]
        self._by_gpu[gpu] = live
        if not live:
            return 0.0
        growth = max(0.0, used_mb - min(p[1] for p in live))
        return max(0.0, sum(p[2] for p in live) - growth)


AUTO_MAX_PER_GPU = 64  # --max-processes-per-gpu auto: train_sweep_extras/packing.py decides below this


class NoGpuLeft(Exception):
    """Every GPU of the sweep was taken out (its NVML calls kept failing): nothing new can start."""


class GpuPool:
    """The sweep's GPUs and what runs on them: `place` (pick_gpus, counting memory a launch has not shown yet),
    `release`. NVML is read at most once a tick of the loop (`read(now)`); the live view shows that reading."""

    def __init__(self, gpus: Sequence[int], policy: Policy, probe: NvmlProbe | None,
                 group_of: Callable[[int], int | None] | None = None,
                 footprint_cache: dict[str, Any] | None = None) -> None:
        """`footprint_cache` (auto): the command, cwd and GPU model under which footprints are remembered."""
        self.gpus, self.policy, self.probe = list(gpus), policy, probe
        self.running: dict[int, int] = {g: 0 for g in self.gpus}
        self.settle, self.pledges = SettleTracker(policy), MemoryPledges(policy.settle_timeout_s)
        self.readings: dict[int, GpuReading] = {}  # the latest reading, shared with the reporters
        self._read_at: float | None = None
        self.notes: list[str] = []  # GPUs taken out (and auto's decisions) since the loop last looked
        self.on_gpu: dict[int, list[Run]] = {g: [] for g in self.gpus}
        self.auto = extra("packing").open_packer(self, policy.max_parallel or policy.cpu_cores, group_of,
                                                 footprint_cache) if policy.auto and probe is not None else None

    @property
    def reads_memory(self) -> bool: return self.probe is not None and self.policy.memory_threshold_mb is not None
    @property
    def threshold_mb(self) -> float | None: return self.policy.memory_threshold_mb

    def free_mb(self, gpu: int) -> float | None:
        reading = self.readings.get(gpu) if self.probe is not None else None
        return None if reading is None else reading.memory_total_mb - reading.memory_used_mb

    @property
    def slots(self) -> int:
        per_gpu = self.policy.max_per_gpu if self.auto is None else max(1, sum(self.running.values()) // max(
            1, len(self.gpus)))
        return max(1, min(self.policy.max_parallel or 10**9, per_gpu * len(self.gpus)))

    def slot_free(self) -> bool:
        total = sum(self.running.values())
        if self.policy.max_parallel is not None and total >= self.policy.max_parallel:
            return False
        if self.auto is not None:  # place() says why a GPU takes no more (and the loop polls NVML meanwhile)
            return self.auto.slot_free()
        return any(n < self.policy.max_per_gpu for n in self.running.values())

    def read_due(self, now: float) -> float | None:
        """auto: NVML is read at least every second while runs run (footprints, utilization, CPU load)."""
        return None if self.auto is None or not self.busy() else (self._read_at or now) + self.auto.read_every()

    def busy(self) -> bool: return any(self.running.values())

    def unplaceable(self, run: Run) -> str | None:
        """Why the run can never start here (GPUs were taken out), or None."""
        return None if run.gpus_needed <= len(self.gpus) else (
            f"it needs {run.gpus_needed} GPUs and {len(self.gpus)} are left (the others were taken out: their NVML "
            "calls failed)")

    def read(self, now: float) -> dict[int, GpuReading] | None:
        """This tick's NVML reading (None: slots only); an idle GPU whose calls keep failing is taken out
        (NoGpuLeft when none is left)."""
        if self.probe is None:
            return None
        if self._read_at != now:
            self._read_at = now
            self.readings = self.probe.read(self.gpus)
            for g, r in self.readings.items():
                self.settle.observe(g, now, r.memory_used_mb)
            if self.auto is not None:
                self.auto.observe(now, self.readings, self.on_gpu)
                self.notes += self.auto.notes
                self.auto.notes.clear()
            for g, err in list(self.probe.failed.items()):
                if g in self.running and self.running[g] == 0:
                    self.gpus.remove(g)
                    del self.running[g]
                    self.settle.ended(g)
                    self.notes.append(f"warning: GPU {g} taken out of the pool: its NVML calls fail ({err})")
            if not self.gpus:
                raise NoGpuLeft("every GPU failed its NVML calls; nothing left to run on")
        return self.readings if self.policy.memory_threshold_mb is not None else None

    def place(self, run: Run, now: float, min_free_mb: float | None = None) -> tuple[tuple[int, ...] | None, str]:
        """The GPU(s) for `run` now, or None and why it must wait."""
        readings = self.read(now)

        def pending(gpu: int) -> float:
            reading = readings.get(gpu) if readings else None
            return self.pledges.pending_mb(gpu, now, reading.memory_used_mb) if reading is not None else 0.0

        if run.gpus_needed > len(self.gpus):
            return None, f"it needs {run.gpus_needed} GPUs and {len(self.gpus)} are left"
        if self.auto is None:
            return pick_gpus(self.gpus, self.running, readings, lambda gpu: self.settle.settling(gpu, now),
                             self.policy, run.gpus_needed, min_free_mb, run.memory_mb, pending)
        gpus, why = self.auto.place(run, now, min_free_mb, readings)  # (its own pending memory)
        self.notes += self.auto.notes
        self.auto.notes.clear()
        return gpus, why

    def launched(self, run: Run, gpus: Sequence[int], now: float) -> None:
        need = self.auto.launched(run) if self.auto is not None else run.memory_mb
        for g in gpus:
            self.running[g] += 1
            self.on_gpu.setdefault(g, []).append(run)
            r = self.readings.get(g) if self.probe is not None else None
            if r is not None and need is not None:
                self.pledges.launched(g, now, r.memory_used_mb, need, run)
            elif r is not None:
                self.settle.launched(g, now, r.memory_used_mb)

    def release(self, run: Run) -> None:
        for g in run.gpus or (CPU,):
            if g in self.running:
                self.running[g] -= 1
            if run in self.on_gpu.get(g, ()):
                self.on_gpu[g].remove(run)
            self.settle.ended(g)
            self.pledges.ended(g, run)

    def ended(self, run: Run, now: float) -> None:
        """An attempt ended and was classified: auto learns from it (its peak; out of memory: more margin)."""
        if self.auto is not None:
            self.auto.ended(run, now, run.state == State.OOM)
            self.notes += self.auto.notes
            self.auto.notes.clear()

    def packing(self) -> str | None:
        """auto's line for the live view: the footprints, and why GPUs take no more runs."""
        return None if self.auto is None else self.auto.line()

    def summary(self) -> list[str]: return [] if self.auto is None else self.auto.summary()


# What a launcher knows about why an attempt ended, beyond its return code.
HINT_TIMEOUT, HINT_PREEMPTED, HINT_NODE_FAILURE, HINT_OOM = "timeout", "preempted", "node_failure", "oom"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as its launcher saw it."""

    returncode: int | None  # None: unknown (the launcher lost track of it)
    ended_at: float | None = None  # wall-clock time the attempt's main process ended (None: now)
    hint: str | None = None  # one of the HINT_* when the launcher knows more (Slurm's TIMEOUT, PREEMPTED, ...)
    note: str | None = None  # something the user should hear about (processes that could not be ended)
    error: str | None = None  # why it ended without an exit code of its own (Slurm refused or lost its job)
    started_at: float | None = None  # wall-clock time its command began, where that is not when it was started
    rerun: str | None = None  # why it runs again whatever its state (it ended while no sweep followed it)
    ran: bool = True  # False: it never began (a cluster's job cancelled or refused while queued): no duration


def is_oom(text: str, patterns: Sequence[str]) -> bool:
    """Does this output (the end of a run's stderr and stdout) say the GPU ran out of memory?"""
    return any(re.search(p, text) for p in patterns)


def classify(outcome: Outcome, ending: State | None, oom: Callable[[], bool]) -> State:
    """The state of an ended attempt: why the sweep ended it (timeout, interrupted) wins, then the launcher's
    hint, then the return code; `oom` (reads logs) is asked only for a failure. (A run that exited before the
    sweep ended it keeps its code: Launcher.stop says so and `ending` stays None. One that exits 0 after
    SIGTERM did not finish: it is interrupted, and resume runs it again.)"""
    if ending is not None:
        return ending
    if outcome.hint == HINT_TIMEOUT:
        return State.TIMEOUT
    if outcome.hint in (HINT_PREEMPTED, HINT_NODE_FAILURE):
        return State.INTERRUPTED
    if outcome.returncode == 0:
        return State.COMPLETE
    return State.OOM if outcome.hint == HINT_OOM or oom() else State.FAILED


def requeue_reason(run: Run, retries: int, max_oom_requeues: int) -> str | None:
    """Why an ended attempt is requeued (out of memory, --retries), or None; the caller counts it."""
    if run.state == State.OOM and run.ooms < max_oom_requeues:
        return f"out of GPU memory: requeued ({run.ooms + 1}/{max_oom_requeues}) for a GPU with more free memory"
    if run.state == State.FAILED and run.retries_used < retries:
        return f"retry {run.retries_used + 1}/{retries} queued after the runs not yet started"
    return None


def broken_setup(failures: Sequence[tuple[str, str, str]], runs: int = FAIL_FAST_RUNS) -> str | None:
    """Why the sweep should stop launching, or None: the first `runs` runs to end (name, last stderr line, log)
    all failed within FAIL_FAST_S with the same line (the caller empties the list for good once a run
    completes, runs longer or fails otherwise)."""
    names = list(dict.fromkeys(name for name, _, _ in failures))
    if len(names) < runs or len({line for _, line, _ in failures}) != 1:
        return None
    _, line, log = failures[0]
    return (f"the first {runs} runs all failed within {FAIL_FAST_S:g}s with the same error: {one_line(line, 300)} "
            f"(see {log}); no more runs are started: fix it and run the same command again (--no-fail-fast keeps "
            "launching)")


# ----------------------------------------------------------------------------------------------
# 7. Sources and launchers: where runs come from, where they run (process supervision, the guardian)
# ----------------------------------------------------------------------------------------------

class RunSource(Protocol):
    """Where runs come from: the config list (ListSource), or a search that makes each run as a slot frees up.
    Whether a run already completed in an earlier sweep (resume) is decided before, not here."""

    def next(self) -> Run | None:
        """The next run to start (made now, named and built like any other; or a paused one going on); None: none."""

    def pending(self) -> int:
        """How many more runs it will give, as far as it knows (progress and ETA)."""

    def remaining(self) -> list[Run]:
        """The runs it would still give, for the .partial file of an interrupted sweep."""

    def report(self, run: Run, step: int | None, values: Mapping[str, float]) -> str | None:
        """Metrics a running run has just written; why it should stop now (a pruner's verdict), or None."""

    def finished(self, run: Run) -> None:
        """A run ended for good (not requeued); also called when its record could not be written."""

    def wake_at(self, now: float) -> float | None:
        """When the loop should wake up for the source (a search's time budget), or None."""

    def prepare(self) -> None:
        """The loop has started what it could: work that should not delay a start (a search's next trial)."""

    def status(self) -> str | None:
        """A line on the source for the live view (a search's progress and best so far), or None."""

    def summary(self) -> list[str]:
        """Lines for the end of the summary (the best parameters found)."""

    def close(self) -> None:
        """The sweep is over: what was asked and did not end is put back for the next sweep."""


class LaunchError(Exception):
    """A run's program could not be started (not found, not executable): the run fails, the sweep goes on."""


class Launcher(Protocol):
    """Where runs run: local processes or a cluster's jobs; only the launcher touches what its handle holds. One
    that outlives a kill -9 of the sweep may have `screen(tty | None)`: told the terminal the live view holds, it
    gives that terminal back if the sweep dies (LocalLauncher's guardian)."""

    def start(self, run: Run, gpus: tuple[int, ...]) -> Any:
        """Start the run's attempt on these GPUs (() is the CPU) in its folder, its logs there. LaunchError if its
        program cannot start; OutputError if its folder cannot be written."""

    def poll(self, handle: Any) -> Outcome | None:
        """None while any process of the attempt lives; its Outcome once all are gone."""

    def stop(self, handle: Any, hard: bool) -> bool:
        """End the attempt: SIGTERM, or SIGKILL if `hard`. False if its main process had exited (its code stands)."""

    def observe(self, handle: Any) -> list[str]:
        """The stdout lines the attempt wrote since the last call (complete lines only)."""

    def next_poll(self, now: float) -> float | None:
        """When poll() is due without another event (leftovers, a cluster's jobs), or None."""

    def flush(self) -> None:
        """The loop has started what it could: a cluster submits those runs now (one job array)."""

    def describe(self) -> list[str]:
        """Lines on where the runs are, for the live view ([]: the GPU rows say it)."""

    def queued(self) -> int:
        """How many started attempts wait in a cluster's queue, not running yet (0 locally)."""

    def withdraw(self, handle: Any) -> bool:
        """Take back an attempt that waits in a cluster's queue (it never runs): True if it was one."""
    notes: list[str]  # what the user should hear of (a job requeued by the cluster), taken by the loop
    own_timeout: bool  # the launcher ends runs at their time limit itself (a cluster's); else the loop does

    def stopping(self, running: int) -> str:
        """How the sweep's running attempts are being ended, for the line said on Ctrl+C."""

    def detached(self, runs: Sequence[Run], pending: int) -> list[str]:
        """What to say when the sweep exits leaving these runs to the cluster (--detach)."""

    def close(self, detach: bool = False) -> None:
        """Every attempt has ended (or, with detach, is left running where a cluster keeps it)."""


class Placement(Protocol):
    """Where and how many runs may start: this machine's GPUs (GpuPool), or a cluster's slots."""

    gpus: list[int]  # the GPUs the live view shows a row for ([] on a cluster)
    readings: Mapping[int, GpuReading]  # the latest NVML reading of each, for the live view
    notes: list[str]  # what placing learned or decided (a GPU taken out, auto's footprint), taken by the loop

    @property
    def slots(self) -> int:
        """How many runs can run at once now (the ETA divides by it)."""

    @property
    def reads_memory(self) -> bool:
        """Runs wait for memory, not only for a slot: the loop polls while they wait."""

    @property
    def threshold_mb(self) -> float | None:
        """The used memory at which a GPU takes no new run, for the live view (None: not by memory)."""

    def slot_free(self) -> bool:
        """A run could start now, as far as slots go."""

    def busy(self) -> bool:
        """Some run of this sweep holds a slot."""

    def unplaceable(self, run: Run) -> str | None:
        """Why the run can never start here (GPUs were taken out), or None."""

    def read(self, now: float) -> Any:
        """Take this tick's reading (NoGpuLeft when no GPU is left to run on)."""

    def read_due(self, now: float) -> float | None:
        """When the next reading is due without any other event, or None."""

    def place(self, run: Run, now: float, min_free_mb: float | None = None) -> tuple[tuple[int, ...] | None, str]:
        """The GPUs for `run` now ((CPU,) for the CPU or a cluster's choice), or None and why it must wait."""

    def free_mb(self, gpu: int) -> float | None:
        """The GPU's free memory in this tick's reading, or None."""

    def launched(self, run: Run, gpus: Sequence[int], now: float) -> None:
        """The run was started on these GPUs."""

    def release(self, run: Run) -> None:
        """The run's attempt has ended: its slots are free."""

    def ended(self, run: Run, now: float) -> None:
        """The ended attempt was classified (its state set): learn from it."""

    def packing(self) -> str | None:
        """A line on how runs are packed (auto), or None."""

    def summary(self) -> list[str]:
        """Lines for the sweep's summary (a tip on packing), or none."""


class ListSource:
    """The runs of the config list, in order: the first RunSource."""

    def __init__(self, runs: Iterable[Run]) -> None: self._queue = deque(runs)
    def next(self) -> Run | None: return self._queue.popleft() if self._queue else None
    def pending(self) -> int: return len(self._queue)
    def remaining(self) -> list[Run]: return list(self._queue)

    def report(self, run: Run, step: int | None, values: Mapping[str, float]) -> str | None:
        """A fixed list does not change course on metrics."""
        return None

    def finished(self, run: Run) -> None:
        """A fixed list has nothing to learn from a result."""

    def wake_at(self, now: float) -> float | None: return None

    def prepare(self) -> None:
        """Nothing to prepare: the list is made."""

    def status(self) -> str | None: return None
    def summary(self) -> list[str]: return []

    def close(self) -> None:
        """Nothing to close."""


def guardian_main(sweep_id: str, grace: str, cgroups: str) -> None:
    """The guardian, a process that outlives train_sweep (Guardian starts it). It reads "+ PGID START" and "- PGID"
    lines on stdin (START: when the group's leader started); when stdin closes with groups still registered or runs
    in the cgroups (train_sweep was SIGKILLed, OOM-killed, lost its terminal), it ends those, the processes in the
    runs' cgroups and every process carrying this TRAIN_SWEEP_ID: SIGTERM, then SIGKILL after the grace period,
    until none is left. A group whose leader's PID was reused is never signalled."""
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    groups: dict[int, str] = {}
    screen, sweep = "", os.getppid()  # "t TTY": the live view holds that terminal's alternate screen ("t -": not)
    for line in sys.stdin:
        op, pgid, *start = line.split()
        if op == "+":
            groups[int(pgid)] = start[0] if start else ""
        elif op == "-":
            groups.pop(int(pgid), None)
        elif op == "t":
            screen = "" if pgid == "-" else pgid
    if screen:  # train_sweep died with the live view up: the terminal back to its normal screen, its cursor shown
        with suppress(OSError), open(screen, "w") as tty:
            tty.write(f"\x1b[?25h\x1b[?1049l\ntrain_sweep was killed with its live view up; its guardian ends its "
                      f"{len(groups)} running run(s). Run the same command again to resume.\n")
    root = Path(cgroups) if cgroups else None
    def in_cgroups() -> set[int]:  # the live processes in the runs' cgroups
        return {pid for run in (root.glob("run-*") if root is not None else ()) for pid in RunCgroups.pids(run)}
    if groups or in_cgroups():  # (a run in its cgroup, not registered yet: train_sweep died as it started it)
        import psutil

        def ours() -> list[Any]:
            for g, start in list(groups.items()):
                now = proc_stat(g, 19)
                if now and start and now != start:
                    del groups[g]  # the PID was reused by another group's leader: not ours
            cgrouped = in_cgroups()
            out = []
            for p in psutil.process_iter():
                with suppress(psutil.Error, OSError):
                    if p.pid in (os.getpid(), sweep) or p.status() == psutil.STATUS_ZOMBIE:
                        continue
                    if p.pid in cgrouped or os.getpgid(p.pid) in groups or \
                            p.environ().get("TRAIN_SWEEP_ID") == sweep_id:
                        out.append(p)
            return out

        for sig, wait in ((signal.SIGTERM, float(grace)), (signal.SIGKILL, 5.0)):
            for p in ours():
                with suppress(psutil.Error): p.send_signal(sig)
            end = time.monotonic() + wait
            while time.monotonic() < end and ours():
                time.sleep(0.1)
    RunCgroups.remove_all(root)


def proc_stat(pid: int, field: int) -> str | None:
    """Field `field` of /proc/PID/stat after the name (0: state, Z a zombie; 19: start time), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


class Guardian:
    """Starts the guardian process and tells it which process groups belong to the sweep."""

    def __init__(self, sweep_id: str, grace: float, lock: int | None = None, cgroups: Path | None = None) -> None:
        """`lock`: the output folder's lock, held by the guardian too: after train_sweep dies the folder stays
        locked until every run has ended. `cgroups`: the runs' cgroups (RunCgroups.root), which it ends too."""
        here = str(Path(__file__).resolve().parent)  # where this module is: the guardian imports it
        code = f"import sys; sys.path.insert(0, {here!r}); import train_sweep; train_sweep.guardian_main(*sys.argv[1:])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, sweep_id, str(grace), str(cgroups or "")],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     pass_fds=() if lock is None else (lock,),
                                     start_new_session=True)  # Ctrl+C in the terminal and SIGHUP do not reach it
        assert self.proc.stdin is not None
        self._fd = self.proc.stdin.fileno()

    def _send(self, line: str) -> None:
        with suppress(OSError):  # else the guardian is gone; the sweep itself still ends its runs
            os.write(self._fd, (line + "\n").encode())  # one small write: no buffering to flush

    def add(self, pgid: int) -> None: self._send(f"+ {pgid} {proc_stat(pgid, 19) or ''}")
    def remove(self, pgid: int) -> None: self._send(f"- {pgid}")
    def screen(self, tty: str | None) -> None: self._send(f"t {tty or '-'}")  # the live view holds tty (None: no)

    def close(self) -> None:
        """EOF on its stdin: the guardian exits (after ending any group still registered). Returns at once."""
        with suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def wait(self) -> None:
        """Close, and wait up to 5 s for the guardian to exit (then kill it)."""
        self.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def become_subreaper() -> bool:
    """Linux: orphans of our runs are re-parented to us (not to init), so we can find and end them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def own_children() -> set[int]:
    """PIDs of our direct children, from one /proc file: 48 us, where psutil scans every process (3.7 ms with 8
    children on a 2-CPU VM), for every exit. Only the main thread forks; a subreaper's orphans go to its leader."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        import psutil
        return {p.pid for p in psutil.Process().children()}


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a process group; False when the group has no process left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class RunCgroups:
    """Each run's processes in a cgroup v2 of their own, where the sweep may make cgroups (root, or a delegated
    cgroup: `systemd-run --user --scope -p Delegate=yes train-sweep ...`): a process that double-forked,
    left its session and cleared its environment is found there too. Elsewhere `root` is None, `why` says why,
    and runs are tracked by process group, marker and subreaper (docs/reliability.md)."""

    def __init__(self, sweep_id: str) -> None:
        self.root: Path | None = None
        self.why = ""
        try:
            self.home = own_cgroup_dir()  # the sweep's own
            path = self.home / f"train_sweep-{sweep_id}"
            path.mkdir()
            self.root = path
        except (OSError, ValueError) as e:
            self.why = f"no cgroup v2 of its own for each run ({getattr(e, 'strerror', None) or e})"

    def make(self, run: Run) -> Path | None:
        if self.root is None:
            return None
        path = self.root / f"run-{run.index}-{run.attempt}"
        with suppress(OSError):
            path.mkdir(exist_ok=True)
            return path
        return None

    def popen(self, path: Path | None, start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        """Start a run born in its cgroup: the sweep steps into it for the fork, then back (moved there after Popen,
        a run's daemon forked at once escaped). Not a preexec_fn (Python then forks the slow way, bench/README.md),
        not a shell that moves itself (it drops variables no shell can name, runs files without '#!')."""
        try:
            if path is not None:
                (path / "cgroup.procs").write_text("0")
        except OSError:  # (not in a cgroup: it is tracked by group and marker)
            path = None
        try:
            return start()
        finally:  # back (allowed as the step in was), else into the cgroup above the runs', which no one signals
            for home in (self.home, self.root) if path is not None else ():
                with suppress(OSError):
                    (home / "cgroup.procs").write_text("0")
                    break

    @staticmethod
    def pids(path: Path) -> list[int]:
        """The live (not zombie) processes in a run's cgroup."""
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []
        return [p for p in pids if p != os.getpid() and proc_stat(p, 0) not in ("Z", None)]  # (the sweep: popen)

    def signal(self, path: Path, sig: int) -> None:
        if sig == signal.SIGKILL:
            with suppress(OSError): (path / "cgroup.kill").write_text("1")  # Linux 5.14+: all, atomically
        for pid in self.pids(path):
            with suppress(OSError): os.kill(pid, sig)

    @staticmethod
    def remove(path: Path | None) -> None:
        if path is not None:
            with suppress(OSError): path.rmdir()

    def close(self) -> None:
        """Remove the sweep's cgroups (the guardian may have removed them already: it does on its way out)."""
        self.remove_all(self.root)

    @classmethod
    def remove_all(cls, root: Path | None) -> None:
        """Remove a sweep's cgroups: each run's (emptied), then the sweep's own."""
        if root is not None:
            with suppress(OSError):
                for child in list(root.glob("run-*")):
                    cls.remove(child)
            cls.remove(root)


def own_cgroup_dir() -> Path:
    """The folder of this process's cgroup v2 (ValueError where there is none)."""
    with open("/proc/self/cgroup") as f:
        paths = [line.strip()[3:] for line in f if line.startswith("0::")]
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[2:3] == ["cgroup2"]]
    if not paths or not mounts:
        raise ValueError("cgroup v2 is not mounted")
    return Path(mounts[0]) / paths[0].lstrip("/")


class LogFollower:
    """Follows the stdout and stderr logs a run writes itself (a sweep that dies loses none of its output) into
    combined.log, each line stamped with when it was read and its stream. Reads at most READ_MAX bytes a
    stream a call, and cuts an unfinished line at LINE_MAX bytes."""

    LINE_MAX = 65536
    READ_MAX = 4 * MB

    def __init__(self, stdout: Path, stderr: Path, combined: Path | None, resume: bool = False) -> None:
        """`combined` None: stdout lines only (metrics). `resume`: read from the logs' ends, append to combined.log."""
        self.streams = []  # [tag, fd, offset, unfinished line]
        for tag, path in ((b"out", stdout), (b"err", stderr)):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self.streams.append([tag, fd, os.fstat(fd).st_size if resume else 0, b""])
        self.combined: int | None = None if combined is None else os.open(
            combined, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resume else os.O_TRUNC) | os.O_CLOEXEC, 0o644)
        self.error: str | None = None  # why combined.log stopped being written (disk full, ...)
        self.read_any = False

    @staticmethod
    def _stamp() -> bytes:
        now = time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)).encode() + b".%03d" % int(now % 1 * 1000)

    def pump(self, final: bool = False) -> list[str]:
        """Append what was written to combined.log; return the new stdout lines (`final`: and the unfinished last)."""
        out_lines: list[bytes] = []
        combined: list[bytes] = []
        self.read_any = False  # whether this call found anything new (a drained run's last look finds nothing)
        for stream in self.streams:
            tag, fd, offset, partial = stream
            if fd is None:
                continue
            while True:
                try:
                    data = os.pread(fd, self.READ_MAX, offset)
                except OSError:
                    data = b""
                self.read_any = self.read_any or bool(data)
                offset += len(data)
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                if len(partial) >= self.LINE_MAX or (final and not data and partial):  # cut, or the last
                    lines.append(partial)
                    partial = b""
                if lines:
                    stamp = self._stamp()
                    combined += [b"%s %s | %s\n" % (stamp, tag, line) for line in lines]
                    if tag == b"out":
                        out_lines += lines
                if not final or not data:
                    break
            stream[2], stream[3] = offset, partial
        if combined and self.combined is not None:
            try:
                view = memoryview(b"".join(combined))
                while view:
                    view = view[os.write(self.combined, view):]
            except OSError as e:  # combined.log only: the run's own logs are complete whatever happens here
                self.error = f"combined.log is no longer written: {e.strerror or e}"
                os.close(self.combined)
                self.combined = None
        return [line.decode("utf-8", errors="replace") for line in out_lines]

    def close(self) -> None:
        for stream in self.streams:
            if stream[1] is not None:
                os.close(stream[1])
                stream[1] = None
        if self.combined is not None:
            os.close(self.combined)
            self.combined = None


@dataclasses.dataclass(eq=False)
class Proc:
    """A run's attempt as local processes: its main process, its process group, its logs."""

    run: Run
    popen: subprocess.Popen[bytes]
    run_id: str  # TRAIN_SWEEP_RUN_ID, which every process of the run inherits
    follower: LogFollower | None  # None once its logs were read to the end and closed
    cgroup: Path | None = None  # the run's own cgroup v2, where there is one
    ended: bool = False  # all its processes are gone: observe() reads what its logs hold still, then closes them
    returncode: int | None = None
    exited_at: float | None = None  # the main process has exited; leftovers are being ended
    exited_wall: float | None = None  # ... at this wall-clock time (the run's end_time)
    kill_at: float | None = None  # leftovers get SIGKILL after this

    @property
    def pgid(self) -> int: return self.popen.pid  # start_new_session: the main process leads its own group


def tracker_env(env: Mapping[str, str], group: str, run: Run) -> dict[str, str]:
    """W&B's and MLflow's grouping variables, where their settings are in the environment: the sweep as group or
    experiment, the run's name and folder (never imports them; the caller keeps what the user set)."""
    out: dict[str, str] = {}
    if any(k.startswith("WANDB_") for k in env):
        out.update(WANDB_RUN_GROUP=group, WANDB_NAME=run.name, WANDB_TAGS="train_sweep", WANDB_DIR=str(run.run_dir))
    if any(k.startswith("MLFLOW_") for k in env):
        out.update(MLFLOW_EXPERIMENT_NAME=group)
    return out


def run_env(run: Run, sweep_id: str) -> dict[str, str]:
    """The environment contract every run's command gets, wherever it runs (docs/config.md: What each run gets)."""
    return {"TRAIN_SWEEP_RUN_NAME": run.name, "TRAIN_SWEEP_RUN_DIR": str(run.run_dir), "TRAIN_SWEEP_ID": sweep_id,
            "TRAIN_SWEEP_RUN_ID": f"{sweep_id}-{run.index}", "PYTHONUNBUFFERED": "1"} | (
        {"TRAIN_SWEEP_RESUME": "1"} if run.resumed else {})


def prepare_run_dir(run: Run) -> None:
    """A new attempt's folder: made, or the last attempt's files moved to attempt_<n>/ (OutputError if it can't)."""
    try:
        try:
            os.mkdir(run.run_dir)  # a new folder: no earlier attempt to set aside
        except FileExistsError:
            archive_attempt_files(run)
        (run.run_dir / RUN_MARK).touch()
        if run.config_file:
            shutil.copyfile(run.config_file, run.run_dir / f"config_used{Path(run.config_file).suffix}")
    except OSError as e:
        raise OutputError(f"cannot write the run folder {run.run_dir}: {e.strerror or e}") from None


class LocalLauncher:
    """Runs as local processes, each in its own session and group, writing straight to its log files. A run
    has ended when its main process exited and no process of it is left: leftovers (its group, orphans
    adopted as subreaper) get SIGTERM, then SIGKILL after the grace period. The guardian ends all if we die."""

    def __init__(self, cwd: Path, sweep_id: str, cpu_only: bool, guardian: Guardian | None,
                 kill_grace: float = KILL_GRACE_S, extra_env: Mapping[str, str] | None = None,
                 cgroups: RunCgroups | None = None, group: str = "",
                 device_ids: Mapping[int, str] | None = None) -> None:
        """`device_ids`: how CUDA_VISIBLE_DEVICES names a GPU where not by its index (--mps: its UUID)."""
        self.cwd, self.sweep_id, self.group, self.cpu_only = cwd, sweep_id, group or sweep_id, cpu_only
        self.extra_env, self.device_ids = dict(extra_env or {}), dict(device_ids or {})
        self._base_env: dict[str, str] | None = None
        self.guardian, self.kill_grace = guardian, kill_grace
        self.screen = guardian.screen if guardian is not None else None  # the live view tells it (see Reporter)
        self.subreaper = become_subreaper()
        self.cgroups = cgroups if cgroups is not None else RunCgroups(sweep_id)
        self.procs: set[Proc] = set()
        self.draining: set[Proc] = set()  # ended, their logs not read to the end yet (observe)
        self.notes: list[str] = []

    own_timeout = False  # the loop ends a run at --timeout

    def stopping(self, running: int) -> str:
        return (f"ending {running} running run(s) (SIGTERM, SIGKILL after {self.kill_grace:g}s; press Ctrl+C again to "
                "kill now)")

    def detached(self, runs: Sequence[Run], pending: int) -> list[str]: return []  # local runs end with the sweep

    def env(self, run: Run, gpus: Sequence[int]) -> dict[str, str]:
        if self._base_env is None:
            self._base_env = {**os.environ, **self.extra_env}
        env = dict(self._base_env)
        env.update(CUDA_VISIBLE_DEVICES="" if self.cpu_only else ",".join(self.device_ids.get(g, str(g)) for g in gpus),
                   CUDA_DEVICE_ORDER="PCI_BUS_ID", **run_env(run, self.sweep_id))  # ids as nvidia-smi and NVML show
        for key, value in tracker_env(self._base_env, self.group, run).items():
            env.setdefault(key, value)  # what the user set wins
        return env

    def start(self, run: Run, gpus: tuple[int, ...]) -> Proc:
        prepare_run_dir(run)
        with ExitStack() as logs:  # our copies of the log files are closed once the run has its own
            try:
                out = logs.enter_context(open(run.stdout_log, "wb"))
                err = logs.enter_context(open(run.stderr_log, "wb"))
                # before the run starts: one that deletes its folder at once loses nothing
                follower = LogFollower(run.stdout_log, run.stderr_log, run.combined_log)
            except OSError as e:
                raise OutputError(f"cannot write the run folder {run.run_dir}: {e.strerror or e}") from None
            env, cgroup = self.env(run, gpus), self.cgroups.make(run)
            try:
                popen = self.cgroups.popen(cgroup, lambda: subprocess.Popen(
                    run.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True))
            except OSError as e:
                follower.close()
                self.cgroups.remove(cgroup)
                message = f"could not start {run.argv[0]}: {e.strerror or e}"
                with suppress(OSError), open(run.stderr_log, "a") as f:
                    f.write(f"train_sweep: {message}\n")
                raise LaunchError(message) from None
        proc = Proc(run, popen, env["TRAIN_SWEEP_RUN_ID"], follower, cgroup)
        run.pgid = proc.pgid
        self.procs.add(proc)
        if self.guardian:
            self.guardian.add(proc.pgid)
        return proc

    def poll(self, handle: Proc) -> Outcome | None:
        proc, now = handle, time.monotonic()
        exited = proc.exited_at is None and (rc := proc.popen.poll()) is not None
        if exited:
            proc.returncode, proc.exited_at, proc.exited_wall = rc, now, time.time()
        if proc.exited_at is None:
            return None
        if not self._leftovers_alive(proc):
            return self._ended(proc)
        if exited:  # its main process exited: what it left gets SIGTERM, then SIGKILL after the grace period
            self._signal_tree(proc, signal.SIGTERM)
            proc.kill_at = now + self.kill_grace
        elif proc.kill_at is not None and now >= proc.kill_at:
            self._signal_tree(proc, signal.SIGKILL)
            proc.kill_at = now + 5.0
            if now - proc.exited_at > self.kill_grace + 10:
                return self._ended(proc, f"warning: {proc.run.name} left processes that cannot be ended")
        return None

    def stop(self, handle: Proc, hard: bool) -> bool:
        if handle.exited_at is None and handle.popen.poll() is not None:
            return False  # it exited on its own just now: poll() records it with its own exit code
        if handle.exited_at is not None and not hard:
            return False  # its leftovers are already being ended
        self._signal_tree(handle, signal.SIGKILL if hard else signal.SIGTERM)
        return handle.exited_at is None

    def observe(self, handle: Proc) -> list[str]:
        if not handle.ended:
            return handle.follower.pump()
        while handle.follower is not None:  # it has ended: what it left unread, a chunk at a time (a run that
            lines = handle.follower.pump()  # flooded its output is never held whole), [] once all is read
            if not handle.follower.read_any:
                lines += handle.follower.pump(final=True)  # the unfinished last lines
                if handle.follower.error:
                    self.notes.append(f"warning: {handle.run.name}: {handle.follower.error}")
                handle.follower.close()
                handle.follower = None
                self.draining.discard(handle)
                return lines
            if lines:
                return lines
        return []

    def next_poll(self, now: float) -> float | None:
        times = [p.kill_at for p in self.procs if p.kill_at is not None]
        if any(p.exited_at is not None for p in self.procs):
            times.append(now + CLEANUP_POLL_S)
        return min(times) if times else None

    def flush(self) -> None:
        """Local runs start at once."""

    def describe(self) -> list[str]: return []
    def queued(self) -> int: return 0
    def withdraw(self, handle: Proc) -> bool: return False  # a local run starts at once

    def close(self, detach: bool = False) -> None:
        """Every run has ended: remove the cgroups, let the guardian go (it exits during the summary)."""
        for proc in self.draining:
            if proc.follower is not None:
                proc.follower.close()
        self.cgroups.close()
        if self.guardian:
            self.guardian.close()

    def _ended(self, proc: Proc, note: str | None = None) -> Outcome:
        self.procs.discard(proc)
        proc.ended = True  # observe() reads what it left, then closes its logs (close() if the loop does not)
        self.draining.add(proc)
        if proc.follower is not None and proc.follower.error:
            note = note or f"warning: {proc.run.name}: {proc.follower.error}"
        self.cgroups.remove(proc.cgroup)
        if self.guardian:
            self.guardian.remove(proc.pgid)
        return Outcome(proc.returncode, proc.exited_wall, note=note)

    def _exclude(self) -> set[int]:
        """Our own children that are not leftovers: live runs' main processes and the guardian."""
        pids = {p.popen.pid for p in self.procs if p.exited_at is None}
        if self.guardian:
            pids.add(self.guardian.proc.pid)
        return pids

    def _adopted(self, proc: Proc, children: set[int] | None = None) -> list[Any]:
        """Processes of this run that lost their parent and were re-parented to us (we are subreaper)."""
        if not self.subreaper:
            return []
        if not (children := own_children() - self._exclude() if children is None else children):
            return []
        import psutil
        out = []
        for pid in children:
            with suppress(psutil.Error, OSError):
                p = psutil.Process(pid)
                if p.environ().get("TRAIN_SWEEP_RUN_ID") == proc.run_id:
                    out.append(p)
                    out.extend(p.children(recursive=True))
        return out

    def _signal_tree(self, proc: Proc, sig: int) -> None:
        """Signal everything the run started: its group, its descendants, and adopted leftovers."""
        import psutil
        procs = self._adopted(proc)
        if proc.exited_at is None:
            with suppress(psutil.Error): procs.extend(psutil.Process(proc.popen.pid).children(recursive=True))
        signal_group(proc.pgid, sig)
        for p in procs:
            with suppress(psutil.Error): p.send_signal(sig)
        if proc.cgroup is not None:
            self.cgroups.signal(proc.cgroup, sig)

    def _leftovers_alive(self, proc: Proc) -> bool:
        """After the main process exited: does any process of the run remain (zombies reaped first)?"""
        children = own_children() - self._exclude() if self.subreaper else set()
        for pid in list(children):  # adopted orphans: collect their exit status so they do not linger as zombies
            with suppress(ChildProcessError):  # (one that is not our child any more is gone too)
                if os.waitpid(pid, os.WNOHANG)[0] != pid:
                    continue  # alive
            children.discard(pid)
        if signal_group(proc.pgid, 0) or (proc.cgroup is not None and self.cgroups.pids(proc.cgroup)):
            return True
        if not children:
            return False
        import psutil
        for p in self._adopted(proc, children):
            with suppress(psutil.Error):  # it ended between the listing and the look
                if p.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False


# ----------------------------------------------------------------------------------------------
# 8. Results and metrics
# ----------------------------------------------------------------------------------------------

def iso_time(t: float | None) -> str | None:
    """Local time to the millisecond and UTC offset, as isoformat writes it (datetime's astimezone is slow)."""
    if t is None:
        return None
    seconds, micros = divmod(round(t * 1_000_000), 1_000_000)  # datetime's rounding: to the microsecond
    local = time.localtime(seconds)
    offset = local.tm_gmtoff // 60
    sign, hours, minutes = "-" if offset < 0 else "+", abs(offset) // 60, abs(offset) % 60
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{micros // 1000:03d}{sign}{hours:02d}:{minutes:02d}"


def write_json_atomic(path: Path, data: Any, fsync: bool = True, compact: bool = False) -> None:
    """Write JSON to a temp file beside `path`, fsync it (unless told not to) and os.replace it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, list):  # results: one record per line (json's fast C encoder; grep-friendly)
        text = "[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in data) + "\n]\n"
    elif compact:  # run.json, twice per run: the C encoder, one line
        text = json.dumps(data, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)  # plain descriptor:
        try:  # 3 system calls a file where open() makes 7 (twice per run)
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError): tmp.unlink()
        raise


def tail_lines(path: Path, n: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """The last n lines of a file, from at most its last `max_bytes` (logs can be gigabytes, and so one line).
    A carriage return ends a line too; a line cut by the window or longer than LINE_SHOW is marked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # (a FIFO in its place: not waited on)
    except OSError:
        return ""
    try:
        end = os.fstat(fd).st_size
        start = max(0, end - max_bytes)
        data = os.pread(fd, end - start, start)
    except OSError:
        return ""
    finally:
        os.close(fd)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines[0] = f"[{start:,} earlier bytes not kept] …" + lines[0]
    return "\n".join(one_line(line, LINE_SHOW) for line in lines[-n:])


NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
STEP_KEYS = ("global_step", "step", "iteration", "iter", "epoch")  # a number after one of these is the step
_STEP = re.compile(rf"(?<![\w.])['\"]?(?:{'|'.join(STEP_KEYS)})['\"]?\s*(?:[=:]\s*|\s+)(\d+(?:\.\d+)?)(?![\w.])", re.I)


def _metric_pattern(name: str) -> re.Pattern[str]:
    """A metric as scripts print it: `val_loss=0.41`, `val_loss: 0.41`, `'val_loss': 0.41` (Hugging Face),
    `"val_loss": 0.41` (JSON), and `val loss 0.41` (nanoGPT's `step 500: train loss 1.69, val loss 1.85`)."""
    spelled = r"[ _]".join(re.escape(part) for part in name.split("_"))
    return re.compile(rf"(?<![\w.])['\"]?{spelled}['\"]?\s*(?:[=:]\s*|\s+)({NUMBER})(?![\w.])")


@dataclasses.dataclass
class MetricReader:
    """Finds the metrics a run reports in what it writes anyway: stdout lines in the common forms (or a
    --metric-regex with groups `value` and optional `step`) and metrics.jsonl records; a number after step,
    iter, iteration, epoch or global_step on the line is the step."""

    names: tuple[str, ...]
    regex: re.Pattern[str] | None = None

    def __post_init__(self) -> None: self._patterns = {name: _metric_pattern(name) for name in self.names}

    def from_lines(self, lines: Iterable[str]) -> list[tuple[int | None, dict[str, float]]]:
        """The (step, values) of each line that reports a metric."""
        points = []
        for line in lines:
            values: dict[str, float] = {}
            step_text = None
            if self.regex is not None and self.names:
                m = self.regex.search(line)
                value = _number(m.group("value")) if m else None
                if value is not None:
                    values[self.names[0]] = value
                    step_text = m.groupdict().get("step")
            for name, pattern in self._patterns.items():
                if name not in values and (found := pattern.findall(line)):
                    values[name] = float(found[-1])
            if values:
                if step_text is None and (m := _STEP.search(line)):
                    step_text = m.group(1)
                points.append((_step(step_text), values))
        return points

    def from_json(self, record: Any) -> tuple[int | None, dict[str, float]] | None:
        """The (step, values) of one metrics.jsonl record, or None if it reports no metric."""
        if not isinstance(record, dict):
            return None
        values = {k: f for k, v in record.items()
                  if k in self.names and _is_number(v) and (f := _number(v)) is not None}
        if not values:
            return None
        step = next((record[k] for k in STEP_KEYS if _is_number(record.get(k))), None)
        return _step(step), values


def _number(value: Any) -> float | None:
    """A value as a float, or None when it is none (text that is not a number, an integer too large)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _step(value: Any) -> int | None:
    number = None if value is None else _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def better(a: float, b: float | None, mode: str) -> bool:
    """Is metric value `a` better than `b` (None: no value yet)?"""
    return b is None or (a < b if mode == "min" else a > b)


def read_metrics(run: Run, metric: str | None = None) -> dict[str, Any] | None:
    """A run's metrics: what it printed, overridden by <run_dir>/metrics.json if this attempt wrote one (an older
    file is ignored); else for --metric NAME the last value in its stdout. Plain values only, NaN and Infinity
    as null, so the results stay standard JSON."""
    path = run.run_dir / "metrics.json"
    try:
        data = read_json(path) if run.start_time is None or path.stat().st_mtime >= run.start_time - 1.0 else None
    except OSError:  # (no such file)
        data = None
    metrics = {name: plain_metric(v) for name, v in run.latest.items()}  # what it printed while it ran
    if isinstance(data, dict):
        metrics.update({str(k): plain_metric(v) for k, v in data.items()
                        if isinstance(v, (int, float, str, bool, type(None)))})
    elif metric and metric not in metrics:  # not followed (a resumed record): the end of its stdout
        if found := _metric_pattern(metric).findall(tail_lines(run.stdout_log, 1000, 256 * 1024)):
            metrics[metric] = plain_metric(float(found[-1]))
    return metrics or None


def append_series(run: Run, points: Sequence[tuple[int | None, Mapping[str, float]]]) -> None:
    """The metrics a run printed, appended to <run_dir>/train_sweep_metrics.jsonl (one JSON object a line)."""
    now = round(time.time(), 3)
    text = "".join(json.dumps({"step": step, "time": now, **{k: plain_metric(v) for k, v in values.items()}}) + "\n"
                   for step, values in points)
    with suppress(OSError):  # the series is a convenience: its values are in run.json and the results as well
        fd = os.open(run.run_dir / SERIES, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


_PRINTED = re.compile(rf"(?<![\w.])['\"]?([A-Za-z][\w./-]*)['\"]?\s*[=:]\s*({NUMBER})(?![\w.])")
_NOT_METRICS = {"step", "epoch", "iter", "iteration", "it", "batch", "lr", "time", "seed"}


def printed_metrics(run: Run) -> list[str]:
    """The metric names a run reported (its metrics, read when it ended, and stdout lines like NAME=0.41, most
    frequent first): what --metric could have been."""
    names: Counter[str] = Counter(k for k, v in (run.metrics or {}).items() if isinstance(v, (int, float)))
    names.update(m.group(1) for m in _PRINTED.finditer(tail_lines(run.stdout_log, 200, 64 * 1024)))
    return [n for n, _ in names.most_common() if n.lower() not in _NOT_METRICS][:6]


def metric_missing(run: Run, metric: str, regex: str | None) -> str:
    """Why a complete run has no value of the ranking metric, in words a user can act on: what it did report."""
    if metric in (run.metrics or {}):  # reported: text (metrics.json), or NaN or infinite (None: plain_metric)
        return f"its last {metric} was {'text' if isinstance(run.metrics[metric], str) else 'NaN or infinite'}"
    where = [name for name in ("metrics.json", "metrics.jsonl") if (run.run_dir / name).exists()]
    found = f"{' and '.join(where)} without {metric!r}" if where else "no metrics.json or metrics.jsonl"
    printed = "no stdout line matches --metric-regex" if regex else f"no stdout line like '{metric}=0.41'"
    seen = printed_metrics(run)
    return f"{found}; {printed}" + (f"; it reported {', '.join(seen)}" if seen else "")


def metric_hint(metric: str, seen: Sequence[str]) -> str:
    """`--metric val_loss`: the reported name most like the one asked for (or the first reported)."""
    import difflib
    close = difflib.get_close_matches(metric, seen, n=1, cutoff=0.5) if metric else []
    return f"--metric {(close or list(seen))[0]}" if seen else ""


def plain_metric(value: Any) -> Any:
    """A metric value as the results keep it: NaN and Infinity become None, text with a lone surrogate None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and _number(value) is None:
        return None  # an integer too large for a float: not a metric anyone can rank
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return one_line(value)
    return value


def log_tail(run: Run) -> str:
    """The end of a run's stderr and stdout: where an out-of-memory error shows."""
    return tail_lines(run.stderr_log, 200) + "\n" + tail_lines(run.stdout_log, 50)


def metric_of(metrics: Mapping[str, Any] | None, name: str | None, stdout: str = "") -> float | None:
    """A metric's value from a run's metrics, else the last in `stdout`; None if absent or not a number."""
    if not name:
        return None
    value = (metrics or {}).get(name)
    if value is None and stdout:
        found = _metric_pattern(name).findall(stdout)
        value = float(found[-1]) if found else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def best_of(items: Iterable[Any], value: Callable[[Any], float | None], mode: str) -> tuple[float, Any] | None:
    """The best (value, item) by `mode` (min or max) among runs or records that have a value; None if none has. Of
    equal values the first in the sweep (the lowest index, as best-K keeps), so that every view names one run."""
    scored = sorted(((v, item) for item in items if (v := value(item)) is not None),
                    key=lambda vi: (vi[1].get("index") if isinstance(vi[1], Mapping) else vi[1].index) or 0)
    return (min if mode == "min" else max)(scored, key=lambda vi: vi[0]) if scored else None


def run_record(run: Run, tails: bool = True) -> dict[str, Any]:
    """One run in the results file (the seed's fields first), run.json (without log tails) and the journal."""
    gpu = run.gpus[0] if len(run.gpus) == 1 else list(run.gpus) if run.gpus else None
    duration, logs = run.duration, tails and run.start_time is not None  # the log tails, if it started
    record: dict[str, Any] = {  # in this order: the seed's fields (model_name to stderr), then ours
        "model_name": run.name, "hyperparams": run.hyperparams, "success": run.state == State.COMPLETE,
        "returncode": run.returncode, "duration_seconds": None if duration is None else round(duration, 3),
        "gpu_id": gpu, "stdout": tail_lines(run.stdout_log) if logs else "",
        "stderr": tail_lines(run.stderr_log) if logs else "",
        "state": run.state.value, "start_time": iso_time(run.start_time), "end_time": iso_time(run.end_time),
        "run_dir": str(run.run_dir), "stdout_log": str(run.stdout_log), "stderr_log": str(run.stderr_log),
        "command": run.argv, "config_file": run.config_file, "signal": run.signal_name, "error": run.error,
        "metrics": run.metrics, "metric": None if not (run.points or run.metric_note) else
        {"best": run.best, "step": run.step, "points": run.points, "note": run.metric_note},
        "index": run.index, "trial": run.trial, "identity": run.identity, "attempt": run.attempt,
        "attempts": list(run.attempts)}  # (a copy: a requeued record keeps its own)
    record.update(run.job)
    if not tails:
        del record["stdout"], record["stderr"]
    return record


def write_run_json(run: Run, record: Mapping[str, Any]) -> None:
    """<run_dir>/run.json (the record less its stdout and stderr tails); a run that deleted its folder gets it back."""
    body = {k: v for k, v in record.items() if k not in ("stdout", "stderr")}
    try:
        write_json_atomic(run.run_dir / "run.json", body, fsync=False, compact=True)
    except FileNotFoundError:
        run.run_dir.mkdir(exist_ok=True)
        (run.run_dir / RUN_MARK).touch()  # made by the sweep
        write_json_atomic(run.run_dir / "run.json", body, fsync=False, compact=True)


def attempt_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """An earlier attempt, as kept in a run's `attempts` list. Its logs were moved to attempt_<n>/."""
    folder = Path(record["run_dir"]) / f"attempt_{record.get('attempt', 1)}"
    keep = ("attempt", "state", "returncode", "signal", "error", "gpu_id", "start_time", "end_time", "duration_seconds")
    return {**{k: record.get(k) for k in keep}, "stdout_log": str(folder / "train_stdout.log"),
            "stderr_log": str(folder / "train_stderr.log")}


# A run record's fields read back (a journal line, a run.json, a results file's entry): what each must be where not
# null (attempt, run_dir and state never are). A damaged or hand-edited record fails here, not with a traceback later.
RECORD_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **{k: ("an object", lambda v: isinstance(v, dict)) for k in ("hyperparams", "metrics", "metric")},
    **{k: ("text", lambda v: isinstance(v, str)) for k in ("identity", "run_dir", "start_time", "end_time")},
    "state": ("a run state", lambda v: v in list(State)),
    "attempt": ("a whole number >= 1", lambda v: _is_whole(v) and v >= 1), "duration_seconds": ("a number", _is_number),
    **{k: ("a whole number", _is_whole) for k in ("returncode", "trial", "index")},
    "gpu_id": ("a GPU id or a list of them", lambda v: _is_whole(v) or isinstance(v, list) and all(map(_is_whole, v))),
    "attempts": ("a list of attempts", lambda v: isinstance(v, list) and not any(record_damage(a, False) for a in v))}


def record_damage(record: Any, named: bool = True) -> str | None:
    """Why a run record cannot be read back (RECORD_FIELDS), or None if it can."""
    if not isinstance(record, dict):
        return "it is not a JSON object"
    if named and not (isinstance(record.get("model_name"), str) and record["model_name"]):
        return "it has no 'model_name' (text)"
    bad = next((k for k, (_, ok) in RECORD_FIELDS.items() if k in record and not ok(record[k]) and
                (record[k] is not None or k in ("attempt", "run_dir", "state"))), None)  # (never written null)
    return bad and f"its {bad!r} is {json.dumps(record[bad])[:60]}, not {RECORD_FIELDS[bad][0]}"


def read_journal(path: Path) -> Journal:
    """The journal's records by run name, oldest first; unreadable lines (cut by a crash) are skipped."""
    out: Journal = {}
    if not path.is_file():  # missing, or a FIFO (waited on forever) or a folder: no journal to read
        return out
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return out
    for line in lines:
        with suppress(ValueError, KeyError, TypeError, RecursionError):
            record = json.loads(line.decode("utf-8"))
            if isinstance(record["model_name"], str):  # else no run's: passed over
                out.setdefault(record["model_name"], []).append(record)
    return out


def plan_resume(runs: Sequence[Run], journal: Mapping[str, list[dict[str, Any]]]) -> list[tuple[Run, dict[str, Any]]]:
    """Skip the runs an earlier sweep completed or pruned (returned with their records); the rest get their attempts."""
    skipped = []
    for run in runs:
        past = [r for r in journal.get(run.name, []) if r.get("identity") == run.identity]
        if crashed := None if run.reattach else _crashed_attempt(run, past):
            past.append(crashed)
        complete = [r for r in past if r.get("state") in (State.COMPLETE.value, State.PRUNED.value)]
        if complete and holds_other(run) is False:  # the pruner's verdict stands; a run whose folder is gone (or
            # holds a run of other hyperparameters that took its name since) runs again
            skipped.append((restore(run, complete[-1]), complete[-1]))
        elif past:
            run.attempts = [attempt_summary(r) for r in past]
            if not run.reattach:  # a re-attached job is the attempt its run.json names
                run.attempt = max(int(r.get("attempt", 1)) for r in past) + 1
    return skipped


def holds_other(run: Run) -> dict[str, Any] | bool | None:
    """What the run's folder holds: None, no folder; False, this run (or a folder without a readable run.json);
    else the run.json of another run that had its name (other hyperparameters or --command: a default edited)."""
    if not run.run_dir.is_dir():
        return None
    record = read_json(run.run_dir / "run.json")
    return record if isinstance(record, dict) and record.get("identity") not in (None, run.identity) else False


def restore(run: Run, record: Mapping[str, Any]) -> Run:
    """A run as an earlier sweep's journal record left it (not run again: skipped)."""
    run.skipped = True
    run.state = State(record.get("state", State.COMPLETE.value))
    run.returncode, run.metrics, run.trial = record.get("returncode"), record.get("metrics"), record.get("trial")
    gpu = record.get("gpu_id")
    run.gpus = tuple(gpu) if isinstance(gpu, list) else (gpu,) if isinstance(gpu, int) else ()
    run.attempt, run.attempts = record.get("attempt", 1), list(record.get("attempts") or [])
    run.start_time, run.end_time = _parse_time(record.get("start_time")), _parse_time(record.get("end_time"))
    return run


def _crashed_attempt(run: Run, journaled: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """An attempt that run.json shows but the journal does not (the sweep died meanwhile)."""
    record = read_json(run.run_dir / "run.json")
    if not isinstance(record, dict) or record.get("identity") != run.identity or \
            any(r.get("attempt") == record.get("attempt") for r in journaled):
        return None
    if why := record_damage(record):
        raise UserError(f"{run.run_dir / 'run.json'} is damaged: {why} (mend or delete it)")
    if record.get("state") in (State.RUNNING.value, State.PENDING.value):
        record["state"] = State.INTERRUPTED.value
    record.setdefault("stdout", tail_lines(run.stdout_log))
    record.setdefault("stderr", tail_lines(run.stderr_log))
    return record


def _parse_time(text: Any) -> float | None:
    import datetime
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


class ResultsWriter:
    """Every finished attempt is appended to the journal (a crash loses nothing finished) and its run.json;
    the results file is rewritten atomically after a run finishes, at most every max(0.25 s, 50 x a
    rewrite's time) so that it stays cheap for thousands of runs, and at the end."""

    def __init__(self, output_file: Path, journal: Path | None = None) -> None:
        self.output_file, self.partial_file = output_file, output_file.with_name(output_file.name + ".partial")
        self.records: dict[int, dict[str, Any]] = {}
        self._journal: int | None = None  # a plain descriptor, O_APPEND: each line is one write, never buffered
        self._torn = False  # the last journal line was cut short (disk full)
        if journal is not None:
            self._journal = os.open(journal, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            size = os.fstat(self._journal).st_size
            if size and os.pread(self._journal, 1, size - 1) != b"\n":  # a line torn by a crash: start anew
                os.write(self._journal, b"\n")
        self.dirty = False
        self._next_write = self._next_sync = 0.0  # time.monotonic() before which no rewrite (no journal fsync)

    def add_previous(self, run: Run, record: dict[str, Any]) -> None:
        """A run completed by an earlier sweep keeps its record, at its place in today's config."""
        self.records[run.index] = dict(record, index=run.index)
        self.dirty = True

    def run_started(self, run: Run) -> None: write_run_json(run, run_record(run, tails=False))

    def attempt_finished(self, run: Run, record: dict[str, Any]) -> None:
        """Record one finished attempt (also one that will be retried): journal line, then run.json."""
        if self._journal is not None:
            line = (json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n").encode()
            if self._torn:
                line = b"\n" + line  # after a short write: begin on a line of its own
            written = os.write(self._journal, line)  # in the OS now: a crash of this process loses nothing
            self._torn = written != len(line)
            if self._torn:
                raise OSError(28, "No space left on device")  # a short write: the rest would not fit either
            now = time.monotonic()
            if now >= self._next_sync:  # against power loss: fsync, at most once a second (group commit)
                os.fsync(self._journal)
                self._next_sync = now + 1.0
        write_run_json(run, record)

    def run_finished(self, run: Run, record: dict[str, Any]) -> None:
        """A run's final record: in the results file at the next flush (the loop's, after the next launch)."""
        self.records[run.index] = record
        self.dirty = True

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.dirty or (not force and now < self._next_write):
            return
        try:
            write_json_atomic(self.output_file, [self.records[i] for i in sorted(self.records)])
        except OSError as e:
            raise OutputError(f"cannot write {self.output_file}: {e.strerror or e}") from None
        self._next_write = now + max(0.25, 50 * (time.monotonic() - now))
        self.dirty = False

    def flush_due(self) -> float | None:
        """When a held-back rewrite is due (time.monotonic()), or None."""
        return self._next_write if self.dirty else None

    def finish(self, pending: Sequence[Run], interrupted: bool) -> None:
        """At the end: interrupted, <output-file>.partial holds every run; else a stale .partial is removed."""
        self.dirty = True
        self.flush(force=True)
        self.partial_file.unlink(missing_ok=True)  # an earlier stop's: stale, or written anew (its runs are here)
        if interrupted:
            everything = {**self.records, **{r.index: run_record(r) for r in pending}}.values()  # (one a run)
            write_json_atomic(self.partial_file, sorted(everything, key=lambda r: r["index"]))

    def close(self) -> None:
        if self._journal is not None:
            with suppress(OSError):  # a failed write was reported when it happened
                os.fsync(self._journal)
            os.close(self._journal)
            self._journal = None


def try_lock(path: Path) -> int | None:
    """An exclusive flock on `path` (a file, made if missing, or a folder) without waiting: its descriptor, or
    None if another process holds it. The kernel frees it when its holder dies: no stale lock. (fcntl: one
    system call; importing filelock cost 35 ms of every start.)"""
    import fcntl
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_output_dir(output_dir: Path, wait_s: float = LOCK_WAIT_S) -> int:
    """One sweep per output folder: a lock on the folder (deleting a file cannot undo it), our PID in LOCK. If
    its holder is gone but the lock still held, its guardian is ending its runs: wait for that (at most `wait_s`)."""
    lock = try_lock(output_dir)
    deadline, said = time.monotonic() + wait_s, False
    while lock is None:
        try:
            holder = int((output_dir / LOCK).read_text().strip())
        except (OSError, ValueError):
            holder = 0
        if not holder or pid_alive(holder) or time.monotonic() > deadline:
            raise UserError(f"{output_dir}: another train_sweep (PID {holder or 'unknown'}) is running a sweep in this "
                            "output folder; wait for it to finish or use another --output-dir")
        if not said:
            print(f"{output_dir}: the sweep that ran here (PID {holder}) is gone; waiting for its runs to end",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(0.1)
        lock = try_lock(output_dir)
    with suppress(OSError): (output_dir / LOCK).write_text(f"{os.getpid()}\n")
    return lock


def pid_alive(pid: int) -> bool:
    """Does a process of this PID live (ours or another user's)? Not a zombie: it has exited, its locks are gone
    (a parent that killed the sweep and has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:  # gone, or hidden (/proc mounted hidepid): ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def lock_results_file(output_file: Path) -> int:
    """One sweep per results file too: a lock on .<name>.lock beside it, holding our PID."""
    path = output_file.with_name(f".{output_file.name}.lock")
    try:
        lock = try_lock(path)
    except OSError as e:
        raise UserError(f"{path}: cannot lock the results file ({e.strerror or e})") from None
    if lock is None:
        holder = "unknown"
        with suppress(OSError): holder = path.read_text().strip() or "unknown"
        raise UserError(f"{output_file}: another train_sweep (PID {holder}) writes its results to this file; "
                        "pass --output-file to give this sweep its own")
    try:
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:  # a full disk: nothing has started, so this is bad input, not the sweep's failure
        os.close(lock)
        raise UserError(f"{output_file}: cannot write beside the results file ({path.name}: {e.strerror or e})") \
            from None
    return lock


# ----------------------------------------------------------------------------------------------
# 9. Reporting
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Progress:
    """The sweep at one moment: everything a reporter may read (made fresh each time, never changed)."""

    counts: Mapping[str, int]  # finished runs by state, then "running" and "pending"
    total: int
    eta: float | None  # seconds until the last run ends, from the mean duration of complete runs
    running: tuple[RunView, ...]
    gpus: tuple[int, ...]
    readings: Mapping[int, GpuReading]
    threshold_mb: float | None
    waiting: str | None  # why runs cannot start now (memory)
    stopping: str | None  # the signal (or "error") that is stopping the sweep
    top: tuple[tuple[str, float], ...] = ()  # the best runs so far by the ranking metric (latest values)
    search: str | None = None  # the source's line: a search's trials, pruned runs, best parameters
    cluster: tuple[str, ...] = ()  # the launcher's lines (a cluster's jobs), shown instead of the GPU rows
    packing: str | None = None  # --max-processes-per-gpu auto: the footprint, and why GPUs take no more

    @property
    def unfinished(self) -> int: return self.counts["running"] + self.counts.get("queued", 0) + self.counts["pending"]

    def bracket(self) -> str:
        """`[complete 3 | failed 1 | running 2 | pending 4]`: states that did not occur are left out."""
        shown = [(k, n) for k, n in self.counts.items() if n or k in ("complete", "running", "pending")]
        return "[" + " | ".join(f"{k} {n}" for k, n in shown) + "]"


class RunView(NamedTuple):
    """A running run, as reporters see it."""

    name: str  # its label (the hyperparameters that tell it apart), else its name
    gpus: tuple[int, ...]
    start_time: float | None
    value: float | None = None  # the latest value of the ranking metric
    step: int | None = None
    where: str = ""  # on a cluster: its job and node


def shown_path(path: Path) -> str:
    """A path as a person reads it: relative to the working folder when it is inside it."""
    with suppress(ValueError, OSError):
        return str(path.absolute().relative_to(Path.cwd()))
    return str(path)


def run_where(run: Run) -> str:
    """Where a run runs: its GPUs, or a cluster's job and node."""
    return run.location or where(run.gpus)


class Reporter:
    """Timestamped event lines on stdout (a start, a finish), each also in <output-dir>/sweep.log (with the date
    and why a run was placed there), and a summary at the end; it reads only the Progress snapshots given. A
    terminal that went away only silences it: the sweep goes on."""

    refresh_s: float | None = None  # the live view asks the loop to wake this often
    on_screen: Callable[[str | None], None] | None = None  # told the terminal a live view holds (a launcher's guardian)
    resume_hint = "{left} run(s) left: run the same command again to resume (complete runs are kept)"  # (run_sweep's)

    def __init__(self, ranking: Ranking = Ranking(), stream: Any = None, log_path: Path | None = None) -> None:
        self.ranking, self.metric, self.mode = ranking, ranking.metric, ranking.mode
        self.stream = stream or sys.stdout
        self.silent = False  # the stream broke (EIO after a hang-up, EPIPE): nothing more is shown
        self._log = open(log_path, "a", encoding="utf-8", buffering=1) if log_path else None

    def _print(self, text: str) -> None:
        if self.silent:
            return
        try:
            self.stream.write(text + "\n")  # one write: print() writes the newline apart on an unbuffered stream
            self.stream.flush()
        except (OSError, ValueError):
            self.silent = True  # a closed pager or a hung-up terminal must not stop the sweep

    def event(self, text: str, details: Sequence[str] = (), log_only: str = "", label: tuple[str, str] = ("", "")
              ) -> None:
        """One event: shown (with `details` on lines below it) and written to sweep.log (plus `log_only`). `label`
        (name, label): the live view shows the run's label where the text has its name (what varies, shorter)."""
        now = time.time()
        if self._log is not None:
            with suppress(OSError):  # the sweep's own output errors are reported where results are written
                self._log.write(f"{iso_time(now)} {text}{log_only}\n")
                for line in details:
                    self._log.write(f"{'':30}{line}\n")
        if self.refresh_s is not None and all(label):
            text = text.replace(label[0], label[1], 1)
        self.show(time.strftime("%H:%M:%S", time.localtime(now)), text, details)

    def show(self, stamp: str, text: str, details: Sequence[str]) -> None:
        self._print(f"{stamp} {text}")
        for line in details:
            self._print(f"           {line}")

    def error(self, message: str) -> None:
        """The sweep's own error, at the very end: one line on stderr (and in sweep.log, already)."""
        say_error(message)

    def begin(self, progress: Progress) -> None:
        """The loop starts (the live view takes the terminal here)."""

    def tick(self, progress: Progress) -> None:
        """The loop woke up (the live view redraws here when due)."""

    def end(self) -> None:
        """The loop ended, normally or not (the live view gives the terminal back here)."""

    def close(self) -> None:
        if self._log is not None:
            self._log.close()

    def started(self, run: Run, progress: Progress, why: str = "") -> None:
        attempt = f" (attempt {run.attempt})" if run.attempt > 1 else ""
        verb = "start" if not run.job else "attach" if run.reattach else "submit"
        self.event(f"{verb:<11} {run.name}{attempt}  {run_where(run)}  {progress.bracket()}",
                   log_only=f"  placed: {why}" if why else "", label=(run.name, run.label))

    def finished(self, run: Run, progress: Progress, requeue: str | None = None) -> None:
        attempt = f" (attempt {run.attempt})" if run.attempt > 1 else ""
        parts = [f"{run.state.value:<11} {run.name}{attempt}  {run_where(run)}  {fmt_duration(run.duration)}"]
        if run.state not in (State.COMPLETE, State.PRUNED) and run.returncode is not None:  # (None: never ran)
            parts.append(f"rc {run.returncode}" + (f" ({run.signal_name})" if run.signal_name else ""))
        if (value := metric_of(run.metrics, self.metric)) is not None:
            parts.append(f"{self.metric}={value:.4g}")
        parts.append(progress.bracket())
        if progress.eta is not None and progress.unfinished:
            parts.append(f"ETA {fmt_duration(progress.eta)}")
        details = []
        if run.state in (State.FAILED, State.TIMEOUT, State.OOM):
            last = run.error or (tail_lines(run.stderr_log, 1).strip() or "(stderr is empty)")
            details.append(f"see {shown_path(run.stderr_log)}: {one_line(last)}")
        if requeue:
            details.append(requeue)
        self.event("  ".join(parts), details, label=(run.name, run.label))

    def detached(self, lines: Sequence[str]) -> None:
        """The sweep exits with its runs left to a cluster (--detach): the launcher's word on them."""
        for line in lines:
            self._print(line)

    def resumed(self, skipped: int, to_run: int) -> None:
        if skipped:
            self.event(f"resume: {skipped} run(s) already complete (or pruned) with the same hyperparameters and "
                       f"command are skipped (--rerun runs them again); {to_run} to run")

    SUMMARY_ROWS = 50  # more runs than this: the table holds the SUMMARY_TOP best and those that did not complete

    def summary(self, done: Sequence[Run], pending: Sequence[Run], progress: Progress, results: ResultsWriter,
                extra: Sequence[str] = ()) -> None:
        """A table of the runs (all up to SUMMARY_ROWS, else those not complete), the counts, the results, the best."""
        runs = sorted(done, key=lambda r: r.index)
        if self.metric:  # ranked: the best complete run first, runs without the metric after, by index
            def rank(r: Run) -> tuple[int, float, int]:
                v = metric_of(r.metrics, self.metric) if r.state == State.COMPLETE else None
                return (v is None, 0.0 if v is None else (v if self.mode == "min" else -v), r.index)
            runs.sort(key=rank)
        rows_max = self.SUMMARY_ROWS
        shown = runs
        if len(runs) > rows_max:  # the top complete runs (by the metric), then those that did not complete
            top = [r for r in runs if r.state == State.COMPLETE][:SUMMARY_TOP]
            shown = (top + [r for r in runs if r.state != State.COMPLETE])[:rows_max]
        header = ["#", "run", "state", "where", "duration", "rc"] + ([self.metric] if self.metric else [])
        rows = []
        for r in shown:
            row = [str(r.index), r.label or r.name, r.state.value + (" (earlier sweep)" if r.skipped else ""),
                   run_where(r), fmt_duration(r.duration), "" if r.returncode is None else str(r.returncode)]
            if self.metric:
                row.append("" if (v := metric_of(r.metrics, self.metric)) is None else f"{v:.4g}")
            rows.append(row)
        counts = dict(Counter(r.state.value for r in runs))
        if pending:
            counts["not started"] = len(pending)
        text = ", ".join(f"{n} {s}" for s, n in counts.items())
        lines = [f"{len(runs) + len(pending)} run(s){': ' + text if text else ''}. Results: {results.output_file}"]
        if len(shown) < len(runs):
            lines.append(f"The table shows {len(shown)} of them: the {SUMMARY_TOP} best complete ones and those that "
                         f"did not complete (train_sweep.py report lists all)")
        if progress.stopping:
            partial = results.partial_file
            lines.append(f"Interrupted: every run's record is in {partial}" if partial.is_file()
                         else f"Interrupted: {partial} could not be written (each run has its run.json)")
            left = len(pending) + sum(r.state not in (State.COMPLETE, State.PRUNED) for r in runs)
            if left and progress.stopping != "error":
                lines.append(self.resume_hint.format(left=left))
        best = best_of((r for r in runs if r.state == State.COMPLETE), lambda r: metric_of(r.metrics, self.metric),
                       self.mode)
        if best is not None:
            lines.append(f"Best ({self.mode} {self.metric}): {best[1].name} = {best[0]:.4g}  ({best[1].run_dir})")
        if missing := [r for r in runs if r.metric_note]:
            lines.append(f"{len(missing)} complete run(s) have no {self.metric} to rank by: {missing[0].metric_note} "
                         f"(e.g. {missing[0].name}; see docs/output.md: Metrics)")
        complete = [r for r in runs if r.state == State.COMPLETE]
        if not self.metric and complete and (seen := list(dict.fromkeys(
                n for r in complete[:3] for n in printed_metrics(r)))):
            lines.append(f"No metric ranks the runs: they reported {', '.join(seen)}; rank them with "
                         f"{metric_hint('loss', seen)} (or any of these)")
        lines += extra
        self.print_summary(header, rows, [r.state for r in shown], lines)

    def print_summary(self, header: list[str], rows: list[list[str]], states: list[State], lines: list[str]) -> None:
        """Plain aligned columns for logs and pipes: rich's import and rendering cost 45-75 ms and 1.4 ms a row."""
        if rows:
            widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
            self._print("train_sweep summary")
            right = [col == self.metric for col in header]  # the metric's numbers line up on the right
            for row in [header, *rows]:
                self._print("  ".join(cell.rjust(w) if r else cell.ljust(w)
                                      for cell, w, r in zip(row, widths, right)).rstrip())
        for line in lines:
            self._print(line)


class LiveReporter(Reporter):
    """On a terminal: a live view, redrawn 4 times a second on the alternate screen (no debris on resize), fitted
    to the terminal: a line per GPU (memory bar, utilization, runs), progress with ETA, the last failure and as
    many recent events as fit (narrow: the GPU's name goes, then the bars). The last frame stays at the end."""

    refresh_s = 0.25
    EVENTS = 200

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: deque[str] = deque(maxlen=self.EVENTS)
        self._live: Any = None
        self._next_draw, self._started = 0.0, time.time()
        self._last: Progress | None = None
        self.last_failure: str | None = None

    def finished(self, run: Run, progress: Progress, requeue: str | None = None) -> None:
        super().finished(run, progress, requeue)
        if run.state in (State.FAILED, State.TIMEOUT, State.OOM):
            last = run.error or (tail_lines(run.stderr_log, 1).strip() or "(stderr is empty)")
            rc = f", rc {run.returncode}" if run.returncode is not None else ""
            self.last_failure = (f"last failure: {run.label or run.name} ({run.state.value}{rc}): {one_line(last, 300)}"
                                 f" (see {shown_path(run.stderr_log)})")

    def show(self, stamp: str, text: str, details: Sequence[str]) -> None:
        if self._live is None:  # before the loop starts and after it ends: plain lines
            super().show(stamp, text, details)
        else:  # the counts and the ETA are on the progress line: not repeated on each event
            text = re.sub(r"  \[complete \d+[^\]]*\](  ETA \S+)?", "", text)
            self.events.extend([f"{stamp} {text}", *(f"         {line}" for line in details)])

    def _draw(self, progress: Progress) -> None:
        if not self.silent:
            try:
                self._live.update(self.render(progress), refresh=True)
            except (OSError, ValueError):
                self.silent = True

    def begin(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.live import Live
        self._live = Live(console=Console(file=self.stream), auto_refresh=False, transient=True, screen=True,
                          redirect_stdout=False, redirect_stderr=False)
        try:
            self._live.start()
        except (OSError, ValueError):
            self.silent = True
        if self.on_screen is not None and not self.silent:  # someone to give the terminal back after a kill -9
            with suppress(OSError, ValueError, AttributeError): self.on_screen(os.ttyname(self.stream.fileno()))
        self.tick(progress)

    def tick(self, progress: Progress) -> None:
        self._last, now = progress, time.monotonic()
        if self._live is not None and now >= self._next_draw:
            self._next_draw = now + self.refresh_s
            self._draw(progress)

    def end(self) -> None:
        if self._live is not None:
            try:
                if not self.silent:
                    self._live.stop()  # back from the alternate screen
                    if self._last is not None:  # the final state stays on the normal screen
                        self._live.console.print(self.render(self._last, room_for_events=self.EVENTS_AT_END))
            except (OSError, ValueError):
                self.silent = True
            finally:
                self._live = None
                if self.on_screen is not None:
                    self.on_screen(None)

    EVENTS_AT_END = 8  # events in the last frame printed at the end

    def print_summary(self, header: list[str], rows: list[list[str]], states: list[State], lines: list[str]) -> None:
        """On the terminal: a rich table, each state in its colour."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
        if self.silent:
            return
        colors = {State.COMPLETE: "green", State.FAILED: "red", State.TIMEOUT: "red", State.OOM: "red",
                  State.INTERRUPTED: "yellow", State.PRUNED: "magenta"}
        console = Console(file=self.stream, soft_wrap=True)
        try:
            if rows:  # one line a run: the columns that fit (where, rc, duration go first), the names cut
                keep = list(range(len(header)))
                widths = [max(len(c) for c in col) + 3 for col in zip(header, *rows)]
                for optional in ("where", "rc", "duration"):
                    if sum(widths[i] for i in keep) + 1 > console.width and optional in header:
                        keep.remove(header.index(optional))
                name_w = max(8, console.width - 1 - sum(widths[i] for i in keep if header[i] != "run") - 3)
                table = Table(title="train_sweep summary", title_justify="left")
                for i in keep:
                    table.add_column(header[i], no_wrap=True, justify="right" if header[i] == self.metric else "left")
                for row, state in zip(rows, states):
                    cells = [Text(row[i], style=colors.get(state, "")) if i == 2 else
                             (row[i] if len(row[i]) <= name_w or header[i] != "run" else row[i][: name_w - 1] + "…")
                             for i in keep]  # only the names are cut
                    table.add_row(*cells)
                console.print(table, soft_wrap=False)  # fitted to the width (the lines below may wrap)
            for line in lines:
                console.print(line, highlight=False, markup=False)
        except (OSError, ValueError):
            self.silent = True

    def render(self, progress: Progress, room_for_events: int | None = None) -> Any:
        """The frame, fitted to the terminal's width and height (see the class)."""
        from rich.console import Group
        from rich.text import Text
        width, height = self._live.console.size if self._live is not None else (120, 40)
        width = max(20, width - 1)
        now = time.time()
        if progress.cluster:  # a cluster's jobs instead of GPU rows: its line, then each running run
            rows = [Text(line, style="bold") for line in progress.cluster]
            rows += [Text(f"  {x.name}  {x.where}" + self._run_note(x, now)) for x in progress.running]
        else:
            rows = [self._gpu_line(g, progress, width, now) for g in progress.gpus]
        c = progress.counts
        finished = progress.total - c["running"] - c.get("queued", 0) - c["pending"]
        bar = 40 if width >= 120 else 20 if width >= 90 else 10 if width >= 50 else 0
        filled = round(bar * finished / progress.total) if progress.total else bar
        progress_line = Text("█" * filled, style="cyan") + Text("░" * (bar - filled), style="dim") + Text(
            f"{' ' if bar else ''}{finished}/{progress.total}  {progress.bracket()[1:-1].replace(' |', ' ')}  "
            f"elapsed {fmt_duration(now - self._started)}"
            + (f"  ETA {fmt_duration(progress.eta)}" if progress.eta is not None and progress.unfinished
               else ""))
        top = ", ".join(f"{name} {value:.4g}" for name, value in progress.top)
        fixed = [progress_line] + [Text(text, style=style) for text, style in (
            (progress.top and f"best {self.metric} so far: {top}", "green"), (progress.search, "cyan"),
            (progress.packing, "cyan"),
            (progress.stopping is None and progress.waiting and f"waiting for GPU memory: {progress.waiting}",
             "yellow"),
            (progress.stopping and f"stopping ({progress.stopping}): ending the running runs (SIGTERM, then SIGKILL "
             "after the grace period; Ctrl+C again kills them now)", "yellow"),
            (self.last_failure, "red")) if text]
        fixed = [part for line in fixed for part in self._fold(line, width, 4)]  # the failure's reason and log
        fit = height - 2 - len(fixed)  # a terminal shorter than the GPU list: the rows that fit, then a count
        if room_for_events is None and len(rows) > max(1, fit):
            keep = max(1, fit - 1)
            hidden = progress.gpus[keep:]
            busy = sum(1 for x in progress.running if (x.gpus[0] if x.gpus else CPU) in hidden)
            more = f"{len(rows) - keep} more run(s)" if progress.cluster else \
                f"{len(hidden)} more GPU(s), {busy} run(s) on them"
            rows = rows[:keep] + [Text(f"… {more} (a taller terminal shows them)", style="dim")]
        room = room_for_events if room_for_events is not None else height - 2 - len(rows) - len(fixed)
        events: list[Any] = []  # the latest that fit, each wrapped (a failure's log path and reason are kept)
        for e in reversed(self.events):
            folded = self._fold(Text(e, style="dim"), width)
            if len(events) + len(folded) > max(0, room):
                break
            events[:0] = folded
        lines = [Text("train_sweep", style="bold"), *rows, *fixed, *events]
        for line in lines:
            line.no_wrap = True
            line.truncate(width, overflow="ellipsis")
        return Group(*lines)

    @staticmethod
    def _fold(line: Any, width: int, most: int = 3) -> list[Any]:
        """A long line as up to `most` lines of the width (indented), the last one cut."""
        if line.cell_len <= width:
            return [line]
        parts, rest = [], line
        while rest.cell_len > width and len(parts) < most - 1:
            head, rest = rest[:width], rest[width:]
            parts.append(head)
            rest = type(line)("    ") + rest
        return parts + [rest]

    def _run_note(self, x: RunView, now: float, narrow: bool = False) -> str:
        """` (3m12s, val_loss 0.41 @1200)`: how long a run has run, its latest metric; `narrow`: ` (val_loss 0.41)`
        where it has one (what a narrow row keeps)."""
        metric = f"{self.metric} {x.value:.4g}" if x.value is not None else ""
        if narrow and metric:
            return f" ({metric})"
        return (f" ({fmt_duration(now - (x.start_time or now))}" + (f", {metric}" if metric else "")
                + (f" @{x.step}" if metric and x.step is not None else "") + ")")

    def _gpu_line(self, g: int, progress: Progress, width: int, now: float) -> Any:
        """One GPU on one line: id, name (from 120 columns), memory bar (20 wide from 140, 10 from 100), used/total,
        utilization, and its runs, cut to what is left."""
        from rich.text import Text
        r = progress.readings.get(g)
        line = Text(f"{'CPU' if g == CPU else g:<4}")
        threshold = progress.threshold_mb
        if r is not None:
            if width >= 120:
                line += Text(f"{r.name[:16]:<17}")
            bar = 20 if width >= 140 else 10 if width >= 100 else 0
            frac = r.memory_used_mb / r.memory_total_mb if r.memory_total_mb else 0.0
            style = "red" if threshold is not None and r.memory_used_mb >= threshold else "green"
            filled = round(frac * bar)
            line += Text("█" * filled, style=style) + Text("░" * (bar - filled), style="dim")
            line += Text(f"{' ' if bar else ''}{r.memory_used_mb / 1024:5.1f}/{r.memory_total_mb / 1024:.0f}G ")
            line += Text(f"{'-' if r.utilization is None else f'{r.utilization}%':>4}  ")
        elif g != CPU:
            line += Text("(no reading)  ", style="dim")
        mine = [x for x in progress.running if (x.gpus[0] if x.gpus else CPU) == g]
        runs = [(x.name, self._run_note(x, now), self._run_note(x, now, narrow=True)) for x in mine]
        runs += [(x.name, f" (also GPU {x.gpus[0]})", f" (also GPU {x.gpus[0]})") for x in progress.running
                 if g in x.gpus[1:]]
        if runs:  # each run its share of the width: its name is cut before its metric is
            share = max(8, (width - line.cell_len) // len(runs) - 2)
            texts = []
            for name, note, short in runs:
                note = note if len(name) + len(note) <= share else short
                keep = max(4, share - len(note))
                texts.append((name if len(name) <= keep else name[: keep - 1] + "…") + note)
            line += Text(", ".join(texts))
        else:  # nothing of this sweep's: idle, unless someone else's processes fill it
            others = r is not None and (r.processes or (threshold is not None and r.memory_used_mb >= threshold))
            line += Text("in use by other processes" if others else "idle", style="yellow" if others else "dim")
        return line


def print_dry_run(plan: Plan, placement: str, note: str) -> None:
    """The expanded sweep as a table (name, hyperparameters, command), the count and placement; or the search."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    runs, search = plan.runs, plan.search
    title = f"dry run: {len(runs)} run(s)" if search is None else "dry run: a search (an example trial)"
    table = Table(title=title, title_justify="left", show_lines=False)
    for col in ("#", "name", "hyperparameters", "command"):
        table.add_column(col, overflow="fold")
    for run in runs[:DRY_RUN_ROWS]:  # values are shown as they are: Text, never rich markup
        hp = " ".join(k + "=" + (json.dumps(v) if isinstance(v, (list, dict)) else repr(v) if isinstance(v, float)
                                 else format_value(v)) for k, v in run.hyperparams.items())  # (floats as passed)
        extra_ = [f"gpus={run.gpus_needed}"] if run.gpus_needed > 1 else []
        extra_ += [f"gpu_memory_gb={run.memory_mb / 1024:g}"] if run.memory_mb else []
        name = Text(run.name) + (Text(f" ({run.state.value}: skipped)", style="dim") if run.skipped else Text(""))
        table.add_row(str(run.index), name, Text(" ".join([hp, *extra_]).strip()), Text(shlex.join(run.argv)))
    console = Console(width=None if sys.stdout.isatty() else 250)
    console.print(table)
    if len(runs) > DRY_RUN_ROWS:
        console.print(f"... {len(runs) - DRY_RUN_ROWS:,} more run(s) not shown (left out of this table)",
                      highlight=False)
    if search is not None:
        for line in extra("space").describe_search(search, plan.settings, placement):
            console.print(line, highlight=False, markup=False)
    else:
        console.print(f"{len(runs)} run(s). Placement: {placement}.", highlight=False)
        pruner = plan.settings.pruner not in (None, "none")
        for line in extra("search choices")(None, plan.settings) if pruner else ():  # --pruner on a list
            console.print(f"  {line}", highlight=False, markup=False)
        if skipped := sum(run.skipped for run in runs):
            console.print(f"Resume: {skipped} of them already complete (or pruned) with the same hyperparameters "
                          f"and command are skipped; {len(runs) - skipped} to run (--rerun runs them all).",
                          highlight=False)
    if note:
        console.print(note, highlight=False)


# ----------------------------------------------------------------------------------------------
# 10. The event loop
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Attempt:
    """A run the loop has started: the launcher's handle, and whether (and why) the loop is ending it."""

    run: Run
    handle: Any
    deadline: float | None  # when --timeout ends it
    ending: State | None = None  # TIMEOUT or INTERRUPTED once the loop decided to end it
    kill_at: float | None = None  # SIGKILL after this (SIGTERM was sent)
    before: dict[str, Any] | None = None  # a retry's: the record of the attempt it follows (Run.requeued)


FINISHED_ORDER = (State.COMPLETE, State.PRUNED, State.FAILED, State.TIMEOUT, State.OOM, State.INTERRUPTED)


class Wakeups:
    """Where the loop sleeps: select() on a self-pipe that signal handlers write to (SIGCHLD too: an exit wakes the
    loop at once). Ctrl+C, SIGTERM and SIGHUP are queued in `signals` (SIGHUP not where ignored, as under nohup)."""

    def __init__(self) -> None: self.signals: list[int] = []

    def install(self) -> Callable[[], None]:
        """Take the signals; returns the function that gives them back."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(r, selectors.EVENT_READ)
        self._wake_r = r
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        handled = [signal.SIGCHLD, signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            handled.append(signal.SIGHUP)
        old = {s: signal.getsignal(s) for s in handled}

        def handler(signum: int, frame: Any) -> None:
            if signum != signal.SIGCHLD:
                self.signals.append(signum)
        for s in handled:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)
            self._selector.close()
            os.close(r)
            os.close(w)
        return restore

    def wait(self, timeout: float | None) -> None:
        """Sleep until a signal (a run exited, Ctrl+C) or `timeout` seconds (None: no limit)."""
        if timeout is not None and timeout <= 0:
            return
        self._selector.select(None if timeout is None else min(timeout, 3600.0))  # epoll takes at most ~24 days
        with suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass


class Leaderboard:
    """The best so far by the ranking metric: complete runs' final values, ranked against each other only; a running
    run's latest value is kept beside (`latest`, for its row in the view), never ranked against final ones. `say`
    hears when a finished run takes the lead."""

    def __init__(self, ranking: Ranking, say: Callable[..., None]) -> None:
        self.metric, self.mode, self.say = ranking.metric, ranking.mode, say  # Reporter.event
        self.board: dict[Run, float] = {}  # complete runs: their final value
        self.latest: dict[Run, float] = {}  # running runs: their latest value
        self.leader: Run | None = None

    def running(self, run: Run, value: float) -> None: self.latest[run] = value

    def rank(self, run: Run, value: float) -> None:
        """A complete run's final value: it leads if it beats the best finished run."""
        self.latest.pop(run, None)
        self.board[run] = value
        if self.leader is None or best_of((self.leader, run), self.board.get, self.mode)[1] is run:  # (ties: best_of)
            self.leader = run
            self._announce()

    def unrank(self, run: Run) -> None:
        """A run that ended without a result (failed, interrupted, ...) leaves the board."""
        self.latest.pop(run, None)
        if self.board.pop(run, None) is not None and run is self.leader:
            self.elect()

    def elect(self, announce: bool = True) -> None:
        found = best_of(self.board, self.board.get, self.mode) if self.board else None
        leader = found[1] if found else None
        if leader is not self.leader:
            self.leader = leader
            if announce and leader is not None:
                self._announce()

    def _announce(self) -> None:
        if self.leader is None:
            return
        top = ", ".join(f"{run.label or run.name} {value:.4g}" for run, value in self.top(3))
        value, leader = self.board[self.leader], self.leader
        self.say(f"{'best':<11} {leader.name}  {self.metric}={value:.4g}  (complete runs: {top})",
                 label=(leader.name, leader.label))

    def top(self, k: int) -> list[tuple[Run, float]]:
        import heapq
        return (heapq.nsmallest if self.mode == "min" else heapq.nlargest)(k, self.board.items(), key=lambda rv: rv[1])


class MetricFeed:
    """A running run's metrics as they grow: stdout, metrics.jsonl (read on) and TensorBoard events (an extra)."""

    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        regex = re.compile(settings.metric_regex) if settings.metric_regex else None
        self.reader, self.say = MetricReader(settings.metric, regex), say
        self._jsonl_at: dict[Run, tuple[int, bool]] = {}  # how far each run's metrics.jsonl was read (in a long line?)
        follower = optional_extra("metrics tensorboard")  # None when the extras are not beside this file
        self.tensorboard = follower(settings.metric) if follower is not None and settings.metric else None

    def points(self, run: Run, lines: list[str], now: float, final: bool = False
               ) -> tuple[list[tuple[int | None, dict[str, float]]], list[tuple[int | None, dict[str, float]]]]:
        """The (step, values) the run printed in `lines`, and those it wrote to its files since the last look."""
        printed = self.reader.from_lines(lines)
        written = self._read_jsonl(run, final)
        if self.tensorboard is not None:
            written += self.tensorboard.points(run.run_dir, now, final, run.start_time)
            if self.tensorboard.note:
                self.say(self.tensorboard.note)
                self.tensorboard.note = None
        return printed, written

    def forget(self, run: Run) -> None:
        """The run's attempt has ended: its files are read from the start by its next attempt."""
        self._jsonl_at.pop(run, None)
        if self.tensorboard is not None:
            self.tensorboard.forget(run.run_dir)

    def _read_jsonl(self, run: Run, final: bool = False) -> list[tuple[int | None, dict[str, float]]]:
        """New complete lines of <run_dir>/metrics.jsonl (a file older than the attempt is not its), at the end the
        last too; a line over 4 MB (a logged matrix) is skipped."""
        path = run.run_dir / "metrics.jsonl"
        at, skipping = self._jsonl_at.get(run, (0, False))
        try:
            if not path.is_file():  # missing, or a FIFO the run made: never waited on (the loop would stop)
                return []
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return []
        chunks = []
        try:
            if at == 0 and run.start_time and os.fstat(fd).st_mtime < run.start_time - 1.0:
                return []
            while data := os.pread(fd, 4 * MB, at):
                end = data.find(b"\n") if skipping else data.rfind(b"\n")
                if end < 0 and (skipping or len(data) == 4 * MB):  # inside a line too long to keep
                    at, skipping = at + len(data), True
                    continue
                if skipping:
                    at, skipping = at + end + 1, False
                    continue
                if end < 0 and not final:
                    break  # an unfinished last line: the next look reads it whole
                chunk = data if end < 0 else data[: end + 1]
                chunks.append(chunk)
                at += len(chunk)
        finally:
            os.close(fd)
        self._jsonl_at[run] = (at, skipping)
        points = []
        for line in b"".join(chunks).splitlines():
            with suppress(ValueError, RecursionError): points.append(self.reader.from_json(json.loads(line)))
        return [p for p in points if p is not None]


class FailFast:
    """The first runs failing within seconds with one error is a broken setup, not forty failures: stop launching.
    So is a ranking metric that none of the first complete runs reported (a misspelled --metric)."""

    def __init__(self, on: bool) -> None:
        self.early: list[tuple[str, str, str]] | None = [] if on else None  # see broken_setup
        self.unranked: list[Run] | None = [] if on else None  # the first complete runs, while none has the metric

    def check_metric(self, run: Run, metric: str | None, value: float | None) -> str | None:
        """After a complete run: why the sweep must stop launching (no ranking metric in any of the first ones)."""
        if self.unranked is None or not metric or run.state != State.COMPLETE:
            return None
        if value is not None or metric in (run.metrics or {}):  # reported (NaN, a run that diverged, counts)
            self.unranked = None
            return None
        self.unranked.append(run)
        if len(self.unranked) < FAIL_FAST_RUNS:
            return None
        seen = list(dict.fromkeys(n for r in self.unranked for n in printed_metrics(r)))
        did = f"they reported {', '.join(seen)}" if seen else \
            "they reported no metric at all (see docs/output.md: Metrics)"
        hint = metric_hint(metric, seen)
        return (f"the first {FAIL_FAST_RUNS} complete runs reported no {metric} ({did}; e.g. {run.stdout_log}); no "
                f"more runs are started: {'run again with ' + hint if hint else 'fix --metric'} (--no-fail-fast "
                "keeps launching)")

    def check(self, run: Run, now: float, running: Iterable[Run]) -> str | None:
        """Why the sweep must stop launching after this attempt ended, or None."""
        if self.early is None or run.state == State.INTERRUPTED:
            return None
        quick = run.state == State.FAILED and (run.duration or 0.0) < FAIL_FAST_S
        if not quick or any(now - r.started_at >= FAIL_FAST_S for r in running):
            self.early = None  # runs do get going: failures from here on are the runs' own
            return None
        line = run.error or tail_lines(run.stderr_log, 1).strip() or f"exit code {run.returncode}, stderr empty"
        self.early.append((run.name, line, str(run.error and run.run_dir or run.stderr_log)))
        return broken_setup(self.early)


class Sweep:
    """The event loop: wait for an event (a run ended, output, a timer, a signal), update the state, record what
    finished, place what can start, report. A RunSource, a Launcher and a Placement; it sleeps in Wakeups."""

    def __init__(self, source: RunSource, launcher: Launcher, pool: Placement, results: ResultsWriter,
                 reporter: Reporter, settings: Settings, previous: Sequence[Run] = (),
                 clock: Callable[[], float] = time.monotonic, wakeups: Wakeups | None = None,
                 best_k: Any = None) -> None:
        self.source, self.launcher, self.pool = source, launcher, pool
        self.results, self.reporter, self.settings, self.clock = results, reporter, settings, clock
        self.timeout = None if launcher.own_timeout else settings.timeout or None  # a cluster keeps its own
        self.oom_patterns = [*OOM_PATTERNS, *settings.oom_pattern]
        self.ranking, self.best_k = settings.ranking, best_k
        self.metric, self.mode = self.ranking.metric, self.ranking.mode
        self.feed, self.leaders = MetricFeed(settings, reporter.event), Leaderboard(self.ranking, reporter.event)
        self.active: dict[Run, Attempt] = {}
        self.head: Run | None = None  # taken from the source, waiting for its GPUs (first come, first served)
        self.retry: deque[Run] = deque()  # failed runs to try again, after the source's runs
        self.oom_wait: dict[Run, float] = {}  # ran out of GPU memory: waiting (since when) for a GPU with more room
        self._said_waiting: set[Run] = set()
        self.ended: list[tuple[Run, str | None]] = []  # ended attempts, not recorded yet (and why requeued)
        self.done: list[Run] = list(previous)
        self.counts = {s.value: 0 for s in FINISHED_ORDER}
        self._durations = [0.0, 0]  # sum and count of complete runs' durations, for the ETA
        for run in self.done:
            self._count(run)
            value = metric_of(run.metrics, self.metric)
            if value is not None and run.state == State.COMPLETE:
                self.leaders.board[run] = value
                if best_k is not None:
                    best_k.add(run, value, publish=False)
        if best_k is not None:  # rebuilt at every start: links to set-aside folders (--rerun) go
            best_k.publish()
        self.leaders.elect(announce=False)
        self.stop: str | None = None  # the signal (or "error") that stopped the sweep
        self.halted: str | None = None  # why no more runs are started (a broken setup: fail fast)
        self.fatal: str | None = None  # the sweep's own error
        self.waiting: str | None = None  # why pending runs cannot start now (memory): poll NVML
        self.fail_fast, self.killed, self.wakeups = FailFast(not settings.no_fail_fast), False, wakeups or Wakeups()
        self.poll_interval, self._next_observe, self._ticks = POLL_MIN_S, 0.0, 0  # _ticks: passes of the loop

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        restore = self.wakeups.install()
        self.reporter.begin(self.progress())
        try:
            while True:
                now = self.clock()
                self._handle_signals(now)  # Ctrl+C, SIGTERM, SIGHUP: end the runs
                self._reap(now)  # attempts that ended: their state, their GPUs freed, reported
                self._enforce_deadlines(now)  # --timeout, SIGKILL after the grace period
                self._observe(now)  # what running runs wrote since the last look
                try:
                    self._record(now)  # journal what ended, before anything else; requeue
                    if self.stop is None and self.halted is None:
                        self._launch(now)  # place what can start
                        self.source.prepare()  # then a search tells what ended and asks the next trial ahead
                    self.results.flush()
                    due = self.pool.read_due(now)
                    if self.reporter.refresh_s or (due is not None and now >= due):
                        self.pool.read(now)  # the live view shows this tick's reading; auto learns from it
                except (OutputError, NoGpuLeft) as e:  # the sweep's own failure: stop cleanly, keep results
                    self._fail(str(e), now)
                for notes in (self.pool.notes, self.launcher.notes):
                    while notes:
                        self.reporter.event(notes.pop(0))
                if self._over() or (self.settings.detach and self._ticks and not self.ended):
                    break  # detached: what was submitted is left to the cluster (what it refused is recorded)
                self._ticks += 1
                if self.reporter.refresh_s:
                    self.reporter.tick(self.progress())
                self.wakeups.wait(self._next_wakeup(self.clock()))
        except BaseException:
            for attempt in self.active.values():  # never leave a run behind, whatever happened
                self.launcher.stop(attempt.handle, hard=True)
            raise
        finally:
            self.reporter.end()
            restore()
            self.launcher.close(detach=self.settings.detach)  # every run ended (killed, or left to the cluster)
        self.source.close()
        return self._finish()

    def _over(self) -> bool:
        return not (self.active or self.ended) and (self.stop is not None or self.halted is not None
                                                    or not self.pending())

    # -- signals ------------------------------------------------------------------------------
    def _handle_signals(self, now: float) -> None:
        while self.wakeups.signals:
            name = signal.Signals(self.wakeups.signals.pop(0)).name
            if self.stop is None:
                self.stop = name
                self.reporter.event(f"{name}: stopping; {self.launcher.stopping(len(self.active))}")
                for attempt in self.active.values():
                    self._end(attempt, State.INTERRUPTED, now)
            elif not self.killed:
                self.killed = True
                self.reporter.event(f"{name} again: killing every run now")
                for attempt in self.active.values():
                    self.launcher.stop(attempt.handle, hard=True)

    def _end(self, attempt: Attempt, state: State, now: float) -> None:
        """End a running attempt: SIGTERM, SIGKILL after the grace period (one that exited keeps its own code)."""
        if attempt.ending is None and self.launcher.stop(attempt.handle, hard=False):
            attempt.ending, attempt.kill_at = state, now + self.settings.kill_grace

    def _prune(self, attempt: Attempt, why: str) -> None:
        """The pruner gave up on a run: its process tree is killed at once, its GPUs go to the next run."""
        if attempt.ending is None and self.stop is None and self.launcher.stop(attempt.handle, hard=True):
            attempt.ending, attempt.kill_at = State.PRUNED, None
            self.reporter.event(f"{'pruning':<11} {attempt.run.name}: {why}")

    def _fail(self, message: str, now: float) -> None:
        """The sweep cannot go on: stop launching, end the runs cleanly, keep every result."""
        if self.fatal is None:
            self.fatal = message
            self.reporter.event(f"error: {message}; stopping the sweep")
        if self.stop is None:
            self.stop = "error"
            for attempt in self.active.values():
                self._end(attempt, State.INTERRUPTED, now)

    # -- runs that ended ----------------------------------------------------------------------
    def _reap(self, now: float) -> None:
        for attempt in list(self.active.values()):
            outcome = self.launcher.poll(attempt.handle)
            if outcome is None:
                continue
            run = attempt.run
            del self.active[run]
            self.pool.release(run)
            if attempt.ending == State.PENDING:  # withdrawn from a cluster's queue: it never ran, no attempt
                run.state, run.start_time, run.job, run.location = State.PENDING, None, {}, ""
                if (before := attempt.before) is not None:  # a retry: as before it went again (that attempt its end;
                    restore(run, before).skipped = False  # the launcher put its files back)
                    run.requeued = before
                self.retry.appendleft(run)
                continue
            run.end_time, run.error = outcome.ended_at or time.time(), outcome.error or run.error
            run.start_time = outcome.started_at or run.start_time if outcome.ran else None
            run.returncode, run.signal_name = outcome.returncode, signal_name(outcome.returncode)
            run.state = classify(outcome, attempt.ending, lambda run=run: is_oom(log_tail(run), self.oom_patterns))
            self.pool.ended(run, now)
            while lines := self.launcher.observe(attempt.handle):  # what it wrote last, a chunk at a time
                self._take_metrics(run, lines)
            self._take_metrics(run, [], final=True)  # its metrics files' last lines
            self.feed.forget(run)
            run.metrics = read_metrics(run, self.metric)
            final = metric_of(run.metrics, self.metric)
            if not (ranked := run.state == State.COMPLETE and final is not None):
                self.leaders.unrank(run)
                if run.state == State.COMPLETE and self.metric:
                    run.metric_note = metric_missing(run, self.metric, self.settings.metric_regex)
            if outcome.note:
                self.reporter.event(outcome.note)
            self._ended(run, outcome.rerun if run.state != State.COMPLETE else None)
            if ranked:  # after its end is said: `best` names a run the user has seen complete
                self.leaders.rank(run, final)
            self._halt(self.fail_fast.check_metric(run, self.metric, final))

    def _ended(self, run: Run, rerun: str | None = None) -> None:
        """An attempt is over: decide its requeue, count and report it (_record records it). `rerun`: it ended while
        no sweep followed it (a detached job): it runs again, as resume would run it."""
        requeue = (rerun or requeue_reason(run, self.settings.retries, self.settings.max_oom_requeues)
                   if self.stop is None else None)
        if requeue is None:
            self._count(run)
        elif run.state == State.OOM:
            run.ooms += 1
        elif rerun is None:
            run.retries_used += 1
        self.ended.append((run, requeue))
        self.reporter.finished(run, self.progress(), requeue)
        self._halt(self.fail_fast.check(run, self.clock(), self.active))  # a broken setup: fail fast (FailFast)

    def _halt(self, why: str | None) -> None:
        """Start no more runs (a broken setup), and withdraw a cluster's queued jobs."""
        if why is not None and not self.halted:
            self.halted = why
            self.reporter.event(f"error: {why}")
            for attempt in self.active.values():  # a cluster's queued jobs are not started either
                if attempt.ending is None and self.launcher.withdraw(attempt.handle):
                    attempt.ending = State.PENDING  # back among the runs not started, once the cluster has let it go

    def _enforce_deadlines(self, now: float) -> None:
        for attempt in list(self.active.values()):
            if attempt.deadline is not None and now >= attempt.deadline and attempt.ending is None:
                attempt.deadline = None
                self._end(attempt, State.TIMEOUT, now)
                if attempt.ending == State.TIMEOUT:
                    self.reporter.event(f"timeout: {attempt.run.name} ran past {self.timeout:g}s; ending it")
            if attempt.kill_at is not None and now >= attempt.kill_at:
                self.launcher.stop(attempt.handle, hard=True)
                attempt.kill_at = None

    def _observe(self, now: float) -> None:
        """New output of running runs (the launcher keeps combined.log): their metrics, as they appear."""
        if now < self._next_observe or not self.active:
            return
        self._next_observe = now + FOLLOW_S
        for attempt in self.active.values():
            self._take_metrics(attempt.run, self.launcher.observe(attempt.handle))

    def _take_metrics(self, run: Run, lines: list[str], final: bool = False) -> None:
        """Metrics in new output: the run's latest values, its series (what it printed), the source, the leader."""
        if not self.feed.reader.names:
            return
        printed, written = self.feed.points(run, lines, self.clock(), final)
        latest = None
        for step, values in printed + written:
            run.latest.update(values)
            run.step = step if step is not None else run.step
            value = values.get(self.metric) if self.metric else None
            if value is not None and math.isfinite(value):
                run.points += 1
                run.best = value if better(value, run.best, self.mode) else run.best
                latest = value
            if (why := self.source.report(run, step, values)) is not None and run in self.active:
                self._prune(self.active[run], why)
        if latest is not None:
            self.leaders.running(run, latest)
        if printed:
            append_series(run, printed)

    def _record(self, now: float) -> None:
        """Journal each ended attempt and write its run.json, then requeue it or count it as done."""
        while self.ended:
            run, requeue = self.ended.pop(0)
            record = run_record(run)
            if requeue is not None:
                record["requeued"] = requeue  # not the run's end: resume does not take it for one
            if requeue is None:
                self._done(run, record)
            try:
                self.results.attempt_finished(run, record)
            except OSError as e:  # the output folder failed: the record still goes to the results file
                if requeue is not None:
                    self._count(run)
                    self._done(run, record)
                raise OutputError(f"cannot record results in {run.run_dir.parent}: {e.strerror or e}") from None
            if requeue is None:  # journaled: now its checkpoints may be ranked (and others' deleted)
                if self.best_k is not None:
                    self.best_k.ended(run, metric_of(run.metrics, self.metric))
                continue
            run.requeued = record  # next_attempt when it goes again: if the sweep stops first, this is its end
            if run.state == State.OOM:
                run.min_free_mb, self.oom_wait[run] = run.free_at_launch_mb, now
            else:
                self.retry.append(run)

    def _done(self, run: Run, record: dict[str, Any]) -> None:
        """A run has ended for good: in the results (at the next flush), and the source told."""
        self.done.append(run)
        self.results.run_finished(run, record)
        self.source.finished(run)

    def _count(self, run: Run) -> None:
        self.counts[run.state.value] = self.counts.get(run.state.value, 0) + 1
        if run.state == State.COMPLETE and run.duration is not None:
            self._durations = [self._durations[0] + run.duration, self._durations[1] + 1]

    # -- starting runs ------------------------------------------------------------------------
    def _launch(self, now: float) -> None:
        """Start runs while a GPU can take one: out-of-memory waiters first (where a GPU has room), then the head of
        the queue (the source's runs, then retries), first come, first served."""
        self.waiting = None
        started: list[tuple[Run, str]] = []
        try:
            while self.pool.slot_free():
                picked = self._pick_oom_waiter(now) or self._pick_next(now)
                while self.pool.notes:  # what placing learned (auto's footprint) before the starts it allows
                    self.reporter.event(self.pool.notes.pop(0))
                if picked is None:
                    break
                if self._start(*picked, now):
                    started.append((picked[0], picked[2]))
                self.poll_interval = POLL_MIN_S
        finally:
            self.launcher.flush()  # a cluster submits what was started, as one job array where it can
            for run, why in started:
                if run not in self.active or run.error:
                    continue  # it could not be submitted: it ends (failed, with why) at the next poll
                try:
                    self.results.run_started(run)  # run.json says "running" (with its job id, to re-attach to)
                except OSError as e:
                    raise OutputError(f"cannot write the run folder {run.run_dir}: {e.strerror or e}") from None
                self.reporter.started(run, self.progress(), why)

    def _pick_next(self, now: float) -> tuple[Run, tuple[int, ...], str] | None:
        while True:
            if self.head is None:
                self.head = self.source.next() or (self.retry.popleft() if self.retry else None)
            if self.head is None or self._can_start(self.head):
                break
            self.head = None
        if self.head is None:
            return None
        gpus, why = self.pool.place(self.head, now)
        if gpus is None:
            self._note_waiting(why, self.head)
            return None
        run, self.head = self.head, None
        return run, gpus, why

    def _pick_oom_waiter(self, now: float) -> tuple[Run, tuple[int, ...], str] | None:
        """A run that ran out of memory waits for a GPU with more free memory than it had (or an empty one); with no
        run of ours left to free more, or after OOM_WAIT_S, it takes what there is."""
        for run, since in list(self.oom_wait.items()):
            if not self._can_start(run):
                del self.oom_wait[run]
                continue
            min_free = run.min_free_mb if run.min_free_mb is not None else math.inf
            gpus, why = self.pool.place(run, now, min_free)
            if gpus is None and (not self.pool.busy() or now - since >= OOM_WAIT_S):
                gpus, why = self.pool.place(run, now)
                if gpus is not None:
                    why += ("; no run of this sweep is left to free more memory" if not self.pool.busy()
                            else f"; it waited {OOM_WAIT_S:g}s for more free memory")
            if gpus is not None:
                del self.oom_wait[run]
                return run, gpus, why
            if run not in self._said_waiting:
                self._said_waiting.add(run)
                self.reporter.event(f"{'waiting':<11} {run.name}: ran out of GPU memory; it waits for more free "
                                    f"memory than it had then ({why})")
            self._note_waiting(why)
        return None

    def _can_start(self, run: Run) -> bool:
        """False for a run that needs more GPUs than are left (GPUs were taken out): it fails, with why."""
        why = self.pool.unplaceable(run)
        return why is None or self._not_started(run, why)

    def _not_started(self, run: Run, why: str) -> bool:
        """A run that cannot start fails, with why; the sweep goes on. Returns False."""
        self._unpause(run)
        self._go_again(run)
        run.error, run.state, run.end_time = why, State.FAILED, time.time()
        self._ended(run)
        return False

    def _note_waiting(self, why: str, run: Run | None = None) -> None:
        if self.pool.reads_memory:
            self.waiting = why  # runs wait for memory, not for a slot: poll NVML
            if run is not None and not self.active and run not in self._said_waiting:  # none of ours runs: said
                self._said_waiting.add(run)  # (not only in the live view: a log or nohup.out looked hung)
                self.reporter.event(f"{'waiting':<11} {run.name}: no run of this sweep can start now: {why}")

    def _unpause(self, run: Run) -> None:
        """A run its source paused (Run.resumed) starts, or cannot: its pause, counted as pruned, was not its end."""
        if run.resumed and run in self.done:
            self.done.remove(run)
            self.counts[State.PRUNED.value] -= 1

    @staticmethod
    def _go_again(run: Run) -> None:
        """A requeued run (a retry, after an OOM) begins its next attempt."""
        if run.requeued is not None:
            run.next_attempt(attempt_summary(run.requeued))
            run.requeued = None

    def _start(self, run: Run, gpus: tuple[int, ...], why: str, now: float) -> bool:
        self._unpause(run)
        self._said_waiting.discard(run)
        before = run.requeued
        self._go_again(run)
        run.assign(() if gpus == (CPU,) else gpus)
        run.state, run.start_time, run.started_at = State.RUNNING, time.time(), now
        run.free_at_launch_mb = self.pool.free_mb(gpus[0])
        try:
            handle = self.launcher.start(run, run.gpus)
        except OutputError:
            run.state = State.PENDING
            if self.head is None:  # not started: it stays first in line (and in the .partial file)
                self.head = run
            else:
                self.retry.appendleft(run)
            raise
        except LaunchError as e:
            return self._not_started(run, str(e))
        self.pool.launched(run, gpus, now)
        self.active[run] = Attempt(run, handle, now + self.timeout if self.timeout else None, before=before)
        return True

    # -- waiting ------------------------------------------------------------------------------
    def _next_wakeup(self, now: float) -> float | None:
        if self.ended or self.wakeups.signals:
            return 0.0
        times = [a.deadline for a in self.active.values() if a.deadline is not None]
        times += [a.kill_at for a in self.active.values() if a.kill_at is not None]
        times += [t for t in (self.launcher.next_poll(now), self.source.wake_at(now), self.results.flush_due(),
                              self.pool.read_due(now)) if t is not None]
        if self.active:
            times.append(self._next_observe)
        waits_end = [since + OOM_WAIT_S for since in self.oom_wait.values() if since + OOM_WAIT_S > now]
        if waits_end and self.stop is None:
            times.append(min(waits_end))
        if self.waiting and self.stop is None:
            times.append(now + self.poll_interval)
            self.poll_interval = min(self.poll_interval * 2, POLL_MAX_S)
        if self.reporter.refresh_s:
            times.append(now + self.reporter.refresh_s)
        return max(0.0, min(times) - now) if times else None

    # -- progress -----------------------------------------------------------------------------
    def pending(self) -> int:
        requeued = sum(1 for _, requeue in self.ended if requeue)
        head = self.head is not None and not (self.head.resumed and self.head in self.done)  # (counted paused)
        return self.source.pending() + head + len(self.retry) + len(self.oom_wait) + requeued

    def progress(self) -> Progress:
        counts = dict(self.counts)
        queued = self.launcher.queued()
        counts["running"] = len(self.active) - queued
        if queued:
            counts["queued"] = queued  # in a cluster's queue
        counts["pending"] = self.pending()
        total, n = self._durations
        eta = None
        if n and self.stop is None:
            mean, now = total / n, time.time()
            left = sum(max(0.0, mean - (now - (r.start_time or now))) for r in self.active)
            eta = (left + mean * counts["pending"]) / self.pool.slots
        running = tuple(RunView(r.label or r.name, r.gpus, r.start_time, self.leaders.latest.get(r), r.step,
                                r.location) for r in self.active)
        return Progress(counts, sum(counts.values()), eta, running, tuple(self.pool.gpus), dict(self.pool.readings),
                        self.pool.threshold_mb, self.waiting, self.stop,
                        tuple((r.name, v) for r, v in self.leaders.top(3)), self.source.status(),
                        tuple(self.launcher.describe()), self.pool.packing())

    def _finish(self) -> int:
        if self.settings.detach and self.stop is None and self.active:  # left to the cluster: no results file
            self.reporter.detached(self.launcher.detached(list(self.active), self.pending()))  # until re-attached
            return EXIT_SWEEP_ERROR if self.fatal else EXIT_OK
        pending = [r for r in (self.head, *self.retry, *self.oom_wait)  # (a paused run that did not go on: its pause)
                   if r is not None and not (r.resumed and r in self.done)] + self.source.remaining()
        for run in [r for r in pending if r.requeued is not None]:  # stopped before its retry: it failed (or OOM)
            pending.remove(run)
            self._count(run)
            if run.state == State.PRUNED:  # a paused run that went on: its source took its pause for its end
                self.done.append(run)  # (its record, its pause's, is in the results)
            else:  # (its run.json, which a retry withdrawn from a cluster's queue left saying running)
                self._done(run, record := {k: v for k, v in run.requeued.items() if k != "requeued"})
                with suppress(OSError): write_run_json(run, record)
            if self.best_k is not None:
                self.best_k.ended(run, None)
        try:
            self.results.finish(pending, interrupted=self.stop is not None or self.halted is not None)
        except OutputError as e:
            self.fatal = self.fatal or str(e)
        except OSError as e:
            self.fatal = self.fatal or f"cannot write {self.results.partial_file}: {e.strerror or e}"
        if isinstance(saved := read_json(path := Path(self.settings.output_dir) / "sweep.json"), dict):
            with suppress(OSError):  # how it ended, for status and list (a search's trials asked again are history)
                write_json_atomic(path, {**saved, "ended": "interrupted" if self.stop else "stopped early"
                                         if self.halted else "finished"})
        extra = self.source.summary() + self.pool.summary()
        if self.halted:
            extra.append(f"Stopped early: {self.halted}")
        if self.best_k is not None:
            verb = "would free" if self.best_k.keep else "freed"
            extra.append(f"Checkpoints: the {self.best_k.k} best runs keep theirs ({self.best_k.folder}); {verb} "
                         f"{fmt_bytes(self.best_k.freed)} in {self.best_k.pruned} other run(s)")
        self.reporter.summary(self.done, pending, self.progress(), self.results, extra)
        if self.fatal:
            self.reporter.error(self.fatal)
            return EXIT_SWEEP_ERROR
        if self.stop:
            return EXIT_INTERRUPTED
        return EXIT_OK if not self.halted and all(r.state in (State.COMPLETE, State.PRUNED) for r in self.done) \
            else EXIT_RUN_FAILED


# ----------------------------------------------------------------------------------------------
# 11. Running a sweep: the plan, the backends, the Python API (run, load)
# ----------------------------------------------------------------------------------------------

def parse_gpu_ids(values: Sequence[str] | None) -> list[int] | None:
    """--gpus values -> ids, or None for every GPU ('all' or no flag). Accepts '0 1' and '0,1'."""
    if not values:
        return None
    items = [v for value in values for v in value.split(",") if v]
    if [i.lower() for i in items] == ["all"]:
        return None
    ids: list[int] = []
    for item in items or [""]:  # (--gpus "": no id at all)
        if not (item.isascii() and item.isdigit()):  # (not '٣': int() reads any script's digits)
            raise UserError(f"--gpus: {item!r} is not a GPU id (use numbers as nvidia-smi shows them, or 'all')")
        if int(item) in ids:
            raise UserError(f"--gpus: GPU {item} is listed twice")
        ids.append(int(item))
    return ids


def resolve_gpus(settings: Settings) -> tuple[list[int], NvmlProbe | None, str]:
    """Which devices the sweep uses, the NVML probe (or None), and a note on how placement works."""
    ids = parse_gpu_ids(settings.gpus)
    if settings.disable_gpu_monitoring:
        if ids is None:
            raise UserError("--disable-gpu-monitoring needs --gpus (which GPUs to use)")
        return list(ids), None, "GPU monitoring disabled: placing runs by slots only"
    probe, why = open_probe()
    if probe is None:
        if ids is None:
            return [CPU], None, f"{why}: running on the CPU"
        return list(ids), None, f"{why}: placing runs by slots only"
    if ids is None:
        return list(range(probe.count)), probe, ""
    if unknown := [i for i in ids if i >= probe.count]:
        probe.close()
        raise UserError(f"--gpus: GPU {unknown[0]} not found: NVML reports {probe.count} GPU(s), ids "
                        f"0-{probe.count - 1}")
    return list(ids), probe, ""


def check_writable(folder: Path, what: str) -> Path | None:
    """Make the folder (and its parents) where need be, and see that it can be written; the first folder made."""
    made: Path | None = None
    try:
        for level in reversed([folder, *folder.parents]):  # (each made by this mkdir: not by a sweep beside it)
            with suppress(FileExistsError): os.mkdir(level); made = made or level
        probe = folder / f".train_sweep_write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{folder}: {what} cannot be written ({e.strerror or e})") from None
    return made


def remove_made(top: Path | None) -> None:
    """A sweep refused as it began leaves no folder it made: they hold only its locks (files with its PID)."""
    for folder, _, files in os.walk(top, topdown=False) if top else ():
        with suppress(OSError):
            for lock in (Path(folder, n) for n in files if n.endswith(".lock")):
                if lock.read_text().strip() == str(os.getpid()):
                    lock.unlink()
            os.rmdir(folder)


def resolve_path(text: str, flag: str) -> Path:
    """A path given on the command line, absolute with symlinks resolved; a loop or an empty path is bad input."""
    if not text:
        raise UserError(f"{flag} is empty")
    try:
        return Path(text).resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise UserError(f"{flag} {text!r}: {e}") from None


def check_output_file(settings: Settings, runs: Sequence[Run], command: Sequence[str]) -> None:
    """--output-file must be a file of its own: not a folder, an input of the sweep, a file the sweep keeps, or in
    a run folder that this sweep's folder is not in (cleanup and --rerun move or delete those whole)."""
    text = settings.output_file
    path = resolve_path(text, "--output-file")
    if text.endswith(os.sep) or path.is_dir() or path.name in ("", ".", ".."):
        raise UserError(f"--output-file {text!r}: names a folder; give it a file name")
    if path.exists() and not path.is_file():  # the results replace it (a rename): /dev/null would be a file after
        raise UserError(f"--output-file {text!r} is not a plain file (a device, a FIFO); give another file")
    inputs = [settings.config_file, *settings.configs]
    if Path(command[0]).name.startswith("python") and len(command) > 1:
        inputs.append(command[1])
    for name in inputs:
        if name and resolve_path(name, "input") in (path, path.with_name(path.name + ".partial")):
            raise UserError(f"--output-file {text!r} would overwrite {name}, an input of the sweep; choose another "
                            "file")
    output_dir = resolve_path(settings.output_dir, "--output-dir")
    if path == output_dir or (path.parent == output_dir and path.name.partition("~")[0] in OWNED_FILES) or \
            path.parent == output_dir / "best" or any(path.parent == run.run_dir for run in runs):
        raise UserError(f"--output-file {text!r} is a file the sweep writes itself; choose another file")
    folder = next((d for d in path.parents if (d / RUN_MARK).exists()), None)
    if folder and folder not in output_dir.parents:
        raise UserError(f"--output-file {text!r} is inside {folder}, a run folder of a sweep; choose another file")


@dataclasses.dataclass
class Plan:
    """What a sweep will do: resolved settings, the runs (a search: an example and a factory), the journal."""

    settings: Settings
    spec: SweepSpec
    runs: list[Run]
    journal: Journal
    search: Any = None  # the search's space and sampler (train_sweep_extras.space.SearchSpec), None for a list
    make_run: Callable[[dict[str, Any], int], Run] | None = None

    @property
    def searching(self) -> bool:
        """A search, a list with a pruner, or agents (--storage): an Optuna study decides (the search extra)."""
        return self.search is not None or self.settings.pruner not in (None, "none") or bool(self.settings.storage)


def plan_runs(settings: Settings, overrides: Sequence[str]) -> Plan:
    """Config file (or --configs, or a sweep file) + overrides + flags -> the plan: the settings resolved once,
    here (the flags over the config over the defaults), the runs (a search makes its own as trials are
    asked), and the output folder's journal."""
    output_dir = resolve_path(settings.output_dir, "--output-dir")
    if output_dir == output_dir.parent:
        raise UserError(f"--output-dir {settings.output_dir!r}: the filesystem's root cannot hold run folders")
    spec, search, settings = read_sources(settings, overrides)
    space = extra("space") if search is not None else None
    if space is not None:
        params, plain = space.parse_search_overrides(overrides) if overrides else ({}, {})
        cli_sweeps: dict[str, list[Any]] = {}
        search.params.update(params)
    else:
        cli_sweeps, plain = parse_sweep_overrides(overrides) if overrides else ({}, {})
    check_hyperparams(plain, "overrides")
    for key, values in cli_sweeps.items():
        check_value(values, f"override {key}")
    set_values = parse_set(settings.set)
    values = {**plain, **set_values}
    for key in values:  # a value set on every run over a swept key would make every run the same
        if len(cli_sweeps.get(key, ())) > 1 or len(spec.grid.get(key, ())) > 1:
            swept = "a command-line sweep" if key in cli_sweeps else f"{spec.source}'s 'grid'"
            raise UserError(f"{'--set' if key in set_values else 'the override'} {key}=...: {key!r} is swept by "
                            f"{swept}; setting it on every run would make the runs the same: drop one of them")
        if key in plain and key in set_values:
            raise UserError(f"--set {key}=... and the override {key}=... both set {key!r}: give it once")
    if settings.configs and cli_sweeps:
        raise UserError(f"the sweep override {next(iter(cli_sweeps))}=... cannot be combined with --configs; use --set")
    if settings.configs:
        entries = select_entries(expand_config_files(settings.configs, values), settings.max_runs, settings.shuffle,
                                 settings.seed)
        for e in entries:
            e.gpus_per_run, e.gpu_memory_gb = settings.gpus_per_run or 1, settings.gpu_memory_gb
        settings = dataclasses.replace(settings, config_file=None)
    elif space is not None:
        settings = space.complete_search(settings, search)
        entries = []
    else:
        entries = expand(spec, cli_sweeps, values, settings.gpus_per_run, settings.gpu_memory_gb, settings.max_runs,
                         settings.shuffle, settings.seed)
    per_gpu = next(v for v in (settings.max_processes_per_gpu, spec.max_processes_per_gpu, 1) if v is not None)
    settings = dataclasses.replace(
        settings, command=settings.command or spec.command or "python train.py", max_processes_per_gpu=per_gpu,
        arg_style=settings.arg_style or spec.arg_style or "hydra", name_template=settings.name_template or
        spec.name_template, mps=settings.mps if settings.mps is not None else bool(spec.mps))
    settings = backend_class(settings.backend).resolve(settings, spec)
    for name, value in (("--study-name", settings.study_name), ("--agent-grace", settings.agent_grace)):
        if value is not None and settings.storage is None:
            raise UserError(f"{name} is for agents sharing a sweep: it needs --storage URL")
    settings = extra("source shared").resolve(settings) if settings.storage is not None else settings  # name, grace
    if not settings.metric and (settings.pruner or "").partition("(")[0].strip() in set(PRUNERS) - {"none"}:
        raise UserError(f"--pruner {settings.pruner} needs --metric: the metric it judges runs by")  # (a typo: extras)
    if search is None:
        given = [flag for flag, value in (("--n-trials", settings.n_trials), ("--search-hours", settings.search_hours),
                                          (f"--mode {settings.mode}", len(settings.modes) > 1),
                                          ("--warm-start", settings.warm_start)) if value]
        if given:
            raise UserError(f"{given[0]} is for a search (--search, the config's 'search' block or --sweep-file)")
    abbrev = {**spec.abbrev, **parse_abbreviations(settings.abbrev)}
    journal: Journal = {}  # a damaged record is refused, not passed over: a finished run it hid would run again
    for name, records in read_journal(path := Path(settings.output_dir) / JOURNAL).items():  # (into its folder)
        for record in records:
            if (why := record_damage(record)) and not settings.rerun:  # (--rerun sets the journal aside)
                raise UserError(f"{path}: the record of {name!r} is damaged: {why} (mend or delete that line)")
            journal.setdefault(name, []).extend([] if why else [record])  # (--rerun sets its folder aside too)
    command = resolve_command(settings.command)
    if space is None:
        known = {r.get("identity"): name for name, records in journal.items() for r in records}
        runs = build_runs(entries, command, output_dir, abbrev, settings.command, settings.arg_style,
                          settings.name_template, settings.source, known)
        for run, label in zip(runs, run_labels({r.name: r.hyperparams for r in runs}).values()):
            run.label = label
        return Plan(settings, spec, runs, journal)
    example, make_run = space.trial_runs(settings, spec, search, values, command, output_dir, abbrev)
    return Plan(settings, spec, [example], journal, search, make_run)


def read_sources(settings: Settings, overrides: Sequence[str] = ()) -> tuple[SweepSpec, Any, Settings]:
    """The config file (or a sweep file) and whether the sweep is a search. Without a config file (the default
    missing) the overrides are the sweep: `train_sweep lr=1e-3,1e-4 seed=0,1`."""
    if settings.sweep_file:
        if settings.configs:
            raise UserError("--sweep-file and --configs cannot be combined")
        search, command, style = extra("sweep file")(settings.sweep_file)
        spec = SweepSpec(settings.sweep_file, [{}], form="object", search=search, command=command, arg_style=style)
        return spec, search, dataclasses.replace(settings, config_file=settings.sweep_file)
    if settings.configs:
        if settings.search:
            raise UserError("--search cannot be combined with --configs (a search makes its runs' hyperparameters)")
        return SweepSpec("--configs", []), None, settings
    default = settings.config_file == Settings.config_file
    if (settings.search or overrides) and default and not Path(settings.config_file).exists():
        spec = SweepSpec("the command line", [{}], form="object")  # a sweep from the command line alone
        settings = dataclasses.replace(settings, config_file=None)
    else:
        spec = load_spec(settings.config_file)
    search = spec.search
    if settings.search and search is None:
        if len(spec.runs) > 1 or spec.grid:
            raise UserError(f"{spec.source}: --search searches one space, and this config lists "
                            f"{len(spec.runs) * math.prod(len(v) for v in spec.grid.values())} runs; give their shared "
                            "values as 'defaults' (object form), the rest as parameters to search")
        spec.defaults = {**spec.defaults, **spec.runs[0]}
        search = spec.search = extra("space").SearchSpec("the command line", {})
    return spec, search, settings


def check_settings(settings: Settings) -> None:
    """What the flags say that can be checked before anything else: patterns, metric names, best-K."""
    for pattern in settings.oom_pattern:
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"--oom-pattern {pattern!r}: {e}") from None
    if any(not name or _BAD_KEY.search(name) for name in settings.metric):
        raise UserError(f"--metric {next(n for n in settings.metric if not n or _BAD_KEY.search(n))!r}: a metric's "
                        "name is non-empty, without spaces, '=' or ','")
    if settings.top_k is None and (settings.checkpoint_glob or settings.keep_checkpoints):
        raise UserError(f"{'--checkpoint-glob' if settings.checkpoint_glob else '--keep-checkpoints'} is for --top-k "
                        "K (keep checkpoints only in the K best runs); without it no checkpoint is deleted")
    if settings.top_k is not None:
        if not settings.metric or not settings.checkpoint_glob:
            raise UserError("--top-k needs --metric (what ranks the runs) and --checkpoint-glob (what to keep)")
        extra("best-k check")(settings)
    if settings.metric_regex is not None:
        try:
            groups = re.compile(settings.metric_regex).groupindex
        except re.error as e:
            raise UserError(f"--metric-regex {settings.metric_regex!r}: {e}") from None
        if "value" not in groups or not settings.metric:
            raise UserError(f"--metric-regex {settings.metric_regex!r}: needs a group (?P<value>...) and a --metric "
                            "to name what it finds")


def sweep_group(output_dir: Path) -> str:
    """The sweep's name for trackers: its output folder's name (with its parent's for the default `outputs`)."""
    folder = output_dir.resolve()
    return f"{folder.parent.name}-{folder.name}" if folder.name == "outputs" else folder.name


class Backend(Protocol):
    """Where runs run (--backend, BACKENDS): this machine (LocalBackend) or a cluster (an extra's). Made from the
    plan, it checks what it can before anything is written, then gives the loop a launcher and a placement."""

    placement: str  # where runs go, in one line (--dry-run, sweep.log)
    note: str  # what the user should know about it (no NVML: slots only), or ""

    def check(self) -> None:
        """Just before the sweep starts (not for --dry-run): what must answer (a cluster) does."""

    def attach(self, runs: Sequence[Run], journal: Journal, plan: Plan) -> list[str]:
        """Before resume: re-attach what an earlier sweep left running here, or end it. Returns what to say."""

    def start(self, sweep_id: str) -> list[str]:
        """Before anything is written: start what the runs need (an MPS daemon); UserError if it refuses."""

    def record(self) -> dict[str, Any]:
        """What sweep.json keeps of it: the GPUs, the placement policy."""

    def open(self, sweep_id: str, lock: int, say: Callable[[str], None]) -> tuple[Launcher, Placement]:
        """The event loop's launcher and placement."""

    def close(self, say: Callable[[str], None] | None = None) -> None:
        """The loop is over, or never began: stop what start() and open() started (said with `say`)."""


class LocalBackend:
    """Runs as process trees on this machine's GPUs (or CPU): GpuPool, LocalLauncher, the guardian, --mps."""

    @classmethod
    def resolve(cls, settings: Settings, spec: SweepSpec) -> Settings:
        """Nothing of a cluster's: its flags are refused by name."""
        if settings.detach:
            raise UserError("--detach needs --backend slurm: local runs end with the sweep")
        for field in dataclasses.fields(settings):
            if field.metadata.get("group") == "slurm" and field.name != "backend" and getattr(settings, field.name):
                raise UserError(f"--{field.name.replace('_', '-')} needs --backend slurm")
        return settings

    def __init__(self, plan: Plan) -> None:
        settings = self.settings = plan.settings
        self.output_dir, self.env = Path(settings.output_dir), dict(plan.spec.env)
        self.daemon: Any = None
        self.guardian: Guardian | None = None
        self.gpus, self.probe, self.note = resolve_gpus(settings)
        widest = max(plan.runs, key=lambda r: r.gpus_needed)
        if widest.gpus_needed > len(self.gpus):
            device = "the CPU counts as one device" if self.gpus == [CPU] else f"the sweep has {len(self.gpus)}"
            raise UserError(f"run [{widest.index}] {widest.name} needs {widest.gpus_needed} GPUs; {device}")
        if self.probe is None and any(r.memory_mb for r in plan.runs):
            self.note = (self.note + "; " if self.note else "") + "gpu_memory_gb needs NVML readings and is not checked"
        elif self.probe is not None and any(r.memory_mb for r in plan.runs):  # a need no GPU has: a wait without end
            largest = max(r.memory_total_mb for r in self.probe.read(self.gpus).values())
            big = next((r for r in plan.runs if (r.memory_mb or 0) > largest), None)
            if big is not None:
                raise UserError(f"run [{big.index}] {big.name} needs {fmt_bytes(big.memory_mb * MB)} of GPU memory "
                                f"(gpu_memory_gb); the largest GPU of the sweep has {fmt_bytes(largest * MB)}")
        if settings.mps:
            if self.gpus == [CPU]:
                raise UserError(f"--mps shares GPUs among runs; this sweep has none ({self.note or 'the CPU'})")
            extra("mps").check()
        per_gpu = settings.max_processes_per_gpu
        auto = per_gpu == "auto"
        if auto and self.probe is None:
            raise UserError("--max-processes-per-gpu auto learns each run's GPU memory from NVML, which is not "
                            f"available here ({self.note or 'no reading'}): give a number")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threshold = None if self.probe is None else math.inf if auto else settings.memory_threshold_gb * 1024
        self.policy = Policy(AUTO_MAX_PER_GPU if auto else per_gpu if isinstance(per_gpu, int) else 1, threshold,
                             settings.max_parallel, auto, cores, bool(settings.mps), settings.settle_seconds)
        self.placement = self.policy.describe(self.gpus)

    def check(self) -> None:
        """This machine's GPUs were checked when the backend was made."""

    def attach(self, runs: Sequence[Run], journal: Journal, plan: Plan) -> list[str]: return []  # ends with the sweep

    def start(self, sweep_id: str) -> list[str]:
        if not self.settings.mps:
            return []
        uuids = self.probe.uuids(self.gpus) if self.probe is not None else ()
        self.daemon = extra("mps")(self.output_dir, uuids)
        return self.daemon.start(sweep_id)

    def record(self) -> dict[str, Any]: return {"gpus": self.gpus, "policy": dataclasses.asdict(self.policy)}

    def open(self, sweep_id: str, lock: int, say: Callable[[str], None]) -> tuple[Launcher, Placement]:
        cgroups = RunCgroups(sweep_id)
        if cgroups.why:
            say(f"note: {cgroups.why}: runs are tracked by process group, marker and subreaper")
        self.guardian = Guardian(sweep_id, self.settings.kill_grace, lock=lock, cgroups=cgroups.root)
        daemon = self.daemon
        launcher = LocalLauncher(Path.cwd(), sweep_id, cpu_only=self.gpus == [CPU], guardian=self.guardian,
                                 kill_grace=self.settings.kill_grace, cgroups=cgroups,
                                 group=sweep_group(self.output_dir),
                                 extra_env={**self.env, **(daemon.env if daemon is not None else {})},
                                 device_ids=dict(zip(self.gpus, daemon.devices)) if daemon is not None else {})
        cache = None  # auto: footprints remembered under this command, folder and GPU model
        if self.policy.auto and not self.settings.no_footprint_cache and self.probe is not None:
            with suppress(Exception):
                cache = {"command": [self.settings.command], "cwd": Path.cwd(),
                         "gpu_model": self.probe.name(self.gpus[0])}
        return launcher, GpuPool(self.gpus, self.policy, self.probe, footprint_cache=cache)

    def close(self, say: Callable[[str], None] | None = None) -> None:
        if self.daemon is not None:
            trouble = self.daemon.stop()
            if trouble is not None and say is not None:
                say(f"MPS: {trouble}")
            if say is not None:
                self.daemon = None
        if self.guardian is not None:
            self.guardian.wait()
            self.guardian = None
        if say is None and self.probe is not None:
            self.probe.close()
            self.probe = None


BACKENDS: dict[str, Any] = {"local": LocalBackend, "slurm": "backend slurm"}  # --backend NAME: a class, or its extra


def backend_class(name: str) -> Any:
    """The Backend class for --backend NAME: this file's, or an extra's (imported now)."""
    found = BACKENDS[name]
    return extra(found) if isinstance(found, str) else found


def run_sweep(plan: Plan, backend: Backend, cwd: Path) -> int:
    """Lock the output folder and results file, resume (or set old runs aside; the backend re-attaches what an
    earlier sweep left running), save the settings, open a search's study, and run the event loop."""
    settings, runs, journal_records, search = plan.settings, plan.runs, plan.journal, plan.search
    output_dir, output_file = Path(settings.output_dir), Path(settings.output_file)
    locks = [lock_output_dir(output_dir)]
    try:
        locks.append(lock_results_file(output_file))
        journal = output_dir / JOURNAL
        for path in (journal, output_dir / "sweep.json", *([output_dir / STUDY] if plan.searching else [])):
            if path.exists() and not path.is_file():
                raise UserError(f"{path} is not a file: the sweep keeps its {path.name} there; move it")
        for run in runs if search is None else ():
            if run.run_dir.exists() and not (run.run_dir.is_dir() and owned(run.run_dir, run.name)):
                raise UserError(f"{run.run_dir} exists and was not made by train_sweep; the sweep never writes "
                                "into, moves or deletes what is not its own: move it, or use another --output-dir")
        said = backend.attach(runs, journal_records, plan)  # jobs an earlier sweep left: followed or cancelled
        if settings.rerun:
            old = runs if search is None else [output_dir / name for name in journal_records]
            for folder in (getattr(r, "run_dir", r) for r in old):
                if folder.is_dir() and owned(folder, folder.name):
                    set_aside(folder)
            for path in (p for p in (journal, output_dir / STUDY) if p.exists()):
                set_aside(path)
            journal_records = {}
        # before anything is written: a study made for another search is refused (what it says is logged later)
        source_kind = "source shared" if settings.storage else "source search"  # agents' study, or this host's
        searcher = extra(source_kind)(plan, journal_records, said.append) if plan.searching else None
        skipped = plan_resume(runs, journal_records) if search is None else searcher.earlier()
        sweep_id = os.urandom(6).hex()  # tags the runs' processes for the guardian
        said += backend.start(sweep_id)  # before anything is written: it may refuse (MPS)
        record = {"train_sweep": __version__, "sweep_id": sweep_id, "argv": [redact(a) for a in sys.argv],
                  "cwd": str(cwd), "python": sys.executable, "started": iso_time(time.time()),
                  "source": settings.source, "command": settings.command, **backend.record(),
                  "oom_patterns": [*OOM_PATTERNS, *settings.oom_pattern],
                  "runs": None if settings.storage else len(runs) if search is None else settings.n_trials,
                  "skipped": len(skipped),  # ("runs": an agent runs what the other hosts leave, no count ahead)
                  "names": [r.name for r in runs] if search is None else None,  # (status: the runs of this sweep)
                  "settings": {**dataclasses.asdict(settings), "storage": redact(settings.storage or "") or None}}
        write_json_atomic(output_dir / "sweep.json", record)
        live = sys.stdout.isatty() and not settings.no_live
        reporter = (LiveReporter if live else Reporter)(settings.ranking, log_path=output_dir / "sweep.log")
        if search is not None or settings.rerun:  # the same command would not resume: --rerun runs everything again
            again = "without --rerun" if settings.rerun else "again"  # (with it, a search would start afresh)
            reporter.resume_hint = (f"The search stopped before its end: run the same command {again} to resume it "
                                    "(finished trials are kept)" if search is not None else "{left} run(s) left: run "
                                    "the same command without --rerun to resume (complete runs are kept)")
        what = f"{len(runs)} run(s)" if search is None else f"a {settings.search} search" + (
            f" of {settings.n_trials} trials" if settings.n_trials else "")
        reporter.event(f"train_sweep {__version__}: {what} from {settings.source} -> {output_dir}/<name>/")
        reporter.event(f"placement: {backend.placement}")
        if backend.note:
            reporter.event(backend.note)
        if search is None:
            reporter.resumed(len(skipped), len(runs) - len(skipped))
        for line in search.notes if search is not None else ():
            reporter.event(f"{'search':<11} {line}")
        results = ResultsWriter(output_file, journal)
        for run, previous in skipped:  # a metric named only now (--metric added): from its output, as report reads it
            if run.state == State.COMPLETE and metric_of(run.metrics, metric := settings.ranking.metric) is None:
                run.metrics = previous["metrics"] = {**(run.metrics or {}), **(read_metrics(run, metric) or {})} or None
            results.add_previous(run, previous)
        try:
            for line in said:
                reporter.event(line)
            launcher, placement = backend.open(sweep_id, locks[0], reporter.event)
            reporter.on_screen = getattr(launcher, "screen", None)  # gives the terminal back after a kill -9
            best_k = extra("best-k")(output_dir, settings, reporter.event) if settings.top_k and \
                settings.checkpoint_glob and settings.ranking.metric else None
            todo = [r for r in runs if not r.skipped] if search is None else []
            for run in todo:  # (after every refusal) never run into a folder that holds another run: it would be lost
                if other := holds_other(run):
                    reporter.event(f"{'set aside':<11} {run.name}: its folder holds a run of other hyperparameters or "
                                   f"command ({other.get('state')}); kept as {set_aside(run.run_dir).name}")
            source = searcher.source(todo, reporter.event) if searcher is not None else ListSource(todo)
            sweep = Sweep(source, launcher, placement, results, reporter, settings, previous=[r for r, _ in skipped],
                          best_k=best_k)
            return sweep.run()
        finally:
            backend.close(reporter.event)
            results.close()
            reporter.close()
    finally:
        backend.close()  # where the sweep failed before its loop began (said there otherwise)
        for lock in locks:
            os.close(lock)


# -- The Python API (docs/api.md): run() takes the flags as keywords, load() reads a sweep's folder -----------
API = ("run", "load", "SweepResult", "RunResult", "SweepError")  # in the extras' api module


def __getattr__(name: str) -> Any:
    """`train_sweep.run`, `train_sweep.load`, ...: the Python API, from the package beside this file."""
    if name not in API:
        raise AttributeError(f"module 'train_sweep' has no attribute {name!r}")
    try:
        return getattr(extra("api"), name)
    except UserError as e:
        raise AttributeError(f"train_sweep.{name}: {e}") from None


def __dir__() -> list[str]: return sorted([*globals(), *API])  # (a notebook's completion lists the API too)


def execute(settings: Settings, overrides: Sequence[str] = ()) -> int:
    """The sweep the CLI runs: plan, check, run; returns the exit code (UserError before anything starts)."""
    backend: Backend | None = None
    try:
        plan = plan_runs(settings, overrides)
        settings, runs = plan.settings, plan.runs
        check_settings(settings)
        backend = backend_class(settings.backend)(plan)  # checks this machine's GPUs, or the cluster's request
        if plan.searching:  # said now, before anything starts: a missing Optuna, a sampler or pruner that cannot run
            extra("source shared" if settings.storage else "source search").check(plan)
        cwd, command = Path.cwd(), resolve_command(settings.command or "")
        if (problem := command_problem(command, cwd, plan.spec.env.get("PATH"))) and not settings.dry_run:
            raise UserError(problem)
        if problem:  # a dry run, how a sweep is checked before it runs, says so and goes on
            print(f"train_sweep: warning: {problem}: the sweep itself would refuse to start", file=sys.stderr)
        if settings.dry_run:
            if plan.search is None and not settings.rerun:  # what resuming in this output folder would skip
                plan_resume(runs, plan.journal)
            print_dry_run(plan, backend.placement, backend.note)
            return EXIT_OK
        check_output_file(settings, runs, command)
        backend.check()  # before anything is written (a cluster that does not answer)
        made: list[Path | None] = []
        try:  # (the results file's folder first: it most often exists)
            made.append(check_writable(Path(settings.output_file).resolve().parent, "folder of --output-file"))
            made.append(check_writable(Path(settings.output_dir), "output folder"))
            return run_sweep(plan, backend, cwd)
        except (UserError, KeyboardInterrupt):  # (the loop takes Ctrl+C itself: this is before it)
            for folder in made: remove_made(folder)
            raise
    finally:
        if backend is not None:
            backend.close()


# ----------------------------------------------------------------------------------------------
# 12. CLI
# ----------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), naming the flag a misspelled one meant."""

    def error(self, message: str) -> Any:
        import difflib
        if message.startswith("unrecognized arguments:"):
            options = {o.lstrip("-"): o for action in self._actions for o in action.option_strings}  # (not '--')
            for word in message.split(":", 1)[1].split():
                guess = difflib.get_close_matches(word.split("=")[0].lstrip("-"), list(options), n=1, cutoff=0.6)
                if word.startswith("-") and (guess or "=" in word):
                    message += f" (did you mean {options[guess[0]] if guess else word.lstrip('-') + ', an override'}?)"
                    break
        self.exit(EXIT_BAD_INPUT, f"train_sweep: error: {message} (see --help)\n")


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the flags from Hydra-style overrides (`lr=1e-3,1e-4`): words with '=' that are no flag or value of one."""
    single = {opt for action in parser._actions for opt in action.option_strings if action.nargs is None}
    flags: list[str] = []
    overrides: list[str] = []
    takes_value = False  # the word before was a flag that takes one value
    for word in argv:
        (overrides if not takes_value and not word.startswith("-") and ("=" in word or word.startswith("~"))
         else flags).append(word)
        takes_value = not takes_value and word.startswith("-") and word in single
    return flags, overrides


def build_parser() -> argparse.ArgumentParser:
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-c") else ""
    p = _Parser(
        prog=invoked or "train_sweep",  # the command as it was typed: train_sweep.py or train-sweep
        description="Train one model per hyperparameter set, keeping every listed GPU busy. KEY=VALUES "
                    "overrides in Hydra's multirun syntax may stand anywhere among the flags: lr=1e-3,1e-4 "
                    "multiplies the runs, seed=0 sets a value on every run.",
        epilog="other commands: 'train_sweep report [RESULTS_FILE|OUTPUT_DIR ...]', 'train_sweep list [DIR]', "
               "'train_sweep status [OUTPUT_DIR]', 'train_sweep watch [OUTPUT_DIR]', "
               "'train_sweep cleanup --days N [--live] [DIR]' (each with --help). "
               "Exit codes: 0 all runs succeeded, 1 a run failed, timed out or ran out of memory, 2 bad input, "
               "3 the sweep's output could not be written, 130 interrupted")
    add_flags(p)
    p.add_argument("--version", action="version", version=f"train_sweep {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. Returns the exit code (see EXIT_*)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # from here on: KeyboardInterrupt, exit 130
        if sig == signal.SIGINT or signal.getsignal(sig) != signal.SIG_IGN:  # (an ignored SIGHUP stays so: nohup)
            signal.signal(sig, signal.default_int_handler)  # (the loop's Wakeups take them over while it runs)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        try:
            return extra("commands")(argv)
        except UserError as e:
            say_error(str(e))
            return EXIT_BAD_INPUT
    parser = build_parser()
    try:
        flags, overrides = split_overrides(parser, argv)
        settings = Settings.from_args(parser.parse_args(flags))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    try:
        return execute(settings, overrides)
    except UserError as e:
        say_error(str(e))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        say_error("interrupted")
        return EXIT_INTERRUPTED


def cli() -> None:
    """`python train_sweep.py` and `train-sweep`: main(), then exit without the interpreter's teardown (25 ms
    once rich is loaded); main() has closed its files, the standard streams are flushed here."""
    for name in ("stdout", "stderr"):  # closed (`cmd >&-`, cron): None in Python; written to nowhere instead
        setattr(sys, name, getattr(sys, name) or open(os.devnull, "w"))  # (on the lowest free descriptor)
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl+C outside the event loop, which handles its own: every file is closed
        say_error("interrupted")
        code = EXIT_INTERRUPTED
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError): stream.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
