"""Metrics from any training script (issue 11): the forms scripts print, metrics.jsonl, --metric-regex,
TensorBoard event files, followed while the run runs, the best so far, runs without the metric, trackers'
grouping variables; values that are no numbers, stale or damaged metric files, huge lines, a run flooding its
output; best-K checkpoints (--top-k)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import FAKE_TRAINER, cli, kill_pids, no_traceback, run_jsons, run_pids, script, strict_results
from train_sweep import MetricReader, UserError


@pytest.mark.parametrize("line, expected", [
    ("step 500: train loss 1.69, val loss 1.85", (500, {"val_loss": 1.85})),  # nanoGPT
    ("{'loss': 0.9, 'val_loss': 0.41, 'epoch': 3.0}", (3, {"val_loss": 0.41})),  # Hugging Face Trainer
    ('{"iter": 7, "val_loss": 0.5}', (7, {"val_loss": 0.5})),  # JSON
    ("val_loss=0.5 acc: 0.9 iter 12", (12, {"val_loss": 0.5, "acc": 0.9})),
    ("epoch 4 val_loss: 1e-3", (4, {"val_loss": 0.001})),
    ("val_loss = -2", (None, {"val_loss": -2.0})),
])
def test_the_forms_scripts_print(line, expected):
    assert MetricReader(("val_loss", "acc")).from_lines([line]) == [expected]


@pytest.mark.parametrize("line", ["myval_loss=3", "val_loss_avg=3", "nothing here 1.0", "val_loss=abc"])
def test_lines_that_are_not_the_metric(line):
    assert MetricReader(("val_loss",)).from_lines([line]) == []


NANOGPT = """
lr = float(args['lr'])
for step in range(5):
    print(f'step {step * 100}: train loss {2 / (1 + step * lr):.4f}, val loss {2.5 / (1 + step * lr):.4f}', flush=True)
    time.sleep(float(args.get('pause', 0)))
