"""--storage: agents on several hosts sharing one sweep through a PostgreSQL study (train_sweep_extras/agents.py).

Each agent is the real CLI in a folder of its own with fake GPUs of its own, standing in for a host. The tests need
a PostgreSQL (TRAIN_SWEEP_TEST_PG; .ci/run starts one) and skip, saying why, without one. Each test uses a study
name of its own, so tests never see each other's trials."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import Sweep, assert_one_line_error, cli, communicate, script

pytestmark = pytest.mark.postgres


def study_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def agents(tmp_path: Path, n: int, gpus: int = 2) -> list[Sweep]:
    """n stand-ins for hosts: each its own folder and fake GPUs (disjoint: GPU 0 of one is not GPU 0 of another)."""
    out = []
    for i in range(n):
        folder = tmp_path / f"host{i}"
        folder.mkdir()
        s = Sweep(folder)
        s.gpus.set(count=gpus)
        out.append(s)
    return out


def start(s: Sweep, url: str, name: str, *args: str) -> subprocess.Popen:
    return s.start("--storage", url, "--study-name", name, "--no-live", "--metric", "val_loss",
                   "--max-processes-per-gpu", "2", *args)


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[str, str]]:
    outs = [communicate(p, timeout, f"agent {i}") for i, p in enumerate(procs)]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (p.returncode, out[-3000:], err[-3000:])
        assert "Traceback" not in out + err
    return outs


def load(url: str, name: str):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    parts = urlsplit(url)
    return optuna.load_study(study_name=name, storage=url.replace(parts.scheme, "postgresql+psycopg", 1))


def completed(study) -> Counter:
    """Each run name's complete trials."""
    return Counter(t.user_attrs["run"] for t in study.trials if t.state.name == "COMPLETE")


def complete_runs(hosts: list[Sweep]) -> Counter:
    """Each run name's complete records over every host's results file."""
    return Counter(r["model_name"] for s in hosts for r in s.results() if r["state"] == "complete")


def test_a_grid_is_run_exactly_once_by_three_agents(tmp_path, postgres_url):
    hosts, name = agents(tmp_path, 3), study_name()
    grid = {"grid": {"x": list(range(40)), "sleep": [0.3], "metric": [0.5]}}
    for s in hosts:
        s.config(grid)
    finish([start(s, postgres_url, name) for s in hosts])
    assert complete_runs(hosts) == Counter({f"x_{x}_sleep_0.3_metric_0.5": 1 for x in range(40)})
    study = load(postgres_url, name)
    assert len(study.trials) == 40 and completed(study) == complete_runs(hosts)
    assert all(s.results() for s in hosts), "every agent ran some of the runs"
    for s in hosts:  # no run of another host in a host's folder
        assert {p.name for p in (s.dir / "outputs").iterdir() if p.is_dir()} == {r["model_name"] for r in s.results()}

    status = cli(hosts[0], "status", postgres_url, "--study-name", name, trainer=False)
    assert status.returncode == 0 and "40 of 40 done (40 complete" in status.stdout, status.stdout + status.stderr
    gathered = hosts[0].dir / "gathered" / "all.json"  # (in a folder not made yet: a traceback before)
    report = cli(hosts[0], "report", "--storage", postgres_url, "--study-name", name, "--results", str(gathered),
                 trainer=False)
    assert report.returncode == 0, report.stdout + report.stderr
    records = json.loads(gathered.read_text())
    assert Counter(r["model_name"] for r in records) == complete_runs(hosts)
    assert {r["host"] for r in records} == {socket.gethostname()}
    password = urlsplit(postgres_url).password
    assert password not in report.stdout + report.stderr + status.stdout + status.stderr
    for s in hosts:  # each host's own folder: finished (an adversarial pass: 'interrupted', the other hosts' runs
        done = cli(s, "status", trainer=False)  # counted as not started in it)
        assert "outputs: finished" in done.stdout and "not started" not in done.stdout, done.stdout


