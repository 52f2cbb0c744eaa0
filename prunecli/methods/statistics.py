"""Statistics of a layer's inputs, accumulated over calibration tokens by forward hooks.

Layers fed the very same input tensor (q/k/v projections, gate/up) share one accumulator,
so each statistic is computed once per distinct input, with identical results.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


class InputNorms:
    """Wanda's ``||X_j||_2``: the L2 norm of input feature j over all calibration tokens."""

    def __init__(self, features: int, device: torch.device):
        self.sum_squares = torch.zeros(features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        x = x if x.dtype == torch.float64 else x.float()  # at least fp32 per batch, fp64 across batches
        # sum_t x_tj^2 over rows: a plain column sum (vector_norm(dim=0) is ~10x slower on CPU)
        self.sum_squares += x.square().sum(0).double()
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        return self.sum_squares.sqrt().float()


class Hessian:
    """SparseGPT's layer Hessian ``H = 2/n * sum_t x_t x_t^T`` over the ``n`` calibration tokens.

    (The reference code divides by the number of windows instead of tokens; the factor
    cancels in the OBS updates and in the damping, so the pruned weights are the same.)
    ``H`` is symmetric, so each batch adds only its upper triangle, in ``k =`` :data:`ROW_BLOCKS`
    bands of rows (band ``i`` adds ``X_i^T [X_i ... X_k]``: ~(k+1)/2k of the full product's FLOPs);
    :meth:`hessian` mirrors it into the lower triangle.
    """

    ROW_BLOCKS = 4

    def __init__(self, features: int, device: torch.device):
        self.sum_outer = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0
        self.scaled = False
        step = -(-features // self.ROW_BLOCKS)
        self.bands = [slice(start, min(start + step, features)) for start in range(0, features, step)]

    def band_flops(self, tokens: int) -> int:
        """The FLOPs of one :meth:`add` of ``tokens`` rows: 2 per multiply-add of each band's ``X_i^T [X_i ... X_k]``."""
        return sum(2 * tokens * (band.stop - band.start) * (self.sum_outer.shape[1] - band.start) for band in self.bands)

    def add(self, x: torch.Tensor) -> None:
        if self.scaled:
            raise RuntimeError("Hessian.add after hessian(): the sum has been scaled in place")
        x = x.reshape(-1, x.shape[-1]).float()
        for band in self.bands:
            self.sum_outer[band, band.start :].addmm_(x[:, band].t(), x[:, band.start :])
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """``H``, read-only: on the first call the upper triangle is mirrored below the diagonal and the sum
        scaled, in place (an 8192^2 Hessian is 268 MB; no second copy is kept)."""
        if not self.scaled:
            total = self.sum_outer
            for band in self.bands:  # lower triangle := transpose of the upper, one band of columns at a time
                square = total[band, band]
                square.copy_(torch.triu(square) + torch.triu(square, 1).t())
                total[band.stop :, band] = total[band, band.stop :].t()
            total.mul_(2.0 / self.tokens)
            self.scaled = True
        return self.sum_outer


Accumulator = InputNorms | Hessian


def shared_inputs(stats: dict[str, Accumulator]) -> list[list[str]]:
    """The layers of ``stats`` grouped by the accumulator they share -- the ones fed one input (q/k/v,
    gate/up; :func:`collect_inputs`) -- in the order they were first called."""
    groups: dict[int, list[str]] = {}
    for name, accumulator in stats.items():
        groups.setdefault(id(accumulator), []).append(name)
    return list(groups.values())


class InputsCollected(Exception):
    """Raised once every hooked layer has seen its input: the rest of the forward is not needed."""


@contextmanager
def collect_inputs(layers: dict[str, nn.Module], make: Callable[[int, torch.device], Accumulator],
                   stop_when_done: bool = False) -> Iterator[dict[str, Accumulator]]:
    """Hook ``layers`` so every forward adds each layer's input to that layer's accumulator.

    Yields ``{layer name: accumulator}``, filled as forwards run. A layer called right after
    another on the very same input tensor object (q/k/v, gate/up) shares that layer's
    accumulator instead of adding the same tokens again; only the latest input is held, so a
    tensor address is never confused with a freed one. With ``stop_when_done``, the forward
    is cut short (:class:`InputsCollected`) as soon as every layer has had its input, before
    the last layer computes anything.
    """
    stats: dict[str, Accumulator] = {}
    latest: list = [None, None]  # [input tensor, its accumulator] of the latest hook call
    called: set[str] = set()

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if x is latest[0] and stats.get(name, latest[1]) is latest[1]:
                stats[name] = latest[1]
            else:
                if name not in stats:
                    stats[name] = make(x.shape[-1], x.device)
                stats[name].add(x.detach())
                latest[:] = [x, stats[name]]
            called.add(name)
            if stop_when_done and len(called) == len(layers):
                called.clear()
                latest[:] = [None, None]
                raise InputsCollected

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in layers.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        latest[:] = [None, None]
