"""Linear layers through oneDNN's fp32 matmul, for the layer-wise calibration passes on CPU (#19).

``y = x W^T + b``, as ``F.linear``, computed by oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel
inductor's CPU backend calls) instead of MKL's ``sgemm``, which ``F.linear`` calls on CPU. The MKL that
PyTorch ships runs its AVX2 code on AMD CPUs; oneDNN runs AVX-512 where the CPU has it. On the 2-core
AMD EPYC VM (Zen 4) one SmolLM2-135M block's two calibration passes ran 0.901x (0.872-0.950, 5 pairs) the
time with it, from packed weights (``python scripts/block_profile.py --batch 8 --linear``: the passes with MKL
and with oneDNN in alternation); there the floor's best-rate products at SmolLM2's shapes (``metrics.json``'s
``floor.matmul_gflops``) read 222-227 GFLOP/s with oneDNN from the packed weight, 213-220 from the plain one,
193-204 with MKL alone (``experiments/oneshot_llm/README.md``, "The change of 28b6ed7"). Both accumulate in
fp32 (oneDNN's fp32 math follows ``torch.get_float32_matmul_precision()``, ``highest`` by default, as MKL's
does), so results differ in summation order only, not to the bit.

:func:`calibration_linear` points the ``forward`` of a model's plain ``nn.Linear`` modules at
:func:`onednn_linear` for the duration of one block pass, on CPU (their hooks still run: only
``forward`` is replaced), each with a copy of its weight packed on the way in in oneDNN's blocked layout
(:func:`packed_weight`), which oneDNN otherwise reorders on every call: the same products to the bit, faster.
What it does not cover (another dtype or device, a non-contiguous input or weight, autograd) goes to
``F.linear`` unchanged; so does everything without oneDNN.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if ONEDNN_LINEAR is not None else None


def plain_fp32(tensor: torch.Tensor) -> bool:
    """A contiguous fp32 tensor on CPU: what oneDNN's fast path reads (a strided one takes its slow path)."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous()


def packable(weight: torch.Tensor) -> bool:
    """Whether oneDNN takes ``weight``: a :func:`plain_fp32` matrix."""
    return ONEDNN_LINEAR is not None and plain_fp32(weight) and weight.dim() == 2


def covered(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether oneDNN takes the product: a :func:`packable` weight, :func:`plain_fp32` input and bias, no autograd."""
    others = (x,) if bias is None else (x, bias)
    return (packable(weight) and all(plain_fp32(t) for t in others)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (weight, *others))))


@torch.no_grad()
def packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """A copy of ``weight`` in oneDNN's blocked layout (an opaque ``mkldnn`` tensor), which its product reads
    faster than a plain matrix it would reorder on every call; None where oneDNN does not take ``weight``."""
    return ONEDNN_PACK(weight) if ONEDNN_PACK is not None and packable(weight) else None


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b`` by oneDNN, no post-op (for operands :func:`covered`; ``weight`` plain or :func:`packed_weight`)."""
    return ONEDNN_LINEAR(x, weight, bias, "none", [], "")


def onednn_linear(module: nn.Linear, packed: torch.Tensor | None, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Linear.forward's name)
    """``module(input)``'s ``input W^T + b`` by oneDNN from ``packed``, the module's weight packed
    (:func:`packed_weight`), where :func:`covered`; else by ``F.linear``."""
    if packed is None or not covered(input, module.weight, module.bias):
        return F.linear(input, module.weight, module.bias)
    return onednn_product(input, packed, module.bias)


def plain_linears(model: nn.Module) -> list[nn.Linear]:
    """The modules whose forward is ``nn.Linear``'s own and not already replaced on the instance."""
    return [module for module in model.modules()
            if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and "forward" not in vars(module)]


@contextmanager
def calibration_linear(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``model``'s plain linear layers as :func:`onednn_linear` inside, on CPU, their weights packed on the way
    in (restored, and the packs dropped, on the way out). The packs are copies: nothing may write the weights
    inside (the layer-wise walk enters once per pass over a block's batches, before and after pruning it)."""
    if device.type != "cpu" or ONEDNN_LINEAR is None:
        yield
        return
    modules = plain_linears(model)
    for module in modules:
        module.forward = partial(onednn_linear, module, packed_weight(module.weight))
    try:
        yield
    finally:
        for module in modules:
            del module.forward
