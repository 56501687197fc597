"""The search's study across sweeps, through the real CLI: resuming a grid or a search after SIGINT or kill -9,
requeued and retried trials, a deleted, emptied, cut or damaged study.log, refusals of values Optuna would
mistake, and inputs that would read or check without end. Each test failed on the code before its fix."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from conftest import interrupt
from test_search import script, states

optuna = pytest.importorskip("optuna")
yaml = pytest.importorskip("yaml")

SLOW_QUADRATIC = ("x = float(args['x']); lr = float(args.get('lr', 0))\n"
                  "time.sleep(float(args.get('sleep', 0)))\n"
                  "print(f\"loss={(x - 0.3) ** 2 + lr}\", flush=True)\n")


def no_traceback(p) -> None:
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr


def points(records, *keys):
    return Counter(tuple(r["hyperparams"][k] for k in keys) for r in records if r["state"] == "complete")


# -- grid sampler and resume --------------------------------------------------------------------------

def test_grid_resumed_with_a_larger_budget_runs_each_point_once(sweep):
    """open_study reseeds the sampler with seed + len(trials); GridSampler shuffles its grid with that seed, so the
    earlier trials' grid ids name other points: points run twice, others never."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    space = ("x=0.1,0.2,0.3", "lr=0.01,0.1")
    p = sweep.run("--command", cmd, "--search", "grid", "--n-trials", "3", "--metric", "loss", "--no-live", *space,
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    p = sweep.run("--command", cmd, "--search", "grid", "--n-trials", "6", "--metric", "loss", "--no-live", *space,
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert points(sweep.results(), "x", "lr") == Counter({(x, lr): 1 for x in (0.1, 0.2, 0.3) for lr in (0.01, 0.1)})


def test_grid_resumed_after_sigint_finishes_without_a_traceback(sweep):
    """A requeued trial is enqueued with fixed params: the grid sampler gives it no grid_id, and its after_trial
    raises KeyError('grid_id') when one grid point is left (SearchSource._tell_ended catches RuntimeError only)."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    space = ("x=0.1,0.2,0.3", "lr=0.01,0.1")
    proc = sweep.start("--command", cmd, "--search", "grid", "--metric", "loss", "--no-live",
                       "--max-processes-per-gpu", "2", "sleep=0.5", *space, trainer=False)
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("trial00[23]*"))) == 2, timeout=30,
                   what="the third and fourth trials")
    interrupt(proc)
    proc.communicate(timeout=30)
    p = sweep.run("--command", cmd, "--search", "grid", "--metric", "loss", "--no-live", "--max-processes-per-gpu", "2",
                  "sleep=0.5", *space, trainer=False)  # the same command (another sleep= would be another search)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert points(sweep.results(), "x", "lr") == Counter({(x, lr): 1 for x in (0.1, 0.2, 0.3) for lr in (0.01, 0.1)})


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


# -- trials whose run was requeued (out of memory, --retries) ------------------------------------------------

def test_an_oom_requeued_trial_running_at_kill_9_is_asked_again_not_lost(sweep):
    """settle_orphans and earlier_trials take the journal's last record: the requeued first attempt's `oom`. The
    trial is told failed and the results keep it as a final `oom` run (exit 1), though it never ended."""
    sweep.gpus.set(count=1)
    marker, fast = sweep.dir / "oomed", sweep.dir / "fast"
    body = (f"if not os.path.exists({str(marker)!r}):\n    open({str(marker)!r}, 'w').close()\n"
            "    print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB', file=sys.stderr)\n"
            "    sys.exit(1)\n"
            f"open(os.path.join(RUN_DIR, 'second'), 'w').close()\n"
            f"time.sleep(0 if os.path.exists({str(fast)!r}) else 60)\n" + SLOW_QUADRATIC)
    cmd = script(sweep, "oom.py", body)
    args = ("--command", cmd, "--search", "random", "--n-trials", "1", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    proc = sweep.start(*args, trainer=False)
    sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/second")), timeout=30, what="the second attempt")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(1)  # the guardian ends the run
    fast.touch()
    p = sweep.run(*args, trainer=False)
    no_traceback(p)
    assert [r["state"] for r in sweep.results()] == ["complete"], sweep.results()
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_trial_waiting_for_its_retry_at_sigint_is_not_a_failed_result_on_resume(sweep):
    """close() requeues the open trial (asked again), but earlier_trials restores its run from the journal's last
    record (`failed`, attempt 1): the results hold a failed run for a trial that ran again, and exit is 1."""
    sweep.gpus.set(count=1)
    body = ("first = not os.path.exists(os.path.join(RUN_DIR, 'attempt_1'))\n"
            "if first:\n    sys.exit(2)\n"
            "open(os.path.join(RUN_DIR, 'second'), 'w').close()\n"
            "time.sleep(float(os.environ.get('HOLD', '0')))\n" + SLOW_QUADRATIC)
    cmd = script(sweep, "f.py", body)
    args = ("--command", cmd, "--search", "random", "--n-trials", "2", "--retries", "1", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    proc = sweep.start(*args, trainer=False, HOLD="30")  # both trials fail once; the first retry runs, the second waits
    sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/second")), timeout=30, what="the first retry")
    interrupt(proc)
    proc.communicate(timeout=30)
    p = sweep.run(*args, trainer=False)
    no_traceback(p)
    assert "failed" not in {r["state"] for r in sweep.results()}, [(r["model_name"], r["state"]) for r in sweep.results()]
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


# -- categorical choices, the study and the journal ------------------------------------------------------------

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


def test_a_deleted_study_with_the_journal_kept_is_refused(sweep):
    """A fresh study would number its trials from 0 again, over the journal's trials of the same numbers (the
    results file keys records by trial): refused, pointing at --rerun, which keeps the old trials aside."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    assert sweep.run(*args, trainer=False).returncode == 0
    (sweep.dir / "outputs" / "study.log").unlink()
    p = sweep.run(*args, trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "study.log is missing" in p.stderr and "--rerun" in p.stderr
    assert len(sweep.results()) == 2
    p = sweep.run(*args, "--rerun", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert sorted(r["trial"] for r in records) == [0, 1] and (sweep.dir / "outputs" / "journal.jsonl~1").exists()


def test_a_target_reached_stays_reached_on_resume(sweep):
    """The W&B metric.target is checked only when a run ends: the same command again starts new trials although
    the study's best already reached it."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    path = sweep.dir / "s.yaml"
    path.write_text(yaml.safe_dump({"method": "random", "metric": {"name": "loss", "goal": "minimize", "target": 10},
                                    "run_cap": 20, "parameters": {"x": {"min": 0.0, "max": 1.0}}}))
    assert sweep.run("--command", cmd, "--sweep-file", str(path), "--no-live", trainer=False).returncode == 0
    assert len(sweep.results()) == 1
    p = sweep.run("--command", cmd, "--sweep-file", str(path), "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(sweep.results()) == 1, [r["model_name"] for r in sweep.results()]


def test_a_complete_run_without_its_metric_found_at_resume_is_told_failed_not_asked_again(tmp_path):
    """settle_orphans: a journal record `complete` whose metric is missing falls into the `else` branch: the trial
    is requeued and asked again, while earlier_trials puts the run in the results as complete: it runs twice."""
    from train_sweep_extras.search import import_optuna, settle_orphans

    optuna_ = import_optuna()
    from optuna.trial import TrialState

    study = optuna_.create_study()
    trial = study.ask({"x": optuna_.distributions.FloatDistribution(0, 1)})
    journal = {"trial000": [{"trial": trial.number, "state": "complete", "metrics": {"loss": None}}]}
    settle_orphans(study, True, journal, ("loss",), lambda line: None)
    assert study.trials[0].state == TrialState.FAIL
    assert states(study) == {"FAIL": 1}, states(study)  # not a WAITING copy to run again


# -- one-line errors, never a traceback ----------------------------------------------------------------------

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


def test_a_resumed_search_near_the_top_seed_does_not_crash(sweep):
    """open_study seeds the sampler with seed + trials so far: past 2**32 - 1 numpy raises (a traceback)."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "tpe", "--seed", str(2 ** 32 - 1), "--n-trials", "2", "--metric", "loss",
            "--no-live", "x=interval(0, 1)")
    assert sweep.run(*args, "--n-trials", "1", trainer=False).returncode == 0
    p = sweep.run(*args, trainer=False)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr


# -- objectives and report -----------------------------------------------------------------------------------

def test_a_metric_list_without_modes_is_not_silently_one_objective(sweep):
    """search.metric: [loss, acc] with no mode runs a single-objective search on loss (mode 'min' alone)."""
    sweep.gpus.set(count=1)
    sweep.config({"search": {"n_trials": 2, "metric": ["loss", "acc"],
                             "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    p = sweep.run("--command", script(sweep, "m.py", "print('loss=1 acc=2', flush=True)\n"), "--dry-run", trainer=False)
    out = " ".join(p.stdout.split())
    assert p.returncode == 2 or "acc" in out.split("Search:")[1].split("Placement")[0], out


def test_report_of_a_max_search_names_the_max_as_best(sweep):
    """report defaults to --mode min; for a search (its direction is in the study and sweep.json) the 'best' is
    the worst run."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "a.py", "print(f\"acc={float(args['x'])}\", flush=True)\n")
    p = sweep.run("--command", cmd, "--search", "grid", "--metric", "acc", "--mode", "max", "--no-live", "x=0.1,0.9",
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    r = sweep.run("report", "train_sweep_results.json", trainer=False)
    best = [line for line in r.stdout.splitlines() if line.startswith("Best")]
    assert best and "x_0.9" in best[0], best


# -- the --pruner flag over a config's or sweep file's pruner ----------------------------------------------------

@pytest.mark.parametrize("flag", ["none", "hyperband"])
def test_the_pruner_flag_wins_with_its_default_arguments(sweep, flag):
    """README: `--pruner` wins (with the default arguments). open_study/main pass the config's pruner arguments
    (search.pruner_args) to the flag's pruner: `--pruner none` cannot even switch a config's median pruner off."""
    sweep.gpus.set(count=1)
    sweep.config({"search": {"n_trials": 2, "metric": "loss", "pruner": {"type": "median", "n_warmup_steps": 5},
                             "params": {"x": {"type": "float", "low": 0, "high": 1}}}})
    p = sweep.run("--pruner", flag, "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr


# -- W&B keys that have no mapping are errors, not ignored -----------------------------------------------------

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


@pytest.mark.parametrize("damage", ["emptied", "half_cut"])
def test_an_emptied_or_cut_study_beside_a_journal_of_trials_is_refused(sweep, damage):
    """study.log emptied, or cut to its first trials, beside a journal of 4 trials: refused like a missing one
    (before: a fresh study asked the earlier trials' values again under the same seed, and the rewritten
    results file dropped the earlier trials' records); nothing is written, no result is lost."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "random", "--n-trials", "4", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    assert sweep.run(*args, trainer=False).returncode == 0
    study = sweep.dir / "outputs" / "study.log"
    lines = study.read_bytes().splitlines(keepends=True)
    if damage == "emptied":
        study.write_bytes(b"")
    else:  # the study as it was after its second trial was asked
        asked = [i for i, line in enumerate(lines) if b'"op_code": 4' in line or b'"op_code":4' in line]
        study.write_bytes(b"".join(lines[: asked[1] + 1]))
    before = sweep.results()
    p = sweep.run(*args, "--n-trials", "6", trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "study.log" in p.stderr and "--rerun" in p.stderr and "trial" in p.stderr, p.stderr
    assert sweep.results() == before and len(before) == 4


@pytest.mark.parametrize("garbage", [b"this is not json\n", b'{"op_code": 99, "worker_id": "x"}\n', b"[1, 2]\n"])
def test_a_damaged_line_in_the_study_is_one_line_not_a_traceback(sweep, garbage):
    """A garbage line, or a JSON line that is no Optuna operation, in study.log: one line naming the file and
    --rerun, exit 2 (before: JSONDecodeError or 'AssertionError: Should not reach.')."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    assert sweep.run(*args, trainer=False).returncode == 0
    study = sweep.dir / "outputs" / "study.log"
    lines = study.read_bytes().splitlines(keepends=True)
    study.write_bytes(b"".join(lines[:3]) + garbage + b"".join(lines[3:]))
    p = sweep.run(*args, "--n-trials", "3", trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "study.log" in p.stderr and "--rerun" in p.stderr, p.stderr
    assert len(sweep.results()) == 2


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


@pytest.mark.parametrize("case", ["dev_zero", "alias_bomb", "huge_categorical", "huge_n_trials"])
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
            "huge_n_trials": "at most 100,000 trials"}[case] in p.stderr, p.stderr
