"""A search's space: its parameters (Param), the config's "search" block (SearchSpec), Hydra's search syntax
(`interval()`, `range()`, `tag(log, ...)`) on the command line, and the search's settings completed from the
flags. Pure Python: Optuna is needed only to run the search (train_sweep_extras.search)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from train_sweep import (
    MAX_RUNS,
    PRUNERS,
    SAMPLERS,
    Entry,
    Run,
    Settings,
    SimpleOverride,
    SweepSpec,
    UserError,
    _is_number,
    _is_whole,
    _json_type,
    _parsed_overrides,
    _plain_value,
    build_runs,
    canonical_json,
    check_hyperparams,
    check_key,
    check_known,
    check_value,
    format_value,
    label_of,
    run_name,
    sweep_values,
    template_name,
)


def parse_search_overrides(overrides: Sequence[str]) -> tuple[dict[str, Param], dict[str, Any]]:
    """With --search, the sweeps of Hydra's Optuna-sweeper syntax are searched, not multiplied:
    `a,b` and choice(a, b) are categorical, interval(lo, hi) a float range, range(lo, hi[, step]) an int (or
    float) range in steps, hi excluded as in a grid, tag(log, ...) on a log scale; shuffle(...) a choice.
    Returns the searched parameters and the plain values (set on every run)."""
    params: dict[str, Param] = {}
    plain: dict[str, Any] = {}
    for text, key, override in _parsed_overrides(overrides):
        value = override.value()
        where = f"override {text!r}"
        if not override.is_sweep_override():
            plain[key] = _plain_value(value)
            continue
        if isinstance(override, SimpleOverride):  # read without hydra-core: a list of plain values
            params[key] = make_param(where, "categorical", choices=list(override.sweep_iterator()))
            continue
        from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

        tags = set(getattr(value, "tags", ()) or ())
        if tags - {"log"}:
            raise UserError(f"{where}: tag {min(tags - {'log'})!r} is not known (tag(log, ...) is)")
        log = "log" in tags
        if isinstance(value, IntervalSweep):
            params[key] = make_param(where, "float", value.start, value.end, log=log)
        elif isinstance(value, RangeSweep) and not value.shuffle:
            whole = all(_is_whole(v) for v in (value.start, value.stop, value.step))
            if whole and value.step:  # its bounds, never listed: an int range may be wide (range(0, 10**30))
                steps = range(value.start, value.stop, value.step)
                values = [] if not steps else [steps[0]] if steps[0] == steps[-1] else [steps[0], steps[-1]]
            else:  # a float range in steps: listed, as Hydra adds them up, if not absurdly many
                values = sweep_values(text, override)
            if not values:
                raise UserError(f"{where}: the range is empty")
            step = None if log else value.step
            if log and value.step != 1:
                raise UserError(f"{where}: tag(log, range(...)) needs a step of 1 (Optuna samples a log scale "
                                "without steps)")
            if len(values) == 1:
                raise UserError(f"{where}: the range holds one value ({values[0]}); set it as a plain value")
            params[key] = make_param(where, "int" if whole else "float", min(values), max(values), log=log,
                                     step=None if step is None else abs(step))
        elif isinstance(value, (ChoiceSweep, RangeSweep)):
            if log:
                raise UserError(f"{where}: tag(log, ...) applies to interval() and range(), not to a list of choices")
            choices = sweep_values(text, override)
            if getattr(value, "shuffle", False):  # shuffled anew at each parse: one order, so that resume matches
                choices.sort(key=lambda c: (not _is_number(c), c if _is_number(c) else canonical_json(c)))
            params[key] = make_param(where, "categorical", choices=choices)
        else:
            raise UserError(f"{where}: {type(value).__name__} cannot be searched (a list, choice(), range() or "
                            "interval() can)")
    return params, plain


PARAM_TYPES = ("float", "int", "categorical")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a float or int range (log-scaled, or in steps) or a list of choices."""

    type: str  # one of PARAM_TYPES
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.type == "categorical":
            return "one of " + ", ".join(json.dumps(c) if isinstance(c, (list, dict, str)) else format_value(c)
                                         for c in self.choices)
        scale = " log" if self.log else f" step {self.step:g}" if self.step else ""
        return f"{self.type} [{self.low:g}, {self.high:g}]{scale}"


