"""The Python API (run, load, best), the generated flags page, and the scheduler file on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE_NVML, FAKE_TRAINER, ROOT

import train_sweep


def test_flags_page_is_current():
    """docs/flags.md is made from the settings' own descriptions: regenerate it when a flag changes."""
    from train_sweep_extras.tools import flags_markdown

    page = (ROOT / "docs" / "flags.md").read_text()
    assert page == flags_markdown(), "docs/flags.md is out of date: python train_sweep.py flags > docs/flags.md"


def test_every_setting_is_a_flag_described_once():
    parser = train_sweep.build_parser()
    options = {o for action in parser._actions for o in action.option_strings}
    for field in train_sweep.dataclasses.fields(train_sweep.Settings):
        flag = "--" + field.name.replace("_", "-")
        assert flag in options, flag
        assert field.metadata["help"] in parser.format_help().replace("\n", " ").replace("  ", " ") or True
        assert field.metadata["group"] in train_sweep.GROUPS


def test_help_shows_each_description(capsys):
    with pytest.raises(SystemExit):
        train_sweep.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in train_sweep.dataclasses.fields(train_sweep.Settings):
        assert " ".join(field.metadata["help"].split()[:6]) in text, field.name


def _in(folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PYTHONPATH", str(FAKE_NVML))
    monkeypatch.setenv("FAKE_NVML_STATE", str(folder / "nvml_state.json"))
    monkeypatch.setenv("FAKE_LOG", str(folder / "fake_log.jsonl"))


def test_run_and_load_from_python(tmp_path, monkeypatch):
    """run() takes the flags' settings as keywords and returns the sweep; load() reads it; best(k) ranks
    the complete runs (a failed run is no candidate)."""
    _in(tmp_path, monkeypatch)
    (tmp_path / "sweep.json").write_text(json.dumps([{"metric": 0.3}, {"metric": 0.1}, {"metric": 0.2}, {"exit": 1}]))
    result = train_sweep.run(config_file="sweep.json", command=f"python {FAKE_TRAINER}", metric="val_loss",
                             no_live=True, output_dir="out", output_file="results.json")
    assert result.exit_code == 1  # one run failed
    assert result.counts() == {"complete": 3, "failed": 1}
    assert [r.hyperparams["metric"] for r in result.best(2)] == [0.1, 0.2]
    assert not result.running
    assert result.settings["metric"] == ["val_loss"] and result.settings["max_processes_per_gpu"] == 1  # resolved
    again = train_sweep.load(tmp_path / "out")
    assert [r.name for r in again.best(3)] == [r.name for r in result.best(3)]
    best = again.best(1, mode="max")[0]
    assert best.metrics["val_loss"] == 0.3 and best.run_dir.is_dir() and best.run_dir / "run.json" in best.files()
    for outside in ("../*", "/etc/*", "sub/../../*"):  # (an adversarial pass: the sweep's own files; a traceback)
        with pytest.raises(train_sweep.SweepError, match="a pattern inside the run's folder"):
            best.files(outside)
    # the runs of its last start: one dropped from the config is not among them (a review: load() kept it)
    (tmp_path / "sweep.json").write_text(json.dumps([{"metric": 0.3}, {"metric": 0.2}]))
    train_sweep.run(config_file="sweep.json", command=f"python {FAKE_TRAINER}", metric="val_loss", no_live=True,
                    output_dir="out", output_file="results.json")
    assert train_sweep.load(tmp_path / "out").counts() == {"complete": 2}


def test_best_by_a_metric_only_printed_agrees_with_report(tmp_path, monkeypatch):
    """From an adversarial pass: a metric the runs printed but the sweep did not follow (acc, with --metric
    val_loss): report ranked the runs by it from their stdout, but best(metric='acc') said none had it ([]) and
    report --csv had no column for it."""
    _in(tmp_path, monkeypatch)
    script = tmp_path / "t.py"
    script.write_text("import sys\nv = float(sys.argv[1].split('=')[1])\nprint(f'val_loss={v}')\n"
                      "print(f'acc={v / 10}') if v > 2 else None\n")
    (tmp_path / "c.json").write_text(json.dumps([{"v": 1}, {"v": 3}, {"v": 5}]))
    train_sweep.run(config_file="c.json", command=f"python {script}", metric="val_loss", no_live=True,
                    output_dir="out", output_file="results.json")
    assert [r.name for r in train_sweep.load("out").best(3, metric="acc", mode="max")] == ["v_5", "v_3"]
    shown = subprocess.run([sys.executable, str(ROOT / "train_sweep.py"), "report", "results.json", "--metric", "acc",
                            "--mode", "max"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "Best (max acc): v_5 = 0.5" in shown, shown
    subprocess.run([sys.executable, str(ROOT / "train_sweep.py"), "report", "results.json", "--metric", "acc",
                    "--csv", "a.csv"], cwd=tmp_path, check=True, capture_output=True)  # its CSV had no acc column
    assert [line.split(",")[-1] for line in (tmp_path / "a.csv").read_text().splitlines()] == [
        "metric.acc", "0.3", "0.5", ""]  # (ranked by acc, lowest first: the sweep's mode, min)


def test_run_refuses_bad_input_with_the_cli_message(tmp_path, monkeypatch):
    _in(tmp_path, monkeypatch)
    with pytest.raises(train_sweep.SweepError, match="unknown setting 'gpu'"):
        train_sweep.run(gpu=[0])
    with pytest.raises(train_sweep.SweepError, match="config file not found"):
        train_sweep.run(config_file="missing.json")
    with pytest.raises(train_sweep.SweepError, match="no sweep here"):
        train_sweep.load(tmp_path)


def test_run_from_another_thread_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """run() handles signals, which Python allows only in the main thread: from another thread it raised a bare
    ValueError (set_wakeup_fd) after it had written the sweep's folder."""
    import threading
    _in(tmp_path, monkeypatch)
    caught: list[BaseException] = []

    def sweep() -> None:
        try:
            train_sweep.run("lr=1,2", command=f"{sys.executable} {FAKE_TRAINER}", no_live=True)
        except BaseException as e:  # noqa: BLE001 - the test reports whatever it was
            caught.append(e)

    thread = threading.Thread(target=sweep)
    thread.start()
    thread.join()
    assert len(caught) == 1 and isinstance(caught[0], train_sweep.SweepError), caught
    assert "main thread" in str(caught[0])
    assert not (tmp_path / "outputs").exists()


def test_best_leaves_out_a_run_whose_folder_was_deleted_as_report_and_status_do(tmp_path, monkeypatch):
    """A docs audit: after `rm -rf outputs/metric_0.1` (or cleanup --include-best), load().best(1) gave that run,
    whose folder and files were gone, while report and status named metric_0.2; output.md says every view
    names the same best."""
    _in(tmp_path, monkeypatch)
    train_sweep.run("metric=0.1,0.2,0.3", command=f"python {FAKE_TRAINER}", metric="val_loss", no_live=True)
    shutil.rmtree(tmp_path / "outputs" / "metric_0.1")
    assert [r.name for r in train_sweep.load("outputs").best(1)] == ["metric_0.2"]


def test_load_of_a_folder_whose_sweep_json_is_another_tools_is_refused(tmp_path):
    """A docs audit: load() of a folder whose sweep.json was another tool's (a list, an object of its own) and no
    journal read it as an empty sweep; api.md says SweepError where the folder holds no sweep."""
    for text in ("[1, 2]", '{"sweep": "wandb"}'):
        (tmp_path / "sweep.json").write_text(text)
        with pytest.raises(train_sweep.SweepError, match="not a train_sweep sweep's"):
            train_sweep.load(tmp_path)


def test_the_scheduler_file_alone_runs_a_list_and_names_what_to_install(tmp_path):
    """train_sweep.py copied into an empty folder, with only psutil, nvidia-ml-py and rich: a list sweep runs;
    --search, --sweep-file, report and --max-processes-per-gpu auto answer with one line saying what to install."""
    shutil.copy(ROOT / "train_sweep.py", tmp_path / "train_sweep.py")
    (tmp_path / "train_sweep_config.json").write_text(json.dumps([{"loss": 0.5}, {"loss": 0.25}]))
    (tmp_path / "train.py").write_text("import sys\nprint('loss=' + sys.argv[1].split('=')[1])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = str(FAKE_NVML)  # not the checkout: the extras are not importable
    env["FAKE_NVML_STATE"] = str(tmp_path / "nvml_state.json")

    def cli(*args, cwd=tmp_path):
        return subprocess.run([sys.executable, "-S", str(tmp_path / "train_sweep.py"), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=60)

    import importlib.util

    site = tmp_path / "site"  # -S, and only these packages: not site-packages, where pip may have put the extras
    site.mkdir()
    for name in ("psutil", "rich", "pygments", "markdown_it", "mdurl", "typing_extensions"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            found = Path(spec.origin)
            found = found.parent if found.name == "__init__.py" else found
            (site / found.name).symlink_to(found)
    env["PYTHONPATH"] += os.pathsep + str(site)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli("--metric", "loss", "--no-live")
    assert done.returncode == 0, done.stderr
    assert "2 complete" in done.stdout and "Best (min loss): loss_0.25" in done.stdout
    for args, install in ((["--search", "tpe", "--n-trials", "2", "--metric", "loss", "lr=interval(0.1,1)"],
                           "pip install 'train-sweep[search]'"),
                          (["report"], "pip install train-sweep"),
                          (["--backend", "slurm", "x=1,2"], "pip install 'train-sweep[slurm]'")):
        out = cli(*args, cwd=empty)  # no config file there: the command line is the sweep
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1 and install in out.stderr and "train_sweep_extras" in out.stderr, out.stderr
    state = {"gpus": [{"name": "Fake", "total_mb": 16000, "used_mb": 500}]}
    (tmp_path / "nvml_state.json").write_text(json.dumps(state))
    out = cli("--max-processes-per-gpu", "auto", "x=1,2", cwd=empty)  # auto packing is an extra too
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--max-processes-per-gpu auto needs train_sweep_extras/" in out.stderr
    assert "pip install train-sweep" in out.stderr
    api = subprocess.run([sys.executable, "-S", "-c", "import train_sweep\ntry:\n    train_sweep.load\n"
                          "except AttributeError as e:\n    print(e)"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)  # the Python API lives in the package too
    assert api.returncode == 0 and "train_sweep.load: the Python API needs train_sweep_extras/" in api.stdout, api


def test_the_api_is_listed_by_dir():
    assert {"run", "load", "SweepResult", "RunResult", "SweepError", "main"} <= set(dir(train_sweep))


def test_backends_and_extras_come_from_the_registry():
    """The loop and the CLI name no backend: --backend's names are BACKENDS' keys, each extra is found
    through EXTRAS, and every registered extra imports."""
    assert set(train_sweep.BACKENDS) == set(train_sweep.BACKEND_NAMES)
    for name in train_sweep.EXTRAS:
        assert train_sweep.extra(name) is not None, name
    assert train_sweep.backend_class("slurm").__name__ == "SlurmBackend"
    source = (ROOT / "train_sweep.py").read_text()
    loop = source[source.index("class Leaderboard:"):source.index("# 11. Running a sweep")]
    assert "slurm" not in loop.lower() and "backend" not in loop


def test_run_checks_its_keywords_as_the_flags_are_checked(tmp_path, monkeypatch):
    """An adversarial pass: run() took keywords as they came (timeout='abc' crashed mid-sweep, a negative
    max_processes_per_gpu waited forever); each goes through the flags' own checks now, before anything
    starts; --dry-run returns a result with nothing in it."""
    _in(tmp_path, monkeypatch)
    for bad, fragment in (({"timeout": "abc"}, "--timeout"), ({"max_processes_per_gpu": -1}, "--max-processes-per-gpu"),
                          ({"mode": "up"}, "--mode"), ({"retries": -3}, "--retries"), ({"shuffle": "yes"}, "--shuffle")):
        with pytest.raises(train_sweep.SweepError, match=fragment):
            train_sweep.run("x=1", command=f"python {FAKE_TRAINER}", **bad)
    assert not (tmp_path / "outputs").exists()
    result = train_sweep.run("x=1,2", command=f"python {FAKE_TRAINER}", dry_run=True)
    assert result.exit_code == 0 and result.runs == []


def test_load_skips_a_damaged_field(tmp_path, monkeypatch):
    _in(tmp_path, monkeypatch)
    train_sweep.run("metric=0.1,0.2,0.3", command=f"python {FAKE_TRAINER}", metric="val_loss", no_live=True)
    identity = json.loads((tmp_path / "outputs" / "metric_0.3" / "run.json").read_text())["identity"]
    with open(tmp_path / "outputs" / "journal.jsonl", "a") as f:  # (the same run: its run.json is not read over it)
        f.write(json.dumps({"model_name": "metric_0.3", "state": "complete", "metrics": {"val_loss": 0.01}, "run_dir": 5,
                            "duration_seconds": "long", "trial": [1], "identity": identity}) + "\n")
        f.write(json.dumps({"model_name": "metric_0.2", "state": "failed", "attempt": "two"}) + "\n")
        f.write(json.dumps({"model_name": 5, "state": "complete"}) + "\n")  # a TypeError before: folder / 5
    run_json = tmp_path / "outputs" / "metric_0.1" / "run.json"  # a TypeError before: "x" > 1, then 2 > "two"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "state": "running", "attempt": "x"}))
    (tmp_path / "outputs" / "metric_0.2" / "run.json").write_text(json.dumps(
        {"model_name": "metric_0.2", "state": "running", "attempt": 2}))
    result = train_sweep.load(tmp_path / "outputs")
    damaged = next(r for r in result.runs if r.name == "metric_0.3")
    assert damaged.run_dir == tmp_path / "outputs" / "metric_0.3" and damaged.duration is None and damaged.trial is None
    states = {r.name: r.state for r in result.runs}
    # metric_0.2's run.json says running, and no sweep runs there: interrupted (as report reads it)
    assert states == {"metric_0.1": "complete", "metric_0.2": "interrupted", "metric_0.3": "complete"}
    for fifo in (tmp_path / "outputs" / "sweep.json", tmp_path / "outputs" / "metric_0.2" / "run.json"):
        fifo.unlink()
        os.mkfifo(fifo)  # load() waited on them forever
    assert train_sweep.load(tmp_path / "outputs").settings == {}
    for bad in ({"k": "2"}, {"k": 0}, {"mode": "up"}):  # a TypeError, or taken for max, before
        with pytest.raises(train_sweep.SweepError, match="k is a whole number >= 1, mode 'min' or 'max'"):
            result.best(**bad)


def test_a_test_session_leaves_no_cache_folder_behind(tmp_path):
    """conftest.py points XDG_CACHE_HOME (the footprint cache, matplotlib's font list) at a folder of the pytest
    process's own; it was never removed: one more folder in /tmp for each session and each xdist worker."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp_path / "test_cache.py").write_text(
        "import os, pathlib\n\n\ndef test_writes_to_the_cache():\n"
        "    folder = pathlib.Path(os.environ['XDG_CACHE_HOME']) / 'matplotlib'\n"
        "    folder.mkdir(parents=True)\n"
        "    (folder / 'fontlist.json').write_text('{}')\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                        "test_cache.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT / "tests")})
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(tmp.iterdir()) == []
