"""``finetune=lora``: low-rank adapters on the pruned layers (peft), merged back after training.

Merging adds a dense ``B @ A * scale`` to each weight, which would fill the pruned entries; the
recorded masks are re-applied right after the merge and verified (every masked entry zero),
so the merged model has exactly the sparsity it was trained at. The part of each adapter that
fell on pruned weights is lost by the re-masking: ``val_*_after_merge`` in metrics.json shows
what that costs next to the last unmerged validation figure.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from torch import nn

from prunecli.errors import PruneError

INSTALL = "finetune=lora needs peft, which is not installed: pip install 'prunecli[lora]' (or pip install 'peft>=0.10')"


def check_installed() -> None:
    if importlib.util.find_spec("peft") is None:
        raise PruneError(INSTALL)


def wrap(model: nn.Module, layer_names: list[str], options: Any) -> nn.Module:
    """The peft model with adapters on exactly ``layer_names`` (the base weights frozen)."""
    check_installed()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(options.r), lora_alpha=int(options.alpha), lora_dropout=float(options.dropout), bias="none",
        target_modules="^(" + "|".join(re.escape(name) for name in layer_names) + ")$",
    )
    return get_peft_model(model, config)


def merge(peft_model: nn.Module, base: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and drop the peft wrappers (in place)."""
    merged = peft_model.merge_and_unload()
    if merged is not base:
        raise PruneError("peft merge_and_unload returned a new model object; cannot keep the pruned layers")
    for parameter in merged.parameters():
        parameter.requires_grad_(True)
    return merged
