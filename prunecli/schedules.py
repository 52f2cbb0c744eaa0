"""Sparsity schedules (``schedule=``): when, and to what sparsity, the method prunes.

* ``oneshot`` (default): the method prunes once, to ``sparsity``, before any fine-tuning.
* ``gradual`` (Zhu & Gupta 2017): during fine-tuning, at steps ``start_step``,
  ``start_step + frequency``, ... and at ``end_step``, the target rises from ``initial`` to
  ``sparsity``. With progress ``p = (t - start_step) / (end_step - start_step)``:

  - ``cubic``: ``s_t = s_f + (s_i - s_f) (1 - p)^3`` (the paper's rule),
  - ``linear``: ``s_t = s_i + (s_f - s_i) p``,
  - ``exponential``: the density decays geometrically, ``1 - s_t = (1 - s_i) ((1 - s_f) / (1 - s_i))^p``,
    i.e. every pruning step removes the same fraction of the remaining weights.

  A "step" is an optimizer update: pruning "at step t" happens after t updates. ``end_step``
  must come before the last update (there is always some recovery at the final sparsity).
* ``iterative``: ``cycles`` rounds of prune-to-the-next-target then fine-tune; the targets
  ``s_1 .. s_C`` follow ``shape`` with ``p = c / C`` (so ``s_C = sparsity``); each round runs
  the whole fine-tune config (its ``steps`` or ``epochs``, warm-up and decay) again.

Each pruning step prunes the fraction ``(s_t - s_prev) / (1 - s_prev)`` of the *remaining*
weights: the method's scores are recomputed on the current weights, already-pruned weights
rank below every live one, and each comparison group (matrix, row, or all matrices for
``scope=global``) ends with exactly ``floor(s_t * n)`` zeros (:mod:`prunecli.methods.masks`),
so the final sparsity is exactly the target. Only methods whose masks can be recomputed this
way are allowed: those whose descriptor has ``reprune`` -- ``magnitude`` and ``wanda`` (its
``||X_j||`` are re-collected on the current model at every pruning step with ``recollect:
true``, else collected once, at the first pruning step, and reused).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.targets import weight_matrix

log = logging.getLogger(__name__)

SCHEDULES = ("oneshot", "gradual", "iterative")
SHAPES = ("linear", "cubic", "exponential")


def curve(progress: float, initial: float, final: float, shape: str) -> float:
    """Target sparsity at ``progress`` in [0, 1] (exactly ``initial`` at 0 and ``final`` at 1)."""
    if shape not in SHAPES:
        raise PruneError(f"unknown schedule.shape {shape!r} (choose from: {', '.join(SHAPES)})")
    if progress <= 0:
        return initial
    if progress >= 1:
        return final
    if shape == "linear":
        return initial + (final - initial) * progress
    if shape == "cubic":
        return final + (initial - final) * (1 - progress) ** 3
    ratio = (1 - final) / (1 - initial)
    return 1 - (1 - initial) * ratio**progress


def gradual_sparsity(step: int, initial: float, final: float, start: int, end: int, shape: str) -> float:
    """The gradual schedule's target after ``step`` updates (``initial`` before ``start``)."""
    if step < start:
        return initial
    if end == start:
        return final
    return curve((step - start) / (end - start), initial, final, shape)


def pruning_steps(start: int, end: int, frequency: int) -> list[int]:
    """``start, start + frequency, ...`` below ``end``, then ``end``."""
    return list(range(start, end, frequency)) + [end]


def gradual_events(initial: float, final: float, start: int, end: int, frequency: int, shape: str) -> dict[int, float]:
    """``{step: target sparsity}`` for every pruning step of the gradual schedule."""
    return {t: gradual_sparsity(t, initial, final, start, end, shape) for t in pruning_steps(start, end, frequency)}


def iterative_targets(cycles: int, initial: float, final: float, shape: str) -> list[float]:
    """The target of each of ``cycles`` rounds; the last is exactly ``final``."""
    return [curve(c / cycles, initial, final, shape) for c in range(1, cycles + 1)]


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PruneError(f"schedule.{key} must be an integer >= {minimum} (got {value!r})")
    return value


