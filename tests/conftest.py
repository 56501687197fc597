"""Shared fixtures: the real CLI as a subprocess, with a fake pynvml first on PYTHONPATH."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
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

    def foreign_process(self, index: int, mb: int) -> subprocess.Popen:
        """Someone else's process holding `mb` MB on GPU `index` (NVML lists it) until the test kills it."""
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        (self.procs_dir / f"{proc.pid}.json").write_text(json.dumps({"gpu": index, "mb": mb}))
        return proc

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

    def start_on_pty(self, *args: str, trainer: bool = True, **env) -> "PtyProc":
        """The CLI on a real terminal: a pseudo-terminal that is its stdin, stdout, stderr and controlling
        terminal (it leads its own session, as a shell's job does after the terminal opened)."""
        return PtyProc(self.argv(*args, trainer=trainer), self.dir, self.env(TERM="xterm-256color", **env))

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


class PtyProc:
    """A process on a pseudo-terminal. Its output is drained in a thread (`output()`); `hang_up()` closes the
    terminal's master side, as when a terminal window or an ssh connection closes: the kernel sends SIGHUP
    to the session and later reads and writes on the terminal fail (EIO)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], rows: int = 40, cols: int = 160) -> None:
        import fcntl
        import struct
        import termios

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def controlling_terminal() -> None:  # runs in the child after setsid(): the pty becomes its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        self.pid = self.proc.pid
        self._master: int | None = master
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._master
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the process and every other holder of the slave side are gone
                return
            if not data:
                return
            with self._lock:
                self._buf += data

    def output(self) -> str:
        with self._lock:
            return self._buf.decode("utf-8", "replace")

    def _close_master(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def hang_up(self) -> None:
        self._close_master()

    def wait(self, timeout: float) -> int:
        """Wait for the exit (TimeoutExpired after `timeout`), then read what is left on the terminal."""
        rc = self.proc.wait(timeout)
        if self._master is not None:
            self._thread.join(5)  # ends on EIO once everything written is read
            self._close_master()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_master()


def kill_pids(pids) -> None:
    """Clean-up after a failed test: SIGKILL the given processes (the fake trainers' own pids) if alive."""
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def mount_tmpfs(path: Path, size: str) -> bool:
    """A small tmpfs at `path` (created), to fill up; False where it cannot be mounted (not root)."""
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0
