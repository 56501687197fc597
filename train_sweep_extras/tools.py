"""The offline commands: `train_sweep report` (table, CSV/JSON, plots), `list` (sweeps and their states),
`status` and `watch` (a running sweep), `cleanup` (old sweeps' files, keeping the best runs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from train_sweep import (
    _NOT_METRICS,
    _PRINTED,
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_RUN_FAILED,
    FINISHED_ORDER,
    GROUPS,
    JOURNAL,
    LOCK,
    MB,
    OWNED_FILES,
    RUN_MARK,
    SERIES,
    SET_ASIDE,
    SLURM_DIR,
    STUDY,
    MetricReader,
    Ranking,
    Settings,
    State,
    UserError,
    _is_number,
    _is_whole,
    _nonneg_float,
    _parse_time,
    _Parser,
    _positive_float,
    best_of,
    canonical_json,
    flag_default,
    fmt_duration,
    gpu_label,
    iso_time,
    metric_of,
    one_line,
    read_journal,
    read_json,
    record_damage,
    redact,
    run_labels,
    tail_lines,
    try_lock,
    varying_keys,
    where,
    write_json_atomic,
)


def sweep_alive(folder: Path) -> int | None:
    """The PID of the train_sweep in this output folder, or None: from its lock file, without taking the lock."""
    try:
        pid = int((folder / LOCK).read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"train_sweep" in command or b"train-sweep" in command else None


REPORT_SORTS = ("index", "name", "state", "gpu", "duration", "rc", "metric", "start")


def load_results(path: str) -> list[dict[str, Any]]:
    """A results file (or .partial), or a sweep's output folder (the latest record of each run of its last
    start, from its journal and run folders), as a list of records; bad files are a one-line UserError."""
    folder = Path(path)
    if folder.is_dir() and ((folder / JOURNAL).is_file() or (folder / "sweep.json").is_file()):
        latest = of_this_sweep(latest_records(folder), sweep_record(folder) or {})
        alive = sweep_alive(folder) is not None
        return sorted((relocated(died(r, alive), folder) for r in latest.values()),
                      key=lambda r: r.get("index") if _is_whole(r.get("index")) else 0)
    if folder.exists() and not folder.is_file():  # a FIFO would be waited on, /dev/zero read forever
        raise UserError(f"{path}: not a results file nor a sweep's output folder (a folder, a FIFO or a device)")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: results file not found" + unwritten(Path(path))) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read results file: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    sound = [r for r in data if record_damage(r) is None] if isinstance(data, list) else []
    if not sound and data != []:
        raise UserError(f"{path}: not a train_sweep results file (expected a JSON array of run records)")
    for i, record in enumerate(data):
        if (why := record_damage(record)) is not None:
            SKIPPED(f"{path} [{i}]", why)
    bases = [folder.resolve().parent / Path(str(r.get("run_dir"))).parent.name for r in sound]
    found = [relocated(r, b, sweep=False) for r, b in zip(sound, bases)]
    homes = {b for r, f, b in zip(sound, found, bases) if f is not r}  # moved or copied here: a run not there
    return [relocated(r, b) if f is r and b in homes else f for r, f, b in zip(sound, found, bases)]  # was deleted


def died(record: Mapping[str, Any], alive: bool) -> Mapping[str, Any]:
    """A run.json that says running where no sweep holds its folder (killed: kill -9, a crash; not a Slurm job
    of a detached sweep, which runs on): its run was interrupted, and the same command runs it again."""
    if alive or record.get("state") != State.RUNNING.value or record.get("slurm_job_id"):
        return record
    return dict(record, state=State.INTERRUPTED.value, error=record.get("error") or "the sweep stopped while it ran")


def relocated(record: Mapping[str, Any], folder: Path, sweep: bool = True) -> Mapping[str, Any]:
    """A record with its run folder in `folder`, the sweep's output folder being read (or, not `sweep`, one
    beside a results file, where that holds the run's folder: the folder it names is gone, or it is the same run,
    its run.json says): the records hold absolute folders, and a sweep is read where it is now, moved (mv outputs
    sweepA; the project with its results file) or copied (cp -a: its own runs, not the original's)."""
    name, was = record.get("model_name"), record.get("run_dir")
    if not isinstance(name, str) or not name:
        return record
    here = folder / name
    if sweep or here.is_dir() and (not isinstance(was, str) or not Path(was).is_dir() or (  # (copied: the same run)
            record.get("identity") is not None and isinstance(info := read_json(here / "run.json"), dict)
            and info.get("identity") == record["identity"])):
        return dict(record, run_dir=str(here.resolve()))
    return record


def unwritten(path: Path) -> str:
    """Why a results file is not there yet, where a sweep beside it that writes it has not ended (running,
    detached, killed): its state in a few words and what to run, or ''. Other folders are passed over quietly."""
    try:
        folders = sorted(path.resolve().parent.iterdir())
    except OSError:
        return ""
    for folder in folders:
        with suppress(OSError):
            record = read_json(folder / "sweep.json") if (folder / "sweep.json").is_file() else None
            record = record if isinstance(record, dict) else {}
            settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
            cwd, output = record.get("cwd"), settings.get("output_file")
            if not isinstance(cwd, str) or not isinstance(output, str) or \
                    (Path(cwd) / output).resolve() != path.resolve():
                continue
            lines, _ = SweepStatus(folder).lines()
            state = lines[0].split(": ", 1)[1].split(", started")[0]
            if state.startswith(("running", "detached", "dead")):
                return (f"; its sweep in {folder.name}/ has not ended: {state}; {lines[1]} (train_sweep.py report "
                        f"{folder.name} shows them)")
    return ""


def record_metric(record: Mapping[str, Any], metric: str | None) -> float | None:
    """A record's metric (its metrics, else its stdout tail): what report ranks by."""
    return metric_of(record.get("metrics"), metric, record.get("stdout") or "")


def complete_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("state") == State.COMPLETE.value]


def default_metric(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The first numeric key in the first record that has metrics (metrics.json's first key, say)."""
    for r in records:
        for key, value in (r.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return key
    return None


def flat_row(record: Mapping[str, Any], metric: str | None = None) -> dict[str, Any]:
    """One run as a flat row: its fields, then hp.<key> per hyperparameter, then metric.<key> (and the ranking
    `metric` where the run only printed it: from its stdout's tail, as the table ranks it)."""
    row = {k: record.get(k) for k in ("index", "model_name", "state", "success", "gpu_id", "duration_seconds",
                                      "returncode", "signal", "attempt", "start_time", "end_time", "run_dir")}
    for key, value in (record.get("hyperparams") or {}).items():
        row[f"hp.{key}"] = value
    for key, value in (record.get("metrics") or {}).items():
        row[f"metric.{key}"] = value
    if metric and f"metric.{metric}" not in row and (value := record_metric(record, metric)) is not None:
        row[f"metric.{metric}"] = value
    return row


def _cell(value: Any, exact: bool = False) -> str:
    """A value as a person reads it in a table: 4 significant digits; `exact` (the CSV): every digit (a float's
    repr reads back as the same float)."""
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return (repr(value) if exact else f"{value:.4g}") if isinstance(value, float) else str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import csv

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k), exact=True) for k in columns})


