"""--mps: the real CLI starts NVIDIA's MPS control daemon for the sweep, runs the runs as its clients and
stops it, whatever way the sweep ends. The daemon is tests/fake_mps/nvidia-cuda-mps-control, with the real
one's command line: `-d` starts it in the background (its pid file and control socket in
$CUDA_MPS_PIPE_DIRECTORY), commands go to it on stdin (`get_server_list`, `quit`).

The CLI refuses --mps beside any MPS daemon on the machine, another test run's fake one included: each test
whose sweep starts a daemon takes the fixture `mps_alone` (conftest.py), which runs it alone on the machine
(other runs of the suite wait), ends the daemons it left, and skips, saying which, beside one not of this run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import all_dead, pid_alive

from train_sweep_extras.mps import MpsDaemon

FAKE_MPS = Path(__file__).resolve().parent / "fake_mps"
PLAIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])


def with_fake_mps(**env) -> dict[str, str]:
    return {"PATH": os.pathsep.join([str(FAKE_MPS), os.environ.get("PATH", "")]), **env}


def daemon_of(sweep) -> dict:
    """What the fake daemon recorded: its pid and environment."""
    return json.loads((sweep.dir / "outputs" / ".mps" / "log" / "fake_env.json").read_text())


@pytest.fixture
def daemons(mps_alone):
    """Fake daemons a test starts by hand; any still running at the end are stopped (`quit`)."""
    started: list[dict[str, str]] = []
    yield started
    for env in started:
        subprocess.run([str(FAKE_MPS / "nvidia-cuda-mps-control")], input="quit\n", text=True, env=env,
                       capture_output=True, timeout=10, check=False)


def start_daemon(daemons, pipe: Path, log: Path) -> int:
    pipe.mkdir(parents=True, exist_ok=True)
    log.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}
    subprocess.run([str(FAKE_MPS / "nvidia-cuda-mps-control"), "-d"], env=env, check=True, timeout=10)
    daemons.append(env)
    return int((pipe / "nvidia-cuda-mps-control.pid").read_text())


def test_the_runs_are_the_daemon_s_clients_and_it_stops_with_the_sweep(sweep, mps_alone):
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 0.5} for i in range(4)])
    p = sweep.run("--mps", "--gpus", "0", "1", "--max-processes-per-gpu", "2", "--no-live",
                  **with_fake_mps(CUDA_VISIBLE_DEVICES="1"))  # the shell's own is not the daemon's
    assert p.returncode == 0, p.stdout + p.stderr
    daemon = daemon_of(sweep)
    pipe = daemon["env"]["CUDA_MPS_PIPE_DIRECTORY"]
    assert daemon["env"]["CUDA_MPS_LOG_DIRECTORY"] == str((sweep.dir / "outputs" / ".mps" / "log").resolve())
    assert daemon["env"]["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0,GPU-fake-1"  # the sweep's GPUs, by UUID
    assert daemon["env"]["TRAIN_SWEEP_ID"]  # the guardian's mark
    for r in sweep.results():
        env = sweep.fake(r["model_name"])["env"]
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == pipe and env["CUDA_MPS_LOG_DIRECTORY"] == daemon["env"][
            "CUDA_MPS_LOG_DIRECTORY"]
        assert env["CUDA_VISIBLE_DEVICES"] == f"GPU-fake-{r['gpu_id']}"  # an index would be the server's renumbering
    assert all_dead([daemon["pid"]], timeout=0.1), "the daemon outlived the sweep"
    assert "Cmd:quit" in (sweep.dir / "outputs" / ".mps" / "log" / "control.log").read_text()
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert f"MPS: control daemon started (pid {daemon['pid']}; pipe {pipe}" in log
    assert "under MPS (--mps): the runs on a GPU compute at once" in log
    assert json.loads((sweep.dir / "outputs" / "sweep.json").read_text())["settings"]["mps"] is True


def test_a_long_output_path_puts_the_pipe_in_tmp(tmp_path):
    """A Unix socket's path holds at most 107 bytes: a deep output folder keeps its logs, the pipe goes to /tmp."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    daemon = MpsDaemon(deep)
    assert daemon.log == deep.resolve() / ".mps" / "log"
    assert str(daemon.pipe).startswith(f"/tmp/train_sweep_mps_{os.getuid()}_") and len(str(daemon.pipe)) < 60
    assert MpsDaemon(tmp_path).pipe == tmp_path.resolve() / ".mps" / "pipe"


def test_ctrl_c_stops_the_daemon(sweep, mps_alone):
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "sleep": 30} for i in range(2)])
    proc = sweep.start("--mps", "--gpus", "0", "--max-processes-per-gpu", "2", "--no-live", **with_fake_mps())
    sweep.wait_for(lambda: len(sweep.started()) == 1, what="a run started")
    pid = daemon_of(sweep)["pid"]
    assert pid_alive(pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert all_dead([pid], timeout=0.1), "the daemon outlived the interrupted sweep"
    assert (sweep.dir / "train_sweep_results.json.partial").exists()


def test_kill_9_of_the_sweep_the_guardian_ends_the_daemon(sweep, mps_alone):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "sleep": 60}])
    proc = sweep.start("--mps", "--gpus", "0", "--no-live", "--kill-grace", "1", **with_fake_mps())
    sweep.wait_for(lambda: len(sweep.started()) == 1, what="the run started")
    pid = daemon_of(sweep)["pid"]
    proc.kill()
    proc.wait(timeout=10)
    assert all_dead([pid], timeout=15), "the daemon outlived a sweep killed with SIGKILL"


