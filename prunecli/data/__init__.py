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


def calibration_windows(tokenizer: Any, documents: list[str], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens, drawn exactly as the reference code does.

    ``random.seed(seed)``; repeat: ``i = randint(0, len(docs) - 1)``; tokenise doc ``i``; if it
    has no more than ``seqlen`` tokens draw again, else ``j = randint(0, ntok - seqlen - 1)``
    and take ``tokens[j : j + seqlen]``. Returns a ``(nsamples, seqlen)`` LongTensor.
    """
    if nsamples < 1:
        raise PruneError(f"data.nsamples must be at least 1 (got {nsamples})")
    token_cache: dict[int, list[int]] = {}

    def tokens_of(i: int) -> list[int]:
        if i not in token_cache:
            token_cache[i] = tokenizer(documents[i], add_special_tokens=False)["input_ids"]
        return token_cache[i]

    if not any(len(tokens_of(i)) > seqlen for i in range(len(documents))):
        raise PruneError(
            f"calibration text is too short: no document has more than data.seqlen={seqlen} tokens "
            f"({len(documents)} documents); lower data.seqlen or use a longer corpus"
        )
    rng = random.Random(seed)
    windows = []
    while len(windows) < nsamples:
        i = rng.randint(0, len(documents) - 1)
        tokens = tokens_of(i)
        if len(tokens) <= seqlen:
            continue
        j = rng.randint(0, len(tokens) - seqlen - 1)
        windows.append(tokens[j : j + seqlen])
    return torch.tensor(windows, dtype=torch.long)


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
