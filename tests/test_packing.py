"""--max-processes-per-gpu auto: the placement core driven by a fake clock and fake NVML readings in which
each run's memory appears after a delay (the decisions, not the timing), then the real CLI with the fake
pynvml (per-process memory, as NVML shows it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_scheduler import Clock, FakeLauncher, FakeSource, sim_sweep
from train_sweep import (AUTO_MARGIN, AUTO_STABLE_S, AutoPacker, GpuPool, GpuReading, Policy, ResultsWriter, Run,
                         Settings, State)

GB = 1024.0


class PerProcessProbe:
    """NVML as it shows per-process memory: each running run's process (pid = its process group, 1000 +
    its index) holds mem_gb once it has run 1 s; `per_process=False`: only the GPU's total (a container)."""

    def __init__(self, launcher: FakeLauncher, total_gb: float = 16, per_process: bool = True) -> None:
        self.launcher, self.total, self.per_process, self.failed = launcher, total_gb, per_process, {}

    def read(self, indexes):
        out = {}
        for g in indexes:
            jobs = [j for j in self.launcher.jobs if j.run.gpus == (g,) and not j.killed
                    and j.run.started_at + 1.0 <= self.launcher.clock.t < j.end]
            pid_mb = {1000 + j.run.index: self.launcher.mem_gb * GB for j in jobs} if self.per_process else {}
            out[g] = GpuReading(g, "Fake", (0.5 + self.launcher.used_gb(g)) * GB, self.total * GB, 20,
                                frozenset(pid_mb), pid_mb)
        return out


class GroupLauncher(FakeLauncher):
    def start(self, run, gpus):
        run.pgid = 1000 + run.index
        return super().start(run, gpus)


def simulate_auto(tmp_path: Path, runs: int, duration: float, mem_gb: float, cores: int = 16,
                  per_process: bool = True):
    clock = Clock()
    durations = {f"r{i}": duration for i in range(runs)}
    items = [Run(i, name, {}, ["x"], tmp_path / name) for i, name in enumerate(durations)]
    for run in items:
        run.run_dir.mkdir()
    launcher = GroupLauncher(clock, durations, mem_gb)
    pool = GpuPool([0, 1], Policy(max_per_gpu=64, memory_threshold_mb=float("inf"), auto=True, cpu_cores=cores),
                   PerProcessProbe(launcher, per_process=per_process), group_of=lambda pid: pid)
    source = FakeSource(items)
    notes: list[tuple[float, str]] = []
    sweep = sim_sweep(source, launcher, pool, ResultsWriter(tmp_path / "results.json"),
                      Settings(timeout=0, kill_grace=1.0), clock)
    event = sweep.reporter.event
    sweep.reporter.event = lambda text, *a, **k: (notes.append((clock.t, text)), event(text, *a, **k))[1]
    assert sweep.run() == 0
    return launcher.log, notes, pool, items


def running_at(log, duration, t):
    return [(s, name, g) for s, name, g in log if s <= t < s + duration]


def test_one_run_a_gpu_until_a_footprint_is_known_then_every_slot_at_once(tmp_path):
    log, notes, pool, runs = simulate_auto(tmp_path, runs=12, duration=30, mem_gb=3)
    first = [e for e in log if e[0] == 0.0]
    assert sorted(g for _, _, g in first) == [(0,), (1,)]  # learning: one run a GPU
    learned = next(t for t, text in notes if text.startswith("footprint"))
    assert 1.0 + AUTO_STABLE_S <= learned <= 1.0 + AUTO_STABLE_S + 1.0  # allocated at 1 s, held still 2 s
    fill = [e for e in log if 0 < e[0] < 30]
    assert fill and all(s == fill[0][0] for s, _, _ in fill) and fill[0][0] - learned < 2.0  # all in one go
    # 16 GB, 0.5 used, 3 GB a run: the next needs max(3 x 1.15, 3 + 0.5) = 3.5 GB free: 4 runs a GPU
    peak = running_at(log, 30, fill[0][0])
    assert sorted(g for _, _, g in peak).count((0,)) == 4 and sorted(g for _, _, g in peak).count((1,)) == 4
    assert pool.auto.footprint_mb == 3 * GB
    assert any("no room for another 3.5 GB" in text for _, text in notes)
    assert all(r.state == State.COMPLETE for r in runs)


