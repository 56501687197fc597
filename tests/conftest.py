"""Shared fixtures: the real CLI as a subprocess, with a fake pynvml first on PYTHONPATH; the Slurm cluster, the
PostgreSQL and MPS fixtures; helpers that several test files use (at the end)."""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from slurm.cluster import slurm_cluster  # noqa: F401  (the fixture of test_slurm.py)

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SWEEP = ROOT / "train_sweep.py"
FAKE_NVML = Path(__file__).resolve().parent / "fake_nvml"
FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
sys.path.insert(0, str(ROOT))
# auto packing remembers footprints in the user's cache folder (and matplotlib its font list): this session's own
# folder instead, never the host's, removed when the session (or xdist worker) ends
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="train_sweep_tests_cache_")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


# -- the session: inherited signal dispositions, markers ------------------------------------------------------
# A signal ignored (SIG_IGN) stays ignored across fork and exec: under `nohup` SIGHUP is, in a shell's
# background job (`cmd &`) SIGINT and SIGQUIT are, and every CLI, trainer and daemon the tests start would
# inherit that (the CLI rightly keeps an ignored SIGHUP ignored, as under nohup: then the SIGHUP tests fail).
# A *caught* signal is reset to SIG_DFL by exec: so each of these that this pytest inherited as ignored gets a
# handler that does nothing, for the session. pytest itself still ignores it (a `nohup pytest` survives the
# hang-up it was started to survive), and what the tests start gets the default disposition, as from a
# terminal. Not SIGPIPE: every Python ignores it itself (so ignored says nothing of what was inherited), and
# subprocess already resets it to SIG_DFL in the processes it starts (restore_signals).
INHERITED_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM")
_ignored_at_start: list[signal.Signals] = []


def _still_ignored(signum, frame) -> None:
    """The handler of a signal pytest inherited as ignored: still nothing happens to pytest."""


def pytest_configure(config) -> None:
    for name in INHERITED_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, _still_ignored)
            _ignored_at_start.append(sig)
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL (TRAIN_SWEEP_TEST_PG; .ci/run starts one)")


