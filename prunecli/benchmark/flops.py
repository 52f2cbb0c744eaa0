"""Theoretical FLOPs of one forward pass, dense and effective.

``dense`` counts every multiply-add of the model as it is shaped (``torch.utils.flop_counter``:
2 per multiply-add of every matmul and convolution, attention ``QK^T`` and ``AV`` over the full
``seq x seq`` score matrix). ``effective`` is what a kernel that skips zeros would do:
for each Linear / Conv2d / Conv1D, ``2 * positions * (numel - kept)`` is taken off, where
``positions`` is the number of output positions it computed (tokens, or batch x H_out x W_out)
and ``kept`` the weights the kernel multiplies (nonzeros for CSR, whole nonzero blocks for BSR,
half for 2:4 semi-structured).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunecli.methods.targets import is_prunable, weight_matrix


def attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """``QK^T`` and ``AV`` of a fused attention kernel over the full score matrix, for every query
    head: ``4 b h_q s_q s_k d``. With GQA a key/value head serves its whole group of query heads,
    so K/V are counted as if repeated to ``h_q`` heads (older PyTorch formulas reject GQA shapes)."""
    batch, heads = query.shape[:2]
    return sdpa_flop_count(query.shape, (batch, heads, *key.shape[2:]), (batch, heads, *value.shape[2:]))


attention_flops._get_raw = True  # called with the tensors themselves
# The fused SDPA kernels, CPU flash attention included (PyTorch's counter has no formula for it).
ATTENTION_KERNELS = {getattr(torch.ops.aten, name): attention_flops for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention") if hasattr(torch.ops.aten, name)}


@dataclass
class FlopCount:
    """``dense`` FLOPs of one forward, and ``positions[name]`` per weight layer (for :meth:`effective`)."""

    dense: int
    positions: dict[str, int] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def effective(self, kept: Callable[[torch.Tensor], int], layers: set[str]) -> int:
        """Dense FLOPs minus the multiply-adds a sparse kernel skips in ``layers`` (``kept`` = what it multiplies)."""
        skipped = sum(2 * self.positions[name] * (weight.numel() - kept(weight)) for name, weight in self.weights.items() if name in layers)
        return self.dense - skipped


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear / Conv1D (GPT-2) / Conv2d modules with a dense (strided) weight."""
    return {name: module for name, module in model.named_modules()
            if is_prunable(module) and module.weight.layout == torch.strided}


@torch.no_grad()
def count_flops(model: nn.Module, args: tuple, kwargs: dict) -> FlopCount:
    """Run one forward under a FLOP counter, recording every weight layer's output positions."""
    layers = weight_layers(model)
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs, output):
            # tokens for Linear / Conv1D, N x H_out x W_out for Conv2d
            positions[name] = positions.get(name, 0) + output.numel() // weight_matrix(module).shape[0]
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        with FlopCounterMode(display=False, custom_mapping=ATTENTION_KERNELS) as counter:
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    weights = {name: weight_matrix(module).detach() for name, module in layers.items() if name in positions}
    return FlopCount(counter.get_total_flops(), {name: positions[name] for name in weights}, weights)


def nonzeros(weight: torch.Tensor) -> int:
    """CSR: every nonzero is multiplied."""
    return int(torch.count_nonzero(weight))


def block_nonzeros(block: int) -> Callable[[torch.Tensor], int]:
    """BSR: every ``block x block`` tile with a nonzero is multiplied whole."""
    def kept(weight: torch.Tensor) -> int:
        matrix = weight.reshape(weight.shape[0], -1)
        rows, cols = matrix.shape
        if rows % block or cols % block:
            return matrix.numel()
        tiles = matrix.reshape(rows // block, block, cols // block, block).ne(0).any(dim=(1, 3))
        return int(tiles.sum()) * block * block
    return kept


def half_of_24(weight: torch.Tensor) -> int:
    """2:4 semi-structured: half of a layer in the 2:4 pattern is multiplied, else all of it."""
    return weight.numel() // 2 if is_24(weight) else weight.numel()


def is_24(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs of every row has at least 2 zeros."""
    matrix = weight.reshape(weight.shape[0], -1)
    if matrix.shape[1] % 4:
        return False
    return bool(matrix.reshape(matrix.shape[0], -1, 4).eq(0).sum(-1).ge(2).all())
