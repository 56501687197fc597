"""W&B and Protein sweep files (--sweep-file): every construct is mapped onto an Optuna search faithfully, or
refused with the reason. YAML needs PyYAML: pip install 'train-sweep[search]'."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

from train_sweep import (
    _BAD_KEY,
    MB,
    UserError,
    _is_number,
    _is_whole,
    _json_type,
    check_key,
    check_known,
    check_value,
    read_json_file,
)
from train_sweep_extras.space import SearchSpec, make_param

# A W&B sweep file's constructs, and where a faithful mapping onto Optuna does not exist, why (docs/search.md).
WANDB_KEYS = ("method", "metric", "goal", "parameters", "early_terminate", "command", "program", "run_cap", "name",
              "description", "project", "entity", "protein")


WANDB_PARAM_KEYS = ("values", "value", "distribution", "min", "max", "q", "mu", "sigma", "mean", "scale",
                    "probabilities", "a", "b")


NO_MAPPING = {
    "normal": "a normal distribution has no bounds, and Optuna samples bounded ranges; give min and max (uniform)",
    "q_normal": "a normal distribution has no bounds, and Optuna samples bounded ranges",
    "log_normal": "a log-normal distribution has no bounds (Protein's form, with min and max, is read)",
    "q_log_normal": "a log-normal distribution has no bounds, and Optuna samples bounded ranges",
    "q_log_uniform": "Optuna samples a log scale without steps (log and step cannot be combined)",
    "q_log_uniform_values": "Optuna samples a log scale without steps (log and step cannot be combined)",
    "beta": "Optuna has no beta distribution",
    "q_beta": "Optuna has no beta distribution",
    "categorical_w": "Optuna's samplers draw categories without weights",
    "logit_normal": "Optuna has no logit scale",
}


PROTEIN_USED = ("num_random_samples",)


DIST_KEYS = {  # the keys each distribution takes (mean and scale: Protein's)
    "constant": ("value",), "categorical": ("values",),
    "int_uniform": ("min", "max", "mean", "scale"), "uniform": ("min", "max", "mean", "scale"),
    "q_uniform": ("min", "max", "q"), "log_uniform_values": ("min", "max"), "inv_log_uniform_values": ("min", "max"),
    "log_uniform": ("min", "max"), "inv_log_uniform": ("min", "max"),
    "log_normal": ("min", "max", "mean", "scale"), "uniform_pow2": ("min", "max", "mean", "scale"),
}  # -> TPE's n_startup_trials; Protein's other settings tune its own optimizer


MAX_SWEEP_FILE = 16 * MB  # a sweep file is a page of settings: one far larger is not one (/dev/zero)
MAX_YAML_VALUES = 1_000_000  # values a YAML file may stand for once its aliases are expanded (an alias bomb)


class YamlLoop(Exception):
    """An alias inside the value it names (a: &a [1, *a]): a value without end."""


class YamlKeyTwice(Exception):
    """A key twice in one mapping (PyYAML keeps the last without a word): what to say."""


def yaml_values(node: Any, sizes: dict[int, int]) -> int:
    """How many values a composed YAML node stands for, its aliases expanded (each node counted once, so an
    alias bomb is measured without being built); YamlLoop for a node inside itself."""
    if id(node) in sizes:
        if sizes[id(node)] < 0:
            raise YamlLoop
        return sizes[id(node)]
    sizes[id(node)] = -1  # being measured: met again below itself, it holds itself
    if getattr(node, "id", "") == "mapping":  # a key twice (PyYAML keeps the last without a word)
        seen: set[Any] = set()
        for key, _ in node.value:
            if getattr(key, "id", "") == "scalar" and key.value != "<<" and key.value in seen:
                raise YamlKeyTwice(f"key {key.value!r} appears twice in one mapping (line {key.start_mark.line + 1})")
            seen.add(key.value if getattr(key, "id", "") == "scalar" else id(key))
    children = node.value if isinstance(node.value, list) else []
    total = 1 + sum(yaml_values(n, sizes) for child in children for n in (child if isinstance(child, tuple) else (child,)))
    sizes[id(node)] = total
    return total


def read_yaml_or_json(path: str) -> Any:
    """A sweep file: YAML (W&B's usual form; PyYAML needed) or JSON, at most MAX_SWEEP_FILE bytes and, with
    its aliases expanded, MAX_YAML_VALUES values."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SWEEP_FILE + 1)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: sweep file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the sweep file: {e}") from None
    if len(data) > MAX_SWEEP_FILE:
        raise UserError(f"{path}: larger than {MAX_SWEEP_FILE // MB} MB: not a sweep file")
    if path.endswith(".json"):
        return read_json_file(path)
    try:
        import yaml
    except ImportError:
        raise UserError(f"{path}: reading YAML needs PyYAML: pip install 'train-sweep[search]'") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and yaml_values(node, {}) > MAX_YAML_VALUES:
                raise UserError(f"{path}: its aliases expand to more than {MAX_YAML_VALUES:,} values: not a sweep file")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read") from None
    except YamlKeyTwice as e:
        raise UserError(f"{path}: {e}") from None
    except YamlLoop:
        raise UserError(f"{path}: an alias stands inside the value it names (&a [1, *a]): a value without end, "
                        "not a sweep file") from None
    except ValueError as e:  # an int of more than 4,300 digits
        raise UserError(f"{path}: a value cannot be read: {str(e).split(';')[0]}") from None
    ignored = ("name", "description", "project", "entity")  # W&B's own labels: read by nothing here
    if (bad := not_json({k: v for k, v in data.items() if k not in ignored} if isinstance(data, dict) else data)):
        raise UserError(f"{path}: {bad}")
    return data