"""


def test_a_nanogpt_style_script_unmodified(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"lr": 0.5}, {"lr": 2.0}, {"lr": 1.0}])
    p = sweep.run("--command", script(sweep, "train.py", NANOGPT), "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = {r["model_name"]: r for r in sweep.results()}
    best = records["lr_2"]
    assert best["metrics"] == {"val_loss": round(2.5 / 9, 4)}
    assert best["metric"] == {"best": round(2.5 / 9, 4), "step": 400, "points": 5, "note": None}
    assert f"Best (min val_loss): lr_2 = {round(2.5 / 9, 4):g}" in p.stdout
    series = [json.loads(line) for line in (sweep.dir / "outputs" / "lr_2" / "train_sweep_metrics.jsonl")
              .read_text().splitlines()]
    assert [(s["step"], s["val_loss"]) for s in series] == [(k * 100, round(2.5 / (1 + 2 * k), 4)) for k in range(5)]
    assert any(line.split()[1:3] == ["best", "lr_2"] for line in p.stdout.splitlines()), p.stdout


def test_a_metric_is_read_while_the_run_is_still_running(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"x": 1}])
    command = script(sweep, "slow.py", "print('val_loss=0.3 step 7', flush=True)\ntime.sleep(30)\n")
    proc = sweep.start("--command", command, "--metric", "val_loss", trainer=False)
    series = sweep.dir / "outputs" / "x_1" / "train_sweep_metrics.jsonl"
    try:
        sweep.wait_for(lambda: series.exists() and series.read_text().strip(), timeout=20, what="the live metric")
        assert proc.poll() is None, "the run is still running"
        assert json.loads(series.read_text().splitlines()[0])["val_loss"] == 0.3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        kill_pids(run_pids(sweep))
    assert " best " not in out  # a running run's value is no result: only complete runs are ranked


def test_best_events_come_when_a_complete_run_takes_the_lead(sweep):
    """issue 26 (2): a 16-run sweep logged 17 `best` events for 16 starts, ranking a running run's step-2 value
    against other runs' final values. Now: one `best` line each time a complete run takes the lead."""
    sweep.gpus.set(count=2)
    body = ("k = float(args['k'])\nfor s in range(4):\n    print(f'step={s} loss={k + 1 / (s + 1):.4f}', flush=True)\n"
            "    time.sleep(0.1)\n")
    p = sweep.run("--command", script(sweep, "c.py", body), "--metric", "loss", "--max-processes-per-gpu", "2",
                  "--no-live", "k=5,4,3,6,2,7,1,8", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    bests = [i for i, line in enumerate(lines) if line.split()[1:2] == ["best"]]
    assert 1 <= len(bests) <= 5 and all("(step" not in lines[i] for i in bests)
    for i in bests:  # each names a run whose end was reported before it
        name = lines[i].split()[2]
        assert any(line.split()[1:3] == ["complete", name] for line in lines[:i]), (name, lines[:i])


def test_metrics_jsonl_written_by_the_script_is_followed(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"k": 1}, {"k": 2}])
    body = ("k = int(args['k'])\nwith open(os.path.join(os.environ['TRAIN_SWEEP_RUN_DIR'], 'metrics.jsonl'), 'a') as f:\n"
            "    for step in range(3):\n"
            "        f.write(json.dumps({'step': step, 'acc': 0.5 + 0.1 * step * k}) + '\\n'); f.flush(); time.sleep(0.05)\n")
    p = sweep.run("--command", script(sweep, "jsonl_train.py", body), "--metric", "acc", "--mode", "max", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = {r["model_name"]: r for r in sweep.results()}
    assert records["k_2"]["metrics"] == {"acc": pytest.approx(0.9)}
    assert records["k_2"]["metric"]["points"] == 3 and records["k_2"]["metric"]["step"] == 2
    assert "Best (max acc): k_2 = 0.9" in p.stdout
    assert not (sweep.dir / "outputs" / "k_2" / "train_sweep_metrics.jsonl").exists()  # its own file is enough


def test_metric_regex_with_a_step(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"q": 1}, {"q": 3}])
    body = "q = int(args['q'])\nfor s in range(3):\n    print(f'Eval @ {s * 10}: accuracy {q * 10 + s}%', flush=True)\n"
    p = sweep.run("--command", script(sweep, "regex_train.py", body), "--metric", "acc", "--mode", "max",
                  "--metric-regex", r"Eval @ (?P<step>\d+): accuracy (?P<value>[0-9.]+)%", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    best = {r["model_name"]: r for r in sweep.results()}["q_3"]
    assert best["metrics"] == {"acc": 32.0} and best["metric"]["step"] == 20
    assert "Best (max acc): q_3 = 32" in p.stdout


@pytest.mark.parametrize("regex, fragment", [("(unclosed", "--metric-regex"), ("acc ([0-9]+)", "(?P<value>")])
def test_a_bad_metric_regex_is_one_line(sweep, regex, fragment):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    p = sweep.run("--metric", "acc", "--metric-regex", regex)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and fragment in p.stderr, p.stderr


def test_a_complete_run_without_the_metric_is_flagged_with_the_reason(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"metric": 0.5}, {"n": 1}])
    p = sweep.run("--metric", "val_loss")
    quiet = {r["model_name"]: r for r in sweep.results()}["n_1"]
    assert quiet["metrics"] is None
    assert quiet["metric"]["note"] == "no metrics.json or metrics.jsonl; no stdout line like 'val_loss=0.41'"
    assert "1 complete run(s) have no val_loss to rank by: no metrics.json or metrics.jsonl" in p.stdout


def test_ties_keep_the_config_order_and_several_metrics_are_kept(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"tag": "a", "metric": 0.5}, {"tag": "b", "metric": 0.5}, {"tag": "c", "metric": 0.7}])
    p = sweep.run("--metric", "val_loss", "--metric", "other")
    table = p.stdout.split("train_sweep summary\n")[1].splitlines()[1:4]
    assert [line.split()[1:3] for line in table] == [["tag=a", "metric=0.5"], ["tag=b", "metric=0.5"],
                                                     ["tag=c", "metric=0.7"]]  # labelled by what varies
    assert "Best (min val_loss): tag_a_metric_0.5 = 0.5" in p.stdout


