"""A search across sweeps, through the real CLI: its study (outputs/study.log) resumed by the same command
after SIGINT or kill -9 (no trial lost or told twice; requeued and retried trials; the trial asked ahead put
back), grids resumed with a larger budget, a target already reached, another space or other objectives
refused, --rerun setting the study aside; a deleted, emptied, cut, torn or damaged study.log."""

from __future__ import annotations

import json
import shutil
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    QUADRATIC, SLOW_QUADRATIC, all_dead, check_refused, interrupt, kill_pids, load_study, no_traceback, pid_alive,
    points, script, states,
)


optuna = pytest.importorskip("optuna")

yaml = pytest.importorskip("yaml")


# -- resume after SIGINT and after kill -9 -----------------------------------------------------------------------

HOLD_THIRD = """\
with open({log!r}, 'a') as f:
    f.write(os.environ['TRAIN_SWEEP_RUN_NAME'] + ' ' + str(os.getpid()) + '\\n')
n = len(open({log!r}).read().splitlines())
x = float(args['x'])
if n == 3:  # the third run started: it holds until the sweep is stopped
    print('holding', flush=True)
    time.sleep(120)
print(f'loss={{(x - 0.3) ** 2}}', flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "kill9"])
def test_resume_after_the_sweep_died_loses_no_trial(sweep, sig):
    sweep.gpus.set(count=1)
    log = sweep.dir / "starts.log"
    command = script(sweep, "hold.py", HOLD_THIRD.format(log=str(log)))
    args = ["--command", command, "--search", "random", "--n-trials", "5", "--metric", "loss", "--no-live",
            "x=interval(0, 1)"]
    proc = sweep.start(*args, trainer=False)
    held = None
    try:
        sweep.wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 3, what="the third trial")
        held = int(log.read_text().splitlines()[2].split()[1])
        time.sleep(0.3)
        assert proc.poll() is None and pid_alive(held)
        proc.send_signal(sig)
        first_out, _ = proc.communicate(timeout=30)
        assert all_dead([held], 15), "the held run outlived its sweep"
    finally:
        if proc.poll() is None:
            proc.kill()
        if held:
            kill_pids([held])
    out = sweep.dir / "outputs"
    study = load_study(out)
    third = study.trials[2]
    if sig == signal.SIGKILL:
        assert third.state.name == "RUNNING"  # the sweep could tell it nothing
    else:
        # the third trial, and the trial asked ahead for the next free slot (never started)
        assert third.state.name == "FAIL" and 2 in study.user_attrs.get("requeued")
    held_params = dict(third.params)
    if sig == signal.SIGINT:  # the interrupted trial does not count against the budget: 2 of 5 are done
        assert "Search random: 2/5 trials" in first_out, first_out[-800:]

    p = sweep.run(*args, trainer=False)  # the same command again
    assert p.returncode == 0, p.stdout + p.stderr
    if sig == signal.SIGKILL:
        assert "trial 2 had not ended when the sweep stopped: asked again" in p.stdout
    study = load_study(out)
    requeued = set(study.user_attrs.get("requeued", []))
    trials = study.get_trials(deepcopy=False)
    assert all(t.state.is_finished() for t in trials), states(study)  # nothing left running or waiting
    assert study.trials[2].state.name == "FAIL"
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.number not in requeued]
    assert len(complete) == 5 and {t.state.name for t in trials if t.number in requeued} == {"FAIL"}, states(study)
    assert len(trials) == 5 + len(requeued)
    records = {r["trial"]: r for r in sweep.results()}
    assert sorted(records) == [t.number for t in complete]  # the two of the first sweep kept, none twice
    assert [0, 1] == sorted(records)[:2]
    # requeued: the held trial, and at most one trial asked ahead for the next slot, which never started
    assert 2 in requeued and len(requeued) <= 2 and not requeued & set(records)
    first_reasked = min(n for n in records if n > 2)
    assert study.trials[first_reasked].params == held_params  # the interrupted trial's parameters are asked again first
    assert all(r["state"] == "complete" for r in records.values())
    for t in complete:  # each told once, its own run's value
        assert t.values == [pytest.approx(records[t.number]["metrics"]["loss"])]
        assert t.user_attrs["run"] == records[t.number]["model_name"]
    names = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(names) == 6 and len(set(names)) == 6 and names[:2] == [records[0]["model_name"], records[1]["model_name"]]
    assert "5/5 trials" in p.stdout
    # an adversarial pass: after kill -9, the held trial's folder kept a run.json saying running, and the finished
    # search showed as dead (killed) in status and list for good
    status = sweep.run("status", trainer=False).stdout
    assert "outputs: finished" in status and "died" not in status, status  # (and after Ctrl+C: 'interrupted', though
    listed = sweep.run("list", trainer=False).stdout  # the search had ended: its interrupted trial was asked again)
    assert re.search(r"│\s*outputs\s*│\s*finished\s*│", listed), listed
    # a new user's pass: the trial interrupted at the first start, asked again at the second, was counted on top of
    # the budget ('5 run(s): 5 complete, 1 interrupted'; list's interrupted 1; report outputs' 6 runs)
    assert "5 run(s): 5 complete\n" in status, status
    assert re.search(r"│\s*outputs\s*│\s*finished\s*│[^│]*│\s*5\s*│\s*5\s*│\s*0\s*│\s*0\s*│\s*0\s*│", listed), listed
    assert sweep.run("report", "outputs", trainer=False).stdout.startswith("outputs: 5 run(s)")


def test_an_oom_requeued_trial_running_at_kill_9_is_asked_again_not_lost(sweep):
    """settle_orphans and earlier_trials take the journal's last record: the requeued first attempt's `oom`. The
    trial is told failed and the results keep it as a final `oom` run (exit 1), though it never ended."""
    sweep.gpus.set(count=1)
    marker, fast = sweep.dir / "oomed", sweep.dir / "fast"
    body = (f"if not os.path.exists({str(marker)!r}):\n    open({str(marker)!r}, 'w').close()\n"
            "    print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB', file=sys.stderr)\n"
            "    sys.exit(1)\n"
            f"open(os.path.join(RUN_DIR, 'second'), 'w').close()\n"
            f"time.sleep(0 if os.path.exists({str(fast)!r}) else 60)\n" + SLOW_QUADRATIC)
    cmd = script(sweep, "oom.py", body)
    args = ("--command", cmd, "--search", "random", "--n-trials", "1", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    proc = sweep.start(*args, trainer=False)
    sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/second")), timeout=30, what="the second attempt")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(1)  # the guardian ends the run
    fast.touch()
    p = sweep.run(*args, trainer=False)
    no_traceback(p)
    assert [r["state"] for r in sweep.results()] == ["complete"], sweep.results()
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_trial_waiting_for_its_retry_at_sigint_is_not_a_failed_result_on_resume(sweep):
    """close() requeues the open trial (asked again), but earlier_trials restores its run from the journal's last
    record (`failed`, attempt 1): the results hold a failed run for a trial that ran again, and exit is 1."""
    sweep.gpus.set(count=1)
    body = ("first = not os.path.exists(os.path.join(RUN_DIR, 'attempt_1'))\n"
            "if first:\n    sys.exit(2)\n"
            "open(os.path.join(RUN_DIR, 'second'), 'w').close()\n"
            "time.sleep(float(os.environ.get('HOLD', '0')))\n" + SLOW_QUADRATIC)
    cmd = script(sweep, "f.py", body)
    args = ("--command", cmd, "--search", "random", "--n-trials", "2", "--retries", "1", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    proc = sweep.start(*args, trainer=False, HOLD="30")  # both trials fail once; the first retry runs, the second waits
    sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/second")), timeout=30, what="the first retry")
    interrupt(proc)
    proc.communicate(timeout=30)
    p = sweep.run(*args, trainer=False)
    no_traceback(p)
    assert "failed" not in {r["state"] for r in sweep.results()}, [(r["model_name"], r["state"]) for r in sweep.results()]
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_complete_run_without_its_metric_found_at_resume_is_told_failed_not_asked_again(tmp_path):
    """settle_orphans: a journal record `complete` whose metric is missing falls into the `else` branch: the trial
    is requeued and asked again, while earlier_trials puts the run in the results as complete: it runs twice."""
    from train_sweep_extras.search import import_optuna, settle_orphans

    optuna_ = import_optuna()
    from optuna.trial import TrialState

    study = optuna_.create_study()
    trial = study.ask({"x": optuna_.distributions.FloatDistribution(0, 1)})
    journal = {"trial000": [{"trial": trial.number, "state": "complete", "metrics": {"loss": None}}]}
    settle_orphans(study, True, journal, ("loss",), lambda line: None)
    assert study.trials[0].state == TrialState.FAIL
    assert states(study) == {"FAIL": 1}, states(study)  # not a WAITING copy to run again


def _journal_study(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="train_sweep",
                               load_if_exists=True)


def test_the_next_trial_is_asked_ahead_and_put_back_when_the_sweep_ends(tmp_path):
    """prepare() (after the loop's launches) tells ended trials and asks one trial ahead; next() hands it out
    without asking; close() tells the unstarted one failed, requeued (not counted) and enqueued again."""
    from train_sweep import Run, State
    from train_sweep_extras.search import SearchSource
    from train_sweep_extras.space import parse_search

    study = _journal_study(tmp_path / "study.log")
    search = parse_search({"params": {"x": {"type": "float", "low": 0, "high": 1}}, "metric": "loss"}, "test")
    made = []

    def make_run(params, number):
        run = Run(index=number, name=f"trial{number}", hyperparams=params, argv=[], run_dir=tmp_path / str(number))
        made.append(run)
        return run

    source = SearchSource(study, search, make_run, objectives=["loss"], n_trials=3, path=tmp_path / "study.log")
    first = source.next()
    assert first.trial == 0 and len(study.trials) == 1 and source.pending() == 2
    source.prepare()
    assert len(study.trials) == 2 and source.ahead is not None and source.pending() == 2  # asked, not started
    first.state, first.metrics = State.COMPLETE, {"loss": 0.5}
    source.finished(first)
    assert study.trials[0].state.name == "RUNNING"  # told in prepare(), off the path to the next start
    second = source.next()
    assert second is made[1] and len(study.trials) == 2  # handed out without asking
    source.prepare()
    assert study.trials[0].state.name == "COMPLETE" and study.trials[0].value == 0.5
    assert len(study.trials) == 3 and source.pending() == 1  # the third and last, asked ahead
    source.close()  # the sweep stops: the second ran no end, the third never started
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING", "WAITING"]
    assert study.user_attrs["requeued"] == [1, 2]
    assert [t.system_attrs["fixed_params"] for t in study.trials[3:]] == [study.trials[1].params, study.trials[2].params]
    again = SearchSource(study, search, make_run, objectives=["loss"], n_trials=3, path=tmp_path / "study.log")
    assert again.counted == 1 and again.pending() == 2  # the requeued and the waiting ones do not count
    assert again.next().hyperparams == study.trials[1].params  # the interrupted trial is asked again first


# -- grids, budgets, targets and seeds on resume -----------------------------------------------------------------

def test_grid_resumed_with_a_larger_budget_runs_each_point_once(sweep):
    """open_study reseeds the sampler with seed + len(trials); GridSampler shuffles its grid with that seed, so the
    earlier trials' grid ids name other points: points run twice, others never."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    space = ("x=0.1,0.2,0.3", "lr=0.01,0.1")
    p = sweep.run("--command", cmd, "--search", "grid", "--n-trials", "3", "--metric", "loss", "--no-live", *space,
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    p = sweep.run("--command", cmd, "--search", "grid", "--n-trials", "6", "--metric", "loss", "--no-live", *space,
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert points(sweep.results(), "x", "lr") == Counter({(x, lr): 1 for x in (0.1, 0.2, 0.3) for lr in (0.01, 0.1)})


def test_the_counts_of_a_search_stopped_by_ctrl_c_add_up_to_its_trials(sweep):
    """From a new user's pass: a trial interrupted by Ctrl+C is asked again at the next start, so the search gave
    its place in the budget back at once, and the event lines counted it twice once runs ended at different ticks
    of the loop: [complete 0 | interrupted 2 | running 0 | pending 5] for 6 trials."""
    # no NVML: on the CPU, 4 at once; each ends term_delay seconds after its SIGTERM, at another tick of the loop
    proc = sweep.start("--search", "random", "--n-trials", "8", "--metric", "val_loss", "--no-live",
                       "--max-processes-per-gpu", "4", "sleep=30", "metric=0.5", "term_delay=interval(0.1,2)")
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("trial00[0-3]*/run.json"))) == 4, timeout=30,
                   what="4 trials running")
    time.sleep(0.5)
    interrupt(proc)
    out, _ = proc.communicate(timeout=30)
    lines = re.findall(r"\[([a-z]+ \d+(?: \| [a-z]+ \d+)*)\]", out)
    assert any("interrupted 4" in line for line in lines), out
    for line in lines:
        assert sum(int(part.split()[1]) for part in line.split(" | ")) == 8, (line, out)