def not_json(value: Any) -> str | None:
    """Where a YAML document holds what JSON cannot (a date, bytes, a set, a key that is not text), or None:
    a sweep's values go to command lines and JSON records."""
    stack = [(value, "")]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            if (key := next((k for k in item if not isinstance(k, str)), "")) != "":
                return f"{at or 'the top'}: the key {key!r} is not text (quote it)"
            stack += reversed([(sub, f"{at} {k!r}".strip()) for k, sub in item.items()])  # the first found first
        elif isinstance(item, list):
            stack += reversed([(sub, f"{at} [{i}]") for i, sub in enumerate(item)])
        elif item is not None and not isinstance(item, (str, int, float, bool)):
            return f"{at}: {str(item)[:40]} is a YAML {type(item).__name__}, not a JSON value (quote it to pass text)"
    return None


def wandb_param(name: str, p: Mapping[str, Any], where: str, spec: SearchSpec) -> None:
    """One W&B (or Protein) parameter onto the search: spec.params, spec.fixed or spec.first."""
    where = f"{where}: {name!r}"
    if name in spec.params or name in spec.fixed:  # (the one given first was dropped without a word)
        raise UserError(f"{where} is given twice: nested (under 'parameters' or plainly) and as a dotted key")
    check_known(p, WANDB_PARAM_KEYS, where)
    dist = p.get("distribution")
    if dist is None:  # as W&B infers it
        dist = ("categorical" if "values" in p else "constant" if "value" in p else
                "int_uniform" if _is_whole(p.get("min")) and _is_whole(p.get("max")) else "uniform")
    if dist in NO_MAPPING and not (dist == "log_normal" and "min" in p and "max" in p):
        raise UserError(f"{where}: distribution {dist!r} has no faithful mapping onto Optuna: {NO_MAPPING[dist]}")
    if dist == "categorical" and "probabilities" in p:
        raise UserError(f"{where}: 'probabilities': {NO_MAPPING['categorical_w']}")
    if dist not in DIST_KEYS:
        raise UserError(f"{where}: unknown distribution {dist!r}")
    unused = [k for k in p if k != "distribution" and k not in DIST_KEYS[dist]]
    if unused:  # W&B's schema refuses these too: never dropped quietly
        raise UserError(f"{where}: {unused[0]!r} is not a key of distribution {dist} (it takes "
                        f"{', '.join(DIST_KEYS[dist])})")
    if dist == "constant":
        if "value" not in p:
            raise UserError(f"{where}: 'constant' needs 'value'")
        check_value(p["value"], where)
        spec.fixed[name] = p["value"]
        return
    if dist == "categorical":
        spec.params[name] = make_param(where, "categorical", choices=p.get("values"))
        return
    lo, hi = p.get("min"), p.get("max")
    if "min" not in p or "max" not in p:
        raise UserError(f"{where}: {dist!r} needs 'min' and 'max'")
    names = {"low": "min", "high": "max", "step": "q"}
    if dist == "int_uniform":
        spec.params[name] = make_param(where, "int", lo, hi, names=names)
    elif dist == "uniform":
        spec.params[name] = make_param(where, "float", lo, hi, names=names)
    elif dist == "q_uniform":
        q = p.get("q", 1)
        if _is_number(lo) and _is_number(q) and q > 0 and abs(lo / q - round(lo / q)) > 1e-9:
            raise UserError(f"{where}: q_uniform maps onto Optuna's steps only when 'min' is a multiple of 'q'")
        spec.params[name] = make_param(where, "int" if all(map(_is_whole, (lo, hi, q))) else "float", lo, hi, step=q,
                                       names=names)
        spec.notes.append(f"{name}: q_uniform is searched in steps of {q:g}; the end values are drawn as often as "
                          "the others (W&B: half as often)")
    elif dist in ("log_uniform_values", "inv_log_uniform_values"):  # 1/X is log-uniform iff X is
        spec.params[name] = make_param(where, "float", lo, hi, log=True, names=names)
    elif dist in ("log_uniform", "inv_log_uniform"):  # bounds given as natural logarithms (of 1/X: inv_)
        if not _is_number(lo) or not _is_number(hi):
            raise UserError(f"{where}: 'min' and 'max' must be numbers")
        try:
            bounds = (math.exp(lo), math.exp(hi)) if dist == "log_uniform" else (math.exp(-hi), math.exp(-lo))
        except OverflowError:
            raise UserError(f"{where}: {dist} takes 'min' and 'max' as natural logarithms: e^{max(abs(lo), abs(hi)):g} "
                            "is too large (log_uniform_values takes the values themselves)") from None
        spec.params[name] = make_param(where, "float", *bounds, log=True, names={"low": "e^min", "high": "e^max"})
    elif dist in ("log_normal", "uniform_pow2"):  # Protein's forms: a bounded range, searched from `mean`
        if dist == "uniform_pow2":
            if not (_is_whole(lo) and _is_whole(hi) and 0 < lo < hi):
                raise UserError(f"{where}: uniform_pow2 needs whole numbers 0 < min < max")
            choices = [2 ** k for k in range(math.ceil(math.log2(lo)), math.floor(math.log2(hi)) + 1)]
            spec.params[name] = make_param(where, "categorical", choices=choices)
        else:
            spec.params[name] = make_param(where, "float", lo, hi, log=True, names=names)
    if "mean" in p:
        mean = p["mean"]
        param = spec.params[name]
        if not _is_number(mean) or not (param.low <= mean <= param.high if param.type != "categorical" else
                                        mean in param.choices):
            raise UserError(f"{where}: 'mean' ({mean!r}) must lie within min and max")
        if param.type == "int" and not _is_whole(mean):  # (the first trial ran with --lr=5.5)
            raise UserError(f"{where}: 'mean' ({mean!r}) must be a whole number, as the parameter's values are")
        spec.first[name] = mean
    if "scale" in p:
        spec.notes.append(f"{name}: 'scale' sets the spread of Protein's own sampler; Optuna's sampler searches "
                          "all of min..max")