def test_tracker_variables_when_a_tracker_is_configured(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}])
    assert sweep.run().returncode == 0
    assert not any(k.startswith(("WANDB_", "MLFLOW_")) for k in sweep.fake("n_0")["env"])  # none configured
    p = sweep.run("--output-dir", "tracked", "--output-file", "tracked.json", WANDB_MODE="offline", WANDB_NAME="mine",
                  MLFLOW_TRACKING_URI="file:///tmp/x")
    assert p.returncode == 0, p.stdout + p.stderr
    env = json.loads((sweep.dir / "tracked" / "n_1" / "fake.json").read_text())["env"]
    assert env["WANDB_RUN_GROUP"] == "tracked" and env["WANDB_TAGS"] == "train_sweep"
    assert env["WANDB_NAME"] == "mine"  # what the user set wins
    assert env["WANDB_DIR"] == str(sweep.dir / "tracked" / "n_1")
    assert env["MLFLOW_EXPERIMENT_NAME"] == "tracked"


def test_a_run_that_writes_no_metrics_costs_no_reading(sweep, tmp_path):
    """The fake trainer prints nothing: no series file is made, nothing is flagged without --metric."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    p = sweep.run()
    assert p.returncode == 0 and "to rank by" not in p.stdout
    assert not (sweep.dir / "outputs" / "n_0" / "train_sweep_metrics.jsonl").exists()
    assert sys.executable and FAKE_TRAINER.exists()


def test_metrics_from_a_real_tensorboard_event_file(sweep):
    """The run logs with tensorboardX's SummaryWriter, as PyTorch Lightning's default logger does."""
    pytest.importorskip("tensorboard", reason="the optional extra: pip install 'train-sweep[tensorboard]'")
    pytest.importorskip("tensorboardX", reason="the writer the test uses")
    sweep.gpus.set(count=1)
    sweep.config([{"k": 1}, {"k": 3}])
    body = ("from tensorboardX import SummaryWriter\n"
            "w = SummaryWriter(os.path.join(os.environ['TRAIN_SWEEP_RUN_DIR'], 'lightning_logs', 'version_0'))\n"
            "for step in range(4):\n"
            "    w.add_scalar('val/loss', 1.0 / (1 + step * int(args['k'])), step)\n"
            "    w.add_scalar('train_loss', 9.0, step)\n"
            "w.close()\n")
    p = sweep.run("--command", script(sweep, "tb_train.py", body), "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    best = {r["model_name"]: r for r in sweep.results()}["k_3"]
    assert best["metrics"] == {"val_loss": pytest.approx(0.1)} and best["metric"]["step"] == 3
    assert best["metric"]["points"] == 4
    assert "Best (min val_loss): k_3 = 0.1" in p.stdout


@pytest.mark.parametrize("name", ["events.out.tfevents.1.host", "metrics.jsonl", "metrics.json"])
def test_a_fifo_a_run_makes_where_metrics_are_read_never_stops_the_sweep(sweep, name):
    """A run that made a FIFO named like a TensorBoard event file (or metrics.jsonl, metrics.json) in its folder:
    the sweep opened it to read metrics and waited forever, deaf to SIGTERM; no later run started."""
    if name.startswith("events"):
        pytest.importorskip("tensorboard", reason="the optional extra: pip install 'train-sweep[tensorboard]'")
    sweep.gpus.set(count=1)
    sweep.config([{"k": 1}, {"k": 2}])
    body = (f"os.mkfifo(os.path.join(os.environ['TRAIN_SWEEP_RUN_DIR'], {name!r}))\n"
            "print('val_loss=0.5', flush=True)\ntime.sleep(0.5)\n")
    p = sweep.run("--command", script(sweep, "fifo_train.py", body), "--metric", "val_loss", "--no-live",
                  trainer=False, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["state"] for r in sweep.results()] == ["complete", "complete"]


def test_without_tensorboard_event_files_are_skipped_with_a_note(sweep):
    pytest.importorskip("tensorboardX", reason="the writer the test uses")
    hide = sweep.dir / "no_tensorboard" / "tensorboard"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('not installed')\n")
    sweep.gpus.set(count=1)
    sweep.config([{"k": 1}])
    body = ("from tensorboardX import SummaryWriter\nw = SummaryWriter(os.environ['TRAIN_SWEEP_RUN_DIR'])\n"
            "w.add_scalar('val_loss', 0.5, 1)\nw.close()\n")
    command = script(sweep, "tb_train.py", body)
    p = sweep.run("--command", command, "--metric", "val_loss", trainer=False,
                  PYTHONPATH=f"{hide.parent}:{sweep.env()['PYTHONPATH']}")
    assert "pip install 'train-sweep[tensorboard]'" in p.stdout, p.stdout + p.stderr
    assert "have no val_loss to rank by" in p.stdout


# -- values that are no numbers; stale, damaged and huge metric files; a run flooding its output -----------------

def run_once(sweep, name: str, body: str, *args: str):
    """One run of a script written here (k=1), with these flags; the CLI's result."""
    sweep.gpus.set(count=1)
    sweep.config([{"k": 1}])
    return sweep.run("--command", script(sweep, name, body), *args, trainer=False)