@pytest.mark.parametrize("damage", ["deleted", "cut", "deleted_and_a_run_json_damaged"])
def test_a_resumed_search_whose_journal_was_lost_keeps_its_finished_trials_from_their_run_json(sweep, damage):
    """The study and the run folders say which trials finished; a journal deleted or cut short (a crash, a cleanup,
    a copy) lost their records: a resume took them from the journal alone and rewrote the results file without
    them, its best line naming a worse run than the search's."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", QUADRATIC)
    space = ("x=0.1,2.0,3.0",)
    p = sweep.run("--command", cmd, "--search", "grid", "--n-trials", "2", "--metric", "loss", "--no-live", *space,
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    before = {r["model_name"]: r["metrics"]["loss"] for r in sweep.results()}
    assert len(before) == 2
    journal = sweep.dir / "outputs" / "journal.jsonl"
    if damage.startswith("deleted"):
        journal.unlink()
    else:
        journal.write_text(journal.read_text().splitlines(keepends=True)[0])
    again = ["--command", cmd, "--search", "grid", "--n-trials", "3", "--metric", "loss", "--no-live", *space]
    if damage == "deleted_and_a_run_json_damaged":  # a TypeError traceback before: dict([1, 2])
        run_json = next((sweep.dir / "outputs").glob("trial000_*/run.json"))
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "hyperparams": [1, 2]}))
        check_refused(sweep.run(*again, trainer=False), "run.json is damaged", "'hyperparams'")
        return
    p = sweep.run(*again, trainer=False)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    after = {r["model_name"]: r["metrics"]["loss"] for r in sweep.results()}
    assert len(after) == 3 and {k: after[k] for k in before} == before, after
    best = min(after, key=after.get)
    assert f"Best (min loss): {best} " in p.stdout, p.stdout[-1500:]


def test_grid_resumed_after_sigint_finishes_without_a_traceback(sweep):
    """A requeued trial is enqueued with fixed params: the grid sampler gives it no grid_id, and its after_trial
    raises KeyError('grid_id') when one grid point is left (SearchSource._tell_ended catches RuntimeError only)."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    space = ("x=0.1,0.2,0.3", "lr=0.01,0.1")
    proc = sweep.start("--command", cmd, "--search", "grid", "--metric", "loss", "--no-live",
                       "--max-processes-per-gpu", "2", "sleep=0.5", *space, trainer=False)
    sweep.wait_for(lambda: len(list((sweep.dir / "outputs").glob("trial00[23]*"))) == 2, timeout=30,
                   what="the third and fourth trials")
    interrupt(proc)
    proc.communicate(timeout=30)
    p = sweep.run("--command", cmd, "--search", "grid", "--metric", "loss", "--no-live", "--max-processes-per-gpu", "2",
                  "sleep=0.5", *space, trainer=False)  # the same command (another sleep= would be another search)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert points(sweep.results(), "x", "lr") == Counter({(x, lr): 1 for x in (0.1, 0.2, 0.3) for lr in (0.01, 0.1)})


