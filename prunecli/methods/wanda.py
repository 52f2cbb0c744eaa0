"""Wanda (Sun et al. 2023): prune by weight magnitude times input activation norm.

``score_ij = |W_ij| * ||X_j||_2``, the norm over all calibration tokens of input feature j
(collected block by block on the already-pruned model, see :mod:`layerwise`). The lowest
scores are removed per output row (``method.comparison=row``, the paper's default) or per
matrix (``layer``); with an N:M pattern, per run of M inputs of a row. No weight update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from prunecli.methods import CalibratedOptions, Method, PruneContext, register
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.masks import apply_mask, pruned_lowest, select_mask
from prunecli.methods.statistics import InputNorms
from prunecli.methods.targets import weight_matrix


@dataclass(frozen=True)
class WandaOptions(CalibratedOptions):
    comparison: Literal["row", "layer"] = "row"  # per output row (the paper's default) or whole matrix


def wanda_scores(weight: torch.Tensor, norms: InputNorms) -> torch.Tensor:
    """``|W| * ||X_j||_2`` broadcast over rows, in fp32."""
    return weight.abs().float() * norms.norms().to(weight.device)[None, :]


def unranked(scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return scores


def prune_layer(ctx: PruneContext, name: str, module: torch.nn.Module, norms: InputNorms,
                rank: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = unranked) -> None:
    """Zero the lowest ``rank(scores, W)`` of one layer's comparison groups."""
    weight = weight_matrix(module)
    apply_mask(weight, select_mask(rank(wanda_scores(weight, norms), weight), ctx.sparsity_of(name), ctx.nm, ctx.options.comparison, name))


def prune_collecting(ctx: PruneContext, rank: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, InputNorms]:
    """Collect the norms block by block on the model as it is pruned (see :mod:`layerwise`), prune each
    layer with them; return ``{layer: InputNorms}``."""
    collected: dict[str, InputNorms] = {}

    def prune_block(index, layers, stats) -> None:
        for name, module in layers.items():
            collected[name] = stats[name]
            prune_layer(ctx, name, module, stats[name], rank)

    prune_layerwise(ctx, InputNorms, prune_block, "wanda", ctx.options.calibration_batch_size)
    return collected


def wanda(ctx: PruneContext) -> None:
    prune_collecting(ctx, unranked)


def reprune_wanda(ctx: PruneContext, state: dict) -> None:
    """Schedules: every earlier zero ranked lowest; the norms ``state["norms"]`` of an earlier
    step are reused if there (the schedule passes a fresh ``state`` to re-collect them)."""
    if "norms" not in state:
        state["norms"] = prune_collecting(ctx, pruned_lowest)
        return
    with torch.no_grad():
        for name, module in ctx.layers.items():
            prune_layer(ctx, name, module, state["norms"][name], pruned_lowest)


register(Method("wanda", wanda, WandaOptions, calibration=True, reprune=reprune_wanda, refittable=True, offload=True))
