"""Mask selection shared by every unstructured method: given scores, which weights to zero.

A mask is a bool tensor, ``True`` = pruned. Conventions, the same in every method:

* **count**: a comparison group of ``n`` scores loses ``k = floor(s * n)`` weights, the
  largest count not above the target (so 70% of a 576-wide row prunes 403, as the Wanda code);
* **ties**: among equal scores the lower flat index (row-major) is pruned first, which is what
  a stable ascending sort gives. Weights of a 4-bit-derived model tie often; this rule makes
  every mask deterministic and the pruned count exact;
* **N:M**: in each run of ``M`` consecutive input weights of a row, the ``M - N`` lowest
  scores are pruned (same tie rule), so sparsity is exactly ``1 - N/M``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from prunecli.errors import PruneError


def prune_count(numel: int, sparsity: float) -> int:
    """``floor(sparsity * numel)``, robust to float error (0.29 * 100 -> 29, not 28)."""
    return min(numel, math.floor(sparsity * numel + 1e-6))


SAMPLE = 4096  # kth_smallest: scores in the sample that brackets the k-th


def kth_smallest(scores: torch.Tensor, k: int, sample: int = SAMPLE) -> torch.Tensor:
    """The ``k``-th smallest of the 1-D ``scores`` (1-based): exactly ``torch.kthvalue(scores, k).values``, in less
    time on large inputs.

    Up to ``4 * sample`` scores: ``kthvalue`` itself. Beyond: every ``n // sample``-th score is sorted, and the sample's
    scores at ranks ``k / n * sample +- (4 sigma + 8)`` (sigma: the standard deviation of a sample quantile's rank,
    ``sqrt(size * p * (1 - p))``) bracket the k-th, ``[lo, hi]``; with ``b`` scores below ``lo``, the answer is the
    ``(k - b)``-th smallest of the scores inside ``[lo, hi]`` (a few percent of them), when ``b < k <= b + inside``.
    Otherwise (a bracket that misses, NaN among the scores) ``kthvalue`` runs on all of them. On CPU ``kthvalue``
    runs on one thread; SparseGPT calls this for every block of columns of every layer.
    """
    n = scores.numel()
    if n <= 4 * sample:
        return torch.kthvalue(scores, k).values
    sorted_sample = torch.sort(scores[:: n // sample]).values
    size, share = sorted_sample.numel(), (k - 0.5) / n
    margin = int(4 * math.sqrt(size * share * (1 - share))) + 8
    rank = int(share * size)
    lo, hi = sorted_sample[max(rank - margin, 0)], sorted_sample[min(rank + margin, size - 1)]
    below = scores < lo
    before = int(below.sum())
    inside = scores[(scores <= hi).logical_and_(below.logical_not_())]
    if before < k <= before + inside.numel():
        return torch.kthvalue(inside, k - before).values
    return torch.kthvalue(scores, k).values


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries of a 1-D tensor; ties go to the lower index.

    Uses :func:`kth_smallest` rather than a full sort, so it scales to global masks over ~1e8 scores.
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return mask
    if k >= scores.numel():
        return mask.fill_(True)
    threshold = kth_smallest(scores, k)
    mask = scores < threshold
    missing = k - int(mask.sum())
    ties = torch.nonzero(scores == threshold).flatten()[:missing]
    mask[ties] = True
    return mask


def rowwise_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``k = floor(s * cols)`` lowest scores in every row, ties to the lower column.

    Per row, with ``t`` its k-th smallest score (``kthvalue``, no full sort): every score ``< t`` is
    pruned, then the first ``k - #(< t)`` scores ``== t`` -- the first ``k`` of a stable ascending sort.
    """
    cols = scores.shape[1]
    k = prune_count(cols, sparsity)
    if k == 0 or k == cols:
        return torch.full_like(scores, k == cols, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    mask = scores < threshold
    missing = k - mask.sum(1, keepdim=True, dtype=torch.int32)
    ties = scores == threshold
    return mask.logical_or_(ties.logical_and_(torch.cumsum(ties, 1, dtype=torch.int32) <= missing))


def layerwise_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``floor(s * numel)`` lowest scores of the whole matrix."""
    return lowest_k(scores.flatten(), prune_count(scores.numel(), sparsity)).view_as(scores)


def global_masks(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold across all matrices: ``floor(s * total)`` lowest scores overall."""
    flat = torch.cat([s.flatten().float() for s in scores])
    mask = lowest_k(flat, prune_count(flat.numel(), sparsity))
    return [part.view_as(s) for part, s in zip(torch.split(mask, [s.numel() for s in scores]), scores)]


def nm_mask(scores: torch.Tensor, n: int, m: int, layer: str = "") -> torch.Tensor:
    """N:M mask: keep the ``n`` highest of every ``m`` consecutive inputs of each row."""
    rows, cols = scores.shape
    check_nm_fits(cols, (n, m), layer)
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices[:, :, : m - n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order, True).view(rows, cols)


def check_nm_fits(columns: int, nm: tuple[int, int], layer: str = "") -> None:
    """N:M groups must tile a row: M has to divide the layer's input dimension."""
    if columns % nm[1]:
        raise PruneError(f"pattern {nm[0]}:{nm[1]}: M={nm[1]} does not divide the input dimension {columns} of layer {layer or '?'}")


def parse_pattern(pattern: str | None, sparsity: float) -> tuple[int, int] | None:
    """``"unstructured"``/None -> None; ``"N:M"`` -> (N, M), checked against ``sparsity``."""
    if pattern in (None, "", "unstructured"):
        return None
    try:
        n, m = (int(part) for part in str(pattern).split(":"))
    except ValueError:
        raise PruneError(f"pattern must be 'unstructured' or 'N:M' like 2:4 (got {pattern!r})") from None
    if not 0 < n < m:
        raise PruneError(f"pattern {pattern}: need 0 < N < M")
    implied = 1 - n / m
    if abs(implied - sparsity) > 1e-9:
        raise PruneError(f"pattern {pattern} means sparsity {implied:g}, but sparsity={sparsity:g}; set sparsity={implied:g}")
    return n, m


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned entries in place (``weight`` may be a transposed view)."""
    weight.masked_fill_(mask.to(weight.device), 0)


GROUPS = ("row", "layer")


def select_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, group: str = "layer", layer: str = "") -> torch.Tensor:
    """The mask for one matrix: N:M if a pattern is set, else ``sparsity`` per ``group``.

    ``group="row"`` compares weights within each output row (Wanda's default),
    ``group="layer"`` within the whole matrix.
    """
    if nm is not None:
        return nm_mask(scores, *nm, layer=layer)
    if group not in GROUPS:
        raise PruneError(f"unknown comparison group {group!r} (choose from: {', '.join(GROUPS)})")
    return rowwise_mask(scores, sparsity) if group == "row" else layerwise_mask(scores, sparsity)


def pruned_lowest(scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``scores`` (>= 0) with every already-pruned (zero) weight set to -1, below every live one:
    re-pruning to a higher sparsity (schedules) keeps every earlier zero."""
    return scores.masked_fill(weight == 0, -1.0)
