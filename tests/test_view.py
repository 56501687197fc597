"""What the sweep shows: plain event lines under a pipe and their counts, sweep.log, live logs, a run's huge
lines cut where they are shown or recorded, the live view in a real terminal (tmux) and its labels, the dry
run's table, the summary."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    FAKE_TRAINER, TRAIN_SWEEP, cli, communicate, event_lines, kill_pids, no_traceback, run_pids, signal_when_two_run,
    strict_results,
)


# -- plain event lines and their counts --------------------------------------------------------------------------

def _counts(line: str) -> dict[str, int]:
    m = re.search(r"\[([a-z]+ \d+(?: \| [a-z]+ \d+)*)\]", line)
    assert m, f"no [counts] in {line!r}"
    return {k: int(v) for k, v in (part.split(" ") for part in m.group(1).split(" | "))}


def test_plain_event_lines_when_stdout_is_a_pipe(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}, {"n": 1, "exit": 2, "err": "KeyError:lr"}])
    p = sweep.run()
    lines = p.stdout.splitlines()
    assert any(line.endswith("[complete 0 | running 1 | pending 1]") and " start " in line for line in lines), p.stdout
    complete = next(line for line in lines if " complete    n_0  GPU 0" in line)
    c = _counts(complete)  # a finish line counts its own run; the counts add up to the 2 runs (issue 10 bug 1)
    assert c["complete"] == 1 and "failed" not in c and sum(c.values()) == 2, complete
    failed = next(i for i, line in enumerate(lines) if " failed      n_1_exit_2" in line)
    assert lines[failed].endswith("[complete 1 | failed 1 | running 0 | pending 0]"), lines[failed]
    assert lines[failed + 1].strip() == "see outputs/n_1_exit_2_err_KeyError_lr/train_stderr.log: KeyError:lr"
    assert "\x1b[" not in p.stdout.split("train_sweep summary")[0]  # no terminal codes in the event lines


COUNTS = re.compile(r"\[([a-z]+ \d+(?: \| [a-z]+ \d+)*)\]")

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


# -- sweep.log and the runs' logs --------------------------------------------------------------------------------

def test_sweep_log_has_every_event_with_placement_reasons(sweep):
    sweep.gpus.set(count=2, used_mb=[3000, 1000])
    sweep.config([{"n": 0}, {"n": 1, "exit": 1}])
    sweep.run("--retries", "1")
    log = (sweep.dir / "outputs" / "sweep.log").read_text().splitlines()
    assert log[0].split(" ", 1)[1].startswith("train_sweep ")
    starts = [line for line in log if " start " in line]
    assert len(starts) == 3
    assert "placed: GPU 1: 1.0 GB used, 0 process(es)" in starts[0]
    assert any("retry 1/1 queued" in line for line in log)
    assert any(" failed " in line and "(attempt 2)" in line for line in log)
    assert all(line[:4].isdigit() or line.startswith(" ") for line in log)  # each event starts with its date


def test_a_sweep_that_cannot_start_a_run_says_why_outside_the_live_view(sweep):
    """From an adversarial pass: with every GPU over the memory threshold and nothing of the sweep running, only
    the live view said why; --no-live, nohup or a log showed the placement line and then nothing, for ever.
    One line says which run waits and why, once, in the output and sweep.log."""
    sweep.gpus.set(count=1, used_mb=70000)
    sweep.config([{"n": 0}, {"n": 1}])
    proc = sweep.start("--no-live")
    log = sweep.dir / "outputs" / "sweep.log"
    said = "waiting     n_0: no run of this sweep can start now: GPU 0: 68.4 GB used >= 40 GB (--memory-threshold-gb)"
    try:
        sweep.wait_for(lambda: log.exists() and said in log.read_text(), what="the waiting line")
        sweep.gpus.update(0, used_mb=1000)  # the memory is freed: the runs go, the line is not said again
        out, err = communicate(proc, 60, "the sweep")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert out.count(said) == 1 and log.read_text().count("waiting ") == 1, out


def test_logs_are_written_live_and_combined_log_interleaves_in_order(sweep):
    sweep.gpus.set(count=1)
    script = sweep.dir / "chatty.py"
    script.write_text(
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(f'out {i}', flush=True); print(f'err {i}', file=sys.stderr, flush=True); time.sleep(0.3)\n"
        "print('partial line without newline', end='', flush=True)\n"
        "time.sleep(30)\n"
    )
    sweep.config([{"n": 0}])
    proc = sweep.start("--command", f"python {script}", trainer=False)
    run_dir = sweep.dir / "outputs" / "n_0"
    sweep.wait_for(lambda: (run_dir / "combined.log").exists()
                   and "partial line" in (run_dir / "train_stdout.log").read_text(), what="live logs")
    assert proc.poll() is None  # still running: the logs are live
    combined = [line.split(" ", 1)[1] for line in (run_dir / "combined.log").read_text().splitlines()]
    # each stream in its order, every line once; lines of one 0.2 s read may come grouped by stream (docs/config.md:
    # a sweep held up for 0.4 s, as a loaded machine does, read 'out 0, out 1, err 0, ...')
    assert sorted(combined) == ["err | err 0", "err | err 1", "err | err 2", "out | out 0", "out | out 1", "out | out 2"]
    assert [line for line in combined if line.startswith("out")] == ["out | out 0", "out | out 1", "out | out 2"]
    assert [line for line in combined if line.startswith("err")] == ["err | err 0", "err | err 1", "err | err 2"]
    assert (run_dir / "train_stderr.log").read_text() == "err 0\nerr 1\nerr 2\n"
    proc.terminate()
    proc.communicate(timeout=30)
    assert (run_dir / "combined.log").read_text().splitlines()[-1].endswith("out | partial line without newline")


# -- a run's huge lines ------------------------------------------------------------------------------------------

KB = 1024

CUT_MARKERS = ("…", "[cut", "truncated")


def test_one_50_mb_stdout_line(sweep):
    """issue 16: a run printing one 50 MB line put all of it in the record's `stdout` (a 50 MB results
    file). Contract: recorded within ~15 s of the run's exit; results file under 1 MB; `stdout` under
    64 KB with a visible cut marker."""
    sweep.gpus.set(count=1)
    sweep.config([{"big_line_mb": 50}])
    p = cli(sweep, timeout=120)
    done = time.time()
    no_traceback(p)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    end = next(e["t"] for e in sweep.events() if e["event"] == "end")
    assert done - end < 15, done - end
    results = sweep.dir / "train_sweep_results.json"
    assert results.stat().st_size < 1024 * KB, results.stat().st_size
    (record,) = strict_results(sweep)
    assert record["state"] == "complete"
    assert len(record["stdout"].encode()) < 64 * KB, len(record["stdout"].encode())
    assert any(m in record["stdout"] for m in CUT_MARKERS), record["stdout"][-300:]


def test_the_cut_marker_of_a_long_output_is_no_metric(sweep):
    """An adversarial pass: after a run's 300 MB line the summary said 'No metric ranks the runs: they reported
    cut; rank them with --metric cut': the stored tail's marker, '[cut: N earlier bytes not kept]', read as a
    printed metric. The markers no longer read as NAME: VALUE (a metric named cut is still one)."""
    sweep.gpus.set(count=1)
    sweep.config([{"big_line_mb": 1}])
    p = cli(sweep, "--no-live", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "earlier bytes not kept]" in sweep.results()[0]["stdout"]
    assert "reported cut" not in p.stdout and "--metric cut" not in p.stdout, p.stdout


def _long_lines(text: str, limit: int = 10 * KB) -> list[int]:
    return [len(line.encode()) for line in text.split("\n") if len(line.encode()) >= limit]


def test_a_progress_bar_on_stderr_then_a_failure(sweep):
    """issue 16: a tqdm-style bar (200,000 '\\r' updates, no newline) then `boom` and exit 1: the record's
    `stderr` held the whole 8 MB line and the failure line showed it. Contract: `stderr` under 64 KB; the
    failure event line in stdout mentions `boom` and is short; every sweep.log line is under 10 KB."""
    sweep.gpus.set(count=1)
    sweep.config([{"cr_bar": 200000, "err": "boom", "exit": 1}])
    p = cli(sweep, "--no-live", timeout=120)
    no_traceback(p)
    assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
    (record,) = strict_results(sweep)
    assert len(record["stderr"].encode()) < 64 * KB, len(record["stderr"].encode())
    boom = [line for line in p.stdout.split("\n") if "boom" in line]
    assert boom and all(len(line.encode()) < 10 * KB for line in boom), [len(x) for x in boom]
    assert not _long_lines((sweep.dir / "outputs" / "sweep.log").read_text(errors="replace"))


def test_a_5_mb_last_stderr_line(sweep):
    """issue 16: a failed run whose last stderr line is 5 MB: train_sweep echoed that line into its own
    output and sweep.log. Contract: every stdout line and every sweep.log line is under 10 KB."""
    sweep.gpus.set(count=1)
    sweep.config([{"err_mb": 5, "exit": 1}])
    p = cli(sweep, "--no-live", timeout=120)
    no_traceback(p)
    assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
    assert not _long_lines(p.stdout)
    assert not _long_lines((sweep.dir / "outputs" / "sweep.log").read_text(errors="replace"))


# -- the live view in a real terminal ----------------------------------------------------------------------------

def _tmux_available() -> bool:
    return shutil.which("tmux") is not None


@pytest.mark.skipif(not _tmux_available(), reason="needs tmux")
def test_live_view_in_a_real_terminal(sweep):
    sweep.gpus.set(count=2, used_mb=[2000, 45000])
    sweep.gpus.update(1, util=93)
    sweep.config([{"n": i, "sleep": 30, "mem_mb": 8000} for i in range(4)])
    session, pane = in_tmux(sweep, 160, 40, "--max-processes-per-gpu 2 --settle-seconds 1; echo \"EXIT\"\"=$?\"")
    try:
        sweep.wait_for(lambda: "running 2" in pane(), what="two runs in the live view")
        screen = pane()
        row0 = next(line for line in screen.splitlines() if re.match(r"\s*0\s", line))
        row1 = next(line for line in screen.splitlines() if re.match(r"\s*1\s", line))
        assert "Fake GPU 0" in row0 and "n=0 (" in row0 and "/80G" in row0  # labelled by what varies: n
        assert "Fake GPU 1" in row1 and "93%" in row1 and "in use by other processes" in row1 and "43.9/80G" in row1
        assert re.search(r"complete 0\s+running 2\s+pending 2", screen)
        assert "waiting for GPU memory: GPU 1: 43.9 GB used >= 40 GB" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        sweep.wait_for(lambda: "EXIT=" in pane(), what="the sweep to exit")
        screen = pane()
        assert "EXIT=130" in screen
        assert "SIGINT: stopping" in screen
        assert "train_sweep summary" in screen and "2 interrupted, 2 not started" in screen
        cursor = subprocess.run(["tmux", "display", "-p", "-t", session, "#{cursor_flag}"], capture_output=True,
                                text=True).stdout.strip()
        assert cursor == "1"  # the terminal got its cursor back
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])


@pytest.mark.skipif(not _tmux_available(), reason="needs tmux")
def test_after_kill_9_the_terminal_gets_its_normal_screen_and_cursor_back(sweep):
    """issue 26 (9): after `kill -9` of the sweep the terminal stayed on the alternate screen with its cursor
    hidden, and the resumed sweep's lines vanished with it. The guardian, which outlives the sweep, gives the
    terminal back and says what happened."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "sleep": 30} for i in range(2)])
    session, pane = in_tmux(sweep, 100, 30, "")
    try:
        sweep.wait_for(lambda: "running 1" in pane(), what="the live view")

        def flag(name: str) -> str:
            return subprocess.run(["tmux", "display", "-p", "-t", session, f"#{{{name}}}"], capture_output=True,
                                  text=True).stdout.strip()

        assert flag("alternate_on") == "1" and flag("cursor_flag") == "0"
        import psutil  # the sweep: the process running train_sweep.py in this test's folder (not its guardian)

        pids = [p.pid for p in psutil.process_iter(["cmdline", "cwd"]) if p.info["cwd"] == str(sweep.dir)
                and str(TRAIN_SWEEP) in (p.info["cmdline"] or ())]
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        sweep.wait_for(lambda: flag("alternate_on") == "0", timeout=15, what="the normal screen back")
        sweep.wait_for(lambda: "train_sweep was killed" in pane(), timeout=10, what="the guardian's line")
        assert flag("cursor_flag") == "1"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])
        kill_pids(run_pids(sweep))


