"""Sweeps that survive and resume: the same command again runs what is left (also reordered or changed),
--rerun (and the folders it must never set aside), retries, the out-of-memory requeue and its wait, the lock
(one sweep per output folder and per results file), the results file, the journal and the run folders across
crashes, a full disk, a run that deletes its own folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    EVENT, Result, all_dead, assert_one_line_error, cli, communicate, kill_pids, mount_tmpfs, no_traceback,
    run_jsons, run_pids, starts, strict_results,
)


# -- resume and --rerun ------------------------------------------------------------------------------------------

def wait_complete(sweep, n: int, results: str = "train_sweep_results.json") -> None:
    def done():
        try:
            return sum(r["state"] == "complete" for r in sweep.results(results)) >= n
        except (OSError, ValueError):
            return False

    sweep.wait_for(done, what=f"{n} complete runs")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_resume_after_interruption_runs_only_what_is_left(sweep, sig):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}, {"n": 2, "sleep": 60}, {"n": 3}])
    proc = sweep.start()
    wait_complete(sweep, 2)
    sweep.wait_for(lambda: "n_2_sleep_60" in sweep.started(), what="the long run")
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert all_dead(run_pids(sweep), 10)
    # the same command again: the two finished runs are skipped, the interrupted and unstarted ones run
    sweep.config([{"n": 0}, {"n": 1}, {"n": 2, "sleep": 0}, {"n": 3}, {"n": 4}])  # n=2 changed, n=4 added
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resume: 2 run(s) already complete (or pruned) with the same hyperparameters and command are skipped" in p.stdout
    assert starts(sweep) == Counter({"n_0": 1, "n_1": 1, "n_2_sleep_60": 1, "n_2_sleep_0": 1, "n_3": 1, "n_4": 1})
    results = sweep.results()
    assert [r["model_name"] for r in results] == ["n_0", "n_1", "n_2_sleep_0", "n_3", "n_4"]
    assert all(r["state"] == "complete" for r in results)
    assert "complete (earlier sweep)" in p.stdout


def test_resume_reruns_an_interrupted_run_and_keeps_its_first_attempt(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 60}])
    proc = sweep.start()
    sweep.wait_for(lambda: (sweep.dir / "outputs/n_0_sleep_60/fake.json").exists(), what="the run")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    sweep.config([{"n": 0, "sleep": 60}])
    proc = sweep.start()
    sweep.wait_for(lambda: starts(sweep)["n_0_sleep_60"] == 2, what="the second attempt")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    (r,) = sweep.results("train_sweep_results.json.partial")
    assert r["attempt"] == 2 and r["state"] == "interrupted"
    assert [a["state"] for a in r["attempts"]] == ["interrupted"]
    assert Path(r["attempts"][0]["stdout_log"]) == sweep.dir / "outputs/n_0_sleep_60/attempt_1/train_stdout.log"
    assert Path(r["attempts"][0]["stdout_log"]).exists()


def test_a_metric_named_only_at_resume_ranks_the_runs_done_before(sweep):
    """From a new user's pass: the first sweep ran without --metric (its end says: rank them with --metric
    val_loss); the same sweep again with --metric val_loss and one run more ranked the new run only, and named it
    best (the sweep, status, cleanup's kept runs), while report, which reads the earlier runs' output, named
    another. The earlier complete runs now take their value from their output, as report does."""
    sweep.gpus.set(count=1)
    runs = [{"n": 0, "metric": 0.5}, {"n": 1, "metric": 0.1}, {"n": 2, "metric": 0.3}]
    sweep.config(runs)
    assert sweep.run().returncode == 0
    sweep.config(runs + [{"n": 3, "metric": 0.4}])
    p = sweep.run("--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Best (min val_loss): n_1_metric_0.1 = 0.1" in p.stdout, p.stdout
    assert {r["model_name"]: (r.get("metrics") or {}).get("val_loss") for r in sweep.results()} == {
        "n_0_metric_0.5": 0.5, "n_1_metric_0.1": 0.1, "n_2_metric_0.3": 0.3, "n_3_metric_0.4": 0.4}
    status = sweep.run("status", trainer=False)
    assert "n_1_metric_0.1 = 0.1" in status.stdout, status.stdout
    report = sweep.run("report", trainer=False)
    assert "Best (min val_loss): n_1_metric_0.1 = 0.1" in report.stdout, report.stdout
    cleanup = sweep.run("cleanup", "--days", "0", trainer=False)  # a dry run: what it would keep
    assert "kept outputs/n_1_metric_0.1: among the sweep's best runs" in cleanup.stdout, cleanup.stdout


def test_a_changed_command_is_a_different_run(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    assert sweep.run().returncode == 0
    p = sweep.run("--command", f"python {Path(__file__).parent / 'fake_trainer.py'} extra=1")
    assert p.returncode == 0
    assert "resume:" not in p.stdout
    assert starts(sweep)["n_0"] == 2


def test_a_run_whose_default_changed_never_runs_into_the_old_run_s_folder(sweep):
    """An adversarial pass: after a default was edited (its name unchanged), the run ran again in the folder of
    the complete one and overwrote its checkpoint (only its logs went to attempt_1/); Ctrl+C and the edit undone,
    the old record was skipped as complete over a folder that now held the other run. A folder holds one run:
    another's is set aside as <name>~1 first, and a complete record is skipped only over its own folder."""
    sweep.gpus.set(count=1)
    sweep.config({"defaults": {"sleep": 0, "ckpt": 1}, "runs": [{"n": 0}]})
    assert sweep.run("--metric", "val_loss").returncode == 0
    out = sweep.dir / "outputs"
    first = json.loads((out / "n_0" / "run.json").read_text())
    sweep.config({"defaults": {"sleep": 60, "ckpt": 1}, "runs": [{"n": 0}]})  # a default edited
    proc = sweep.start("--metric", "val_loss")
    sweep.wait_for(lambda: starts(sweep)["n_0"] == 2, what="the edited run")
    proc.send_signal(signal.SIGINT)
    out2, _ = proc.communicate(timeout=30)
    assert "set aside   n_0: its folder holds a run of other hyperparameters or command (complete); kept as n_0~1" \
        in out2, out2
    kept = json.loads((out / "n_0~1" / "run.json").read_text())
    assert kept["state"] == "complete" and kept["hyperparams"] == first["hyperparams"]
    assert (out / "n_0~1" / "model.pt").exists() and not (out / "n_0~1" / "attempt_1").exists()
    sweep.config({"defaults": {"sleep": 0, "ckpt": 1}, "runs": [{"n": 0}]})  # the edit undone
    p = sweep.run("--metric", "val_loss")
    assert p.returncode == 0 and "kept as n_0~2" in p.stdout, p.stdout + p.stderr
    (r,) = sweep.results()
    held = json.loads((Path(r["run_dir"]) / "run.json").read_text())
    assert r["state"] == "complete" and held["hyperparams"] == r["hyperparams"] == first["hyperparams"]
    assert held["identity"] == r["identity"] and held["state"] == "complete"


def test_a_refused_start_sets_no_folder_aside(sweep):
    """A review: the folder of a run whose default changed was set aside, and then the start was refused (here:
    best/ ranked the other way); the edit undone, the complete run ran again (its folder was gone)."""
    sweep.gpus.set(count=1)
    args = ["--metric", "val_loss", "--top-k", "1", "--checkpoint-glob", "*.pt"]
    sweep.config({"defaults": {"ckpt": 1, "metric": 5}, "runs": [{"n": 0}]})
    assert sweep.run(*args).returncode == 0
    sweep.config({"defaults": {"ckpt": 1, "metric": 3}, "runs": [{"n": 0}]})
    p = sweep.run(*args, "--mode", "max")
    assert p.returncode == 2 and "ranks by min val_loss" in p.stderr, p.stdout + p.stderr
    assert not (sweep.dir / "outputs" / "n_0~1").exists() and "set aside" not in p.stdout
    sweep.config({"defaults": {"ckpt": 1, "metric": 5}, "runs": [{"n": 0}]})
    p = sweep.run(*args)
    assert p.returncode == 0 and "1 run(s) already complete" in p.stdout, p.stdout


def test_rerun_runs_everything_and_keeps_old_folders(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}])
    assert sweep.run().returncode == 0
    p = sweep.run("--rerun")
    assert p.returncode == 0
    assert starts(sweep) == Counter({"n_0": 2, "n_1": 2})
    out = sweep.dir / "outputs"
    assert (out / "n_0~1" / "run.json").exists() and (out / "n_0" / "run.json").exists()
    assert (out / "journal.jsonl~1").exists()
    assert sweep.run("--rerun").returncode == 0
    assert (out / "n_0~2").exists()


