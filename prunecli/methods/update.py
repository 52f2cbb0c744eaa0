"""Weight-update stage: re-fit the weights a method kept, on its mask (``update=admm``).

After any method that only zeroes elements of the target weight matrices (magnitude, Wanda,
SparseGPT; unstructured or N:M; uniform or OWL allocation), each layer's kept weights are
re-fitted to the *dense* layer's outputs on the calibration tokens:

    minimise  f(W') = tr((W' - W) H (W' - W)^T) = 2/n ||W X - W' X||^2   subject to  W' = 0 where the method zeroed W,

with ``H = 2/n X^T X`` the SparseGPT Hessian of the layer's inputs. The method's masks are its
own result, unchanged (one copy of the dense target weights is kept aside while it runs); then,
on the layer-wise pipeline, block by block: the block's dense weights are swapped back in (the
method's weights of that block aside), ``H`` is collected on them (inputs from the earlier blocks as already
re-fitted, as SparseGPT collects on the earlier blocks as pruned), every layer gets
``W' = refit(W, H, mask)``, and the block runs again with ``W'``. Recorded per layer in
``layers.csv``: the relative output error ``||W X - W' X|| / ||W X|| = sqrt(f / tr(W H W^T))``
of the method's weights (``error_before``) and of the re-fitted ones (``error_after``).

An update is one :class:`Update` descriptor (its re-fit, typed options, metrics summary),
registered beside the solver it uses (``update=admm`` in :mod:`prunecli.methods.admm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from prunecli.errors import PruneError
from prunecli.methods import METHODS, Method, PruneContext, calibration_batch_size
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.statistics import Hessian
from prunecli.methods.targets import weight_matrix
from prunecli.options import Options, choice_of, parse
from prunecli.registry import Registry


def objective(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    """``f(W') = tr((W' - W) H (W' - W)^T)`` in fp64."""
    delta = (W_new - W).double()
    return float(((delta @ H.double()) * delta).sum())


def relative_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    """``||W X - W' X|| / ||W X|| = sqrt(f(W') / tr(W H W^T))``."""
    dense = float(((W.double() @ H.double()) * W.double()).sum())
    return math.sqrt(max(objective(W, W_new, H), 0.0) / dense) if dense > 0 else 0.0


@dataclass(frozen=True)
class Update:
    """``refit(W, H, keep, options) -> (W', figures)``: the dense weight ``W`` re-fitted on the mask ``keep``
    (True = kept; zeros outside it), with figures for that layer's row of ``layers.csv``;
    ``summary(errors, options)``: metrics.json's account of all layers (``errors``: layer -> row)."""

    name: str
    refit: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, dict]]
    options: type[Options]
    summary: Callable[[dict[str, dict], Any], dict]

    def parse(self, node: Any, method: Method) -> Options:
        """The ``update`` node as typed options, after checking ``method`` leaves a mask to re-fit."""
        if not method.refittable:
            combines = "|".join(name for name in METHODS.names() if METHODS.get(name).refittable)
            raise PruneError(f"update={self.name} re-fits the weights an element-wise mask keeps; it combines with method={combines} "
                             f"(got method={method.name})")
        return parse(self.options, node, "update")


UPDATES: Registry[Update] = Registry("update")


def register_update(update: Update) -> Update:
    return UPDATES.add(update.name, update)


def selected(cfg: Any) -> Update | None:
    """The run's update, or None for ``update=none`` (the method's weights as they are)."""
    return UPDATES.chosen(choice_of(cfg, "update"))


@torch.no_grad()
def prune_and_refit(ctx: PruneContext, method: Method, update: Update, options: Any) -> None:
    """Prune with ``method``, then re-fit every layer on its mask (see module doc)."""
    weights = {name: weight_matrix(module) for name, module in ctx.layers.items()}
    dense = {name: weight.clone() for name, weight in weights.items()}
    method.prune(ctx)
    pruned: dict[str, torch.Tensor] = {}
    errors: dict[str, dict] = {}

    def swap_in_dense(index, layers) -> None:  # this block's method weights aside, its dense weights back
        for name in layers:
            pruned[name] = weights[name].clone()
            weights[name].copy_(dense[name])

    def refit_block(index, layers, stats) -> None:
        for name in layers:
            H, W, before = stats[name].hessian(), dense.pop(name), pruned.pop(name)
            updated, figures = update.refit(W, H, before != 0, options)
            weights[name].copy_(updated.to(W.dtype))
            errors[name] = {"error_before": relative_error(W, before, H), "error_after": relative_error(W, updated, H)} | figures

    prune_layerwise(ctx, Hessian, refit_block, f"update={update.name}", calibration_batch_size(ctx.options), before_block=swap_in_dense)
    ctx.stats["layer_errors"] = errors
    ctx.stats[update.name] = update.summary(errors, options)  # as method=admm records its own