def test_values_that_are_no_numbers_never_crash_the_sweep(sweep):
    """A --metric-regex capture that is not a number, an optional value group that did not match, and integers
    too large for a float (in metrics.jsonl and metrics.json) are skipped (before: tracebacks)."""
    body = ("print('acc N/A'); print('acc'); print('acc 0.5', flush=True)\n"
            "d = os.environ['TRAIN_SWEEP_RUN_DIR']\n"
            "open(os.path.join(d, 'metrics.jsonl'), 'w').write(json.dumps({'acc': int('9' * 400)}) + '\\n')\n"
            "open(os.path.join(d, 'metrics.json'), 'w').write(json.dumps({'big': int('9' * 400), 'acc': 0.5}))\n")
    p = run_once(sweep, "odd_train.py", body, "--metric", "acc", "--mode", "max",
                 "--metric-regex", r"acc ?(?P<value>\S+)?")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    (record,) = sweep.results()
    assert record["metrics"] == {"acc": 0.5, "big": None}
    assert sweep.run("report", "--metric", "acc", trainer=False).returncode == 0


def test_the_leader_is_replaced_when_its_value_gets_worse(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"vals": "1"}, {"vals": "0.5x2"}])
    body = "for v in args['vals'].strip(\"'\").split('x'):\n    print(f'val_loss={v}', flush=True); time.sleep(0.3)\n"
    p = sweep.run("--command", script(sweep, "worse_train.py", body), "--metric", "val_loss", trainer=False)
    best_lines = [line.split()[2] for line in p.stdout.splitlines() if line.split()[1:2] == ["best"]]
    assert best_lines[-1] == "vals_1", p.stdout  # vals_0.5x2 led with 0.5, then ended at 2


def test_metrics_jsonl_last_line_without_newline_and_a_huge_line(sweep):
    body = ("f = open(os.path.join(os.environ['TRAIN_SWEEP_RUN_DIR'], 'metrics.jsonl'), 'w')\n"
            "f.write(json.dumps({'step': 1, 'val_loss': 5.0}) + '\\n')\n"
            "f.write(json.dumps({'step': 2, 'matrix': 'x' * (5 * 1024 * 1024)}) + '\\n')\n"
            "f.write(json.dumps({'step': 3, 'val_loss': 0.1}))\nf.close()\n")
    p = run_once(sweep, "jsonl_end_train.py", body, "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    (record,) = sweep.results()
    assert record["metrics"] == {"val_loss": 0.1} and record["metric"]["step"] == 3


def test_infinity_is_no_value_in_the_sweep_nor_in_report(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"m": "a"}, {"m": "b"}])
    body = "print('val_loss=-inf' if args['m'] == 'a' else 'val_loss=0.5')\n"
    p = sweep.run("--command", script(sweep, "inf_train.py", body), "--metric", "val_loss", trainer=False)
    assert "Best (min val_loss): m_b = 0.5" in p.stdout
    q = sweep.run("report", "--metric", "val_loss", trainer=False)
    assert "m_b = 0.5" in q.stdout and "-inf" not in q.stdout.split("Best")[-1], q.stdout


