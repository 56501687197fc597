"""Placement: which GPU takes a run, and how many runs a GPU holds.

--max-processes-per-gpu auto: the placement core driven by a fake clock and fake NVML readings in which each
run's memory appears after a delay (the decisions, not the timing), then the real CLI with the fake pynvml
(per-process memory, as NVML shows it). The rest through the real CLI with the fake pynvml: the GPU with the
least memory in use first, a GPU full of someone else's memory, --gpus all, no NVML (the CPU),
--disable-gpu-monitoring, slots and the memory threshold, two sweeps sharing GPUs, runs of several GPUs,
declared memory, --max-parallel, GPUs whose NVML calls fail."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import kill_pids, run_jsons, run_pids
from test_scheduler import Clock, FakeLauncher, FakeSource, sim_sweep
from train_sweep import HINT_OOM, GpuPool, GpuReading, Outcome, Policy, ResultsWriter, Run, Settings, State
from train_sweep_extras.packing import (EXPONENT_SLACK, GROWTH_POWER, HOLD_S, MARGIN, MARGIN_MAX, STABLE_S,
                                        FootprintCache, Footprints, Packer)


# -- --max-processes-per-gpu auto: the decisions, with a fake clock and fake NVML readings -----------------------

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
    assert 1.0 + STABLE_S <= learned <= 1.0 + STABLE_S + 1.0  # allocated at 1 s, held still 2 s
    fill = [e for e in log if 0 < e[0] < 30]
    assert fill and fill[0][0] - learned < 2.0 and [s for s, _, _ in fill].count(fill[0][0]) == 6  # in one go
    # 16 GB, 0.5 used, 3 GB a run: the next needs max(3 x 1.15, 3 + 0.5) = 3.5 GB free while the runs beside it
    # learn theirs (4 runs a GPU); once learned, theirs is what they hold: a 5th fits in 16 - 0.5 - 4 x 3 = 3.5 GB
    peak = running_at(log, 30, fill[0][0])
    assert sorted(g for _, _, g in peak).count((0,)) == 4 and sorted(g for _, _, g in peak).count((1,)) == 4
    peak = running_at(log, 30, fill[-1][0])
    assert sorted(g for _, _, g in peak).count((0,)) == 5 and sorted(g for _, _, g in peak).count((1,)) == 5
    assert fill[-1][0] - fill[0][0] <= HOLD_S + 1.0  # learned, and HOLD_S after they started
    assert footprint(pool.auto) == 3 * GB
    assert any("no room for another 3.5 GB" in text for _, text in notes)
    assert all(r.state == State.COMPLETE for r in runs)


def test_the_cpu_cores_bound_the_runs(tmp_path):
    log, notes, pool, _ = simulate_auto(tmp_path, runs=12, duration=30, mem_gb=1, cores=6)
    assert max(len(running_at(log, 30, s)) for s, _, _ in log) == 6  # memory would take 2 x 11
    assert any("at most 3 run(s) a GPU: its share of 6 in all" in text for _, text in notes)


def test_a_gpu_taken_out_gives_its_share_of_the_cpu_cores_to_the_others():
    """An adversarial pass: with 6 cores on 2 GPUs each took 3 runs at most; after GPU 1 was taken out (its NVML
    calls failed), GPU 0 stayed at 3 of the 6 cores' runs for the rest of the sweep."""
    auto = make_packer([0, 1], cores=6)
    assert auto.limit(0, 3, 3) == (3, "at most 3 run(s) a GPU: its share of 6 in all")
    auto.pool.gpus.remove(1)
    assert auto.limit(0, 3, 3) == (6, None)


def test_without_per_process_memory_the_gpu_s_growth_is_the_footprint(tmp_path):
    log, notes, pool, _ = simulate_auto(tmp_path, runs=8, duration=30, mem_gb=3, per_process=False)
    assert footprint(pool.auto) == pytest.approx(3 * GB)
    assert any("from the GPU's growth" in text for _, text in notes)
    assert max(len(running_at(log, 30, s)) for s, _, _ in log) == 8


def reading(g, used_gb, util=20, pid_mb=None):
    pid_mb = pid_mb or {}
    return GpuReading(g, "Fake", used_gb * GB, 80 * GB, util, frozenset(pid_mb), pid_mb)


class ReadingsProbe:
    """NVML as a test sets it: `readings` each call (by GPU)."""

    def __init__(self, readings=None) -> None:
        self.readings, self.failed = readings or {}, {}

    def read(self, indexes):
        return {g: r for g, r in self.readings.items() if g in indexes}


def make_packer(gpus=(0,), cores=16, group_of=lambda pid: pid, is_service=lambda pid: False, probe=None):
    """A Packer inside a real GpuPool (auto, no footprint cache)."""
    policy = Policy(max_per_gpu=64, memory_threshold_mb=float("inf"), auto=True, cpu_cores=cores)
    pool = GpuPool(list(gpus), policy, probe or ReadingsProbe(), group_of=group_of)
    pool.auto = Packer(pool, cores, group_of, is_service=is_service)
    return pool.auto


def footprint(auto: Packer) -> float | None:
    return auto.model.largest()


def launch(auto: Packer, run: Run, gpu: int = 0, now: float = 0.0) -> Run:
    """The run starts on the GPU, as the loop starts it (pgid 7 unless it has one)."""
    run.pgid, run.gpus = run.pgid or 7, (gpu,)
    auto.pool.launched(run, (gpu,), now)
    return run


def learned_packer(cores=16, probe=None, ended=False, gpus=(0, 1)) -> tuple[Packer, Run]:
    """A packer that learned a 4 GB run on GPU 0 (`ended`: which has ended)."""
    auto = make_packer(gpus, cores, probe=probe)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    auto.observe(0.0, {0: reading(0, 0.5), 1: reading(1, 0.5)}, {})
    for t in (1.0, 2.0, 3.5):
        auto.observe(t, {0: reading(0, 4.5, pid_mb={7: 4 * GB})}, {0: [run]})
    if ended:
        auto.pool.release(run)
        auto.ended(run, 4.0, oom=False)
    return auto, run


def test_the_footprint_waits_for_the_memory_to_hold_still_and_the_need_has_a_margin():
    auto = make_packer([0], 16)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    for t, gb in ((0.0, 1), (0.5, 2), (1.0, 4), (1.5, 4), (1.9, 4.2)):  # still growing at 1.9 s
        auto.observe(t, {0: reading(0, gb + 0.5, pid_mb={7: gb * GB})}, {0: [run]})
    n, why = auto.limit(0, 1, 1)
    assert footprint(auto) is None and n == 1 and why.startswith("learning the memory footprint of a")
    auto.observe(2.5, {0: reading(0, 4.7, pid_mb={7: 4.2 * GB})}, {0: [run]})
    assert auto.limit(0, 1, 1) == (1, why)  # held still for 0.6 s
    auto.observe(3.4, {0: reading(0, 4.7, pid_mb={7: 4.2 * GB})}, {0: [run]})
    assert footprint(auto) == pytest.approx(4.2 * GB)
    assert auto.need_mb(Run(1, "b", {}, ["x"], Path("b"))) == pytest.approx(4.2 * GB * MARGIN)
    assert auto.limit(0, 1, 1) == (16, None)


def test_memory_that_grows_slowly_is_not_taken_for_still():
    """An adversarial pass: a run growing 50 MB a reading (100 MB/s, 1.3 GB to 4.2 GB over 30 s) was learned at
    1.3 GB after its first second, as each reading was within 64 MB of the one before: runs packed beside it ran
    out of memory as it grew, 5 times in 6 runs. Growth counts against the level of the last growth counted."""
    auto = make_packer([0], 16)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    gb = 1.3
    for i in range(40):  # 20 s of 0.5 s readings, 0.05 GB each
        auto.observe(i * 0.5, {0: reading(0, gb + 0.5, pid_mb={7: gb * GB})}, {0: [run]})
        gb += 0.05
    assert footprint(auto) is None, "learned while it still grew"
    for t in (20.0, 21.0, 22.0, 23.0):
        auto.observe(t, {0: reading(0, gb + 0.5, pid_mb={7: gb * GB})}, {0: [run]})
    assert footprint(auto) == pytest.approx(gb * GB)


