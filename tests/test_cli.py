"""End-to-end: the real CLI as a subprocess, a fake pynvml on PYTHONPATH, the fake trainer."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import all_dead, pid_alive, run_pids

SEED_FIELDS = ["model_name", "hyperparams", "success", "returncode", "duration_seconds", "gpu_id", "stdout", "stderr"]


def test_sweep_runs_every_entry_on_the_gpus_with_seed_results(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"lr": 0.1, "sleep": 0.3, "lines": 3}, {"lr": 0.01, "sleep": 0.3}, {"lr": 0.001, "sleep": 0.3},
                  {"lr": 0.0001, "sleep": 0.3}])
    p = sweep.run("--gpus", "0", "1")
    assert p.returncode == 0, p.stderr
    results = sweep.results()
    assert [r["model_name"] for r in results] == ["lr_0.1_sleep_0.3_lines_3", "lr_0.01_sleep_0.3",
                                                  "lr_0.001_sleep_0.3", "lr_0.0001_sleep_0.3"]
    for r in results:
        assert list(r)[: len(SEED_FIELDS)] == SEED_FIELDS
        assert r["success"] is True and r["returncode"] == 0 and r["state"] == "complete"
        assert r["gpu_id"] in (0, 1)
        assert r["duration_seconds"] >= 0.3
        run_dir = Path(r["run_dir"])
        assert run_dir == sweep.dir / "outputs" / r["model_name"]
        assert (run_dir / "train_stdout.log").exists() and (run_dir / "train_stderr.log").exists()
        run_json = json.loads((run_dir / "run.json").read_text())
        assert run_json["state"] == "complete" and run_json["hyperparams"] == r["hyperparams"]
    assert results[0]["stdout"].splitlines() == ["line 0", "line 1", "line 2"]
    assert results[0]["stderr"] == "stderr line"
    # both GPUs were used, one run at a time each
    assert {r["gpu_id"] for r in results} == {0, 1}
    assert "4 complete" in p.stdout


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


def test_failed_run_exit_code_1_and_summary_names_the_log(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"exit": 3, "err": "ValueError:boom"}, {"ok": 1}])
    p = sweep.run()
    assert p.returncode == 1
    failed, ok = sweep.results()
    assert failed["state"] == "failed" and failed["returncode"] == 3 and failed["success"] is False
    assert ok["state"] == "complete"
    assert f"{failed['stderr_log']}: ValueError:boom" in p.stdout


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


def test_a_gpu_full_of_someone_elses_memory_gets_nothing(sweep):
    sweep.gpus.set(count=2, used_mb=[60000, 1000])  # GPU 0: 58.6 GB used by another user
    sweep.config([{"n": i, "sleep": 0.1} for i in range(4)])
    p = sweep.run("--memory-threshold-gb", "40")
    assert p.returncode == 0, p.stderr
    assert {r["gpu_id"] for r in sweep.results()} == {1}


def test_lowest_memory_gpu_is_chosen_first(sweep):
    sweep.gpus.set(count=3, used_mb=[9000, 3000, 6000])
    sweep.config([{"n": 0}])
    assert sweep.run().returncode == 0
    assert sweep.results()[0]["gpu_id"] == 1


def test_packing_two_per_gpu_waits_for_the_memory_reading(sweep):
    """With 2 slots on one GPU, the second run starts only after the first one's memory shows up."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "mem_mb": 20000, "mem_after": 1.0, "sleep": 3},
                  {"n": 1, "mem_mb": 20000, "sleep": 0.5}])
    p = sweep.run("--max-processes-per-gpu", "2", "--memory-threshold-gb", "40", "--settle-seconds", "30")
    assert p.returncode == 0, p.stdout + p.stderr
    starts = {e["name"]: e["t"] for e in sweep.events() if e["event"] == "start"}
    first = sweep.fake("n_0_mem_mb_20000_mem_after_1_sleep_3")
    gap = starts["n_1_mem_mb_20000_sleep_0.5"] - first["start"]
    assert gap >= 1.0, f"second run started {gap:.2f}s after the first, before its memory showed"


