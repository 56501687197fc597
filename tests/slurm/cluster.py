"""A real single-node Slurm cluster on localhost for end-to-end tests (setup.sh and teardown.sh beside this file).

In a test module:

    from slurm.cluster import slurm_cluster  # noqa: F401  (the session-scoped fixture)

    def test_something(slurm_cluster):
        subprocess.run([...], env=slurm_cluster.env)   # sbatch, squeue, sacct, submitit all find the cluster

The fixture skips (with the reason) where no real Slurm can be had: not Linux, not root, or neither
slurmctld installed nor apt-get to install it. Starting takes ~5 s with the packages installed, ~30 s with
the install. Clients find the cluster through SLURM_CONF, which is in `.env` (not in os.environ).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup.sh"
TEARDOWN = HERE / "teardown.sh"
SETUP_TIMEOUT_S = 600  # the package install included


def skip_reason() -> str | None:
    """Why a real Slurm cluster cannot be started here, or None if it can."""
    if platform.system() != "Linux":
        return f"a real Slurm cluster needs Linux, not {platform.system()}"
    if os.geteuid() != 0:
        return "a real Slurm cluster needs root (its daemons run as root; munge and mknod need it)"
    sbin_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    if shutil.which("slurmctld", path=sbin_path) is None and shutil.which("apt-get") is None:
        return "Slurm is not installed (no slurmctld) and there is no apt-get to install it"
    return None


class SlurmCluster:
    """A running cluster: `env` for clients (os.environ plus SLURM_CONF and the SLURM_TEST_* facts)."""

    def __init__(self, state_dir: Path, variables: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.variables = variables  # what setup.sh printed: SLURM_CONF, SLURM_TEST_PARTITION, ...
        self.env = {**os.environ, **variables}
        self.partition = variables.get("SLURM_TEST_PARTITION", "debug")
        self.gpus = int(variables.get("SLURM_TEST_GPUS", "0"))
        self.cpus = int(variables.get("SLURM_TEST_CPUS", "1"))
        self._stopped = False

    def run(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command (sbatch, squeue, sacct, scontrol, scancel) against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def squeue(self) -> list[str]:
        """Job ids (as squeue writes them, 12 or 12_3) of the current user still pending, running or
        completing; finished jobs are not listed."""
        out = self.run("squeue", "-h", "-u", _user_name(), "-o", "%i").stdout
        return out.split()

    def sacct_state(self, job_id: str) -> str:
        """The job's State in the accounting database ('' while sacct does not know it yet, for ~0.2 s after
        sbatch); e.g. PENDING, RUNNING, COMPLETED, FAILED, REQUEUED, 'CANCELLED by 0'."""
        out = self.run("sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id).stdout.strip()
        return out.splitlines()[-1] if out else ""

    def log(self, daemon: str, lines: int = 40) -> str:
        """The tail of a daemon's log (slurmctld, slurmd, slurmdbd, munged, mariadb), for failure messages."""
        path = self.state_dir / "log" / f"{daemon}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Cancels every job, then stops the daemons (teardown.sh). Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        subprocess.run(["bash", str(TEARDOWN), str(self.state_dir)], check=False, capture_output=True, text=True,
                       timeout=120)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def start_cluster(folder) -> SlurmCluster:
    """Starts the cluster with its state in `folder` (a path, or pytest's tmp_path_factory: a fresh folder
    from it). Raises RuntimeError with setup.sh's output when it fails. Usable as a context manager."""
    if hasattr(folder, "mktemp"):
        folder = folder.mktemp("slurm")
    state_dir = Path(folder).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["bash", str(SETUP), str(state_dir)], check=False, capture_output=True, text=True,
                          timeout=SETUP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"tests/slurm/setup.sh failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
    variables = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            variables[key] = value
    if "SLURM_CONF" not in variables:
        raise RuntimeError(f"tests/slurm/setup.sh printed no SLURM_CONF:\n{proc.stdout}\n{proc.stderr}")
    return SlurmCluster(state_dir, variables)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """One real Slurm cluster for the whole session; skips where none can be had."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()
