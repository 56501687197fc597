"""The event loop end to end, through the CLI: progress counts, a run that exits during Ctrl+C, a terminal's
hang-up and nohup, the out-of-memory wait, NVML failing on every GPU, a full disk, two sweeps sharing a
results file, names that stay stable when a run is added. Each test failed on the code before its fix."""

from __future__ import annotations

import json
import os
import shutil
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import all_dead, communicate, kill_pids, mount_tmpfs, pid_alive, run_pids

# -- event lines and their counts ---------------------------------------------------------------------------

COUNTS = re.compile(r"\[([a-z]+ \d+(?: \| [a-z]+ \d+)*)\]")
EVENT = re.compile(r"^\d\d:\d\d:\d\d (start|complete|failed|timeout|oom|interrupted)\s+(\S+)")
ORDER = ["complete", "failed", "timeout", "oom", "interrupted", "running", "pending"]
ALWAYS = {"complete", "running", "pending"}


def parse_counts(line: str) -> dict[str, int]:
    """`[complete 3 | failed 1 | running 0 | pending 0]` -> {"complete": 3, ...}, checked against the format:
    complete, running and pending always; failed, timeout, oom, interrupted only when non-zero, in that order."""
    m = COUNTS.search(line)
    assert m, f"no [counts] bracket in {line!r}"
    pairs = [part.split(" ") for part in m.group(1).split(" | ")]
    names = [k for k, _ in pairs]
    counts = {k: int(v) for k, v in pairs}
    assert set(names) <= set(ORDER) and ALWAYS <= set(names), f"bad count names {names} in {line!r}"
    assert names == sorted(names, key=ORDER.index), f"counts out of order in {line!r}"
    assert all(counts[k] > 0 for k in names if k not in ALWAYS), f"a zero optional group in {line!r}"
    return counts


def event_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(kind, run name, line) of every start and finish line."""
    out = []
    for line in stdout.splitlines():
        m = EVENT.match(line)
        if m:
            out.append((m.group(1), m.group(2), line))
    return out


def starts(sweep) -> Counter:
    return Counter(sweep.started())


def run_jsons(folder: Path) -> list[dict]:
    out = []
    for f in folder.glob("*/run.json"):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    return out


# -- bug 1 ---------------------------------------------------------------------------------------------------


def test_progress_counts_add_up_and_count_the_run_that_just_finished(sweep):
    """issue 10 bug 1: every start and finish line's counts add up to the number of runs; a finish line already
    counts its own run; the first finish line carries an ETA while runs remain."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "sleep": s} for i, s in enumerate([0.3, 1.2, 0.6, 0.9])])
    p = sweep.run("--max-processes-per-gpu", "2", "--settle-seconds", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    events = event_lines(p.stdout)
    assert [k for k, _, _ in events].count("start") == 4 and [k for k, _, _ in events].count("complete") == 4, p.stdout
    for _, _, line in events:
        c = parse_counts(line)
        assert sum(c.values()) == 4, f"counts do not add up to the 4 runs: {line!r}"
    finishes = [line for kind, _, line in events if kind != "start"]
    for k, line in enumerate(finishes, 1):
        assert parse_counts(line)["complete"] == k, f"finish line {k} does not count its own run: {line!r}"
    assert parse_counts(finishes[-1]) == {"complete": 4, "running": 0, "pending": 0}, finishes[-1]
    assert "ETA " in finishes[0], f"no ETA on the first finish line while runs remain: {finishes[0]!r}"


def test_interrupted_runs_are_counted_as_interrupted_not_failed(sweep):
    """issue 10 bug 1: after Ctrl+C, the finish lines of the interrupted runs count them under `interrupted`;
    there is no `failed` group when nothing failed; the counts still add up to the number of runs."""
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 60} for i in range(3)])
    proc = sweep.start("--gpus", "0", "1", "--kill-grace", "5")
    out, err = signal_when_two_run(sweep, proc, signal.SIGINT)
    assert proc.returncode == 130, out + err
    finishes = [line for kind, _, line in event_lines(out) if kind != "start"]
    assert len(finishes) == 2 and all(" interrupted " in f"{line} " for line in finishes), out
    for k, line in enumerate(finishes, 1):
        c = parse_counts(line)
        assert "failed" not in c, f"an interrupted run counted as failed: {line!r}"
        assert c.get("interrupted") == k, f"finish line {k} does not count its interrupted run: {line!r}"
        assert sum(c.values()) == 3, f"counts do not add up to the 3 runs: {line!r}"


def signal_when_two_run(sweep, proc, sig):
    """Send `sig` to train_sweep once two runs have started; its output (every run process cleaned up)."""
    try:
        sweep.wait_for(lambda: len(sweep.started()) == 2, timeout=30, what="two runs")
        proc.send_signal(sig)
        return communicate(proc, 30, f"after {signal.Signals(sig).name}")
    finally:
        kill_pids(run_pids(sweep))