def test_an_oom_before_any_run_grew_past_its_context_blames_no_neighbour_nor_learns_the_context():
    """An adversarial pass: a run needing 30 GB on a 16 GB GPU ran out of memory while it and its neighbour held
    only their CUDA contexts (500 MB): its need was taken as 500 MB x1.5, and the neighbour was blamed ('after
    b grew to 500 MB, not seen before'), raising the margin of every run like it. Neither had shown its memory."""
    auto, _ = learned_packer(ended=True, gpus=(0,))  # a 4 GB footprint is known (hp {})
    big = launch(auto, Run(1, "big", {"mem": 30000}, ["x"], Path("big")), now=5.0)
    small = launch(auto, Run(2, "small", {"mem": 2000}, ["x"], Path("small")), now=5.0)
    big.pgid, small.pgid = 8, 9
    for t in (5.5, 6.0):
        auto.observe(t, {0: reading(0, 1.5, pid_mb={8: 500.0, 9: 500.0})}, {0: [big, small]})
    auto.pool.release(big)
    auto.ended(big, 6.2, oom=True)
    assert auto.model.get({"mem": 2000}) is None, "the neighbour at its context was blamed"
    point = auto.model.get({"mem": 30000})
    assert point is not None and point.mb >= 4 * GB, point  # at least the largest footprint seen, not a context


def test_why_a_gpu_takes_no_more_is_said_once_while_its_runs_stay_the_same():
    """An adversarial pass: two waiting runs of different needs made sweep.log alternate 'no room for another
    2.9 GB' and '... 3.7 GB' about 4 times a second (718 lines in 4 minutes). Each reason is said once while
    the GPU's runs stay the same."""
    auto = make_packer([0], 16)
    a = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    for why in ("no room for another 2.9 GB", "no room for another 3.7 GB") * 5:
        auto.say(0, why, 1, None)
    assert len(auto.notes) == 2, auto.notes
    auto.pool.release(a)
    launch(auto, Run(1, "b", {}, ["x"], Path("b")))  # another run in its place (a review: the same count)
    auto.say(0, "no room for another 2.9 GB", 1, None)
    assert len(auto.notes) == 3, auto.notes


def test_with_nothing_known_a_gpu_another_user_filled_takes_no_first_run():
    """An adversarial pass: GPU 1 held 79.5 of 80 GB of another user's; with no footprint known yet, auto started
    a first run there at once, which ran out of memory at once. A GPU takes a run of unknown need only where at
    least a CUDA context and the margin (1.4 GB) are free."""
    auto = make_packer([0, 1], 16)
    probe = launch(auto, Run(0, "a", {}, ["x"], Path("a")))  # GPU 0 learns its first footprint
    readings = {0: reading(0, 1.0, pid_mb={7: 0.5 * GB}), 1: reading(1, 79.5)}
    auto.pool.readings = readings
    auto.observe(0.5, readings, {0: [probe]})
    gpus, why = auto.place(Run(1, "b", {}, ["x"], Path("b")), 0.6, None, readings)
    assert gpus is None, why
    full = {0: reading(0, 79.5), 1: reading(1, 79.8)}  # every GPU filled by others: no endless wait either
    auto.pool.release(probe)
    auto.ended(probe, 1.0, oom=False)
    auto.pool.readings = full
    gpus, why = auto.place(Run(2, "c", {}, ["x"], Path("c")), 1.1, None, full)
    assert gpus == (0,) and "runs alone" in why, why


def test_an_oom_at_the_context_with_nothing_known_learns_no_footprint():
    """A review: with no footprint known, a run that ran out of memory at its CUDA context (500 MB) still took
    500 MB as what runs like it need: it stays unseen (its GPU its own while it learns)."""
    auto = make_packer([0], 16)
    big = launch(auto, Run(1, "big", {"mem": 30000}, ["x"], Path("big")))
    big.pgid = 8
    for t in (0.5, 1.0):
        auto.observe(t, {0: reading(0, 1.0, pid_mb={8: 500.0})}, {0: [big]})
    auto.pool.release(big)
    auto.ended(big, 1.2, oom=True)
    assert auto.model.get({"mem": 30000}) is None


def test_a_probe_that_burst_past_a_known_run_is_blamed_for_its_oom():
    """A review: a run of an unseen shape that allocated 20 GB in one burst between two readings (still seen at
    its context) while a known run beside it died at its predicted footprint: the probe is the suspect, not
    the known run, whose footprint held."""
    auto, _ = learned_packer(ended=True, gpus=(0,))  # 4 GB known for {}
    known = launch(auto, Run(1, "known", {}, ["x"], Path("known")), now=5.0)
    probe = launch(auto, Run(2, "probe", {"new": 1}, ["x"], Path("probe")), now=5.0)
    known.pgid, probe.pgid = 8, 9
    for t in (5.5, 6.0, 7.0):
        auto.observe(t, {0: reading(0, 5.0, pid_mb={8: 4 * GB, 9: 500.0})}, {0: [known, probe]})
    auto.pool.release(known)
    auto.ended(known, 7.2, oom=True)
    assert auto.model.get({}).margin == MARGIN, "the known run was blamed"
    assert auto.model.get({"new": 1}) is None or auto.model.get({"new": 1}).margin > MARGIN


def test_a_busy_gpu_takes_more_runs_utilization_is_no_saturation_signal():
    """On an H100, 3 small transformer runs kept the GPU 95% busy or more over 5 s while each trained at 0.94 of
    its speed alone (bench/README.md), and auto held the GPU at 3 runs for the rest of the sweep, where 16 at once
    did about 5.5 times the work of one. Neither a GPU busy with several runs nor one busy with one run is full:
    memory and the CPU cores bound the runs."""
    auto, run = learned_packer()
    others = [Run(i, f"o{i}", {"n": i}, ["x"], Path("/nonexistent")) for i in (1, 2)]
    for t in (4.0, 5.0, 6.0, 7.0, 8.0, 9.0):
        auto.observe(t, {0: reading(0, 12.5, util=97, pid_mb={7: 4 * GB, 8: 4 * GB, 9: 4 * GB})},
                     {0: [run, *others]})
    assert auto.limit(0, 3, 3) == (8, None)  # 16 cores over 2 GPUs
    auto, run = learned_packer()
    for t in (4.0, 5.0, 6.0, 7.0, 8.0, 9.0):
        auto.observe(t, {0: reading(0, 4.5, util=97, pid_mb={7: 4 * GB})}, {0: [run]})
    assert auto.limit(0, 1, 1) == (8, None)


def test_a_cuda_context_that_holds_still_before_the_model_is_not_the_footprint():
    """A run's CUDA context (0.5 GB) holds still for seconds while its model loads, the GPU idle: that is not
    its footprint; the memory it holds while its GPU computes is."""
    auto = make_packer([0], 16)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        auto.observe(t, {0: reading(0, 1.0, util=0, pid_mb={7: 0.5 * GB})}, {0: [run]})
    assert footprint(auto) is None
    for t in (6.0, 7.0, 8.5):
        auto.observe(t, {0: reading(0, 30.5, util=60, pid_mb={7: 30 * GB})}, {0: [run]})
    assert footprint(auto) == 30 * GB