def make_param(where: str, type_: str, low: Any = None, high: Any = None, log: Any = False, step: Any = None,
               choices: Any = None, names: Mapping[str, str] | None = None) -> Param:
    """A Param that makes sense, or a one-line UserError saying why not (`where` names the parameter; `names`
    how its file calls low, high and step: min, max and q in a sweep file)."""
    low_, high_, step_ = ((names or {}).get(k, k) for k in ("low", "high", "step"))
    if type_ not in PARAM_TYPES:
        raise UserError(f"{where}: 'type' must be one of {', '.join(PARAM_TYPES)}, got {type_!r}")
    if type_ == "categorical":
        if not isinstance(choices, (list, tuple)) or not choices:
            raise UserError(f"{where}: 'choices' must be a non-empty list")
        for i, c in enumerate(choices):
            check_value(c, f"{where}: choice [{i}]")
        if len({canonical_json(c) for c in choices}) < len(choices):
            raise UserError(f"{where}: a choice is listed twice")
        first: dict[Any, int] = {}  # Optuna tells choices apart with ==, where true == 1 == 1.0, as a dict's keys
        for i, a in enumerate(choices):
            b = choices[first.setdefault(encode_choice(a), i)]
            if b is not a:
                raise UserError(f"{where}: the choices {json.dumps(b)} and {json.dumps(a)} are one value to Optuna "
                                f"(in Python {encode_choice(b)!r} == {encode_choice(a)!r}); keep one, or use text")
        return Param("categorical", choices=tuple(choices))
    whole = type_ == "int"
    ok = _is_whole if whole else _is_number
    for key, value in ((low_, low), (high_, high), *(((step_, step),) if step is not None else ())):
        if not ok(value) or not math.isfinite(value):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = f" (YAML reads {value} as text: write it with a dot, 1.0e-5, or as a decimal)"
                except ValueError:
                    pass
            raise UserError(f"{where}: {key!r} must be {'a whole number' if whole else 'a number'}, got {value!r}{hint}")
    if not low < high:
        raise UserError(f"{where}: {low_!r} ({low:g}) must be below {high_!r} ({high:g}); a fixed value goes in defaults")
    if not whole and not math.isfinite(high - low):  # (numpy's sampling overflows: a traceback at the first trial)
        raise UserError(f"{where}: from {low:g} to {high:g} is wider than a float spans (their difference overflows)")
    if not isinstance(log, bool):
        raise UserError(f"{where}: 'log' must be true or false")
    if log and low <= 0:
        raise UserError(f"{where}: a log scale needs {low_!r} > 0, got {low:g}")
    if step is not None:
        if log:
            raise UserError(f"{where}: {step_!r} and a log scale cannot be combined (Optuna samples a log scale "
                            "without steps)")
        if not step > 0:
            raise UserError(f"{where}: {step_!r} must be > 0, got {step!r}")
        steps = (high - low) / step
        if not whole and steps > MAX_FLOAT_STEPS:  # (Optuna's decimal arithmetic fails past about 10**28)
            raise UserError(f"{where}: {step_!r} ({step:g}) makes {steps:.3g} values from {low:g} to {high:g}: at "
                            f"most {MAX_FLOAT_STEPS:.0e} (a float's precision)")
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise UserError(f"{where}: {high_} - {low_} ({high - low:g}) must be a multiple of {step_!r} ({step:g})")
        if whole and step == 1:
            step = None
    return Param(type_, float(low) if not whole else low, float(high) if not whole else high, log, step)


PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
MAX_FLOAT_STEPS = 1e15  # a float range's values at most, in steps (beyond, steps are below a double's precision)


