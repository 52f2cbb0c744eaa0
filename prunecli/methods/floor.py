"""The compute floor of a layer-wise pruning run: how fast could it be on this machine?

``floor_s = matmul FLOPs of the run / the machine's fp32 matmul throughput at the run's shapes``.

* FLOPs: the first block that is pruned is run under ``torch.utils.flop_counter`` (2 per
  multiply-add of every ``mm`` / ``addmm(_)`` / ``bmm`` / ``addr_``, oneDNN linear and fused attention): its
  statistics pass (the hooks' accumulations included, e.g. SparseGPT's ``X^T X``) and its re-run with
  the pruned weights on their first batch of windows, scaled to all windows (a pass's FLOPs are linear
  in its windows), and the method's own work on it (SparseGPT's per-column and lazy batch updates; its
  Cholesky factors and elementwise work are left out). Blocks have one shape, so the run's FLOPs are
  that block's times the number of pruned blocks.
* Throughput: ``(tokens of a calibration batch) x in @ in x out`` products at each target
  layer's shape of that block, timed on the execution device (warm-up, the fastest of repeats), by
  ``torch.mm`` and, on CPU, by oneDNN from the plain and from the packed weight (:mod:`prunecli.models.linear`;
  the passes run the packed one); the best of them -- the floor assumes every FLOP runs at the best rate this
  machine reached.

``prune_s / floor_s`` (``metrics.json``: ``floor``) says how far the run is from that floor.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunecli.benchmark.timing import timed
from prunecli.methods.targets import weight_matrix
from prunecli.models.linear import ONEDNN_LINEAR, covered, onednn_product, packed_weight

REPEATS = 5


def product_flops(self: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """``addmm_``: ``C += A B``, one multiply-add per ``(i, k, j)``."""
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def rank_one_flops(self: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """``addr_``: ``C += a b^T``, one multiply-add per element of ``C``."""
    return 2 * a.shape[0] * b.shape[0]


def linear_flops(x: torch.Tensor, weight: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """oneDNN's linear ``x W^T (+ b)``: one multiply-add per (row of ``x``, element of ``W``)."""
    return 2 * (x.numel() // x.shape[-1]) * weight.numel()


product_flops._get_raw = rank_one_flops._get_raw = linear_flops._get_raw = True  # called with the tensors themselves


def counted_rules() -> dict:
    """The FLOP rules beyond torch's defaults (built on first use: ``benchmark`` imports the method registry)."""
    from prunecli.benchmark.flops import ATTENTION_KERNELS

    aten = torch.ops.aten
    # in-place variants, which torch's counter leaves out: the hooks' X^T X sums and SparseGPT's updates use them
    rules = {**ATTENTION_KERNELS, aten.addmm_: product_flops, aten.addr_: rank_one_flops}
    return rules if ONEDNN_LINEAR is None else {**rules, ONEDNN_LINEAR: linear_flops}


def matmul_throughput(shapes: set[tuple[int, int, int]], device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The best FLOP/s of ``(m x k) @ (k x n)`` over ``shapes`` and kernels (``torch.mm``; oneDNN's linear from the
    plain and the packed weight on CPU): the fastest of :data:`REPEATS` products after a warm-up, each timed and synchronised by
    :func:`~prunecli.benchmark.timing.timed` (the best rate reached, as the floor assumes; a median let a
    passing slowdown of the machine lower it by a quarter)."""
    best = 0.0
    for m, k, n in sorted(shapes):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        weight = b.t().contiguous()  # oneDNN's linear multiplies by weight^T = b
        products = [lambda: torch.mm(a, b)]
        if covered(a, weight, None):
            packed = packed_weight(weight)
            products += [lambda: onednn_product(a, weight), lambda: onednn_product(a, packed)]
        for product in products:
            timed(product, device)
            seconds = min(timed(product, device) for _ in range(REPEATS))
            best = max(best, 2 * m * k * n / seconds)
    return best


_open: list[tuple[dict[str, int], str]] = []  # the open counting blocks' (flops, key), innermost last


@contextmanager
def counting(active: bool, flops: dict[str, int], key: str) -> Iterator[None]:
    """Add the FLOPs run inside (the :func:`counted_rules` over ``torch.utils.flop_counter``'s) to
    ``flops[key]``; nothing when not ``active``. The counter sees only the thread it was entered on: work
    handed to other threads is added by :func:`count_elsewhere`."""
    if not active:
        yield
        return
    _open.append((flops, key))
    try:
        with FlopCounterMode(display=False, custom_mapping=counted_rules()) as counter:
            yield
    finally:
        _open.pop()
    flops[key] += counter.get_total_flops()


def count_elsewhere(flops: int) -> None:
    """Add ``flops``, of work run where the open :func:`counting` block cannot see it (other threads), to that
    block's count; nothing when none is open."""
    if _open:
        counts, key = _open[-1]
        counts[key] += flops


def matmul_shapes(layers: dict[str, nn.Module], tokens: int) -> set[tuple[int, int, int]]:
    """``(tokens, in, out)`` of every layer's weight: the matmuls a calibration batch runs through them."""
    return {(tokens, weight_matrix(m).shape[1], weight_matrix(m).shape[0]) for m in layers.values()}


def floor(pass_flops: int, shapes: set[tuple[int, int, int]], prune_s: float, device: torch.device) -> dict:
    """``metrics.json``'s ``floor``: the counted FLOPs, the measured throughput, ``floor_s`` and ``prune_over_floor``."""
    throughput = matmul_throughput(shapes, device)
    floor_s = pass_flops / throughput
    return {"flops": pass_flops, "matmul_gflops": round(throughput / 1e9, 2), "shapes": sorted(shapes),
            "floor_s": floor_s, "prune_over_floor": prune_s / floor_s if floor_s > 0 else None}