def test_the_cpu_cores_bound_the_runs(tmp_path):
    log, notes, pool, _ = simulate_auto(tmp_path, runs=12, duration=30, mem_gb=1, cores=6)
    assert max(len(running_at(log, 30, s)) for s, _, _ in log) == 6  # memory would take 2 x 11
    assert any("at most 3 run(s) a GPU: its share of 6 in all" in text for _, text in notes)


def test_without_per_process_memory_the_gpu_s_growth_is_the_footprint(tmp_path):
    log, notes, pool, _ = simulate_auto(tmp_path, runs=8, duration=30, mem_gb=3, per_process=False)
    assert pool.auto.footprint_mb == pytest.approx(3 * GB)
    assert any("from the GPU's growth" in text for _, text in notes)
    assert max(len(running_at(log, 30, s)) for s, _, _ in log) == 8


def reading(g, used_gb, util=20, pid_mb=None):
    pid_mb = pid_mb or {}
    return GpuReading(g, "Fake", used_gb * GB, 80 * GB, util, frozenset(pid_mb), pid_mb)


def learned_packer(cores=16) -> tuple[AutoPacker, Run]:
    auto = AutoPacker([0, 1], cores, group_of=lambda pid: pid)
    run = Run(0, "a", {}, ["x"], Path("a"))
    run.pgid = 7
    auto.observe(0.0, {0: reading(0, 0.5), 1: reading(1, 0.5)}, {})
    for t in (1.0, 2.0, 3.5):
        auto.observe(t, {0: reading(0, 4.5, pid_mb={7: 4 * GB})}, {0: [run]})
    return auto, run


def test_the_footprint_waits_for_the_memory_to_hold_still_and_the_need_has_a_margin():
    auto = AutoPacker([0], 16, group_of=lambda pid: pid)
    run = Run(0, "a", {}, ["x"], Path("a"))
    run.pgid = 7
    for t, gb in ((0.0, 1), (1.0, 2), (2.0, 4), (3.0, 4), (3.9, 4.05)):  # still growing at 2 s
        auto.observe(t, {0: reading(0, gb + 0.5, pid_mb={7: gb * GB})}, {0: [run]})
    assert auto.footprint_mb is None and auto.limit(0, 1, 1)[0] == 1
    auto.observe(4.1, {0: reading(0, 4.55, pid_mb={7: 4.05 * GB})}, {0: [run]})
    assert auto.footprint_mb == pytest.approx(4.05 * GB)
    assert auto.need_mb() == pytest.approx(4.05 * GB * AUTO_MARGIN)
    assert auto.limit(0, 1, 1) == (16, None)


def test_a_busy_gpu_or_busy_cpus_take_no_more_runs():
    auto, run = learned_packer()
    assert auto.limit(0, 1, 1) == (8, None)  # 16 cores over 2 GPUs
    for t in (4.0, 5.0, 6.0, 7.0, 8.0, 9.0):  # the window (5 s) holds only busy readings
        auto.observe(t, {0: reading(0, 4.5, util=97, pid_mb={7: 4 * GB}), 1: reading(1, 0.5, util=30)},
                     {0: [run]})
    n, why = auto.limit(0, 1, 1)
    assert n == 1 and "1 run(s) made it 95% busy or more: adding more no longer raises throughput" in why
    assert auto.limit(1, 0, 1) == (8, None)
    for t in (15.0, 16.0):  # later, less busy: the GPU keeps the limit it was saturated at, and a run that
        auto.observe(t, {0: reading(0, 4.5, util=50, pid_mb={7: 4 * GB})}, {0: [run]})  # ends is replaced
    assert auto.limit(0, 0, 0)[0] == 1