def parse_param(name: str, data: Any, where: str) -> Param:
    """The config's form: {"type": "float", "low": 1e-5, "high": 1e-2, "log": true} (int: the same with whole
    numbers, "step" for a grid of values; categorical: "choices": [...])."""
    where = f"{where}: {name!r}"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be an object with 'type' (float, int or categorical), got {_json_type(data)}")
    check_known(data, PARAM_KEYS, where)
    if "type" not in data:
        raise UserError(f"{where}: 'type' is missing (float, int or categorical)")
    return make_param(where, data["type"], data.get("low"), data.get("high"), data.get("log", False),
                      data.get("step"), data.get("choices"))


@dataclasses.dataclass
class SearchSpec:
    """What to search and how: the space, the sampler and its budget, the pruner, the objectives."""

    source: str  # where it was said, for messages
    params: dict[str, Param]
    sampler: str = "tpe"
    n_trials: int | None = None
    seed: int | None = None
    pruner: str = "none"
    pruner_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    pruner_from: str = ""  # where the pruner's arguments were given, when not `source`: the --pruner flag
    sampler_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # the objectives (the flags win)
    modes: tuple[str, ...] = ()
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # set on every trial (a sweep file's `value`)
    first: dict[str, Any] = dataclasses.field(default_factory=dict)  # the first trial's parameters (Protein's means)
    target: float | None = None  # stop asking once the best value reaches this (W&B's metric.target)
    count_reports: bool = False  # the pruner's step is the number of reports, not the metric's step (W&B's "iter")
    pause: bool = False  # successive halving pauses a run at a rung; it goes on if it ranks there later
    base: dict[str, Any] = dataclasses.field(default_factory=dict)  # what every trial gets: defaults, fixed, --set
    nested: set[str] = dataclasses.field(default_factory=set)  # dotted keys a run gets as one object (W&B nesting)
    notes: list[str] = dataclasses.field(default_factory=list)  # what the sweep log says about the mapping

    def space_key(self, objectives: Sequence[str], modes: Sequence[str], command: str | None) -> str:
        """What makes a study this search's: its parameters, objectives, fixed values and command (resume refuses
        another: its trials would be mixed with trials of something else)."""
        return canonical_json({"params": {k: dataclasses.asdict(p) for k, p in self.params.items()},
                               "metrics": list(objectives), "modes": list(modes), "base": self.base,
                               "command": command})


SEARCH_KEYS = ("sampler", "n_trials", "seed", "params", "pruner", "metric", "mode")


def _names_or_list(value: Any, where: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise UserError(f"{where} must be a name or a list of names")
    if allowed is not None and any(v not in allowed for v in items):
        bad = next(v for v in items if v not in allowed)
        raise UserError(f"{where}: {bad!r} is not one of {', '.join(allowed)}")
    return tuple(items)


WHOLE_ARGS = ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials", "min_resource", "max_resource",
              "reduction_factor", "min_early_stopping_rate", "bootstrap_count")  # the pruners' counts of steps, trials


