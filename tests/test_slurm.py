"""--backend slurm against a real Slurm on localhost: slurmctld, slurmd, slurmdbd (MariaDB) and munge,
started by tests/slurm/setup.sh, with 4 fake GPUs as GRES (so Slurm sets each job's CUDA_VISIBLE_DEVICES).
The real CLI, the fake trainer, submitit's real jobs. The cluster is started before the tests (.ci/run, or
tests/slurm/setup.sh by hand, as root) and found through SLURM_TEST_STATE; without one these tests are skipped,
saying how to start one. The flag checks at the end need no Slurm."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FAKE_TRAINER, communicate, interrupt


def slurm_env(cluster) -> dict[str, str]:
    """What the cluster adds to the environment (SLURM_CONF, ...), for the sweep and the jobs it submits."""
    return {k: v for k, v in cluster.env.items() if os.environ.get(k) != v}


def run(sweep, cluster, *args: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return sweep.run("--backend", "slurm", "--no-live", *args, timeout=timeout, **slurm_env(cluster), **env)


def start(sweep, cluster, *args: str, **env) -> subprocess.Popen:
    return sweep.start("--backend", "slurm", "--no-live", *args, **slurm_env(cluster), **env)


def interrupted(proc: subprocess.Popen, before, timeout: float, what: str) -> tuple[str, str]:
    """`before()` (wait for the jobs, act on them), then Ctrl+C the sweep and collect its output; a sweep
    still running when the test fails is killed."""
    try:
        before()
        interrupt(proc)
        return communicate(proc, timeout, what)
    finally:
        if proc.poll() is None:
            proc.kill()


def ours(cluster, sweep, wait: float = 0.0) -> list[str]:
    """Job ids of this test's sweep that Slurm still holds: queued, running, or completing (its processes
    being ended). `wait`: up to this long for them to go (a job that ended is COMPLETING for a moment,
    a cancelled one up to KillWait)."""
    runs = {p.name for p in (sweep.dir / "outputs").iterdir()} if (sweep.dir / "outputs").exists() else set()
    end = time.monotonic() + wait
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%i %j"], env=cluster.env, capture_output=True, text=True)
        jobs = []
        for line in out.stdout.split("\n"):
            if line.strip():
                job, name = line.split(None, 1)
                if name.startswith("ts-") and (name[3:] in runs or name[3:].startswith(sweep.dir.name)):
                    jobs.append(job)
        if not jobs or time.monotonic() >= end:
            return jobs
        time.sleep(0.5)


def overlapping(events: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of runs (start events) whose commands ran at the same time."""
    spans = {}
    for e in events:
        spans.setdefault(e["name"], {})[e["event"]] = e
    items = [s for s in spans.values() if "start" in s and "end" in s]
    return [(a["start"], b["start"]) for i, a in enumerate(items) for b in items[i + 1:]
            if a["start"]["t"] < b["end"]["t"] and b["start"]["t"] < a["end"]["t"]]


def test_six_runs_on_four_gpus_finish_with_their_results_logs_and_own_gpus(sweep, slurm_cluster):
    sweep.config({"grid": {"n": [0, 1, 2, 3, 4, 5]}, "defaults": {"sleep": 3, "metric": 0.5, "lines": 3}})
    p = run(sweep, slurm_cluster, "--slurm-gpus-per-run", "1", "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    records = {r["model_name"]: r for r in sweep.results()}
    assert sorted(records) == [f"n_{i}" for i in range(6)]
    assert all(r["state"] == "complete" and r["metrics"]["val_loss"] == 0.5 for r in records.values())
    ids = [r["slurm_job_id"] for r in records.values()]
    assert len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids), ids  # one job array
    journal = [json.loads(line) for line in (sweep.dir / "outputs" / "journal.jsonl").read_text().splitlines()]
    assert sorted(j["slurm_job_id"] for j in journal) == sorted(ids)
    for name, r in records.items():
        folder = sweep.dir / "outputs" / name
        assert json.loads((folder / "run.json").read_text())["slurm_job_id"] == r["slurm_job_id"]
        assert r["node"] and r["duration_seconds"] < 10  # the command's time, not the queue's
        assert (folder / "train_stdout.log").read_text().count("line") == 3
        combined = (folder / "combined.log").read_text()  # made on the node, stamped, both streams
        assert " out | line 0" in combined and " err | " in combined, combined
        fake = sweep.fake(name)
        assert fake["env"]["TRAIN_SWEEP_RUN_DIR"] == str(folder.resolve())
        assert fake["env"]["TRAIN_SWEEP_SLURM_JOB_ID"] == r["slurm_job_id"]
        assert fake["env"]["CUDA_VISIBLE_DEVICES"] in {"0", "1", "2", "3"}
    pairs = overlapping(sweep.events())
    assert pairs, "the jobs ran one after another: the test says nothing about their GPUs"
    assert all(a["gpu"] != b["gpu"] for a, b in pairs), pairs  # runs at the same time saw their own GPU
    assert f"{'submit':<11} n_0  job {ids[0].split('_')[0]}_" in p.stdout
    assert not ours(slurm_cluster, sweep, wait=20)


