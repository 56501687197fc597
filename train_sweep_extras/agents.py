"""--storage URL: one sweep shared by train_sweep agents on several hosts, through an Optuna study in PostgreSQL.

The same command, started on each host with the same --storage URL (and --study-name), joins one sweep:
  - the study lives in the database (Optuna's RDBStorage, through SQLAlchemy and psycopg); each agent keeps
    its own output folder (its runs' folders and logs, journal, sweep.log, results file). Nothing but the study
    is shared, so no shared filesystem is needed (on one, give each host its own --output-dir);
  - a list or grid is enqueued once, by whichever agent comes first, under a PostgreSQL advisory lock: each run
    is a waiting trial that carries its name; an agent with a free slot takes the next waiting trial (Optuna
    sets it running in one row-locked update, so two agents never take the same one);
  - a search's trials are asked from the shared study under the same lock, so --n-trials holds across agents;
  - each agent records a heartbeat for its trials every --agent-grace/6 seconds; a trial whose heartbeat is
    older than --agent-grace (its agent killed, its host down or cut off) is failed by whichever agent looks
    next and enqueued again with the same parameters (Optuna's RetryFailedTrialCallback): another agent runs it.
    An agent that comes back settles its own trials from its journal, as one host does;
  - a database that does not answer: the agent starts nothing new, its running runs go on and their results go
    to its journal; it tells the study once the database answers again, and gives up (exit 3) after
    UNREACHABLE_S.
Needs: pip install 'train-sweep[agents]' (Optuna, SQLAlchemy, psycopg 3)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from train_sweep import (
    JOURNAL,
    Journal,
    OutputError,
    Plan,
    Run,
    Settings,
    State,
    UserError,
    canonical_json,
    metric_of,
    one_line,
    readable,
    redact,
    run_record,
)
from train_sweep_extras.search import (
    SearchSource,
    earlier_trials,
    grid_points,
    import_optuna,
    make_pruner,
    make_sampler,
    pruner_of,
    settle_orphans,
    stale_runs_interrupted,
)

INSTALL = "pip install 'train-sweep[agents]'"
POLL_S = 2.0  # how often an agent looks at the shared study: waiting trials, others' running ones, stale ones
UNREACHABLE_S = 900.0  # an agent whose database has not answered this long stops (exit 3); nothing is lost
CONNECT_TIMEOUT_S = 10  # a connection that is not made within this long counts as the database not answering
MAX_RETRIES = 3  # a trial taken over this often (its agents keep dying) is not enqueued again
TABLES_KEY = 0x7472_5377_5462_6C73  # the advisory lock under which an agent lets Optuna make its tables
OPEN_WAIT_S = 120.0  # an agent opening the study waits this long for the lock (another may be filling the study)
LOCK_IDLE_S = 30  # PostgreSQL ends the session of an agent that holds the lock and sits idle this long


def agent_name(output_dir: Path) -> str:
    """This agent in the study: its host and output folder (the same agent again after a restart)."""
    return f"{socket.gethostname()}:{output_dir.resolve()}"


def retry_history(trial: Any) -> list[int]:
    """The trial numbers a trial is a copy of (its system attribute), whatever a damaged study holds there."""
    history = trial.system_attrs.get("retry_history")
    return [n for n in history if isinstance(n, int) and not isinstance(n, bool)] if isinstance(history, list) else []


def host_of(agent: str) -> str:
    return agent.split(":", 1)[0]


def check_url(url: str) -> str:
    """The URL SQLAlchemy takes, with psycopg (3) as its driver unless one is named (postgresql+psycopg2://...),
    or a one-line error naming what is wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError as e:
        raise UserError(f"--storage {redact(url)}: {e}") from None
    scheme = parts.scheme.split("+")[0]
    if scheme not in ("postgresql", "postgres") or not parts.hostname and "host=" not in parts.query:
        raise UserError(f"--storage {redact(url)}: give a PostgreSQL URL, postgresql://USER@HOST:PORT/DATABASE "
                        "(the password in ~/.pgpass or PGPASSWORD rather than in the URL); one host needs no "
                        "--storage (the study is a file in the output folder)")
    return url if "+" in parts.scheme else "postgresql+psycopg" + url[len(parts.scheme):]


def _said(e: BaseException, url: str) -> str:
    """A database error in one line, without the password."""
    while e.__cause__ is not None:  # Optuna's StorageInternalError hides SQLAlchemy's, which hides the driver's
        e = e.__cause__
    e = getattr(e, "orig", None) or e
    text = redact(one_line((str(e).strip().splitlines() or [type(e).__name__])[0], 200))
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def open_storage(url: str, grace_s: float) -> Any:
    """Optuna's RDBStorage on the database, its heartbeat on; a one-line UserError if the driver is missing or
    the database cannot be reached (wrong host, port, user, password or database)."""
    import_optuna()
    given, url = url, check_url(url)
    driver = urlsplit(url).scheme.partition("+")[2]
    try:
        importlib.import_module("sqlalchemy")
        importlib.import_module(driver)
        from optuna.storages import RDBStorage
    except ImportError as e:
        install = INSTALL if e.name in ("sqlalchemy", "psycopg") else f"pip install {e.name}"
        raise UserError(f"--storage needs {e.name or 'a newer Optuna (4.9)'}: {install}") from None

    import sqlalchemy

    interval, connect = max(1, round(grace_s / 6)), {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:  # Optuna makes its tables on first use: one agent at a time (two at once
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": TABLES_KEY})  # both made them)
            try:
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True, "connect_args": connect},
                                  heartbeat_interval=interval, grace_period=max(interval + 1, round(grace_s)),
                                  heartbeat_stale_trial_callback=lambda study, trial: None)  # Shared.take_over
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": TABLES_KEY})
    except Exception as e:  # SQLAlchemy's and the driver's errors: unreachable, refused, bad credentials
        raise UserError(f"--storage {redact(given)}: cannot open the study's database: {_said(e, url)}") from None