def test_resume_after_reordering_keeps_the_new_order_and_indexes(sweep):
    """issue 16 (severe 12): after a resume with the entries reordered and one removed, the results file
    kept the old order and old `index` (n_2 had index 2). Contract: records in the new config's order,
    with index 0, 1 in that order."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}, {"n": 2}])
    assert cli(sweep).returncode == 0
    sweep.config([{"n": 2}, {"n": 0}])
    p = cli(sweep)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert [(r["model_name"], r["index"]) for r in records] == [("n_2", 0), ("n_0", 1)]


def test_partial_of_a_reordered_resume_is_in_the_current_order(sweep):
    """issue 16 (severe 12): the .partial of an interrupted, reordered resume listed records by their old
    index. Contract: sorted by the current index, with the current `index` values."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}, {"n": 2}])
    assert cli(sweep).returncode == 0
    sweep.config([{"n": 2}, {"n": 3, "sleep": 30}, {"n": 0}])
    proc = sweep.start()
    sweep.wait_for(lambda: "n_3_sleep_30" in sweep.started(), what="the new run")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    records = sweep.results("train_sweep_results.json.partial")
    assert [(r["model_name"], r["index"]) for r in records] == [("n_2", 0), ("n_3_sleep_30", 1), ("n_0", 2)]