def test_packing_respects_the_memory_threshold(sweep):
    """Two slots, but after the first run's 30 GB show, the GPU is over the 25 GB threshold: runs go one by one."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "mem_mb": 30000, "sleep": 0.5} for i in range(3)])
    p = sweep.run("--max-processes-per-gpu", "2", "--memory-threshold-gb", "25")
    assert p.returncode == 0, p.stderr
    spans = {}
    for e in sweep.events():
        spans.setdefault(e["name"], {})[e["event"]] = e["t"]
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    for a, b in zip(ordered, ordered[1:]):
        assert b["start"] >= a["end"] - 0.05, "two runs overlapped on a GPU that was over the threshold"


def test_no_nvml_runs_on_the_cpu_and_says_so(sweep):
    sweep.config([{"n": 0}, {"n": 1}])
    p = sweep.run()  # no state file: the fake pynvml fails like a machine without a driver
    assert p.returncode == 0, p.stderr
    assert "running on the CPU" in p.stdout
    assert sweep.fake("n_0")["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert sweep.results()[0]["gpu_id"] is None


def test_disable_gpu_monitoring_places_by_slots(sweep):
    sweep.gpus.set(count=2, used_mb=[79000, 79000])  # would block everything if it were read
    sweep.config([{"n": i} for i in range(4)])
    p = sweep.run("--gpus", "0", "1", "--disable-gpu-monitoring")
    assert p.returncode == 0, p.stderr
    assert "slots only" in p.stdout
    assert {r["gpu_id"] for r in sweep.results()} == {0, 1}


def test_gpus_all_and_default_use_every_nvml_gpu(sweep):
    sweep.gpus.set(count=3)
    sweep.config([{"n": i, "sleep": 0.3} for i in range(6)])
    assert sweep.run("--gpus", "all").returncode == 0
    assert {r["gpu_id"] for r in sweep.results()} == {0, 1, 2}


def test_dry_run_launches_nothing(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"training.bisim_lr": 5e-6, "env": "point_maze"}, {"training.bisim_lr": 1e-4, "env": "pusht"}])
    p = sweep.run("--dry-run", "--abbrev", "training.bisim_lr=lr", "--abbrev", "env=")
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if re.match(r"│\s*0\s*│", line))
    assert re.search(r"│\s*lr_5e-06_point_maze\s*│\s*training\.bisim_lr=5e-06 env=point_maze\s*│", row), row
    assert row.rstrip(" │").endswith("training.bisim_lr=5e-06 env=point_maze")
    assert "2 run(s). Placement: up to 1 run(s) at once on GPU 0 1" in p.stdout
    assert not (sweep.dir / "outputs").exists()
    assert not sweep.events()


def test_a_finished_run_frees_its_slot_for_the_next(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "sleep": 0.2} for i in range(5)])
    p = sweep.run()
    assert p.returncode == 0
    spans = {}
    for e in sweep.events():
        spans.setdefault(e["name"], {})[e["event"]] = e["t"]
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    assert all(b["start"] >= a["end"] for a, b in zip(ordered, ordered[1:]))  # one at a time on 1 slot


def test_failing_gpu_is_dropped_and_the_sweep_goes_on(sweep):
    """A GPU whose NVML calls keep failing (3 times over 2 s) is taken out; until then it takes no run."""
    sweep.gpus.set(count=2)
    sweep.gpus.update(0, fail=True)
    sweep.config([{"n": i, "sleep": 1} for i in range(3)])
    p = sweep.run("--gpus", "0", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "warning: GPU 0 taken out of the pool: its NVML calls fail (GPU is lost)" in p.stdout
    assert {r["gpu_id"] for r in sweep.results()} == {1}


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


def test_stale_partial_is_removed_after_a_full_sweep(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])
    (sweep.dir / "train_sweep_results.json.partial").write_text("[]")
    assert sweep.run().returncode == 0
    assert not (sweep.dir / "train_sweep_results.json.partial").exists()


def test_values_that_look_dangerous_stay_inside_the_output_folder(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"path": "../../etc/passwd"}, {"path": "/abs/x"}, {"path": ".."}])
    p = sweep.run()
    assert p.returncode == 0, p.stderr
    for r in sweep.results():
        assert Path(r["run_dir"]).parent == sweep.dir / "outputs"
    assert sweep.fake(sweep.results()[0]["model_name"])["argv"] == ["path=../../etc/passwd"]
