"""The search (issue 12): Optuna on the GPU queue through the real CLI. Each sampler end to end, grids and
budgets, the config's search block, trials in parallel, failed and out-of-memory trials; the pruners fed the
metric stream (pruning ends a run's process tree and hands its slot on at once, top-K checkpoints of pruned
runs, a retry is not judged on its first attempt's curve); multi-objective Pareto front; bad search input as
one line; no Optuna."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import shlex
import signal
import time
from pathlib import Path

import pytest

from conftest import FAKE_NVML, QUADRATIC, all_dead, check_refused, kill_pids, load_study, no_traceback, script, states


optuna = pytest.importorskip("optuna")

yaml = pytest.importorskip("yaml")


def ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def loss_of(record) -> float:
    return record["metrics"]["loss"]


# -- each sampler end to end; budgets, slots, failed trials ------------------------------------------------------

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
    import importlib.util  # issue 26 (11): the dashboard it suggests, with its install line where it is missing

    install = "" if importlib.util.find_spec("optuna_dashboard") else "pip install optuna-dashboard; then "
    assert f"(to browse it: {install}optuna-dashboard outputs/study.log)" in p.stdout


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


def test_a_plot_that_cannot_be_drawn_is_a_warning_not_an_error(sweep):
    """An adversarial pass: every trial with the same value: report --plots said 'train_sweep: error: ... no param
    importances plot: Encountered zero total variance' and exited 0. The other plots are drawn: a warning."""
    sweep.gpus.set(count=1)
    command = script(sweep, "flat.py", "print('val_loss=0.5')\n")
    p = sweep.run("--command", command, "--search", "random", "--n-trials", "3", "--metric", "val_loss", "--no-live",
                  "lr=interval(0.1,1)", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    r = sweep.run("report", "--plots", "plots", trainer=False, timeout=90)
    assert r.returncode == 0 and "no param importances plot" in r.stderr, r.stdout + r.stderr
    assert "error:" not in r.stderr and "train_sweep: warning: " in r.stderr, r.stderr
    assert (sweep.dir / "plots" / "optimization_history.png").exists()


def test_param_importances_name_what_moves_the_metric():
    """issue 26 (1): the importance plot put layers at 0.94 and lr at 0.05 where lr alone explained R² 0.84 of
    val_loss (Optuna's default, PED-ANOVA, measures what separates the top trials). fANOVA, on a function whose
    answer is known: lr moves it most, then the optimizer, then layers a little."""
    import math
    import random

    pytest.importorskip("sklearn")
    from train_sweep_extras.plots import param_importances

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    rng = random.Random(2)
    for _ in range(80):
        t = study.ask()
        lr = t.suggest_float("lr", 1e-5, 1e-1, log=True)
        opt = t.suggest_categorical("opt", ["adam", "sgd"])
        layers = t.suggest_int("layers", 2, 8)
        study.tell(t, 3 * abs(math.log10(lr) + 3) + (opt == "sgd") + 0.05 * layers + rng.gauss(0, 0.05))
    found = param_importances(study)
    assert list(found) == ["lr", "opt", "layers"], found
    assert found["lr"] > 0.6 and found["layers"] < 0.1, found


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


# -- pruners: fed the metric stream; pruning ends a real process tree, its slot goes on at once ------------------

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


@pytest.mark.parametrize("flag", ["none", "hyperband"])
def test_the_pruner_flag_wins_with_its_default_arguments(sweep, flag):
    """README: `--pruner` wins (with the default arguments). open_study/main pass the config's pruner arguments
    (search.pruner_args) to the flag's pruner: `--pruner none` cannot even switch a config's median pruner off."""
    sweep.gpus.set(count=1)
    sweep.config({"search": {"n_trials": 2, "metric": "loss", "pruner": {"type": "median", "n_warmup_steps": 5},
                             "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    p = sweep.run("--pruner", flag, "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_retry_is_not_judged_on_the_first_attempts_curve(sweep):
    """The trial stays open across attempts and Optuna keeps one value per step: a retry's values at steps its
    first attempt reported would be ignored and the pruner would judge a mix of both curves. A retry is not
    judged at all; the trial is told the retry's own final value."""
    sweep.gpus.set(count=1)
    body = ("first = not os.path.exists(os.path.join(RUN_DIR, 'attempt_1'))\n"
            "odd = args.get('fake') == 'odd'\n"
            "for s in range(1, 6 if not (odd and first) else 3):\n"
            "    print(f'step={s} loss={(0.001 if first else 100.0) if odd else 1.0 / s}', flush=True)\n"
            "    time.sleep(0.05)\n"
            "sys.exit(1 if odd and first else 0)\n")
    sweep.config([{}])
    p = sweep.run("--command", script(sweep, "r.py", body), "--metric", "loss", "--pruner", "median", "--retries", "1",
                  "--no-live", "seed=1,2,3,4,5,6", "fake=no,odd", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    retried = [r for r in sweep.results() if r["hyperparams"]["fake"] == "odd"]
    assert [(r["state"], r["attempt"], r["metrics"]["loss"]) for r in retried] == [("complete", 2, 100.0)] * 6


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
    """Five good runs (past the median pruner's start-up of 4, the fifth better than the median), a hopeless one with
    a child process, one more good one."""
    sweep.gpus.set(count=1)
    runs = [{"k": k} for k in (0.5, 0.3, 0.4, 0.2, 0.25)] + [{"k": 9, "bad": 1}, {"k": 0.1}]
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


@pytest.mark.parametrize("searching", [True, False], ids=["search", "list"])
def test_a_search_s_interrupted_trials_lose_their_checkpoints_with_top_k(sweep, searching):
    """An adversarial pass: Ctrl+C of a search with --top-k left the interrupted trials' checkpoints for good: the
    search asks each again as a new trial in a new folder, so nothing ever resumed from them or freed them. A
    list's interrupted run keeps its files (its next attempt, in the same folder, may start from them)."""
    sweep.gpus.set(count=2)
    space = ["--search", "random", "--n-trials", "3", "x=interval(0,1)"] if searching else ["x=0.1,0.2,0.3"]
    proc = sweep.start("--no-live", "--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt", *space,
                       "ckpt=1", "sleep=30", "metric=0.5")
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/model.pt"))) == 2, what="two runs' checkpoints")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    left = sorted(p.parent.name for p in (sweep.dir / "outputs").glob("*/*.pt"))
    if searching:
        assert left == [] and out.count("interrupted (a search runs no trial's folder again): deleted 2 file(s)") == 2, out
    else:
        assert len(left) == 2 and "deleted" not in out, out


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


def test_successive_halving_from_the_flag_first_judges_a_run_at_a_ninth_of_its_steps(sweep):
    """issue 25: `--pruner successive_halving` took Optuna's defaults, its first rung at a hundredth of the steps
    (min_resource "auto"): on LCBench the worst pruner measured. A run that is poor for its first steps and then
    the best was stopped at its second report. Now the first rung is at a ninth of the first finished trial's
    steps (36 here: step 4), reduction factor 3."""
    sweep.gpus.set(count=1)
    body = ("late = args['kind'] == 'late'\n"
            "for s in range(1, 37):\n"
            "    print(f'step={s} loss={(0.9 if s < 4 else 0.1) if late else 0.5}', flush=True)\n"
            "    time.sleep(0.01)\n")
    sweep.config([{"kind": "first"}, {"kind": "steady"}, {"kind": "late"}])
    p = sweep.run("--command", script(sweep, "late.py", body), "--metric", "loss", "--pruner", "successive_halving",
                  "--no-live", "--max-processes-per-gpu", "1", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert {r["hyperparams"]["kind"]: r["state"] for r in sweep.results()} == \
        {"first": "complete", "steady": "complete", "late": "complete"}, p.stdout
    assert "Best (min loss): kind_late = 0.1" in p.stdout
    dry = sweep.run("--command", "python x.py", "--metric", "loss", "--pruner", "successive_halving", "--dry-run")
    assert "SuccessiveHalvingFromANinth(fraction=9, reduction_factor=3, " in dry.stdout, dry.stdout


def test_successive_halving_from_the_flag_never_judges_a_run_at_a_rung_it_passed_before_the_rung_was_set(sweep):
    """Review of issue 25's default: the rungs are set when the first trial finishes. A run then already past
    the first rung had its value at a later step taken for its value there, and the next run, identical to it
    and judged at the rung's own step, was stopped against it. Such a run is not judged; the next one is."""
    sweep.gpus.set(count=1)
    body = ("slow = args['kind'] == 'slow'\n"
            "for s in range(1, 37):\n"
            "    print(f'step={s} loss={0.1 + 1 / s if slow else 0.5}', flush=True)\n"
            "    time.sleep(0.03 if slow and s > 6 else 0.01)\n")  # the first slow run is past step 4 unjudged
    sweep.config([{"kind": "first"}, {"kind": "slow", "n": 1}, {"kind": "slow", "n": 2}])
    p = sweep.run("--command", script(sweep, "curves.py", body), "--metric", "loss", "--pruner", "successive_halving",
                  "--no-live", "--max-processes-per-gpu", "2", "--gpus", "0", "--disable-gpu-monitoring", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["state"] for r in sweep.results()] == ["complete"] * 3, p.stdout


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


# -- multi-objective ---------------------------------------------------------------------------------------------

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


def test_a_metric_list_without_modes_is_not_silently_one_objective(sweep):
    """search.metric: [loss, acc] with no mode runs a single-objective search on loss (mode 'min' alone)."""
    sweep.gpus.set(count=1)
    sweep.config({"search": {"n_trials": 2, "metric": ["loss", "acc"],
                             "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    p = sweep.run("--command", script(sweep, "m.py", "print('loss=1 acc=2', flush=True)\n"), "--dry-run", trainer=False)
    out = " ".join(p.stdout.split())
    assert p.returncode == 2 or "acc" in out.split("Search:")[1].split("Placement")[0], out


# -- bad input: one line, exit 2, no traceback -------------------------------------------------------------------

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
    ([{"a": 1}], ["--pruner", "median (n_warmup_steps=1)"], ["--pruner median (n_warmup_steps=1) needs --metric"]),
    ([{"a": 1}], ["--search", "bayes"], ["argument --search"]),
    ([{"a": 1}], ["--mode", "min,up"], ["give min or max"]),
])
def test_bad_search_input_is_one_line(sweep, config, args, fragments):
    sweep.gpus.set(count=1)
    sweep.config(config)
    p = sweep.run("--no-live", *args)
    check_refused(p, *fragments)
    assert not (sweep.dir / "outputs").exists() and not sweep.events()


def test_choices_equal_under_python_eq_are_refused(sweep):
    """Optuna's CategoricalDistribution tells choices apart with ==: False == 0, True == 1 == 1.0; a grid over
    them would run true twice and false twice and never 0 or 1. Refused, naming the two choices."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "c.py", "print('loss=1', flush=True)\n")
    p = sweep.run("--command", cmd, "--search", "grid", "--metric", "loss", "--no-live", "opt=false,0,true,1",
                  trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "the choices false and 0 are one value to Optuna" in p.stderr
    no_traceback(p)


@pytest.mark.parametrize("sweep_file, config", [
    ({"method": "random", "metric": {"name": "loss"}, "run_cap": 2,
      "parameters": {"x": {"distribution": "log_uniform", "min": 0, "max": 1000}}}, None),
    (None, {"search": {"n_trials": 2, "metric": "loss", "pruner": {"type": "hyperband", "min_resource": 0},
                       "params": {"x": {"type": "float", "low": 0, "high": 1}}}}),
    (None, {"search": {"n_trials": 2, "seed": 4294967296, "metric": "loss",
                       "params": {"x": {"type": "float", "low": 0, "high": 1}}}}),
])
def test_bad_values_are_one_line_errors(sweep, sweep_file, config):
    sweep.gpus.set(count=1)
    cmd = script(sweep, "s.py", "for s in range(1, 4):\n    print(f'step={s} loss={1 / s}', flush=True)\n")
    if sweep_file is not None:
        (sweep.dir / "s.yaml").write_text(yaml.safe_dump(sweep_file))
        p = sweep.run("--command", cmd, "--sweep-file", "s.yaml", "--no-live", trainer=False)
    else:
        sweep.config(config)
        p = sweep.run("--command", cmd, "--no-live", trainer=False)
    no_traceback(p)
    assert p.returncode == 2, p.stdout + p.stderr


BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
method: random
metric: {name: loss}
parameters: {x: {values: *i}}
"""


@pytest.mark.parametrize("case", ["dev_zero", "alias_bomb", "alias_loop", "huge_categorical", "huge_n_trials"])
def test_inputs_that_would_read_or_check_without_end_are_refused_or_linear(sweep, case):
    """--sweep-file /dev/zero (read without limit: MemoryError), an 872-byte YAML alias bomb (never finished),
    a categorical of 50,000 choices (its duplicate check was pairwise: --dry-run hung), --n-trials 10**12 (the
    config's n_trials is refused above 100,000): each is one line and exit 2, or (the categorical) runs."""
    sweep.gpus.set(count=1)
    if case == "dev_zero":
        args = ["--sweep-file", "/dev/zero"]
    elif case == "alias_bomb":
        (sweep.dir / "bomb.yaml").write_text(BOMB)
        args = ["--sweep-file", "bomb.yaml"]
    elif case == "alias_loop":  # from an adversarial pass: a list that holds itself; the check of its values
        (sweep.dir / "loop.yaml").write_text("a: &a [1, *a]\n")  # walked it for ever
        args = ["--sweep-file", "loop.yaml"]
    elif case == "huge_categorical":
        sweep.config({"search": {"params": {"x": {"type": "categorical", "choices": list(range(50_000))}},
                                 "metric": "loss", "n_trials": 3}})
        args = ["--dry-run"]
    else:
        args = ["--search", "random", "--metric", "loss", "--n-trials", "1000000000000", "x=interval(0, 1)"]
    p = sweep.run(*args, "--no-live", timeout=60)
    no_traceback(p)
    if case == "huge_categorical":
        assert p.returncode == 0 and "one of 0, 1, 2" in p.stdout, p.stdout[-500:] + p.stderr
        return
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert {"dev_zero": "larger than 16 MB", "alias_bomb": "aliases expand to more than",
            "alias_loop": "loop.yaml: an alias stands inside the value it names (&a [1, *a]): a value without end",
            "huge_n_trials": "at most 100,000 trials"}[case] in p.stderr, p.stderr


# -- no Optuna ---------------------------------------------------------------------------------------------------

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


def test_a_pruner_from_the_command_line_has_a_warm_up_and_startup_trials(sweep):
    """issue 25: `--pruner median` with Optuna's defaults (no warm-up) killed 6 of 16 trials at their first
    report, 0.7 s in, one of them a run that ended better than the median. A pruner named on the command line
    judges no run's first report and waits for 4 finished trials; --dry-run prints every setting."""
    sweep.gpus.set(count=1)
    body = ("late = args.get('late') == '1'\n"
            "for s in range(3):\n"
            "    print(f'step={s} loss={(10.0 if s == 0 else 0.1) if late else 1.0}', flush=True)\n"
            "    time.sleep(0.05)\n")
    runs = [{"k": k} for k in range(5)] + [{"k": 5, "late": 1}]
    sweep.config(runs)
    command = script(sweep, "late.py", body)
    p = sweep.run("--command", command, "--pruner", "median", "--metric", "loss", "--dry-run", trainer=False)
    assert "MedianPruner(n_startup_trials=4, n_warmup_steps=0" in p.stdout + p.stderr, p.stdout + p.stderr
    p = sweep.run("--command", command, "--pruner", "median", "--metric", "loss", "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    late = next(r for r in sweep.results() if r["hyperparams"].get("late") == 1)
    assert late["state"] == "complete" and late["metrics"]["loss"] == 0.1


WARM = "import math\nprint(f\"loss={(math.log10(float(args['lr'])) + 3) ** 2 + 0.1 * int(args['layers'])}\")\n"


def test_warm_start_seeds_a_new_study_with_an_earlier_sweeps_trials_in_its_space(sweep):
    """issue 25: --warm-start DIR takes the complete trials of an earlier search whose values fall in this space
    (and ranked by the same metric), says what it took and left; they guide the sampler, but count in neither
    the budget nor the results."""
    sweep.gpus.set(count=1)
    command = script(sweep, "w.py", WARM)
    space = ["lr=tag(log,interval(1e-5,1e-1))", "layers=range(1,6)"]
    p = sweep.run("--command", command, "--search", "random", "--n-trials", "10", "--metric", "loss", "--no-live",
                  "--output-dir", "first", *space, trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    inside = sum(1e-4 <= r["hyperparams"]["lr"] <= 1e-2 for r in sweep.results())
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "4", "--metric", "loss", "--no-live",
                  "--output-dir", "second", "--output-file", "second.json", "--warm-start", "first",
                  "lr=tag(log,interval(1e-4,1e-2))", "layers=range(1,6)", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"warm start: {inside} of 10 complete trial(s) of first/study.log taken" in p.stdout
    assert f"({10 - inside} left: {10 - inside} with lr outside this space)" in p.stdout or inside == 10
    assert len(sweep.results("second.json")) == 4 and "4/4 trials" in p.stdout
    study = load_study(sweep.dir / "second")
    assert sum("warm_start" in t.user_attrs for t in study.trials) == inside
    # resumed with more trials: the study keeps what it took, and says the flag is not applied again (an adversarial
    # pass: it was ignored without a word)
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "5", "--metric", "loss", "--no-live",
                  "--output-dir", "second", "--output-file", "second.json", "--warm-start", "first",
                  "lr=tag(log,interval(1e-4,1e-2))", "layers=range(1,6)", trainer=False)
    assert p.returncode == 0 and "--warm-start first: not applied: second/study.log resumes" in p.stdout, p.stdout
    assert sum("warm_start" in t.user_attrs for t in load_study(sweep.dir / "second").trials) == inside
    # a fixed value set in only one of the searches differs too (an adversarial pass: the note named only keys
    # both set)
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "1", "--metric", "loss", "--no-live",
                  "--output-dir", "third", "--output-file", "third.json", "--warm-start", "first",
                  "lr=tag(log,interval(1e-4,1e-2))", "layers=range(1,6)", "epochs=3", trainer=False)
    assert p.returncode == 0 and "; note: its fixed values differ in epochs" in p.stdout, p.stdout


def test_the_plots_of_a_warm_started_search_leave_the_warm_trials_out(sweep, monkeypatch):
    """An adversarial pass: report --plots drew the trials --warm-start took as the search's own: its history
    showed a best value the search never reached, and the importances were fitted on them."""
    pytest.importorskip("matplotlib")
    from optuna.visualization import matplotlib as vis

    from train_sweep_extras.plots import study_plots

    command, space = earlier_search(sweep, 6)
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "2", "--metric", "loss", "--no-live",
                  "--output-dir", "second", "--output-file", "second.json", "--warm-start", "first", *space,
                  trainer=False)
    assert p.returncode == 0 and "warm start: 6 of 6" in p.stdout, p.stdout
    drawn = []
    real = vis.plot_optimization_history
    monkeypatch.setattr(vis, "plot_optimization_history", lambda study: drawn.append(study.trials) or real(study))
    study_plots(sweep.dir / "plots", sweep.dir / "second" / "study.log", prefixed=False)
    assert [len(trials) for trials in drawn] == [2], drawn
    assert not any("warm_start" in t.user_attrs for t in drawn[0])


def earlier_search(sweep, trials: int) -> tuple[str, list[str]]:
    """A finished random search in first/ to warm-start from: its command and space."""
    sweep.gpus.set(count=1)
    command = script(sweep, "w.py", WARM)
    space = ["lr=tag(log,interval(1e-5,1e-1))", "layers=range(1,6)"]
    p = sweep.run("--command", command, "--search", "random", "--n-trials", str(trials), "--metric", "loss",
                  "--no-live", "--output-dir", "first", *space, trainer=False)
    assert p.returncode == 0
    return command, space


@pytest.mark.parametrize("case, error", [
    ("no_study", "--warm-start empty: no study.log there: pass the output folder of an earlier search"),
    ("other_metric", "--warm-start first: its search ranked by ['loss'] (['min']); this one by ['acc'] (['max'])"),
    ("no_search", "--warm-start is for a search"),
])
def test_a_warm_start_that_cannot_be_is_one_line_before_anything_runs(sweep, case, error):
    command, space = earlier_search(sweep, 3)
    (sweep.dir / "empty").mkdir()
    args = {"no_study": ["--search", "tpe", "--n-trials", "2", "--metric", "loss", "--warm-start", "empty", *space],
            "other_metric": ["--search", "tpe", "--n-trials", "2", "--metric", "acc", "--mode", "max",
                             "--warm-start", "first", *space],
            "no_search": ["--metric", "loss", "--warm-start", "first", "lr=1,2", "layers=1"]}[case]
    p = sweep.run("--command", command, "--no-live", "--output-dir", "second", "--output-file", "second.json", *args,
                  trainer=False)
    assert p.returncode == 2 and error in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (sweep.dir / "second.json").exists() and not (sweep.dir / "second" / "study.log").exists()


@pytest.mark.parametrize("case", ["itself", "other_mode", "a_pruned_list", "empty"])
def test_a_warm_start_with_rerun_is_checked_before_anything_is_set_aside(sweep, case):
    """An adversarial pass: '--rerun --warm-start DIR' set the sweep's study, journal and trials aside, then refused
    the warm start (from the folder --rerun had just emptied, or ranked the other way): exit 2 after the damage,
    and the plain command then started a fresh study. A warm start from a list run with a pruner said 'its
    search ranked by None'; --warm-start '' was taken for none. Each is one line now, before anything moves."""
    command, space = earlier_search(sweep, 2)
    p = sweep.run("--command", command, "--metric", "loss", "--pruner", "median", "--no-live", "--output-dir",
                  "pruned", "--output-file", "pruned.json", "lr=1e-3,1e-2", "layers=1", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    p = sweep.run("--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live",
                  "--output-dir", "other", "--output-file", "other.json", *space, trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    before = sorted(f.name for f in (sweep.dir / "first").iterdir())
    warm, mode, error = {
        "itself": ("first", "min", "--warm-start first with --rerun: --rerun sets this folder's study aside"),
        "other_mode": ("other", "max", "--warm-start other: its search ranked by ['loss'] (['min']); this one by "
                       "['loss'] (['max'])"),
        "a_pruned_list": ("pruned", "min", "--warm-start pruned: no search ran there (its study judged a list's runs"),
        "empty": ("", "min", "--warm-start '': give the output folder of an earlier search")}[case]
    p = sweep.run("--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--mode", mode,
                  "--no-live", "--output-dir", "first", "--rerun", "--warm-start", warm, *space, trainer=False)
    check_refused(p, error)
    assert sorted(f.name for f in (sweep.dir / "first").iterdir()) == before, "something was set aside"


@pytest.mark.parametrize("damage", ["null", "[1]", "7", "base_a_list"])
def test_a_warm_start_from_a_study_whose_search_record_is_damaged_is_one_line(sweep, damage):
    """The earlier study's record of its search (a JSON object in Optuna's journal) read as null, a list or a
    number, or with a base that is a list: AttributeError or TypeError tracebacks."""
    command, space = earlier_search(sweep, 2)
    study = sweep.dir / "first" / "study.log"
    ops = [json.loads(line) for line in study.read_text().splitlines()]
    for op in ops:
        if (op.get("user_attr") or {}).get("search"):
            op["user_attr"]["search"] = json.dumps({**json.loads(op["user_attr"]["search"]), "base": [[1]]}) \
                if damage == "base_a_list" else damage
    study.write_text("".join(json.dumps(op) + "\n" for op in ops))
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "2", "--metric", "loss", "--no-live",
                  "--output-dir", "second", "--output-file", "second.json", "--warm-start", "first", *space,
                  trainer=False)
    check_refused(p, "--warm-start first:", "study.log")
    assert not (sweep.dir / "second.json").exists()
    # a new user's pass: refused after the new output folder was made and locked, it left that folder behind
    assert not (sweep.dir / "second").exists()
    p = sweep.run("--command", command, "--search", "tpe", "--n-trials", "2", "--metric", "loss", "--no-live",
                  "--output-dir", "third", "--warm-start", "nowhere", *space, trainer=False)
    check_refused(p, "--warm-start nowhere: no study.log there")
    assert not (sweep.dir / "third").exists()


def test_tpe_models_the_results_once_8_trials_have_finished(sweep):
    """issue 25: TPE's random start-up is 8 trials (Optuna's default 10): with 8 trials at once on YAHPO's LCBench,
    it reached random search's final regret sooner (bench/README.md)."""
    sweep.gpus.set(count=1)
    p = sweep.run("--search", "tpe", "--n-trials", "3", "--metric", "loss", "--dry-run", "x=interval(0,1)")
    assert p.returncode == 0 and "TPESampler(n_startup_trials=8, " in p.stdout, p.stdout + p.stderr


RESUMABLE = """x = float(args['x'])
ckpt = os.path.join(RUN_DIR, 'ckpt.json')
start = 1
if os.environ.get('TRAIN_SWEEP_RESUME') == '1':
    start = json.load(open(ckpt))['step'] + 1
    print(f'resumed from step {start - 1}', flush=True)
for step in range(start, 5):
    time.sleep(0.3)
    json.dump({'step': step}, open(ckpt, 'w'))  # the checkpoint, before the report the pruner judges
    print(f'step={step} loss={x if step == 1 else 1 - x:.4f}', flush=True)
"""


def pausing_grid(command: str, choices: list[float], **pruner) -> dict:
    """A grid over x whose successive halving pauses runs (rungs at steps 1, 2, 4), one trial per choice."""
    return {"command": command,
            "search": {"sampler": "grid", "metric": "loss", "n_trials": len(choices),
                       "pruner": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2,
                                  **pruner, "pause": True},
                       "params": {"x": {"type": "categorical", "choices": choices}}}}


def test_a_paused_run_goes_on_from_its_checkpoint_once_it_ranks_at_its_rung(sweep):
    """issue 25, freeze-thaw: successive halving with 'pause' stops a run at a rung without ending its trial;
    once later trials rank below it there, it goes on from its checkpoint (TRAIN_SWEEP_RESUME=1, its folder)
    instead of being lost or starting over. x=0.6 ranks 3rd of 3 at rung 0 and is paused; three worse runs
    later it is in the top half, goes on from step 1, and becomes the best (1 - x after step 1)."""
    sweep.gpus.set(count=1)
    sweep.config(pausing_grid(script(sweep, "resumable.py", RESUMABLE), [0.5, 0.3, 0.6, 0.9, 0.95, 0.97]))
    p = sweep.run("--no-live", "--max-processes-per-gpu", "1", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = {r["hyperparams"]["x"]: r for r in sweep.results()}
    assert len(sweep.results()) == 6
    late = records[0.6]
    assert late["state"] == "complete" and late["metrics"]["loss"] == pytest.approx(0.4), late
    assert late["attempt"] == 2
    folder = Path(late["run_dir"])
    assert "resumed from step 1" in (folder / "train_stdout.log").read_text()
    assert "step=1 " not in (folder / "train_stdout.log").read_text()  # it went on; it did not start over
    assert "step=1 loss=0.6000" in (folder / "attempt_1" / "train_stdout.log").read_text()
    assert {x: r["state"] for x, r in records.items()} == {0.5: "complete", 0.3: "pruned", 0.6: "complete",
                                                          0.9: "pruned", 0.95: "pruned", 0.97: "pruned"}
    study = load_study(sweep.dir / "outputs")
    assert states(study) == {"COMPLETE": 2, "PRUNED": 4}
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert "successive halving pauses it" in log and "goes on from where it paused" in log
    assert "started over" not in log
    assert "Best (min loss): " in p.stdout and "0.6" in p.stdout.split("Best (min loss): ")[1].splitlines()[0]


def test_the_counts_of_a_pausing_search_never_add_up_to_more_runs_than_it_has(sweep):
    """A run paused at a rung is counted pruned until it goes on: a search whose paused run was about to go on
    also counted it pending, and its event line read [complete 1 | pruned 5 | running 0 | pending 1] for a
    6-point grid (7 runs); an earlier session saw 11 of 10."""
    import re

    sweep.gpus.set(count=1)
    sweep.config(pausing_grid(script(sweep, "resumable.py", RESUMABLE), [0.5, 0.3, 0.6, 0.9, 0.95, 0.97]))
    # (2 a GPU: the run going on waits, first in line, for the last run's memory to show, and was counted again)
    p = sweep.run("--no-live", "--max-processes-per-gpu", "2", trainer=False)
    assert p.returncode == 0 and "goes on from where it paused" in p.stdout, p.stdout + p.stderr
    counts = re.findall(r"\[([a-z]+ \d+(?: \| [a-z]+ \d+)*)\]", p.stdout)
    assert counts, p.stdout
    for line in counts:
        assert sum(int(part.split()[1]) for part in line.split(" | ")) == 6, (line, p.stdout)


def test_a_script_that_starts_over_instead_of_going_on_is_told_once(sweep):
    """A script that ignores TRAIN_SWEEP_RESUME=1 trains a paused run's first steps again each time one goes on:
    that costs time, and nothing said so. Its first report after going on is at a step it had already passed:
    one line in sweep.log names the run and the contract; the sweep goes on as before."""
    sweep.gpus.set(count=1)
    ignores = RESUMABLE.replace("if os.environ.get('TRAIN_SWEEP_RESUME') == '1':", "if False:")
    sweep.config(pausing_grid(script(sweep, "ignores.py", ignores), [0.5, 0.3, 0.6, 0.9, 0.95, 0.97]))
    p = sweep.run("--no-live", "--max-processes-per-gpu", "1", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert log.count("the script started over, not from a checkpoint of that step") == 1, log
    line = next(x for x in log.splitlines() if "started over" in x)
    assert "trial002_x_0.6 reported step 1 after it went on from step" in line and "TRAIN_SWEEP_RESUME=1" in line
    assert {r["hyperparams"]["x"]: r["state"] for r in sweep.results()}[0.6] == "complete"


@pytest.mark.parametrize("case, error", [
    ({"type": "median", "pause": True}, "'pause' is for successive_halving"),
    ({"type": "successive_halving", "pause": "yes"}, "'pause' must be true or false"),
])
def test_a_pause_that_cannot_be_is_one_line(sweep, case, error):
    sweep.gpus.set(count=1)
    sweep.config({"command": "python x.py", "search": {"sampler": "tpe", "metric": "loss", "n_trials": 2,
                                                      "pruner": case,
                                                      "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    check_refused(sweep.run("--no-live"), error)


def test_the_pruner_flag_takes_the_pruners_arguments_and_pause(sweep):
    """issue 25: pausing successive halving, rungs in steps, could only be asked in the config's pruner object;
    `--pruner` took a bare name (argparse's choices). NAME(key=value, ...) takes what the object holds besides
    its type, pause included, and wins over the config's arguments: the same run as the config's goes on from
    its checkpoint."""
    sweep.gpus.set(count=1)
    config = pausing_grid(script(sweep, "resumable.py", RESUMABLE), [0.5, 0.3, 0.6, 0.9, 0.95, 0.97])
    config["search"]["pruner"] = {"type": "successive_halving", "min_resource": 3}
    sweep.config(config)
    flag = "successive_halving(min_resource=1, reduction_factor=2, pause=true)"
    p = sweep.run("--pruner", flag, "--dry-run", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pruner successive_halving: SuccessiveHalvingPruner(min_resource=1, reduction_factor=2" in p.stdout, \
        p.stdout
    assert "pause: a run it stops at a rung goes on from its checkpoint" in p.stdout
    p = sweep.run("--pruner", flag, "--no-live", "--max-processes-per-gpu", "1", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    late = next(r for r in sweep.results() if r["hyperparams"]["x"] == 0.6)
    assert late["state"] == "complete" and late["attempt"] == 2 and late["metrics"]["loss"] == pytest.approx(0.4)
    assert "resumed from step 1" in (Path(late["run_dir"]) / "train_stdout.log").read_text()


@pytest.mark.parametrize("given, shown", [
    ("successive_halving(min_resource=6,pause=true)", "SuccessiveHalvingPruner(min_resource=6, reduction_factor=3,"),
    ("successive_halving(reduction_factor=2)", "SuccessiveHalvingFromANinth(fraction=9, reduction_factor=2,"),
    ("successive_halving(bootstrap_count=1)", "SuccessiveHalvingFromANinth(fraction=9, reduction_factor=3, "
                                              "min_early_stopping_rate=0, bootstrap_count=1)"),  # (a review)
    ("median(n_warmup_steps=5)", "MedianPruner(n_startup_trials=4, n_warmup_steps=5,"),
])
def test_a_pruner_given_some_arguments_gets_train_sweep_s_defaults_for_the_others(sweep, given, shown):
    """A docs review: docs/search.md recommends successive_halving(min_resource=6,pause=true), measured with
    reduction factor 3, and it ran with Optuna's 4; median with only its warm-up got Optuna's 5 start-up trials,
    not the 4 of a bare `median`; successive_halving with only its factor put its first rung at a hundredth."""
    sweep.gpus.set(count=1)
    p = sweep.run("--search", "random", "--n-trials", "9", "--metric", "loss", "--pruner", given, "x=interval(0,1)",
                  "--dry-run")
    assert p.returncode == 0 and shown in p.stdout, p.stdout + p.stderr


def test_the_pruner_flags_arguments_judge_a_lists_runs(sweep):
    """A list with `--pruner NAME(...)`: the flag's arguments, and a run's first report judged as they say (the
    bare name's warm-up of one report is for Optuna's defaults)."""
    sweep.gpus.set(count=1)
    sweep.config([{"k": k} for k in range(3)])
    p = sweep.run("--pruner", "median(n_startup_trials=1,n_warmup_steps=2)", "--metric", "loss", "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pruner median: MedianPruner(n_startup_trials=1, n_warmup_steps=2" in p.stdout, p.stdout
    assert "first report is not judged" not in p.stdout


@pytest.mark.parametrize("flag, search, error", [
    ("medain", True, "--pruner medain: give one of median, percentile"),
    ("median(n_warmup_steps=2", True, "its arguments closed by ')'"),
    ("median(n_warmup_steps)", True, "'n_warmup_steps' is not key=value"),
    ("median(n_warmpu_steps=2)", True, "--pruner median(n_warmpu_steps=2): pruner 'median': "),
    ("median(pause=true)", True, "'pause' is for successive_halving"),
    ("successive_halving(pause=1)", True, "'pause' must be true or false"),
    ("successive_halving(min_resource=0)", True, "--pruner successive_halving(min_resource=0): pruner"),
    ("successive_halving(pause=true)", False, "pause is for a search"),
    ("medain", False, "--pruner medain: give one of median"),  # (not "needs --metric" first: a list has none here)
    ("successive_halving(reduction_factor=2.5)", True, "'reduction_factor' must be a whole number"),
    ("median(n_warmup_steps=NaN,n_startup_trials=1)", True, "'n_warmup_steps' must be a whole number"),
    ("percentile(percentile=Infinity)", True, "'percentile' must be a finite number"),
    ("hyperband(min_resource=10,max_resource=5)", True, "'min_resource' 10 is above 'max_resource' 5"),
    ("successive_halving(min_resource=fast)", True, "'min_resource' must be a whole number or \"auto\""),
])
def test_a_pruner_flag_that_cannot_be_is_one_line(sweep, flag, search, error):
    sweep.gpus.set(count=1)
    if search:
        sweep.config({"command": "python x.py", "search": {"sampler": "tpe", "metric": "loss", "n_trials": 2,
                                                          "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    else:
        sweep.config([{"x": 1}])
    metric = ("--metric", "loss") if "medain" not in flag else ()
    check_refused(sweep.run("--no-live", "--pruner", flag, *metric), error)


def test_a_pruner_argument_optuna_would_misread_is_refused_or_made_whole_in_the_config_too(sweep):
    """From the review: a reduction factor of 2.5 passed --dry-run and crashed the sweep at the first rung with a
    traceback (Optuna indexes its rungs by it), and a min_resource of 10.0 (1e1) was silently Optuna's "auto"
    (a hundredth of the steps) while --dry-run said 10.0. A whole float is made whole; any other is refused."""
    sweep.gpus.set(count=1)
    space = {"x": {"type": "float", "low": 0, "high": 1}}
    sweep.config({"command": "python x.py", "search": {"sampler": "tpe", "metric": "loss", "n_trials": 2,
                                                      "pruner": {"type": "successive_halving", "reduction_factor": 2.5},
                                                      "params": space}})
    check_refused(sweep.run("--no-live"), "train_sweep_config.json: 'search': 'pruner' 'reduction_factor' must be a "
                                          "whole number")
    sweep.config({"command": "python x.py", "search": {"sampler": "tpe", "metric": "loss", "n_trials": 2,
                                                      "params": space}})
    p = sweep.run("--dry-run", "--pruner", "successive_halving(min_resource=1e1)")
    assert p.returncode == 0 and "SuccessiveHalvingPruner(min_resource=10, " in p.stdout, p.stdout + p.stderr
    p = sweep.run("--dry-run", "--pruner", "percentile(n_startup_trials=2)")
    line = next(x for x in p.stdout.splitlines() if "PercentilePruner(" in x)
    assert "n_startup_trials=2," in line and "percentile=25.0)" in line, line  # (it was left out: Optuna has no default)


def test_the_pruner_flags_arguments_are_all_of_them(sweep):
    """From the review: `--pruner 'successive_halving(pause=false)'` kept the config's pause (and its arguments):
    the flag's form with parentheses is exactly what it says, so it switches pause off (and --top-k is then
    allowed); a refusal caused by the flag names the flag, not the config."""
    sweep.gpus.set(count=1)
    sweep.config(pausing_grid("python x.py", [0.5, 0.3]))
    p = sweep.run("--dry-run", "--pruner", "successive_halving(pause=false)", "--top-k", "1", "--checkpoint-glob", "*.pt")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pause:" not in p.stdout and "min_resource=1," not in p.stdout, p.stdout
    config = pausing_grid("python x.py", [0.5, 0.3])
    del config["search"]["pruner"]
    sweep.config(config)
    check_refused(sweep.run("--no-live", "--pruner", "successive_halving(pause=true)", "--top-k", "1",
                            "--checkpoint-glob", "*.pt"),
                  "--pruner successive_halving(pause=true): 'pruner' 'pause' keeps", "--top-k deletes")


def test_pause_with_top_k_is_refused(sweep):
    sweep.gpus.set(count=1)
    sweep.config({"command": "python x.py", "search": {
        "sampler": "tpe", "metric": "loss", "n_trials": 2, "params": {"x": {"type": "float", "low": 0, "high": 1}},
        "pruner": {"type": "successive_halving", "pause": True}}})
    check_refused(sweep.run("--no-live", "--top-k", "2"), "--top-k deletes a pruned run's checkpoint")


def test_a_paused_run_does_not_go_on_while_the_pruner_is_still_bootstrapping(sweep):
    """From the review: with bootstrap_count 2 the pruner stops every run until more than 2 reached a rung; a
    paused run went on at once (fewer than eta had reached it: "the best of them") and was paused again at
    every rung, three attempts for one run."""
    sweep.gpus.set(count=1)
    # 1 s a step: a pause must land before the run's end (with 0.3 s, once in a suite run on 0.6 of a CPU, 0.3 had
    # one attempt: most likely it ended before its pause did)
    slower = RESUMABLE.replace("time.sleep(0.3)", "time.sleep(1.0)")
    sweep.config(pausing_grid(script(sweep, "resumable.py", slower), [0.5, 0.3, 0.6], bootstrap_count=2))
    p = sweep.run("--no-live", "--max-processes-per-gpu", "1", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    attempts = {r["hyperparams"]["x"]: r["attempt"] for r in sweep.results()}
    assert attempts == {0.5: 1, 0.3: 2, 0.6: 1}, p.stdout  # 0.3 goes on once 3 reached rung 0, not before
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert log.index("start       trial002") < log.index("goes on from where it paused")


def test_a_run_that_went_on_and_waits_again_is_once_in_the_partial_file_and_pruned(sweep):
    """From a second review: a paused run went on, failed and waited for its retry when Ctrl+C came; the .partial
    file held it twice (its pause, and pending) and its trial was asked again as a new one. Its pause is its
    end: once in the files, its trial pruned, nothing asked again."""
    fails = RESUMABLE.replace("    print(f'resumed from step {start - 1}', flush=True)\n",
                              "    print(f'resumed from step {start - 1}', flush=True)\n"
                              "    open(os.path.join(os.path.dirname(os.path.dirname(RUN_DIR)), 'failed'), 'a')\n"
                              "    sys.exit(1)\n")
    sweep.gpus.set(count=1)
    sweep.config(pausing_grid(script(sweep, "resumable.py", fails),
                              [0.5, 0.3, 0.6, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995]))
    p = sweep.start("--no-live", "--max-processes-per-gpu", "1", "--retries", "1", trainer=False)
    deadline = time.monotonic() + 30
    while not (sweep.dir / "failed").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (sweep.dir / "failed").exists(), p.communicate()
    time.sleep(0.8)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    partial = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
    assert len({r["index"] for r in partial}) == len(partial), [(r["index"], r["state"]) for r in partial]
    study = load_study(sweep.dir / "outputs")
    went_on = next(r for r in partial if r["hyperparams"]["x"] == 0.6)
    assert study.trials[went_on["trial"]].state.name == "PRUNED"
    assert went_on["state"] == "pruned", went_on["state"]  # (a review: its record said failed, its trial pruned)
    again = [t for t in study.trials if t.state.name == "WAITING" and t.system_attrs["fixed_params"]["x"] == 0.6]
    assert not again  # not asked again (the grid's points not yet run wait, as they should)
