"""Seeing the sweep: the live view in a real terminal (tmux), plain lines under a pipe, live logs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import FAKE_TRAINER, TRAIN_SWEEP


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
    assert lines[failed + 1].strip() == f"see {sweep.dir}/outputs/n_1_exit_2_err_KeyError_lr/train_stderr.log: KeyError:lr"
    assert "\x1b[" not in p.stdout.split("train_sweep summary")[0]  # no terminal codes in the event lines


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
    combined = (run_dir / "combined.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in combined] == [
        "out | out 0", "err | err 0", "out | out 1", "err | err 1", "out | out 2", "err | err 2",
    ]
    assert (run_dir / "train_stderr.log").read_text() == "err 0\nerr 1\nerr 2\n"
    proc.terminate()
    proc.communicate(timeout=30)
    assert (run_dir / "combined.log").read_text().splitlines()[-1].endswith("out | partial line without newline")


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
    sweep.config([{**common, "exit": 3} if n == 0 else {**common, "sleep": 30, "lr": 10 ** -n, "seed": n}
                  for n in range(12)])
    session, pane = in_tmux(sweep, cols, rows, "--no-fail-fast --settle-seconds 1")
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
        events = [line for line in screen if re.match(r"\d\d:\d\d:\d\d ", line)]
        assert len(events) >= (10 if rows >= 45 else 1), screen  # the height is used (the old view showed 8)
        if cols >= 120:
            assert "Fake GPU 0" in gpu_rows[0] and "░" in gpu_rows[0]  # the name and the memory bar
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        sweep.wait_for(lambda: "train_sweep summary" in pane() or "run(s):" in pane(), timeout=30, what="the summary")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])
