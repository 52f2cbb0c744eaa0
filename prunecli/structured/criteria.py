"""What transformer units and CNN filters share: one criterion registry, the weight criteria,
gradient collection, and the plan -> apply -> record skeleton of a structured method.

A *unit* is a head / KV group, an FFN neuron or a conv filter; its weights are slices of
several tensors (:class:`Owned`: the rows or columns it owns in each). Each stack's evidence
(:class:`~prunecli.structured.importance.Evidence` for transformers,
:class:`~prunecli.structured.cnn.importance.Evidence` for CNNs) lists them for a group of
units; on those slices ``S_u`` of unit ``u``:

* ``l1``: ``sum_{w in S_u} |w|``; ``l2``: ``sqrt(sum_{w in S_u} w^2)`` (Li et al. 2017);
* ``taylor`` (first order, element-wise: LLM-Pruner, Molchanov et al. 2019):
  ``sum_{w in S_u} |g_w * w|``, ``g`` the gradient of the task loss over the calibration data
  (:func:`loss_gradients`).

Criteria only one stack can compute (activations, attention, BatchNorm gammas, FPGM) register
beside that stack's evidence, in the same :data:`CRITERIA`, naming the unit kinds they score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owned:
    """One tensor's share of a group: ``lines(t)`` is ``(units, k)``, row ``u`` = unit ``u``'s entries
    of ``t`` (the weight, or its gradient: same shape, same ``key``)."""

    key: Hashable
    weight: torch.Tensor
    lines: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """``score(evidence, group) -> (units,)`` fp64 CPU; ``kinds``: the units it scores."""

    score: Callable[[Any, Any], torch.Tensor]
    needs_data: bool
    kinds: tuple[str, ...]


CRITERIA: Registry[Criterion] = Registry("structured criterion")


def criterion_for(name: str, kind: str) -> Criterion:
    """The criterion ``name``, refused in one line (listing those for ``kind``) if unknown or not scoring ``kind`` units."""
    if name not in CRITERIA:
        fitting = [n for n in CRITERIA.names() if kind in CRITERIA.get(n).kinds]
        noun = "filter" if kind == "filters" else "structured"
        raise PruneError(f"unknown {noun} criterion {name!r} (choose from: {', '.join(fitting)})")
    chosen = CRITERIA.get(name)
    if kind not in chosen.kinds:
        raise PruneError(f"criterion {name} scores {', '.join(chosen.kinds)} only, not {kind}")
    return chosen


def _weights(evidence, group, per_unit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return sum(per_unit(o.lines(o.weight.double())).sum(1).cpu() for o in evidence.owned(group))


def _taylor(evidence, group) -> torch.Tensor:
    gradients = evidence.gradients
    return sum((o.lines(gradients[o.key].double()) * o.lines(o.weight.double())).abs().sum(1).cpu() for o in evidence.owned(group))


ALL_UNITS = ("heads", "ffn", "filters")
CRITERIA.add("l1", Criterion(lambda e, g: _weights(e, g, torch.abs), needs_data=False, kinds=ALL_UNITS))
CRITERIA.add("l2", Criterion(lambda e, g: _weights(e, g, torch.square).sqrt(), needs_data=False, kinds=ALL_UNITS))
CRITERIA.add("taylor", Criterion(_taylor, needs_data=True, kinds=ALL_UNITS))


def loss_gradients(model: nn.Module, params: dict[Hashable, nn.Parameter], losses: Iterable[Callable[[], torch.Tensor]]) -> dict[Hashable, torch.Tensor]:
    """``key -> dL/dW`` of ``params``, ``L = sum`` of the given loss terms (each already weighted,
    e.g. a batch's mean loss times its share of the examples). Only ``params`` take gradients
    meanwhile; every parameter's ``requires_grad`` is restored and no ``.grad`` is left behind."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for loss in losses:
                loss().backward()
        return {key: p.grad.detach().clone() for key, p in params.items()}
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)


def check_context(ctx, removes: str) -> None:
    """A structured method removes whole ``removes`` and ranks them itself: no N:M, no allocation."""
    if ctx.nm is not None:
        raise PruneError(f"method={ctx.options.name} removes whole {removes}; use pattern=unstructured")
    if ctx.layer_sparsity:
        raise PruneError(f"method={ctx.options.name} ranks its own {removes}; use allocation=uniform (and method.allocation=per_layer|global)")


def prune_structured(ctx, removes: str, plan: Callable, apply: Callable, record: Callable, physically: bool):
    """The one skeleton: check the context, ``plan(ctx)`` (score, rank, choose: nothing changes),
    ``apply(model, plan, physically)`` (remove, or zero), ``record(ctx, plan)`` into ``ctx.stats``."""
    check_context(ctx, removes)
    chosen = plan(ctx)
    apply(ctx.model, chosen, physically)
    record(ctx, chosen)
    log.info("%s: removed %s of %s %s per group", ctx.options.name, [len(r) for r in chosen.removed], chosen.sizes(), removes)
    return chosen