def test_a_failing_run_and_killed_runs_are_recorded_as_failed_not_waited_on(sweep, slurm_cluster):
    """A command that exits 3; one killed with SIGKILL (its exit code, -9); one whose whole job wrapper is
    killed with SIGKILL (no exit code: Slurm's accounting says the job failed)."""
    sweep.config({"runs": [{"n": 0, "exit": 3, "err": "boom"}, {"n": 1, "sleep": 120}, {"n": 2, "sleep": 120},
                           {"n": 3, "sleep": 1}]})
    proc = start(sweep, slurm_cluster, "--slurm-gpus-per-run", "1", "--no-fail-fast")
    try:
        outputs = sweep.dir / "outputs"
        sweep.wait_for(lambda: (outputs / "n_1_sleep_120" / "fake.json").exists() and
                       (outputs / "n_2_sleep_120" / "fake.json").exists(), 60, "the long runs to start")
        os.kill(sweep.fake("n_1_sleep_120")["pid"], signal.SIGKILL)
        command = sweep.fake("n_2_sleep_120")["pid"]
        wrapper = int(Path(f"/proc/{command}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        assert "submitit" in Path(f"/proc/{wrapper}/cmdline").read_text()
        os.kill(wrapper, signal.SIGKILL)
        out, err = communicate(proc, 90, "the sweep to notice the killed jobs")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    records = {r["model_name"]: r for r in sweep.results()}
    assert records["n_0_exit_3_err_boom"]["state"] == "failed" and records["n_0_exit_3_err_boom"]["returncode"] == 3
    assert "boom" in records["n_0_exit_3_err_boom"]["stderr"]
    killed = records["n_1_sleep_120"]
    assert killed["state"] == "failed" and killed["returncode"] == -9 and killed["signal"] == "SIGKILL"
    lost = records["n_2_sleep_120"]
    assert lost["state"] == "failed" and lost["returncode"] is None
    assert f"Slurm job {lost['slurm_job_id']} ended FAILED without its command's exit code" in lost["error"]
    assert records["n_3_sleep_1"]["state"] == "complete"
    assert not ours(slurm_cluster, sweep, wait=20)


def test_detach_then_reattach_collects_everything_without_submitting_again(sweep, slurm_cluster):
    marker = sweep.dir / "failed_once"
    sweep.config({"runs": [{"n": 0, "sleep": 1}, {"n": 1, "sleep": 6}, {"n": 2, "fail_once": str(marker)},
                           {"n": 3, "sleep": 12}]})
    started = time.monotonic()
    p = run(sweep, slurm_cluster, "--slurm-gpus-per-run", "1", "--detach")
    assert p.returncode == 0 and time.monotonic() - started < 15, p.stdout + p.stderr
    assert "Detached: 4 run(s) left to Slurm" in p.stdout
    assert not (sweep.dir / "train_sweep_results.json").exists()
    submitted = {}
    for folder in (sweep.dir / "outputs").iterdir():
        if (folder / "run.json").exists():
            submitted[folder.name] = json.loads((folder / "run.json").read_text())["slurm_job_id"]
    assert len(submitted) == 4 and ours(slurm_cluster, sweep)
    sweep.wait_for(lambda: (sweep.dir / "outputs" / "n_1_sleep_6" / "fake.json").exists(), 60, "a job to run")

    p = run(sweep, slurm_cluster, "--slurm-gpus-per-run", "1")  # re-attach: the same command
    assert p.returncode == 0, p.stdout + p.stderr
    records = {r["model_name"]: r for r in sweep.results()}
    assert all(r["state"] == "complete" for r in records.values()), records
    for name, job in submitted.items():
        if name.startswith("n_2"):  # it failed while detached: submitted again, as its attempt 2
            assert records[name]["attempt"] == 2 and records[name]["slurm_job_id"] != job
            assert [a["state"] for a in records[name]["attempts"]] == ["failed"]
        else:
            assert records[name]["slurm_job_id"] == job and records[name]["attempt"] == 1, name
    starts = [e["name"] for e in sweep.events() if e["event"] == "start"]
    assert {n: starts.count(n) for n in submitted} == {n: 2 if n.startswith("n_2") else 1 for n in submitted}
    assert f"{'attach':<11} n_1_sleep_6" in p.stdout
    assert not ours(slurm_cluster, sweep, wait=20)


def test_ctrl_c_cancels_queued_and_running_jobs(sweep, slurm_cluster):
    sweep.config({"grid": {"n": list(range(8))}, "defaults": {"sleep": 120}})
    proc = start(sweep, slurm_cluster, "--slurm-gpus-per-run", "1", "--kill-grace", "2")

    def running():
        sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) >= 2, 60, "jobs to run")
        assert len(ours(slurm_cluster, sweep)) >= 5  # 4 running (4 GPUs), the others queued

    # queued array tasks cancelled before they ran have no sacct row of their own: squeue says they are gone
    out, err = interrupted(proc, running, 25, "the sweep to cancel its jobs")  # (it took 30 s before)
    assert proc.returncode == 130, out + err
    assert not ours(slurm_cluster, sweep, wait=20), "jobs outlived Ctrl+C"
    records = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
    assert len(records) == 8 and all(r["state"] == "interrupted" for r in records), records
    arrays = {r["slurm_job_id"].split("_")[0] for r in records}
    rows = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", *(f"-j{a}" for a in arrays)],
                          env=slurm_cluster.env, capture_output=True, text=True).stdout.splitlines()
    assert rows and all(row.split("|")[1].startswith("CANCELLED") for row in rows), rows  # every job, queued too


