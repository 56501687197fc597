"""The real CLI end to end, with the fake pynvml on PYTHONPATH and the fake trainer: a whole sweep's results
(the seed's fields first), a failed run's exit code and where its log is, --help."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest


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


def test_failed_run_exit_code_1_and_summary_names_the_log(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"exit": 3, "err": "ValueError:boom"}, {"ok": 1}])
    p = sweep.run()
    assert p.returncode == 1
    failed, ok = sweep.results()
    assert failed["state"] == "failed" and failed["returncode"] == 3 and failed["success"] is False
    assert ok["state"] == "complete"
    assert "see outputs/exit_3_err_ValueError_boom/train_stderr.log: ValueError:boom" in p.stdout  # relative: shorter


def test_a_program_that_cannot_start_fails_without_an_exit_code(sweep):
    """A program that is there but not executable fails the run with why; its event line said 'rc None'."""
    sweep.gpus.set(count=1)
    (sweep.dir / "notexec.sh").write_text("#!/bin/sh\necho hi\n")  # (no execute bit)
    sweep.config([{"n": 0}])
    p = sweep.run("--no-live", "--command", "./notexec.sh", trainer=False)
    (r,) = sweep.results()
    assert p.returncode == 1 and r["state"] == "failed" and r["returncode"] is None and r["error"], p.stdout
    assert "rc None" not in p.stdout, p.stdout


def test_help_is_grouped_and_named_as_invoked(sweep):
    p = sweep.run("--help")
    assert p.returncode == 0
    assert p.stdout.startswith("usage: train_sweep.py ")
    heads = [line for line in p.stdout.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert heads == ["options:", "what to run:", "where runs go (placement):", "how runs end:",
                     "metrics and the best model:", "output:"] + [h for h in heads if h.startswith("search")] + \
        [h for h in heads if h.startswith("on a Slurm cluster")] + [h for h in heads if h.startswith("several hosts")]
    assert len(heads) == 9
    assert "(default: 36000 = 10 hours)" in " ".join(p.stdout.split())


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&-"])
def test_a_sweep_with_its_standard_output_closed_runs_and_exits_0(sweep, closed):
    """An adversarial pass: with stdout closed (cron, a daemon: `cmd >&-`) the sweep died in a traceback
    before any run, leaving a half-made output folder; with stderr closed a sweep whose runs all succeeded
    exited 1 (Python makes a closed stream None)."""
    sweep.gpus.set(count=1)
    sweep.config([{"metric": 0.5}])
    out = sweep.dir / "rc.txt"
    p = subprocess.run(["bash", "-c", f"{shlex.join(sweep.argv('--no-live'))} {closed}; echo $? > {out}"],
                       cwd=sweep.dir, env=sweep.env(), capture_output=True, text=True, timeout=60)
    assert out.read_text().strip() == "0", (out.read_text(), p.stdout, p.stderr)
    assert [r["state"] for r in sweep.results()] == ["complete"]
