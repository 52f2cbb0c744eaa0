"""The structured methods: ``heads``, ``ffn`` and ``layers`` (physically removed) and ``head_mask``.

``heads`` / ``ffn`` / ``head_mask``: score every unit (:mod:`importance`), choose the lowest
``sparsity`` fraction (:mod:`select`), optionally fold their mean contribution into the output
bias (FLAP, :mod:`compensation`), then remove them (:mod:`remove`) or zero them (:mod:`mask`).
``layers``: remove the ``floor(sparsity * n_blocks)`` blocks of lowest Block Influence, or the
explicit ``layers_to_remove``.

Options (``configs/method/{heads,ffn,layers,head_mask}.yaml``): ``criterion``,
``allocation: per_layer | global``, ``gqa: kv_groups | query_heads``, ``min_heads_per_layer``,
``bias_compensation``, ``allow_empty_layers``. Calibration windows are built when the criterion
(``taylor``, ``activation``, ``fluctuation``, ``entropy``, ``confidence``), FLAP or Block Influence needs them
(:func:`unit_calibration`, :func:`layer_calibration`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from prunecli.errors import PruneError
from prunecli.methods import SHAPES, ZEROS, CalibratedOptions, Method, PruneContext, register
from prunecli.models.layout import blocks_of
from prunecli.options import at_least
from prunecli.structured.compensation import add_to_bias, bias_deltas
from prunecli.structured.groups import BlockGroups, family_of, head_counts, model_groups
from prunecli.structured.criteria import CRITERIA, check_context, criterion_for, prune_structured
from prunecli.structured.importance import Evidence, block_influence, scores
from prunecli.structured.mask import mask_units
from prunecli.structured.remove import remove_blocks, remove_units, sync_config
from prunecli.structured.select import SELECTIONS, each_unit, query_head_slots, select

log = logging.getLogger(__name__)

NOUNS = {"heads": "head", "ffn": "FFN neuron"}


KINDS = {"heads": "heads", "head_mask": "heads", "ffn": "ffn"}  # method -> the units it removes


@dataclass
class Plan:
    """What to remove: ``removed[b]`` = unit indices of ``groups[b]``; ``bias[(b, path)]`` = FLAP correction."""

    kind: str
    groups: list[BlockGroups]
    removed: list[torch.Tensor]
    bias: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    def sizes(self) -> list[int]:
        return [g.units for g in self.groups]


@dataclass(frozen=True)
class UnitOptions(CalibratedOptions):
    """``ffn`` (and, with :class:`HeadOptions`, ``heads`` / ``head_mask``)."""

    criterion: str = "l2"  # a CRITERIA entry scoring this method's units
    allocation: str = "per_layer"  # per_layer (each layer loses `sparsity` of its units) | global (one ranking)
    bias_compensation: bool = False  # FLAP: b += W[:, removed] @ mean(x_removed) over calibration tokens
    allow_empty_layers: bool = False  # allow a layer to lose every unit (global allocation)
    calibration_nsamples: int = 8  # default data.nsamples for this method (run.yaml reads it)

    def check(self, prefix: str) -> None:
        super().check(prefix)
        criterion_for(self.criterion, KINDS[self.name])
        SELECTIONS.get(self.allocation)
        at_least(self, prefix, "calibration_nsamples", 1)


@dataclass(frozen=True)
class HeadOptions(UnitOptions):
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups"  # remove whole KV groups | the same query heads of every group
    min_heads_per_layer: int = 0  # never go below this many heads in a layer

    def check(self, prefix: str) -> None:
        super().check(prefix)
        at_least(self, prefix, "min_heads_per_layer", 0)


@dataclass(frozen=True)
class LayerOptions(CalibratedOptions):
    criterion: str = "block_influence"
    layers_to_remove: list | None = None  # explicit block indices (then `sparsity` is not used)
    calibration_nsamples: int = 8

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.layers_to_remove is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in self.layers_to_remove):
            raise PruneError(f"layers_to_remove must be a list of block indices (got {list(self.layers_to_remove)!r})")
        if self.layers_to_remove is None and self.criterion != "block_influence":
            raise PruneError(f"unknown layers criterion {self.criterion!r} (choose from: block_influence, or give layers_to_remove)")


def unit_calibration(options: UnitOptions) -> bool:
    """Data-aware criteria and FLAP bias compensation need calibration windows."""
    return CRITERIA.get(options.criterion).needs_data or options.bias_compensation


def layer_calibration(options: LayerOptions) -> bool:
    """Block Influence needs calibration windows; explicit ``layers_to_remove`` do not."""
    return options.layers_to_remove is None


def choose(model: torch.nn.Module, kind: str, options: UnitOptions, sparsity: float, unit_scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """The units of each layer to remove, given a score per unit (lowest go first): GQA candidates
    (whole KV groups, or the same query-head slot of every group), allocation, caps and checks."""
    gqa = options.gqa if kind == "heads" else None
    family = family_of(model)
    _, blocks = blocks_of(model)
    counts = [head_counts(family, block) for block in blocks] if kind == "heads" else []
    gqa_ratio = max([q // kv for q, kv, _ in counts if kv] or [1])
    if kind == "heads" and gqa_ratio > 1 and gqa == "query_heads":
        candidates = [query_head_slots(s, q // kv) if kv else each_unit(s) for s, (q, kv, _) in zip(unit_scores, counts)]
        exact, per_candidate = "query heads per KV group", [kv for _, kv, _ in counts]
    else:
        candidates = [each_unit(s) for s in unit_scores]
        exact = "KV groups" if kind == "heads" and gqa_ratio > 1 else None
        per_candidate = [q // kv if kv else 1 for q, kv, _ in counts] if exact else [1] * len(unit_scores)
    min_heads = options.min_heads_per_layer if kind == "heads" else 0
    min_keep = [-(-min_heads // max(p, 1)) for p in per_candidate]  # in candidates, rounded up
    return select(candidates, sparsity, options.allocation, min_keep, exact, options.allow_empty_layers, NOUNS[kind],
                  ", raise min_heads_per_layer" if kind == "heads" else "")


def unit_groups(model: torch.nn.Module, kind: str, options: UnitOptions) -> list[BlockGroups]:
    return model_groups(model, kind, options.gqa if kind == "heads" else "kv_groups")


def check_model(options: UnitOptions, sparsity: float, model: torch.nn.Module) -> None:
    """Refuse, right after loading (before any calibration), a ratio this model's shapes cannot
    honour: the selection runs on placeholder scores, so its errors are the real ones."""
    kind = KINDS[options.name]
    groups = unit_groups(model, kind, options)
    choose(model, kind, options, sparsity, [torch.zeros(g.units) for g in groups])


def plan(ctx: PruneContext, kind: str) -> tuple[Plan, Evidence]:
    """Score, rank and choose the ``kind`` units of ``ctx.model`` to remove (nothing is changed)."""
    options = ctx.options
    family = family_of(ctx.model)
    groups = unit_groups(ctx.model, kind, options)
    evidence = Evidence(ctx, family, groups)
    unit_scores = scores(options.criterion, kind, groups, evidence)
    result = Plan(kind, groups, choose(ctx.model, kind, options, ctx.sparsity, unit_scores))
    if options.bias_compensation:
        _, blocks = blocks_of(ctx.model)
        for g, units in zip(groups, result.removed):
            for path, delta in bias_deltas(g, blocks[g.block], units, evidence).items():
                result.bias[(g.block, path)] = delta
    return result, evidence


def apply(model: torch.nn.Module, plan: Plan, physically: bool) -> None:
    """Remove (``physically``) or zero the planned units of ``model`` (the planned model or a copy of it)."""
    family = family_of(model)
    _, blocks = blocks_of(model)
    for (index, path), delta in plan.bias.items():
        add_to_bias(blocks[index].get_submodule(path), delta)
    for groups, units in zip(plan.groups, plan.removed):
        if physically:
            remove_units(blocks[groups.block], family, groups, units)
        else:
            mask_units(blocks[groups.block], groups, units)
    sync_config(model)


def record(ctx: PruneContext, plan: Plan) -> None:
    # flat keys: results.csv columns, so that `prune report --columns/--where` can tell criteria apart
    ctx.stats.update(criterion=ctx.options.criterion, bias_compensation=ctx.options.bias_compensation,
                     gqa=ctx.options.gqa if plan.kind == "heads" else None)
    ctx.stats["structured"] = {
        "kind": plan.kind, "criterion": ctx.options.criterion, "allocation": ctx.options.allocation,
        "units_per_layer": [g.units for g in plan.groups], "removed_per_layer": [len(r) for r in plan.removed],
        "bias_compensation": bool(plan.bias),
    }


def prune_units(ctx: PruneContext, kind: str, physically: bool) -> None:
    prune_structured(ctx, NOUNS[kind] + "s", lambda c: plan(c, kind)[0], apply, record, physically)


def heads(ctx: PruneContext) -> None:
    """Remove attention heads (GQA: whole KV groups or query heads)."""
    prune_units(ctx, "heads", physically=True)


def head_mask(ctx: PruneContext) -> None:
    """Zero the heads ``heads`` would remove; shapes unchanged."""
    prune_units(ctx, "heads", physically=False)


def ffn(ctx: PruneContext) -> None:
    """Remove FFN neurons."""
    prune_units(ctx, "ffn", physically=True)


def blocks_to_remove(ctx: PruneContext) -> tuple[list[int], list[float] | None]:
    """``layers_to_remove`` if given, else the ``floor(s * n)`` blocks of lowest Block Influence."""
    explicit = ctx.options.layers_to_remove
    if explicit is not None:
        return sorted(set(explicit)), None
    if ctx.calibration is None:
        raise PruneError("criterion block_influence needs calibration windows (none were given)")
    _, blocks = blocks_of(ctx.model)
    influence = block_influence(ctx.model, ctx.calibration, ctx.options.calibration_batch_size, ctx.device)
    k = select([each_unit(influence)], ctx.sparsity, "per_layer", [0], None, False, "block")[0]
    return k.tolist(), influence.tolist()


def layers(ctx: PruneContext) -> None:
    """Remove whole blocks (ShortGPT)."""
    check_context(ctx, "blocks")
    doomed, influence = blocks_to_remove(ctx)
    if doomed:
        remove_blocks(ctx.model, doomed)
    ctx.stats.update(criterion="explicit" if influence is None else ctx.options.criterion)
    ctx.stats["structured"] = {"kind": "layers", "removed_blocks": doomed, "block_influence": influence}
    log.info("layers: removed blocks %s", doomed)


register(Method("heads", heads, HeadOptions, effect=SHAPES, calibration=unit_calibration, check_model=check_model))
register(Method("head_mask", head_mask, HeadOptions, effect=ZEROS, calibration=unit_calibration, check_model=check_model))
register(Method("ffn", ffn, UnitOptions, effect=SHAPES, calibration=unit_calibration, check_model=check_model))
register(Method("layers", layers, LayerOptions, effect=SHAPES, calibration=layer_calibration))