def test_dry_run_shows_what_resume_would_skip(sweep):
    sweep.gpus.set(count=1)
    assert sweep.run("--no-live", "x=1,2").returncode == 0
    p = sweep.run("--dry-run", "x=1,2,3")
    assert p.returncode == 0, p.stderr
    assert "Resume: 2 of them already complete (or pruned) with the same hyperparameters and command are skipped; " \
           "1 to run" in " ".join(p.stdout.split())
    assert "(complete: skipped)" in p.stdout
    assert "Resume:" not in sweep.run("--dry-run", "--rerun", "x=1,2,3").stdout


def _check_user_folder_untouched(sweep, p, folder: Path, name: str) -> None:
    assert sorted(os.listdir(folder)) == ["notes.txt"], sorted(os.listdir(folder))
    assert (folder / "notes.txt").read_text() == "my notes\n"
    no_traceback(p)
    if p.returncode == 2:
        assert_one_line_error(p, name)
    else:
        assert p.returncode == 0, p.stdout + p.stderr
        (record,) = sweep.results()
        assert Path(record["run_dir"]).resolve() != folder.resolve()


def test_a_user_folder_with_a_run_name_is_never_written_into(sweep):
    """issue 16 (severe 2): with `--output-dir .` and a run named `data`, the user's own `./data/` became
    the run folder (written into) and `--rerun` renamed it to `data~1`. Contract: the folder is never
    written into, renamed or deleted: exit 2 naming `data`, or the run gets another folder."""
    sweep.gpus.set(count=1)
    sweep.config([{"a": 1}])
    data = sweep.dir / "data"
    data.mkdir()
    (data / "notes.txt").write_text("my notes\n")
    p = cli(sweep, "--output-dir", ".", "--name-template", "data")
    _check_user_folder_untouched(sweep, p, data, "data")
    p = cli(sweep, "--output-dir", ".", "--name-template", "data", "--rerun")
    _check_user_folder_untouched(sweep, p, data, "data")


