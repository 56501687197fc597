"""--max-processes-per-gpu auto: how many runs each GPU takes, learned from what NVML shows.

GpuPool (train_sweep.py) hands its auto decisions to a Packer: `observe` each NVML reading, `place` a run,
`launched`, `ended`, `line` for the live view and `summary` at the end.

- A run's footprint is the memory of its process group (or, where NVML hides processes, its share of its
  GPU's growth) once that memory has grown past the level it first showed (its CUDA context) and held still
  for STABLE_S while its GPU computed, or held still for PATIENCE_S; a run of a configuration with a footprint
  is not learned below half of it until it ends (it has not loaded its model yet).
- Footprints are kept per configuration (`Footprints`). Which hyperparameters move memory is learned from the
  footprints themselves: a key stops counting once runs that differ in it, and agree on every key that counts,
  used the same memory. A run is predicted from runs of its memory shape, from a shape at least as large in
  every numeric key that counts (memory grows with batch size, width, depth, ...), or bounded from a smaller
  shape where a GPU can hold that bound: memory grows with each key as fast as runs that differ in it alone
  showed (plus a slack), as its square where none did.
- A run's need holds room on its GPU (free memory less the needs of the runs placed there, less what each has
  shown) only until its footprint is learned and HOLD_S has passed: then its memory is in NVML's reading.
- A run with no prediction (an unseen shape) starts where free memory covers the largest footprint seen (with
  none seen, a CUDA context and the margin: not on a GPU another user filled), and its GPU takes nothing else
  until its own footprint is known (seconds).
- An out-of-memory end raises the margin of the run that grew past its prediction, or of a run not seen before
  beside it (of the run that died when neither); it leaves what it reached as a floor. A need larger than any
  GPU offers runs alone.
- Footprints are remembered across sweeps (FootprintCache, in the user's cache folder), keyed by command,
  working folder, GPU model and hyperparameters: a repeated sweep packs from its first second.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import train_sweep as ts
from train_sweep import MB, GpuReading, Run, State, canonical_json, fmt_bytes

MARGIN, MARGIN_MB = 1.15, 512.0  # a run's predicted need: its footprint x 1.15, and at least + 512 MB
MARGIN_MAX = 3.0  # each out-of-memory end raises the margin of the run that grew x1.5, to this at most
STABLE_S = 1.0  # a run's memory is its footprint once it has not grown for this long
QUIET_S = 1.5  # ... and its GPU was seen computing at least this long after it last grew (not the context's blip)
SAME = 0.05, 128.0  # footprints within 5% (or 128 MB) of each other are the same
CONTEXT_MB = 900.0  # a run first seen with more than this holds more than a CUDA context (564 MB on an H100)
PATIENCE_S = 10.0  # ... or held still this long (a small model may add less than 64 MB to its context)
GROWTH_POWER = 2  # an unseen run's bound: memory grows at most as the square of each numeric key that moves it
EXPONENT_SLACK = 0.25  # ... or as fast as runs that differ in that key alone showed (at least linearly), plus this
HOLD_S = 5.0  # a run's need holds room on its GPU until its footprint is learned, and at least this long
MOVERS_POINTS = 200  # which keys move memory is judged on the latest 200 footprints
MOVERS_TRIES = 512  # ... trying at most this many sets of keys to leave out (20 keys: 1.4 s at 4,096)
MAX_FOOTPRINT_MB = 4 * 1024 * 1024  # a remembered footprint above 4 TB (no GPU holds it) is a damaged line
CACHE_BYTES = 4 * 1024 * 1024  # the remembered footprints: compacted past this, to the newest half of it
MPS_SMALL = 1 / 8  # runs at most this share of their GPU, packed and alone on it: --mps would likely pay


def describe(policy: Any, where: str) -> str:
    bound = f"{policy.max_parallel} in all (--max-parallel)" if policy.max_parallel else \
        f"{policy.cpu_cores} in all (the CPU cores)"
    return (f"auto on {where}: as many runs a GPU as free memory takes, each run's footprint predicted from "
            f"runs of its memory shape (x{MARGIN:g}, at least +{MARGIN_MB / 1024:g} GB); a run of an unseen shape "
            f"has its GPU to itself until its footprint is known; at most {bound}")


# -- footprints per configuration -------------------------------------------------------------------------

@dataclasses.dataclass
class Point:
    hp: Mapping[str, Any]  # the run's hyperparameters
    mb: float  # the most memory it used (floor: what it had reached when it ran out of memory)
    source: str  # the run's name, or "remembered"
    margin: float = MARGIN
    floor: bool = False
    bound: bool = False  # not seen: an upper bound from a smaller run (Footprints._bound)


def same(a: float, b: float) -> bool:
    return abs(a - b) <= max(SAME[0] * max(a, b), SAME[1])


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_MISSING = object()


class Footprints:
    """The footprints seen, one per configuration, and predictions for configurations not seen."""

    def __init__(self) -> None:
        self.points: dict[str, Point] = {}
        self._movers: tuple[str, ...] | None = None
        self._known: set[str] | None = None  # every key of every footprint
        self._groups: dict[tuple[str, ...], tuple[Point, float, int]] | None = None  # see _shapes
        self._growth: dict[str, float] | None = None  # see growth

    def add(self, hp: Mapping[str, Any], mb: float, source: str, floor: bool = False) -> Point:
        """A footprint seen (floor: what a run had reached when it ran out of memory: it needs more)."""
        key = canonical_json(dict(hp))
        old = self.points.get(key)
        if old is not None and floor:
            old.mb = max(old.mb, mb)
        else:
            self.points[key] = Point(dict(hp), mb, source, old.margin if old is not None else MARGIN, floor)
        self._movers = self._known = self._groups = self._growth = None
        return self.points[key]

    def get(self, hp: Mapping[str, Any]) -> Point | None: return self.points.get(canonical_json(dict(hp)))

    def raise_margin(self, hp: Mapping[str, Any], peak_mb: float, source: str) -> Point:
        """Out of memory: this configuration needs at least what it reached, and more room (x1.5, to MARGIN_MAX)."""
        point = self.add(hp, peak_mb, source, floor=True)
        point.margin = min(point.margin * 1.5, MARGIN_MAX)
        self._groups = self._growth = None
        return point

    def _keys(self) -> set[str]:
        if self._known is None:
            self._known = set().union(*(p.hp for p in self.points.values()))
        return self._known

    def largest(self) -> float | None:
        return max((p.mb for p in self.points.values()), default=None)

    def movers(self) -> tuple[str, ...]:
        """The keys that move memory: every key, less those shown not to (cached until a footprint is added)."""
        if self._movers is None:
            self._movers = self._find_movers(list(self.points.values())[-MOVERS_POINTS:])
        return self._movers

    @staticmethod
    def _find_movers(points: Sequence[Point]) -> tuple[str, ...]:
        """Leave out a set of keys while the runs that agree on every other key used the same memory, and each
        left-out key took two values among such runs (evidence, not absence of it)."""
        keep = set().union(*(p.hp for p in points)) if points else set()
        values = [{k: canonical_json(p.hp[k]) if k in p.hp else "\0" for k in keep} for p in points]
        tries = 0

        def groups(keys: Iterable[str]) -> Iterable[list[int]]:
            keys = sorted(keys)
            by: dict[tuple[str, ...], list[int]] = {}
            for i, v in enumerate(values):
                by.setdefault(tuple(v[k] for k in keys), []).append(i)
            return by.values()

        def may_leave(out: tuple[str, ...]) -> bool:
            varied: set[str] = set()
            for group in groups(keep - set(out)):
                if len(group) < 2:
                    continue
                if not same(max(points[i].mb for i in group), min(points[i].mb for i in group)):
                    return False
                varied |= {k for k in out if len({values[i][k] for i in group}) > 1}
            return varied == set(out)

        while True:
            for size in range(1, len(keep) + 1):
                found = None
                for out in itertools.combinations(sorted(keep), size):
                    tries += 1
                    if tries > MOVERS_TRIES:
                        return tuple(sorted(keep))
                    if may_leave(out):
                        found = out
                        break
                if found:
                    keep -= set(found)
                    break
            else:
                return tuple(sorted(keep))

    def shape(self, hp: Mapping[str, Any]) -> tuple[str, ...]:
        """A configuration's memory shape: the values of the keys that move memory."""
        return tuple(canonical_json(hp.get(k)) if k in hp else "\0" for k in self.movers())

    def _shapes(self) -> dict[tuple[str, ...], tuple[Point, float, int]]:
        """Each memory shape (the values of the keys that move memory): its largest footprint, the largest margin
        of its runs and how many there are (cached until a footprint is added)."""
        if self._groups is None:
            groups = {}
            for p in self.points.values():
                key = self.shape(p.hp)
                top, margin, n = groups.get(key, (p, p.margin, 0))
                groups[key] = (p if p.mb > top.mb else top, max(margin, p.margin), n + 1)
            self._groups = groups
        return self._groups

    def predict(self, hp: Mapping[str, Any]) -> tuple[Point, str] | None:
        """The point that bounds this configuration's footprint, and how it was found; None: an unseen shape."""
        own = self.get(hp)
        if own is not None:
            return own, "its own"
        if set(hp) - self._keys():
            return None  # a key no footprint has: what it does to memory is unknown
        movers, shapes = self.movers(), self._shapes()
        key = self.shape(hp)
        if key in shapes:
            top, margin, n = shapes[key]
            return dataclasses.replace(top, margin=margin), f"runs of its memory shape ({n})"
        # a shape at least as large in every numeric key that moves memory bounds it (floors bound nothing above)
        larger = [top for top, _, _ in shapes.values() if not top.floor and all(
            top.hp.get(k, _MISSING) == hp.get(k, _MISSING) or (
                _numeric(top.hp.get(k)) and _numeric(hp.get(k)) and top.hp[k] >= hp[k]) for k in movers)]
        if larger:
            top = min(larger, key=lambda p: p.mb)
            return top, f"a run at least as large ({top.source})"
        return self._bound(hp, movers, [top for top, _, _ in shapes.values() if not top.floor])

    def growth(self) -> dict[str, float]:
        """How fast memory grows with each numeric key that moves it, learned from shapes that differ in that key
        alone: the largest exponent seen (of the memory above half the smallest footprint, the CUDA context's share),
        at least 1 (a fixed part plus a linear one looks slower between small values than it grows), plus
        EXPONENT_SLACK, at most GROWTH_POWER; a key without such a pair grows as GROWTH_POWER."""
        if self._growth is None:
            movers, tops = self.movers(), [top for top, _, _ in self._shapes().values() if not top.floor]
            base = 0.5 * min((p.mb for p in tops), default=0.0)
            seen: dict[str, float] = {}
            for a, b in itertools.combinations(tops, 2):
                differ = [k for k in movers if a.hp.get(k, _MISSING) != b.hp.get(k, _MISSING)]
                if len(differ) != 1 or not (_numeric(a.hp.get(differ[0])) and _numeric(b.hp.get(differ[0]))):
                    continue
                k = differ[0]
                lo, hi = sorted((a, b), key=lambda p: p.hp[k])
                if lo.hp[k] > 0 and hi.hp[k] > lo.hp[k] and lo.mb > base:  # (logs apart: 10**400 / 1 overflows)
                    ratio = math.log(hi.hp[k]) - math.log(lo.hp[k])
                    if 0 < ratio < math.inf:
                        power = math.log((max(hi.mb, lo.mb) - base) / (lo.mb - base)) / ratio
                        seen[k] = max(seen.get(k, 0.0), power)
            self._growth = {k: min(GROWTH_POWER, max(1.0, v) + EXPONENT_SLACK) for k, v in seen.items()}
        return self._growth

    def _bound(self, hp: Mapping[str, Any], movers: Sequence[str], shapes: Sequence[Point]) -> tuple[Point, str] | None:
        """A run larger than any seen in some numeric keys: a bound from the shape it is closest to, memory growing
        with each such key as `growth` learned (GROWTH_POWER, the square, where nothing was learned: batch size and
        depth grow it linearly, width its weights as the square); None where a key that moves memory is not a
        positive number, or differs in kind."""
        best: tuple[float, Point] | None = None
        growth = self.growth()
        for p in shapes:
            factor = 1.0
            try:
                for k in movers:
                    a, b = p.hp.get(k, _MISSING), hp.get(k, _MISSING)
                    if a == b:
                        continue
                    if not (_numeric(a) and _numeric(b) and a > 0 and b > 0):
                        break
                    factor *= min(max(1.0, float(b) / float(a)), 1e6) ** growth.get(k, GROWTH_POWER)
                else:
                    if best is None or p.mb * factor < best[0]:
                        best = (p.mb * factor, p)
            except (OverflowError, ZeroDivisionError):
                continue
        if best is None:
            return None
        learned = [k for k in movers if k in growth and best[1].hp.get(k, _MISSING) != hp.get(k, _MISSING)]
        how = f"growth learned for {', '.join(learned)}; the square elsewhere" if learned else \
            "memory at most the square of each key"
        return Point(dict(hp), best[0], best[1].source, best[1].margin, bound=True), \
            f"a bound from {best[1].source} ({how})"


