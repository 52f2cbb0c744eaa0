"""Fine-tuning after (or during) pruning: ``finetune=none | lm | lora | classifier``.

:func:`validate` checks the config before anything loads; :func:`plan` (in the pipeline's
``prepare``) builds the training data and checks it against the loaded model, so every bad
input fails before the run starts; :meth:`FineTune.run` (in ``execute``, after the one-shot
prune stage) trains with the masks kept exactly, runs the pruning schedule
(:mod:`prunecli.schedules`) and writes ``train.csv``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from prunecli import schedules
from prunecli.errors import PruneError, RunFailedError
from prunecli.finetune.loop import TrainTask, Trainer
from prunecli.finetune.masks import MaskKeeper
from prunecli.finetune.options import OPTIONS, FinetuneOptions, TrainOptions
from prunecli.options import choice_of, parse
from prunecli.registry import Registry

log = logging.getLogger(__name__)

FINETUNES: Registry[type[FinetuneOptions]] = Registry("finetune")
for _name, _options in OPTIONS.items():
    FINETUNES.add(_name, _options)
TASK_OF = {"lm": "causal_lm", "lora": "causal_lm", "classifier": "sequence_classifier"}
BEFORE_KEYS = ("ppl", "accuracy", "f1")  # evaluator figures recorded as <key>_before_finetune


def kind_of(cfg: Any) -> str:
    return choice_of(cfg, "finetune")


def validate(cfg: Any) -> FinetuneOptions:
    """Config-only checks (no model, no data): the fine-tune's typed options."""
    return parse(FINETUNES.get(kind_of(cfg)), cfg.get("finetune") or {"name": "none"}, "finetune")


@dataclass
class FineTune:
    """A checked fine-tune, ready to run on the pruned model."""

    kind: str
    cfg: Any
    options: TrainOptions  # the fine-tune's, typed
    task: TrainTask
    total_steps: int  # updates per round (iterative: per cycle)
    data_info: dict
    schedule: schedules.ScheduleOptions = field(default_factory=lambda: schedules.ScheduleOptions(name="oneshot"))

    def run(self, ctx: Any, layers: dict, evaluate: Callable[[torch.nn.Module], dict], run_dir: Path | None,
            keep_masks: bool = True) -> dict:
        """Train ``ctx.model`` in place; return the figures for metrics.json. ``keep_masks``: the
        zeros of ``layers`` are pruned weights to keep (False for a method that prunes nothing)."""
        cfg, o = self.cfg, self.options
        model = ctx.model
        schedule = schedules.SCHEDULES.get(self.schedule.name)
        metrics: dict[str, Any] = {}
        if o.eval_before and not schedule.prunes:
            before = evaluate(model)
            metrics.update({f"{key}_before_finetune": before[key] for key in BEFORE_KEYS if key in before})
        keeper = MaskKeeper(layers if keep_masks else {})  # a dense baseline has no masks to keep
        trainer = Trainer(o, ctx.device, run_dir, self.task.metric)
        train_model = model
        if self.kind == "lora":
            from prunecli.finetune import lora

            train_model = lora.wrap(model, list(layers), o)
        repruner = schedules.Repruner(ctx, self.schedule.recollect) if schedule.prunes else None
        run = schedules.Training(trainer, self.task, train_model, self.total_steps, keeper, repruner, float(cfg.sparsity), o.seed)
        result, cycles = schedule.train(self.schedule, run)
        if self.kind == "lora":
            from prunecli.finetune import lora

            lora.merge(train_model, model)
            keeper.apply()  # the merged low-rank update is dense: re-impose the masks
            metrics[f"{self.task.metric}_after_merge"] = trainer.validate(model, self.task)
            model.eval()
        bad = keeper.mismatches()
        if bad:
            raise RunFailedError(f"fine-tune broke the sparsity masks of {len(bad)} tensors (e.g. {bad[0]})")
        metrics["finetune_info"] = {
            "kind": self.kind, "schedule": schedules.describe(self.schedule, float(cfg.sparsity)), "steps_per_round": self.total_steps,
            "steps_total": trainer.step_offset, "batch_size": o.batch_size, "grad_accum": o.grad_accum,
            "lr": float(o.lr), "decay": o.decay, "validation": self.task.metric, **self.data_info, **result,
            "evaluations": trainer.evaluations,
        }
        if repruner is not None:
            metrics["finetune_info"]["pruning_events"] = repruner.events
            metrics["schedule_prune_s"] = repruner.seconds
        if cycles:
            metrics["finetune_info"]["cycles"] = cycles
        metrics["finetune_steps"] = trainer.step_offset
        metrics["finetune_epochs"] = o.epochs  # null when set by steps
        if "best_step" in result:
            metrics["finetune_best_step"] = result["best_step"]
            metrics[f"{self.task.metric}_best"] = result["best_" + self.task.metric]
        return metrics


def total_steps(o: TrainOptions, micro_batches_per_epoch: int) -> int:
    if o.steps is not None:
        return o.steps
    return o.epochs * max(1, math.ceil(micro_batches_per_epoch / o.grad_accum))