def test_ctrl_c_while_sbatch_waits_for_its_reply_leaves_no_job(sweep, slurm_cluster):
    """An adversarial pass: Ctrl+C reached sbatch too (the terminal signals the whole process group); with the
    controller slow to reply, sbatch died after the job was taken and before its id came back, and the jobs ran
    on while the sweep said it had cancelled every one. sbatch now runs with those signals held."""
    shim = sweep.dir / "slowbin"
    shim.mkdir()
    real = shutil.which("sbatch", path=slurm_cluster.env.get("PATH", os.environ["PATH"]))
    accepted = sweep.dir / "accepted"
    (shim / "sbatch").write_text(f"#!/bin/bash\nout=$({real} \"$@\"); rc=$?\ntouch {accepted}\nsleep 3\n"
                                 "echo \"$out\"; exit $rc\n")
    (shim / "sbatch").chmod(0o755)
    sweep.config({"grid": {"n": [0, 1]}, "defaults": {"sleep": 60}})
    env = sweep.env(**slurm_env(slurm_cluster))
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', os.environ['PATH'])}"
    proc = subprocess.Popen(sweep.argv("--backend", "slurm", "--no-live"), cwd=sweep.dir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        sweep.wait_for(accepted.exists, 60, "sbatch to have the jobs taken")
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl+C: the sweep and sbatch
        out, err = communicate(proc, 60, "the sweep to cancel its jobs")
        assert proc.returncode == 130, out + err
        assert not ours(slurm_cluster, sweep, wait=20), "jobs outlived Ctrl+C"
        records = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
        assert [r["state"] for r in records] == ["interrupted"] * 2 and all(r["slurm_job_id"] for r in records)
    finally:
        if proc.poll() is None:
            proc.kill()
        for job in ours(slurm_cluster, sweep):
            slurm_cluster.run("scancel", job, check=False)


def test_a_search_of_8_trials_on_2_slots(sweep, slurm_cluster):
    p = run(sweep, slurm_cluster, "--slurm-gpus-per-run", "1", "--slurm-max-parallel", "2", "--search", "random",
            "--n-trials", "8", "--metric", "val_loss", "sleep=1", "metric=interval(0, 1)", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert len(records) == 8 and all(r["state"] == "complete" for r in records)
    assert len({r["slurm_job_id"] for r in records}) == 8
    events = sweep.events()
    at_once = max(sum(1 for e in events if e["event"] == "start" and e["t"] <= s["t"]) -
                  sum(1 for e in events if e["event"] == "end" and e["t"] <= s["t"])
                  for s in events if s["event"] == "start")
    assert at_once <= 2, at_once  # never more trials than slots
    assert "Search random: 8/8 trials" in p.stdout
    best = min(records, key=lambda r: r["metrics"]["val_loss"])
    assert f"Best parameters ({best['model_name']})" in p.stdout


PRUNE_TRAIN = """\
import os, sys, time
args = dict(a.split('=', 1) for a in sys.argv[1:])
bad = args.get('bad') == '1'
for step in range(200):  # the good runs report every step the bad one will, so the pruner can judge it
    print(f'step {step} loss={(10.0 if bad else float(args["k"])) + 1 / (step + 1):.4f}', flush=True)
    time.sleep(0.3 if bad else 0.005)
"""


def test_a_pruned_trial_s_job_is_cancelled(sweep, slurm_cluster):
    sweep.config([{"k": k} for k in (0.5, 0.3, 0.4, 0.2, 0.25)] + [{"k": 9, "bad": 1}])
    script = sweep.dir / "prune_train.py"
    script.write_text(PRUNE_TRAIN)
    p = run(sweep, slurm_cluster, "--slurm-gpus-per-run", "1", "--slurm-max-parallel", "5", "--command",
            f"python {script}", "--pruner", "median", "--metric", "loss", timeout=180, trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = {r["model_name"]: r for r in sweep.results()}
    bad = records["k_9_bad_1"]
    assert bad["state"] == "pruned" and bad["metric"]["points"] < 100, bad
    assert slurm_cluster.sacct_state(bad["slurm_job_id"]).startswith("CANCELLED")
    for name, r in records.items():  # a job too short for Slurm to say it ran still has its metric stream read
        assert name == "k_9_bad_1" or (r["state"] == "complete" and r["metric"]["points"] == 200), r
    assert not ours(slurm_cluster, sweep, wait=20)


def test_scontrol_requeue_of_a_running_job_is_survived(sweep, slurm_cluster):
    sweep.config({"runs": [{"n": 0, "sleep": 6, "lines": 2}]})
    proc = start(sweep, slurm_cluster, "--slurm-gpus-per-run", "1")
    try:
        fake = sweep.dir / "outputs" / "n_0_sleep_6_lines_2" / "fake.json"
        sweep.wait_for(fake.exists, 60, "the job to run")
        job = json.loads(fake.read_text())["env"]["TRAIN_SWEEP_SLURM_JOB_ID"]
        subprocess.run(["scontrol", "requeue", job], env=slurm_cluster.env, check=True, capture_output=True)
        out, err = communicate(proc, 150, "the requeued job to run again and finish")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    record = sweep.results()[0]
    assert record["state"] == "complete" and record["slurm_job_id"] == job and record["slurm_requeues"] >= 1, record
    starts = [e for e in sweep.events() if e["event"] == "start"]
    assert len(starts) == 2  # the command ran again, in the same folder
    stderr = Path(record["stderr_log"]).read_text()
    assert f"train_sweep: job {job} restarted by Slurm (restart 1)" in stderr, stderr
    assert f"{'requeued':<11} n_0_sleep_6_lines_2: Slurm job {job}" in out


# -- the flags, checked before anything is submitted (no Slurm needed) -------------------------------------

@pytest.mark.parametrize("args, config, error", [
    (["--detach"], None, "--detach needs --backend slurm"),
    (["--slurm-partition", "gpu"], None, "--slurm-partition needs --backend slurm"),
    (["--slurm-param", "qos=high"], None, "--slurm-param needs --backend slurm"),
    (["--backend", "slurm", "--gpus", "0"], None, "--gpus names this machine's GPUs"),
    (["--backend", "slurm", "--slurm-param", "time=5"], None,
     "--slurm-param time: train_sweep sets it (use --slurm-time)"),
    (["--backend", "slurm", "--slurm-param", "qos"], None, "--slurm-param 'qos': expected KEY=VALUE"),
    (["--backend", "slurm", "--detach", "--search", "random", "--metric", "loss", "--n-trials", "4",
      "x=interval(0, 1)"], None,
     "--detach submits a list and exits; a search"),
    (["--backend", "slurm"], {"runs": [{"a": 1}], "slurm": {"time": "1h"}},
     "'slurm' key 'time' must be a number of minutes > 0, got '1h'"),
    (["--backend", "slurm"], {"runs": [{"a": 1}], "slurm": {"partiton": "gpu"}}, "partiton"),
    (["--backend", "slurm"], {"runs": [{"a": 1}], "slurm": []}, "'slurm' must be an object"),
    (["--backend", "cloud"], None, "invalid choice: 'cloud'"),
])
def test_bad_slurm_flags_are_one_line_errors(sweep, args, config, error):
    sweep.config(config or [{"a": 1}])
    p = sweep.run(*args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert error in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (sweep.dir / "outputs").exists()


def test_no_slurm_on_this_machine_is_a_one_line_error(sweep, tmp_path):
    """Without srun on PATH (not a Slurm cluster), nothing is written."""
    sweep.config([{"a": 1}])
    bare = tmp_path / "bin"
    bare.mkdir()
    p = sweep.run("--backend", "slurm", PATH=str(bare))
    if "submitit" in p.stderr and "pip install" in p.stderr:
        pytest.skip("submitit is not installed here")
    assert p.returncode == 2 and "--backend slurm:" in p.stderr and "srun is not on PATH" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (sweep.dir / "outputs").exists()


def test_slurm_that_does_not_answer_is_a_one_line_error(sweep, tmp_path):
    """Slurm's commands installed but no cluster configured (or reachable): sinfo's own word, nothing written."""
    sweep.config([{"a": 1}])
    bin_ = tmp_path / "fakebin"
    bin_.mkdir()
    for name in ("srun", "sinfo"):
        (bin_ / name).write_text("#!/bin/sh\necho 'sinfo: error: Could not establish a configuration source' >&2\n"
                                 "exit 1\n")
        (bin_ / name).chmod(0o755)
    p = sweep.run("--backend", "slurm", PATH=f"{bin_}:{os.environ['PATH']}")
    if "pip install" in p.stderr:
        pytest.skip("submitit is not installed here")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == ("train_sweep: error: --backend slurm: Slurm does not answer here (sinfo: sinfo: error: Could "
                        "not establish a configuration source)\n")
    assert not (sweep.dir / "outputs").exists()


def test_a_partition_that_does_not_exist_is_refused_before_submitting(sweep, slurm_cluster):
    sweep.config([{"a": 1}])
    p = run(sweep, slurm_cluster, "--slurm-partition", "gpus")
    assert p.returncode == 2 and "--slurm-partition gpus: no partition 'gpus' here (sinfo lists: debug)" in p.stderr, \
        p.stderr
    assert not (sweep.dir / "outputs").exists()


def test_a_parameter_submitit_does_not_know_is_refused_before_submitting(sweep, slurm_cluster):
    sweep.config([{"a": 1}])
    p = run(sweep, slurm_cluster, "--slurm-param", "acount=ml")
    assert p.returncode == 2, p.stderr
    assert "--slurm-param: submitit refuses it: Unavailable parameter(s): ['acount']" in p.stderr, p.stderr
    assert not ours(slurm_cluster, sweep, wait=20)


def test_dry_run_says_what_each_job_asks_for(sweep):
    sweep.config({"runs": [{"a": 1}], "slurm": {"partition": "gpu", "time": 90, "cpus_per_run": 8}})
    p = sweep.run("--backend", "slurm", "--dry-run", "--slurm-mem-gb", "32")
    assert p.returncode == 0, p.stderr
    assert "one Slurm job per run (partition gpu, gpus_per_run GPU(s), 8 CPUs, 32 GB, 90 min)" in p.stdout


def test_slurm_options_flags_win_over_the_config_and_timeout_gives_the_time():
    from train_sweep import Settings
    from train_sweep_extras.slurm import slurm_options

    config = {"partition": "a", "time": 30, "max_parallel": 3, "params": {"account": "ml", "qos": "low"}}
    o = slurm_options(Settings(slurm_partition="b", slurm_param=("qos=high",)), config, "cfg")
    assert (o.partition, o.time_min, o.max_parallel, dict(o.params)) == ("b", 30, 3, {"account": "ml", "qos": "high"})
    o = slurm_options(Settings(timeout=3601), {}, "cfg")
    assert o.time_min == 61 and o.requeues == 3 and o.gpus_per_run is None
    assert slurm_options(Settings(timeout=0), {}, "cfg").time_min is None
    params = slurm_options(Settings(slurm_time=2, slurm_mem_gb=1.5), {}, "cfg").parameters(2, "x")
    assert params == {"job_name": "x", "time": 2, "signal_delay_s": 20, "gpus_per_node": 2, "mem": "1536MB"}


# -- helpers: the cluster (as `cluster`), a run's job, a sacct that counts its calls -------------------------

@pytest.fixture(scope="session")
def cluster(slurm_cluster):
    """The running test cluster (tests/slurm/cluster.py: SLURM_TEST_STATE, or REVIEW_SLURM_STATE)."""
    return slurm_cluster


def job_of(sweep, name: str) -> str:
    return json.loads((sweep.dir / "outputs" / name / "run.json").read_text())["slurm_job_id"]


def sacct_wrapper(sweep, fail: bool = False) -> tuple[Path, Path]:
    """A `sacct` first on PATH that counts its calls (and fails, like a cluster without slurmdbd)."""
    bin_ = sweep.dir / "bin"
    bin_.mkdir(exist_ok=True)
    calls = sweep.dir / "sacct_calls"
    body = ('echo "sacct: error: Problem talking to the database: Connection refused" >&2; exit 1' if fail
            else 'exec /usr/bin/sacct "$@"')
    (bin_ / "sacct").write_text(f'#!/bin/sh\necho x >> {calls}\n{body}\n')
    (bin_ / "sacct").chmod(0o755)
    return bin_, calls


# -- sacct: asked at most every 3 seconds, and quietly where it fails ----------------------------------------

def test_sacct_is_asked_at_most_every_3_seconds(sweep, cluster):
    """SlurmLauncher.flush() (called at every loop pass, from Sweep._launch's finally) resets _sacct_at to
    -inf, and each sacct child's SIGCHLD wakes the loop at once: sacct runs back to back (~10 calls/s here)."""
    sweep.config({"runs": [{"n": 0, "sleep": 12}]})
    bin_, calls = sacct_wrapper(sweep)
    started = time.monotonic()
    p = run(sweep, cluster, PATH=f"{bin_}:{os.environ['PATH']}")
    took = time.monotonic() - started
    assert p.returncode == 0, p.stdout + p.stderr
    n = len(calls.read_text().splitlines())
    assert n <= took / 3 + 4, f"{n} sacct calls in {took:.0f}s"


def test_without_sacct_the_sweep_neither_spins_nor_floods_the_terminal(sweep, cluster):
    """README: 'Without slurmdbd (no sacct), this is how a killed job is noticed.' With sacct failing, the loop
    calls it ~800 times a second, and each call prints sacct's error plus submitit's warning (twice) on stderr."""
    sweep.config({"runs": [{"n": 0, "sleep": 5}]})
    bin_, calls = sacct_wrapper(sweep, fail=True)
    p = run(sweep, cluster, PATH=f"{bin_}:{os.environ['PATH']}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    n = len(calls.read_text().splitlines())
    assert n <= 10, f"{n} sacct calls for a 5 s job"
    assert len(p.stderr.splitlines()) <= 5, p.stderr[:1000]


# -- a job suspended, then cancelled -------------------------------------------------------------------------

def test_a_suspended_then_cancelled_job_is_noticed(sweep, cluster):
    """submitit's watcher drops jobs whose state is not in its own 'incomplete' list (SUSPENDED, CONFIGURING,
    REQUEUE_HOLD, STOPPED, ...) from every later sacct call, while SLURM_ACTIVE keeps waiting for them: a lone
    job seen SUSPENDED and then cancelled (or failed at boot after CONFIGURING) is waited on forever; Ctrl+C
    twice does not end the sweep either."""
    sweep.config({"runs": [{"n": 0, "sleep": 60}]})
    proc = start(sweep, cluster)
    try:
        sweep.wait_for((sweep.dir / "outputs" / "n_0_sleep_60" / "fake.json").exists, 60, "the job to run")
        job = job_of(sweep, "n_0_sleep_60")
        cluster.run("scontrol", "suspend", job)
        time.sleep(6)  # the sweep's sacct sees SUSPENDED
        cluster.run("scancel", job)
        end = time.monotonic() + 40
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.5)
        if proc.poll() is None:
            interrupt(proc)
            time.sleep(5)
            interrupt(proc)
            time.sleep(10)
            raise AssertionError("the sweep still waits 40 s after scancel; after Ctrl+C twice it is "
                                 + ("still running" if proc.poll() is None else "ended"))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    record = sweep.results()[0]
    assert record["state"] == "failed" and "cancelled outside the sweep" in record["error"], record


# -- fail fast stops the queued jobs of a list ---------------------------------------------------------------

def test_fail_fast_stops_the_queued_jobs_of_the_array(sweep, cluster):
    """README: 'the sweep stops starting runs ... the others stay pending in .partial'. On Slurm the whole
    list was submitted as one array, and Sweep._check_setup only sets `halted`: every queued task still runs
    (and fails), and the sweep waits for all of them."""
    sweep.config({"grid": {"n": list(range(8))}, "defaults": {"exit": 1, "err": "error: unknown hyperparameter lrr"}})
    p = run(sweep, cluster, "--slurm-gpus-per-run", "1", "--slurm-max-parallel", "2")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "no more runs are started" in p.stdout
    ran = sweep.started()
    assert len(ran) < 8, f"all {len(ran)} runs ran after fail fast said no more runs are started"
    partial = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
    assert any(r["state"] == "pending" for r in partial)



def test_a_retry_that_fail_fast_withdraws_before_it_ran_ends_as_its_failed_attempt(sweep, cluster):
    """From the review: a retry submitted to Slurm (its run's attempt 2) and withdrawn from the queue by fail fast
    before it ran went back among the runs not started: the run's failed attempt 1 was in neither the results
    nor its run.json (which still said running, attempt 2) and the summary counted it 'not started'. One job at
    a time runs (each asks for the node's 4 GPUs), so the retries of n=0 and n=1 wait behind n=2's job."""
    sweep.config({"runs": [{"n": 0}, {"n": 1}, {"n": 2, "sleep": 3}], "defaults": {"exit": 1, "err": "boom"}})
    p = run(sweep, cluster, "--slurm-gpus-per-run", "4", "--retries", "1")
    assert p.returncode == 1 and "no more runs are started" in p.stdout, p.stdout + p.stderr
    assert "(attempt 2)  job" in p.stdout, p.stdout  # a retry was submitted
    records = {r["model_name"]: r for r in sweep.results()}
    assert sorted(records) == ["n_0", "n_1", "n_2_sleep_3"], p.stdout
    assert all(r["state"] == "failed" and r["returncode"] == 1 for r in records.values()), records
    for name, r in records.items():
        folder = sweep.dir / "outputs" / name
        on_disk = json.loads((folder / "run.json").read_text())
        assert (on_disk["state"], on_disk["attempt"]) == ("failed", r["attempt"]), (name, on_disk)
        assert (folder / "train_stderr.log").read_text().strip().endswith("boom"), name  # its logs, not the retry's
        assert [a["attempt"] for a in r["attempts"]] == list(range(1, r["attempt"])), r
        assert not (folder / f"attempt_{r['attempt']}").exists(), name
    summary = p.stdout.split("train_sweep summary")[1]
    assert "not started" not in summary and summary.count("  failed  ") == 3, summary
    assert all(re.search(rf"n={n}.*failed.*[0-9.]+s +1\b", summary) for n in (0, 1, 2)), summary
    assert not ours(cluster, sweep, wait=20)

# -- --detach: a refused submission, status while the jobs run, --rerun, re-attaching ------------------------

def test_detach_when_sbatch_refuses_says_so(sweep, cluster):
    """Sweep.run breaks out of the loop right after _launch when detached (`detach and not self.ended`), before
    the refused attempts are reaped: exit 0, 'Detached: 0 run(s) left to Slurm as jobs .', sbatch's message in
    no output, log or journal, and run.json says 'running'."""
    sweep.config({"runs": [{"n": 0}, {"n": 1}]})
    p = run(sweep, cluster, "--detach", "--slurm-param", 'nodelist="nosuchnode"')
    assert "Invalid node name specified" in p.stdout + p.stderr, p.stdout + p.stderr
    assert p.returncode != 0 and "Detached: 0 run(s)" not in p.stdout, p.stdout


def test_status_of_a_detached_sweep_says_its_jobs_run(sweep, cluster):
    """status_lines: no PID holds the lock, a run.json says running -> 'dead (killed: run the same command to
    resume)', and the running runs are not even counted ('4 run(s): ' and nothing else)."""
    sweep.config({"grid": {"n": [0, 1, 2, 3]}, "defaults": {"sleep": 30}})
    p = run(sweep, cluster, "--detach")
    assert p.returncode == 0, p.stdout + p.stderr
    try:
        sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) >= 1, 60, "a job to run")
        status = sweep.run("status", "outputs", trainer=False)
        assert "dead" not in status.stdout and "running" in status.stdout.splitlines()[1], status.stdout
    finally:
        for job in ours(cluster, sweep):
            cluster.run("scancel", job, check=False)


def test_status_of_a_detached_sweep_whose_job_was_cancelled(sweep, cluster):
    """A detached sweep's job cancelled with scancel leaves no result: status counted it running or queued with
    Slurm for ever (it did not ask Slurm). It asks sacct now: the job ended, the same command collects it."""
    sweep.config({"grid": {"n": [0, 1]}, "defaults": {"sleep": 120}})
    p = run(sweep, cluster, "--detach")
    assert p.returncode == 0, p.stdout + p.stderr
    try:
        sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) == 2, 60, "the jobs to run")
        job = json.loads((sweep.dir / "outputs" / "n_0" / "run.json").read_text())["slurm_job_id"]
        cluster.run("scancel", job)
        sweep.wait_for(lambda: len(ours(cluster, sweep)) == 1, 60, "the cancelled job to go")
        said = "2 run(s): 1 ended with Slurm, not collected yet, 1 running or queued with Slurm"
        statuses = []  # (sacct reads Slurm's accounting, which learns of the end a moment later)

        def says_it() -> bool:
            statuses.append(sweep.run("status", "outputs", trainer=False, **slurm_env(cluster)))
            return said in statuses[-1].stdout

        sweep.wait_for(says_it, 30, "status to say the job ended")
        assert statuses[-1].returncode == 0, statuses[-1].stdout + statuses[-1].stderr
    finally:
        for job in ours(cluster, sweep):
            cluster.run("scancel", job, check=False)


