"""Execution backends: the same pruned model, its linears run by different kernels.

Each backend turns a *copy* of the pruned model into the module to time, or raises
:class:`BackendSkipped` with the reason it cannot run here (the benchmark's row for it then
says ``skipped: <reason>`` and the other backends still run):

* ``dense``: the model as it is — zeros multiplied by dense kernels (the paradox baseline);
* ``csr`` / ``bsr``: Linear weights with at least ``sparse_min_sparsity`` zeros stored as
  ``torch.sparse_csr`` / ``torch.sparse_bsr`` (``bsr_block`` x ``bsr_block`` tiles) and
  multiplied as ``(W X^T)^T`` with ``torch.sparse.mm`` (MKL on CPU, cuSPARSE on CUDA); Conv2d stays dense;
* ``semi_structured``: 2:4 Linear weights as ``torch.sparse.to_sparse_semi_structured``
  (CUTLASS / cuSPARSELt: CUDA, compute capability >= 8.0, fp16 / bf16);
* ``structured``: all-zero heads and FFN neurons physically removed
  (:func:`prunecli.structured.compact.compact`) — a smaller dense model.

``compile=true`` wraps every backend in ``torch.compile``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.benchmark.flops import is_24
from prunecli.errors import PruneError
from prunecli.registry import Registry


class BackendSkipped(Exception):
    """This backend cannot run this model here; the message says why."""


@dataclass
class BackendSettings:
    """What the conversions need to know (from the ``benchmark`` config and the run)."""

    device: torch.device
    dtype: torch.dtype
    sparse_min_sparsity: float = 0.1
    bsr_block: int = 16
    capability: tuple[int, int] | None = None  # CUDA compute capability (None: no CUDA device)


def backend_settings(loaded: Any, options: Any, sparse_min_sparsity: float = BackendSettings.sparse_min_sparsity) -> BackendSettings:
    """The settings of this run: its model's device and dtype, the ``benchmark`` options' ``bsr_block``,
    and the fraction of zeros from which a whole-model benchmark converts a Linear (``sparse_min_sparsity``)."""
    device = loaded.device
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return BackendSettings(device, loaded.dtype, float(sparse_min_sparsity), options.bsr_block, capability)


# A backend takes (a copy of the pruned model, settings) and returns the module to time.
BACKENDS: Registry[Callable[[nn.Module, BackendSettings], nn.Module]] = Registry("benchmark backend")


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b`` for a CSR / BSR ``W``, computed as ``(W X^T)^T``: sparse x dense is the kernel
    MKL / cuSPARSE provide (``F.linear`` on a CSR weight takes a ~8x slower transposed path on CPU)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.sparse.mm(weight, flat.t()).t()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` in a sparse layout (CSR, BSR: :func:`sparse_linear`; 2:4
    semi-structured: ``F.linear``, which that tensor subclass implements)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.layout = layout
        self.out_features = weight.shape[0]
        self.in_features = weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "2:4":
            return F.linear(x, self.weight, self.bias)
        return sparse_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"


def sparse_linears(model: nn.Module, min_sparsity: float) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers with at least ``min_sparsity`` of their weights exactly zero."""
    chosen = {}
    for name, module in model.named_modules():
        if type(module) is nn.Linear and module.weight.numel():
            zeros = module.weight.numel() - int(torch.count_nonzero(module.weight))
            if zeros / module.weight.numel() >= min_sparsity:
                chosen[name] = module
    return chosen


@torch.no_grad()
def replace_linears(model: nn.Module, layers: dict[str, nn.Linear], convert: Callable[[torch.Tensor], torch.Tensor], layout: str) -> nn.Module:
    for name, layer in layers.items():
        bias = None if layer.bias is None else layer.bias.detach().clone()
        model.set_submodule(name, SparseLinear(convert(layer.weight.detach()), bias, layout))
    return model


def require_sparse_layers(model: nn.Module, settings: BackendSettings) -> dict[str, nn.Linear]:
    layers = sparse_linears(model, settings.sparse_min_sparsity)
    if not layers:
        raise BackendSkipped(f"no Linear layer has >= {settings.sparse_min_sparsity:.0%} zeros (benchmark.sparse_min_sparsity)")
    return layers


@BACKENDS.register("dense")
def dense(model: nn.Module, settings: BackendSettings) -> nn.Module:
    return model


