"""``method=filters``: remove conv filters and everything coupled to them, dependency-aware.

1. trace the model with torch.fx on one example input (:mod:`graph`): channel groups, each
   with its producing convs, depthwise convs, BatchNorms and consumers;
2. score every channel (:mod:`importance`: ``l1``, ``l2``, ``bn_gamma``, ``taylor``,
   ``geometric_median``);
3. choose ``floor(sparsity * n)`` channels per group (``allocation: per_layer``) or of all
   groups together (``global``; scores divided by their group's mean first unless
   ``normalize: none``), ties to the lower index (:func:`prunecli.structured.select.select`);
   a group that would lose every filter is an error, or with ``allow_empty_layers`` keeps its
   best one (a ``Conv2d`` cannot have 0 output channels);
4. remove them (:mod:`remove`), or zero them (:func:`~prunecli.structured.cnn.remove.mask_filters`).

Residual groups (channels joined by a skip connection) are pruned jointly
(``residual: joint``), or left whole (``residual: keep``). ``targets`` / ``ignore`` select the
convs: a group is pruned only if every conv producing it is selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.methods import SHAPES, CalibratedOptions, Method, PruneContext, register
from prunecli.structured.cnn.graph import ChannelGraph, ChannelGroup, example_call
from prunecli.structured.cnn.importance import Evidence, scores
from prunecli.structured.criteria import CRITERIA, criterion_for, prune_structured
from prunecli.structured.cnn.remove import mask_filters, remove_filters
from prunecli.structured.select import SELECTIONS, each_unit, select


@dataclass(frozen=True)
class FilterOptions(CalibratedOptions):
    criterion: str = "l1"  # l1 | l2 | bn_gamma | taylor (uses calibration images) | geometric_median (FPGM)
    allocation: str = "per_layer"  # per_layer (each channel group loses `sparsity` of its filters) | global
    normalize: Literal["mean", "none"] = "mean"  # global ranking: divide each group's scores by their mean first
    residual: Literal["joint", "keep"] = "joint"  # channels joined by a skip connection: pruned jointly, or left whole
    allow_empty_layers: bool = False  # global allocation: a group that would lose every filter keeps one
    calibration_batch_size: int = 64

    def check(self, prefix: str) -> None:
        super().check(prefix)
        criterion_for(self.criterion, "filters")
        SELECTIONS.get(self.allocation)


def filter_calibration(options: FilterOptions) -> bool:
    """Data-aware criteria (``taylor``) need calibration images."""
    return CRITERIA.get(options.criterion).needs_data


@dataclass
class FilterPlan:
    """The channels to remove: ``removed[i]`` (sorted indices) of ``groups[i]``, a group of ``graph``."""

    graph: ChannelGraph
    groups: list[ChannelGroup]
    removed: list[torch.Tensor]

    def sizes(self) -> list[int]:
        return [g.size for g in self.groups]

    def by_space(self) -> dict[int, torch.Tensor]:
        return {g.space: r for g, r in zip(self.groups, self.removed)}


def example_input(ctx: PruneContext) -> tuple[tuple, dict]:
    """One input to trace with: a calibration image, else the loaded model's example input."""
    if isinstance(ctx.calibration, tuple):  # (images, labels)
        return (ctx.calibration[0][:1].to(ctx.device),), {}
    if ctx.example_input is not None:
        return example_call(ctx.example_input)
    raise PruneError("method=filters needs an example input to trace the model (an image model with model.input_shape)")


def build_graph(ctx: PruneContext) -> ChannelGraph:
    args, kwargs = example_input(ctx)
    return ChannelGraph(ctx.model, args, kwargs)