def test_status_of_a_detached_sweep_whose_job_array_was_cancelled_before_its_tasks_ran(sweep, cluster):
    """From a review: a job array's tasks that have not started are one line in sacct (123_[1-2%1]); status asked
    for each task by its own id and counted them running or queued for ever once the array was cancelled."""
    sweep.config({"grid": {"n": [0, 1, 2]}, "defaults": {"sleep": 120}})
    p = run(sweep, cluster, "--detach", "--slurm-max-parallel", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    try:
        sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) == 1, 60, "the first task")
        job = json.loads((sweep.dir / "outputs" / "n_0" / "run.json").read_text())["slurm_job_id"]
        cluster.run("scancel", job.split("_")[0])  # the whole array
        sweep.wait_for(lambda: not ours(cluster, sweep), 60, "the array to go")
        statuses = []

        def says_it() -> bool:
            statuses.append(sweep.run("status", "outputs", trainer=False, **slurm_env(cluster)))
            return "3 run(s): 3 ended with Slurm, not collected yet" in statuses[-1].stdout

        sweep.wait_for(says_it, 30, "status to say the array ended")
    finally:
        for job in ours(cluster, sweep):
            cluster.run("scancel", job, check=False)


def watch_detached(sweep, cluster, sleep: float, sacct_fails: bool) -> tuple[subprocess.CompletedProcess, Path]:
    """`watch` (piped, a redraw every 0.3 s) of a sweep of 2 runs of `sleep` seconds detached on Slurm, with a
    `sacct` that counts its calls (and fails); returns watch's run and the file of sacct's calls."""
    sweep.config({"grid": {"n": [0, 1]}, "defaults": {"sleep": sleep}})
    p = run(sweep, cluster, "--detach")
    assert p.returncode == 0, p.stdout + p.stderr
    bin_, calls = sacct_wrapper(sweep, fail=sacct_fails)
    try:
        w = sweep.run("watch", "outputs", "--every", "0.3", trainer=False, timeout=90,
                      PATH=f"{bin_}:{os.environ['PATH']}", **slurm_env(cluster))
    finally:
        for job in ours(cluster, sweep):
            cluster.run("scancel", job, check=False)
    assert w.returncode == 0, w.stdout + w.stderr
    return w, calls