def in_tmux(sweep, cols: int, rows: int, flags: str):
    """The CLI (the fake trainer, then `flags`, shell text) in a tmux session of cols x rows: the session's
    name and a function that captures its screen."""
    session = f"ts{time.monotonic_ns()}"
    env = {**sweep.env(), "PS1": "$ "}
    exports = " ".join(f"{k}={_q(v)}" for k, v in env.items() if k in ("PYTHONPATH", "FAKE_NVML_STATE", "FAKE_LOG"))
    cmd = (f"cd {_q(str(sweep.dir))} && export {exports} && {_q(sys.executable)} {_q(str(TRAIN_SWEEP))} "
           f"--command {_q('python ' + str(FAKE_TRAINER))} {flags}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(cols), "-y", str(rows),
                    "bash --norc --noprofile"], check=True, env={**env, "TERM": "xterm-256color"})
    subprocess.run(["tmux", "send-keys", "-t", session, cmd, "Enter"], check=True)

    def pane() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    return session, pane


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


CURSOR_CODES = ("\x1b[?25l", "\x1b[?1049h", "\x1b[H")  # hide the cursor, the alternate screen, cursor home: a live view


def test_no_live_flag_keeps_plain_lines(sweep):
    """On a real terminal (a pty), --no-live gives the plain event lines; without it the live view draws."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 1.5}])
    for flags in (["--no-live"], ["--rerun"]):
        pty = sweep.start_on_pty(*flags)
        try:
            rc = pty.wait(60)
        finally:
            pty.kill()
        out = pty.output()
        assert rc == 0, out
        if "--no-live" in flags:
            assert " complete    n_0_sleep_1.5" in out, out
            assert not [code for code in CURSOR_CODES if code in out], repr(out)
        else:
            assert all(code in out for code in CURSOR_CODES), repr(out)


@pytest.mark.skipif(not _tmux_available(), reason="needs tmux")
@pytest.mark.parametrize("cols, rows", [(160, 45), (80, 24), (60, 20)])
def test_live_view_fits_the_terminal(sweep, cols, rows):
    """8 GPUs, the README's style of config (many keys, the varying ones last), a failure: every GPU row, the
    progress line and the last failure show, no line wraps, and on a tall terminal more events show."""
    sweep.gpus.set(count=8)
    common = {f"training.option_{i}": i for i in range(10)}
    sweep.config([{**common, "exit": 3} if n == 0 else {**common, "sleep": 30, "lr": 10 ** -n, "seed": n,
                                                         "early_metric": round(1 / n, 3)} for n in range(12)])
    session, pane = in_tmux(sweep, cols, rows, "--no-fail-fast --settle-seconds 1 --metric val_loss")
    try:
        sweep.wait_for(lambda: "running 8" in pane() and "last failure" in pane(), timeout=30,
                       what="8 runs and the failure in the live view")
        time.sleep(0.6)
        screen = pane().splitlines()
        gpu_rows = [line for line in screen if re.match(r"[0-7]\s", line)]
        assert [line[0] for line in gpu_rows] == [str(g) for g in range(8)], screen
        assert all("lr=" in line or "seed=" in line for line in gpu_rows), screen  # labelled by what varies
        assert any(re.search(r"\d+/12\s+complete 0\s+failed 1\s+running 8\s+pending 3", line) for line in screen), screen
        assert any(line.startswith("last failure: ") and "failed" in line for line in screen), screen
        assert all(len(line) <= cols for line in screen)
        # issue 26 (3): what matters is kept at 80 and 60 columns: each run's metric, the failure's reason and log
        assert all(re.search(r"val_loss [01]", line) for line in gpu_rows), "\n".join(screen)
        text = "\n".join(screen)
        assert "exit 3" in text.replace("\n", "") or "rc 3" in text, screen
        assert "train_stderr.log" in text.replace("\n", ""), screen
        assert "[complete" not in text  # the progress line says it once, not each event line
        events = [line for line in screen if re.match(r"\d\d:\d\d:\d\d ", line)]
        assert len(events) >= (10 if rows >= 45 else 1), screen  # the height is used (the old view showed 8)
        if cols >= 120:
            assert "Fake GPU 0" in gpu_rows[0] and "░" in gpu_rows[0]  # the name and the memory bar
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        sweep.wait_for(lambda: "run(s):" in pane(), timeout=30, what="the summary")
        time.sleep(0.5)
        subprocess.run(["tmux", "resize-window", "-t", session, "-y", "200"], check=False)
        full = subprocess.run(["tmux", "capture-pane", "-p", "-S", "-300", "-t", session], capture_output=True,
                              text=True).stdout.splitlines()
        table = [line for line in full if re.match(r"[│|]\s*\d+\s*[│|]", line)]
        assert len(table) == 9, "\n".join(full)  # the summary table: one line a run (the 3 not started are counted)
        assert all(len(line) <= cols for line in full)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])


def test_runs_are_labelled_by_what_varies():
    from train_sweep import LABEL_CHARS, run_labels

    common = {f"k{i}": i for i in range(11)}  # the README's style: many keys, lr and seed last
    sets = {f"run{i}": {**common, "lr": lr, "seed": seed} for i, (lr, seed) in
            enumerate([(1e-3, 0), (1e-3, 1), (1e-4, 0), (1e-4, 1)])}
    assert list(run_labels(sets).values()) == ["lr=0.001 seed=0", "lr=0.001 seed=1", "lr=0.0001 seed=0",
                                               "lr=0.0001 seed=1"]
    assert run_labels({"a": {"x": 1}, "b": {"x": 1}}) == {"a": "a", "b": "b"}  # nothing varies: the names
    assert run_labels({"a": {"m.depth": [1, 2]}, "b": {"m.depth": [3]}}) == {"a": "depth=[1, 2]", "b": "depth=[3]"}
    assert run_labels({"a": {"x": 1}, "b": {"x": 1, "y": 2}}) == {"a": "a", "b": "y=2"}  # a lacks y: its name
    long = run_labels({"a": {"x": "a" * 100}, "b": {"x": "b"}})["a"]
    assert len(long) == LABEL_CHARS and long.endswith("…")


def test_gpu_rows_say_who_holds_a_gpu():
    """A GPU held by the second half of a 2-GPU run, or filled by someone else's processes, is not 'idle'."""
    import io

    from rich.console import Console

    from train_sweep import GpuReading, LiveReporter, Progress, Ranking, RunView

    readings = {0: GpuReading(0, "A", 9000, 81920, 50, frozenset({11})), 1: GpuReading(1, "B", 9000, 81920, 50),
                2: GpuReading(2, "C", 50000, 81920, 90, frozenset({99})), 3: GpuReading(3, "D", 500, 81920, 0)}
    progress = Progress({"complete": 0, "running": 1, "pending": 0}, 1, None,
                        (RunView("lr=0.1", (0, 1), None),), (0, 1, 2, 3), readings, 40 * 1024, None, None)
    out = io.StringIO()
    Console(file=out, width=200).print(LiveReporter(Ranking("loss", "min"), stream=io.StringIO()).render(progress))
    rows = {line.split()[0]: line for line in out.getvalue().splitlines() if line[:1].isdigit()}
    assert "lr=0.1 (" in rows["0"]
    assert "lr=0.1 (also GPU 0)" in rows["1"] and "idle" not in rows["1"]
    assert "in use by other processes" in rows["2"]
    assert "idle" in rows["3"]


