"""A real single-node Slurm cluster on localhost for end-to-end tests: the tests only *use* one; it is started
(packages installed where missing, daemons started) outside the tests, by `.ci/run` (as root), or by hand:

    sudo bash tests/slurm/setup.sh /tmp/slurm-test       # as root: installs what is missing, starts it (~5 s)
    SLURM_TEST_STATE=/tmp/slurm-test python -m pytest -q -m slurm
    sudo bash tests/slurm/teardown.sh /tmp/slurm-test    # cancels its jobs, stops its daemons

tests/conftest.py imports the session-scoped fixture (`from slurm.cluster import slurm_cluster`); a test asks
for it by name:

    def test_something(slurm_cluster):
        subprocess.run([...], env=slurm_cluster.env)   # sbatch, squeue, sacct, submitit all find the cluster

The fixture finds the cluster through SLURM_TEST_STATE (the folder setup.sh was given; REVIEW_SLURM_STATE is
the older name) and skips, with the reason and how to start one, where none is set or it does not answer. It
never installs, starts or stops anything: it is only ever given a cluster that setup.sh started (with its
partition `debug`, 4 fake GPUs, fast scheduling), never a real one that SLURM_CONF may name. Clients find
the cluster through SLURM_CONF, which is in `.env` (not in os.environ).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup.sh"
TEARDOWN = HERE / "teardown.sh"
STATE_VARIABLES = ("SLURM_TEST_STATE", "REVIEW_SLURM_STATE")  # the first one set names the cluster's folder
HOW_TO_START = ".ci/run starts one (tests/slurm/setup.sh STATE_DIR, as root; then SLURM_TEST_STATE=STATE_DIR)"
PING_TIMEOUT_S = 15


class SlurmCluster:
    """A running cluster: `env` for clients (os.environ plus SLURM_CONF and the SLURM_TEST_* facts)."""

    def __init__(self, state_dir: Path, variables: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.variables = variables  # what setup.sh printed: SLURM_CONF, SLURM_TEST_PARTITION, ...
        self.env = {**os.environ, **variables}
        self.partition = variables.get("SLURM_TEST_PARTITION", "debug")
        self.gpus = int(variables.get("SLURM_TEST_GPUS", "0"))
        self.cpus = int(variables.get("SLURM_TEST_CPUS", "1"))

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


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _variables(state_dir: Path) -> dict[str, str]:
    """What setup.sh printed for this folder (it keeps a copy in STATE_DIR/cluster.env); for a folder set up
    before that copy was kept: SLURM_CONF and the facts every such cluster has."""
    variables = {"SLURM_CONF": str(state_dir / "slurm.conf"), "SLURM_TEST_STATE": str(state_dir),
                 "SLURM_TEST_PARTITION": "debug", "SLURM_TEST_GPUS": "4", "SLURM_TEST_CPUS": "8"}
    try:
        text = (state_dir / "cluster.env").read_text()
    except OSError:
        return variables
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            variables[key] = value
    return variables


def running_cluster() -> SlurmCluster | str:
    """The test cluster that setup.sh started and SLURM_TEST_STATE names, if it answers; else why not (the
    skip reason, with how to start one)."""
    name = next((v for v in STATE_VARIABLES if os.environ.get(v)), None)
    if name is None:
        return f"no Slurm on localhost: {HOW_TO_START}"
    state_dir = Path(os.environ[name]).resolve()
    if not (state_dir / "slurm.conf").is_file():
        return f"{name}={state_dir} has no slurm.conf (not a folder of tests/slurm/setup.sh): {HOW_TO_START}"
    cluster = SlurmCluster(state_dir, _variables(state_dir))
    if shutil.which("scontrol", path=cluster.env.get("PATH")) is None:
        return f"{name}={state_dir}, but no Slurm client (scontrol) is on PATH: {HOW_TO_START}"
    try:
        ping = cluster.run("scontrol", "ping", timeout=PING_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"the Slurm of {name}={state_dir} does not answer within {PING_TIMEOUT_S} s: {HOW_TO_START}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = " ".join((ping.stdout + ping.stderr).split())[:200]
        return f"the Slurm of {name}={state_dir} does not answer (scontrol ping: {said}): {HOW_TO_START}"
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running test cluster (see the module's docstring); skips, saying why, where there is none."""
    found = running_cluster()
    if isinstance(found, str):
        pytest.skip(found)
    return found