def _wandb_params(tree: Any, where: str, spec: SearchSpec, prefix: str = "", nested: bool = False) -> None:
    """W&B's `parameters` (nested under `parameters` keys: the run gets one object, as W&B passes it) and
    Protein's (nested plainly: dotted keys, as Metta's Hydra overrides take them). Searched as dotted keys."""
    if not isinstance(tree, dict) or not tree:
        raise UserError(f"{where} must be a non-empty mapping of parameters")
    for key, p in tree.items():
        name = f"{prefix}{key}"
        check_key(name, where)
        if not isinstance(p, dict):
            raise UserError(f"{where}: {name!r} must be a mapping (values, value, distribution, min, max, ...)")
        if "parameters" in p and len(p) == 1:
            _wandb_params(p["parameters"], where, spec, f"{name}.", nested=True)
        elif any(k in p for k in WANDB_PARAM_KEYS):
            wandb_param(name, p, where, spec)
            if nested:
                spec.nested.add(name)
        else:
            _wandb_params(p, where, spec, f"{name}.", nested)


def wandb_command(tokens: Any, program: str | None, where: str) -> tuple[str, str]:
    """W&B's `command` list -> our command and argument style: ${env} is dropped (it runs /usr/bin/env),
    ${interpreter} is python, ${program} the `program`, ${args} (--key=value) or ${args_no_hyphens}
    (key=value) must come last, as train_sweep appends the arguments."""
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise UserError(f"{where}: 'command' must be a list of strings")
    words, style = [], None
    for i, token in enumerate(tokens):
        if style is not None:
            raise UserError(f"{where}: 'command': {tokens[i - 1]} must come last (the arguments are appended)")
        if token == "${env}":
            continue
        if token == "${interpreter}":
            words.append("python")
        elif token == "${program}":
            if not program:
                raise UserError(f"{where}: 'command' uses ${{program}}, and 'program' is not given")
            words.append(program)
        elif token in ("${args}", "${args_no_hyphens}"):
            style = "equals" if token == "${args}" else "hydra"
        elif "${" in token:
            raise UserError(f"{where}: 'command': the macro {token} is not supported (${{env}}, ${{interpreter}}, "
                            "${program}, ${args} and ${args_no_hyphens} are)")
        else:
            words.append(token)
    if style is None:
        raise UserError(f"{where}: 'command' has no ${{args}}: its runs would read their parameters from W&B's "
                        "wandb.config; end it with ${args} or ${args_no_hyphens}")
    if not words:
        raise UserError(f"{where}: 'command' names no program")
    return shlex.join(words), style


