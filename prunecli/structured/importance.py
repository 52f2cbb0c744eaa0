"""Transformer criteria: one score per unit (head, KV group, neuron); the lowest scores go first.

A unit ``u`` owns weight slices ``S_u`` (all its coupled rows/columns, :mod:`groups`);
``l1``, ``l2`` and ``taylor`` are the shared weight criteria (:mod:`criteria`; ``taylor``'s
loss: the mean causal-LM loss over the calibration windows). Only transformers have:

* ``activation`` (Wanda-style): ``sum_{j in C_u} ||X_j||_2 * ||W_o[:, j]||_2`` over the unit's
  input columns ``C_u`` of the output projection (down_proj / o_proj), ``||X_j||`` the norm of
  that input feature over all calibration tokens;
* ``fluctuation`` (FLAP's WIFV, An et al. 2024): ``sum_{j in C_u} Var_t(x_tj) * ||W_o[:, j]||_2^2``:
  an input that barely varies around its mean can go, and ``bias_compensation`` puts that mean
  back into the bias (the two together are FLAP's per-layer form);
* ``confidence`` (Voita et al. 2019): mean over tokens of the head's largest attention
  probability; ``entropy``: minus the mean entropy ``-sum_k p_k log p_k`` of its attention
  rows (diffuse heads go first). Heads only; a KV group sums its query heads.

Blocks: Block Influence (ShortGPT, Men et al. 2024) ``BI_i = 1 - E_t[cos(x_in_t, x_out_t)]``
over calibration tokens ``t`` (:func:`block_influence`).

Statistics are computed on the unpruned model, once, when a criterion (or FLAP) first asks
(:class:`Evidence`).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.targets import weight_matrix
from prunecli.models.layout import blocks_of
from prunecli.structured.criteria import CRITERIA, Criterion, Owned, criterion_for, loss_gradients
from prunecli.structured.groups import BlockGroups, Coupling, EmptyAttention, Family


class InputMoments:
    """Per input feature ``j`` over calibration tokens: ``mean_t x_tj`` and ``||X_j||_2``."""

    def __init__(self, features: int, device: torch.device):
        self.sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.sum_squares = torch.zeros(features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        self.sum += x.sum(0)
        self.sum_squares += x.pow(2).sum(0)
        self.tokens += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)

    def norms(self) -> torch.Tensor:
        return self.sum_squares.sqrt()

    def variance(self) -> torch.Tensor:
        """Population variance over the tokens, ``E[x^2] - E[x]^2`` (fp64, clamped at 0)."""
        n = max(self.tokens, 1)
        return (self.sum_squares / n - (self.sum / n).pow(2)).clamp_min(0)


def is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ == MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(model.config, "model_type", None))


class Evidence:
    """Calibration statistics of the unpruned model, computed on first use and shared.

    ``ctx`` is the :class:`~prunecli.methods.PruneContext`; every statistic needs
    ``ctx.calibration`` (the pipeline builds it when the method descriptor's ``calibration`` says so).
    """

    def __init__(self, ctx, family: Family, groups: list[BlockGroups]):
        self.ctx, self.family, self.groups = ctx, family, groups
        self.prefix, self.blocks = blocks_of(ctx.model)
        self.batch_size = ctx.options.calibration_batch_size

    def windows(self, why: str) -> torch.Tensor:
        if self.ctx.calibration is None:
            raise PruneError(f"{why} needs calibration windows (none were given)")
        return self.ctx.calibration

    def batches(self, why: str):
        return [batch.to(self.ctx.device) for batch in torch.split(self.windows(why), self.batch_size)]

    @cached_property
    def out_moments(self) -> dict[tuple[int, str], InputMoments]:
        """``(block, output projection path) -> InputMoments`` of its input, block by block."""
        self.windows("bias_compensation (or criterion activation)")
        paths = {(g.block, c.path) for g in self.groups for c in g.couplings if c.role == "out"}
        layers = {f"{self.prefix}.{b}.{p}": self.blocks[b].get_submodule(p) for b, p in sorted(paths)}
        moments: dict[tuple[int, str], InputMoments] = {}

        def keep(index, block_layers, stats) -> None:
            for name in block_layers:
                moments[(index, name[len(f"{self.prefix}.{index}."):])] = stats[name]

        if layers:
            prune_layerwise(dataclasses.replace(self.ctx, layers=layers), InputMoments, keep, "structured_stats", self.batch_size, measure_only=True)
        return moments

    @cached_property
    def attention(self) -> dict[int, dict[str, torch.Tensor]]:
        """``block -> {"entropy": (n_q,), "confidence": (n_q,)}``, means over batch and query positions.

        The attention probabilities come from eager attention (switched on for this pass).
        """
        sums: dict[int, dict[str, torch.Tensor]] = {}
        rows = [0] * len(self.blocks)

        def hook_for(index: int):
            def hook(module, args, output) -> None:
                probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if probs is None:
                    return
                probs = probs.float()
                entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (B, H, T)
                block = sums.setdefault(index, {"entropy": 0.0, "confidence": 0.0})
                block["entropy"] = block["entropy"] + entropy.sum((0, 2)).double()
                block["confidence"] = block["confidence"] + probs.amax(-1).sum((0, 2)).double()
                rows[index] += probs.shape[0] * probs.shape[2]

            return hook

        model = self.ctx.model
        attentions = [block.get_submodule(self.family.attention) for block in self.blocks]
        handles = [a.register_forward_hook(hook_for(i)) for i, a in enumerate(attentions) if not isinstance(a, EmptyAttention)]
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                for batch in self.batches("criterion entropy/confidence"):
                    model(input_ids=batch)
        finally:
            model.set_attn_implementation(previous)
            for handle in handles:
                handle.remove()
        return {i: {k: v / rows[i] for k, v in s.items()} for i, s in sums.items()}

    @cached_property
    def gradients(self) -> dict[tuple[int, str], torch.Tensor]:
        """``(block, path) -> dL/dW`` on the ``(out, in)`` view, L = mean causal-LM loss over the windows."""
        model = self.ctx.model
        if not is_causal_lm(model):
            raise PruneError(f"criterion taylor needs a causal LM (its loss on the calibration tokens); {type(model).__name__} has none")
        batches = self.batches("criterion taylor")
        paths = {(g.block, c.path) for g in self.groups for c in g.couplings}
        params = {key: self._layer(key).weight for key in paths}
        total = sum(len(b) for b in batches)
        losses = (lambda batch=batch: model(input_ids=batch, labels=batch).loss * (len(batch) / total) for batch in batches)
        return {key: as_matrix(self._layer(key), grad) for key, grad in loss_gradients(model, params, losses).items()}

    def owned(self, groups: BlockGroups) -> list[Owned]:
        """Each coupled layer's rows (``axis`` 0) or columns (1) of the group's units, on the ``(out, in)`` view."""
        block = self.blocks[groups.block]
        return [Owned((groups.block, c.path), weight_matrix(block.get_submodule(c.path)), _unit_lines(c)) for c in groups.couplings]

    def _layer(self, key: tuple[int, str]) -> nn.Module:
        return self.blocks[key[0]].get_submodule(key[1])


def as_matrix(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` shaped like ``module.weight``, as the ``(out, in)`` view (Conv1D stores ``(in, out)``)."""
    from transformers.pytorch_utils import Conv1D

    return tensor.t() if isinstance(module, Conv1D) else tensor


def _unit_lines(coupling: Coupling):
    """``(out, in)`` matrix -> ``(units, k)``: unit ``u``'s rows or columns ``index[u]``, flattened."""
    def lines(matrix: torch.Tensor) -> torch.Tensor:
        index = coupling.index.to(matrix.device)
        picked = matrix[index] if coupling.axis == 0 else matrix[:, index].movedim(0, -1)  # (units, width, k)
        return picked.reshape(len(index), -1)

    return lines


def _output_columns(per_column: Callable[[InputMoments, torch.Tensor], torch.Tensor]):
    """A score summed over each unit's input columns of the output projection: ``per_column(moments, W_o)``."""
    def score(evidence: Evidence, groups: BlockGroups) -> torch.Tensor:
        total = torch.zeros(groups.units, dtype=torch.float64)
        block = evidence.blocks[groups.block]
        for c in (c for c in groups.couplings if c.role == "out"):
            weight = weight_matrix(block.get_submodule(c.path)).double()
            columns = per_column(evidence.out_moments[(groups.block, c.path)], weight)
            total += columns.to(weight.device)[c.index].sum(1).cpu()
        return total

    return score


_activation = _output_columns(lambda moments, weight: moments.norms().to(weight.device) * weight.norm(dim=0))
_fluctuation = _output_columns(lambda moments, weight: moments.variance().to(weight.device) * weight.pow(2).sum(0))


def _attention_score(key: str, sign: float):
    def score(evidence: Evidence, groups: BlockGroups) -> torch.Tensor:
        per_head = evidence.attention[groups.block][key].cpu()
        return sign * per_head[groups.query_heads].sum(1)

    return score


CRITERIA.add("activation", Criterion(_activation, needs_data=True, kinds=("heads", "ffn")))
CRITERIA.add("fluctuation", Criterion(_fluctuation, needs_data=True, kinds=("heads", "ffn")))
CRITERIA.add("entropy", Criterion(_attention_score("entropy", -1.0), needs_data=True, kinds=("heads",)))
CRITERIA.add("confidence", Criterion(_attention_score("confidence", 1.0), needs_data=True, kinds=("heads",)))


def scores(criterion: str, kind: str, groups: list[BlockGroups], evidence: Evidence) -> list[torch.Tensor]:
    """One score per unit for every block (fp64, CPU)."""
    chosen = criterion_for(criterion, kind)
    if chosen.needs_data:
        evidence.windows(f"criterion {criterion}")
    return [chosen.score(evidence, g) if g.units else torch.zeros(0, dtype=torch.float64) for g in groups]


@torch.inference_mode()
def block_influence(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``BI_i = 1 - mean_t cos(x_in_t, x_out_t)`` of every block over all calibration tokens."""
    _, blocks = blocks_of(model)
    cos_sum = torch.zeros(len(blocks), dtype=torch.float64)
    tokens = [0] * len(blocks)
    inputs: dict[int, torch.Tensor] = {}

    def before(index: int):
        def hook(module, args, kwargs) -> None:
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(index: int):
        def hook(module, args, kwargs, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            x = inputs.pop(index)
            cos = torch.nn.functional.cosine_similarity(x.float(), out.float(), dim=-1)
            cos_sum[index] += cos.double().sum().cpu()
            tokens[index] += cos.numel()

        return hook

    handles = [b.register_forward_pre_hook(before(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(after(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for batch in torch.split(windows, batch_size):
            model(input_ids=batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return 1 - cos_sum / torch.tensor(tokens, dtype=torch.float64)