def test_resume_a_search_over_a_shuffle(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "shuf.py", "print(f\"loss={int(args['n'])}\")\n")
    base = ["--command", command, "--search", "random", "--metric", "loss", "--no-live", "n=shuffle(range(1, 9))"]
    assert sweep.run(*base, "--n-trials", "2", trainer=False).returncode == 0
    p = sweep.run(*base, "--n-trials", "3", trainer=False)  # the same space, one more trial
    assert p.returncode == 0, p.stderr
    assert sorted(r["trial"] for r in sweep.results()) == [0, 1, 2]


def test_a_target_reached_stays_reached_on_resume(sweep):
    """The W&B metric.target is checked only when a run ends: the same command again starts new trials although
    the study's best already reached it."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    path = sweep.dir / "s.yaml"
    path.write_text(yaml.safe_dump({"method": "random", "metric": {"name": "loss", "goal": "minimize", "target": 10},
                                    "run_cap": 20, "parameters": {"x": {"min": 0.0, "max": 1.0}}}))
    assert sweep.run("--command", cmd, "--sweep-file", str(path), "--no-live", trainer=False).returncode == 0
    assert len(sweep.results()) == 1
    p = sweep.run("--command", cmd, "--sweep-file", str(path), "--no-live", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(sweep.results()) == 1, [r["model_name"] for r in sweep.results()]


def test_a_resumed_search_near_the_top_seed_does_not_crash(sweep):
    """open_study seeds the sampler with seed + trials so far: past 2**32 - 1 numpy raises (a traceback)."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "tpe", "--seed", str(2 ** 32 - 1), "--n-trials", "2", "--metric", "loss",
            "--no-live", "x=interval(0, 1)")
    assert sweep.run(*args, "--n-trials", "1", trainer=False).returncode == 0
    p = sweep.run(*args, trainer=False)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr


