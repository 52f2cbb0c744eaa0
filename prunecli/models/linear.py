"""Linear layers through oneDNN's fp32 matmul, for the layer-wise calibration passes on CPU (#19).

``y = x W^T + b``, as ``F.linear``, computed by oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel
inductor's CPU backend calls) instead of MKL's ``sgemm``, which ``F.linear`` calls on CPU. The MKL that
PyTorch ships runs its AVX2 code on AMD CPUs; oneDNN runs AVX-512 where the CPU has it. On the 2-core
AMD EPYC VM (Zen 4) one SmolLM2-135M block's two calibration passes ran 0.911x (0.890-0.929, 5 pairs) the
time with it (``python scripts/block_profile.py --batch 8 --linear``: the passes with MKL and with oneDNN
in alternation); there the floor's best-rate products at SmolLM2's shapes (``metrics.json``'s
``floor.matmul_gflops``) read 211-220 GFLOP/s with oneDNN, 193-204 with MKL alone. Both accumulate in
fp32 (oneDNN's fp32 math follows ``torch.get_float32_matmul_precision()``, ``highest`` by default, as MKL's
does), so results differ in summation order only, not to the bit.

:func:`calibration_linear` points the ``forward`` of a model's plain ``nn.Linear`` modules at
:func:`onednn_linear` for the duration of the block passes, on CPU (their hooks still run: only
``forward`` is replaced). What it does not cover (another dtype or device, a non-contiguous input or
weight, autograd) goes to ``F.linear`` unchanged; so does everything without oneDNN.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def covered(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether oneDNN takes the product: fp32 on CPU, contiguous operands (a strided input takes its slow
    path), no autograd."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (ONEDNN_LINEAR is not None and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
            and weight.dim() == 2 and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b`` by oneDNN, no post-op (for operands :func:`covered`)."""
    return ONEDNN_LINEAR(x, weight, bias, "none", [], "")


def onednn_linear(module: nn.Linear, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Linear.forward's name)
    """``module(input)``'s ``input W^T + b`` by oneDNN where :func:`covered`, else by ``F.linear``."""
    if not covered(input, module.weight, module.bias):
        return F.linear(input, module.weight, module.bias)
    return onednn_product(input, module.weight, module.bias)


def plain_linears(model: nn.Module) -> list[nn.Linear]:
    """The modules whose forward is ``nn.Linear``'s own and not already replaced on the instance."""
    return [module for module in model.modules()
            if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and "forward" not in vars(module)]


@contextmanager
def calibration_linear(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``model``'s plain linear layers as :func:`onednn_linear` inside, on CPU (restored on the way out)."""
    if device.type != "cpu" or ONEDNN_LINEAR is None:
        yield
        return
    modules = plain_linears(model)
    for module in modules:
        module.forward = partial(onednn_linear, module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward
