"""Metrics from TensorBoard event files in a run's folder, read as they grow.
Needs: pip install 'train-sweep[tensorboard]'."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class TensorBoardFollower:
    """Metrics from TensorBoard event files under run folders (PyTorch Lightning's default logger, and many
    repositories), read as they grow with TensorBoard's own reader (pip install 'train-sweep[tensorboard]').
    A tag counts for a metric when it is its name, or is it with '/' for '_' (val/loss for val_loss). Each run
    folder is searched for new event files at most every SCAN_S seconds. Without TensorBoard installed, one
    note says so and event files are skipped."""

    SCAN_S = 5.0

    def __init__(self, names: Sequence[str]) -> None:
        self.names = set(names)
        self.loaders: dict[Path, Any] = {}
        self.skipped: set[Path] = set()
        self.next_scan: dict[Path, float] = {}
        self.note: str | None = None  # said once: why event files are not read
        self._missing = False

    def points(self, run_dir: Path, now: float, final: bool = False,
               since: float | None = None) -> list[tuple[int | None, dict[str, float]]]:
        """New points of the event files under run_dir, by step (several writers: the latest step wins);
        files older than `since` (the attempt's start) are an earlier attempt's and skipped."""
        if not self.names or self._missing:
            return []
        if final or now >= self.next_scan.get(run_dir, 0.0):
            self.next_scan[run_dir] = now + self.SCAN_S
            for path in run_dir.glob("**/events.out.tfevents.*"):
                if path in self.loaders or path in self.skipped or not path.is_file():  # (a FIFO: waited on)
                    continue
                try:
                    old = since is not None and path.stat().st_mtime < since - 1.0
                except OSError:
                    continue
                if old:
                    self.skipped.add(path)
                elif not self._open(path):
                    return []
        out = []
        for path, loader in self.loaders.items():
            if path.is_relative_to(run_dir):
                out += self._read(loader)
        return sorted(out, key=lambda p: -1 if p[0] is None else p[0])

    def _open(self, path: Path) -> bool:
        try:
            from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        except ImportError:
            self._missing = True
            self.note = (f"note: {path.name} holds TensorBoard metrics; to read them: "
                         "pip install 'train-sweep[tensorboard]'")
            return False
        self.loaders[path] = EventFileLoader(str(path))
        return True

    def _read(self, loader: Any) -> list[tuple[int | None, dict[str, float]]]:
        from tensorboard.util import tensor_util

        points = []
        try:
            for event in loader.Load():
                values = {}
                for value in event.summary.value:
                    name = value.tag if value.tag in self.names else value.tag.replace("/", "_")
                    if name in self.names:
                        if value.HasField("simple_value"):
                            values[name] = float(value.simple_value)
                        elif value.HasField("tensor"):
                            values[name] = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                if values:
                    points.append((int(event.step), values))
        except Exception:  # noqa: BLE001  a file being written or damaged: what was read stays
            pass
        return points

    def forget(self, run_dir: Path) -> None:
        for path in [p for p in self.loaders if p.is_relative_to(run_dir)]:
            del self.loaders[path]
        self.skipped = {p for p in self.skipped if not p.is_relative_to(run_dir)}
        self.next_scan.pop(run_dir, None)