def test_a_stale_metrics_json_is_not_read_as_the_new_result(sweep):
    """issue 16 (severe 3): a metrics.json left in a run folder before the attempt started was read as
    that attempt's metric (0.001 instead of the printed 0.5). Here the run failed in an earlier sweep, its
    logs were removed, and a stale metrics.json lies in its folder; the resumed attempt prints
    val_loss=0.5. Contract: the recorded metric is 0.5, and nothing says 0.001."""
    sweep.gpus.set(count=1)
    marker = sweep.dir / "failed_once"
    sweep.config([{"metric": 0.5, "fail_once": str(marker)}])
    args = ("--metric", "val_loss", "--name-template", "stale")
    first = cli(sweep, *args)
    assert first.returncode == 1, first.stdout + first.stderr
    folder = sweep.dir / "outputs" / "stale"
    assert (folder / "run.json").exists()
    for log in ("train_stdout.log", "train_stderr.log", "combined.log"):
        (folder / log).unlink(missing_ok=True)
    stale = folder / "metrics.json"
    stale.write_text(json.dumps({"val_loss": 0.001}))
    old = time.time() - 3600
    os.utime(stale, (old, old))
    p = cli(sweep, *args)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    (record,) = sweep.results()
    assert record["state"] == "complete"
    assert record["metrics"]["val_loss"] == 0.5, record["metrics"]
    assert "0.001" not in p.stdout, p.stdout


@pytest.mark.parametrize("kind", ["surrogate", "deep"])
def test_a_run_writing_unreadable_metrics_json(sweep, kind):
    """issue 16 (severe 6a): a run's metrics.json with a lone surrogate escape (unencodable on output) or
    100,000 nested arrays (RecursionError) crashed the sweep. Contract: no traceback, every run recorded
    complete, the results file is standard JSON."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "metric": 0.1}, {"n": 1, "bad_metrics": kind}, {"n": 2, "metric": 0.3}])
    p = cli(sweep, "--metric", "val_loss")
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    records = strict_results(sweep)
    assert len(records) == 3 and all(r["state"] == "complete" for r in records), records


def test_a_nan_metric_is_recorded_as_null(sweep):
    """issue 16 (severe 6b): a run printing val_loss=nan put a bare NaN in the results file (not JSON).
    Contract: the results file is standard JSON, that metric is null. (`metric=nan` is in --command: as a
    hyperparameter, the string "nan" would be passed quoted.)"""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1, "metric": 0.2}])
    p = cli(sweep, "--metric", "val_loss", "--command", f"python {FAKE_TRAINER} metric=nan")
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    nan_run, other = strict_results(sweep)
    assert (nan_run["metrics"] or {}).get("val_loss") is None, nan_run["metrics"]
    assert other["metrics"]["val_loss"] == 0.2


def test_a_run_that_floods_its_output_does_not_grow_the_sweep_s_memory(sweep):
    """A run that prints 100 MB and exits before the sweep has read it: the final read of its log streams it in
    bounded chunks (before: the whole backlog went into lists first, 2.1-2.8 GB of RSS for 500 MB). The sweep's
    peak resident memory (VmHWM) is read while a second run keeps it alive."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "flood_mb": 100}, {"n": 1, "sleep": 6}])
    proc = sweep.start("--no-live", "--max-processes-per-gpu", "2", "--metric", "val_loss")
    peak = 0
    try:
        end = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < end:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(next(line.split()[1] for line in status.splitlines()
                                          if line.startswith("VmHWM:"))))
            except (OSError, StopIteration):
                pass
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        kill_pids(run_pids(sweep))
        for log in (sweep.dir / "outputs").glob("n_0*/*.log"):
            log.unlink()
    assert proc.returncode == 0, out[-2000:] + err
    assert 0 < peak < 150 * 1024, f"the sweep's peak memory was {peak / 1024:.0f} MB"


