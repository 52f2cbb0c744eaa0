"""Wanda (Sun et al. 2023): prune by weight magnitude times input activation norm.

``score_ij = |W_ij| * ||X_j||_2``, the norm over all calibration tokens of input feature j
(collected block by block on the already-pruned model, see :mod:`layerwise`). The lowest
scores are removed per output row (``method.comparison=row``, the paper's default) or per
matrix (``layer``); with an N:M pattern, per run of M inputs of a row. No weight update.
"""

from __future__ import annotations

import torch

from prunecli.methods import METHODS, PruneContext
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.masks import apply_mask, select_mask
from prunecli.methods.statistics import InputNorms
from prunecli.methods.targets import weight_matrix


def wanda_scores(weight: torch.Tensor, norms: InputNorms) -> torch.Tensor:
    """``|W| * ||X_j||_2`` broadcast over rows, in fp32."""
    return weight.abs().float() * norms.norms().to(weight.device)[None, :]


@METHODS.register("wanda")
def wanda(ctx: PruneContext) -> None:
    comparison = ctx.options.get("comparison", "row")

    def prune_block(index, layers, stats) -> None:
        for name, module in layers.items():
            weight = weight_matrix(module)
            mask = select_mask(wanda_scores(weight, stats[name]), ctx.sparsity_of(name), ctx.nm, comparison, name)
            apply_mask(weight, mask)

    prune_layerwise(ctx, InputNorms, prune_block, "wanda")
