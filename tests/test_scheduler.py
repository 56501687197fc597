"""The scheduling core, driven by a fake probe, a fake clock and a fake launcher: no processes, no sleeps."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import pytest

from train_sweep import Backend, LocalBackend, Placement, CPU, HINT_OOM, HINT_TIMEOUT, GpuPool, GpuReading, Launcher, ListSource, LocalLauncher, NoGpuLeft, Outcome, Policy, Progress, Reporter, ResultsWriter, Run, RunSource, Settings, SettleTracker, State, Sweep, Wakeups, classify, pick_gpus, requeue_reason
from train_sweep_extras.search import SearchSource
from train_sweep_extras.slurm import ClusterSlots, SlurmBackend, SlurmLauncher

GB = 1024.0


def reading(i: int, used_gb: float, pids: int = 0) -> GpuReading:
    return GpuReading(i, "fake", used_gb * GB, 80 * GB, 0, frozenset(range(1000 + 10 * i, 1000 + 10 * i + pids)))


def never(_: int) -> bool:
    return False


def test_pick_lowest_memory_then_fewest_processes_then_lowest_index():
    policy = Policy(max_per_gpu=2)
    readings = {0: reading(0, 10), 1: reading(1, 5), 2: reading(2, 5)}
    assert pick_gpus([0, 1, 2], {}, readings, never, policy)[0] == (1,)
    readings = {0: reading(0, 5, pids=3), 1: reading(1, 5, pids=1)}
    assert pick_gpus([0, 1], {}, readings, never, policy)[0] == (1,)
    readings = {0: reading(0, 5), 1: reading(1, 5)}
    assert pick_gpus([0, 1], {}, readings, never, policy)[0] == (0,)


def test_gpu_over_the_threshold_or_out_of_slots_takes_nothing():
    policy = Policy(max_per_gpu=1, memory_threshold_mb=40 * GB)
    readings = {0: reading(0, 45), 1: reading(1, 1)}
    assert pick_gpus([0, 1], {}, readings, never, policy)[0] == (1,)
    gpu, why = pick_gpus([0, 1], {1: 1}, readings, never, policy)
    assert gpu is None and "GPU 0: 45.0 GB used >= 40 GB" in why
    gpu, why = pick_gpus([0, 1], {0: 1, 1: 1}, readings, never, policy)
    assert gpu is None and "maximum number of runs" in why


def test_slots_only_without_readings():
    policy = Policy(max_per_gpu=2, memory_threshold_mb=None)
    assert pick_gpus([0, 1], {0: 1}, None, never, policy)[0] == (1,)
    assert pick_gpus([0, 1], {0: 1, 1: 1}, None, never, policy)[0] == (0,)
    assert pick_gpus([0, 1], {0: 2, 1: 2}, None, never, policy)[0] is None
    assert pick_gpus([CPU], {CPU: 0}, None, never, policy)[0] == (CPU,)


def test_max_parallel_caps_all_gpus():
    policy = Policy(max_per_gpu=4, memory_threshold_mb=None, max_parallel=3)
    gpu, why = pick_gpus([0, 1], {0: 2, 1: 1}, None, never, policy)
    assert gpu is None and "--max-parallel 3" in why


def test_settling_waits_for_growth_then_stability():
    tracker = SettleTracker(Policy(settle_timeout_s=60, settle_stable_s=2))
    tracker.launched(0, now=0.0, used_mb=1000)
    tracker.observe(0, 0.5, 1000)
    assert tracker.settling(0, 0.5)  # nothing allocated yet
    tracker.observe(0, 1.0, 3000)
    assert tracker.settling(0, 1.0)  # grew, but not yet steady
    tracker.observe(0, 2.0, 9000)
    tracker.observe(0, 3.0, 9010)
    assert tracker.settling(0, 3.0)  # steady for 1 s only
    tracker.observe(0, 4.5, 9020)
    assert not tracker.settling(0, 4.5)  # steady for 2.5 s: settled


def test_settling_ends_at_the_timeout_or_when_the_run_ends():
    tracker = SettleTracker(Policy(settle_timeout_s=10))
    tracker.launched(0, 0.0, 1000)
    tracker.observe(0, 5.0, 1000)
    assert tracker.settling(0, 9.9)
    assert not tracker.settling(0, 10.0)
    tracker.launched(1, 0.0, 1000)
    tracker.ended(1)
    assert not tracker.settling(1, 0.1)


# -- pure outcome rules -------------------------------------------------------------------------


def test_classify_the_end_of_an_attempt():
    never_oom = lambda: False  # noqa: E731
    assert classify(Outcome(0), None, never_oom) == State.COMPLETE
    assert classify(Outcome(1), None, never_oom) == State.FAILED
    assert classify(Outcome(1), None, lambda: True) == State.OOM
    assert classify(Outcome(-15), State.INTERRUPTED, never_oom) == State.INTERRUPTED
    assert classify(Outcome(-15), State.TIMEOUT, never_oom) == State.TIMEOUT
    assert classify(Outcome(0), State.INTERRUPTED, never_oom) == State.INTERRUPTED  # sys.exit(0) on SIGTERM
    assert classify(Outcome(0), State.TIMEOUT, never_oom) == State.TIMEOUT
    assert classify(Outcome(None, hint=HINT_TIMEOUT), None, never_oom) == State.TIMEOUT
    assert classify(Outcome(1, hint=HINT_OOM), None, never_oom) == State.OOM

    def must_not_read_logs() -> bool:
        raise AssertionError("a run that exited 0 needs no log reading")

    assert classify(Outcome(0), None, must_not_read_logs) == State.COMPLETE


def test_requeue_reason_follows_the_counts(tmp_path):
    run = Run(0, "r", {}, ["x"], tmp_path / "r")
    run.state = State.FAILED
    assert requeue_reason(run, retries=1, max_oom_requeues=3) == "retry 1/1 queued after the runs not yet started"
    run.retries_used = 1
    assert requeue_reason(run, retries=1, max_oom_requeues=3) is None
    run.state = State.OOM
    assert requeue_reason(run, retries=0, max_oom_requeues=1).startswith("out of GPU memory: requeued (1/1)")
    run.ooms = 1
    assert requeue_reason(run, retries=0, max_oom_requeues=1) is None
    run.state = State.INTERRUPTED
    assert requeue_reason(run, retries=5, max_oom_requeues=5) is None


def test_progress_bracket_names_only_states_that_occurred():
    def progress(**counts):
        full = {"complete": 0, "failed": 0, "timeout": 0, "oom": 0, "interrupted": 0, "running": 0, "pending": 0}
        full.update(counts)
        return Progress(full, sum(full.values()), None, (), (), {}, None, None, None)

    assert progress(pending=4).bracket() == "[complete 0 | running 0 | pending 4]"
    assert progress(complete=3, interrupted=2, running=1).bracket() == \
        "[complete 3 | interrupted 2 | running 1 | pending 0]"


def test_pool_takes_out_a_gpu_whose_nvml_keeps_failing_and_says_when_none_is_left():
    class Probe:
        failed: dict[int, str] = {}

        def read(self, indexes):
            return {i: reading(i, 1) for i in indexes if i not in self.failed}

    probe = Probe()
    pool = GpuPool([0, 1], Policy(), probe)
    run = Run(0, "r", {}, ["x"], Path("r"))
    assert pool.place(run, 0.0)[0] == (0,)
    probe.failed = {0: "Unknown Error"}
    assert pool.place(run, 1.0)[0] == (1,)
    assert pool.gpus == [1] and "GPU 0 taken out" in pool.notes[0]
    probe.failed = {0: "x", 1: "Unknown Error"}
    with pytest.raises(NoGpuLeft):
        pool.read(2.0)


# -- the event loop with a fake launcher and a fake clock --------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclasses.dataclass
class FakeJob:
    run: Run
    end: float
    killed: bool = False


class FakeLauncher:
    """A Launcher: runs take `duration` seconds of fake time; a run allocates `mem_gb` on its GPU 1 s after
    it starts. Stopping a run ends it at once."""

    def __init__(self, clock: Clock, durations: dict[str, float], mem_gb: float) -> None:
        self.clock, self.durations, self.mem_gb = clock, durations, mem_gb
        self.jobs: list[FakeJob] = []
        self.log: list[tuple[float, str, tuple[int, ...]]] = []
        self.notes: list[str] = []

    own_timeout = False

    def stopping(self, running: int) -> str:
        return f"ending {running} fake run(s)"

    def detached(self, runs, pending: int) -> list[str]:
        return []

    def start(self, run: Run, gpus: tuple[int, ...]) -> FakeJob:
        job = FakeJob(run, self.clock.t + self.durations[run.name])
        self.jobs.append(job)
        self.log.append((self.clock.t, run.name, tuple(gpus)))
        return job

    def poll(self, handle: FakeJob) -> Outcome | None:
        if handle.killed:
            return Outcome(-15)
        return Outcome(0) if self.clock.t >= handle.end else None

    def stop(self, handle: FakeJob, hard: bool) -> bool:
        if self.clock.t >= handle.end:
            return False
        handle.killed = True
        return True

    def observe(self, handle: FakeJob) -> list[str]:
        return []

    def next_poll(self, now: float) -> float | None:
        return None

    def flush(self) -> None:
        """Fake runs start at once."""

    def describe(self) -> list[str]:
        return []

    def queued(self) -> int:
        return 0

    def withdraw(self, handle: FakeJob) -> bool:
        return False

    def close(self, detach: bool = False) -> None:  # the loop lets its launcher go only once every run has ended
        assert all(job.killed or self.clock.t >= job.end for job in self.jobs)

    def used_gb(self, gpu: int) -> float:
        return sum(
            self.mem_gb for j in self.jobs
            if j.run.gpus == (gpu,) and not j.killed and j.run.started_at + 1.0 <= self.clock.t < j.end
        )


class FakeSource(ListSource):
    """A RunSource that records what the loop told it."""

    def __init__(self, runs) -> None:
        super().__init__(runs)
        self.finished_runs: list[str] = []

    def finished(self, run: Run) -> None:
        self.finished_runs.append(run.name)


class FakeProbe:
    def __init__(self, launcher: FakeLauncher, gpus: int) -> None:
        self.launcher, self.gpus, self.failed = launcher, gpus, {}
        self.reads = 0

    def read(self, indexes):
        self.reads += 1
        return {i: reading(i, 0.5 + self.launcher.used_gb(i)) for i in indexes}


class SimWakeups(Wakeups):
    """The loop's sleep, simulated: it advances the fake clock to the next event instead of sleeping."""

    def __init__(self, clock: Clock, launcher: FakeLauncher) -> None:
        super().__init__()
        self.clock, self.launcher = clock, launcher
        self.sweep: Sweep | None = None

    def install(self):
        return lambda: None

    def wait(self, timeout):
        active = self.sweep.active
        if any(j.killed or j.end <= self.clock.t for j in self.launcher.jobs if j.run in active):
            return  # a process just exited or was killed: SIGCHLD would wake the real loop at once
        ends = [j.end for j in self.launcher.jobs if not j.killed and j.end > self.clock.t]
        candidates = ends + ([self.clock.t + timeout] if timeout is not None else [])
        assert candidates, "the loop would sleep forever"
        self.clock.t = min(candidates)