def plan(loaded: Any, cfg: Any, o: FinetuneOptions, schedule: schedules.ScheduleOptions, data: Any,
         calibration: torch.Tensor | None = None) -> FineTune | None:
    """Build and check the training data for the loaded model, for fine-tune ``o`` under ``schedule``
    (``data``: the run's DataOptions; bad input: :class:`PruneError`)."""
    kind = o.name
    if kind == "none":
        return None
    if loaded.task != TASK_OF[kind]:
        hint = {"sequence_classifier": "model=minilm_classifier (MiniLM + a classification head)", "causal_lm": "a causal LM such as model=smollm2_135m"}[TASK_OF[kind]]
        raise PruneError(f"finetune={kind} trains a {TASK_OF[kind]}, but model {loaded.name} is a {loaded.task}: use {hint}")
    if loaded.dtype != torch.float32:
        raise PruneError("fine-tuning needs fp32 master weights: set model.dtype=fp32 (finetune.precision=bf16|fp16 gives mixed-precision compute on CUDA)")
    if o.precision in ("bf16", "fp16") and loaded.device.type != "cuda":
        raise PruneError(f"finetune.precision={o.precision} is CUDA autocast; on {loaded.device.type} use finetune.precision=auto or fp32")
    if kind in ("lm", "lora"):
        task, info = lm_task(loaded, data, o, schedule, calibration)
    else:
        task, info = classifier_task(loaded, cfg, o)
    steps = total_steps(o, task.micro_batches_per_epoch)
    schedules.SCHEDULES.get(schedule.name).check_steps(schedule, steps)
    return FineTune(kind, cfg, o, task, steps, info, schedule)


def lm_task(loaded: Any, data: Any, o: Any, schedule: schedules.ScheduleOptions, calibration: torch.Tensor | None) -> tuple[TrainTask, dict]:
    from prunecli.finetune.lm import lm_loss, mean_ppl, training_windows, validation_windows, window_batches

    seqlen, batch = o.seqlen, o.batch_size
    if seqlen > loaded.max_length:
        raise PruneError(f"finetune.seqlen={seqlen} is longer than the context of {loaded.name} ({loaded.max_length} tokens)")
    rounds = schedules.SCHEDULES.get(schedule.name).rounds(schedule)
    needed = o.steps * batch * o.grad_accum * rounds if o.steps is not None else None
    text = training_windows(loaded.tokenizer, data, o, needed, calibration)
    if len(text.train) < batch:
        raise PruneError(
            f"the fine-tune text has {len(text.train) * seqlen} usable tokens ({len(text.train)} windows of finetune.seqlen={seqlen} "
            f"outside the calibration and validation windows), fewer than one batch "
            f"(finetune.batch_size={batch} x {seqlen} = {batch * seqlen} tokens): use more text or a smaller batch or seqlen"
        )
    val = validation_windows(loaded.tokenizer, data, o, text)
    device, eval_batch = loaded.device, o.eval_batch_size
    task = TrainTask(
        batches=window_batches(text.train, batch, device),
        loss=lm_loss,
        validate=lambda model: mean_ppl(model, val, eval_batch, device),
        metric="val_ppl",
        higher_is_better=False,
        micro_batches_per_epoch=len(text.train) // batch,
    )
    info = {"source": o.data.get("source"), "train_windows": len(text.train), "train_tokens": int(text.train.numel()),
            "val_on": o.val_on, "val_windows": len(val), "calibration_tokens_excluded": text.excluded_tokens,
            "windows_dropped_for_calibration": text.dropped_windows, "seqlen": seqlen}
    return task, info


def classifier_task(loaded: Any, cfg: Any, o: Any) -> tuple[TrainTask, dict]:
    from prunecli.finetune.classifier import classifier_loss, data_options, example_batches, score, splits_for

    batch = o.batch_size
    splits = splits_for(cfg)
    train, val = splits["train"], splits["val"]
    if o.max_train_examples:
        train = train[: o.max_train_examples]
    if o.max_val_examples:
        val = val[: o.max_val_examples]
    if len(train) < batch:
        raise PruneError(f"the fine-tune data has {len(train)} training examples, fewer than one batch (finetune.batch_size={batch})")
    max_length = int(data_options(cfg)["max_length"])
    device, tokenizer = loaded.device, loaded.tokenizer
    eval_batch = o.eval_batch_size
    task = TrainTask(
        batches=example_batches(train, tokenizer, batch, max_length, device),
        loss=classifier_loss,
        validate=lambda model: score(model, tokenizer, val, eval_batch, max_length, device)["accuracy"],
        metric="val_accuracy",
        higher_is_better=True,
        micro_batches_per_epoch=len(train) // batch,
    )
    info = {"source": "rotten_tomatoes", "train_examples": len(train), "val_examples": len(val),
            "test_examples": len(splits["test"]), "max_length": max_length}
    return task, info


from prunecli.finetune import classifier as _classifier  # noqa: E402,F401  (registers eval=accuracy's sequence_classifier task)