def test_out_of_memory_raises_the_need_so_that_packing_is_not_tried_again():
    auto, run = learned_packer()
    before = auto.need_mb(run)
    run.state = State.OOM
    auto.pool.release(run)
    auto.ended(run, 5.0, oom=True)
    assert auto.need_mb(run) == pytest.approx(before * 1.5)
    assert "ran out of GPU memory" in auto.notes[-1]


# -- issue 23: runs that differ in memory (footprints per configuration) ------------------------------------------

class ShapeLauncher(GroupLauncher):
    """Runs whose memory depends on their hyperparameters (`mem_of(hp)` GB), allocated 1 s after they start, as
    a real training's model and optimizer are. A GPU asked for more than it has: the run that allocates then
    ends out of memory (the others keep theirs). A loop still waiting at `limit_t` waits for what cannot come."""

    def __init__(self, clock, durations, mem_of, total_gb, limit_t):
        super().__init__(clock, durations, 0.0)
        self.mem_of, self.total, self.limit_t = mem_of, total_gb, limit_t
        self.oom: set[int] = set()
        self.begun: dict[int, tuple[float, int]] = {}  # each job's start and GPU

    def start(self, run, gpus):
        job = super().start(run, gpus)
        self.begun[id(job)] = (self.clock.t, gpus[0])
        return job

    def _alive(self, g):
        """The jobs holding memory on GPU g now, in the order they allocated; the first past the total OOMs."""
        assert self.clock.t < self.limit_t, f"still waiting at {self.clock.t:.0f}s: a wait that cannot end"
        self.calls = getattr(self, "calls", 0) + 1
        assert self.calls < 200_000, f"the loop spins at {self.clock.t:.0f}s"
        jobs = sorted((j for j in self.jobs if self.begun[id(j)][1] == g and not j.killed and id(j) not in self.oom
                       and self.begun[id(j)][0] + 1.0 <= self.clock.t < j.end), key=lambda j: self.begun[id(j)])
        used, alive = 0.5, []
        for j in jobs:
            mb = self.mem_of(j.run.hyperparams)
            if used + mb > self.total:
                self.oom.add(id(j))
                continue
            used += mb
            alive.append(j)
        return alive

    def poll(self, handle):
        for g in {gpu for _, gpu in self.begun.values()}:
            self._alive(g)
        if id(handle) in self.oom:
            return Outcome(1, hint=HINT_OOM)
        return super().poll(handle)


class ShapeProbe:
    def __init__(self, launcher: ShapeLauncher) -> None:
        self.launcher, self.failed = launcher, {}

    def read(self, indexes):
        out = {}
        for g in indexes:
            alive = self.launcher._alive(g)
            pid_mb = {1000 + j.run.index: self.launcher.mem_of(j.run.hyperparams) * GB for j in alive}
            out[g] = GpuReading(g, "Fake", (0.5 * GB + sum(pid_mb.values())), self.launcher.total * GB, 40,
                                frozenset(pid_mb), pid_mb)
        return out


def grid_mem(hp) -> float:
    """A transformer's footprint (GB) over batch size, depth and width: 1.4 to 39 GB; lr moves nothing."""
    return 0.8 + 1.22e-5 * hp["batch"] * hp["depth"] * hp["width"]


def simulate_shapes(tmp_path: Path, hps: list[dict], total_gb: float = 80, gpus=(0,), cores: int = 16,
                    mem_of=None):
    mem_of = mem_of or grid_mem
    clock = Clock()
    names = [f"r{i}" for i in range(len(hps))]
    durations = {name: 10 + mem_of(hp) for name, hp in zip(names, hps)}
    items = [Run(i, name, hp, ["x"], tmp_path / name) for i, (name, hp) in enumerate(zip(names, hps))]
    for run in items:
        run.run_dir.mkdir()
    serial = sum(durations.values())
    launcher = ShapeLauncher(clock, durations, mem_of, total_gb, limit_t=serial * 2)
    pool = GpuPool(list(gpus), Policy(max_per_gpu=64, memory_threshold_mb=float("inf"), auto=True, cpu_cores=cores),
                   ShapeProbe(launcher), group_of=lambda pid: pid)
    notes: list[tuple[float, str]] = []
    sweep = sim_sweep(FakeSource(items), launcher, pool, ResultsWriter(tmp_path / "results.json"),
                      Settings(timeout=0, kill_grace=1.0, max_oom_requeues=3), clock)
    event = sweep.reporter.event
    sweep.reporter.event = lambda text, *a, **k: (notes.append((clock.t, text)), event(text, *a, **k))[1]
    code = sweep.run()
    return code, launcher, notes, items, clock.t, serial


GRID = [{"batch": b, "depth": d, "width": w, "lr": lr}
        for b in (64, 512) for d in (2, 8) for w in (384, 768) for lr in (1e-3, 1e-4)]


@pytest.mark.parametrize("order", ["config", "shuffled", "largest_last"])
def test_a_grid_whose_runs_differ_20x_in_memory_completes_packed(tmp_path, order):
    """issue 23 (1): on an 80 GB H100, a grid over batch size, depth and width (1.4 to 32 GB) learned 1.4 GB from
    its first run, launched 15 at once, ran out of memory 3 times, raised one sweep-wide margin x3.88, and its last
    run waited forever with the GPU idle for "124.2 GB free". Footprints per configuration: every run completes,
    no wait that cannot end, at most one out-of-memory end, and much faster than one run at a time."""
    hps = list(GRID)
    if order == "shuffled":
        import random
        random.Random(3).shuffle(hps)
    elif order == "largest_last":
        hps.sort(key=grid_mem)
    code, launcher, notes, runs, wall, serial = simulate_shapes(tmp_path, hps)
    assert code == 0 and all(r.state == State.COMPLETE for r in runs), [(r.name, r.state) for r in runs]
    assert len(launcher.oom) <= 1, notes
    assert wall < 0.5 * serial, (wall, serial)
    said = "\n".join(text for _, text in notes)
    assert "memory moves with batch, depth, width" in said  # lr does not: learned, not listed


def test_an_unseen_shape_has_its_gpu_to_itself_until_its_footprint_is_known(tmp_path):
    """A run of a shape not seen before may use any amount: its GPU takes no other run until its footprint
    is known; runs of a known shape then pack beside it."""
    hps = [{"batch": 64, "depth": 2, "width": 384, "lr": 1e-3}] * 3 + [{"batch": 512, "depth": 8, "width": 768,
                                                                         "lr": 1e-3}] * 3
    code, launcher, notes, runs, wall, serial = simulate_shapes(tmp_path, hps)
    assert code == 0 and not launcher.oom
    big = [t for t, name, _ in launcher.log if name in ("r3", "r4", "r5")]
    small = [t for t, name, _ in launcher.log if name in ("r0", "r1", "r2")]
    assert small[1] - small[0] < 3  # the first small one learned in seconds, then the others at once
    assert big[0] >= small[1]  # the big one waits for nothing but the first's footprint ...
    assert big[1] - big[0] >= 1.0 + STABLE_S  # ... and has the GPU to itself until its own is known
    assert any("learning the memory footprint of r3" in text for _, text in notes)


