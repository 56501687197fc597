"""Saying the sweep: the config file's forms (a list of runs; the object form with defaults, grids, env),
--set, --configs, a sweep on the command line (plain key=value overrides, read without hydra-core as Hydra
reads them; Hydra's sweep syntax; conflicting overrides), argument styles against real parsers, --max-runs
and --shuffle, grids of a billion runs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from conftest import assert_one_line_error, cli, no_hydra, no_traceback
from train_sweep import (
    Entry, SimpleOverride, SweepSpec, UserError, build_runs, expand, render_args, select_entries, template_name,
)


HERE = Path(__file__).resolve().parent


def names(p) -> list[str]:
    return [line.split("│")[2].strip() for line in p.stdout.splitlines() if line.startswith("│") and
            line.split("│")[1].strip().isdigit()]


# -- expansion (pure) --------------------------------------------------------------------------------------------

def test_grid_product_order_and_precedence():
    spec = SweepSpec("s.json", [{"model": "small"}, {"model": "big", "lr": 9}], form="object",
                     grid={"lr": [1, 2], "opt": ["adam", "sgd"]}, defaults={"epochs": 10, "model": "none"})
    entries = expand(spec, {"seed": [0, 1]}, {"epochs": 3})
    assert len(entries) == 2 * 4 * 2
    hp = [e.hyperparams for e in entries]
    assert hp[0] == {"epochs": 3, "model": "small", "lr": 1, "opt": "adam", "seed": 0}
    assert [(h["lr"], h["opt"], h["seed"]) for h in hp[:8]] == [
        (1, "adam", 0), (1, "adam", 1), (1, "sgd", 0), (1, "sgd", 1),
        (2, "adam", 0), (2, "adam", 1), (2, "sgd", 0), (2, "sgd", 1)]
    assert hp[8]["model"] == "big" and hp[8]["lr"] == 1  # grid beats the run entry
    assert entries[0].name_keys == ["model", "lr", "opt", "seed"]  # defaults and --set stay out of names


def test_a_list_in_runs_or_defaults_is_one_value():
    spec = SweepSpec("s.json", [{"layers": [64, 64]}], form="object", defaults={"betas": [0.9, 0.95]})
    (entry,) = expand(spec)
    assert entry.hyperparams == {"betas": [0.9, 0.95], "layers": [64, 64]}


def test_select_entries_is_repeatable():
    entries = [Entry({"i": i}, ["i"]) for i in range(100)]
    a = select_entries(entries, 5, True, 7)
    assert [e.hyperparams["i"] for e in a] == [e.hyperparams["i"] for e in select_entries(entries, 5, True, 7)]
    assert [e.hyperparams["i"] for e in a] != [0, 1, 2, 3, 4]
    assert [e.hyperparams["i"] for e in select_entries(entries, 3, False, 0)] == [0, 1, 2]


def test_templates():
    assert template_name("{env}_lr{training.lr}_{index}", {"env": "maze", "training.lr": 5e-6}, 3) == "maze_lr5e-06_3"
    with pytest.raises(UserError, match=r"run \[0\] has no hyperparameter 'nope'"):
        template_name("{nope}", {"a": 1}, 0)
    with pytest.raises(UserError, match=r"gives runs \[0\] and \[2\] the same name 'a_1'"):
        build_runs([{"a": 1, "b": 1}, {"a": 2, "b": 1}, {"a": 1, "b": 2}], ["x"], Path("/tmp/o"), name_template="a_{a}")


# -- argument styles against real parsers ------------------------------------------------------------------------

def test_argparse_style_rendering():
    assert render_args({"lr": 1e-4, "amp": True, "fp16": False, "opt": None, "layers": [64, 32], "shift": -1.5},
                       "argparse") == ["--lr", "0.0001", "--amp", "--no-fp16", "--layers", "64", "32", "--shift=-1.5"]
    assert render_args({"compile": False, "device": "cuda", "betas": [0.9, 0.95], "tag": "1"}, "equals") == [
        "--compile=False", "--device=cuda", "--betas=[0.9, 0.95]", "--tag='1'"]


def test_argparse_style_against_a_real_argparse_app(sweep):
    sweep.config({"command": f"python {HERE / 'argparse_app.py'}", "arg_style": "argparse", "runs": [
        {"lr": 5e-06, "epochs": 3, "name": "a b,c", "shift": -2.5, "layers": [64, 32], "amp": True, "opt": None,
         "extra": {"k": [1, 2]}},
        {"lr": 1.0, "name": "-dash", "layers": [], "amp": False, "epochs": -1}]})
    p = sweep.run(trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    first, second = (json.loads((Path(r["run_dir"]) / "args.json").read_text()) for r in sweep.results())
    assert first == {"lr": 5e-06, "epochs": 3, "name": "a b,c", "shift": -2.5, "layers": [64, 32], "amp": True,
                     "opt": "default-kept", "extra": {"k": [1, 2]}}
    assert second["name"] == "-dash" and second["layers"] == [] and second["amp"] is False and second["epochs"] == -1


def test_equals_style_against_a_nanogpt_configurator(sweep):
    sweep.config({"command": f"python {HERE / 'nanogpt_app.py'}", "arg_style": "equals", "runs": [
        {"learning_rate": 1e-3, "max_iters": 100, "compile": False, "device": "cpu", "wandb_project": "my run,1",
         "betas": [0.8, 0.99], "init_from": None, "tag": "123"}]})
    p = sweep.run(trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    got = json.loads((Path(sweep.results()[0]["run_dir"]) / "cfg.json").read_text())
    assert got == {"learning_rate": 1e-3, "max_iters": 100, "compile": False, "device": "cpu",
                   "wandb_project": "my run,1", "betas": [0.8, 0.99], "init_from": None, "tag": "123"}


# -- the object form and the command line, end to end ------------------------------------------------------------

def test_object_form_end_to_end(sweep):
    sweep.gpus.set(count=2)
    sweep.config({
        "command": f"python {HERE / 'fake_trainer.py'} out={{run_dir}} who={{name}} gpu={{gpu}}",
        "env": {"MUJOCO_GL": "egl"},
        "defaults": {"epochs": 5},
        "runs": [{"model": "small"}, {"model": "big"}],
        "grid": {"lr": [0.1, 0.01]},
        "name_template": "{model}_lr{lr}",
    })
    p = sweep.run(trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    results = sweep.results()
    assert [r["model_name"] for r in results] == ["small_lr0.1", "small_lr0.01", "big_lr0.1", "big_lr0.01"]
    info = sweep.fake("small_lr0.1")
    run_dir = sweep.dir / "outputs" / "small_lr0.1"
    gpu = str(results[0]["gpu_id"])
    assert info["argv"] == [f"out={run_dir}", "who=small_lr0.1", f"gpu={gpu}", "epochs=5", "model=small", "lr=0.1"]
    env = json.loads(json.dumps(info["env"]))
    assert env["CUDA_VISIBLE_DEVICES"] == gpu
    assert (run_dir / "run.json").exists()


def test_env_reaches_the_runs(sweep):
    script = sweep.dir / "env.py"
    script.write_text("import os; print('MUJOCO_GL=' + os.environ['MUJOCO_GL'])")
    sweep.config({"command": f"python {script}", "env": {"MUJOCO_GL": "egl"}})
    p = sweep.run(trainer=False)
    assert p.returncode == 0, p.stderr
    assert sweep.results()[0]["stdout"] == "MUJOCO_GL=egl"
    assert sweep.results()[0]["model_name"] == "run"


@pytest.mark.parametrize("config,fragment", [
    ({"grids": {}}, "unknown key 'grids'"),
    ({"grid": {"lr": 1}}, "'grid' value of 'lr' must be a non-empty list"),
    ({"grid": {"lr": []}}, "'grid' value of 'lr' must be a non-empty list"),
    ({"arg_style": "yaml"}, "'arg_style' must be one of hydra, argparse, equals"),
    ({"env": {"A": 1}}, "'env' value of 'A' must be a string"),
    ({"runs": {}}, "'runs' must be a non-empty array"),
    ({"runs": [{"gpus_per_run": 0}]}, "'gpus_per_run' must be a whole number >= 1"),
    ({"gpus_per_run": "2"}, "'gpus_per_run' must be a whole number"),
    ({"defaults": {"a b": 1}}, "'defaults': key 'a b'"),
])
def test_object_form_errors(sweep, config, fragment):
    sweep.config(config)
    p = sweep.run()
    assert p.returncode == 2 and fragment in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("train_sweep: error: train_sweep_config.json: ")


def test_hydra_sweep_overrides_on_the_command_line(sweep):
    pytest.importorskip("hydra")
    sweep.config([{"model": "m"}])
    p = sweep.run("--dry-run", "lr=1e-3,1e-4", "depth=range(2,5)", "--gpus", "0", "opt=adam,sgd", "seed=0",
                  "name='a,b'", "--disable-gpu-monitoring")
    assert p.returncode == 0, p.stderr
    got = names(p)
    assert len(got) == 12 and got[0] == "model_m_lr_0.001_depth_2_opt_adam" and got[-1] == "model_m_lr_0.0001_depth_4_opt_sgd"
    assert "12 run(s)" in p.stdout
    assert "model=m lr=0.001 depth=2 opt=adam seed=0 name=a,b" in p.stdout  # plain overrides: every run, not in names
    p = sweep.run("--dry-run", "lr=interval(0,1)")
    assert p.returncode == 2 and "interval() needs a search" in p.stderr
    p = sweep.run("--dry-run", "~lr")
    assert p.returncode == 2
    p = sweep.run("--dry-run", "lr=[1,2")
    assert p.returncode == 2 and p.stderr.startswith("train_sweep: error: override 'lr=[1,2'")


def test_set_beats_the_config_and_reads_json(sweep):
    sweep.config({"defaults": {"batch_size": 64, "device": "cpu"}, "runs": [{"lr": 1, "batch_size": 32}],
                  "grid": {"wandb": [True]}})
    p = sweep.run("--dry-run", "--set", "batch_size=8", "--set", "device=cuda", "--set", "wandb=false")
    assert p.returncode == 0, p.stderr
    assert "batch_size=8 device=cuda lr=1 wandb=false" in p.stdout


def test_max_runs_and_shuffle(sweep):
    sweep.config({"grid": {"a": list(range(10)), "b": list(range(10))}})
    first = names(sweep.run("--dry-run", "--max-runs", "5", "--shuffle", "--seed", "3"))
    assert len(first) == 5 and first == names(sweep.run("--dry-run", "--max-runs", "5", "--shuffle", "--seed", "3"))
    assert first != names(sweep.run("--dry-run", "--max-runs", "5", "--shuffle", "--seed", "4"))
    assert names(sweep.run("--dry-run", "--max-runs", "2")) == ["a_0_b_0", "a_0_b_1"]


def test_configs_batch_with_globs_and_set(sweep):
    (sweep.dir / "cfg").mkdir()
    for stem in ("easy_first", "hard_first"):
        (sweep.dir / "cfg" / f"{stem}.py").write_text(f"# {stem}\nbatch_size = 4\n")
    p = sweep.run("--configs", "cfg/*.py", "--set", "batch_size=8", "--arg-style", "equals")
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["model_name"] for r in sweep.results()] == ["easy_first", "hard_first"]
    info = sweep.fake("easy_first")
    assert info["argv"] == ["cfg/easy_first.py", "--batch_size=8"]
    assert (sweep.dir / "outputs/easy_first/config_used.py").read_text() == "# easy_first\nbatch_size = 4\n"
    assert sweep.results()[0]["config_file"] == "cfg/easy_first.py"
    p = sweep.run("--configs", "cfg/*.yaml")
    assert p.returncode == 2 and "--configs 'cfg/*.yaml': no file matches" in p.stderr
    # a new user's pass: the refusal gave a fixed example ('sweep overrides (a=1,2)'), not the key typed
    assert_one_line_error(sweep.run("--configs", "cfg/*.py", "lr=1,2", "--dry-run"),
                          "the sweep override lr=... cannot be combined with --configs; use --set")


def test_configs_sweep_does_not_name_the_default_config_file(sweep):
    """issue 10 bug 10: with --configs, neither the first event line nor outputs/sweep.json name
    train_sweep_config.json (there is none); sweep.json names the --configs files."""
    sweep.gpus.set(count=1)
    (sweep.dir / "a.py").write_text("lr = 1\n")
    (sweep.dir / "b.py").write_text("lr = 2\n")
    p = sweep.run("--configs", "a.py", "b.py")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not (sweep.dir / "train_sweep_config.json").exists()
    assert "train_sweep_config.json" not in p.stdout, p.stdout
    text = (sweep.dir / "outputs" / "sweep.json").read_text()
    settings = json.loads(text)
    assert settings.get("config_file") != "train_sweep_config.json", settings
    assert "train_sweep_config.json" not in text, text
    assert "a.py" in text


# -- a sweep said on the command line: no config file, no hydra-core needed --------------------------------------

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
    # a docs review: a plain override over the grid said "'runs' entry [0] with lr=1 and ... are identical runs"
    p = sweep.run("--dry-run", "lr=3")
    assert p.returncode == 2 and "the override lr=...: 'lr' is swept by train_sweep_config.json's 'grid'" in p.stderr
    # and a bare ~key (a Hydra deletion) was an "unrecognized argument", the same with =value was explained
    p = sweep.run("--dry-run", "~wandb")
    assert p.returncode == 2 and "deleting a key (~key) is not supported" in p.stderr, p.stderr


# -- grids of a billion runs -------------------------------------------------------------------------------------

def _billion_grid(sweep) -> None:
    values = list(range(1000))
    sweep.config({"grid": {"a": values, "b": values, "c": values}})


def test_a_value_listed_twice_in_a_config_grid_is_named(sweep):
    """From a new user's pass: {"grid": {"lr": [1, 1]}} said "'runs' entry [0] with lr=1 and 'runs' entry [0] with
    lr=1 are identical runs": the file has no 'runs', and one entry was named twice."""
    sweep.config({"grid": {"lr": [1, 1], "depth": [2]}})
    p = sweep.run("--dry-run")
    assert_one_line_error(p, "train_sweep_config.json: 'grid' value of 'lr' must be a non-empty list of values, none "
                             "twice")


def test_a_billion_run_grid_is_refused_fast(sweep):
    """issue 16: a grid of 10^9 combinations was expanded in memory (minutes, then MemoryError; here under
    a 2 GB address-space cap). Contract: exit 2 within ~10 s, one line with the count and --max-runs."""
    _billion_grid(sweep)
    p = cli(sweep, timeout=25, memory_gb=2)
    assert_one_line_error(p, "--max-runs")
    assert "1000000000" in p.stderr or "1,000,000,000" in p.stderr, p.stderr
    assert p.elapsed < 20, p.elapsed


@pytest.mark.parametrize("shuffle", [False, True], ids=["first-3", "shuffled-3"])
def test_a_billion_run_grid_with_max_runs(sweep, shuffle):
    """issue 16: `--max-runs 3 [--shuffle] --dry-run` on a 10^9 grid expanded all of it first. Contract:
    exit 0 within ~10 s, listing 3 runs."""
    _billion_grid(sweep)
    p = cli(sweep, "--max-runs", "3", *(["--shuffle"] if shuffle else []), "--dry-run", timeout=25, memory_gb=2)
    no_traceback(p)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert re.search(r"\b3 run", p.stdout), p.stdout[-3000:]
    assert p.elapsed < 20, p.elapsed
