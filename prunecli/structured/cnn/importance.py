"""Filter criteria: one score per channel of a :class:`~prunecli.structured.cnn.graph.ChannelGroup`.

A channel's *filters* are the weight rows that write it: the output filter of every conv that
produces the group (several in a residual group) and the filter of every depthwise conv on it
(``ChannelGroup.filters``), each flattened. The lowest scores go first.

* ``l1``: ``sum |w|`` over the channel's filters; ``l2``: ``sqrt(sum w^2)`` (Li et al. 2017);
* ``bn_gamma``: ``sum |gamma|`` of the BatchNorms on the channel (Network Slimming, Liu et al. 2017);
* ``taylor``: ``sum |g * w|`` over the filters, ``g`` the gradient of the mean cross-entropy over
  the calibration images (Molchanov et al. 2019);
* ``geometric_median`` (FPGM, He et al. 2019): the channel's filters concatenated into one
  vector ``x_c``; score ``sum_c' ||x_c - x_c'||_2``: the filters closest to the geometric
  median of the layer (smallest total distance to the others) are the most replaceable.

Biases are not part of a filter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.errors import PruneError
from prunecli.registry import Registry
from prunecli.structured.cnn.graph import ChannelGraph, ChannelGroup


def filter_rows(model: nn.Module, group: ChannelGroup, tensors: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The group's filters as ``(channels, k)`` fp64 matrices, one per filter-owning module.

    ``tensors``: use these ``name -> tensor`` (e.g. gradients) instead of the weights.
    """
    rows = []
    for name, offset in group.filters:
        weight = tensors[name] if tensors is not None else model.get_submodule(name).weight.detach()
        rows.append(weight.reshape(weight.shape[0], -1)[offset: offset + group.size].double().cpu())
    return rows


class Evidence:
    """What data-aware criteria need, computed once: gradients of the CE loss on the calibration images."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, calibration, batch_size: int, device: torch.device):
        self.model, self.graph, self.calibration = model, graph, calibration
        self.batch_size, self.device = batch_size, device

    @cached_property
    def gradients(self) -> dict[str, torch.Tensor]:
        """``module -> dL/dW`` for every filter-owning module, L = mean cross-entropy of the calibration batch."""
        if self.calibration is None:
            raise PruneError("criterion taylor needs calibration images (none were given)")
        images, labels = self.calibration
        names = sorted({name for g in self.graph.groups for name, _ in g.filters})
        params = {name: self.model.get_submodule(name).weight for name in names}
        flags = {p: p.requires_grad for p in self.model.parameters()}
        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in params.values():
                p.requires_grad_(True)
                p.grad = None
            dtype = next(iter(params.values())).dtype
            with torch.enable_grad():
                for x, y in zip(torch.split(images, self.batch_size), torch.split(labels, self.batch_size)):
                    logits = self.model(x.to(device=self.device, dtype=dtype))
                    loss = F.cross_entropy(logits.float(), y.to(self.device)) * (len(x) / len(images))
                    loss.backward()
            return {name: p.grad.detach().clone() for name, p in params.items()}
        finally:
            for p, flag in flags.items():
                p.grad = None
                p.requires_grad_(flag)


@dataclass(frozen=True)
class Criterion:
    score: Callable[[nn.Module, ChannelGroup, Evidence], torch.Tensor]  # -> (channels,) fp64
    needs_data: bool


CRITERIA: Registry[Criterion] = Registry("filter criterion")


def _l1(model: nn.Module, group: ChannelGroup, evidence: Evidence) -> torch.Tensor:
    return sum(rows.abs().sum(1) for rows in filter_rows(model, group))


def _l2(model: nn.Module, group: ChannelGroup, evidence: Evidence) -> torch.Tensor:
    return sum(rows.pow(2).sum(1) for rows in filter_rows(model, group)).sqrt()


def _bn_gamma(model: nn.Module, group: ChannelGroup, evidence: Evidence) -> torch.Tensor:
    gammas = [model.get_submodule(name).weight for name, _ in group.norms if model.get_submodule(name).weight is not None]
    if not gammas:
        raise PruneError(f"criterion bn_gamma: no affine BatchNorm follows the filters of {group.name} (use l1, l2, taylor or geometric_median)")
    offsets = [offset for name, offset in group.norms if model.get_submodule(name).weight is not None]
    return sum(g.detach()[o: o + group.size].double().abs().cpu() for g, o in zip(gammas, offsets))


def _taylor(model: nn.Module, group: ChannelGroup, evidence: Evidence) -> torch.Tensor:
    grads = filter_rows(model, group, evidence.gradients)
    return sum((g * w).abs().sum(1) for g, w in zip(grads, filter_rows(model, group)))


def _geometric_median(model: nn.Module, group: ChannelGroup, evidence: Evidence) -> torch.Tensor:
    filters = torch.cat(filter_rows(model, group), dim=1)
    return torch.cdist(filters, filters).sum(1)


CRITERIA.register("l1")(Criterion(_l1, needs_data=False))
CRITERIA.register("l2")(Criterion(_l2, needs_data=False))
CRITERIA.register("bn_gamma")(Criterion(_bn_gamma, needs_data=False))
CRITERIA.register("taylor")(Criterion(_taylor, needs_data=True))
CRITERIA.register("geometric_median")(Criterion(_geometric_median, needs_data=False))


def scores(criterion: str, model: nn.Module, groups: list[ChannelGroup], evidence: Evidence) -> list[torch.Tensor]:
    """One fp64 CPU score per channel of every group."""
    chosen = CRITERIA.get(criterion)
    return [chosen.score(model, group, evidence).reshape(-1) for group in groups]