def test_watch_follows_a_detached_sweep_until_its_jobs_end(sweep, cluster):
    """watch of a detached sweep drew it once and exited while its jobs ran on: it redrew only while the sweep's
    process lived, and a detached sweep has none. It now redraws until the jobs have ended, and asks sacct (the
    cluster's accounting database) at most every 30 s, not at each redraw."""
    w, calls = watch_detached(sweep, cluster, sleep=8, sacct_fails=False)
    states = w.stdout.strip().split("\n\n")  # piped: each state after the one before
    assert len(states) >= 5, w.stdout
    assert "detached: its runs are Slurm jobs" in states[0], states[0]
    assert "detached: its Slurm jobs have ended (the same command collects the results)" in states[-1], states[-1]
    assert len(calls.read_text().splitlines()) <= 2, f"sacct asked {calls.read_text().count('x')} times"


def test_watch_of_a_detached_sweep_where_sacct_fails_draws_once_and_says_why(sweep, cluster):
    """From a review: where sacct is not there or fails, a job cancelled leaves no result and is never seen to end,
    so watch followed the sweep for ever. It draws once and says why, as it did before it followed detached
    sweeps."""
    w, _ = watch_detached(sweep, cluster, sleep=60, sacct_fails=True)
    assert "\n\n" not in w.stdout.strip() and "detached: its runs are Slurm jobs" in w.stdout, w.stdout
    assert "(sacct is not here or failed: which of these jobs were cancelled or killed is not known; the sweep's " \
           "command, run again, collects them)" in w.stdout, w.stdout