def test_rerun_never_renames_a_folder_the_sweep_did_not_create(sweep):
    """issue 16 (severe 2): `--rerun` set aside (renamed) `outputs/n_0/` although no sweep had made it.
    Contract: a folder without the sweep's mark is left in place, unchanged; exit 2 naming it, or the
    run gets another folder."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    folder = sweep.dir / "outputs" / "n_0"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    p = cli(sweep, "--rerun")
    _check_user_folder_untouched(sweep, p, folder, "n_0")


# -- retries and the out-of-memory requeue -----------------------------------------------------------------------

def test_retries_come_after_unstarted_runs_and_keep_each_attempts_logs(sweep):
    sweep.gpus.set(count=1)
    marker = sweep.dir / "failed_once"
    sweep.config([{"a": 1, "fail_once": str(marker)}, {"b": 1}, {"c": 1}])
    p = sweep.run("--retries", "2")
    assert p.returncode == 0, p.stdout
    name = f"a_1_fail_once_{str(marker).strip('/').replace('/', '_')}"
    assert sweep.started() == [name, "b_1", "c_1", name]
    record = sweep.results()[0]
    assert record["state"] == "complete" and record["attempt"] == 2
    assert [a["state"] for a in record["attempts"]] == ["failed"]
    assert Path(record["attempts"][0]["stderr_log"]).exists()
    assert "retry 1/2 queued after the runs not yet started" in p.stdout


def test_retries_run_out(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"exit": 2}])
    p = sweep.run("--retries", "1")
    assert p.returncode == 1
    (r,) = sweep.results()
    assert r["state"] == "failed" and r["attempt"] == 2 and len(r["attempts"]) == 1
    journal = (sweep.dir / "outputs" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["attempt"] for line in journal] == [1, 2]


def test_out_of_memory_requeues_without_using_retries_and_waits_for_room(sweep):
    sweep.gpus.set(count=1)
    marker = sweep.dir / "oomed"
    sweep.config([{"a": 1, "sleep": 2, "mem_mb": 30000}, {"b": 1, "oom_once": str(marker)}])
    p = sweep.run("--max-processes-per-gpu", "2", "--settle-seconds", "0.5")
    assert p.returncode == 0, p.stdout + p.stderr
    a, b = sweep.results()
    assert b["state"] == "complete" and [x["state"] for x in b["attempts"]] == ["oom"]
    assert "out of GPU memory: requeued (1/3)" in p.stdout
    spans = [e for e in sweep.events() if e["name"].startswith("b_1")]
    a_end = next(e["t"] for e in sweep.events() if e["name"] == "a_1_sleep_2_mem_mb_30000" and e["event"] == "end")
    second_start = [e["t"] for e in spans if e["event"] == "start"][1]
    assert second_start >= a_end - 0.05, "the requeued run started before its GPU had more room"


def test_out_of_memory_is_bounded(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"oom": 1}])
    p = sweep.run("--max-oom-requeues", "2", "--retries", "5")
    assert p.returncode == 1
    (r,) = sweep.results()
    assert r["state"] == "oom" and r["attempt"] == 3
    assert starts(sweep)["oom_1"] == 3


def test_extra_oom_pattern(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"exit": 1, "err": "MyFramework:no-memory-left"}])
    p = sweep.run("--oom-pattern", "no-memory-left", "--max-oom-requeues", "1")
    assert p.returncode == 1
    assert sweep.results()[0]["state"] == "oom" and sweep.results()[0]["attempt"] == 2
    check = sweep.run("--oom-pattern", "([")
    assert check.returncode == 2 and "--oom-pattern '(['" in check.stderr


def test_oom_requeued_run_is_not_stuck_behind_memory_that_never_frees(sweep):
    """issue 10 bug 5: someone else's memory on the only GPU never goes away; the requeued out-of-memory run
    must not wait for more free memory forever when nothing of the sweep's own runs could free any."""
    sweep.gpus.set(count=1)
    other = sweep.gpus.foreign_process(0, 30000)  # a process of another user: NVML lists it, it never ends
    sweep.config([{"b": 1, "oom_once": "oomed"}])
    proc = sweep.start("--settle-seconds", "1")
    try:
        out, err = communicate(proc, 30, "the requeued run waits forever")
    finally:
        kill_pids(run_pids(sweep))
        other.kill()
        other.wait()
    assert proc.returncode == 0, out + err
    (r,) = sweep.results()
    assert r["state"] == "complete" and r["attempt"] == 2, r
    assert [a["state"] for a in r["attempts"]] == ["oom"]
    assert starts(sweep)["b_1_oom_once_oomed"] == 2


