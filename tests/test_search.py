"""Search (issue 12): Optuna on the GPU queue through the real CLI. Each sampler end to end; Hydra's
Optuna-sweeper syntax; W&B and Protein sweep files (each distribution, each error); bad input as one line;
resume after SIGINT and kill -9 (no trial lost or told twice); pruning that ends a run's process tree and
hands its slot on at once; multi-objective Pareto front; top-K checkpoints of pruned runs; no Optuna."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import shlex
import signal
import time
from pathlib import Path

import pytest

from conftest import FAKE_NVML, all_dead, kill_pids, pid_alive
from train_sweep_extras.space import Param, parse_search_overrides
from train_sweep import UserError
from train_sweep_extras.sweepfiles import read_sweep_file, wandb_hyperband

optuna = pytest.importorskip("optuna")
yaml = pytest.importorskip("yaml")


# -- helpers -----------------------------------------------------------------------------------------------

def script(sweep, name: str, body: str) -> str:
    """A train script taking key=value arguments (train_sweep's default Hydra style); returns its command."""
    path = sweep.dir / name
    path.write_text("import json, os, sys, time\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
                    "RUN_DIR = os.environ['TRAIN_SWEEP_RUN_DIR']\n" + body)
    return f"python {path}"


def load_study(folder: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name="train_sweep", storage=JournalStorage(JournalFileBackend(str(folder / "study.log"))))


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def check_refused(p, *fragments: str) -> None:
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("train_sweep: error: "), lines[0]
    assert "Traceback" not in p.stderr + p.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def write_yaml(path: Path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return str(path)


QUADRATIC = "x = float(args['x']); y = int(args.get('y', 0))\nprint(f\"loss={(x - 0.3) ** 2 + 0.01 * y}\", flush=True)\n"


def loss_of(record) -> float:
    return record["metrics"]["loss"]


# -- 1. each sampler end to end ----------------------------------------------------------------------------

def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


SAMPLER_CASES = [
    pytest.param("tpe", id="tpe"),
    pytest.param("random", id="random"),
    pytest.param("cmaes", id="cmaes"),
    pytest.param("nsga2", id="nsga2"),
    pytest.param("qmc", id="qmc"),
    pytest.param("grid", id="grid"),
    pytest.param("gp", id="gp", marks=pytest.mark.skipif(not _has("torch", "scipy"),
                                                         reason="the gp sampler needs torch and scipy")),
]


@pytest.mark.parametrize("sampler", SAMPLER_CASES)
def test_each_sampler_runs_end_to_end(sweep, sampler):
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    if sampler == "grid":  # a grid of 2 x 2 values; its size is the budget
        space, budget = ["x=range(0, 1, 0.5)", "y=range(1, 3)"], []
        n = 4
    else:  # gp: past its 10 random start-up trials, so that the Gaussian process itself is used
        n = 12 if sampler == "gp" else 4
        space, budget = ["x=interval(0, 1)", "y=range(1, 4)"], ["--n-trials", str(n)]
    p = sweep.run("--command", command, "--search", sampler, "--metric", "loss", "--no-live", *budget, *space,
                  trainer=False, timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    records = sweep.results()
    assert len(records) == n
    assert all(r["state"] == "complete" for r in records), [r["state"] for r in records]
    trials = [r["trial"] for r in records]
    assert sorted(trials) == list(range(n))  # distinct, numbered from 0
    for r in records:
        assert Path(r["run_dir"]).name.startswith(f"trial{r['trial']:03d}_")
        x, y = r["hyperparams"]["x"], r["hyperparams"]["y"]
        assert isinstance(y, int) and isinstance(x, float)
        assert 0.0 <= x <= 1.0 and y in (1, 2, 3)
        assert loss_of(r) == pytest.approx((x - 0.3) ** 2 + 0.01 * y)
    if sampler == "grid":
        assert sorted((r["hyperparams"]["x"], r["hyperparams"]["y"]) for r in records) == \
            [(0.0, 1), (0.0, 2), (0.5, 1), (0.5, 2)]
    study = load_study(sweep.dir / "outputs")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == n and states(study) == {"COMPLETE": n}
    by_number = {t.number: t for t in complete}
    for r in records:  # each trial was told its run's value
        assert by_number[r["trial"]].values == [pytest.approx(loss_of(r))]
    best = min(records, key=loss_of)
    assert f"Best parameters ({best['model_name']}): " in p.stdout
    assert f"Train it again: {shlex.join(best['command'])}" in p.stdout
    assert f"{n}/{n} trials" in p.stdout


@pytest.mark.skipif(_has("torch"), reason="checks what a missing torch does to --search gp")
def test_gp_without_torch_is_a_one_line_error_not_a_crash_after_the_startup_trials(sweep):
    """Optuna's GPSampler imports torch lazily: it is built fine and samples its 10 start-up trials at random,
    then the 11th ask needs torch. A missing torch must be said before anything runs, not as a traceback."""
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    p = sweep.run("--command", command, "--search", "gp", "--n-trials", "12", "--metric", "loss", "--no-live",
                  "x=interval(0, 1)", trainer=False)
    assert "Traceback" not in p.stderr, p.stderr[-1500:]
    check_refused(p, "gp", "torch")


def test_grid_with_a_larger_budget_stops_when_the_grid_is_done(sweep):
    """--n-trials beyond the grid's size: the grid is run once (Optuna's GridSampler calls study.stop() after
    the last grid point, which raises outside study.optimize), exit 0, no traceback."""
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    p = sweep.run("--command", command, "--search", "grid", "--n-trials", "5", "--metric", "loss", "--no-live",
                  "x=range(0, 1, 0.5)", trainer=False)
    assert "Traceback" not in p.stderr, p.stderr[-1500:]
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(r["hyperparams"]["x"] for r in sweep.results()) == [0.0, 0.5]


def test_grid_over_list_valued_choices(sweep):
    """Categorical choices may be JSON lists (config form): the grid must offer them as the study knows them."""
    sweep.gpus.set(count=1)
    sweep.config({"command": script(sweep, "shape.py", "s = json.loads(args['shape'])\nprint(f'loss={sum(s)}')\n"),
                  "search": {"sampler": "grid", "metric": "loss",
                             "params": {"shape": {"type": "categorical", "choices": [[1, 2], [3, 4]]}}}})
    p = sweep.run("--no-live", trainer=False)
    assert "Traceback" not in p.stderr, p.stderr[-1500:]
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(r["hyperparams"]["shape"] for r in sweep.results()) == [[1, 2], [3, 4]]


def test_config_search_block_with_defaults_and_plots(sweep):
    """The object form's search block: params merged over defaults, seed, n_trials; report --plots draws
    Optuna's optimization history and parameter importances."""
    sweep.gpus.set(count=1)
    body = ("assert args['fixed'] == 'kept' and args['opt'] in ('adam', 'sgd')\n"
            "x = float(args['lr']); n = int(args['layers'])\n"
            "print(f\"val_loss={abs(math.log10(x) + 3) + 0.1 * n + (args['opt'] == 'sgd')}\")\n")
    sweep.config({
        "command": script(sweep, "block.py", "import math\n" + body),
        "defaults": {"fixed": "kept", "layers": 99},
        "search": {"sampler": "tpe", "n_trials": 5, "seed": 3, "metric": "val_loss", "mode": "min",
                   "params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                              "layers": {"type": "int", "low": 2, "high": 8, "step": 2},
                              "opt": {"type": "categorical", "choices": ["adam", "sgd"]}}},
    })
    p = sweep.run("--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert len(records) == 5 and all(r["state"] == "complete" for r in records)
    for r in records:
        hp = r["hyperparams"]
        assert hp["fixed"] == "kept" and hp["layers"] in (2, 4, 6, 8)  # the searched value wins over defaults
        assert 1e-5 <= hp["lr"] <= 1e-1
    study = load_study(sweep.dir / "outputs")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE]
    plots = sweep.dir / "plots"
    r = sweep.run("report", "train_sweep_results.json", "--plots", str(plots), trainer=False, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("optimization_history.png", "param_importances.png"):
        assert (plots / name).stat().st_size > 1000, name


def test_search_hours_bounds_the_search(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "slowq.py", "time.sleep(0.3)\n" + QUADRATIC)
    start = time.monotonic()
    p = sweep.run("--command", command, "--search", "random", "--search-hours", str(1.5 / 3600), "--metric", "loss",
                  "--no-live", "x=interval(0, 1)", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert time.monotonic() - start < 20
    assert f"the search's time budget ({1.5 / 3600:g} h) is used up" in p.stdout
    n = len(sweep.results())
    assert 1 <= n <= 8 and all(r["state"] == "complete" for r in sweep.results())


def test_two_slots_run_trials_in_parallel(sweep):
    sweep.gpus.set(count=2)
    command = script(sweep, "par.py", "time.sleep(0.5)\n" + QUADRATIC)
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "4", "--metric", "loss", "--no-live",
                  "x=interval(0, 1)", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sorted(sweep.results(), key=lambda r: r["trial"])
    assert [r["trial"] for r in records] == [0, 1, 2, 3]
    assert {r["gpu_id"] for r in records} == {0, 1}
    assert ts(records[1]["start_time"]) < ts(records[0]["end_time"])  # asked while trial 0 still ran
    assert len({r["hyperparams"]["x"] for r in records}) == 4


def test_failed_trials_are_told_failed_and_count_against_the_budget(sweep):
    """A run that fails (or completes without the metric) is a FAIL trial; the budget still ends the search."""
    sweep.gpus.set(count=1)
    command = script(sweep, "fails.py", "x = float(args['x'])\nif x > 0.5:\n    sys.exit(3)\nprint('no metric here')\n")
    p = sweep.run("--command", command, "--search", "random", "--n-trials", "4", "--metric", "loss", "--no-live",
                  "--no-fail-fast", "x=interval(0, 1)", trainer=False, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr  # a run failed
    records = sweep.results()
    assert len(records) == 4 and sorted(r["trial"] for r in records) == [0, 1, 2, 3]
    assert states(load_study(sweep.dir / "outputs")) == {"FAIL": 4}
    assert {r["state"] for r in records} <= {"failed", "complete"}
    assert "Traceback" not in p.stderr


def test_an_out_of_memory_trial_is_requeued_not_lost(sweep):
    sweep.gpus.set(count=1)
    marker = sweep.dir / "oomed"
    body = (f"if not os.path.exists({str(marker)!r}):\n    open({str(marker)!r}, 'w').close()\n"
            "    print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB', file=sys.stderr)\n"
            "    sys.exit(1)\n" + QUADRATIC)
    p = sweep.run("--command", script(sweep, "oom.py", body), "--search", "random", "--n-trials", "2", "--metric",
                  "loss", "--no-live", "x=interval(0, 1)", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sorted(sweep.results(), key=lambda r: r["trial"])
    assert [r["state"] for r in records] == ["complete", "complete"]
    assert records[0]["attempt"] == 2 and [a["state"] for a in records[0]["attempts"]] == ["oom"]
    assert states(load_study(sweep.dir / "outputs")) == {"COMPLETE": 2}  # the same trial, told once


def test_dry_run_of_a_search_shows_the_space(sweep):
    sweep.gpus.set(count=1)
    p = sweep.run("--search", "tpe", "--n-trials", "7", "--metric", "loss", "--dry-run", "lr=tag(log, interval(1e-5, 1e-2))",
                  "layers=range(2, 9)", "opt=adam,sgd")
    assert p.returncode == 0, p.stdout + p.stderr
    out = " ".join(p.stdout.split())
    assert "Search: tpe sampler, 7 trials, pruner none, min loss." in out
    assert "lr: float [1e-05, 0.01] log" in out and "layers: int [2, 8]" in out and 'opt: one of "adam", "sgd"' in out
    assert not (sweep.dir / "outputs").exists()


@pytest.mark.parametrize("pruner", ["percentile", "successive_halving", "hyperband"])
def test_other_pruners_are_fed_the_metric_stream(sweep, pruner):
    sweep.gpus.set(count=1)
    sweep.config([{"k": k} for k in (0.3, 0.1, 0.2)])
    body = "for step in range(3):\n    print(f\"step {step} loss={float(args['k']) + 1 / (step + 1)}\", flush=True)\n"
    p = sweep.run("--command", script(sweep, "curve.py", body), "--pruner", pruner, "--metric", "loss", "--no-live",
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    study = load_study(sweep.dir / "outputs")
    assert len(study.trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    first = study.trials[0]
    assert first.state.name == "COMPLETE" and first.intermediate_values == {0: 1.3, 1: 0.8, 2: pytest.approx(0.3 + 1 / 3)}
    assert first.values == [pytest.approx(0.3 + 1 / 3)]


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


# -- 2. Hydra's Optuna-sweeper syntax ----------------------------------------------------------------------

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


def test_resume_a_search_over_a_shuffle(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "shuf.py", "print(f\"loss={int(args['n'])}\")\n")
    base = ["--command", command, "--search", "random", "--metric", "loss", "--no-live", "n=shuffle(range(1, 9))"]
    assert sweep.run(*base, "--n-trials", "2", trainer=False).returncode == 0
    p = sweep.run(*base, "--n-trials", "3", trainer=False)  # the same space, one more trial
    assert p.returncode == 0, p.stderr
    assert sorted(r["trial"] for r in sweep.results()) == [0, 1, 2]


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
])
def test_hydra_search_syntax_errors(override, fragment):
    with pytest.raises(UserError) as e:
        parse_search_overrides([override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


# -- 3. W&B and Protein sweep files ------------------------------------------------------------------------

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


@pytest.mark.parametrize("top, fragment", [
    ({"method": None}, "'method' must be grid, random or bayes (or protein), got None"),
    ({"method": "hyperband"}, "'method' must be grid, random or bayes (or protein), got 'hyperband'"),
    ({"metric": {"name": "loss", "goal": "lower"}}, "'goal' must be minimize or maximize, got 'lower'"),
    ({"metric": "loss", "goal": "up"}, "'goal' must be minimize or maximize"),
    ({"metric": {"name": "loss", "gaol": "minimize"}}, "'metric': unknown key 'gaol'"),
    ({"metric": {"name": "loss", "target": "low"}}, "'target' must be a number"),
    ({"metric": {"name": "val loss"}}, "'metric' must name a metric"),
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"run_cap": 0}, "'run_cap' must be a whole number >= 1"),
    ({"command": ["${env}", "${interpreter}", "train.py", "${args_json}"]}, "the macro ${args_json} is not supported"),
    ({"command": ["python", "train.py", "${args}", "--fast"]}, "${args} must come last"),
    ({"command": ["python", "train.py"]}, "'command' has no ${args}"),
    ({"command": ["${interpreter}", "${program}", "${args}"]}, "'program' is not given"),
    ({"command": "python train.py ${args}"}, "'command' must be a list of strings"),
    ({"command": ["${env}", "${args}"]}, "'command' names no program"),
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


# -- 4. bad input: one line, exit 2, no traceback ----------------------------------------------------------

X = {"x": {"type": "float", "low": 0, "high": 1}}


def block(**search):
    return {"search": {"sampler": "tpe", "n_trials": 2, "metric": "loss", "params": X, **search}}


@pytest.mark.parametrize("config, args, fragments", [
    (block(n_trial=3), [], ["'search': unknown key 'n_trial'"]),
    (block(params={"x": {"type": "float", "low": 1, "high": 1}}), [], ["'x'", "'low' (1) must be below 'high' (1)"]),
    (block(params={"x": {"type": "float", "low": 0, "high": 1, "log": True}}), [], ["'x'", "a log scale needs 'low' > 0"]),
    (block(params={"n": {"type": "int", "low": 0, "high": 10, "step": 3}}), [], ["'n'", "must be a multiple of 'step'"]),
    (block(params={"o": {"type": "categorical", "choices": []}}), [], ["'o'", "'choices' must be a non-empty list"]),
    (block(params={"o": {"type": "categorical", "choices": ["a", "a"]}}), [], ["'o'", "a choice is listed twice"]),
    (block(params={"o": {"type": "enum", "choices": ["a"]}}), [], ["'o'", "'type' must be one of"]),
    (block(params={"x": {"type": "float", "low": 0, "high": 1, "scale": 2}}), [], ["'x'", "unknown key 'scale'"]),
    (block(params={}), [], ["'params' must be a non-empty object"]),
    (block(sampler="bayes"), [], ["'sampler' must be one of tpe, random, gp, cmaes, nsga2, qmc, grid, got 'bayes'"]),
    (block(pruner="aggressive"), [], ["'pruner' must be one of"]),
    (block(mode="up"), [], ["'mode': 'up' is not one of min, max"]),
    (block(n_trials=0), [], ["'n_trials' must be a whole number from 1 to 100000"]),
    ({"search": {"sampler": "tpe", "n_trials": 2, "params": X}}, [], ["a search needs a metric to optimize"]),
    ({"search": {"sampler": "tpe", "metric": "loss", "params": X}}, [], ["a search needs a budget"]),
    (block(metric=["loss", "acc"], mode=["min", "max"], pruner="median"), [],
     ["pruner median", "2 objectives"]),
    (block(metric=["loss", "acc"], mode=["min", "max"], sampler="cmaes"), [], ["cmaes sampler optimizes one objective"]),
    (block(mode=["min", "max"]), [], ["2 objectives, and only 1 metric"]),
    (block(sampler="grid"), [], ["the grid sampler needs a list of values for 'x'"]),
    ({**block(), "runs": [{"a": 1}]}, [], ["'runs' and 'grid' cannot go with it"]),
    (block(pruner={"type": "median", "n_startup_trials": -1}), [], ["pruner 'median'"]),
    ([{"a": 1}, {"a": 2}], ["--search", "tpe", "--n-trials", "2", "--metric", "loss", "x=interval(0, 1)"],
     ["--search searches one space, and this config lists 2 runs"]),
    ([{"a": 1}], ["--search", "tpe", "--n-trials", "2", "--metric", "loss"], ["--search needs parameters to search"]),
    ([{"a": 1}], ["--search", "grid", "--metric", "loss", "x=interval(0, 1)"],
     ["the grid sampler needs a list of values for 'x'"]),
    ([{"a": 1}], ["--search", "tpe", "--metric", "loss", "x=interval(0, 1)"], ["a search needs a budget"]),
    ([{"a": 1}], ["--search", "tpe", "--n-trials", "2", "x=interval(0, 1)"], ["a search needs a metric"]),
    ([{"a": 1}], ["--search", "tpe", "--n-trials", "2", "--metric", "loss", "--set", "x=3", "x=interval(0, 1)"],
     ["'x' is both searched and set"]),
    ([{"a": 1}], ["--search", "cmaes", "--n-trials", "2", "--metric", "loss", "--metric", "acc", "--mode", "min,max",
                  "x=interval(0, 1)"], ["cmaes sampler optimizes one objective"]),
    ([{"a": 1}], ["--search", "tpe", "--n-trials", "2", "--metric", "loss", "--metric", "acc", "--mode", "min,max",
                  "--pruner", "median", "x=interval(0, 1)"], ["pruner median", "2 objectives"]),
    ([{"a": 1}], ["--search", "tpe", "--n-trials", "2", "--metric", "loss", "x=tag(foo, interval(0, 1))"],
     ["tag 'foo' is not known"]),
    ([{"a": 1}], ["--pruner", "median"], ["--pruner median needs --metric"]),
    ([{"a": 1}], ["--search", "bayes"], ["argument --search"]),
    ([{"a": 1}], ["--mode", "min,up"], ["give min or max"]),
])
def test_bad_search_input_is_one_line(sweep, config, args, fragments):
    sweep.gpus.set(count=1)
    sweep.config(config)
    p = sweep.run("--no-live", *args)
    check_refused(p, *fragments)
    assert not (sweep.dir / "outputs").exists() and not sweep.events()


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


def test_resume_with_another_search_space_is_refused(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    base = ["--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live"]
    assert sweep.run(*base, "x=interval(0, 1)", trainer=False).returncode == 0
    kept = {name: (sweep.dir / "outputs" / name).read_bytes() for name in ("sweep.json", "sweep.log")}
    p = sweep.run(*base, "x=interval(0, 2)", trainer=False)
    check_refused(p, "study.log", "made for another search", "--rerun")
    assert states(load_study(sweep.dir / "outputs")) == {"COMPLETE": 2}  # nothing asked, nothing told
    assert len(sweep.results()) == 2
    for name, before in kept.items():  # refused before anything was written
        assert (sweep.dir / "outputs" / name).read_bytes() == before, name


@pytest.mark.parametrize("change", [["--mode", "max"], ["--metric", "acc"]], ids=["mode", "metric"])
def test_resume_with_other_objectives_from_the_flags_is_refused(sweep, change):
    """The study minimizes loss; the same space with --mode max (or another --metric) is another search: the
    loaded study would go on minimizing while the sweep ranks by the new objective."""
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC + "print('acc=0.5')\n")
    base = ["--command", command, "--search", "random", "--n-trials", "2", "--no-live", "x=interval(0, 1)"]
    assert sweep.run(*base, "--metric", "loss", trainer=False).returncode == 0
    args = [*base, "--metric", "loss", *change] if change[0] == "--mode" else [*base, *change]
    p = sweep.run(*args, "--n-trials", "3", trainer=False)
    check_refused(p, "made for another search")
    assert states(load_study(sweep.dir / "outputs")) == {"COMPLETE": 2}


def test_rerun_sets_the_study_aside(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    base = ["--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live"]
    assert sweep.run(*base, "x=interval(0, 1)", trainer=False).returncode == 0
    p = sweep.run(*base, "x=interval(0, 2)", "--rerun", trainer=False)  # a fresh study: another space is fine
    assert p.returncode == 0, p.stdout + p.stderr
    out = sweep.dir / "outputs"
    assert (out / "study.log~1").is_file()
    assert states(load_study(out)) == {"COMPLETE": 2}
    assert len(sweep.results()) == 2
    p = sweep.run(*base, "x=interval(0, 2)", "--n-trials", "3", trainer=False)  # resumes: one more trial
    assert p.returncode == 0, p.stdout + p.stderr
    assert states(load_study(out)) == {"COMPLETE": 3}
    assert sorted(r["trial"] for r in sweep.results()) == [0, 1, 2]


# -- 5. resume after SIGINT and after kill -9 --------------------------------------------------------------

HOLD_THIRD = """\
with open({log!r}, 'a') as f:
    f.write(os.environ['TRAIN_SWEEP_RUN_NAME'] + ' ' + str(os.getpid()) + '\\n')
n = len(open({log!r}).read().splitlines())
x = float(args['x'])
if n == 3:  # the third run started: it holds until the sweep is stopped
    print('holding', flush=True)
    time.sleep(120)
print(f'loss={{(x - 0.3) ** 2}}', flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "kill9"])
def test_resume_after_the_sweep_died_loses_no_trial(sweep, sig):
    sweep.gpus.set(count=1)
    log = sweep.dir / "starts.log"
    command = script(sweep, "hold.py", HOLD_THIRD.format(log=str(log)))
    args = ["--command", command, "--search", "random", "--n-trials", "5", "--metric", "loss", "--no-live",
            "x=interval(0, 1)"]
    proc = sweep.start(*args, trainer=False)
    held = None
    try:
        sweep.wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 3, what="the third trial")
        held = int(log.read_text().splitlines()[2].split()[1])
        time.sleep(0.3)
        assert proc.poll() is None and pid_alive(held)
        proc.send_signal(sig)
        first_out, _ = proc.communicate(timeout=30)
        assert all_dead([held], 15), "the held run outlived its sweep"
    finally:
        if proc.poll() is None:
            proc.kill()
        if held:
            kill_pids([held])
    out = sweep.dir / "outputs"
    study = load_study(out)
    third = study.trials[2]
    if sig == signal.SIGKILL:
        assert third.state.name == "RUNNING"  # the sweep could tell it nothing
    else:
        # the third trial, and the trial asked ahead for the next free slot (never started)
        assert third.state.name == "FAIL" and 2 in study.user_attrs.get("requeued")
    held_params = dict(third.params)
    if sig == signal.SIGINT:  # the interrupted trial does not count against the budget: 2 of 5 are done
        assert "Search random: 2/5 trials" in first_out, first_out[-800:]

    p = sweep.run(*args, trainer=False)  # the same command again
    assert p.returncode == 0, p.stdout + p.stderr
    if sig == signal.SIGKILL:
        assert "trial 2 had not ended when the sweep stopped: asked again" in p.stdout
    study = load_study(out)
    requeued = set(study.user_attrs.get("requeued", []))
    trials = study.get_trials(deepcopy=False)
    assert all(t.state.is_finished() for t in trials), states(study)  # nothing left running or waiting
    assert study.trials[2].state.name == "FAIL"
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.number not in requeued]
    assert len(complete) == 5 and {t.state.name for t in trials if t.number in requeued} == {"FAIL"}, states(study)
    assert len(trials) == 5 + len(requeued)
    records = {r["trial"]: r for r in sweep.results()}
    assert sorted(records) == [t.number for t in complete]  # the two of the first sweep kept, none twice
    assert [0, 1] == sorted(records)[:2]
    # requeued: the held trial, and at most one trial asked ahead for the next slot, which never started
    assert 2 in requeued and len(requeued) <= 2 and not requeued & set(records)
    first_reasked = min(n for n in records if n > 2)
    assert study.trials[first_reasked].params == held_params  # the interrupted trial's parameters are asked again first
    assert all(r["state"] == "complete" for r in records.values())
    for t in complete:  # each told once, its own run's value
        assert t.values == [pytest.approx(records[t.number]["metrics"]["loss"])]
        assert t.user_attrs["run"] == records[t.number]["model_name"]
    names = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(names) == 6 and len(set(names)) == 6 and names[:2] == [records[0]["model_name"], records[1]["model_name"]]
    assert "5/5 trials" in p.stdout


# -- 6. pruning ends a real process tree, its slot goes on at once -----------------------------------------

PRUNE_TRAIN = """\
bad = args.get('bad') == '1'
with open(os.path.join(RUN_DIR, 'model.pt'), 'wb') as f:
    f.write(b'0' * 1024)
if bad:
    import subprocess
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    with open(os.path.join(RUN_DIR, 'pids.json'), 'w') as f:
        json.dump([os.getpid(), child.pid], f)
base = 10.0 if bad else float(args['k'])
for step in range(300 if bad else 5):
    print(f'step {step} loss={base + 1 / (step + 1):.4f}', flush=True)
    time.sleep(0.1 if bad else 0.01)
"""


def pruned_list(sweep, *extra: str):
    """Five good runs (the median pruner's start-up), a hopeless one with a child process, one more good one."""
    sweep.gpus.set(count=1)
    runs = [{"k": k} for k in (0.5, 0.3, 0.4, 0.2, 0.6)] + [{"k": 9, "bad": 1}, {"k": 0.1}]
    sweep.config(runs)
    command = script(sweep, "prune_train.py", PRUNE_TRAIN)
    start = time.monotonic()
    p = sweep.run("--command", command, "--pruner", "median", "--metric", "loss", "--timeout", "25", "--no-live",
                  *extra, trainer=False)
    took = time.monotonic() - start
    records = {r["model_name"]: r for r in sweep.results()}
    return p, records, took


def test_pruning_kills_the_process_tree_and_the_slot_is_reused_at_once(sweep):
    p, records, took = pruned_list(sweep)
    bad = records["k_9_bad_1"]
    pids = json.loads((Path(bad["run_dir"]) / "pids.json").read_text())
    try:
        assert all_dead(pids, 5), "the pruned run or its child outlived the pruning"
    finally:
        kill_pids(pids)
    assert p.returncode == 0, p.stdout + p.stderr  # complete or pruned: success
    assert bad["state"] == "pruned" and bad["success"] is False
    assert bad["metric"]["points"] < 20  # stopped early, long before its 300 steps
    assert bad["duration_seconds"] < 10 and took < 25
    assert all(r["state"] == "complete" for name, r in records.items() if name != "k_9_bad_1")
    nxt = records["k_0.1"]
    gap = ts(nxt["start_time"]) - ts(bad["end_time"])
    assert 0 <= gap < 1.0, gap  # the freed slot went to the next run at once
    assert f"{'pruning':<11} k_9_bad_1: loss=" in p.stdout
    assert f"{'pruned':<11} k_9_bad_1" in p.stdout
    assert "1 pruned" in p.stdout
    study = load_study(sweep.dir / "outputs")
    assert states(study) == {"COMPLETE": 6, "PRUNED": 1}
    assert study.trials[bad["trial"]].state.name == "PRUNED"
    journal = [json.loads(line) for line in (sweep.dir / "outputs" / "journal.jsonl").read_text().splitlines()]
    assert [j["state"] for j in journal if j["model_name"] == "k_9_bad_1"] == ["pruned"]
    plots = sweep.dir / "plots"  # report: the pruned list's study has a history, no parameters
    r = sweep.run("report", "train_sweep_results.json", "--plots", str(plots), trainer=False, timeout=90)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert (plots / "optimization_history.png").is_file()
    assert "pruned" in r.stdout


def test_pruned_checkpoints_follow_top_k(sweep):
    p, records, _ = pruned_list(sweep, "--top-k", "1", "--checkpoint-glob", "*.pt")
    bad = records["k_9_bad_1"]
    kill_pids(json.loads((Path(bad["run_dir"]) / "pids.json").read_text()))
    assert p.returncode == 0, p.stdout + p.stderr
    assert bad["state"] == "pruned"
    assert not (Path(bad["run_dir"]) / "model.pt").exists()  # a pruned run can never rank: its checkpoints go
    assert Path(bad["stdout_log"]).exists()  # its logs stay
    assert "k_9_bad_1: pruned: deleted 1 file(s)" in p.stdout
    kept = sorted(name for name, r in records.items() if (Path(r["run_dir"]) / "model.pt").exists())
    assert kept == ["k_0.1"]  # the best complete run only
    best = json.loads((sweep.dir / "outputs" / "best" / "best.json").read_text())
    assert [r["name"] for r in best["runs"]] == ["k_0.1"]


def test_a_pruned_list_run_is_final_on_resume(sweep):
    """Pruned is not a failure: like a search's pruned trials (kept on resume), a pruned run of a list is not
    run again by the same command (it would only be pruned again, at the cost of its start-up)."""
    p, records, _ = pruned_list(sweep)
    kill_pids(json.loads((Path(records["k_9_bad_1"]["run_dir"]) / "pids.json").read_text()))
    assert p.returncode == 0
    r, again, _ = pruned_list(sweep)
    kill_pids(json.loads((Path(again["k_9_bad_1"]["run_dir"]) / "pids.json").read_text()))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "k_9_bad_1 (attempt 2)" not in r.stdout, r.stdout
    assert states(load_study(sweep.dir / "outputs")) == {"COMPLETE": 6, "PRUNED": 1}


def test_pruning_in_a_search(sweep):
    """A search block's pruner with its own arguments: hopeless trials are pruned, told PRUNED, counted in
    the budget, and the search still ends with every trial complete or pruned."""
    sweep.gpus.set(count=1)
    body = ("x = float(args['x'])\nfor step in range(4):\n"
            "    print(f'step {step} loss={x + 1 / (step + 1):.4f}', flush=True)\n    time.sleep(0.1)\n")
    sweep.config({"command": script(sweep, "srch_prune.py", body),
                  "search": {"sampler": "random", "n_trials": 8, "seed": 0, "metric": "loss",
                             "pruner": {"type": "median", "n_startup_trials": 2},
                             "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    p = sweep.run("--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert len(records) == 8 and {r["state"] for r in records} <= {"complete", "pruned"}
    pruned = [r for r in records if r["state"] == "pruned"]
    assert pruned, "no trial was pruned"
    study = load_study(sweep.dir / "outputs")
    assert states(study) == {"COMPLETE": 8 - len(pruned), "PRUNED": len(pruned)}
    for r in pruned:
        assert study.trials[r["trial"]].state.name == "PRUNED"
        assert r["metric"]["points"] < 4
    assert f"{len(pruned)} pruned" in p.stdout


# -- 7. multi-objective --------------------------------------------------------------------------------------

MO_TRAIN = "x = float(args['x'])\nprint(f'loss={x:.4f} acc={x * x:.4f}', flush=True)\n"


@pytest.mark.parametrize("form", ["flags-nsga2", "block-tpe"])
def test_multi_objective_pareto_front(sweep, form):
    sweep.gpus.set(count=1)
    command = script(sweep, "mo.py", MO_TRAIN)
    if form == "flags-nsga2":  # no config file: the search comes from the command line alone
        args = ["--command", command, "--search", "nsga2", "--n-trials", "4", "--metric", "loss", "--metric", "acc",
                "--mode", "min,max", "x=interval(0, 1)"]
    else:
        sweep.config({"command": command, "search": {
            "sampler": "tpe", "n_trials": 4, "metric": ["loss", "acc"], "mode": ["min", "max"],
            "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
        args = []
    p = sweep.run("--no-live", *args, trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert len(records) == 4 and all(r["state"] == "complete" for r in records)
    study = load_study(sweep.dir / "outputs")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    for t in study.trials:
        x = t.params["x"]
        assert t.values == [pytest.approx(round(x, 4), abs=1e-4), pytest.approx(round(x * x, 4), abs=1e-4)]
    front = [line for line in p.stdout.splitlines() if line.startswith("Pareto front: ")]
    assert len(front) == len(study.best_trials) >= 1
    names = {t.user_attrs["run"] for t in study.best_trials}
    assert {line.split()[2].rstrip(":") for line in front} == names
    assert all("loss=" in line and "acc=" in line and "x=" in line for line in front)
    plots = sweep.dir / "plots"
    r = sweep.run("report", "train_sweep_results.json", "--plots", str(plots), trainer=False, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (plots / "pareto_front.png").stat().st_size > 1000


# -- 8. no Optuna ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, args", [
    ([{"a": 1}], ["--search", "tpe", "--n-trials", "2", "--metric", "loss", "x=interval(0, 1)"]),
    ([{"a": 1}, {"a": 2}], ["--pruner", "median", "--metric", "loss"]),
    ({"search": {"n_trials": 2, "metric": "loss", "params": X}}, []),
])
def test_missing_optuna_is_one_line(sweep, tmp_path, config, args):
    sweep.gpus.set(count=1)
    sweep.config(config)
    fake = tmp_path / "no_optuna" / "optuna"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'optuna'\", name='optuna')\n")
    p = sweep.run("--no-live", *args, PYTHONPATH=os.pathsep.join([str(fake.parent), str(FAKE_NVML)]))
    check_refused(p, "needs Optuna: pip install 'train-sweep[search]'")
    assert not (sweep.dir / "outputs").exists() and not sweep.events()


def test_missing_optuna_does_not_touch_plain_sweeps(sweep, tmp_path):
    sweep.gpus.set(count=1)
    sweep.config([{"a": 1}])
    fake = tmp_path / "no_optuna" / "optuna"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'optuna'\", name='optuna')\n")
    p = sweep.run("--no-live", "--metric", "loss", PYTHONPATH=os.pathsep.join([str(fake.parent), str(FAKE_NVML)]))
    assert p.returncode == 0, p.stdout + p.stderr
    assert not (sweep.dir / "outputs" / "study.log").exists()


# -- the study's file and the source, called directly ------------------------------------------------------

def _journal_study(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="train_sweep",
                               load_if_exists=True)


def test_a_torn_last_line_of_the_study_is_cut_before_optuna_appends_to_it(tmp_path):
    """kill -9 in the middle of a write leaves the study's last line cut short; Optuna would append the next
    operation to it and every later reader would fail. mend_torn_line cuts it off first."""
    from train_sweep_extras.search import mend_torn_line

    path = tmp_path / "study.log"
    study = _journal_study(path)
    for x in (0.1, 0.2):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, x)
    whole = path.read_bytes()
    assert whole.endswith(b"\n")
    mend_torn_line(path)
    assert path.read_bytes() == whole  # a whole file is left alone
    path.write_bytes(whole + b'{"op_code": 4, "worker_id": "x", "study_id": 0, "dat')  # a write cut short
    mend_torn_line(path)
    assert path.read_bytes() == whole
    study = _journal_study(path)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.3)  # writes go on
    assert [t.value for t in _journal_study(path).trials] == [0.1, 0.2, 0.3]
    mend_torn_line(tmp_path / "missing.log")  # nothing to mend


def test_the_next_trial_is_asked_ahead_and_put_back_when_the_sweep_ends(tmp_path):
    """prepare() (after the loop's launches) tells ended trials and asks one trial ahead; next() hands it out
    without asking; close() tells the unstarted one failed, requeued (not counted) and enqueued again."""
    from train_sweep import Run, State
    from train_sweep_extras.search import SearchSource
    from train_sweep_extras.space import parse_search

    study = _journal_study(tmp_path / "study.log")
    search = parse_search({"params": {"x": {"type": "float", "low": 0, "high": 1}}, "metric": "loss"}, "test")
    made = []

    def make_run(params, number):
        run = Run(index=number, name=f"trial{number}", hyperparams=params, argv=[], run_dir=tmp_path / str(number))
        made.append(run)
        return run

    source = SearchSource(study, search, make_run, objectives=["loss"], n_trials=3, path=tmp_path / "study.log")
    first = source.next()
    assert first.trial == 0 and len(study.trials) == 1 and source.pending() == 2
    source.prepare()
    assert len(study.trials) == 2 and source.ahead is not None and source.pending() == 2  # asked, not started
    first.state, first.metrics = State.COMPLETE, {"loss": 0.5}
    source.finished(first)
    assert study.trials[0].state.name == "RUNNING"  # told in prepare(), off the path to the next start
    second = source.next()
    assert second is made[1] and len(study.trials) == 2  # handed out without asking
    source.prepare()
    assert study.trials[0].state.name == "COMPLETE" and study.trials[0].value == 0.5
    assert len(study.trials) == 3 and source.pending() == 1  # the third and last, asked ahead
    source.close()  # the sweep stops: the second ran no end, the third never started
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING", "WAITING"]
    assert study.user_attrs["requeued"] == [1, 2]
    assert [t.system_attrs["fixed_params"] for t in study.trials[3:]] == [study.trials[1].params, study.trials[2].params]
    again = SearchSource(study, search, make_run, objectives=["loss"], n_trials=3, path=tmp_path / "study.log")
    assert again.counted == 1 and again.pending() == 2  # the requeued and the waiting ones do not count
    assert again.next().hyperparams == study.trials[1].params  # the interrupted trial is asked again first
