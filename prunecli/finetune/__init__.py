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
from prunecli.errors import PruneError, RunFailedError, require_int
from prunecli.finetune.loop import DECAYS, PRECISIONS, TrainTask, Trainer
from prunecli.finetune.masks import MaskKeeper

log = logging.getLogger(__name__)

KINDS = ("none", "lm", "lora", "classifier")
TASK_OF = {"lm": "causal_lm", "lora": "causal_lm", "classifier": "sequence_classifier"}
BEFORE_KEYS = ("ppl", "accuracy", "f1")  # evaluator figures recorded as <key>_before_finetune


def kind_of(cfg: Any) -> str:
    return (cfg.get("finetune") or {"name": "none"}).get("name", "none")


def validate(cfg: Any) -> None:
    """Config-only checks (no model, no data)."""
    kind = kind_of(cfg)
    if kind not in KINDS:
        raise PruneError(f"unknown finetune {kind!r} (choose from: {', '.join(KINDS)})")
    schedules.validate(cfg)
    if kind == "none":
        return
    o = cfg.finetune
    lr = o.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or not math.isfinite(lr):
        raise PruneError(f"finetune.lr must be a number > 0 (got {lr!r})")
    if (o.get("steps") is None) == (o.get("epochs") is None):
        raise PruneError(f"set exactly one of finetune.steps and finetune.epochs (got steps={o.get('steps')!r}, epochs={o.get('epochs')!r})")
    for key in ("steps", "epochs"):
        require_int(o.get(key), f"finetune.{key}", null="")
    for key in ("batch_size", "grad_accum", "eval_every"):
        require_int(o.get(key), f"finetune.{key}")
    if kind in ("lm", "lora"):
        require_int(o.get("seqlen"), "finetune.seqlen")
    for key in ("weight_decay", "min_lr_ratio", "warmup_ratio"):
        value = o.get(key, 0.0)
        if not isinstance(value, (int, float)) or value < 0:
            raise PruneError(f"finetune.{key} must be a number >= 0 (got {value!r})")
    if o.get("warmup_steps") is not None and (not isinstance(o.warmup_steps, int) or o.warmup_steps < 0):
        raise PruneError(f"finetune.warmup_steps must be an integer >= 0 or null (got {o.warmup_steps!r})")
    if o.get("max_grad_norm") is not None and not (isinstance(o.max_grad_norm, (int, float)) and o.max_grad_norm > 0):
        raise PruneError(f"finetune.max_grad_norm must be > 0 or null (no clipping) (got {o.max_grad_norm!r})")
    if o.decay not in DECAYS:
        raise PruneError(f"unknown finetune.decay {o.decay!r} (choose from: {', '.join(DECAYS)})")
    if o.precision not in PRECISIONS:
        raise PruneError(f"unknown finetune.precision {o.precision!r} (choose from: {', '.join(PRECISIONS)})")
    if o.get("checkpoint", "memory") not in ("memory", "disk"):
        raise PruneError(f"finetune.checkpoint must be memory or disk (got {o.checkpoint!r})")
    if kind == "lora":
        from prunecli.finetune.lora import check_installed

        check_installed()
        require_int(o.get("r"), "finetune.r")


@dataclass
class FineTune:
    """A checked fine-tune, ready to run on the pruned model."""

    kind: str
    cfg: Any
    task: TrainTask
    total_steps: int  # updates per round (iterative: per cycle)
    data_info: dict
    schedule: schedules.ScheduleOptions = field(default_factory=schedules.ScheduleOptions)

    def run(self, ctx: Any, layers: dict, evaluate: Callable[[torch.nn.Module], dict], run_dir: Path | None,
            keep_masks: bool = True) -> dict:
        """Train ``ctx.model`` in place; return the figures for metrics.json. ``keep_masks``: the
        zeros of ``layers`` are pruned weights to keep (False for a method that prunes nothing)."""
        cfg, o = self.cfg, self.cfg.finetune
        model = ctx.model
        schedule = schedules.SCHEDULES.get(self.schedule.name)
        metrics: dict[str, Any] = {}
        if o.get("eval_before", True) and not schedule.prunes:
            before = evaluate(model)
            metrics.update({f"{key}_before_finetune": before[key] for key in BEFORE_KEYS if key in before})
        keeper = MaskKeeper(layers if keep_masks else {})  # a dense baseline has no masks to keep
        trainer = Trainer(o, ctx.device, run_dir, self.task.metric)
        train_model = model
        if self.kind == "lora":
            from prunecli.finetune import lora

            train_model = lora.wrap(model, list(layers), o)
        repruner = schedules.Repruner(ctx, self.schedule.recollect) if schedule.prunes else None
        run = schedules.Training(trainer, self.task, train_model, self.total_steps, keeper, repruner, float(cfg.sparsity), int(o.get("seed", 0)))
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
            "kind": self.kind, "schedule": schedules.describe(cfg), "steps_per_round": self.total_steps,
            "steps_total": trainer.step_offset, "batch_size": int(o.batch_size), "grad_accum": int(o.grad_accum),
            "lr": float(o.lr), "decay": o.decay, "validation": self.task.metric, **self.data_info, **result,
            "evaluations": trainer.evaluations,
        }
        if repruner is not None:
            metrics["finetune_info"]["pruning_events"] = repruner.events
            metrics["schedule_prune_s"] = repruner.seconds
        if cycles:
            metrics["finetune_info"]["cycles"] = cycles
        metrics["finetune_steps"] = trainer.step_offset
        metrics["finetune_epochs"] = o.get("epochs")  # null when set by steps
        if "best_step" in result:
            metrics["finetune_best_step"] = result["best_step"]
            metrics[f"{self.task.metric}_best"] = result["best_" + self.task.metric]
        return metrics


