"""Training text for ``finetune=lm`` / ``finetune=lora``: windows disjoint from calibration.

The fine-tune source (``finetune.data``, default ``news_sample``, the calibration source) is
cut as follows:

1. The documents are shuffled with ``random.Random(finetune.seed)`` (a different seed from
   ``data.seed``), each tokenised on its own (``add_special_tokens=False``, exactly as the
   calibration sampler does) and packed into one stream, separated by the EOS (else SEP) token.
2. When ``finetune.data`` is the calibration source, the calibration windows of this run's
   ``data.nsamples`` / ``data.seqlen`` / ``data.seed`` are re-drawn with the sampler's own rule
   (:func:`prunecli.data.calibration_spans`) and every token of their document spans is marked.
3. The stream is cut into non-overlapping windows of ``finetune.seqlen`` tokens; a window
   touching a marked token is dropped, and so is any window identical to a calibration window
   (so a copy of the calibration text under another source is caught too).
4. The windows are shuffled (seed ``finetune.seed``); the first ``finetune.val_windows`` are the
   held-out validation windows (``val_on: heldout``), the rest the training windows.

Documents are tokenised lazily, in shuffled order, until enough windows exist for ``steps``
(all of them with ``epochs``, or up to ``max_train_windows``).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from prunecli.data import DataOptions, TokenCache, calibration_spans, eval_windows, load_documents, source_options
from prunecli.errors import PruneError

log = logging.getLogger(__name__)


@dataclass
class TextWindows:
    train: torch.Tensor  # (n, seqlen)
    val: torch.Tensor  # (v, seqlen), may be empty
    excluded_tokens: int  # tokens dropped because they overlap a calibration window
    dropped_windows: int
    stream_tokens: int


def training_windows(tokenizer: Any, data: DataOptions, o: Any, needed: int | None, calibration: torch.Tensor | None = None) -> TextWindows:
    """Cut the fine-tune text as described in the module doc (``o``: the :class:`LMOptions`;
    ``data``: the run's, for its calibration data). ``needed``: training windows wanted (None: all)."""
    seqlen = o.seqlen
    source = source_options(o.data, "finetune.data")
    documents = load_documents(source)
    tokens_of = TokenCache(tokenizer, documents)

    marked: dict[int, list[tuple[int, int]]] = {}
    if source == data.calibration:  # the same text (typed options equal: same source, path and field)
        for doc, start in calibration_spans(tokens_of, len(documents), data.nsamples, data.seqlen, data.seed):
            marked.setdefault(doc, []).append((start, start + data.seqlen))
    forbidden = {tuple(row) for row in calibration.tolist()} if calibration is not None else set()
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    order = list(range(len(documents)))
    random.Random(o.seed).shuffle(order)
    val_count = o.val_windows if o.val_on == "heldout" else 0
    want = None if needed is None else needed + val_count
    max_train = o.max_train_windows
    if max_train is not None:
        want = int(max_train) + val_count if want is None else min(want, int(max_train) + val_count)

    stream: list[int] = []
    bad: list[bool] = []
    windows: list[list[int]] = []
    cut = 0  # stream position up to which windows were cut
    excluded = dropped = total = 0
    for i in order:
        tokens = tokens_of(i)
        flags = np.zeros(len(tokens), dtype=bool)
        for start, end in marked.get(i, []):
            flags[start:end] = True
        excluded += int(flags.sum())
        stream += tokens
        bad += flags.tolist()
        total += len(tokens) + (separator is not None)
        if separator is not None:
            stream.append(separator)
            bad.append(False)
        while cut + seqlen <= len(stream):
            window = stream[cut : cut + seqlen]
            if any(bad[cut : cut + seqlen]) or tuple(window) in forbidden:
                dropped += 1
            else:
                windows.append(window)
            cut += seqlen
        del stream[:cut], bad[:cut]
        cut = 0
        if want is not None and len(windows) >= want:
            break
        tokens_of.forget(i)  # calibration draws are done: keep memory flat
    rng = random.Random(o.seed + 1)
    rng.shuffle(windows)
    tensor = torch.tensor(windows, dtype=torch.long).view(-1, seqlen)
    val, train = tensor[:val_count], tensor[val_count:]
    if max_train is not None:
        train = train[: int(max_train)]
    return TextWindows(train, val, excluded, dropped, total)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of windows (fp32 logits)."""
    logits = model(input_ids=batch).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def window_batches(windows: torch.Tensor, batch_size: int, device: torch.device) -> Callable[[int], Iterator[torch.Tensor]]:
    """Endless batches; the order is reshuffled every epoch (seeded); a short last batch is dropped."""

    def batches(seed: int) -> Iterator[torch.Tensor]:
        epoch = 0
        while True:
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(windows), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield windows[order[start : start + batch_size]].to(device)
            epoch += 1

    return batches


@torch.no_grad()
def mean_ppl(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    total = count = 0.0
    for batch in torch.split(windows, batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()
        count += batch[:, 1:].numel()
    nll = total / count
    return math.exp(nll) if math.isfinite(nll) and nll < 700 else math.inf


def validation_windows(tokenizer: Any, data: DataOptions, o: Any, text: TextWindows) -> torch.Tensor:
    """``val_on: heldout``: held-out fine-tune windows; ``eval``: the first ``val_windows`` of the run's eval windows."""
    if o.val_on == "heldout":
        if len(text.val) == 0:
            raise PruneError("finetune.val_windows must be >= 1 with finetune.val_on=heldout")
        return text.val
    windows = eval_windows(tokenizer, load_documents(data.eval), data.seqlen, data.max_eval_tokens)
    return windows[: o.val_windows] if o.val_windows else windows