# -- another search in the same folder; --rerun ------------------------------------------------------------------

def test_resume_with_another_search_space_is_refused(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    base = ["--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live"]
    assert sweep.run(*base, "x=interval(0, 1)", trainer=False).returncode == 0
    kept = {name: (sweep.dir / "outputs" / name).read_bytes() for name in ("sweep.json", "sweep.log")}
    p = sweep.run(*base, "x=interval(0, 2)", trainer=False)
    check_refused(p, "study.log", "made for another search", "--rerun")
    assert states(load_study(sweep.dir / "outputs")) == {"COMPLETE": 2}  # nothing asked, nothing told
    assert len(sweep.results()) == 2
    for name, before in kept.items():  # refused before anything was written
        assert (sweep.dir / "outputs" / name).read_bytes() == before, name


@pytest.mark.parametrize("change", [["--mode", "max"], ["--metric", "acc"]], ids=["mode", "metric"])
def test_resume_with_other_objectives_from_the_flags_is_refused(sweep, change):
    """The study minimizes loss; the same space with --mode max (or another --metric) is another search: the
    loaded study would go on minimizing while the sweep ranks by the new objective."""
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC + "print('acc=0.5')\n")
    base = ["--command", command, "--search", "random", "--n-trials", "2", "--no-live", "x=interval(0, 1)"]
    assert sweep.run(*base, "--metric", "loss", trainer=False).returncode == 0
    args = [*base, "--metric", "loss", *change] if change[0] == "--mode" else [*base, *change]
    p = sweep.run(*args, "--n-trials", "3", trainer=False)
    check_refused(p, "made for another search")
    assert states(load_study(sweep.dir / "outputs")) == {"COMPLETE": 2}