def test_a_terminal_shorter_than_the_gpu_list_keeps_the_progress_line_and_the_failure():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from train_sweep import GpuReading, LiveReporter, Progress, Ranking, RunView

    gpus = tuple(range(8))
    readings = {g: GpuReading(g, f"G{g}", 1000, 81920, 10) for g in gpus}
    progress = Progress({"complete": 0, "failed": 1, "running": 8, "pending": 3}, 12, None,
                        tuple(RunView(f"lr={g}", (g,), None) for g in gpus), gpus, readings, None, None, None)
    reporter = LiveReporter(Ranking("loss", "min"), stream=io.StringIO())
    reporter.last_failure = "last failure: lr=9 (failed): boom"
    reporter._live = SimpleNamespace(console=SimpleNamespace(size=(60, 8)))
    out = io.StringIO()
    Console(file=out, width=60).print(reporter.render(progress))
    lines = out.getvalue().splitlines()
    assert len(lines) <= 8, lines
    assert any("running 8" in line for line in lines) and any(line.startswith("last failure") for line in lines)
    assert any("more GPU(s)" in line for line in lines), lines


# -- the dry run -------------------------------------------------------------------------------------------------

def test_dry_run_launches_nothing(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"training.bisim_lr": 5e-6, "env": "point_maze"}, {"training.bisim_lr": 1e-4, "env": "pusht"}])
    p = sweep.run("--dry-run", "--abbrev", "training.bisim_lr=lr", "--abbrev", "env=")
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if re.match(r"│\s*0\s*│", line))
    assert re.search(r"│\s*lr_5e-06_point_maze\s*│\s*training\.bisim_lr=5e-06 env=point_maze\s*│", row), row
    assert row.rstrip(" │").endswith("training.bisim_lr=5e-06 env=point_maze")
    assert "2 run(s). Placement: up to 1 run(s) at once on each of GPU 0 1;" in p.stdout  # (not 1 in all)
    assert not (sweep.dir / "outputs").exists()
    assert not sweep.events()


