"""Which weight matrices a method touches: ``targets`` / ``ignore`` regexes over module names.

A *prunable layer* is an ``nn.Linear``, a GPT-2 ``Conv1D`` (whose weight is stored
transposed, ``(in, out)``) or an ``nn.Conv2d`` (weight ``(out, in/groups, kh, kw)``).
:func:`weight_matrix` always returns the ``(out, in)`` view (a conv's filters flattened), so
methods can reason in one orientation and write through the view.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
from torch import nn

from prunecli.errors import PruneError

# Named presets for ``targets``; a plain list of regexes is accepted as well.
TARGET_PRESETS: dict[str, list[str]] = {
    "all": [r".*"],
    "attention": [r"(^|\.)(self_attn|attn|attention)\."],
    "ffn": [r"(^|\.)(mlp|ffn|feed_forward)\.", r"\.fc[12]$", r"\.intermediate\.dense$", r"\.layer\.\d+\.output\.dense$"],
    "encoder": [r"(^|\.)encoder\."],
}


def is_prunable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D, nn.Conv2d))


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as an ``(out_features, in_features)`` tensor (a view for ``Conv1D``)."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Conv2d):
        return module.weight.data.view(module.weight.shape[0], -1)
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


def compile_patterns(spec: str | Sequence[str] | None) -> list[re.Pattern]:
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec not in TARGET_PRESETS:
            raise PruneError(f"unknown targets preset {spec!r} (choose from: {', '.join(TARGET_PRESETS)}, or a list of regexes)")
        spec = TARGET_PRESETS[spec]
    try:
        return [re.compile(str(pattern)) for pattern in spec]
    except re.error as err:
        raise PruneError(f"invalid targets/ignore regex {err.pattern!r}: {err}") from None


def matches(name: str, patterns: Iterable[re.Pattern]) -> bool:
    return any(pattern.search(name) for pattern in patterns)


def select_layers(model: nn.Module, targets: str | Sequence[str], ignore: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Prunable layers whose name matches a ``targets`` pattern and no ``ignore`` pattern, in module order."""
    wanted, unwanted = compile_patterns(targets), compile_patterns(list(ignore or []))
    layers = {
        name: module
        for name, module in model.named_modules()
        if is_prunable(module) and matches(name, wanted) and not matches(name, unwanted)
    }
    if not layers:
        raise PruneError(f"targets={targets} ignore={list(ignore or [])} match no Linear/Conv1D/Conv2d layer of {type(model).__name__}")
    return layers
