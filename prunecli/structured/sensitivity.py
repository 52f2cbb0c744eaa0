"""``method=sensitivity``: how much does each layer alone cost when pruned?

For every *unit* of a structured method (``filters``: each channel group of a CNN; ``ffn`` /
``heads``: each transformer block) and every ratio in ``sensitivity.ratios``: prune only that
unit at that ratio on a copy of the model (the method's own criterion and per-layer ranking),
evaluate it with the run's evaluator, record the change of the metric, drop the copy. The model
of the run is left unpruned.

Writes ``sensitivity.csv`` (one row per unit and ratio: ``unit, ratio, units_total,
units_removed, params_removed, metric, dense, value, delta, drop``; ``drop`` > 0 is worse:
accuracy lost or perplexity gained) and ``sensitivity.png`` (drop against ratio, one line per
unit; needs matplotlib) into the run directory.

Options (``configs/method/sensitivity.yaml``, top-level ``sensitivity`` node): ``method``,
``ratios``, ``metric`` (``auto``: ``accuracy`` if the evaluator reports it, else ``ppl``),
``options`` (overrides of ``configs/method/<method>.yaml``, e.g. ``{criterion: l1}``).
A new structured method joins by registering an :data:`ANALYSES` entry.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf
from torch import nn

from prunecli.errors import PruneError
from prunecli.methods import METHODS, NOTHING, Method, MethodOptions, PruneContext, register
from prunecli.methods.masks import prune_count
from prunecli.outputs import save_figure, write_csv
from prunecli.registry import Registry

log = logging.getLogger(__name__)

# metric -> +1 if higher is better, -1 if lower is better
METRICS = {"accuracy": 1.0, "f1": 1.0, "top5_accuracy": 1.0, "ppl": -1.0, "nll": -1.0, "eval_loss": -1.0}
COLUMNS = ["unit", "ratio", "units_total", "units_removed", "params_removed", "metric", "dense", "value", "delta", "drop"]


@dataclass
class Units:
    """The units of one structured method on one model, and how to prune one of them on a copy."""

    names: list[str]
    sizes: list[int]
    prune: Callable[[nn.Module, int, float], int]  # (copy of the model, unit index, ratio) -> units removed


ANALYSES: Registry[Callable[[PruneContext], Units]] = Registry("sensitivity method")


@ANALYSES.register("filters")
def filter_units(ctx: PruneContext) -> Units:
    from prunecli.structured.cnn import methods as cnn
    from prunecli.structured.cnn.remove import remove_filters

    graph = cnn.build_graph(ctx)
    groups = cnn.candidate_groups(graph, ctx)
    scores = cnn.group_scores(ctx, graph, groups)

    def prune(model: nn.Module, index: int, ratio: float) -> int:
        k = prune_count(groups[index].size, ratio)
        remove_filters(model, graph, {groups[index].space: scores[index].argsort(stable=True)[:k].sort().values})
        return k

    return Units([g.name for g in groups], [g.size for g in groups], prune)


def _transformer_units(kind: str) -> Callable[[PruneContext], Units]:
    def units(ctx: PruneContext) -> Units:
        from prunecli.models.layout import blocks_of
        from prunecli.structured.methods import Plan, apply, plan

        plans: dict[float, Plan] = {}

        def plan_at(ratio: float) -> Plan:
            if ratio not in plans:
                plans[ratio] = plan(dataclasses.replace(ctx, sparsity=ratio), kind)[0]
            return plans[ratio]

        first = plan_at(0.0)
        prefix, _ = blocks_of(ctx.model)

        def prune(model: nn.Module, index: int, ratio: float) -> int:
            chosen = plan_at(ratio)
            group, removed = chosen.groups[index], chosen.removed[index]
            bias = {key: delta for key, delta in chosen.bias.items() if key[0] == group.block}
            apply(model, Plan(kind, [group], [removed], bias), physically=True)
            return len(removed)

        return Units([f"{prefix}.{g.block}" for g in first.groups], [g.units for g in first.groups], prune)

    return units


ANALYSES.register("ffn")(_transformer_units("ffn"))
ANALYSES.register("heads")(_transformer_units("heads"))


@dataclass(frozen=True)
class SensitivityOptions(MethodOptions):
    analysis: dict = dataclasses.field(default_factory=dict)  # the top-level `sensitivity` node (method, ratios, metric, options)

    def check(self, prefix: str) -> None:
        ratios = self.analysis.get("ratios")
        if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1 for r in ratios):
            raise PruneError(f"sensitivity.ratios must be a non-empty list of numbers in (0, 1) (got {ratios!r})")
        metric = self.analysis.get("metric", "auto")
        if metric != "auto" and metric not in METRICS:
            raise PruneError(f"unknown sensitivity.metric {metric!r} (choose from: auto, {', '.join(METRICS)})")
        inner_options(self)


def inner_options(options: SensitivityOptions) -> MethodOptions:
    """The analysed method's typed options: its config file, ``sensitivity.options`` over it, per-layer ranking."""
    from prunecli.config import config_dir

    name = options.analysis.get("method", "filters")
    ANALYSES.get(name)
    path = config_dir() / "method" / f"{name}.yaml"
    base = OmegaConf.load(path) if path.is_file() else OmegaConf.create({})
    merged = OmegaConf.merge(base, options.analysis.get("options") or {}, {"name": name, "allocation": "per_layer"})
    return METHODS.get(name).parse(merged)


