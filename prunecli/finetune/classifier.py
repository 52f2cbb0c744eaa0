"""``finetune=classifier``: train an encoder + classification head on movie-review sentiment.

The model is a sequence classifier (``model=minilm_classifier``: packaged all-MiniLM-L6-v2 with
a fresh, seeded 2-way head; ``model=tiny_bert_classifier`` for tests). Data: the Rotten
Tomatoes snippets and their fixed seeded split (:mod:`prunecli.data.reviews`): the loop
trains on ``train``, selects the best checkpoint on ``val``, and ``eval=accuracy`` (task
``sequence_classifier``, registered here) reports accuracy and F1 (positive class: fresh) on
``test``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch

from prunecli.data.reviews import Example, review_splits
from prunecli.evaluate.accuracy import TASK_EVALUATORS, classification_metrics

DEFAULTS = {"source": "rotten_tomatoes", "seed": 0, "fractions": [0.8, 0.1, 0.1], "max_length": 128}


def data_options(cfg: Any) -> dict:
    """The review data settings: ``finetune.data`` when it is the review source, else the defaults."""
    finetune = cfg.get("finetune") or {}
    data = finetune.get("data") if finetune.get("name") == "classifier" else None
    options = dict(DEFAULTS)
    if data is not None:
        options.update({key: data.get(key, value) for key, value in DEFAULTS.items()})
    return options


def splits_for(cfg: Any) -> dict[str, list[Example]]:
    from prunecli.errors import PruneError

    options = data_options(cfg)
    if options["source"] != "rotten_tomatoes":
        raise PruneError(f"finetune=classifier knows the data source rotten_tomatoes (got {options['source']!r})")
    return review_splits(int(options["seed"]), tuple(float(f) for f in options["fractions"]))


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> dict:
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {key: value.to(device) for key, value in encoded.items()}


@torch.no_grad()
def logits_of(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], batch_size: int, max_length: int, device: torch.device) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([
            model(**encode(tokenizer, [e.text for e in examples[start : start + batch_size]], max_length, device)).logits.float().cpu()
            for start in range(0, len(examples), batch_size)
        ])
    finally:
        model.train(was_training)


def score(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], batch_size: int, max_length: int, device: torch.device) -> dict:
    """``accuracy``, ``f1`` (positive class: fresh) and the shared classification figures."""
    logits = logits_of(model, tokenizer, examples, batch_size, max_length, device)
    labels = torch.tensor([e.label for e in examples])
    return classification_metrics(logits, labels)


@TASK_EVALUATORS.register("sequence_classifier")
def sequence_classifier_accuracy(ctx: Any) -> Callable[[torch.nn.Module], dict]:
    """Accuracy and F1 on the review test split (``eval.accuracy.max_examples``: only the first N)."""
    loaded, options = ctx.loaded, ctx.options
    test = splits_for(ctx.cfg)["test"]
    if options.max_examples:
        test = test[: options.max_examples]
    max_length = int(data_options(ctx.cfg)["max_length"])
    batch_size = options.batch_size
    return lambda model: score(model, loaded.tokenizer, test, batch_size, max_length, loaded.device)


def example_batches(examples: Sequence[Example], tokenizer: Any, batch_size: int, max_length: int, device: torch.device) -> Callable[[int], Iterator[tuple[dict, torch.Tensor]]]:
    """Endless (inputs, labels) batches, reshuffled every epoch (seeded); a short last batch is dropped."""

    def batches(seed: int) -> Iterator[tuple[dict, torch.Tensor]]:
        epoch = 0
        while True:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
            for start in range(0, len(order) - batch_size + 1, batch_size):
                chunk = [examples[i] for i in order[start : start + batch_size]]
                yield encode(tokenizer, [e.text for e in chunk], max_length, device), torch.tensor([e.label for e in chunk], device=device)
            epoch += 1

    return batches


def classifier_loss(model: torch.nn.Module, batch: tuple[dict, torch.Tensor]) -> torch.Tensor:
    inputs, labels = batch
    logits = model(**inputs).logits.float()
    return torch.nn.functional.cross_entropy(logits, labels)