# -- bug 2 ---------------------------------------------------------------------------------------------------


def test_run_that_exited_0_before_ctrl_c_is_complete_and_not_rerun(sweep):
    """issue 10 bug 2: the main process exits 0; the sweep is still ending the leftover process (it ignores
    SIGTERM) when Ctrl+C arrives: the run is recorded complete, and the same command again does not rerun it."""
    sweep.gpus.set(count=1)
    sweep.config([{"linger": 1}])
    proc = sweep.start("--kill-grace", "3")
    run_dir = sweep.dir / "outputs" / "linger_1"
    try:
        sweep.wait_for(lambda: (run_dir / "fake.json").exists(), timeout=30, what="the run")
        lingerer = sweep.fake("linger_1")["grandchildren"][0]
        main_pid = sweep.fake("linger_1")["pid"]
        sweep.wait_for(lambda: not pid_alive(main_pid), timeout=30, what="the main process to exit")
        assert pid_alive(lingerer), "the lingering grandchild is gone before Ctrl+C: nothing to test"
        proc.send_signal(signal.SIGINT)
        out, err = communicate(proc, 30, "after SIGINT")
    finally:
        kill_pids(run_pids(sweep))
    assert "Traceback" not in err, err
    results = sweep.dir / "train_sweep_results.json"
    partial = sweep.dir / "train_sweep_results.json.partial"
    (record,) = json.loads((partial if partial.exists() else results).read_text())
    assert (record["state"], record["success"], record["returncode"]) == ("complete", True, 0), (record, out)
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["state"] == "complete" and run_json["returncode"] == 0, run_json
    p = sweep.run("--kill-grace", "3")
    assert all_dead(run_pids(sweep), 10)
    assert starts(sweep)["linger_1"] == 1, f"the complete run was started again\n{p.stdout}"
    assert p.returncode == 0, p.stdout + p.stderr


# -- bug 3 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("live", [False, True], ids=["no-live", "live"])
def test_terminal_hang_up_ends_the_runs_gracefully_and_exits_130(sweep, live):
    """issue 10 bug 3: the terminal goes away (SIGHUP, then EIO on every write to it): the sweep ends its runs
    with SIGTERM, writes the .partial results and exits 130, without a traceback and without leaving a run
    `running`."""
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 30} for i in range(2)])
    pty = sweep.start_on_pty("--gpus", "0", "1", "--kill-grace", "10", *([] if live else ["--no-live"]))
    try:
        sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) == 2
                       and len(sweep.started()) == 2, timeout=30, what="two runs")
        pids = run_pids(sweep)
        before = pty.output()
        pty.hang_up()
        try:
            rc = pty.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("train_sweep still running 30 s after the terminal hung up") from None
    finally:
        pty.kill()
        kill_pids(run_pids(sweep))
    assert "Traceback" not in before
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert "Traceback" not in log, log
    assert rc == 130, f"exit code {rc}\n{log}"
    assert all_dead(pids, 10), [p for p in pids if pid_alive(p)]
    left = [r["model_name"] for r in run_jsons(sweep.dir / "outputs") if r.get("state") == "running"]
    assert not left, f"run.json still says running: {left}"
    partial = sweep.results("train_sweep_results.json.partial")
    assert [r["state"] for r in partial] == ["interrupted", "interrupted"], partial
    assert [r.get("signal") for r in partial] == ["SIGTERM", "SIGTERM"], "the runs were not ended gracefully"


# -- bug 4 ---------------------------------------------------------------------------------------------------