def sim_sweep(source, launcher, pool, results, settings, clock) -> Sweep:
    """The real loop with a fake launcher, a fake clock and simulated sleeps."""
    wakeups = SimWakeups(clock, launcher)
    sweep = Sweep(source, launcher, pool, results, Reporter(stream=open("/dev/null", "w")), settings, clock=clock,
                  wakeups=wakeups)
    wakeups.sweep = sweep
    return sweep


def simulate(tmp_path: Path, durations: dict[str, float], gpus: int, policy: Policy, mem_gb: float = 10,
             timeout: float = 0):
    clock = Clock()
    runs = [Run(i, name, {}, ["x"], tmp_path / name) for i, name in enumerate(durations)]
    for run in runs:
        run.run_dir.mkdir()
    launcher = FakeLauncher(clock, durations, mem_gb)
    probe = FakeProbe(launcher, gpus)
    source = FakeSource(runs)
    sweep = sim_sweep(source, launcher, GpuPool(list(range(gpus)), policy, probe), ResultsWriter(tmp_path / "results.json"),
                      Settings(timeout=timeout, kill_grace=1.0), clock)
    code = sweep.run()
    assert sorted(source.finished_runs) == sorted(durations)  # the source hears of every run that ended
    return code, launcher.log, runs, clock


def test_sim_every_gpu_busy_and_next_run_starts_when_one_ends(tmp_path):
    durations = {f"r{i}": d for i, d in enumerate([5, 3, 4, 1, 2, 6])}
    code, log, runs, clock = simulate(tmp_path, durations, gpus=2, policy=Policy(max_per_gpu=1))
    assert code == 0
    starts = {name: (t, g) for t, name, g in log}
    assert starts["r0"] == (0.0, (0,)) and starts["r1"] == (0.0, (1,))
    assert starts["r2"] == (3.0, (1,))  # r1 ended at 3 on GPU 1: r2 starts at once
    assert starts["r3"] == (5.0, (0,))
    assert starts["r4"] == (6.0, (0,)) and starts["r5"] == (7.0, (1,))
    assert clock.t == 13.0  # r5 (6 s) starts at 7 on GPU 1, the first GPU to free up
    assert all(r.state == State.COMPLETE for r in runs)


