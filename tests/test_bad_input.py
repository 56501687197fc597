"""Every bad input: one line on stderr naming the file/entry/key, exit 2, no traceback, nothing launched. Bad
config files and values (also ones Python's json accepts or chokes on), flags (a misspelled one is named),
GPUs, output folders and results files (a symlink loop, '/', the config file or the journal itself), run
names that are the sweep's own files, a config file without end, a full disk for the results lock."""

from __future__ import annotations

import os
import random
import shutil
import stat
from pathlib import Path

import pytest

from conftest import assert_one_line_error, check_refused, cli
from train_sweep import UserError, load_spec, parse_gpu_ids


@pytest.mark.parametrize(
    "text,fragments",
    [
        ('[{"lr": 0.1},\n {"lr": }]', ["train_sweep_config.json: invalid JSON at line 2, column 9"]),
        ('{"lr": 0.1}', ["train_sweep_config.json: unknown key 'lr' (known: command, arg_style"]),
        ('"runs"', ["expected a JSON array of runs or an object, got 'runs'"]),
        ("[]", ["the list of runs is empty"]),
        ('[{"lr": 1}, 5]', ["entry [1] must be an object of hyperparameters, got 5"]),
        ('[{"lr": 1}, ["a"]]', ["entry [1] must be an object", "got [\"a\"]"]),
        ('{"runs": {}}', ["'runs' must be a non-empty array of objects, got {}"]),  # it said "a number"
        ('[{"": 1}]', ["entry [0] has an empty key"]),
        ('[{"learning rate": 1}]', ["entry [0]: key 'learning rate' may not contain spaces"]),
        ('[{"a=b": 1}]', ["entry [0]: key 'a=b'"]),
        ('[{"--lr": 1}]', ["key '--lr' may not start with '-'"]),
        ('[{"a": 1}, {"a": 2}, {"a": 1}]', ["entry [0] and entry [2] are identical runs"]),
        ('[{"a": 1, "a": 2}]', ["key 'a' appears twice in one object"]),
        ("\xff\xfe", ["cannot read config file"]),
    ],
)
def test_bad_config(sweep, text, fragments):
    path = sweep.dir / "train_sweep_config.json"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    p = sweep.run()
    check_refused(p, *fragments)
    assert not (sweep.dir / "outputs").exists() and not sweep.events()


def test_missing_config_file(sweep):
    check_refused(sweep.run("--config-file", "nope.json"), "nope.json: config file not found")


def test_a_program_on_the_path_the_config_gives_the_runs_is_found(sweep):
    """The config's env sets the runs' PATH (a conda environment's bin): the runs find the program there, but the
    sweep looked for it on its own PATH and refused to start ('train command not found on PATH')."""
    bin_ = sweep.dir / "envbin"
    bin_.mkdir()
    (bin_ / "mytrain").write_text("#!/bin/sh\necho val_loss=0.5\n")
    (bin_ / "mytrain").chmod(0o755)
    sweep.config({"command": "mytrain", "env": {"PATH": f"{bin_}:/usr/bin:/bin"}, "runs": [{"a": 1}]})
    p = sweep.run("--no-live", "--metric", "val_loss", trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["metrics"]["val_loss"] for r in sweep.results()] == [0.5]
    sweep.config({"command": "mytrain", "runs": [{"a": 1}]})  # without it, not found: as before
    check_refused(sweep.run("--no-live", "--rerun", trainer=False), "not found on PATH: mytrain")


def test_config_file_is_a_folder(sweep):
    (sweep.dir / "cfgdir").mkdir()
    check_refused(sweep.run("--config-file", "cfgdir"), "cfgdir: is a folder")


def test_missing_train_script(sweep):
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--command", "python train.py"), "train script not found: train.py")
    check_refused(sweep.run("--command", "no-such-program-xyz --flag"), "not found on PATH: no-such-program-xyz")
    check_refused(sweep.run("--command", "python 'unclosed"), "--command", "No closing quotation")
    assert not sweep.events()
    # a dry run (how a sweep is checked before it runs) said nothing of it: it says so, and still shows the runs
    p = sweep.run("--command", "python train.py", "--dry-run")
    assert p.returncode == 0 and "1 run(s)" in p.stdout, p.stdout + p.stderr
    assert p.stderr.startswith("train_sweep: warning: train script not found: train.py") and \
        "the sweep itself would refuse to start" in p.stderr, p.stderr
    assert not (sweep.dir / "outputs").exists()