def _sort_key(sort: str, metric: str | None, mode: str) -> Callable[[Mapping[str, Any]], Any]:
    """--sort: a column (REPORT_SORTS), `metric` (the metric column) or `metric.NAME` (any metric): complete
    runs first, best first; or `hp.KEY` / KEY (a hyperparameter: numbers in order, then text)."""
    by_metric = sort == "metric" or sort.startswith("metric.")

    def key(r: Mapping[str, Any]) -> Any:
        if by_metric:
            v = record_metric(r, metric if sort == "metric" else sort[len("metric."):])
            return (r.get("state") != State.COMPLETE.value, v is None, (v if mode == "min" else -v) if v is not None else 0)
        if sort not in REPORT_SORTS:
            v = (r.get("hyperparams") or {}).get(sort[3:] if sort.startswith("hp.") else sort)
            return (v is None, 0 if _is_number(v) else 1, v if _is_number(v) else canonical_json(v))
        value = {"name": r.get("model_name"), "state": r.get("state"), "gpu": r.get("gpu_id"),
                 "duration": r.get("duration_seconds"), "rc": r.get("returncode"), "start": r.get("start_time"),
                 "index": r.get("index")}[sort]
        return (value is None, str(value) if sort in ("gpu", "name", "state", "start") else (value or 0))

    return key


REPORT_KEY_COLUMNS = 8  # the report shows at most this many varying hyperparameters as columns


def check_sort(sort: str, records: Sequence[Mapping[str, Any]], varying: Sequence[str]) -> None:
    if sort in REPORT_SORTS or sort.startswith("metric."):
        return
    key = sort[3:] if sort.startswith("hp.") else sort
    if not any(key in (r.get("hyperparams") or {}) for r in records):
        raise UserError(f"--sort {sort!r}: not a column ({', '.join(REPORT_SORTS)}), a metric (metric.NAME) or a "
                        f"hyperparameter of these runs" + (f" ({', '.join(varying)} vary)" if varying else ""))


NO_GLYPH = "missing from font"  # matplotlib's warning for a character its font lacks


def say_warning(message: str) -> None:
    try:
        sys.stderr.write(f"train_sweep: warning: {message}\n")
    except (OSError, ValueError):
        pass


def failure_reasons(records: Sequence[Mapping[str, Any]], shown: int = 5) -> list[str]:
    """Runs that failed, grouped by their last line of stderr (or why they could not start), most first."""
    groups: dict[str, list[str]] = {}
    for r in records:
        if r.get("state") not in (State.FAILED.value, State.TIMEOUT.value, State.OOM.value):
            continue
        last = r.get("error") or next((line for line in reversed((r.get("stderr") or "").splitlines()) if line.strip()),
                                      f"{r.get('state')}, stderr empty")
        groups.setdefault(one_line(last.strip(), 200), []).append(r["model_name"])
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    lines = [f"{len(names)} run(s): {line}  (e.g. {names[0]})" for line, names in ranked[:shown]]
    if len(ranked) > shown:
        lines.append(f"... and {len(ranked) - shown} other failure reason(s)")
    return (["Failures, by their last line of stderr:"] + lines) if lines else []


def print_groups(console: Any, records: Sequence[Mapping[str, Any]], over: str, varying: Sequence[str],
                 metric: str | None, mode: str) -> None:
    """--group-by seed: one row per configuration (the other varying hyperparameters), over the values of
    `over`: runs, complete, the metric's mean ± std over the complete runs, and its best."""
    import statistics

    from rich.table import Table

    if not any(over in (r.get("hyperparams") or {}) for r in records):
        raise UserError(f"--group-by {over!r}: no run has that hyperparameter" +
                        (f" ({', '.join(varying)} vary)" if varying else ""))
    others = [k for k in varying if k != over]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        hp = r.get("hyperparams") or {}
        groups.setdefault(canonical_json([hp.get(k) for k in others]), []).append(r)
    rows = []
    for members in groups.values():
        values = [v for r in members if r.get("state") == State.COMPLETE.value
                  and (v := record_metric(r, metric)) is not None]
        mean = statistics.fmean(values) if values else None
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        best = (min(values) if mode == "min" else max(values)) if values else None
        rows.append((mean, members, values, spread, best))
    rows.sort(key=lambda row: (row[0] is None, 0 if row[0] is None else (row[0] if mode == "min" else -row[0])))
    table = Table(title=f"by configuration, over {over} ({len(groups)} configuration(s))", title_justify="left")
    for col in (*others, "runs", "complete", *((f"{metric} mean ± std", f"best {metric}") if metric else ())):
        table.add_column(col, justify="left" if col in others else "right")
    for mean, members, values, spread, best in rows:
        hp = members[0].get("hyperparams") or {}
        cells = [_cell(hp.get(k)) for k in others] + [str(len(members)), str(len(values))]
        if metric:
            cells += ["" if mean is None else f"{mean:.4g} ± {spread:.2g}", "" if best is None else f"{best:g}"]
        table.add_row(*cells)
    console.print(table)


# -- reading what a sweep left, whatever shape it is in: a damaged record is skipped, with one warning ------

class Skipped:
    """Damaged records met while reading (watch reads them again and again): said once, at the end, as one
    warning naming the first and how many."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, where: Any, why: str) -> None:
        self.seen.setdefault(f"{where}: {why}", why)

    def say(self) -> None:
        if self.seen:
            first, more = next(iter(self.seen)), len(self.seen) - 1
            say_warning(f"skipped {len(self.seen)} damaged record(s): {first}" + (f" and {more} more" if more else ""))
            self.seen.clear()


SKIPPED = Skipped()


def sound_journal(folder: Path) -> dict[str, Mapping[str, Any]]:
    """Each run's latest journal record, damaged ones skipped (and counted in SKIPPED)."""
    latest = {}
    for name, records in read_journal(folder / JOURNAL).items():
        why = record_damage(records[-1])
        if why is None:
            latest[name] = records[-1]
        else:
            SKIPPED(folder / JOURNAL, f"{name!r}: {why}")
    return latest


def run_jsons(folder: Path) -> list[dict[str, Any]]:
    """The run.json of each run folder the sweep made (a folder that is a link is no run of its own, nor one set
    aside, <name>~1: an earlier run of that name); damaged ones skipped (and counted in SKIPPED)."""
    out = []
    for mark in sorted(folder.glob(f"*/{RUN_MARK}")):
        if mark.parent.is_symlink() or SET_ASIDE in mark.parent.name or not (mark.parent / "run.json").exists():
            continue
        record = read_json(mark.parent / "run.json")
        why = "not readable JSON (or nested too deeply)" if record is None else record_damage(record)
        if why is None:
            out.append(record)
        else:
            SKIPPED(mark.parent / "run.json", why)
    return out


