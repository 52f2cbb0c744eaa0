"""FLAP bias compensation (An et al. 2024): keep the mean contribution of removed inputs.

Removing input columns ``R`` of an output projection ``y = W x + b`` drops ``W[:, R] x_R``;
its mean over the calibration tokens is moved into the bias:

    b' = b + W[:, R] @ mean_t(x_R)

A layer without a bias gets one (marked ``_prunecli_added_bias`` so a saved model records it).
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.methods.targets import weight_matrix
from prunecli.structured.groups import BlockGroups
from prunecli.structured.importance import Evidence


@torch.no_grad()
def bias_deltas(groups: BlockGroups, block: nn.Module, removed: torch.Tensor, evidence: Evidence) -> dict[str, torch.Tensor]:
    """``{output projection path: W[:, R] @ mean(x_R)}`` for the removed units of one block."""
    deltas = {}
    for coupling in (c for c in groups.couplings if c.role == "out"):
        columns = coupling.index[removed].reshape(-1)
        if len(columns) == 0:
            continue
        weight = weight_matrix(block.get_submodule(coupling.path))
        mean = evidence.out_moments[(groups.block, coupling.path)].mean().to(weight.device)
        deltas[coupling.path] = (weight[:, columns].double() @ mean[columns]).to(weight.dtype)
    return deltas


@torch.no_grad()
def add_to_bias(module: nn.Module, delta: torch.Tensor) -> None:
    """``bias += delta``, creating a zero bias first if the layer has none."""
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros_like(delta))
        module._prunecli_added_bias = True
    module.bias += delta.to(module.bias.dtype)