def cpu_sparse_problem(layout: str, settings: BackendSettings) -> str | None:
    """Why CSR / BSR matmul cannot run here (None: it can)."""
    if settings.dtype != torch.float32 and settings.device.type == "cpu":
        return f"{layout.upper()} matmul on CPU needs fp32 weights (model.dtype=fp32)"
    return None


def refuse(problem: str | None) -> None:
    if problem:
        raise BackendSkipped(problem)


@BACKENDS.register("csr")
def csr(model: nn.Module, settings: BackendSettings) -> nn.Module:
    refuse(cpu_sparse_problem("csr", settings))
    return replace_linears(model, require_sparse_layers(model, settings), lambda w: w.to_sparse_csr(), "csr")


@BACKENDS.register("bsr")
def bsr(model: nn.Module, settings: BackendSettings) -> nn.Module:
    block = settings.bsr_block
    refuse(cpu_sparse_problem("bsr", settings))
    layers = require_sparse_layers(model, settings)
    misfits = [name for name, layer in layers.items() if layer.weight.shape[0] % block or layer.weight.shape[1] % block]
    if misfits:
        raise BackendSkipped(f"bsr_block={block} does not divide the shape of {misfits[0]} {tuple(layers[misfits[0]].weight.shape)}")
    return replace_linears(model, layers, lambda w: w.to_sparse_bsr((block, block)), f"bsr{block}")


def semi_structured_problem(settings: BackendSettings) -> str | None:
    """Why 2:4 semi-structured kernels cannot run here (None: they can)."""
    if settings.device.type != "cuda" or settings.capability is None:
        return "2:4 semi-structured kernels need a CUDA GPU (this run is on " + settings.device.type + ")"
    if settings.capability < (8, 0):
        return f"2:4 semi-structured kernels need compute capability >= 8.0 (this GPU: {settings.capability[0]}.{settings.capability[1]})"
    if settings.dtype not in (torch.float16, torch.bfloat16):
        return f"2:4 semi-structured kernels need fp16 or bf16 weights (model.dtype is {str(settings.dtype).removeprefix('torch.')}: set model.dtype=fp16)"
    return None


def to_semi_structured(weight: torch.Tensor) -> torch.Tensor:
    """A 2:4 weight as ``torch.sparse.to_sparse_semi_structured`` (CUTLASS / cuSPARSELt); BackendSkipped
    where that kernel's shape / dtype limits refuse it."""
    from torch.sparse import to_sparse_semi_structured

    try:
        return to_sparse_semi_structured(weight)
    except (RuntimeError, ValueError) as error:
        raise BackendSkipped(f"to_sparse_semi_structured failed: {str(error).splitlines()[0]}") from None


@BACKENDS.register("semi_structured")
def semi_structured(model: nn.Module, settings: BackendSettings) -> nn.Module:
    refuse(semi_structured_problem(settings))
    layers = {name: layer for name, layer in sparse_linears(model, 0.5).items() if is_24(layer.weight)}
    if not layers:
        raise BackendSkipped("no Linear layer is 2:4 sparse (run with pattern=2:4)")
    return replace_linears(model, layers, to_semi_structured, "2:4")


@BACKENDS.register("structured")
def structured(model: nn.Module, settings: BackendSettings) -> nn.Module:
    from prunecli.structured.compact import compact

    if getattr(model, "config", None) is None:
        raise BackendSkipped("structured compaction removes transformer heads / FFN neurons; a CNN's filters are removed by method=filters")
    try:
        removed = compact(model)
    except PruneError as error:
        raise BackendSkipped(f"structured compaction: {error}") from None
    if not any(removed.values()):
        raise BackendSkipped("no head or FFN neuron is entirely zero (only head_mask zeroes whole units; after ffn/heads/layers the dense row is the smaller model)")
    return model


def build(name: str, model: nn.Module, settings: BackendSettings, compile_model: bool = False) -> nn.Module:
    """A copy of ``model`` converted for backend ``name`` (optionally ``torch.compile``-d).

    ``dense`` is a copy too: a structured method leaves the pruned model's new (sliced) weights
    scattered among freed memory, and timing that against the freshly copied unpruned model
    measured the allocation, not the shapes (~4% slower on SmolLM2 FFN-50%); every timed
    candidate is a fresh copy, laid out alike."""
    convert = BACKENDS.get(name)
    converted = convert(copy.deepcopy(model), settings)
    if compile_model:
        converted = torch.compile(converted)
    return converted
