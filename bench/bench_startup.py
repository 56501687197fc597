"""Start-up time of the command: `python train_sweep.py --version` (the script, compiled at every start) and
`python -c 'import train_sweep'` (the module, loaded from bytecode), for this checkout and, with
--baseline REV, for the train_sweep.py of that git revision, run interleaved in the same run. Prints medians
and the same-run ratio (this checkout / the baseline).

    python bench/bench_startup.py --baseline fe0b5da --runs 40
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision whose train_sweep.py to compare with")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    folders = {"this checkout": ROOT}
    if args.baseline:
        old = Path(tempfile.mkdtemp(prefix="bench_startup_"))
        text = subprocess.run(["git", "show", f"{args.baseline}:train_sweep.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (old / "train_sweep.py").write_text(text)
        folders[f"baseline {args.baseline}"] = old
    cases = {"script --version": lambda d: [sys.executable, str(d / "train_sweep.py"), "--version"],
             "import train_sweep": lambda d: [sys.executable, "-c", "import train_sweep"]}
    times: dict[tuple[str, str], list[float]] = {}
    for name, folder in folders.items():  # warm up: bytecode written, files in the page cache
        for case, argv in cases.items():
            timed(argv(folder), folder)
    for _ in range(args.runs):
        for name, folder in folders.items():
            for case, argv in cases.items():
                times.setdefault((case, name), []).append(timed(argv(folder), folder))
    for case in cases:
        medians = {name: statistics.median(times[(case, name)]) for name in folders}
        line = ", ".join(f"{name} {ms * 1000:.1f} ms" for name, ms in medians.items())
        if len(medians) == 2:
            a, b = medians.values()
            line += f"; ratio {a / b:.2f}"
        print(f"{case}: {line} (median of {args.runs})")


if __name__ == "__main__":
    main()
