"""--top-k: the checkpoints (--checkpoint-glob) are kept only in the K best complete runs' folders, and
<output-dir>/best/ links the K best in order. Never follows a link out of a run folder."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from train_sweep import (
    RUN_MARK,
    SERIES,
    OutputError,
    Ranking,
    Run,
    Settings,
    State,
    UserError,
    fmt_bytes,
    metric_of,
    read_json,
    write_json_atomic,
)

KEPT_ALWAYS = frozenset({"train_stdout.log", "train_stderr.log", "combined.log", "run.json", "metrics.json",
                         "metrics.jsonl", SERIES, RUN_MARK})  # in any folder of a run: never a checkpoint


def checkpoint_pattern(glob: str) -> re.Pattern[str]:
    """--checkpoint-glob as a regular expression on paths relative to a run folder: `*` and `?` within one
    folder level, `**` across levels; a pattern without '/' matches a file's name at any depth ('*.pt'); one
    with '/' from the run folder ('./*.pt' only at its top); one ending in '/' every file in that folder."""
    parts = glob.split("/")
    if not glob or glob.startswith("/") or ".." in parts:
        raise UserError(f"--checkpoint-glob {glob!r}: must be a pattern inside a run folder (relative, without '..')")
    inner = "/".join(p for p in parts if p not in (".", ""))  # './ckpt/*.pt' is 'ckpt/*.pt', at the top as a shell's
    if not inner:
        raise UserError(f"--checkpoint-glob {glob!r}: names no file (e.g. '*.pt')")
    inner += "/**" if glob.endswith("/") else ""  # 'checkpoints/': every file in that folder
    out = []
    for part in re.split(r"(\*\*/|\*\*|\*|\?)", inner):  # `**/` is any number of folders, none included
        out.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part)))
    body = "".join(out)
    return re.compile(body if "/" in glob else f"(?:.*/)?{body}")


def own_folder(folder: Path) -> bool:
    """A run folder the sweep may act in: a real folder (not a link to one) with the run mark, a plain file."""
    try:
        return not folder.is_symlink() and folder.is_dir() and stat.S_ISREG((folder / RUN_MARK).lstat().st_mode)
    except OSError:
        return False


def checkpoint_files(folder: Path, pattern: re.Pattern[str]) -> list[tuple[Path, int]]:
    """The files (and links: a link is a file here, never followed) in a run folder that match, with their
    sizes; never the run's logs, records or metrics, at any depth. Nothing in a folder that is not the
    sweep's own (own_folder: a folder replaced by a link, or without the run mark)."""
    if not own_folder(folder):
        return []
    found = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        rel_top = os.path.relpath(top, folder)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            if name in KEPT_ALWAYS or name.startswith(("config_used", "events.out.tfevents.")) or \
                    name.endswith(".log") or not pattern.fullmatch(rel):
                continue
            path = Path(top) / name
            try:
                found.append((path, path.lstat().st_size))
            except OSError:
                pass
    return found


def check_best_ranking(output_dir: Path, settings: Settings) -> None:
    """A resumed sweep whose best/ was ranked by another metric or the other way (a forgotten --mode max)
    would delete the checkpoints it kept: refused, unless --keep-checkpoints (which deletes nothing). A best/
    that is a link, or not a folder, is refused: its links are replaced and deleted there, outside the sweep."""
    best = output_dir / "best"
    if best.is_symlink() or (best.exists() and not best.is_dir()):
        raise UserError(f"{best} is {'a link' if best.is_symlink() else 'not a folder'}: --top-k keeps its ranking "
                        "there and deletes the links it no longer needs; move it away")
    before = read_json(output_dir / "best" / "best.json")
    if not isinstance(before, dict) or settings.keep_checkpoints:
        return
    if Ranking.saved(before) != settings.ranking:
        raise UserError(f"{output_dir / 'best' / 'best.json'} ranks by {before.get('mode')} {before.get('metric')}, "
                        f"this sweep by {settings.ranking}: its kept checkpoints would be deleted; "
                        "pass the same --metric and --mode, or --keep-checkpoints, or move best/ away")


