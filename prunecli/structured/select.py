"""Which units go: rank candidates within each layer (``per_layer``) or across layers (``global``).

``sparsity`` is the fraction of candidates removed: ``floor(s * n)`` of the ``n`` in a layer
(``per_layer``) or of all layers together (``global``); the lowest scores go, ties to the
lower index (stable sort), as in :mod:`prunecli.methods.masks`. A *candidate* is usually one
unit; with ``gqa=query_heads`` it is a *slot*: the ``k``-th weakest query head of every KV
group of a layer, so each KV group keeps the same number of query heads.

Where a removal must be exact (GQA: a fraction of the KV groups or of each group's query
heads), a ratio that does not give a whole number is refused with the ratios that do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from prunecli.errors import PruneError
from prunecli.methods.masks import prune_count
from prunecli.registry import Registry


@dataclass
class Candidates:
    """One layer's candidates: ``scores[c]`` and the units candidate ``c`` removes (``members[c]``)."""

    scores: torch.Tensor  # (n,)
    members: torch.Tensor  # (n, m) long


def each_unit(scores: torch.Tensor) -> Candidates:
    return Candidates(scores, torch.arange(len(scores))[:, None])


def query_head_slots(scores: torch.Tensor, heads_per_kv: int) -> Candidates:
    """Slot ``k`` = the ``k``-th weakest query head of every KV group; its score is their sum."""
    if len(scores) == 0:
        return each_unit(scores)
    per_group = scores.view(-1, heads_per_kv)
    order = per_group.argsort(dim=1, stable=True)
    first = torch.arange(per_group.shape[0])[:, None] * heads_per_kv
    return Candidates(per_group.gather(1, order).sum(0), (order + first).t().contiguous())


def exact_count(sparsity: float, count: int, what: str) -> int:
    """How many of ``count`` candidates a ratio removes when it must be a whole number of them.

    A ratio within 0.01 of a candidate of a whole number is that number (typing 0.333 for one
    of 3 KV groups removes one); any other ratio is refused, naming the ones that work.
    """
    k = round(sparsity * count)
    if not math.isclose(sparsity * count, k, abs_tol=0.01):
        possible = ", ".join(f"{j / count:.4g}" for j in range(count)) if count <= 16 else f"multiples of 1/{count}"
        raise PruneError(f"sparsity={sparsity} cannot be honoured with {count} {what}; possible ratios: {possible}")
    return k


# An allocation returns how many candidates each layer loses and which (indices into its candidates).
SELECTIONS: Registry[Callable[[list[Candidates], float, list[int], str | None], list[torch.Tensor]]] = Registry("structured allocation")


@SELECTIONS.register("per_layer")
def per_layer(layers: list[Candidates], sparsity: float, caps: list[int], exact: str | None) -> list[torch.Tensor]:
    """Each layer loses ``min(floor(s * n_l), cap_l)`` of its own lowest-scoring candidates."""
    chosen = []
    for layer, cap in zip(layers, caps):
        n = len(layer.scores)
        k = min(exact_count(sparsity, n, f"{exact} in each layer") if exact else prune_count(n, sparsity), cap)
        chosen.append(layer.scores.argsort(stable=True)[:k])
    return chosen


@SELECTIONS.register("global")
def global_(layers: list[Candidates], sparsity: float, caps: list[int], exact: str | None) -> list[torch.Tensor]:
    """One ranking over every layer: the ``floor(s * N)`` lowest of all ``N`` candidates go,
    skipping a layer once it reaches its cap (``min_heads_per_layer``)."""
    total = sum(len(layer.scores) for layer in layers)
    budget = exact_count(sparsity, total, f"{exact} in all layers") if exact else prune_count(total, sparsity)
    scores = torch.cat([layer.scores for layer in layers]) if layers else torch.zeros(0)
    owners = torch.cat([torch.full((len(layer.scores),), i) for i, layer in enumerate(layers)]) if layers else torch.zeros(0)
    offsets = [0] + torch.tensor([len(layer.scores) for layer in layers]).cumsum(0).tolist()
    chosen: list[list[int]] = [[] for _ in layers]
    for flat in scores.argsort(stable=True).tolist():
        if budget == 0:
            break
        owner = int(owners[flat])
        if len(chosen[owner]) < caps[owner]:
            chosen[owner].append(flat - offsets[owner])
            budget -= 1
    return [torch.tensor(sorted(c), dtype=torch.long) for c in chosen]


def select(layers: list[Candidates], sparsity: float, allocation: str, min_keep: list[int], exact: str | None,
           allow_empty: bool, noun: str, keep_hint: str = "") -> list[torch.Tensor]:
    """The units to remove in each layer (sorted), after the allocation and the empty-layer check."""
    caps = [max(len(layer.scores) - keep, 0) for layer, keep in zip(layers, min_keep)]
    chosen = SELECTIONS.get(allocation)(layers, sparsity, caps, exact)
    for index, (layer, picked) in enumerate(zip(layers, chosen)):
        if len(layer.scores) and len(picked) == len(layer.scores) and not allow_empty:
            raise PruneError(f"sparsity={sparsity} (allocation={allocation}) would remove every {noun} of layer {index}; "
                             f"lower the sparsity{keep_hint} or set allow_empty_layers=true")
    return [layer.members[picked].reshape(-1).sort().values for layer, picked in zip(layers, chosen)]
