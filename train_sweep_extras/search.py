"""The Optuna search: a study in <output-dir>/study.log asks each trial's hyperparameters when a GPU slot frees
up (SearchSource, a RunSource), its pruner judges runs as their metric appears, and a resumed sweep settles
the trials an earlier one left. Also a plain list with --pruner. Needs: pip install 'train-sweep[search]'."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from train_sweep import (
    FINISHED_ORDER,
    JOURNAL,
    STUDY,
    Journal,
    OutputError,
    Plan,
    Run,
    Settings,
    State,
    UserError,
    _is_whole,
    attempt_summary,
    better,
    canonical_json,
    readable,
    metric_of,
    one_line,
    read_json,
    record_damage,
    restore,
    run_record,
    write_json_atomic,
)
from train_sweep_extras.space import Param, SearchSpec, encode_choice, grid_points, pruner_flag


def import_optuna() -> Any:
    """Optuna, imported when a search or a pruner is asked for, quiet (its messages would break the live
    view: what matters goes to the sweep's own events)."""
    try:
        import optuna
    except ImportError:
        raise UserError("a search or a pruner needs Optuna: pip install 'train-sweep[search]'") from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.logging.disable_propagation()
    warnings.filterwarnings("ignore", module=r"optuna(\..*)?$")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# TPE's random start-up: it models the results once this many trials have finished (Optuna's default: 10). On
# YAHPO Gym's LCBench with 8 trials at once (bench/README.md, 10 seeds), 8 reached the regret random search ends
# with in 0.36, 0.25 and 0.24 of its time, against 0.40, 0.33 and 0.39 with 10: a trial asked before the 8th (or
# 10th) has finished is random, so that is 16 random trials instead of 18 (8 running and one asked ahead).
TPE_STARTUP = 8


def make_sampler(optuna: Any, search: SearchSpec, seed: int | None, n_objectives: int) -> Any:
    """The Optuna sampler a search names (with its seed), or a one-line UserError when it cannot run here."""
    cls, kwargs = sampler_spec(optuna, search, seed, n_objectives)
    try:
        return cls(**kwargs)
    except ImportError as e:
        raise UserError(f"the {search.sampler} sampler needs {e.name}: pip install {e.name}") from None


def sampler_spec(optuna: Any, search: SearchSpec, seed: int | None, n_objectives: int) -> tuple[Any, dict[str, Any]]:
    """The sampler's class and the arguments it is made with."""
    s = optuna.samplers
    name = search.sampler
    if seed is not None and not 0 <= seed < 2**32:
        raise UserError(f"{search.source}: the seed must be a whole number from 0 to 2**32 - 1, got {seed}")
    if name == "grid":  # every point is enqueued when the study is made (open_study), in the grid's order
        grid_points(search)
        return s.RandomSampler, {"seed": seed}
    if n_objectives > 1 and name == "cmaes":
        raise UserError(f"{search.source}: the cmaes sampler optimizes one objective; for several use nsga2, tpe, "
                        "random, qmc or gp")
    needs = {"gp": ("torch", "scipy"), "qmc": ("scipy",), "cmaes": ("cmaes",)}.get(name, ())
    import importlib.util

    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"the {name} sampler needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    if name == "tpe":  # informed trials once TPE_STARTUP have finished
        return s.TPESampler, {"seed": seed, "constant_liar": True, "n_startup_trials": TPE_STARTUP,
                              **search.sampler_args}
    return {"random": s.RandomSampler, "gp": s.GPSampler, "cmaes": s.CmaEsSampler, "nsga2": s.NSGAIISampler,
            "qmc": s.QMCSampler}[name], {"seed": seed}


def described(cls: Any, kwargs: Mapping[str, Any]) -> str:
    """`TPESampler(n_startup_trials=10, ...)`: every setting, the given ones and the library's defaults."""
    import inspect

    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        params = []
    settings = {p.name: kwargs.get(p.name, p.default) for p in params  # None: the library decides (or deprecated)
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
                and (p.default is not None or p.name in kwargs)}
    settings.update({k: v for k, v in kwargs.items() if k not in settings})
    return f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"


def distribution(p: Param) -> Any:
    """A Param as Optuna's distribution."""
    from optuna import distributions as d

    if p.type == "categorical":
        return d.CategoricalDistribution([encode_choice(c) for c in p.choices])
    if p.type == "int":
        return d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def make_pruner(optuna: Any, name: str, args: Mapping[str, Any], where: str) -> Any:
    """The Optuna pruner named, with its own arguments, tried on a study in memory first: arguments it takes
    but cannot work with (a min_resource of 0) are a one-line error now, not a traceback in the sweep."""
    pruner = _pruner(optuna, name, args, where)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial_study = optuna.create_study(pruner=_pruner(optuna, name, args, where))
            for value in (1.0, 2.0, 3.0):
                trial = trial_study.ask()
                for step in (1, 2, 3):
                    trial.report(value, step)
                    trial.should_prune()
                trial_study.tell(trial, value)
    except Exception as e:  # whatever the pruner's own code raises on these arguments
        raise UserError(f"{where}: pruner {name!r} with {dict(args)}: {type(e).__name__}: {e}") from None
    return pruner


# A pruner named on the command line, with no settings of the config's: a few trials before any is judged, and a
# run's first report never judged (Optuna's defaults judge at the first report: a run killed 0.7 s in ended better
# than the median once it was let run, in a 16-trial search on an H100).
PRUNER_DEFAULTS = {"median": {"n_startup_trials": 4}, "percentile": {"percentile": 25.0, "n_startup_trials": 4},
                   "successive_halving": {"reduction_factor": 3}}
WARMUP_REPORTS = 1  # ... and, for such a pruner, the reports of a run not judged (its first)


class SuccessiveHalvingFromANinth:
    """successive_halving without its min_resource: Optuna's successive halving with its first rung at a ninth of
    the steps of the first trial to finish (reduction factor 3 unless given, its other arguments as given). Optuna's own
    default ("auto") puts the first rung at a hundredth: on YAHPO Gym's LCBench (52 epochs, 10 seeds) that was the
    worst pruner measured, final regret 0.150 against 0.064 with the first rung at epoch 6 (bench/README.md). No run
    is stopped before a trial has finished, and the runs that were then already past the first rung are never
    judged: Optuna's successive halving would take their value at a later step for their value at every rung they
    passed, and judge the runs after them, at the rung's own step, against it."""

    def __init__(self, fraction: int = 9, reduction_factor: int = 3, min_early_stopping_rate: int = 0,
                 bootstrap_count: int = 0) -> None:
        self.fraction, self._reduction_factor, self._bootstrap_count = fraction, reduction_factor, bootstrap_count
        self._min_early_stopping_rate = min_early_stopping_rate
        self.inner: Any = None  # the successive halving, once a trial has finished
        self.past: set[int] = set()  # the trials already past the first rung, unjudged, when it was set

    def prune(self, study: Any, trial: Any) -> bool:
        if self.inner is None:
            import optuna
            from optuna.trial import TrialState

            steps = [t.last_step for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.last_step is not None]
            if not steps:
                return False
            first_rung = max(max(steps) // self.fraction, 1)
            self.inner = optuna.pruners.SuccessiveHalvingPruner(
                min_resource=first_rung, reduction_factor=self._reduction_factor,
                min_early_stopping_rate=self._min_early_stopping_rate, bootstrap_count=self._bootstrap_count)
            self.past = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if (t.last_step or 0) > first_rung and "completed_rung_0" not in t.system_attrs}
        return trial.number not in self.past and self.inner.prune(study, trial)


def pruner_spec(optuna: Any, name: str, args: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The pruner's class and its arguments: the config's, over PRUNER_DEFAULTS (successive_halving without its
    min_resource: SuccessiveHalvingFromANinth)."""
    p = optuna.pruners
    kinds = {"median": p.MedianPruner, "percentile": p.PercentilePruner, "successive_halving": p.SuccessiveHalvingPruner,
             "hyperband": p.HyperbandPruner, "none": p.NopPruner}
    if name == "successive_halving" and "min_resource" not in args:  # its first rung not given: at a ninth
        return SuccessiveHalvingFromANinth, {**PRUNER_DEFAULTS[name], **args}
    kwargs = {**PRUNER_DEFAULTS.get(name, {}), **args}  # the arguments not given: train_sweep's, not Optuna's
    return kinds[name], kwargs


def _pruner(optuna: Any, name: str, args: Mapping[str, Any], where: str) -> Any:
    cls, kwargs = pruner_spec(optuna, name, args)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: pruner {name!r}: {e}") from None


def pruner_of(settings: Settings, search: SearchSpec | None) -> tuple[str, dict[str, Any], str]:
    """The pruner's name, its own arguments and where they were given: a search's (complete_search weighed the
    flag against its config), or a list's, from the flag (--pruner NAME or NAME(key=value, ...): no pause)."""
    if search is not None:  # (settings.pruner: its name, resolved by complete_search)
        return settings.pruner or "none", search.pruner_args, search.pruner_from or search.source
    name, args, pause = pruner_flag(settings.pruner or "none")
    if pause:
        raise UserError(f"--pruner {settings.pruner}: pause is for a search (--search, or the config's 'search'), "
                        "whose trial goes on when it ranks at its rung later")
    return name, args, f"--pruner {settings.pruner}"


def describe_choices(search: SearchSpec | None, settings: Settings) -> list[str]:
    """--dry-run: every setting of the sampler and the pruner."""
    optuna = import_optuna()
    lines = []
    if search is not None:
        cls, kwargs = sampler_spec(optuna, search, settings.seed, len(settings.modes))
        lines.append("sampler " + described(cls, kwargs))
    name, given, _ = pruner_of(settings, search)
    lines.append(f"pruner {name}: " + described(*pruner_spec(optuna, name, given))
                 + ("; a run's first report is not judged" if name != "none" and not given
                    else "")
                 + ("; pause: a run it stops at a rung goes on from its checkpoint (TRAIN_SWEEP_RESUME=1) once it "
                    "ranks in the top of that rung" if search is not None and search.pause else ""))
    return lines


def open_study(output_dir: Path, search: SearchSpec | None, settings: Settings, journal: Journal,
               say: Callable[[str], None]) -> Any:
    """The sweep's study in <output-dir>/study.log: made, or loaded to resume (refused when it was made for
    another search). Trials that were running when a sweep died are settled from the journal: told what
    their run's record says, or failed, not counted, and asked again."""
    optuna = import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = output_dir / STUDY
    for stale in output_dir.glob(f"{STUDY}.lock*"):  # the output folder is locked: no one else writes the study
        if stale.name == f"{STUDY}.lock" and stale.is_dir() and not stale.is_symlink():
            raise UserError(f"{stale} is a folder where Optuna locks the study; move it out of the output folder")
        if re.fullmatch(rf"{re.escape(STUDY)}\.lock([0-9a-f-]{{36}}\.rename)?", stale.name) and not stale.is_dir():
            stale.unlink(missing_ok=True)  # Optuna's lock and its renamed copies, a crash left; nothing else
    mend_torn_line(path)
    directions = ["minimize" if m == "min" else "maximize" for m in settings.modes]
    objectives = settings.metric[: len(directions)]
    pruner = make_pruner(optuna, *pruner_of(settings, search))
    key = (search.space_key(objectives, settings.modes, settings.command) if search is not None
           else canonical_json({"list": list(objectives), "modes": list(settings.modes)}))
    fresh = not path.exists() or path.stat().st_size == 0
    warm = warm_start(optuna, Path(settings.warm_start), search, objectives, settings.modes, say) \
        if settings.warm_start and search is not None and fresh else None  # checked before the study is made
    if settings.warm_start and not fresh:  # (it was ignored without a word)
        say(f"--warm-start {settings.warm_start}: not applied: {path} resumes, and keeps what it took when it began")
    try:
        storage = JournalStorage(JournalFileBackend(str(path)))
        study = optuna.create_study(storage=storage, study_name="train_sweep", pruner=pruner, directions=directions,
                                    load_if_exists=True)
    except (ValueError, AssertionError, KeyError, TypeError, IndexError, AttributeError) as e:  # a damaged line
        raise UserError(f"{path}: the study cannot be read ({type(e).__name__}: {one_line(str(e), 120)}): a line of it "
                        "is damaged; pass --rerun to start afresh (the old study and trials are kept aside)") from None
    except (OSError, optuna.exceptions.StorageInternalError) as e:
        raise UserError(f"{path}: cannot open the study: {e}") from None
    known = {t.number: t.user_attrs.get("run") for t in study.get_trials(deepcopy=False)}
    journaled = [r for records in journal.values() for r in records if _is_whole(r.get("trial"))]
    lost = sorted({r["trial"] for r in journaled if r["trial"] not in known})
    if lost:  # a fresh or cut study would ask those trials' numbers (and, seeded alike, their values) again
        raise UserError(f"{path} knows {len(known)} trial(s), and {output_dir / JOURNAL} holds trials it does not know "
                        f"({', '.join(map(str, lost[:5]))}{', ...' if len(lost) > 5 else ''}): the study was emptied or "
                        "cut short; pass --rerun to start afresh (the old study and trials are kept aside)")
    other = next((r for r in journaled if known[r["trial"]] not in (None, r.get("model_name"))), None)
    names = {r.get("model_name") for r in journaled}
    ghost = next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                  if "warm_start" not in t.user_attrs and isinstance(run := t.user_attrs.get("run"), str) and
                  run not in names and not (output_dir / run).is_dir()), None)  # (a complete trial ran here)
    if other is not None or ghost is not None:  # (copied from another sweep of the same search: its trials)
        what = (f"its trial {other['trial']} ran {known[other['trial']]}, where {output_dir / JOURNAL} says "
                f"{other.get('model_name')}" if other is not None else
                f"its trial {ghost.number} ran {ghost.user_attrs['run']}, of which this folder has no trace")
        raise UserError(f"{path} is another sweep's study: {what}; put this sweep's back, or pass --rerun to start "
                        "afresh (the old study and trials are kept aside)")
    try:
        if search is not None:  # a resumed search draws on from a seed of its own, not the first trials' again
            seed = settings.seed if search.seed is None else search.seed
            if search.sampler != "qmc":  # (QMC's sequence goes on from where the study is, with the same seed)
                seed = (seed + len(study.get_trials(deepcopy=False))) % 2**32
            study.sampler = make_sampler(optuna, search, seed, len(directions))
        made_for = study.user_attrs.get("search")
        if made_for is None:
            study.set_user_attr("search", key)
        elif made_for != key:
            raise UserError(f"{path}: the study was made for another search (other parameters, objectives, fixed values "
                            "or command); "
                            "pass --rerun for a fresh one (the old one is kept as study.log~1), or use another "
                            "--output-dir")
        settle_orphans(study, search is not None, journal, objectives, say)
        if search is not None:  # (a list with a pruner resumes its runs by name, from their run.json)
            stale_runs_interrupted(output_dir)
    except (OSError, optuna.exceptions.StorageInternalError) as e:
        raise UserError(f"{path}: cannot open the study: {e}") from None
    if search is not None and not study.trials:
        if warm is not None:
            warm(study)
        if search.sampler == "grid":  # the grid: each point once, in order (a requeued point is enqueued again)
            import itertools

            space = grid_points(search)
            for point in itertools.product(*space.values()):
                study.enqueue_trial(dict(zip(space, point)))
        elif search.first:
            study.enqueue_trial(search.first)
    warm_n = sum(1 for t in study.get_trials(deepcopy=False) if "warm_start" in t.user_attrs)
    if warm_n and hasattr(pruner, "_n_startup_trials"):  # median, percentile: their start-up is this search's own
        pruner._n_startup_trials += warm_n
    return study


