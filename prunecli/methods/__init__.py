"""Pruning methods: one :class:`Method` descriptor per method over a shared :class:`PruneContext`.

A method module defines its prune function, its typed options (a frozen
:class:`~prunecli.options.Options` dataclass) and registers one descriptor::

    register(Method("wanda", wanda, WandaOptions, effect=ZEROS, calibration=True, reprune=reprune_wanda))

The pipeline asks the descriptor everything: whether calibration windows are needed, whether
the method zeroes weights or reshapes the model (then the pruned layers are read again), how a
schedule re-applies it, and what to check of the loaded model. ``METHODS.get(name).prune(ctx)``
prunes ``ctx.layers`` of ``ctx.model`` in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from prunecli.models.offload import Offload
from prunecli.options import Options, at_least, parse
from prunecli.registry import Registry

NOTHING, ZEROS, SHAPES = "nothing", "zeros", "shapes"  # what a method does to the model


@dataclass(frozen=True)
class MethodOptions(Options):
    """A method's options (the ``method`` config node; ``name``: the registered method)."""


@dataclass(frozen=True)
class CalibratedOptions(MethodOptions):
    """Options of a method that runs calibration forwards: windows per forward pass (same statistics, faster)."""

    calibration_batch_size: int = 8

    def check(self, prefix: str) -> None:
        at_least(self, prefix, "calibration_batch_size", 1)


def calibration_batch_size(options: MethodOptions) -> int:
    """The method's windows per calibration forward, or the default for a method without calibration (magnitude)."""
    return (options if isinstance(options, CalibratedOptions) else CalibratedOptions()).calibration_batch_size


@dataclass(frozen=True)
class Method:
    """Everything the pipeline may ask of a method.

    ``calibration``: True / False, or a function of the options (structured criteria).
    ``offload``: True / False, or a function of the options: the method reads and changes weights
    only block by block, through :func:`~prunecli.methods.layerwise.prune_layerwise` or
    :func:`~prunecli.methods.layerwise.onloaded_layers`, so it runs with ``model.offload=cpu|disk``.
    ``effect``: ``nothing`` (a baseline or an analysis: recorded with sparsity_target 0),
    ``zeros`` (shapes unchanged) or ``shapes`` (the model shrinks; its layers are read again).
    ``check_model(options, sparsity, model)``: refuse, right after loading, what these shapes
    cannot honour. ``reprune(ctx, state)``: prune ``ctx.layers`` to ``ctx.sparsity`` among the
    still-nonzero weights, for schedules (``state`` persists between a schedule's steps); None:
    schedules refuse the method.
    """

    name: str
    prune: Callable[["PruneContext"], None]
    options: type[MethodOptions] = MethodOptions
    effect: Literal["nothing", "zeros", "shapes"] = ZEROS
    calibration: bool | Callable[[Any], bool] = False
    check_model: Callable[[Any, float, nn.Module], None] | None = None
    reprune: Callable[["PruneContext", dict], None] | None = None
    refittable: bool = False
    offload: bool | Callable[[Any], bool] = False

    def parse(self, node: Any) -> MethodOptions:
        """The ``method`` config node as this method's typed options."""
        return parse(self.options, node, "method")

    def needs_calibration(self, options: MethodOptions) -> bool:
        return self.calibration(options) if callable(self.calibration) else self.calibration

    def runs_offloaded(self, options: MethodOptions) -> bool:
        return self.offload(options) if callable(self.offload) else self.offload

    @property
    def prunes(self) -> bool:
        return self.effect != NOTHING

    @property
    def reshapes(self) -> bool:
        return self.effect == SHAPES


@dataclass
class PruneContext:
    """What a method may use: the model, the layers it was asked to prune, and the settings.

    ``options`` is the method's typed options; a config node or mapping (with ``name``) given
    here is parsed by the method's descriptor.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    sparsity: float
    nm: tuple[int, int] | None  # N:M pattern, or None for unstructured
    options: Any  # the method's MethodOptions
    device: torch.device
    calibration: torch.Tensor | None = field(repr=False, default=None)  # (nsamples, seqlen) token windows
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # per-layer targets (allocation)
    stats: dict = field(default_factory=dict)  # method-specific figures for metrics.json
    example_input: tuple[tuple, dict] | None = field(repr=False, default=None)  # (args, kwargs) of one forward (method=filters traces with it)
    offload: Offload | None = field(repr=False, default=None)  # brings blocks to ``device`` (model.offload); None: all there

    def __post_init__(self) -> None:
        if self.offload is None:
            self.offload = Offload(self.model, self.device)
        if not isinstance(self.options, MethodOptions):
            self.options = METHODS.get(self.options["name"]).parse(self.options)

    def sparsity_of(self, name: str) -> float:
        """The target of one layer: its allocated sparsity, else the global one."""
        return self.layer_sparsity.get(name, self.sparsity)


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` under its name."""
    return METHODS.add(method.name, method)


def dense(ctx: PruneContext) -> None:
    """No pruning: the baseline every method is compared against."""


register(Method("dense", dense, effect=NOTHING, offload=True))


def _import_methods() -> None:
    """Register every method: each module of this package (a new method is one file here, found
    without an edit to this list) and the structured ones, which live beside their machinery."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for module in ("prunecli.structured.methods", "prunecli.structured.cnn.methods"):
        importlib.import_module(module)


_import_methods()