def test_sim_packing_waits_for_the_first_runs_memory(tmp_path):
    policy = Policy(max_per_gpu=2, memory_threshold_mb=40 * GB, settle_timeout_s=60, settle_stable_s=2)
    code, log, runs, clock = simulate(tmp_path, {"a": 20, "b": 20, "c": 20}, gpus=1, policy=policy, mem_gb=25)
    starts = {name: t for t, name, _ in log}
    assert starts["a"] == 0.0
    assert starts["b"] >= 3.0  # allocated at 1 s, steady for 2 s
    assert starts["c"] >= 20.0  # a+b hold 50 GB > 40 GB: c waits for one to end


def test_sim_timeout_ends_a_run_and_records_it(tmp_path):
    code, log, runs, clock = simulate(tmp_path, {"slow": 100, "fast": 1}, gpus=1, policy=Policy(), timeout=10)
    assert code == 1
    assert runs[0].state == State.TIMEOUT and runs[1].state == State.COMPLETE
    assert [t for t, name, _ in log if name == "fast"] == [10.0]


def test_sim_no_polling_while_runs_wait_only_for_slots(tmp_path):
    durations = {f"r{i}": 10 for i in range(6)}
    clock = Clock()
    runs = [Run(i, name, {}, ["x"], tmp_path / name) for i, name in enumerate(durations)]
    for run in runs:
        run.run_dir.mkdir()
    launcher = FakeLauncher(clock, durations, 1)
    probe = FakeProbe(launcher, 2)
    sweep = sim_sweep(ListSource(runs), launcher, GpuPool([0, 1], Policy(), probe), ResultsWriter(tmp_path / "r.json"),
                      Settings(timeout=0), clock)
    assert sweep.run() == 0
    assert probe.reads <= 8  # one read per tick that places runs (4 ticks here), not a polling loop


