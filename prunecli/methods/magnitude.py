"""Magnitude pruning: score ``|W_ij|``, zero the lowest.

``scope=per_layer`` compares weights within each matrix (the reference baseline's "per
matrix"); ``scope=global`` uses one threshold across every targeted matrix. With an N:M
pattern the comparison group is each run of M inputs of a row.
"""

from __future__ import annotations

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.masks import apply_mask, global_masks, layerwise_mask, nm_mask
from prunecli.methods.targets import weight_matrix

SCOPES = ("per_layer", "global")


@METHODS.register("magnitude")
def magnitude(ctx: PruneContext) -> None:
    scope = ctx.options.get("scope", "per_layer")
    if scope not in SCOPES:
        raise PruneError(f"unknown method.scope {scope!r} (choose from: {', '.join(SCOPES)})")
    weights = {name: weight_matrix(module) for name, module in ctx.layers.items()}
    if ctx.nm is not None:
        masks = [nm_mask(w.abs(), *ctx.nm, layer=name) for name, w in weights.items()]
    elif scope == "global":
        masks = global_masks([w.abs() for w in weights.values()], ctx.sparsity)
    else:
        masks = [layerwise_mask(w.abs(), ctx.sparsity) for w in weights.values()]
    for weight, mask in zip(weights.values(), masks):
        apply_mask(weight, mask)