def test_rerun_sets_the_study_aside(sweep):
    sweep.gpus.set(count=1)
    command = script(sweep, "quad.py", QUADRATIC)
    base = ["--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live"]
    assert sweep.run(*base, "x=interval(0, 1)", trainer=False).returncode == 0
    p = sweep.run(*base, "x=interval(0, 2)", "--rerun", trainer=False)  # a fresh study: another space is fine
    assert p.returncode == 0, p.stdout + p.stderr
    out = sweep.dir / "outputs"
    assert (out / "study.log~1").is_file()
    assert states(load_study(out)) == {"COMPLETE": 2}
    assert len(sweep.results()) == 2
    p = sweep.run(*base, "x=interval(0, 2)", "--n-trials", "3", trainer=False)  # resumes: one more trial
    assert p.returncode == 0, p.stdout + p.stderr
    assert states(load_study(out)) == {"COMPLETE": 3}
    assert sorted(r["trial"] for r in sweep.results()) == [0, 1, 2]


# -- the study's file: deleted, emptied, cut, damaged, torn ------------------------------------------------------

def test_a_deleted_study_with_the_journal_kept_is_refused(sweep):
    """A fresh study would number its trials from 0 again, over the journal's trials of the same numbers (the
    results file keys records by trial): refused, pointing at --rerun, which keeps the old trials aside."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    assert sweep.run(*args, trainer=False).returncode == 0
    (sweep.dir / "outputs" / "study.log").unlink()
    p = sweep.run(*args, trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "study.log is missing" in p.stderr and "--rerun" in p.stderr
    assert len(sweep.results()) == 2
    p = sweep.run(*args, "--rerun", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    records = sweep.results()
    assert sorted(r["trial"] for r in records) == [0, 1] and (sweep.dir / "outputs" / "journal.jsonl~1").exists()


def searched(sweep, n: int) -> tuple[tuple[str, ...], Path, list[bytes]]:
    """A finished random search of n trials: its arguments, its study.log and the study's lines."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "q.py", SLOW_QUADRATIC)
    args = ("--command", cmd, "--search", "random", "--n-trials", str(n), "--metric", "loss", "--no-live",
            "x=interval(0, 1)")
    assert sweep.run(*args, trainer=False).returncode == 0
    study = sweep.dir / "outputs" / "study.log"
    return args, study, study.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("damage", ["emptied", "half_cut"])