class Unreachable(Exception):
    """The study's database did not answer: nothing new starts until it does."""


class Busy(Exception):
    """Another agent held the agents' lock too long: try again at the next look."""


class Shared:
    """The shared study and this agent's view of it: the advisory lock, a snapshot of the trials that are not
    finished (refreshed every POLL_S), the counts, and every database call made patient (Unreachable)."""

    def __init__(self, storage: Any, study: Any, agent: str, url: str, say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        import sqlalchemy

        self.optuna = import_optuna()
        self.storage, self.study, self.agent, self.url, self.say, self.clock = storage, study, agent, url, say, clock
        self.sql = sqlalchemy
        self.key = int.from_bytes(hashlib.sha256(f"train_sweep:{study.study_name}".encode()).digest()[:8], "big",
                                  signed=True)
        self.down_since: float | None = None
        self.counts: dict[str, int] = {}  # trials by state
        self.requeued = 0  # trials failed and enqueued again (their copies count instead)
        self.waiting: list[Any] = []
        self.running: list[Any] = []
        self.seen_at = -math.inf  # when every trial was last read
        self.read_s = 0.0  # how long that took
        self.total = 0  # trials in the study
        self.open_at = -math.inf  # when the waiting and running trials were read
        self.best: Any = None  # the best complete trial (one objective)
        self.budget: int | None = study.user_attrs.get("n_trials")  # a search's --n-trials, the last agent's
        storage.heartbeat_stale_trial_callback = storage.failed_trial_callback = self.take_over

    def take_over(self, study: Any, trial: Any) -> None:
        """This agent failed a trial whose agent stopped beating: a copy goes back to wait, with the same
        parameters or run, without the dead agent's name (as Optuna's RetryHeartbeatStaleTrialCallback does, and
        that name is why it is not used: a copy taken by an agent that died before naming itself would look
        like the first agent's). At most MAX_RETRIES copies of a trial."""
        history = [*retry_history(trial), trial.number]
        agent = trial.user_attrs.get("agent", "?")
        again = len(history) <= MAX_RETRIES
        if again:
            attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("agent", "where", "record")}
            study.add_trial(self.optuna.trial.create_trial(
                state=self.optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                user_attrs=attrs, system_attrs={"failed_trial": history[0], "retry_history": history}))
        self.say(f"{'takeover':<11} trial {trial.number} ({trial.user_attrs.get('run', '')}) of {host_of(agent)}: "
                 f"its agent was not heard of for {self.storage.grace_period} s; "
                 + (f"it goes again with the same {'parameters' if trial.params else 'run'}" if again else
                    f"taken over {MAX_RETRIES} times already: it is left failed"))

    def call(self, what: Callable[[], Any]) -> Any:
        """A database call; Unreachable if the database does not answer (said once), OutputError after
        UNREACHABLE_S without an answer."""
        errors = (self.optuna.exceptions.StorageInternalError, self.sql.exc.SQLAlchemyError)
        try:
            result = what()
        except errors as e:
            self._failed(e)
        if self.down_since is not None:
            self.say(f"{'database':<11} the study's database answers again after "
                     f"{self.clock() - self.down_since:.0f} s")
            self.down_since = None
        return result

    def _failed(self, e: BaseException) -> None:
        """The database did not answer: said once; Unreachable, or OutputError after UNREACHABLE_S."""
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            self.say(f"{'database':<11} the study's database does not answer ({_said(e, self.url)}): no new run "
                     "starts until it does; running runs go on")
        elif now - self.down_since > UNREACHABLE_S:
            raise OutputError(f"the study's database {redact(self.url)} has not answered for "
                              f"{UNREACHABLE_S / 60:.0f} min") from None
        raise Unreachable from None

    @contextmanager
    def lock(self, wait_s: float = 2.0, idle_s: int = LOCK_IDLE_S) -> Iterator[None]:
        """Held by one agent at a time: a transaction-level advisory lock, freed when its transaction ends, when
        the agent dies and its connection closes, or when its holder sits idle in it for `idle_s` (an agent
        suspended or cut off while holding it: PostgreSQL ends that session). Held by another for `wait_s`: Busy
        (the agent tries again at its next look, its loop and signals going on meanwhile)."""
        conn = self.call(lambda: self.storage.engine.connect())
        try:
            self.call(lambda: conn.execute(self.sql.text(
                "SELECT set_config('lock_timeout', :wait, true), "
                "set_config('idle_in_transaction_session_timeout', :idle, true)"),
                {"wait": str(round(wait_s * 1000)), "idle": str(idle_s * 1000)}))
            try:  # a wait in PostgreSQL, bounded: a signal is handled once it returns
                conn.execute(self.sql.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.key})
            except self.sql.exc.SQLAlchemyError as e:
                orig = getattr(e, "orig", None)
                if getattr(orig, "sqlstate", None) == "55P03" or getattr(orig, "pgcode", None) == "55P03":
                    raise Busy from None  # lock_not_available: the wait ran out
                self._failed(e)
            yield
            self.call(conn.commit)
        finally:
            try:
                conn.close()
            except Exception:  # a connection lost with the database: nothing to give back
                pass

    def refresh(self, whole: bool = True, force: bool = False) -> None:
        """The snapshot of the study. Always the waiting and running trials and how many there are; `whole`:
        every trial too (their states, which were requeued, the best), read again only once the last whole
        reading is POLL_S old and at least 10 times as old as it took (a study of many trials is read less often)."""
        TS = self.optuna.trial.TrialState
        sid, now = self.study._study_id, self.clock()
        whole = force or whole and now - self.seen_at >= max(POLL_S, 10 * self.read_s)

        def read() -> None:
            began = time.perf_counter()
            open_ = self.storage.get_all_trials(sid, deepcopy=False, states=(TS.WAITING, TS.RUNNING))
            self.waiting = [t for t in open_ if t.state == TS.WAITING]
            self.running = [t for t in open_ if t.state == TS.RUNNING]
            self.total = self.storage.get_n_trials(sid)
            self.open_at = now
            if not whole:
                return
            trials = self.storage.get_all_trials(sid, deepcopy=False)
            self.waiting = [t for t in trials if t.state == TS.WAITING]  # one snapshot with the counts below
            self.running = [t for t in trials if t.state == TS.RUNNING]
            self.total = len(trials)
            self.budget = self.storage.get_study_user_attrs(sid).get("n_trials")
            retried = {n for t in trials for n in retry_history(t)}
            gone = {t.number for t in trials if t.state == TS.FAIL and (t.user_attrs.get("requeued")
                                                                       or t.number in retried)}
            self.requeued = len(gone)
            self.counts = {("failed" if s == TS.FAIL else s.name.lower()): sum(1 for t in trials if t.state == s and t.number not in gone)
                           for s in (TS.COMPLETE, TS.PRUNED, TS.FAIL)}
            complete = [t for t in trials if t.state == TS.COMPLETE and t.values and len(t.values) == 1]
            self.best = None
            if complete and len(self.study.directions) == 1:
                pick = min if self.study.direction == self.optuna.study.StudyDirection.MINIMIZE else max
                self.best = pick(complete, key=lambda t: t.values[0])
            self.read_s = time.perf_counter() - began
            self.seen_at = now
        self.call(read)

    def fail_stale(self) -> None:
        """Trials whose agent stopped beating, failed and taken over (take_over); also a trial taken and never
        named (its agent died between the two): once it has been running twice the grace period."""
        TS, grace = self.optuna.trial.TrialState, self.storage.grace_period

        def look() -> None:
            self.optuna.storages.fail_stale_trials(self.study)
            for t in self.running:
                if "agent" in t.user_attrs or not t.datetime_start or \
                        (datetime.now() - t.datetime_start).total_seconds() < 2 * grace:
                    continue
                with suppress(self.optuna.exceptions.UpdateFinishedTrialError):
                    if self.storage.set_trial_state_values(t._trial_id, state=TS.FAIL):
                        self.take_over(self.study, t)
        self.call(look)

    @property
    def counted(self) -> int:
        """Trials asked that count against the budget: all but the waiting and the requeued."""
        return self.total - len(self.waiting) - self.requeued

    @property
    def done(self) -> int:
        return self.total - len(self.waiting) - len(self.running) - self.requeued

    def others_running(self) -> list[Any]:
        return [t for t in self.running if t.user_attrs.get("agent") != self.agent]

    def hosts(self) -> dict[str, list[str]]:
        """Each agent, with where its trials run now ("GPU 0", ...): named by its host, or by its host and
        output folder where a host has several agents."""
        agents: dict[str, list[str]] = {}
        for t in self.running:
            agents.setdefault(t.user_attrs.get("agent", "?"), []).append(t.user_attrs.get("where", "starting"))
        per_host = Counter(host_of(a) for a in agents)
        return {host_of(a) if per_host[host_of(a)] == 1 else
                f"{host_of(a)}:{'/'.join(Path(a.split(':', 1)[-1]).parts[-2:])}": w for a, w in agents.items()}


