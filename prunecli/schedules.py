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
from dataclasses import dataclass
from typing import Any, Callable, Literal

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.targets import weight_matrix
from prunecli.options import Options, at_least, choice_of, parse
from prunecli.registry import Registry

log = logging.getLogger(__name__)

SHAPES = ("linear", "cubic", "exponential")
Shape = Literal["linear", "cubic", "exponential"]


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


def resolve_gradual(schedule: Any, total_steps: int) -> tuple[int, int]:
    """(start, end) against the fine-tune's number of updates; ``end_step: null`` = 3/4 of them."""
    start = int(schedule.start_step)
    end = schedule.end_step
    end = int(end) if end is not None else max(start, (3 * total_steps) // 4)
    if end >= total_steps:
        raise PruneError(f"schedule.end_step={end} must come before the last fine-tune step ({total_steps} steps): "
                         f"lower it or fine-tune longer")
    return start, end


@dataclass(frozen=True)
class ScheduleOptions(Options):
    """A schedule's options (``oneshot``: nothing to set)."""


@dataclass(frozen=True)
class GradualOptions(ScheduleOptions):
    initial: float = 0.0  # sparsity at start_step
    start_step: int = 0  # first pruning step (after this many updates)
    end_step: int | None = None  # last pruning step (null: 3/4 of the fine-tune updates)
    frequency: int = 10  # prune every N updates
    shape: Shape = "cubic"
    recollect: bool = False  # wanda: re-collect ||X_j|| at every pruning step

    def check(self, prefix: str) -> None:
        at_least(self, prefix, "start_step", 0)
        at_least(self, prefix, "end_step", 0)
        if self.frequency < 1:
            raise PruneError(f"{prefix}.frequency must be an integer >= 1 (got {self.frequency!r})")
        if self.end_step is not None and self.end_step < self.start_step:
            raise PruneError(f"{prefix}.end_step={self.end_step} is before {prefix}.start_step={self.start_step}")


@dataclass(frozen=True)
class IterativeOptions(ScheduleOptions):
    cycles: int = 3  # prune-then-fine-tune rounds
    initial: float = 0.0
    shape: Shape = "exponential"
    recollect: bool = True  # wanda: re-collect ||X_j|| every cycle

    def check(self, prefix: str) -> None:
        if self.cycles < 1:
            raise PruneError(f"{prefix}.cycles must be an integer >= 1 (got {self.cycles!r})")


@dataclass
class Training:
    """What a schedule drives: the fine-tune's trainer and task, the model it trains, the masks
    it keeps, and the repruner (None for oneshot)."""

    trainer: Any  # prunecli.finetune.loop.Trainer
    task: Any  # prunecli.finetune.loop.TrainTask
    model: Any
    steps: int  # updates per round
    keeper: Any  # prunecli.finetune.masks.MaskKeeper
    repruner: "Repruner | None"
    sparsity: float  # the final target
    seed: int


def train_once(options: ScheduleOptions, run: Training) -> tuple[dict, list[dict]]:
    """``oneshot``: the method pruned before; train the whole fine-tune once."""
    return run.trainer.train(run.model, run.task, run.steps, run.keeper, seed=run.seed), []


def train_gradual(options: GradualOptions, run: Training) -> tuple[dict, list[dict]]:
    """Train once, pruning to the next target at every pruning step (the best checkpoint is
    chosen only after ``end_step``, at the final sparsity)."""
    start, end = resolve_gradual(options, run.steps)
    events = gradual_events(options.initial, run.sparsity, start, end, options.frequency, options.shape)

    def on_step(t: int, optimizer: Any) -> None:
        if t in events and events[t] > 0:
            run.repruner.prune_to(events[t], step=t)
            run.keeper.record()
            run.keeper.register_hooks()
            run.keeper.clear_state(optimizer)

    return run.trainer.train(run.model, run.task, run.steps, run.keeper, on_step=on_step, select_from=end + 1, seed=run.seed), []


def train_iterative(options: IterativeOptions, run: Training) -> tuple[dict, list[dict]]:
    """``cycles`` rounds: prune to the round's target, then the whole fine-tune; one row per cycle."""
    metric, result, cycles = run.task.metric, {}, []
    for cycle, target in enumerate(iterative_targets(options.cycles, options.initial, run.sparsity, options.shape), 1):
        run.repruner.prune_to(target, step=run.trainer.step_offset)
        run.keeper.record()
        pruned_value = run.trainer.validate(run.model, run.task)
        result = run.trainer.train(run.model, run.task, run.steps, run.keeper, cycle=cycle, seed=run.seed + cycle)
        cycles.append({"cycle": cycle, "sparsity": run.keeper.sparsity(), f"{metric}_pruned": pruned_value,
                       f"{metric}_final": result.get("final_" + metric), f"{metric}_best": result.get("best_" + metric),
                       "best_step": result.get("best_step")})
    return result, cycles


@dataclass(frozen=True)
class Schedule:
    """``train(options, run) -> (trainer result, per-cycle rows)``; ``rounds``: how many times the
    fine-tune config runs; ``check_steps(options, steps)``: refuse, before the run, what the
    fine-tune's number of updates cannot honour; ``describe``: one line for the console."""

    name: str
    options: type[ScheduleOptions]
    train: Callable[[Any, Training], tuple[dict, list[dict]]]
    describe: Callable[[Any, float], str]
    rounds: Callable[[Any], int] = lambda options: 1
    check_steps: Callable[[Any, int], Any] = lambda options, steps: None

    @property
    def prunes(self) -> bool:
        """Whether the schedule prunes during fine-tuning (else the method prunes once, before)."""
        return self.name != "oneshot"


SCHEDULES: Registry[Schedule] = Registry("schedule")
SCHEDULES.add("oneshot", Schedule("oneshot", ScheduleOptions, train_once, lambda o, s: "oneshot"))
SCHEDULES.add("gradual", Schedule(
    "gradual", GradualOptions, train_gradual, check_steps=resolve_gradual,
    describe=lambda o, s: f"gradual {o.shape} {o.initial}->{s} steps {o.start_step}..{o.end_step} every {o.frequency}"))
SCHEDULES.add("iterative", Schedule(
    "iterative", IterativeOptions, train_iterative, rounds=lambda o: o.cycles,
    describe=lambda o, s: f"iterative {o.cycles} cycles ({o.shape})"))


def options_of(cfg: Any) -> ScheduleOptions:
    """The run's ``schedule`` node as its schedule's typed options (no node: oneshot)."""
    node = cfg.get("schedule") or {"name": "oneshot"}
    return parse(SCHEDULES.get(node.get("name", "oneshot")).options, node, "schedule")


def validate(cfg: Any) -> ScheduleOptions:
    """Config-only checks, before anything is loaded; the typed options."""
    options = options_of(cfg)
    name = options.name
    if name == "oneshot":
        return options
    finetune = choice_of(cfg, "finetune")
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
    if not 0 <= options.initial <= cfg.sparsity:
        raise PruneError(f"schedule.initial must be in [0, sparsity={cfg.sparsity}] (got {options.initial!r})")
    return options


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


def is_oneshot(options: ScheduleOptions) -> bool:
    """The method prunes once, before any fine-tune (the other schedules prune during it)."""
    return not SCHEDULES.get(options.name).prunes


def describe(options: ScheduleOptions, sparsity: float) -> str:
    """One line for the console and metrics.json: the schedule and its steps towards ``sparsity``."""
    return SCHEDULES.get(options.name).describe(options, sparsity)
