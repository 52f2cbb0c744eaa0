"""Structured pruning as a mask: zero the chosen units' slices, shapes unchanged.

The masked twin of :func:`prunecli.structured.remove.remove_units`: same heads / neurons,
same logits (up to float summation order), no speed-up. Used by ``method=head_mask`` for the
masked-vs-removed contrast and by the tests as the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.methods.targets import weight_matrix
from prunecli.structured.groups import BlockGroups


@torch.no_grad()
def mask_units(block: nn.Module, groups: BlockGroups, units: torch.Tensor) -> None:
    """Zero every slice of ``units``: rows (and their bias entries) or columns."""
    for path, axis, index in groups.slices(units):
        layer = block.get_submodule(path)
        weight = weight_matrix(layer)
        if axis == 0:
            weight[index] = 0
            if layer.bias is not None:
                layer.bias[index] = 0
        else:
            weight[:, index] = 0
