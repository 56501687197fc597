"""The scheduling core, driven by a fake probe, a fake clock and a fake launcher: no processes, no sleeps."""

from __future__ import annotations

from pathlib import Path

from train_sweep import (
    CPU, GpuReading, ListSource, Policy, Proc, Reporter, ResultsWriter, Run, SettleTracker, State, Sweep, pick_gpus,
)

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


# -- the event loop with a fake launcher and a fake clock --------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakePopen:
    def __init__(self, clock: Clock, duration: float, pid: int) -> None:
        self.clock, self.end, self.pid = clock, clock.t + duration, pid
        self.killed = False

    def poll(self):
        if self.killed:
            return -9
        return 0 if self.clock.t >= self.end else None


class FakeLauncher:
    """Runs take `duration` seconds of fake time; a run allocates `mem_gb` on its GPU 1 s after start."""

    guardian = None

    def __init__(self, clock: Clock, durations: dict[str, float], mem_gb: float) -> None:
        self.clock, self.durations, self.mem_gb = clock, durations, mem_gb
        self.procs: list[Proc] = []
        self.log: list[tuple[float, str, tuple[int, ...]]] = []

    def start(self, run: Run, gpus, deadline, logs=()):
        for f in logs:
            f.close()
        proc = Proc(run, FakePopen(self.clock, self.durations[run.name], 100 + len(self.procs)), "id", deadline)
        self.procs.append(proc)
        self.log.append((self.clock.t, run.name, tuple(gpus)))
        return proc

    def signal_tree(self, proc, sig, exclude):
        proc.popen.killed = True

    def leftovers_alive(self, proc, exclude):
        return False

    def finished(self, proc):
        pass

    def close(self):  # the loop lets its launcher go only once every run has ended
        assert all(p.popen.poll() is not None for p in self.procs)

    def used_gb(self, gpu: int) -> float:
        return sum(
            self.mem_gb for p in self.procs
            if p.run.gpus == (gpu,) and p.popen.poll() is None and self.clock.t >= p.run.started_at + 1.0
        )


class FakeProbe:
    def __init__(self, launcher: FakeLauncher, gpus: int) -> None:
        self.launcher, self.gpus, self.failed = launcher, gpus, {}
        self.reads = 0

    def read(self, indexes):
        self.reads += 1
        return {i: reading(i, 0.5 + self.launcher.used_gb(i)) for i in indexes}


class SimSweep(Sweep):
    """The real loop; only the waiting is simulated: it advances the fake clock instead of sleeping."""

    def _install_signals(self):
        return lambda: None

    def _wait(self, timeout):
        if any(p.popen.poll() is not None for p in self.active.values()):
            return  # a process just exited (killed): SIGCHLD would wake the real loop at once
        ends = [p.popen.end for p in self.active.values() if p.popen.end > self.clock.t]
        candidates = ends + ([self.clock.t + timeout] if timeout is not None else [])
        assert candidates, "the loop would sleep forever"
        self.clock.t = min(candidates)


def simulate(tmp_path: Path, durations: dict[str, float], gpus: int, policy: Policy, mem_gb: float = 10,
             timeout: float | None = None):
    clock = Clock()
    runs = [Run(i, name, {}, ["x"], tmp_path / name) for i, name in enumerate(durations)]
    launcher = FakeLauncher(clock, durations, mem_gb)
    probe = FakeProbe(launcher, gpus)
    sweep = SimSweep(ListSource(runs), launcher, list(range(gpus)), policy, probe,
                     ResultsWriter(tmp_path / "results.json"), Reporter(stream=open("/dev/null", "w")),
                     timeout=timeout, kill_grace=1.0, clock=clock)
    code = sweep.run()
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
    launcher = FakeLauncher(clock, durations, 1)
    probe = FakeProbe(launcher, 2)
    sweep = SimSweep(ListSource(runs), launcher, [0, 1], Policy(), probe, ResultsWriter(tmp_path / "r.json"),
                     Reporter(stream=open("/dev/null", "w")), timeout=None, clock=clock)
    assert sweep.run() == 0
    assert probe.reads <= 8  # one read per free slot (6 launches + the first round), not a polling loop