def test_unknown_gpu(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--gpus", "0", "5"), "GPU 5 not found: NVML reports 2 GPU(s), ids 0-1")
    check_refused(sweep.run("--gpus", "zero"), "'zero' is not a GPU id")
    check_refused(sweep.run("--gpus", "1", "1"), "GPU 1 is listed twice")
    check_refused(sweep.run("--gpus", "\u0663"), "is not a GPU id")  # an Arabic-Indic 3: was GPU 3
    # an adversarial pass: --gpus "$GPUS" unset said 'run [0] run needs 1 GPUs; the sweep has 0'
    check_refused(sweep.run("--gpus", ""), "--gpus: '' is not a GPU id")


def test_a_key_set_twice_with_set_is_refused(sweep):
    """An adversarial pass: --set x=1 --set x=2 kept the last value without a word (x=1 x=2 is refused)."""
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--set", "x=1", "--set", "x=2"), "--set 'x=2': 'x' is set twice")


@pytest.mark.parametrize("command", ["", "   ", "python 'unclosed"])
def test_a_bad_command_in_the_config_names_the_file(sweep, command):
    """A helper's pass: the config's 'command' with an open quote was blamed on --command, and an empty one ran
    `python train.py` instead, without a word. Both are the file's key now, as --command '' is the flag."""
    sweep.config({"command": command, "runs": [{"a": 1}]})
    check_refused(sweep.run(), "train_sweep_config.json: 'command' must be a command line")
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--command", command), "argument --command")
    assert not sweep.events()


@pytest.mark.parametrize("flag", [["--checkpoint-glob", "*.pt"], ["--keep-checkpoints"]])
def test_checkpoint_flags_without_top_k_are_refused(sweep, flag):
    """They only act with --top-k: alone they were dropped without a word (a user who meant to keep the best
    checkpoints kept all of them)."""
    sweep.config([{"a": 1}])
    check_refused(sweep.run(*flag, "--metric", "loss"), f"{flag[0]} is for --top-k")


def test_an_empty_study_name_is_refused(sweep):
    """An adversarial pass: --study-name '' took the shared default study, train_sweep, other users' sweeps' too."""
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--storage", "postgresql://u@127.0.0.1:1/db", "--study-name", "", "--metric", "loss"),
                  "--study-name '': a study's name is not empty")


def test_an_empty_storage_url_is_refused(sweep):
    """An adversarial pass: --storage "$DB_URL" with the variable unset ran a single-host sweep without a word (on
    N hosts, each ran the whole sweep); with --study-name it said --study-name needs --storage."""
    sweep.config([{"a": 1}])
    for extra in ([], ["--study-name", "s"]):
        check_refused(sweep.run("--storage", "", *extra, "--metric", "loss"),
                      "--storage '': the database URL is empty")
    assert not (sweep.dir / "outputs").exists()


def test_disable_monitoring_needs_gpus(sweep):
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--disable-gpu-monitoring"), "--disable-gpu-monitoring needs --gpus")


def test_unwritable_output_folder(sweep):
    sweep.config([{"a": 1}])
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses even root
        target = "/sys/train_sweep_test_out"
    else:
        (sweep.dir / "locked").mkdir(mode=0o500)
        target = "locked/out"
    check_refused(sweep.run("--output-dir", target), f"{target}: output folder cannot be written")