def requeue_shared(study: Any, trial: Any, params: Mapping[str, Any] | None, attrs: Mapping[str, Any]) -> None:
    """A trial whose run did not end on its own: marked requeued (its copy counts instead), failed, and enqueued
    again, with the same parameters (a search) or the same run's name (a list)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    number = trial if isinstance(trial, int) else trial.number
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    try:
        study._storage.set_trial_user_attr(trial_id, "requeued", True)
    except UpdateFinishedTrialError:  # another agent took it over: its copy waits already
        return
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(dict(params or {}), user_attrs={k: v for k, v in attrs.items() if k in ("run", "index")},
                        skip_if_exists=False)


class SharedSource(SearchSource):
    """SearchSource on the shared study: trials are taken (a list's) or asked (a search's) under the agents' lock
    when a slot is free, never ahead (a trial held ahead is one another agent could run now); heartbeats for this
    agent's trials; stale trials of others taken over; the live view's line counts every agent's trials."""

    def __init__(self, shared: Shared, runs: Sequence[Run], *args: Any, **kwargs: Any) -> None:
        super().__init__(shared.study, *args, **kwargs)
        self.shared = shared
        self.by_name = {r.name: r for r in runs}
        self.queue.clear()  # a list's runs come from the study's waiting trials
        self.next_look = 0.0
        self.beat_every = max(1.0, float(shared.storage.heartbeat_interval))
        self.next_beat = 0.0
        self.said_where: set[Run] = set()
        self.records: dict[int, dict[str, Any]] = {}  # ended trials' records, set on them when told
        self.asked_time: dict[Run, float] = {}  # when each run's trial was taken (the snapshot is older or not)
        shared.refresh()

    # -- taking a trial ------------------------------------------------------------------------------------
    def _left(self) -> int:
        """How many more trials this agent may take now (under the lock for a search's budget)."""
        if self.search is None:
            return len(self.shared.waiting)
        if self.stopped is None and self.deadline is not None and self.clock() >= self.deadline:
            self._stop(f"the search's time budget ({self.hours:g} h) is used up")
        if self.stopped is not None:
            return 0
        budget = self.shared.budget
        return 1 if budget is None else max(0, budget - self.shared.counted)

    def _take(self) -> Run | None:
        if not self._left() and self.clock() - self.shared.open_at < POLL_S:
            return None  # the snapshot, under POLL_S old, has nothing to take: the database is left alone
        try:
            with self.shared.lock():
                self.shared.refresh(whole=False)
                while self._left() or self._recount():
                    run = self.shared.call(self._ask_one)
                    if run is not None:
                        return run
                    self.shared.refresh(whole=False)
        except (Unreachable, Busy):
            return None
        return None

    def _recount(self) -> bool:
        """A search's budget seems spent: read every trial now, once after each look at the waiting and running
        ones (a trial requeued since the last whole reading counts no more)."""
        if self.search is None or self.shared.seen_at >= self.shared.open_at:
            return False
        self.shared.refresh(force=True)
        return self._left() > 0

    def _ask_one(self) -> Run | None:
        """One trial, set running by Optuna in one row-locked update: a list's next waiting run (None if that
        run was completed here earlier: the study is told so), or a search's trial."""
        TS = self.optuna.trial.TrialState
        if self.search is None:
            trial = self.study.ask()
            run = self.by_name.get(name) if isinstance(name := trial.user_attrs.get("run"), str) else None
            if run is None:  # the study holds this list's runs (its key says so): this one is damaged, or another's
                self.study.tell(trial, state=TS.FAIL)
                return None
            if run.skipped:  # completed here before, and the study was not told (the database was down)
                values = [metric_of(run.metrics, m) for m in self.objectives]
                ok = run.state == State.COMPLETE and all(v is not None and math.isfinite(v) for v in values)
                self.study.tell(trial, values if ok else None, state=TS.COMPLETE if ok else TS.PRUNED
                                if run.state == State.PRUNED else TS.FAIL)
                return None
        else:
            trial = self.study.ask(self.distributions)
            params = {k: self._decode(k, trial.params[k]) for k in self.search.params if k in trial.params}
            run = self.make_run(params, trial.number)
            trial.set_user_attr("run", run.name)
            trial.set_user_attr("command", run.argv)
        self.shared.storage.record_heartbeat(trial._trial_id)  # first: a trial with a heartbeat is never lost
        trial.set_user_attr("agent", self.shared.agent)
        run.trial = trial.number
        self.counted += 1
        self.open[run] = trial
        self.asked_at[run] = run.attempt
        self.asked_time[run] = self.clock()
        return run

    # -- RunSource ---------------------------------------------------------------------------------------
    def next(self) -> Run | None:
        return self._take()

    def prepare(self) -> None:
        now = self.clock()
        try:
            self._tell_ended()
            new = [run for run in self.open if run not in self.said_where and run.gpus]
            if new or now >= self.next_beat:
                self.next_beat = now + self.beat_every
                self.shared.call(self._beat)
            if now >= self.next_look:
                self.next_look = now + POLL_S
                self.shared.fail_stale()
                self.shared.refresh()
                self.front = None
        except Unreachable:
            pass

    def _beat(self) -> None:
        for run, trial in self.open.items():
            self.shared.storage.record_heartbeat(trial._trial_id)
            if run not in self.said_where and run.gpus:
                self.said_where.add(run)
                with suppress(self.optuna.exceptions.UpdateFinishedTrialError):  # taken over meanwhile
                    trial.set_user_attr("where", ", ".join(f"GPU {g}" if g >= 0 else "CPU" for g in run.gpus))

    def _tell_ended(self) -> None:
        while self.tells:
            trial, state, values = self.tells[0]
            try:
                self.shared.call(lambda t=trial, s=state, v=values: self._tell(t, s, v))
            except OSError as e:
                raise OutputError(f"cannot write the study: {e}") from None
            self.tells.pop(0)
            self.records.pop(trial.number, None)
            self.front = None

    def _tell(self, trial: Any, state: Any, values: list[float] | None) -> None:
        """Tell an ended trial, with its record (every agent's results in one place: report --storage); one
        that another agent took over in the meantime is finished already: its copy is the one that counts."""
        with suppress(self.optuna.exceptions.UpdateFinishedTrialError):
            record = self.records.get(trial.number)
            if record is not None:
                trial.set_user_attr("record", record)
            self.study.tell(trial, values, state=state, skip_if_finished=True)

    def pending(self) -> int:
        """The trials left to take, and the other agents' running ones (taken over if their agent dies): an
        agent waits for those before it ends."""
        left = self._left()  # (the others' running ones count as one: the progress line counts this agent's runs)
        if not left:
            with suppress(Unreachable):
                left = self._recount()
        return left or int(bool(self.shared.others_running()))

    def remaining(self) -> list[Run]:
        return []  # the study keeps what is left, for every agent

    def report(self, run: Run, step: int | None, values: Mapping[str, float]) -> str | None:
        trial = self.open.get(run)
        if trial is not None and self.shared.open_at > self.asked_time.get(run, math.inf) and \
                all(t.number != trial.number for t in self.shared.running):
            return "another agent took its trial over (this agent's heartbeat was missed longer than --agent-grace)"
        try:
            return super().report(run, step, values)
        except (self.shared.sql.exc.SQLAlchemyError, self.optuna.exceptions.StorageInternalError,
                self.optuna.exceptions.UpdateFinishedTrialError):  # the database down, the trial taken over
            return None

    def finished(self, run: Run) -> None:
        trial = self.open.get(run)
        if trial is not None and run.state != State.INTERRUPTED:
            self.records[trial.number] = {**run_record(run, tails=False), "host": socket.gethostname()}
        super().finished(run)

    def _requeue(self, trial: Any, ran: bool = False) -> None:
        attrs = dict(trial.user_attrs) if hasattr(trial, "user_attrs") else {}
        try:
            self.shared.call(lambda: requeue_shared(self.study, trial, trial.params if self.search else None,
                                                    attrs))
        except Unreachable:
            return  # its heartbeat stops: another agent takes it over after the grace period
        self.requeued.add(trial.number)
        self.counted -= not ran  # (as SearchSource._requeue)

    def status(self) -> str | None:
        s = self.shared
        total = f"/{s.budget}" if self.search is not None and s.budget else \
            f"/{s.done + len(s.running) + len(s.waiting)}" if self.search is None else ""
        what = f"search {self.search.sampler}" if self.search is not None else "runs"
        parts = [f"{what}: {s.done}{total} done by every agent"]
        hosts = s.hosts()
        if hosts:
            parts.append("running: " + "; ".join(f"{h} {len(w)} ({', '.join(sorted(set(w)))})"
                                                 for h, w in sorted(hosts.items())))
        parts += [f"{s.counts[k]} {k}" for k in ("pruned", "failed") if s.counts.get(k)]
        if s.best is not None and self.objectives:
            shown = " ".join(f"{k}={readable(self._decode(k, v))}" for k, v in s.best.params.items())
            parts.append(f"best {self.objectives[0]}={s.best.values[0]:.4g} ({s.best.user_attrs.get('run', '')}"
                         + (f": {shown}" if shown else "") + ")")
        if s.down_since is not None:
            parts.append("the database does not answer")
        if self.stopped:
            parts.append(self.stopped)
        return ", ".join(parts)

    def summary(self) -> list[str]:
        b = self.shared.best
        if self.search is not None and b is not None:  # the best of every agent's trials, not only this one's
            self.best = (b.values[0], {k: self._decode(k, v) for k, v in b.params.items()}, b.user_attrs.get("run", ""),
                         list(b.user_attrs.get("command") or []))
        lines = super().summary()
        return [line for line in lines if not line.startswith("Study:")] + [
            f"Study: {self.study.study_name} in {redact(self.shared.url)} (every agent's runs: train_sweep status "
            f"--storage URL; one results file: train_sweep report --storage URL --results FILE)"]

    def wake_at(self, now: float) -> float | None:
        times = [self.next_look, self.next_beat] + ([self.deadline] if self.stopped is None and self.deadline else [])
        return min(times)

    def close(self) -> None:
        end = self.clock() + 30.0  # the database down: try to tell it for a while, then leave it to the journal
        while True:
            try:
                self._tell_ended()
                break
            except Unreachable:
                if self.clock() > end:
                    self.say(f"{'database':<11} {len(self.tells)} ended trial(s) could not be told; this agent's "
                             "next start tells them from its journal")
                    break
                time.sleep(1.0)
        for run, trial in list(self.open.items()):
            self.open.pop(run)
            self._requeue(trial)
        with suppress(Unreachable):
            self.shared.refresh(force=True)  # the summary's line: the study as this agent leaves it