def test_a_search_asks_exactly_its_trials_across_agents(tmp_path, postgres_url):
    hosts, name = agents(tmp_path, 3), study_name()
    procs = [start(s, postgres_url, name, "--search", "tpe", "--n-trials", "40", "x=interval(0, 1)", "sleep=0.2",
                   "metric=0.5") for s in hosts]
    outs = finish(procs)
    study = load(postgres_url, name)
    assert len(study.trials) == 40 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.params["x"] for t in study.trials}) == 40, "no two agents asked the same point"
    assert sum(len(s.results()) for s in hosts) == 40
    for out, _ in outs:
        assert "40/40 done by every agent" in out, out[-2000:]


def test_a_killed_agent_loses_only_its_running_trials(tmp_path, postgres_url):
    hosts, name = agents(tmp_path, 2, gpus=1), study_name()
    runs = [{"x": x, "sleep": 6 if x == 0 else 1.5, "metric": 0.5} for x in range(8)]  # the first agent takes x=0
    for s in hosts:
        s.config(runs)
    doomed = start(hosts[0], postgres_url, name, "--agent-grace", "3", "--max-processes-per-gpu", "1")
    hosts[0].wait_for(lambda: len(hosts[0].started()) >= 1, timeout=30, what="the first agent's first run")
    other = start(hosts[1], postgres_url, name, "--agent-grace", "3", "--max-processes-per-gpu", "1")
    hosts[1].wait_for(lambda: len(hosts[1].started()) >= 1, timeout=30, what="the second agent's first run")
    doomed.send_signal(signal.SIGKILL)  # the host is gone: its guardian ends its runs
    doomed.communicate(timeout=30)
    lost = hosts[0].started()[-1]
    assert lost == "x_0_sleep_6_metric_0.5", hosts[0].started()
    (out, err), = finish([other])
    assert "takeover" in out and lost in out, out[-3000:]
    study = load(postgres_url, name)
    assert completed(study) == Counter({f"x_{x}_sleep_{6 if x == 0 else 1.5}_metric_0.5": 1 for x in range(8)})
    taken = [t for t in study.trials if t.state.name == "FAIL"]
    assert [t.user_attrs["run"] for t in taken] == [lost]
    assert Counter(r["model_name"] for r in hosts[1].results() if r["state"] == "complete")[lost] == 1

    (out, err), = finish([start(hosts[0], postgres_url, name, "--agent-grace", "3")])  # the host comes back
    assert len(load(postgres_url, name).trials) == len(study.trials), "nothing is asked or run again"
    assert "0 run(s). Results" in out, out[-3000:]  # its killed run went to the other host: none left here
    status = cli(hosts[0], "status", trainer=False).stdout  # (an adversarial pass: the killed run's run.json still
    assert "dead" not in status and "died" not in status, status  # said running: 'dead' for good)