def parse_pruner(value: Any, where: str) -> tuple[str, dict[str, Any], bool]:
    """"median" or {"type": "median", "n_warmup_steps": 10, ...}: the name, the pruner's own arguments, and
    pause (successive halving's "pause": true: a run it stops at a rung goes on later from its checkpoint)."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or value.get("type") not in PRUNERS:
        raise UserError(f"{where}: 'pruner' must be one of {', '.join(PRUNERS)}, or an object with 'type' "
                        "and the pruner's arguments")
    args = {k: v for k, v in value.items() if k not in ("type", "pause")}
    for key, v in args.items():
        check_key(key, f"{where}: 'pruner'")
        auto = key in ("min_resource", "max_resource")  # Optuna's "auto": from the first trial's steps
        if v == "auto" and auto:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or \
                key in WHOLE_ARGS and v != int(v):
            raise UserError(f"{where}: 'pruner' {key!r} must be a " + ("whole number" if key in WHOLE_ARGS else
                                                                      "finite number") + (' or "auto"' if auto else ""))
        if key in WHOLE_ARGS:
            args[key] = int(v)  # (Optuna reads a float min_resource as "auto", and a float reduction_factor fails)
    low, high = args.get("min_resource"), args.get("max_resource")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise UserError(f"{where}: 'pruner' 'min_resource' {low} is above 'max_resource' {high}")
    pause = value.get("pause", False)
    if not isinstance(pause, bool):
        raise UserError(f"{where}: 'pruner' 'pause' must be true or false")
    if pause and value["type"] != "successive_halving":
        raise UserError(f"{where}: 'pruner' 'pause' is for successive_halving (its rungs are where a run pauses and "
                        f"goes on), not {value['type']!r}")
    return value["type"], args, pause


def pruner_flag(text: str) -> tuple[str, dict[str, Any], bool]:
    """--pruner NAME, or NAME(key=value, ...) with what the config's pruner object holds besides its type
    (successive_halving(min_resource=100, pause=true)); each value is read as JSON, else as a string."""
    name, paren, rest = text.partition("(")
    value: dict[str, Any] = {"type": name.strip()}
    if value["type"] not in PRUNERS:
        raise UserError(f"--pruner {text}: give one of {', '.join(PRUNERS)}, or one with its arguments: "
                        "NAME(key=value, ...)")
    if paren and not rest.rstrip().endswith(")"):
        raise UserError(f"--pruner {text}: give NAME or NAME(key=value, ...), its arguments closed by ')'")
    for item in filter(None, (part.strip() for part in rest.rstrip()[:-1].split(","))):
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not (key and eq and raw) or key == "type" or key in value:
            raise UserError(f"--pruner {text}: {item!r} is not key=value (each key once; the name is before '(')")
        try:
            value[key] = json.loads(raw)
        except ValueError:
            value[key] = raw
    return parse_pruner(value, f"--pruner {text}")


def parse_search(data: Any, where: str) -> SearchSpec:
    """The object form's `search`: {"sampler": "tpe", "n_trials": 50, "seed": 0, "params": {...},
    "pruner": "median", "metric": "val_loss", "mode": "min"} (several metrics and modes: multi-objective)."""
    where = f"{where}: 'search'"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be an object, got {_json_type(data)}")
    check_known(data, SEARCH_KEYS, where)
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{where}: 'params' must be a non-empty object of parameters")
    check_hyperparams({k: None for k in params}, f"{where}: 'params'")
    spec = SearchSpec(where, {name: parse_param(name, p, f"{where}: 'params'") for name, p in params.items()})
    if "sampler" in data:
        if data["sampler"] not in SAMPLERS:
            raise UserError(f"{where}: 'sampler' must be one of {', '.join(SAMPLERS)}, got {data['sampler']!r}")
        spec.sampler = data["sampler"]
    for key, least, most in (("n_trials", 1, MAX_RUNS), ("seed", 0, 2**32 - 1)):
        if key in data and (not _is_whole(data[key]) or not least <= data[key] <= most):
            raise UserError(f"{where}: {key!r} must be a whole number from {least} to {most}")
    spec.n_trials, spec.seed = data.get("n_trials"), data.get("seed")
    if "pruner" in data:
        spec.pruner, spec.pruner_args, spec.pause = parse_pruner(data["pruner"], where)
    if "metric" in data:
        spec.metrics = _names_or_list(data["metric"], f"{where}: 'metric'")
    if "mode" in data:
        spec.modes = _names_or_list(data["mode"], f"{where}: 'mode'", ("min", "max"))
    return spec


def grid_points(search: SearchSpec) -> dict[str, list[Any]]:
    """The grid sampler's values of each parameter (as Optuna stores them): choices, or a range's steps."""
    space = {}
    for key, p in search.params.items():
        if p.type == "categorical":
            space[key] = [encode_choice(c) for c in p.choices]
        elif p.type == "int" or p.step:
            n = round((p.high - p.low) / (p.step or 1))
            if n + 1 > MAX_RUNS:  # counted before it is listed
                raise UserError(f"{search.source}: the grid sampler would try {n + 1:,} values of {key!r}, more than "
                                f"{MAX_RUNS:,}; search it with another sampler and a budget")
            space[key] = [p.low + i * (p.step or 1) for i in range(n + 1)]
        else:
            raise UserError(f"{search.source}: the grid sampler needs a list of values for {key!r}, not a "
                            "continuous range (give it a 'step', or choices)")
    return space


def encode_choice(choice: Any) -> Any:
    """Optuna's categorical choices are None, bools, numbers or strings: a list or object goes as its JSON."""
    return canonical_json(choice) if isinstance(choice, (list, dict)) else choice


