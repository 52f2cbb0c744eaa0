"""The training loop shared by every fine-tune (causal LM, LoRA, classifier).

AdamW (no weight decay on biases and norm weights), linear warm-up then cosine / linear /
constant decay to ``min_lr_ratio * lr``, gradient accumulation, gradient-norm clipping,
bf16/fp16 autocast on CUDA only (fp16 with a gradient scaler), validation every
``eval_every`` updates with the best checkpoint kept (in memory or as safetensors in the run
directory), and masks kept exactly (:class:`MaskKeeper`). A non-finite loss or gradient norm
stops the run: the last good weights are saved and :class:`RunFailedError` names the step.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from prunecli.errors import RunFailedError
from prunecli.finetune.masks import MaskKeeper
from prunecli.options import parse
from prunecli.outputs import write_csv

log = logging.getLogger(__name__)



@dataclass
class TrainTask:
    """What the loop trains on and how it is scored."""

    batches: Callable[[int], Iterator[Any]]  # seed -> endless micro-batches (reshuffled every epoch)
    loss: Callable[[nn.Module, Any], torch.Tensor]
    validate: Callable[[nn.Module], float]
    metric: str  # train.csv column of the validation figure, e.g. "val_ppl"
    higher_is_better: bool
    micro_batches_per_epoch: int


def lr_factor(step: int, total: int, warmup: int, decay: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for update ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast_for(precision: str, device: torch.device):
    """(context factory, grad scaler or None): autocast only on CUDA."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    for name, value in state.items():
        parameters[name].copy_(value.to(parameters[name].device))


@dataclass
class TrainLog:
    """train.csv rows, written atomically at every validation and at the end."""

    path: Path | None
    metric: str
    rows: list[dict] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return ["step", "cycle", "epoch", "loss", "lr", "grad_norm", "sparsity", self.metric, "elapsed_s"]

    def write(self) -> None:
        if self.path is not None and self.rows:
            write_csv(self.path, self.rows, self.columns)


class Trainer:
    def __init__(self, options: Any, device: torch.device, run_dir: Path | None, metric: str):
        from prunecli.finetune.options import TrainOptions

        self.o = options if isinstance(options, TrainOptions) else parse(TrainOptions, options, "finetune")
        self.device = device
        self.run_dir = run_dir
        self.log = TrainLog(run_dir / "train.csv" if run_dir is not None else None, metric)
        self.started = time.perf_counter()
        self.step_offset = 0  # updates done in earlier cycles
        self.evaluations: list[tuple[int, float]] = []

    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "finetune" if self.run_dir is not None else None

    def train(self, model: nn.Module, task: TrainTask, steps: int, keeper: MaskKeeper, *,
              on_step: Callable[[int, torch.optim.Optimizer], None] | None = None, select_from: int = 0,
              cycle: int = 0, seed: int = 0) -> dict:
        """``steps`` updates; ``on_step(t, optimizer)`` runs before update t (schedules prune there).

        Only validations after ``select_from`` updates may become the kept best checkpoint (a
        gradual schedule's checkpoints before its end_step have a lower sparsity).
        """
        o = self.o
        accum = o.grad_accum
        optimizer = torch.optim.AdamW(param_groups(model, float(o.weight_decay)), lr=float(o.lr), betas=tuple(o.betas), eps=float(o.eps))
        warmup = o.warmup_steps if o.warmup_steps is not None else int(round(float(o.warmup_ratio) * steps))
        factor = lambda t: lr_factor(t, steps, warmup, o.decay, float(o.min_lr_ratio))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        autocast, scaler = autocast_for(o.precision, self.device)
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = float(o.max_grad_norm) if o.max_grad_norm else math.inf
        batches = task.batches(seed)
        keeper.register_hooks()
        best: dict | None = None
        eval_every = o.eval_every
        model.train()
        try:
            for t in range(steps):
                if on_step is not None:
                    on_step(t, optimizer)
                loss_sum = 0.0
                for _ in range(accum):
                    batch = next(batches)
                    with autocast():
                        loss = task.loss(model, batch)
                    if not torch.isfinite(loss.detach()).all():
                        self.diverged(model, t + 1, f"loss is {loss.item()}")
                    (scaler.scale(loss / accum) if scaler else loss / accum).backward()
                    loss_sum += loss.item() / accum
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
                if scaler is None and not math.isfinite(grad_norm):
                    self.diverged(model, t + 1, f"gradient norm is {grad_norm}")
                lr = scheduler.get_last_lr()[0]
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                keeper.apply()
                done = t + 1
                row = {"step": self.step_offset + done, "cycle": cycle, "epoch": round(done * accum / max(1, task.micro_batches_per_epoch), 4),
                       "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "sparsity": keeper.sparsity()}
                if done % eval_every == 0 or done == steps:
                    value = self.validate(model, task)
                    row[task.metric] = value
                    self.evaluations.append((self.step_offset + done, value))
                    if done >= select_from and o.keep_best and self.better(value, best, task):
                        best = self.save_best(model, value, self.step_offset + done)
                row["elapsed_s"] = round(time.perf_counter() - self.started, 3)
                self.log.rows.append(row)
                if task.metric in row:
                    self.log.write()
        finally:
            keeper.remove_hooks()
            model.eval()
        final_value = self.log.rows[-1].get(task.metric) if self.log.rows else None
        result = {"steps": steps, "final_step": self.step_offset + steps, "final_" + task.metric: final_value, "warmup_steps": warmup}
        if best is not None and best["step"] != self.step_offset + steps:
            self.restore_best(model, best)
            keeper.apply()
        if best is not None:
            result.update(best_step=best["step"], **{"best_" + task.metric: best["value"]})
        self.step_offset += steps
        self.log.write()
        return result

    def validate(self, model: nn.Module, task: TrainTask) -> float:
        model.eval()
        try:
            with torch.no_grad():
                return float(task.validate(model))
        finally:
            model.train()

    @staticmethod
    def better(value: float, best: dict | None, task: TrainTask) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best["value"] if task.higher_is_better else value < best["value"]

    def save_best(self, model: nn.Module, value: float, step: int) -> dict:
        state = trainable_state(model)
        if self.o.checkpoint == "disk" and self.checkpoint_dir() is not None:
            from safetensors.torch import save_file

            path = self.checkpoint_dir() / "best.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(state, str(path), metadata={"step": str(step), "value": repr(value)})
            return {"step": step, "value": value, "path": path}
        return {"step": step, "value": value, "state": state}

    def restore_best(self, model: nn.Module, best: dict) -> None:
        if "path" in best:
            from safetensors.torch import load_file

            load_state(model, load_file(str(best["path"])))
        else:
            load_state(model, best["state"])
        log.info("fine-tune: restored the best checkpoint (step %d, %s)", best["step"], best["value"])

    def diverged(self, model: nn.Module, step: int, what: str) -> None:
        """Save the last good weights (those before this update) and stop the run."""
        step_total = self.step_offset + step
        self.log.rows.append({"step": step_total, "loss": math.nan, "elapsed_s": round(time.perf_counter() - self.started, 3)})
        self.log.write()
        where = ""
        if self.checkpoint_dir() is not None:
            from safetensors.torch import save_model

            path = self.checkpoint_dir() / "last_good.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, str(path), metadata={"step": str(step_total - 1)})
            where = f"; the last good weights (after step {step_total - 1}) are in {path}"
        raise RunFailedError(f"fine-tune diverged at step {step_total}: {what}{where}")