def test_dry_run_shows_a_whole_float_as_the_float_the_run_is_given(sweep):
    """A docs audit: --dry-run's hyperparameters column showed coef=1 for 1.0, while the command passes 1.0
    (names read 1; the values are shown as they are)."""
    sweep.config([{"coef": 1.0}])
    p = sweep.run("--dry-run")
    row = next(line for line in p.stdout.splitlines() if re.match(r"│\s*0\s*│", line))
    assert re.search(r"│\s*coef_1\s*│\s*coef=1\.0\s*│", row), row


def test_dry_run_shows_markup_and_lists_literally(sweep):
    """issue 16: --dry-run printed values through rich markup: `[bold]x` lost its brackets, `[/x]` crashed
    it (MarkupError traceback), and a list of strings showed as `'layers='` in the command column.
    Contract: exit 0, values shown literally: `[bold]x` and `[/x]` appear, and every `layers=` is followed
    by its values."""
    sweep.config([{"tag": "[bold]x"}, {"tag": "[/x]"}, {"layers": [1, 2]}, {"layers": ["u", "v"]}])
    p = cli(sweep, "--dry-run")
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[bold]x" in p.stdout and "[/x]" in p.stdout, p.stdout
    shown = [m.group(1).split("\u2502")[0] for m in re.finditer(r"layers=([^\n]{0,40})", p.stdout)]
    assert len(shown) >= 2, p.stdout
    for text in shown:  # each column that shows the value: the hyperparameters and the command line
        assert text[:1] not in ("", " ") and ({"1", "2"} <= set(text) or {"u", "v"} <= set(text)), (text, p.stdout)


