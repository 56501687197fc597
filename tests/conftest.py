"""Shared fixtures: the real CLI as a subprocess, with a fake pynvml first on PYTHONPATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SWEEP = ROOT / "train_sweep.py"
FAKE_NVML = Path(__file__).resolve().parent / "fake_nvml"
FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
sys.path.insert(0, str(ROOT))


class FakeGpus:
    """Writes the fake pynvml's state file: GPUs, their memory, which ones fail."""

    def __init__(self, folder: Path) -> None:
        self.state_file = folder / "nvml_state.json"
        self.procs_dir = folder / "gpu_procs"
        self.procs_dir.mkdir()
        self.gpus: list[dict] = []

    def set(self, count: int = 2, total_mb: int = 81920, used_mb: int | list[int] = 500, **extra) -> "FakeGpus":
        used = used_mb if isinstance(used_mb, list) else [used_mb] * count
        self.gpus = [
            {"name": f"Fake GPU {i}", "total_mb": total_mb, "used_mb": used[i], "util": 0, **extra}
            for i in range(count)
        ]
        self.save()
        return self

    def update(self, index: int, **fields) -> None:
        self.gpus[index].update(fields)
        self.save()

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gpus": self.gpus, "procs_dir": str(self.procs_dir)}))
        os.replace(tmp, self.state_file)


class Sweep:
    """One working folder for a CLI run: a config, a fake GPU state, and helpers to read what happened."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.gpus = FakeGpus(folder)
        self.log = folder / "fake_log.jsonl"

    def config(self, entries, name: str = "train_sweep_config.json") -> Path:
        path = self.dir / name
        path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
        return path

    real_nvml = False  # GPU tests set this: the real pynvml, not the fake

    def env(self, **extra) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        if not self.real_nvml:
            env["PYTHONPATH"] = os.pathsep.join([str(FAKE_NVML), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["FAKE_NVML_STATE"] = str(self.gpus.state_file)
        env["FAKE_LOG"] = str(self.log)
        env["COLUMNS"] = "200"
        env.update(extra)
        return env

    def argv(self, *args: str, trainer: bool = True) -> list[str]:
        cmd = [sys.executable, str(TRAIN_SWEEP)]
        if trainer and "--command" not in args:
            cmd += ["--command", f"python {FAKE_TRAINER}"]
        return cmd + list(args)

    def run(self, *args: str, timeout: float = 60, trainer: bool = True, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args, trainer=trainer), cwd=self.dir, env=self.env(**env),
            capture_output=True, text=True, timeout=timeout,
        )

    def start(self, *args: str, trainer: bool = True, **env) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args, trainer=trainer), cwd=self.dir, env=self.env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def results(self, name: str = "train_sweep_results.json") -> list[dict]:
        return json.loads((self.dir / name).read_text())

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def fake(self, run_name: str) -> dict:
        return json.loads((self.dir / "outputs" / run_name / "fake.json").read_text())

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def started(self) -> list[str]:
        return [e["name"] for e in self.events() if e["event"] == "start"]


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    return Sweep(tmp_path)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_dead(pids, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def run_pids(sweep: Sweep) -> list[int]:
    """Every pid the fake trainers reported: their own and their grandchildren's."""
    pids = []
    for f in (sweep.dir / "outputs").glob("*/fake.json"):
        info = json.loads(f.read_text())
        pids += [info["pid"], *info["grandchildren"]]
    return pids


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    proc.send_signal(sig)
