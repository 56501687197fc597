"""Sweeps that survive: resume, --rerun, retries, out-of-memory requeue, the lock, SIGHUP, disk full."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import all_dead, kill_pids, mount_tmpfs, run_pids


def starts(sweep) -> Counter:
    return Counter(sweep.started())


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


def test_a_changed_command_is_a_different_run(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    assert sweep.run().returncode == 0
    p = sweep.run("--command", f"python {Path(__file__).parent / 'fake_trainer.py'} extra=1")
    assert p.returncode == 0
    assert "resume:" not in p.stdout
    assert starts(sweep)["n_0"] == 2


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


def test_second_sweep_on_the_same_output_folder_is_refused(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"sleep": 60}])
    first = sweep.start()
    sweep.wait_for(lambda: sweep.started(), what="the first sweep's run")
    p = sweep.run(timeout=20)
    assert p.returncode == 2
    assert f"another train_sweep (PID {first.pid}) is running a sweep in this output folder" in p.stderr
    first.kill()  # its lock dies with it: the next sweep takes over
    first.communicate()
    assert all_dead(run_pids(sweep), 10)
    sweep.config([{"sleep": 0}])
    assert sweep.run().returncode == 0


def test_gpu_that_starts_failing_mid_sweep_is_taken_out(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 0.5} for i in range(8)])
    proc = sweep.start("--gpus", "0", "1")
    sweep.wait_for(lambda: len(sweep.started()) >= 2, what="two runs")
    sweep.gpus.update(0, fail=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert out.count("taken out of the pool") == 1
    gpus = [r["gpu_id"] for r in sweep.results()]
    assert gpus[-1] == 1 and gpus.count(0) <= 3


def test_two_sweeps_sharing_gpus_see_each_others_memory(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"big": 1, "mem_mb": 50000, "sleep": 4}], "a.json")
    first = sweep.start("--config-file", "a.json", "--output-dir", "out_a", "--output-file", "a_results.json")
    sweep.wait_for(lambda: any(sweep.gpus.procs_dir.glob("*.json")), what="the first sweep's memory")
    sweep.config([{"n": i, "sleep": 0.2} for i in range(4)], "b.json")
    p = sweep.run("--config-file", "b.json", "--output-dir", "out_b", "--output-file", "b_results.json",
                  "--max-processes-per-gpu", "2")
    first.communicate(timeout=30)
    big_gpu = json.loads((sweep.dir / "a_results.json").read_text())[0]["gpu_id"]
    assert p.returncode == 0
    assert {r["gpu_id"] for r in sweep.results("b_results.json")} == {1 - big_gpu}


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