def test_status_and_report_of_a_detached_sweep_whose_jobs_ended(sweep, cluster):
    """From the Slurm pass: once a detached sweep's jobs had ended, status still counted them running or queued
    with Slurm, and report said only that there was no results file. Both now say the jobs ended and that the
    same command collects them."""
    sweep.config({"grid": {"n": [0, 1]}, "defaults": {"metric": 0.5}})
    p = run(sweep, cluster, "--detach", "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs" / ".slurm").glob("*_result.pkl"))) == 2
                   and not ours(cluster, sweep), 60, "the jobs to end")
    status = sweep.run("status", "outputs", trainer=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "detached: its Slurm jobs have ended (the same command collects the results)" in status.stdout
    assert "2 run(s): 2 ended with Slurm, not collected yet\n" in status.stdout, status.stdout
    report = sweep.run("report", trainer=False)
    assert report.returncode == 2, report.stdout + report.stderr
    assert report.stderr.strip().splitlines() == [
        "train_sweep: error: train_sweep_results.json: results file not found; its sweep in outputs/ has not ended: "
        "detached: its Slurm jobs have ended (the same command collects the results); 2 run(s): 2 ended with Slurm, "
        "not collected yet (train_sweep.py report outputs shows them)"], report.stderr
    p = run(sweep, cluster, "--metric", "val_loss")  # re-attach: the same command collects them
    assert p.returncode == 0 and len(sweep.results()) == 2, p.stdout + p.stderr


def test_a_job_killed_while_detached_keeps_its_duration_from_sacct(sweep, cluster):
    """From the review: a job that ran and was cancelled while no sweep followed it (never seen running) was
    recorded with no start and no duration, and an end at the moment the sweep re-attached; sacct has both."""
    sweep.config({"runs": [{"n": 0, "sleep": 60}]})
    assert run(sweep, cluster, "--detach").returncode == 0
    sweep.wait_for(lambda: (sweep.dir / "outputs" / "n_0_sleep_60" / "fake.json").exists(), 60, "the job to run")
    time.sleep(3)
    for job in ours(cluster, sweep):
        cluster.run("scancel", job, check=False)
    sweep.wait_for(lambda: not ours(cluster, sweep), 30, "the job to end")
    time.sleep(5)  # re-attached well after its end
    proc = start(sweep, cluster)  # re-attached: it collects the job, then submits the run again (stopped here)
    journal = sweep.dir / "outputs" / "journal.jsonl"

    def killed() -> list[dict]:
        lines = journal.read_text().splitlines() if journal.exists() else []
        return [r for r in map(json.loads, lines) if r.get("state") == "failed"]

    interrupted(proc, lambda: sweep.wait_for(killed, 60, "the killed job's record"), 60, "the sweep to stop")
    assert not ours(cluster, sweep, wait=20)
    record = killed()[0]
    assert "cancelled outside the sweep" in record["error"], record
    assert record["duration_seconds"] is not None and 2 <= record["duration_seconds"] < 8, record


def test_rerun_cancels_the_jobs_an_earlier_detached_sweep_left(sweep, cluster):
    """run_sweep sets the old run folders aside for --rerun but never cancels their jobs (cancel_orphan_jobs is
    only called for a search): they keep their GPUs, and a job still queued then starts and appends its
    output to the NEW run's logs (its paths are the same), its $TRAIN_SWEEP_RUN_DIR being the new folder."""
    sweep.config({"grid": {"n": [0, 1]}, "defaults": {"sleep": 20}})  # n_1 waits for n_0: without the cancel, it
    # is still queued or running when the wait below ends
    p = run(sweep, cluster, "--detach", "--slurm-max-parallel", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    old = {job_of(sweep, name) for name in ("n_0", "n_1")}
    try:
        p = run(sweep, cluster, "--detach", "--rerun")
        assert p.returncode == 0, p.stdout + p.stderr
        end = time.monotonic() + 20  # cancelled: a running one is COMPLETING for a moment (CI once saw it at 3 s)
        while (left := sorted(old & set(ours(cluster, sweep)))) and time.monotonic() < end:
            time.sleep(0.5)
        assert not left, f"jobs of the set-aside runs still queued or running: {left}"
        for name in ("n_0~1", "n_1~1"):  # (an adversarial pass: their run.json still said running, so status and
            record = json.loads((sweep.dir / "outputs" / name / "run.json").read_text())  # list saw a detached
            assert record["state"] == "interrupted" and "cancelled by a later sweep" in record["error"], record  # job)
    finally:
        for job in ours(cluster, sweep):
            cluster.run("scancel", job, check=False)
        ours(cluster, sweep, wait=30)  # gone before the next test wants the GPUs


def test_reattach_to_a_job_slurm_forgot_submits_the_run_again(sweep, cluster):
    """README: a job that ended while no sweep followed it and did not complete is submitted again. A job that
    Slurm no longer knows (purged from accounting; another cluster's id) is found out only after SLURM_GONE_S,
    when SlurmLauncher.poll no longer applies `rerun` (attempt.polled is already True): the run is recorded
    `failed` with a 30 s 'duration' that never ran, and is not submitted again."""
    sweep.config({"runs": [{"n": 0}]})
    p = run(sweep, cluster, "--detach")
    assert p.returncode == 0, p.stdout + p.stderr
    path = sweep.dir / "outputs" / "n_0" / "run.json"
    sweep.wait_for(lambda: not ours(cluster, sweep), 60, "the job to end")
    record = json.loads(path.read_text())
    record["slurm_job_id"] = "999999"  # a job Slurm does not know
    path.write_text(json.dumps(record))
    p = run(sweep, cluster)
    result = sweep.results()[0]
    assert p.returncode == 0 and result["state"] == "complete" and result["attempt"] == 2, (p.stdout, result)


# -- what is recorded: durations, GPUs and commands, the restart line ----------------------------------------

def test_a_job_cancelled_while_queued_has_no_duration(sweep, cluster):
    """README: 'A run's duration is its command's, without the time its job waited in the queue'. A job that
    never ran and is cancelled by Ctrl+C gets duration = now - submission (Sweep._reap keeps the submit time as
    start_time when the Outcome has no started_at)."""
    sweep.config({"grid": {"n": list(range(6))}, "defaults": {"sleep": 60}})
    proc = start(sweep, cluster, "--slurm-gpus-per-run", "2")  # 2 at once; 4 queued

    def queued_a_while():
        sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("*/fake.json"))) >= 2, 60, "jobs to run")
        time.sleep(5)

    interrupted(proc, queued_a_while, 60, "the sweep to cancel its jobs")
    records = json.loads((sweep.dir / "train_sweep_results.json.partial").read_text())
    never_ran = [r for r in records if not (Path(r["run_dir"]) / "fake.json").exists()]
    assert never_ran
    # none ran, or one began at the Ctrl+C, before its command wrote fake.json: it counts from when the sweep saw
    # it running, not from its submission (it had waited 5 s and more in the queue: 5.8 s, once)
    assert all(not r["duration_seconds"] or r["duration_seconds"] < 4 for r in never_ran), [
        (r["model_name"], r["duration_seconds"]) for r in never_ran]