class SharedSetup:
    """The run source of an agent (--storage): the shared study opened (made by the first agent), checked to be
    this sweep's, the list enqueued once, this agent's own orphans settled; the earlier trials from its journal."""

    @staticmethod
    def resolve(settings: Settings) -> Settings:
        """--storage: its study's name and grace period, resolved with the other flags (check: the rest)."""
        if not (settings.storage or "").strip():  # (--storage "$DB_URL" unset: each host ran the whole sweep alone)
            raise UserError(f"--storage {settings.storage!r}: the database URL is empty (postgresql://USER@HOST/DB)")
        if settings.study_name is not None and not settings.study_name.strip():  # (it took the default study)
            raise UserError("--study-name '': a study's name is not empty")
        return dataclasses.replace(settings, study_name=settings.study_name or "train_sweep",
                                   agent_grace=settings.agent_grace or 120.0)

    @staticmethod
    def check(plan: Plan) -> None:
        """Said before anything starts: a missing driver or Optuna, a sampler or a pruner that cannot run here."""
        settings, search = plan.settings, plan.search
        refused = [(flag, why) for flag, value, why in (
            ("--backend slurm", settings.backend != "local", "Slurm shares a sweep's runs out itself: use one of them"),
            ("--rerun", settings.rerun, "the study is every agent's: give a new --study-name to start afresh"),
            ("--warm-start", settings.warm_start, "seed a single-host search instead")) if value]
        if refused:
            raise UserError(f"{refused[0][0]} does not go with --storage: {refused[0][1]}")
        if importlib.util.find_spec("optuna") is None:
            raise UserError(f"--storage needs Optuna: {INSTALL}")
        optuna = import_optuna()
        open_storage(settings.storage, 60.0).engine.dispose()  # reachable, with these credentials: or one line
        if not settings.metric:
            raise UserError("--storage needs --metric NAME: the shared study records each run's result by it")
        make_pruner(optuna, *pruner_of(settings, search))
        if search is not None:
            make_sampler(optuna, search, 0, len(settings.modes))

    def __init__(self, plan: Plan, journal: Journal, say: Callable[[str], None]) -> None:
        self.plan, self.journal, self.say = plan, journal, say
        settings, search = plan.settings, plan.search
        self.output_dir = Path(settings.output_dir)
        self.agent = agent_name(self.output_dir)
        optuna = import_optuna()
        storage = open_storage(settings.storage, settings.agent_grace)
        directions = ["minimize" if m == "min" else "maximize" for m in settings.modes]
        objectives = settings.metric[: len(directions)] if search is not None else settings.metric[:1]
        directions = directions[: len(objectives) or 1]
        pruner = make_pruner(optuna, *pruner_of(settings, search))
        if search is not None:  # its space, fixed values, metrics and command, and the sampler
            key = canonical_json({"search": search.space_key(objectives, settings.modes, settings.command),
                                  "sampler": search.sampler})
        else:  # every run, its hyperparameters and command (identity), and the metrics
            key = canonical_json({"list": [[r.name, r.identity] for r in plan.runs], "metrics": list(objectives),
                                  "modes": list(settings.modes)})
        name, where = settings.study_name, f"the study {settings.study_name} in {redact(settings.storage)}"
        try:
            study = optuna.create_study(storage=storage, study_name=name, pruner=pruner, directions=directions,
                                        load_if_exists=True)
        except (ValueError, optuna.exceptions.StorageInternalError) as e:
            raise UserError(f"{where}: {_said(e, settings.storage)}") from None
        self.shared = Shared(storage, study, self.agent, settings.storage, say)
        try:
            with self.shared.lock(OPEN_WAIT_S, idle_s=600):  # one at a time: the first fills the study
                made_for = study.user_attrs.get("search")
                if made_for is None:
                    study.set_user_attr("search", key)
                elif made_for != key:
                    raise UserError(f"{where} was made for another sweep (other runs or values, search space, "
                                    "sampler, metrics or command): give this one another --study-name")
                if [d.name.lower() for d in study.directions] != directions:
                    raise UserError(f"{where} ranks by other objectives: give this sweep another --study-name")
                self._fill(study, search)
                budget = study.user_attrs.get("n_trials", settings.n_trials)
                if search is not None and settings.n_trials is not None and \
                        ("n_trials" not in study.user_attrs or budget != settings.n_trials):
                    study.set_user_attr("n_trials", settings.n_trials)  # the last agent started says it
                    if budget != settings.n_trials:
                        say(f"{'search':<11} the study's budget was {budget or 'none'} trial(s); it is now "
                            f"{settings.n_trials} (this agent's --n-trials), for every agent")
        except Unreachable:
            raise UserError(f"{where}: the database stopped answering while the study was opened") from None
        except Busy:
            raise UserError(f"{where}: another agent has held the agents' lock for {OPEN_WAIT_S:.0f} s; try again "
                            f"(PostgreSQL frees it within {LOCK_IDLE_S} s of its holder stopping)") from None
        if search is not None:  # each agent draws from a seed of its own: two agents never sample the same points
            seed = settings.seed if search.seed is None else search.seed
            seed = (seed + int(hashlib.sha256(self.agent.encode()).hexdigest()[:8], 16)) % 2**32
            study.sampler = make_sampler(optuna, search, seed, len(directions))
        self._settle(study, objectives)
        self.study, self.objectives = study, objectives

    def _fill(self, study: Any, search: Any) -> None:
        """What the sweep's study holds before any trial is asked: the list's runs (each once; at every agent's
        start, a run whose every trial failed goes again, as one host's resume runs its failed runs again), a
        grid search's points, a search's first point."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        if search is None:
            tried: dict[str, list[Any]] = {}
            for t in trials:
                if isinstance(name := t.user_attrs.get("run"), str):  # (another tool's trial, or damaged: no run)
                    tried.setdefault(name, []).append(t)
            again = 0
            for run in self.plan.runs:
                past = tried.get(run.name, [])
                if not past or all(t.state == TrialState.FAIL for t in past):
                    study.enqueue_trial({}, user_attrs={"run": run.name, "index": run.index})
                    again += bool(past)
            if again:
                self.say(f"{'resume':<11} {again} failed run(s) of the list go again")
            return
        if study.user_attrs.get("filled"):
            return
        present = {t.user_attrs.get("run") for t in trials}
        if search.sampler == "grid" and not present - {None}:
            import itertools
            space = grid_points(search)
            for point in itertools.product(*space.values()):
                study.enqueue_trial(dict(zip(space, point)))
        elif search.first and not study.trials:
            study.enqueue_trial(search.first)
        study.set_user_attr("filled", True)

    def _settle(self, study: Any, objectives: Sequence[str]) -> None:
        """This agent's trials left running when it died: told from its journal, else put back."""
        search = self.plan.search is not None
        settle_orphans(study, search, self.journal, objectives, self.say,
                       mine=lambda t: t.user_attrs.get("agent") == self.agent,
                       put_back=lambda t: requeue_shared(study, t, t.params if search else None, t.user_attrs))
        stale_runs_interrupted(self.output_dir)  # (a list's too: its runs go again by name, attempts counted on)

    def earlier(self) -> list[tuple[Run, dict[str, Any]]]:
        """This agent's trials that ended for good in its earlier sweeps (a search's; a list resumes by name)."""
        return earlier_trials(self.journal, self.output_dir)

    def source(self, runs: list[Run], say: Callable[[str], None]) -> SharedSource:
        settings, search = self.plan.settings, self.plan.search
        self.shared.say = say  # the sweep's events from now on (takeovers, the database's outages)
        source = SharedSource(self.shared, self.plan.runs if search is None else [], search, self.plan.make_run,
                              objectives=self.objectives, modes=settings.modes, n_trials=settings.n_trials,
                              hours=settings.search_hours, say=say, pruner=pruner_of(settings, search)[:2],
                              path=Path(self.output_dir / JOURNAL))
        s = self.shared
        say(f"agents: this is {self.agent} on the study {self.study.study_name} in {redact(settings.storage)}: "
            f"{s.done} done, {len(s.running)} running on {len(s.hosts())} host(s), {len(s.waiting)} waiting")
        return source