def sensitivity_calibration(options: SensitivityOptions) -> bool:
    return METHODS.get(options.analysis.get("method", "filters")).needs_calibration(inner_options(options))


def pick_metric(requested: str, dense: dict) -> str:
    if requested != "auto":
        if requested not in dense:
            raise PruneError(f"sensitivity.metric={requested} is not reported by the evaluator (it reports: {', '.join(dense) or 'nothing'})")
        return requested
    for key in ("accuracy", "ppl"):
        if key in dense:
            return key
    raise PruneError("method=sensitivity needs an evaluator that reports accuracy or ppl (eval=accuracy or eval=perplexity)")


def analyse(ctx: PruneContext) -> list[dict]:
    """One row per unit and ratio (see module doc); ``ctx.model`` is left as it was."""
    if ctx.evaluate is None:
        raise PruneError("method=sensitivity needs the run's evaluator (run it through prune run)")
    analysis = ctx.options.analysis
    ratios = [float(r) for r in analysis.get("ratios")]
    inner = dataclasses.replace(ctx, options=inner_options(ctx.options), stats={})
    units = ANALYSES.get(inner.options.name)(inner)
    if not units.names:
        raise PruneError(f"method=sensitivity found no {inner.options.name} units to prune in {type(ctx.model).__name__}")
    dense = ctx.evaluate(ctx.model)
    metric = pick_metric(analysis.get("metric", "auto"), dense)
    sign = METRICS.get(metric, 1.0)
    params = sum(p.numel() for p in ctx.model.parameters())
    rows = []
    for index, (name, size) in enumerate(zip(units.names, units.sizes)):
        for ratio in ratios:
            pruned = copy.deepcopy(ctx.model)
            removed = units.prune(pruned, index, ratio)
            value = ctx.evaluate(pruned)[metric]
            rows.append({
                "unit": name, "ratio": ratio, "units_total": size, "units_removed": removed,
                "params_removed": params - sum(p.numel() for p in pruned.parameters()),
                "metric": metric, "dense": dense[metric], "value": value, "delta": value - dense[metric],
                "drop": sign * (dense[metric] - value),
            })
            log.info("sensitivity %s ratio %.2f: %s %.4f (dense %.4f)", name, ratio, metric, value, dense[metric])
            del pruned
    return rows


def plot(rows: list[dict], path: Path) -> bool:
    """Drop against ratio, one line per unit (Agg backend); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'prunecli[plot]'): no %s", path.name)
        return False
    names = list(dict.fromkeys(r["unit"] for r in rows))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in names:
        mine = [r for r in rows if r["unit"] == name]
        axes.plot([r["ratio"] for r in mine], [r["drop"] for r in mine], marker="o", label=name)
    metric = rows[0]["metric"]
    axes.set_xlabel("fraction of the layer's units removed")
    axes.set_ylabel(f"{metric} drop (dense {rows[0]['dense']:.4g})" if METRICS.get(metric, 1) > 0 else f"{metric} increase (dense {rows[0]['dense']:.4g})")
    axes.set_title("layer sensitivity")
    axes.grid(alpha=0.3)
    if len(names) <= 16:
        axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
    plt.close(figure)
    return True


def sensitivity(ctx: PruneContext) -> None:
    """Per-layer sensitivity of a structured method; writes sensitivity.csv / .png, leaves the model dense."""
    rows = analyse(ctx)
    summary: dict[str, Any] = {"method": ctx.options.analysis.get("method", "filters"), "metric": rows[0]["metric"],
                               "dense": rows[0]["dense"], "ratios": sorted({r["ratio"] for r in rows}), "units": len({r["unit"] for r in rows})}
    top = max(summary["ratios"])
    worst = sorted((r for r in rows if r["ratio"] == top), key=lambda r: -r["drop"] if math.isfinite(r["drop"]) else -math.inf)
    summary["most_sensitive"] = [r["unit"] for r in worst[:5]]
    if ctx.run_dir is not None:
        run_dir = Path(ctx.run_dir)
        write_csv(run_dir / "sensitivity.csv", rows, COLUMNS)
        summary["csv"] = str(run_dir / "sensitivity.csv")
        if plot(rows, run_dir / "sensitivity.png"):
            summary["plot"] = str(run_dir / "sensitivity.png")
    ctx.stats["sensitivity"] = summary


register(Method("sensitivity", sensitivity, SensitivityOptions, effect=NOTHING, calibration=sensitivity_calibration))
