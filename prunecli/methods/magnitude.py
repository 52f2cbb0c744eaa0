"""Magnitude pruning: score ``|W_ij|``, zero the lowest.

``scope=per_layer`` compares weights within each matrix (the reference baseline's "per
matrix"); ``scope=global`` uses one threshold across every targeted matrix. With an N:M
pattern the comparison group is each run of M inputs of a row.
"""

from __future__ import annotations

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.masks import apply_mask, global_masks, select_mask
from prunecli.methods.targets import weight_matrix

SCOPES = ("per_layer", "global")


@METHODS.register("magnitude")
def magnitude(ctx: PruneContext) -> None:
    scope = ctx.options.get("scope", "per_layer")
    if scope not in SCOPES:
        raise PruneError(f"unknown method.scope {scope!r} (choose from: {', '.join(SCOPES)})")
    weights = {name: weight_matrix(module) for name, module in ctx.layers.items()}
    if scope == "global" and ctx.nm is None:
        if ctx.layer_sparsity:
            raise PruneError("method.scope=global sets one threshold for all layers; it cannot follow a per-layer allocation (use scope=per_layer)")
        masks = global_masks([w.abs() for w in weights.values()], ctx.sparsity)
    else:
        masks = [select_mask(w.abs(), ctx.sparsity_of(name), ctx.nm, "layer", name) for name, w in weights.items()]
    for weight, mask in zip(weights.values(), masks):
        apply_mask(weight, mask)
