"""The fine-tune options (``configs/finetune/<name>.yaml``), typed once: :class:`TrainOptions`
for the loop every fine-tune shares, :class:`LMOptions` / :class:`LoraOptions` for causal-LM
text, :class:`ClassifierOptions` for the review classifier. :data:`OPTIONS` maps each
``finetune`` name to its class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from prunecli.errors import PruneError
from prunecli.options import Options, at_least


@dataclass(frozen=True)
class FinetuneOptions(Options):
    """A fine-tune's options (``none``: nothing to set)."""


@dataclass(frozen=True)
class TrainOptions(FinetuneOptions):
    """The training loop (:mod:`prunecli.finetune.loop`)."""

    data: dict = field(default_factory=dict)  # the training data (each fine-tune's own keys)
    seed: int = 1  # data shuffling
    steps: int | None = 100  # optimizer updates (or steps: null and epochs: N)
    epochs: int | None = None
    batch_size: int = 4  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per update
    lr: float = 2.0e-5
    weight_decay: float = 0.0  # AdamW decoupled decay (not on biases and norm weights)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    warmup_steps: int | None = None  # linear warm-up updates (null: warmup_ratio x steps)
    warmup_ratio: float = 0.05
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0  # gradient clipping (null: none)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every: int = 25  # validate every N updates (and after the last)
    eval_batch_size: int = 4
    keep_best: bool = True  # restore the best validated checkpoint (at the final sparsity) at the end
    checkpoint: Literal["memory", "disk"] = "memory"
    eval_before: bool = True  # also evaluate the pruned model before fine-tuning

    def check(self, prefix: str) -> None:
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise PruneError(f"{prefix}.lr must be a number > 0 (got {self.lr!r})")
        if (self.steps is None) == (self.epochs is None):
            raise PruneError(f"set exactly one of {prefix}.steps and {prefix}.epochs (got steps={self.steps!r}, epochs={self.epochs!r})")
        for key in ("steps", "epochs", "batch_size", "grad_accum", "eval_every", "eval_batch_size"):
            at_least(self, prefix, key, 1)
        for key in ("weight_decay", "min_lr_ratio", "warmup_ratio", "warmup_steps"):
            at_least(self, prefix, key, 0)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise PruneError(f"{prefix}.max_grad_norm must be > 0 or null (no clipping) (got {self.max_grad_norm!r})")


@dataclass(frozen=True)
class LMOptions(TrainOptions):
    """``finetune=lm``: next-token loss on text (:mod:`prunecli.finetune.lm`)."""

    seqlen: int = 512  # tokens per training window
    max_train_windows: int | None = None  # cap on the training windows (null: as many as the updates need)
    val_on: Literal["heldout", "eval"] = "heldout"
    val_windows: int = 8

    def check(self, prefix: str) -> None:
        super().check(prefix)
        at_least(self, prefix, "seqlen", 1)
        at_least(self, prefix, "max_train_windows", 1)
        at_least(self, prefix, "val_windows", 0)


@dataclass(frozen=True)
class LoraOptions(LMOptions):
    """``finetune=lora``: low-rank adapters on the pruned layers (:mod:`prunecli.finetune.lora`)."""

    lr: float = 2.0e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05

    def check(self, prefix: str) -> None:
        from prunecli.finetune.lora import check_installed

        super().check(prefix)
        at_least(self, prefix, "r", 1)
        check_installed()


@dataclass(frozen=True)
class ClassifierOptions(TrainOptions):
    """``finetune=classifier``: cross-entropy on the review sentiment splits."""

    max_train_examples: int | None = None
    max_val_examples: int | None = None
    # the classifier's defaults (configs/finetune/classifier.yaml)
    steps: int | None = None
    epochs: int | None = 2
    batch_size: int = 32
    lr: float = 5.0e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    decay: Literal["cosine", "linear", "constant"] = "linear"
    eval_every: int = 100
    eval_batch_size: int = 64
    eval_before: bool = False  # the head is untrained before fine-tuning: its accuracy is chance


OPTIONS: dict[str, type[FinetuneOptions]] = {
    "none": FinetuneOptions, "lm": LMOptions, "lora": LoraOptions, "classifier": ClassifierOptions,
}
