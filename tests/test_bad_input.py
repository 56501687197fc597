"""Every bad input: one line on stderr naming the file/entry/key, exit 2, no traceback, nothing launched."""

from __future__ import annotations

import os

import pytest

from train_sweep import UserError, load_spec, parse_gpu_ids


def check_refused(p, *fragments: str) -> None:
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("train_sweep: error: ")
    assert "Traceback" not in p.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize(
    "text,fragments",
    [
        ('[{"lr": 0.1},\n {"lr": }]', ["train_sweep_config.json: invalid JSON at line 2, column 9"]),
        ('{"lr": 0.1}', ["train_sweep_config.json: unknown key 'lr' (known: command, arg_style"]),
        ('"runs"', ["expected a JSON array of runs or an object, got a string"]),
        ("[]", ["the list of runs is empty"]),
        ('[{"lr": 1}, 5]', ["entry [1] must be an object of hyperparameters, got a number"]),
        ('[{"lr": 1}, ["a"]]', ["entry [1] must be an object", "got an array"]),
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


def test_config_file_is_a_folder(sweep):
    (sweep.dir / "cfgdir").mkdir()
    check_refused(sweep.run("--config-file", "cfgdir"), "cfgdir: is a folder")


def test_missing_train_script(sweep):
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--command", "python train.py"), "train script not found: train.py")
    check_refused(sweep.run("--command", "no-such-program-xyz --flag"), "not found on PATH: no-such-program-xyz")
    check_refused(sweep.run("--command", "python 'unclosed"), "--command", "No closing quotation")
    assert not sweep.events()


def test_unknown_gpu(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"a": 1}])
    check_refused(sweep.run("--gpus", "0", "5"), "GPU 5 not found: NVML reports 2 GPU(s), ids 0-1")
    check_refused(sweep.run("--gpus", "zero"), "'zero' is not a GPU id")
    check_refused(sweep.run("--gpus", "1", "1"), "GPU 1 is listed twice")


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


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--timeout", "-1"], "--timeout: '-1' must be a number >= 0"),
        (["--max-processes-per-gpu", "0"], "must be at least 1"),
        (["--memory-threshold-gb", "abc"], "'abc' is not a number"),
        (["--abbrev", "noequals"], "--abbrev 'noequals': expected KEY=SHORT"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags(sweep, args, fragment):
    sweep.config([{"a": 1}])
    check_refused(sweep.run(*args), fragment)


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