def sweep_record(folder: Path) -> dict[str, Any] | None:
    """sweep.json as an object whose fields have the types read from it (a damaged field is dropped, with a
    warning); None where there is no sweep.json to read."""
    record = read_json(folder / "sweep.json")
    if record is None:
        return None
    if not isinstance(record, dict):
        SKIPPED(folder / "sweep.json", "not a JSON object")
        return {}
    for key, kind in (("settings", dict), ("runs", int), ("started", str), ("command", str), ("names", list),
                      ("ended", str)):
        if record.get(key) is None:  # ('runs' of a search with a time budget only: null, no count to say)
            record.pop(key, None)
        elif not isinstance(record[key], kind) or kind is int and isinstance(record[key], bool):
            SKIPPED(folder / "sweep.json", f"its {key!r} is {type(record[key]).__name__}, not {kind.__name__}")
            del record[key]
    return record


def of_this_sweep(latest: dict[str, Mapping[str, Any]], record: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The records of the runs the sweep's last start ran (its sweep.json's names): not those of runs an earlier
    start ran that its config no longer holds. A search's trials, and older sweeps', are all its own, but those an
    earlier start left interrupted, which the last start asked again (new trials, new folders), are history."""
    names = set(map(str, record["names"])) if isinstance(record.get("names"), list) else None
    if names is not None:
        return {name: r for name, r in latest.items() if name in names}
    started = _parse_time(record.get("started"))
    return latest if started is None else {name: r for name, r in latest.items() if not (
        r.get("state") == State.INTERRUPTED.value and (_parse_time(r.get("end_time") or r.get("start_time")) or
                                                       started) < started)}  # (killed: no end time)


def sweep_mode(records: Sequence[Mapping[str, Any]], metric: str | None) -> str:
    """The direction the sweep ranked `metric` by (its --mode for that objective, else its first), from the
    sweep.json beside its run folders."""
    for folder in dict.fromkeys(Path(r["run_dir"]).parent for r in records if r.get("run_dir")):
        with suppress(OSError, ValueError, RecursionError):
            record = read_json(folder / "sweep.json")
            if (saved := Ranking.saved(record.get("settings") if isinstance(record, dict) else None, metric)).metric:
                return saved.mode
    return "min"


def check_report_file(flag: str, target: str, inputs: Sequence[str]) -> None:
    """report's --csv, --json and --results FILE: a file of its own; never a results file (the one it reads, or
    another sweep's), a file a sweep keeps (its journal, sweep.json, a run.json), a FIFO or a device."""
    path = Path(target).resolve()
    if path.exists() and not path.is_file():
        raise UserError(f"report {flag} {target!r} is not a plain file (a folder, a FIFO, a device); name a file")
    if any(path == Path(i).resolve() for i in inputs):
        raise UserError(f"report {flag} {target!r} is the results file it reads; give another file")
    results = False  # a results file (another sweep's), told by its head: records with hyperparams objects
    if flag != "--results" and path.is_file():  # (--results rewrites its own gathered file, as docs/agents.md says)
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
        results = head.lstrip()[:1] == b"[" and b'"model_name"' in head and \
            re.search(rb'"hyperparams"\s*:\s*\{', head) is not None
    owned = path.name.partition("~")[0] in (*OWNED_FILES, "run.json", SERIES, RUN_MARK)
    if owned or results or (path.parent / RUN_MARK).exists():
        raise UserError(f"report {flag} {target!r} is a file a sweep keeps (its journal, sweep.json, a run's files "
                        "or a results file); give another file")
    if path.is_file() and path.stat().st_size:  # rewritten only where report wrote it: never a script or config
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
        ours = not head.strip() or (head.startswith(b"index,model_name,") if flag == "--csv" else  # (no rows: empty)
                                    head.lstrip()[:1] == b"[" and (b'"model_name"' in head or head.strip() == b"[]"))
        if not ours:
            raise UserError(f"report {flag} {target!r} exists and is no {'CSV' if flag == '--csv' else 'JSON'} that "
                            "report wrote; give another file (or remove it)")


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.plots:  # said before anything is printed
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            if e.name not in (None, "matplotlib"):  # installed, but something it needs is missing or broken
                raise UserError(f"report --plots: matplotlib did not import: {e}") from None
            raise UserError("report --plots needs matplotlib: pip install 'train-sweep[plots]'") from None
        if Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise UserError(f"report --plots {args.plots!r} is not a folder; give a folder for the PNGs")
        if any((up / RUN_MARK).exists() for up in (Path(args.plots).resolve(), *Path(args.plots).resolve().parents)):
            raise UserError(f"report --plots {args.plots!r} is in a run folder (a run's own files); give a folder of "
                            "its own")
    for flag, target in (("--csv", args.csv), ("--json", args.json), ("--results", args.results)):
        if target:
            check_report_file(flag, target, args.files or ([] if args.storage else ["train_sweep_results.json"]))
    if args.storage:  # every agent's runs of a shared sweep, from its study
        from train_sweep_extras.agents import gathered

        if args.files:
            raise UserError("report: give results files or --storage URL, not both")
        sweeps = [(redact(args.storage), gathered(args.storage, args.study_name))]
        if args.results:
            try:  # (a folder made as for --csv and --json)
                Path(args.results).parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(Path(args.results), sweeps[0][1])
            except OSError as e:
                raise UserError(f"{args.results}: cannot write ({e.strerror or e})") from None
            print(f"{len(sweeps[0][1])} run(s) of every agent written to {args.results}", file=sys.stderr)
    elif args.results:
        raise UserError("report --results FILE gathers a shared sweep's runs: it needs --storage URL")
    else:
        no_url(args.files, "report")
        files = args.files or ["train_sweep_results.json"]
        sweeps = [(f, load_results(f)) for f in files]
    metric = args.metric or default_metric([r for _, recs in sweeps for r in recs])
    modes = [args.mode or sweep_mode(recs, metric) for _, recs in sweeps]  # each sweep's own, unless --mode
    args.mode = modes[0]
    console = Console(width=None if sys.stdout.isatty() else 200)
    if len(sweeps) > 1:
        table = Table(title="sweeps side by side", title_justify="left")
        for col in ("results file", "runs", "complete", "pruned", "failed", "interrupted", "success", "GPU hours",
                    f"best {metric or 'metric'}"):
            table.add_column(col, justify="left" if col in ("results file", f"best {metric or 'metric'}") else "right")
        for (path, recs), mode in zip(sweeps, modes):
            done = sum(r.get("state") == State.COMPLETE.value for r in recs)
            pruned = sum(r.get("state") == State.PRUNED.value for r in recs)  # stopped by the pruner: not a failure
            failed = sum(r.get("state") in (State.FAILED.value, State.TIMEOUT.value, State.OOM.value) for r in recs)
            stopped = sum(r.get("state") == State.INTERRUPTED.value for r in recs)  # the sweep's stop, not the run's
            gpu_h = sum((r.get("duration_seconds") or 0) * max(1, len(r["gpu_id"]) if isinstance(r.get("gpu_id"), list)
                        else 1) for r in recs) / 3600
            best = best_of(complete_records(recs), lambda r: record_metric(r, metric), mode)
            table.add_row(path, str(len(recs)), str(done), str(pruned), str(failed), str(stopped),
                          f"{100 * done / (done + failed):.0f}%" if done + failed else "-", f"{gpu_h:.2f}",
                          f"{best[1]['model_name']} = {best[0]:g}" + (f" ({mode})" if len(set(modes)) > 1 else "")
                          if best else "-")
        console.print(table)
    records = [dict(r, _sweep=path) for path, recs in sweeps for r in recs]
    varying = varying_keys([r.get("hyperparams") or {} for r in records])
    args.sort = args.sort or ("metric" if metric else "index")
    check_sort(args.sort, records, varying)
    if args.metric and metric and not any(record_metric(r, metric) is not None for r in records):
        have = sorted({k for r in records for k in (r.get("metrics") or {})})
        say_warning(f"no run has a metric named {metric!r}" + (f" (the runs have: {', '.join(have)})" if have else ""))
        metric = None
    if args.state:
        records = [r for r in records if r.get("state") in args.state]
    records.sort(key=_sort_key(args.sort, metric, args.mode))
    if args.group_by:
        print_groups(console, records, args.group_by, varying, metric, args.mode)
    if len(sweeps) == 1:
        table = Table(title=f"{sweeps[0][0]}: {len(records)} run(s)", title_justify="left")
        shown = varying[:REPORT_KEY_COLUMNS]
        for col in ("#", "run", "state", *shown, "GPU", "duration", "rc", *([metric] if metric else [])):
            table.add_column(col, justify="right" if col in ("#", "duration", "rc", metric) else "left")
        for r in records:
            hp = r.get("hyperparams") or {}
            row = [_cell(r.get("index")), r["model_name"], r.get("state", ""),
                   *(_cell(hp[k]) if k in hp else "" for k in shown),
                   (f"{r['host']} " if r.get("host") else "") + gpu_label(r.get("gpu_id")),  # --storage: each host's
                   fmt_duration(r.get("duration_seconds")), _cell(r.get("returncode"))]
            if metric:
                v = record_metric(r, metric)
                row.append("" if v is None else f"{v:g}")
            table.add_row(*row)
        console.print(table)
        for line in failure_reasons(records):
            console.print(line, highlight=False, markup=False)
        found = best_of(complete_records(records), lambda r: record_metric(r, metric), args.mode)
        if found is not None:
            value, best = found

            def kept(r: Mapping[str, Any]) -> bool:
                return not r.get("run_dir") or Path(r["run_dir"]).is_dir()

            if not kept(best):  # its folder was deleted (cleanup --include-best): the best whose folder is there
                console.print(f"({best['model_name']} = {value:g} was better; its folder was deleted)", highlight=False)
                found = best_of((r for r in complete_records(records) if kept(r)),
                                lambda r: record_metric(r, metric), args.mode)
        if found is not None:
            value, best = found
            console.print(f"Best ({args.mode} {metric}): {best['model_name']} = {value:g}  ({best.get('run_dir')})",
                          highlight=False)
    rows = [dict(flat_row(r, metric), **({"results_file": r["_sweep"]} if len(sweeps) > 1 else {})) for r in records]

    def with_series(path: Path, rows: list[dict[str, Any]]) -> None:  # --json: each run's learning curve too
        series = [read_series(r.get("run_dir"), metric) for r in records]
        write_json_atomic(path, [dict(row, series={metric: s} if metric else {}) for row, s in zip(rows, series)],
                          fsync=False)

    for path, write in ((args.csv, write_csv), (args.json, with_series)):
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                write(Path(path), rows)
            except OSError as e:
                raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
            console.print(f"wrote {len(rows)} row(s) to {path}", highlight=False)
    if args.plots:
        from train_sweep_extras.plots import study_plots, write_plots

        try:
            with warnings.catch_warnings(record=True) as caught:  # matplotlib warns for each character its font
                warnings.filterwarnings("always", message=f"Glyph .* {NO_GLYPH}")  # lacks (CJK, a snowman)
                drawn = write_plots(Path(args.plots), records, metric, args.mode)
                studies = {Path(r["run_dir"]).parent / STUDY for r in records
                           if r.get("trial") is not None and r.get("run_dir")}
                for study in sorted(s for s in studies if s.is_file()):
                    drawn += study_plots(Path(args.plots), study, len(studies) > 1)
                for path in drawn:
                    console.print(f"wrote {path}", highlight=False)
                if not drawn:
                    console.print("no plots: no run has ended yet (nothing to draw)", highlight=False)
        except OSError as e:
            raise UserError(f"report --plots {args.plots}: cannot write ({e.strerror or e})") from None
        for w in caught:  # each other warning as Python shows it; the font's, once
            if NO_GLYPH not in str(w.message):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if any(NO_GLYPH in str(w.message) for w in caught):
            say_warning("some labels hold characters the plots' font lacks (CJK, symbols): they show as boxes")
    return EXIT_OK