def pytest_unconfigure(config) -> None:
    while _ignored_at_start:
        signal.signal(_ignored_at_start.pop(), signal.SIG_IGN)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items) -> None:
    """The tests that use the Slurm cluster, or the PostgreSQL, carry the marker `slurm` (`postgres`): so
    `-m slurm` runs them, and `-m "not slurm"` leaves them out."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "slurm_cluster" in names:
            item.add_marker(pytest.mark.slurm)
        if "postgres_url" in names:
            item.add_marker(pytest.mark.postgres)


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
        env["XDG_CACHE_HOME"] = str(self.dir / "cache")  # auto's remembered footprints: this test's own
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


# -- PostgreSQL ---------------------------------------------------------------------------------------------
PG_VARIABLE = "TRAIN_SWEEP_TEST_PG"
PG_HOW = (".ci/run starts a PostgreSQL and sets it (as root with apt, or where PostgreSQL is installed): "
          f"{PG_VARIABLE}=postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE")


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL's URL (TRAIN_SWEEP_TEST_PG, postgresql://USER:PASSWORD@HOST:PORT/DATABASE) once it
    answers; skips, saying why, where the variable is unset or nothing answers. Nothing is started here."""
    url = os.environ.get(PG_VARIABLE, "")
    if not url:
        pytest.skip(f"no PostgreSQL: {PG_VARIABLE} is not set; {PG_HOW}")
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or 5432
    except ValueError as e:  # a port that is not a number
        pytest.skip(f"{PG_VARIABLE}={_redacted(url)}: {e}; {PG_HOW}")
    if parts.scheme not in ("postgresql", "postgres") or not host:
        pytest.skip(f"{PG_VARIABLE}={_redacted(url)} is not a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        pytest.skip(f"{PG_VARIABLE}={_redacted(url)}: nothing answers on {host}:{port} ({e.strerror or e}); {PG_HOW}")
    if shutil.which("psql"):  # where the client is installed: the URL's user, password and database are right
        try:
            check = subprocess.run(["psql", "-X", "-A", "-t", "-w", "-d", url, "-c", "SELECT 1"], capture_output=True,
                                   text=True, timeout=20, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{PG_VARIABLE}={_redacted(url)}: psql got no answer within 20 s")
        if check.returncode != 0:
            said = " ".join(check.stderr.split()).replace(parts.password or "\0", "***")[:300]
            pytest.skip(f"{PG_VARIABLE}={_redacted(url)}: psql cannot connect: {said}")
    return url


# -- the machine's MPS daemons ------------------------------------------------------------------------------
# The CLI refuses --mps while any MPS daemon runs on the machine (anyone's process named nvidia-cuda-mps*;
# the fake daemon of tests/fake_mps takes that name too). So a test whose sweep starts one (or that starts a
# daemon itself) would fail beside another test run's daemons: the suite of another clone run at the same
# time, a test run killed mid-test. With the fixture `mps_alone`, such a test runs alone on the machine:
#   - it holds MPS_HOST_LOCK (an flock, freed when its file closes or pytest dies): another run of this
#     suite waits for it;
#   - its daemons carry MPS_RUN_MARK in their environment (inherited through the CLI): one still running at
#     its end is killed; and FAKE_MPS_WATCH_PID: a fake daemon ends by itself once this pytest is gone;
#   - a daemon not of this run (a real MPS daemon, one of a suite that takes no lock) is waited for up to
#     MPS_FOREIGN_WAIT_S, then the test is skipped, saying which daemon.
MPS_HOST_LOCK = Path("/tmp/train_sweep_tests_mps.lock")  # not $TMPDIR: every run on the machine must share it
MPS_LOCK_WAIT_S = 600.0  # another run holds it a few seconds a test
MPS_FOREIGN_WAIT_S = 30.0
MPS_RUN_MARK = ("TRAIN_SWEEP_TEST_MPS_RUN", f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
_mps_lasting: set[int] = set()  # daemons not of this run that outlasted one wait: not waited for again


def _mps_host_lock() -> int | None:
    """A file descriptor that holds MPS_HOST_LOCK (flock), None where the file cannot be opened; skips after
    MPS_LOCK_WAIT_S."""
    import fcntl

    try:  # without O_CREAT first: /tmp's protected_regular refuses O_CREAT on another user's file
        fd = os.open(MPS_HOST_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        try:
            fd = os.open(MPS_HOST_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            return None
    except OSError:
        return None
    end = time.monotonic() + MPS_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > end:
                os.close(fd)
                pytest.skip(f"another test run held {MPS_HOST_LOCK} (its MPS tests) for {MPS_LOCK_WAIT_S:g} s")
            time.sleep(0.05)


def _mps_daemons() -> list[tuple[int, str, bool]]:
    """The machine's processes the CLI takes for MPS daemons: (pid, 'name, pid, user', whether of this run)."""
    import psutil

    found = []
    for p in psutil.process_iter(["name", "username"]):
        try:
            if not (p.info["name"] or "").startswith("nvidia-cuda-mps") or p.status() == psutil.STATUS_ZOMBIE:
                continue
            try:
                ours = p.environ().get(MPS_RUN_MARK[0]) == MPS_RUN_MARK[1]
            except psutil.AccessDenied:  # another user's
                ours = False
            found.append((p.pid, f"{p.info['name']}, pid {p.pid}, user {p.info['username'] or '?'}", ours))
        except psutil.Error:
            pass
    return found


def _end_our_mps_daemons() -> None:
    ours = [pid for pid, _, mine in _mps_daemons() if mine]
    kill_pids(ours)
    all_dead(ours, 10)


@pytest.fixture
def mps_alone(monkeypatch):
    """No MPS daemon but this test's on the machine while it runs (see above)."""
    fd = _mps_host_lock()
    try:
        monkeypatch.setenv(*MPS_RUN_MARK)
        monkeypatch.setenv("FAKE_MPS_WATCH_PID", str(os.getpid()))
        _end_our_mps_daemons()  # an earlier test's, normally none
        end = time.monotonic() + MPS_FOREIGN_WAIT_S
        while others := [(pid, what) for pid, what, mine in _mps_daemons() if not mine]:
            if {pid for pid, _ in others} <= _mps_lasting or time.monotonic() > end:
                _mps_lasting.update(pid for pid, _ in others)
                pytest.skip(f"an MPS daemon not of this test run runs on this machine ({others[0][1]}), and the CLI "
                            "refuses --mps beside any: stop it (echo quit | nvidia-cuda-mps-control, with its "
                            "CUDA_MPS_PIPE_DIRECTORY) to run this test")
            time.sleep(0.2)
        yield
        _end_our_mps_daemons()
    finally:
        if fd is not None:
            os.close(fd)


def communicate(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{what}: train_sweep still running after {timeout:g}s\n{out}\n{err}") from None


# -- helpers that several test files use: the CLI's result, one-line errors, strict JSON -------------------------

class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str, elapsed: float) -> None:
        self.returncode, self.stdout, self.stderr, self.elapsed = returncode, stdout, stderr, elapsed


def _limit_memory(gb: float):
    def apply() -> None:
        limit = int(gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def cli(sweep, *args: str, timeout: float = 60, trainer: bool = True, memory_gb: float | None = None,
        **env) -> Result:
    """The CLI as a subprocess; output decoded leniently (a lone surrogate must not break the test
    itself). A run past `timeout` is killed and fails the test with what it printed so far."""
    proc = subprocess.Popen(
        sweep.argv(*args, trainer=trainer), cwd=sweep.dir, env=sweep.env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
        preexec_fn=_limit_memory(memory_gb) if memory_gb else None,
    )
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a helper process still holds the pipes
            out, err = "", ""
        pytest.fail(f"train_sweep {' '.join(args)[:200]} ran past {timeout} s\nstdout: {out[-2000:]}\n"
                    f"stderr: {err[-2000:]}")
    return Result(proc.returncode, out, err, time.monotonic() - start)


def assert_one_line_error(p, *fragments: str) -> None:
    """Exit code 2; stderr is exactly one line, `train_sweep: error: ...`, holding each fragment."""
    both = p.stdout + p.stderr
    assert "Traceback" not in both, both[-4000:]
    assert p.returncode == 2, (p.returncode, both[-4000:])
    lines = p.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0], p.stderr[-4000:]
    assert lines[0].startswith("train_sweep: error:"), lines[0][:1000]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0][:1000])


def check_refused(p, *fragments: str) -> None:
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("train_sweep: error: "), lines[0]
    assert "Traceback" not in p.stderr + p.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def no_traceback(p) -> None:
    assert "Traceback" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-4000:]


def strict_json(text: str):
    """Standard JSON only: NaN, Infinity and -Infinity are refused."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def strict_results(sweep, name: str = "train_sweep_results.json") -> list[dict]:
    return strict_json((sweep.dir / name).read_text(encoding="utf-8"))


# -- helpers that several test files use: what the runs did, the event lines, a signal ---------------------------

def starts(sweep) -> Counter:
    return Counter(sweep.started())


def run_jsons(folder: Path) -> list[dict]:
    out = []
    for f in folder.glob("*/run.json"):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    return out


EVENT = re.compile(r"^\d\d:\d\d:\d\d (start|complete|failed|timeout|oom|interrupted)\s+(\S+)")


def event_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(kind, run name, line) of every start and finish line."""
    out = []
    for line in stdout.splitlines():
        m = EVENT.match(line)
        if m:
            out.append((m.group(1), m.group(2), line))
    return out


def signal_when_two_run(sweep, proc, sig):
    """Send `sig` to train_sweep once two runs have started; its output (every run process cleaned up)."""
    try:
        sweep.wait_for(lambda: len(sweep.started()) == 2, timeout=30, what="two runs")
        proc.send_signal(sig)
        return communicate(proc, 30, f"after {signal.Signals(sig).name}")
    finally:
        kill_pids(run_pids(sweep))


def no_hydra(tmp_path) -> str:
    """A PYTHONPATH on which `import hydra` fails, as where hydra-core is not installed."""
    fake = tmp_path / "no_hydra" / "hydra"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'hydra'\", name='hydra')\n")
    return os.pathsep.join([str(fake.parent), str(FAKE_NVML)])


# -- helpers that several test files use: a train script, the search's study -------------------------------------

def script(sweep, name: str, body: str) -> str:
    """A train script taking key=value arguments (train_sweep's default Hydra style); returns its command."""
    path = sweep.dir / name
    path.write_text("import json, os, sys, time\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
                    "RUN_DIR = os.environ['TRAIN_SWEEP_RUN_DIR']\n" + body)
    return f"python {path}"


def load_study(folder: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name="train_sweep", storage=JournalStorage(JournalFileBackend(str(folder / "study.log"))))


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


QUADRATIC = "x = float(args['x']); y = int(args.get('y', 0))\nprint(f\"loss={(x - 0.3) ** 2 + 0.01 * y}\", flush=True)\n"


SLOW_QUADRATIC = ("x = float(args['x']); lr = float(args.get('lr', 0))\n"
                  "time.sleep(float(args.get('sleep', 0)))\n"
                  "print(f\"loss={(x - 0.3) ** 2 + lr}\", flush=True)\n")


def points(records, *keys):
    return Counter(tuple(r["hyperparams"][k] for k in keys) for r in records if r["state"] == "complete")
