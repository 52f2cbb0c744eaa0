"""Pruning methods: one function per method over a shared :class:`PruneContext`.

``METHODS.get(cfg.method.name)(ctx)`` prunes ``ctx.layers`` of ``ctx.model`` in place.
Data-aware methods call ``ctx.calibration()``, which builds the calibration windows lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from prunecli.registry import Registry


@dataclass
class PruneContext:
    """What a method may use: the model, the layers it was asked to prune, and the settings."""

    model: nn.Module
    layers: dict[str, nn.Module]
    sparsity: float
    nm: tuple[int, int] | None  # N:M pattern, or None for unstructured
    options: Any  # the ``method`` config node
    device: torch.device
    calibration: Callable[[], torch.Tensor] = field(repr=False, default=lambda: torch.empty(0))
    stats: dict = field(default_factory=dict)  # method-specific figures for metrics.json


METHODS: Registry[Callable[[PruneContext], None]] = Registry("method")


@METHODS.register("dense")
def dense(ctx: PruneContext) -> None:
    """No pruning: the baseline every method is compared against."""


# Register the methods.
from prunecli.methods import magnitude  # noqa: E402,F401