def test_the_keys_that_move_memory_are_learned_from_the_footprints():
    fp = Footprints()
    fp.add({"lr": 1e-3, "dropout": 0.1, "layers": 4, "batch": 64}, 2000, "a")
    point, how = fp.predict({"lr": 1e-4, "dropout": 0.2, "layers": 4, "batch": 64})  # no evidence yet: a bound
    assert point.bound and point.mb == pytest.approx(2000 * 2 ** 2) and how.startswith("a bound from a")
    fp.add({"lr": 1e-4, "dropout": 0.3, "layers": 4, "batch": 64}, 2040, "b")  # lr and dropout moved nothing
    assert fp.movers() == ("batch", "layers")
    point, how = fp.predict({"lr": 5e-3, "dropout": 0.0, "layers": 4, "batch": 64})
    assert point.mb == 2040 and how.startswith("runs of its memory shape")
    point, how = fp.predict({"lr": 5e-3, "dropout": 0.0, "layers": 2, "batch": 32})  # smaller in both: bounded
    assert point.mb == 2040 and how.startswith("a run at least as large")
    point, _ = fp.predict({"lr": 5e-3, "dropout": 0.0, "layers": 8, "batch": 64})  # larger: bounded, not seen
    assert point.bound and point.mb == pytest.approx(2040 * 2 ** 2)  # from its shape's largest
    assert fp.predict({"lr": 5e-3, "dropout": 0.0, "layers": 8, "batch": 64, "model": "vit"}) is None  # a new key
    fp.add({"lr": 1e-3, "dropout": 0.1, "layers": 4, "batch": 512}, 9000, "c")
    fp.add({"lr": 1e-2, "dropout": 0.1, "layers": 4, "batch": 512}, 9100, "d")
    assert fp.movers() == ("batch", "layers")  # batch did move it: it stays


def test_a_huge_integer_key_gives_a_bound_or_none_not_an_overflow():
    """Python's integers have no ceiling: 10**400 / 1 overflowed a float while learning how memory grows with a
    key (OverflowError: a traceback in the middle of an auto sweep)."""
    fp = Footprints()
    fp.add({"batch": 1}, 1000, "a")
    fp.add({"batch": 10 ** 400}, 3000, "b")
    assert fp.growth()["batch"] >= 1.0
    found = fp.predict({"batch": 10 ** 401})
    assert found is None or found[0].mb >= 3000


@pytest.mark.parametrize("mb", ["NaN", "Infinity", "-Infinity", "-9000", "0", "1e400", "1e300", "12"])
def test_a_remembered_footprint_that_is_not_a_positive_finite_number_is_a_damaged_line(tmp_path, mb):
    """A NaN or negative footprint passed as a number: runs of 9 GB were then all placed at once on a 20 GB GPU.
    An adversarial pass: 1e300 MB (more than any GPU holds) made every unseen run of its shape run alone, for
    good, with a 300-digit need in sweep.log; and under 64 MB is no footprint train_sweep writes."""
    cache = FootprintCache(tmp_path, ["python", "train.py"], tmp_path, "Fake H100")
    cache.add({"lr": 0.1}, 9000)
    line = json.loads(cache.path.read_text())
    damaged = json.dumps({**line, "hp": {"lr": 0.2}}).replace('"mb": 9000', f'"mb": {mb}')
    assert f'"mb": {mb}' in damaged
    cache.path.write_text(cache.path.read_text() + damaged + "\n")
    assert [hp for hp, _ in cache.load()] == [{"lr": 0.1}]


def test_an_oom_is_charged_to_the_run_that_grew_not_to_the_run_that_died():
    auto = make_packer([0], 16)
    a = launch(auto, Run(0, "a", {"k": 1}, ["x"], Path("a")))
    for t in (1.0, 2.0, 3.0, 3.5):
        auto.observe(t, {0: reading(0, 4.5, pid_mb={7: 4 * GB})}, {0: [a]})
    b = launch(auto, Run(1, "b", {"k": 1}, ["x"], Path("b")), now=4.0)  # predicted 4 GB, like a
    b.pgid = 8
    for t in (5.0, 6.0):  # b grows to 20 GB
        auto.observe(t, {0: reading(0, 24.5, pid_mb={7: 4 * GB, 8: 20 * GB})}, {0: [a, b]})
    a.state = State.OOM
    auto.pool.release(a)
    auto.ended(a, 6.5, oom=True)
    assert "ran out of GPU memory after b grew to 20.0 GB (predicted 4.0 GB)" in auto.notes[-1]
    assert auto.model.get({"k": 1}).margin == pytest.approx(MARGIN * 1.5)
    assert auto.need_mb(a) >= 20 * GB * MARGIN * 1.5  # b's peak and more room: for every run like b


def test_the_margin_has_a_ceiling():
    auto, run = learned_packer()
    for _ in range(10):
        auto.ended(run, 5.0, oom=True)
    assert auto.model.get({}).margin == MARGIN_MAX


def test_a_declared_gpu_memory_wins(tmp_path):
    auto, _ = learned_packer(probe=ReadingsProbe({0: reading(0, 0.5)}), ended=True, gpus=[0])
    pool = auto.pool
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


# -- --max-processes-per-gpu auto: the real CLI, the fake pynvml -------------------------------------------------