def warm_start(optuna: Any, folder: Path, search: SearchSpec, objectives: Sequence[str], modes: Sequence[str],
               say: Callable[[str], None]) -> Callable[[Any], None]:
    """--warm-start DIR: the complete trials of DIR's study whose parameters are all in this space (each value
    within its range or choices) and whose objectives are this search's, checked now (a one-line error) and
    added by the function returned to the new study as finished trials (user attribute warm_start: the budget,
    the results and the best leave them out)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = folder / STUDY
    if search.sampler == "grid":
        raise UserError(f"--warm-start {folder}: a grid runs every point anyway; warm start is for a sampler that "
                        "learns (tpe, gp, cmaes, ...)")
    if not path.is_file():
        raise UserError(f"--warm-start {folder}: no {STUDY} there: pass the output folder of an earlier search")
    try:
        earlier = optuna.load_study(study_name="train_sweep", storage=JournalStorage(JournalFileBackend(str(path))))
        trials = earlier.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        made_for = json.loads(earlier.user_attrs.get("search", "{}"))
    except Exception as e:  # a damaged or foreign journal: whatever Optuna raises reading it
        raise UserError(f"--warm-start {folder}: {path} cannot be read ({type(e).__name__}: {one_line(str(e), 120)})"
                        ) from None
    if not isinstance(made_for, dict) or not isinstance(made_for.get("base") or {}, dict):
        raise UserError(f"--warm-start {folder}: {path} is damaged: its record of the search is not an object with "
                        "an object for 'base'")
    ranked = (made_for.get("metrics"), made_for.get("modes"))
    if ranked[0] is None:  # (a list run with a pruner keeps a study too)
        raise UserError(f"--warm-start {folder}: no search ran there (its study judged a list's runs for a pruner): "
                        "pass the output folder of an earlier search")
    if ranked != (list(objectives), list(modes)):
        raise UserError(f"--warm-start {folder}: its search ranked by {ranked[0]} ({ranked[1]}); this one by "
                        f"{list(objectives)} ({list(modes)}): its values would mislead the sampler")
    dists = {k: distribution(p) for k, p in search.params.items()}
    taken, left = [], Counter()
    for t in trials:
        why = next((f"no {k}" for k in dists if k not in t.params), None) or next(
            (f"{k} is not searched here" for k in t.params if k not in dists), None) or next(
            (f"{k} outside this space" for k, d in dists.items() if not _within(d, t.params[k])), None)
        if why is None:
            taken.append(t)
        else:
            left[why] += 1
    rest = "; ".join(f"{n} with {why}" for why, n in left.most_common())
    old_base = made_for.get("base") or {}
    unset = object()  # a fixed value set in one search only differs too
    changed = [k for k in sorted(set(old_base) | set(search.base))
               if k not in search.params and old_base.get(k, unset) != search.base.get(k, unset)]

    def add(study: Any) -> None:
        for t in taken:
            study.add_trial(optuna.trial.create_trial(
                params={k: t.params[k] for k in dists}, distributions=dists, values=t.values,
                user_attrs={"warm_start": str(folder), "run": t.user_attrs.get("run", f"trial {t.number}")}))
        say(f"{'search':<11} warm start: {len(taken)} of {len(trials)} complete trial(s) of {path} taken"
            + (f" ({sum(left.values())} left: {rest})" if left else "")
            + (f"; note: its fixed values differ in {', '.join(changed)}" if changed else ""))

    return add


def _within(dist: Any, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return False


def mend_torn_line(path: Path) -> None:
    """A sweep killed in the middle of a write leaves the study's last line cut short. Optuna skips it when
    it reads, but appends the next operation to it, which breaks the file for every later reader: cut the
    torn line off first (it was never confirmed, so nothing the sweep relied on is lost)."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            at = size
            while at > 0:  # the last newline, read backwards in blocks
                start = max(0, at - 65536)
                f.seek(start)
                block = f.read(at - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    f.truncate(start + cut + 1)
                    return
                at = start
            f.truncate(0)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"{path}: cannot repair the study's last line: {e.strerror or e}") from None


