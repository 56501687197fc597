"""How a search space is said: Hydra's Optuna-sweeper syntax on the command line (plain lists also without
hydra-core), and W&B and Protein sweep files: each distribution and each error, the keys a distribution does
not use, early_terminate, the metric's goal and target, run_cap, command macros, nested parameters, Protein's
mean; end to end through the real CLI; bad and missing sweep files as one line."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from conftest import SLOW_QUADRATIC, check_refused, load_study, no_hydra, points, script
from train_sweep import UserError
from train_sweep_extras.space import Param, parse_search_overrides
from train_sweep_extras.sweepfiles import read_sweep_file, wandb_hyperband


optuna = pytest.importorskip("optuna")

yaml = pytest.importorskip("yaml")


def write_yaml(path: Path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return str(path)


# -- Hydra's Optuna-sweeper syntax -------------------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("lr=interval(1e-5, 1e-2)", Param("float", 1e-5, 1e-2)),
    ("lr=tag(log, interval(1e-5, 1e-2))", Param("float", 1e-5, 1e-2, log=True)),
    ("x=interval(1, 10)", Param("float", 1.0, 10.0)),
    ("layers=range(2, 9)", Param("int", 2, 8)),  # the stop is excluded, as in a grid
    ("layers=range(2, 10, 2)", Param("int", 2, 8, step=2)),
    ("n=tag(log, range(1, 9))", Param("int", 1, 8, log=True)),
    ("x=range(0, 1, 0.25)", Param("float", 0.0, 0.75, step=0.25)),
    ("x=range(0.5, 2.0, 0.5)", Param("float", 0.5, 1.5, step=0.5)),
    ("opt=adam,sgd", Param("categorical", choices=("adam", "sgd"))),
    ("opt=choice(adam, sgd)", Param("categorical", choices=("adam", "sgd"))),
    ("n=choice(1, 2, 3)", Param("categorical", choices=(1, 2, 3))),
    ("opt=shuffle(adam, sgd)", Param("categorical", choices=("adam", "sgd"))),
    ("n=shuffle(range(1, 4))", Param("categorical", choices=(1, 2, 3))),
    ("seed=range(0, 1000000000)", Param("int", 0, 999_999_999)),  # counted, not listed (memory grew to GBs)
    ("seed=range(0, 10**30)".replace("10**30", str(10**30)), Param("int", 0, 10**30 - 1)),  # past len()'s reach
])
def test_hydra_search_syntax(override, expected):
    params, plain = parse_search_overrides([override])
    key = override.split("=", 1)[0]
    if "shuffle" in override:  # shuffle(...) is a choice; the order of its choices means nothing to a search
        params = {k: Param(p.type, choices=tuple(sorted(p.choices))) for k, p in params.items()}
    assert plain == {} and params == {key: expected}
    assert type(params[key].low) is type(expected.low)


def test_shuffle_is_the_same_search_space_every_time():
    """shuffle() draws a new order at every parse; the search space (and so the study's key) must not change
    with it, or the same command cannot resume its study."""
    spaces = {parse_search_overrides(["n=shuffle(range(1, 9))"])[0]["n"] for _ in range(5)}
    assert len(spaces) == 1, spaces


def test_hydra_search_syntax_plain_values_and_several():
    params, plain = parse_search_overrides(["seed=3", "name=abc", "+extra=1.5", "lr=interval(0, 1)", "opt=a,b"])
    assert plain == {"seed": 3, "name": "abc", "+extra": 1.5}
    assert list(params) == ["lr", "opt"]


@pytest.mark.parametrize("override, fragment", [
    ("lr=tag(foo, interval(0, 1))", "tag 'foo' is not known"),
    ("opt=tag(log, choice(1, 2))", "tag(log, ...) applies to interval() and range()"),
    ("n=range(3, 4)", "the range holds one value (3)"),
    ("n=range(1, 1)", "the range is empty"),
    ("n=tag(log, range(1, 9, 2))", "needs a step of 1"),
    ("x=tag(log, interval(0, 1))", "a log scale needs 'low' > 0"),
    ("x=interval(1, 1)", "'low' (1) must be below 'high' (1)"),
    ("opt=adam,adam", "a choice is listed twice"),
    ("opt=glob(*)", "Glob cannot be searched"),
    ("lr=interval(0, 1", "override 'lr=interval(0, 1'"),  # Hydra's own parse error, one line
    ("~lr", "deleting a key"),
    ("n=range(1, 5, 0)", "range() needs a step other than 0"),  # tracebacks before: Python's and Hydra's
    ("x=range(0.1, 0.5, 0)", "range() needs a step other than 0"),
    ("n=shuffle(range(0, 1000000000))", "range() makes more than 100,000 values"),  # a shuffle lists them all
    ("x=range(0, 1e7, 0.01)", "range() makes more than 100,000 values"),
])
def test_hydra_search_syntax_errors(override, fragment):
    with pytest.raises(UserError) as e:
        parse_search_overrides([override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("args, config, fragment", [
    (["a=range(0,1000000000)"], None, "range() makes more than 100,000 values"),
    (["a=range(1,5,0)"], None, "range() needs a step other than 0"),
    (["a=range(0)"], None, "override 'a=range(0)' gives no values"),  # a traceback before: max() of no runs
    (["a=range(5,0)", "--shuffle"], None, "override 'a=range(5,0)' gives no values"),
    ([], {"search": {"sampler": "grid", "metric": "val_loss", "n_trials": 5,
                     "params": {"lr": {"type": "int", "low": 0, "high": 1_000_000_000}}}},
     "the grid sampler would try 1,000,000,001 values of 'lr'"),
    (["--sweep-file", "g.yaml"],
     "method: grid\nmetric: {name: val_loss}\nparameters:\n  a: {min: 0, max: 1000000000}\n",
     "the grid sampler would try 1,000,000,001 values of 'a'"),
], ids=["grid_override", "step_zero", "empty_range", "empty_range_shuffled", "grid_sampler", "wandb_grid"])
def test_a_huge_range_or_grid_is_refused_before_it_is_listed(sweep, args, config, fragment):
    """range(0, 10**9) on the command line, or a grid sampler over an int range that wide (the config's or a W&B
    file's), listed every value first: the CLI never answered and its memory grew by GBs. A step of 0 was a
    traceback. Each is one line now, counted before anything is listed."""
    if isinstance(config, dict):
        sweep.config(config)
    elif config:
        (sweep.dir / "g.yaml").write_text(config)
    check_refused(sweep.run("--dry-run", *args, timeout=60), fragment)


@pytest.mark.parametrize("args, config, fragment", [
    (["--search", "tpe", "--n-trials", "2", "--metric", "val_loss", "lr=interval(-1e308, 1e308)"], None,
     "override 'lr=interval(-1e308, 1e308)': from -1e+308 to 1e+308 is wider than a float spans"),
    ([], {"search": {"metric": "val_loss", "n_trials": 2,
                     "params": {"lr": {"type": "float", "low": -1e308, "high": 1e308}}}},
     "'lr': from -1e+308 to 1e+308 is wider than a float spans"),
    ([], {"search": {"metric": "val_loss", "n_trials": 2,
                     "params": {"lr": {"type": "float", "low": 0, "high": 1, "step": 1e-300}}}},
     "'lr': 'step' (1e-300) makes 1e+300 values from 0 to 1: at most 1e+15"),
], ids=["override_overflow", "config_overflow", "tiny_step"])
def test_a_float_range_optuna_cannot_sample_is_refused(sweep, args, config, fragment):
    """From an adversarial pass: each ran, and the first trial was a traceback (numpy's OverflowError, Optuna's
    decimal.InvalidOperation), exit 1; --dry-run accepted them. Each is one line now, exit 2."""
    if config:
        sweep.config(config)
    check_refused(sweep.run("--dry-run", *args, timeout=60), fragment)


def test_objectives_that_name_one_metric_twice_are_refused(sweep):
    """A search block with metric ["a", "a"] and mode [min, max] ran: a front of a metric against itself."""
    sweep.config({"search": {"metric": ["a", "a"], "mode": ["min", "max"], "n_trials": 2,
                             "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    check_refused(sweep.run("--dry-run"), "the objectives name 'a' twice")


def test_a_search_over_plain_lists_needs_no_hydra(sweep, tmp_path):
    pytest.importorskip("optuna")
    sweep.gpus.set(count=1)
    script = sweep.dir / "q.py"
    script.write_text("import sys\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\nprint(f\"loss={args['lr']}\")\n")
    p = sweep.run("--no-live", "--command", f"python {script}", "--search", "grid", "--metric", "loss", "lr=0.1,0.01",
                  trainer=False, PYTHONPATH=no_hydra(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(r["hyperparams"]["lr"] for r in sweep.results()) == [0.01, 0.1]
    p = sweep.run("--no-live", "--command", f"python {script}", "--search", "tpe", "--metric", "loss",
                  "lr=interval(0.01, 0.1)", "--n-trials", "2", trainer=False, PYTHONPATH=no_hydra(tmp_path))
    assert p.returncode == 2 and "pip install hydra-core" in p.stderr and "Traceback" not in p.stderr


# -- W&B and Protein sweep files: read ---------------------------------------------------------------------------

def wandb(tmp_path: Path, params=None, **top):
    data = {"method": "random", "metric": {"name": "loss", "goal": "minimize"},
            "parameters": params if params is not None else {"x": {"min": 0.0, "max": 1.0}}}
    data.update(top)
    data = {k: v for k, v in data.items() if v is not None}
    return read_sweep_file(write_yaml(tmp_path / "sweep.yaml", data))


E = math.e


@pytest.mark.parametrize("p, expected", [
    ({"values": [1, 2, "a"]}, Param("categorical", choices=(1, 2, "a"))),
    ({"distribution": "categorical", "values": [0.1, 0.2]}, Param("categorical", choices=(0.1, 0.2))),
    ({"distribution": "int_uniform", "min": 1, "max": 5}, Param("int", 1, 5)),
    ({"min": 1, "max": 5}, Param("int", 1, 5)),  # inferred as W&B does: whole numbers -> int_uniform
    ({"distribution": "uniform", "min": 0, "max": 2}, Param("float", 0.0, 2.0)),
    ({"min": 0.5, "max": 1.5}, Param("float", 0.5, 1.5)),
    ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}, Param("float", 0.0, 1.0, step=0.25)),
    ({"distribution": "q_uniform", "min": 0, "max": 10, "q": 2}, Param("int", 0, 10, step=2)),
    ({"distribution": "log_uniform", "min": 0, "max": 2}, Param("float", 1.0, E ** 2, log=True)),
    ({"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}, Param("float", 1e-5, 1e-2, log=True)),
    ({"distribution": "inv_log_uniform", "min": 0, "max": 2}, Param("float", E ** -2, 1.0, log=True)),
    ({"distribution": "inv_log_uniform_values", "min": 0.01, "max": 1.0}, Param("float", 0.01, 1.0, log=True)),
    ({"distribution": "log_normal", "min": 1e-4, "max": 1e-3, "mean": 5e-4, "scale": 0.5},
     Param("float", 1e-4, 1e-3, log=True)),
    ({"distribution": "uniform_pow2", "min": 3, "max": 70}, Param("categorical", choices=(4, 8, 16, 32, 64))),
])
def test_wandb_distribution_mapping(tmp_path, p, expected):
    spec, command, style = wandb(tmp_path, {"p": p})
    got = spec.params["p"]
    assert (got.type, got.log, got.step, got.choices) == (expected.type, expected.log, expected.step, expected.choices)
    assert got.low == pytest.approx(expected.low) and got.high == pytest.approx(expected.high)
    assert (command, style) == (None, None)
    if "mean" in p:  # Protein: the search starts from the mean
        assert spec.first == {"p": p["mean"]}
        assert any("scale" in note for note in spec.notes)


def test_wandb_constant_is_a_fixed_value(tmp_path):
    spec, _, _ = wandb(tmp_path, {"epochs": {"value": 3}, "mode": {"distribution": "constant", "value": "fast"},
                                  "x": {"values": [1, 2]}})
    assert spec.fixed == {"epochs": 3, "mode": "fast"} and list(spec.params) == ["x"]


@pytest.mark.parametrize("p, fragment", [
    ({"distribution": "normal", "mu": 0, "sigma": 1}, "distribution 'normal' has no faithful mapping"),
    ({"distribution": "q_normal", "mu": 0, "sigma": 1, "q": 1}, "distribution 'q_normal' has no faithful mapping"),
    ({"distribution": "log_normal", "mu": 0, "sigma": 1}, "distribution 'log_normal' has no faithful mapping"),
    ({"distribution": "q_log_normal", "mu": 0, "sigma": 1}, "'q_log_normal' has no faithful mapping"),
    ({"distribution": "q_log_uniform", "min": 0, "max": 2, "q": 1}, "'q_log_uniform' has no faithful mapping"),
    ({"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 1},
     "'q_log_uniform_values' has no faithful mapping"),
    ({"distribution": "beta", "a": 1, "b": 2}, "'beta' has no faithful mapping"),
    ({"values": [1, 2], "probabilities": [0.3, 0.7]}, "'probabilities'"),
    ({"values": [1, 2], "color": "red"}, "unknown key 'color'"),
    ({"distribution": "zipf", "min": 1, "max": 3}, "unknown distribution 'zipf'"),
    ({"distribution": "uniform", "min": 0}, "'uniform' needs 'min' and 'max'"),
    ({"distribution": "log_uniform_values", "max": 1}, "'log_uniform_values' needs 'min' and 'max'"),
    ({"distribution": "log_uniform_values", "min": 0, "max": 1}, "a log scale needs 'min' > 0"),
    ({"distribution": "int_uniform", "min": 5, "max": 5}, "'min' (5) must be below 'max'"),
    ({"distribution": "uniform", "min": 0.0, "max": 1.0, "q": 0.1}, "'q' is not a key of distribution uniform"),
    ({"values": [1, 2], "min": 0}, "'min' is not a key of distribution categorical"),
    ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.3}, "max - min (1) must be a multiple of 'q' (0.3)"),
    ({"distribution": "uniform", "min": "1e-5", "max": 1.0}, "YAML reads 1e-5 as text"),
    ({"distribution": "log_uniform", "min": 0, "max": 1000}, "too large"),
    ({"distribution": "q_uniform", "min": 0.1, "max": 1, "q": 0.25}, "q_uniform maps onto Optuna's steps only"),
    ({"distribution": "log_normal", "min": 1e-4, "max": 1e-3, "mean": 1e-2}, "'mean' (0.01) must lie within"),
    # from an adversarial pass: the first trial ran with --p=5.5 for an int parameter
    ({"distribution": "int_uniform", "min": 0, "max": 10, "mean": 5.5}, "'mean' (5.5) must be a whole number"),
    ({"distribution": "uniform_pow2", "min": 0, "max": 8}, "uniform_pow2 needs whole numbers 0 < min < max"),
    ({"distribution": "constant"}, "'constant' needs 'value'"),
    ({"values": []}, "'choices' must be a non-empty list"),
])
def test_wandb_parameter_errors(tmp_path, p, fragment):
    with pytest.raises(UserError) as e:
        wandb(tmp_path, {"x": {"min": 0.0, "max": 1.0}, "p": p})
    message = str(e.value)
    assert fragment in message and "\n" not in message, message
    assert "'p'" in message  # the key is named


@pytest.mark.parametrize("text, fragment", [
    ("parameters: {lr: {values: [a, b]}, lr: {values: [c, d]}}\n", "key 'lr' appears twice in one mapping (line 3)"),
    ("parameters: {lr: {values: [a, b]}}\nmethod: grid\n", "key 'method' appears twice in one mapping (line 4)"),
    ("parameters: {lr: {parameters: {x: {values: [1, 2]}}}, lr.x: {values: [3, 4]}}\n",
     "'parameters': 'lr.x' is given twice: nested (under 'parameters' or plainly) and as a dotted key"),
])
def test_a_sweep_file_that_says_a_key_twice_is_refused(tmp_path, text, fragment):
    """From an adversarial pass: PyYAML keeps the last of a key said twice, and a nested parameter and a dotted
    key of the same name kept one: the other was dropped without a word (docs/search.md: never a silent
    approximation)."""
    path = tmp_path / "s.yaml"
    path.write_text("method: random\nmetric: {name: loss}\n" + text)
    with pytest.raises(UserError) as e:
        read_sweep_file(str(path))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("top, fragment", [
    ({"method": None}, "'method' must be grid, random or bayes (or protein), got None"),
    ({"method": "hyperband"}, "'method' must be grid, random or bayes (or protein), got 'hyperband'"),
    ({"metric": {"name": "loss", "goal": "lower"}}, "'goal' must be minimize or maximize, got 'lower'"),
    ({"metric": "loss", "goal": "up"}, "'goal' must be minimize or maximize"),
    ({"metric": {"name": "loss", "gaol": "minimize"}}, "'metric': unknown key 'gaol'"),
    ({"metric": {"name": "loss", "target": "low"}}, "'target' must be a number"),
    # (an adversarial pass: YAML's .inf stopped the search after its first trial, "reached the target inf")
    ({"metric": {"name": "loss", "target": float("inf")}}, "'target' must be a finite number, got inf"),
    ({"metric": {"name": "loss", "target": float("nan")}}, "'target' must be a finite number, got nan"),
    ({"metric": {"name": "val loss"}}, "'metric' must name a metric"),
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"run_cap": 0}, "'run_cap' must be a whole number >= 1"),
    ({"command": ["${env}", "${interpreter}", "train.py", "${args_json}"]}, "the macro ${args_json} is not supported"),
    ({"command": ["python", "train.py", "${args}", "--fast"]}, "${args} must come last"),
    ({"command": ["python", "train.py"]}, "'command' has no ${args}"),
    ({"command": ["${interpreter}", "${program}", "${args}"]}, "'program' is not given"),
    ({"command": "python train.py ${args}"}, "'command' must be a list of strings"),
    ({"command": ["${env}", "${args}"]}, "'command' names no program"),
    ({"program": ""}, "'program' must be the script's file name"),  # it ran `python train.py`, without a word
    ({"program": 3}, "'program' must be the script's file name"),
    ({"parameters": {"x": {"value": 1}}}, "holds nothing to search"),
    ({"parameters": {}}, "must be a non-empty mapping of parameters"),
    ({"parameters": {"x": 5}}, "'x' must be a mapping"),
    ({"protein": {"num_random_samples": 0}}, "'num_random_samples' must be a whole number >= 1"),
    ({"early_terminate": {"type": "envelope"}}, "only {type: hyperband, ...} exists"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 3, "strict": True}}, "'strict' has no faithful mapping"),
    ({"early_terminate": {"type": "hyperband"}}, "give 'min_iter', or 'max_iter' and 's'"),
    ({"early_terminate": {"type": "hyperband", "max_iter": 27}}, "give 'min_iter', or 'max_iter' and 's'"),
    ({"early_terminate": {"type": "hyperband", "max_iter": 10, "s": 2}}, "max_iter / eta^s must be a whole number"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 1}}, "'eta' must be a whole number >= 2"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 0}}, "'min_iter' must be a whole number >= 1"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 9, "max_iter": 9}}, "'max_iter' must be a whole number"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 3, "bands": 2}}, "unknown key 'bands'"),
])
def test_wandb_file_errors(tmp_path, top, fragment):
    with pytest.raises(UserError) as e:
        wandb(tmp_path, top.pop("parameters", None), **top)
    message = str(e.value)
    assert fragment in message and "\n" not in message, message


@pytest.mark.parametrize("early, expected", [
    ({"type": "hyperband", "min_iter": 3}, {"reduction_factor": 3, "min_resource": 3}),
    ({"type": "hyperband", "min_iter": 2, "eta": 2}, {"reduction_factor": 2, "min_resource": 2}),
    ({"type": "hyperband", "min_iter": 1, "max_iter": 27}, {"reduction_factor": 3, "min_resource": 1, "max_resource": 27}),
    ({"type": "hyperband", "max_iter": 27, "s": 2}, {"reduction_factor": 3, "min_resource": 3, "max_resource": 27}),
    ({"type": "hyperband", "max_iter": 16, "s": 2, "eta": 2}, {"reduction_factor": 2, "min_resource": 4, "max_resource": 16}),
    ({"type": "hyperband", "min_iter": 3, "strict": False}, {"reduction_factor": 3, "min_resource": 3}),
])
def test_wandb_early_terminate(tmp_path, early, expected):
    assert wandb_hyperband(early, "x") == ("hyperband", expected)
    spec, _, _ = wandb(tmp_path, early_terminate=early)
    assert (spec.pruner, spec.pruner_args) == ("hyperband", expected)
    optuna.pruners.HyperbandPruner(**expected)  # Optuna takes these arguments


def test_wandb_metric_goal_target_run_cap_and_methods(tmp_path):
    spec, _, _ = wandb(tmp_path, metric={"name": "acc", "goal": "maximize", "target": 0.99}, run_cap=7)
    assert (spec.metrics, spec.modes, spec.target, spec.n_trials, spec.sampler) == (("acc",), ("max",), 0.99, 7, "random")
    spec, _, _ = wandb(tmp_path, metric="loss", goal="minimize", method="bayes")  # Protein's top-level goal
    assert (spec.metrics, spec.modes, spec.sampler) == (("loss",), ("min",), "tpe")
    assert wandb(tmp_path, method="grid")[0].sampler == "grid"
    spec, _, _ = wandb(tmp_path, metric=None)
    assert spec.metrics == () and spec.modes == () and spec.n_trials is None and spec.pruner == "none"


@pytest.mark.parametrize("command, program, expected", [
    (["${env}", "${interpreter}", "${program}", "${args}"], "train.py", ("python train.py", "equals")),
    (["${env}", "${interpreter}", "${program}", "--fast", "${args_no_hyphens}"], "train.py",
     ("python train.py --fast", "hydra")),
    (["torchrun", "--nproc_per_node=2", "${program}", "${args}"], "my train.py",
     ("torchrun --nproc_per_node=2 'my train.py'", "equals")),
    (None, "train.py", ("python train.py", "equals")),  # W&B's default command
    (None, None, (None, None)),
])
def test_wandb_command_macros(tmp_path, command, program, expected):
    _, got_command, style = wandb(tmp_path, command=command, program=program)
    assert (got_command, style) == expected


def test_wandb_nested_parameters_become_dotted_keys(tmp_path):
    spec, _, _ = wandb(tmp_path, {
        "optimizer": {"parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                                     "kind": {"values": ["adam", "sgd"]},
                                     "betas": {"parameters": {"b1": {"value": 0.9}}}}},
        "epochs": {"value": 3},
    })
    assert list(spec.params) == ["optimizer.lr", "optimizer.kind"]
    assert spec.fixed == {"optimizer.betas.b1": 0.9, "epochs": 3}


SEED_002 = """\
# configs/sweep/quick.yaml
protein:
  num_random_samples: 5
  max_suggestion_cost: 3600
  resample_frequency: 0
  global_search_scale: 1
  random_suggestions: 1024
  suggestions_per_pareto: 256

metric: reward
goal: maximize
method: bayes

parameters:
  trainer:
    optimizer:
      learning_rate:
        distribution: log_normal
        min: 0.0001
        max: 0.001
        mean: 0.0005
        scale: 0.5
"""


def test_protein_seed_002_file_is_read(tmp_path):
    spec, command, style = read_sweep_file(write_yaml(tmp_path / "quick.yaml", SEED_002))
    assert list(spec.params) == ["trainer.optimizer.learning_rate"]
    p = spec.params["trainer.optimizer.learning_rate"]
    assert (p.type, p.low, p.high, p.log) == ("float", 1e-4, 1e-3, True)
    assert spec.first == {"trainer.optimizer.learning_rate": 0.0005}
    assert (spec.metrics, spec.modes, spec.sampler) == (("reward",), ("max",), "tpe")
    assert spec.sampler_args == {"n_startup_trials": 5}
    assert (command, style) == (None, None)
    assert any("max_suggestion_cost" in note for note in spec.notes)


# -- W&B and Protein sweep files: end to end ---------------------------------------------------------------------

def test_protein_seed_002_end_to_end(sweep):
    sweep.gpus.set(count=1)
    (sweep.dir / "quick.yaml").write_text(SEED_002)
    command = script(sweep, "protein_train.py",
                     "import math\nlr = float(args['trainer.optimizer.learning_rate'])\n"
                     "print(f'reward={-abs(math.log10(lr) + 3.5)}', flush=True)\n")
    p = sweep.run("--sweep-file", "quick.yaml", "--command", command, "--n-trials", "3", "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sorted(sweep.results(), key=lambda r: r["trial"])
    assert [r["state"] for r in records] == ["complete"] * 3
    lrs = [r["hyperparams"]["trainer.optimizer.learning_rate"] for r in records]
    assert lrs[0] == 0.0005  # the search starts from Protein's mean
    assert all(1e-4 <= lr <= 1e-3 for lr in lrs)
    assert "trainer.optimizer.learning_rate=0.0005" in records[0]["command"]
    study = load_study(sweep.dir / "outputs")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    best = max(records, key=lambda r: r["metrics"]["reward"])
    assert f"Best (max reward): {best['model_name']}" in p.stdout


def test_grid_with_a_protein_mean_runs_every_point(sweep):
    """The Protein `mean` trial is enqueued: no grid_id, so the grid runs that point again and, the budget capped
    at the grid's size, never runs another."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    path = sweep.dir / "p.yaml"
    path.write_text(yaml.safe_dump({
        "method": "bayes", "metric": "loss", "goal": "minimize",
        "parameters": {"x": {"distribution": "uniform_pow2", "min": 1, "max": 8, "mean": 2},
                       "lr": {"distribution": "int_uniform", "min": 0, "max": 2}}}))
    p = sweep.run("--command", cmd, "--sweep-file", str(path), "--search", "grid", "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert points(sweep.results(), "x", "lr") == Counter({(x, lr): 1 for x in (1, 2, 4, 8) for lr in (0, 1, 2)})


WANDB_E2E = """\
program: wb_train.py
method: random
metric:
  name: val_loss
  goal: minimize
run_cap: 3
command:
  - ${env}
  - ${interpreter}
  - ${program}
  - ${args}
parameters:
  lr:
    distribution: log_uniform_values
    min: 0.0001
    max: 0.1
  batch_size:
    values: [16, 32]
  optimizer:
    parameters:
      momentum:
        min: 0.0
        max: 0.9
  epochs:
    value: 2
"""


WB_TRAIN = """\
import argparse, ast, json, math, os, sys
p = argparse.ArgumentParser()
p.add_argument('--lr', type=float, required=True)
p.add_argument('--batch_size', type=int, required=True)
p.add_argument('--optimizer', type=ast.literal_eval, required=True)  # W&B passes a nested parameter as one dict
p.add_argument('--epochs', type=int, required=True)
a = p.parse_args()
a.momentum = a.optimizer['momentum']
with open(os.path.join(os.environ['TRAIN_SWEEP_RUN_DIR'], 'args.json'), 'w') as f:
    json.dump({'argv': sys.argv[1:], **vars(a)}, f)
print(f'val_loss={abs(math.log10(a.lr) + 2) + a.momentum + a.batch_size / 100}', flush=True)
"""


def test_wandb_sweep_file_end_to_end(sweep):
    sweep.gpus.set(count=1)
    (sweep.dir / "sweep.yaml").write_text(WANDB_E2E)
    (sweep.dir / "wb_train.py").write_text(WB_TRAIN)
    p = sweep.run("--sweep-file", "sweep.yaml", "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert len(records) == 3 and all(r["state"] == "complete" for r in records), p.stdout
    for r in records:
        got = json.loads((Path(r["run_dir"]) / "args.json").read_text())
        assert 1e-4 <= got["lr"] <= 0.1 and got["batch_size"] in (16, 32) and 0 <= got["momentum"] <= 0.9
        assert got["epochs"] == 2
        assert all(a.startswith("--") and "=" in a for a in got["argv"]), got["argv"]  # ${args}: --key=value
        assert any(a.startswith("--optimizer={'momentum': ") for a in got["argv"])  # a nested key: one dict, as W&B
        assert r["command"][1].endswith("wb_train.py")
        assert r["metrics"]["val_loss"] == pytest.approx(
            abs(math.log10(got["lr"]) + 2) + got["momentum"] + got["batch_size"] / 100)


def test_wandb_metric_target_stops_the_search(sweep):
    sweep.gpus.set(count=1)
    write_yaml(sweep.dir / "target.yaml", {
        "method": "random", "run_cap": 6, "metric": {"name": "loss", "goal": "minimize", "target": 0.5},
        "parameters": {"x": {"min": 0.0, "max": 1.0}}})
    command = script(sweep, "zero.py", "print('loss=0.1')\n")
    p = sweep.run("--sweep-file", "target.yaml", "--command", command, "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(sweep.results()) == 1
    assert "reached the target 0.5" in p.stdout


def test_wandb_hyperband_early_terminate_end_to_end(sweep):
    sweep.gpus.set(count=1)
    write_yaml(sweep.dir / "hb.yaml", {
        "method": "random", "run_cap": 4, "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
        "parameters": {"x": {"min": 0.0, "max": 1.0}}})
    body = "x = float(args['x'])\nfor step in range(3):\n    print(f'step {step} loss={x + 1 / (step + 1)}', flush=True)\n"
    p = sweep.run("--sweep-file", "hb.yaml", "--command", script(sweep, "hb.py", body), "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    study = load_study(sweep.dir / "outputs")
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert all(t.intermediate_values for t in study.trials)  # the metric stream reached each trial


# -- bad sweep files: one line, exit 2 ---------------------------------------------------------------------------

@pytest.mark.parametrize("param", [
    {"distribution": "uniform", "min": 0.0, "max": 1.0, "q": 0.1},  # q is q_uniform's; W&B's schema refuses it here
    {"values": [1, 2], "min": 0},
])
def test_wandb_keys_a_distribution_does_not_use_are_not_silently_ignored(sweep, param):
    sweep.gpus.set(count=1)
    (sweep.dir / "s.yaml").write_text(yaml.safe_dump({"method": "random", "metric": {"name": "loss"}, "run_cap": 2,
                                                      "parameters": {"x": param}}))
    p = sweep.run("--sweep-file", "s.yaml", "--dry-run")
    assert p.returncode == 2, p.stdout + p.stderr


def test_wandb_errors_name_the_files_keys(sweep):
    """make_param's messages speak of 'low', 'high' and 'step'; a sweep file says min, max and q."""
    sweep.gpus.set(count=1)
    (sweep.dir / "s.yaml").write_text(yaml.safe_dump({"method": "random", "metric": {"name": "loss"}, "run_cap": 2,
                                                      "parameters": {"x": {"distribution": "q_uniform", "min": 0.0,
                                                                           "max": 1.0, "q": 0.3}}}))
    p = sweep.run("--sweep-file", "s.yaml", "--dry-run")
    assert p.returncode == 2
    assert "'step'" not in p.stderr and "low" not in p.stderr, p.stderr


@pytest.mark.parametrize("text, fragments", [
    ("method: random\nparameters: [unclosed\n", ["invalid YAML at line"]),
    ("method: random\nparameters:\n  x: {min: 0, max: 1\n", ["invalid YAML"]),
    ("- a\n- b\n", ["a sweep file is a mapping"]),
    ("method: random\nmetric: {name: loss}\nparameters:\n  x: {distribution: normal, mu: 0, sigma: 1}\n",
     ["'x'", "distribution 'normal' has no faithful mapping"]),
    ("method: grid\nmetric: {name: loss}\nrun_cap: 3\nparameters:\n  x: {min: 0.0, max: 1.0}\n",
     ["the grid sampler needs a list of values for 'x'"]),
    ("method: random\nrun_cap: 3\nparameters:\n  x: {min: 0.0, max: 1.0}\n", ["a search needs a metric"]),
    ("method: random\nmetric: {name: loss}\nparameters:\n  x: {min: 0.0, max: 1.0}\n", ["a search needs a budget"]),
    # YAML that is not JSON: tracebacks before, from the names' canonical JSON and from PyYAML's int()
    ("method: random\nmetric: {name: loss}\nrun_cap: 2\nparameters:\n  d: {values: [2020-01-01, 2021-01-01]}\n",
     ["'parameters' 'd' 'values' [0]: 2020-01-01 is a YAML date"]),
    ("method: random\nmetric: {name: loss}\nrun_cap: 2\nparameters:\n"
     "  d: {value: !!binary aGVsbG8=}\n  x: {values: [1, 2]}\n",
     ["'parameters' 'd' 'value': b'hello' is a YAML bytes"]),
    ("method: random\nmetric: {name: loss}\nrun_cap: 2\nparameters:\n  d: {values: [" + "9" * 5001 + ", 1]}\n",
     ["a value cannot be read", "4300 digits"]),
    ("method: random\nmetric: {name: loss}\nrun_cap: 2\nparameters:\n  1: {values: [1, 2]}\n",
     ["'parameters': the key 1 is not text"]),
    ("name: 2024-05-01\nmethod: random\nrun_cap: 2\nparameters:\n  x: {values: [1, 2]}\n",  # W&B's label: not read
     ["a search needs a metric"]),
])
def test_bad_sweep_file_is_one_line(sweep, text, fragments):
    sweep.gpus.set(count=1)
    (sweep.dir / "bad.yaml").write_text(text)
    check_refused(sweep.run("--sweep-file", "bad.yaml", "--no-live"), "bad.yaml", *fragments)
    assert not (sweep.dir / "outputs").exists()


def test_missing_sweep_file_and_json_sweep_file(sweep):
    sweep.gpus.set(count=1)
    check_refused(sweep.run("--sweep-file", "nope.yaml"), "nope.yaml: sweep file not found")
    (sweep.dir / "bad.json").write_text('{"method": "random", "parameters": ')
    check_refused(sweep.run("--sweep-file", "bad.json"), "bad.json: invalid JSON")