def test_auto_packs_after_the_first_footprint_and_says_why(sweep):
    # 15 GB a GPU: 0.5 used, 3 GB a run (3.4 GB with its margin): a fifth never fits, a fourth always does, also on a
    # loaded machine where a run's room is no longer held (HOLD_S) once it ran 5 s (with 16 GB a fifth fit then)
    sweep.gpus.set(count=2, total_mb=15000, used_mb=500, util=30)  # the runs compute
    sweep.config({"grid": {"n": list(range(10))}, "defaults": {"sleep": 4, "mem_mb": 3000, "mem_after": 0.3},
                  "max_processes_per_gpu": "auto"})
    p = sweep.run("--max-parallel", "16", "--no-live", timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert "placement: auto on GPU 0 1" in log and "at most 16 in all (--max-parallel)" in log
    assert "footprint   2.9 GB for n_0 (a first run of its memory shape, from per-process memory)" in log
    assert "the same memory for every configuration so far" in log  # n_1 on the other GPU: n moves nothing
    assert "no more: no room for another 3.4 GB" in log
    events = sweep.events()
    starts = sorted(e["t"] for e in events if e["event"] == "start")
    assert starts[2] - starts[0] < 4  # the third run started while the first two ran: packed
    most = max(sum(1 for e in events if e["event"] == "start" and e["t"] <= s["t"] and e["gpu"] == s["gpu"]) -
               sum(1 for e in events if e["event"] == "end" and e["t"] <= s["t"] and e["gpu"] == s["gpu"])
               for s in events if s["event"] == "start")
    assert most == 4
    assert all(r["state"] == "complete" for r in sweep.results())


def first_starts(sweep, after: float) -> list[float]:
    return sorted(e["t"] for e in sweep.events() if e["event"] == "start" and e["t"] >= after)


def test_a_repeated_sweep_packs_from_its_first_second_with_remembered_footprints(sweep):
    """issue 23: footprints are remembered across sweeps (the user's cache folder, keyed by command, folder, GPU
    model and hyperparameters): the same runs again, in a new output folder, start packed at once."""
    sweep.gpus.set(count=1, total_mb=16000, used_mb=500, util=30)
    sweep.config({"grid": {"n": list(range(6))}, "defaults": {"sleep": 3, "mem_mb": 1000, "mem_after": 0.3},
                  "max_processes_per_gpu": "auto"})
    p = sweep.run("--max-parallel", "8", "--no-live", timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    first = first_starts(sweep, 0)
    assert first[2] - first[0] > 1.0  # learning: the first two runs' footprints before the others
    cache = sweep.dir / "cache" / "train_sweep" / "footprints.jsonl"
    assert len(cache.read_text().splitlines()) == 6
    assert "--mps would likely run them faster" in p.stdout  # 1 GB runs, packed, the GPU theirs alone
    t0 = time.time()
    p = sweep.run("--max-parallel", "8", "--no-live", "--output-dir", "again", timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    # all six at once: nothing to learn (the sweep's own start times: the trainers' clocks spread with the load)
    again = sorted(datetime.fromisoformat(r["start_time"]).timestamp() for r in sweep.results())
    assert len(again) == 6 and again[5] - again[0] < 1.0, again
    assert "6 footprint(s) remembered from earlier sweeps" in (sweep.dir / "again" / "sweep.log").read_text()
    t0 = time.time()
    p = sweep.run("--max-parallel", "8", "--no-live", "--output-dir", "third", "--no-footprint-cache", timeout=90)
    assert p.returncode == 0
    assert first_starts(sweep, t0)[2] - first_starts(sweep, t0)[0] > 1.0  # learns again
    assert len(cache.read_text().splitlines()) == 12  # and keeps nothing new


@pytest.mark.parametrize("damage", ["not_a_folder", "damaged_lines", "fifo", "fifo_lock"])
def test_a_footprint_cache_that_cannot_be_used_is_said_once_and_the_sweep_goes_on(sweep, damage):
    """... also a FIFO in the cache file's place, or its lock's: the sweep waited on it forever before."""
    sweep.gpus.set(count=1, total_mb=16000, used_mb=500, util=30)
    sweep.config({"grid": {"n": list(range(3))}, "defaults": {"sleep": 1, "mem_mb": 1000, "mem_after": 0.2},
                  "max_processes_per_gpu": "auto"})
    if damage == "not_a_folder":
        (sweep.dir / "cache").write_text("a file where the cache folder would be")
    elif damage.startswith("fifo"):
        (sweep.dir / "cache" / "train_sweep").mkdir(parents=True)
        name = "footprints.lock" if damage == "fifo_lock" else "footprints.jsonl"
        os.mkfifo(sweep.dir / "cache" / "train_sweep" / name)
    else:
        (sweep.dir / "cache" / "train_sweep").mkdir(parents=True)
        (sweep.dir / "cache" / "train_sweep" / "footprints.jsonl").write_bytes(b'{"key": 1\n\xff\xfe[]\n{}\n')
    p = sweep.run("--no-live", timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    log = (sweep.dir / "outputs" / "sweep.log").read_text()
    assert all(r["state"] == "complete" for r in sweep.results())
    if damage != "damaged_lines":
        assert log.count("warning: footprint cache: cannot") == 1, log
    else:  # the damaged lines are skipped; the new footprints are added after them
        assert "warning" not in log
        lines = (sweep.dir / "cache" / "train_sweep" / "footprints.jsonl").read_bytes().splitlines()
        assert len(lines) == 6


def test_auto_without_nvml_is_a_one_line_error(sweep):
    sweep.config([{"a": 1}])
    p = sweep.run("--max-processes-per-gpu", "auto", "--disable-gpu-monitoring", "--gpus", "0")
    assert p.returncode == 2 and "--max-processes-per-gpu auto learns each run's GPU memory from NVML" in p.stderr
    assert not (sweep.dir / "outputs").exists()


@pytest.mark.parametrize("value, error", [
    ('"many"', "'max_processes_per_gpu' must be a whole number >= 1 or \"auto\", got 'many'"),
    ("0", "'max_processes_per_gpu' must be a whole number >= 1 or \"auto\", got 0"),
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
    auto = make_packer([0], 16, is_service=lambda pid: pid == 99)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    auto.observe(0.0, {0: reading(0, 0.6)}, {})
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):  # the server, and 8 MB of the run not yet shown as its own
        auto.observe(t, {0: reading(0, 0.6 + 74 / GB, pid_mb={99: 66.0})}, {0: [run]})
    assert footprint(auto) is None
    for t in (6.0, 7.0, 8.0, 9.0):
        auto.observe(t, {0: reading(0, 0.6 + 1.5, pid_mb={99: 66.0, 7: 1.4 * GB})}, {0: [run]})
    assert footprint(auto) == pytest.approx(1.4 * GB)
    # and where NVML shows no process of this machine (a container), the growth less the server's is the run's
    auto = make_packer([0], 16, group_of=lambda pid: None, is_service=lambda pid: pid == 99)
    auto.observe(0.0, {0: reading(0, 0.6)}, {})
    for t in (1.0, 2.0, 3.0, 4.0):
        auto.observe(t, {0: reading(0, 0.6 + 66 / GB + 1.4, pid_mb={99: 66.0, 12345: 1.4 * GB})}, {0: [run]})
    assert footprint(auto) == pytest.approx(1.4 * GB)


def test_a_cuda_context_s_start_is_not_the_run_computing():
    """As NVML showed it on an H200 (bench/README.md): a small PyTorch training's CUDA context (564 MB) comes
    with a blip of utilization (3%), then 4 s of loading with the GPU idle, then the model and its optimizer
    (1442 MB in all). The context is no footprint: computing counts only once the memory has held still."""
    auto = make_packer([0], 16)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    timeline = [(0.0, 564, 0), (1.0, 564, 3)] + [(t, 564, 0) for t in (2.0, 3.0, 4.0, 5.0)] + \
        [(6.0, 1318, 2), (7.0, 1442, 4), (8.0, 1442, 9), (9.0, 1442, 6), (10.0, 1442, 8)]
    learned = {}
    for t, mb, util in timeline:
        auto.observe(t, {0: reading(0, 0.6 + mb / GB, util=util, pid_mb={7: float(mb)})}, {0: [run]})
        learned[t] = footprint(auto)
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
            sweep.wait_for(lambda: " for n_0_" in (sweep.dir / "outputs" / "sweep.log").read_text(),
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
    auto, _ = learned_packer(probe=ReadingsProbe({0: reading(0, 0.5)}), ended=True)  # GPU 1's reading failed
    pool = auto.pool
    run = Run(1, "b", {}, ["x"], tmp_path / "b")
    run.memory_mb = 200 * GB
    assert pool.place(run, 10.0)[0] == (0,)


def test_a_declared_need_larger_than_every_gpu_is_refused_before_anything_runs(sweep):
    """An adversarial pass: --gpu-memory-gb 100 on 16 GB GPUs (no auto) waited forever, saying nothing."""
    sweep.gpus.set(count=2, total_mb=16000)
    p = sweep.run("--gpu-memory-gb", "100", "--gpus", "0", "1", "x=1,2")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "needs 100.0 GB of GPU memory" in p.stderr and "the largest GPU of the sweep has 15.6 GB" in p.stderr, p.stderr


# -- which GPU, how many runs on it ------------------------------------------------------------------------------

def test_lowest_memory_gpu_is_chosen_first(sweep):
    sweep.gpus.set(count=3, used_mb=[9000, 3000, 6000])
    sweep.config([{"n": 0}])
    assert sweep.run().returncode == 0
    assert sweep.results()[0]["gpu_id"] == 1


def test_a_gpu_full_of_someone_elses_memory_gets_nothing(sweep):
    sweep.gpus.set(count=2, used_mb=[60000, 1000])  # GPU 0: 58.6 GB used by another user
    sweep.config([{"n": i, "sleep": 0.1} for i in range(4)])
    p = sweep.run("--memory-threshold-gb", "40")
    assert p.returncode == 0, p.stderr
    assert {r["gpu_id"] for r in sweep.results()} == {1}


def test_gpus_all_and_default_use_every_nvml_gpu(sweep):
    sweep.gpus.set(count=3)
    sweep.config([{"n": i, "sleep": 0.3} for i in range(6)])
    assert sweep.run("--gpus", "all").returncode == 0
    assert {r["gpu_id"] for r in sweep.results()} == {0, 1, 2}


def test_no_nvml_runs_on_the_cpu_and_says_so(sweep):
    sweep.config([{"n": 0}, {"n": 1}])
    p = sweep.run()  # no state file: the fake pynvml fails like a machine without a driver
    assert p.returncode == 0, p.stderr
    assert "running on the CPU" in p.stdout
    assert sweep.fake("n_0")["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert sweep.results()[0]["gpu_id"] is None


def test_disable_gpu_monitoring_places_by_slots(sweep):
    sweep.gpus.set(count=2, used_mb=[79000, 79000])  # would block everything if it were read
    sweep.config([{"n": i} for i in range(4)])
    p = sweep.run("--gpus", "0", "1", "--disable-gpu-monitoring")
    assert p.returncode == 0, p.stderr
    assert "slots only" in p.stdout
    assert {r["gpu_id"] for r in sweep.results()} == {0, 1}


def test_a_finished_run_frees_its_slot_for_the_next(sweep):
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "sleep": 0.2} for i in range(5)])
    p = sweep.run()
    assert p.returncode == 0
    spans = {}
    for e in sweep.events():
        spans.setdefault(e["name"], {})[e["event"]] = e["t"]
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    assert all(b["start"] >= a["end"] for a, b in zip(ordered, ordered[1:]))  # one at a time on 1 slot


def test_packing_two_per_gpu_waits_for_the_memory_reading(sweep):
    """With 2 slots on one GPU, the second run starts only after the first one's memory shows up."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "mem_mb": 20000, "mem_after": 1.0, "sleep": 3},
                  {"n": 1, "mem_mb": 20000, "sleep": 0.5}])
    p = sweep.run("--max-processes-per-gpu", "2", "--memory-threshold-gb", "40", "--settle-seconds", "30")
    assert p.returncode == 0, p.stdout + p.stderr
    starts = {e["name"]: e["t"] for e in sweep.events() if e["event"] == "start"}
    first = sweep.fake("n_0_mem_mb_20000_mem_after_1_sleep_3")
    gap = starts["n_1_mem_mb_20000_sleep_0.5"] - first["start"]
    assert gap >= 1.0, f"second run started {gap:.2f}s after the first, before its memory showed"


def test_packing_respects_the_memory_threshold(sweep):
    """Two slots, but after the first run's 30 GB show, the GPU is over the 25 GB threshold: runs go one by one."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": i, "mem_mb": 30000, "sleep": 0.5} for i in range(3)])
    p = sweep.run("--max-processes-per-gpu", "2", "--memory-threshold-gb", "25")
    assert p.returncode == 0, p.stderr
    spans = {}
    for e in sweep.events():
        spans.setdefault(e["name"], {})[e["event"]] = e["t"]
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    for a, b in zip(ordered, ordered[1:]):
        assert b["start"] >= a["end"] - 0.05, "two runs overlapped on a GPU that was over the threshold"


def test_two_sweeps_sharing_gpus_see_each_others_memory(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"big": 1, "mem_mb": 50000, "sleep": 60}], "a.json")  # (it outlasts the second sweep: ended below)
    first = sweep.start("--config-file", "a.json", "--output-dir", "out_a", "--output-file", "a_results.json")
    sweep.wait_for(lambda: any(sweep.gpus.procs_dir.glob("*.json")), what="the first sweep's memory")
    sweep.config([{"n": i, "sleep": 0.2} for i in range(4)], "b.json")
    p = sweep.run("--config-file", "b.json", "--output-dir", "out_b", "--output-file", "b_results.json",
                  "--max-processes-per-gpu", "2")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    big_gpu = json.loads((sweep.dir / "a_results.json.partial").read_text())[0]["gpu_id"]
    assert p.returncode == 0
    assert {r["gpu_id"] for r in sweep.results("b_results.json")} == {1 - big_gpu}


# -- runs of several GPUs, declared memory, --max-parallel -------------------------------------------------------

def spans(sweep) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in sweep.events():
        out.setdefault(e["name"], {})[e["event"]] = e["t"]
        out[e["name"]]["gpu"] = e["gpu"]
    return out


def test_a_two_gpu_run_waits_for_two_free_gpus_while_others_keep_running(sweep):
    sweep.gpus.set(count=3)
    sweep.config({"runs": [{"n": "a", "sleep": 1.0}, {"n": "b", "sleep": 2.0}, {"n": "wide", "sleep": 1.0,
                  "gpus_per_run": 2}, {"n": "c", "sleep": 0.5}]})
    p = sweep.run()
    assert p.returncode == 0, p.stdout + p.stderr
    s = spans(sweep)
    wide = s["n_wide_sleep_1"]
    assert len(wide["gpu"].split(",")) == 2
    assert wide["start"] >= s["n_a_sleep_1"]["end"] - 0.05  # waited for a second free GPU
    for name, span in s.items():  # nothing else ran on its GPUs while it ran
        if name != "n_wide_sleep_1" and set(span["gpu"].split(",")) & set(wide["gpu"].split(",")):
            assert span["end"] <= wide["start"] + 0.05 or span["start"] >= wide["end"] - 0.05, name
    assert sweep.results()[2]["gpu_id"] == [int(g) for g in wide["gpu"].split(",")]
    p = sweep.run("--gpus", "0", "--rerun")
    assert p.returncode == 2 and "needs 2 GPUs; the sweep has 1" in p.stderr


def test_gpu_memory_gb_packs_without_guessing_processes_per_gpu(sweep):
    sweep.gpus.set(count=1, total_mb=81920, used_mb=500)
    sweep.config({"gpu_memory_gb": 30, "runs": [{"n": i, "mem_mb": 30000, "mem_after": 0.5, "sleep": 1.5}
                                                for i in range(4)]})
    p = sweep.run("--max-processes-per-gpu", "8", "--memory-threshold-gb", "79")
    assert p.returncode == 0, p.stdout + p.stderr
    s = sorted(spans(sweep).values(), key=lambda x: x["start"])
    assert s[1]["start"] - s[0]["start"] < 0.5  # no waiting for the first one's memory: it was declared
    for t in (x["start"] + 0.01 for x in s):
        assert sum(x["start"] <= t < x["end"] for x in s) <= 2  # 80 GB: two 30 GB runs, never three


def test_max_parallel_one_runs_one_after_another(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 0.3} for i in range(3)])
    assert sweep.run("--max-parallel", "1", "--max-processes-per-gpu", "2").returncode == 0
    s = sorted(spans(sweep).values(), key=lambda x: x["start"])
    assert all(b["start"] >= a["end"] - 0.02 for a, b in zip(s, s[1:]))