def stale_runs_interrupted(output_dir: Path) -> None:
    """A search starting in its folder (its lock held, nothing running yet): a run.json that still says running
    is a trial's run the sweep died in (kill -9, a crash, an agent taken over). Its trial is told or asked again
    (a new trial, a new folder): that folder never runs again, so its record says interrupted, or status and
    list took the sweep for dead for good."""
    for path in output_dir.glob("*/run.json"):
        record = read_json(path)
        if isinstance(record, dict) and record.get("state") == State.RUNNING.value and not record.get("slurm_job_id"):
            with suppress(OSError):
                write_json_atomic(path, {**record, "state": State.INTERRUPTED.value,
                                         "error": record.get("error") or "the sweep stopped while it ran"})


def settle_orphans(study: Any, search: bool, journal: Journal, objectives: Sequence[str],
                   say: Callable[[str], None], mine: Callable[[Any], bool] = lambda trial: True,
                   put_back: Callable[[Any], None] | None = None) -> None:
    """Trials left running by a sweep that died (of them, those `mine` says are this sweep's: an agent's own):
    told from their run's last journal record when it ended for good, else put back: failed, marked requeued
    and (in a search) enqueued again with the same parameters (`put_back`, an agent's own way)."""
    from optuna.trial import TrialState

    ended = {r.get("trial"): r for records in journal.values() for r in records
             if r.get("trial") is not None and not r.get("requeued")}  # a requeued attempt was not the run's end
    for trial in filter(mine, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        record = ended.get(trial.number)
        state = record.get("state") if record else None
        values = [metric_of(record.get("metrics"), m) for m in objectives] if record else []
        if state == State.COMPLETE.value and values and all(v is not None and math.isfinite(v) for v in values):
            study.tell(trial.number, values)
        elif state == State.PRUNED.value:
            study.tell(trial.number, state=TrialState.PRUNED)
        elif state in (State.COMPLETE.value, State.FAILED.value, State.TIMEOUT.value, State.OOM.value):
            study.tell(trial.number, state=TrialState.FAIL)  # failed, or complete without its metric
        else:
            (put_back or (lambda t: requeue(study, t.number, t.params if search else None)))(trial)
            say(f"{'resume':<11} trial {trial.number} had not ended when the sweep stopped: "
                + ("asked again" if search else "its run goes again"))


class SearchSource:
    """Runs from an Optuna study (ask-and-tell), or the config list's runs with a trial each so that a pruner
    can stop them. A trial's run starts when a GPU slot frees up; its run is told its value when it ends for
    good; a running run's metric stream goes to its trial, and the pruner's verdict comes back from report().
    Off the path from a run's end to the next start (prepare(), once the loop has started what it could),
    ended trials are told and the next trial is asked ahead, so that a slot that frees up takes it at once:
    a sampler that takes 50 ms to ask does not leave a GPU idle for 50 ms. (The trial asked ahead has not
    seen the result told just after it; its parallel siblings are what Optuna's constant liar handles.)
    The study lives in <output-dir>/study.log, Optuna's journal file: every ask, report and tell is one
    appended line, so a sweep killed at any moment loses nothing, and the same command resumes it. A trial
    whose run did not end (interrupted, never started, asked ahead, or running when the sweep died) is told
    failed, listed as requeued (it does not count against the budget) and, in a search, enqueued again with
    the same parameters."""

    def __init__(self, study: Any, search: SearchSpec | None, make_run: Callable[[dict[str, Any], int], Run] | None,
                 runs: Iterable[Run] = (), objectives: Sequence[str] = (), modes: Sequence[str] = ("min",),
                 n_trials: int | None = None, hours: float | None = None, clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] = print, pruner: tuple[str, Mapping[str, Any]] = ("none", {}),
                 path: Path | None = None) -> None:
        from collections import deque

        self.optuna = import_optuna()
        TS = self.optuna.trial.TrialState
        self.study, self.search, self.make_run = study, search, make_run
        self.queue = deque(runs)  # the list's runs (a pruned list); empty in a search
        self.objectives, self.modes = tuple(objectives), tuple(modes)
        self.n_trials, self.hours = n_trials, hours
        self.clock, self.say, self.pruner_name, self.path = clock, say, pruner[0], path
        self.warmup = 0 if pruner[1] else WARMUP_REPORTS  # reports not judged: the flag's pruner without arguments
        self.deadline = None if not hours else clock() + hours * 3600.0
        self.open: dict[Run, Any] = {}  # runs asked and not yet told, with their trial
        self.asked_at: dict[Run, int] = {}  # the attempt each run's trial was asked for (its curve's attempt)
        self.ahead: Run | None = None  # the next run, asked ahead (in self.open too)
        self.tells: list[tuple[Any, Any, list[float] | None]] = []  # ended trials to tell in prepare()
        self.stopped: str | None = None  # why the search asks no more (time budget, target reached)
        self.distributions = {} if search is None else {k: distribution(p) for k, p in search.params.items()}
        trials = study.get_trials(deepcopy=False)
        self.requeued = set(study.user_attrs.get("requeued", []))
        self.warm = sum(1 for t in trials if "warm_start" in t.user_attrs)  # TPE counts them in its start-up
        trials = [t for t in trials if "warm_start" not in t.user_attrs]  # --warm-start's: guides, not trials
        self.counted = sum(1 for t in trials if t.state != TS.WAITING and t.number not in self.requeued)
        self.done = sum(1 for t in trials if t.state.is_finished() and t.number not in self.requeued)
        self.pruned = sum(1 for t in trials if t.state == TS.PRUNED)
        self.best: tuple[float, dict[str, Any], str, list[str]] | None = None  # value, params, name, argv
        self.front: list[Any] | None = None  # the Pareto front of a multi-objective search, once read
        # freeze-thaw (the pruner's pause): a run successive halving stops at a rung is paused, its trial left
        # open, and goes on from its checkpoint (TRAIN_SWEEP_RESUME=1) once it ranks in that rung's top 1/eta
        self.pause = search is not None and search.pause
        self.pausing: set[Run] = set()  # stopped by the pruner just now: paused when they end
        self.paused: dict[Run, Any] = {}  # paused runs and their trials (in self.open too)
        self.paused_at: dict[Run, tuple[int, int]] = {}  # a paused run's attempt and last step (steps it reports)
        self.started_over = False  # a run that went on started over (said once)
        for t in trials:
            if t.state == TS.COMPLETE:
                self._note_best(t.values, t.params, t.user_attrs.get("run", f"trial {t.number}"), t.user_attrs)
        self._check_target(self.best[0] if self.best else None)

    def _decode(self, key: str, value: Any) -> Any:
        param = self.search.params[key] if self.search else None
        if param is not None and param.type == "categorical":
            for choice in param.choices:
                if encode_choice(choice) == value:
                    return choice
        return value

    def _budget(self) -> int:
        """How many more trials may be asked (counting none asked ahead)."""
        if self.search is None:
            return len(self.queue)
        if self.stopped is None and self.deadline is not None and self.clock() >= self.deadline:
            self._stop(f"the search's time budget ({self.hours:g} h) is used up")
        if self.stopped is not None:
            return 0
        return 1 if self.n_trials is None else max(0, self.n_trials - self.counted)

    def _ask(self) -> Run:
        """The next run with its trial: the list's next run, or a trial asked from the sampler."""
        try:
            if self.search is None:
                run = self.queue.popleft()
                trial = self.study.ask()
                trial.set_user_attr("run", run.name)
            else:
                trial = self.study.ask(self.distributions)
                params = {k: self._decode(k, trial.params[k]) for k in self.search.params if k in trial.params}
                run = self.make_run(params, trial.number)
                trial.set_user_attr("run", run.name)
                trial.set_user_attr("command", run.argv)
        except OSError as e:
            raise OutputError(f"cannot write the study {self.path}: {e.strerror or e}") from None
        run.trial = trial.number
        self.counted += 1
        self.open[run] = trial
        self.asked_at[run] = run.attempt
        return run

    # -- RunSource ---------------------------------------------------------------------------------------
    def next(self) -> Run | None:
        if (run := self._promoted()) is not None:
            return run
        if self.ahead is not None:
            run, self.ahead = self.ahead, None
            if self.search is None or self.stopped is None:
                return run
            self._requeue(self.open.pop(run))  # asked before the time budget ended: not started
        return self._ask() if self._budget() else None

    def prepare(self) -> None:
        self._tell_ended()
        if self.ahead is None and self._budget():
            self.ahead = self._ask()

    def _tell_ended(self) -> None:
        if self.tells:
            self.front = None
        while self.tells:
            trial, state, values = self.tells.pop(0)
            try:
                self.study.tell(trial, values, state=state, skip_if_finished=True)
            except OSError as e:
                raise OutputError(f"cannot write the study {self.path}: {e.strerror or e}") from None

    def pending(self) -> int:
        # a paused run that will go on is not counted: it is counted pruned until it does (the loop gives it, next(),
        # before it could see nothing pending with no run active)
        return self._budget() + (self.ahead is not None)

    def _rung(self, trial: Any) -> tuple[str, float] | None:
        """A paused trial's highest rung of successive halving and its value there (Optuna's own record of it,
        the trial's system attribute completed_rung_<k>)."""
        attrs = trial.system_attrs
        rungs = sorted((int(k.rsplit("_", 1)[1]), k) for k in attrs if k.startswith("completed_rung_"))
        return (rungs[-1][1], attrs[rungs[-1][1]]) if rungs else None

    def _promotable(self) -> Run | None:
        """The paused run that now ranks in the top 1/eta of the trials that reached its rung (Optuna's rule for
        going on: its best value when fewer than eta reached it), the best such; None: none."""
        if not self.paused or self.stopped is not None:
            return None
        eta = getattr(self.study.pruner, "_reduction_factor", 4)
        trials = self.study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        at_rung: dict[str, list[float]] = {}  # each rung's values, read once (not once a paused run)
        for t in trials:
            for key, value in t.system_attrs.items():
                if key.startswith("completed_rung_"):
                    at_rung.setdefault(key, []).append(value)
        found: list[tuple[float, Run]] = []
        for run, trial in self.paused.items():
            rung = self._rung(by_number[trial.number])
            if rung is None:
                continue
            key, value = rung
            rivals = sorted(at_rung[key], reverse=self.modes[0] == "max")
            if len(rivals) <= getattr(self.study.pruner, "_bootstrap_count", 0):
                continue  # the pruner stops every run until more than bootstrap_count reached the rung
            top = rivals[max(1, len(rivals) // eta) - 1]
            if (value <= top) if self.modes[0] == "min" else (value >= top):
                found.append((value if self.modes[0] == "min" else -value, run))
        return min(found, key=lambda f: f[0])[1] if found else None

    def _promoted(self) -> Run | None:
        """A paused run that goes on now: a new attempt of the same run, in its folder, told TRAIN_SWEEP_RESUME=1."""
        run = self._promotable()
        if run is None:
            return None
        del self.paused[run]
        run.next_attempt(attempt_summary(run_record(run)))
        run.resumed = True
        self.asked_at[run] = run.attempt
        self.say(f"{'search':<11} {run.name} goes on from where it paused: it now ranks in the top of its rung")
        return run

    def _went_on(self, run: Run, paused_at: int, step: int) -> None:
        """A paused run's first report after it went on: one that starts over at step 1 ignores the resume
        contract, and pausing costs it the steps it runs again (said once, so that the user can fix it)."""
        if step <= paused_at and not self.started_over:
            self.started_over = True
            self.say(f"{'search':<11} {run.name} reported step {step} after it went on from step {paused_at}: the "
                     "script started over, not from a checkpoint of that step (save one before each report, load it "
                     "when TRAIN_SWEEP_RESUME=1: docs/search.md, 'Pause and go on'), so runs that go on train steps "
                     "again")

    def _stop(self, why: str) -> None:
        if self.stopped is None:
            self.stopped = why
            self.say(f"{'search':<11} {why}: no more trials")

    def remaining(self) -> list[Run]:
        return ([self.ahead] if self.ahead is not None and self.search is None else []) + list(self.queue)

    def report(self, run: Run, step: int | None, values: Mapping[str, float]) -> str | None:
        trial = self.open.get(run)
        if trial is None or len(self.objectives) != 1 or self.pruner_name == "none":
            return None
        if run.attempt != self.asked_at.get(run):  # a retry or an out-of-memory requeue: the trial holds the
            return None  # first attempt's curve (Optuna keeps one value per step), so this one is not judged
        value = values.get(self.objectives[0])
        if value is None or not math.isfinite(value):
            return None
        counted = step is None or (self.search and self.search.count_reports)
        step = run.points if counted else step
        if run in self.paused_at and self.paused_at[run][0] != run.attempt:  # its first report since it went on
            self._went_on(run, self.paused_at.pop(run)[1], step)
        try:
            trial.report(value, step)
            if run in self.pausing and not counted:  # reported before the pause ended it (its checkpoint's step)
                self.paused_at[run] = (run.attempt, step)
            if run.points > self.warmup and trial.should_prune():
                if self.pause:
                    self.pausing.add(run)
                    if not counted:  # (a counted report's step says nothing of where the script is)
                        self.paused_at[run] = (run.attempt, step)
                    return (f"{self.objectives[0]}={value:g} at step {step}: successive halving pauses it (it goes "
                            "on if it ranks at its rung later)")
                return f"{self.objectives[0]}={value:g} at step {step}: the {self.pruner_name} pruner stops it"
        except OSError as e:
            raise OutputError(f"cannot write the study {self.path}: {e.strerror or e}") from None
        return None

    def finished(self, run: Run) -> None:
        if run in self.pausing and run.state == State.PRUNED and run in self.open:
            self.pausing.discard(run)
            self.paused[run] = self.open[run]  # not told: it may go on
            return
        self.pausing.discard(run)
        trial = self.open.pop(run, None)
        if trial is None:
            return
        TS = self.optuna.trial.TrialState
        if run.state == State.INTERRUPTED:
            self._requeue(trial, ran=True)
            return
        values = [metric_of(run.metrics, m) for m in self.objectives]
        self.done += 1
        self.asked_at.pop(run, None)
        if run.state == State.COMPLETE and all(v is not None and math.isfinite(v) for v in values):
            self.tells.append((trial, TS.COMPLETE, values))
            self._note_best(values, trial.params, run.name, {"command": run.argv})
            self._check_target(values[0])
        elif run.state == State.PRUNED:
            self.pruned += 1
            self.tells.append((trial, TS.PRUNED, None))
        else:  # failed, timed out, out of memory for good, or complete without its metric
            self.tells.append((trial, TS.FAIL, None))

    def _check_target(self, value: float | None) -> None:
        target = self.search.target if self.search else None
        if target is not None and value is not None and (value <= target if self.modes[0] == "min" else value >= target):
            self._stop(f"{self.objectives[0]}={value:g} reached the target {target:g}")

    def _requeue(self, trial: Any, ran: bool = False) -> None:
        """A trial whose run did not end on its own: failed, and (in a search) asked again at the next start, which
        counts it no more. One that never started gives its place in the budget back now; one that ran (interrupted:
        the sweep is stopping) keeps it in this start's counts, where its run is counted interrupted."""
        try:
            requeue(self.study, trial.number, trial.params if self.search is not None else None)
        except OSError as e:
            raise OutputError(f"cannot write the study {self.path}: {e.strerror or e}") from None
        self.requeued.add(trial.number)
        self.counted -= not ran

    def _note_best(self, values: Sequence[float] | None, params: Mapping[str, Any], name: str,
                   attrs: Mapping[str, Any]) -> None:
        if not values or len(values) != 1:
            return
        if self.best is None or better(values[0], self.best[0], self.modes[0]):
            shown = {k: self._decode(k, v) for k, v in params.items()}
            self.best = (values[0], shown, name, list(attrs.get("command") or []))

    def status(self) -> str | None:
        """The search in one line (the live view): trials done of the budget, pruned, the best and its parameters."""
        if self.search is None:
            return f"pruner {self.pruner_name}: {self.pruned} run(s) pruned" if self.pruned else None
        parts = [f"search {self.search.sampler}: {self.done}{f'/{self.n_trials}' if self.n_trials else ''} trials"]
        if self.pruner_name != "none":
            parts.append(f"{self.pruned} pruned" + (f", {len(self.paused)} paused" if self.paused else ""))
        if self.best is not None:
            value, params, _, _ = self.best
            parts.append(f"best {self.objectives[0]}={value:.4g} (" + " ".join(f"{k}={readable(v)}" for k, v in
                                                                             params.items()) + ")")
        elif len(self.objectives) > 1:
            parts.append(f"Pareto front: {len(self._front())} trial(s)")
        if self.stopped:
            parts.append(self.stopped)
        return ", ".join(parts)

    def _front(self) -> list[Any]:
        """The Pareto front, read from the study once after each tell (status() runs at every redraw)."""
        if self.front is None:
            try:
                self.front = [t for t in self.study.best_trials if "warm_start" not in t.user_attrs]
            except (ValueError, RuntimeError):
                self.front = []
        return self.front

    def summary(self) -> list[str]:
        """The end of the summary: the search's result, the best parameters as a command line to paste."""
        line = self.status()
        lines = [line[0].upper() + line[1:]] if line else []
        if self.search is None:
            return lines
        if self.best is not None:
            _, params, name, command = self.best
            lines.append(f"Best parameters ({name}): " + " ".join(f"{k}={readable(v)}" for k, v in params.items())
                         + ("  (every digit: the line below, and the results)" if command else ""))
            if command:
                lines.append(f"Train it again: {shlex.join(command)}")
        for t in self._front() if len(self.objectives) > 1 else ():
            values = ", ".join(f"{m}={v:.4g}" for m, v in zip(self.objectives, t.values))
            lines.append(f"Pareto front: {t.user_attrs.get('run', t.number)}: {values}  "
                         + " ".join(f"{k}={readable(self._decode(k, v))}" for k, v in t.params.items()))
        import importlib.util
        install = "" if importlib.util.find_spec("optuna_dashboard") else "pip install optuna-dashboard; then "
        lines.append(f"Study: {self.path} (to browse it: {install}optuna-dashboard {self.path})")
        return lines

    def wake_at(self, now: float) -> float | None:
        return self.deadline if self.stopped is None else None

    def close(self) -> None:
        waiting = [r for r in self.open if r.resumed and (r.requeued or r.state == State.PENDING)]  # went on, waits
        for run in [r for r in self.open if r in self.paused or r in waiting]:
            self.paused.pop(run, None)  # paused for good (also one that went on and waits to start again): pruned
            run.state = State.PRUNED
            self.finished(run)
        self._tell_ended()
        for run, trial in list(self.open.items()):  # asked but never ended: interrupted, not started, asked ahead
            self.open.pop(run)
            self._requeue(trial)
        if self.ahead is not None and self.search is None:
            self.queue.appendleft(self.ahead)  # a list's run asked ahead is still the list's
        self.ahead = None


def requeue(study: Any, number: int, params: Mapping[str, Any] | None) -> None:
    """A trial whose run did not end on its own (interrupted, never started, running when the sweep died):
    told failed, listed in the study's `requeued` (not counted against the budget), and asked again with
    the same parameters when `params` are given (a search; a list runs its runs again by itself)."""
    from optuna.trial import TrialState

    study.set_user_attr("requeued", [*study.user_attrs.get("requeued", []), number])
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if params is not None:
        study.enqueue_trial(dict(params), skip_if_exists=False)


def earlier_trials(journal: Journal, output_dir: Path, study: Any = None) -> list[tuple[Run, dict[str, Any]]]:
    """A resumed search's trials that ended for good in earlier sweeps (their last record; an interrupted
    one was asked again under a new number): in the results, the ranking and the counts again. A trial the
    study says ended whose record the journal lacks (a journal deleted or cut short) is taken from its run.json."""
    from optuna.trial import TrialState
    records = {name: records[-1] for name, records in journal.items()}
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=ended) if study is not None else ():
        name = trial.user_attrs.get("run")
        if not isinstance(name, str) or name in records or Path(name).name != name or name in ("", ".."):
            continue
        record = read_json(output_dir / name / "run.json")
        if isinstance(record, dict) and record.get("trial") == trial.number and record.get("model_name") == name:
            if why := record_damage(record):  # as a damaged journal line is
                raise UserError(f"{output_dir / name / 'run.json'} is damaged: {why} (mend or delete it)")
            records[name] = record
    out = []
    for name, record in records.items():
        if not _is_whole(record.get("trial")) or record.get("state") not in {s.value for s in FINISHED_ORDER} or \
                record.get("state") == State.INTERRUPTED.value or record.get("requeued"):
            continue
        run = Run(index=record["trial"], name=name, hyperparams=dict(record.get("hyperparams") or {}),
                  argv=list(record.get("command") or []), run_dir=output_dir.resolve() / name)
        run.identity = record.get("identity", "")
        out.append((restore(run, record), record))
    return sorted(out, key=lambda rr: rr[0].index)


class SearchSetup:
    """The Optuna study of a search (or of a list with a pruner), opened for the CLI: check() before anything
    starts, then the study (made, or loaded to resume), the earlier trials, and the run source."""

    @staticmethod
    def check(plan: Plan) -> None:
        """Said before anything starts: a missing Optuna, a sampler or a pruner that cannot run here."""
        optuna, settings, search = import_optuna(), plan.settings, plan.search
        make_pruner(optuna, *pruner_of(settings, search))
        if search is not None:
            make_sampler(optuna, search, 0, len(settings.modes))
        if settings.warm_start is not None and not settings.warm_start.strip():
            raise UserError("--warm-start '': give the output folder of an earlier search")
        study = Path(settings.output_dir) / STUDY  # --warm-start for a new study (--rerun's too): checked before
        if settings.warm_start and search is not None and (  # anything is made or set aside
                settings.rerun or not study.exists() or study.stat().st_size == 0):
            if settings.rerun and Path(settings.warm_start).resolve() == Path(settings.output_dir).resolve():
                raise UserError(f"--warm-start {settings.warm_start} with --rerun: --rerun sets this folder's study "
                                "aside before the new one starts; warm-start from a copy of the folder")
            objectives = settings.metric[: len(settings.modes)]
            warm_start(optuna, Path(settings.warm_start), search, objectives, settings.modes, lambda line: None)

    def __init__(self, plan: Plan, journal: Journal, say: Callable[[str], None]) -> None:
        self.plan, self.journal = plan, journal
        self.output_dir = Path(plan.settings.output_dir)
        study = self.output_dir / STUDY
        if (not study.exists() or study.stat().st_size == 0) and \
                any(r.get("trial") is not None for records in journal.values() for r in records):
            raise UserError(f"{study} is {'missing' if not study.exists() else 'empty'}, and {self.output_dir / JOURNAL} "
                            "holds trials of its study: the sweep cannot go on without it; pass --rerun to start afresh "
                            "(the old trials are kept aside)")
        self.study = open_study(self.output_dir, plan.search, plan.settings, journal, say)

    def earlier(self) -> list[tuple[Run, dict[str, Any]]]:
        """A resumed search's trials that ended for good in earlier sweeps."""
        return earlier_trials(self.journal, self.output_dir, self.study)

    def source(self, runs: list[Run], say: Callable[[str], None]) -> SearchSource:
        """The run source: the study asks each trial (a search), or judges the list's runs (a pruner)."""
        settings, search, study = self.plan.settings, self.plan.search, self.study
        objectives = settings.metric[: len(settings.modes)] if search is not None else settings.metric[:1]
        path = self.output_dir / STUDY
        pruner = pruner_of(settings, search)[:2]
        source = SearchSource(study, search, self.plan.make_run, runs, objectives, settings.modes, settings.n_trials,
                              settings.search_hours, say=say, pruner=pruner, path=path)
        if search is None:
            say(f"pruner {pruner[0]}: runs are judged by {objectives[0]} as it appears (study in {path})")
            return source
        running = len(study.get_trials(deepcopy=False, states=(source.optuna.trial.TrialState.RUNNING,)))
        finished = source.counted - running
        n = settings.n_trials
        done = (f"{finished} trials done" if not n else f"{finished} of {n} trials done" if finished < n
                else f"the study holds {finished} trials, its budget is {n}: none to ask (--n-trials N asks more)")
        say(f"search: {search.sampler} sampler, {done}, study in {path}")
        return source