def candidate_groups(graph: ChannelGraph, ctx: PruneContext) -> list[ChannelGroup]:
    """Groups the options allow: producers all in ``ctx.layers`` (if given), residual ones unless
    ``residual: keep``, and for ``bn_gamma`` only groups with a BatchNorm (the others have no gamma)."""
    wanted = set(ctx.layers or ())
    keep_residual = ctx.options.residual == "keep"
    chosen = []
    for group in graph.groups:
        if wanted and not set(group.producers) <= wanted:
            continue
        if keep_residual and group.residual:
            continue
        chosen.append(group)
    if ctx.options.criterion == "bn_gamma":
        unscored = [g.name for g in chosen if not g.norms]
        chosen = [g for g in chosen if g.norms]
        if unscored and not chosen:
            raise PruneError(f"criterion bn_gamma: no BatchNorm follows the filters of {', '.join(unscored[:3])}"
                             f"{' ...' if len(unscored) > 3 else ''} (use l1, l2, taylor or geometric_median)")
    return chosen


def group_scores(ctx: PruneContext, graph: ChannelGraph, groups: list[ChannelGroup]) -> list[torch.Tensor]:
    evidence = Evidence(ctx.model, graph, ctx.calibration, ctx.options.calibration_batch_size, ctx.device)
    return scores(ctx.options.criterion, groups, evidence)


def plan(ctx: PruneContext, graph: ChannelGraph | None = None) -> FilterPlan:
    """Score, rank and choose the filters to remove (nothing is changed)."""
    options = ctx.options
    graph = graph if graph is not None else build_graph(ctx)
    groups = candidate_groups(graph, ctx)
    if not groups:
        reasons = graph.fixed_reasons()
        why = "; ".join(f"{name}: {reason}" for name, reason in list(reasons.items())[:3])
        raise PruneError(f"method=filters found no prunable filters in {type(ctx.model).__name__}" + (f" ({why})" if why else ""))
    allocation = options.allocation
    unit_scores = group_scores(ctx, graph, groups)
    if allocation == "global" and options.normalize == "mean":
        unit_scores = [s / s.mean() if len(s) and s.mean() > 0 else s for s in unit_scores]
    # A Conv2d cannot have 0 output channels: with allow_empty_layers the global ranking goes on
    # past a group's last filter, which is kept; without it, emptying a group is an error.
    allow_empty = options.allow_empty_layers
    removed = select([each_unit(s) for s in unit_scores], ctx.sparsity, allocation, [int(allow_empty)] * len(groups), None, True, "filter")
    for group, gone in zip(groups, removed):
        if group.size and len(gone) == group.size:
            coupled = f" (coupled: {', '.join(group.producers)})" if len(group.producers) > 1 else ""
            raise PruneError(f"sparsity={ctx.sparsity} (allocation={allocation}) would remove every filter of {group.name}{coupled}; "
                             "lower the sparsity or set allow_empty_layers=true (which keeps the last filter of a group)")
    return FilterPlan(graph, groups, removed)


def apply(model: nn.Module, chosen: FilterPlan, physically: bool = True) -> None:
    """Remove (``physically``) or zero the planned filters of ``model`` (the traced model or a copy of it)."""
    if physically:
        remove_filters(model, chosen.graph, chosen.by_space())
    else:
        mask_filters(model, chosen.graph, chosen.by_space())


def record(ctx: PruneContext, chosen: FilterPlan) -> None:
    ctx.stats["structured"] = {
        "kind": "filters", "criterion": ctx.options.criterion, "allocation": ctx.options.allocation,
        "residual": ctx.options.residual,
        "filters_total": sum(g.size for g in chosen.groups), "filters_removed": sum(len(r) for r in chosen.removed),
        "groups": [{"name": g.name, "producers": g.producers, "filters": g.size, "removed": len(r), "residual": g.residual}
                   for g, r in zip(chosen.groups, chosen.removed)],
        "untouched": chosen.graph.fixed_reasons() | {g.name: "not selected (targets/ignore, residual=keep or no BatchNorm for bn_gamma)"
                                                     for g in chosen.graph.groups if g.space not in {c.space for c in chosen.groups}},
    }


def prune_filters(ctx: PruneContext, physically: bool) -> FilterPlan:
    return prune_structured(ctx, "filters", plan, apply, record, physically)


def filters(ctx: PruneContext) -> None:
    """Remove conv filters (and the coupled BatchNorm entries, depthwise filters, input channels / features)."""
    prune_filters(ctx, physically=True)


register(Method("filters", filters, FilterOptions, effect=SHAPES, calibration=filter_calibration))
