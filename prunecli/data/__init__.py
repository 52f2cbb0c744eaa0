"""The ``data`` options, text sources (``data.calibration`` / ``data.eval``) and the windows cut from them.

``data`` is parsed once into :class:`DataOptions` (:func:`parse_data`), its two source nodes
into their sources' typed options. A source is one :class:`TextSource` (its loader and
options), registered with :func:`register_source`; it returns a list of documents. Calibration draws ``nsamples`` random windows of
``seqlen`` tokens with the reference code's rule (Wanda / SparseGPT); evaluation joins the
documents with ``"\\n\\n"``, tokenises them as one string and cuts non-overlapping windows.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from prunecli.errors import PruneError, require_int
from prunecli.options import Options, at_least, node_values, parse
from prunecli.registry import Registry


@dataclass(frozen=True)
class SourceOptions(Options):
    """A text source's node (``data/calibration=<source>``, ``data/eval=<source>``, an LM fine-tune's
    ``finetune.data``); ``source`` names the registered source."""

    source: str = ""


@dataclass(frozen=True)
class TextSource:
    """``load(options) -> documents``, and the typed options of its node."""

    name: str
    load: Callable[[Any], list[str]]
    options: type[SourceOptions] = SourceOptions


TEXT_SOURCES: Registry[TextSource] = Registry("data source")


def register_source(name: str, options: type[SourceOptions] = SourceOptions) -> Callable:
    """Decorator: register ``load`` as the text source ``name`` with typed ``options``."""
    def add(load: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
        TEXT_SOURCES.add(name, TextSource(name, load, options))
        return load

    return add


def source_options(node: Any, prefix: str) -> SourceOptions:
    """A source node (config node or mapping) as its source's typed options; typed options as they are.
    Keys set to null are not set (a node shared by every source, like ``finetune.data``, lists ``path: null``)."""
    if isinstance(node, SourceOptions):
        return node
    values = node_values(node, prefix)
    name = values.get("source")
    if not name:
        raise PruneError(f"{prefix}.source is missing (choose from: {', '.join(TEXT_SOURCES.names())})")
    return parse(TEXT_SOURCES.get(name).options, {key: value for key, value in values.items() if value is not None}, prefix)


def load_documents(source: Any, prefix: str = "data") -> list[str]:
    """The documents of ``source`` (typed options, or a node parsed under ``prefix``)."""
    options = source_options(source, prefix)
    return TEXT_SOURCES.get(options.source).load(options)


@dataclass(frozen=True)
class DataOptions(Options):
    """The ``data`` node: calibration sampling, the window length, the evaluation budget, the two sources."""

    nsamples: int = 64  # calibration windows
    seqlen: int = 512  # tokens per window (calibration and evaluation)
    seed: int = 0  # calibration sampling seed
    max_eval_tokens: int | None = 16384  # evaluation budget (null: the whole text)
    calibration: Any = None  # SourceOptions once parsed
    eval: Any = None  # SourceOptions once parsed

    def check(self, prefix: str) -> None:
        at_least(self, prefix, "nsamples", 1)
        at_least(self, prefix, "seqlen", 1)
        require_int(self.max_eval_tokens, f"{prefix}.max_eval_tokens", null="for the whole text")


def parse_data(node: Any) -> DataOptions:
    """The ``data`` node as :class:`DataOptions`, both sources typed (every key and value checked)."""
    options = parse(DataOptions, node, "data")
    return dataclasses.replace(options, calibration=source_options(options.calibration, "data.calibration"),
                               eval=source_options(options.eval, "data.eval"))


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