def test_nohup_sweep_ignores_sighup(sweep):
    """issue 10 bug 4: started with SIGHUP ignored (nohup), the sweep keeps ignoring it: it runs to the end."""
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 1.5} for i in range(2)])
    proc = subprocess.Popen(sweep.argv("--gpus", "0", "1"), cwd=sweep.dir, env=sweep.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    out, err = signal_when_two_run(sweep, proc, signal.SIGHUP)
    assert proc.returncode == 0, out + err
    assert [r["state"] for r in sweep.results()] == ["complete", "complete"]


# -- bug 5 ---------------------------------------------------------------------------------------------------


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


# -- bug 6 ---------------------------------------------------------------------------------------------------


def test_nvml_failing_on_every_gpu_keeps_finished_runs_and_exits_3(sweep):
    """issue 10 bug 6: every GPU's NVML calls fail from the moment the first run ends (the second is queued):
    the finished run is recorded, nothing is left `running`, exit 3 with one error line about NVML."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "break_nvml": 1}, {"n": 1}])
    p = sweep.run(timeout=60)
    kill_pids(run_pids(sweep))
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.returncode == 3, p.stdout + p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_sweep: error:") and "NVML" in err[0], p.stderr
    results = sweep.results()
    first = next(r for r in results if r["model_name"] == "n_0_break_nvml_1")
    assert first["state"] == "complete", results
    left = [r["model_name"] for r in run_jsons(sweep.dir / "outputs") if r.get("state") == "running"]
    assert not left, f"run.json still says running: {left}"


# -- bug 7 ---------------------------------------------------------------------------------------------------


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


# -- bug 9 ---------------------------------------------------------------------------------------------------


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
    assert first.returncode == 0, out + err
    results = sweep.results()
    assert [r["model_name"] for r in results] == ["n_0_sleep_3", "n_1_sleep_3"]
    assert all(r["state"] == "complete" for r in results)
    assert all(Path(r["run_dir"]).parent == sweep.dir / "outputs" for r in results), results


# -- bug 10 --------------------------------------------------------------------------------------------------


def test_configs_sweep_does_not_name_the_default_config_file(sweep):
    """issue 10 bug 10: with --configs, neither the first event line nor outputs/sweep.json name
    train_sweep_config.json (there is none); sweep.json names the --configs files."""
    sweep.gpus.set(count=1)
    (sweep.dir / "a.py").write_text("lr = 1\n")
    (sweep.dir / "b.py").write_text("lr = 2\n")
    p = sweep.run("--configs", "a.py", "b.py")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not (sweep.dir / "train_sweep_config.json").exists()
    assert "train_sweep_config.json" not in p.stdout, p.stdout
    text = (sweep.dir / "outputs" / "sweep.json").read_text()
    settings = json.loads(text)
    assert settings.get("config_file") != "train_sweep_config.json", settings
    assert "train_sweep_config.json" not in text, text
    assert "a.py" in text


# -- bug 11 --------------------------------------------------------------------------------------------------


def test_adding_a_run_whose_name_clashes_keeps_the_existing_runs_name(sweep):
    """issue 10 bug 11: a complete run keeps its name when a new run whose name cleans to the same text is
    added: it is skipped, the new one gets another name."""
    sweep.gpus.set(count=1)
    sweep.config([{"s": "a b"}])
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert (sweep.dir / "outputs" / "s_a_b" / "run.json").exists()
    sweep.config([{"s": "a b"}, {"s": "a_b"}])
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    results = sweep.results()
    names = [r["model_name"] for r in results]
    assert names[0] == "s_a_b", names
    assert names[1].startswith("s_a_b_") and names[1] != "s_a_b", names
    assert [r["hyperparams"] for r in results] == [{"s": "a b"}, {"s": "a_b"}]
    assert all(r["state"] == "complete" for r in results)
    assert starts(sweep) == Counter({"s_a_b": 1, names[1]: 1}), starts(sweep)


# -- found by review after the reshape -----------------------------------------------------------------------


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


def test_an_expired_oom_wait_does_not_spin_the_loop(tmp_path):
    """After OOM_WAIT_S, a waiter that still cannot start (no free slot) must not make the loop wake at once
    again and again (before: a wake-up time in the past, 100% CPU)."""
    from train_sweep import GpuPool, ListSource, Policy, Reporter, ResultsWriter, Run, Settings, Sweep

    class Idle:
        own_timeout = False

        def next_poll(self, now):
            return None

    run = Run(0, "r", {}, ["x"], tmp_path / "r")
    sweep = Sweep(ListSource([]), Idle(), GpuPool([0], Policy(), None), ResultsWriter(tmp_path / "res.json"),
                  Reporter(stream=open(os.devnull, "w")), Settings())
    sweep.oom_wait[run] = -10_000.0  # waiting since long ago
    wake = sweep._next_wakeup(0.0)
    assert wake is None or wake > 0, wake


def test_an_oom_requeued_run_that_needs_more_gpus_than_are_left_fails(sweep):
    """A run that ran out of memory waits; one of its 2 GPUs is taken out meanwhile: it fails with the reason
    (before: the sweep never ended)."""
    sweep.gpus.set(count=2)
    marker = sweep.dir / "oomed"
    sweep.config({"runs": [{"n": 0, "oom_once": str(marker), "break_gpu": 1, "gpus_per_run": 2}]})
    p = sweep.run("--gpus", "0", "1", timeout=40)
    (record,) = sweep.results()
    assert record["state"] == "failed" and "needs 2 GPUs and 1 are left" in (record["error"] or ""), record
    assert p.returncode == 1, p.stdout + p.stderr


def test_duration_ends_when_the_main_process_exits_and_no_false_timeout_line(sweep):
    """A run whose main process exits at once but leaves a process that ignores SIGTERM: its duration is its
    main process's (before: the cleanup's 3 s were counted), and --timeout says nothing of a run that had
    already exited (before: 'timeout: ... ending it', then 'complete')."""
    sweep.gpus.set(count=1)
    sweep.config([{"linger": 1}])
    p = sweep.run("--kill-grace", "3", "--timeout", "1")
    (record,) = sweep.results()
    assert record["state"] == "complete", p.stdout
    assert record["duration_seconds"] < 2.0, record["duration_seconds"]
    assert "timeout:" not in p.stdout, p.stdout
