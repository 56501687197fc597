"""Fail fast (issue 15): the first runs all failing within seconds with the same error is a broken setup; the
sweep stops launching and names the error and the log, instead of failing forty runs."""

from __future__ import annotations

import json

from train_sweep import FAIL_FAST_S, broken_setup

BAD = "import sys\nsys.exit(\"error: unknown hyperparameter 'lrr'\")\n"


def bad_script(sweep, body: str = BAD) -> str:
    path = sweep.dir / "bad.py"
    path.write_text(body)
    return f"python {path}"


def test_broken_setup_needs_three_runs_with_one_error():
    assert broken_setup([("a", "boom", "a.log"), ("b", "boom", "b.log")]) is None
    why = broken_setup([("a", "boom", "a.log"), ("b", "boom", "b.log"), ("c", "boom", "c.log")])
    assert why is not None and "boom" in why and "a.log" in why and "--no-fail-fast" in why
    assert broken_setup([("a", "boom", "a.log"), ("b", "bang", "b.log"), ("c", "boom", "c.log")]) is None
    assert broken_setup([("a", "boom", "a.log"), ("a", "boom", "a.log"), ("a", "boom", "a.log")]) is None  # retries


def test_a_broken_setup_stops_the_sweep_early(sweep):
    sweep.gpus.set(count=1)
    p = sweep.run("--no-live", "--command", bad_script(sweep), "lrr=1,2,3,4,5,6,7,8", trainer=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "the first 3 runs all failed within" in p.stdout and "unknown hyperparameter 'lrr'" in p.stdout
    assert "train_stderr.log" in p.stdout and "Stopped early:" in p.stdout
    partial = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
    states = [r["state"] for r in partial]
    assert states[:3] == ["failed"] * 3 and states.count("pending") >= 4, states
    assert "8 run(s): 3 failed, 5 not started" in p.stdout
    fixed = sweep.dir / "bad.py"
    fixed.write_text("print('fine')\n")  # fixed: the same command runs them all
    p = sweep.run("--no-live", "--command", f"python {fixed}", "lrr=1,2,3,4,5,6,7,8", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["state"] for r in sweep.results()] == ["complete"] * 8


def test_a_failed_run_whose_retry_never_started_is_failed_in_the_results(sweep):
    """An adversarial pass: with --retries, fail fast stopped the sweep while the failed runs waited for their
    retries, and they vanished: the summary said "8 run(s): 8 not started", the results file was empty and
    .partial called them pending (never started). A retry that never started leaves its run failed."""
    sweep.gpus.set(count=1)
    p = sweep.run("--no-live", "--retries", "2", "--command", bad_script(sweep), "lrr=1,2,3,4,5,6,7,8", trainer=False)
    assert p.returncode == 1 and "Stopped early:" in p.stdout, p.stdout + p.stderr
    assert "8 run(s): 3 failed, 5 not started" in p.stdout, p.stdout
    assert [(r["model_name"], r["state"], r["returncode"]) for r in sweep.results()] == \
        [(f"lrr_{i}", "failed", 1) for i in (1, 2, 3)]
    partial = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
    assert [r["state"] for r in partial] == ["failed"] * 3 + ["pending"] * 5
    assert all("requeued" not in r for r in partial)
    status = sweep.run("status", trainer=False).stdout  # (a review: it said 'stopped with 8 run(s) not started')
    assert "8 run(s): 3 failed, 5 not started" in status, status
    fixed = sweep.dir / "bad.py"
    fixed.write_text("print('fine')\n")  # fixed: the same command runs them all, the failed ones too
    p = sweep.run("--no-live", "--retries", "2", "--command", f"python {fixed}", "lrr=1,2,3,4,5,6,7,8",
                  trainer=False)
    assert p.returncode == 0 and [r["state"] for r in sweep.results()] == ["complete"] * 8, p.stdout + p.stderr


def test_no_fail_fast_keeps_launching(sweep):
    sweep.gpus.set(count=1)
    p = sweep.run("--no-live", "--no-fail-fast", "--command", bad_script(sweep), "lrr=1,2,3,4,5", trainer=False)
    assert p.returncode == 1 and "Stopped early" not in p.stdout
    assert [r["state"] for r in sweep.results()] == ["failed"] * 5


def test_different_errors_or_a_complete_run_are_not_a_broken_setup(sweep):
    sweep.gpus.set(count=1)
    varied = "import sys\nsys.exit('error ' + sys.argv[1])\n"
    p = sweep.run("--no-live", "--command", bad_script(sweep, varied), "x=1,2,3,4,5", trainer=False)
    assert p.returncode == 1 and "Stopped early" not in p.stdout
    assert len(sweep.results()) == 5
    first_ok = "import sys\nif sys.argv[1] != 'x=1': sys.exit('boom')\n"
    p = sweep.run("--no-live", "--rerun", "--command", bad_script(sweep, first_ok), "x=1,2,3,4,5", trainer=False)
    assert p.returncode == 1 and "Stopped early" not in p.stdout
    assert [r["state"] for r in sweep.results()] == ["complete"] + ["failed"] * 4


def test_slow_failures_are_the_runs_own(sweep):
    assert FAIL_FAST_S <= 30  # "within seconds"
    sweep.gpus.set(count=4)  # all four at once (on one GPU, each start waited for the last one's memory reading)
    slow = f"import sys, time\ntime.sleep({FAIL_FAST_S + 0.5})\nsys.exit('boom')\n"
    p = sweep.run("--no-live", "--command", bad_script(sweep, slow), "x=1,2,3,4",
                  trainer=False, timeout=90)
    assert p.returncode == 1 and "Stopped early" not in p.stdout
    assert [r["state"] for r in sweep.results()] == ["failed"] * 4


def test_a_metric_no_run_reports_stops_the_sweep_and_names_what_they_did_report(sweep):
    """issue 25: a script printing val_loss, run with --metric val_acc: a 12-trial search ran to the end, told
    Optuna 12 failures and exited 0, the last line naming no metric the runs printed. Now the first 3 complete
    runs without the metric stop the launches (exit 1), naming what they reported and the likely flag."""
    sweep.gpus.set(count=1)
    body = "print('step=1 val_loss=0.9 train_loss=1.2', flush=True)\nprint('step=2 val_loss=0.5 train_loss=0.8')\n"
    command = f"python {sweep.dir / 'train.py'}"
    (sweep.dir / "train.py").write_text(body)
    p = sweep.run("--no-live", "--command", command, "--metric", "val_acc", "x=1,2,3,4,5,6,7,8", trainer=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "the first 3 complete runs reported no val_acc (they reported val_loss, train_loss" in p.stdout
    assert "run again with --metric val_loss" in p.stdout and "Stopped early:" in p.stdout
    assert "8 run(s): 3 complete, 5 not started" in p.stdout
    p = sweep.run("--no-live", "--command", command, "--metric", "val_loss", "x=1,2,3,4,5,6,7,8", trainer=False)
    assert p.returncode == 0 and "8 complete" in p.stdout  # fixed: the 3 are kept, the 5 others run


def test_a_search_with_a_misspelled_metric_stops_asking_trials(sweep):
    sweep.gpus.set(count=1)
    (sweep.dir / "train.py").write_text("print('val_loss=0.5')\n")
    p = sweep.run("--no-live", "--command", f"python {sweep.dir / 'train.py'}", "--search", "random", "--n-trials",
                  "12", "--metric", "val_acc", "lr=interval(0.1,1)", trainer=False, timeout=120)
    assert p.returncode == 1 and "reported no val_acc (they reported val_loss" in p.stdout, p.stdout + p.stderr
    assert len(sweep.results()) <= 4  # 3, and at most one more that had started


def test_without_a_metric_the_summary_names_the_metrics_the_runs_reported(sweep):
    """issue 26 (7): a script printing val_loss= at every step, run without --metric, got no metric column, no
    best, and no hint."""
    sweep.gpus.set(count=1)
    (sweep.dir / "train.py").write_text("for s in range(3):\n    print(f'step={s} val_loss={1 / (s + 1)}')\n")
    p = sweep.run("--no-live", "--command", f"python {sweep.dir / 'train.py'}", "x=1,2", trainer=False)
    assert p.returncode == 0
    assert "No metric ranks the runs: they reported val_loss; rank them with --metric val_loss" in p.stdout


def test_runs_that_diverged_to_nan_did_report_the_metric(sweep):
    """An adversarial pass: the first 3 complete runs printing val_loss=nan (an lr too high) stopped the sweep as
    a misspelled --metric, saying they reported no val_loss (and that they reported val_loss)."""
    sweep.gpus.set(count=1)
    (sweep.dir / "train.py").write_text("import sys\nlr = float(sys.argv[1].split('=')[1])\n"
                                        "print(f'val_loss={\"nan\" if lr > 0.5 else lr}')\n")
    p = sweep.run("--no-live", "--command", f"python {sweep.dir / 'train.py'}", "--metric", "val_loss",
                  "lr=0.9,0.8,0.7,0.1,0.2", trainer=False)
    assert "no more runs are started" not in p.stdout and "5 complete" in p.stdout, p.stdout
    # and the summary says why they are not ranked: it said they reported no val_loss, and that they reported it
    assert "3 complete run(s) have no val_loss to rank by: its last val_loss was NaN or infinite" in p.stdout, p.stdout


def test_a_metric_that_is_text_is_not_called_a_divergence(sweep):
    """From an adversarial pass: a metrics.json with "val_loss": "abc" was said to be NaN or infinite (the training
    diverged?): it says the value was text."""
    sweep.gpus.set(count=1)
    (sweep.dir / "train.py").write_text("import json, os\nprint('val_loss=0.05')\njson.dump({'val_loss': 'abc'}, "
                                        "open(os.path.join(os.environ['TRAIN_SWEEP_RUN_DIR'], 'metrics.json'), 'w'))\n")
    p = sweep.run("--no-live", "--command", f"python {sweep.dir / 'train.py'}", "--metric", "val_loss", "x=1,2",
                  trainer=False)
    assert "have no val_loss to rank by: its last val_loss was text" in p.stdout, p.stdout
    assert "diverge" not in p.stdout and "NaN" not in p.stdout, p.stdout