def test_a_daemon_an_earlier_sweep_left_is_stopped_first(sweep, daemons):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    left = MpsDaemon(sweep.dir / "outputs")
    old = start_daemon(daemons, left.pipe, left.log)
    p = sweep.run("--mps", "--gpus", "0", "--no-live", **with_fake_mps())
    assert p.returncode == 0, p.stdout + p.stderr
    assert all_dead([old], timeout=0.1)
    assert f"an earlier sweep of this folder left its control daemon (pid {old}): stopped" in \
        (sweep.dir / "outputs" / "sweep.log").read_text()


def test_another_mps_daemon_is_refused_before_anything_runs(sweep, daemons, tmp_path):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    other = start_daemon(daemons, tmp_path / "other_pipe", tmp_path / "other_log")
    p = sweep.run("--mps", "--gpus", "0", **with_fake_mps())
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"--mps: an MPS daemon already runs here (nvidia-cuda-mps, pid {other}, user " in p.stderr
    assert "leave out --mps" in p.stderr
    assert sweep.events() == [] and pid_alive(other)  # nothing ran; the other daemon is not ours to stop
    assert not (sweep.dir / "outputs").exists()  # nor was written: the folder it made (for its lock) is gone
    assert not (sweep.dir / "train_sweep_results.json").exists()


def test_a_daemon_that_cannot_start_is_one_line_and_nothing_runs(sweep, mps_alone):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    p = sweep.run("--mps", "--gpus", "0", **with_fake_mps(FAKE_MPS_FAIL="An instance of this daemon is already running"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--mps: the MPS control daemon did not start: An instance of this daemon is already running" in p.stderr
    assert sweep.events() == []


def test_a_daemon_that_will_not_quit_is_killed_and_said(sweep, monkeypatch, mps_alone):
    monkeypatch.setattr(sys.modules[MpsDaemon.__module__], "MPS_WAIT_S", 1.0)  # in-process, to wait less
    for key, value in sweep.env(**with_fake_mps(FAKE_MPS_DEAF="1")).items():
        monkeypatch.setenv(key, value)
    daemon = MpsDaemon(sweep.dir / "outputs")
    daemon.start("test")
    pid = daemon.pid
    assert pid is not None and pid_alive(pid)
    assert daemon.stop() == f"the MPS control daemon (pid {pid}) did not quit within 1s: killed"
    assert all_dead([pid], timeout=5)


@pytest.mark.parametrize("args, config, error", [
    (["--mps", "--backend", "slurm"], [{"n": 0}],
     "--mps starts NVIDIA's MPS daemon on this machine; with --backend slurm, MPS is the cluster's to give"),
    (["--mps"], [{"n": 0}], "--mps shares GPUs among runs; this sweep has none (NVML is not available"),
    ([], {"runs": [{"n": 0}], "mps": "yes"}, "'mps' must be true or false, got 'yes'"),
])
def test_mps_bad_input_is_one_line(sweep, args, config, error):
    if args != ["--mps"]:  # else no GPU state: the fake pynvml fails as on a machine without a driver
        sweep.gpus.set(count=1)
    sweep.config(config)
    p = sweep.run(*args, **with_fake_mps())
    assert p.returncode == 2 and error in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_without_the_program_mps_is_one_line(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    p = sweep.run("--mps", "--gpus", "0", PATH=PLAIN_PATH)
    assert p.returncode == 2 and p.stderr.strip() == (
        "train_sweep: error: --mps: nvidia-cuda-mps-control is not on PATH (it comes with the NVIDIA driver's utilities, e.g. "
        "Debian's nvidia-cuda-mps)"), p.stderr
    assert not (sweep.dir / "outputs").exists()


def test_the_config_turns_it_on_and_the_flag_off(sweep):
    sweep.gpus.set(count=1)
    sweep.config({"runs": [{"n": 0}], "mps": True})
    p = sweep.run("--gpus", "0", "--dry-run", **with_fake_mps())
    assert p.returncode == 0 and "under MPS (--mps)" in p.stdout, p.stdout + p.stderr
    p = sweep.run("--gpus", "0", "--dry-run", "--no-mps", **with_fake_mps())
    assert p.returncode == 0 and "MPS" not in p.stdout


def test_without_nvml_the_daemon_sees_every_gpu_and_says_so(sweep, mps_alone):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    p = sweep.run("--mps", "--gpus", "0", "--disable-gpu-monitoring", "--no-live", **with_fake_mps())
    assert p.returncode == 0, p.stdout + p.stderr
    assert "CUDA_VISIBLE_DEVICES" not in daemon_of(sweep)["env"]
    assert sweep.fake("n_0")["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "it sees every GPU (no NVML: no UUIDs)" in (sweep.dir / "outputs" / "sweep.log").read_text()