def test_a_cuda_context_that_holds_still_before_the_model_is_not_the_footprint():
    """A run's CUDA context (0.5 GB) holds still for seconds while its model loads, the GPU idle: that is not
    its footprint; the memory it holds while its GPU computes is."""
    auto = AutoPacker([0], 16, group_of=lambda pid: pid)
    run = Run(0, "a", {}, ["x"], Path("a"))
    run.pgid = 7
    for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        auto.observe(t, {0: reading(0, 1.0, util=0, pid_mb={7: 0.5 * GB})}, {0: [run]})
    assert auto.footprint_mb is None
    for t in (6.0, 7.0, 8.5):
        auto.observe(t, {0: reading(0, 30.5, util=60, pid_mb={7: 30 * GB})}, {0: [run]})
    assert auto.footprint_mb == 30 * GB


def test_out_of_memory_raises_the_need_so_that_packing_is_not_tried_again():
    auto, run = learned_packer()
    before = auto.need_mb()
    run.state = State.OOM
    auto.ended(run, 5.0, oom=True)
    assert auto.need_mb() == pytest.approx(before * 1.5)
    assert "ran out of GPU memory" in auto.notes[-1]


def test_a_declared_gpu_memory_wins(tmp_path):
    auto, _ = learned_packer()
    policy = Policy(max_per_gpu=64, memory_threshold_mb=float("inf"), auto=True, cpu_cores=16)

    class Probe:
        failed = {}

        def read(self, indexes):
            return {g: reading(g, 0.5) for g in indexes}

    pool = GpuPool([0], policy, Probe())
    pool.auto = auto
    run = Run(1, "b", {}, ["x"], tmp_path / "b")
    run.memory_mb = 70 * GB  # more than the learned 4 GB x 1.15
    gpus, why = pool.place(run, 10.0)
    assert gpus == (0,)
    pool.launched(run, gpus, 10.0)
    other = Run(2, "c", {}, ["x"], tmp_path / "c")
    gpus, why = pool.place(other, 10.1)  # 79.5 free, 70 pledged: 9.5 GB left, 4.6 needed
    assert gpus == (0,)
    other.memory_mb = 10 * GB
    gpus, why = pool.place(other, 10.1)
    assert gpus is None and "less than the 10 GB the run needs is free" in why


# -- the real CLI, the fake pynvml ----------------------------------------------------------------------