def total_steps(o: Any, micro_batches_per_epoch: int) -> int:
    if o.get("steps") is not None:
        return int(o.steps)
    return int(o.epochs) * max(1, math.ceil(micro_batches_per_epoch / int(o.grad_accum)))


def plan(loaded: Any, cfg: Any, calibration: torch.Tensor | None = None) -> FineTune | None:
    """Build and check the training data for the loaded model (bad input: :class:`PruneError`)."""
    kind = kind_of(cfg)
    if kind == "none":
        return None
    o = cfg.finetune
    if loaded.task != TASK_OF[kind]:
        hint = {"sequence_classifier": "model=minilm_classifier (MiniLM + a classification head)", "causal_lm": "a causal LM such as model=smollm2_135m"}[TASK_OF[kind]]
        raise PruneError(f"finetune={kind} trains a {TASK_OF[kind]}, but model {loaded.name} is a {loaded.task}: use {hint}")
    if loaded.dtype != torch.float32:
        raise PruneError("fine-tuning needs fp32 master weights: set model.dtype=fp32 (finetune.precision=bf16|fp16 gives mixed-precision compute on CUDA)")
    if o.precision in ("bf16", "fp16") and loaded.device.type != "cuda":
        raise PruneError(f"finetune.precision={o.precision} is CUDA autocast; on {loaded.device.type} use finetune.precision=auto or fp32")
    batch, accum = int(o.batch_size), int(o.grad_accum)
    if kind in ("lm", "lora"):
        task, info = lm_task(loaded, cfg, calibration, batch, accum)
    else:
        task, info = classifier_task(loaded, cfg, batch)
    steps = total_steps(o, task.micro_batches_per_epoch)
    schedule = schedules.options_of(cfg)
    schedules.SCHEDULES.get(schedule.name).check_steps(schedule, steps)
    return FineTune(kind, cfg, task, steps, info, schedule)


def lm_task(loaded: Any, cfg: Any, calibration: torch.Tensor | None, batch: int, accum: int) -> tuple[TrainTask, dict]:
    from prunecli.finetune.lm import lm_loss, mean_ppl, training_windows, validation_windows, window_batches

    o = cfg.finetune
    seqlen = int(o.seqlen)
    if seqlen > loaded.max_length:
        raise PruneError(f"finetune.seqlen={seqlen} is longer than the context of {loaded.name} ({loaded.max_length} tokens)")
    schedule = schedules.options_of(cfg)
    rounds = schedules.SCHEDULES.get(schedule.name).rounds(schedule)
    needed = int(o.steps) * batch * accum * rounds if o.get("steps") is not None else None
    text = training_windows(loaded.tokenizer, cfg, needed, calibration)
    if len(text.train) < batch:
        raise PruneError(
            f"the fine-tune text has {len(text.train) * seqlen} usable tokens ({len(text.train)} windows of finetune.seqlen={seqlen} "
            f"outside the calibration and validation windows), fewer than one batch "
            f"(finetune.batch_size={batch} x {seqlen} = {batch * seqlen} tokens): use more text or a smaller batch or seqlen"
        )
    val = validation_windows(loaded.tokenizer, cfg, text)
    device, eval_batch = loaded.device, int(o.get("eval_batch_size", batch))
    task = TrainTask(
        batches=window_batches(text.train, batch, device),
        loss=lm_loss,
        validate=lambda model: mean_ppl(model, val, eval_batch, device),
        metric="val_ppl",
        higher_is_better=False,
        micro_batches_per_epoch=len(text.train) // batch,
    )
    info = {"source": o.data.source, "train_windows": len(text.train), "train_tokens": int(text.train.numel()),
            "val_on": o.val_on, "val_windows": len(val), "calibration_tokens_excluded": text.excluded_tokens,
            "windows_dropped_for_calibration": text.dropped_windows, "seqlen": seqlen}
    return task, info


def classifier_task(loaded: Any, cfg: Any, batch: int) -> tuple[TrainTask, dict]:
    from prunecli.finetune.classifier import classifier_loss, data_options, example_batches, score, splits_for

    o = cfg.finetune
    splits = splits_for(cfg)
    train, val = splits["train"], splits["val"]
    if o.get("max_train_examples"):
        train = train[: int(o.max_train_examples)]
    if o.get("max_val_examples"):
        val = val[: int(o.max_val_examples)]
    if len(train) < batch:
        raise PruneError(f"the fine-tune data has {len(train)} training examples, fewer than one batch (finetune.batch_size={batch})")
    max_length = int(data_options(cfg)["max_length"])
    device, tokenizer = loaded.device, loaded.tokenizer
    eval_batch = int(o.get("eval_batch_size", 64))
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