def test_an_emptied_or_cut_study_beside_a_journal_of_trials_is_refused(sweep, damage):
    """study.log emptied, or cut to its first trials, beside a journal of 4 trials: refused like a missing one
    (before: a fresh study asked the earlier trials' values again under the same seed, and the rewritten
    results file dropped the earlier trials' records); nothing is written, no result is lost."""
    args, study, lines = searched(sweep, 4)
    if damage == "emptied":
        study.write_bytes(b"")
    else:  # the study as it was after its second trial was asked
        asked = [i for i, line in enumerate(lines) if b'"op_code": 4' in line or b'"op_code":4' in line]
        study.write_bytes(b"".join(lines[: asked[1] + 1]))
    before = sweep.results()
    p = sweep.run(*args, "--n-trials", "6", trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "study.log" in p.stderr and "--rerun" in p.stderr and "trial" in p.stderr, p.stderr
    assert sweep.results() == before and len(before) == 4


def test_another_sweeps_study_put_in_place_is_refused(sweep):
    """An adversarial pass: study.log of another sweep of the same command and space (more trials, another seed)
    copied over this one's was resumed: its trials counted in the budget with no folder here, and the summary
    named its best, a run this folder never had. The journal's trials are checked against the study's by run."""
    args, study, _ = searched(sweep, 2)
    for seed in ("1", "0"):  # another seed: other trials; the same: the same first trials, and more (a review)
        other = sweep.dir / f"other{seed}"
        p = sweep.run(*args, "--n-trials", "3", "--seed", seed, "--output-dir", str(other), "--output-file",
                      f"o{seed}.json", trainer=False)
        assert p.returncode == 0, p.stdout + p.stderr
        kept = study.read_bytes()
        shutil.copy(other / "study.log", study)
        before = sweep.results()
        p = sweep.run(*args, "--n-trials", "4", trainer=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
        assert "another sweep's study" in p.stderr and "--rerun" in p.stderr, p.stderr
        assert sweep.results() == before
        study.write_bytes(kept)


@pytest.mark.parametrize("garbage", [b"this is not json\n", b'{"op_code": 99, "worker_id": "x"}\n', b"[1, 2]\n"])
def test_a_damaged_line_in_the_study_is_one_line_not_a_traceback(sweep, garbage):
    """A garbage line, or a JSON line that is no Optuna operation, in study.log: one line naming the file and
    --rerun, exit 2 (before: JSONDecodeError or 'AssertionError: Should not reach.')."""
    args, study, lines = searched(sweep, 2)
    study.write_bytes(b"".join(lines[:3]) + garbage + b"".join(lines[3:]))
    p = sweep.run(*args, "--n-trials", "3", trainer=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "study.log" in p.stderr and "--rerun" in p.stderr, p.stderr
    assert len(sweep.results()) == 2


def test_a_torn_last_line_of_the_study_is_cut_before_optuna_appends_to_it(tmp_path):
    """kill -9 in the middle of a write leaves the study's last line cut short; Optuna would append the next
    operation to it and every later reader would fail. mend_torn_line cuts it off first."""
    from train_sweep_extras.search import mend_torn_line

    path = tmp_path / "study.log"
    study = _journal_study(path)
    for x in (0.1, 0.2):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, x)
    whole = path.read_bytes()
    assert whole.endswith(b"\n")
    mend_torn_line(path)
    assert path.read_bytes() == whole  # a whole file is left alone
    path.write_bytes(whole + b'{"op_code": 4, "worker_id": "x", "study_id": 0, "dat')  # a write cut short
    mend_torn_line(path)
    assert path.read_bytes() == whole
    study = _journal_study(path)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.3)  # writes go on
    assert [t.value for t in _journal_study(path).trials] == [0.1, 0.2, 0.3]
    mend_torn_line(tmp_path / "missing.log")  # nothing to mend


# -- Optuna's lock beside the study: only its own files are removed ---------------------------------------------

@pytest.mark.parametrize("case", ["user_files_kept", "lock_a_folder", "run_named_like_the_lock"])
def test_only_optunas_own_lock_files_are_removed_beside_the_study(sweep, case):
    """A search removed every outputs/study.log.lock* at its start (Optuna's lock, left by a crash), a user's
    `study.log.lock_notes.txt` too; a run named `study.log.lock` was accepted, Optuna's lock then renamed its
    folder away and the next sweep was a traceback, as was a folder named study.log.lock. Now only Optuna's
    lock and its renamed copies go; the rest is kept, or refused in one line."""
    sweep.gpus.set(count=1)
    command = script(sweep, "q.py", QUADRATIC)
    out = sweep.dir / "outputs"
    out.mkdir()
    args = ["--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live",
            "x=interval(0, 1)"]
    if case == "user_files_kept":
        (out / "study.log.lock_notes.txt").write_text("mine")
        (out / "study.log.lock.d").mkdir()
        for left in ("study.log.lock", "study.log.lock0b4a2c3e-1f2d-4e5f-8a9b-0c1d2e3f4a5b.rename"):
            (out / left).write_text("")  # what a crash of Optuna's lock leaves
        p = sweep.run(*args, trainer=False)
        assert p.returncode == 0, p.stderr
        assert (out / "study.log.lock_notes.txt").read_text() == "mine" and (out / "study.log.lock.d").is_dir()
        assert not list(out.glob("*.rename"))
    elif case == "lock_a_folder":
        (out / "study.log.lock").mkdir()
        (out / "study.log.lock" / "keep.txt").write_text("mine")
        check_refused(sweep.run(*args, trainer=False), "study.log.lock is a folder")
        assert (out / "study.log.lock" / "keep.txt").read_text() == "mine"
    else:
        p = sweep.run("--command", command, "--name-template", "study.log.lock", "--pruner", "median", "--metric",
                      "loss", "--no-live", "x=0.5", trainer=False)
        check_refused(p, "'study.log.lock'", "a file the sweep keeps")


def test_rerun_of_a_search_over_a_damaged_journal_sets_every_old_trial_aside(sweep):
    """--rerun of a search takes the trials to set aside from the journal: a run whose only record was damaged
    was left out, and its folder stayed among the new trials'."""
    sweep.gpus.set(count=1)
    command = script(sweep, "q.py", QUADRATIC)
    args = ["--command", command, "--search", "random", "--n-trials", "2", "--metric", "loss", "--no-live",
            "x=interval(0, 1)"]
    assert sweep.run(*args, trainer=False).returncode == 0
    journal = sweep.dir / "outputs" / "journal.jsonl"
    first, *rest = journal.read_text().splitlines()
    damaged = json.loads(first)["model_name"]
    journal.write_text("\n".join([json.dumps({**json.loads(first), "identity": [1]}), *rest]) + "\n")
    check_refused(sweep.run(*args, trainer=False), "is damaged")
    p = sweep.run(*args, "--rerun", trainer=False)
    assert p.returncode == 0, p.stderr
    assert (sweep.dir / "outputs" / f"{damaged}~1").is_dir()  # (the same seed makes a new trial of its name)