def test_dry_run_of_50000_entries_is_summarized(sweep):
    """issue 16: `--dry-run` of 50,000 entries printed a 50,000-row table. Contract: exit 0 within ~60 s,
    stdout under 200 KB, past a few hundred rows a line says how many were left out (49,xxx)."""
    sweep.config([{"i": k} for k in range(50_000)])
    p = cli(sweep, "--dry-run", timeout=120)
    no_traceback(p)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert len(p.stdout.encode()) < 200 * KB, len(p.stdout.encode())
    assert re.search(r"\b49[,.\u202f ]?\d{3}\b", p.stdout), p.stdout[-3000:]
    assert p.elapsed < 60, p.elapsed


# -- the summary -------------------------------------------------------------------------------------------------

def test_metric_and_best_run(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"metric": 0.5}, {"metric": 0.25}, {"metric": 0.75}])
    p = sweep.run("--metric", "val_loss")
    assert p.returncode == 0
    assert "Best (min val_loss): metric_0.25 = 0.25" in p.stdout
    assert sweep.results()[1]["metrics"] == {"val_loss": 0.25}
    # not a terminal: the summary is plain aligned text, the metric's column on the right
    table = p.stdout.split("train_sweep summary\n")[1].splitlines()[:4]
    assert table[0].split() == ["#", "run", "state", "where", "duration", "rc", "val_loss"]
    ranked = [line.split()[:2] for line in table[1:]]  # ranked by the metric, best first
    assert ranked == [["1", "metric=0.25"], ["0", "metric=0.5"], ["2", "metric=0.75"]] and table[1].endswith("    0.25")
    assert len({len(line) for line in table}) == 1 and not any("│" in line for line in table)
    p = sweep.run("--metric", "val_loss", "--mode", "max")
    assert "Best (max val_loss): metric_0.75 = 0.75" in p.stdout
    table = p.stdout.split("train_sweep summary\n")[1].splitlines()[:4]
    assert [line.split()[1] for line in table[1:]] == ["metric=0.75", "metric=0.5", "metric=0.25"]


