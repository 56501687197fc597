"""Starting and ending runs, through the real CLI: a run's environment and working directory; the end of its
process tree (its main process exits, --timeout, processes it leaves, daemons found through the run's cgroup);
Ctrl+C (and a second one), SIGTERM and SIGHUP, a terminal that hangs up, nohup, SIGINT in the first
milliseconds; kill -9 of the sweep (the guardian ends the runs; the next attempt waits for the old processes);
the guardian's and the cgroups' edge cases; timeouts of 30 days."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    Sweep, all_dead, cli, communicate, kill_pids, no_traceback, pid_alive, run_jsons, run_pids, signal_when_two_run,
    starts, strict_json,
)


# -- starting a run ----------------------------------------------------------------------------------------------

def test_child_environment_and_working_directory(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"x": 1}])
    p = sweep.run("--gpus", "1")
    assert p.returncode == 0, p.stderr
    info = sweep.fake("x_1")
    assert info["cwd"] == str(sweep.dir)
    env = info["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["TRAIN_SWEEP_RUN_NAME"] == "x_1"
    assert env["TRAIN_SWEEP_RUN_DIR"] == str(sweep.dir / "outputs" / "x_1")
    assert Path(env["TRAIN_SWEEP_RUN_DIR"]).is_absolute()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert info["argv"] == ["x=1"]


# -- a run's end: its main process, --timeout, what it leaves behind ---------------------------------------------

def test_timeout_ends_the_whole_tree(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"hang": 1, "child": 1}])
    p = sweep.run("--timeout", "1", "--kill-grace", "0.5")
    assert p.returncode == 1
    (r,) = sweep.results()
    assert r["state"] == "timeout" and r["signal"] == "SIGKILL"
    assert all_dead(run_pids(sweep), 5)


def test_leftover_processes_are_ended_when_the_main_process_exits(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"child": 1, "escape": 1}])
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    pids = run_pids(sweep)
    assert len(pids) == 3
    assert all_dead(pids, 5), [pid for pid in pids if pid_alive(pid)]


def test_duration_ends_when_the_main_process_exits_and_no_false_timeout_line(sweep):
    """A run whose main process exits at once but leaves a process that ignores SIGTERM: its duration is its
    main process's (before: the cleanup's 3 s were counted), and --timeout says nothing of a run that had
    already exited (before: 'timeout: ... ending it', then 'complete')."""
    sweep.gpus.set(count=1)
    sweep.config([{"linger": 1}])
    p = sweep.run("--kill-grace", "8", "--timeout", "4")  # (its two Pythons start well within 4 s, also loaded)
    (record,) = sweep.results()
    assert record["state"] == "complete", p.stdout
    assert record["duration_seconds"] < 4.0, record["duration_seconds"]
    assert "timeout:" not in p.stdout, p.stdout


def test_thirty_day_timeout(sweep):
    """issue 16: `--timeout 2592000` (30 days) raised OverflowError (the event loop's wait, in ms, past
    what epoll takes). Contract: a quick 2-run sweep exits 0."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1}])
    p = cli(sweep, "--timeout", "2592000")
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["state"] for r in sweep.results()] == ["complete", "complete"]