def read_sweep_file(path: str) -> tuple[SearchSpec, str | None, str | None]:
    """A W&B sweep configuration (or Protein's, as in Metta) -> the search, the command and its argument style
    (None where the file does not say). Every construct maps onto Optuna faithfully or is an error naming it."""
    data = read_yaml_or_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep file is a mapping (method, metric, parameters, ...), got {_json_type(data)}")
    check_known(data, WANDB_KEYS, path)
    spec = SearchSpec(path, {})
    _wandb_params(data.get("parameters"), f"{path}: 'parameters'", spec)
    if not spec.params:
        raise UserError(f"{path}: 'parameters' holds nothing to search (only fixed values)")
    method = data.get("method", "bayes" if "protein" in data else None)
    methods = {"grid": "grid", "random": "random", "bayes": "tpe", "protein": "tpe"}
    if method not in methods:
        raise UserError(f"{path}: 'method' must be grid, random or bayes (or protein), got {method!r}")
    spec.sampler = methods[method]
    if spec.sampler == "tpe":
        spec.notes.append(f"method {method}: searched with Optuna's TPE, a Bayesian optimizer ({method} uses a "
                          "Gaussian process: --search gp for one)")
    metric = data.get("metric")
    goal = data.get("goal")
    if isinstance(metric, dict):
        check_known(metric, ("name", "goal", "target"), f"{path}: 'metric'")
        goal = metric.get("goal", goal)
        if "target" in metric:
            if not _is_number(metric["target"]):
                raise UserError(f"{path}: 'metric': 'target' must be a number")
            if not math.isfinite(metric["target"]):  # (YAML's .inf, .nan)
                raise UserError(f"{path}: 'metric': 'target' must be a finite number, got {metric['target']}")
            spec.target = float(metric["target"])
        metric = metric.get("name")
    if metric is not None:
        if not isinstance(metric, str) or not metric or _BAD_KEY.search(metric):
            raise UserError(f"{path}: 'metric' must name a metric (no spaces, '=' or ',')")
        spec.metrics = (metric,)
    if goal is not None:
        if goal not in ("minimize", "maximize"):
            raise UserError(f"{path}: 'goal' must be minimize or maximize, got {goal!r}")
        spec.modes = ("min" if goal == "minimize" else "max",)
    if "run_cap" in data:
        if not _is_whole(data["run_cap"]) or data["run_cap"] < 1:
            raise UserError(f"{path}: 'run_cap' must be a whole number >= 1")
        spec.n_trials = data["run_cap"]
    early = data.get("early_terminate")
    if early is not None:
        spec.pruner, spec.pruner_args = wandb_hyperband(early, f"{path}: 'early_terminate'")
        spec.count_reports = True
    protein = data.get("protein")
    if protein is not None:
        if not isinstance(protein, dict):
            raise UserError(f"{path}: 'protein' must be a mapping of Protein's settings")
        n = protein.get("num_random_samples")
        if n is not None:
            if not _is_whole(n) or n < 1:
                raise UserError(f"{path}: 'protein': 'num_random_samples' must be a whole number >= 1")
            spec.sampler_args["n_startup_trials"] = n
        unused = [k for k in protein if k not in PROTEIN_USED]
        if unused:
            spec.notes.append(f"protein: {', '.join(unused)} tune Protein's own optimizer and are not used "
                              "(Optuna's sampler searches instead)")
    program = data.get("program")
    if program is not None and not (isinstance(program, str) and program.strip()):  # ('': was python train.py)
        raise UserError(f"{path}: 'program' must be the script's file name")
    command = style = None
    if "command" in data:
        command, style = wandb_command(data["command"], program, f"{path}")
    elif program:
        command, style = shlex.join(["python", program]), "equals"  # W&B's default: ${env} ${interpreter} ${program} ${args}
    return spec, command, style


