"""The offline commands on real results written by the CLI: report (tables, exports, also into a missing
folder, plots; a search's direction), list, status, watch and cleanup (also on a read-only sweep folder),
also on damaged records."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, cli, no_traceback, script

import train_sweep


@pytest.fixture
def finished(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"lr": lr, "depth": d, "metric": m, **({"exit": 1} if lr == 1.0 else {})}
                  for lr, d, m in [(0.001, 2, 0.5), (0.01, 2, 0.2), (0.1, 4, 0.3), (1.0, 4, 9.0)]])
    sweep.run("--max-processes-per-gpu", "2", "--metric", "val_loss")
    return sweep


def report(sweep, *args):
    return sweep.run("report", *args, trainer=False)


def test_report_table_sorted_and_filtered(finished):
    p = report(finished, "--sort", "metric")
    assert p.returncode == 0, p.stderr
    body = p.stdout
    order = [body.index(n) for n in ("lr_0.01_depth_2", "lr_0.1_depth_4", "lr_0.001_depth_2", "lr_1_depth_4")]
    assert order == sorted(order)
    assert "Best (min val_loss): lr_0.01_depth_2_metric_0.2 = 0.2" in body
    p = report(finished, "--state", "failed")
    assert "lr_1_depth_4" in p.stdout and "lr_0.01_depth_2" not in p.stdout
    assert "1 run(s)" in p.stdout


def test_report_csv_round_trips_with_hyperparameters_as_columns(finished):
    out = finished.dir / "runs.csv"
    assert report(finished, "--csv", str(out)).returncode == 0
    assert report(finished, "--csv", str(out), "--json", str(out.with_suffix(".json"))).returncode == 0  # its own
    assert report(finished, "--json", str(out.with_suffix(".json"))).returncode == 0  # files: written again
    for _ in range(2):  # no rows: its CSV has no header, and is its own (a review: refused the second time)
        assert report(finished, "--csv", str(out.with_name("none.csv")), "--state", "timeout").returncode == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"model_name", "state", "duration_seconds", "hp.lr", "hp.depth", "metric.val_loss"} <= set(rows[0])
    by_name = {r["model_name"]: r for r in rows}
    row = by_name["lr_0.01_depth_2_metric_0.2"]
    assert float(row["hp.lr"]) == 0.01 and int(row["hp.depth"]) == 2 and float(row["metric.val_loss"]) == 0.2
    assert row["state"] == "complete" and row["success"] == "true"
    assert by_name["lr_1_depth_4_metric_9_exit_1"]["state"] == "failed"


def test_report_csv_keeps_every_digit(sweep):
    """From an adversarial pass: the CSV held 4 significant digits (0.123456789 as 0.1235, 12345.678 as
    1.235e+04), though docs/output.md says the CSV keeps every digit, as the JSON and the results do."""
    sweep.config([{"x": 0.123456789, "metric": 0.020045843174444633}, {"x": 12345.678, "metric": 1e-300}])
    assert sweep.run("--no-live", "--metric", "val_loss").returncode == 0
    assert report(sweep, "--csv", "r.csv").returncode == 0
    with open(sweep.dir / "r.csv", newline="") as f:
        rows = {float(r["hp.x"]): float(r["metric.val_loss"]) for r in csv.DictReader(f)}
    assert rows == {0.123456789: 0.020045843174444633, 12345.678: 1e-300}


def test_the_second_objective_of_a_search_is_ranked_its_own_way(sweep):
    """From an adversarial pass: a search with --metric a b --mode min,max: report --metric b, its plots and
    load().best(metric='b') ranked b by the first objective's mode (min), naming the worst run the best."""
    pytest.importorskip("optuna")
    script = sweep.dir / "mo.py"
    script.write_text("import sys\nx = float(sys.argv[1].split('=')[1])\nprint(f'a={x} b={x * x}')\n")
    p = sweep.run("--no-live", "--command", f"python {script}", "--search", "random", "--n-trials", "6", "--metric",
                  "a", "--metric", "b", "--mode", "min,max", "x=interval(0, 1)", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    b = max(r["metrics"]["b"] for r in sweep.results())
    shown = report(sweep, "--metric", "b").stdout
    assert re.search(rf"Best \(max b\): \S+ = {b:g} ", shown), shown
    code = "import train_sweep; print(train_sweep.load('outputs').best(1, metric='b')[0].metrics['b'])"
    best = subprocess.run([sys.executable, "-c", code], cwd=sweep.dir, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert float(best.stdout) == b, best.stdout + best.stderr


def test_plots_of_labels_the_font_lacks_say_so_once(sweep):
    """From an adversarial pass: a hyperparameter value in CJK made matplotlib print 24 'Glyph ... missing from
    font' warnings, with their source lines, on stderr: one line says it now."""
    pytest.importorskip("matplotlib")
    sweep.config([{"note": "héllo ☃ 日本語", "metric": 0.1}, {"note": "b", "metric": 0.2}])
    assert sweep.run("--no-live", "--metric", "val_loss").returncode == 0
    p = report(sweep, "--plots", "plots")
    assert p.returncode == 0, p.stdout + p.stderr
    said = "train_sweep: warning: some labels hold characters the plots' font lacks (CJK, symbols): they show as boxes"
    assert p.stderr.strip().splitlines() in ([said], []), p.stderr  # (none where a font has them all)


def test_report_json_export(finished):
    out = finished.dir / "runs.json"
    assert report(finished, "--json", str(out)).returncode == 0
    rows = json.loads(out.read_text())
    assert rows[0]["hp.lr"] == 0.01 and rows[0]["metric.val_loss"] == 0.2  # best first: sorted by the metric


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_plots_are_real_images(finished):
    pytest.importorskip("matplotlib")
    plots = finished.dir / "plots"
    p = report(finished, "--plots", str(plots))
    assert p.returncode == 0, p.stderr
    names = sorted(f.name for f in plots.iterdir())
    # metric vs each hyperparameter that varies among the runs with a value ("metric" is one in this fake sweep;
    # "exit" is set on the failed run only, drawn as a cross), and the overview of them all
    assert names == sorted(["durations.png", "timeline.png", "val_loss_curves.png", "val_loss_vs_depth.png",
                            "val_loss_vs_lr.png", "val_loss_vs_metric.png", "val_loss_vs_exit.png", "overview.png"])
    for name in names:
        w, h = png_size(plots / name)
        assert 400 <= w <= 3000 and 250 <= h <= 3000, (name, w, h)
        assert (plots / name).stat().st_size > 5000  # drawn, not blank


def test_report_plots_replace_a_link_and_never_write_over_a_file_it_did_not_draw(finished, tmp_path):
    """An adversarial pass: report --plots wrote through a link named like one of its PNGs (the file it
    pointed to became a PNG), replaced a file of the user's of that name, and wrote into a run folder, all of
    which --csv and --json refuse."""
    pytest.importorskip("matplotlib")
    plots = finished.dir / "figs"
    plots.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (plots / "durations.png").symlink_to(precious)
    p = report(finished, "--plots", str(plots))
    assert p.returncode == 0, p.stderr
    assert precious.read_text() == "mine" and not (plots / "durations.png").is_symlink()
    (plots / "timeline.png").write_text("my notes")
    p = report(finished, "--plots", str(plots))
    assert_one_line_error(p, "timeline.png")
    assert (plots / "timeline.png").read_text() == "my notes"
    run_dir = finished.dir / "outputs" / "lr_0.01_depth_2_metric_0.2"
    before = sorted(f.name for f in run_dir.iterdir())
    p = report(finished, "--plots", str(run_dir / "figs"))
    assert_one_line_error(p, "run folder")
    assert sorted(f.name for f in run_dir.iterdir()) == before


def test_report_of_several_sweeps_ranks_each_by_its_own_mode(sweep):
    """An adversarial pass: `report max.json min.json` named each sweep's best by the first sweep's --mode."""
    sweep.gpus.set(count=1)
    sweep.config([{"metric": m} for m in (0.1, 0.9, 0.5)])
    for mode, name in (("max", "hi"), ("min", "lo")):
        p = sweep.run("--no-live", "--metric", "val_loss", "--mode", mode, "--output-dir", name, "--output-file",
                      f"{name}.json")
        assert p.returncode == 0, p.stdout + p.stderr
    p = report(sweep, "hi.json", "lo.json")
    assert p.returncode == 0, p.stderr
    row = {name: next(line for line in p.stdout.splitlines() if re.match(rf"│\s*{name}\.json\s", line))
           for name in ("hi", "lo")}
    assert "metric_0.9 = 0.9 (max)" in row["hi"] and "metric_0.1 = 0.1 (min)" in row["lo"], p.stdout


def test_report_compares_several_sweeps(finished):
    finished.config([{"lr": 0.5, "metric": 0.1}])
    finished.run("--output-file", "second.json", "--output-dir", "out2")
    p = report(finished, "train_sweep_results.json", "second.json", "--metric", "val_loss")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    first = next(line for line in lines if re.match(r"│\s*train_sweep_results\.json\s", line))
    second = next(line for line in lines if re.match(r"│\s*second\.json\s", line))
    # runs, complete, pruned, failed, interrupted, success (complete among the runs that ended on their own)
    assert re.search(r"│\s*4\s*│\s*3\s*│\s*0\s*│\s*1\s*│\s*0\s*│\s*75%\s*│", first) and \
        "lr_0.01_depth_2_metric_0.2 = 0.2" in first
    assert "100%" in second and "lr_0.5_metric_0.1 = 0.1" in second


def test_a_results_file_not_written_names_only_a_sweep_that_has_not_ended(sweep):
    """From the review: report on a missing results file names the sweep beside it that writes it, where that
    sweep has not ended. A sweep.json without "ended" (made before it was recorded) was taken for one that had
    not ("has not ended: finished"), and a damaged sweep.json in a folder beside it printed a warning."""
    sweep.gpus.set(count=1)
    sweep.config([{"metric": 0.5}])
    assert sweep.run().returncode == 0
    (sweep.dir / "train_sweep_results.json").unlink()
    record = json.loads((sweep.dir / "outputs" / "sweep.json").read_text())
    record.pop("ended")
    (sweep.dir / "outputs" / "sweep.json").write_text(json.dumps(record))
    (sweep.dir / "junk").mkdir()
    (sweep.dir / "junk" / "sweep.json").write_text("[1]")
    p = report(sweep)
    assert p.returncode == 2 and p.stderr.strip() == \
        "train_sweep: error: train_sweep_results.json: results file not found", p.stderr
    record["runs"] = 2  # one run not started: stopped early, the same command resumes it; still no "has not ended"
    (sweep.dir / "outputs" / "sweep.json").write_text(json.dumps(record))
    assert report(sweep).stderr.strip() == "train_sweep: error: train_sweep_results.json: results file not found"


def test_report_bad_file(sweep):
    p = report(sweep, "missing.json")
    assert p.returncode == 2 and p.stderr.strip() == "train_sweep: error: missing.json: results file not found"
    (sweep.dir / "x.json").write_text('{"a": 1}')
    p = report(sweep, "x.json")
    assert p.returncode == 2 and "not a train_sweep results file" in p.stderr


def test_a_journal_cut_at_its_last_line_reads_alike_in_every_view(finished):
    """An adversarial pass: the journal's last line cut short (a kill, a power loss: it is flushed about once a
    second) made status say 'stopped with 1 run(s) not started', list '2 of 3 complete' and load() count 2,
    while report, reading each run's run.json too, said 3 complete. Each view reads the run.json as well."""
    finished.config([{"metric": m} for m in (0.3, 0.1, 0.2)])
    assert finished.run("--output-dir", "cut", "--output-file", "cut.json").returncode == 0
    journal = finished.dir / "cut" / "journal.jsonl"
    journal.write_bytes(journal.read_bytes()[:-200])
    p = finished.run("status", "cut", trainer=False)
    assert p.returncode == 0 and "3 run(s): 3 complete" in p.stdout and "not started" not in p.stdout, p.stdout
    p = finished.run("list", "cut", trainer=False)
    assert p.returncode == 0 and re.search(r"│ finished\s*│[^│]*│ 3\s*│ 3\s*│", p.stdout), p.stdout
    assert train_sweep.load(finished.dir / "cut").counts() == {"complete": 3}


def test_a_run_of_another_identity_whose_line_was_cut_reads_alike_in_every_view(finished):
    """A review: where the journal's last record of a name is another run's (a default edited since: the new
    run counts its attempts from 1 again) and the new run's line was cut short, status and load() showed the
    old run while report showed the new one (from its run.json)."""
    finished.config([{"metric": m} for m in (0.3, 0.1)])
    assert finished.run("--output-dir", "idn", "--output-file", "idn.json").returncode == 0
    journal = finished.dir / "idn" / "journal.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    for r in lines:
        if r["model_name"] == "metric_0.1":
            r.update(identity="an earlier run's", state="failed", success=False)
    journal.write_text("".join(json.dumps(r) + "\n" for r in lines))
    p = finished.run("status", "idn", trainer=False)
    assert "2 run(s): 2 complete" in p.stdout, p.stdout
    assert train_sweep.load(finished.dir / "idn").counts() == {"complete": 2}
    p = finished.run("report", "idn", trainer=False)
    assert "failed" not in p.stdout, p.stdout


def test_list_shows_a_sweep_once_through_links(finished):
    """An adversarial pass: a link in outputs/ to its own folder (outputs/loop -> .) listed one sweep 4 times
    (outputs, outputs/loop, outputs/loop/loop, ...): a sweep is listed once, where it is found first without a
    link."""
    (finished.dir / "outputs" / "loop").symlink_to(".")
    p = finished.run("list", trainer=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("│ finished") == 1 and "loop" not in p.stdout, p.stdout


def test_list_shows_sweeps(finished):
    finished.config([{"n": 1}])
    finished.run("--output-dir", "outputs/second", "--output-file", "s.json")
    p = finished.run("list", trainer=False)
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if re.match(r"│\s*outputs\s*│", line))
    # state, started, runs, complete, pruned, failed, interrupted
    assert re.search(r"│\s*finished\s*│[^│]*│\s*4\s*│\s*3\s*│\s*0\s*│\s*1\s*│\s*0\s*│", row), row
    assert any(re.match(r"│\s*outputs/second\s*│", line) for line in p.stdout.splitlines())


def test_every_view_names_the_same_best_of_equal_values(sweep):
    """From an adversarial pass: two runs with the same value, the first in the config ending last: the summary and
    report named the first, status, cleanup and load().best() the one that ended first, and cleanup offered to
    delete the best the summary had named. Of equal values the first in the sweep is the best, everywhere (as
    --top-k keeps)."""
    sweep.gpus.set(count=1)
    sweep.config([{"a": 1, "sleep": 3, "metric": 0.3}, {"a": 2, "metric": 0.3}])
    p = sweep.run("--metric", "val_loss", "--max-processes-per-gpu", "2", "--settle-seconds", "0.1", "--no-live")
    assert p.returncode == 0, p.stdout + p.stderr
    journal = (sweep.dir / "outputs" / "journal.jsonl").read_text()
    assert journal.index("a_2_metric_0.3") < journal.index("a_1_sleep_3"), "the second run ended first"
    best = "a_1_sleep_3_metric_0.3"
    assert f"Best (min val_loss): {best} = 0.3" in p.stdout, p.stdout
    assert [line.split()[2] for line in p.stdout.splitlines() if " best " in line][-1] == best, p.stdout  # live
    assert f"Best (min val_loss): {best} = 0.3" in sweep.run("report", trainer=False).stdout
    assert f"best val_loss so far (complete runs): {best} = 0.3" in sweep.run("status", trainer=False).stdout
    cleanup = sweep.run("cleanup", "--days", "0", trainer=False).stdout
    assert f"kept outputs/{best}" in cleanup and "would delete outputs/a_2_metric_0.3" in cleanup, cleanup
    code = "import sys, train_sweep; print([r.name for r in train_sweep.load('outputs').best(1)])"
    api = subprocess.run([sys.executable, "-c", code], cwd=sweep.dir, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert api.stdout.strip() == f"[{best!r}]", api.stdout + api.stderr


def test_cleanup_is_a_dry_run_unless_live(finished):
    out = finished.dir / "outputs"
    old = out / "lr_0.001_depth_2_metric_0.5"
    week_ago = time.time() - 8 * 86400
    for f in [old, *old.rglob("*")]:
        os.utime(f, (week_ago, week_ago))
    p = finished.run("cleanup", "--days", "7", trainer=False)
    assert p.returncode == 0, p.stderr
    assert "would delete outputs/lr_0.001_depth_2_metric_0.5  (" in p.stdout and "would delete 1 run folder(s)" in p.stdout
    assert old.exists()
    p = finished.run("cleanup", "--days", "7", "--live", trainer=False)
    assert "deleted 1 run folder(s)" in p.stdout
    assert not old.exists() and (out / "lr_0.01_depth_2_metric_0.2").exists()


def test_cleanup_never_deletes_a_folder_the_sweep_did_not_make(finished, tmp_path):
    """From an adversarial pass: any folder with a run.json in a sweep's output folder was taken for a run folder,
    and any folder with a sweep.json for a sweep (another tool's export): cleanup --live deleted the user's own
    folders. It deletes only folders the sweep marked as its runs', in folders whose sweep.json is train_sweep's."""
    week_ago = time.time() - 8 * 86400
    mine = finished.dir / "outputs" / "mydata"  # the user's folder beside the runs
    other = tmp_path / "export"  # another tool's project: a sweep.json, folders with a run.json
    for folder, files in ((mine, {"run.json": '{"note": "mine"}', "big.bin": "data"}),
                          (other, {"sweep.json": '{"name": "my wandb export"}'}),
                          (other / "exp1", {"run.json": "{}", "weights.bin": "data"})):
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    for f in [mine, *mine.rglob("*"), other, *other.rglob("*")]:
        os.utime(f, (week_ago, week_ago))
    p = finished.run("cleanup", "--days", "7", "--live", "--yes", "outputs", str(other), trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (mine / "big.bin").exists() and (other / "exp1" / "weights.bin").exists(), p.stdout
    assert f"skipped {other}: its sweep.json is not a train_sweep sweep's" in p.stdout, p.stdout
    assert "skipped outputs/mydata: not a run folder the sweep made (no .train_sweep_run in it)" in p.stdout, p.stdout


@pytest.mark.parametrize("tz", ["UTC", "America/St_Johns", "Asia/Kathmandu", "Europe/Berlin"])
def test_iso_time_matches_datetime_and_parses_back(monkeypatch, tz):
    import datetime

    from train_sweep import _parse_time, iso_time

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        for t in (0.0, 1_700_000_000.0, 1_790_000_000.25, 1_795_384_560.987, 1_720_000_000.5):  # winter and summer
            expected = datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")
            assert iso_time(t) == expected
            assert abs(_parse_time(iso_time(t)) - t) < 1e-3
    finally:
        monkeypatch.undo()
        time.tzset()


def test_report_learning_curves_and_series_in_json(sweep):
    """issue 11: report draws <metric>_curves.png and puts each run's series in --json."""
    pytest.importorskip("matplotlib")
    sweep.gpus.set(count=1)
    script = sweep.dir / "curve.py"
    script.write_text("import sys\nk = float(sys.argv[1].split('=')[1])\n"
                      "for s in range(4):\n    print(f'step {s}: val_loss={k / (s + 1):.3f}')\n")
    sweep.config([{"k": 1}, {"k": 2}])
    assert sweep.run("--command", f"python {script}", "--metric", "val_loss", trainer=False).returncode == 0
    p = sweep.run("report", "--plots", "plots", "--json", "rows.json", "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stderr
    png = sweep.dir / "plots" / "val_loss_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = json.loads((sweep.dir / "rows.json").read_text())
    assert rows[0]["series"] == {"val_loss": [[0, 1.0], [1, 0.5], [2, 0.333], [3, 0.25]]}


def test_list_says_whether_a_sweep_runs_was_interrupted_or_died(sweep):
    import signal
    import time

    from conftest import interrupt

    sweep.gpus.set(count=1)
    slow = sweep.dir / "slow.py"
    slow.write_text("import time\ntime.sleep(60)\n")

    def state(folder: str) -> str:
        p = sweep.run("list", folder, trainer=False)
        row = next(line for line in p.stdout.splitlines() if re.match(rf"│\s*{folder}\s*│", line))
        return row.split("│")[2].strip()

    proc = sweep.start("--no-live", "--command", f"python {slow}", "--output-dir", "a", "x=1,2", trainer=False)
    sweep.wait_for(lambda: any((sweep.dir / "a").glob("x_1/run.json")), what="the first run")
    time.sleep(0.5)
    assert state("a") == "running"
    interrupt(proc)
    proc.communicate(timeout=30)
    assert state("a") == "interrupted"
    proc = sweep.start("--no-live", "--command", f"python {slow}", "--output-dir", "b", "x=1,2", trainer=False)
    sweep.wait_for(lambda: any((sweep.dir / "b").glob("x_1/run.json")), what="the first run")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # the sweep dies; its guardian ends the runs
    proc.communicate(timeout=30)
    sweep.wait_for(lambda: state("b") != "running", timeout=30, what="the guardian to let go")
    assert state("b") == "dead"
    # status says what its runs were doing when it died (it said "2 run(s): " and no more)
    p = sweep.run("status", "b", trainer=False)
    assert "b: dead" in p.stdout and "2 run(s): 1 running when it died, 1 not started" in p.stdout, p.stdout
    # report and load() of the dead sweep said its run was running (an adversarial pass): it was interrupted,
    # and the same command runs it again
    p = sweep.run("report", "b", trainer=False)
    assert re.search(r"│ x_1\s*│ interrupted", p.stdout) and "running" not in p.stdout, p.stdout
    assert train_sweep.load(sweep.dir / "b").counts() == {"interrupted": 1}


def _age(folder: Path, days: float = 8) -> None:
    then = time.time() - days * 86400
    for f in [folder, *folder.rglob("*")]:
        os.utime(f, (then, then), follow_symlinks=False)


def test_cleanup_keeps_the_best_runs_and_resume_runs_a_deleted_run_again(finished):
    out = finished.dir / "outputs"
    for run_dir in [p for p in out.iterdir() if p.is_dir()]:
        _age(run_dir)
    best = out / "lr_0.01_depth_2_metric_0.2"  # val_loss 0.2: the sweep's best by its --metric
    p = finished.run("cleanup", "--days", "7", "--live", trainer=False)
    assert p.returncode == 0, p.stderr
    assert f"kept outputs/{best.name}: among the sweep's best runs" in p.stdout
    assert best.exists() and "deleted 3 run folder(s)" in p.stdout
    assert "; a resumed sweep runs a deleted run again" in p.stdout and "search" not in p.stdout, p.stdout
    assert not (out / "lr_0.001_depth_2_metric_0.5").exists()
    p = finished.run("--max-processes-per-gpu", "2", "--metric", "val_loss")  # resume: the deleted runs again
    assert "resume: 1 run(s) already complete" in p.stdout, p.stdout
    assert (out / "lr_0.001_depth_2_metric_0.5").is_dir()
    _age(best)
    p = finished.run("cleanup", "--days", "7", "--live", "--include-best", trainer=False)
    assert not best.exists()
    p = report(finished, "--metric", "val_loss")
    assert "(lr_0.01_depth_2_metric_0.2 = 0.2 was better; its folder was deleted)" in p.stdout
    best_line = next(line for line in p.stdout.splitlines() if line.startswith("Best"))
    assert "lr_0.1_depth_4_metric_0.3 = 0.3" in best_line  # the best whose folder is there
    finished.run("--max-processes-per-gpu", "2", "--metric", "val_loss")
    assert best.is_dir()


def test_cleanup_of_a_search_does_not_say_its_trials_run_again(sweep):
    """An adversarial pass: cleanup of a search's trial folders said 'a resumed sweep runs a deleted run again';
    a search asks no finished trial again (its result stays in the study and the results)."""
    sweep.gpus.set(count=1)
    p = sweep.run("--search", "random", "--n-trials", "2", "--metric", "val_loss", "--no-live", "metric=interval(0,1)")
    assert p.returncode == 0, p.stdout + p.stderr
    p = sweep.run("cleanup", "--days", "0", "--live", "--include-best", trainer=False)
    assert p.returncode == 0 and "deleted 2 run folder(s)" in p.stdout, p.stdout + p.stderr
    assert "a resumed search asks no deleted trial again (their results stay)" in p.stdout, p.stdout
    assert "a resumed sweep runs a deleted run again" not in p.stdout, p.stdout


def test_report_of_a_sweep_folder_moved_since_finds_its_runs(finished):
    """An adversarial pass: after 'mv outputs sweepA', report sweepA said the best's folder was deleted (the
    records hold the runs' absolute folders) and named no best."""
    (finished.dir / "outputs").rename(finished.dir / "sweepA")
    p = report(finished, "sweepA", "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "was better; its folder was deleted" not in p.stdout, p.stdout
    assert f"Best (min val_loss): lr_0.01_depth_2_metric_0.2 = 0.2  ({finished.dir / 'sweepA'}" in p.stdout, p.stdout


def test_a_project_moved_whole_finds_its_runs_from_the_results_file_and_load(finished):
    """An adversarial pass: after moving the project folder (results file and outputs/ together), report of the
    results file said the best's folder was deleted and load() gave runs' folders that were gone, so
    run.files('*.pt') found nothing: the records hold absolute folders."""
    moved = finished.dir / "moved"
    moved.mkdir()
    for name in ("outputs", "train_sweep_results.json"):
        (finished.dir / name).rename(moved / name)
    p = finished.run("report", str(moved / "train_sweep_results.json"), "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "was better; its folder was deleted" not in p.stdout, p.stdout
    assert f"lr_0.01_depth_2_metric_0.2 = 0.2  ({moved / 'outputs'}" in p.stdout, p.stdout
    runs = {r.name: r for r in train_sweep.load(moved / "outputs").runs}
    assert runs["lr_0.01_depth_2_metric_0.2"].run_dir == (moved / "outputs" / "lr_0.01_depth_2_metric_0.2").resolve()
    assert runs["lr_0.01_depth_2_metric_0.2"].files("train_stdout.log")


def test_a_copied_sweep_reads_its_own_run_folders_not_the_originals(finished):
    """An adversarial pass: `cp -a outputs copy` then report copy (and load('copy')) gave the original's run
    folders, where they were still there: a run deleted from the copy was still its best, status disagreed."""
    shutil.copytree(finished.dir / "outputs", finished.dir / "copy", symlinks=True)
    shutil.rmtree(finished.dir / "copy" / "lr_0.01_depth_2_metric_0.2")
    p = report(finished, "copy", "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    best = next(line for line in p.stdout.splitlines() if line.startswith("Best"))
    assert f"lr_0.1_depth_4_metric_0.3 = 0.3  ({finished.dir / 'copy'}" in best, p.stdout
    runs = {r.name: r for r in train_sweep.load(finished.dir / "copy").runs}
    assert runs["lr_0.1_depth_4_metric_0.3"].run_dir == (finished.dir / "copy" / "lr_0.1_depth_4_metric_0.3").resolve()


def test_a_copied_project_read_from_its_results_file_reads_its_own_run_folders(finished):
    """A review: `cp -a proj proj2`, then report proj2/train_sweep_results.json read the original's run folders
    (the records hold absolute folders, and those were still there); the copy's own are the same runs (their
    run.json says), and one deleted from the copy is deleted."""
    copy = finished.dir / "proj2"
    copy.mkdir()
    shutil.copytree(finished.dir / "outputs", copy / "outputs", symlinks=True)
    shutil.copy(finished.dir / "train_sweep_results.json", copy)
    shutil.rmtree(copy / "outputs" / "lr_0.01_depth_2_metric_0.2")
    p = finished.run("report", str(copy / "train_sweep_results.json"), "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    best = next(line for line in p.stdout.splitlines() if line.startswith("Best"))
    assert f"lr_0.1_depth_4_metric_0.3 = 0.3  ({copy / 'outputs'}" in best, p.stdout


def test_cleanup_asks_on_a_terminal(finished):
    out = finished.dir / "outputs"
    old = out / "lr_0.001_depth_2_metric_0.5"
    _age(old)
    term = finished.start_on_pty("cleanup", "--days", "7", "--live", trainer=False)
    finished.wait_for(lambda: "[y/N]" in term.output(), what="the question")
    os.write(term._master, b"n\n")
    assert term.wait(20) == 0
    assert "nothing deleted" in term.output() and old.exists()
    p = finished.run("cleanup", "--days", "7", "--live", "--yes", trainer=False)  # not a terminal: no question
    assert "deleted 1 run folder(s)" in p.stdout and not old.exists()


@pytest.fixture
def seeds(sweep):
    sweep.gpus.set(count=1)
    trainer = sweep.dir / "t.py"
    trainer.write_text("import sys, random\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
                       "lr, seed = float(args['lr']), int(args['seed'])\n"
                       "if lr > 0.5:\n    sys.exit('RuntimeError: loss became NaN')\n"
                       "print(f'val_loss={lr + seed * 0.001}')\n")
    p = sweep.run("--no-live", "--no-fail-fast", "--command", f"python {trainer}", "--metric", "val_loss",
                  "lr=0.1,0.01,1.0", "seed=0,1,2", "depth=3", trainer=False)
    assert p.returncode == 1, p.stdout + p.stderr
    return sweep


def _rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]


def test_report_columns_for_what_varies_sorting_and_failure_reasons(seeds):
    p = report(seeds, "--sort", "metric")
    assert p.returncode == 0, p.stderr
    header = next(line for line in p.stdout.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]][:5] == ["#", "run", "state", "lr", "seed"]  # depth: same for all
    rows = _rows(p.stdout)
    assert [r[2] for r in rows] == ["complete"] * 6 + ["failed"] * 3  # failed runs never above complete ones
    assert [r[3] for r in rows[:3]] == ["0.01"] * 3 and rows[0][4] == "0"
    assert "3 run(s): RuntimeError: loss became NaN  (e.g. lr_1_seed_0)" in p.stdout
    rows = _rows(report(seeds, "--sort", "seed").stdout)
    assert [r[4] for r in rows] == ["0", "0", "0", "1", "1", "1", "2", "2", "2"]
    p = report(seeds, "--sort", "bogus")
    assert p.returncode == 2 and "--sort 'bogus': not a column" in p.stderr and "lr, seed vary" in p.stderr


def test_report_warns_of_a_metric_no_run_has(seeds):
    p = report(seeds, "--metric", "val_los")
    assert p.returncode == 0
    assert "train_sweep: warning: no run has a metric named 'val_los' (the runs have: val_loss)" in p.stderr


def test_report_group_by_seed(seeds):
    p = report(seeds, "--group-by", "seed")
    assert p.returncode == 0, p.stderr
    table = p.stdout.split("by configuration, over seed (3 configuration(s))")[1]
    rows = _rows(table)[:3]
    assert rows[0][:3] == ["0.01", "3", "3"] and rows[0][3].startswith("0.011 ± 0.001") and rows[0][4] == "0.01"
    assert rows[2][:3] == ["1", "3", "0"] and rows[2][3] == ""  # 4 significant digits: 1.0 reads 1
    p = report(seeds, "--group-by", "nope")
    assert p.returncode == 2 and "--group-by 'nope': no run has that hyperparameter" in p.stderr


def test_status_from_another_shell(sweep):
    from conftest import interrupt

    sweep.gpus.set(count=2)
    slow = sweep.dir / "slow.py"
    slow.write_text("import sys, time\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
                    "time.sleep(float(args['s']))\nprint(f\"loss={args['s']}\")\n")
    proc = sweep.start("--no-live", "--command", f"python {slow}", "--metric", "loss", "s=0.2,30,31,32", trainer=False)
    try:
        sweep.wait_for(lambda: "1 complete, 2 running, 1 pending" in sweep.run("status", trainer=False).stdout,
                       what="the status of the running sweep")
        p = sweep.run("status", trainer=False)
        assert p.returncode == 0 and f"outputs: running (PID {proc.pid})" in p.stdout, p.stdout
        assert re.search(r"GPU 0: s=3[01] \(\d", p.stdout) and re.search(r"GPU 1: s=3[01] \(\d", p.stdout), p.stdout
        assert "best loss so far (complete runs): s_0.2 = 0.2" in p.stdout
    finally:
        interrupt(proc)
        proc.communicate(timeout=30)
    p = sweep.run("status", trainer=False)
    assert "outputs: stopped with 1 run(s) not started" in p.stdout and "running" not in p.stdout.splitlines()[1]
    assert "4 run(s): 1 complete, 2 interrupted" in p.stdout
    p = sweep.run("watch", "--every", "0.1", trainer=False)  # the sweep has ended: one frame, then it returns
    assert p.returncode == 0 and "outputs: stopped with 1 run(s) not started" in p.stdout
    p = sweep.run("status", "nowhere", trainer=False)
    assert p.returncode == 2 and "nowhere: no sweep here (no sweep.json)" in p.stderr


def test_plots_leave_out_seeds_and_mark_the_failed_and_the_best(seeds, tmp_path):
    """No metric-vs-seed plot; the overview draws lr (a number) with the failed runs as marks on the axis and the
    best as a star (checked through matplotlib's own objects)."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train_sweep_extras.tools import load_results
    from train_sweep_extras.plots import metric_vs_keys

    records = load_results(str(seeds.dir / "train_sweep_results.json"))
    for r in records:  # the failed runs reported a value before failing
        if r["state"] == "failed":
            r["metrics"] = {"val_loss": 2.0}
    saved = []
    real = plt.Figure.savefig

    def keep(fig, path, **kw):
        saved.append((Path(path).name, fig))
        return real(fig, path, **kw)

    plt.Figure.savefig = keep
    try:
        written = metric_vs_keys(tmp_path, records, "val_loss", "min", plt)
    finally:
        plt.Figure.savefig = real
    assert sorted(p.name for p in written) == ["overview.png", "val_loss_vs_lr.png"]  # not seed
    fig = dict(saved)["val_loss_vs_lr.png"]
    kinds = {c.get_label(): len(c.get_offsets()) for c in fig.axes[0].collections}
    assert kinds == {"complete (final value)": 6, "pruned, failed or interrupted (where tried; no final value)": 3,
                     "best": 1}
    # issue 26 (5): their early values are not drawn among the final ones: they sit on the axis, below the values
    marks = next(c for c in fig.axes[0].collections if c.get_label().startswith("pruned"))
    assert marks.get_transform() is not fig.axes[0].transData and {y for _, y in marks.get_offsets()} == {0.02}


def test_status_shows_runs_running_again_and_runs_never_started(sweep):
    from conftest import interrupt

    sweep.gpus.set(count=1)
    slow = sweep.dir / "slow.py"
    slow.write_text("import sys, time\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
                    "time.sleep(float(args['s']))\nprint(f\"loss={args['s']}\")\n")
    args = ("--no-live", "--command", f"python {slow}", "--metric", "loss", "--max-processes-per-gpu", "2",
            "--settle-seconds", "1", "s=20,21")
    proc = sweep.start(*args, trainer=False)
    sweep.wait_for(lambda: "2 running" in sweep.run("status", trainer=False).stdout, what="two running")
    interrupt(proc)
    proc.communicate(timeout=30)
    proc = sweep.start(*args, trainer=False)  # resumed: the same runs, running again
    try:
        sweep.wait_for(lambda: "2 run(s): 2 running" in sweep.run("status", trainer=False).stdout,
                       what="the resumed runs as running")
        assert len(re.findall(r"s=2[01] \(", sweep.run("status", trainer=False).stdout)) == 2
    finally:
        interrupt(proc)
        proc.communicate(timeout=30)
    bad = sweep.dir / "bad.py"
    bad.write_text("import sys\nsys.exit('boom')\n")
    sweep.run("--no-live", "--command", f"python {bad}", "--output-dir", "ff", "x=1,2,3,4,5,6,7,8", trainer=False)
    p = sweep.run("status", "ff", trainer=False)  # stopped by fail fast: not "finished"
    assert "ff: stopped with 5 run(s) not started: run the same command to resume" in p.stdout, p.stdout
    # a new user's pass: list said 'interrupted' for it (no run was); it says what status says
    assert re.search(r"│\s*ff\s*│\s*stopped early\s*│", sweep.run("list", "ff", trainer=False).stdout)


def test_status_of_a_search_resumed_with_a_smaller_budget_counts_every_run(sweep):
    """An adversarial pass: a finished 4-trial search resumed with --n-trials 2 (nothing to ask) made status say
    '2 run(s): 4 complete': the total was the last start's budget, smaller than its parts."""
    sweep.gpus.set(count=1)
    args = ("--search", "random", "--metric", "val_loss", "--no-live", "metric=interval(0,1)")
    assert sweep.run(*args, "--n-trials", "4").returncode == 0
    p = sweep.run(*args, "--n-trials", "2")
    assert p.returncode == 0 and "none to ask" in p.stdout, p.stdout + p.stderr
    p = sweep.run("status", trainer=False)
    assert p.returncode == 0 and "4 run(s): 4 complete" in p.stdout, p.stdout


def test_status_best_is_never_a_deleted_run(finished):
    import shutil

    p = finished.run("status", trainer=False)
    assert "best val_loss so far (complete runs): lr_0.01_depth_2_metric_0.2 = 0.2" in p.stdout
    shutil.rmtree(finished.dir / "outputs" / "lr_0.01_depth_2_metric_0.2")
    p = finished.run("status", trainer=False)
    assert "best val_loss so far (complete runs): lr_0.1_depth_4_metric_0.3 = 0.3" in p.stdout


def test_cleanup_keeps_the_best_when_sweep_json_lost_its_metric_or_the_journal_is_gone(finished):
    """The same command resumed without --metric rewrites sweep.json with no metric; a lost journal.jsonl:
    the best run is still known from run.json (or cleanup is told with --metric), and never deleted; where
    the best cannot be known, cleanup deletes nothing in that sweep and says why (before: the best went)."""
    out = finished.dir / "outputs"
    best = out / "lr_0.01_depth_2_metric_0.2"
    finished.run("--max-processes-per-gpu", "2")  # resumed without --metric: nothing runs, sweep.json has none
    assert json.loads((out / "sweep.json").read_text())["settings"]["metric"] == []
    (out / "journal.jsonl").unlink()
    for run_dir in [p for p in out.iterdir() if p.is_dir()]:
        _age(run_dir)
    p = finished.run("cleanup", "--days", "7", "--live", trainer=False)
    assert p.returncode == 0, p.stderr
    assert best.is_dir() and "deleted 0 run folder(s)" in p.stdout, p.stdout
    assert "the sweep's ranking metric is not known" in p.stdout and "--metric NAME" in p.stdout, p.stdout
    p = finished.run("cleanup", "--days", "7", "--live", "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stderr
    assert best.is_dir() and f"kept outputs/{best.name}: among the sweep's best runs" in p.stdout, p.stdout
    assert "deleted 3 run folder(s)" in p.stdout, p.stdout


def test_cleanup_keeps_every_run_where_the_runs_only_printed_metrics_and_no_metric_was_named(sweep):
    """An adversarial pass: a sweep run without --metric whose script only printed val_loss (the README's first
    command, then its cleanup) had every run deleted, the best among them: the guard looked at metrics.json
    alone, and these records have no metrics but their stdout."""
    sweep.gpus.set(count=1)
    sweep.config([{"metric": m} for m in (0.3, 0.1, 0.2)])
    p = sweep.run("--no-live")
    assert p.returncode == 0, p.stdout + p.stderr
    out = sweep.dir / "outputs"
    for run_dir in [d for d in out.iterdir() if d.is_dir()]:
        _age(run_dir)
    p = sweep.run("cleanup", "--days", "7", "--live", trainer=False)
    assert p.returncode == 0, p.stderr
    assert "deleted 0 run folder(s)" in p.stdout and "the sweep's ranking metric is not known" in p.stdout, p.stdout
    assert (out / "metric_0.1").is_dir()
    (out / "journal.jsonl").unlink()  # (a review: the run.json holds no stdout; its log does)
    p = sweep.run("cleanup", "--days", "7", "--live", trainer=False)
    assert p.returncode == 0 and "deleted 0 run folder(s)" in p.stdout, p.stdout
    assert (out / "metric_0.1").is_dir()


def test_cleanup_skips_links_and_dangling_links_without_a_traceback(finished, tmp_path):
    """A run folder that is a link (to a folder the sweep did not make) is skipped, not followed, and does not
    stop the cleanup; a dangling link inside a run folder (latest.pt -> ckpt_100.pt) is no FileNotFoundError."""
    out = finished.dir / "outputs"
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "run.json").write_text("{}")
    (other / "data.bin").write_bytes(b"x")
    (out / "linked_run").symlink_to(other)
    old = out / "lr_0.001_depth_2_metric_0.5"
    (old / "latest.pt").symlink_to("ckpt_100.pt")  # dangling
    for run_dir in [p for p in out.iterdir() if p.is_dir() and not p.is_symlink()]:
        _age(run_dir)
    p = finished.run("cleanup", "--days", "7", "--live", trainer=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert (other / "data.bin").exists() and (out / "linked_run").is_symlink()
    assert "skipped outputs/linked_run: a link, not a run folder of the sweep's own" in p.stdout, p.stdout
    assert not old.exists() and "deleted 3 run folder(s)" in p.stdout, p.stdout


def test_cleanup_does_not_follow_a_link_to_another_sweep_out_of_the_folder_it_was_given(finished, tmp_path):
    """outputs/teamlink -> a sweep elsewhere: cleanup found its sweep.json through the link and deleted that
    sweep's run folders, outside the folder it was given."""
    elsewhere = tmp_path / "elsewhere"
    p = finished.run("--output-dir", str(elsewhere), "--output-file", str(tmp_path / "elsewhere.json"))
    assert p.returncode != 2 and (elsewhere / "sweep.json").exists(), p.stderr
    theirs = sorted(d.name for d in elsewhere.iterdir() if (d / "run.json").exists())
    assert theirs
    (finished.dir / "outputs" / "teamlink").symlink_to(elsewhere)
    p = finished.run("cleanup", "--days", "0", "--include-best", "--live", "--yes", trainer=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert sorted(d.name for d in elsewhere.iterdir() if (d / "run.json").exists()) == theirs
    assert "skipped outputs/teamlink: a link to a sweep folder, not followed" in p.stdout, p.stdout
    assert not (finished.dir / "outputs" / "lr_0.01_depth_2_metric_0.2").exists()  # the folder given: cleaned


@pytest.mark.parametrize("flag, target", [
    ("--csv", "train_sweep_results.json"), ("--csv", "outputs/journal.jsonl"), ("--json", "outputs/sweep.json"),
    ("--csv", "outputs/lr_0.01_depth_2_metric_0.2/run.json"), ("--json", "outputs/lr_0.01_depth_2_metric_0.2/x.json"),
    ("--json", "other_results.json"), ("--csv", "fifo"), ("--plots", "afile"), ("--plots", "/proc/no/such"),
    ("input", "fifo"), ("input", "/dev/zero"), ("--json", "train.py"), ("--csv", "notes.csv"),
], ids=["its_input", "the_journal", "sweep_json", "a_run_json", "in_a_run_folder", "another_results_file",
        "a_fifo", "plots_a_file", "plots_unwritable", "reads_a_fifo", "reads_a_device", "the_train_script",
        "a_csv_report_did_not_write"])
def test_report_never_overwrites_what_it_reads_or_what_a_sweep_keeps(finished, flag, target):
    """`report --csv outputs/journal.jsonl` (or the results file it read, a run.json, sweep.json, another sweep's
    results) replaced the file with report rows: a later resume ran a finished run again. `--plots` onto a file,
    or where no folder can be made, was a traceback; reading a FIFO waited forever, /dev/zero ate the memory.
    Each is one line now, exit 2, and every file is as it was."""
    if flag == "--plots":
        pytest.importorskip("matplotlib")
    if target == "other_results.json":
        shutil.copy(finished.dir / "train_sweep_results.json", finished.dir / target)
    elif target in ("afile", "notes.csv", "train.py"):  # (an adversarial pass: --json train.py replaced the script)
        (finished.dir / target).write_text("notes")
    elif target == "fifo":
        os.mkfifo(finished.dir / target)

    def files():
        return {f: f.read_bytes() for f in finished.dir.rglob("*") if f.is_file() and not f.name.endswith(".lock")
                and f.relative_to(finished.dir).parts[0] != "cache"}  # (matplotlib's font list)

    before = files()
    p = finished.run("report", *([target] if flag == "input" else [flag, target]), trainer=False, timeout=30)
    assert_one_line_error(p, target)
    assert files() == before


@pytest.mark.parametrize("command", ["list", "status", "watch", "report", "cleanup"])
def test_offline_commands_never_wait_on_a_fifo_in_a_sweep_folder(finished, command):
    """A FIFO named sweep.json, journal.jsonl, best.json or a run's metrics file: list, status, watch, report
    and cleanup opened it and waited forever."""
    out = finished.dir / "outputs"
    (out / "best").mkdir()
    for fifo in (out / "journal.jsonl", out / "best" / "best.json",
                 out / "lr_0.01_depth_2_metric_0.2" / "train_sweep_metrics.jsonl"):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    (finished.dir / "other").mkdir()
    os.mkfifo(finished.dir / "other" / "sweep.json")
    args = {"list": ["list", "outputs", "other"], "status": ["status", "outputs"], "watch": ["watch", "outputs"],
            "report": ["report", "--json", "rows.json", "--metric", "val_loss"],
            "cleanup": ["cleanup", "--days", "0", "outputs", "other"]}[command]
    p = finished.run(*args, trainer=False, timeout=30)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr


def test_status_of_a_damaged_sweep_json_and_watch_with_a_huge_interval_are_one_line(finished):
    """status over a damaged sweep.json said 'no sweep here (no sweep.json)'; watch --every 1e300 was an
    OverflowError traceback from time.sleep()."""
    p = finished.run("watch", "outputs", "--every", "1e300", trainer=False, timeout=30)
    assert_one_line_error(p, "--every 1e+300: at most 86400 seconds")
    (finished.dir / "outputs" / "sweep.json").write_text("{x")
    p = finished.run("status", "outputs", trainer=False, timeout=30)
    assert_one_line_error(p, "outputs: its sweep.json is damaged")


def test_status_of_a_search_with_only_a_time_budget_warns_of_nothing(finished):
    """An adversarial pass: a search given --search-hours and no --n-trials writes 'runs': null in its sweep.json
    (no count is known), and every status and watch warned "skipped 1 damaged record(s): ... its 'runs' is
    NoneType". Null is no count, not damage."""
    record = json.loads((finished.dir / "outputs" / "sweep.json").read_text())
    (finished.dir / "outputs" / "sweep.json").write_text(json.dumps({**record, "runs": None}))
    for command in ("status", "list"):
        p = finished.run(command, "outputs" if command == "status" else ".", trainer=False, timeout=30)
        assert p.returncode == 0 and "damaged" not in p.stderr and "Traceback" not in p.stderr, p.stdout + p.stderr


def test_status_and_list_count_the_runs_of_the_sweep_and_show_reruns_as_running(sweep):
    """An adversarial pass: a run dropped from the config was still counted ('2 run(s): 3 complete') and named the
    best by status and list; and a run running again after a default was edited (its attempts count from 1
    again) was shown by its old record, 'complete, 0 running'."""
    sweep.gpus.set(count=2)
    sweep.config({"defaults": {"sleep": 0}, "runs": [{"n": 0, "metric": 0.5}, {"n": 1, "metric": 0.4},
                                                     {"n": 2, "metric": 0.1}]})
    assert sweep.run("--metric", "val_loss").returncode == 0
    sweep.config({"defaults": {"sleep": 0}, "runs": [{"n": 0, "metric": 0.5}, {"n": 1, "metric": 0.4}]})
    assert sweep.run("--metric", "val_loss").returncode == 0
    p = sweep.run("status", trainer=False)
    assert "2 run(s): 2 complete" in p.stdout and "n_1_metric_0.4 = 0.4" in p.stdout, p.stdout + p.stderr
    row = next(line for line in sweep.run("list", trainer=False).stdout.splitlines() if "outputs" in line)
    assert [cell.strip() for cell in row.split("│")][4:7] == ["2", "2", "0"], row
    sweep.config({"defaults": {"sleep": 60}, "runs": [{"n": 0, "metric": 0.5}, {"n": 1, "metric": 0.4}]})
    proc = sweep.start("--metric", "val_loss")
    try:
        sweep.wait_for(lambda: len(sweep.started()) >= 5, what="both runs again")
        p = sweep.run("status", trainer=False)
        assert "2 run(s): 2 running" in p.stdout and "best" not in p.stdout, p.stdout + p.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_report_of_a_sweep_s_output_folder_after_another_sweep_took_the_results_file(sweep):
    """A docs review: the results file is in the folder a sweep starts from, so a later sweep there with another
    --output-dir replaces it; `report` then had no way to show the first sweep (a folder was 'not a results
    file'). It reads a sweep's output folder: the latest record of each run, from its journal and run folders."""
    sweep.gpus.set(count=1)
    sweep.config([{"lr": 0.1, "metric": 0.3}, {"lr": 0.2, "metric": 0.2}])
    assert sweep.run("--output-dir", "outputs/first", "--metric", "val_loss").returncode == 0
    sweep.config([{"lr": 0.5, "metric": 0.9}])
    assert sweep.run("--output-dir", "outputs/second", "--metric", "val_loss").returncode == 0
    assert [r["model_name"] for r in sweep.results()] == ["lr_0.5_metric_0.9"]  # the first sweep's file was replaced
    p = sweep.run("report", "outputs/first", trainer=False)
    assert p.returncode == 0 and "outputs/first: 2 run(s)" in p.stdout and "lr_0.2_metric_0.2" in p.stdout, p.stdout
    assert "lr_0.5" not in p.stdout and "Best (min val_loss): lr_0.2_metric_0.2 = 0.2" in p.stdout, p.stdout
    p = sweep.run("report", "outputs", trainer=False)  # a folder that holds no sweep of its own: still refused
    assert_one_line_error(p, "outputs: not a results file nor a sweep's output folder")


def test_a_folder_set_aside_is_not_read_as_its_run(sweep):
    """A review: after a default was edited, the old run's folder set aside as <name>~1 (its run.json still names
    the run) was read by report DIR, status and list as the run itself: report showed the old values beside the
    new folder, and a sweep killed then finished showed as dead. report DIR also lost a failed run's stderr."""
    sweep.gpus.set(count=1)
    sweep.config({"defaults": {"metric": 5}, "runs": [{"lr": 1}, {"lr": 2, "exit": 1, "err": "RuntimeError: boom"}]})
    sweep.run("--metric", "val_loss")
    sweep.config({"defaults": {"metric": 3}, "runs": [{"lr": 1}, {"lr": 2, "exit": 1, "err": "RuntimeError: boom"}]})
    sweep.run("--metric", "val_loss")
    assert (sweep.dir / "outputs" / "lr_1~1").is_dir()
    p = sweep.run("report", "outputs", trainer=False)
    assert "Best (min val_loss): lr_1 = 3 " in p.stdout and "RuntimeError: boom" in p.stdout, p.stdout
    p = sweep.run("status", trainer=False)
    assert "finished" in p.stdout and "2 run(s): 1 complete, 1 failed" in p.stdout and "lr_1 = 3" in p.stdout, p.stdout


def test_status_into_a_reader_that_leaves_early_is_no_traceback(finished):
    """An adversarial pass: `status | true` printed a BrokenPipeError traceback (report and list did not)."""
    for _ in range(3):  # (the reader may go before or after the first write)
        p = subprocess.run(" ".join(finished.argv("status", trainer=False)) + " | true", shell=True, cwd=finished.dir,
                           env=finished.env(), capture_output=True, text=True, timeout=60)
        assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_report_results_rewrites_its_own_gathered_file(tmp_path):
    """`report --storage URL --results all.json`, run again to refresh it (docs/agents.md), was refused as
    writing over a results file; --csv/--json onto such a file still are."""
    from train_sweep import UserError
    from train_sweep_extras.tools import check_report_file

    gathered = tmp_path / "all.json"
    gathered.write_text(json.dumps([{"model_name": "a", "hyperparams": {"lr": 1}, "state": "complete", "host": "h1"}]))
    check_report_file("--results", str(gathered), [])
    with pytest.raises(UserError, match="is a file a sweep keeps"):
        check_report_file("--json", str(gathered), [])


@pytest.mark.parametrize("inner", ["finished", "running"])
def test_cleanup_never_deletes_a_run_folder_that_holds_another_sweep(finished, inner):
    """A sweep whose --output-dir is inside another sweep's run folder: cleanup said the inner one was running,
    then deleted the run folder that held it, its journal, results and run folders with it (the inner sweep
    failed with exit 3). The outer run folder is kept, and said why; the inner sweep's own old runs go."""
    holder = finished.dir / "outputs" / "lr_0.01_depth_2_metric_0.2"
    inner_dir = holder / "inner"
    args = ["--output-dir", str(inner_dir), "--output-file", str(holder / "inner_results.json"), "--metric", "val_loss"]
    finished.config([{"k": 1, "metric": 0.1}, {"k": 2, "metric": 0.3, "sleep": 30 if inner == "running" else 0}])
    proc = None
    try:
        if inner == "running":
            proc = finished.start(*args)
            finished.wait_for(lambda: (inner_dir / "k_2_metric_0.3_sleep_30" / "fake.json").exists(), what="inner run")
        else:
            assert finished.run(*args).returncode == 0
        p = finished.run("cleanup", "--days", "0", "--include-best", "--live", "--yes", trainer=False)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert holder.is_dir() and (inner_dir / "journal.jsonl").exists(), p.stdout
    assert f"skipped outputs/{holder.name}: another sweep's folder is inside it" in p.stdout, p.stdout
    assert not (finished.dir / "outputs" / "lr_0.001_depth_2_metric_0.5").exists()  # the others are cleaned
    assert (inner_dir / "k_1_metric_0.1").exists() == (inner == "running")  # the inner sweep: its own rules


def test_cleanup_deletes_a_run_folder_whose_script_wrote_a_file_named_like_a_sweeps(finished):
    """A training script's own sweep.json or journal.jsonl in its run folder is no sweep: the folder went
    undeleted forever, said to hold another sweep."""
    run_dir = finished.dir / "outputs" / "lr_0.001_depth_2_metric_0.5"
    (run_dir / "sweep.json").write_text('{"lr": [0.001]}')
    (run_dir / "journal.jsonl").write_text("{}\n")
    p = finished.run("cleanup", "--days", "0", "--include-best", "--live", "--yes", trainer=False)
    assert p.returncode == 0 and not run_dir.exists(), p.stdout + p.stderr


@pytest.mark.parametrize("damage, command", [
    ("run_json_deep", "status"), ("run_json_no_name", "status"), ("run_json_list_name", "watch"),
    ("journal_wrong_shape", "status"), ("sweep_json_runs_text", "status"), ("sweep_json_array", "list"),
    ("results_hyperparams_text", "report"), ("results_numbers_text", "report"),
    ("results_attempts_numbers", "plots"), ("results_index_text", "report"),
])
def test_offline_commands_skip_a_damaged_record_naming_it(finished, damage, command):
    """A damaged record (a run.json nested 100,000 deep, without model_name or with a list as one; journal
    lines of the wrong shape; a sweep.json whose runs is text, or that is an array; a result whose
    hyperparams is text): the command shows the rest, with a warning naming what it skipped; no traceback."""
    out = finished.dir / "outputs"
    some = out / "lr_0.001_depth_2_metric_0.5"
    running = {"model_name": some.name, "state": "running", "attempt": 9, "hyperparams": {"lr": 1}}
    if damage == "run_json_deep":
        (some / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "run_json_no_name":
        (some / "run.json").write_text(json.dumps({k: v for k, v in running.items() if k != "model_name"}))
    elif damage == "run_json_list_name":
        (some / "run.json").write_text(json.dumps(dict(running, model_name=["a", "b"])))
    elif damage == "journal_wrong_shape":
        with open(out / "journal.jsonl", "a") as f:
            f.write(json.dumps({"model_name": "x", "state": 5, "hyperparams": "lr=1", "attempt": "two",
                                "metrics": [1, 2], "start_time": 7}) + "\n[1, 2]\n\"text\"\n")
    elif damage == "sweep_json_runs_text":
        record = json.loads((out / "sweep.json").read_text())
        (out / "sweep.json").write_text(json.dumps(dict(record, runs="many", started=5)))
    elif damage == "sweep_json_array":
        (out / "sweep.json").write_text("[1, 2, 3]")
    elif damage == "results_hyperparams_text":
        results = finished.results()
        results[0]["hyperparams"] = "lr=0.001"
        results[1]["metrics"] = "fast"
        (finished.dir / "train_sweep_results.json").write_text(json.dumps(results))
    elif damage in ("results_numbers_text", "results_attempts_numbers", "results_index_text"):  # a traceback before
        results = finished.results()  # (sorting, the timeline; the best of equal values by index, from a review)
        results[0].update({"duration_seconds": "12 s", "returncode": [1]} if damage == "results_numbers_text" else
                          {"attempts": [5, "two"]} if damage == "results_attempts_numbers" else
                          {"index": "0", "metrics": results[1]["metrics"]})
        (finished.dir / "train_sweep_results.json").write_text(json.dumps(results))
    if command == "plots":
        pytest.importorskip("matplotlib")
    args = {"status": ["status", "outputs"], "watch": ["watch", "outputs"], "list": ["list"],
            "report": ["report"], "plots": ["report", "--plots", "plots"]}[command]
    p = finished.run(*args, trainer=False, timeout=30)
    assert "Traceback" not in p.stderr and p.returncode == 0, p.stderr
    assert "warning" in p.stderr and "skipped" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) <= 3, p.stderr
    assert p.stdout.strip(), "the rest is shown"


def test_report_reads_as_a_person_would_sort_it(sweep):
    """issue 26 (4, 6): hyperparameters show 4 significant digits (the CSV and the results keep them whole),
    and with a metric the rows come best first (before: by index, and lr as 0.0015676677195506068)."""
    sweep.gpus.set(count=1)
    sweep.config([{"lr": lr, "metric": m} for lr, m in ((0.0015676677195506068, 0.5), (0.02, 0.1), (0.3, 0.3))])
    assert sweep.run("--metric", "val_loss").returncode == 0
    p = report(sweep)
    assert p.returncode == 0, p.stderr
    assert "│ 0.001568 │" in p.stdout and "│ 0.0015676677195506068 │" not in p.stdout  # (the name keeps it)
    rows = [[c.strip() for c in line.split("│")] for line in p.stdout.splitlines() if "│ complete │" in line]
    # the lr column, after the state (a duration of 0.3s once read as lr 0.3 when the whole row was searched)
    assert [cells[cells.index("complete") + 1] for cells in rows] == ["0.02", "0.3", "0.001568"], rows
    out = sweep.dir / "runs.csv"
    assert report(sweep, "--csv", str(out), "--sort", "index").returncode == 0
    assert "0.0015676677195506068" in out.read_text()


def test_report_plots_without_matplotlib_says_so_before_anything_else(finished, tmp_path):
    """issue 26 (8): `report --plots` without matplotlib printed the whole table, then the error at the
    bottom; it is checked first, as every other command does: one line, exit 2, nothing else printed."""
    hide = tmp_path / "no_matplotlib"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = finished.env()
    p = finished.run("report", "--plots", str(tmp_path / "plots"), trainer=False,
                     PYTHONPATH=os.pathsep.join([str(hide), env["PYTHONPATH"]]))
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and "pip install 'train-sweep[plots]'" in p.stderr, p.stderr


def test_learning_curves_of_runs_that_reported_once_are_drawn(finished, monkeypatch, tmp_path):
    """A docs audit: <metric>_curves.png was an empty axis where each run reported one value (the README's
    example sweep): a line of one point draws nothing. Such a run is drawn as a marker."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from train_sweep_extras.plots import write_plots
    from train_sweep_extras.tools import load_results

    curves = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (
        curves.extend(fig.axes[0].lines) if str(path).endswith("_curves.png") else None) or real(fig, path, **kw))
    records = load_results(str(finished.dir / "outputs"))
    write_plots(tmp_path / "plots", records, "val_loss")
    assert curves and all(len(line.get_xdata()) == 1 for line in curves)  # (this fake sweep reports once a run)
    assert all(line.get_marker() not in (None, "", "None") for line in curves), [l.get_marker() for l in curves]


def test_report_plots_of_a_sweep_with_nothing_ended_says_so(sweep):
    """An adversarial pass: report --plots of a sweep whose runs were all still running wrote nothing, said
    nothing and exited 0."""
    pytest.importorskip("matplotlib")
    sweep.gpus.set(count=1)
    sweep.config([{"sleep": 600, "n": n} for n in (1, 2)])  # (a review: a cold matplotlib import can take long)
    proc = sweep.start("--no-live")
    try:
        sweep.wait_for(lambda: any((sweep.dir / "outputs").glob("*/run.json")), what="the first run")
        p = sweep.run("report", "outputs", "--plots", "plots", trainer=False)
        assert p.returncode == 0 and "no plots: no run has ended yet" in p.stdout, p.stdout + p.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_report_plots_with_a_broken_matplotlib_names_what_failed(finished, tmp_path):
    """An adversarial pass: any ImportError inside matplotlib (a dependency missing or broken) was told as
    'report --plots needs matplotlib: pip install', which hid the real cause."""
    hide = tmp_path / "broken_matplotlib"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'kiwisolver'\", name='kiwisolver')\n")
    env = finished.env()
    p = finished.run("report", "--plots", str(tmp_path / "plots"), trainer=False,
                     PYTHONPATH=os.pathsep.join([str(hide), env["PYTHONPATH"]]))
    assert_one_line_error(p, "matplotlib did not import", "kiwisolver")


# -- exports into a missing folder, a read-only sweep folder, a search's direction -------------------------------

@pytest.mark.parametrize("flag,target", [("--csv", "missing_dir/out.csv"), ("--json", "missing_dir/out.json")])
def test_report_export_into_a_missing_folder(sweep, flag, target):
    """issue 16: `report --csv missing_dir/out.csv` (and --json) crashed with a traceback. Contract: the
    folder is created, the file written, exit 0."""
    sweep.config([{"a": 1}])
    assert cli(sweep).returncode == 0
    p = cli(sweep, "report", flag, target, trainer=False)
    no_traceback(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (sweep.dir / target).is_file() and (sweep.dir / target).stat().st_size > 0


def test_cleanup_on_a_read_only_sweep_folder(sweep):
    """issue 16: `cleanup --days 0 --live` on a sweep folder that cannot be changed crashed with a
    PermissionError traceback. Contract: no traceback, non-zero exit, one line on stderr naming the folder."""
    sweep.config([{"a": 1}])
    assert cli(sweep).returncode == 0
    out = sweep.dir / "outputs"
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
            pytest.skip("root ignores permissions, and chattr +i is not available here")
        undo = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        undo = ["chmod", "755", str(out)]
    try:
        p = cli(sweep, "cleanup", "--days", "0", "--live", "outputs", trainer=False)
    finally:
        subprocess.run(undo, capture_output=True)
    no_traceback(p)
    assert p.returncode != 0, p.stdout + p.stderr
    lines = p.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and "outputs" in lines[0], p.stderr[-4000:]


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="a search needs Optuna")
def test_report_of_a_max_search_names_the_max_as_best(sweep):
    """report defaults to --mode min; for a search (its direction is in the study and sweep.json) the 'best' is
    the worst run."""
    sweep.gpus.set(count=1)
    cmd = script(sweep, "a.py", "print(f\"acc={float(args['x'])}\", flush=True)\n")
    p = sweep.run("--command", cmd, "--search", "grid", "--metric", "acc", "--mode", "max", "--no-live", "x=0.1,0.9",
                  trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    r = sweep.run("report", "train_sweep_results.json", trainer=False)
    best = [line for line in r.stdout.splitlines() if line.startswith("Best")]
    assert best and "x_0.9" in best[0], best


def test_status_shows_each_running_run_s_metric_the_eta_and_why_runs_failed(sweep):
    """issue 26 (10): status and watch showed no metric per run, no ETA and no failure reasons."""
    sweep.gpus.set(count=2)
    sweep.config([{"n": 0, "exit": 3, "err": "CUDA error: device-side assert"}, {"n": 1, "metric": 0.5},
                  {"n": 2, "sleep": 30, "early_metric": 0.25}, {"n": 3, "sleep": 30, "early_metric": 0.75},
                  {"n": 4, "sleep": 30}])
    proc = sweep.start("--metric", "val_loss", "--no-live", "--no-fail-fast")
    try:
        sweep.wait_for(lambda: len(sweep.started()) >= 4, timeout=30, what="the long runs")
        time.sleep(1.0)
        out = sweep.run("status", "outputs", trainer=False).stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert "val_loss 0.25" in out and "val_loss 0.75" in out, out  # each running run's latest value
    assert re.search(r"1 pending, ETA \d", out), out
    assert "Failures, by their last line of stderr:" in out and "CUDA error: device-side assert" in out, out


def test_status_reads_on_from_where_it_stopped(tmp_path):
    """watch redraws every few seconds: the journal is read from its last offset, a run.json only once it changed."""
    from train_sweep_extras import tools

    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"runs": 3, "settings": {"metric": ["loss"]}}))
    record = {"model_name": "a", "state": "complete", "attempt": 1, "metrics": {"loss": 1.0}, "duration_seconds": 1}
    (folder / "journal.jsonl").write_text(json.dumps(record) + "\n")
    status = tools.SweepStatus(folder)
    lines, _ = status.lines()
    assert "1 complete" in lines[1]
    offset = status._offset
    with open(folder / "journal.jsonl", "a") as f:
        f.write(json.dumps(dict(record, model_name="b")) + "\n" + '{"model_name": "c", "sta')  # c: being written
    lines, _ = status.lines()
    assert "2 complete" in lines[1] and status._offset > offset
    with open(folder / "journal.jsonl", "a") as f:
        f.write('te": "failed", "attempt": 1}\n')
    lines, _ = status.lines()
    assert "2 complete, 1 failed" in lines[1]


def test_timeline_labels_carry_the_run_number_and_fit_their_bar_and_durations_have_a_legend(seeds, tmp_path):
    """issue 26 (5): timeline labels were cut before the second parameter and ran over the next bar, with no #N
    to match the summary; durations.png had no legend (checked through matplotlib's own objects)."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train_sweep_extras.plots import write_plots
    from train_sweep_extras.tools import load_results

    records = load_results(str(seeds.dir / "train_sweep_results.json"))
    saved = {}
    real = plt.Figure.savefig

    def keep(fig, path, **kw):
        saved[Path(path).name] = fig
        return real(fig, path, **kw)

    plt.Figure.savefig = keep
    try:
        write_plots(tmp_path, records, "val_loss")
    finally:
        plt.Figure.savefig = real
    ax = saved["timeline.png"].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts and all(re.match(r"#\d+ ", t) for t in texts), texts
    assert any("lr=0.1 seed=0" in t for t in texts), texts  # 4 digits, both parameters where the bar has room
    legend = saved["durations.png"].axes[0].get_legend()
    assert legend is not None and {t.get_text() for t in legend.get_texts()} == {"complete", "failed"}


def test_status_starts_over_when_the_journal_was_set_aside(tmp_path):
    """An adversarial pass: --rerun sets the journal aside; watch kept the old sweep's counts and read the new
    journal from the old offset."""
    from train_sweep_extras import tools

    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"runs": 20, "settings": {}}))
    journal = folder / "journal.jsonl"
    journal.write_text("".join(json.dumps({"model_name": f"r{i}", "state": "complete", "attempt": 1}) + "\n"
                               for i in range(20)))
    status = tools.SweepStatus(folder)
    assert "20 complete" in status.lines()[0][1]
    journal.rename(folder / "journal.jsonl~1")
    journal.write_text(json.dumps({"model_name": "r0", "state": "failed", "attempt": 1}) + "\n")
    line = status.lines()[0][1]
    assert "1 failed" in line and "complete" not in line, line