def test_an_expired_oom_wait_does_not_spin_the_loop(tmp_path):
    """After OOM_WAIT_S, a waiter that still cannot start (no free slot) must not make the loop wake at once
    again and again (before: a wake-up time in the past, 100% CPU)."""
    from train_sweep import GpuPool, ListSource, Policy, Reporter, ResultsWriter, Run, Settings, Sweep

    class Idle:
        own_timeout = False

        def next_poll(self, now):
            return None

    run = Run(0, "r", {}, ["x"], tmp_path / "r")
    sweep = Sweep(ListSource([]), Idle(), GpuPool([0], Policy(), None), ResultsWriter(tmp_path / "res.json"),
                  Reporter(stream=open(os.devnull, "w")), Settings())
    sweep.oom_wait[run] = -10_000.0  # waiting since long ago
    wake = sweep._next_wakeup(0.0)
    assert wake is None or wake > 0, wake


# -- the protocols: the real classes and the fakes cannot drift apart ---------------------------


def _methods(cls) -> dict[str, list[str]]:
    return {name: list(inspect.signature(getattr(cls, name)).parameters)
            for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


@pytest.mark.parametrize("protocol, implementations", [
    (Launcher, [LocalLauncher, FakeLauncher, SlurmLauncher]),
    (RunSource, [ListSource, FakeSource, SearchSource]),
    (Placement, [GpuPool, ClusterSlots]),
    (Backend, [LocalBackend, SlurmBackend]),
])
def test_implementations_match_their_protocol(protocol, implementations):
    wanted = _methods(protocol)
    assert wanted, "the protocol has methods"
    for cls in implementations:
        have = _methods(cls)
        for name, params in wanted.items():
            assert name in have, f"{cls.__name__} lacks {name}"
            assert have[name] == params, f"{cls.__name__}.{name}{have[name]} != {protocol.__name__}.{name}{params}"
