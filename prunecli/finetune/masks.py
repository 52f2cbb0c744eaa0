"""Keep pruned weights exactly zero while the model trains.

:class:`MaskKeeper` records the zero mask of every pruned layer (its weight, and the bias
entries of output units whose whole weight row is zero, i.e. removed units). Two guards:

1. a gradient hook on each masked parameter zeroes the gradient of masked entries, so
   clipping norms and optimizer statistics see only live weights;
2. :meth:`apply` re-zeroes masked entries after every optimizer step, so AdamW momentum
   (non-zero for weights pruned mid-training by a schedule) or weight decay cannot resurrect
   them.

When a schedule prunes more, :meth:`record` re-reads the masks and :meth:`clear_state` zeroes
the optimizer state of newly masked entries.
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.methods.targets import weight_matrix


class MaskKeeper:
    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.masks: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}  # key -> (parameter, mask, True = pruned)
        self.handles: list = []
        self.weight_numel = sum(weight_matrix(m).numel() for m in layers.values())
        self.weight_zeros = 0
        self.record()

    def record(self) -> None:
        """(Re-)read the masks from the current zeros."""
        self.remove_hooks()
        self.masks.clear()
        self.weight_zeros = 0
        for name, module in self.layers.items():
            weight = module.weight
            mask = weight.detach() == 0
            self.weight_zeros += int(mask.sum())
            if mask.any():
                self.masks[f"{name}.weight"] = (weight, mask)
            bias = getattr(module, "bias", None)
            if bias is not None:
                removed_units = (weight_matrix(module) == 0).all(dim=1) & (bias.detach() == 0)
                if removed_units.any():
                    self.masks[f"{name}.bias"] = (bias, removed_units)

    def register_hooks(self) -> None:
        self.remove_hooks()
        for parameter, mask in self.masks.values():
            if parameter.requires_grad:
                self.handles.append(parameter.register_hook(lambda grad, mask=mask: grad.masked_fill(mask, 0)))

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @torch.no_grad()
    def apply(self) -> None:
        for parameter, mask in self.masks.values():
            parameter.masked_fill_(mask, 0)

    @torch.no_grad()
    def clear_state(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero the optimizer state (AdamW moments) of masked entries."""
        if optimizer is None:
            return
        for parameter, mask in self.masks.values():
            for value in optimizer.state.get(parameter, {}).values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    value.masked_fill_(mask, 0)

    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights that are masked."""
        return self.weight_zeros / self.weight_numel if self.weight_numel else 0.0

    def mismatches(self) -> list[str]:
        """Masked entries that are not zero now (should be none)."""
        return [key for key, (parameter, mask) in self.masks.items() if bool(parameter.detach()[mask].ne(0).any())]

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {key: mask.clone() for key, (_, mask) in self.masks.items()}
