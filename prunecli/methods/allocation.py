"""Per-layer sparsity allocation: how the global target is spread over the blocks.

* ``uniform``: every layer gets ``sparsity``.
* ``owl`` (Yin et al. 2024, outlier-weighted layerwise sparsity): on the dense model, block
  by block, the outlier ratio ``D_l`` is the fraction of the block's nonzero Wanda scores
  ``|W_ij| * ||X_j||`` above ``M`` times their mean. Ratios are rescaled to ``[0, 2*lambda]``
  and shifted so their mean density is ``1 - sparsity``; block ``l`` then keeps density
  ``1 - s_l = D'_l``. Blocks with more outliers keep more weights; the mean stays the target.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from prunecli.errors import PruneError
from prunecli.methods import PruneContext, calibration_batch_size
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.statistics import InputNorms
from prunecli.methods.targets import weight_matrix
from prunecli.methods.wanda import wanda_scores
from prunecli.registry import Registry

# An allocation returns {layer name: sparsity}; an empty dict means "the global target everywhere".
ALLOCATIONS: Registry[Callable[[PruneContext, Any], dict[str, float]]] = Registry("allocation")


@ALLOCATIONS.register("uniform")
def uniform(ctx: PruneContext, options: Any) -> dict[str, float]:
    return {}


def owl_block_sparsities(outlier_ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """OWL's rescaling: ratios -> [0, 2*lam] -> shifted to mean density ``1 - sparsity``."""
    ratios = torch.tensor(outlier_ratios, dtype=torch.float64)
    spread = ratios.max() - ratios.min()
    scaled = (ratios - ratios.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(ratios)
    density = scaled - scaled.mean() + (1 - sparsity)
    if density.min() <= 0 or density.max() > 1:
        raise PruneError(f"allocation=owl: owl.lambda={lam} pushes a block's sparsity outside [0, 1) at sparsity={sparsity}; lower owl.lambda")
    return (1 - density).tolist()


@ALLOCATIONS.register("owl")
def owl(ctx: PruneContext, options: Any) -> dict[str, float]:
    if ctx.nm is not None:  # also refused up front by pipeline.validate
        raise PruneError("allocation=owl gives blocks different sparsities, which an N:M pattern cannot; use allocation=uniform")
    lam, threshold = float(options.owl["lambda"]), float(options.owl.M)
    blocks: list[tuple[float, list[str]]] = []

    def measure(index, layers, stats) -> None:
        scores = torch.cat([wanda_scores(weight_matrix(m), stats[n]).flatten() for n, m in layers.items()])
        outliers = (scores > threshold * scores.mean()).sum()
        blocks.append((float(outliers / scores.count_nonzero()), list(layers)))

    prune_layerwise(ctx, InputNorms, measure, "owl", calibration_batch_size(ctx.options), measure_only=True)  # dense outputs feed the next block
    sparsities = owl_block_sparsities([ratio for ratio, _ in blocks], ctx.sparsity, lam)
    ctx.stats["owl"] = {"outlier_ratio": [ratio for ratio, _ in blocks], "block_sparsity": sparsities}
    return {name: s for s, (_, names) in zip(sparsities, blocks) for name in names}
