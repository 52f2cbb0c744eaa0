"""Perplexity of a causal LM: ``ppl = exp(sum NLL / predicted tokens)``.

Computed over non-overlapping windows of ``data.seqlen`` tokens; in each window every token
after the first is predicted from the ones before it (``seqlen - 1`` predictions a window).
With ``model.offload`` the same windows go through the model block by block
(:func:`perplexity_blockwise`): each block is on the device once, for every batch of windows;
the figures are the same to the bit (the same operations on the same batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunecli.data import eval_windows, load_documents
from prunecli.errors import PruneError, RunFailedError
from prunecli.evaluate import EvalContext, Evaluator, register
from prunecli.methods.layerwise import block_inputs
from prunecli.models.layout import blocks_of, final_modules, head_logits
from prunecli.options import Options, at_least


def summed_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Summed NLL of every token of ``batch`` after the first of its window, from the model's ``logits``."""
    logits, targets = logits[:, :-1].float(), batch[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()


def scores(total_nll: float, windows: torch.Tensor) -> dict:
    """``{"ppl", "nll", "eval_tokens"}`` from the summed NLL; a NaN or infinite loss raises :class:`RunFailedError`."""
    mean_nll = total_nll / (windows.shape[0] * (windows.shape[1] - 1))
    if not math.isfinite(mean_nll):
        raise RunFailedError(f"evaluation loss is {mean_nll} (non-finite logits)")
    return {"ppl": math.exp(mean_nll), "nll": mean_nll, "eval_tokens": int(windows.numel())}


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1, device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Return ``{"ppl", "nll", "eval_tokens"}``; ``nll`` is the mean NLL per predicted token."""
    total_nll = 0.0
    for batch in tqdm(torch.split(windows, batch_size), desc="perplexity", unit="batch", disable=not progress, leave=False):
        batch = batch.to(device)
        total_nll += summed_nll(model(input_ids=batch).logits, batch)
    return scores(total_nll, windows)


@torch.no_grad()
def perplexity_blockwise(loaded: Any, windows: torch.Tensor, batch_size: int = 1, progress: bool = True) -> dict:
    """:func:`perplexity` of an offloaded model (``loaded.offload``): the embeddings, then each block,
    then the final norm and head on the device in turn, over every batch of windows."""
    model, offload = loaded.model, loaded.offload
    _, blocks = blocks_of(model)
    with offload.outer():
        batches = block_inputs(model, blocks[0], windows, batch_size, loaded.device)
    for block in tqdm(blocks, desc="perplexity (block-wise)", unit="block", disable=not progress, leave=False):
        with offload.onloaded([block]):
            for batch in batches:
                batch.hidden = batch.run(block)
    total_nll = 0.0
    with offload.outer():
        for batch, tokens in zip(batches, torch.split(windows, batch_size)):
            total_nll += summed_nll(head_logits(model, batch.hidden), tokens.to(loaded.device))
    return scores(total_nll, windows)


@dataclass(frozen=True)
class PerplexityOptions(Options):
    batch_size: int = 1  # windows per forward pass

    def check(self, prefix: str) -> None:
        at_least(self, prefix, "batch_size", 1)


def perplexity_evaluator(ctx: EvalContext) -> Callable[[torch.nn.Module], dict]:
    """Perplexity on ``data.eval``: its first ``data.max_eval_tokens`` tokens in ``data.seqlen`` windows."""
    loaded, data = ctx.loaded, ctx.data
    if loaded.task != "causal_lm":
        raise PruneError(f"eval=perplexity needs a causal LM, but model {loaded.name} is an {loaded.task} (use eval=none)")
    windows = eval_windows(loaded.tokenizer, load_documents(data.eval), data.seqlen, data.max_eval_tokens)
    if loaded.offload.mode != "none":
        final_modules(loaded.model)  # a family without known final layers is refused before the run
        return lambda model: perplexity_blockwise(loaded, windows, ctx.options.batch_size)
    return lambda model: perplexity(model, windows, ctx.options.batch_size, loaded.device)


register(Evaluator("perplexity", perplexity_evaluator, PerplexityOptions, offloads=True))
