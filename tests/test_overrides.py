"""A sweep said on the command line: a grid with no config file, plain key=value overrides read without
hydra-core as Hydra reads them, conflicting overrides, --help and misspelled flags, labels of what varies."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FAKE_NVML
from train_sweep import SimpleOverride


def no_hydra(tmp_path) -> str:
    """A PYTHONPATH on which `import hydra` fails, as where hydra-core is not installed."""
    fake = tmp_path / "no_hydra" / "hydra"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'hydra'\", name='hydra')\n")
    return os.pathsep.join([str(fake.parent), str(FAKE_NVML)])


def test_a_command_line_grid_needs_no_config_file(sweep):
    sweep.gpus.set(count=2)
    assert not (sweep.dir / "train_sweep_config.json").exists()
    p = sweep.run("--no-live", "lr=1e-3,1e-4", "seed=0,1", "depth=3")
    assert p.returncode == 0, p.stdout + p.stderr
    runs = sorted((r["hyperparams"]["lr"], r["hyperparams"]["seed"], r["hyperparams"]["depth"]) for r in sweep.results())
    assert runs == [(1e-4, 0, 3), (1e-4, 1, 3), (1e-3, 0, 3), (1e-3, 1, 3)]
    assert "4 run(s) from the command line" in p.stdout


def test_without_overrides_a_missing_config_file_is_still_an_error(sweep):
    p = sweep.run("--no-live")
    assert p.returncode == 2 and "train_sweep_config.json: config file not found" in p.stderr


def test_plain_overrides_need_no_hydra(sweep, tmp_path):
    sweep.gpus.set(count=1)
    p = sweep.run("--no-live", "lr=1e-3,1e-4", "opt=adam", "flag=true", PYTHONPATH=no_hydra(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(r["hyperparams"]["lr"] for r in sweep.results()) == [1e-4, 1e-3]
    assert {(r["hyperparams"]["opt"], r["hyperparams"]["flag"]) for r in sweep.results()} == {("adam", True)}


@pytest.mark.parametrize("override", ["depth=range(2,5)", "lr='1e-3'", "x=[1,2]", "y=choice(a,b)"])
def test_richer_syntax_without_hydra_says_what_to_install(sweep, tmp_path, override):
    sweep.gpus.set(count=1)
    p = sweep.run("--no-live", override, PYTHONPATH=no_hydra(tmp_path))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"override {override!r} is read with Hydra's parser: pip install hydra-core" in p.stderr
    assert "Traceback" not in p.stderr


def _hydra(text: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(text)
    return list(override.sweep_iterator()) if override.is_sweep_override() else override.value()


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


WORDS = st.text(alphabet="abeEfilnrstuAF0123456789._+-", min_size=1, max_size=8)


@settings(max_examples=1000, deadline=None)
@given(values=st.lists(WORDS, min_size=1, max_size=3))
def test_simple_overrides_read_as_hydra_reads_them(values):
    """Whatever SimpleOverride accepts, it reads to the same values (and types) as Hydra's own parser."""
    pytest.importorskip("hydra")
    text = "key=" + ",".join(values)
    simple = SimpleOverride.parse(text)
    if simple is None:
        return
    mine = list(simple.sweep_iterator()) if simple.is_sweep_override() else simple.value()
    assert _same(mine, _hydra(text)), (text, mine, _hydra(text))


@pytest.mark.parametrize("text", ["lr=1e-3,1e-4", "seed=0,1", "flag=TRUE", "n=null", "y=.5", "z=5.",
                                  "i=-inf", "q=", "k=e5", "a.b=3", "d=+4", "w=abc-def", "c=3.0e-2"])
def test_simple_overrides_examples(text):
    """Plain values are read without Hydra (those of less obvious reading, 1_000 or 007, go to Hydra)."""
    pytest.importorskip("hydra")
    simple = SimpleOverride.parse(text)
    assert simple is not None
    mine = list(simple.sweep_iterator()) if simple.is_sweep_override() else simple.value()
    assert _same(mine, _hydra(text))


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


@pytest.mark.parametrize("args, fragment", [
    (["lr=1,2", "lr=3"], "override 'lr=3': 'lr' is already given by 'lr=1,2'; give each key once"),
    (["--set", "lr=5", "lr=1,2"], "--set lr=...: 'lr' is swept by a command-line sweep"),
    (["lr=1", "--set", "lr=2"], "--set lr=... and the override lr=... both set 'lr'"),
    (["lr=1,2,1"], "override 'lr=1,2,1': the value 1 is listed twice"),
])
def test_conflicting_overrides_name_the_cause(sweep, args, fragment):
    p = sweep.run("--dry-run", *args)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stdout + p.stderr
    assert fragment in p.stderr and "identical runs" not in p.stderr


def test_set_over_a_config_grid_names_the_grid(sweep):
    sweep.config({"grid": {"lr": [1, 2], "wandb": [True]}})
    p = sweep.run("--dry-run", "--set", "lr=3")
    assert p.returncode == 2 and "'lr' is swept by train_sweep_config.json's 'grid'" in p.stderr
    assert sweep.run("--dry-run", "--set", "wandb=false").returncode == 0  # one value: nothing collapses


def test_help_is_grouped_and_named_as_invoked(sweep):
    p = sweep.run("--help")
    assert p.returncode == 0
    assert p.stdout.startswith("usage: train_sweep.py ")
    heads = [line for line in p.stdout.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert heads == ["options:", "what to run:", "where runs go (placement):", "how runs end:",
                     "metrics and the best model:", "output:"] + [h for h in heads if h.startswith("search")] + \
        [h for h in heads if h.startswith("on a Slurm cluster")]
    assert len(heads) == 8
    assert "(default: 36000 = 10 hours)" in " ".join(p.stdout.split())


def test_a_misspelled_flag_suggests_the_right_one(sweep):
    p = sweep.run("--metrc", "loss")
    assert p.returncode == 2 and "(did you mean --metric?)" in p.stderr and len(p.stderr.splitlines()) == 1


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


def test_a_search_over_plain_lists_needs_no_hydra(sweep, tmp_path):
    pytest.importorskip("optuna")
    sweep.gpus.set(count=1)
    script = sweep.dir / "q.py"
    script.write_text("import sys\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\nprint(f\"loss={args['lr']}\")\n")
    p = sweep.run("--no-live", "--command", f"python {script}", "--search", "grid", "--metric", "loss", "lr=0.1,0.01",
                  trainer=False, PYTHONPATH=no_hydra(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(r["hyperparams"]["lr"] for r in sweep.results()) == [0.01, 0.1]
    p = sweep.run("--no-live", "--command", f"python {script}", "--search", "tpe", "--metric", "loss",
                  "lr=interval(0.01, 0.1)", "--n-trials", "2", trainer=False, PYTHONPATH=no_hydra(tmp_path))
    assert p.returncode == 2 and "pip install hydra-core" in p.stderr and "Traceback" not in p.stderr


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


def test_dry_run_shows_what_resume_would_skip(sweep):
    sweep.gpus.set(count=1)
    assert sweep.run("--no-live", "x=1,2").returncode == 0
    p = sweep.run("--dry-run", "x=1,2,3")
    assert p.returncode == 0, p.stderr
    assert "Resume: 2 of them already complete (or pruned) with the same hyperparameters and command are skipped; " \
           "1 to run" in " ".join(p.stdout.split())
    assert "(complete: skipped)" in p.stdout
    assert "Resume:" not in sweep.run("--dry-run", "--rerun", "x=1,2,3").stdout


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
