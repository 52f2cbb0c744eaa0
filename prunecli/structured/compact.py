"""Turn zeroed structures into removed ones: the "masked -> physically smaller" step.

A unit (attention head / KV group / FFN neuron, :mod:`groups`) whose every coupled slice is
zero — weight rows with their bias entries, and output-projection columns — contributes
nothing to the block's output, so removing it leaves the logits unchanged. This is how a
``head_mask`` run (or any pruning that happens to zero whole structures) is benchmarked as
the smaller dense model it could be (``benchmark.backends=[structured]``).
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.methods.targets import weight_matrix
from prunecli.models.layout import blocks_of
from prunecli.structured.groups import GROUPS, BlockGroups, family_of
from prunecli.structured.remove import remove_units, sync_config

# Removed in this order: whole KV groups first, then single query heads, then FFN neurons.
UNIT_KINDS = {"kv_groups": ("heads", "kv_groups"), "query_heads": ("heads", "query_heads"), "ffn": ("ffn", "")}


def zero_units(block: nn.Module, groups: BlockGroups) -> torch.Tensor:
    """Indices of the units of ``groups`` whose every slice is exactly zero."""
    if groups.units == 0:
        return torch.empty(0, dtype=torch.long)
    zero = torch.ones(groups.units, dtype=torch.bool)
    for coupling in groups.couplings:
        layer = block.get_submodule(coupling.path)
        weight = weight_matrix(layer)
        index = coupling.index.to(weight.device)
        sliced = weight[index] if coupling.axis == 0 else weight[:, index].transpose(0, 1)  # (units, width, other)
        unit_zero = sliced.reshape(groups.units, -1).eq(0).all(dim=1)
        if coupling.axis == 0 and getattr(layer, "bias", None) is not None:
            unit_zero &= layer.bias[index].reshape(groups.units, -1).eq(0).all(dim=1)
        zero &= unit_zero.cpu()
    return zero.nonzero().reshape(-1)


@torch.no_grad()
def compact(model: nn.Module) -> dict[str, int]:
    """Remove every all-zero KV group, then query head, then FFN neuron; return the counts removed."""
    family = family_of(model)
    _, blocks = blocks_of(model)
    removed = dict.fromkeys(UNIT_KINDS, 0)
    for index, block in enumerate(blocks):
        for name, (kind, gqa) in UNIT_KINDS.items():
            groups = GROUPS[kind](family, block, index, gqa)
            if name == "query_heads" and groups.kv_heads.shape[1]:  # MHA: a head is its own KV group, done above
                continue
            units = zero_units(block, groups)
            remove_units(block, family, groups, units)
            removed[name] += len(units)
    sync_config(model)
    return removed
