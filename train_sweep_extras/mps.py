"""--mps: NVIDIA's MPS control daemon, started for the sweep's GPUs, so that the runs packed on a GPU compute at
once; stopped at the end, on Ctrl+C, by the guardian after kill -9, or by the next sweep."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from train_sweep import (
    MPS_DIR,
    UserError,
    one_line,
    tail_lines,
)

MPS_CONTROL = "nvidia-cuda-mps-control"


MPS_WAIT_S = 10.0  # longest wait for the daemon to answer after it started, and to exit after `quit`


def _running(pid: int) -> bool:
    """The process runs (a zombie does not: reaped here where the sweep adopted it as subreaper)."""
    import psutil

    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.Error:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return False


class MpsDaemon:
    """--mps: the CUDA MPS control daemon, started for this sweep and stopped at its end. It runs as the user,
    with its pipe and log folders in <output_dir>/.mps/ (CUDA_MPS_PIPE_DIRECTORY and CUDA_MPS_LOG_DIRECTORY,
    which every run gets in its environment): this sweep's runs are its only clients. It sees the sweep's GPUs
    only, named by UUID (`devices`), and so do the runs: the server it starts renumbers the GPUs it sees, so an
    index in a client's CUDA_VISIBLE_DEVICES would name another GPU (on 2 x H200, a daemon that saw every GPU
    put its server on a GPU the sweep did not use). Without UUIDs (no NVML) it sees every GPU. TRAIN_SWEEP_ID
    in its environment lets the guardian end it, and the server it started, if the sweep is killed with runs
    running; a daemon left anyway is stopped by the next sweep of the folder."""

    def __init__(self, output_dir: Path, devices: Sequence[str] = ()) -> None:
        self.devices = list(devices)
        folder = output_dir.resolve() / MPS_DIR
        pipe = folder / "pipe"
        if len(os.fsencode(pipe / "control")) > 100:  # a Unix socket's path holds at most 107 bytes
            digest = hashlib.sha1(os.fsencode(folder)).hexdigest()[:12]
            pipe = Path("/tmp") / f"train_sweep_mps_{os.getuid()}_{digest}"
        self.pipe, self.log = pipe, folder / "log"
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe), "CUDA_MPS_LOG_DIRECTORY": str(self.log)}
        self.pid: int | None = None

    @staticmethod
    def check() -> None:
        """Before anything is written: the daemon's program is on PATH."""
        if shutil.which(MPS_CONTROL) is None:
            raise UserError(f"--mps: {MPS_CONTROL} is not on PATH (it comes with the NVIDIA driver's utilities, "
                            "e.g. Debian's nvidia-cuda-mps)")

    def _environ(self, sweep_id: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return {**env, **self.env, **({"TRAIN_SWEEP_ID": sweep_id} if sweep_id else {})}

    def _control(self, command: str) -> str | None:
        """One command to the daemon; its answer, None where no daemon answers."""
        try:
            done = subprocess.run([MPS_CONTROL], input=command + "\n", env=self._environ(), capture_output=True,
                                  text=True, timeout=MPS_WAIT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def _pid_file(self) -> int | None:
        """The daemon of this pipe folder (its pid file), while it runs."""
        try:
            pid = int((self.pipe / "nvidia-cuda-mps-control.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _running(pid) else None

    def _others(self) -> str | None:
        """An MPS daemon or server of anyone's running here, not of this folder."""
        import psutil

        for p in psutil.process_iter(["name", "username"]):
            try:
                if (p.info["name"] or "").startswith("nvidia-cuda-mps") and p.status() != psutil.STATUS_ZOMBIE \
                        and self.pid not in (p.pid, p.ppid()):
                    return f"{p.info['name']}, pid {p.pid}, user {p.info['username'] or '?'}"
            except psutil.Error:
                pass
        return None

    def start(self, sweep_id: str) -> list[str]:
        """Start the daemon, or say why not (UserError): another MPS daemon runs here, or it did not start.
        Returns what to report."""
        said = []
        self.pid = self._pid_file()
        if self.pid is not None:  # the folder is locked: an earlier sweep of it left its daemon
            said.append(f"MPS: an earlier sweep of this folder left its control daemon (pid {self.pid}): stopped")
            if (note := self.stop()) is not None:
                raise UserError(f"--mps: {note}")
        other = self._others()
        if other is not None:
            raise UserError(f"--mps: an MPS daemon already runs here ({other}); its clients would share the GPUs "
                            "with this sweep's: stop it (echo quit | nvidia-cuda-mps-control, as its user), or "
                            "leave out --mps")
        for folder in (self.pipe, self.log):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"--mps: cannot make {folder}: {e.strerror}") from None
        try:
            done = subprocess.run([MPS_CONTROL, "-d"], env=self._environ(sweep_id), capture_output=True, text=True,
                                  timeout=MPS_WAIT_S, check=False, start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"--mps: {MPS_CONTROL} -d: {e}") from None
        deadline = time.monotonic() + MPS_WAIT_S
        while done.returncode == 0 and time.monotonic() < deadline:  # up once it answers and its pid file is there
            if self._control("get_server_list") is not None and (pid := self._pid_file()) is not None:
                self.pid = pid
                break
            time.sleep(0.05)
        if self.pid is None:
            lines = (done.stderr or done.stdout).strip().splitlines() or self._log_tail()
            why = one_line(lines[-1]) if lines else f"no answer within {MPS_WAIT_S:g}s"
            self.stop()
            raise UserError(f"--mps: the MPS control daemon did not start: {why}")
        said.append(f"MPS: control daemon started (pid {self.pid}; pipe {self.pipe}, logs {self.log}): runs on one "
                    "GPU compute at once rather than in turns" + ("; runs see their GPU by UUID in CUDA_VISIBLE_DEVICES"
                                                                   if self.devices else "; it sees every GPU (no NVML: "
                                                                   "no UUIDs), and its server may hold a little memory "
                                                                   "on each"))
        return said

    def _log_tail(self) -> list[str]:
        return tail_lines(self.log / "control.log", 5).strip().splitlines()

    def stop(self) -> str | None:
        """Quit the daemon (its server quits with it); what went wrong, if anything."""
        pid, self.pid = self.pid or self._pid_file(), None
        if pid is None:
            return None
        self._control("quit")
        deadline = time.monotonic() + MPS_WAIT_S
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _running(pid):
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        return f"the MPS control daemon (pid {pid}) did not quit within {MPS_WAIT_S:g}s: killed"