def test_output_folder_that_is_a_file(sweep):
    sweep.config([{"a": 1}])
    (sweep.dir / "afile").write_text("")
    check_refused(sweep.run("--output-dir", "afile/out"), "afile/out: output folder cannot be written")
    check_refused(sweep.run("--output-file", "afile/results.json"), "folder of --output-file cannot be written")
    # a new user's pass: refused over its --output-file, the sweep had made its new --output-dir already
    check_refused(sweep.run("--output-dir", "o6", "--output-file", "afile/results.json"),
                  "folder of --output-file cannot be written")
    assert not (sweep.dir / "o6").exists()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--timeout", "-1"], "--timeout: '-1' must be a finite number >= 0"),
        (["--timeout", "inf"], "--timeout: 'inf' must be a finite number >= 0"),
        # one rule, one wording: -1 and 0 were told "a number >= 0" and "greater than 0", which contradict
        (["--search-hours", "-1"], "--search-hours: '-1' must be a finite number > 0"),
        (["--search-hours", "0"], "--search-hours: '0' must be a finite number > 0"),
        (["--max-processes-per-gpu", "0"], "must be at least 1"),
        (["--memory-threshold-gb", "abc"], "'abc' is not a number"),
        (["--abbrev", "noequals"], "--abbrev 'noequals': expected KEY=SHORT"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags(sweep, args, fragment):
    sweep.config([{"a": 1}])
    check_refused(sweep.run(*args), fragment)


def test_a_misspelled_flag_suggests_the_right_one(sweep):
    p = sweep.run("--metrc", "loss")
    assert p.returncode == 2 and "(did you mean --metric?)" in p.stderr and len(p.stderr.splitlines()) == 1
    # a new user's pass: '--lr=3' (a hyperparameter given as a flag) was told 'did you mean --help?', as every
    # flag shares the '--' with it
    p = sweep.run("--lr=3")
    assert p.returncode == 2 and p.stderr.strip() == (
        "train_sweep: error: unrecognized arguments: --lr=3 (did you mean lr=3, an override?) (see --help)"), p.stderr


def test_dict_value_with_an_unpassable_key(sweep):
    sweep.config([{"d": {"a b": 1}}])
    check_refused(sweep.run(), "dict key 'a b' cannot be passed to Hydra")


def test_load_config_reports_line_and_column(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[\n  {"a": 1,}\n]')
    with pytest.raises(UserError, match=r"c.json: invalid JSON at line 2, column 11"):
        load_spec(path)


def test_parse_gpu_ids():
    assert parse_gpu_ids(None) is None
    assert parse_gpu_ids(["all"]) is None
    assert parse_gpu_ids(["0", "2"]) == [0, 2]
    assert parse_gpu_ids(["0,1", "3"]) == [0, 1, 3]


# -- values and paths that would do harm -------------------------------------------------------------------------

CONFIG = "train_sweep_config.json"

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "text,fragments",
    [
        pytest.param('[{"big": 1' + "0" * 4999 + "}]", [CONFIG], id="5000-digit-integer"),
        pytest.param('[{"deep": ' + DEEP + "}]", [CONFIG], id="100000-deep-list"),
        pytest.param(r'[{"s": "x\ud800y"}]', [CONFIG], id="lone-surrogate"),
        pytest.param('[{"a": 1}, {"lossw": NaN}]', [CONFIG, "[1]", "lossw"], id="NaN"),
        pytest.param('[{"a": 1}, {"lossw": Infinity}]', [CONFIG, "[1]", "lossw"], id="Infinity"),
        pytest.param('[{"a": 1}, {"lossw": -Infinity}]', [CONFIG, "[1]", "lossw"], id="-Infinity"),
        pytest.param('{"runs": [{"a": 1}], "env": {"MY=VAR": "x"}}', [CONFIG, "env"], id="env-key-with-equals"),
        pytest.param(r'{"runs": [{"a": 1}], "env": {"MY\u0000VAR": "x"}}', [CONFIG, "env"], id="env-key-with-NUL"),
        pytest.param(r'[{"a": 1}, {"myhp": "x\u0000y"}]', [CONFIG, "[1]", "myhp"], id="NUL-in-value"),
        # from an adversarial pass: these two were a traceback when the run started (exit 1)
        pytest.param(r'[{"a": 1}, {"my\u0000hp": 1}]', [CONFIG, "[1]", "my\\x00hp", "NUL"], id="NUL-in-key"),
        pytest.param(r'{"command": "python train.py x\u0000", "runs": [{"a": 1}]}', [CONFIG, "'command'", "no NUL"],
                     id="NUL-in-command"),
        pytest.param('[{"a": 1}, {"a": 2}, {"a": 3, "dupk": 1, "dupk": 2}]', ["[2]", "dupk"],
                     id="duplicate-key-in-entry-2"),
        # from an adversarial pass: a key twice in these objects was taken at its last value without a word
        pytest.param('{"search": {"n_trials": 2, "metric": "loss", "params": {"lr": {"type": "float", "low": 0, '
                     '"high": 1}, "lr": {"type": "int", "low": 0, "high": 5}}}}',
                     [CONFIG, "'search': 'params': key 'lr' appears twice"], id="duplicate-key-in-search-params"),
        pytest.param('{"search": {"n_trials": 2, "n_trials": 5, "metric": "loss", "params": {"lr": {"type": "float", '
                     '"low": 0, "high": 1}}}}', [CONFIG, "'search': key 'n_trials' appears twice"],
                     id="duplicate-key-in-search"),
        pytest.param('{"gpu_memory_gb": 1e400, "runs": [{"a": 1}]}', [CONFIG, "'gpu_memory_gb' must be a finite"],
                     id="infinite-gpu-memory"),  # (JSON reads 1e400 as inf: 'needs inf GB' when placed)
        pytest.param('{"env": {"A": "1", "A": "2"}, "runs": [{"a": 1}]}', [CONFIG, "'env': key 'A' appears twice"],
                     id="duplicate-key-in-env"),
        pytest.param('{"slurm": {"params": {"x": 1, "x": 2}}, "runs": [{"a": 1}]}',
                     [CONFIG, "'slurm': 'params': key 'x' appears twice"], id="duplicate-key-in-slurm-params"),
    ],
)
def test_bad_config_values_are_one_line(sweep, text, fragments):
    """issue 16: a config value Python's json accepts or chokes on (huge integer, deep nesting, lone
    surrogate, NaN/Infinity, '=' or NUL in an env name, NUL in a value, a duplicate key) is refused
    before anything starts: exit 2, one line naming the file (and entry and key where it has them)."""
    (sweep.dir / CONFIG).write_text(text)
    p = cli(sweep)
    assert_one_line_error(p, *fragments)
    assert not sweep.events()


def _loop(sweep) -> str:
    os.symlink("loop", sweep.dir / "loop")
    return "loop"


@pytest.mark.parametrize(
    "flag,value,fragments",
    [
        pytest.param("--output-dir", _loop, ["loop"], id="output-dir-symlink-loop"),
        pytest.param("--output-file", _loop, ["loop"], id="output-file-symlink-loop"),
        pytest.param("--output-file", ".", ["--output-file"], id="output-file-dot"),
        pytest.param("--output-file", "", ["--output-file"], id="output-file-empty"),
        pytest.param("--output-file", "/", ["--output-file"], id="output-file-root"),
        pytest.param("--output-file", "outputs/journal.jsonl", ["journal.jsonl"], id="output-file-is-the-journal"),
    ],
)
def test_bad_output_paths(sweep, flag, value, fragments):
    """issue 16: an output folder or results file that is a symlink loop, '.', '', '/', or a file the
    sweep itself owns (the journal) is refused up front: exit 2, one line, nothing started."""
    sweep.config([{"a": 1}])
    if callable(value):
        value = value(sweep)
    p = cli(sweep, flag, value)
    assert_one_line_error(p, *fragments)
    assert not sweep.events()


def test_output_file_equal_to_the_config_file_is_refused_and_the_config_kept(sweep):
    """issue 16 (severe 1): `--output-file` naming the config file would overwrite the user's config with
    results. Refused (exit 2, one line naming the file); the config is byte-for-byte unchanged."""
    path = sweep.config([{"a": 1}, {"a": 2}])
    before = path.read_bytes()
    p = cli(sweep, "--output-file", CONFIG)
    assert path.read_bytes() == before
    assert_one_line_error(p, CONFIG)
    assert not sweep.events()


@pytest.mark.parametrize("kind", ["fifo", "device", "set_aside_journal"])
def test_output_file_that_is_a_fifo_a_device_or_a_set_aside_journal_is_refused(sweep, kind):
    """The results are written by a rename over --output-file: a FIFO or a device node there (`/dev/null`) was
    replaced by a plain file, and a lock file made beside it (in /dev); `outputs/journal.jsonl~1`, the journal
    --rerun had just set aside, was overwritten. Refused now: one line, nothing touched, nothing run."""
    sweep.config([{"a": 1}])
    if kind == "fifo":
        target = sweep.dir / "results.fifo"
        os.mkfifo(target)
    elif kind == "device":
        target = sweep.dir / "null"
        try:
            os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of its own: never the real one
        except PermissionError:
            pytest.skip("making a device node needs root")
    else:
        assert cli(sweep).returncode == 0
        assert cli(sweep, "--rerun").returncode == 0
        target = sweep.dir / "outputs" / "journal.jsonl~1"
    before = target.lstat()
    kept = target.read_bytes() if kind == "set_aside_journal" else None
    p = cli(sweep, "--output-file", str(target), "--rerun")
    assert_one_line_error(p, str(target))
    after = target.lstat()
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert kept is None or target.read_bytes() == kept
    assert not (target.parent / f".{target.name}.lock").exists()


@pytest.mark.parametrize("name", ["journal.jsonl", "sweep.json", "study.log"])
def test_a_folder_where_the_sweep_keeps_a_file_is_one_line(sweep, name):
    """outputs/journal.jsonl made a folder (a mistaken mkdir, a sync tool): an IsADirectoryError traceback.
    study.log is the study's, and a list without a pruner opens none: a folder of that name is no matter there."""
    sweep.config([{"a": 1}])
    (sweep.dir / "outputs" / name).mkdir(parents=True)
    if name == "study.log":
        assert cli(sweep).returncode == 0
        pytest.importorskip("optuna")
        p = cli(sweep, "--pruner", "median", "--metric", "loss")
    else:
        p = cli(sweep)
    assert_one_line_error(p, f"outputs/{name} is not a file")


def test_output_dir_root_is_refused(sweep):
    """issue 16: `--output-dir /` would put run folders, the journal and the lock in /. Refused: exit 2,
    one line. (As root the old code wrote into /; this test removes what it made there.)"""
    name = f"h16_probe_{os.getpid()}_{random.randrange(10**9)}"
    mine = ["journal.jsonl", "sweep.json", "sweep.log", ".train_sweep.lock", ".train_sweep.lock.pid", name]
    if any(os.path.lexists(f"/{n}") for n in mine):
        pytest.skip("/ already holds a file that a sweep in / would write")
    sweep.config([{"a": 1}])
    try:
        p = cli(sweep, "--output-dir", "/", "--name-template", name)
        assert_one_line_error(p)
        assert not sweep.events()
    finally:
        for n in mine:
            target = Path("/") / n
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.lexists(target):
                target.unlink()


def test_set_key_starting_with_dash_is_refused(sweep):
    """issue 16: `--set=-rf=1` made a hyperparameter `-rf` that reached the train command as `-rf=1`.
    A key starting with '-' is refused: exit 2, one line naming the key."""
    sweep.config([{"a": 1}])
    p = cli(sweep, "--set=-rf=1")
    assert_one_line_error(p, "-rf")
    assert not sweep.events()


@pytest.mark.parametrize("name", ["journal.jsonl", "sweep.log", "sweep.json"])
def test_run_named_like_a_file_the_sweep_owns_is_refused(sweep, name):
    """issue 16: a run whose folder would be a file the sweep owns in the output folder
    (`--name-template journal.jsonl`) is refused: exit 2, one line naming it."""
    sweep.config([{"a": 1}])
    p = cli(sweep, "--name-template", name)
    assert_one_line_error(p, name)
    assert not sweep.events()


@pytest.mark.parametrize("template", ["{p", "a}", "lr{}", "{a{b}"])
def test_name_template_with_a_brace_without_its_pair_is_refused(sweep, template):
    """'{p' named every run 'p' (the brace dropped by the name's cleaning): a typo the user never saw."""
    sweep.config([{"p": 1}, {"p": 2}])
    p = cli(sweep, "--name-template", template)
    assert_one_line_error(p, f"--name-template {template!r}: each {{ and }} goes around a hyperparameter key")
    assert not sweep.events()


@pytest.mark.parametrize("template", ["{p", "a}", "lr{}", "{a{b}"])
def test_a_config_s_name_template_with_a_brace_without_its_pair_names_the_file(sweep, template):
    """The config's name_template was refused as '--name-template ...', a flag the user never gave."""
    sweep.config({"runs": [{"p": 1}, {"p": 2}], "name_template": template})
    p = cli(sweep)
    assert_one_line_error(p, f"train_sweep_config.json: 'name_template' must be a string whose {{ and }} go around a "
                             f"hyperparameter key or index, got {template!r}")
    assert not sweep.events()


def test_an_output_folder_that_cannot_be_made_leaves_no_results_folder_behind(sweep):
    """From an adversarial pass: '--output-dir afile/sub' (afile a file) was refused after the new folder of
    --output-file had been made, and left it."""
    sweep.config([{"a": 1}])
    (sweep.dir / "afile").write_text("")
    p = cli(sweep, "--output-file", "newres/deep/r.json", "--output-dir", "afile/sub")
    assert_one_line_error(p, "afile/sub: output folder cannot be written")
    assert not (sweep.dir / "newres").exists()


# -- inputs without end, a full disk -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom"])
def test_a_config_file_without_end_is_refused_with_its_size(sweep, path):
    """issue 24 (7): --config-file /dev/zero read without limit (a MemoryError traceback, or all the RAM);
    a config is read to a bound and refused past it, in one line."""
    p = sweep.run("--config-file", path, "--dry-run", timeout=60)
    check_refused(p, path, "larger than")


def test_a_full_disk_for_the_results_lock_is_one_line(sweep):
    """issue 24 (12): --output-file where no byte can be written (a full disk; here a file-size limit of 0):
    writing the PID into the results file's lock raised an uncaught OSError (a traceback, exit 1); nothing
    had started, so it is one line and exit 2."""
    import resource
    import subprocess

    sweep.gpus.set(count=1)
    sweep.config([{"n": 0}])

    def no_bytes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    p = subprocess.run(sweep.argv("--no-live"), cwd=sweep.dir, env=sweep.env(), capture_output=True, text=True,
                       timeout=60, preexec_fn=no_bytes)
    check_refused(p, "train_sweep_results.json", "cannot")
    assert not sweep.started()
