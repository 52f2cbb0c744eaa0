"""Pruning methods: one function per method over a shared :class:`PruneContext`.

``METHODS.get(cfg.method.name)(ctx)`` prunes ``ctx.layers`` of ``ctx.model`` in place.
Data-aware methods (``calibration: true`` in their config) get the calibration windows in
``ctx.calibration``.
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
    calibration: torch.Tensor | None = field(repr=False, default=None)  # (nsamples, seqlen) token windows
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # per-layer targets (allocation)
    stats: dict = field(default_factory=dict)  # method-specific figures for metrics.json
    # Set by the pipeline: the LoadedModel (task, example input: method=filters traces with it),
    # the run's evaluator and run directory (method=sensitivity evaluates and writes files).
    loaded: Any = field(repr=False, default=None)
    evaluate: Callable[[nn.Module], dict] | None = field(repr=False, default=None)
    run_dir: Any = None

    def sparsity_of(self, name: str) -> float:
        """The target of one layer: its allocated sparsity, else the global one."""
        return self.layer_sparsity.get(name, self.sparsity)


METHODS: Registry[Callable[[PruneContext], None]] = Registry("method")


@METHODS.register("dense")
def dense(ctx: PruneContext) -> None:
    """No pruning: the baseline every method is compared against."""


# Register the methods.
from prunecli.methods import magnitude, sparsegpt, wanda  # noqa: E402,F401
from prunecli.structured import methods as _structured  # noqa: E402,F401  (heads, ffn, layers, head_mask)
from prunecli.structured.cnn import methods as _cnn  # noqa: E402,F401  (filters)
from prunecli.structured import sensitivity as _sensitivity  # noqa: E402,F401  (sensitivity)
