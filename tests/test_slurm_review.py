"""Review of the Slurm backend (537f130): one test per bug found. Each failed on 537f130.

Against a real localhost Slurm that .ci/run starts, or `bash tests/slurm/setup.sh /tmp/rv_slurm` (as root),
found through SLURM_TEST_STATE=/tmp/rv_slurm (or REVIEW_SLURM_STATE, as before); skipped, saying how to start
one, without it. Run one test at a time on a small machine:

    SLURM_TEST_STATE=/tmp/rv_slurm python -m pytest -q tests/test_slurm_review.py -k NAME
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from slurm.cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

from conftest import FAKE_TRAINER, interrupt
from test_core_bugs import communicate
from test_slurm import interrupted, ours, run, start


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


# -- 1. sacct is asked in a busy loop, not "at most every 3 seconds" ----------------------------------------

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


# -- 2. a job suspended at a sacct look is never looked at again: the sweep hangs, even after Ctrl+C ---------

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


# -- 3. fail fast does not stop a list's queued jobs ------------------------------------------------------

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


# -- 4. --detach with a refused submission exits 0 and says nothing ------------------------------------------

def test_detach_when_sbatch_refuses_says_so(sweep, cluster):
    """Sweep.run breaks out of the loop right after _launch when detached (`detach and not self.ended`), before
    the refused attempts are reaped: exit 0, 'Detached: 0 run(s) left to Slurm as jobs .', sbatch's message in
    no output, log or journal, and run.json says 'running'."""
    sweep.config({"runs": [{"n": 0}, {"n": 1}]})
    p = run(sweep, cluster, "--detach", "--slurm-param", 'nodelist="nosuchnode"')
    assert "Invalid node name specified" in p.stdout + p.stderr, p.stdout + p.stderr
    assert p.returncode != 0 and "Detached: 0 run(s)" not in p.stdout, p.stdout


# -- 5. status / list of a detached sweep: "dead (killed)" while its jobs run -------------------------------

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


# -- 6. --rerun leaves the earlier sweep's jobs running, writing into the new run folders ---------------------

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
    finally:
        for job in ours(cluster, sweep):
            cluster.run("scancel", job, check=False)
        ours(cluster, sweep, wait=30)  # gone before the next test wants the GPUs


# -- 7. re-attach to a job Slurm no longer knows: recorded failed after 30 s, not submitted again --------------

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


# -- 9. a job cancelled while queued gets its time in the queue as duration ----------------------------------

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
    assert all(not r["duration_seconds"] for r in never_ran), [(r["model_name"], r["duration_seconds"])
                                                                for r in never_ran]


# -- 10. the results file says CPU and records a command that is not what ran --------------------------------

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


# -- 11. combined.log loses the restart line ---------------------------------------------------------------

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


# -- 12. a list longer than Slurm's MaxArraySize: every run fails -------------------------------------------

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


# -- 13. a job that can never start is waited on forever, silently ------------------------------------------

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