class BestK:
    """--top-k K --checkpoint-glob PATTERN: only the K best complete runs keep their checkpoint files. Each
    complete run with a value enters the ranking once; a run that is not (or no longer) among the K best
    loses its matching files at once, and so does a pruned run and any other trial of a search that ended (no
    trial's folder runs again). Running, failed or interrupted runs of a list are never touched (their
    checkpoints may be what a resumed attempt starts from). <output-dir>/best/ holds best.json (rank, name,
    value, folder, kept files) and rank_01_<name> links to the run folders; best.json is written after the
    links and before any deletion, so it never lists a file that is gone."""

    def __init__(self, output_dir: Path, k: int, glob: str, ranking: Ranking, keep: bool,
                 say: Callable[[str], None], searching: bool = False) -> None:
        self.folder, self.searching = output_dir / "best", searching
        self.k, self.mode, self.metric, self.keep, self.say = k, ranking.mode, ranking.metric, keep, say
        self.pattern = checkpoint_pattern(glob)
        self.top: list[tuple[float, int, Run]] = []  # the K best, best first
        self.freed = self.pruned = 0

    def add(self, run: Run, value: float, publish: bool = True) -> None:
        """A complete run with its value: ranked, and its files or a displaced run's files deleted."""
        entry = (value if self.mode == "min" else -value, run.index, run)
        self.top.append(entry)
        self.top.sort(key=lambda e: (e[0], e[1]))
        out = self.top.pop() if len(self.top) > self.k else None
        if out is not entry and publish:
            self.publish()
        if out is not None:
            self.drop(out[2])

    def ended(self, run: Run, value: float | None) -> None:
        """A run ended for good (journaled): ranked if complete with a value. One that can never rank loses its
        files: pruned, or any trial of a search (one interrupted, or stopped while its retry waited, is asked
        again as a new trial, in a new folder: no trial's folder is run again)."""
        if run.state == State.COMPLETE and value is not None:
            self.add(run, value)
        elif run.state == State.PRUNED or self.searching:
            self.drop(run, "pruned" if run.state == State.PRUNED else
                      f"{run.state.value} (a search runs no trial's folder again)")

    def publish(self) -> None:
        """best/: the links, then best.json (atomically)."""
        try:
            self.folder.mkdir(exist_ok=True)
            ranked = []
            wanted = set()
            for rank, (_, _, run) in enumerate(self.top, 1):
                link = f"rank_{rank:02d}_{run.name}"
                wanted.add(link)
                tmp = self.folder / f".{link}.{os.getpid()}.tmp"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(os.path.relpath(run.run_dir, self.folder))
                os.replace(tmp, self.folder / link)
                kept = [{"path": str(p.relative_to(run.run_dir)), "bytes": size}
                        for p, size in checkpoint_files(run.run_dir, self.pattern)]
                ranked.append({"rank": rank, "name": run.name, "value": metric_of(run.metrics, self.metric),
                               "run_dir": str(run.run_dir), "kept": kept})
            for old in self.folder.glob("rank_*"):
                if old.name not in wanted:
                    old.unlink()
            write_json_atomic(self.folder / "best.json", {"metric": self.metric, "mode": self.mode, "k": self.k,
                                                          "runs": ranked})
        except OSError as e:
            raise OutputError(f"cannot write {self.folder}: {e.strerror or e}") from None

    def drop(self, run: Run, why: str = "") -> None:
        """A run displaced from the K best, or one that can never rank (pruned): its checkpoint files go."""
        if not own_folder(run.run_dir):
            if os.path.lexists(run.run_dir):
                self.say(f"{'checkpoints':<11} {run.name}: {run.run_dir} is not a folder of the sweep's own (a link, or "
                         "no run mark): nothing in it is deleted")
            return
        files = checkpoint_files(run.run_dir, self.pattern)
        if not files:
            return
        size = 0
        for path, bytes_ in files:
            try:
                if not self.keep:
                    path.unlink()
                size += bytes_
            except OSError:
                pass
        verb = "would delete" if self.keep else "deleted"
        self.freed += size
        self.pruned += 1
        self.say(f"{'checkpoints':<11} {run.name}: {why or f'not among the {self.k} best'}: {verb} {len(files)} file(s), "
                 f"{fmt_bytes(size)}")


def check_settings(settings: Settings) -> None:
    """--top-k's checkpoint pattern can be read (said before anything starts)."""
    checkpoint_pattern(settings.checkpoint_glob or "")


def open_best_k(output_dir: Path, settings: Settings, say: Callable[[str], None]) -> BestK:
    """The sweep's best-K keeper, once the output folder's earlier ranking is known to be this one's."""
    check_best_ranking(output_dir, settings)
    return BestK(output_dir, settings.top_k or 1, settings.checkpoint_glob or "", settings.ranking,
                 settings.keep_checkpoints, say, searching=settings.search is not None)