def test_oom_requeued_run_says_that_it_waits(sweep):
    """issue 10 bug 5: while a requeued out-of-memory run waits (here for another run of ours on its GPU),
    plain mode prints a line naming the run and saying that it waits."""
    sweep.gpus.set(count=1)
    sweep.config([{"a": 1, "sleep": 3, "mem_mb": 20000}, {"b": 1, "oom_once": "oomed"}])
    proc = sweep.start("--max-processes-per-gpu", "2", "--settle-seconds", "0.5")
    try:
        out, err = communicate(proc, 40, "the sweep")
    finally:
        kill_pids(run_pids(sweep))
    assert proc.returncode == 0, out + err
    name = "b_1_oom_once_oomed"
    lines = out.splitlines()
    oom = next((i for i, line in enumerate(lines) if EVENT.match(line) and EVENT.match(line).groups() == ("oom", name)),
               None)
    assert oom is not None, out
    assert any(name in line and "wait" in line.lower() for line in lines[oom + 1:]), (
        f"no line says that {name} waits\n{out}")
    assert sweep.results()[1]["state"] == "complete"


# -- the lock: one sweep per output folder and per results file --------------------------------------------------

def test_second_sweep_on_the_same_output_folder_is_refused(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"sleep": 60}])
    first = sweep.start()
    sweep.wait_for(lambda: sweep.started(), what="the first sweep's run")
    p = sweep.run(timeout=20)
    assert p.returncode == 2
    assert f"another train_sweep (PID {first.pid}) is running a sweep in this output folder" in p.stderr
    p = sweep.run("--output-file", "new/deeper/results.json", timeout=20)
    assert p.returncode == 2 and "another train_sweep" in p.stderr, p.stderr
    assert not (sweep.dir / "new").exists(), "the refused sweep left the folder it made for --output-file"
    first.kill()  # its lock dies with it: the next sweep takes over
    first.communicate()
    assert all_dead(run_pids(sweep), 10)
    sweep.config([{"sleep": 0}])
    assert sweep.run().returncode == 0


def test_a_deleted_lock_file_does_not_let_a_second_sweep_in(sweep):
    """issue 16 (severe 8): after `outputs/.train_sweep.lock` was deleted under a running sweep, the same
    command again took a new lock file and started the same runs a second time. Contract: the second is
    refused (exit 2, one line) and starts no run."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 30}])
    first = sweep.start()
    second = None
    try:
        sweep.wait_for(lambda: sweep.started(), what="the first sweep's run")
        (sweep.dir / "outputs" / ".train_sweep.lock").unlink()
        second = subprocess.Popen(sweep.argv(), cwd=sweep.dir, env=sweep.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
        try:
            out, err = second.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            second.send_signal(signal.SIGINT)
            out, err = second.communicate(timeout=30)
        time.sleep(0.5)
        assert len(sweep.started()) == 1, sweep.events()
        assert_one_line_error(Result(second.returncode, out, err, 0))
    finally:
        for proc in (second, first):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=30)


def test_second_sweep_writing_the_same_results_file_is_refused(sweep):
    """issue 10 bug 9: two sweeps in one folder, different --output-dir, the same (default) results file: the
    second is refused at once and launches nothing; the first one's results stay whole."""
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 3} for i in range(2)])
    first = sweep.start("--gpus", "0", "1")
    try:
        sweep.wait_for(lambda: len(sweep.started()) == 2, timeout=30, what="the first sweep's runs")
        p = sweep.run("--gpus", "0", "1", "--output-dir", "out_b", timeout=60)
        out, err = communicate(first, 40, "the first sweep")
    finally:
        kill_pids(run_pids(sweep))
        kill_pids([p for f in (sweep.dir / "out_b").glob("*/fake.json") for p in _pids(f)])
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "train_sweep_results.json" in lines[0], p.stderr
    assert len(sweep.started()) == 2, f"the refused sweep launched runs: {sweep.started()}"
    assert not list((sweep.dir / "out_b").glob("*/fake.json"))
    assert not (sweep.dir / "out_b").exists(), "the refused sweep left the output folder it made"
    assert first.returncode == 0, out + err
    results = sweep.results()
    assert [r["model_name"] for r in results] == ["n_0_sleep_3", "n_1_sleep_3"]
    assert all(r["state"] == "complete" for r in results)
    assert all(Path(r["run_dir"]).parent == sweep.dir / "outputs" for r in results), results


# -- the records across crashes: the results file, the journal, run folders, a full disk -------------------------