def test_auto_packs_after_the_first_footprint_and_says_why(sweep):
    sweep.gpus.set(count=2, total_mb=16000, used_mb=500, util=30)  # the runs compute
    sweep.config({"grid": {"n": list(range(10))}, "defaults": {"sleep": 4, "mem_mb": 3000, "mem_after": 0.3},
                  "max_processes_per_gpu": "auto"})
    p = sweep.run("--max-parallel", "16", "--no-live", timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert "placement: auto on GPU 0 1" in log and "at most 16 in all (--max-parallel)" in log
    assert "footprint   2.9 GB a run" in log and "from per-process memory" in log
    assert "no more: no room for another 3.4 GB" in log
    events = sweep.events()
    starts = sorted(e["t"] for e in events if e["event"] == "start")
    assert starts[2] - starts[0] < 4  # the third run started while the first two ran: packed
    most = max(sum(1 for e in events if e["event"] == "start" and e["t"] <= s["t"] and e["gpu"] == s["gpu"]) -
               sum(1 for e in events if e["event"] == "end" and e["t"] <= s["t"] and e["gpu"] == s["gpu"])
               for s in events if s["event"] == "start")
    assert most == 4  # 16 GB: 0.5 used, 3.4 GB a run
    assert all(r["state"] == "complete" for r in sweep.results())


def test_auto_without_nvml_is_a_one_line_error(sweep):
    sweep.config([{"a": 1}])
    p = sweep.run("--max-processes-per-gpu", "auto", "--disable-gpu-monitoring", "--gpus", "0")
    assert p.returncode == 2 and "--max-processes-per-gpu auto learns each run's GPU memory from NVML" in p.stderr
    assert not (sweep.dir / "outputs").exists()


@pytest.mark.parametrize("value, error", [
    ('"many"', "'max_processes_per_gpu' must be a whole number >= 1 or \"auto\", got 'many'"),
    ("0", "'max_processes_per_gpu' must be a whole number >= 1 or \"auto\", got a number"),
])
def test_a_bad_max_processes_per_gpu_in_the_config_is_named(sweep, value, error):
    sweep.gpus.set(count=1)
    sweep.config(f'{{"runs": [{{"a": 1}}], "max_processes_per_gpu": {value}}}')
    p = sweep.run()
    assert p.returncode == 2 and error in p.stderr, p.stderr


def test_the_flag_wins_over_the_config(sweep):
    sweep.gpus.set(count=1)
    sweep.config({"runs": [{"a": 1}], "max_processes_per_gpu": "auto"})
    p = sweep.run("--max-processes-per-gpu", "3", "--dry-run")
    assert p.returncode == 0 and "up to 3 run(s) at once on GPU 0" in p.stdout, p.stdout
    p = sweep.run("--dry-run")
    assert "auto on GPU 0" in p.stdout


def test_the_mps_server_s_memory_is_no_run_s_footprint():
    """Under MPS, NVML lists the MPS server (66 MB on an H200) as soon as the first run connects, a moment
    before the run's own process: the GPU's growth then is the server's, not the run's (measured: auto
    learned a 74 MB footprint from it and packed on it). The run's footprint waits for its own process."""
    auto = AutoPacker([0], 16, group_of=lambda pid: pid, is_service=lambda pid: pid == 99)
    run = Run(0, "a", {}, ["x"], Path("a"))
    run.pgid = 7
    auto.observe(0.0, {0: reading(0, 0.6)}, {})
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):  # the server, and 8 MB of the run not yet shown as its own
        auto.observe(t, {0: reading(0, 0.6 + 74 / GB, pid_mb={99: 66.0})}, {0: [run]})
    assert auto.footprint_mb is None
    for t in (6.0, 7.0, 8.0, 9.0):
        auto.observe(t, {0: reading(0, 0.6 + 1.5, pid_mb={99: 66.0, 7: 1.4 * GB})}, {0: [run]})
    assert auto.footprint_mb == pytest.approx(1.4 * GB)
    # and where NVML shows no process of this machine (a container), the growth less the server's is the run's
    auto = AutoPacker([0], 16, group_of=lambda pid: None, is_service=lambda pid: pid == 99)
    auto.observe(0.0, {0: reading(0, 0.6)}, {})
    for t in (1.0, 2.0, 3.0, 4.0):
        auto.observe(t, {0: reading(0, 0.6 + 66 / GB + 1.4, pid_mb={99: 66.0, 12345: 1.4 * GB})}, {0: [run]})
    assert auto.footprint_mb == pytest.approx(1.4 * GB)


def test_a_cuda_context_s_start_is_not_the_run_computing():
    """As NVML showed it on an H200 (bench/README.md): a small PyTorch training's CUDA context (564 MB) comes
    with a blip of utilization (3%), then 4 s of loading with the GPU idle, then the model and its optimizer
    (1442 MB in all). The context is no footprint: computing counts only once the memory has held still."""
    auto = AutoPacker([0], 16, group_of=lambda pid: pid)
    run = Run(0, "a", {}, ["x"], Path("a"))
    run.pgid = 7
    timeline = [(0.0, 564, 0), (1.0, 564, 3)] + [(t, 564, 0) for t in (2.0, 3.0, 4.0, 5.0)] + \
        [(6.0, 1318, 2), (7.0, 1442, 4), (8.0, 1442, 9), (9.0, 1442, 6), (10.0, 1442, 8)]
    learned = {}
    for t, mb, util in timeline:
        auto.observe(t, {0: reading(0, 0.6 + mb / GB, util=util, pid_mb={7: float(mb)})}, {0: [run]})
        learned[t] = auto.footprint_mb
    assert learned[5.0] is None  # the context alone, however long it waits
    assert learned[10.0] == pytest.approx(1442)