# -- best-K checkpoints ------------------------------------------------------------------------------------------

def test_only_the_k_best_runs_keep_their_checkpoints(sweep):
    sweep.gpus.set(count=1)
    outside = sweep.dir / "precious.pt"
    outside.write_bytes(b"keep me")
    sweep.config([{"metric": v, "ckpt": 1, "ckpt_outside": str(outside)} for v in (0.4, 0.1, 0.3, 0.2)])
    p = sweep.run("--metric", "val_loss", "--top-k", "2", "--checkpoint-glob", "*.pt")
    assert p.returncode == 0, p.stdout + p.stderr
    out = sweep.dir / "outputs"
    names = {v: f"metric_{v}_ckpt_1_ckpt_outside_{str(outside).strip('/').replace('/', '_')}" for v in (0.4, 0.1, 0.3, 0.2)}
    for v, name in names.items():
        folder = out / name
        kept = v in (0.1, 0.2)
        assert (folder / "model.pt").exists() == kept and (folder / "checkpoints" / "step_1.pt").exists() == kept
        assert os.path.lexists(folder / "outside.pt") == kept
        assert (folder / "notes.txt").exists() and (folder / "train_stdout.log").exists() and (folder / "run.json").exists()
    assert outside.read_bytes() == b"keep me"  # a link's target outside the run folder is never touched
    best = json.loads((out / "best" / "best.json").read_text())
    assert [(r["rank"], r["name"], r["value"]) for r in best["runs"]] == [(1, names[0.1], 0.1), (2, names[0.2], 0.2)]
    for entry in best["runs"]:  # best.json lists only files that are there
        assert sorted(k["path"] for k in entry["kept"]) == ["checkpoints/step_1.pt", "model.pt", "outside.pt"]
        assert all((Path(entry["run_dir"]) / k["path"]).exists() for k in entry["kept"])
    assert sorted(p.name for p in (out / "best").glob("rank_*")) == [f"rank_01_{names[0.1]}", f"rank_02_{names[0.2]}"]
    assert (out / "best" / f"rank_01_{names[0.1]}").resolve() == (out / names[0.1]).resolve()
    assert "Checkpoints: the 2 best runs keep theirs" in p.stdout
    assert re.search(r"freed [0-9.]+ KB in 2 other run\(s\)", p.stdout), p.stdout
    assert sum(" checkpoints " in line for line in (out / "sweep.log").read_text().splitlines()) == 2