# -- status and report over the study -----------------------------------------------------------------------

def open_study(url: str, study_name: str) -> tuple[Any, Any]:
    """The study (and its storage) of a shared sweep, for status and report: a one-line UserError if missing."""
    optuna = import_optuna()
    storage = open_storage(url, 60.0)
    try:
        return optuna.load_study(study_name=study_name, storage=storage), storage
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") or "none"
        raise UserError(f"{redact(url)} has no study {study_name!r} (it has {shown}); --study-name NAME") from None


def status_lines(url: str, study_name: str) -> tuple[list[str], bool]:
    """`train_sweep status URL`: every agent's trials by state, each host's running runs, the best; and whether
    any trial runs or waits."""
    study, storage = open_study(url, study_name)
    shared = Shared(storage, study, "", url, lambda _: None)
    shared.refresh()
    total = shared.budget or shared.done + len(shared.running) + len(shared.waiting)
    counts = ", ".join(f"{n} {k}" for k, n in shared.counts.items() if n) or "none"
    lines = [f"study {study_name} in {redact(url)}: {shared.done} of {total} done ({counts}; {shared.requeued} "
             f"taken over or requeued, not counted), {len(shared.running)} running, {len(shared.waiting)} waiting"]
    for host, where in sorted(shared.hosts().items()):
        lines.append(f"  {host}: {len(where)} running ({', '.join(sorted(set(where)))})")
    if shared.best is not None:
        b = shared.best
        lines.append(f"best: {b.user_attrs.get('run', b.number)} {b.values[0]:.4g} on "
                     f"{(b.user_attrs.get('record') or {}).get('host', '?')}")
    elif len(study.directions) > 1 and shared.counts.get("complete"):  # several objectives: the Pareto front
        front = study.best_trials
        lines.append(f"Pareto front: {len(front)} trial(s): " + ", ".join(
            f"{t.user_attrs.get('run', t.number)} (" + ", ".join(f"{v:.4g}" for v in t.values) + ")"
            for t in front[:5]) + (f" and {len(front) - 5} more" if len(front) > 5 else ""))
    left = shared.budget is None or shared.counted < shared.budget  # a grid's points past the budget never run
    return lines, bool(shared.running or shared.waiting and left)


def gathered(url: str, study_name: str) -> list[dict[str, Any]]:
    """Every agent's finished runs, from the study: their records as each agent's results file has them (a host,
    no log tails), in trial order."""
    study, _ = open_study(url, study_name)
    out = []
    for t in study.get_trials(deepcopy=False):
        record = t.user_attrs.get("record")
        if isinstance(record, dict) and not t.user_attrs.get("requeued"):
            out.append({**record, "trial": t.number})
    return out

