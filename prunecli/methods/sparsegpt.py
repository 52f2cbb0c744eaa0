"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with OBS weight reconstruction.

For each layer, from ``H = 2/n * sum X X^T`` over the calibration tokens:

1. dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weights zeroed;
2. dampening: ``H += percdamp * mean(diag H) * I``; ``U`` = upper Cholesky factor of ``H^-1``
   (if a factorisation fails, the damping is raised tenfold -- from 0.01 when it was 0 -- and
   retried, with a warning);
3. columns are processed in blocks of ``blocksize``. At the start of a block the mask is
   chosen from ``w^2 / [U]_jj^2`` (lowest ``floor(s * numel)`` of the block; with N:M, per run
   of M columns as they are reached). Column by column, pruned weights are zeroed and the
   error ``(w - q) / U_jj`` is propagated to the block's remaining columns through row
   ``U_j``; after the block, its errors update all later columns (lazy batch update). The same
   lazy update runs one level down: a column's error reaches only the rest of its run of
   :data:`INNER_COLUMNS` columns at once, and a run's errors reach the block's later columns in one
   product when it ends (with N:M, runs are whole groups) -- the paper's sums in another float order,
   2x faster on CPU, where rank-1 updates over a whole 128-column block leave the cache.

Layers fed the very same input (q/k/v, gate/up; :func:`~prunecli.methods.statistics.shared_inputs`)
have one ``H``, so they share one factor ``U`` and one column loop, their rows stacked: a row's
updates depend only on that row and ``U``, and each layer's mask is still chosen among its own
rows, so the result is that of pruning them one by one (``obs_schedule=per_layer``, the reference
code's order). The block's factors are computed first, on all threads; then the column loops run on
worker threads, on CPU side by side, one thread each (thousands of tiny ops, which intra-op threads slow
down); their FLOPs, which :mod:`~prunecli.methods.floor`'s counter cannot see there, are counted by
formula (:func:`obs_flops`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterator, Literal

import torch

from prunecli.errors import PruneError
from prunecli.methods import CalibratedOptions, Method, PruneContext, register
from prunecli.methods.floor import count_elsewhere
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.masks import check_nm_fits, layerwise_mask, nm_mask
from prunecli.methods.statistics import Hessian, shared_inputs
from prunecli.methods.targets import weight_matrix
from prunecli.options import at_least

log = logging.getLogger(__name__)

MAX_DAMPING_RETRIES = 6
RETRY_DAMPING = 0.01  # the first retry of an undamped (percdamp=0) Hessian; then x10 per retry
INNER_COLUMNS = 8  # columns per run of rank-1 updates inside a block (module doc, step 3)


INVERSE_LEAF = 128  # upper_triangular_inverse: blocks up to this size are inverted by one triangular solve


def upper_triangular_inverse(upper: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``upper^-1`` of an invertible upper triangular matrix, written into ``out`` (same shape, not ``upper``'s memory).

    By halves: ``[[A, B], [0, D]]^-1 = [[A^-1, -A^-1 B D^-1], [0, D^-1]]``, ``A^-1`` and ``D^-1`` the same way down to
    blocks of :data:`INVERSE_LEAF`, which one triangular solve against the identity inverts: ~n^3/3 multiply-adds,
    nearly all in matrix products, where one triangular solve against the whole identity does ~n^3/2 (the same matrix
    up to float rounding)."""
    n = upper.shape[0]
    if n <= INVERSE_LEAF:
        identity = torch.eye(n, dtype=upper.dtype, device=upper.device)
        return out.copy_(torch.linalg.solve_triangular(upper, identity, upper=True))
    half = n // 2
    out[half:, :half].zero_()
    head = upper_triangular_inverse(upper[:half, :half], out[:half, :half])
    tail = upper_triangular_inverse(upper[half:, half:], out[half:, half:])
    torch.mm(head, upper[:half, half:] @ tail, out=out[:half, half:]).neg_()
    return out


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, layer: str, warnings: list) -> torch.Tensor:
    """``U``, the upper Cholesky factor of ``(H + damp * I)^-1`` (``H^-1 = U^T U``), raising the damping until ``H`` factors.

    With ``J`` the reversal of rows and columns, the Cholesky factor of ``J H J = L L^T`` gives ``H = M M^T`` for the
    upper triangular ``M = J L J``; so ``H^-1 = M^-T M^-1`` and ``U = M^-1`` (positive diagonal: the factor is
    unique): one factorisation and one triangular inverse (:func:`upper_triangular_inverse`), where factoring ``H``,
    inverting it from its factor and factoring the inverse took two of each (the same ``U`` up to float rounding,
    closer to float64's). ``hessian`` is overwritten (its diagonal damped, then its memory reused for ``U``), and at
    most three n x n matrices live at a time."""
    diagonal = torch.arange(hessian.shape[0], device=hessian.device)
    undamped = torch.diag(hessian)  # a copy
    mean_diag = torch.mean(undamped)
    for attempt in range(MAX_DAMPING_RETRIES):
        hessian[diagonal, diagonal] = undamped + percdamp * mean_diag
        lower, info = torch.linalg.cholesky_ex(hessian.flip(0, 1))
        if info == 0:
            upper = lower.flip(0, 1)  # M
            del lower
            return upper_triangular_inverse(upper, out=hessian)
        raised = percdamp * 10 if percdamp > 0 else RETRY_DAMPING
        log.warning("sparsegpt: Hessian of %s is not positive definite with percdamp=%g; retrying with %g", layer, percdamp, raised)
        warnings.append({"layer": layer, "percdamp": raised})
        percdamp = raised
    raise PruneError(f"sparsegpt: the Hessian of {layer} stays singular even with percdamp={percdamp:g}")


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[int]:
    """The column-by-column OBS loop is thousands of tiny ops: on CPU, intra-op threads cost more
    than they give (3-6x slower with 2 threads here), so it runs on one. Yields how many such loops
    may run side by side: the intra-op threads there were (1 off CPU)."""
    if device.type != "cpu":
        yield 1
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def sparsegpt_layer(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                    blocksize: int = 128, percdamp: float = 0.01, layer: str = "", warnings: list | None = None) -> None:
    """Prune ``weight`` (an ``(out, in)`` tensor or view) in place, reconstructing with OBS."""
    factor = obs_factor(hessian, percdamp, layer, warnings if warnings is not None else [])
    with one_cpu_thread(weight.device):
        sparsegpt_shared([weight], factor, [sparsity], nm, blocksize, layer)


@torch.no_grad()
def obs_factor(hessian: torch.Tensor, percdamp: float, layer: str, warnings: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the module doc: ``U`` and the dead inputs (``H_jj = 0``)."""
    H = hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return inverse_hessian_factor(H, percdamp, layer, warnings), dead


@torch.no_grad()
def sparsegpt_shared(weights: list[torch.Tensor], factor: tuple[torch.Tensor, torch.Tensor], sparsities: list[float],
                     nm: tuple[int, int] | None, blocksize: int = 128, layer: str = "") -> None:
    """Prune layers fed one input in place, each to its own sparsity, given their :func:`obs_factor`:
    one column loop over their stacked rows (module doc)."""
    U, dead = factor
    W = torch.cat([weight.float() for weight in weights])  # a copy, even of one fp32 weight
    W[:, dead] = 0
    if nm is not None:
        check_nm_fits(W.shape[1], nm, layer)
        blocksize = max(nm[1], blocksize // nm[1] * nm[1])  # N:M groups never straddle blocks
    rows = [weight.shape[0] for weight in weights]
    bounds = [0, *accumulate(rows)]
    parts = [(slice(start, stop), sparsity) for start, stop, sparsity in zip(bounds, bounds[1:], sparsities)]
    obs_prune_(W, U, parts, nm, blocksize, layer)
    for weight, pruned in zip(weights, W.split(rows)):
        weight.copy_(pruned.to(weight.dtype))


def obs_flops(rows: int, columns: int) -> int:
    """The FLOPs of :func:`obs_prune_`'s updates of ``rows x columns`` (2 per multiply-add): every column's error
    reaches every later column once -- by the rank-1 updates of its run, its run's update of the block's later
    columns or its block's of all later ones -- one multiply-add per row and pair of columns:
    ``rows * columns * (columns - 1)``, whatever the blocks and runs."""
    return rows * columns * (columns - 1)


def obs_prune_(W: torch.Tensor, U: torch.Tensor, parts: list[tuple[slice, float]], nm: tuple[int, int] | None,
               blocksize: int, layer: str) -> None:
    """Step 3 of the module doc on ``W`` in place, given ``U`` (upper Cholesky of ``H^-1``); ``parts``:
    the row range of each stacked layer and its sparsity (an unstructured mask is chosen per part)."""
    columns = W.shape[1]
    run = INNER_COLUMNS if nm is None else nm[1] * -(-INNER_COLUMNS // nm[1])  # whole N:M groups
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        W1, U1 = W[:, start:end].clone(), U[start:end, start:end]
        d = torch.diag(U1)
        errors = torch.empty_like(W1)
        kept = torch.ones_like(W1, dtype=torch.bool)
        if nm is None:
            for rows, sparsity in parts:
                kept[rows] = layerwise_mask(W1[rows].pow(2) / d.pow(2), sparsity).logical_not_()
        # err = (w - q) / d_i is w / d_i where pruned (q = 0) and 0 where kept (q = w): w divided by d_i, or by +inf
        divisors = torch.where(kept, torch.inf, d)
        # the block's columns (and U1's rows) as views made once: a column costs two ops, one index each
        weight_columns, error_columns, divisor_columns, u_rows = W1.unbind(1), errors.unbind(1), divisors.unbind(1), U1.unbind(0)
        for first in range(0, end - start, run):
            last = min(first + run, end - start)
            for i in range(first, last):
                if nm is not None and i % nm[1] == 0:
                    group = slice(i, i + nm[1])
                    kept[:, group] = nm_mask(W1[:, group].pow(2) / d[group].pow(2), *nm, layer=layer).logical_not_()
                    divisors[:, group] = torch.where(kept[:, group], torch.inf, d[group])
                # column i changes no more after this step: its pruned weights are zeroed with the block's, once it ends
                err = torch.div(weight_columns[i], divisor_columns[i], out=error_columns[i])
                W1[:, i + 1 : last].addr_(err, u_rows[i][i + 1 : last], alpha=-1)
            W1[:, last:].addmm_(errors[:, first:last], U1[first:last, last:], alpha=-1)
        W[:, start:end] = W1.masked_fill_(kept.logical_not_(), 0)
        W[:, end:].addmm_(errors, U[start:end, end:], alpha=-1)


@dataclass(frozen=True)
class SparseGPTOptions(CalibratedOptions):
    blocksize: int = 128  # columns per lazy-update block (and per mask-selection block)
    percdamp: float = 0.01  # dampening: percdamp * mean(diag H) added to the diagonal
    # shared: layers fed one input share one factor and column loop, loops side by side on CPU threads;
    # per_layer: one layer after another, each its own factor (the reference code's order). Same result.
    obs_schedule: Literal["shared", "per_layer"] = "shared"

    def check(self, prefix: str) -> None:
        super().check(prefix)
        at_least(self, prefix, "blocksize", 1)
        at_least(self, prefix, "percdamp", 0)


def sparsegpt(ctx: PruneContext) -> None:
    warnings: list = []
    options, percdamp = ctx.options, float(ctx.options.percdamp)

    def prune_block(index, layers, stats) -> None:
        if options.obs_schedule == "per_layer":
            for name, module in layers.items():
                sparsegpt_layer(weight_matrix(module), stats[name].hessian(), ctx.sparsity_of(name), ctx.nm, options.blocksize,
                                percdamp, name, warnings)
            return
        groups = shared_inputs(stats)
        labels = ["+".join(names) for names in groups]
        factors = [obs_factor(stats[names[0]].hessian(), percdamp, label, warnings) for names, label in zip(groups, labels)]
        inference = torch.is_inference_mode_enabled()  # thread-local: the workers get the caller's

        def prune(names: list[str], factor: tuple[torch.Tensor, torch.Tensor], label: str) -> None:
            with torch.inference_mode(inference):
                sparsegpt_shared([weight_matrix(layers[name]) for name in names], factor, [ctx.sparsity_of(name) for name in names],
                                 ctx.nm, options.blocksize, label)

        count_elsewhere(sum(obs_flops(sum(weight_matrix(layers[name]).shape[0] for name in names), factor[0].shape[0])
                            for names, factor in zip(groups, factors)))
        with one_cpu_thread(ctx.device) as side_by_side, ThreadPoolExecutor(min(side_by_side, len(groups))) as pool:
            list(pool.map(prune, groups, factors, labels))

    prune_layerwise(ctx, Hessian, prune_block, "sparsegpt", ctx.options.calibration_batch_size)
    if warnings:
        ctx.stats["sparsegpt_damping_raised"] = warnings


register(Method("sparsegpt", sparsegpt, SparseGPTOptions, calibration=True, refittable=True, offload=True))