def test_keep_checkpoints_deletes_nothing_and_a_pattern_cannot_leave_the_run_folder(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"metric": v, "ckpt": 1} for v in (0.4, 0.1)])
    p = sweep.run("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "checkpoints/**", "--keep-checkpoints")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (sweep.dir / "outputs" / "metric_0.4_ckpt_1" / "checkpoints" / "step_1.pt").exists()
    assert "would delete 1 file(s)" in p.stdout and "would free" in p.stdout
    for bad in ("../*.pt", "/etc/*", ""):
        q = sweep.run("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", bad)
        assert q.returncode == 2 and "--checkpoint-glob" in q.stderr and len(q.stderr.splitlines()) == 1, q.stderr
    q = sweep.run("--top-k", "1", "--checkpoint-glob", "*.pt")
    assert q.returncode == 2 and "--top-k needs --metric" in q.stderr


def test_a_running_run_keeps_its_checkpoints_and_best_survives_resume(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"metric": 0.1, "ckpt": 1}, {"metric": 0.9, "ckpt": 1, "sleep": 3}, {"metric": 0.5, "ckpt": 1}])
    proc = sweep.start("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt", "--max-processes-per-gpu", "2",
                       "--settle-seconds", "0.1")
    slow = sweep.dir / "outputs" / "metric_0.9_ckpt_1_sleep_3"
    try:
        sweep.wait_for(lambda: any(e["event"] == "end" and e["name"] == "metric_0.5_ckpt_1" for e in sweep.events())
                       and (slow / "model.pt").exists(), timeout=30, what="the quick runs")
        time.sleep(0.5)
        assert (slow / "model.pt").exists(), "a running run's checkpoints were deleted"
        out, err = proc.communicate(timeout=30)
    finally:
        kill_pids(run_pids(sweep))
    assert proc.returncode == 0, out + err
    assert not (slow / "model.pt").exists()  # finished, and not the best: now its checkpoints go
    p = sweep.run("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt")  # resume: nothing to run
    best = json.loads((sweep.dir / "outputs" / "best" / "best.json").read_text())
    assert [r["name"] for r in best["runs"]] == ["metric_0.1_ckpt_1"] and p.returncode == 0


def test_best_k_on_resume_refuses_another_ranking_and_rebuilds_best(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"metric": v, "ckpt": 1} for v in (0.4, 0.1, 0.3)])
    args = ("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt")
    assert sweep.run(*args, "--mode", "max").returncode == 0
    p = sweep.run(*args)  # --mode max forgotten: the kept checkpoints would go
    assert p.returncode == 2 and "ranks by max val_loss, this sweep by min val_loss" in p.stderr, p.stderr
    assert (sweep.dir / "outputs" / "metric_0.4_ckpt_1" / "model.pt").exists()
    p = sweep.run(*args, "--mode", "max", "--rerun", "--max-runs", "1", "--output-file", "other.json")
    best = json.loads((sweep.dir / "outputs" / "best" / "best.json").read_text())
    for entry in best["runs"]:  # the old folders were set aside: best.json lists only what is there
        assert all((Path(entry["run_dir"]) / k["path"]).exists() for k in entry["kept"]), best
    assert all(link.resolve().exists() for link in (sweep.dir / "outputs" / "best").glob("rank_*"))


def test_an_output_file_inside_another_sweeps_run_folder_is_refused(sweep):
    """From a new user's pass: --output-file inside another sweep's run folder was accepted (the results and their
    lock written there), and that sweep's cleanup then deleted it with the folder."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 1}, {"n": 2}])
    assert sweep.run().returncode == 0
    sweep.config([{"y": 1}])
    p = sweep.run("--output-dir", "other", "--output-file", "outputs/n_2/sub/res.json")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"train_sweep: error: --output-file 'outputs/n_2/sub/res.json' is inside {sweep.dir / 'outputs' / 'n_2'}, a "
        "run folder of a sweep; choose another file"], p.stderr
    assert not (sweep.dir / "other").exists() and sorted(p.name for p in (sweep.dir / "outputs" / "n_2").iterdir()) \
        == sorted(p.name for p in (sweep.dir / "outputs" / "n_1").iterdir())


def test_an_output_file_inside_best_is_refused_and_a_metric_needs_a_name(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    p = sweep.run("--output-file", "outputs/best/best.json")
    assert p.returncode == 2 and "a file the sweep writes itself" in p.stderr, p.stderr
    p = sweep.run("--metric", "")
    assert p.returncode == 2 and "--metric ''" in p.stderr, p.stderr


def test_best_k_never_deletes_tensorboard_files_or_logs(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"metric": v, "ckpt": 1} for v in (0.4, 0.1)])
    from train_sweep_extras.bestk import checkpoint_files, checkpoint_pattern

    folder = sweep.dir / "kept"
    (folder / "tb").mkdir(parents=True)
    for name in ("model.pt", "train.log", "tb/events.out.tfevents.1.host", "run.json", "metrics.jsonl"):
        (folder / name).write_text("x")
    assert checkpoint_files(folder, checkpoint_pattern("**")) == []  # no run mark: not a folder of the sweep's
    (folder / ".train_sweep_run").touch()
    found = {p.relative_to(folder).as_posix() for p, _ in checkpoint_files(folder, checkpoint_pattern("**"))}
    assert found == {"model.pt"}


@pytest.mark.parametrize("kind", ["link", "file"])
def test_top_k_with_best_a_link_or_a_file_is_one_line_and_touches_nothing(sweep, kind):
    """outputs/best a link to a folder elsewhere: --top-k wrote best.json and rank links there and deleted a
    rank_* file of the user's, outside the sweep. Refused now, before anything runs."""
    sweep.gpus.set(count=1)
    sweep.config([{"metric": m, "ckpt": 1} for m in (0.1, 0.2)])
    (sweep.dir / "outputs").mkdir()
    outside = sweep.dir / "outside"
    outside.mkdir()
    (outside / "rank_01_mine").write_text("precious")
    if kind == "link":
        (sweep.dir / "outputs" / "best").symlink_to(outside)
    else:
        (sweep.dir / "outputs" / "best").write_text("notes")
    p = sweep.run("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and ("is a link" if kind == "link" else "is not a folder") in p.stderr, p.stderr
    assert sorted(f.name for f in outside.iterdir()) == ["rank_01_mine"] and not sweep.started()


def test_top_k_never_follows_a_run_folder_replaced_by_a_link(sweep):
    """A complete run's folder replaced by a link to a folder the sweep did not make (even one holding a copy
    of the run mark): when that run leaves the K best, nothing there is deleted (before: os.walk followed the
    link and deleted model.pt in the other folder)."""
    sweep.gpus.set(count=1)
    sweep.config([{"metric": 0.5, "ckpt": 1}, {"metric": 0.1, "ckpt": 1, "sleep": 3}])
    other = sweep.dir / "someone_else"
    other.mkdir()
    (other / "model.pt").write_bytes(b"not the sweep's")
    proc = sweep.start("--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt")
    first = sweep.dir / "outputs" / "metric_0.5_ckpt_1"
    try:
        sweep.wait_for(lambda: any(r.get("model_name") == first.name and r.get("state") == "complete"
                                   for r in run_jsons(sweep.dir / "outputs")),  # the sweep's last write there
                       timeout=30, what="the first run's run.json")
        (other / ".train_sweep_run").write_bytes((first / ".train_sweep_run").read_bytes())
        shutil.rmtree(first)
        first.symlink_to(other)
        out, err = proc.communicate(timeout=30)
    finally:
        kill_pids(run_pids(sweep))
    assert proc.returncode == 0, out + err
    assert (other / "model.pt").read_bytes() == b"not the sweep's"
    assert "not a folder of the sweep's own" in (sweep.dir / "outputs" / "sweep.log").read_text()


def test_a_globstar_folder_pattern_matches_files_at_the_top_too():
    """An adversarial pass: `**/*.pt` kept the losing runs' top-level model.pt (`**/` matched one folder or more;
    as in the shell's globstar and pathlib it matches none too)."""
    from train_sweep_extras.bestk import checkpoint_pattern

    pattern = checkpoint_pattern("**/*.pt")
    assert pattern.fullmatch("model.pt") and pattern.fullmatch("a/b/model.pt") and not pattern.fullmatch("model.pth")


def test_a_pattern_written_as_from_the_run_folder_matches():
    """A helper's pass: './*.pt' and 'ckpt/' never matched anything, so --top-k kept every checkpoint it was to
    delete, without a word. './' anchors at the run folder's top, as a shell's does; a folder ends in '/'."""
    from train_sweep_extras.bestk import checkpoint_pattern

    top = checkpoint_pattern("./*.pt")
    assert top.fullmatch("model.pt") and not top.fullmatch("sub/model.pt")
    assert checkpoint_pattern("./ckpt/*.pt").fullmatch("ckpt/a.pt")
    folder = checkpoint_pattern("ckpt/")
    assert folder.fullmatch("ckpt/a.pt") and folder.fullmatch("ckpt/x/b.bin") and not folder.fullmatch("ckpt2/a")
    for bad in ("./", ".", "/abs/*.pt", "../*.pt"):
        with pytest.raises(UserError):
            checkpoint_pattern(bad)