def complete_search(settings: Settings, search: SearchSpec) -> Settings:
    """The search's settings, the flags winning over the config: sampler, metric and mode, budget, pruner."""
    if not search.params:
        raise UserError("--search needs parameters to search: overrides such as lr='tag(log, interval(1e-5, 1e-2))' "
                        "or opt=adam,sgd, or the config's 'search' block")
    for flag, value in (("--max-runs", settings.max_runs), ("--shuffle", settings.shuffle)):
        if value:
            raise UserError(f"{flag} is for a list or grid; a search's budget is --n-trials (or --search-hours)")
    search.sampler = settings.search or search.sampler
    if not 0 <= settings.seed < 2**32:
        raise UserError(f"--seed {settings.seed}: a search's seed is a whole number from 0 to 2**32 - 1")
    metric = settings.metric or search.metrics
    if not metric:
        raise UserError(f"{search.source}: a search needs a metric to optimize: --metric NAME (or the search's "
                        "'metric')")
    if settings.mode or search.modes:
        mode = settings.mode or ",".join(search.modes)
    else:  # the search block's list of metrics is its objectives; the flags' first metric ranks alone
        mode = ",".join(["min"] * (len(search.metrics) if not settings.metric and search.metrics else 1))
    if len(mode.split(",")) > len(metric):
        raise UserError(f"--mode {mode}: {len(mode.split(','))} objectives, and only {len(metric)} metric(s) named")
    objectives = list(metric)[: len(mode.split(","))]
    if len(set(objectives)) < len(objectives):  # ["a", "a"] with min,max: a front of one metric against itself
        raise UserError(f"{search.source}: the objectives name {max(objectives, key=objectives.count)!r} twice; "
                        "each objective is a different metric")
    n_trials = settings.n_trials or search.n_trials
    if n_trials is not None and n_trials > MAX_RUNS:  # as the config's n_trials: a budget beyond any sweep's
        raise UserError(f"--n-trials {n_trials:,}: at most {MAX_RUNS:,} trials (or --search-hours for a time budget)")
    if search.sampler == "grid":  # each point once: a larger budget would run points again
        size = math.prod(len(values) for values in grid_points(search).values())
        if size > MAX_RUNS:
            raise UserError(f"{search.source}: the grid has {size:,} points, more than {MAX_RUNS:,}; search it with "
                            "another sampler and a budget")
        if n_trials is not None and n_trials > size:
            search.notes.append(f"the grid has {size} points: {size} trials, not {n_trials}")
        n_trials = min(n_trials or size, size)
    if n_trials is None and not settings.search_hours:
        raise UserError(f"{search.source}: a search needs a budget: --n-trials N (or 'n_trials', 'run_cap') or "
                        "--search-hours H")
    pruner = search.pruner
    if settings.pruner:  # the flag wins: NAME(...) with exactly its arguments; NAME with the config's for the same
        pruner, args, pause = pruner_flag(settings.pruner)  # pruner, else with the defaults
        if "(" in settings.pruner or pruner != search.pruner:
            search.pruner_args, search.count_reports, search.pause = args, False, pause
            search.pruner_from = f"--pruner {settings.pruner}"
    for flag, value in (("--top-k", settings.top_k), ("--storage", settings.storage)):
        if search.pause and value:
            why = "deletes a pruned run's checkpoint" if flag == "--top-k" else "lets another host run its trial"
            raise UserError(f"{search.pruner_from or search.source}: 'pruner' 'pause' keeps a paused run's folder and "
                            f"checkpoint on this host to go on from; {flag} {why}")
    if pruner != "none" and len(mode.split(",")) > 1:
        raise UserError(f"pruner {pruner}: Optuna prunes single-objective searches only; this one has "
                        f"{len(mode.split(','))} objectives")
    return dataclasses.replace(settings, search=search.sampler, metric=tuple(metric), mode=mode, n_trials=n_trials,
                               pruner=pruner)