def test_stale_partial_is_removed_after_a_full_sweep(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    (sweep.dir / "train_sweep_results.json.partial").write_text("[]")
    assert sweep.run().returncode == 0
    assert not (sweep.dir / "train_sweep_results.json.partial").exists()


@pytest.mark.parametrize("text", ["plain", "é€𝄞"], ids=["ascii", "utf8"])
def test_journal_survives_a_torn_last_line(sweep, text):
    """A crash mid-write tears the journal's last line; with a non-ASCII value it can be torn inside a multi-byte
    UTF-8 character (issue 10 bug 8). The same command again must not crash: the torn run runs again."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "s": text}, {"n": 1, "s": text}])
    assert sweep.run().returncode == 0
    first, torn = [r["model_name"] for r in sweep.results()]
    journal = sweep.dir / "outputs" / "journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[2] == b""
    last = lines[1]
    if text.isascii():
        cut = len(last) // 2
    else:
        cut = last.index("𝄞".encode()) + 2  # inside the 4-byte character
        with pytest.raises(UnicodeDecodeError):
            last[:cut].decode("utf-8")
    journal.write_bytes(lines[0] + b"\n" + last[:cut])  # as if killed mid-write
    (sweep.dir / "outputs" / torn / "run.json").unlink()  # and before run.json was written
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert starts(sweep) == Counter({first: 1, torn: 2})
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert starts(sweep) == Counter({first: 1, torn: 2})
    whole = []  # the record written after the torn line is whole
    for line in journal.read_bytes().split(b"\n"):
        try:
            whole.append(json.loads(line.decode("utf-8")))
        except ValueError:  # the torn line (UnicodeDecodeError is a ValueError)
            continue
    assert [r["model_name"] for r in whole].count(torn) == 1
    assert [r["state"] for r in whole if r["model_name"] == torn] == ["complete"]


@pytest.mark.parametrize("where, damage", [
    ("journal", {"identity": [1]}), ("journal", {"state": "failed", "attempt": "x"}),
    ("journal", {"attempts": 5}), ("journal", {"state": "finished"}), ("run.json", {"attempt": [2]}),
    ("journal", {"state": "failed", "attempt": None}), ("journal", {"state": "failed", "run_dir": None}),
], ids=["identity_a_list", "attempt_text", "attempts_a_number", "state_unknown", "run_json_attempt_a_list",
        "attempt_null", "run_dir_null"])
def test_resume_over_a_damaged_record_is_one_line_and_runs_nothing(sweep, where, damage):
    """A journal line or a run.json whose fields have the wrong type (hand-edited, or another tool's): the same
    command again was a traceback (unhashable identity, int('x'), list(5)) or, with an unknown state, ran the
    finished run again into its folder. Now: one line naming the file, the run and the key; nothing runs."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}])
    assert sweep.run().returncode == 0
    journal = sweep.dir / "outputs" / "journal.jsonl"
    first, *rest = journal.read_text().splitlines()
    if where == "journal":
        journal.write_text("\n".join([json.dumps({**json.loads(first), **damage}), *rest]) + "\n")
        (sweep.dir / "outputs" / "n_0" / "run.json").unlink()  # else it stands in for the damaged line
    else:
        journal.write_text("\n".join(rest) + "\n")  # the sweep died before the journal took n_0's record
        run_json = sweep.dir / "outputs" / "n_0" / "run.json"
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), **damage}))
    before = starts(sweep)
    p = sweep.run()
    key = next(iter(damage)) if where == "run.json" or "state" not in damage or len(damage) == 1 else list(damage)[1]
    assert_one_line_error(p, "n_0", repr(key), "journal.jsonl" if where == "journal" else "n_0/run.json")
    assert starts(sweep) == before
    assert sweep.run("--rerun").returncode == 0  # which sets the journal and the folders aside: no refusal
    assert all(r["state"] == "complete" for r in sweep.results())