def test_thirty_day_kill_grace(sweep):
    """issue 16: `--kill-grace 2592000` raised OverflowError as soon as a run was being ended (the wait for
    the SIGKILL deadline). Here run n_1 times out after 1 s and exits 0.5 s after its SIGTERM. Contract: no
    traceback, the sweep goes on and ends normally: exit 1, states complete and timeout."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1, "sleep": 30, "term_delay": 0.5}])
    p = cli(sweep, "--kill-grace", "2592000", "--timeout", "1")
    no_traceback(p)
    assert p.returncode == 1, p.stdout + p.stderr
    assert [r["state"] for r in sweep.results()] == ["complete", "timeout"]


# -- Ctrl+C, SIGTERM, SIGHUP, a terminal that goes away ----------------------------------------------------------

def test_ctrl_c_ends_every_tree_writes_partial_and_exits_130(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"sleep": 60, "child": 1, "escape": 1, "n": i} for i in range(4)])
    proc = sweep.start("--gpus", "0", "1")
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) == 2, what="two runs")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    partial = sweep.results("train_sweep_results.json.partial")
    assert sorted(r["state"] for r in partial) == ["interrupted", "interrupted", "pending", "pending"]
    assert [r["index"] for r in partial] == [0, 1, 2, 3]
    assert all(r["success"] is False for r in partial)
    pids = run_pids(sweep)
    assert len(pids) == 6
    assert all_dead(pids, 5)


def test_a_partial_file_that_could_not_be_written_is_not_named_as_where_the_records_are(sweep):
    """An adversarial pass: on a full disk, the summary said 'Interrupted: every run's record is in
    train_sweep_results.json.partial', a file it could not write. (A folder in its place here: root writes
    to a read-only folder, and a test has no disk to fill.)"""
    sweep.gpus.set(count=1)
    sweep.config([{"sleep": 60, "n": i} for i in range(2)])
    proc = sweep.start("--no-live")
    sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/fake.json")), what="the first run")
    (sweep.dir / "train_sweep_results.json.partial").mkdir()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "every run's record is in train_sweep_results.json.partial" not in out, out
    assert "train_sweep_results.json.partial could not be written" in out, out + err


def test_second_ctrl_c_kills_at_once(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"hang": 1}])
    proc = sweep.start("--kill-grace", "60")
    sweep.wait_for(lambda: (sweep.dir / "outputs" / "hang_1" / "fake.json").exists(), what="the run")
    sweep.wait_for(lambda: "hanging" in (sweep.dir / "outputs/hang_1/train_stdout.log").read_text(), what="hang")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the run ignores SIGTERM; the sweep waits out the grace period
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    (r,) = sweep.results("train_sweep_results.json.partial")
    assert r["state"] == "interrupted" and r["signal"] == "SIGKILL"
    assert all_dead(run_pids(sweep), 5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_handled_like_ctrl_c(sweep, sig):
    sweep.gpus.set(count=1)
    sweep.config([{"sleep": 60, "child": 1}, {"sleep": 0}])
    proc = sweep.start()
    sweep.wait_for(lambda: len(sweep.started()) == 1, what="the first run")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"{sig.name}: stopping" in out
    states = [r["state"] for r in sweep.results("train_sweep_results.json.partial")]
    assert states == ["interrupted", "pending"]
    assert all_dead(run_pids(sweep), 5)


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


# A sitecustomize that marks the moment train_sweep.py's own code starts running: its first import after
# `from __future__ import annotations`. What comes before (the interpreter's start-up, the script's
# compilation, and the import of __future__ that the future statement itself makes, from disk where the
# interpreter has not loaded it yet) no script can guard: a future statement must be its first line.
SCRIPT_STARTED_HOOK = """\
import os
import sys


def _h16_install():
    marker = os.environ.get("H16_SCRIPT_STARTED")
    if not marker or not sys.argv or not sys.argv[0].endswith("train_sweep.py"):
        return
    state = {"run_file": False}

    def hook(event, args):
        if event == "cpython.run_file":
            state["run_file"] = True
        elif event == "import" and state["run_file"] and args[0] != "__future__":
            state["run_file"] = False
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644))
            except OSError:
                pass

    sys.addaudithook(hook)