def find_sweeps(folders: Sequence[str]) -> list[Path]:
    """Output folders of sweeps (they hold sweep.json), at most 3 levels below each folder given."""
    found = []
    for top in folders:
        root = Path(top)
        if not root.is_dir():
            raise UserError(f"{top}: no such folder")
        for depth in range(4):
            for f in root.glob("/".join(["*"] * depth + ["sweep.json"])):
                found.append(f.parent)
    return sorted(set(found))


def linked_below(folder: Path, tops: Sequence[str]) -> Path | None:
    """The link a sweep folder was found through, below the folder given (a link to another sweep), or None."""
    for top in tops:
        with suppress(ValueError):
            path = Path(top)
            for part in folder.relative_to(top).parts:
                path /= part
                if path.is_symlink():
                    return path
    return None


def sweep_state(folder: Path, latest: Mapping[str, Mapping[str, Any]], total: int = 0,
                ended: str | None = None) -> str:
    """running (the train_sweep of its lock file lives), detached (no sweep lives, and a run.json names a
    Slurm job it left running), dead (a run.json still says running, and no sweep lives: it was killed),
    finished or stopped early (its sweep.json says so: `ended`), interrupted (a run's last record is interrupted),
    else finished. Read without taking the lock: a sweep starting now must not find it taken."""
    if sweep_alive(folder) is not None:
        return "running"
    for record in run_jsons(folder):
        if record.get("state") == State.RUNNING.value:
            return "detached" if record.get("slurm_job_id") else "dead"
    if ended in ("finished", "stopped early"):  # (a search's interrupted trials, asked again, are history)
        return ended  # (stopped early: fail fast, with runs not started; the same command resumes it)
    if any(r.get("state") == State.INTERRUPTED.value for r in latest.values()) or len(latest) < total:
        return "interrupted"  # (or stopped early: runs were not started)
    return "finished"


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    no_url(args.folders, "list")
    table = Table(title="sweeps", title_justify="left")
    for col in ("output folder", "state", "started", "runs", "complete", "pruned", "failed", "interrupted",
                "last activity", "command"):
        table.add_column(col)
    tops, once = args.folders or ["outputs"], {}  # each sweep once: where found first without a link (loop -> .)
    for folder in sorted(find_sweeps(tops), key=lambda f: (linked_below(f, tops) is not None, len(f.parts))):
        once.setdefault(folder.resolve(), folder)
    for folder in sorted(once.values()):
        settings = sweep_record(folder) or {}
        latest = of_this_sweep(latest_records(folder), settings)  # (a journal cut short: the run.json too)
        count = {s.value: sum(r.get("state") == s.value for r in latest.values()) for s in FINISHED_ORDER}
        failed = count["failed"] + count["timeout"] + count["oom"]  # the runs' own failures, not the sweep's stop
        journal = folder / JOURNAL
        last = iso_time(journal.stat().st_mtime) if journal.exists() else settings.get("started")
        runs = settings.get("runs") if _is_whole(settings.get("runs")) else 0
        table.add_row(str(folder), sweep_state(folder, latest, runs, settings.get("ended")),
                      str(settings.get("started", "?"))[:19],
                      str(settings.get("runs", "?")), str(count["complete"]), str(count["pruned"]), str(failed),
                      str(count["interrupted"]), str(last or "-")[:19], str(settings.get("command", "")))
    Console(width=None if sys.stdout.isatty() else 250).print(table)
    return EXIT_OK


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def latest_records(folder: Path) -> dict[str, Mapping[str, Any]]:
    """Each run's latest record in a sweep folder, from every record that has one: the journal, and the run
    folders' run.json (a journal lost or cut short still leaves these), whichever attempt is later."""
    latest = sound_journal(folder)
    for record in run_jsons(folder):  # (the same attempt: the journal's line, which holds its output's tails)
        if _newer(record, latest.get(record["model_name"])):
            latest[record["model_name"]] = record
    return latest