def _plain(path: Path, flags: int, mode: str) -> Any:
    """`path` opened as a file object, never waiting on a FIFO (or a device) put in its place: OSError then."""
    with suppress(FileNotFoundError):
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(f"{path.name} is not a plain file")
    return open(os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644), mode)


class FootprintCache:
    """Footprints remembered across sweeps: one JSON line each in $XDG_CACHE_HOME/train_sweep/footprints.jsonl
    (~/.cache/... without it), under a key of the command, the working folder and the GPU model. Never in the
    way: a cache that cannot be read or written is said once and left alone."""

    def __init__(self, folder: Path, command: Sequence[str], cwd: Path, gpu_model: str) -> None:
        self.path = folder / "footprints.jsonl"
        self.key = hashlib.sha256(canonical_json([list(command), str(cwd), gpu_model]).encode()).hexdigest()[:16]
        self.trouble: str | None = None

    @staticmethod
    def folder() -> Path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "train_sweep"

    def load(self) -> list[tuple[dict[str, Any], float]]:
        """This key's footprints, the latest of each configuration (from the newest CACHE_BYTES of the file)."""
        try:
            with _plain(self.path, os.O_RDONLY, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - CACHE_BYTES))
                data = f.read(CACHE_BYTES)
        except FileNotFoundError:
            return []
        except OSError as e:
            self.trouble = f"cannot read {self.path}: {e.strerror or e}"
            return []
        found: dict[str, tuple[dict[str, Any], float]] = {}
        for line in data.splitlines():
            try:
                item = json.loads(line)
                if item["key"] == self.key and isinstance(item["hp"], dict) and _numeric(item["mb"]) and \
                        64.0 <= item["mb"] <= MAX_FOOTPRINT_MB:  # (NaN, negative, tiny or huge: a damaged line)
                    found[canonical_json(item["hp"])] = (item["hp"], float(item["mb"]))
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # a damaged line (a crash mid-write, an edit, the cut at the start): skipped
        return list(found.values())

    def add(self, hp: Mapping[str, Any], mb: float) -> None:
        if self.trouble:
            return
        line = json.dumps({"key": self.key, "hp": dict(hp), "mb": round(mb, 1), "at": round(time.time())},
                          separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _plain(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, "ab") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # sweeps that learn at once append whole lines, compact alone
                with _plain(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "ab") as f:
                    f.write(line.encode())
                    size = f.tell()
                if size > CACHE_BYTES:
                    self._compact()
        except (OSError, TypeError, ValueError) as e:
            self.trouble = f"cannot write {self.path}: {getattr(e, 'strerror', None) or e}"

    def _compact(self) -> None:
        """The latest line of each (key, configuration), newest first up to half of CACHE_BYTES, written to a new
        file that replaces the old one at once (a reader sees the old file or the new one, never a half)."""
        with _plain(self.path, os.O_RDONLY, "rb") as f:
            lines = f.read().splitlines()
        kept: dict[tuple[str, str], bytes] = {}
        for line in reversed(lines):  # the newest first
            try:
                item = json.loads(line)
                kept.setdefault((item["key"], canonical_json(item["hp"])), line)
            except (ValueError, KeyError, TypeError, RecursionError):
                continue
        out, size = [], 0
        for line in kept.values():
            size += len(line) + 1
            if size > CACHE_BYTES // 2:
                break
            out.append(line)
        tmp = self.path.with_suffix(".tmp")
        with _plain(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb") as f:
            f.write(b"".join(line + b"\n" for line in reversed(out)))
        os.replace(tmp, self.path)


# -- the packer ---------------------------------------------------------------------------------------------

def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _is_mps_server(pid: int) -> bool:
    """nvidia-cuda-mps-server (`nvidia-cuda-mps` to Linux): NVML lists it, with memory, beside MPS clients."""
    import psutil
    try:
        return psutil.Process(pid).name().startswith("nvidia-cuda-mps")
    except psutil.Error:
        return False


@dataclasses.dataclass
class _Seen:
    peak_mb: float = 0.0  # the most memory seen for the run
    grew_at: float = 0.0  # when it last grew: by more than max(64 MB, 2%) over `level_mb`
    level_mb: float = 0.0  # its memory then (not the reading before: slow growth adds up)
    how: str = ""  # per-process memory, or the GPU's growth
    computed_at: float | None = None  # its GPU last seen computing (util > 0, or unknown), QUIET_S after it grew
    learned: float = 0.0  # the footprint recorded for it so far
    past_context: bool = False  # its memory grew past the level it first showed (its CUDA context, alone)


class Packer:
    """GpuPool's decisions under --max-processes-per-gpu auto (see the module's doc)."""

    def __init__(self, pool: Any, cpu_cores: int, group_of: Callable[[int], int | None] | None = None,
                 is_service: Callable[[int], bool] | None = None, cache: FootprintCache | None = None) -> None:
        self.pool = pool
        self.cores = max(1, cpu_cores)
        self.model = Footprints()
        self.runs: dict[Run, _Seen] = {}
        self.predicted: dict[Run, float | None] = {}  # what each running run was expected to use (None: unseen)
        self.probes: set[Run] = set()  # running runs of an unseen shape, until their footprint is known
        self.needs: dict[Run, tuple[float, float]] = {}  # each running run's need when placed, and when
        # running runs whose configuration (or memory shape) has a footprint: one seen at less than half of it
        # while it runs has not loaded its model yet (14 runs started at once on an H100 showed their CUDA context,
        # 0.7 GB, for over 10 s, against 3.9 GB remembered): it is learned lower only at its end
        self.known: set[Run] = set()
        self.baseline: dict[int, float] = {}  # each GPU's used memory while no run of ours was on it
        self.why: dict[int, str | None] = {}  # each GPU's latest reason to take no more runs (said when it changes)
        self.said: dict[int, tuple[frozenset[str], set[str]]] = {}  # ... the reasons said while its runs stayed
        self.most: dict[int, int] = {}  # the most runs each GPU held at once
        self.total_mb: dict[int, float] = {}
        self.notes: list[str] = []
        self.group_of = group_of or _process_group
        self.is_service = functools.lru_cache(maxsize=4096)(is_service or _is_mps_server)
        self.now = 0.0
        self.cache = cache
        self.remembered = 0
        if cache is not None:
            for hp, mb in cache.load():
                self.model.add(hp, mb, "remembered")
                self.remembered += 1
            if self.remembered:
                self.notes.append(f"{'footprint':<11} {self.remembered} footprint(s) remembered from earlier sweeps "
                                  f"of this command on this GPU model ({cache.path}; --no-footprint-cache ignores "
                                  "them)")
            self._cache_trouble()

    def _cache_trouble(self) -> None:
        if self.cache is not None and self.cache.trouble:
            self.notes.append(f"warning: footprint cache: {self.cache.trouble}; footprints are not remembered")
            self.cache = None

    # -- what NVML shows ------------------------------------------------------------------------
    def observe(self, now: float, readings: Mapping[int, GpuReading], on_gpu: Mapping[int, Sequence[Run]]) -> None:
        """One reading: each run's memory (and whether its GPU computes); a footprint once its memory holds still."""
        self.now = now
        for g, r in readings.items():
            runs = on_gpu.get(g, ())
            self.total_mb[g] = r.memory_total_mb
            self.most[g] = max(self.most.get(g, 0), len(runs))
            groups: dict[int | None, float] = {}
            used = r.memory_used_mb  # less what the MPS server holds: no run's
            for pid, mb in r.pid_mb.items():
                if mb is not None and self.is_service(pid):
                    used -= mb
                elif mb is not None:
                    group = self.group_of(pid)
                    groups[group] = groups.get(group, 0.0) + mb
            if not runs:
                self.baseline[g] = used
                continue
            unattributed = [run for run in runs if not groups.get(run.pgid)]
            growth = max(0.0, used - self.baseline.get(g, used))
            shared = (growth - sum(groups.get(run.pgid, 0.0) for run in runs)) / len(unattributed) if unattributed \
                else 0.0
            for run in runs:
                mine = groups.get(run.pgid)
                self._seen(run, now, mine if mine else shared, "per-process memory" if mine else "the GPU's growth",
                           r.utilization != 0)
        for run, seen in list(self.runs.items()):
            still = now - seen.grew_at
            if seen.peak_mb >= 64.0 and (seen.past_context and still >= STABLE_S or still >= PATIENCE_S) and \
                    seen.computed_at is not None and seen.computed_at > seen.grew_at and not (
                    run in self.known and seen.peak_mb < 0.5 * self.predicted[run]):  # (below: at its end)
                self._learn(run, seen)  # (a small model may never grow past its first level: PATIENCE_S then)

    def _seen(self, run: Run, now: float, mb: float, how: str, computing: bool) -> None:
        f = self.runs.setdefault(run, _Seen(grew_at=now))
        if mb > f.level_mb + max(64.0, 0.02 * f.level_mb):
            f.grew_at, f.level_mb = now, mb
            if f.peak_mb >= 64.0 or mb > CONTEXT_MB:  # grown past the level it first showed, or a model at once
                f.past_context = True
        if mb > f.peak_mb:
            f.peak_mb, f.how = mb, how
        if computing and now - f.grew_at >= QUIET_S:
            f.computed_at = now

    def _learn(self, run: Run, seen: _Seen) -> None:
        """The run's memory held still (or it ended): its configuration's footprint, said when it is news."""
        if seen.learned and not seen.peak_mb > seen.learned + max(64.0, 0.02 * seen.learned):
            return
        expected = self.predicted.get(run)
        seen.learned = seen.peak_mb
        self.model.add(run.hyperparams, seen.peak_mb, run.name)
        if self.cache is not None:
            self.cache.add(run.hyperparams, seen.peak_mb)
            self._cache_trouble()
        first = run in self.probes
        self.probes.discard(run)
        if self.predicted.get(run) is None and run in self.predicted:
            self.predicted[run] = seen.peak_mb  # what it is expected to use from now on
        if first or (expected is not None and not same(expected, seen.peak_mb)):
            what = "a first run of its memory shape" if first else f"predicted {fmt_bytes(expected * MB)}"
            self.notes.append(f"{'footprint':<11} {fmt_bytes(seen.peak_mb * MB)} for {run.name} ({what}, from "
                              f"{seen.how}){self._movers_text('; ')}")

    def ended(self, run: Run, now: float, oom: bool) -> None:
        """A run ended: its peak is its footprint; out of memory: more room for the run that grew past its need."""
        seen = self.runs.pop(run, None)
        expected = self.predicted.pop(run, None)
        self.needs.pop(run, None)
        known = run in self.known
        self.known.discard(run)
        was_probe = run in self.probes
        if not oom:  # its peak, where it is more than a CUDA context: a run that completed, or grew past it
            if seen is not None and seen.peak_mb >= 64.0 and (seen.past_context or run.state == State.COMPLETE or (
                    known and run.state == State.PRUNED)):  # (a pruned run trained: its peak is what it used)
                self._learn(run, seen)
            self.probes.discard(run)
            return
        self.probes.discard(run)
        showed = seen is not None and seen.past_context  # (at its CUDA context alone, its peak says nothing)
        peak = seen.peak_mb if seen is not None else 0.0
        neighbours = [r for g in run.gpus or () for r in self.pool.on_gpu.get(g, ()) if r in self.runs]
        grew = [r for r in neighbours if (showed or self.runs[r].past_context) and (  # (all at their contexts: no
            r in self.probes or (  # suspect but the run itself); a probe is a suspect (a burst between readings)
                self.predicted.get(r) is not None and not same(self.runs[r].peak_mb, self.predicted[r]) and
                self.runs[r].peak_mb > self.predicted[r]))]
        if was_probe or expected is None or peak > expected or not grew:
            at = f"at {fmt_bytes(peak * MB)}" if showed else "before its memory showed"
            floor = peak if showed else max(expected or 0.0, self.model.largest() or 0.0)  # (not its context)
            if floor >= 64.0:  # (nothing known at all: it stays unseen, its GPU its own while it learns)
                point = self.model.raise_margin(run.hyperparams, floor, run.name)
                self.notes.append(f"{'footprint':<11} {run.name} ran out of GPU memory {at}: runs like it now need "
                                  f"{self._need_text(point)}")
        for r in grew:  # a neighbour grew past what it was expected to use: it is the cause, not the victim
            if self.runs[r].peak_mb < 64.0:
                continue
            point = self.model.raise_margin(r.hyperparams, self.runs[r].peak_mb, r.name)
            was = f"predicted {fmt_bytes(self.predicted[r] * MB)}" if self.predicted.get(r) else "not seen before"
            self.notes.append(f"{'footprint':<11} {run.name} ran out of GPU memory after {r.name} grew to "
                              f"{fmt_bytes(self.runs[r].peak_mb * MB)} ({was}): runs like {r.name} now need "
                              f"{self._need_text(point)}")

    def _movers_text(self, lead: str) -> str:
        """What the footprints say moves memory: the keys that count and took several values."""
        points = list(self.model.points.values())
        if len(points) < 2:
            return ""
        varied = [k for k in self.model.movers() if len({canonical_json(p.hp.get(k)) for p in points}) > 1]
        return f"{lead}memory moves with {', '.join(varied)}" if varied else \
            f"{lead}the same memory for every configuration so far"

    def _need_text(self, point: Point) -> str:
        need = max(point.mb * point.margin, point.mb + MARGIN_MB)
        return f"{fmt_bytes(need * MB)} free (footprint x{point.margin:.2f})"

    # -- decisions -------------------------------------------------------------------------------
    def _predict(self, run: Run) -> tuple[Point, str] | None:
        """The point that bounds the run's footprint; None for an unseen shape (or a bound no GPU could hold)."""
        found = self.model.predict(run.hyperparams)
        if found is not None and found[0].bound and found[0].mb * found[0].margin > max(self.total_mb.values(),
                                                                                         default=math.inf):
            return None
        return found

    def need_mb(self, run: Run) -> float | None:
        """The free memory a new run needs: its declared memory, its prediction with its margin, the largest
        footprint seen for an unseen shape (None: nothing is known yet)."""
        return self._need(run, None if run.memory_mb else self._predict(run))

    def _need(self, run: Run, found: tuple[Point, str] | None) -> float | None:
        if run.memory_mb:
            return run.memory_mb
        if found is None:
            largest = self.model.largest()
            return None if largest is None else max(largest * MARGIN, largest + MARGIN_MB)
        point = found[0]
        return max(point.mb * point.margin, point.mb + MARGIN_MB)

    def limit(self, g: int, running: int, total: int) -> tuple[int, str | None]:
        """How many runs GPU g may hold now, and why not more (None: only memory decides)."""
        probe = next((r for r in self.pool.on_gpu.get(g, ()) if r in self.probes), None)
        if probe is not None:
            return running, f"learning the memory footprint of {probe.name} (a shape not seen before)"
        if total >= self.cores:
            return running, f"{self.cores} runs in all: one for each CPU core (or --max-parallel)"
        return self.per_gpu_cap, (None if running < self.per_gpu_cap else
                                  f"at most {self.per_gpu_cap} run(s) a GPU: its share of {self.cores} in all")

    @property
    def per_gpu_cap(self) -> int:
        """Each GPU's share of the CPU cores' runs (of the GPUs left: one taken out gives its share back)."""
        return max(1, min(ts.AUTO_MAX_PER_GPU, self.cores // max(1, len(self.pool.gpus))))

    def say(self, g: int, why: str | None, running: int, reading: GpuReading | None) -> None:
        """Why GPU g takes no more runs, in sweep.log when it changes (each once while its runs stay the same)."""
        if why == self.why.get(g):
            return
        self.why[g] = why
        if why is None:
            return
        now_on = frozenset(r.name for r in self.pool.on_gpu.get(g, ()))
        runs, said = self.said.get(g, (now_on, set()))
        if runs == now_on and why in said:  # (two waiting runs of different needs: not each in turn, again)
            return
        self.said[g] = (now_on, said | {why} if runs == now_on else {why})
        used = f", {reading.memory_used_mb / 1024:.1f} GB used" if reading is not None else ""
        self.notes.append(f"{'packing':<11} GPU {g}: {running} run(s){used}; no more: {why}")

    def pending(self, g: int) -> float:
        """Memory GPU g's runs were placed with but do not hold yet: each run's need less the most it has shown,
        until its footprint is learned and HOLD_S has passed (then its memory is in the reading, and its margin
        no longer holds room; a run that loads, then compiles for seconds before it allocates, keeps its room)."""
        total = 0.0
        for r in self.pool.on_gpu.get(g, ()):
            need, at = self.needs.get(r, (0.0, 0.0))
            seen = self.runs.get(r)
            if not (seen is not None and seen.learned and self.now - at >= HOLD_S):
                total += max(0.0, need - (seen.peak_mb if seen is not None else 0.0))
        return total

    def place(self, run: Run, now: float, min_free_mb: float | None, readings: Mapping[int, GpuReading] | None
              ) -> tuple[tuple[int, ...] | None, str]:
        pool = self.pool
        total = sum(pool.running.values())
        limits, whys = {}, []
        for g in pool.gpus:
            limits[g], why = self.limit(g, pool.running[g], total)
            if pool.running[g] >= limits[g] and why:
                self.say(g, why, pool.running[g], pool.readings.get(g))
                whys.append(f"GPU {g}: {why}")
            elif pool.running[g] < limits[g] and (self.why.get(g) or "").startswith(("learning", "at most")):
                self.say(g, None, pool.running[g], None)  # room again: a later limit is said anew
        need = self.need_mb(run)
        least = need or CONTEXT_MB + MARGIN_MB  # nothing known: a CUDA context and the margin (not a GPU others fill)
        gpus, why = ts.pick_gpus(pool.gpus, pool.running, readings, lambda gpu: False, pool.policy, run.gpus_needed,
                                 min_free_mb, least, self.pending, limits)
        if gpus is None and readings:
            gpus, why = self._alone(run, least, readings) or (gpus, why)
        if gpus is None and whys and "maximum number of runs" in why:
            why = "; ".join(whys)
        elif gpus is None and need is not None:
            for g in pool.gpus:  # memory decides: said once a GPU is full
                if pool.running[g] < limits[g] and pool.running[g]:
                    self.say(g, f"no room for another {fmt_bytes(need * MB)}", pool.running[g], pool.readings.get(g))
        return gpus, why

    def _alone(self, run: Run, need: float, readings: Mapping[int, GpuReading]) -> tuple[tuple[int, ...], str] | None:
        """Never wait for what cannot come: a need larger than any GPU offers (its total less others' use) starts
        alone on the idle GPU(s) that offer most (a run of n GPUs: the n idle ones); a smaller one waits for our runs
        on a GPU to end."""
        pool, n = self.pool, run.gpus_needed

        def offer(g: int) -> float:  # a GPU without this tick's reading offers nothing now
            r = readings.get(g)
            if r is None:
                return 0.0
            return r.memory_total_mb - (r.memory_used_mb if pool.running[g] == 0 else self.baseline.get(g, 0.0))

        idle = sorted((g for g in pool.gpus if pool.running[g] == 0 and g in readings), key=lambda g: (-offer(g), g))
        if len(idle) < n or need <= sorted((offer(g) for g in pool.gpus), reverse=True)[n - 1]:
            return None
        gpus = tuple(sorted(idle[:n]))
        where = f"GPU {gpus[0]}" if n == 1 else f"GPUs {' '.join(map(str, gpus))}"
        why = (f"it needs {fmt_bytes(need * MB)} free, more than any GPU offers: it runs alone on {where} "
               f"({fmt_bytes(min(offer(g) for g in gpus) * MB)} free)")
        self.notes.append(f"{'packing':<11} {run.name}: {why}")
        return gpus, why

    def launched(self, run: Run) -> float | None:
        """The run started: what it is expected to use (an unseen one is a probe); returns its need, to pledge."""
        found = None if run.memory_mb else self._predict(run)
        self.predicted[run] = run.memory_mb or (found[0].mb if found is not None else None)
        if self.predicted[run] is None:
            self.probes.add(run)
        elif found is not None and not (found[0].bound or found[0].floor) and \
                self.model.shape(found[0].hp) == self.model.shape(run.hyperparams):  # measured on its shape
            self.known.add(run)
        need = self._need(run, found)
        if need is not None:
            self.needs[run] = need, self.now
        return need

    def read_every(self) -> float:
        """Seconds between NVML readings while runs run: faster while a footprint is being learned."""
        return 0.5 if self.probes else 1.0

    def slot_free(self) -> bool:
        return sum(self.pool.running.values()) < self.cores and \
            any(n < self.per_gpu_cap for n in self.pool.running.values())

    # -- what the user reads ------------------------------------------------------------------------
    def line(self) -> str:
        """For the live view: the footprints, what moves them, and why GPUs take no more runs."""
        points = self.model.points.values()
        if not points:
            return "auto: learning a run's memory footprint (one run a GPU until then)"
        low, high = min(p.mb for p in points), max(p.mb for p in points)
        span = fmt_bytes(low * MB) if same(low, high) else f"{fmt_bytes(low * MB)} to {fmt_bytes(high * MB)}"
        whys = [f"GPU {g} full ({why})" for g, why in self.why.items() if why]
        return (f"auto: footprints {span} ({len(self.model.points)} configuration(s){self._movers_text(', ')})"
                + (f"; {'; '.join(whys)}" if whys else ""))

    def summary(self) -> list[str]:
        """A tip when --mps would likely pay: small runs, packed, their GPUs to themselves."""
        if self.pool.policy.mps or not self.model.points:
            return []
        largest = self.model.largest() or 0.0
        mine = [g for g, n in self.most.items() if n >= 2 and self.baseline.get(g, 0.0) < 1024 and
                largest <= MPS_SMALL * self.total_mb.get(g, 0.0)]
        if not mine:
            return []
        gpus = " ".join(map(str, sorted(mine)))
        return [(f"Tip: these runs are small (largest footprint {fmt_bytes(largest * MB)}) and had GPU {gpus} to "
                 "themselves: --mps would likely run them faster (1.3x for 12 small transformer runs on one H100; "
                 "docs/packing.md)")]


def open_packer(pool: Any, cores: int, group_of: Callable[[int], int | None] | None, cache: dict[str, Any] | None
                ) -> Packer:
    """The packer for GpuPool; `cache` (command, cwd, gpu_model) remembers footprints across sweeps, None: not."""
    store = FootprintCache(FootprintCache.folder(), **cache) if cache is not None else None
    return Packer(pool, cores, group_of, cache=store)