def validate(cfg: Any) -> None:
    """Config-only checks, before anything is loaded."""
    schedule = cfg.get("schedule") or {"name": "oneshot"}
    name = schedule.get("name", "oneshot")
    if name not in SCHEDULES:
        raise PruneError(f"unknown schedule {name!r} (choose from: {', '.join(SCHEDULES)})")
    if name == "oneshot":
        return
    finetune = (cfg.get("finetune") or {}).get("name", "none")
    if finetune == "none":
        raise PruneError(f"schedule={name} prunes during fine-tuning: choose a fine-tune (finetune=lm, lora or classifier)")
    if METHODS.get(cfg.method.name).reprune is None:
        reapplicable = [m for m in METHODS.names() if METHODS.get(m).reprune is not None]
        raise PruneError(f"schedule={name} re-applies the method at every pruning step, which method={cfg.method.name} cannot do "
                         f"(schedules work with: {', '.join(reapplicable)})")
    if cfg.get("pattern") not in (None, "", "unstructured"):
        raise PruneError(f"schedule={name} raises the sparsity step by step; an N:M pattern has one fixed sparsity (use pattern=unstructured)")
    if cfg.get("allocation", "uniform") != "uniform":
        raise PruneError(f"schedule={name} supports allocation=uniform only (got allocation={cfg.allocation})")
    initial = schedule.get("initial", 0.0)
    if not isinstance(initial, (int, float)) or not 0 <= initial <= cfg.sparsity:
        raise PruneError(f"schedule.initial must be in [0, sparsity={cfg.sparsity}] (got {initial!r})")
    if schedule.get("shape", "cubic") not in SHAPES:
        raise PruneError(f"unknown schedule.shape {schedule.get('shape')!r} (choose from: {', '.join(SHAPES)})")
    if name == "gradual":
        start = _int(schedule.get("start_step", 0), "start_step", 0)
        _int(schedule.get("frequency", 1), "frequency", 1)
        end = schedule.get("end_step")
        if end is not None:
            end = _int(end, "end_step", 0)
            if end < start:
                raise PruneError(f"schedule.end_step={end} is before schedule.start_step={start}")
    else:
        _int(schedule.get("cycles", 1), "cycles", 1)


def resolve_gradual(schedule: Any, total_steps: int) -> tuple[int, int]:
    """(start, end) against the fine-tune's number of updates; ``end_step: null`` = 3/4 of them."""
    start = int(schedule.get("start_step", 0))
    end = schedule.get("end_step")
    end = int(end) if end is not None else max(start, (3 * total_steps) // 4)
    if end >= total_steps:
        raise PruneError(f"schedule.end_step={end} must come before the last fine-tune step ({total_steps} steps): "
                         f"lower it or fine-tune longer")
    return start, end


class Repruner:
    """Prunes ``ctx.layers`` to a higher sparsity among the still-nonzero weights, through the
    method's own ``reprune`` (see module doc); ``recollect``: a fresh state at every step."""

    def __init__(self, ctx: PruneContext, recollect: bool = False):
        self.ctx = ctx
        self.reprune = METHODS.get(ctx.options.name).reprune
        self.recollect = recollect
        self.state: dict = {}  # what the method keeps between steps (wanda: the input norms)
        self.seconds = 0.0
        self.events: list[dict] = []

    def sparsity(self) -> float:
        zeros = numel = 0
        for module in self.ctx.layers.values():
            weight = weight_matrix(module)
            zeros += int((weight == 0).sum())
            numel += weight.numel()
        return zeros / numel

    def prune_to(self, sparsity: float, step: int | None = None) -> None:
        start = time.perf_counter()
        was_training = self.ctx.model.training
        self.ctx.model.eval()
        if self.recollect:
            self.state = {}
        try:
            self.reprune(dataclasses.replace(self.ctx, sparsity=sparsity, layer_sparsity={}), self.state)
        finally:
            self.ctx.model.train(was_training)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.events.append({"step": step, "target": sparsity, "actual": self.sparsity(), "seconds": round(seconds, 4)})
        log.info("schedule: pruned to %.4f at step %s (%.2f s)", sparsity, step, seconds)


def describe(cfg: Any) -> str:
    schedule = cfg.get("schedule") or {"name": "oneshot"}
    name = schedule.get("name", "oneshot")
    if name == "gradual":
        return (f"gradual {schedule.get('shape')} {schedule.get('initial')}->{cfg.sparsity} "
                f"steps {schedule.get('start_step')}..{schedule.get('end_step')} every {schedule.get('frequency')}")
    if name == "iterative":
        return f"iterative {schedule.get('cycles')} cycles ({schedule.get('shape')})"
    return name


def is_oneshot(cfg: Any) -> bool:
    return (cfg.get("schedule") or {"name": "oneshot"}).get("name", "oneshot") == "oneshot"

