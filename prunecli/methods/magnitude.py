"""Magnitude pruning: score ``|W_ij|``, zero the lowest.

``scope=per_layer`` compares weights within each matrix (the reference baseline's "per
matrix"); ``scope=global`` uses one threshold across every targeted matrix. With an N:M
pattern the comparison group is each run of M inputs of a row. ``per_layer`` runs with
``model.offload`` (one block's weights at a time); ``global`` needs every weight at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from prunecli.errors import PruneError
from prunecli.methods import Method, MethodOptions, PruneContext, register
from prunecli.methods.layerwise import onloaded_layers
from prunecli.methods.masks import apply_mask, global_masks, pruned_lowest, select_mask
from prunecli.methods.targets import weight_matrix


@dataclass(frozen=True)
class MagnitudeOptions(MethodOptions):
    scope: Literal["per_layer", "global"] = "per_layer"  # one threshold per matrix, or one over all targeted matrices


def prune_by_magnitude(ctx: PruneContext, scored: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Zero the lowest ``scored(W)`` of each comparison group (see module doc)."""
    if ctx.options.scope == "global" and ctx.nm is None:
        if ctx.layer_sparsity:
            raise PruneError("method.scope=global sets one threshold for all layers; it cannot follow a per-layer allocation (use scope=per_layer)")
        weights = [weight_matrix(module) for module in ctx.layers.values()]
        for weight, mask in zip(weights, global_masks([scored(w) for w in weights], ctx.sparsity)):
            apply_mask(weight, mask)
        return
    for layers in onloaded_layers(ctx):
        for name, module in layers.items():
            weight = weight_matrix(module)
            apply_mask(weight, select_mask(scored(weight), ctx.sparsity_of(name), ctx.nm, "layer", name))


def magnitude(ctx: PruneContext) -> None:
    prune_by_magnitude(ctx, torch.abs)


def reprune_magnitude(ctx: PruneContext, state: dict) -> None:
    """Schedules: the same rule with every earlier zero ranked lowest."""
    prune_by_magnitude(ctx, lambda w: pruned_lowest(w.abs().float(), w))


register(Method("magnitude", magnitude, MagnitudeOptions, reprune=reprune_magnitude, refittable=True,
                offload=lambda options: options.scope == "per_layer"))