@pytest.mark.parametrize("cause", ["ooms_raise_the_need", "foreign_memory_charged"])
def test_an_idle_gpu_always_takes_a_run_whatever_auto_learned(sweep, cause):
    """issue 24 (4, 5): runs that ran out of memory together raise the margin until a run "needs" more than a
    GPU has (16 GB GPUs, a need of 25 GB); or another user's unlisted 12 GB, there while the first run ran,
    is taken for that run's footprint. Before: the requeued runs waited forever with both GPUs idle (also
    past the OOM wait's fallback). Now a GPU with no run of the sweep always takes the next run (alone,
    where its need is larger than any GPU), and the margin has a ceiling: every run completes."""
    sweep.gpus.set(count=2, total_mb=16000, used_mb=500, util=30)
    marks = [sweep.dir / f"oomed_{i}" for i in range(5)]
    mem = {"mem_mb": 3000} if cause == "ooms_raise_the_need" else {}  # else no memory NVML lists: the GPU's growth
    runs = [{"n": 0, "sleep": 4, "mem_after": 0.3, **mem}]
    runs += [{"n": i + 1, "sleep": 1, "oom_once": str(m), **mem} for i, m in enumerate(marks)]
    sweep.config({"runs": runs, "max_processes_per_gpu": "auto"})
    proc = sweep.start("--no-live", "--gpus", "0", "1")
    try:
        if cause == "foreign_memory_charged":  # unlisted memory on the first run's GPU while it runs
            sweep.wait_for(lambda: len(sweep.started()) >= 1, timeout=20, what="the first run")
            sweep.gpus.update(0, used_mb=12500)
            sweep.gpus.update(1, used_mb=12500)
            sweep.wait_for(lambda: " a run (n_0" in (sweep.dir / "outputs" / "sweep.log").read_text(),
                           timeout=30, what="the first footprint")
            sweep.gpus.update(0, used_mb=500)  # the other user's process has gone
            sweep.gpus.update(1, used_mb=500)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:] + err
    assert sorted(r["state"] for r in sweep.results()) == ["complete"] * 6
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    if cause == "ooms_raise_the_need":
        assert "ran out of GPU memory" in log


def test_a_gpu_without_a_reading_offers_nothing_to_a_run_that_must_run_alone(tmp_path):
    """An adversarial pass: an idle GPU whose reading failed this tick crashed the run-alone rule (a traceback,
    exit 1); it offers nothing now, and the run goes alone to the GPU that has a reading."""
    auto, _ = learned_packer()
    policy = Policy(max_per_gpu=64, memory_threshold_mb=float("inf"), auto=True, cpu_cores=16)

    class Probe:
        failed = {}

        def read(self, indexes):
            return {0: reading(0, 0.5)}  # GPU 1's reading failed

    pool = GpuPool([0, 1], policy, Probe())
    pool.auto = auto
    run = Run(1, "b", {}, ["x"], tmp_path / "b")
    run.memory_mb = 200 * GB
    assert pool.place(run, 10.0)[0] == (0,)


def test_a_declared_need_larger_than_every_gpu_is_refused_before_anything_runs(sweep):
    """An adversarial pass: --gpu-memory-gb 100 on 16 GB GPUs (no auto) waited forever, saying nothing."""
    sweep.gpus.set(count=2, total_mb=16000)
    p = sweep.run("--gpu-memory-gb", "100", "--gpus", "0", "1", "x=1,2")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "needs 100.0 GB of GPU memory" in p.stderr and "the largest GPU of the sweep has 15.6 GB" in p.stderr, p.stderr