def test_results_file_that_cannot_be_rewritten_stops_the_sweep_cleanly(sweep):
    """A results file whose folder disappears mid-sweep: one line, exit 3, the runs ended gracefully, no
    run.json left `running` (before: a traceback and every run SIGKILLed)."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 0.5}, {"n": 1, "sleep": 6}])
    (sweep.dir / "res").mkdir()
    proc = sweep.start("--max-processes-per-gpu", "2", "--output-file", "res/r.json")
    try:
        sweep.wait_for(lambda: len(sweep.started()) == 2, timeout=30, what="two runs")
        shutil.rmtree(sweep.dir / "res")
        out, err = communicate(proc, 30, "after the results folder went away")
    finally:
        kill_pids(run_pids(sweep))
    assert proc.returncode == 3, out + err
    assert "Traceback" not in err and err.startswith("train_sweep: error: cannot write"), err
    for run_json in (sweep.dir / "outputs").glob("*/run.json"):
        assert json.loads(run_json.read_text())["state"] != "running", run_json


def test_a_run_that_deletes_its_own_folder(sweep):
    """issue 16 (severe 5): a run that removed its own folder stopped the whole sweep (exit 3: run.json
    could not be written). Contract: the other runs complete, exit 0 or 1, all 3 runs in the results."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1, "rmdir_self": 1}, {"n": 2}])
    p = cli(sweep)
    no_traceback(p)
    assert p.returncode in (0, 1), (p.returncode, p.stdout + p.stderr)
    records = strict_results(sweep)
    assert [r["model_name"] for r in records] == ["n_0", "n_1_rmdir_self_1", "n_2"]
    assert records[0]["state"] == records[2]["state"] == "complete"


def test_disk_full_mid_sweep_stops_cleanly_and_keeps_the_last_good_results(sweep):
    disk = sweep.dir / "disk"
    if not mount_tmpfs(disk, "2m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        sweep.gpus.set(count=1)
        # the runs print, as real ones do: a run that prints while the disk is full must not block (issue 10 bug 7)
        sweep.config([{"n": 0}, {"n": 1, "spam": 3, "child": 1}, {"n": 2}])
        proc = sweep.start("--output-dir", str(disk / "out"))
        log = disk / "out" / "n_1_spam_3_child_1" / "train_stdout.log"
        sweep.wait_for(lambda: log.exists() and log.stat().st_size > 0, what="the second run's output")
        with open(disk / "filler", "wb") as f:  # fill the disk while the second run is printing
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            kill_pids(run_pids_in(disk / "out"))
            raise AssertionError(f"still running 30 s after the disk filled\n{out}\n{err}") from None
        assert proc.returncode == 3, out + err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("train_sweep: error: cannot ")  # record results in ... / write the run folder ...
        assert "No space left on device" in err
        results = sweep.results()  # valid JSON, on another disk: it keeps the run that ended on the full one too
        assert [r["model_name"] for r in results] == ["n_0", "n_1_spam_3_child_1"]
        assert "n_2" not in sweep.started()
        assert all_dead(run_pids_in(disk / "out"), 5)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def run_pids_in(folder: Path) -> list[int]:
    pids = []
    for f in folder.glob("*/fake.json"):
        info = json.loads(f.read_text())
        pids += [info["pid"], *info["grandchildren"]]
    return pids


def test_runs_printing_while_the_disk_is_full_do_not_hang_until_the_timeout(sweep):
    """issue 10 bug 7: a run that keeps printing while the output disk is full must not block on a log pipe that
    nobody reads any more (until --timeout): the sweep ends promptly and no run is recorded `timeout`."""
    disk = sweep.dir / "disk"
    if not mount_tmpfs(disk, "2m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        sweep.gpus.set(count=1)
        sweep.config([{"n": 0, "spam": 4}, {"n": 1}])
        out_dir = disk / "out"
        proc = sweep.start("--output-dir", str(out_dir), "--timeout", "120")
        log = out_dir / "n_0_spam_4" / "train_stdout.log"
        try:
            sweep.wait_for(lambda: log.exists() and log.stat().st_size > 0, timeout=30, what="the run's output")
            with open(disk / "filler", "wb") as f:  # fill the disk while the run prints
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            out, err = communicate(proc, 30, "a run printing on a full disk")
        finally:
            pids = [p for f in out_dir.glob("*/fake.json") for p in _pids(f)]
            kill_pids(pids)
        assert "Traceback" not in err, err
        records = []
        for name in ("train_sweep_results.json", "train_sweep_results.json.partial"):
            if (sweep.dir / name).exists():
                records += sweep.results(name)
        records += run_jsons(out_dir)
        assert not [r for r in records if r.get("state") == "timeout"], records
        assert all_dead(pids, 5)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def _pids(fake_json: Path) -> list[int]:
    try:
        info = json.loads(fake_json.read_text())
    except (OSError, ValueError):
        return []
    return [info["pid"], *info["grandchildren"]]
