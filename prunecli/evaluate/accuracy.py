"""``eval=accuracy``: classification accuracy (and F1), dispatched on the model's task.

:data:`ACCURACY_TASKS` maps ``LoadedModel.task`` to a factory ``(EvalContext) -> evaluate(model)``
whose metrics hold at least ``accuracy`` (``ctx.options``: :class:`AccuracyOptions`):

* ``image_classifier`` (registered here): the test split of ``model.dataset`` (its first
  ``eval.accuracy.max_examples`` images if set, else ``model.dataset.eval_samples``);
* ``sequence_classifier``: registered by :mod:`prunecli.finetune.classifier`, imported on
  first use (:data:`TASK_MODULES`).

A new task registers itself the same way::

    @ACCURACY_TASKS.register("my_task")
    def my_task(ctx):
        inputs, labels = ...                    # built once
        return lambda model: accuracy_f1(predict(model, inputs), labels, num_labels)
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from prunecli.errors import PruneError, RunFailedError, require_int
from prunecli.evaluate import EvalContext, Evaluator, register
from prunecli.options import Options, at_least
from prunecli.registry import Registry


@dataclass(frozen=True)
class AccuracyOptions(Options):
    batch_size: int = 64  # examples per forward pass
    max_examples: int | None = None  # score only the first N test examples (null: all)

    def check(self, prefix: str) -> None:
        at_least(self, prefix, "batch_size", 1)
        require_int(self.max_examples, f"{prefix}.max_examples", null="for every example")


ACCURACY_TASKS: Registry[Callable[[EvalContext], Callable[[torch.nn.Module], dict]]] = Registry("accuracy task")
TASK_EVALUATORS = ACCURACY_TASKS  # alias
# Tasks registered by modules that are imported only when a run asks for them.
TASK_MODULES = {"sequence_classifier": "prunecli.finetune.classifier"}


def f1_score(predictions: Sequence[int], labels: Sequence[int], num_classes: int = 2) -> float:
    """``F1_c = 2 tp / (2 tp + fp + fn)`` (0 without a true positive): of the positive class 1 for
    two classes, else the macro mean over the classes present in the labels or the predictions
    (scikit-learn's ``average="macro"``)."""
    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]

    def f1(c: int) -> float:
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        wrong = sum((p == c) != (y == c) for p, y in zip(predictions, labels))  # fp + fn
        return 2 * tp / (2 * tp + wrong) if tp else 0.0

    if num_classes <= 2:
        return f1(1)
    present = sorted(set(predictions) | set(labels))
    return sum(f1(c) for c in present) / len(present) if present else 0.0


def accuracy_f1(predictions: Sequence[int], labels: Sequence[int], num_labels: int = 2) -> dict:
    """``accuracy`` and ``f1`` (:func:`f1_score`)."""
    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    n = len(labels)
    accuracy = sum(p == y for p, y in zip(predictions, labels)) / n if n else 0.0
    return {"accuracy": accuracy, "f1": f1_score(predictions, labels, num_labels)}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """From ``(N, classes)`` logits: ``accuracy`` (top-1), ``f1`` (as :func:`accuracy_f1`), ``top5_accuracy``
    (5 classes or more), mean cross-entropy ``eval_loss`` and ``eval_samples``.

    Non-finite logits raise :class:`RunFailedError` instead of reporting a number.
    """
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if not torch.isfinite(logits).all():
        raise RunFailedError("evaluation logits are not finite (NaN/inf)")
    metrics = accuracy_f1(logits.argmax(1).tolist(), labels.tolist(), logits.shape[1])
    metrics["eval_loss"] = F.cross_entropy(logits, labels).item()
    metrics["eval_samples"] = len(labels)
    if logits.shape[1] >= 5:
        metrics["top5_accuracy"] = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean().item()
    if not math.isfinite(metrics["eval_loss"]):
        raise RunFailedError(f"evaluation loss is {metrics['eval_loss']}")
    return metrics


@torch.no_grad()
def classifier_logits(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device,
                      prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of ``model`` (eval mode) over ``inputs`` in batches (each through ``prepare``), fp32 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        dtype = next(model.parameters()).dtype
        batches = (prepare(b) if prepare else b for b in torch.split(inputs, batch_size))
        return torch.cat([model(batch.to(device=device, dtype=dtype)).float().cpu() for batch in batches])
    finally:
        model.train(was_training)


@ACCURACY_TASKS.register("image_classifier")
def image_classifier(ctx: EvalContext) -> Callable[[torch.nn.Module], dict]:
    from prunecli.data.vision import eval_images, fit_to

    loaded = ctx.loaded
    images, labels = eval_images(ctx.model.dataset, None, ctx.options.max_examples)  # native size, fitted per batch
    batch_size = ctx.options.batch_size
    fit = lambda batch: fit_to(batch, loaded.input_shape)  # noqa: E731
    return lambda model: classification_metrics(classifier_logits(model, images, batch_size, loaded.device, fit), labels)


def task_evaluator(task: str, name: str = "the model") -> Callable[[EvalContext], Callable[[torch.nn.Module], dict]]:
    if task not in ACCURACY_TASKS and task in TASK_MODULES:
        importlib.import_module(TASK_MODULES[task])
    if task not in ACCURACY_TASKS:
        raise PruneError(f"eval=accuracy has no evaluator for {name}, a {task} "
                         f"(tasks: {', '.join(sorted({*ACCURACY_TASKS.names(), *TASK_MODULES}))}; use eval=perplexity or eval=none)")
    return ACCURACY_TASKS.get(task)


def accuracy_evaluator(ctx: EvalContext) -> Callable[[torch.nn.Module], dict]:
    return task_evaluator(ctx.loaded.task, f"model {ctx.loaded.name}")(ctx)


register(Evaluator("accuracy", accuracy_evaluator, AccuracyOptions))
