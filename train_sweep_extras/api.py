"""The Python API (docs/api.md): `train_sweep.run()` takes the flags as keywords and runs a sweep as the command
line does; `train_sweep.load()` reads a sweep's output folder, finished or running; SweepResult and RunResult are
what they return. train_sweep.py finds these here through its module __getattr__."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import io
import os
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from train_sweep import (
    JOURNAL,
    Ranking,
    Settings,
    State,
    UserError,
    _is_number,
    _is_whole,
    build_parser,
    execute,
    metric_of,
    read_journal,
    read_json,
)
from train_sweep_extras.tools import died, ended_later, of_this_sweep, ours, relocated, run_jsons, sweep_alive


class SweepError(Exception):
    """A sweep that could not start: bad input, with the CLI's one-line message (exit code 2)."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of a sweep as its latest record says: its hyperparameters, state, metrics and folder."""

    name: str
    state: str  # a State's value: complete, failed, pruned, running, ...
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]  # the run's final metrics (or, while it runs, none yet)
    run_dir: Path
    duration: float | None  # seconds
    trial: int | None = None  # its search trial's number
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)  # the whole record

    def files(self, pattern: str = "*") -> list[Path]:
        """The files of its folder that match `pattern` (e.g. '*.pt': its checkpoints, where --top-k kept them;
        '**/*.pt' below it too); a pattern that leaves the folder ('../*', '/etc/*') is a SweepError."""
        if not isinstance(pattern, str) or not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise SweepError(f"files({pattern!r}): a pattern inside the run's folder, such as '*.pt' or '**/*.pt'")
        return sorted(p for p in self.run_dir.glob(pattern) if p.is_file()) if self.run_dir.is_dir() else []


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A sweep's output folder, read: settings, runs (latest records), whether it runs, `run()`'s exit code."""

    output_dir: Path
    settings: Mapping[str, Any]
    runs: list[RunResult]
    running: bool  # a train_sweep holds the folder's lock now
    exit_code: int | None = None

    @property
    def metric(self) -> str | None:
        """The ranking metric (the first --metric), None if the sweep ranks nothing."""
        return Ranking.saved(self.settings).metric

    def best(self, k: int = 1, metric: str | None = None, mode: str | None = None) -> list[RunResult]:
        """The k best complete runs by `metric` and `mode` (default: the sweep's), best first, as seed 003's
        SweepManager.get_best_models(k): their folders hold what --top-k kept (a run whose folder was deleted is
        left out, as report and status leave it)."""
        if not _is_whole(k) or k < 1 or mode not in (None, "min", "max"):
            raise SweepError(f"best(k={k!r}, mode={mode!r}): k is a whole number >= 1, mode 'min' or 'max'")
        saved = Ranking.saved(self.settings, metric)  # (several objectives: each has its mode)
        metric, mode = metric or saved.metric, mode or saved.mode
        if metric is None:
            raise SweepError(f"{self.output_dir}: the sweep ranks by no metric: name one (best(k, metric=...))")
        scored = [(value if mode == "min" else -value, run.record.get("index") or 0, run) for run in self.runs
                  if run.state == State.COMPLETE.value and run.run_dir.is_dir() and  # (deleted: as report, status)
                  (value := metric_of(run.metrics, metric, run.record.get("stdout") or "")) is not None]
        return [run for *_, run in heapq.nsmallest(k, scored, key=lambda e: e[:2])]  # equal: the first in the sweep

    def counts(self) -> dict[str, int]:
        """How many runs are in each state."""
        return dict(Counter(run.state for run in self.runs))


def load(output_dir: str | os.PathLike[str] = "outputs") -> SweepResult:
    """Read a sweep's output folder, finished or running (never takes the lock): sweep.json's settings, each
    run's latest record in the journal (the runs of its last start), the run.json of runs still running."""
    folder = Path(output_dir)
    if not (folder / "sweep.json").is_file() and not (folder / JOURNAL).is_file():
        raise SweepError(f"{folder}: no sweep here (no sweep.json or {JOURNAL})")
    if not (folder / JOURNAL).is_file() and not ours(folder / "sweep.json"):
        raise SweepError(f"{folder}: its sweep.json is not a train_sweep sweep's (and there is no {JOURNAL})")
    saved = read_json(folder / "sweep.json")
    settings = saved.get("settings") if isinstance(saved, dict) and isinstance(saved.get("settings"), dict) else {}
    latest = {name: records[-1] for name, records in read_journal(folder / JOURNAL).items()}
    found = run_jsons(folder)  # each run folder's run.json, read once
    for record in found:  # a run that ended after the journal's last whole line (cut short)
        if ended_later(record, latest.get(record["model_name"])):
            latest[record["model_name"]] = record
    latest = of_this_sweep(latest, saved if isinstance(saved, dict) else {})  # (not runs its config no longer holds)
    for record in found:  # running now (or left running): its run.json says so
        if record.get("state") != State.RUNNING.value:
            continue
        journaled = latest.get(record["model_name"], {}).get("attempt")
        if (record.get("attempt") or 1) > (journaled if _is_whole(journaled) else 0):
            latest[record["model_name"]] = record
    runs, alive = [], sweep_alive(folder) not in (None, os.getpid())
    for name, r in latest.items():
        r = relocated(died(r, alive), folder)  # (moved since: its runs are where it is now)
        hyperparams, metrics, run_dir = r.get("hyperparams"), r.get("metrics"), r.get("run_dir")
        duration, trial = r.get("duration_seconds"), r.get("trial")  # a damaged field reads as absent
        runs.append(RunResult(name, str(r.get("state")), hyperparams if isinstance(hyperparams, dict) else {},
                              metrics if isinstance(metrics, dict) else {},
                              Path(run_dir) if isinstance(run_dir, str) and run_dir else folder / name,
                              duration if _is_number(duration) else None, trial if _is_whole(trial) else None, r))
    return SweepResult(folder, settings, runs, running=alive)


def run(*overrides: str, **settings: Any) -> SweepResult:
    """Run a sweep from Python: the flags as keywords (`gpus=[0, 1]`, `metric="val_loss"`, ...) and Hydra
    overrides as arguments ("lr=1e-3,1e-4"). Returns the sweep as load() reads it, with the exit code (0, 1:
    a run failed, 3: the sweep's own output failed, 130: interrupted); bad input raises SweepError (so does a call
    from another thread: it handles signals)."""
    if threading.current_thread() is not threading.main_thread():  # (signal.set_wakeup_fd would refuse, later)
        raise SweepError("train_sweep.run() handles signals (Ctrl+C ends the sweep), which Python allows only in "
                         "the main thread: call it from there, or run `python train_sweep.py ...` as a subprocess")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = [key for key in settings if key not in fields]
    if unknown:
        raise SweepError(f"unknown setting {unknown[0]!r} (the settings are the flags' names: {', '.join(fields)})")
    argv: list[str] = []  # the keywords as the flags they are, so that they are checked as the flags are
    for key, value in settings.items():
        flag, meta = "--" + key.replace("_", "-"), fields[key].metadata
        if meta.get("action") is argparse.BooleanOptionalAction:
            argv += [flag if value else "--no-" + flag[2:]] if value is not None else []
        elif fields[key].default is False:
            if not isinstance(value, bool):
                raise SweepError(f"{flag} is a switch: True or False, got {value!r}")
            argv += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)] if meta.get("nargs") == "+" else [w for v in value for w in (flag, str(v))]
        elif value is not None:
            argv += [flag, str(value)]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            flags = build_parser().parse_args(argv)
    except SystemExit:
        raise SweepError(said.getvalue().strip().removeprefix("train_sweep: error: ")) from None
    try:
        code = execute(Settings.from_args(flags), list(overrides))
    except UserError as e:
        raise SweepError(str(e)) from None
    folder = Path(flags.output_dir)
    if not (folder / "sweep.json").is_file() and not (folder / JOURNAL).is_file():  # --dry-run: nothing ran
        return SweepResult(folder, {}, [], running=False, exit_code=code)
    return dataclasses.replace(load(folder), exit_code=code)