def best_runs(folder: Path, ranking: Ranking | None = None) -> tuple[set[str], str | None]:
    """The runs a sweep ranks best: those best/best.json lists (--top-k), and its best complete run by its
    ranking (sweep.json's --metric and --mode, else `ranking`, cleanup's --metric) over each run's latest
    record. Returns the names and, where the best cannot be known (no metric named, and complete runs that
    have metrics), why."""
    names: set[str] = set()
    try:
        names |= {r["name"] for r in read_json(folder / "best" / "best.json")["runs"]}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    try:
        settings = read_json(folder / "sweep.json")["settings"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        settings = {}
    saved = Ranking.saved(settings)
    if saved.metric is None and ranking is not None:
        settings = {"metric": [ranking.metric], "mode": ranking.mode}
    latest = latest_records(folder)
    if Ranking.saved(settings).metric is None:
        if any(r.get("state") == State.COMPLETE.value and reported(r) for r in latest.values()):
            return names, "the sweep's ranking metric is not known (its sweep.json names none)"
        return names, None
    found = journal_best(folder, latest, settings)
    return names | ({found[2]["model_name"]} if found else set()), None


def reported(record: Mapping[str, Any]) -> bool:
    """Whether a run reported a metric: in its metrics, or printed (NAME=0.41 in its stdout's tail: the record's,
    or its log's where the record is its run.json, which holds none)."""
    run_dir = record.get("run_dir")
    text = record.get("stdout") or (tail_lines(Path(run_dir) / "train_stdout.log", 200, 64 * 1024)
                                    if isinstance(run_dir, str) and run_dir else "")
    return bool(record.get("metrics")) or any(m.group(1).lower() not in _NOT_METRICS
                                              for m in _PRINTED.finditer(str(text)))


def journal_best(folder: Path, latest: Mapping[str, Mapping[str, Any]],
                 settings: Mapping[str, Any]) -> tuple[str, float, Mapping[str, Any]] | None:
    """A sweep's best complete run (its metric, value and last record) by its --metric and --mode, as its
    sweep.json says them, among the runs whose folder is still there (cleanup may have deleted some)."""
    ranking = Ranking.saved(settings)
    if ranking.metric is None:
        return None
    found = best_of((r for r in latest.values() if r.get("state") == State.COMPLETE.value
                     and (folder / str(r.get("model_name"))).is_dir()),
                    lambda r: record_metric(r, ranking.metric), ranking.mode)  # (metrics, else stdout: as report)
    return None if found is None else (ranking.metric, found[0], found[1])


def ours(sweep_json: Path) -> bool:
    """A sweep.json train_sweep wrote (not another tool's file of that name)."""
    return isinstance(saved := read_json(sweep_json), dict) and "train_sweep" in saved


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Delete run folders not touched in --days days (a dry run unless --live); never in a running sweep, never
    the best runs (unless --include-best); on a terminal, --live asks first (unless --yes)."""
    cutoff = time.time() - args.days * 86400
    args.ranking = Ranking(args.metric, args.mode) if args.metric else None
    chosen: list[tuple[Path, int, float]] = []
    locks = []
    try:
        tops, links = args.folders or ["outputs"], set()
        for folder in find_sweeps(tops):
            if (link := linked_below(folder, tops)) is not None:  # never out of the folders given
                if link not in links:
                    print(f"skipped {link}: a link to a sweep folder, not followed")
                links.add(link)
                continue
            if not ours(folder / "sweep.json"):
                print(f"skipped {folder}: its sweep.json is not a train_sweep sweep's")  # (another tool's folder)
                continue
            lock = try_lock(folder)
            if lock is None:
                print(f"skipped {folder}: a sweep is running there")
                continue
            locks.append(lock)  # held until the end: no sweep starts there while its folders are deleted
            keep, unknown = (set(), None) if args.include_best else best_runs(folder, args.ranking)
            if unknown:
                print(f"skipped {folder}: {unknown}, so its best run cannot be told apart and nothing there is "
                      "deleted; pass --metric NAME (and --mode) to say which ranks, or --include-best")
                continue
            for run_dir in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "run.json").exists()):
                if run_dir.is_symlink():
                    print(f"skipped {run_dir}: a link, not a run folder of the sweep's own")
                    continue
                if not (run_dir / RUN_MARK).exists():  # a folder of the user's beside the runs
                    print(f"skipped {run_dir}: not a run folder the sweep made (no {RUN_MARK} in it)")
                    continue
                inside = [run_dir, *run_dir.rglob("*")]
                nested = next((f.parent for f in inside if f.name == LOCK or f.name == "sweep.json" and ours(f)), None)
                if nested is not None:  # a sweep's --output-dir put in a run folder: deleted with it, it was lost
                    print(f"skipped {run_dir}: another sweep's folder is inside it ({nested}); cleanup deletes "
                          "run folders, never a sweep")
                    continue
                newest = max(f.lstat().st_mtime for f in inside)
                if newest >= cutoff:
                    continue
                if run_dir.name in keep:
                    print(f"kept {run_dir}: among the sweep's best runs (--include-best deletes it too)")
                    continue
                chosen.append((run_dir, _folder_size(run_dir), (time.time() - newest) / 86400))
        for run_dir, size, age in chosen:
            print(f"{'deleting' if args.live else 'would delete'} {run_dir}  ({size / MB:.1f} MB, {age:.0f} days old)")
        total = sum(size for _, size, _ in chosen)
        if args.live and chosen and sys.stdin.isatty() and not args.yes:
            answer = input(f"delete these {len(chosen)} run folder(s), {total / MB:.1f} MB? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_OK
        for count, (run_dir, _, _) in enumerate(chosen if args.live else ()):
            try:
                shutil.rmtree(run_dir)
            except OSError as e:
                raise UserError(f"{run_dir}: cannot delete ({e.strerror or e}); {count} run folder(s) were deleted "
                                "before it") from None
    finally:
        for lock in locks:
            os.close(lock)
    verb = "deleted" if args.live else "would delete"
    folders = {d.parent for d, _, _ in chosen} if args.live else set()
    searches = {f for f in folders if ((sweep_record(f) or {}).get("settings") or {}).get("search")}
    notes = (["a resumed sweep runs a deleted run again"] if folders - searches else []) + (
        ["a resumed search asks no deleted trial again (their results stay)"] if searches else [])
    print(f"{verb} {len(chosen)} run folder(s), {total / MB:.1f} MB" + ("" if args.live else "; pass --live to delete")
          + "".join(f"; {note}" for note in notes))
    return EXIT_OK


def build_tool_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train_sweep", description="Look at finished sweeps.")
    sub = p.add_subparsers(dest="tool", required=True)
    r = sub.add_parser("report", help="a table of runs; CSV/JSON export; PNG plots; several files side by side")
    r.add_argument("files", nargs="*", metavar="RESULTS_FILE", help="results files, or sweeps' output folders "
                   "(their runs' latest records; default: train_sweep_results.json)")
    r.add_argument("--storage", metavar="URL", help="instead of results files: every agent's finished runs of the "
                   "shared sweep in this database (--storage of the sweep)")
    r.add_argument("--study-name", default="train_sweep", metavar="NAME", help="with --storage: the sweep's "
                   "--study-name (default: train_sweep)")
    r.add_argument("--results", metavar="FILE", help="with --storage: also write every agent's runs to FILE, one "
                   "results file (train_sweep_results.json's format, with each run's host)")
    r.add_argument("--sort", metavar="KEY",
                   help=f"order of the rows: {', '.join(REPORT_SORTS)}, metric.NAME, or a hyperparameter (lr or hp.lr); "
                        "by a metric, complete runs come first, best first (default: metric, where there is one, "
                        "else index)")
    r.add_argument("--group-by", metavar="KEY",
                   help="also a table per configuration over this hyperparameter (seed): runs, the metric's mean ± "
                        "std over the complete runs, and its best")
    r.add_argument("--state", action="append", choices=[s.value for s in State] , help="only runs in this state (repeatable)")
    r.add_argument("--metric", metavar="NAME",
                   help="the metric column (default: the first numeric key of the runs' metrics)")
    r.add_argument("--mode", choices=("min", "max"),
                   help="whether lower or higher is better (default: the sweep's --mode, from its sweep.json; else min)")
    r.add_argument("--csv", metavar="FILE", help="write every run, hyperparameters as hp.* columns, to a CSV file")
    r.add_argument("--json", metavar="FILE", help="the same rows as a JSON array")
    r.add_argument("--plots", metavar="DIR", help="write PNG plots (needs matplotlib): timeline, durations, the "
                   "metric's learning curves (the 3 best in colour), metric vs each varying hyperparameter")
    ls = sub.add_parser("list", help="the sweeps under output folders")
    ls.add_argument("folders", nargs="*", metavar="DIR", help="where to look, 3 levels deep (default: outputs)")
    st = sub.add_parser("status", help="a running (or ended) sweep from another shell: runs by state, GPUs, best")
    st.add_argument("folder", nargs="?", default="outputs", metavar="OUTPUT_DIR", help="the sweep's --output-dir "
                    "(default: outputs), or the --storage URL of a sweep shared by agents")
    w = sub.add_parser("watch", help="status, redrawn every few seconds until the sweep ends")
    w.add_argument("folder", nargs="?", default="outputs", metavar="OUTPUT_DIR", help="the sweep's --output-dir "
                   "(default: outputs), or the --storage URL of a sweep shared by agents")
    w.add_argument("--every", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="redraw interval, at most a day (default: 2)")
    for parser in (st, w):
        parser.add_argument("--storage", metavar="URL", help="a sweep shared by agents: every host's runs, from its "
                            "study")
        parser.add_argument("--study-name", default="train_sweep", metavar="NAME", help="with a URL: the sweep's "
                            "--study-name (default: train_sweep)")
    c = sub.add_parser("cleanup", help="delete old run folders (a dry run unless --live)")
    c.add_argument("folders", nargs="*", metavar="DIR", help="where to look, 3 levels deep (default: outputs)")
    c.add_argument("--days", type=_nonneg_float, required=True, metavar="N", help="delete run folders untouched for N days")
    c.add_argument("--live", action="store_true", help="really delete (without it, only print what would go)")
    c.add_argument("--yes", action="store_true", help="with --live on a terminal: do not ask before deleting")
    c.add_argument("--include-best", action="store_true",
                   help="also delete the best runs (best/best.json's, and the best by the sweep's --metric)")
    c.add_argument("--metric", metavar="NAME",
                   help="the metric that ranks the runs where a sweep's sweep.json names none (resumed without it)")
    c.add_argument("--mode", choices=("min", "max"), default="min", help="with --metric: which way is better")
    sub.add_parser("flags", help="docs/flags.md: every flag, its default and what it does (markdown)")
    return p


class SweepStatus:
    """A sweep as another shell sees it, read incrementally (`watch` redraws it every few seconds, also for
    10,000 runs): the journal from where the last reading stopped, a run.json again only when it changed, a
    running run's latest metric from the end of its series file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.latest: dict[str, Mapping[str, Any]] = {}  # each run's latest journal record
        self._offset, self._file = 0, (0, 0)  # where the last reading stopped, in which file (device, inode)
        self._runs: dict[Path, tuple[int, Mapping[str, Any] | None]] = {}  # run.json: (mtime_ns, record)
        self._tails: dict[tuple[str, int], str] = {}  # a failed attempt's last stderr lines
        self._sacct: tuple[float, dict[str, str] | None] = (-math.inf, {})  # a detached sweep's jobs: (when, states)

    def _journal(self) -> None:
        if not (self.folder / JOURNAL).is_file():  # (a FIFO would be waited on)
            return
        try:
            with open(self.folder / JOURNAL, "rb") as f:
                stat = os.fstat(f.fileno())
                if (stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset:  # set aside (--rerun)
                    self._file, self._offset, self.latest = (stat.st_dev, stat.st_ino), 0, {}
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next reading
        self._offset += end
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
                name = record["model_name"]
            except (ValueError, KeyError, TypeError, RecursionError):
                continue
            why = record_damage(record)
            if why is None:
                self.latest[name] = record
            else:
                SKIPPED(self.folder / JOURNAL, f"{name!r}: {why}")

    def _run_jsons(self) -> list[Mapping[str, Any]]:
        out = []
        for mark in self.folder.glob(f"*/{RUN_MARK}"):
            if SET_ASIDE in mark.parent.name:  # <name>~1: an earlier run of that name, not this one
                continue
            path = mark.parent / "run.json"
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            seen = self._runs.get(path)
            if seen is None or seen[0] != mtime:
                if mark.parent.is_symlink():  # a folder that is a link is no run of its own
                    seen = self._runs[path] = (mtime, None)
                    continue
                record = read_json(path)
                why = "not readable JSON (or nested too deeply)" if record is None else record_damage(record)
                if why is not None:
                    SKIPPED(path, why)
                seen = self._runs[path] = (mtime, record if why is None else None)
            if seen[1] is not None:
                out.append(seen[1])
        return out

    def lines(self) -> tuple[list[str], bool]:
        """Whether its process lives, its runs by state, the ETA, each GPU's running runs with their elapsed
        time and latest metric, the best so far and why runs failed."""
        folder = self.folder
        record = sweep_record(folder)
        if record is None:
            raise UserError(f"{folder}: " + ("its sweep.json is damaged (not a JSON object with settings)"
                                            if (folder / "sweep.json").exists() else
                                            "no sweep here (no sweep.json): pass the sweep's --output-dir"))
        settings = record.get("settings") or {}
        ranking = Ranking.saved(settings)
        pid = sweep_alive(folder)
        self._journal()
        found, latest = self._run_jsons(), dict(self.latest)
        for run in found:  # a run that ended after the journal's last whole line (cut short): its run.json
            if ended_later(run, latest.get(run["model_name"])):
                latest[run["model_name"]] = run
        latest = of_this_sweep(latest, record)
        running = [run for run in found if run.get("state") == State.RUNNING.value and
                   _newer(run, latest.get(run["model_name"]))]
        again = {r.get("model_name") for r in running}  # running again (resumed, retried): not their old state
        counts = {s.value: 0 for s in FINISHED_ORDER}
        for name, r in latest.items():  # (requeued: waiting to go again; its end, if the sweep stopped first)
            if name not in again and not (r.get("requeued") and pid) and r.get("state") in counts:
                counts[r["state"]] += 1
        total = max(record.get("runs") or 0, len({*latest, *again}), sum(counts.values()))  # (a smaller budget)
        left = max(0, total - sum(counts.values()) - len(running))
        detached = not pid and settings.get("backend") == "slurm" and any(r.get("slurm_job_id") for r in running)
        ended = jobs_ended(folder, running, self._slurm_states) if detached else []  # with Slurm: not collected yet
        same = "the same command" + (" without --rerun" if settings.get("rerun") else "")  # (with it: all again)
        running = [r for r in running if r not in ended]
        state = "running" if pid else f"detached: its Slurm jobs have ended ({same} collects the results)" \
            if detached and not running else f"detached: its runs are Slurm jobs ({same} follows them and " \
            "collects the results)" if detached else f"dead (killed: run {same} to resume)" if running else \
            f"stopped with {left} run(s) not started: run {same} to resume" if left else \
            "interrupted" if counts["interrupted"] and record.get("ended") != "finished" else "finished"
        shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        now = time.time()
        durations = [d for r in latest.values() if r.get("state") == State.COMPLETE.value
                     and isinstance(d := r.get("duration_seconds"), (int, float))]
        eta = ""
        if pid and durations and (running or left):
            mean = sum(durations) / len(durations)
            ahead = sum(max(0.0, mean - (now - (_parse_time(r.get("start_time")) or now))) for r in running)
            eta = f", ETA {fmt_duration((ahead + mean * left) / max(1, len(running)))}"
        started = f", started {record.get('started', '?')[:19]}"
        lines = [f"{folder}: {state}" + (f" (PID {pid})" if pid else "") + started,
                 f"{total} run(s): " + ", ".join(x for x in (
                     shown, f"{len(ended)} ended with Slurm, not collected yet" if ended else "",
                     (f"{len(running)} running or queued with Slurm" if running else "") if detached else
                     f"{len(running)} running" if pid else f"{len(running)} running when it died" if running else "",
                     f"{left} pending" if left and pid else f"{left} not started" if left else "") if x) + eta]
        labels = run_labels({r["model_name"]: r.get("hyperparams") or {} for r in [*latest.values(), *running]})
        by_gpu: dict[str, list[str]] = {}
        for r in running if pid or detached else ():
            since = _parse_time(r.get("start_time"))
            job = f"job {r['slurm_job_id']}, submitted " if r.get("slurm_job_id") else ""
            value = self._latest_value(r, ranking.metric)
            by_gpu.setdefault("Slurm" if job else where(r.get("gpu_id")), []).append(
                f"{labels.get(r['model_name'], r['model_name'])} ({job}{fmt_duration(now - since if since else None)}"
                + (" ago" if job else "") + (f", {ranking.metric} {value:.4g}" if value is not None else "") + ")")
        lines += [f"  {where}: {', '.join(runs)}" for where, runs in sorted(by_gpu.items())]
        found = journal_best(folder, {name: r for name, r in latest.items() if name not in again}, settings)
        if found is not None:
            lines.append(f"best {found[0]} so far (complete runs): {found[2]['model_name']} = {found[1]:.4g}")
        lines += [f"  {line}" if i else line for i, line in enumerate(failure_reasons(self._failures(), 3))]
        if detached and running and self._sacct[1] is None:  # a job cancelled leaves no result: never seen to end
            lines.append("(sacct is not here or failed: which of these jobs were cancelled or killed is not known; "
                         "the sweep's command, run again, collects them)")
        # `watch` follows a detached sweep's jobs to their end, where sacct can tell it
        return lines, pid is not None or (detached and bool(running) and self._sacct[1] is not None)

    def _slurm_states(self, jobs: Sequence[str]) -> dict[str, str] | None:
        """sacct's state of each job, asked at most every SACCT_EVERY_S (watch redraws every 2 s; each sacct call
        is a query of the cluster's accounting database): a detached sweep's jobs only end, none are added."""
        at, states = self._sacct
        if time.monotonic() - at >= SACCT_EVERY_S:
            self._sacct = at, states = time.monotonic(), sacct_states(jobs)
        return states

    def _failures(self) -> list[Mapping[str, Any]]:
        """The latest 200 failed runs, each with its last stderr line (read once: the journal keeps no tails)."""
        failed = [r for r in self.latest.values() if r.get("state") in (State.FAILED.value, State.TIMEOUT.value,
                                                                        State.OOM.value)][-200:]
        out = []
        for r in failed:
            key = (r["model_name"], _attempt(r))
            if key not in self._tails:
                stderr = r.get("stderr") or (tail_lines(Path(r["run_dir"]) / "train_stderr.log", 3)
                                             if isinstance(r.get("run_dir"), str) else "")
                self._tails[key] = stderr
            out.append({**r, "stderr": self._tails[key]})
        return out

    def _latest_value(self, run: Mapping[str, Any], metric: str | None) -> float | None:
        """A running run's latest value of the metric: the last line of its series that has it."""
        if not metric or not run.get("run_dir"):
            return None
        for line in reversed(tail_lines(Path(run["run_dir"]) / SERIES, 20, 16 * 1024).splitlines()):
            with suppress(ValueError, TypeError, AttributeError):
                value = json.loads(line).get(metric)
                if isinstance(value, (int, float)):
                    return float(value)
        return None


def _attempt(record: Mapping[str, Any]) -> int:
    return record.get("attempt") if _is_whole(record.get("attempt")) else 1


SACCT_EVERY_S = 30.0  # `watch` of a detached sweep asks Slurm's accounting this often at most
SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
               "TIMEOUT")  # sacct's states of a job that has ended (a requeued one is PENDING or REQUEUED again)


def sacct_states(jobs: Sequence[str]) -> dict[str, str] | None:
    """Each job's state as sacct says it; None where sacct is not here or fails."""
    if not shutil.which("sacct"):
        return None
    with suppress(ImportError):  # (submitit reads sacct's lines)
        from train_sweep_extras.slurm import sacct

        states, failed = sacct(jobs, timeout=10.0)
        return None if failed else {job: info.get("State", "") for job, info in states.items()}
    return None


def jobs_ended(folder: Path, records: Sequence[Mapping[str, Any]],
               states: Callable[[Sequence[str]], Mapping[str, str] | None]) -> list[Mapping[str, Any]]:
    """A detached sweep's Slurm jobs (their run.json says running) that ended: submitit wrote the result, or
    `states` (sacct's answer for the others) says so (a job cancelled, or killed without a result); only the
    sweep's command, run again, collects them. Where sacct is not here or fails, the results alone tell."""
    jobs = {r["slurm_job_id"]: r for r in records if isinstance(r.get("slurm_job_id"), str)}
    ended = [r for job, r in jobs.items() if (folder / SLURM_DIR / f"{job}_0_result.pkl").exists()]
    if asked := [job for job, r in jobs.items() if r not in ended]:
        said = states(asked) or {}
        ended += [jobs[job] for job in asked if said.get(job, "").split(" ")[0] in SLURM_ENDED]
    return ended


def _newer(running: Mapping[str, Any], latest: Mapping[str, Any] | None) -> bool:
    """A run folder's run.json is not the run its latest record is: a later attempt, or another run that had its
    name (a default edited: its attempts count from 1 again)."""
    return latest is None or _attempt(running) > _attempt(latest) or running.get("identity") != latest.get("identity")


def ended_later(record: Mapping[str, Any], latest: Mapping[str, Any] | None) -> bool:
    """A run.json of a run that ended, where the journal lacks that attempt (its last lines cut short), or
    that run (another of its name: a default edited), as report reads them (latest_records)."""
    return record.get("state") != State.RUNNING.value and _newer(record, latest)


def status_reader(args: argparse.Namespace) -> Callable[[], tuple[list[str], bool]]:
    """status and watch: a sweep's folder (read on from where each reading stopped), or a shared sweep's study
    (`status URL`, `--storage URL`: every agent's runs)."""
    storage = args.storage or (args.folder if "://" in args.folder else None)
    if storage:
        from train_sweep_extras.agents import status_lines as shared_lines

        return lambda: shared_lines(storage, args.study_name)
    return SweepStatus(Path(args.folder)).lines


def no_url(args: Sequence[str], what: str) -> None:
    """A URL where a file or folder is meant (a shared sweep's --storage): one line, without its password."""
    for arg in args:
        if "://" in arg:
            raise UserError(f"{what} {redact(arg)}: a URL; a shared sweep's runs are read with report --storage "
                            "URL, status URL or watch URL")


def cmd_status(args: argparse.Namespace) -> int:
    lines, _ = status_reader(args)()
    print("\n".join(lines))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """status, redrawn every --every seconds until the sweep's process ends, or a detached sweep's Slurm jobs have
    (or Ctrl+C)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    if args.every > 86400:  # time.sleep() overflows past about 10**11 s; a redraw a day is the most that means
        raise UserError(f"watch --every {args.every:g}: at most 86400 seconds (a day)")
    read = status_reader(args)
    lines, alive = read()
    if not sys.stdout.isatty():  # a pipe or a file: each state, one after another
        print("\n".join(lines), flush=True)
        while alive:
            time.sleep(args.every)
            lines, alive = read()
            print("\n" + "\n".join(lines), flush=True)
        return EXIT_OK
    with Live(Text("\n".join(lines)), console=Console(), auto_refresh=False) as live:
        while alive:
            time.sleep(args.every)
            lines, alive = read()
            live.update(Text("\n".join(lines)), refresh=True)
    return EXIT_OK


def cmd_flags(args: argparse.Namespace) -> int:
    print(flags_markdown(), end="")
    return EXIT_OK


TOOLS = {"report": cmd_report, "list": cmd_list, "cleanup": cmd_cleanup, "status": cmd_status, "watch": cmd_watch,
         "flags": cmd_flags}


def main(argv: Sequence[str]) -> int:
    """`train_sweep report|list|status|watch|cleanup ...`: the offline commands."""
    try:
        args = build_tool_parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    try:
        return TOOLS[args.tool](args)
    except BrokenPipeError:  # `status | head`: the reader has gone; no traceback (nor one at the final flush)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_RUN_FAILED
    finally:
        SKIPPED.say()


def read_series(run_dir: str | None, metric: str | None) -> list[list[float]]:
    """A run's learning curve of `metric` as [[step, value], ...]: what it printed (train_sweep_metrics.jsonl)
    and what it wrote to its metrics.jsonl. A point without a step gets its position."""
    if not run_dir or not metric:
        return []
    reader = MetricReader((metric,))
    points: list[list[float]] = []
    for name in (SERIES, "metrics.jsonl"):
        try:
            lines = (Path(run_dir) / name).read_bytes().splitlines() if (Path(run_dir) / name).is_file() else []
        except OSError:
            continue
        for line in lines:
            try:
                point = reader.from_json(json.loads(line))
            except (ValueError, RecursionError):
                continue
            if point is not None and math.isfinite(point[1][metric]):
                points.append([len(points) if point[0] is None else point[0], point[1][metric]])
    return sorted(points, key=lambda p: p[0])


def flags_markdown() -> str:
    """docs/flags.md: every flag, its default and what it does, from the same fields as --help."""
    out = ["# Flags", "", "Generated from the settings' own descriptions (`train_sweep.Settings`) by "
           "`python train_sweep.py flags > docs/flags.md`; "
           "`--help` shows the same. Hyperparameter overrides (`KEY=VALUES`, Hydra's syntax) may stand anywhere "
           "among the flags (docs/config.md).", ""]
    fields = dataclasses.fields(Settings)
    for key, title in GROUPS.items():
        out += [f"## {title[0].upper()}{title[1:]}", "", "| flag | default | what it does |", "| --- | --- | --- |"]
        for field in (f for f in fields if f.metadata["group"] == key):
            meta = field.metadata
            name = "--" + field.name.replace("_", "-")
            value = meta.get("metavar") or ("{" + ",".join(meta["choices"]) + "}" if "choices" in meta else "")
            shown = f"`{name}`" if field.default is False else f"`{name}, --no-{name[2:]}`" \
                if meta.get("action") is argparse.BooleanOptionalAction else f"`{name} {value or 'VALUE'}`"
            if field.default == () or meta.get("nargs") == "+":
                shown = shown[:-1] + (" ...`" if meta.get("nargs") == "+" else "` (repeatable)")
            default = flag_default(field)
            text = meta["help"].replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            out.append(f"| {shown.replace('|', chr(92) + '|')} | {f'`{default}`' if default else ''} | {text} |")
        out.append("")
    return "\n".join(out)
