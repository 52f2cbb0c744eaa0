"""Evaluators (``eval=``): built once per run, then called on the model (dense and pruned).

Each option of the ``eval`` config group writes its settings under its own name
(``eval.perplexity``, ``eval.zeroshot``, ``eval.accuracy``), so options compose as Hydra composes
a list of a group's options: ``eval=[perplexity,zeroshot]`` scores both; ``eval=none`` nothing.
The node is parsed once (:func:`parse_eval`): ``baseline`` plus each evaluator's typed options.
An evaluator is one :class:`Evaluator` descriptor::

    register(Evaluator("perplexity", perplexity_evaluator, PerplexityOptions, offloads=True))

``offloads``: the evaluator brings an offloaded model's blocks to the device itself (block-wise
perplexity); any other runs the whole model with each block onloaded around its own forward
(:meth:`~prunecli.models.offload.Offload.streamed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from prunecli.errors import PruneError
from prunecli.options import Options, check_type, node_values, parse
from prunecli.registry import Registry


@dataclass
class EvalContext:
    """What an evaluator is built from: the loaded model, its own typed options, the run's typed
    ``model`` and ``data`` options and the run config (for other groups' keys: a fine-tune's data)."""

    loaded: Any  # LoadedModel
    options: Any  # the evaluator's Options
    model: Any  # ModelOptions (image models: the dataset to score on)
    data: Any  # DataOptions
    cfg: Any


@dataclass(frozen=True)
class Evaluator:
    """``build(ctx) -> evaluate(model) -> metrics``, the typed options of its ``eval.<name>`` node, and
    whether it onloads an offloaded model's blocks itself (``offloads``, see the module doc)."""

    name: str
    build: Callable[[EvalContext], Callable[[Any], dict]]
    options: type[Options] = Options
    offloads: bool = False


EVALUATORS: Registry[Evaluator] = Registry("eval")


def register(evaluator: Evaluator) -> Evaluator:
    return EVALUATORS.add(evaluator.name, evaluator)


@dataclass(frozen=True)
class EvalOptions:
    """The ``eval`` node: ``baseline`` (score the unpruned model too) and the selected evaluators' options."""

    baseline: bool = False
    evaluators: dict[str, Options] = field(default_factory=dict)  # name -> typed options, in the order of EVALUATORS.names()


def parse_eval(node: Any) -> EvalOptions:
    """The ``eval`` node as :class:`EvalOptions`: every key is ``baseline`` or a registered evaluator."""
    values = node_values(node, "eval")
    baseline = values.pop("baseline", False)
    check_type(baseline, bool, "eval.baseline")
    for key in values:
        if key not in EVALUATORS:
            raise PruneError(f"unknown key eval.{key} (its keys: baseline, {', '.join(EVALUATORS.names())})")
    evaluators = {name: parse(EVALUATORS.get(name).options, values[name], f"eval.{name}") for name in EVALUATORS.names() if name in values}
    return EvalOptions(baseline, evaluators)


def selected(cfg: Any) -> list[str]:
    """The evaluators the run's ``eval`` node selects (for display, before parsing)."""
    return [name for name in EVALUATORS.names() if name in cfg.eval and hasattr(cfg.eval[name], "keys")]


def build(loaded: Any, options: EvalOptions, model: Any, data: Any, cfg: Any) -> Callable[[Any], dict]:
    """One ``evaluate(model)`` that runs every selected evaluator and merges their metrics."""
    parts = []
    for name, own in options.evaluators.items():
        evaluator = EVALUATORS.get(name)
        evaluate = evaluator.build(EvalContext(loaded, own, model, data, cfg))
        parts.append(evaluate if evaluator.offloads or loaded.offload.mode == "none" else streamed(evaluate, loaded.offload))
    return lambda model: {key: value for part in parts for key, value in part(model).items()}


def streamed(evaluate: Callable[[Any], dict], offload: Any) -> Callable[[Any], dict]:
    """``evaluate`` run with the offloaded model's blocks onloaded one by one around their forwards."""
    def run(model: Any) -> dict:
        with offload.streamed():
            return evaluate(model)

    return run


from prunecli.evaluate import accuracy, perplexity, zeroshot  # noqa: E402,F401
