"""Magnitude pruning: score ``|W_ij|``, zero the lowest.

``scope=per_layer`` compares weights within each matrix (the reference baseline's "per
matrix"); ``scope=global`` uses one threshold across every targeted matrix. With an N:M
pattern the comparison group is each run of M inputs of a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from prunecli.errors import PruneError
from prunecli.methods import Method, MethodOptions, PruneContext, register
from prunecli.methods.masks import apply_mask, global_masks, pruned_lowest, select_mask
from prunecli.methods.targets import weight_matrix


@dataclass(frozen=True)
class MagnitudeOptions(MethodOptions):
    scope: Literal["per_layer", "global"] = "per_layer"  # one threshold per matrix, or one over all targeted matrices


def prune_by_magnitude(ctx: PruneContext, scored: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Zero the lowest ``scored(W)`` of each comparison group (see module doc)."""
    weights = {name: weight_matrix(module) for name, module in ctx.layers.items()}
    if ctx.options.scope == "global" and ctx.nm is None:
        if ctx.layer_sparsity:
            raise PruneError("method.scope=global sets one threshold for all layers; it cannot follow a per-layer allocation (use scope=per_layer)")
        masks = global_masks([scored(w) for w in weights.values()], ctx.sparsity)
    else:
        masks = [select_mask(scored(w), ctx.sparsity_of(name), ctx.nm, "layer", name) for name, w in weights.items()]
    for weight, mask in zip(weights.values(), masks):
        apply_mask(weight, mask)


def magnitude(ctx: PruneContext) -> None:
    prune_by_magnitude(ctx, torch.abs)


def reprune_magnitude(ctx: PruneContext, state: dict) -> None:
    """Schedules: the same rule with every earlier zero ranked lowest."""
    prune_by_magnitude(ctx, lambda w: pruned_lowest(w.abs().float(), w))


register(Method("magnitude", magnitude, MagnitudeOptions, reprune=reprune_magnitude, refittable=True))
