"""Run names: readable, deterministic, safe as folder names (values that look like paths stay inside the
output folder), unique, and stable: a run keeps its name when runs are added."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import starts
from train_sweep import (
    MAX_NAME_BYTES, SweepSpec, UserError, build_runs, clean, dedupe_names, expand, params_hash, run_name,
    validate_entries,
)


SEED_ENTRY = {
    "env": "point_maze", "frameskip": 5, "num_hist": 3, "training.epochs": 50, "bisim_latent_dim": 512,
    "bisim_hidden_dim": 1024, "model.bypass_dinov2": True, "training.bisim_lr": 5e-6, "var_loss_coef": 1.0,
    "num_pcs": 10, "VC_target": 1, "PCA1_loss_target": 0.01, "PCAloss_epoch": 50,
}


SEED_ABBREV = {
    "env": "", "frameskip": "fs", "num_hist": "hist", "bisim_latent_dim": "bisim", "bisim_hidden_dim": "hidden",
    "model.bypass_dinov2": "no_dino", "training.bisim_lr": "lr", "var_loss_coef": "varloss_coef",
    "num_pcs": "numpcs", "VC_target": "vctarget", "PCA1_loss_target": "pca1target", "PCAloss_epoch": "pcaepoch",
}


SAFE = re.compile(r"[A-Za-z0-9._=+-]+")


def test_seed_style_name_with_an_abbreviation_map():
    assert run_name(SEED_ENTRY, SEED_ABBREV) == (
        "point_maze_fs_5_hist_3_epochs_50_bisim_512_hidden_1024_no_dino_lr_5e-06_varloss_coef_1_numpcs_10_"
        "vctarget_1_pca1target_0.01_pcaepoch_50"
    )


def test_default_names_use_the_last_dotted_part_of_each_key():
    assert run_name({"training.epochs": 50, "model.bypass_dinov2": True, "lr": 5e-6}) == (
        "epochs_50_bypass_dinov2_lr_5e-06"
    )
    assert run_name({"use_amp": False}) == "no_use_amp"
    assert run_name({"layers": [64, 64], "opt": None}) == "layers_64-64_opt_none"
    assert run_name({}) == "run"


@pytest.mark.parametrize("text,expected", [
    ("a b/c", "a_b_c"), ("../../etc", "etc"), ("..", ""), (".hidden", "hidden"), ("x..y", "x.y"),
    ("é ✓", ""), ("k=v+1", "k=v+1"), ("-flag", "flag"), ("a___b", "a_b"),
])
def test_clean(text, expected):
    assert clean(text) == expected


@pytest.mark.parametrize("value", ["../../etc/passwd", "/", "..", "a/../../b", "\x00", "~/x", "$(rm -rf /)", "é" * 300])
def test_names_are_safe_folder_names(value):
    name = run_name({"p": value})
    assert SAFE.fullmatch(name) and ".." not in name and not name.startswith((".", "-"))
    assert len(name.encode()) <= MAX_NAME_BYTES


def test_long_names_are_cut_and_get_a_hash_of_the_full_hyperparameters():
    entry = {f"param_{i}": "x" * 20 for i in range(20)}
    name = run_name(entry)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith("_" + params_hash(entry))
    assert run_name(entry) == name  # deterministic


def unique_names(entries):
    return dedupe_names([run_name(e) for e in entries], entries)


def test_names_that_would_clash_get_hashes_and_stay_unique():
    entries = [{"s": "a b"}, {"s": "a_b"}, {"s": "A_B"}, {"s": "c"}]
    names = unique_names(entries)
    assert len(set(n.lower() for n in names)) == 4
    assert names[3] == "s_c"
    assert names[0] == "s_a_b_" + params_hash(entries[0])
    assert unique_names([{"x": 1}, {"x": 1.0}]) == ["x_1_" + params_hash({"x": 1}), "x_1_" + params_hash({"x": 1.0})]


def test_identical_entries_are_an_error_naming_both(tmp_path):
    spec = SweepSpec("cfg.json", validate_entries([{"a": 1, "b": 2}, {"a": 2}, {"b": 2, "a": 1}], "cfg.json"))
    with pytest.raises(UserError, match=r"cfg.json: entry \[0\] and entry \[2\] are identical runs"):
        build_runs(expand(spec), ["python", "train.py"], tmp_path, source="cfg.json")
    grid = SweepSpec("g.json", [{"a": 1}, {}], form="object", grid={"a": [1, 2]})
    with pytest.raises(UserError, match=r"'runs' entry \[0\] with a=1 and 'runs' entry \[1\] with a=1"):
        build_runs(expand(grid), ["python", "train.py"], tmp_path)


def test_a_run_keeps_the_name_an_earlier_sweep_gave_it(tmp_path):
    """issue 10 bug 11: adding a run whose name clashes after cleaning renames only the new one."""
    first = build_runs([{"s": "a b"}], ["python", "train.py"], tmp_path)
    assert first[0].name == "s_a_b"
    both = build_runs([{"s": "a b"}, {"s": "a_b"}], ["python", "train.py"], tmp_path,
                      known={first[0].identity: "s_a_b"})
    assert both[0].name == "s_a_b" and both[1].name == "s_a_b_" + params_hash({"s": "a_b"})
    assert build_runs([{"s": "a b"}, {"s": "a_b"}], ["python", "train.py"], tmp_path)[0].name != "s_a_b"


def test_names_stay_stable_when_a_run_is_added():
    spec = SweepSpec("s.json", [{"lr": 1}], form="object", defaults={"epochs": 5})
    before = build_runs(expand(spec), ["x"], Path("/tmp/o"))[0].name
    spec.runs.append({"lr": 2, "epochs": 7})
    after = build_runs(expand(spec), ["x"], Path("/tmp/o"))
    assert after[0].name == before == "lr_1" and after[1].name == "lr_2_epochs_7"


def test_run_folders_are_inside_the_output_folder(tmp_path):
    runs = build_runs([{"p": "../../x"}, {"p": "/etc"}], ["python", "train.py"], tmp_path / "out")
    for run in runs:
        assert run.run_dir.parent == (tmp_path / "out").resolve()
    assert runs[0].argv == ["python", "train.py", "p=../../x"]


# -- through the CLI ---------------------------------------------------------------------------------------------

def test_adding_a_run_whose_name_clashes_keeps_the_existing_runs_name(sweep):
    """issue 10 bug 11: a complete run keeps its name when a new run whose name cleans to the same text is
    added: it is skipped, the new one gets another name."""
    sweep.gpus.set(count=1)
    sweep.config([{"s": "a b"}])
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert (sweep.dir / "outputs" / "s_a_b" / "run.json").exists()
    sweep.config([{"s": "a b"}, {"s": "a_b"}])
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    results = sweep.results()
    names = [r["model_name"] for r in results]
    assert names[0] == "s_a_b", names
    assert names[1].startswith("s_a_b_") and names[1] != "s_a_b", names
    assert [r["hyperparams"] for r in results] == [{"s": "a b"}, {"s": "a_b"}]
    assert all(r["state"] == "complete" for r in results)
    assert starts(sweep) == Counter({"s_a_b": 1, names[1]: 1}), starts(sweep)


def test_values_that_look_dangerous_stay_inside_the_output_folder(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"path": "../../etc/passwd"}, {"path": "/abs/x"}, {"path": ".."}])
    p = sweep.run()
    assert p.returncode == 0, p.stderr
    for r in sweep.results():
        assert Path(r["run_dir"]).parent == sweep.dir / "outputs"
    assert sweep.fake(sweep.results()[0]["model_name"])["argv"] == ["path=../../etc/passwd"]


def test_an_automatic_name_that_is_a_file_the_sweep_keeps_gets_a_hash(sweep):
    """A hyperparameter best=true is named 'best', the folder --top-k keeps: the sweep refused to start ('give it
    another name'), though the user gave no name. An automatic name gets a hash instead, as a clash does."""
    sweep.config([{"best": True}, {"best": False}])
    p = sweep.run("--no-live")
    assert p.returncode == 0, p.stdout + p.stderr
    names = sorted(r["model_name"] for r in sweep.results())
    assert names == sorted(["best_" + params_hash({"best": True}), "no_best"]), names
    assert sweep.fake(names[0])["argv"] == ["best=true"]