def wandb_hyperband(early: Any, where: str) -> tuple[str, dict[str, Any]]:
    """early_terminate {type: hyperband, min_iter | max_iter and s, eta} -> Optuna's HyperbandPruner: brackets
    from min_iter (or max_iter / eta^s) reports of the metric, growing by eta."""
    if not isinstance(early, dict) or early.get("type") != "hyperband":
        raise UserError(f"{where}: only {{type: hyperband, ...}} exists")
    check_known(early, ("type", "min_iter", "max_iter", "s", "eta", "strict"), where)
    if early.get("strict"):
        raise UserError(f"{where}: 'strict' has no faithful mapping onto Optuna's HyperbandPruner")
    eta = early.get("eta", 3)
    if not _is_whole(eta) or eta < 2:
        raise UserError(f"{where}: 'eta' must be a whole number >= 2")
    args: dict[str, Any] = {"reduction_factor": eta}
    if "min_iter" in early:
        if not _is_whole(early["min_iter"]) or early["min_iter"] < 1:
            raise UserError(f"{where}: 'min_iter' must be a whole number >= 1")
        args["min_resource"] = early["min_iter"]
        if "max_iter" in early:
            args["max_resource"] = early["max_iter"]
    elif "max_iter" in early and "s" in early:
        min_iter = early["max_iter"] / eta ** early["s"]
        if not min_iter >= 1 or min_iter != int(min_iter):
            raise UserError(f"{where}: max_iter / eta^s must be a whole number >= 1 (the first bracket)")
        args["min_resource"], args["max_resource"] = int(min_iter), early["max_iter"]
    else:
        raise UserError(f"{where}: give 'min_iter', or 'max_iter' and 's'")
    if "max_resource" in args and (not _is_whole(args["max_resource"]) or args["max_resource"] <= args["min_resource"]):
        raise UserError(f"{where}: 'max_iter' must be a whole number above the first bracket")
    return "hyperband", args
