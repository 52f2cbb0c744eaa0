"""Filter criteria: one score per channel of a :class:`~prunecli.structured.cnn.graph.ChannelGroup`.

A channel's *filters* are the weight rows that write it: the output filter of every conv that
produces the group (several in a residual group) and the filter of every depthwise conv on it
(``ChannelGroup.filters``), each flattened (:meth:`Evidence.owned`). The lowest scores go first.
``l1``, ``l2`` and ``taylor`` are the shared weight criteria (:mod:`prunecli.structured.criteria`;
``taylor``'s loss: the mean cross-entropy over the calibration images). Only CNNs have:

* ``bn_gamma``: ``sum |gamma|`` of the BatchNorms on the channel (Network Slimming, Liu et al. 2017);
* ``geometric_median`` (FPGM, He et al. 2019): the channel's filters concatenated into one
  vector ``x_c``; score ``sum_c' ||x_c - x_c'||_2``: the filters closest to the geometric
  median of the layer (smallest total distance to the others) are the most replaceable.

Biases are not part of a filter here.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.errors import PruneError
from prunecli.structured.cnn.graph import ChannelGraph, ChannelGroup
from prunecli.structured.criteria import CRITERIA, Criterion, Owned, criterion_for, loss_gradients


class Evidence:
    """What the criteria read: the model's filters and, computed once, the gradients of the CE loss
    on the calibration images."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, calibration, batch_size: int, device: torch.device):
        self.model, self.graph, self.calibration = model, graph, calibration
        self.batch_size, self.device = batch_size, device

    def owned(self, group: ChannelGroup) -> list[Owned]:
        """Each filter-owning module's rows of the group's channels, flattened to ``(channels, k)``."""
        return [Owned(name, self.model.get_submodule(name).weight.detach(), _filter_lines(offset, group.size))
                for name, offset in group.filters]

    @cached_property
    def gradients(self) -> dict[str, torch.Tensor]:
        """``module -> dL/dW`` for every filter-owning module, L = mean cross-entropy of the calibration batch."""
        if self.calibration is None:
            raise PruneError("criterion taylor needs calibration images (none were given)")
        images, labels = self.calibration
        names = sorted({name for g in self.graph.groups for name, _ in g.filters})
        params = {name: self.model.get_submodule(name).weight for name in names}
        dtype = next(iter(params.values())).dtype

        def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = self.model(x.to(device=self.device, dtype=dtype))
            return F.cross_entropy(logits.float(), y.to(self.device)) * (len(x) / len(images))

        batches = zip(torch.split(images, self.batch_size), torch.split(labels, self.batch_size))
        return loss_gradients(self.model, params, (lambda x=x, y=y: loss(x, y) for x, y in batches))


def _filter_lines(offset: int, size: int):
    def lines(weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(weight.shape[0], -1)[offset: offset + size]

    return lines


def _bn_gamma(evidence: Evidence, group: ChannelGroup) -> torch.Tensor:
    model = evidence.model
    gammas = [model.get_submodule(name).weight for name, _ in group.norms if model.get_submodule(name).weight is not None]
    if not gammas:
        raise PruneError(f"criterion bn_gamma: no affine BatchNorm follows the filters of {group.name} (use l1, l2, taylor or geometric_median)")
    offsets = [offset for name, offset in group.norms if model.get_submodule(name).weight is not None]
    return sum(g.detach()[o: o + group.size].double().abs().cpu() for g, o in zip(gammas, offsets))


def _geometric_median(evidence: Evidence, group: ChannelGroup) -> torch.Tensor:
    filters = torch.cat([o.lines(o.weight).double().cpu() for o in evidence.owned(group)], dim=1)
    return torch.cdist(filters, filters).sum(1)


CRITERIA.add("bn_gamma", Criterion(_bn_gamma, needs_data=False, kinds=("filters",)))
CRITERIA.add("geometric_median", Criterion(_geometric_median, needs_data=False, kinds=("filters",)))


def scores(criterion: str, groups: list[ChannelGroup], evidence: Evidence) -> list[torch.Tensor]:
    """One fp64 CPU score per channel of every group."""
    chosen = criterion_for(criterion, "filters")
    return [chosen.score(evidence, group).reshape(-1) for group in groups]