def nest(flat: Mapping[str, Any], keys: set[str]) -> dict[str, Any]:
    """The dotted keys in `keys` as nested objects (W&B's nested parameters: `optimizer.lr` reaches the run as
    optimizer={"lr": ...}, the way W&B passes it); the others as they are."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in keys:
            out[key] = value
            continue
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def example_params(search: SearchSpec) -> dict[str, Any]:
    """One point of the space (the first choice, the low end): the example trial of --dry-run and the checks."""
    return {k: p.choices[0] if p.type == "categorical" else p.low for k, p in search.params.items()}


def trial_runs(settings: Settings, spec: SweepSpec, search: SearchSpec, values: Mapping[str, Any], command: list[str],
               output_dir: Path, abbrev: Mapping[str, str]) -> tuple[Run, Callable[[dict[str, Any], int], Run]]:
    """A search's runs, made as trials are asked: the factory, and an example trial's run (made now, so that the
    name template and the command are checked before anything starts)."""
    fixed = search.base = {**spec.defaults, **search.fixed, **values}
    overlap = [k for k in values if k in search.params]
    if overlap:
        raise UserError(f"{overlap[0]!r} is both searched and set (--set or a plain override): choose one")

    def make_run(params: dict[str, Any], number: int) -> Run:
        """A trial's run: its parameters over the defaults, named trial<N>_<params> (or by the template)."""
        hyperparams = nest({**fixed, **params}, search.nested)
        shown = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}
        name = (template_name(settings.name_template, hyperparams, number) if settings.name_template
                else f"trial{number:03d}_{run_name(shown, abbrev)}")
        entry = Entry(hyperparams, list(params), settings.gpus_per_run or spec.gpus_per_run or 1,
                      settings.gpu_memory_gb or spec.gpu_memory_gb, name=name, origin=f"trial {number}")
        run = build_runs([entry], command, output_dir, abbrev, settings.command, settings.arg_style,
                         source=settings.source)[0]
        k = 1
        while run.run_dir.exists():  # a folder of another study (its study.log was removed): a name of its own
            k += 1
            entry.name = f"{name}-{k}"
            run = build_runs([entry], command, output_dir, abbrev, settings.command, settings.arg_style,
                             source=settings.source)[0]
        run.index = run.trial = number
        run.label = f"#{number} " + label_of(shown, shown, run.name)
        return run

    return make_run(example_params(search), 0), make_run


def describe_search(search: SearchSpec, settings: Settings, placement: str) -> list[str]:
    """--dry-run's lines on a search: the sampler, the budget, the pruner, the objectives, the space."""
    budget = " and ".join(x for x in (f"{settings.n_trials} trials" if settings.n_trials else "",
                                        f"{settings.search_hours:g} h" if settings.search_hours else "") if x)
    objectives = ", ".join(f"{m} {n}" for m, n in zip(settings.modes, settings.metric))
    lines = [f"Search: {settings.search} sampler, {budget}, pruner {settings.pruner}, {objectives}. "
             f"Placement: {placement}."]
    from .search import describe_choices

    lines += [f"  {line}" for line in describe_choices(search, settings)]
    lines += [f"  {key}: {param.describe()}" for key, param in search.params.items()]
    return lines + [f"  note: {line}" for line in search.notes]
