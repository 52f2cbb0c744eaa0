"""``prune report --plot``: the standard figures, each written with the CSV of the data behind it
(into ``plots/``): perplexity over sparsity, latency by backend, fine-tune training curves.
Drawn by matplotlib's Agg backend (no display); ``pip install 'prunecli[plot]'``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from prunecli import console
from prunecli.errors import PruneError
from prunecli.outputs import save_figure, write_atomic
from prunecli.records import SETTING_COLUMNS

SOURCE = "_source"  # the report's internal column: the folder a row's results.csv was read from
LATENCY_BARS = ["backend", "phase", "median_ms"]


def require_matplotlib() -> None:
    """Fail before anything is written when --plot cannot draw."""
    if importlib.util.find_spec("matplotlib") is None:
        raise PruneError("--plot needs matplotlib: pip install 'prunecli[plot]'")


def new_figure():
    """A matplotlib figure drawn by the Agg backend (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def stage_of(frame: pd.DataFrame, column: str) -> pd.Series:
    """A stage column (``update``) with ``none`` where a run has no value (runs from before the column)."""
    return frame[column].astype(object).fillna("none") if column in frame else pd.Series("none", index=frame.index)


def varying_settings(frame: pd.DataFrame) -> list[str]:
    """The :data:`~prunecli.records.SETTING_COLUMNS` in which these runs differ (missing counts as a value)."""
    return [column for column in SETTING_COLUMNS if column in frame and frame[column].astype(object).fillna("").nunique() > 1]


def line_keys(frame: pd.DataFrame) -> list[str]:
    """What tells runs apart in a figure: method and pattern, led by the model when there are several,
    followed by the weight update when some run used one and every setting the runs differ in
    (runs measured on different data or budgets are different lines, never one mean)."""
    refits = stage_of(frame, "update").ne("none").any()
    return ((["model"] if frame["model"].nunique() > 1 else []) + ["method", "pattern"] + (["update"] if refits else [])
            + varying_settings(frame))


def plot_ppl(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """``ppl_vs_sparsity.png`` and its data: perplexity (log) over target sparsity, one line per method + pattern."""
    completed = frame[frame["status"] == "completed"].dropna(subset=["ppl"])
    keys = line_keys(completed)  # what tells the plotted runs apart (a failed run's settings do not count)
    completed = completed.assign(update=stage_of(completed, "update"))
    completed = completed.assign(**{column: completed[column].astype(object).fillna("") for column in varying_settings(completed)})
    data = completed.groupby([*keys, "sparsity_target"], as_index=False)["ppl"].mean()
    if data.empty:
        console.console.print("no completed run with a perplexity: ppl_vs_sparsity.png not drawn")
        return []
    write_atomic(folder / "ppl_vs_sparsity.csv", data.to_csv(index=False))
    figure = new_figure()
    axes = figure.subplots()
    for key, line in data.groupby(keys):
        axes.plot(line["sparsity_target"], line["ppl"], marker="o", label=" ".join(map(str, key)))
    axes.set(xlabel="target sparsity", ylabel="perplexity", yscale="log", title="Perplexity vs sparsity")
    axes.legend(fontsize="small")
    save_figure(figure, folder / "ppl_vs_sparsity.png")
    return [folder / "ppl_vs_sparsity.png", folder / "ppl_vs_sparsity.csv"]


BACKEND_ORDER = ["unpruned", "dense", "csr", "bsr", "semi_structured", "structured"]


def plot_latency(latency: pd.DataFrame, folder: Path) -> list[Path]:
    """``latency_by_backend.png`` and its data: median latency per backend, one panel per phase,
    one bar per run; backends skipped or failed in a run (no latency) are left out."""
    missing = [column for column in LATENCY_BARS if column not in latency]
    measured = latency.dropna(subset=["median_ms"]) if not missing else latency
    if missing or measured.empty:
        console.console.print(f"no latency rows with {', '.join(LATENCY_BARS)}: latency_by_backend.png not drawn")
        return []
    runs = measured[line_keys(measured) + ["sparsity_target"]].astype(str).agg(" ".join, axis=1)
    figures = ["median_ms"] + [column for column in ("min_ms", "p90_ms") if column in measured]
    data = measured.assign(run=runs).groupby(["phase", "backend", "run"], as_index=False)[figures].mean()
    write_atomic(folder / "latency_by_backend.csv", data.to_csv(index=False))
    phases = list(dict.fromkeys(data["phase"]))
    figure = new_figure()
    figure.set_size_inches(7 * len(phases), 4.5)
    for axes, phase in zip(figure.subplots(1, len(phases), squeeze=False)[0], phases):
        own = data[data["phase"] == phase]
        bars = own.pivot(index="backend", columns="run", values="median_ms")
        bars = bars.reindex(sorted(bars.index, key=lambda b: (BACKEND_ORDER + [b]).index(b)))
        width = 0.8 / len(bars.columns)
        for number, run in enumerate(bars.columns):
            errors = None  # from the fastest round to the 90th percentile: how far the rounds spread
            if {"min_ms", "p90_ms"} <= set(own):
                low, high = (own.pivot(index="backend", columns="run", values=key).reindex(bars.index)[run] for key in ("min_ms", "p90_ms"))
                errors = [(bars[run] - low).clip(lower=0).fillna(0), (high - bars[run]).clip(lower=0).fillna(0)]
            axes.bar([x + number * width for x in range(len(bars))], bars[run], width, label=run, yerr=errors, capsize=3)
        axes.set_xticks([x + 0.4 - width / 2 for x in range(len(bars))], list(bars.index))
        axes.set(ylabel="median latency (ms); bars: min to p90", title=f"{phase}: latency by backend (lower is faster)")
    handles = {label: handle for axes in figure.axes for handle, label in zip(*axes.get_legend_handles_labels())}
    figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=2, fontsize="small")
    save_figure(figure, folder / "latency_by_backend.png")
    return [folder / "latency_by_backend.png", folder / "latency_by_backend.csv"]


def plot_training(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """``training_curves.png``: loss, validation figure and sparsity over fine-tune steps, one line per
    run that has a ``train.csv`` (its data: ``training_curves.csv``)."""
    curves = []
    for _, row in frame.drop_duplicates(SOURCE).iterrows():
        path = Path(row[SOURCE]) / "train.csv"
        if path.exists():
            label = " ".join(str(row.get(key)) for key in [*line_keys(frame), "sparsity_target"])
            curves.append(pd.read_csv(path).assign(run=f"{label} ({row.get('run_id')})"))
    if not curves:
        return []
    data = pd.concat(curves, ignore_index=True)
    write_atomic(folder / "training_curves.csv", data.to_csv(index=False))
    metrics = [c for c in data.columns if c.startswith("val_")]
    figure = new_figure()
    panels = figure.subplots(1, 2 + len(metrics[:1]), squeeze=False)[0]
    for run, line in data.groupby("run"):
        panels[0].plot(line["step"], line["loss"], label=run)
        panels[1].plot(line["step"], line["sparsity"], label=run)
        for axes, metric in zip(panels[2:], metrics[:1]):
            points = line.dropna(subset=[metric])
            axes.plot(points["step"], points[metric], marker=".", label=run)
    panels[0].set(xlabel="step", ylabel="training loss", title="Loss")
    panels[1].set(xlabel="step", ylabel="sparsity", title="Sparsity")
    for axes, metric in zip(panels[2:], metrics[:1]):
        axes.set(xlabel="step", ylabel=metric, title=metric, yscale="log" if "ppl" in metric else "linear")
    figure.legend(*panels[0].get_legend_handles_labels(), loc="outside lower center", fontsize="x-small")
    save_figure(figure, folder / "training_curves.png")
    return [folder / "training_curves.png", folder / "training_curves.csv"]


def write_plots(frame: pd.DataFrame, latency: pd.DataFrame | None, folder: Path) -> None:
    """The standard figures, each with the CSV of the data behind it."""
    written = plot_ppl(frame, folder) + (plot_latency(latency, folder) if latency is not None else []) + plot_training(frame, folder)
    if written:
        console.console.print(f"wrote {', '.join(map(str, written))}")
