"""``analysis=sensitivity``: how much does each layer alone cost when pruned?

For every *unit* of the run's structured method (``filters``: each channel group of a CNN;
``ffn`` / ``heads``: each transformer block) and every ratio in ``analysis.ratios``: prune only
that unit at that ratio (the method's own criterion and per-layer ranking) on a copy of the part
it changes -- its block for ``ffn`` / ``heads``, swapped into the model for the evaluation and
swapped out after, so a transformer is never held twice; the whole (small) CNN for ``filters``,
whose groups span layers -- evaluate it with the run's evaluator, record the change of the
metric, drop the copy. The model of the run is left unpruned.

Writes ``sensitivity.csv`` (one row per unit and ratio: ``unit, ratio, units_total,
units_removed, params_removed, metric, dense, value, delta, drop``; ``drop`` > 0 is worse:
accuracy lost or perplexity gained) and ``sensitivity.png`` (drop against ratio, one line per
unit; needs matplotlib) into the run directory.

Options (``configs/analysis/sensitivity.yaml``): ``ratios``, ``metric`` (``auto``: ``accuracy``
if the evaluator reports it, else ``ppl``). A new structured method joins by registering a
:data:`UNITS` entry.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from prunecli.analysis import Analysis, AnalysisContext, AnalysisOptions, register
from prunecli.errors import PruneError
from prunecli.methods import PruneContext
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
    prune: Callable[[nn.Module, int, float], int]  # (model with a copy of the unit's scope, unit index, ratio) -> units removed
    scopes: list[str]  # per unit, the submodule its pruning changes ("": the whole model)


UNITS: Registry[Callable[[PruneContext], Units]] = Registry("sensitivity method")


@UNITS.register("filters")
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

    return Units([g.name for g in groups], [g.size for g in groups], prune, [""] * len(groups))


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

        names = [f"{prefix}.{g.block}" for g in first.groups]
        return Units(names, [g.units for g in first.groups], prune, names)

    return units


UNITS.register("ffn")(_transformer_units("ffn"))
UNITS.register("heads")(_transformer_units("heads"))


@dataclass(frozen=True)
class SensitivityOptions(AnalysisOptions):
    ratios: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.75])  # fractions of one layer's units removed
    metric: str = "auto"  # auto (accuracy if the evaluator reports it, else ppl) | a key of METRICS

    def check(self, prefix: str) -> None:
        if not self.ratios or not all(0 < r < 1 for r in self.ratios):
            raise PruneError(f"{prefix}.ratios must be a non-empty list of numbers in (0, 1) (got {list(self.ratios)!r})")
        if self.metric != "auto" and self.metric not in METRICS:
            raise PruneError(f"unknown {prefix}.metric {self.metric!r} (choose from: auto, {', '.join(METRICS)})")


def pick_metric(requested: str, dense: dict) -> str:
    if requested != "auto":
        if requested not in dense:
            raise PruneError(f"analysis.metric={requested} is not reported by the evaluator (it reports: {', '.join(dense) or 'nothing'})")
        return requested
    for key in ("accuracy", "ppl"):
        if key in dense:
            return key
    raise PruneError("analysis=sensitivity needs an evaluator that reports accuracy or ppl (eval=accuracy or eval=perplexity)")


def analyse(ctx: AnalysisContext) -> list[dict]:
    """One row per unit and ratio (see module doc); the model is left as it was."""
    method = ctx.method
    name = method.options.name
    inner = dataclasses.replace(method, options=dataclasses.replace(method.options, allocation="per_layer"), stats={})
    units = UNITS.get(name)(inner)
    if not units.names:
        raise PruneError(f"analysis=sensitivity found no {name} units to prune in {type(method.model).__name__}")
    dense = ctx.evaluate(method.model)
    metric = pick_metric(ctx.options.metric, dense)
    sign = METRICS.get(metric, 1.0)
    params = sum(p.numel() for p in method.model.parameters())
    rows = []
    for index, (unit, size) in enumerate(zip(units.names, units.sizes)):
        for ratio in (float(r) for r in ctx.options.ratios):
            with scope_copied(method.model, units.scopes[index]) as pruned:
                removed = units.prune(pruned, index, ratio)
                value = ctx.evaluate(pruned)[metric]
                params_removed = params - sum(p.numel() for p in pruned.parameters())
            rows.append({
                "unit": unit, "ratio": ratio, "units_total": size, "units_removed": removed, "params_removed": params_removed,
                "metric": metric, "dense": dense[metric], "value": value, "delta": value - dense[metric],
                "drop": sign * (dense[metric] - value),
            })
            log.info("sensitivity %s ratio %.2f: %s %.4f (dense %.4f)", unit, ratio, metric, value, dense[metric])
    return rows


@contextmanager
def scope_copied(model: nn.Module, scope: str) -> Iterator[nn.Module]:
    """A model whose submodule ``scope`` is a copy (to prune), then ``model`` exactly as it was: its own
    submodule back, its config's values restored. ``scope`` "": a copy of the whole model."""
    if not scope:
        yield copy.deepcopy(model)
        return
    original, config = model.get_submodule(scope), copy.deepcopy(vars(model.config))
    model.set_submodule(scope, copy.deepcopy(original))
    try:
        yield model
    finally:
        model.set_submodule(scope, original)
        vars(model.config).clear()
        vars(model.config).update(config)


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


def sensitivity(ctx: AnalysisContext) -> dict:
    """Per-layer sensitivity of the run's structured method; writes sensitivity.csv / .png, leaves the model dense."""
    rows = analyse(ctx)
    summary: dict[str, Any] = {"method": ctx.method.options.name, "metric": rows[0]["metric"],
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
    return summary


register(Analysis("sensitivity", sensitivity, SensitivityOptions, methods=tuple(UNITS.names())))
