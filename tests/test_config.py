"""Saying the sweep: the object config form, grids, Hydra sweep overrides, --set, names, argument styles,
--configs, runs of several GPUs, gpu_memory_gb packing, --max-parallel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_sweep import Entry, SweepSpec, UserError, build_runs, expand, render_args, select_entries, template_name

HERE = Path(__file__).resolve().parent


def names(p) -> list[str]:
    return [line.split("│")[2].strip() for line in p.stdout.splitlines() if line.startswith("│") and
            line.split("│")[1].strip().isdigit()]


# -- expansion (pure) ---------------------------------------------------------------------------


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


def test_names_stay_stable_when_a_run_is_added():
    spec = SweepSpec("s.json", [{"lr": 1}], form="object", defaults={"epochs": 5})
    before = build_runs(expand(spec), ["x"], Path("/tmp/o"))[0].name
    spec.runs.append({"lr": 2, "epochs": 7})
    after = build_runs(expand(spec), ["x"], Path("/tmp/o"))
    assert after[0].name == before == "lr_1" and after[1].name == "lr_2_epochs_7"


# -- argument styles against real parsers ---------------------------------------------------------


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


# -- the object form and the command line, end to end ---------------------------------------------


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


# -- placement: several GPUs, declared memory, --max-parallel --------------------------------------


def spans(sweep) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in sweep.events():
        out.setdefault(e["name"], {})[e["event"]] = e["t"]
        out[e["name"]]["gpu"] = e["gpu"]
    return out


def test_a_two_gpu_run_waits_for_two_free_gpus_while_others_keep_running(sweep):
    sweep.gpus.set(count=3)
    sweep.config({"runs": [{"n": "a", "sleep": 1.0}, {"n": "b", "sleep": 2.0}, {"n": "wide", "sleep": 1.0,
                  "gpus_per_run": 2}, {"n": "c", "sleep": 0.5}]})
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    s = spans(sweep)
    wide = s["n_wide_sleep_1"]
    assert len(wide["gpu"].split(",")) == 2
    assert wide["start"] >= s["n_a_sleep_1"]["end"] - 0.05  # waited for a second free GPU
    for name, span in s.items():  # nothing else ran on its GPUs while it ran
        if name != "n_wide_sleep_1" and set(span["gpu"].split(",")) & set(wide["gpu"].split(",")):
            assert span["end"] <= wide["start"] + 0.05 or span["start"] >= wide["end"] - 0.05, name
    assert sweep.results()[2]["gpu_id"] == [int(g) for g in wide["gpu"].split(",")]
    p = sweep.run("--gpus", "0", "--rerun")
    assert p.returncode == 2 and "needs 2 GPUs; the sweep has 1" in p.stderr


def test_gpu_memory_gb_packs_without_guessing_processes_per_gpu(sweep):
    sweep.gpus.set(count=1, total_mb=81920, used_mb=500)
    sweep.config({"gpu_memory_gb": 30, "runs": [{"n": i, "mem_mb": 30000, "mem_after": 0.5, "sleep": 1.5}
                                                for i in range(4)]})
    p = sweep.run("--max-processes-per-gpu", "8", "--memory-threshold-gb", "79")
    assert p.returncode == 0, p.stdout + p.stderr
    s = sorted(spans(sweep).values(), key=lambda x: x["start"])
    assert s[1]["start"] - s[0]["start"] < 0.5  # no waiting for the first one's memory: it was declared
    for t in (x["start"] + 0.01 for x in s):
        assert sum(x["start"] <= t < x["end"] for x in s) <= 2  # 80 GB: two 30 GB runs, never three


def test_max_parallel_one_runs_one_after_another(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 0.3} for i in range(3)])
    assert sweep.run("--max-parallel", "1", "--max-processes-per-gpu", "2").returncode == 0
    s = sorted(spans(sweep).values(), key=lambda x: x["start"])
    assert all(b["start"] >= a["end"] - 0.02 for a, b in zip(s, s[1:]))
