"""Perplexity of a causal LM: ``ppl = exp(sum NLL / predicted tokens)``.

Computed over non-overlapping windows of ``data.seqlen`` tokens; in each window every token
after the first is predicted from the ones before it (``seqlen - 1`` predictions a window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunecli.data import eval_windows, load_documents
from prunecli.errors import PruneError, RunFailedError
from prunecli.evaluate import EvalContext, Evaluator, register
from prunecli.options import Options, at_least


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1, device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Return ``{"ppl", "nll", "eval_tokens"}``; ``nll`` is the mean NLL per predicted token.

    A NaN or infinite loss raises :class:`RunFailedError` instead of reporting a number.
    """
    total_nll, predicted = 0.0, 0
    batches = torch.split(windows, batch_size)
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total_nll += nll.item()
        predicted += targets.numel()
    mean_nll = total_nll / predicted
    if not math.isfinite(mean_nll):
        raise RunFailedError(f"evaluation loss is {mean_nll} (non-finite logits)")
    return {"ppl": math.exp(mean_nll), "nll": mean_nll, "eval_tokens": int(windows.numel())}


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
    return lambda model: perplexity(model, windows, ctx.options.batch_size, loaded.device)


register(Evaluator("perplexity", perplexity_evaluator, PerplexityOptions))