_h16_install()
"""


def _sigint_once(sweep, delay: float, sig: signal.Signals = signal.SIGINT) -> str | None:
    """Start the CLI, send `sig` `delay` s after train_sweep.py's first statement; what went wrong, if any."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 5}, {"n": 1, "sleep": 5}])
    site = sweep.dir / "h16_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SCRIPT_STARTED_HOOK)
    marker = sweep.dir / "script_started"
    env = sweep.env(H16_SCRIPT_STARTED=str(marker))
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(sweep.argv(), cwd=sweep.dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    try:
        end = time.monotonic() + 30
        while not marker.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.0005)
        if not marker.exists():
            return f"exited ({proc.returncode}) before the start-up marker was written"
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if "Traceback" in err or "KeyboardInterrupt" in err or proc.returncode != 130:
        return f"exit {proc.returncode}, stderr {err[-300:]!r}"
    for name in ("train_sweep_results.json", "train_sweep_results.json.partial"):
        path = sweep.dir / name
        if path.exists():
            try:
                strict_json(path.read_text())
            except ValueError as e:
                return f"{name} is not valid JSON: {e}"
    return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_and_sighup_very_early_exit_130_too(tmp_path, sig):
    """SIGTERM or SIGHUP in the first moments (before main() takes over signals) ended the CLI by the signal
    (exit 143, 129), not the 130 that the same signal a second later gives. The delays of the test below."""
    rng = random.Random(16)
    delays = [0.0, 0.02] + [rng.uniform(0, 0.15) for _ in range(3)]
    problems = []
    for k, delay in enumerate(delays):
        (tmp_path / f"attempt_{k}").mkdir()
        if problem := _sigint_once(Sweep(tmp_path / f"attempt_{k}"), delay, sig):
            problems.append(f"{sig.name} after {delay * 1000:.1f} ms: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_while_the_sweep_sets_up_is_an_orderly_interrupt(sweep, sig):
    """Once main() runs, SIGTERM and SIGHUP stop the CLI as Ctrl+C does (it says so, its files are closed):
    the start's handler (os._exit(130), for the imports) stayed in force until the event loop, so a SIGTERM
    while the sweep set up (NVML, the lock, the journal) ended it without a word. Deterministic: a pynvml
    stand-in sends the signal to its own process from nvmlInit."""
    sweep.config([{"n": 0}])
    fake = sweep.dir / "signalling_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(f"import os\n\ndef nvmlInit():\n    os.kill(os.getpid(), {int(sig)})\n")
    env = sweep.env()
    env["PYTHONPATH"] = os.pathsep.join([str(fake), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    p = subprocess.run(sweep.argv("--no-live"), cwd=sweep.dir, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 130 and "interrupted" in p.stderr and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert not (sweep.dir / "outputs" / "n_0").exists()


def test_ctrl_c_while_hydra_is_imported_is_an_orderly_interrupt(sweep):
    """From an adversarial pass: Ctrl+C in the first 0.3 s of a sweep with overrides (a=1,2,3) landed in Hydra's
    import, which omegaconf turned into an AttributeError: a 60-line traceback, exit 1 (1 in 20-40 tries).
    Deterministic: a hydra stand-in signals its own process while it is imported and turns the
    KeyboardInterrupt into its own error, as omegaconf does."""
    fake = sweep.dir / "interrupted_hydra"
    (fake / "hydra" / "core" / "override_parser").mkdir(parents=True)
    for init in ("hydra", "hydra/core", "hydra/core/override_parser"):
        (fake / init / "__init__.py").write_text("")
    (fake / "hydra" / "core" / "override_parser" / "overrides_parser.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(1)\n"
        "except KeyboardInterrupt:\n"
        "    raise AttributeError(\"'NoneType' object has no attribute '_invalidate_flags_cache'\")\n")
    env = sweep.env()
    env["PYTHONPATH"] = os.pathsep.join([str(fake), env.get("PYTHONPATH", "")])
    p = subprocess.run(sweep.argv("--no-live", "a=1,2,3"), cwd=sweep.dir, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 130 and "interrupted" in p.stderr and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert not (sweep.dir / "outputs").exists()


def test_sigint_very_early(tmp_path):
    """issue 16: SIGINT within 0-150 ms of train_sweep.py starting (its imports, argument parsing, config,
    lock, first launch) gave a KeyboardInterrupt traceback and exit -2. Contract, 10 times over: exit 130,
    no traceback or KeyboardInterrupt on stderr, any results file or .partial valid JSON.
    The delays are random (seeded): 0 ms, five log-uniform over 0.1-150 ms (to probe the first
    milliseconds) and four uniform over 0-150 ms. They count from the script's first statement (an audit hook in a test
    sitecustomize marks it): a signal during the interpreter's start-up or the script's compilation kills
    Python before any code of the script can run, which no fix in the script can change."""
    rng = random.Random(16)
    delays = [0.0] + [10 ** rng.uniform(-4, math.log10(0.15)) for _ in range(5)]
    delays += [rng.uniform(0, 0.15) for _ in range(4)]
    problems = []
    for k, delay in enumerate(delays):
        folder = tmp_path / f"attempt_{k}"
        folder.mkdir()
        problem = _sigint_once(Sweep(folder), delay)
        if problem:
            problems.append(f"SIGINT after {delay * 1000:.1f} ms: {problem}")
    assert not problems, "\n".join(problems)


# -- kill -9 of the sweep: the guardian --------------------------------------------------------------------------

def test_sigkill_of_train_sweep_leaves_no_process_behind(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"sleep": 60, "child": 1, "escape": 1, "n": i} for i in range(2)])
    proc = sweep.start("--kill-grace", "1")
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) == 2, what="two runs")
    proc.kill()
    proc.communicate()
    pids = run_pids(sweep)
    assert len(pids) == 6
    assert all_dead(pids, 10), [p for p in pids if pid_alive(p)]


def test_after_kill_9_the_new_attempt_waits_for_the_old_processes(sweep):
    """issue 16 (severe 4): after `kill -9` of the sweep, its run took ~3 s to exit on the guardian's
    SIGTERM, and the same command run at once started the run's new attempt beside the old one (two
    trainings on one folder and GPU). Contract: the new attempt starts only after every process of the
    earlier attempt has exited."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 60, "term_delay": 3}])
    first = sweep.start()
    second = None
    try:
        sweep.wait_for(lambda: sweep.started(), what="the first attempt")
        old_pid = next(e["pid"] for e in sweep.events() if e["event"] == "start")
        gone: list[float] = []

        def watch() -> None:
            while pid_alive(old_pid):
                time.sleep(0.01)
            gone.append(time.time())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        first.kill()
        first.wait(timeout=30)  # not communicate(): the guardian keeps the sweep's pipes open a while
        second = sweep.start()
        sweep.wait_for(lambda: len(sweep.started()) >= 2, timeout=40, what="the second attempt")
        watcher.join(timeout=30)
        assert gone, "the first attempt's process never exited"
        new_start = [e["t"] for e in sweep.events() if e["event"] == "start"][1]
        exits = [e["t"] for e in sweep.events() if e["event"] == "exit" and e["pid"] == old_pid]
        old_exit = exits[0] if exits else gone[0] - 0.1
        assert new_start >= old_exit, f"new attempt started {old_exit - new_start:.2f} s before the old one exited"
    finally:
        for proc in (second, first):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=30)


def test_after_kill_9_a_sweep_not_yet_reaped_is_waited_for_not_taken_for_running(sweep):
    """An adversarial pass: a Python driver (a notebook) that kills the sweep and starts it again before it reaps
    the first was refused: 'another train_sweep (PID N) is running', N a zombie. It waits for the runs instead."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 60, "term_delay": 2}])
    first = sweep.start()
    try:
        sweep.wait_for(lambda: sweep.started(), what="the first attempt")
        os.kill(first.pid, signal.SIGKILL)  # not reaped: a zombie until first.wait()
        sweep.wait_for(lambda: Path(f"/proc/{first.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                       what="the killed sweep to be a zombie")
        sweep.config([{"n": 1}])
        p = sweep.run()
        assert "another train_sweep" not in p.stderr and "is gone; waiting for its runs to end" in p.stderr, p.stderr
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        first.kill()
        first.wait(timeout=30)


def test_guardian_never_signals_a_group_whose_pid_was_reused():
    """issue 16 item 11: a registered group whose leader is now another process (its PID was reused after the
    run's group was gone) is not signalled when train_sweep dies."""
    from train_sweep import Guardian

    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        guardian = Guardian("h16reuse", 2.0)
        guardian._send(f"+ {victim.pid} 1")  # registered with another start time: the PID was reused since
        guardian.wait()
        assert victim.poll() is None, "the guardian killed an unrelated process"
    finally:
        victim.kill()
        victim.wait()


def test_guardian_does_not_wait_on_zombies():
    """issue 16 item 11: a group left with zombies only is gone: the guardian exits at once, not after its
    whole grace period."""
    from train_sweep import Guardian

    zombie = subprocess.Popen(["true"], start_new_session=True)
    time.sleep(0.3)  # exited, not reaped: a zombie that leads its group
    try:
        guardian = Guardian("h16zombie", 30.0)
        guardian.add(zombie.pid)
        t = time.monotonic()
        guardian.close()
        guardian.proc.wait(timeout=40)
        assert time.monotonic() - t < 10, "the guardian waited out its grace period on a zombie"
    finally:
        zombie.wait()


# -- daemons and the runs' cgroups -------------------------------------------------------------------------------

def _cgroups_available(sweep) -> bool:
    return "no cgroup v2 of its own" not in (sweep.dir / "outputs" / "sweep.log").read_text()


def test_a_daemon_that_cleared_its_environment_does_not_outlive_its_run(sweep):
    """issue 16 item 7: a run's daemon (double fork, setsid, an empty environment) is found by the run's cgroup
    and ended with the run, where the system lets the sweep make cgroups (root here, CI too)."""
    sweep.gpus.set(count=1)
    sweep.config([{"daemon": 1}])
    p = sweep.run()
    daemon = int((sweep.dir / "outputs" / "daemon_1" / "daemon.pid").read_text())
    if not _cgroups_available(sweep):
        os.kill(daemon, signal.SIGKILL)
        pytest.skip("no cgroup v2 the sweep may write to (the README's fallback applies)")
    try:
        assert p.returncode == 0, p.stdout + p.stderr
        assert all_dead([daemon], 5), "the daemon outlived its run"
    finally:
        if pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_a_daemon_started_in_the_first_instant_of_a_run_is_in_its_cgroup(sweep):
    """A run that daemonizes at once (a shell script, the daemon forked a millisecond after exec, its session and
    environment left) is found by the run's cgroup: the run is in its cgroup before its program runs, not moved
    there once the sweep gets to it (a race CI lost under load)."""
    script = sweep.dir / "daemonize.sh"
    script.write_text('#!/bin/sh\nsetsid env -i sh -c \'echo $$ > "$0"; exec sleep 3600\' "$TRAIN_SWEEP_RUN_DIR/d.pid" &\n'
                      'while [ ! -s "$TRAIN_SWEEP_RUN_DIR/d.pid" ]; do sleep 0.01; done\n')
    script.chmod(0o755)
    sweep.gpus.set(count=1)
    sweep.config([{"n": i} for i in range(5)])
    p = sweep.run("--no-live", "--command", "./daemonize.sh", trainer=False)
    daemons = [int(f.read_text()) for f in (sweep.dir / "outputs").glob("n_*/d.pid")]
    try:
        assert len(daemons) == 5, p.stdout + p.stderr
        if not _cgroups_available(sweep):
            pytest.skip("no cgroup v2 the sweep may write to (the README's fallback applies)")
        assert p.returncode == 0, p.stdout + p.stderr
        assert all_dead(daemons, 5), "a daemon outlived its run"
    finally:
        for pid in daemons:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_run_gets_its_environment_whole_and_what_cannot_exec_is_refused(sweep):
    """From an adversarial pass: runs started through /bin/sh (to be in their cgroup before they run) lost every
    variable whose name is no shell name (environment modules' BASH_FUNC_module%%, the config's "env" 'MY-VAR'),
    and a file without '#!' was run as a shell script, one with a missing interpreter failed with the cgroup's
    path in its message (no fail fast: each message differed). The environment goes whole to the run, and what
    cannot be executed is refused as 'could not start', cgroups or not."""
    sweep.gpus.set(count=1)
    sweep.config({"env": {"MY-VAR": "x", "a.b": "z"}, "runs": [{"n": 0}]})
    p = sweep.run(**{"FOO-BAR": "1", "BASH_FUNC_module%%": "() {  echo m\n}"})
    assert p.returncode == 0, p.stdout + p.stderr
    env = json.loads((sweep.dir / "outputs" / "n_0" / "env.json").read_text())
    assert {k: env.get(k) for k in ("MY-VAR", "a.b", "FOO-BAR", "BASH_FUNC_module%%")} == {
        "MY-VAR": "x", "a.b": "z", "FOO-BAR": "1", "BASH_FUNC_module%%": "() {  echo m\n}"}
    (sweep.dir / "noshebang.py").write_text("import sys\nprint(1)\n")
    (sweep.dir / "badinterp.sh").write_text("#!/no/such/interpreter\necho hi\n")
    for script, why in (("noshebang.py", "Exec format error"), ("badinterp.sh", "No such file or directory")):
        (sweep.dir / script).chmod(0o755)
        sweep.config([{"n": i} for i in range(5)])
        p = sweep.run("--no-live", "--command", f"./{script}", "--output-dir", f"out_{script}", trainer=False)
        records = sweep.results()
        assert p.returncode == 1 and all(r["state"] == "failed" and r["returncode"] is None for r in records), p.stdout
        assert records[0]["error"] == f"could not start ./{script}: {why}", records[0]
        assert "Stopped early: the first 3 runs all failed" in p.stdout, p.stdout  # the same reason each time


def test_a_daemon_does_not_outlive_a_killed_sweep(sweep):
    """issue 16 item 7: kill -9 of the sweep: the guardian ends the daemon through the run's cgroup."""
    sweep.gpus.set(count=1)
    sweep.config([{"daemon": 1, "sleep": 60}])
    proc = sweep.start("--kill-grace", "2")
    pid_file = sweep.dir / "outputs" / "daemon_1_sleep_60" / "daemon.pid"
    try:
        sweep.wait_for(pid_file.exists, timeout=30, what="the daemon")
        daemon = int(pid_file.read_text())
        if not _cgroups_available(sweep):
            pytest.skip("no cgroup v2 the sweep may write to (the README's fallback applies)")
        proc.kill()
        proc.wait()
        assert all_dead([daemon], 15), "the daemon outlived the killed sweep"
    finally:
        proc.kill()
        for pid in run_pids(sweep):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if pid_file.exists() and pid_alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_guardian_ends_a_run_in_its_cgroup_that_was_not_registered_yet(tmp_path):
    """kill -9 of the sweep between a run's start and its group's registration with the guardian: the guardian,
    told of no group, ended nothing and left the run running. It looks in the runs' cgroups whatever it was told."""
    from train_sweep import Guardian, Run, RunCgroups, own_cgroup_dir

    cgroups = RunCgroups(f"h31unreg{os.getpid()}")
    if cgroups.root is None:
        pytest.skip(cgroups.why)
    run = Run(index=0, name="r", hyperparams={}, argv=["sleep", "60"], run_dir=tmp_path)
    path, proc = cgroups.make(run), None
    try:
        home = own_cgroup_dir()
        proc = cgroups.popen(path, lambda: subprocess.Popen(["sleep", "60"], start_new_session=True))
        assert RunCgroups.pids(path) == [proc.pid], "the run is in its cgroup, the sweep back in its own"
        assert own_cgroup_dir() == home
        sweep_dead_before_add = Guardian(f"h31unreg{os.getpid()}", 1.0, cgroups=cgroups.root)
        sweep_dead_before_add.close()  # its stdin closed: train_sweep is gone, no group was registered
        proc.wait(timeout=15)
        sweep_dead_before_add.proc.wait(timeout=15)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cgroups.close()


def test_a_sweep_that_cannot_step_back_out_of_a_runs_cgroup_is_never_signalled_as_the_run(tmp_path):
    """From a review: the sweep steps into a run's cgroup to start it; had the step back failed (unlikely: the
    same permission as the step in), the sweep stayed there, counted among the run's processes: the run never
    ended, and its SIGTERM, cgroup.kill, or the guardian, ended the sweep. It steps into the cgroup above the
    runs' instead (which no one signals), and is never counted among a run's processes."""
    from train_sweep import Run, RunCgroups, own_cgroup_dir

    cgroups = RunCgroups(f"h32stuck{os.getpid()}")
    if cgroups.root is None:
        pytest.skip(cgroups.why)
    home, proc = cgroups.home, None
    path = cgroups.make(Run(index=0, name="r", hyperparams={}, argv=["sleep", "60"], run_dir=tmp_path))
    try:
        cgroups.home = tmp_path / "unwritable"  # the step back fails
        proc = cgroups.popen(path, lambda: subprocess.Popen(["sleep", "60"], start_new_session=True))
        assert own_cgroup_dir() == cgroups.root, "the sweep stayed in the run's cgroup"
        assert RunCgroups.pids(path) == [proc.pid]
    finally:
        (home / "cgroup.procs").write_text("0")  # (this test's process back where it was)
        if proc is not None:
            proc.kill()
            proc.wait()
        cgroups.close()


def test_cgroups_already_removed_by_the_guardian_are_no_error(tmp_path):
    """The guardian removes the sweep's cgroups on its way out; if it is quicker than the sweep, the sweep's
    own clean-up finds nothing and says nothing (before: FileNotFoundError from glob, a traceback at the end)."""
    from train_sweep import RunCgroups

    cgroups = RunCgroups("h16gone")
    if cgroups.root is None:
        pytest.skip(cgroups.why)

    class Vanishing(type(cgroups.root)):  # removed by the guardian while the sweep lists it (the race)
        def glob(self, pattern):
            raise FileNotFoundError(2, "No such file or directory", str(self))

    cgroups.root.rmdir()
    cgroups.root = Vanishing(cgroups.root)
    cgroups.close()