def test_results_record_the_gpus_and_command_the_job_had(sweep, cluster):
    """Runs on Slurm are assigned (CPU,) (ClusterSlots.place), so gpu_id is null and `train_sweep report` shows
    'CPU' for every run, and the recorded command has '{gpu}' filled with '' (the login node's view), while
    the command that ran had the job's GPUs."""
    sweep.config({"runs": [{"n": 0}]})
    p = run(sweep, cluster, "--slurm-gpus-per-run", "1", "--command", f"python {FAKE_TRAINER} --gpu={{gpu}}",
            trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    record = sweep.results()[0]
    ran = sweep.fake(record["model_name"])["argv"]
    assert ran[0] != "--gpu="
    assert record["command"][2:] == ran, (record["command"], ran)
    assert record["gpu_id"] is not None


def test_combined_log_has_the_restart_line(sweep, cluster):
    """README: after a requeue 'the logs are appended to, after a line train_sweep: job <id> restarted by Slurm'.
    SlurmTask.__call__ writes that line to train_stderr.log before it opens its LogFollower with resume=True
    (which starts at the file's end): `tail -f combined.log` never shows it."""
    sweep.config({"runs": [{"n": 0, "sleep": 6, "lines": 1}]})
    proc = start(sweep, cluster)
    try:
        fake = sweep.dir / "outputs" / "n_0_sleep_6_lines_1" / "fake.json"
        sweep.wait_for(fake.exists, 60, "the job to run")
        job = json.loads(fake.read_text())["env"]["TRAIN_SWEEP_SLURM_JOB_ID"]
        cluster.run("scontrol", "requeue", job)
        out, err = communicate(proc, 150, "the requeued job to finish")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    folder = sweep.dir / "outputs" / "n_0_sleep_6_lines_1"
    assert "restarted by Slurm" in (folder / "train_stderr.log").read_text()
    assert "restarted by Slurm" in (folder / "combined.log").read_text()


# -- Slurm's limits: MaxArraySize, a partition's MaxTime -----------------------------------------------------

def test_a_list_longer_than_max_array_size_is_submitted(sweep, cluster):
    """SlurmLauncher.flush submits all runs of a GPU count as ONE job array. Slurm's MaxArraySize (default 1001,
    as here) refuses an array of 1002 tasks: 'Invalid job array specification', and every one of the 1002 runs
    is recorded failed (fail fast then blames the user's setup). The array must be split (and a per-user
    submit limit, QOS MaxSubmitJobsPerUser, respected). Jobs are submitted held: nothing runs."""
    limit = cluster.run("scontrol", "show", "config").stdout
    assert "MaxArraySize            = 1001" in limit
    sweep.config({"grid": {"n": list(range(1002))}})
    try:
        p = run(sweep, cluster, "--slurm-param", 'additional_parameters={"hold": true}', "--detach", timeout=300)
        assert p.returncode == 0, p.stdout[-1500:]
        submitted = [json.loads(f.read_text()).get("slurm_job_id") for f in (sweep.dir / "outputs").glob("*/run.json")]
        assert len(submitted) == 1002 and all(submitted), \
            f"{submitted.count(None)} of 1002 runs not submitted; {p.stdout.splitlines()[-2]}"
    finally:
        for job in {j.split("_")[0] for j in ours(cluster, sweep)}:
            cluster.run("scancel", job, check=False)


def test_a_job_that_can_never_start_is_reported(sweep, cluster):
    """The default --timeout (36000 s) makes every job ask for 600 min. On a partition with MaxTime 2 h (and
    Slurm's default EnforcePartLimits=NO), sbatch accepts it and it stays PENDING (Reason=PartitionTimeLimit)
    forever: the sweep shows 'queued 1' and never says why (no squeue Reason anywhere)."""
    sweep.config({"runs": [{"n": 0}]})
    cluster.run("scontrol", "update", "PartitionName=debug", "MaxTime=120")
    try:
        out, err = interrupted(start(sweep, cluster), lambda: time.sleep(20), 60, "the sweep to stop")
    finally:
        cluster.run("scontrol", "update", "PartitionName=debug", "MaxTime=INFINITE")
    assert "PartitionTimeLimit" in out + err or "time limit" in (out + err).lower(), out + err


def test_reattaching_to_a_job_whose_run_json_is_damaged_is_one_line(tmp_path):
    """A run.json that names a running Slurm job with an attempt of the wrong type: int('x') was a ValueError
    traceback when the same command came back to re-attach."""
    pytest.importorskip("submitit")
    from train_sweep import Run, UserError
    from train_sweep_extras.slurm import attach_jobs

    run = Run(index=0, name="n_0", hyperparams={"n": 0}, argv=["python", "train.py", "n=0"], run_dir=tmp_path / "n_0")
    run.identity = "abc"
    run.run_dir.mkdir()
    (run.run_dir / "run.json").write_text(json.dumps({"model_name": "n_0", "identity": "abc", "state": "running",
                                                      "slurm_job_id": "123", "attempt": "x"}))
    with pytest.raises(UserError, match=r"n_0/run.json is damaged: its 'attempt' is \"x\""):
        attach_jobs([run], {})