def test_after_ctrl_c_the_summary_says_what_is_left_and_how_to_resume(sweep):
    from conftest import interrupt

    sweep.gpus.set(count=1)
    slow = sweep.dir / "slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    proc = sweep.start("--no-live", "--command", f"python {slow}", "x=1,2,3,4,5", trainer=False)
    sweep.wait_for(lambda: (sweep.dir / "outputs").exists() and any((sweep.dir / "outputs").glob("x_1/run.json")),
                   what="the first run")
    interrupt(proc)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "5 run(s) left: run the same command again to resume" in out, out[-1500:]


@pytest.mark.parametrize("how", ["rerun", "search", "search-rerun"])
def test_after_ctrl_c_of_a_rerun_or_a_search_the_way_to_resume_is_true(sweep, how):
    """An adversarial pass: after Ctrl+C of a --rerun sweep, 'run the same command again to resume' ran every run
    again (the same command has --rerun); after Ctrl+C of a search, '2 run(s) left' counted the interrupted
    trials, not the 8 the search had still to ask. A later pass: a search with --rerun was still told 'the same
    command again' (it would start afresh), and status said 'run the same command' after either."""
    from conftest import interrupt

    sweep.gpus.set(count=1)
    slow = sweep.dir / "slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    args = ["--rerun", "x=1,2,3"] if how == "rerun" else ["--search", "grid", "--metric", "loss", "x=1,2,3"] + (
        ["--rerun"] if how == "search-rerun" else [])
    proc = sweep.start("--no-live", "--command", f"python {slow}", *args, trainer=False)
    sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/run.json")), what="the first run")
    interrupt(proc)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out[-1500:]
    expected = {"rerun": "3 run(s) left: run the same command without --rerun to resume",
                "search": "The search stopped before its end: run the same command again to resume it",
                "search-rerun": "The search stopped before its end: run the same command without --rerun to resume it",
                }[how]
    assert expected in out and "run(s) left: run the same command again" not in out, out[-1500:]
    status = sweep.run("status", trainer=False).stdout
    assert ("run the same command without --rerun to resume" in status) == how.endswith("rerun"), status


def test_a_summary_of_many_runs_keeps_the_best_ones(sweep):
    """issue 26 (6): with more than 50 runs the end table listed only the runs that did not complete: a fully
    complete 100-trial search printed no ranking at all. It shows the 10 best, then those that did not."""
    sweep.gpus.set(count=1)
    sweep.config([{"i": i, "metric": round((i * 37 % 60) / 60, 3)} for i in range(60)])
    p = sweep.run("--metric", "val_loss", "--no-live", "--max-processes-per-gpu", "8", "--memory-threshold-gb", "80",
                  timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    table = p.stdout[p.stdout.index("train_sweep summary"):].splitlines()[2:12]
    assert [float(line.split()[-1]) for line in table] == sorted(float(line.split()[-1]) for line in table)
    assert float(table[0].split()[-1]) == 0.0
    assert "The table shows 10 of them: the 10 best complete ones" in p.stdout
