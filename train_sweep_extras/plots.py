"""`report --plots`: the timeline, durations, metric curves, metric against each hyperparameter, and a search's
own plots (Optuna's). Needs: pip install 'train-sweep[plots]'."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from train_sweep import (
    State,
    UserError,
    _is_number,
    _parse_time,
    best_of,
    canonical_json,
    clean,
    gpu_label,
    run_labels,
    varying_keys,
)
from train_sweep_extras.search import import_optuna
from train_sweep_extras.tools import complete_records, read_series, record_metric, say_warning


PNG = b"\x89PNG\r\n\x1a\n"


def png(path: Path) -> Path:
    """Where a plot goes: a link there is replaced, not written through; a file there that is no PNG (the
    user's, not one report drew) is refused, as --csv and --json refuse what they did not write."""
    if path.is_symlink():
        path.unlink()
    elif path.exists() and not (path.is_file() and path.read_bytes()[:8] == PNG):
        raise UserError(f"report --plots: {path} is there and is not a plot report drew; move it, or give another "
                        "folder")
    return path


def study_plots(folder: Path, path: Path, prefixed: bool) -> list[Path]:
    """A search's own plots, drawn by Optuna's matplotlib visualizations: the optimization history, the
    parameters' importances (fANOVA, importance_evaluator) and, for several objectives, the Pareto front."""
    import warnings

    optuna = import_optuna()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plots needs matplotlib: pip install 'train-sweep[plots]'") from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.visualization import matplotlib as vis

    try:
        study = optuna.load_study(study_name="train_sweep", storage=JournalStorage(JournalFileBackend(str(path))))
    except (KeyError, ValueError, OSError) as e:
        raise UserError(f"{path}: cannot read the study: {e}") from None
    trials = study.get_trials(deepcopy=False)
    own = [t for t in trials if "warm_start" not in t.user_attrs]
    if len(own) < len(trials):  # --warm-start's trials guided the sampler; they are not this search's: left out
        study, search = optuna.create_study(directions=study.directions), study.user_attrs.get("search", "{}")
        study.add_trials(own)
        study.set_user_attr("search", search)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    prefix = f"{path.parent.name}_" if prefixed else ""
    plots: list[tuple[str, Callable[[], Any]]] = []
    if len(study.directions) == 1:
        plots.append(("optimization_history", lambda: vis.plot_optimization_history(study)))
        if len(complete) >= 2 and len(study.best_trial.params) >= 1:
            evaluator = importance_evaluator(optuna)
            if evaluator is None:
                say_warning(f"{path}: no param importances plot: fANOVA needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'train-sweep[plots]')")
            else:
                plots.append(("param_importances", lambda: _importances_plot(vis, study, evaluator)))
    else:
        names = json.loads(study.user_attrs.get("search", "{}")).get("metrics") or None
        plots.append(("pareto_front", lambda: vis.plot_pareto_front(study, target_names=names)))
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, draw in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = draw()
            except (ValueError, RuntimeError) as e:  # too few trials for this plot
                say_warning(f"{path}: no {name.replace('_', ' ')} plot: {e}")  # (the others are drawn: exit 0)
                continue
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        target = folder / f"{prefix}{name}.png"
        figure.savefig(png(target), dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(target)
    return written


def importance_evaluator(optuna: Any) -> Any:
    """fANOVA (Hutter et al. 2014): the share of the metric's variance over the search space that each parameter
    explains, from a random forest fitted to the complete trials; what moves the metric. (Optuna's default,
    PED-ANOVA, measures what separates the best trials from the rest: on a search where lr alone explained R² 0.84
    of val_loss it gave layers 0.94 and lr 0.05.) None without scikit-learn, which fANOVA's forest needs."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        return None
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def param_importances(study: Any) -> dict[str, float]:
    """Each parameter's fANOVA importance (they sum to 1), the largest first."""
    import optuna

    return optuna.importance.get_param_importances(study, evaluator=importance_evaluator(optuna))


def _importances_plot(vis: Any, study: Any, evaluator: Any) -> Any:
    names = json.loads(study.user_attrs.get("search", "{}")).get("metrics") or ["the metric"]
    ax = vis.plot_param_importances(study, evaluator=evaluator, target_name=names[0])
    ax.set_title(f"fANOVA: the share of {names[0]}'s variance each parameter explains", loc="left")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    return ax


def _time_unit(seconds: float) -> tuple[float, str]:
    """The unit a plot's time axis reads best in: (seconds per unit, its name)."""
    if seconds < 120:
        return 1.0, "seconds"
    if seconds < 3 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


STATE_COLORS = {"complete": "#009E73", "failed": "#D55E00", "timeout": "#E69F00", "oom": "#CC79A7",  # Okabe-Ito:
                "interrupted": "#F0E442", "pruned": "#56B4E9", "pending": "#999999", "running": "#0072B2"}  # colour-blind safe


def write_plots(folder: Path, records: Sequence[Mapping[str, Any]], metric: str | None, mode: str = "min",
                top: int = 3) -> list[Path]:
    """timeline.png (one lane per GPU, one bar per run, coloured by state), durations.png, and
    <metric>_vs_<key>.png for each hyperparameter that varies."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise UserError("--plots needs matplotlib: pip install matplotlib (or pip install 'train-sweep[plots]')") from None
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    labels = run_labels({r["model_name"]: r.get("hyperparams") or {} for r in records})
    spans = [(r, r, False) for r in records] + [(dict(a, model_name=r["model_name"], index=r.get("index")), r, True)
                                              for r in records for a in r.get("attempts") or ()]
    timed = [(a, _parse_time(a.get("start_time")), _parse_time(a.get("end_time")), earlier)
             for a, r, earlier in spans]
    timed = [(r, s, e, earlier) for r, s, e, earlier in timed if s is not None and e is not None]
    if timed:
        t0 = min(s for _, s, _, _ in timed)
        unit, unit_name = _time_unit(max(e for _, _, e, _ in timed) - t0)
        width = (max(e for _, _, e, _ in timed) - t0) / unit or 1.0
        lanes: dict[str, list[float]] = {}  # GPU -> end time of each slot in its lane
        placed = []
        for r, s, e, earlier in sorted(timed, key=lambda x: x[1]):
            slots = lanes.setdefault(gpu_label(r.get("gpu_id")), [])
            slot = next((i for i, end in enumerate(slots) if end <= s + 1e-6), len(slots))
            if slot == len(slots):
                slots.append(e)
            else:
                slots[slot] = e
            placed.append((r, s, e, gpu_label(r.get("gpu_id")), slot, earlier))
        order = sorted(lanes, key=lambda g: (g == "CPU", len(g), g))
        base, y = {}, 0.0
        for g in order:
            base[g] = y
            y += len(lanes[g]) + 0.5
        fig, ax = plt.subplots(figsize=(12, max(2.5, 0.45 * y + 1.5)))
        for r, s, e, g, slot, earlier in placed:
            ax.broken_barh([((s - t0) / unit, max((e - s) / unit, 1e-3))], (base[g] + slot + 0.1, 0.8),
                           facecolors=STATE_COLORS.get(r.get("state"), "#1f77b4"), edgecolor="white", linewidth=0.5,
                           hatch="//" if earlier else None, alpha=0.6 if earlier else 1.0)
            fits = int((e - s) / unit / width * 10.5 * 72 / 3.7)  # characters of 6 pt that fit in its bar
            text = f"#{r.get('index', '?')} {labels.get(r['model_name'], '')}"
            if fits >= 3:  # the run's number (as in the summary) and its label, cut to its bar
                ax.text((s - t0) / unit + width / 400, base[g] + slot + 0.5,
                        text if len(text) <= fits else text[: fits - 1] + "…", va="center", fontsize=6,
                        color="white", clip_on=True)
        ax.set_yticks([base[g] + len(lanes[g]) / 2 for g in order], [f"GPU {g}" if g != "CPU" else "CPU" for g in order])
        ax.invert_yaxis()  # GPU 0 at the top, as nvidia-smi lists them
        ax.set_xlabel(f"{unit_name} since the first run started")
        attempts = sum(earlier for *_, earlier in placed)
        ax.set_title(f"GPU timeline: {len(placed) - attempts} run(s)"
                     + (f", {attempts} earlier attempt(s) hatched" if attempts else ""))
        ax.legend(handles=[Patch(color=c, label=s) for s, c in STATE_COLORS.items()
                           if any(r.get("state") == s for r, *_ in placed)], loc="upper right", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        written.append(png(folder / "timeline.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    durations = [(labels[r["model_name"]], r.get("duration_seconds"), r.get("state")) for r in records]
    durations = sorted([d for d in durations if d[1] is not None], key=lambda d: d[1])
    if durations:
        unit, unit_name = _time_unit(durations[-1][1])
        fig, ax = plt.subplots(figsize=(10, max(3, min(0.28 * len(durations) + 1.2, 20))))
        if len(durations) <= 60:
            ax.barh(range(len(durations)), [d[1] / unit for d in durations],
                    color=[STATE_COLORS.get(d[2], "#1f77b4") for d in durations])
            ax.set_yticks(range(len(durations)), [d[0][:60] for d in durations], fontsize=7)
            ax.set_xlabel(unit_name)
            ax.legend(handles=[Patch(color=c, label=s) for s, c in STATE_COLORS.items()
                               if any(d[2] == s for d in durations)], loc="lower right", fontsize=8)
        else:
            ax.hist([d[1] / unit for d in durations], bins=40, color="#1f77b4")
            ax.set_xlabel(unit_name)
            ax.set_ylabel("runs")
        ax.set_title("run durations")
        fig.tight_layout()
        written.append(png(folder / "durations.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    curves = [(r, read_series(r.get("run_dir"), metric)) for r in records] if metric else []
    curves = [(r, c) for r, c in curves if c]
    if curves:  # learning curves: every run in grey, the `top` best complete runs in colour
        ranked = sorted((r for r in complete_records(records) if record_metric(r, metric) is not None),
                        key=lambda r: record_metric(r, metric) * (1 if mode == "min" else -1))
        best = {id(r): k for k, r in enumerate(ranked[:top])}
        fig, ax = plt.subplots(figsize=(9, 5))
        for r, c in curves:
            if id(r) not in best:
                ax.plot([p[0] for p in c], [p[1] for p in c], color="#bbbbbb", linewidth=0.8,
                        linestyle="-" if r.get("state") == State.COMPLETE.value else ":",
                        marker="o" if len(c) == 1 else None, markersize=4)  # (one point: no line to draw)
        colors = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00")  # colour-blind safe (Okabe-Ito)
        for r, c in sorted((rc for rc in curves if id(rc[0]) in best), key=lambda rc: best[id(rc[0])]):
            k = best[id(r)]
            ax.plot([p[0] for p in c], [p[1] for p in c], color=colors[k % len(colors)], linewidth=2,
                    marker="o" if len(c) == 1 else None, markersize=7, label=f"#{k + 1} {labels[r['model_name']]} ({record_metric(r, metric):g})")
        ax.set_xlabel("step")
        if all(len(c) == 1 for _, c in curves):  # no curve: one value a run, at no step worth an axis
            ax.set_xticks([])
            ax.set_xlabel("(each run reported one value: no curve)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: {len(curves)} run(s), the {min(top, len(ranked))} best in colour")
        if best:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(png(folder / f"{clean(metric)}_curves.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if metric:
        written += metric_vs_keys(folder, records, metric, mode, plt)
    return written


def metric_vs_keys(folder: Path, records: Sequence[Mapping[str, Any]], metric: str, mode: str, plt: Any) -> list[Path]:
    """<metric>_vs_<key>.png for each hyperparameter that varies (not seeds, not keys named like a metric),
    and overview.png with all of them side by side: which settings matter. Complete runs as dots, failed,
    pruned and interrupted ones that reported the metric as crosses, the best run as a star; numbers on a
    number axis (log when they span 30x), anything else as categories with a box per category."""
    scored = [(r, v) for r in records if (v := record_metric(r, metric)) is not None]
    names = {k for r in records for k in (r.get("metrics") or {})}
    keys = [k for k in varying_keys([r.get("hyperparams") or {} for r, _ in scored])
            if "seed" not in k.lower() and k not in names and k != metric]
    if not keys:
        return []
    complete = [(r, v) for r, v in scored if r.get("state") == State.COMPLETE.value]
    found = best_of((r for r, _ in complete), lambda r: record_metric(r, metric), mode)
    best = found[1] if found else None
    written = []

    def draw(ax: Any, key: str) -> None:
        values = [(r.get("hyperparams") or {}).get(key) for r, _ in scored]
        numeric = all(_is_number(v) for v in values)
        cats = [] if numeric else sorted({canonical_json(v) for v in values}, key=lambda c: (len(c), c))

        def x(v: Any) -> float:
            return v if numeric else cats.index(canonical_json(v))

        if not numeric:  # a box per category, over its complete runs
            groups = [[m for (r, m), v in zip(scored, values) if r.get("state") == State.COMPLETE.value
                       and canonical_json(v) == c] for c in cats]
            ax.boxplot([g or [math.nan] for g in groups], positions=range(len(cats)), widths=0.5,
                       showfliers=False, medianprops={"color": "#0072B2"})
            ax.set_xticks(range(len(cats)), [c.strip('"')[:20] for c in cats], rotation=30, fontsize=8)
        ok = [(x(v), m) for (r, m), v in zip(scored, values) if r.get("state") == State.COMPLETE.value]
        bad = [x(v) for (r, m), v in zip(scored, values) if r.get("state") != State.COMPLETE.value]
        ax.scatter([p[0] for p in ok], [p[1] for p in ok], color="#0072B2", s=18, label="complete (final value)")
        if bad:  # an early value is not a final one: where they were tried, on the axis, not among the values
            ax.scatter(bad, [0.02] * len(bad), transform=ax.get_xaxis_transform(), color="#D55E00", marker="|",
                       s=60, label="pruned, failed or interrupted (where tried; no final value)")
        if best is not None:
            ax.scatter([x((best.get("hyperparams") or {}).get(key))], [found[0]], marker="*", s=160,
                       color="#E69F00", edgecolor="black", zorder=3, label="best")
        positive = [v for v in values if numeric and v > 0]
        if numeric and len(positive) == len(values) and max(positive) / min(positive) >= 30:
            ax.set_xscale("log")
            ax.set_xlim(min(positive) / 1.3, max(positive) * 1.3)  # the axis marks too (they add no data limits)
        elif numeric and values:
            pad = (max(values) - min(values)) * 0.05 or 0.5
            ax.set_xlim(min(values) - pad, max(values) + pad)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)

    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, key)
        ax.set_title(f"{metric} vs {key}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(png(folder / f"{clean(metric)}_vs_{clean(key)}.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(6.5, 4.2 * columns), 3.4 * rows + 0.8), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        draw(ax, key)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, texts = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="lower center", ncol=len(texts), fontsize=8, frameon=False)
    fig.suptitle(f"which settings matter: {metric} ({mode}) by each varying hyperparameter", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    written.append(png(folder / "overview.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written