class Proxy:
    """A TCP relay to the database that can be cut (every connection dropped, new ones closed at once) and
    restored: a network cut between the agents and PostgreSQL."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up, self.socks, self.lock = True, [], threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.socks.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_a_cut_to_the_database_is_waited_out(tmp_path, postgres_url):
    parts = urlsplit(postgres_url)
    proxy = Proxy(parts.hostname, parts.port or 5432)
    url = postgres_url.replace(parts.netloc, f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}")
    hosts, name = agents(tmp_path, 2, gpus=1), study_name()
    try:
        for s in hosts:
            s.config({"grid": {"x": list(range(10)), "sleep": [0.8], "metric": [0.5]}})
        procs = [start(s, url, name, "--agent-grace", "60", "--max-processes-per-gpu", "1") for s in hosts]
        for s in hosts:
            s.wait_for(lambda s=s: len(s.started()) >= 2, timeout=30, what="two runs on each agent")
        proxy.cut()
        time.sleep(4)
        proxy.up = True
        outs = finish(procs)
    finally:
        proxy.close()
    said = "".join(out for out, _ in outs)
    assert "does not answer" in said and "answers again" in said, said[-3000:]
    study = load(postgres_url, name)
    assert completed(study) == Counter({f"x_{x}_sleep_0.8_metric_0.5": 1 for x in range(10)})
    assert complete_runs(hosts) == completed(study)


def test_bad_storage_input_is_one_line_without_the_password(tmp_path, postgres_url):
    s = agents(tmp_path, 1)[0]
    s.config([{"x": 1, "metric": 0.5}])
    parts = urlsplit(postgres_url)
    password = parts.password
    wrong = postgres_url.replace(f":{password}@", ":not-the-password@")
    for url, said in ((wrong, "password authentication failed"),
                      (postgres_url.replace(f":{parts.port}/", ":1/"), "cannot open the study's database"),
                      ("mysql://me@db/sweeps", "give a PostgreSQL URL"),
                      (postgres_url.rpartition("/")[0] + "/no_such_database", "no_such_database")):
        p = cli(s, "--storage", url, "--no-live", "--metric", "val_loss")
        assert_one_line_error(p, said)
        assert password not in p.stderr and "not-the-password" not in p.stderr
    assert not (s.dir / "outputs").exists() or not any((s.dir / "outputs").iterdir())
    assert_one_line_error(cli(s, "--study-name", "x", "--no-live"), "--study-name", "needs --storage")
    assert_one_line_error(cli(s, "--storage", postgres_url, "--rerun", "--no-live"), "--rerun does not go with")
    assert_one_line_error(cli(s, "--storage", postgres_url, "--no-live"), "needs --metric")  # (it crashed an agent)

    name = study_name()
    p = cli(s, "--storage", postgres_url, "--study-name", name, "--no-live", "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    written = [s.dir / "outputs" / f for f in ("sweep.json", "sweep.log")] + [s.dir / "train_sweep_results.json"]
    for path in written:
        assert password not in path.read_text(), path
    assert password not in p.stdout + p.stderr
    assert json.loads(written[0].read_text())["settings"]["storage"] == postgres_url.replace(password, "***")

    (tmp_path / "other").mkdir()
    other = agents(tmp_path / "other", 1)[0]
    for config in ([{"x": 2, "metric": 0.5}], {"defaults": {"sleep": 0.1}, "runs": [{"x": 1, "metric": 0.5}]}):
        other.config(config)  # another list under the same study name; the same run names with other values
        assert_one_line_error(cli(other, "--storage", postgres_url, "--study-name", name, "--no-live", "--metric",
                                  "val_loss"), "was made for another sweep", "--study-name")


def test_a_password_given_any_way_is_never_shown_or_written(tmp_path, postgres_url):
    """The password in the query (?password=) was written to sweep.json, sweep.log and stdout; a URL given to
    list or report as a file showed it whole."""
    parts = urlsplit(postgres_url)
    password = parts.password
    in_query = postgres_url.replace(f":{password}@", "@") + f"?password={password}"
    s = agents(tmp_path, 1)[0]
    s.config([{"x": 1, "metric": 0.5}])
    p = cli(s, "--storage", in_query, "--study-name", study_name(), "--no-live", "--metric", "val_loss")
    assert p.returncode == 0, p.stdout + p.stderr
    for path in [s.dir / "outputs" / "sweep.json", s.dir / "outputs" / "sweep.log", s.dir / "train_sweep_results.json"]:
        assert password not in path.read_text(), path
    assert password not in p.stdout + p.stderr
    for tool in (["report", postgres_url], ["list", postgres_url]):
        p = cli(s, *tool, trainer=False)
        assert_one_line_error(p, "a URL")
        assert password not in p.stderr


def test_a_search_stopped_on_one_agent_still_runs_its_whole_budget(tmp_path, postgres_url):
    """Ctrl+C or SIGTERM of one agent puts its trial back; another agent runs it: the budget is met exactly (the
    other agent once ended one trial short, counting the put-back trial as asked)."""
    hosts, name = agents(tmp_path, 2, gpus=1), study_name()
    space = ["--search", "random", "--n-trials", "3", "x=interval(0, 1)", "sleep=4", "metric=0.5"]
    stopped = start(hosts[0], postgres_url, name, "--max-processes-per-gpu", "1", *space)
    hosts[0].wait_for(lambda: len(hosts[0].started()) >= 1, timeout=30, what="the first agent's trial")
    other = start(hosts[1], postgres_url, name, "--max-processes-per-gpu", "1", *space)
    hosts[1].wait_for(lambda: len(hosts[1].started()) >= 1, timeout=30, what="the second agent's trial")
    stopped.send_signal(signal.SIGTERM)
    communicate(stopped, 60, "the stopped agent")
    assert stopped.returncode == 130
    (out, _), = finish([other])
    study = load(postgres_url, name)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3, [(t.number, t.state.name) for t in study.trials]
    assert "3/3 done by every agent" in out, out[-2000:]


def test_an_agent_suspended_past_the_grace_period_goes_on_without_a_traceback(tmp_path, postgres_url):
    """An agent stopped (SIGSTOP: a host frozen, or cut off) longer than --agent-grace loses its trial to another
    agent; when it comes back, telling that trial (finished by then) must not crash it (it did, with
    UpdateFinishedTrialError)."""
    hosts, name = agents(tmp_path, 2, gpus=1), study_name()
    for s in hosts:
        s.config([{"x": x, "sleep": 3, "metric": 0.5} for x in range(3)])
    frozen = start(hosts[0], postgres_url, name, "--agent-grace", "2", "--max-processes-per-gpu", "1")
    hosts[0].wait_for(lambda: len(hosts[0].started()) >= 1, timeout=30, what="the first agent's run")
    frozen.send_signal(signal.SIGSTOP)
    other = start(hosts[1], postgres_url, name, "--agent-grace", "2", "--max-processes-per-gpu", "1")
    hosts[1].wait_for(lambda: any("takeover" in line for line in
                                  (hosts[1].dir / "outputs" / "sweep.log").read_text().splitlines())
                      if (hosts[1].dir / "outputs" / "sweep.log").exists() else False, timeout=40, what="a takeover")
    frozen.send_signal(signal.SIGCONT)
    finish([frozen, other])
    study = load(postgres_url, name)
    assert completed(study) == Counter({f"x_{x}_sleep_3_metric_0.5": 1 for x in range(3)})


def test_the_agents_lock_held_elsewhere_never_hangs_an_agent(tmp_path, postgres_url):
    """The agents' lock held by someone who does not let go (an agent frozen in it): this agent starts nothing
    meanwhile but goes on handling signals (it waited in PostgreSQL, deaf to SIGTERM, before)."""
    import hashlib

    import psycopg

    s, name = agents(tmp_path, 1, gpus=1)[0], study_name()
    s.config([{"x": x, "sleep": 0.5, "metric": 0.5} for x in range(20)])
    proc = start(s, postgres_url, name, "--max-processes-per-gpu", "1")
    s.wait_for(lambda: len(s.started()) >= 1, timeout=30, what="the first run")
    key = int.from_bytes(hashlib.sha256(f"train_sweep:{name}".encode()).digest()[:8], "big", signed=True)
    with psycopg.connect(postgres_url) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        time.sleep(2)
        started = len(s.started())
        time.sleep(2)
        assert len(s.started()) == started, "nothing starts while the lock is held"
        proc.send_signal(signal.SIGTERM)
        begun = time.monotonic()
        communicate(proc, 30, "the agent after SIGTERM")
        assert proc.returncode == 130 and time.monotonic() - begun < 15


def test_a_lists_failed_runs_go_again_when_an_agent_starts_again(tmp_path, postgres_url):
    """As one host's resume runs its failed runs again, so does an agent's next start (they stayed failed)."""
    s, name = agents(tmp_path, 1, gpus=1)[0], study_name()
    s.config([{"x": 0, "metric": 0.5}, {"x": 1, "metric": 0.5, "fail_once": str(tmp_path / "failed_once")},
              {"x": 2, "metric": 0.5}])
    first = cli(s, "--storage", postgres_url, "--study-name", name, "--no-live", "--metric", "val_loss")
    assert first.returncode == 1, first.stdout + first.stderr
    again = cli(s, "--storage", postgres_url, "--study-name", name, "--no-live", "--metric", "val_loss")
    assert again.returncode == 0 and "1 failed run(s) of the list go again" in again.stdout, again.stdout
    assert set(completed(load(postgres_url, name))) == {r["model_name"] for r in s.results()}
    assert len(completed(load(postgres_url, name))) == 3


def test_an_agent_with_only_a_time_budget_keeps_the_studys_trial_budget(tmp_path, postgres_url):
    """An agent given --search-hours and no --n-trials set the study's budget to none: the agents with a budget
    then searched without end."""
    hosts, name = agents(tmp_path, 2, gpus=1), study_name()
    space = ["--search", "random", "x=interval(0, 1)", "sleep=0.5", "metric=0.5", "--max-processes-per-gpu", "1"]
    bounded = start(hosts[0], postgres_url, name, "--n-trials", "6", *space)
    hosts[0].wait_for(lambda: len(hosts[0].started()) >= 1, timeout=30, what="the first agent's trial")
    timed = start(hosts[1], postgres_url, name, "--search-hours", str(2 / 3600), *space)
    finish([bounded, timed], timeout=60)
    assert len(load(postgres_url, name).trials) == 6


def test_watch_ends_when_a_grid_budget_is_spent(tmp_path, postgres_url):
    """A grid search given fewer trials than points leaves the other points waiting: they never run, and watch
    (which went on redrawing them) ends."""
    s, name = agents(tmp_path, 1, gpus=1)[0], study_name()
    p = cli(s, "--storage", postgres_url, "--study-name", name, "--no-live", "--metric", "val_loss", "--search",
            "grid", "x=1,2,3", "y=10,20", "--n-trials", "3", "sleep=0.1", "metric=0.5")
    assert p.returncode == 0, p.stdout + p.stderr
    watch = cli(s, "watch", postgres_url, "--study-name", name, "--every", "0.2", trainer=False, timeout=20)
    assert watch.returncode == 0 and "3 of 3 done" in watch.stdout, watch.stdout + watch.stderr


def test_agents_starting_at_once_on_a_fresh_database(tmp_path, postgres_url):
    """Agents started together on a database without Optuna's tables: each let Optuna make them, and all but one
    could fail (duplicate key value violates unique constraint "pg_type_typname_nsp_index", as in CI). A race:
    3 rounds of 4 agents, each on a fresh schema (before the fix, one round in 3 failed here)."""
    import psycopg

    for round_ in range(3):
        schema = f"fresh_{uuid.uuid4().hex[:10]}"  # a database of its own, as far as Optuna sees: its own schema
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}options=-csearch_path%3D{schema}"
        (tmp_path / str(round_)).mkdir()
        hosts, name = agents(tmp_path / str(round_), 4, gpus=1), study_name()
        try:
            for s in hosts:
                s.config([{"x": x, "metric": 0.5} for x in range(4)])
            finish([start(s, url, name) for s in hosts])
            assert complete_runs(hosts) == Counter({f"x_{x}_metric_0.5": 1 for x in range(4)})
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_status_of_a_multi_objective_study_shows_its_pareto_front(tmp_path, postgres_url):
    """status URL of a search with two objectives named no best (it has none): it shows the Pareto front."""
    s, name = agents(tmp_path, 1, gpus=1)[0], study_name()
    command = script(s, "mo.py", "x = float(args['x'])\nprint(f'loss={x:.4f} acc={x * x:.4f}', flush=True)\n")
    p = cli(s, "--storage", postgres_url, "--study-name", name, "--no-live", "--command", command, "--search",
            "nsga2", "--n-trials", "4", "--metric", "loss", "--metric", "acc", "--mode", "min,max", "x=interval(0, 1)",
            trainer=False)
    assert p.returncode == 0, p.stdout + p.stderr
    status = cli(s, "status", postgres_url, "--study-name", name, trainer=False)
    assert status.returncode == 0, status.stdout + status.stderr
    front = load(postgres_url, name).best_trials
    assert f"Pareto front: {len(front)} trial(s): " in status.stdout, status.stdout
    assert all(t.user_attrs["run"] in status.stdout for t in front[:5])


def test_an_agent_passes_over_a_damaged_trial_in_the_shared_study(tmp_path, postgres_url):
    """A trial in the study whose `run` attribute is a list, or whose retry history is not a list of numbers
    (another tool's, or damaged): the agent's start was a TypeError traceback. It is passed over now."""
    optuna = pytest.importorskip("optuna")
    name = study_name()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=name, storage=postgres_url.replace(urlsplit(postgres_url).scheme,
                                                                              "postgresql+psycopg", 1))
    study.enqueue_trial({}, user_attrs={"run": ["x"]})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, system_attrs={"retry_history": 5}))
    (host,) = agents(tmp_path, 1)
    host.config([{"metric": 0.1}])
    p = host.run("--storage", postgres_url, "--study-name", name, "--no-live", "--metric", "val_loss", timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert [r["state"] for r in host.results()] == ["complete"]
