"""Text sources (``data.calibration`` / ``data.eval``) and the windows cut from them.

A source returns a list of documents. Calibration draws ``nsamples`` random windows of
``seqlen`` tokens with the reference code's rule (Wanda / SparseGPT); evaluation joins the
documents with ``"\\n\\n"``, tokenises them as one string and cuts non-overlapping windows.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch

from prunecli.errors import PruneError
from prunecli.registry import Registry

# A source takes its config node and returns the documents as a list of strings.
TEXT_SOURCES: Registry[Callable[[Any], list[str]]] = Registry("data source")


def load_documents(source_cfg: Any) -> list[str]:
    return TEXT_SOURCES.get(source_cfg.source)(source_cfg)


class TokenCache:
    """``tokens(i)``: the token ids of ``documents[i]`` (no special tokens), each document
    tokenised once until ``forget(i)``."""

    def __init__(self, tokenizer: Any, documents: list[str]):
        self.tokenizer, self.documents = tokenizer, documents
        self.cache: dict[int, list[int]] = {}

    def __call__(self, i: int) -> list[int]:
        if i not in self.cache:
            self.cache[i] = self.tokenizer(self.documents[i], add_special_tokens=False)["input_ids"]
        return self.cache[i]

    def forget(self, i: int) -> None:
        self.cache.pop(i, None)


def calibration_spans(tokens_of: Callable[[int], list[int]], ndocs: int, nsamples: int, seqlen: int, seed: int) -> list[tuple[int, int]]:
    """``(document, start)`` of each calibration window, the reference code's rule:

    ``random.seed(seed)``; repeat: ``i = randint(0, ndocs - 1)``; if document ``i`` has no more
    than ``seqlen`` tokens draw again, else ``j = randint(0, ntok - seqlen - 1)``: the window is
    ``tokens[j : j + seqlen]``. No document longer than ``seqlen``: no spans.
    """
    if not any(len(tokens_of(i)) > seqlen for i in range(ndocs)):
        return []
    rng = random.Random(seed)
    spans = []
    while len(spans) < nsamples:
        i = rng.randint(0, ndocs - 1)
        ntok = len(tokens_of(i))
        if ntok <= seqlen:
            continue
        spans.append((i, rng.randint(0, ntok - seqlen - 1)))
    return spans


def calibration_windows(tokenizer: Any, documents: list[str], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens drawn by :func:`calibration_spans`: a ``(nsamples, seqlen)`` LongTensor."""
    if nsamples < 1:
        raise PruneError(f"data.nsamples must be at least 1 (got {nsamples})")
    tokens_of = TokenCache(tokenizer, documents)
    spans = calibration_spans(tokens_of, len(documents), nsamples, seqlen, seed)
    if not spans:
        raise PruneError(
            f"calibration text is too short: no document has more than data.seqlen={seqlen} tokens "
            f"({len(documents)} documents); lower data.seqlen or use a longer corpus"
        )
    return torch.tensor([tokens_of(i)[j : j + seqlen] for i, j in spans], dtype=torch.long)


def eval_windows(tokenizer: Any, documents: list[str], seqlen: int, max_tokens: int | None) -> torch.Tensor:
    """The first non-overlapping ``seqlen`` windows of ``"\\n\\n".join(documents)``.

    At most ``max_tokens`` tokens are used (``None``: all). Returns ``(nwindows, seqlen)``.
    """
    text = "\n\n".join(documents)
    if max_tokens:
        # Tokenise a prefix generous enough for max_tokens; a cut mid-word only affects the tail.
        text = text[: max(64, 16 * max_tokens)]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    usable = len(ids) if not max_tokens else min(len(ids), max_tokens)
    nwindows = usable // seqlen
    if nwindows == 0:
        raise PruneError(
            f"eval text is shorter than one window: {len(ids)} tokens < data.seqlen={seqlen}"
            + (f" (data.max_eval_tokens={max_tokens})" if max_tokens and max_tokens < seqlen else "")
        )
    return torch.tensor(ids[: nwindows * seqlen], dtype=torch.long).view(nwindows, seqlen)


# Register the sources.
from prunecli.data import files, hub, packaged  # noqa: E402,F401