# -- GPUs whose NVML calls fail: taken out after a few failures, not after one -----------------------------------

def test_failing_gpu_is_dropped_and_the_sweep_goes_on(sweep):
    """A GPU whose NVML calls keep failing (3 times over 2 s) is taken out; until then it takes no run."""
    sweep.gpus.set(count=2)
    sweep.gpus.update(0, fail=True)
    sweep.config([{"n": i, "sleep": 1} for i in range(3)])
    p = sweep.run("--gpus", "0", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "warning: GPU 0 taken out of the pool: its NVML calls fail (GPU is lost)" in p.stdout
    assert {r["gpu_id"] for r in sweep.results()} == {1}


def test_gpu_that_starts_failing_mid_sweep_is_taken_out(sweep):
    sweep.gpus.set(count=2)
    sweep.config([{"n": i, "sleep": 0.5} for i in range(8)])
    proc = sweep.start("--gpus", "0", "1")
    sweep.wait_for(lambda: len(sweep.started()) >= 2, what="two runs")
    sweep.gpus.update(0, fail=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert out.count("taken out of the pool") == 1
    gpus = [r["gpu_id"] for r in sweep.results()]
    assert gpus[-1] == 1 and gpus.count(0) <= 3


def test_one_transient_nvml_error_does_not_take_a_gpu_out(sweep):
    """issue 16 item 9: one failed NVML call on every GPU at once is retried: no GPU is taken out, the sweep
    goes on and every run completes."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "flaky_nvml": 1}, {"n": 1}])
    p = sweep.run("--gpus", "0", timeout=40)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "taken out" not in p.stdout
    assert [r["state"] for r in sweep.results()] == ["complete", "complete"]


def test_a_run_of_two_gpus_fails_when_one_is_taken_out(sweep):
    """issue 16 item 9: a 2-GPU run waiting for its GPUs, when one of the two GPUs is taken out (its NVML calls
    keep failing), fails with the reason instead of waiting forever."""
    sweep.gpus.set(count=2)
    sweep.config({"runs": [{"n": 0, "sleep": 4, "break_gpu": 1}, {"n": 1, "gpus_per_run": 2}]})
    p = sweep.run("--gpus", "0", "1", timeout=40)
    assert "Traceback" not in p.stderr, p.stderr
    records = {r["model_name"]: r for r in sweep.results()}
    assert records["n_0_sleep_4_break_gpu_1"]["state"] == "complete", p.stdout
    two = records["n_1"]
    assert two["state"] == "failed" and "needs 2 GPUs and 1 are left" in two["error"], two
    assert p.returncode == 1, p.stdout + p.stderr


def test_an_oom_requeued_run_that_needs_more_gpus_than_are_left_fails(sweep):
    """A run that ran out of memory waits; one of its 2 GPUs is taken out meanwhile: it fails with the reason
    (before: the sweep never ended)."""
    sweep.gpus.set(count=2)
    marker = sweep.dir / "oomed"
    sweep.config({"runs": [{"n": 0, "oom_once": str(marker), "break_gpu": 1, "gpus_per_run": 2}]})
    p = sweep.run("--gpus", "0", "1", timeout=40)
    (record,) = sweep.results()
    assert record["state"] == "failed" and "needs 2 GPUs and 1 are left" in (record["error"] or ""), record
    assert p.returncode == 1, p.stdout + p.stderr


def test_nvml_failing_on_every_gpu_keeps_finished_runs_and_exits_3(sweep):
    """issue 10 bug 6: every GPU's NVML calls fail from the moment the first run ends (the second is queued):
    the finished run is recorded, nothing is left `running`, exit 3 with one error line about NVML."""
    sweep.gpus.set(count=1)
    sweep.config([{"n": 0, "break_nvml": 1}, {"n": 1}])
    p = sweep.run(timeout=60)
    kill_pids(run_pids(sweep))
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.returncode == 3, p.stdout + p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_sweep: error:") and "NVML" in err[0], p.stderr
    results = sweep.results()
    first = next(r for r in results if r["model_name"] == "n_0_break_nvml_1")
    assert first["state"] == "complete", results
    left = [r["model_name"] for r in run_jsons(sweep.dir / "outputs") if r.get("state") == "running"]
    assert not left, f"run.json still says running: {left}"


def test_a_key_no_footprint_has_makes_a_run_unseen():
    """Footprints remembered from an earlier sweep without `batch`: a run that sets it is not predicted from them."""
    fp = Footprints()
    fp.add({"lr": 1e-3}, 2000, "a")
    fp.add({"lr": 1e-4}, 2010, "b")
    assert fp.predict({"lr": 1e-2})[0].mb == 2010
    assert fp.predict({"lr": 1e-2, "batch": 512}) is None


def test_a_packed_run_s_cuda_context_is_not_its_footprint():
    """Measured on an H100 (bench/README.md): beside a run that computes, a new run's CUDA context (762 MB) held
    still for seconds while the GPU was busy, and was learned as its footprint; the run then grew to 16.4 GB. A
    footprint is learned only once the run's memory grew past the level it first showed."""
    auto = make_packer([0], 16)
    a = launch(auto, Run(0, "a", {"batch": 64}, ["x"], Path("a")))
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        auto.observe(t, {0: reading(0, 0.6 + (0.5 if t < 1 else 1.4), util=60,
                                    pid_mb={7: (0.5 if t < 1 else 1.4) * GB})}, {0: [a]})
    assert footprint(auto) == pytest.approx(1.4 * GB)
    b = Run(1, "b", {"batch": 512, "model": "wide"}, ["x"], Path("b"))  # a key no footprint has: unseen
    b.pgid = 8
    launch(auto, b, now=4.5)
    for t in (5.0, 6.0, 7.0, 8.0, 9.0):  # its context, still, while a computes (the GPU 60% busy)
        auto.observe(t, {0: reading(0, 2.6, util=60, pid_mb={7: 1.4 * GB, 8: 762.0})}, {0: [a, b]})
    assert b in auto.probes and auto.limit(0, 2, 2)[0] == 2  # still learning: its GPU takes no other run
    for t in (10.0, 11.0, 12.0, 13.0):
        auto.observe(t, {0: reading(0, 18.4, util=90, pid_mb={7: 1.4 * GB, 8: 16.4 * GB})}, {0: [a, b]})
    assert b not in auto.probes and auto.model.get(b.hyperparams).mb == pytest.approx(16.4 * GB)


def test_a_run_larger_than_any_seen_packs_within_a_bound_the_gpu_can_hold():
    """issue 23: in config order each new, larger shape had its GPU to itself until learned, one after another
    (1.28 of the best fixed K on an H100). A run larger in numeric keys gets a bound from the closest smaller run,
    memory at most the square of each ratio, and packs at once where a GPU holds that; beyond, it is unseen."""
    auto, run = learned_packer()  # batch-less run a: 4 GB
    auto.total_mb = {0: 80 * GB, 1: 80 * GB}
    auto.model.add({"batch": 64}, 1.4 * GB, "s")  # a run of batch 64 used 1.4 GB
    twice = Run(2, "t", {"batch": 128}, ["x"], Path("t"))
    assert auto._predict(twice)[0].mb == pytest.approx(1.4 * GB * 4)
    launch(auto, twice, gpu=1, now=5.0)
    assert twice not in auto.probes and auto.limit(1, 1, 2)[0] > 1  # its GPU goes on packing
    huge = Run(3, "h", {"batch": 1024}, ["x"], Path("h"))  # 1.4 GB x 16^2: no GPU holds that bound
    assert auto._predict(huge) is None



def test_how_fast_memory_grows_with_a_key_is_learned_from_runs_that_differ_in_it_alone():
    """issue 23, config order (1.07 of the best fixed K on an H100): each larger shape was bounded by the square
    of every ratio, so a batch-512 run after batch-64 ones, or a deeper one, was "unseen" and held its GPU to
    itself while it learned. Runs that differ in one key alone show how memory grows with it: the bound uses that
    (at least linearly, plus EXPONENT_SLACK, at most the square), and the square for keys without such a pair."""
    fp = Footprints()
    for depth, mb in ((2, 1000.0), (8, 3100.0)):  # 500 MB above half the smallest, then 2600: 4x depth, 5.2x
        fp.add({"batch": 64, "depth": depth}, mb, f"d{depth}")
    power = math.log(2600 / 500) / math.log(4)
    assert fp.growth() == {"depth": pytest.approx(power + EXPONENT_SLACK)}
    point, how = fp.predict({"batch": 64, "depth": 32})
    assert point.mb == pytest.approx(3100 * 4 ** (power + EXPONENT_SLACK)) and "growth learned for depth" in how
    point, how = fp.predict({"batch": 128, "depth": 8})  # batch: nothing learned, the square
    assert point.mb == pytest.approx(3100 * 2 ** GROWTH_POWER) and "the square of each key" in how
    fp.add({"batch": 128, "depth": 2}, 9000.0, "b128")  # 17x the memory above 500 for 2x batch: capped
    assert fp.growth()["batch"] == GROWTH_POWER


def test_a_fixed_part_plus_a_linear_one_is_bounded_at_least_linearly():
    """From the review: 3.5 GB of weights plus 4 MB a sample grows 7% from batch 64 to 128, an exponent of 0.43
    fitted between small values; at batch 16384 that said 37 GB for a run of 67 GB. A learned rate is at least
    linear (here: no GPU holds the bound, so the run is unseen and has its GPU to itself)."""
    fp = Footprints()
    fp.add({"batch": 64, "lr": 1e-3}, 3756.0, "a")
    fp.add({"batch": 64, "lr": 1e-4}, 3756.0, "b")  # lr moves nothing
    fp.add({"batch": 128, "lr": 1e-3}, 4012.0, "c")
    assert fp.growth() == {"batch": pytest.approx(1.0 + EXPONENT_SLACK)}
    point, _ = fp.predict({"batch": 16384, "lr": 1e-3})
    assert point.mb >= 500 + 3000 + 4 * 16384


def test_a_grid_in_config_order_packs_its_larger_shapes_from_learned_growth(tmp_path):
    """The grid of the H100 benchmark, in proportion (1.2 to 16 GB on 80 GB, its smallest shapes first): once the
    batch-64 runs show how memory grows with depth and width, the larger shapes pack at once within bounds, and
    a run's margin stops holding room once its footprint is learned (and HOLD_S has passed)."""
    code, launcher, notes, runs, wall, serial = simulate_shapes(
        tmp_path, list(GRID), mem_of=lambda hp: 1.0 + 4.9e-6 * hp["batch"] * hp["depth"] * hp["width"])
    assert code == 0 and not launcher.oom and all(r.state == State.COMPLETE for r in runs)
    starts = sorted(t for t, _, _ in launcher.log)
    assert starts[-1] < 18.0, starts  # every run on the GPU within 18 s (before: the last at 50 s or later)
    said = "\n".join(text for _, text in notes)
    assert said.count("learning the memory footprint") <= 3 and "memory moves with batch, depth, width" in said



def test_a_run_seen_below_half_its_known_footprint_is_not_learned_until_it_ends():
    """On an H100, a repeated sweep started 14 remembered runs at once; starting together, they showed only their
    CUDA context (0.7 GB) for over 10 s, and that was learned as their footprint against 3.9 GB remembered
    (predictions for their configuration fell 5x while they ran). A run whose configuration has a footprint and
    shows less than half of it keeps that footprint while it runs; a lower one is learned at its end."""
    auto = make_packer([0], 16)
    hp = {"batch": 64, "layers": 8}
    auto.model.add(hp, 3.9 * GB, "remembered")
    run = launch(auto, Run(0, "a", dict(hp), ["x"], Path("a")))
    auto.observe(0.0, {0: reading(0, 0.5)}, {})
    for t in (1.0, 3.0, 6.0, 9.0, 12.0, 15.0):
        auto.observe(t, {0: reading(0, 1.2, util=90, pid_mb={7: 0.7 * GB})}, {0: [run]})
    assert auto.model.get(hp).mb == pytest.approx(3.9 * GB)  # still loading: not its footprint
    run.state = State.COMPLETE
    auto.pool.release(run)
    auto.ended(run, 16.0, oom=False)
    assert auto.model.get(hp).mb == pytest.approx(0.7 * GB)  # it ended so: that is what it used



def test_a_floor_after_an_out_of_memory_end_is_not_a_known_footprint():
    """From a second review: a run that ran out of memory before its memory showed leaves a guessed floor (the
    largest footprint seen, 40 GB); its requeue really used 5 GB, but as a run of a "known" configuration it was
    never learned while it ran, and its need held 64 GB of the GPU for ten minutes."""
    auto = make_packer([0], 16)
    auto.model.add({"m": "big"}, 40 * GB, "remembered")
    small = {"m": "small"}
    first = launch(auto, Run(0, "s1", dict(small), ["x"], Path("s1")))
    auto.observe(0.0, {0: reading(0, 0.5)}, {})
    first.state = State.OOM
    auto.pool.release(first)
    auto.ended(first, 1.0, oom=True)
    again = launch(auto, Run(1, "s2", dict(small), ["x"], Path("s2")), now=2.0)
    assert again not in auto.known
    for t in range(3, 30):
        auto.observe(float(t), {0: reading(0, 5.5, util=90, pid_mb={7: 5 * GB})}, {0: [again]})
    assert auto.model.get(small).mb == pytest.approx(5 * GB) and auto.pending(0) == 0


def test_a_known_configuration_s_pruned_run_lowers_its_footprint():
    """From a second review: a remembered footprint gone stale (3.9 GB; the script now uses 0.8 GB) was lowered
    only by a run that completed; with a pruner that stops most runs it stayed, and was remembered again."""
    auto = make_packer([0], 16)
    hp = {"batch": 64}
    auto.model.add(hp, 3.9 * GB, "remembered")
    run = launch(auto, Run(0, "a", dict(hp), ["x"], Path("a")))
    auto.observe(0.0, {0: reading(0, 0.5)}, {})
    for t in range(1, 40):
        auto.observe(float(t), {0: reading(0, 1.3, util=90, pid_mb={7: 0.8 * GB})}, {0: [run]})
    run.state = State.PRUNED
    auto.pool.release(run)
    auto.ended(run, 40.0, oom=False)
    assert auto.model.get(hp).mb == pytest.approx(0.8 * GB)


# -- an adversarial review of the above (each failed before its fix) ---------------------------------------------

def test_an_oom_before_any_memory_showed_leaves_no_zero_footprint():
    auto = make_packer([0], 16)
    auto.model.add({"bs": 32}, 20000.0, "a")
    run = launch(auto, Run(1, "b", {"bs": 64}, ["x"], Path("b")))  # predicted from a bound: 80 GB
    run.state = State.OOM
    auto.pool.release(run)
    auto.ended(run, 1.0, oom=True)  # it never showed memory
    assert auto.need_mb(run) > 20000 and auto.need_mb(Run(2, "c", {"bs": 128}, ["x"], Path("c"))) > 20000


def test_a_small_run_that_never_grows_past_its_first_level_is_learned_in_time():
    auto = make_packer([0], 16)
    run = launch(auto, Run(0, "a", {}, ["x"], Path("a")))
    for t in range(0, 14):  # 600 MB from its first reading on, computing
        auto.observe(float(t), {0: reading(0, 1.1, util=40, pid_mb={7: 600.0})}, {0: [run]})
    assert run not in auto.probes and footprint(auto) == pytest.approx(600.0)


def test_an_interrupted_run_s_cuda_context_is_not_remembered(tmp_path):
    from train_sweep_extras.packing import FootprintCache
    auto = make_packer([0], 16)
    auto.cache = FootprintCache(tmp_path, ["python train.py"], tmp_path, "Fake")
    run = launch(auto, Run(0, "a", {"lr": 1}, ["x"], Path("a")))
    for t in (0.0, 1.0, 2.0):
        auto.observe(t, {0: reading(0, 1.1, util=40, pid_mb={7: 564.0})}, {0: [run]})
    run.state = State.INTERRUPTED  # Ctrl+C seconds after its start
    auto.pool.release(run)
    auto.ended(run, 3.0, oom=False)
    assert auto.model.get({"lr": 1}) is None and not (tmp_path / "footprints.jsonl").exists()


def test_a_run_of_two_gpus_whose_need_no_gpu_offers_runs_alone_on_two_idle_gpus():
    auto = make_packer([0, 1], 16, probe=ReadingsProbe({0: reading(0, 0.5), 1: reading(1, 0.5)}))
    auto.model.add({}, 4 * GB, "a")
    run = Run(1, "b", {}, ["x"], Path("b"))
    run.gpus_needed, run.memory_mb = 2, 200 * GB
    gpus, why = auto.pool.place(run, 1.0)
    assert gpus == (0, 1) and "runs alone on GPUs 0 1" in why


def test_extreme_values_bound_nothing_rather_than_crash():
    fp = Footprints()
    fp.add({"eps": 1e-200}, 1000.0, "a")
    fp.add({"n": 1}, 1000.0, "b")
    fp.predict({"eps": 1.0})
    fp.predict({"n": 10 ** 400})
